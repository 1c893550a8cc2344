//! Every message and every errno of PROTOCOL.md, over real TCP against a real server.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{decoded, Client, TestServer};

const QUIET: Duration = Duration::from_millis(200);

#[test]
fn register_validates_and_refuses_taken_names() {
    let s = TestServer::start();
    let mut c = s.client();
    let a = c.register("alice", "pw");
    let b = c.register("bob", "pw");
    assert!(a >= 1 && b > a);
    let r = c.request(json!({"msgid":4,"name":"alice","password":"x"}));
    assert_eq!((r["msgid"].clone(), r["errno"].clone()), (json!(5), json!(1)));
    assert!(r["errmsg"].is_string());
    // The right type with the wrong length or content is errno 1; a wrong type is errno 4.
    for bad in [json!(""), json!("x".repeat(51)), json!("a\tb")] {
        let r = c.request(json!({"msgid":4,"name":bad,"password":"pw"}));
        assert_eq!((r["msgid"].clone(), r["errno"].clone()), (json!(5), json!(1)), "name {bad}");
    }
    let r = c.request(json!({"msgid":4,"name":5,"password":"pw"}));
    assert_eq!((r["msgid"].clone(), r["errno"].clone()), (json!(5), json!(4)));
    for bad in [String::new(), "p".repeat(129)] {
        let r = c.request(json!({"msgid":4,"name":"carol","password":bad}));
        assert_eq!((r["msgid"].clone(), r["errno"].clone()), (json!(5), json!(1)));
    }
    let r = c.request(json!({"msgid":4,"name":"carol","seq":"s1"}));
    assert_eq!(r, json!({"msgid":5,"seq":"s1","errno":4,"errmsg":"bad request: missing password"}));
    // A 50-byte multi-byte name is fine.
    c.register(&"é".repeat(25), "pw");
}

#[test]
fn login_errors_and_duplicate_sessions() {
    let s = TestServer::start();
    let mut c = s.client();
    let id = c.register("alice", "pw");
    let r = c.login(id, "wrong");
    assert_eq!(r, json!({"msgid":2,"errno":1,"errmsg":"id or password is invalid!"}));
    assert_eq!(c.login(id + 100, "pw")["errno"], 1);
    let r = c.request(json!({"msgid":1,"id":"1","password":"pw"}));
    assert_eq!((r["msgid"].clone(), r["errno"].clone()), (json!(2), json!(4)));
    // An empty or over-long password is answered as a wrong one.
    for bad in [String::new(), "p".repeat(129)] {
        let r = c.request(json!({"msgid":1,"id":id,"password":bad}));
        assert_eq!(r, json!({"msgid":2,"errno":1,"errmsg":"id or password is invalid!"}));
    }
    let ack = c.login_ok(id, "pw");
    assert_eq!(ack, json!({"msgid":2,"errno":0,"id":id,"name":"alice"}));
    // Again on the same connection, and from another connection: errno 2.
    let same = c.login(id, "pw");
    assert_eq!(same, json!({"msgid":2,"errno":2,"errmsg":"this account is using, input another!"}));
    let mut other = s.client();
    assert_eq!(other.login(id, "pw")["errno"], 2);
    // Login and register answers echo seq.
    let r = other.request(json!({"msgid":1,"id":id,"password":"pw","seq":9}));
    assert_eq!(r["seq"], 9);
}

#[test]
fn unknown_ids_and_requests_before_login() {
    let s = TestServer::start();
    let mut c = s.client();
    for id in [99, 2, 5, 11, 0, -1] {
        let r = c.request(json!({"msgid":id}));
        assert_eq!(r, json!({"msgid":11,"req":id,"errno":5,"errmsg":"unknown msgid"}));
    }
    for id in [3, 6, 7, 8, 9, 10] {
        let r = c.request(json!({"msgid":id,"id":1,"seq":"x"}));
        assert_eq!(r, json!({"msgid":11,"req":id,"seq":"x","errno":3,"errmsg":"not logged in"}));
    }
    // Valid JSON that is not an object, or no integer msgid: errno 4, the connection stays open.
    for v in ["[1,2]", "\"text\"", "42", "{\"msgid\":\"1\"}", "{}"] {
        c.send_raw(format!("{v}\n").as_bytes());
        let r = c.recv();
        assert_eq!((r["msgid"].clone(), r["errno"].clone()), (json!(11), json!(4)), "input {v}");
    }
    let (_, id) = s.user("alice");
    assert!(id >= 1);
    let r = c.request(json!({"msgid":99,"seq":1}));
    assert_eq!(r["errno"], 5);
    c.register("still-served", "pw");
}

