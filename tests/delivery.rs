//! Canonical sessions cannot acknowledge, so a message written to one counts as delivered only
//! once the peer's TCP stack has acknowledged its bytes; when the connection ends, whatever it
//! never acknowledged goes back to the mailbox. Over real TCP, with the clients misbehaving.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};
use socket2::{Domain, SockRef, Socket, Type};
use support::{decoded, TestServer};

/// Logs `id` in, retrying while its previous session is still ending, and returns every
/// message waiting for it (login ack first, then what follows as live deliveries) until
/// `expected` arrived or the server stays quiet.
fn collect_at_login(s: &TestServer, id: u32, expected: usize) -> Vec<String> {
    let mut c = s.client();
    let ack = support::eventually(|| {
        let ack = c.login(id, "pw");
        (ack["errno"] == 0).then_some(ack)
    });
    let mut got: Vec<String> =
        decoded(&ack, "offlinemsg").iter().map(|m| m["msg"].as_str().unwrap_or_default().to_owned()).collect();
    while got.len() < expected {
        // Longer than two mailbox sweeps (2 s each): a poke that crosses the login can be
        // lost, and then the sweep delivers the messages within about two periods.
        match c.try_recv(Duration::from_secs(5)) {
            Some(m) if m["msgid"] == 6 => got.push(m["msg"].as_str().unwrap_or_default().to_owned()),
            Some(other) => panic!("unexpected {other}"),
            None => break,
        }
    }
    got
}

/// Probe (a): a client that sends its login and goes away at once (FIN, or RST) must not take
/// the mailbox with it: the login ack carrying it was never received.
fn the_mailbox_survives_logins_that_vanish(reset: bool) {
    let s = TestServer::start();
    let (mut a, alice) = s.user("alice");
    let bob = s.client().register("bob", "pw");
    let sent: Vec<String> = (0..50).map(|n| format!("offline {n}")).collect();
    for (n, text) in sent.iter().enumerate() {
        a.chat_acked(alice, bob, text, n as u64);
    }
    for _ in 0..10 {
        let mut raw = TcpStream::connect(s.addr).unwrap();
        raw.write_all(format!("{}\n", json!({"msgid":1,"id":bob,"password":"pw"})).as_bytes()).unwrap();
        if reset {
            SockRef::from(&raw).set_linger(Some(Duration::ZERO)).unwrap();
        }
        drop(raw);
        std::thread::sleep(Duration::from_millis(30)); // the login is being verified
    }
    let got = collect_at_login(&s, bob, sent.len());
    assert_eq!(got, sent, "every offline message, once, in order");
}

#[test]
fn a_login_closed_at_once_loses_no_offline_message() {
    the_mailbox_survives_logins_that_vanish(false);
}

#[test]
fn a_login_reset_at_once_loses_no_offline_message() {
    the_mailbox_survives_logins_that_vanish(true);
}

/// Probe (b): a recipient that never reads is cut at the outbound cap, then logs in anew.
#[test]
fn a_reader_cut_at_the_cap_finds_the_rest_in_its_mailbox() {
    let s = TestServer::start_with(|c| c.max_outbound = 64 * 1024);
    let (mut a, _) = s.user("alice");
    let bob_id = s.client().register("bob", "pw");

    // A receive buffer this small makes the server's send buffer the larger part in flight.
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let bob: TcpStream = sock.into();
    bob.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut bob_w = bob.try_clone().unwrap();
    let mut bob_r = BufReader::new(bob);
    bob_w.write_all(format!("{}\n", json!({"msgid":1,"id":bob_id,"password":"pw"})).as_bytes()).unwrap();
    let mut line = String::new();
    bob_r.read_line(&mut line).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["errno"], 0, "{line}");

    // Pipelined in rounds, so alice's own answers never pile up.
    let mut accepted = Vec::new();
    let (rounds, per_round) = (60, 500);
    for round in 0..rounds {
        let mut batch = String::new();
        for k in 0..per_round {
            let n = round * per_round + k;
            batch += &format!("{}\n", json!({"msgid":6,"toid":bob_id,"msg":format!("m{n}"),"seq":n}));
        }
        a.send_raw(batch.as_bytes());
        for _ in 0..per_round {
            let r = a.recv();
            if r["errno"] == 0 {
                accepted.push(format!("m{}", r["seq"]));
            } else {
                assert_eq!(r["errno"], 12, "only a full mailbox may refuse: {r}");
            }
        }
    }

    // Bob never read and goes away. What his kernel acknowledged and he never read is lost:
    // no server can know better. Everything else, queued or still in the server's send
    // buffer, must be in his mailbox, once, in order.
    std::thread::sleep(Duration::from_millis(300));
    drop(bob_r);
    drop(bob_w);
    let kept = collect_at_login(&s, bob_id, accepted.len());
    let lost = accepted.len() - kept.len().min(accepted.len());
    assert_eq!(kept, accepted[lost..], "the rest, once and in order ({lost} lost of {})", accepted.len());
    let lost_bytes: usize = accepted[..lost].iter().map(|m| m.len() + 60).sum();
    assert!(lost_bytes <= 16 * 1024, "only a receive buffer's worth is lost: {lost} messages, ~{lost_bytes} bytes");
}

/// Probe (d): no login ack is unbounded. A large mailbox comes as a login ack of at most 1,000
/// messages (and 1 MiB), then the rest as ordinary deliveries, slice by slice as the client
/// reads; a message sent meanwhile comes after all of it.
#[test]
fn a_large_mailbox_follows_the_login_ack_in_slices_and_in_order() {
    let s = TestServer::start();
    let (mut a, _) = s.user("alice");
    let bob = s.client().register("bob", "pw");
    let body = "x".repeat(700);
    let total = 3000;
    for round in 0..(total / 500) {
        let mut batch = String::new();
        for k in 0..500 {
            let n = round * 500 + k;
            batch += &format!("{}\n", json!({"msgid":6,"toid":bob,"msg":format!("{n} {body}"),"seq":n}));
        }
        a.send_raw(batch.as_bytes());
        for _ in 0..500 {
            assert_eq!(a.recv()["errno"], 0);
        }
    }
    let mut b = s.client();
    let ack = b.login_ok(bob, "pw");
    let in_ack = decoded(&ack, "offlinemsg").len();
    let ack_bytes = ack.to_string().len();
    assert!(in_ack > 0 && in_ack <= 1000, "one slice in the login ack: {in_ack}");
    assert!(ack_bytes < 2 * 1024 * 1024, "a bounded login ack: {ack_bytes} bytes");
    assert_eq!(a.request(json!({"msgid":6,"toid":bob,"msg":"live, after all of it","seq":"live"}))["errno"], 0);
    let mut got: Vec<String> =
        decoded(&ack, "offlinemsg").iter().map(|m| m["msg"].as_str().unwrap().to_owned()).collect();
    while got.len() < total + 1 {
        let m = b.recv();
        assert_eq!(m["msgid"], 6, "{m}");
        got.push(m["msg"].as_str().unwrap().to_owned());
    }
    let expected: Vec<String> =
        (0..total).map(|n| format!("{n} {body}")).chain(["live, after all of it".to_owned()]).collect();
    assert!(got == expected, "every stored message once, in order, then the live one");
    b.expect_silence(Duration::from_millis(300));
}
