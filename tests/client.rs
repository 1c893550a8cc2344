//! `chatclient` as people script it: real server, client processes on pipes.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{ServerProcess, TestServer};

struct ClientProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl ClientProc {
    fn spawn(addr: &str) -> ClientProc {
        Self::spawn_with(addr, &[])
    }

    fn spawn_with(addr: &str, extra: &[&str]) -> ClientProc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatclient"))
            .args(["--addr", addr])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ClientProc { child, stdin, lines }
    }

    fn type_lines(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// The next line; panics after 10 s.
    fn next(&self) -> String {
        self.lines.recv_timeout(support::TIMEOUT).expect("no output from chatclient in time")
    }

    /// Skips lines until one matches; returns it split into fields.
    fn expect(&self, prefix: &str) -> Vec<String> {
        let deadline = Instant::now() + support::TIMEOUT;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                if line.starts_with(prefix) {
                    return line.split('\t').map(str::to_owned).collect();
                }
                seen.push(line);
            }
        }
        panic!("no line starting with {prefix:?}; saw {seen:?}");
    }
}

#[test]
fn two_clients_register_chat_group_and_see_shutdown() {
    let mut server = TestServer::start();
    let addr = server.addr.to_string();
    let mut a = ClientProc::spawn(&addr);
    let mut b = ClientProc::spawn(&addr);
    a.type_lines("2\nalice\npw\n");
    assert_eq!(a.next(), "registered\t1");
    b.type_lines("2\nbob\npw\n2\nbob\npw\n");
    assert_eq!(b.next(), "registered\t2");
    assert_eq!(b.next(), "register-failed\t1\tname is already taken");
    // An offline message, shown at login.
    a.type_lines("1\n1\npw\n");
    assert_eq!(a.next(), "loggedin\t1\talice");
    a.type_lines("chat:2:hello: while away\n");
    assert_eq!(a.next(), "ok\t1\tchat");
    b.type_lines("1\n2\npw\n");
    assert_eq!(b.next(), "loggedin\t2\tbob");
    let offline = b.next();
    assert!(offline.starts_with("offline-chat\t1\talice\t") && offline.ends_with("\thello: while away"), "{offline}");
    // Friends, chat both ways.
    a.type_lines("addfriend:2\n");
    assert_eq!(a.next(), "ok\t2\taddfriend");
    b.type_lines("chat:1:hi alice\n");
    assert_eq!(b.next(), "ok\t1\tchat");
    assert_eq!(a.expect("chat\t")[4], "hi alice");
    a.type_lines("chat:2:hi bob\n");
    assert_eq!(b.expect("chat\t")[4], "hi bob");
    // A group, joined, chatted in.
    a.type_lines("creategroup:rust:fans of it\n");
    assert_eq!(a.expect("ok\t4\t"), ["ok", "4", "creategroup", "1"]);
    b.type_lines("addgroup:1\ngroupchat:1:hello group\n");
    assert_eq!(b.expect("ok\t2\t"), ["ok", "2", "addgroup"]);
    let g = a.expect("groupchat\t");
    assert_eq!((g[1].as_str(), g[2].as_str(), g[3].as_str(), g[5].as_str()), ("1", "2", "bob", "hello group"));
    // Mistakes get hints or the server's error text; nothing crashes.
    a.type_lines("dance\nchat:x:hi\nchat:2\naddgroup:99\n");
    assert!(a.next().starts_with("usage\tunknown command"));
    assert!(a.next().starts_with("usage\tfriendid must be"));
    assert_eq!(a.next(), "usage\tusage: chat:friendid:message");
    assert_eq!(a.expect("error\t"), ["error", "5", "addgroup", "7", "no such group"]);
    // Log out and in again: friends and groups are listed.
    a.type_lines("loginout\n");
    assert_eq!(a.expect("loggedout"), ["loggedout"]);
    a.type_lines("1\n1\nwrong\n1\n1\npw\n");
    assert_eq!(a.next(), "login-failed\t1\tid or password is invalid!");
    assert_eq!(a.next(), "loggedin\t1\talice");
    assert_eq!(a.next(), "friend\t2\tbob\tonline");
    assert_eq!(a.next(), "group\t1\trust\tfans of it");
    assert_eq!(a.next(), "member\t1\t1\talice\tonline\tcreator");
    assert_eq!(a.next(), "member\t1\t2\tbob\tonline\tnormal");
    // The server stops: both clients say so and exit non-zero.
    server.stop();
    for c in [&mut a, &mut b] {
        c.expect("disconnected");
        let status = c.child.wait().unwrap();
        assert!(!status.success(), "{status}");
    }
}

#[test]
fn quit_and_end_of_input_exit_cleanly() {
    let server = TestServer::start();
    let addr = server.addr.to_string();
    let mut a = ClientProc::spawn(&addr);
    a.type_lines("2\nalice\npw\n3\n");
    assert_eq!(a.next(), "registered\t1");
    assert!(a.child.wait().unwrap().success());
    // End of input after a command: its outcome is still reported.
    let mut b = ClientProc::spawn(&addr);
    b.type_lines("1\n1\npw\nchat:1:note to self\n");
    drop(b.stdin.take());
    assert_eq!(b.next(), "loggedin\t1\talice");
    let lines: Vec<String> = (0..2).map(|_| b.next()).collect();
    assert!(lines.contains(&"ok\t1\tchat".to_owned()), "{lines:?}");
    assert!(b.child.wait().unwrap().success());
}

