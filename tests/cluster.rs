//! Several nodes as one service: real MariaDB, Redis and nginx, started privately.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::mariadb::MariaDb;
use support::nginx::Nginx;
use support::redis::RedisServer;
use support::{decoded, eventually, Client, ServerProcess};

/// Fields drop in order: the nodes stop before their Redis goes away.
struct Cluster {
    nodes: Vec<ServerProcess>,
    names: Vec<String>,
    redis: RedisServer,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        Self::start_with(n, &[])
    }

    /// With more flags for every node.
    fn start_with(n: usize, flags: &[&str]) -> Cluster {
        let redis = RedisServer::start();
        let store = MariaDb::shared().fresh_database();
        let names: Vec<String> = (0..n).map(|i| format!("{}-n{i}", redis.port)).collect();
        let nodes = names
            .iter()
            .map(|name| {
                let url = redis.url();
                let mut args = vec!["--bus", &url, "--node-id", name];
                args.extend_from_slice(flags);
                ServerProcess::spawn(&store, &args)
            })
            .collect();
        Cluster { nodes, names, redis }
    }

    fn addr(&self, node: usize) -> SocketAddr {
        self.nodes[node].addr
    }

    /// A registered user logged in on `node`.
    fn user(&self, node: usize, name: &str) -> (Client, u32) {
        let mut c = Client::connect(self.addr(node));
        let id = c.register(name, "pw");
        c.login_ok(id, "pw");
        (c, id)
    }
}

#[test]
fn cross_node_chat_groups_offline_and_order() {
    let cluster = Cluster::start(3);
    let (mut a, ida) = cluster.user(0, "alice");
    let (mut b, idb) = cluster.user(1, "bob");
    let (mut c, idc) = cluster.user(2, "carol");
    a.chat_acked(ida, idb, "hi bob", 1);
    let m = b.recv();
    assert_eq!((m["msg"].clone(), m["id"].clone(), m["name"].clone()), (json!("hi bob"), json!(ida), json!("alice")));
    // A group with members on three nodes.
    let gid = a.request(json!({"msgid":8,"groupname":"everywhere","seq":2}))["groupid"].clone();
    assert_eq!(b.request(json!({"msgid":9,"groupid":gid,"seq":1}))["errno"], 0);
    assert_eq!(c.request(json!({"msgid":9,"groupid":gid,"seq":1}))["errno"], 0);
    c.send(json!({"msgid":10,"groupid":gid,"msg":"to all","seq":2}));
    assert_eq!(c.recv()["errno"], 0);
    assert_eq!(a.recv()["msg"], "to all");
    assert_eq!(b.recv()["msg"], "to all");
    // Friend states come from the other nodes too.
    assert_eq!(a.request(json!({"msgid":7,"friendid":idc,"seq":3}))["errno"], 0);
    a.logout();
    let ack = a.login_ok(ida, "pw");
    assert_eq!(decoded(&ack, "friends"), vec![json!({"id":idc,"name":"carol","state":"online"})]);
    // Stored by node 0, drained by node 1.
    c.logout();
    a.chat_acked(ida, idc, "stored by node 0", 4);
    let mut c1 = Client::connect(cluster.addr(1));
    let ack = c1.login_ok(idc, "pw");
    assert_eq!(
        decoded(&ack, "offlinemsg").iter().map(|m| m["msg"].clone()).collect::<Vec<_>>(),
        vec![json!("stored by node 0")]
    );
    // Per-sender order across nodes.
    let batch: String = (0..300).map(|n| format!("{}\n", json!({"msgid":6,"toid":idb,"msg":n.to_string()}))).collect();
    a.send_raw(batch.as_bytes());
    let got: Vec<String> = (0..300).map(|_| b.recv()["msg"].as_str().unwrap().to_owned()).collect();
    assert_eq!(got, (0..300).map(|n| n.to_string()).collect::<Vec<_>>());
}