#[test]
fn one_to_one_chat_live_offline_and_errors() {
    let s = TestServer::start();
    let (mut a, ida) = s.user("alice");
    let (mut b, idb) = s.user("bob");
    // Live: the server sets the true sender and adds ts; time is kept as sent.
    a.send(json!({"msgid":6,"id":ida,"name":"mallory","toid":idb,"msg":"hi","time":"2026-01-01 10:00:00"}));
    let m = b.recv();
    assert_eq!((m["msgid"].clone(), m["id"].clone(), m["name"].clone()), (json!(6), json!(ida), json!("alice")));
    assert_eq!(
        (m["toid"].clone(), m["msg"].clone(), m["time"].clone()),
        (json!(idb), json!("hi"), json!("2026-01-01 10:00:00"))
    );
    assert!(m["ts"].as_u64().unwrap() > 1_700_000_000_000);
    a.expect_silence(QUIET); // no ack without seq
                             // No time given: the server supplies one in the canonical shape.
    a.send(json!({"msgid":6,"toid":idb,"msg":"x"}));
    assert_eq!(b.recv()["time"].as_str().unwrap().len(), 19);
    // To oneself.
    a.chat_acked(ida, ida, "me", 1);
    assert_eq!(a.recv()["msg"], "me");
    // Errors.
    let e = |c: &mut support::Client, v| c.request(v)["errno"].clone();
    assert_eq!(e(&mut a, json!({"msgid":6,"id":ida,"toid":999,"msg":"x"})), 6);
    assert_eq!(e(&mut a, json!({"msgid":6,"id":idb,"toid":idb,"msg":"x"})), 11);
    assert_eq!(e(&mut a, json!({"msgid":6,"id":ida,"toid":"2","msg":"x"})), 4);
    assert_eq!(e(&mut a, json!({"msgid":6,"id":ida,"toid":idb})), 4);
    assert_eq!(e(&mut a, json!({"msgid":6,"id":ida,"toid":idb,"msg":"x".repeat(16 * 1024 + 1)})), 9);
    assert_eq!(e(&mut a, json!({"msgid":6,"id":ida,"toid":idb,"msg":"x","time":"t".repeat(65)})), 4);
    assert_eq!(e(&mut a, json!({"msgid":6,"id":ida,"toid":idb,"msg":"x","time":5})), 4);
    assert_eq!(e(&mut a, json!({"msgid":6,"id":ida,"toid":idb,"msg":"x","seq":1.5})), 4);
    b.expect_silence(QUIET);
    // Offline: stored, then in exactly one login ack, oldest first, in the delivered shape.
    b.send(json!({"msgid":3,"id":idb,"seq":"bye"}));
    assert_eq!(b.recv(), json!({"msgid":11,"req":3,"seq":"bye","errno":0}));
    a.chat_acked(ida, idb, "one", 2);
    a.chat_acked(ida, idb, "two", 3);
    let ack = b.login_ok(idb, "pw");
    let offline = decoded(&ack, "offlinemsg");
    assert_eq!(offline.iter().map(|m| m["msg"].clone()).collect::<Vec<_>>(), vec![json!("one"), json!("two")]);
    assert_eq!(
        (offline[0]["msgid"].clone(), offline[0]["id"].clone(), offline[0]["name"].clone()),
        (json!(6), json!(ida), json!("alice"))
    );
    b.send(json!({"msgid":3}));
    assert!(b.login_ok(idb, "pw").get("offlinemsg").is_none());
}

#[test]
fn friends_are_symmetric_with_states() {
    let s = TestServer::start();
    let (mut a, ida) = s.user("alice");
    let (mut b, idb) = s.user("bob");
    let r = a.request(json!({"msgid":7,"id":ida,"friendid":idb,"seq":1}));
    assert_eq!(r, json!({"msgid":11,"req":7,"seq":1,"errno":0}));
    assert_eq!(a.request(json!({"msgid":7,"id":ida,"friendid":idb,"seq":2}))["errno"], 0);
    assert_eq!(a.request(json!({"msgid":7,"id":ida,"friendid":ida}))["errno"], 4);
    assert_eq!(a.request(json!({"msgid":7,"id":ida,"friendid":777}))["errno"], 6);
    assert_eq!(a.request(json!({"msgid":7,"id":ida,"friendid":0}))["errno"], 4);
    assert_eq!(a.request(json!({"msgid":7,"id":idb,"friendid":"x"}))["errno"], 4, "type and range before identity");
    assert_eq!(a.request(json!({"msgid":7,"id":idb,"friendid":ida}))["errno"], 11);
    b.send(json!({"msgid":3,"id":idb}));
    let ack = b.login_ok(idb, "pw");
    assert_eq!(decoded(&ack, "friends"), vec![json!({"id":ida,"name":"alice","state":"online"})]);
    a.logout();
    b.logout();
    let ack = b.login_ok(idb, "pw");
    assert_eq!(decoded(&ack, "friends"), vec![json!({"id":ida,"name":"alice","state":"offline"})]);
}

