//! Acknowledged delivery (protocol version 2) over real TCP: a session that logs in with
//! `"acks":true` gets what waits after its login ack, at most `window` unacknowledged at once,
//! and whatever it did not acknowledge comes back at the next login, however the session ended.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{decoded, Client, ServerProcess, TestServer};

const QUIET: Duration = Duration::from_millis(300);

fn mid(v: &Value) -> u64 {
    v["mid"].as_u64().unwrap_or_else(|| panic!("no mid in {v}"))
}

fn acks_login(c: &mut Client, id: u32) {
    let ack = c.request(json!({"msgid":1,"id":id,"password":"pw","acks":true}));
    assert_eq!((&ack["errno"], &ack["acks"]), (&json!(0), &json!(true)), "{ack}");
    assert!(ack.get("offlinemsg").is_none(), "an acks login ack carries no offlinemsg: {ack}");
}

/// The server learns of a close asynchronously: until it has, the user is still online
/// (errno 2); the login must succeed as soon as it has.
fn acks_login_after_close(c: &mut Client, id: u32) {
    let ack = support::eventually(|| {
        let ack = c.request(json!({"msgid":1,"id":id,"password":"pw","acks":true}));
        (ack["errno"] != 2).then_some(ack)
    });
    assert_eq!((&ack["errno"], &ack["acks"]), (&json!(0), &json!(true)), "{ack}");
}

/// `n` deliveries as (text, mid).
fn deliveries(c: &mut Client, n: usize) -> Vec<(String, u64)> {
    (0..n)
        .map(|_| {
            let m = c.recv();
            assert_eq!(m["msgid"], 6, "{m}");
            (m["msg"].as_str().unwrap().to_owned(), mid(&m))
        })
        .collect()
}

fn send(c: &mut Client, to: u32, texts: impl IntoIterator<Item = String>) -> Vec<u64> {
    texts
        .into_iter()
        .map(|t| {
            let r = c.request(json!({"msgid":6,"toid":to,"msg":t,"seq":1}));
            assert_eq!(r["errno"], 0, "{r}");
            mid(&r)
        })
        .collect()
}

#[test]
fn what_an_acks_session_did_not_acknowledge_comes_back_at_the_next_login() {
    let s = TestServer::start();
    let (mut a, _ida) = s.user("alice");
    let mut b = s.client();
    let idb = b.register("bob", "pw");
    let mids = send(&mut a, idb, (0..5).map(|n| n.to_string()));
    acks_login(&mut b, idb);
    let got = deliveries(&mut b, 5);
    assert_eq!(got.iter().map(|(_, m)| *m).collect::<Vec<_>>(), mids, "oldest first, with their mids");
    let r = b.request(json!({"msgid":12,"mids":[mids[0], mids[2], mids[1]],"seq":"a"}));
    assert_eq!(r, json!({"msgid":11,"req":12,"seq":"a","errno":0}));
    // Unknown and repeated mids are ignored; without seq there is no answer.
    b.send(json!({"msgid":12,"mids":[mids[0], 999_999]}));
    b.expect_silence(QUIET);
    drop(b); // the session ends by a close
    let mut b = s.client();
    acks_login_after_close(&mut b, idb);
    let again = deliveries(&mut b, 2);
    assert_eq!(again, vec![("3".to_owned(), mids[3]), ("4".to_owned(), mids[4])], "same mids, same order");
    // Live messages follow what was waiting.
    let later = send(&mut a, idb, ["5".to_owned()]);
    assert_eq!(deliveries(&mut b, 1), vec![("5".to_owned(), later[0])]);
    b.logout();
    // A login without acks finds every unacknowledged message in its ack.
    let offline = decoded(&b.login_ok(idb, "pw"), "offlinemsg");
    assert_eq!(offline.iter().map(mid).collect::<Vec<_>>(), [mids[3], mids[4], later[0]]);
}