/// A join on one node is in effect for the very next group message sent on another, although
/// that node holds the group's members in memory: each newcomer joins on node 0, and the
/// message sent on node 1 right after its join's answer reaches it. A member who logged out
/// finds the messages in its login ack.
#[test]
fn a_join_on_one_node_is_in_effect_for_the_next_message_sent_on_another() {
    let cluster = Cluster::start(2);
    let (mut owner, _) = cluster.user(0, "owner");
    let (mut sender, _) = cluster.user(1, "sender");
    let gid = owner.request(json!({"msgid":8,"groupname":"growing","seq":1}))["groupid"].clone();
    assert_eq!(sender.request(json!({"msgid":9,"groupid":gid,"seq":2}))["errno"], 0);
    let (mut away, id_away) = cluster.user(1, "away");
    assert_eq!(away.request(json!({"msgid":9,"groupid":gid,"seq":3}))["errno"], 0);
    away.logout();
    let mut newcomers = Vec::new();
    for n in 0..12 {
        // Node 1 sends to the group first: it holds the members as they are now.
        let warm = sender.request(json!({"msgid":10,"groupid":gid,"msg":format!("before {n}"),"seq":n}));
        assert_eq!(warm["errno"], 0, "{warm}");
        assert_eq!(owner.recv()["msg"], format!("before {n}"));
        for c in &mut newcomers {
            let c: &mut Client = c;
            assert_eq!(c.recv()["msg"], format!("before {n}"));
        }
        let (mut c, _) = cluster.user(0, &format!("newcomer{n}"));
        assert_eq!(c.request(json!({"msgid":9,"groupid":gid,"seq":1}))["errno"], 0);
        let sent = sender.request(json!({"msgid":10,"groupid":gid,"msg":format!("welcome {n}"),"seq":n}));
        assert_eq!(sent["errno"], 0, "{sent}");
        let got = c.recv();
        assert_eq!(got["msg"], format!("welcome {n}"), "newcomer {n}: {got}");
        assert_eq!(owner.recv()["msg"], format!("welcome {n}"));
        for c in &mut newcomers {
            let c: &mut Client = c;
            assert_eq!(c.recv()["msg"], format!("welcome {n}"));
        }
        newcomers.push(c);
    }
    let mut away = Client::connect(cluster.addr(0));
    let ack = away.login_ok(id_away, "pw");
    let stored: Vec<_> =
        decoded(&ack, "offlinemsg").iter().map(|m| m["msg"].as_str().unwrap_or("").to_owned()).collect();
    let expected: Vec<_> = (0..12).flat_map(|n| [format!("before {n}"), format!("welcome {n}")]).collect();
    assert_eq!(stored, expected);
}

/// A sender streams group messages without waiting (they go out many at a time) while users
/// join on the other node: every member gets them once and in order, a member who joined
/// meanwhile gets an unbroken tail of them, and one logged out finds all of them stored.
#[test]
fn streamed_group_messages_keep_their_order_while_members_join() {
    const MESSAGES: usize = 400;
    let cluster = Cluster::start(2);
    let (mut sender, _) = cluster.user(1, "streamer");
    let gid = sender.request(json!({"msgid":8,"groupname":"stream","seq":1}))["groupid"].clone();
    let mut members: Vec<Client> = (0..4)
        .map(|i| {
            let (mut c, _) = cluster.user(i % 2, &format!("member{i}"));
            assert_eq!(c.request(json!({"msgid":9,"groupid":gid,"seq":1}))["errno"], 0);
            c
        })
        .collect();
    let (mut away, id_away) = cluster.user(0, "away");
    assert_eq!(away.request(json!({"msgid":9,"groupid":gid,"seq":1}))["errno"], 0);
    away.logout();
    let batch: String =
        (0..MESSAGES).map(|n| format!("{}\n", json!({"msgid":10,"groupid":gid,"msg":n.to_string(),"seq":n}))).collect();
    sender.send_raw(batch.as_bytes());
    let joiners: Vec<Client> = (0..3)
        .map(|i| {
            let (mut c, _) = cluster.user(0, &format!("joiner{i}"));
            assert_eq!(c.request(json!({"msgid":9,"groupid":gid,"seq":1}))["errno"], 0);
            c
        })
        .collect();
    for n in 0..MESSAGES {
        let r = sender.recv();
        assert_eq!((r["seq"].as_u64(), r["errno"].as_u64()), (Some(n as u64), Some(0)), "{r}");
    }
    let numbers = |c: &mut Client, until_last: bool| -> Vec<usize> {
        let mut got = Vec::new();
        while let Some(m) = c.try_recv(Duration::from_millis(if until_last { 5000 } else { 300 })) {
            got.push(m["msg"].as_str().and_then(|s| s.parse().ok()).expect("a number"));
            if got.last() == Some(&(MESSAGES - 1)) {
                break;
            }
        }
        got
    };
    for (i, c) in members.iter_mut().enumerate() {
        assert_eq!(numbers(c, true), (0..MESSAGES).collect::<Vec<_>>(), "member {i}");
    }
    for (i, mut c) in joiners.into_iter().enumerate() {
        let got = numbers(&mut c, false);
        let first = got.first().copied().unwrap_or(MESSAGES);
        assert_eq!(got, (first..MESSAGES).collect::<Vec<_>>(), "joiner {i}: an unbroken tail");
    }
    let mut away = Client::connect(cluster.addr(1));
    let ack = away.login_ok(id_away, "pw");
    let stored: Vec<usize> = decoded(&ack, "offlinemsg")
        .iter()
        .map(|m| m["msg"].as_str().and_then(|s| s.parse().ok()).expect("a number"))
        .collect();
    assert_eq!(stored, (0..MESSAGES).collect::<Vec<_>>());
}

