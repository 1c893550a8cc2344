//! Protocol version 2, part 1, over real TCP: message identity (`mid`, `cid`), durability
//! (acknowledged means logged, across a `kill -9`), history (msgid 14), and the migration of a
//! database written before the message log existed.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};
use support::{decoded, Client, ServerProcess, TestServer};

const QUIET: Duration = Duration::from_millis(200);

fn mid(v: &Value) -> u64 {
    v["mid"].as_u64().unwrap_or_else(|| panic!("no mid in {v}"))
}

/// Every page of a conversation, oldest first, following `more` and `before`.
fn whole_history(c: &mut Client, with: Value) -> Vec<Value> {
    let mut pages: Vec<Vec<Value>> = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut q = json!({"msgid":14,"limit":200});
        q.as_object_mut().unwrap().extend(with.as_object().unwrap().clone());
        if let Some(b) = before {
            q["before"] = b.into();
        }
        let r = c.request(q);
        assert_eq!(r["errno"], 0, "{r}");
        let page = r["messages"].as_array().unwrap().clone();
        before = page.first().map(mid);
        let more = r["more"] == true;
        pages.push(page);
        if !more {
            break;
        }
    }
    pages.into_iter().rev().flatten().collect()
}

#[test]
fn every_copy_of_a_message_carries_its_mid() {
    let s = TestServer::start();
    let (mut a, ida) = s.user("alice");
    let (mut b, idb) = s.user("bob");
    let (mut c, idc) = s.user("carol");
    let ack = a.request(json!({"msgid":6,"toid":idb,"msg":"live","seq":1}));
    let m1 = mid(&ack);
    let live = b.recv();
    assert_eq!((mid(&live), &live["msg"]), (m1, &json!("live")));
    assert!(live["ts"].as_u64().is_some_and(|ts| ts > 0));
    b.logout();
    let m2 = mid(&a.request(json!({"msgid":6,"toid":idb,"msg":"stored","seq":2})));
    assert!(m2 > m1, "mids grow: {m1} then {m2}");
    let offline = decoded(&b.login_ok(idb, "pw"), "offlinemsg");
    assert_eq!((mid(&offline[0]), &offline[0]["msg"]), (m2, &json!("stored")));
    // A group message has one mid for all its recipients, live and stored.
    let gid = a.request(json!({"msgid":8,"groupname":"g","seq":3}))["groupid"].clone();
    for (client, seq) in [(&mut b, 4), (&mut c, 5)] {
        assert_eq!(client.request(json!({"msgid":9,"groupid":gid,"seq":seq}))["errno"], 0);
    }
    c.logout();
    let g = mid(&a.request(json!({"msgid":10,"groupid":gid,"msg":"all","seq":6})));
    assert_eq!(mid(&b.recv()), g);
    assert_eq!(mid(&decoded(&c.login_ok(idc, "pw"), "offlinemsg")[0]), g);
    // And history shows the same mids.
    let mids: Vec<u64> = whole_history(&mut b, json!({"peer":ida})).iter().map(mid).collect();
    assert_eq!(mids, [m1, m2]);
    assert_eq!(whole_history(&mut c, json!({"groupid":gid})).iter().map(mid).collect::<Vec<_>>(), [g]);
}

#[test]
fn a_repeated_cid_is_acknowledged_with_the_first_mid_and_not_delivered_again() {
    let s = TestServer::start();
    let (mut a, _ida) = s.user("alice");
    let (mut b, idb) = s.user("bob");
    let (mut c, _idc) = s.user("carol");
    let first = a.request(json!({"msgid":6,"toid":idb,"msg":"once","cid":"a-1","seq":1}));
    assert_eq!(first, json!({"msgid":11,"req":6,"seq":1,"errno":0,"mid":mid(&first)}));
    let delivered = b.recv();
    assert_eq!((mid(&delivered), &delivered["cid"]), (mid(&first), &json!("a-1")));
    let again = a.request(json!({"msgid":6,"toid":idb,"msg":"once","cid":"a-1","seq":2}));
    assert_eq!(again, json!({"msgid":11,"req":6,"seq":2,"errno":0,"mid":mid(&first),"dup":true}));
    b.expect_silence(QUIET);
    // The cid is the sender's: another sender may use the same one.
    let other = c.request(json!({"msgid":6,"toid":idb,"msg":"mine","cid":"a-1","seq":1}));
    assert!(mid(&other) > mid(&first));
    assert_eq!(b.recv()["msg"], "mine");
    // Pipelined resends are deduplicated too, whichever batch they land in.
    for seq in 10..20 {
        a.send(json!({"msgid":6,"toid":idb,"msg":"burst","cid":"a-2","seq":seq}));
    }
    let acks: Vec<Value> = (10..20).map(|_| a.recv()).collect();
    assert_eq!(acks.iter().map(|a| a["seq"].as_u64().unwrap()).collect::<Vec<_>>(), (10..20).collect::<Vec<_>>());
    assert_eq!(acks.iter().map(mid).collect::<HashSet<_>>().len(), 1, "{acks:?}");
    assert_eq!(acks.iter().filter(|a| a["dup"] == true).count(), 9);
    assert_eq!(b.recv()["msg"], "burst");
    b.expect_silence(QUIET);
    for bad in [json!(""), json!("c".repeat(65)), json!(7), json!(null)] {
        let r = a.request(json!({"msgid":6,"toid":idb,"msg":"x","cid":bad,"seq":30}));
        assert_eq!((&r["req"], &r["errno"]), (&json!(6), &json!(4)), "cid {bad}: {r}");
    }
    b.expect_silence(QUIET);
}

