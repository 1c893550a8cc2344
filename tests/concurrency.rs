//! Many clients at once: every message exactly once and in order; the login race.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Barrier};
use std::thread;

use serde_json::{json, Value};
use support::{decoded, TestServer};

#[test]
fn two_hundred_clients_fifty_messages_each_exactly_once_in_order() {
    const CLIENTS: usize = 200;
    const MESSAGES: usize = 50;
    let s = TestServer::start_with(|c| c.threads = 3);
    let users: Vec<_> = (0..CLIENTS).map(|i| s.user(&format!("u{i}"))).collect();
    let ids: Vec<u32> = users.iter().map(|u| u.1).collect();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = users
        .into_iter()
        .enumerate()
        .map(|(i, (mut c, me))| {
            let partner = ids[i ^ 1];
            let barrier = barrier.clone();
            thread::spawn(move || {
                barrier.wait();
                // Pipelined: all messages first, no waiting, then read.
                let batch: String = (0..MESSAGES)
                    .map(|n| format!("{}\n", json!({"msgid":6,"id":me,"toid":partner,"msg":format!("{me}:{n}")})))
                    .collect();
                c.send_raw(batch.as_bytes());
                let got: Vec<String> = (0..MESSAGES)
                    .map(|_| {
                        let m = c.recv();
                        assert_eq!(m["id"], partner);
                        m["msg"].as_str().unwrap().to_owned()
                    })
                    .collect();
                let want: Vec<String> = (0..MESSAGES).map(|n| format!("{partner}:{n}")).collect();
                assert_eq!(got, want, "client {me}");
                c.expect_silence(std::time::Duration::from_millis(300));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// B logs in while A sends 500 messages: each arrives once, either in the login ack or live, and
/// in the order sent.
#[test]
fn login_race_loses_and_doubles_nothing() {
    const MESSAGES: usize = 500;
    let s = TestServer::start();
    let (mut a, ida) = s.user("sender");
    let mut reg = s.client();
    for round in 0..20 {
        let name = format!("receiver{round}");
        let idb = reg.register(&name, "pw");
        let addr = s.addr;
        let receiver = thread::spawn(move || {
            let mut b = support::Client::connect(addr);
            let ack = b.login_ok(idb, "pw");
            let mut got: Vec<Value> = decoded(&ack, "offlinemsg").into_iter().map(|m| m["msg"].clone()).collect();
            let from_ack = got.len();
            while got.len() < MESSAGES {
                got.push(b.recv()["msg"].clone());
            }
            b.expect_silence(std::time::Duration::from_millis(100));
            (got, from_ack)
        });
        let batch: String =
            (0..MESSAGES).map(|n| format!("{}\n", json!({"msgid":6,"toid":idb,"msg":n.to_string()}))).collect();
        a.send_raw(batch.as_bytes());
        a.chat_acked(ida, ida, "fence", round);
        assert_eq!(a.recv()["msg"], "fence");
        let (got, from_ack) = receiver.join().unwrap();
        let want: Vec<Value> = (0..MESSAGES).map(|n| Value::from(n.to_string())).collect();
        assert_eq!(got, want, "round {round}: {from_ack} came in the ack");
        assert_eq!(got.iter().collect::<HashSet<_>>().len(), MESSAGES);
        eprintln!("round {round}: {from_ack} from the ack, {} live", MESSAGES - from_ack);
    }
}

/// The recipient logs out, or vanishes, while a sender streams to it: what it read live followed
/// by its mailbox is exactly the stream, in order (invariants 1 and 3 across a session's end).
#[test]
fn a_session_ending_mid_stream_keeps_the_order() {
    const MESSAGES: usize = 1000;
    let s = TestServer::start_with(|c| c.threads = 3);
    let (mut a, ida) = s.user("sender");
    let mut reg = s.client();
    for round in 0..10u64 {
        let idb = reg.register(&format!("r{round}"), "pw");
        let mut b = s.client();
        b.login_ok(idb, "pw");
        let batch: String =
            (0..MESSAGES).map(|n| format!("{}\n", json!({"msgid":6,"toid":idb,"msg":n.to_string()}))).collect();
        a.send_raw(batch.as_bytes());
        // Read a little, then leave: by logout on even rounds, by closing the socket on odd ones.
        let mut got: Vec<usize> = (0..50).map(|_| b.recv()["msg"].as_str().unwrap().parse().unwrap()).collect();
        if round % 2 == 0 {
            b.send(json!({"msgid":3,"seq":"bye"}));
            loop {
                let m = b.recv();
                if m["msgid"] == 11 {
                    break;
                }
                got.push(m["msg"].as_str().unwrap().parse().unwrap());
            }
        } else {
            drop(b);
        }
        a.chat_acked(ida, ida, "fence", round);
        assert_eq!(a.recv()["msg"], "fence");
        let mut again = s.client();
        let ack = support::eventually(|| Some(again.login(idb, "pw")).filter(|a| a["errno"] == 0));
        got.extend(decoded(&ack, "offlinemsg").iter().map(|m| m["msg"].as_str().unwrap().parse::<usize>().unwrap()));
        if round % 2 == 1 {
            // The socket was dropped unread: what the kernel held for it is gone with it, so
            // only the order and uniqueness of what remains can be checked.
            assert!(got.windows(2).all(|w| w[0] < w[1]), "round {round}: out of order");
        } else {
            assert_eq!(got, (0..MESSAGES).collect::<Vec<_>>(), "round {round}");
        }
    }
}