/// Failed logins count cluster-wide: a guesser spreading its attempts over two nodes is
/// refused (errno 14) on both once they add up to the limit.
#[test]
fn failed_logins_spread_over_nodes_add_up() {
    let cluster = Cluster::start_with(2, &["--login-failures", "4"]);
    let id = Client::connect(cluster.addr(0)).register("target", "pw");
    for n in 0..4 {
        let r = Client::connect(cluster.addr(n % 2)).request(json!({"msgid":1,"id":id,"password":"guess"}));
        assert_eq!(r["errno"], 1, "{r}");
    }
    for node in 0..2 {
        let r = Client::connect(cluster.addr(node)).request(json!({"msgid":1,"id":id,"password":"pw"}));
        assert_eq!((r["errno"].clone(), r["retry_after"].is_u64()), (json!(14), true), "node {node}: {r}");
    }
}

/// Bob hops between two nodes while four users on a third stream messages to him. A message
/// that reaches the node he just left is stored there, possibly after his new session took its
/// mailbox: that node tells his new node to fetch it again. So every message acknowledged
/// before a login reaches that very session (live, in its login ack or in a drain), and no
/// message arrives twice.
#[test]
fn a_user_moving_between_nodes_gets_everything_once() {
    const HOPS: usize = 20;
    let cluster = Cluster::start(3);
    let idb = Client::connect(cluster.addr(1)).register("bob", "pw");
    let acked = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..4)
        .map(|k| {
            let (mut a, ida) = cluster.user(0, &format!("alice{k}"));
            let (acked, stop) = (acked.clone(), stop.clone());
            thread::spawn(move || {
                for n in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let msg = format!("{k}:{n}");
                    let r = a.request(json!({"msgid":6,"id":ida,"toid":idb,"msg":msg,"seq":n}));
                    assert_eq!(r["errno"], 0, "{r}");
                    acked.lock().push(msg);
                    thread::sleep(Duration::from_micros(500));
                }
            })
        })
        .collect();
    let mut senders = Some(senders);
    let mut got: Vec<String> = Vec::new();
    let mut have: HashSet<String> = HashSet::new();
    for hop in 0..=HOPS {
        if hop == HOPS {
            // The last visit starts after the last message: it must end with all of them.
            stop.store(true, Ordering::Relaxed);
            senders.take().into_iter().flatten().for_each(|s| s.join().unwrap());
        }
        let mut b = Client::connect(cluster.addr(1 + hop % 2));
        let ack = b.login_ok(idb, "pw");
        let offline = decoded(&ack, "offlinemsg");
        let mut due: HashSet<String> = acked.lock().iter().cloned().collect();
        due.retain(|m| !have.contains(m) && !offline.iter().any(|o| o["msg"] == m.as_str()));
        let mut keep = |m: &serde_json::Value| {
            let text = m["msg"].as_str().unwrap_or_default().to_owned();
            got.push(text.clone());
            have.insert(text);
        };
        offline.iter().for_each(&mut keep);
        let t = Instant::now();
        while !due.is_empty() {
            assert!(t.elapsed() < Duration::from_secs(5), "hop {hop}: acknowledged, never delivered: {due:?}");
            if let Some(m) = b.try_recv(Duration::from_millis(100)) {
                due.remove(m["msg"].as_str().unwrap_or_default());
                keep(&m);
            }
        }
        // Log out, keeping what arrives before the answer.
        b.send(json!({"msgid":3,"seq":"bye"}));
        loop {
            let m = b.recv();
            if m["seq"] == "bye" {
                assert_eq!(m["errno"], 0);
                break;
            }
            keep(&m);
        }
    }
    let total = got.len();
    got.sort_unstable();
    got.dedup();
    assert_eq!(got.len(), total, "a message arrived twice");
    let mut sent = acked.lock().clone();
    sent.sort_unstable();
    assert_eq!(got, sent, "every acknowledged message, once");
}

