//! `chatbench integrity` against real servers while faults are injected: users in acks
//! sessions send paced messages to random partners and survive their connections; every
//! message a sender saw acknowledged must reach its recipient, once, in order. Short runs of
//! each fault alone: client resets, blackholed paths, a node `kill -9` and restart, Redis
//! `kill -9` and restart, a graceful Redis restart; and blackholes under canonical sessions.

mod support;

use std::thread;
use std::time::Duration;

use chat::bench::integrity::{integrity, IntegrityPlan, IntegrityReport};
use support::mariadb::MariaDb;
use support::redis::RedisServer;
use support::{ServerProcess, TestServer};

fn plan(addrs: Vec<String>) -> IntegrityPlan {
    IntegrityPlan {
        addrs,
        users: 12,
        duration: Duration::from_secs(4),
        rate: 300.0,
        drain: Duration::from_secs(25),
        acks: true,
        rst_every: None,
        blackhole_every: None,
        blackhole_for: Duration::from_secs(2),
        faults: Vec::new(),
        fault_every: Duration::from_secs(1),
        progress: false,
    }
}

/// Nothing lost, unexpected, doubled or reordered, and the run did something.
fn assert_clean(r: &IntegrityReport) {
    assert!(r.ok(), "{r:?}");
    assert!(r.acknowledged > 600, "too little traffic to judge: {r:?}");
    assert_eq!(r.delivered, r.acknowledged + r.recovered, "{r:?}");
}

/// Runs the plan on a thread while `faults` runs here.
fn run_with(plan: IntegrityPlan, faults: impl FnOnce()) -> IntegrityReport {
    let run = thread::spawn(move || integrity(&plan).expect("the users sign up"));
    faults();
    run.join().unwrap()
}

#[test]
fn clients_that_reset_their_connections_lose_nothing() {
    let s = TestServer::start();
    let mut p = plan(vec![s.addr.to_string()]);
    p.rst_every = Some(Duration::from_millis(100));
    // Fault commands run in turn during the send phase (4 s): at 1, 2 and 3 s.
    p.faults = vec!["true".into(), "exit 3".into()];
    let r = run_with(p, || {});
    assert_clean(&r);
    assert!(r.resets >= 20 && r.reconnects >= r.resets, "{r:?}");
    assert_eq!((r.faults, r.faults_failed), (3, 1), "{r:?}");
}

/// Paths that go silent both ways with their sockets open: the server learns of it only
/// because the session stops acknowledging (`ack_timeout`), ends it, and the user's next
/// login gets what it never acknowledged.
#[test]
fn blackholed_recipients_lose_nothing() {
    let s = TestServer::start_with(|c| c.ack_timeout = Duration::from_secs(1));
    let mut p = plan(vec![s.addr.to_string()]);
    p.blackhole_every = Some(Duration::from_millis(700));
    p.blackhole_for = Duration::from_millis(1500);
    let r = run_with(p, || {});
    assert_clean(&r);
    assert!(r.blackholes >= 4 && r.reconnects >= r.blackholes, "{r:?}");
}

/// Canonical sessions cannot acknowledge, so the server counts a message as delivered once the
/// peer's TCP stack acknowledged its bytes, and puts back whatever it did not when the
/// connection ends. A silent network acknowledges nothing; the test's proxy acknowledges what
/// fits in its receive buffer, and only those messages may be lost.
#[test]
fn canonical_sessions_lose_only_what_a_blackholing_proxy_acknowledged() {
    let s = TestServer::start();
    let mut p = plan(vec![s.addr.to_string()]);
    p.acks = false;
    p.blackhole_every = Some(Duration::from_millis(700));
    p.blackhole_for = Duration::from_millis(1500);
    let r = run_with(p, || {});
    assert_eq!(r.lost, r.lost_in_proxy, "lost beyond what the proxy swallowed: {r:?}");
    assert_eq!((r.unexpected, r.duplicated, r.order_violations), (0, 0, 0), "{r:?}");
    assert!(r.acknowledged > 600 && r.blackholes >= 4, "{r:?}");
    assert_eq!(r.delivered + r.lost, r.acknowledged + r.recovered, "{r:?}");
}

#[test]
fn a_node_killed_and_restarted_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = support::fresh_store(dir.path());
    let listen = format!("127.0.0.1:{}", support::stable_port());
    let mut node = ServerProcess::spawn_on(&listen, &store, &[]);
    // Longer than the other runs: nothing is sent while the node is down and its users log in
    // again, and what is left must still be enough to judge.
    let r = run_with(IntegrityPlan { duration: Duration::from_secs(6), ..plan(vec![listen.clone()]) }, || {
        thread::sleep(Duration::from_millis(1500));
        node.signal("KILL");
        let _ = node.child.wait();
        thread::sleep(Duration::from_millis(300));
        node = ServerProcess::spawn_on(&listen, &store, &[]);
    });
    assert_clean(&r);
    assert!(r.reconnects >= 12, "every user came back: {r:?}");
    drop(node);
}

/// Two nodes, users on both (most messages cross), Redis faulted by `fault`.
fn cluster_with_redis_fault(fault: impl FnOnce(&mut RedisServer)) -> IntegrityReport {
    let mut redis = RedisServer::start();
    let store = MariaDb::shared().fresh_database();
    let nodes: Vec<ServerProcess> = (0..2)
        .map(|i| ServerProcess::spawn(&store, &["--bus", &redis.url(), "--node-id", &format!("{}-n{i}", redis.port)]))
        .collect();
    let addrs = nodes.iter().map(|n| n.addr.to_string()).collect();
    let r = run_with(plan(addrs), || {
        thread::sleep(Duration::from_millis(1500));
        fault(&mut redis);
    });
    drop(nodes);
    r
}

#[test]
fn redis_killed_and_restarted_empty_loses_nothing() {
    let r = cluster_with_redis_fault(|redis| {
        redis.stop(); // SIGKILL
        thread::sleep(Duration::from_millis(500));
        redis.start_again();
    });
    assert_clean(&r);
}

#[test]
fn a_graceful_redis_restart_loses_nothing() {
    let r = cluster_with_redis_fault(|redis| redis.restart());
    assert_clean(&r);
}
