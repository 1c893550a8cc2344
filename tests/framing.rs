//! The streaming codec over a real socket: pipelining, trickling, separators, limits. After each
//! framing error, other clients are served as before.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Client, TestServer};

/// A pair of bystanders who must keep chatting whatever others do.
fn bystanders_still_chat(s: &TestServer, tag: &str) {
    let (mut a, ida) = s.user(&format!("{tag}-a"));
    let (mut b, idb) = s.user(&format!("{tag}-b"));
    a.chat_acked(ida, idb, tag, 1);
    assert_eq!(b.recv()["msg"], tag);
}

#[test]
fn pipelined_requests_in_one_write() {
    let s = TestServer::start();
    let mut c = s.client();
    c.send_raw(b"{\"msgid\":4,\"name\":\"a\",\"password\":\"p\"}{\"msgid\":4,\"name\":\"b\",\"password\":\"p\"}\0{\"msgid\":99}\n");
    assert_eq!(c.recv()["id"], 1);
    assert_eq!(c.recv()["id"], 2);
    assert_eq!(c.recv()["errno"], 5);
}

#[test]
fn one_byte_writes_and_mixed_separators() {
    let s = TestServer::start();
    let mut c = s.client();
    let input = b"\r\n {\"msgid\":4,\"name\":\"x\\\"}{\",\"password\":\"p\"}\0\0\t{\"msgid\":4,\"name\":\"y\",\"password\":\"p\"}\n";
    for byte in input {
        c.send_raw(&[*byte]);
    }
    assert_eq!(c.recv()["id"], 1);
    assert_eq!(c.recv()["id"], 2);
    let r = c.request(json!({"msgid":1,"id":1,"password":"p"}));
    assert_eq!(r["name"], "x\"}{");
}

#[test]
fn oversize_frame_is_errno_9_and_close() {
    let s = TestServer::start_with(|c| c.max_frame = 1024);
    // Incomplete but already over the limit.
    let mut c = s.client();
    c.send_raw(format!("{{\"msgid\":4,\"name\":\"{}", "n".repeat(2000)).as_bytes());
    assert_eq!(c.recv(), json!({"msgid":11,"errno":9,"errmsg":"frame larger than the limit"}));
    assert!(c.is_closed());
    // Complete, over the limit.
    let mut c = s.client();
    c.send_raw(format!("{{\"msgid\":4,\"x\":\"{}\"}}\n", "n".repeat(1100)).as_bytes());
    assert_eq!(c.recv()["errno"], 9);
    assert!(c.is_closed());
    // Exactly at the limit is fine.
    let mut c = s.client();
    let pad = 1024 - r#"{"msgid":99,"x":""}"#.len();
    c.send_raw(format!("{{\"msgid\":99,\"x\":\"{}\"}}", "n".repeat(pad)).as_bytes());
    assert_eq!(c.recv()["errno"], 5);
    bystanders_still_chat(&s, "after-oversize");
}

#[test]
fn garbage_and_deep_nesting_are_errno_4_and_close() {
    let s = TestServer::start();
    let (mut victim, id) = s.user("victim");
    for bad in
        [&b"hello world\n"[..], b"{\"msgid\":1,,}\n", b"}\n", b"{\"a\":\"\xff\xfe\"}\n", "[".repeat(65).as_bytes()]
    {
        let mut c = s.client();
        c.send_raw(bad);
        let r = c.recv();
        assert_eq!((r["msgid"].clone(), r["errno"].clone()), (json!(11), json!(4)), "input {bad:?}");
        assert!(c.is_closed(), "input {bad:?}");
    }
    // A logged-in session that sends garbage is ended: the user can log in elsewhere.
    victim.send_raw(b"not json\n");
    assert_eq!(victim.recv()["errno"], 4);
    assert!(victim.is_closed());
    let mut again = s.client();
    support::eventually(|| (again.login(id, "pw")["errno"] == 0).then_some(()));
    bystanders_still_chat(&s, "after-garbage");
}

#[test]
fn a_half_closed_client_still_gets_its_answers() {
    let s = TestServer::start();
    let mut c = Client::connect(s.addr);
    c.send_raw(b"{\"msgid\":4,\"name\":\"a\",\"password\":\"p\"}\n{\"msgid\":1,\"id\":1,\"password\":\"p\"}\n");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.recv()["msgid"], 5);
    assert_eq!(c.recv()["msgid"], 2);
    assert!(c.try_recv(Duration::from_secs(5)).is_none(), "closed after answering");
}

/// Valid JSON with a number no field can take is a bad request (errno 4), not a broken stream:
/// the connection stays open and its next request is served. An integer msgid out of range is
/// an unknown msgid (errno 5).
#[test]
fn numbers_out_of_range_are_bad_requests_on_an_open_connection() {
    let s = TestServer::start();
    let (mut a, ida) = s.user("numbers");
    let huge = "9".repeat(10_000);
    a.send_raw(format!("{{\"msgid\":7,\"friendid\":{huge},\"seq\":1}}\n").as_bytes());
    let r = a.recv();
    assert_eq!((r["errno"].clone(), r["req"].clone(), r["seq"].clone()), (json!(4), json!(7), json!(1)), "{r}");
    a.send_raw(b"{\"msgid\":6,\"toid\":1e400,\"msg\":\"x\",\"seq\":2}\n");
    assert_eq!(a.recv()["errno"], 4);
    a.send_raw(b"{\"msgid\":18446744073709551615,\"seq\":3}\n");
    assert_eq!(a.recv()["errno"], 5);
    a.chat_acked(ida, ida, "still open", 4);
    assert_eq!(a.recv()["msg"], "still open");
    bystanders_still_chat(&s, "numbers");
}