#[test]
fn duplicate_login_on_two_nodes_exactly_one_wins() {
    let cluster = Cluster::start(2);
    let mut reg = Client::connect(cluster.addr(0));
    for round in 0..50 {
        let id = reg.register(&format!("u{round}"), "pw");
        let barrier = Arc::new(Barrier::new(2));
        let attempts: Vec<_> = (0..2)
            .map(|node| {
                let (addr, barrier) = (cluster.addr(node), barrier.clone());
                thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    barrier.wait();
                    let errno = c.login(id, "pw")["errno"].as_u64().unwrap();
                    (errno, c)
                })
            })
            .collect();
        // Both sessions stay open until both answers are in: a winner that left early would
        // rightly let the other login through.
        let results: Vec<(u64, Client)> = attempts.into_iter().map(|t| t.join().unwrap()).collect();
        let mut errnos: Vec<u64> = results.iter().map(|r| r.0).collect();
        errnos.sort();
        assert_eq!(errnos, vec![0, 2], "round {round}");
    }
}

#[test]
fn a_killed_node_frees_its_users_and_loses_nothing() {
    let mut cluster = Cluster::start(2);
    let (mut a, ida) = cluster.user(0, "alice");
    let (_b, idb) = cluster.user(1, "bob");
    cluster.nodes[1].child.kill().unwrap(); // SIGKILL: no goodbye to Redis
    let killed = Instant::now();
    cluster.nodes[1].child.wait().unwrap();
    // Sent after the crash: node 1 is gone, so it is stored.
    a.chat_acked(ida, idb, "after the crash", 1);
    let mut again = Client::connect(cluster.addr(0));
    let ack = eventually(|| Some(again.login(idb, "pw")).filter(|r| r["errno"] == 0));
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(1), "bob could log in again only after {took:?}");
    let offline: Vec<_> = decoded(&ack, "offlinemsg").iter().map(|m| m["msg"].clone()).collect();
    assert_eq!(offline, vec![json!("after the crash")]);
    // Live again, on the surviving node.
    a.chat_acked(ida, idb, "live", 2);
    assert_eq!(again.recv()["msg"], "live");
}

#[test]
fn through_nginx_and_with_a_node_stopped() {
    let mut cluster = Cluster::start_with(2, &["--proxy-protocol"]);
    let nginx = Nginx::start(&[cluster.addr(0), cluster.addr(1)]);
    let mut a = Client::connect(nginx.addr);
    let ida = a.register("alice", "pw");
    a.login_ok(ida, "pw");
    let mut b = Client::connect(nginx.addr);
    let idb = b.register("bob", "pw");
    b.login_ok(idb, "pw");
    a.chat_acked(ida, idb, "via nginx", 1);
    assert_eq!(b.recv()["msg"], "via nginx");
    // Node 0 stops; new clients are served by node 1.
    cluster.nodes[0].signal("TERM");
    assert!(cluster.nodes[0].child.wait().unwrap().success());
    for i in 0..6 {
        let mut c = Client::connect(nginx.addr);
        let id = c.register(&format!("late{i}"), "pw");
        c.login_ok(id, "pw");
    }
}

