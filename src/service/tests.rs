//! The chat handler driven step by step, without sockets or threads: an in-memory store, a
//! manual clock, a pool whose tasks the test runs one by one, and a recording fake of the
//! reactor's I/O. Each test sets up one interleaving that the TCP tests can only hope to hit.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crossbeam_channel::Receiver;
use serde_json::{json, Value};

use super::message_log::Accepted;
use super::session::Out;
use super::{ChatHandler, Delivery, Event, LogHandle, Service};
use crate::bus::{Bus, BusError, GroupRouting, GroupSend, LocalBus, Routing};
use crate::config::{Config, HashCost};
use crate::net::{Handler, Io, Loc, Msg, ReactorSeed, Router};
use crate::pool::{PoolHandle, Task};
use crate::proto::codec::FrameError;
use crate::proto::time::Clock;
use crate::store::{MemoryStore, Store};
use crate::UserId;

/// One connection as the fake transport sees it.
#[derive(Debug, Default)]
struct FakeConn {
    /// Queued and never written: what a close hands back as unsent.
    queued: Vec<Out>,
    paused: bool,
    lingering: bool,
    /// The handler asked to hear when the queue is written: `settle` tells it once nothing
    /// else is left to run (the queue then counts as written; it stays for `take_lines`).
    wants_flushed: bool,
}

/// A recording fake of the transport: output is queued and never written, channel messages
/// wait in `rx` until the test hands them over.
#[derive(Debug)]
struct FakeIo {
    conns: HashMap<Loc, FakeConn>,
    rx: Receiver<Msg<Event>>,
    deferred: VecDeque<Event>,
    next: u64,
}

impl Io<ChatHandler> for FakeIo {
    fn reactor(&self) -> usize {
        0
    }

    fn running(&self) -> bool {
        true
    }

    fn send(&mut self, to: Loc, out: Out) -> Result<(), Out> {
        match self.conns.get_mut(&to) {
            Some(c) if !c.lingering => {
                c.queued.push(out);
                Ok(())
            }
            _ => Err(out),
        }
    }

    fn notify_flushed(&mut self, at: Loc) {
        if let Some(c) = self.conns.get_mut(&at) {
            c.wants_flushed = true;
        }
    }

    fn trust(&mut self, _at: Loc, _trusted: bool) {}

    fn peer(&self, _at: Loc) -> Option<std::net::IpAddr> {
        None
    }

    fn pause(&mut self, at: Loc) {
        if let Some(c) = self.conns.get_mut(&at) {
            c.paused = true;
        }
    }

    fn resume(&mut self, at: Loc) {
        if let Some(c) = self.conns.get_mut(&at) {
            c.paused = false;
        }
    }

    fn close(&mut self, at: Loc, _why: &str) -> Vec<Out> {
        self.conns.remove(&at).map(|c| c.queued).unwrap_or_default()
    }

    fn reject(&mut self, at: Loc, answer: Out) {
        if let Some(c) = self.conns.get_mut(&at) {
            c.queued.push(answer);
            c.lingering = true;
        }
    }

    fn take_queued(&mut self, pick: &mut dyn FnMut(&mut Event) -> bool) -> Vec<Event> {
        let (mut taken, mut kept) = (Vec::new(), VecDeque::new());
        let queued = self.rx.try_iter().filter_map(|m| match m {
            Msg::App(e) => Some(e),
            _ => None,
        });
        for mut e in self.deferred.drain(..).chain(queued) {
            match pick(&mut e) {
                true => taken.push(e),
                false => kept.push_back(e),
            }
        }
        self.deferred = kept;
        taken
    }

    fn conns(&self) -> Vec<Loc> {
        self.conns.keys().copied().collect()
    }
}

/// One node with one reactor, every step in the test's hands.
struct Node {
    store: Arc<MemoryStore>,
    service: Arc<Service>,
    handler: ChatHandler,
    io: FakeIo,
    tasks: Receiver<Task>,
    /// Accepted chat messages, committed to the store when the test settles.
    log: Receiver<Accepted>,
    router: Arc<Router<Event>>,
    clock: Clock,
    recent: super::message_log::RecentMids,
}

impl Node {
    fn new() -> Node {
        Node::with_bus(Arc::new(LocalBus))
    }

