//! Resource limits: the file-descriptor ceiling, the memory an idle session costs, and what a
//! connection may do before it logs in, per address and per node.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::{Client, ServerProcess, TestServer};

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Over the open-file limit, waiting clients are closed cleanly, the acceptor does not spin, and
/// the server serves again once descriptors are free.
#[test]
fn at_the_descriptor_limit_the_acceptor_neither_spins_nor_hangs_clients() {
    let dir = tempfile::tempdir().unwrap();
    let store = support::fresh_store(dir.path());
    let script = format!(
        "ulimit -n 64 && exec {} --listen 127.0.0.1:0 --threads 2 --pool-threads 2 --store {store} --hash-memory-kib 256 --hash-iterations 1",
        env!("CARGO_BIN_EXE_chatserver"),
    );
    let mut child =
        Command::new("sh").args(["-c", &script]).env("RUST_LOG", "error").stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line.trim().strip_prefix("listening on ").unwrap().parse().unwrap();
    let server = ServerProcess { child, addr };
    let pid = server.child.id();

    let mut conns: Vec<TcpStream> = (0..120).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_ticks(pid) - before;
    assert!(spent < 20, "acceptor burned {spent} ticks in a second while out of descriptors");
    // Each client was either taken in (it gets an answer) or closed at once (EOF): none hangs.
    let (mut served, mut refused) = (0, 0);
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut w = c.try_clone().unwrap();
        let _ = std::io::Write::write_all(&mut w, b"{\"msgid\":99}\n");
        let mut buf = [0u8; 256];
        match c.read(&mut buf) {
            Ok(0) => refused += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => refused += 1,
            Err(e) => panic!("a client hung at the descriptor limit: {e}"),
            Ok(_) => served += 1,
        }
    }
    assert!(served > 10 && refused > 10, "served {served}, refused {refused}");
    conns.clear();
    // Descriptors are free again: a new client is served normally.
    let id = support::eventually(|| {
        std::thread::sleep(Duration::from_millis(50));
        let mut c = Client::connect(addr);
        c.send(json!({"msgid":4,"name":"after","password":"pw"}));
        c.try_recv(Duration::from_secs(2)).map(|r| r["id"].clone())
    });
    assert_eq!(id, 1);
    eprintln!("descriptor limit: {served} served, {refused} closed cleanly, {spent} ticks in 1 s");
}

/// Logged-in idle connections cost little server memory: buffers are given back when idle.
/// The allocator takes memory from the system in steps of megabytes, so the measured batch must
/// be large enough for one step not to look like a per-session cost.
#[test]
fn idle_sessions_cost_little_memory() {
    const SESSIONS: usize = 4000;
    const WARM_UP: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&support::fresh_store(dir.path()), &[]);
    let mut reg = Client::connect(server.addr);
    let ids: Vec<u32> = (0..SESSIONS).map(|i| reg.register(&format!("idle{i}"), "pw")).collect();
    // Warm up allocator arenas and caches with a first batch, then measure the next.
    let mut clients: Vec<Client> = Vec::new();
    let login = |id: u32| {
        let mut c = Client::connect(server.addr);
        c.login_ok(id, "pw");
        c.send(json!({"msgid":6,"toid":id,"msg":"x".repeat(1000)}));
        assert_eq!(c.recv()["toid"], id); // buffers used once, then idle
        c
    };
    clients.extend(ids[..WARM_UP].iter().map(|&id| login(id)));
    let before = support::rss_kib(server.child.id());
    clients.extend(ids[WARM_UP..].iter().map(|&id| login(id)));
    std::thread::sleep(Duration::from_millis(200));
    let per_session = (support::rss_kib(server.child.id()).saturating_sub(before)) * 1024 / (SESSIONS - WARM_UP) as u64;
    eprintln!("idle sessions: {per_session} bytes of server RSS each");
    assert!(per_session < 8 * 1024, "{per_session} bytes per idle session");
}

/// Over `--max-conns-per-ip` a connection is reset at once, whatever it sends; other addresses
/// are not affected, and a place comes back when a connection closes. `--max-connections`
/// bounds the node.
#[test]
fn connections_over_the_per_address_and_node_limits_are_reset_at_once() {
    let server = TestServer::start_with(|c| {
        c.max_conns_per_ip = 3;
        c.max_connections = 5;
    });
    let (two, three, four) = ([127, 0, 0, 2].into(), [127, 0, 0, 3].into(), [127, 0, 0, 4].into());
    let mut held: Vec<Client> = (0..3).map(|_| Client::connect_from(server.addr, two)).collect();
    let mut refused = Client::connect_from(server.addr, two);
    assert!(refused.is_closed(), "a fourth connection from one address");
    let mut alice = Client::connect_from(server.addr, three);
    let ida = alice.register("alice", "pw");
    alice.login_ok(ida, "pw");
    assert_eq!(
        alice.request(json!({"msgid":6,"toid":ida,"msg":"me","seq":1}))["errno"],
        0,
        "another address is served"
    );
    let _fifth = Client::connect_from(server.addr, three);
    let mut over = Client::connect_from(server.addr, four);
    assert!(over.is_closed(), "a sixth connection to the node");
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200)); // the reactor sees the close
    let mut again = Client::connect_from(server.addr, two);
    let id = again.register("bob", "pw");
    again.login_ok(id, "pw");
    for c in &mut held {
        assert_eq!(c.request(json!({"msgid":4,"name":"","password":"x"}))["msgid"], 5, "held ones are served");
    }
}