/// The bytes the client writes, recorded by a fake server that answers like a canonical server
/// (no separator after replies, no acks).
#[test]
fn bytes_on_the_wire_follow_the_protocol() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut c = ClientProc::spawn(&addr);
    let (sock, _) = listener.accept().unwrap();
    sock.set_read_timeout(Some(support::TIMEOUT)).unwrap();
    let mut writer = sock.try_clone().unwrap();
    let mut wire = BufReader::new(sock);
    let mut read = || {
        let mut line = String::new();
        wire.read_line(&mut line).unwrap();
        assert!(
            line.ends_with('\n') && !line.contains(": ") && !line.contains(", "),
            "compact, one per line: {line:?}"
        );
        serde_json::from_str::<Value>(&line).unwrap()
    };
    c.type_lines("2\ncarol\ns3cret\n");
    assert_eq!(read(), json!({"msgid":4,"name":"carol","password":"s3cret"}));
    writer.write_all(br#"{"errno":0,"id":5,"msgid":5}"#).unwrap();
    assert_eq!(c.next(), "registered\t5");
    c.type_lines("1\n5\ns3cret\n");
    // The client asks for acks; a canonical server ignores the key and answers without it.
    assert_eq!(read(), json!({"msgid":1,"id":5,"password":"s3cret","acks":true}));
    writer.write_all(br#"{"errno":0,"id":5,"msgid":2,"name":"carol"}"#).unwrap();
    assert_eq!(c.next(), "loggedin\t5\tcarol");
    // So the client acknowledges nothing: the next line it writes is the chat typed below.
    writer.write_all(br#"{"msgid":6,"id":7,"name":"dan","toid":5,"msg":"m","time":"t","mid":3}"#).unwrap();
    assert!(c.next().starts_with("chat\t7\tdan\t"));
    c.type_lines("chat:7:hi\naddfriend:7\ncreategroup:g:d\naddgroup:3\ngroupchat:3:yo\nloginout\n");
    let chat = read();
    let time = chat["time"].as_str().unwrap().to_owned();
    assert_eq!(time.len(), "2026-01-01 10:00:00".len());
    // Each message carries its own cid (a canonical server ignores the extra key).
    let cid = chat["cid"].as_str().unwrap().to_owned();
    assert!((1..=64).contains(&cid.len()), "{cid:?}");
    assert_eq!(chat, json!({"msgid":6,"id":5,"name":"carol","toid":7,"msg":"hi","time":time,"seq":1,"cid":cid}));
    assert_eq!(read(), json!({"msgid":7,"id":5,"friendid":7,"seq":2}));
    assert_eq!(read(), json!({"msgid":8,"id":5,"groupname":"g","groupdesc":"d","seq":3}));
    assert_eq!(read(), json!({"msgid":9,"id":5,"groupid":3,"seq":4}));
    let g = read();
    assert_ne!(g["cid"], json!(cid), "a cid is never reused");
    assert_eq!(
        g,
        json!({"msgid":10,"id":5,"name":"carol","groupid":3,"msg":"yo","time":g["time"],"seq":5,"cid":g["cid"]})
    );
    assert_eq!(read(), json!({"msgid":3,"id":5,"seq":6}));
    // No acks come from a canonical server: the client waits briefly, then goes on.
    assert_eq!(c.expect("loggedout"), ["loggedout"]);
    c.type_lines("3\n");
    assert!(c.child.wait().unwrap().success());
}

/// With `--reconnect`, a node killed and restarted costs nothing: both clients connect and log
/// in again by themselves, a message typed while the node was down goes out once it is back,
/// and every message is shown exactly once.
#[test]
fn with_reconnect_a_node_restart_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = support::fresh_store(dir.path());
    let listen = format!("127.0.0.1:{}", support::stable_port());
    let mut node = ServerProcess::spawn_on(&listen, &store, &[]);
    let mut a = ClientProc::spawn_with(&listen, &["--reconnect"]);
    let mut b = ClientProc::spawn_with(&listen, &["--reconnect"]);
    a.type_lines("2\nalice\npw\n1\n1\npw\n");
    assert_eq!(a.expect("loggedin"), ["loggedin", "1", "alice"]);
    b.type_lines("2\nbob\npw\n1\n2\npw\n");
    assert_eq!(b.expect("loggedin"), ["loggedin", "2", "bob"]);
    a.type_lines("chat:2:one\n");
    assert_eq!(a.next(), "ok\t1\tchat");
    assert_eq!(b.expect("chat\t")[4], "one");
    node.signal("KILL");
    let _ = node.child.wait();
    a.expect("reconnecting");
    b.expect("reconnecting");
    a.type_lines("chat:2:two\n"); // the node is down
    std::thread::sleep(Duration::from_millis(300));
    node = ServerProcess::spawn_on(&listen, &store, &[]);
    assert_eq!(a.expect("reconnected"), ["reconnected", "1"]);
    assert_eq!(a.expect("ok\t2\t"), ["ok", "2", "chat"]);
    let mut got = Vec::new();
    let deadline = Instant::now() + support::TIMEOUT;
    while Instant::now() < deadline && !got.contains(&"three".to_owned()) {
        if got.contains(&"two".to_owned()) && got.len() == 1 {
            a.type_lines("chat:2:three\n");
            got.push(String::new()); // sent once
        }
        match b.lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains("chat\t1\talice") => got.push(line.rsplit('\t').next().unwrap().to_owned()),
            _ => {}
        }
    }
    got.retain(|m| !m.is_empty());
    assert_eq!(got, ["two", "three"], "each once, in order");
    for c in [&mut a, &mut b] {
        c.type_lines("3\n");
        drop(c.stdin.take());
    }
    drop(node);
}