/// Behind nginx with `proxy_protocol on`, a node sees each client's own address: with one
/// connection allowed per address, clients from 127.0.0.2 and 127.0.0.3 are both served (to
/// the node they all come from nginx's address), a second from 127.0.0.2 is refused; a
/// connection that reaches the node without a PROXY header is reset.
#[test]
fn behind_nginx_limits_count_the_client_s_own_address() {
    let cluster = Cluster::start_with(1, &["--proxy-protocol", "--max-conns-per-ip", "1"]);
    let nginx = Nginx::start(&[cluster.addr(0)]);
    let (two, three) = ([127, 0, 0, 2].into(), [127, 0, 0, 3].into());
    let mut a = Client::connect_from(nginx.addr, two);
    let ida = a.register("alice", "pw");
    a.login_ok(ida, "pw");
    let mut b = Client::connect_from(nginx.addr, three);
    let idb = b.register("bob", "pw");
    b.login_ok(idb, "pw");
    a.chat_acked(ida, idb, "through nginx", 1);
    assert_eq!(b.recv()["msg"], "through nginx");
    let mut second = Client::connect_from(nginx.addr, two);
    second.send(json!({"msgid":4,"name":"carol","password":"pw"}));
    assert_eq!(second.answer_within(Duration::from_secs(3)), None, "a second connection from 127.0.0.2");
    let mut direct = Client::connect(cluster.addr(0));
    direct.send(json!({"msgid":1,"id":ida,"password":"pw"}));
    assert_eq!(direct.answer_within(Duration::from_secs(3)), None, "no PROXY header: reset");
    a.chat_acked(ida, idb, "still served", 2);
    assert_eq!(b.recv()["msg"], "still served");
}

/// The database goes away: what needs it fails at once with errno 10, chat included (a message
/// is acknowledged, and seen, only once it is durable), and the node recovers by itself when
/// the database is back.
#[test]
fn a_database_outage_is_errno_10_then_recovery() {
    let db = MariaDb::start();
    let server = ServerProcess::spawn(&db.fresh_database(), &[]);
    let mut reg = Client::connect(server.addr);
    let (ida, idb) = (reg.register("alice", "pw"), reg.register("bob", "pw"));
    let mut a = Client::connect(server.addr);
    a.login_ok(ida, "pw");
    let mut b = Client::connect(server.addr);
    b.login_ok(idb, "pw");
    db.stop();
    let t = Instant::now();
    let r = a.request(json!({"msgid":6,"toid":idb,"msg":"not durable","seq":1}));
    assert_eq!((&r["req"], &r["errno"]), (&json!(6), &json!(10)), "{r}");
    assert!(t.elapsed() < Duration::from_secs(12), "errno 10 took {:?}", t.elapsed());
    assert!(b.try_recv(Duration::from_millis(300)).is_none(), "nobody sees a message that is not durable");
    let t = Instant::now();
    let r = a.request(json!({"msgid":7,"friendid":idb,"seq":2}));
    assert_eq!(r, json!({"msgid":11,"req":7,"seq":2,"errno":10,"errmsg":"server unavailable, retry later"}));
    assert!(t.elapsed() < Duration::from_secs(6), "errno 10 took {:?}", t.elapsed());
    assert_eq!(Client::connect(server.addr).login(ida + 5, "pw")["errno"], 10);
    db.restart();
    let mut seq = 10;
    eventually(|| {
        seq += 1;
        (a.request(json!({"msgid":7,"friendid":idb,"seq":seq}))["errno"] == 0).then_some(())
    });
    a.chat_acked(ida, idb, "durable again", seq + 1);
    assert_eq!(b.recv()["msg"], "durable again");
    b.logout();
    let ack = b.login_ok(idb, "pw");
    assert_eq!(decoded(&ack, "friends")[0]["name"], "alice");
}

/// Redis restarts (empty) while messages flow between nodes: the nodes reconnect and claim
/// their users again; no message is doubled and none that was acknowledged is lost.
#[test]
fn a_redis_restart_under_load_is_survived() {
    let mut cluster = Cluster::start(2);
    let (a, ida) = cluster.user(0, "alice");
    let (mut b, idb) = cluster.user(1, "bob");
    let sender = thread::spawn(move || {
        let mut a = a;
        let mut acked = Vec::new();
        for n in 0..300u64 {
            let r = a.request(json!({"msgid":6,"toid":idb,"msg":n.to_string(),"seq":n}));
            if r["errno"] == 0 {
                acked.push(n);
            }
            thread::sleep(Duration::from_millis(2));
        }
        (a, acked)
    });
    thread::sleep(Duration::from_millis(150));
    cluster.redis.restart(); // empty: every presence key is gone
    let (mut a, acked) = sender.join().unwrap();
    // The nodes reconnected and claimed their users again.
    let key = format!("online:{idb}");
    eventually(|| (cluster.redis.cli(&["GET", &key]) == cluster.names[1]).then_some(()));
    eventually(|| (cluster.redis.cli(&["GET", &format!("online:{ida}")]) == cluster.names[0]).then_some(()));
    assert_eq!(Client::connect(cluster.addr(0)).login(idb, "pw")["errno"], 2, "bob is live on node 1");
    a.chat_acked(ida, idb, "after restart", 1000);
    // Bob reads everything live, then finds the rest (stored while Redis had no key) at login.
    let mut got: Vec<u64> = Vec::new();
    loop {
        let m = b.recv();
        if m["msg"] == "after restart" {
            break;
        }
        got.push(m["msg"].as_str().unwrap().parse().unwrap());
    }
    b.logout();
    let ack = b.login_ok(idb, "pw");
    got.extend(decoded(&ack, "offlinemsg").iter().map(|m| m["msg"].as_str().unwrap().parse::<u64>().unwrap()));
    let unique: HashSet<u64> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "a message was doubled: {got:?}");
    let lost: Vec<u64> = acked.iter().copied().filter(|n| !unique.contains(n)).collect();
    assert!(lost.is_empty(), "acknowledged messages were lost: {lost:?}; received {got:?}");
    assert!(acked.len() > 200, "only {} of 300 acknowledged", acked.len());
}