/// Group messages take the fast path once the member list is known; a join must reach it
/// (the next message includes the new member) and an offline member must send it back to the
/// pool (the message is stored, not skipped).
#[test]
fn group_messages_follow_joins_and_members_going_offline() {
    let s = TestServer::start();
    let (mut a, ida) = s.user("alice");
    let (mut b, idb) = s.user("bob");
    let (mut c, idc) = s.user("carol");
    let gid = a.request(json!({"msgid":8,"id":ida,"groupname":"g","seq":1}))["groupid"].as_u64().unwrap();
    assert_eq!(b.request(json!({"msgid":9,"id":idb,"groupid":gid,"seq":2}))["errno"], 0);
    let say = |a: &mut Client, text: &str| {
        let r = a.request(json!({"msgid":10,"id":ida,"groupid":gid,"msg":text,"seq":text}));
        assert_eq!(r["errno"], 0, "{r}");
    };
    say(&mut a, "m1");
    say(&mut a, "m2");
    assert_eq!((b.recv()["msg"].clone(), b.recv()["msg"].clone()), (json!("m1"), json!("m2")));
    assert_eq!(c.request(json!({"msgid":9,"id":idc,"groupid":gid,"seq":3}))["errno"], 0);
    say(&mut a, "m3");
    assert_eq!(b.recv()["msg"], "m3");
    assert_eq!(c.recv()["msg"], "m3");
    c.logout();
    say(&mut a, "m4");
    assert_eq!(b.recv()["msg"], "m4");
    assert_eq!(decoded(&c.login_ok(idc, "pw"), "offlinemsg")[0]["msg"], "m4");
    say(&mut a, "m5");
    assert_eq!(b.recv()["msg"], "m5");
    assert_eq!(c.recv()["msg"], "m5");
    c.expect_silence(QUIET);
}