    fn with_bus(bus: Arc<dyn Bus>) -> Node {
        let store = Arc::new(MemoryStore::default());
        let clock = Clock::manual(1_767_261_600_000);
        let config =
            Config { hash: HashCost { memory_kib: 64, iterations: 1 }, clock: clock.clone(), ..Config::default() };
        let service = Arc::new(Service::without_threads(store.clone(), bus, &config));
        let (handle, rx) = ReactorSeed::detached().unwrap();
        let router = Arc::new(Router::new(vec![handle]));
        let (pool, tasks) = PoolHandle::manual(usize::MAX);
        let (log_handle, log) = LogHandle::channel();
        let handler = ChatHandler::new(service.clone(), router.clone(), pool, log_handle);
        let io = FakeIo { conns: HashMap::new(), rx, deferred: VecDeque::new(), next: 0 };
        Node { store, service, handler, io, tasks, log, router, clock, recent: Default::default() }
    }

    fn connect(&mut self) -> Loc {
        self.io.next += 1;
        let at = Loc { reactor: 0, token: self.io.next as usize, conn: self.io.next };
        self.io.conns.insert(at, FakeConn::default());
        self.handler.on_open(&mut self.io, at);
        at
    }

    fn frame(&mut self, at: Loc, request: Value) {
        assert!(!self.io.conns[&at].paused, "the transport hands no frame to a paused connection");
        self.handler.on_frame(&mut self.io, at, request.to_string().as_bytes());
    }

    /// Runs the pool's next task on this thread; its answer goes to the channel.
    fn run_task(&mut self) {
        let task = self.tasks.try_recv().expect("a task is queued");
        task();
    }

    /// The next message the channel holds (deferred first, as the reactor does).
    fn next_event(&mut self) -> Option<Event> {
        if let Some(e) = self.io.deferred.pop_front() {
            return Some(e);
        }
        self.io.rx.try_iter().find_map(|m| match m {
            Msg::App(e) => Some(e),
            _ => None,
        })
    }

    fn handle(&mut self, e: Event) {
        self.handler.on_message(&mut self.io, e);
    }

    /// Commits what waits for the log, as one batch; `false` if nothing did.
    fn commit_log(&mut self) -> bool {
        let batch: Vec<Accepted> = self.log.try_iter().collect();
        if batch.is_empty() {
            return false;
        }
        super::message_log::commit(&*self.store, batch, &self.clock, &self.router, &mut self.recent);
        true
    }

    /// Runs tasks, hands over messages and reports written queues until none is left.
    fn settle(&mut self) {
        loop {
            if let Ok(task) = self.tasks.try_recv() {
                task();
            } else if self.commit_log() || self.service.run_mailbox_writes() {
                continue;
            } else if let Some(e) = self.next_event() {
                self.handle(e);
            } else if let Some((&at, c)) = self.io.conns.iter_mut().find(|(_, c)| c.wants_flushed) {
                c.wants_flushed = false;
                self.handler.on_flushed(&mut self.io, at);
            } else {
                return;
            }
        }
    }

    fn register(&mut self, at: Loc, name: &str) -> UserId {
        self.frame(at, json!({"msgid":4,"name":name,"password":"pw"}));
        self.settle();
        let reply = self.take_lines(at).pop().expect("a register answer");
        reply["id"].as_u64().expect("registered") as UserId
    }

    fn login(&mut self, at: Loc, id: UserId) -> Value {
        self.frame(at, json!({"msgid":1,"id":id,"password":"pw"}));
        self.settle();
        self.take_lines(at).remove(0)
    }

    /// What `at` was sent, as JSON, oldest first; forgets it. An item may hold several lines
    /// (the answers of a batch of group messages).
    fn take_lines(&mut self, at: Loc) -> Vec<Value> {
        let queued = std::mem::take(&mut self.io.conns.get_mut(&at).expect("open").queued);
        let lines = queued.iter().flat_map(|o| crate::net::Outbound::bytes(o).split(|&b| b == b'\n'));
        lines.filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect()
    }

    fn chat(&mut self, at: Loc, to: UserId, msg: &str) {
        self.frame(at, json!({"msgid":6,"toid":to,"msg":msg,"time":"t"}));
        self.settle();
    }

    /// The transport closes `at` (say, a reset) with its queued output unsent.
    fn reset(&mut self, at: Loc) {
        let unsent = self.io.close(at, "reset");
        self.handler.on_close(&mut self.io, at, unsent);
        self.settle();
    }