#[test]
fn the_window_bounds_what_is_unacknowledged() {
    let s = TestServer::start_with(|c| c.window = 3);
    let (mut a, _ida) = s.user("alice");
    let mut b = s.client();
    let idb = b.register("bob", "pw");
    acks_login(&mut b, idb);
    let mids = send(&mut a, idb, (0..10).map(|n| n.to_string()));
    let first = deliveries(&mut b, 3);
    b.expect_silence(QUIET);
    b.send(json!({"msgid":12,"mids":[first[0].1, first[1].1]}));
    let next = deliveries(&mut b, 2);
    b.expect_silence(QUIET);
    let shown: Vec<u64> = first.iter().chain(&next).map(|(_, m)| *m).collect();
    assert_eq!(shown, mids[..5]);
    let all: Vec<u64> = shown[2..].to_vec();
    b.send(json!({"msgid":12,"mids":all}));
    let rest = deliveries(&mut b, 3);
    b.send(json!({"msgid":12,"mids":rest.iter().map(|(_, m)| *m).collect::<Vec<_>>()}));
    let last = deliveries(&mut b, 2);
    let shown: Vec<u64> = rest.iter().chain(&last).map(|(_, m)| *m).collect();
    assert_eq!(shown, mids[5..]);
    b.expect_silence(QUIET);
}

#[test]
fn acknowledgements_are_validated_and_ignored_without_acks() {
    let s = TestServer::start();
    let (mut a, _ida) = s.user("alice");
    let (mut b, idb) = s.user("bob");
    for bad in [json!([]), json!("1"), json!([0]), json!([1.5]), json!([-1]), json!((1..=1001).collect::<Vec<u64>>())] {
        let r = b.request(json!({"msgid":12,"mids":bad,"seq":1}));
        assert_eq!((&r["req"], &r["errno"]), (&json!(12), &json!(4)), "mids {bad}: {r}");
    }
    let r = b.request(json!({"msgid":12,"id":idb + 1,"mids":[1],"seq":1}));
    assert_eq!(r["errno"], 11);
    // A session without acks: acknowledged as a request, nothing else happens.
    send(&mut a, idb, ["live".to_owned()]);
    let m = b.recv();
    assert_eq!(b.request(json!({"msgid":12,"mids":[mid(&m)],"seq":2}))["errno"], 0);
    b.logout();
    assert!(decoded(&b.login_ok(idb, "pw"), "offlinemsg").is_empty(), "delivered means written, as in v1");
    b.logout();
    let r = b.request(json!({"msgid":1,"id":idb,"password":"pw","acks":"yes"}));
    assert_eq!((&r["msgid"], &r["errno"]), (&json!(2), &json!(4)));
    assert_eq!(s.client().request(json!({"msgid":12,"mids":[1]}))["errno"], 3, "not logged in");
}

/// The node dies with deliveries unacknowledged: they come back after the restart.
#[test]
fn unacknowledged_deliveries_survive_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let store = support::fresh_store(dir.path());
    let node = ServerProcess::spawn(&store, &[]);
    let mut reg = Client::connect(node.addr);
    let (ida, idb) = (reg.register("alice", "pw"), reg.register("bob", "pw"));
    let mut a = Client::connect(node.addr);
    a.login_ok(ida, "pw");
    let mut b = Client::connect(node.addr);
    acks_login(&mut b, idb);
    let mids = send(&mut a, idb, (0..50).map(|n| n.to_string()));
    let got = deliveries(&mut b, 50);
    assert_eq!(got.iter().map(|(_, m)| *m).collect::<Vec<_>>(), mids);
    b.send(json!({"msgid":12,"mids":mids[..20].to_vec(),"seq":1}));
    assert_eq!(b.recv()["errno"], 0);
    node.signal("KILL");
    drop(node);
    let node = ServerProcess::spawn(&store, &[]);
    let mut b = Client::connect(node.addr);
    acks_login(&mut b, idb);
    let again = deliveries(&mut b, 30);
    assert_eq!(again.iter().map(|(_, m)| *m).collect::<Vec<_>>(), mids[20..], "the unacknowledged, in order, once");
    b.expect_silence(QUIET);
}