/// Before login a frame may be 8 KiB at most (errno 9, and the stream is rejected); after it,
/// the full size. A connection that does not log in for `--login-timeout` is closed, counted
/// again from a logout; a logged-in one is not.
#[test]
fn before_login_frames_are_small_and_the_wait_is_bounded() {
    let server = TestServer::start_with(|c| c.login_timeout = Duration::from_secs(2));
    let big = "x".repeat(9 * 1024);
    let mut stranger = server.client();
    let r = stranger.request(json!({"msgid":4,"name":big,"password":"pw"}));
    assert_eq!(r["errno"], 9, "{r}");
    assert!(stranger.is_closed());
    let (mut alice, ida) = server.user("alice");
    let r = alice.request(json!({"msgid":6,"toid":ida,"msg":big,"seq":1}));
    assert_eq!(r["errno"], 0, "a logged-in frame of 9 KiB: {r}");
    assert_eq!(alice.recv()["msg"].as_str().map(str::len), Some(big.len()));
    let (mut bob, _) = server.user("bob");
    let mut idle = server.client();
    std::thread::sleep(Duration::from_millis(1500));
    bob.logout();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(idle.is_closed(), "no login within the timeout");
    assert_eq!(alice.request(json!({"msgid":6,"toid":ida,"msg":"still here","seq":2}))["errno"], 0);
    assert_eq!(alice.recv()["msg"], "still here");
    let mut bob = bob;
    assert_eq!(bob.request(json!({"msgid":4,"name":"","password":"x"}))["msgid"], 5, "the clock restarted at logout");
    assert!(bob.is_closed(), "then closed: logged out for the timeout");
}

/// Failed logins of one account, past `--login-failures`, are refused with errno 14 and when to
/// retry, even with the right password (the hash is not computed); other accounts are not
/// affected, and a success before the limit starts the count again. Per address, over
/// `--login-failures-per-ip`, and registrations over `--registrations-per-ip`, likewise.
#[test]
fn failed_logins_and_registrations_past_their_limits_get_errno_14() {
    let server = TestServer::start_with(|c| {
        c.throttle =
            chat::config::ThrottleLimits { login_failures: 4, login_failures_per_ip: 8, registrations_per_ip: 5 };
    });
    let (two, three) = ([127, 0, 0, 2].into(), [127, 0, 0, 3].into());
    let mut c = Client::connect_from(server.addr, three);
    let (alice, bob) = (c.register("alice", "pw"), c.register("bob", "pw"));
    let guess = |who: u32, password: &str| {
        let mut g = Client::connect_from(server.addr, two);
        g.request(json!({"msgid":1,"id":who,"password":password}))
    };
    for _ in 0..3 {
        assert_eq!(guess(alice, "wrong")["errno"], 1);
    }
    assert_eq!(guess(alice, "pw")["errno"], 0, "under the limit");
    for _ in 0..3 {
        assert_eq!(guess(alice, "wrong")["errno"], 1, "the success started the count again");
    }
    assert_eq!(guess(alice, "wrong")["errno"], 1, "the fourth failure");
    let r = guess(alice, "pw");
    assert_eq!((r["msgid"].clone(), r["errno"].clone()), (json!(2), json!(14)), "{r}");
    let retry = r["retry_after"].as_u64().expect("retry_after");
    assert!((890..=900).contains(&retry), "{r}");
    // That address has failed 7 times in all; the eighth reaches its own limit: every account.
    assert_eq!(guess(bob, "wrong")["errno"], 1);
    assert_eq!(guess(bob, "pw")["errno"], 14, "the address is blocked");
    let mut from_three = Client::connect_from(server.addr, three);
    assert_eq!(from_three.request(json!({"msgid":1,"id":bob,"password":"pw"}))["errno"], 0, "another address");
    // Registrations: two above from 127.0.0.3, three more are allowed, then errno 14.
    for i in 0..3 {
        assert_eq!(c.request(json!({"msgid":4,"name":format!("u{i}"),"password":"pw"}))["errno"], 0);
    }
    let r = c.request(json!({"msgid":4,"name":"one-too-many","password":"pw"}));
    assert_eq!((r["msgid"].clone(), r["errno"].clone()), (json!(5), json!(14)), "{r}");
    let mut other = Client::connect_from(server.addr, two);
    assert_eq!(other.request(json!({"msgid":4,"name":"from-two","password":"pw"}))["errno"], 0);
}