#[test]
fn groups_create_join_chat() {
    let s = TestServer::start();
    let (mut a, ida) = s.user("alice");
    let (mut b, idb) = s.user("bob");
    let (mut c, idc) = s.user("carol");
    let r = a.request(json!({"msgid":8,"id":ida,"groupname":"rust","groupdesc":"fans","seq":7}));
    let gid = r["groupid"].as_u64().unwrap();
    assert_eq!(r, json!({"msgid":11,"req":8,"seq":7,"errno":0,"groupid":gid}));
    assert_eq!(b.request(json!({"msgid":9,"id":idb,"groupid":gid,"seq":1}))["errno"], 0);
    assert_eq!(b.request(json!({"msgid":9,"id":idb,"groupid":gid,"seq":2}))["errno"], 0);
    assert_eq!(b.request(json!({"msgid":9,"id":idb,"groupid":gid + 50}))["errno"], 7);
    assert_eq!(c.request(json!({"msgid":10,"id":idc,"groupid":gid,"msg":"x"}))["errno"], 8);
    assert_eq!(c.request(json!({"msgid":10,"id":idc,"groupid":gid + 50,"msg":"x"}))["errno"], 7);
    assert_eq!(c.request(json!({"msgid":8,"id":idc,"groupname":""}))["errno"], 4);
    // Every other member receives it; the sender does not.
    c.send(json!({"msgid":3,"id":idc}));
    assert_eq!(c.request(json!({"msgid":9,"id":idc,"groupid":gid,"seq":3}))["errno"], 3);
    c.login_ok(idc, "pw");
    assert_eq!(c.request(json!({"msgid":9,"id":idc,"groupid":gid,"seq":3}))["errno"], 0);
    c.logout();
    a.send(json!({"msgid":10,"id":ida,"name":"x","groupid":gid,"msg":"hello","time":"t","seq":"g"}));
    let ack = a.recv();
    assert_eq!(ack, json!({"msgid":11,"req":10,"seq":"g","errno":0,"mid":ack["mid"]}));
    assert!(ack["mid"].as_u64().is_some_and(|m| m > 0), "the sender's ack carries the mid");
    let m = b.recv();
    assert_eq!(
        (m["msgid"].clone(), m["id"].clone(), m["name"].clone(), m["groupid"].clone()),
        (json!(10), json!(ida), json!("alice"), json!(gid))
    );
    a.expect_silence(QUIET);
    // The offline member finds it at login, with the group and its members.
    let ack = c.login_ok(idc, "pw");
    assert_eq!(decoded(&ack, "offlinemsg")[0]["msg"], "hello");
    let groups = decoded(&ack, "groups");
    assert_eq!(
        (groups[0]["id"].clone(), groups[0]["groupname"].clone(), groups[0]["groupdesc"].clone()),
        (json!(gid), json!("rust"), json!("fans"))
    );
    let users: Vec<_> = groups[0]["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| serde_json::from_str::<serde_json::Value>(u.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(users[0], json!({"id":ida,"name":"alice","state":"online","role":"creator"}));
    assert_eq!(users[1], json!({"id":idb,"name":"bob","state":"online","role":"normal"}));
    assert_eq!(users[2]["role"], "normal");
}

#[test]
fn logout_keeps_the_connection() {
    let s = TestServer::start();
    let (mut a, ida) = s.user("alice");
    a.send(json!({"msgid":3,"id":ida}));
    assert_eq!(a.request(json!({"msgid":6,"toid":ida,"msg":"x"}))["errno"], 3);
    let mut other = s.client();
    other.login_ok(ida, "pw");
    assert_eq!(a.login(ida, "pw")["errno"], 2);
}

#[test]
fn full_mailbox_is_errno_12() {
    let s = TestServer::start_with(|c| c.mailbox_cap = 3);
    let (mut a, ida) = s.user("alice");
    let mut b = s.client();
    let idb = b.register("bob", "pw");
    for i in 0..3 {
        a.chat_acked(ida, idb, "x", i);
    }
    let r = a.request(json!({"msgid":6,"toid":idb,"msg":"x","seq":3}));
    assert_eq!(r, json!({"msgid":11,"req":6,"seq":3,"errno":12,"errmsg":"recipient's offline mailbox is full"}));
    assert_eq!(decoded(&b.login_ok(idb, "pw"), "offlinemsg").len(), 3);
    // A group message is accepted for the others; the answer names whom it could not reach.
    let (mut c, idc) = s.user("carol");
    let (mut d, idd) = s.user("dave");
    let g = c.request(json!({"msgid":8,"id":idc,"groupname":"g","groupdesc":"d","seq":1}))["groupid"].clone();
    for (client, id) in [(&mut a, ida), (&mut d, idd)] {
        let joined = client.request(json!({"msgid":9,"groupid":g,"seq":1,"id":id}));
        assert_eq!(joined["errno"], 0, "{joined}");
    }
    d.logout();
    for i in 0..3 {
        let r = c.request(json!({"msgid":10,"id":idc,"groupid":g,"msg":format!("g{i}"),"seq":i}));
        assert_eq!((&r["errno"], r.get("full")), (&json!(0), None), "{r}");
        assert_eq!(a.recv()["msg"], format!("g{i}"));
    }
    let r = c.request(json!({"msgid":10,"id":idc,"groupid":g,"msg":"g3","seq":3}));
    assert_eq!((&r["errno"], &r["full"]), (&json!(0), &json!([idd])), "{r}");
    assert_eq!(a.recv()["msg"], "g3", "the others get it");
    let stored = decoded(&d.login_ok(idd, "pw"), "offlinemsg");
    assert_eq!(stored.iter().map(|m| m["msg"].as_str().unwrap()).collect::<Vec<_>>(), ["g0", "g1", "g2"]);
}

#[test]
fn store_failure_is_errno_10_and_recovers() {
    let s = TestServer::start();
    let (mut a, ida) = s.user("alice");
    let mut b = s.client();
    let idb = b.register("bob", "pw");
    s.sql_exec("ALTER TABLE OfflineMessage RENAME TO Broken");
    let r = a.request(json!({"msgid":6,"toid":idb,"msg":"x","seq":1}));
    assert_eq!(r, json!({"msgid":11,"req":6,"seq":1,"errno":10,"errmsg":"server unavailable, retry later"}));
    s.sql_exec("ALTER TABLE Broken RENAME TO OfflineMessage");
    a.chat_acked(ida, idb, "back", 2);
    assert_eq!(decoded(&b.login_ok(idb, "pw"), "offlinemsg")[0]["msg"], "back");
}
