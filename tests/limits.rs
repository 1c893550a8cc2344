//! Resource limits: the file-descriptor ceiling and the memory an idle session costs.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::{Client, ServerProcess};

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