    /// An encoded delivery, as another reactor's handler would send it.
    fn delivery(&self, from: UserId, to: UserId, msg: &str) -> Arc<str> {
        format!("{}\n", json!({"msgid":6,"id":from,"name":"x","toid":to,"msg":msg,"time":"t","ts":1})).into()
    }
}

fn msgs(lines: &[Value]) -> Vec<&str> {
    lines.iter().map(|l| l["msg"].as_str().unwrap_or("<not a chat>")).collect()
}

fn offline(ack: &Value) -> Vec<String> {
    let stored = ack["offlinemsg"].as_array().cloned().unwrap_or_default();
    stored.iter().map(|s| serde_json::from_str::<Value>(s.as_str().unwrap()).unwrap()["msg"].to_string()).collect()
}

/// Two users, bob logged in on his own connection.
fn alice_and_bob() -> (Node, Loc, UserId, Loc, UserId) {
    let mut n = Node::new();
    let (a, b) = (n.connect(), n.connect());
    let alice = n.register(a, "alice");
    let bob = n.register(b, "bob");
    assert_eq!(n.login(b, bob)["errno"], 0);
    (n, a, alice, b, bob)
}

/// Invariant 2: a live message that arrives while the login is in flight queues behind the ack.
#[test]
fn the_login_ack_comes_first() {
    let (mut n, a, alice, b, bob) = alice_and_bob();
    n.frame(a, json!({"msgid":1,"id":alice,"password":"pw"}));
    assert!(n.io.conns[&a].paused, "a connection waits for its job");
    n.run_task(); // alice is live in the presence map; the ack is on its way
    n.frame(b, json!({"msgid":6,"toid":alice,"msg":"early","time":"t"}));
    assert!(n.io.conns[&a].queued.is_empty(), "held while the login job is in flight");
    n.settle();
    let lines = n.take_lines(a);
    assert_eq!((lines[0]["msgid"].clone(), lines[0]["errno"].clone()), (json!(2), json!(0)));
    assert_eq!(msgs(&lines[1..]), ["early"]);
    assert_eq!(lines[1]["id"], bob);
    assert!(!n.io.conns[&a].paused);
}

/// Invariants 1 and 3: a message stored just after the login took the mailbox asks the session
/// to drain again; live messages that arrived meanwhile were sent after it, so they wait behind
/// the drain. Releasing them at the end of the login job would put "live" before "stored".
#[test]
fn held_deliveries_wait_behind_a_drain() {
    let (mut n, a, alice, _b, bob) = alice_and_bob();
    n.frame(a, json!({"msgid":1,"id":alice,"password":"pw"}));
    n.run_task(); // presence registered, the (empty) mailbox taken
    let login_done = n.next_event().expect("the login's answer");
    // Bob's job stores for alice after the take, then pokes her session.
    let stored = n.delivery(bob, alice, "stored");
    assert!(n.store.store_offline(alice, &[stored.trim_end()], None).unwrap());
    let here = n.service.presence().get(alice).expect("alice is live");
    n.handle(Event::Drain { to: here, user: alice, newest: None });
    // Bob's next message, live from another reactor.
    n.handle(Event::Deliver(Delivery { to: here, user: alice, msg: n.delivery(bob, alice, "live") }));
    n.handle(login_done);
    n.settle();
    let lines = n.take_lines(a);
    assert_eq!(lines[0]["msgid"], 2);
    assert_eq!(msgs(&lines[1..]), ["stored", "live"]);
}

/// Invariants 3 and 6: whatever a session never received goes to its mailbox, in order, and
/// comes back exactly once at the next login.
#[test]
fn a_session_that_ends_spills_what_it_never_received() {
    let (mut n, a, alice, b, _bob) = alice_and_bob();
    n.login(a, alice);
    for m in ["one", "two", "three"] {
        n.chat(b, alice, m);
    }
    assert_eq!(n.io.conns[&a].queued.len(), 3, "queued live, never written");
    n.reset(a);
    assert!(n.service.presence().get(alice).is_none(), "the session ended");
    let a2 = n.connect();
    let ack = n.login(a2, alice);
    assert_eq!(offline(&ack), ["\"one\"", "\"two\"", "\"three\""]);
    let a3 = n.connect();
    n.reset(a2);
    assert!(offline(&n.login(a3, alice)).is_empty(), "delivered once");
}