/// Redis is killed (SIGKILL: whatever it had accepted and not yet written is gone) and comes
/// back empty while Alice on node 0 writes to Bob, whose session on node 1 acknowledges
/// deliveries: every message Alice saw acknowledged reaches Bob, once, in order. His messages
/// are stored before anyone tells his node, so none travels through Redis.
#[test]
fn an_acks_session_on_another_node_loses_nothing_when_redis_is_killed() {
    let mut cluster = Cluster::start(2);
    let (a, ida) = cluster.user(0, "alice");
    let mut b = Client::connect(cluster.addr(1));
    let idb = b.register("bob", "pw");
    let ack = b.request(json!({"msgid":1,"id":idb,"password":"pw","acks":true}));
    assert_eq!(ack["acks"], true, "{ack}");
    assert_eq!(cluster.redis.cli(&["EXISTS", &format!("acks:{idb}")]), "1", "the claim says acks");
    let sender = thread::spawn(move || {
        let mut a = a;
        let mut acked = Vec::new();
        for n in 0..300u64 {
            let r = a.request(json!({"msgid":6,"toid":idb,"msg":n.to_string(),"seq":n}));
            if r["errno"] == 0 {
                acked.push(r["mid"].as_u64().expect("a mid"));
            }
            thread::sleep(Duration::from_millis(2));
        }
        a.chat_acked(ida, idb, "end", 1000);
        acked
    });
    thread::sleep(Duration::from_millis(150));
    cluster.redis.stop(); // SIGKILL
    thread::sleep(Duration::from_millis(300));
    cluster.redis.start_again(); // empty: nothing was saved
    let mut got: Vec<u64> = Vec::new();
    loop {
        let m = b.recv();
        assert_eq!(m["msgid"], 6, "{m}");
        b.send(json!({"msgid":12,"mids":[m["mid"]]}));
        if m["msg"] == "end" {
            break;
        }
        got.push(m["mid"].as_u64().expect("a mid"));
    }
    let acked = sender.join().unwrap();
    let lost: Vec<&u64> = acked.iter().filter(|m| !got.contains(m)).collect();
    assert!(lost.is_empty(), "acknowledged to Alice, never delivered to Bob: {lost:?}");
    let mut sorted = got.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(got, sorted, "doubled or out of order");
    assert!(acked.len() > 200, "only {} of 300 acknowledged", acked.len());
}

/// Redis is down while Bob logs out and comes back with its data: his node could not release
/// his presence key, so other nodes would refuse his logins. The node keeps the release and
/// makes it once it reaches Redis again (here: at Carol's logout).
#[test]
fn a_claim_redis_could_not_release_is_released_later() {
    let mut cluster = Cluster::start(2);
    let (mut b, idb) = cluster.user(1, "bob");
    let (mut c, _) = cluster.user(1, "carol");
    cluster.redis.cli(&["SAVE"]);
    cluster.redis.stop();
    b.logout(); // answered: the session has ended here, whatever Redis says
    cluster.redis.start_again();
    let key = format!("online:{idb}");
    assert_eq!(cluster.redis.cli(&["GET", &key]), cluster.names[1], "the saved key is back, unreleased");
    c.logout();
    eventually(|| cluster.redis.cli(&["GET", &key]).is_empty().then_some(()));
    Client::connect(cluster.addr(0)).login_ok(idb, "pw");
}