#[test]
fn history_pages_back_through_a_conversation() {
    let s = TestServer::start();
    let (mut a, ida) = s.user("alice");
    let (mut b, idb) = s.user("bob");
    let (mut c, idc) = s.user("carol");
    for n in 0..5 {
        let (from, to, other) = if n % 2 == 0 { (&mut a, idb, &mut b) } else { (&mut b, ida, &mut a) };
        assert_eq!(from.request(json!({"msgid":6,"toid":to,"msg":format!("m{n}"),"seq":n}))["errno"], 0);
        assert_eq!(other.recv()["msg"], format!("m{n}"));
    }
    // The newest two, oldest first; then the page before them; no `seq` needed.
    let r = a.request(json!({"msgid":14,"peer":idb,"limit":2}));
    let texts = |r: &Value| r["messages"].as_array().unwrap().iter().map(|m| m["msg"].clone()).collect::<Vec<_>>();
    assert_eq!((r["req"].clone(), r["errno"].clone(), r["more"].clone()), (json!(14), json!(0), json!(true)));
    assert_eq!(texts(&r), [json!("m3"), json!("m4")]);
    let first = &r["messages"][0];
    assert_eq!(
        (&first["msgid"], &first["id"], &first["name"], &first["toid"]),
        (&json!(6), &json!(idb), &json!("bob"), &json!(ida))
    );
    let r2 = b.request(json!({"msgid":14,"peer":ida,"before":mid(first),"limit":2,"seq":"h"}));
    assert_eq!(
        (texts(&r2), r2["seq"].clone(), r2["more"].clone()),
        (vec![json!("m1"), json!("m2")], json!("h"), json!(true))
    );
    let r3 = b.request(json!({"msgid":14,"peer":ida,"before":mid(&r2["messages"][0])}));
    assert_eq!((texts(&r3), r3["more"].clone()), (vec![json!("m0")], json!(false)));
    assert_eq!(c.request(json!({"msgid":14,"peer":ida}))["messages"], json!([]), "carol and alice never spoke");
    // A member reads the group's whole history, from before it joined too.
    let gid = a.request(json!({"msgid":8,"groupname":"g","seq":1}))["groupid"].clone();
    assert_eq!(a.request(json!({"msgid":10,"groupid":gid,"msg":"early","seq":2}))["errno"], 0);
    assert_eq!(c.request(json!({"msgid":14,"groupid":gid}))["errno"], 8, "not a member yet");
    assert_eq!(c.request(json!({"msgid":9,"groupid":gid,"seq":3}))["errno"], 0);
    assert_eq!(texts(&c.request(json!({"msgid":14,"groupid":gid}))), [json!("early")]);
    // Errors: unknown user 6, unknown group 7, ill-formed 4, someone else's id 11.
    let e = |c: &mut Client, q: Value| {
        let r = c.request(q);
        assert_eq!(r["req"], 14, "{r}");
        r["errno"].as_u64().unwrap()
    };
    assert_eq!(e(&mut a, json!({"msgid":14,"peer":idc + 100})), 6);
    assert_eq!(e(&mut a, json!({"msgid":14,"groupid":999})), 7);
    assert_eq!(e(&mut a, json!({"msgid":14})), 4);
    assert_eq!(e(&mut a, json!({"msgid":14,"peer":idb,"groupid":gid})), 4);
    for limit in [json!(0), json!(201), json!("5"), json!(-1)] {
        assert_eq!(e(&mut a, json!({"msgid":14,"peer":idb,"limit":limit})), 4, "limit {limit}");
    }
    let group_mid = mid(&c.request(json!({"msgid":14,"groupid":gid}))["messages"][0]);
    assert_eq!(e(&mut a, json!({"msgid":14,"peer":idb,"before":group_mid})), 4, "a mid of another conversation");
    assert_eq!(e(&mut a, json!({"msgid":14,"peer":idb,"before":0})), 4);
    assert_eq!(e(&mut a, json!({"msgid":14,"id":idb,"peer":idb})), 11);
    assert_eq!(e(&mut s.client(), json!({"msgid":14,"peer":idb})), 3);
}