/// A login whose connection closed before its answer came back: the mailbox it took is kept.
#[test]
fn a_login_finishing_after_its_connection_closed_keeps_the_mailbox() {
    let (mut n, a, alice, b, _bob) = alice_and_bob();
    n.chat(b, alice, "waiting");
    n.frame(a, json!({"msgid":1,"id":alice,"password":"pw"}));
    n.run_task(); // the mailbox is taken
    n.reset(a);
    n.settle();
    assert!(n.service.presence().get(alice).is_none());
    let a2 = n.connect();
    assert_eq!(offline(&n.login(a2, alice)), ["\"waiting\""]);
}

/// A stream that cannot be framed ends the session; later deliveries are stored, not lost.
#[test]
fn a_framing_error_ends_the_session() {
    let (mut n, a, alice, b, _bob) = alice_and_bob();
    n.login(a, alice);
    n.handler.on_frame_error(&mut n.io, a, FrameError::TooLarge);
    assert_eq!(n.take_lines(a)[0]["errno"], 9);
    n.chat(b, alice, "after");
    assert!(n.io.conns[&a].queued.is_empty(), "nothing more for a lingering connection");
    n.reset(a);
    let a2 = n.connect();
    assert_eq!(offline(&n.login(a2, alice)), ["\"after\""]);
}

/// The server's receive time comes from the injected clock.
#[test]
fn deliveries_carry_the_clock_s_time() {
    let (mut n, a, alice, b, _bob) = alice_and_bob();
    n.login(a, alice);
    n.frame(b, json!({"msgid":6,"toid":alice,"msg":"hi"}));
    n.settle();
    let line = &n.take_lines(a)[0];
    assert_eq!(
        (line["ts"].clone(), line["time"].clone()),
        (json!(1_767_261_600_000_u64), json!("2026-01-01 10:00:00"))
    );
}

/// A cluster bus seen from one node: nobody is online elsewhere, and routes stay in flight
/// until the test answers them (as the Redis publisher does, later, on its own thread).
#[derive(Debug, Default)]
struct SlowBus {
    routes: parking_lot::Mutex<Vec<(UserId, Loc)>>,
}

impl Bus for SlowBus {
    fn claim(&self, _user: UserId, _acks: Option<bool>) -> Result<bool, BusError> {
        Ok(true)
    }

    fn release(&self, _user: UserId) -> Result<(), BusError> {
        Ok(())
    }

    fn route(&self, _user: UserId, _msg: &str) -> Result<bool, BusError> {
        Ok(false)
    }

    fn route_async(&self, user: UserId, _msg: Arc<str>, from: Loc, _epoch: u32) -> Routing {
        self.routes.lock().push((user, from));
        Routing::Queued
    }

