//! The exact bytes a canonical C++ client sends (nlohmann `dump()`: sorted keys, compact, then
//! a NUL), and the exact reply shapes it parses.

mod support;

use serde_json::{json, Value};
use support::TestServer;

fn send(c: &mut support::Client, text: &str) {
    let mut bytes = text.as_bytes().to_vec();
    bytes.push(0);
    c.send_raw(&bytes);
}

#[test]
fn canonical_session_end_to_end() {
    let s = TestServer::start();
    let mut a = s.client();
    let mut b = s.client();
    send(&mut a, r#"{"msgid":4,"name":"alice","password":"123456"}"#);
    assert_eq!(a.recv_line(), "{\"msgid\":5,\"errno\":0,\"id\":1}\n");
    send(&mut b, r#"{"msgid":4,"name":"bob","password":"123456"}"#);
    assert_eq!(b.recv_line(), "{\"msgid\":5,\"errno\":0,\"id\":2}\n");
    send(&mut a, r#"{"id":1,"msgid":1,"password":"123456"}"#);
    assert_eq!(a.recv_line(), "{\"msgid\":2,\"errno\":0,\"id\":1,\"name\":\"alice\"}\n");
    send(&mut a, r#"{"friendid":2,"id":1,"msgid":7}"#);
    send(&mut a, r#"{"id":1,"msg":"hello bob","msgid":6,"name":"alice","time":"2026-01-01 10:00:00","toid":2}"#);
    send(&mut a, r#"{"groupdesc":"fans","groupname":"rust","id":1,"msgid":8}"#);
    // A fence a canonical client can send: a second login is answered (errno 2) only after
    // everything before it on this connection has taken effect.
    send(&mut a, r#"{"id":1,"msgid":1,"password":"123456"}"#);
    assert_eq!(a.recv()["errno"], 2);
    // bob logs in: friend alice (online), the offline message, the group created meanwhile is not his.
    send(&mut b, r#"{"id":2,"msgid":1,"password":"123456"}"#);
    let line = b.recv_line();
    let ack: Value = serde_json::from_str(&line).unwrap();
    assert!(line.starts_with("{\"msgid\":2,\"errno\":0,\"id\":2,\"name\":\"bob\",\"friends\":[\"{\\\"id\\\":1,\\\"name\\\":\\\"alice\\\",\\\"state\\\":\\\"online\\\"}\"],\"offlinemsg\":[\"{\\\"msgid\\\":6,\\\"id\\\":1,\\\"name\\\":\\\"alice\\\",\\\"toid\\\":2,\\\"msg\\\":\\\"hello bob\\\",\\\"time\\\":\\\"2026-01-01 10:00:00\\\",\\\"ts\\\":"), "{line}");
    assert!(ack.get("groups").is_none(), "empty lists are absent");
    send(&mut b, r#"{"groupid":1,"id":2,"msgid":9}"#);
    send(&mut b, r#"{"groupid":1,"id":2,"msg":"hi all","msgid":10,"name":"bob","time":"2026-01-01 10:00:01"}"#);
    let line = a.recv_line();
    assert!(line.starts_with("{\"msgid\":10,\"id\":2,\"name\":\"bob\",\"groupid\":1,\"msg\":\"hi all\",\"time\":\"2026-01-01 10:00:01\",\"ts\":"), "{line}");
    assert!(line.ends_with("}\n") && !line.contains('\0'));
    send(&mut a, r#"{"id":1,"msg":"bye","msgid":6,"name":"alice","time":"2026-01-01 10:00:02","toid":2}"#);
    assert!(b.recv_line().starts_with("{\"msgid\":6,\"id\":1,\"name\":\"alice\",\"toid\":2,\"msg\":\"bye\""));
    send(&mut a, r#"{"id":1,"msgid":3}"#);
    send(&mut a, r#"{"id":1,"msgid":1,"password":"123456"}"#);
    let ack: Value = serde_json::from_str(&a.recv_line()).unwrap();
    let groups = support::decoded(&ack, "groups");
    assert_eq!(groups[0]["groupname"], "rust");
    assert_eq!(support::decoded(&ack, "friends")[0], json!({"id":2,"name":"bob","state":"online"}));
    // Canonical clients sent no seq: they got nothing but the acks of login and register.
    a.expect_silence(std::time::Duration::from_millis(200));
    b.expect_silence(std::time::Duration::from_millis(200));
}
