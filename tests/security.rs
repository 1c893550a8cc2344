//! Identity, stored passwords, and no panic on any input.

mod support;

use std::io::Read;
use std::net::Shutdown;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use support::{Client, TestServer};

#[test]
fn impersonation_is_refused_and_senders_are_true() {
    let s = TestServer::start();
    let (mut mallory, idm) = s.user("mallory");
    let (mut alice, ida) = s.user("alice");
    let (mut bob, idb) = s.user("bob");
    for req in [
        json!({"msgid":6,"id":ida,"toid":idb,"msg":"x"}),
        json!({"msgid":7,"id":ida,"friendid":idb}),
        json!({"msgid":8,"id":ida,"groupname":"g"}),
        json!({"msgid":9,"id":ida,"groupid":1}),
        json!({"msgid":10,"id":ida,"groupid":1,"msg":"x"}),
        json!({"msgid":3,"id":ida}),
    ] {
        assert_eq!(mallory.request(req.clone())["errno"], 11, "{req}");
    }
    // Alice is still logged in: her logout was refused.
    assert_eq!(s.client().login(ida, "pw")["errno"], 2);
    // Without an id, or with a forged name, the delivered message names the real sender.
    mallory.send(json!({"msgid":6,"name":"alice","toid":idb,"msg":"trust me"}));
    let m = bob.recv();
    assert_eq!((m["id"].clone(), m["name"].clone()), (json!(idm), json!("mallory")));
    alice.expect_silence(Duration::from_millis(100));
}

#[test]
fn passwords_are_stored_as_salted_argon2id() {
    let s = TestServer::start();
    let mut c = s.client();
    c.register("a", "same-password");
    c.register("b", "same-password");
    let hashes = s.sql_strings("SELECT password FROM User ORDER BY id");
    assert_eq!(hashes.len(), 2);
    assert!(hashes.iter().all(|h| h.starts_with("$argon2id$") && !h.contains("same-password")));
    assert_ne!(hashes[0], hashes[1], "salted");
}

/// Sends `bytes`, half-closes, and reads until the server closes. Every line must be a JSON
/// object with a msgid: whatever the input, the answer is well-formed.
fn throw(s: &TestServer, prefix: &[u8], bytes: &[u8]) {
    let mut c = Client::connect(s.addr);
    c.send_raw(prefix);
    c.send_raw(bytes);
    c.stream.shutdown(Shutdown::Write).unwrap();
    let mut all = Vec::new();
    let _ = c.stream.read_to_end(&mut all);
    for line in all.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_slice(line).unwrap_or_else(|e| panic!("bad reply {line:?}: {e}"));
        assert!(v["msgid"].is_u64(), "{v}");
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-3i64..20).prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const KEYS: &[&str] =
    &["msgid", "id", "toid", "friendid", "groupid", "name", "password", "msg", "time", "seq", "groupname", "groupdesc"];

/// Objects shaped like requests: known keys, random values, msgid often valid.
fn request_like() -> impl Strategy<Value = Value> {
    (0i64..13, prop::collection::vec((prop::sample::select(KEYS), json_value()), 0..7)).prop_map(|(msgid, fields)| {
        let mut m = Map::new();
        m.insert("msgid".into(), msgid.into());
        for (k, v) in fields {
            m.insert(k.to_string(), v);
        }
        Value::Object(m)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_and_objects_never_hurt_the_server(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        objects in prop::collection::vec(request_like(), 1..6),
    ) {
        let s = shared_server();
        throw(s, b"", &bytes);
        // The same objects from an anonymous and from a logged-in connection.
        let text: String = objects.iter().map(|o| format!("{o}\n")).collect();
        throw(s, b"", text.as_bytes());
        throw(s, b"{\"msgid\":1,\"id\":1,\"password\":\"pw\"}\n", text.as_bytes());
        // Still serving.
        let mut c = Client::connect(s.addr);
        prop_assert_eq!(c.request(json!({"msgid":99}))["errno"].clone(), json!(5));
    }
}

fn shared_server() -> &'static TestServer {
    static SERVER: std::sync::OnceLock<TestServer> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        let s = TestServer::start();
        let mut c = s.client();
        c.register("fuzz", "pw");
        c.register("other", "pw");
        s
    })
}

#[test]
fn the_dispatcher_survives_what_the_fuzzer_found_interesting() {
    let s = TestServer::start();
    let mut c = s.client();
    c.register("u", "pw");
    c.login_ok(1, "pw");
    for v in [
        json!({"msgid":6,"toid":1,"msg":"x","seq":i64::MIN}),
        json!({"msgid":6,"toid":1,"msg":"x","seq":u64::MAX}),
        json!({"msgid":1.0}),
        json!({"msgid":6,"toid":1.0,"msg":"x"}),
        json!({"msgid":9,"groupid":i64::MAX}),
        json!({"msgid":10,"groupid":1,"msg":null}),
    ] {
        c.send(v.clone());
        let r = c.recv();
        assert!(r["msgid"].is_u64(), "{v} -> {r}");
    }
}

/// After the hash cost changes, an account made with the old cost still logs in, and its
/// stored hash is made again with the new cost at that login (so old costs die out).
#[test]
fn a_hash_made_with_an_older_cost_is_upgraded_at_the_next_login() {
    let dir = tempfile::tempdir().unwrap();
    let store = support::fresh_store(dir.path());
    let old = chat::config::HashCost { memory_kib: 512, iterations: 2 };
    let mut first = TestServer::start_on(&store, |c| c.hash = old);
    let id = first.client().register("carol", "pw");
    first.stop();
    drop(first);
    let cost = |s: &TestServer| s.sql_strings(&format!("SELECT password FROM User WHERE id = {id}")).remove(0);
    let second = TestServer::start_on(&store, |_| {});
    assert!(cost(&second).contains("m=512,t=2"), "{}", cost(&second));
    let mut c = second.client();
    assert_eq!(c.login(id, "wrong")["errno"], 1);
    assert!(cost(&second).contains("m=512,t=2"), "a wrong password changes nothing");
    c.login_ok(id, "pw");
    assert!(cost(&second).contains("m=256,t=1"), "upgraded: {}", cost(&second));
    c.logout();
    c.login_ok(id, "pw");
}