    fn route_groups(&self, sends: &[GroupSend<'_>]) -> Result<Vec<GroupRouting>, BusError> {
        Ok(sends.iter().map(|s| GroupRouting::Routed { missed: s.users.to_vec() }).collect())
    }

    fn online_elsewhere(&self, users: &[UserId]) -> Result<Vec<bool>, BusError> {
        Ok(vec![false; users.len()])
    }
}

/// A node whose bus answers routes only when told (`Event::Routed`): alice registered at `a`,
/// bob logged in at `b`.
fn bob_on_a_slow_bus() -> (Node, Arc<SlowBus>, Loc, UserId, Loc, UserId) {
    let bus = Arc::new(SlowBus::default());
    let mut n = Node::with_bus(bus.clone());
    let (a, b) = (n.connect(), n.connect());
    let alice = n.register(a, "alice");
    let bob = n.register(b, "bob");
    n.login(b, bob);
    (n, bus, a, alice, b, bob)
}

/// Chats for users on other nodes are on the bus many at once, their answers in request order;
/// "nobody received it" stores a chat even when its sender reset meanwhile: it was accepted.
#[test]
fn a_routed_chat_is_stored_when_nobody_received_it_even_if_its_sender_left() {
    let (mut n, bus, a, alice, b, _bob) = bob_on_a_slow_bus();
    n.frame(b, json!({"msgid":6,"toid":alice,"msg":"first","time":"t","seq":1}));
    n.frame(b, json!({"msgid":6,"toid":alice,"msg":"second","time":"t","seq":2}));
    n.settle(); // logged, then handed to the bus
    assert!(!n.io.conns[&b].paused, "the sender goes on while the bus answers");
    assert_eq!(*bus.routes.lock(), [(alice, b), (alice, b)], "both on the bus at once");
    assert!(n.take_lines(b).is_empty(), "answers wait for the bus");
    n.handle(Event::Routed(vec![(b, Ok(false))]));
    n.settle();
    assert_eq!(n.take_lines(b)[0]["seq"], 1);
    n.reset(b);
    n.handle(Event::Routed(vec![(b, Ok(false))]));
    n.settle();
    assert_eq!(offline(&n.login(a, alice)), ["\"first\"", "\"second\""]);
}

/// Once a chat was received by nobody, the sender's next one waits until it is stored: routed
/// at once, it could reach a user who just logged in before the stored one does.
#[test]
fn a_chat_sent_after_one_nobody_received_waits_until_that_one_is_stored() {
    let (mut n, bus, a, alice, b, bob) = bob_on_a_slow_bus();
    n.frame(b, json!({"msgid":6,"toid":alice,"msg":"first","time":"t","seq":1}));
    n.settle();
    n.handle(Event::Routed(vec![(b, Ok(false))])); // its store is queued on the pool
    n.frame(b, json!({"msgid":6,"toid":alice,"msg":"second","time":"t","seq":2}));
    n.frame(b, json!({"msgid":1,"id":bob,"password":"pw"})); // a request that waits for both
    while n.commit_log() {}
    while let Some(e) = n.next_event() {
        n.handle(e);
    }
    assert_eq!(bus.routes.lock().len(), 1, "the second is held back");
    n.settle(); // the first is stored, then the second goes out
    assert_eq!(bus.routes.lock().len(), 2);
    assert_eq!(n.take_lines(b).len(), 1, "only the first is answered");
    n.handle(Event::Routed(vec![(b, Ok(true))]));
    n.settle();
    let answers = n.take_lines(b);
    let seqs: Vec<&Value> = answers.iter().map(|l| &l["seq"]).collect();
    assert_eq!(seqs, [&json!(2), &Value::Null], "in request order: {answers:?}");
    assert_eq!(answers[1]["errno"], 2, "then the login's (already online)");
    assert_eq!(offline(&n.login(a, alice)), ["\"first\""]);
}

/// Received on another node: acknowledged, nothing stored. The bus unreachable: stored for
/// the recipient's next login, and acknowledged (the message is durable in the log).
#[test]
fn a_routed_chat_is_answered_by_the_bus() {
    let (mut n, _bus, a, alice, b, _bob) = bob_on_a_slow_bus();
    n.frame(b, json!({"msgid":6,"toid":alice,"msg":"there","time":"t","seq":1}));
    n.settle();
    n.handle(Event::Routed(vec![(b, Ok(true))]));
    n.frame(b, json!({"msgid":6,"toid":alice,"msg":"kept","time":"t","seq":2}));
    n.settle();
    n.handle(Event::Routed(vec![(b, Err(BusError::Stopped))]));
    n.settle();
    let acks = n.take_lines(b);
    let errnos: Vec<Value> = acks.iter().map(|l| l["errno"].clone()).collect();
    assert_eq!(errnos, [json!(0), json!(0)]);
    assert!(acks[0]["mid"].as_u64() < acks[1]["mid"].as_u64(), "each has its mid: {acks:?}");
    assert_eq!(offline(&n.login(a, alice)), ["\"kept\""], "only what no node received is stored");
}

/// Invariant 12: a message stored for a live user whose notification was lost (no poke here)
/// is found by the next sweep; a sweep with nothing new asks nobody, and an acks session is not
/// asked again for a row it has read.
#[test]
fn the_sweep_finds_what_a_lost_notification_left_stored() {
    let (mut n, a, alice, _b, bob) = alice_and_bob();
    n.login(a, alice);
    let mut cursor = super::sweep::Cursor::default();
    assert_eq!(cursor.sweep(&n.service, &*n.router).unwrap(), 0, "nothing stored: nobody asked");
    let stored = n.delivery(bob, alice, "stored");
    assert!(n.store.store_offline(alice, &[stored.trim_end()], None).unwrap());
    n.settle();
    assert!(n.take_lines(a).is_empty(), "nothing told the session");
    assert_eq!(cursor.sweep(&n.service, &*n.router).unwrap(), 1);
    n.settle();
    assert_eq!(msgs(&n.take_lines(a)), ["stored"]);
    assert_eq!(cursor.sweep(&n.service, &*n.router).unwrap(), 0, "taken: nothing waits");

    let c = n.connect();
    let carol = n.register(c, "carol");
    n.frame(c, json!({"msgid":1,"id":carol,"password":"pw","acks":true}));
    n.settle();
    let ack = n.take_lines(c);
    assert_eq!(ack[0]["errno"], 0, "{ack:?}");
    let stored =
        json!({"msgid":6,"id":alice,"name":"alice","toid":carol,"msg":"for an acks session","time":"t","mid":77});
    assert!(n.store.store_offline(carol, &[&stored.to_string()], None).unwrap());
    cursor.sweep(&n.service, &*n.router).unwrap();
    n.settle();
    assert_eq!(msgs(&n.take_lines(c)), ["for an acks session"]);
    cursor.sweep(&n.service, &*n.router).unwrap();
    n.settle();
    assert!(n.take_lines(c).is_empty(), "read, unacknowledged: not delivered twice");
    assert_eq!(n.store.peek_offline(carol, 0, 10).unwrap().len(), 1, "kept until acknowledged");
}

/// Invariant 13 without a loss: a retry whose first copy this node did not log (another node
/// logged it and died before delivering it) is answered with the first mid and delivered
/// under it; a retry of a copy this node logged is only answered.
#[test]
fn a_retry_of_a_message_another_node_logged_is_delivered_under_its_mid() {
    let (mut n, a, alice, b, bob) = alice_and_bob();
    n.login(a, alice);
    let first = crate::store::NewMessage {
        from: alice,
        name: "alice".into(),
        to: crate::proto::message::Target::User(bob),
        msg: "hello".into(),
        time: "t".into(),
        ts: n.clock.now_ms(),
        cid: Some("c-1".into()),
    };
    let logged = n.store.log_messages(&[&first], 0).unwrap();
    let crate::store::Logged::Fresh(mid) = logged[0] else { panic!("{logged:?}") };
    n.frame(a, json!({"msgid":6,"toid":bob,"msg":"hello","cid":"c-1","seq":1}));
    n.settle();
    assert_eq!(n.take_lines(a), [json!({"msgid":11,"req":6,"seq":1,"errno":0,"mid":mid,"dup":true})]);
    let got = n.take_lines(b);
    assert_eq!((msgs(&got), &got[0]["mid"]), (vec!["hello"], &json!(mid)));
    // Logged here: a second retry is answered, not delivered.
    n.frame(a, json!({"msgid":6,"toid":bob,"msg":"again","cid":"c-2","seq":2}));
    n.settle();
    assert_eq!(msgs(&n.take_lines(b)), ["again"]);
    n.take_lines(a);
    n.frame(a, json!({"msgid":6,"toid":bob,"msg":"again","cid":"c-2","seq":3}));
    n.settle();
    assert_eq!(n.take_lines(a)[0]["dup"], true);
    assert!(n.take_lines(b).is_empty());
}

/// A sender faster than the log is paused once `MAX_QUEUED` of its messages wait in it, and
/// reads again as their answers come back; nothing is lost or reordered meanwhile.
#[test]
fn a_sender_ahead_of_the_log_is_paused_until_it_catches_up() {
    let (mut n, a, alice, b, bob) = alice_and_bob();
    n.login(a, alice);
    for i in 0..super::chat::MAX_QUEUED {
        n.frame(a, json!({"msgid":6,"toid":bob,"msg":i.to_string(),"time":"t","seq":i}));
    }
    assert!(n.io.conns[&a].paused, "paused with a full log");
    n.settle();
    assert!(!n.io.conns[&a].paused, "reading again once answered");
    let seqs: Vec<Value> = n.take_lines(a).iter().map(|l| l["seq"].clone()).collect();
    assert_eq!(seqs, (0..super::chat::MAX_QUEUED).map(|i| json!(i)).collect::<Vec<_>>());
    let lines = n.take_lines(b);
    assert_eq!(msgs(&lines), (0..super::chat::MAX_QUEUED).map(|i| i.to_string()).collect::<Vec<_>>());
}

/// A cluster bus seen from one node, nobody elsewhere, whose group versions another node can
/// change behind this node's back (as a join there would).
#[derive(Debug, Default)]
struct VersionedBus {
    version: std::sync::atomic::AtomicU64,
    /// How many messages each `route_groups` call carried, and how many came back stale.
    calls: parking_lot::Mutex<Vec<(usize, bool)>>,
}

impl Bus for VersionedBus {
    fn claim(&self, _user: UserId, _acks: Option<bool>) -> Result<bool, BusError> {
        Ok(true)
    }