/// Requests after chat messages still in the log wait for their answers: the answers come
/// back in request order.
#[test]
fn answers_keep_the_request_order_while_messages_are_logged() {
    let s = TestServer::start();
    let (mut a, _ida) = s.user("alice");
    let (mut b, idb) = s.user("bob");
    let mut burst = String::new();
    for n in 0..50 {
        burst += &json!({"msgid":6,"toid":idb,"msg":format!("{n}"),"seq":n}).to_string();
        burst += "\n";
        if n % 10 == 9 {
            burst += &json!({"msgid":6,"toid":idb,"msg":"x","cid":"","seq":format!("bad{n}")}).to_string();
            burst += "\n";
            burst += &json!({"msgid":14,"peer":idb,"limit":1,"seq":format!("h{n}")}).to_string();
            burst += "\n";
        }
    }
    a.send_raw(burst.as_bytes());
    let mut seqs = Vec::new();
    for _ in 0..60 {
        let r = a.recv();
        seqs.push(r["seq"].clone());
        if r["req"] == 14 {
            // A history query after message n sees message n as the newest.
            let n: u64 = r["seq"].as_str().unwrap()[1..].parse().unwrap();
            assert_eq!(r["messages"][0]["msg"], n.to_string(), "{r}");
        }
    }
    let mut expected = Vec::new();
    for n in 0..50 {
        expected.push(json!(n));
        if n % 10 == 9 {
            expected.push(json!(format!("bad{n}")));
            expected.push(json!(format!("h{n}")));
        }
    }
    assert_eq!(seqs, expected);
    let got: Vec<String> = (0..50).map(|_| b.recv()["msg"].as_str().unwrap().to_owned()).collect();
    assert_eq!(got, (0..50).map(|n| n.to_string()).collect::<Vec<_>>());
}

/// Acknowledged means durable: a node killed with `kill -9` right after its acks comes back
/// with every acknowledged message in the recipient's mailbox and in history.
#[test]
fn acknowledged_messages_survive_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let store = support::fresh_store(dir.path());
    let node = ServerProcess::spawn(&store, &[]);
    let mut reg = Client::connect(node.addr);
    let (ida, idb) = (reg.register("alice", "pw"), reg.register("bob", "pw"));
    let mut a = Client::connect(node.addr);
    a.login_ok(ida, "pw");
    let mut burst = String::new();
    for n in 0..300 {
        burst += &json!({"msgid":6,"toid":idb,"msg":format!("{n}"),"seq":n}).to_string();
        burst += "\n";
    }
    a.send_raw(burst.as_bytes());
    let mut acked = Vec::new();
    for _ in 0..300 {
        let r = a.recv();
        assert_eq!(r["errno"], 0, "{r}");
        acked.push((r["seq"].as_u64().unwrap(), mid(&r)));
    }
    node.signal("KILL");
    drop(node);
    let node = ServerProcess::spawn(&store, &[]);
    let mut b = Client::connect(node.addr);
    let offline = decoded(&b.login_ok(idb, "pw"), "offlinemsg");
    let stored: Vec<(u64, u64)> =
        offline.iter().map(|m| (m["msg"].as_str().unwrap().parse().unwrap(), mid(m))).collect();
    assert_eq!(stored, acked, "every acknowledged message, in order, once");
    let history: Vec<(u64, u64)> = whole_history(&mut b, json!({"peer":ida}))
        .iter()
        .map(|m| (m["msg"].as_str().unwrap().parse().unwrap(), mid(m)))
        .collect();
    assert_eq!(history, acked);
}

/// A database written before the message log existed (no `Message` tables) is migrated on
/// start: users, friends, groups and waiting offline messages are all there, and chat gets mids.
#[test]
fn a_database_without_the_message_log_is_migrated_on_start() {
    let s = TestServer::start();
    let (mut a, ida) = s.user("alice");
    let (mut b, idb) = s.user("bob");
    assert_eq!(a.request(json!({"msgid":7,"friendid":idb,"seq":1}))["errno"], 0);
    let gid = a.request(json!({"msgid":8,"groupname":"old","groupdesc":"days","seq":2}))["groupid"].clone();
    assert_eq!(b.request(json!({"msgid":9,"groupid":gid,"seq":3}))["errno"], 0);
    b.logout();
    drop((a, b));
    let store = s.store.clone();
    let mut s = s;
    s.stop();
    // As the previous schema left it: no log; a message waiting in the mailbox.
    support::sql_exec(&store, "DROP TABLE Message");
    support::sql_exec(&store, "DROP TABLE MessageSeq");
    let waiting = json!({"msgid":6,"id":ida,"name":"alice","toid":idb,"msg":"from before","time":"t"}).to_string();
    support::sql_exec(&store, &format!("INSERT INTO OfflineMessage (userid, message) VALUES ({idb}, '{waiting}')"));
    let s2 = TestServer::start_on(&store, |_| {});
    let mut b = s2.client();
    let ack = b.login_ok(idb, "pw");
    assert_eq!(decoded(&ack, "friends")[0]["name"], "alice");
    assert_eq!(decoded(&ack, "groups")[0]["groupname"], "old");
    assert_eq!(decoded(&ack, "groups")[0]["id"], gid);
    assert_eq!(decoded(&ack, "offlinemsg")[0]["msg"], "from before");
    let mut a = s2.client();
    a.login_ok(ida, "pw");
    let m = mid(&a.request(json!({"msgid":6,"toid":idb,"msg":"after","seq":1})));
    assert_eq!(mid(&b.recv()), m);
    assert_eq!(whole_history(&mut b, json!({"peer":ida})).len(), 1, "history starts with the log");
}