/// A dependency that cannot be reached at start: a clear error naming it, and exit status 1.
#[test]
fn unreachable_dependencies_stop_the_start_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite:{}", dir.path().join("chat.db").display());
    let closed = support::mariadb::free_port();
    let cases = [
        (vec!["--store".to_owned(), format!("mysql://chat:secret@127.0.0.1:{closed}/chat")], "--store"),
        (vec!["--store".to_owned(), sqlite, "--bus".to_owned(), format!("redis://127.0.0.1:{closed}")], "--bus"),
    ];
    for (args, flag) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatserver"))
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(flag) && stderr.contains(&format!("127.0.0.1:{closed}")), "{stderr}");
        assert!(!stderr.contains("secret"), "the password leaked: {stderr}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"), "it must not start serving");
    }
}

/// One connection pipelines chats to a user on other nodes (many on the bus at once) while that
/// user hops between two nodes, logging out and in: each message arrives once, and in the order
/// sent (invariant 1), and the sender's answers come back in request order.
///
/// Fails about one run in three (see the README's known limits): messages the old node received
/// just after the session ended are stored by that node's mailbox lane, while the sender's node,
/// finding the user offline a moment later, stores the next ones itself, and its write can
/// commit first. Every message arrives once; the order across that boundary can break.
#[test]
#[ignore = "known race: a session's last routed messages can be overtaken in the mailbox"]
fn pipelined_chats_to_a_user_moving_between_nodes_keep_their_order() {
    const MESSAGES: u64 = 3000;
    let cluster = Cluster::start(3);
    let (a, ida) = cluster.user(0, "streamer");
    let idb = Client::connect(cluster.addr(1)).register("mover", "pw");
    let sender = thread::spawn(move || {
        let mut a = a;
        for chunk in (0..MESSAGES).collect::<Vec<_>>().chunks(100) {
            let batch: String = chunk
                .iter()
                .map(|n| format!("{}\n", json!({"msgid":6,"id":ida,"toid":idb,"msg":n.to_string(),"seq":n})))
                .collect();
            a.send_raw(batch.as_bytes());
            thread::sleep(Duration::from_millis(5));
        }
        for n in 0..MESSAGES {
            let r = a.recv();
            assert_eq!((r["seq"].as_u64(), r["errno"].as_u64()), (Some(n), Some(0)), "{r}");
        }
    });
    let mut got: Vec<u64> = Vec::new();
    let mut mids = HashSet::new();
    let mut keep = |m: &serde_json::Value, got: &mut Vec<u64>| {
        if m["msgid"] == 6 && mids.insert(m["mid"].as_u64().expect("a mid")) {
            got.push(m["msg"].as_str().and_then(|s| s.parse().ok()).expect("a number"));
        }
    };
    let mut hop = 0;
    loop {
        let done = sender.is_finished() && hop >= 4;
        let mut b = Client::connect(cluster.addr(1 + hop % 2));
        let ack = b.login_ok(idb, "pw");
        decoded(&ack, "offlinemsg").iter().for_each(|m| keep(m, &mut got));
        let t = Instant::now();
        let stay = if done { Duration::from_secs(10) } else { Duration::from_millis(60) };
        while t.elapsed() < stay && !(done && got.len() as u64 == MESSAGES) {
            if let Some(m) = b.try_recv(Duration::from_millis(20)) {
                keep(&m, &mut got);
            }
        }
        if done {
            break;
        }
        b.send(json!({"msgid":3,"seq":"bye"}));
        loop {
            let m = b.recv();
            if m["seq"] == "bye" {
                break;
            }
            keep(&m, &mut got);
        }
        hop += 1;
    }
    sender.join().unwrap();
    assert!(hop >= 4, "the user moved: {hop} hops");
    let misplaced = got.iter().enumerate().position(|(i, &n)| n != i as u64);
    let around = misplaced.map(|i| &got[i.saturating_sub(3)..(i + 12).min(got.len())]);
    assert!(
        misplaced.is_none() && got.len() as u64 == MESSAGES,
        "once each, in order, over {hop} hops: {} received, first out of place at {misplaced:?}: {around:?}",
        got.len()
    );
}