/// A message stored for a live user whose notification was lost (written here into the
/// mailbox behind the server's back, so nothing tells the session) still arrives within a few
/// seconds: the node's sweep finds it. For a canonical and an acks session alike.
#[test]
fn a_stored_message_whose_notification_was_lost_arrives_within_seconds() {
    let s = TestServer::start();
    let (mut a, ida) = s.user("alice");
    let mut c = s.client();
    let idc = c.register("carol", "pw");
    acks_login(&mut c, idc);
    let stored = |to: u32, text: &str, mid: u64| {
        let m = json!({"msgid":6,"id":9,"name":"x","toid":to,"msg":text,"time":"t","mid":mid});
        s.sql_exec(&format!("INSERT INTO OfflineMessage (userid, message) VALUES ({to}, '{m}')"));
    };
    stored(ida, "lost notification", 1_000_001);
    stored(idc, "lost notification too", 1_000_002);
    let wait = Duration::from_secs(5);
    let m = a.try_recv(wait).expect("delivered within 5 s");
    assert_eq!((&m["msg"], &m["mid"]), (&json!("lost notification"), &json!(1_000_001)));
    let m = c.try_recv(wait).expect("delivered within 5 s");
    assert_eq!((&m["msg"], &m["mid"]), (&json!("lost notification too"), &json!(1_000_002)));
    // Delivered once: the canonical mailbox was taken, the acks one is read until acknowledged.
    a.expect_silence(Duration::from_secs(3));
    c.expect_silence(QUIET);
    assert_eq!(s.sql_strings(&format!("SELECT message FROM OfflineMessage WHERE userid = {ida}")).len(), 0);
    assert_eq!(s.sql_strings(&format!("SELECT message FROM OfflineMessage WHERE userid = {idc}")).len(), 1);
}

/// A connection that died without a FIN or a reset (the client here just stops reading and
/// acknowledging, its socket left open, as behind a blackholed path) keeps its user online
/// only until the acknowledgement timeout: then the session ends, a new login works, and the
/// unacknowledged messages come again.
#[test]
fn a_session_that_stops_acknowledging_ends_and_its_messages_wait() {
    let s = TestServer::start_with(|c| c.ack_timeout = Duration::from_secs(2));
    let (mut a, ida) = s.user("alice");
    let mut silent = s.client();
    let idb = silent.register("bob", "pw");
    acks_login(&mut silent, idb);
    let mids = send(&mut a, idb, (0..3).map(|n| n.to_string()));
    assert_eq!(deliveries(&mut silent, 3).iter().map(|(_, m)| *m).collect::<Vec<_>>(), mids);
    let mut b = s.client();
    let refused = b.request(json!({"msgid":1,"id":idb,"password":"pw","acks":true}));
    assert_eq!(refused["errno"], 2, "still online while within the timeout: {refused}");
    let started = std::time::Instant::now();
    let ack = support::eventually(|| {
        let ack = b.request(json!({"msgid":1,"id":idb,"password":"pw","acks":true}));
        (ack["errno"] == 0).then_some(ack)
    });
    assert!(started.elapsed() < Duration::from_secs(5), "ended by the 2 s timeout, not by TCP");
    assert_eq!(ack["acks"], true);
    let again = deliveries(&mut b, 3);
    assert_eq!(again.iter().map(|(_, m)| *m).collect::<Vec<_>>(), mids, "the same messages, same mids");
    assert!(silent.is_closed(), "the stalled connection was closed");
    // A session that acknowledges stays, however long it lives.
    b.send(json!({"msgid":12,"mids":mids}));
    let more = send(&mut a, idb, ["later".to_owned()]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(deliveries(&mut b, 1)[0].1, more[0]);
    b.send(json!({"msgid":12,"mids":more}));
    b.expect_silence(Duration::from_secs(3));
    assert!(b.request(json!({"msgid":6,"toid":ida,"msg":"still here","seq":9}))["errno"] == 0);
}