    fn release(&self, _user: UserId) -> Result<(), BusError> {
        Ok(())
    }

    fn route(&self, _user: UserId, _msg: &str) -> Result<bool, BusError> {
        Ok(false)
    }

    fn online_elsewhere(&self, users: &[UserId]) -> Result<Vec<bool>, BusError> {
        Ok(vec![false; users.len()])
    }

    fn group_version(&self, _group: crate::GroupId) -> Result<u64, BusError> {
        Ok(self.version.load(std::sync::atomic::Ordering::SeqCst))
    }

    fn route_groups(&self, sends: &[GroupSend<'_>]) -> Result<Vec<GroupRouting>, BusError> {
        let current = self.version.load(std::sync::atomic::Ordering::SeqCst);
        let mut out = Vec::new();
        for s in sends {
            if s.version != current {
                out.push(GroupRouting::Stale { current });
                break;
            }
            out.push(GroupRouting::Routed { missed: s.users.to_vec() });
        }
        self.calls.lock().push((sends.len(), out.last().is_some_and(|r| matches!(r, GroupRouting::Stale { .. }))));
        Ok(out)
    }
}

/// Group messages of one sender go out as one batch; a member list found stale on the bus in
/// the middle of it (a join on another node) is read again, and the rest of the batch goes to
/// the members as they are now, in order, each answered in turn.
#[test]
fn a_batch_of_group_messages_reads_a_stale_member_list_again_and_keeps_its_order() {
    let bus = Arc::new(VersionedBus::default());
    let mut n = Node::with_bus(bus.clone());
    let (a, b, c) = (n.connect(), n.connect(), n.connect());
    let (alice, bob, carol) = (n.register(a, "alice"), n.register(b, "bob"), n.register(c, "carol"));
    for (at, id) in [(a, alice), (b, bob), (c, carol)] {
        n.login(at, id);
    }
    n.frame(a, json!({"msgid":8,"groupname":"g","seq":1}));
    n.settle();
    let gid = n.take_lines(a)[0]["groupid"].as_u64().expect("a group") as crate::GroupId;
    n.frame(b, json!({"msgid":9,"groupid":gid,"seq":1}));
    n.settle();
    n.take_lines(b);
    n.frame(a, json!({"msgid":10,"groupid":gid,"msg":"m0","seq":10}));
    n.settle(); // the members are cached now, under version 0
    assert_eq!(n.take_lines(b)[0]["msg"], "m0");
    // Carol joins through another node: the store has her, this node's cache does not.
    assert!(n.store.join_group(gid, carol).unwrap());
    bus.version.store(7, std::sync::atomic::Ordering::SeqCst);
    for (i, m) in ["m1", "m2", "m3"].iter().enumerate() {
        n.frame(a, json!({"msgid":10,"groupid":gid,"msg":m,"seq":11 + i}));
    }
    n.settle();
    let texts =
        |lines: Vec<Value>| lines.iter().map(|l| l["msg"].as_str().unwrap_or("").to_owned()).collect::<Vec<_>>();
    assert_eq!(texts(n.take_lines(b)), ["m1", "m2", "m3"]);
    assert_eq!(texts(n.take_lines(c)), ["m1", "m2", "m3"], "the newcomer, from the first message after the change");
    let seqs: Vec<Value> = n.take_lines(a).iter().filter(|l| l["msgid"] == 11).map(|l| l["seq"].clone()).collect();
    assert_eq!(seqs[seqs.len() - 3..], [json!(11), json!(12), json!(13)]);
    let calls = bus.calls.lock().clone();
    assert!(calls.iter().any(|&(len, stale)| len > 1 && stale), "a batch met the stale list: {calls:?}");
}
