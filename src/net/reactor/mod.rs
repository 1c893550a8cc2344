//! A worker reactor: one thread, one `mio::Poll`, the connections it owns.
//!
//! Per loop iteration: socket events (read → frame → handle; writable → mark for flush), then a
//! bounded batch of channel messages, then connections whose input was cut short by the read
//! budget, then one flush per connection with output. Everything here runs on the reactor's
//! own thread; other threads reach it through `router.rs`.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::mem;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

mod input;

use super::conn::{Conn, Out, State};
use super::router::{Msg, ReactorHandle, Router};
use crate::config::Config;
use crate::pool::PoolHandle;
use crate::proto::{reply, Errno};
use crate::service::{Delivery, Effect, Effects, Job, JobKind, Loc, Outcome, Outlet, Service, User};
use crate::UserId;

pub(super) const WAKER: Token = Token(usize::MAX);
/// Bytes one connection may read per loop iteration before others get their turn.
const READ_BUDGET: usize = 256 * 1024;
const SCRATCH: usize = 64 * 1024;
/// Channel messages handled per loop iteration, so sockets are never starved (a few ms at
/// most). Large because output is flushed once per iteration: a group message reaches this
/// reactor as one channel message per member here, and a batch of 1,024 meant about one write
/// per member per group message; 16,384 lets one write carry many (fan-out to 1,000: 300k →
/// 640k–1M deliveries/s, server CPU per delivery 2.6 → 0.9 µs).
const MSG_BATCH: usize = 16384;
/// Input a lingering connection may still send before it is simply closed.
const LINGER_LIMIT: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Quiescing { reported: bool },
    Finished,
}

/// A worker reactor, before and while it runs on its thread.
#[derive(Debug)]
pub(crate) struct Reactor {
    idx: usize,
    poll: Poll,
    rx: Receiver<Msg>,
    notified: Arc<AtomicBool>,
    conns: Slab<Conn>,
    next_conn_id: u64,
    jobs_in_flight: usize,
    service: Arc<Service>,
    router: Arc<Router>,
    pool: PoolHandle,
    quiet: Sender<usize>,
    max_frame: usize,
    max_outbound: usize,
    scratch: Vec<u8>,
    fx: Effects,
    /// Connections with output to flush at the end of this iteration.
    dirty: Vec<usize>,
    /// Connections whose input was cut short by the read budget.
    backlog: Vec<usize>,
    /// Channel messages set aside while a session ended; handled before the channel.
    deferred: VecDeque<Msg>,
    phase: Phase,
}

/// The parts of a reactor that exist before the router does.
#[derive(Debug)]
pub(crate) struct ReactorSeed {
    pub(in crate::net) poll: Poll,
    pub(in crate::net) rx: Receiver<Msg>,
    pub(in crate::net) notified: Arc<AtomicBool>,
}

impl Reactor {
    pub(crate) fn seed() -> io::Result<(ReactorSeed, ReactorHandle)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let notified = Arc::new(AtomicBool::new(false));
        Ok((ReactorSeed { poll, rx, notified: notified.clone() }, ReactorHandle::new(tx, waker, notified)))
    }

    pub(crate) fn new(
        idx: usize,
        seed: ReactorSeed,
        config: &Config,
        service: Arc<Service>,
        router: Arc<Router>,
        pool: PoolHandle,
        quiet: Sender<usize>,
    ) -> Reactor {
        Reactor {
            idx,
            poll: seed.poll,
            rx: seed.rx,
            notified: seed.notified,
            conns: Slab::new(),
            next_conn_id: 0,
            jobs_in_flight: 0,
            service,
            router,
            pool,
            quiet,
            max_frame: config.max_frame,
            max_outbound: config.max_outbound,
            scratch: vec![0; SCRATCH],
            fx: Effects::default(),
            dirty: Vec::new(),
            backlog: Vec::new(),
            deferred: VecDeque::new(),
            phase: Phase::Running,
        }
    }

    /// The event loop. Returns after `Msg::Finish`.
    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut more_msgs = false;
        while self.phase != Phase::Finished {
            let timeout = (more_msgs || !self.backlog.is_empty()).then_some(Duration::ZERO);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("reactor {}: poll failed: {e}", self.idx);
                break;
            }
            for event in events.iter() {
                match event.token() {
                    // Cleared before the queue is read: a message sent after this wakes us again.
                    WAKER => self.notified.store(false, Ordering::Release),
                    Token(key) => {
                        let Some(conn) = self.conns.get_mut(key) else { continue };
                        if event.is_writable() {
                            self.dirty.push(key);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            conn.readable = true;
                            self.pump(key);
                        }
                    }
                }
            }
            more_msgs = self.handle_messages();
            for key in mem::take(&mut self.backlog) {
                self.pump(key);
            }
            self.flush_dirty();
            if self.phase == (Phase::Quiescing { reported: false }) && self.jobs_in_flight == 0 {
                self.phase = Phase::Quiescing { reported: true };
                let _ = self.quiet.send(self.idx);
            }
        }
        self.drain_channel_at_exit();
    }

    /// Handles up to one batch of channel messages; `true` if more are waiting.
    fn handle_messages(&mut self) -> bool {
        for _ in 0..MSG_BATCH {
            let msg = match self.deferred.pop_front() {
                Some(msg) => msg,
                None => match self.rx.try_recv() {
                    Ok(msg) => msg,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => return false,
                },
            };
            self.on_message(msg);
            if self.phase == Phase::Finished {
                return false;
            }
        }
        true
    }

    fn on_message(&mut self, msg: Msg) {
        match msg {
            Msg::NewConn(stream) => self.accept(stream),
            Msg::Deliver(d) => self.deliver(d),
            Msg::Drain { to, user } => self.on_drain(to, user),
            Msg::JobDone { token, conn, outcome } => self.on_job_done(token, conn, outcome),
            Msg::Evict { to } => {
                if self.conns.get(to.token).is_some_and(|c| c.id == to.conn) {
                    self.close(to.token, "the user is live on another node");
                }
            }
            Msg::Quiesce => {
                if self.phase == Phase::Running {
                    self.phase = Phase::Quiescing { reported: false };
                }
            }
            Msg::Finish { deadline } => self.finish(deadline),
        }
    }

    fn loc(&self, key: usize) -> Loc {
        Loc { reactor: self.idx, token: key, conn: self.conns.get(key).map_or(0, |c| c.id) }
    }

    fn accept(&mut self, mut stream: TcpStream) {
        if self.phase != Phase::Running {
            return; // dropped: the node is shutting down
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.poll.registry().register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE)
        {
            log::warn!("reactor {}: cannot register a connection: {e}", self.idx);
            return;
        }
        self.next_conn_id += 1;
        log::debug!("conn {}.{}: open", self.idx, self.next_conn_id);
        entry.insert(Conn::new(stream, self.next_conn_id, self.max_frame));
        // Edge-triggered: bytes that came before registration raise no event; look now.
        self.pump(key);
    }

    /// Carries out what a handler decided: replies, deliveries, background work.
    fn apply_effects(&mut self, key: usize) {
        let mut fx = mem::take(&mut self.fx);
        if let Some(conn) = self.conns.get_mut(key) {
            for r in fx.replies.drain(..) {
                conn.queue(Out::Reply(r));
            }
            self.dirty.push(key);
        }
        for d in fx.deliveries.drain(..) {
            if d.to.reactor == self.idx {
                self.deliver(d);
                continue;
            }
            // Sent under the presence read lock, so a session ending meanwhile finds it queued.
            // The lookup is repeated here: the user may have moved since the handler's.
            let user = d.user;
            let mut pending = Some(d);
            let here_now = self.service.presence().with(user, |loc| {
                if loc.reactor == self.idx {
                    return Some(loc); // ours: delivered below; only this thread can end it
                }
                if let Some(d) = pending.take() {
                    self.router.deliver(Delivery { to: loc, ..d });
                }
                None
            });
            match (pending, here_now.flatten()) {
                (Some(d), Some(loc)) => self.deliver(Delivery { to: loc, ..d }),
                (Some(d), None) => self.spill(vec![(d.user, d.msg)]),
                (None, _) => {}
            }
        }
        for job in fx.background.drain(..) {
            self.submit_background(job);
        }
        self.fx = fx;
    }

    /// Runs `job` on the pool; the connection handles nothing else until it is done.
    fn submit(&mut self, key: usize, job: Job) {
        if self.pool.is_busy() && job.kind.sheddable() {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.session.pending = None;
                if let Some(bytes) = job.reject(Errno::Unavailable) {
                    conn.queue(Out::Reply(bytes));
                }
                self.dirty.push(key);
            }
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.busy = true;
        self.jobs_in_flight += 1;
        let here = self.loc(key);
        let (service, router, pool) = (self.service.clone(), self.router.clone(), self.pool.clone());
        let done = move |router: &Router, outcome| {
            router.send(here.reactor, Msg::JobDone { token: here.token, conn: here.conn, outcome });
        };
        let on_pool = {
            let (service, router) = (service.clone(), router.clone());
            move |job: Job| {
                pool.submit(move || {
                    let outcome = service.run(job, here, &*router);
                    done(&router, outcome);
                });
            }
        };
        // A chat goes to the bus first, sharing round trips; everything else to the pool.
        service.chat(job, move |outcome| done(&router, outcome), on_pool);
    }

    /// Pool work nobody waits for (store unsent messages, mark a session offline).
    fn submit_background(&self, job: Job) {
        let (service, router) = (self.service.clone(), self.router.clone());
        let here = Loc { reactor: self.idx, token: usize::MAX, conn: 0 };
        self.pool.submit(move || drop(service.run(job, here, &*router)));
    }

    fn spill(&self, unsent: Vec<(UserId, Arc<str>)>) {
        spill(&self.service, &self.router, unsent);
    }

    /// Ends the session of `user` on connection `key` without losing or reordering what was
    /// sent to it: under the presence write lock, deliveries already queued on this reactor's
    /// channel for it join `unsent`, and all of it goes to the mailbox lane before the user
    /// stops being live. A sender that then finds the user offline queues behind it.
    /// `released`: a logout job releases the bus claim; otherwise a background job does.
    fn end_session(&mut self, key: usize, user: UserId, mut unsent: Vec<(UserId, Arc<str>)>, released: bool) {
        let here = self.loc(key);
        let (rx, deferred, service, router) = (&self.rx, &mut self.deferred, &self.service, &self.router);
        let before = || {
            for msg in rx.try_iter() {
                match msg {
                    Msg::Deliver(d) if d.to == here && d.user == user => unsent.push((d.user, d.msg)),
                    other => deferred.push_back(other),
                }
            }
            spill(service, router, unsent);
        };
        service.end_session(user, here, before, released, &mut self.fx);
        self.apply_effects(key);
    }

    /// A message for a session of this reactor, from this or another thread's handler.
    fn deliver(&mut self, d: Delivery) {
        match self.conns.get_mut(d.to.token) {
            Some(conn) if conn.id == d.to.conn && conn.is_open() && conn.session.expects(d.user) => {
                if conn.busy {
                    conn.held.push((d.user, d.msg));
                } else {
                    conn.queue(Out::Chat(d.user, d.msg));
                    self.dirty.push(d.to.token);
                }
            }
            // The session ended after the sender looked it up: the message is not lost.
            _ => self.spill(vec![(d.user, d.msg)]),
        }
    }

    fn on_drain(&mut self, to: Loc, user: UserId) {
        if self.phase != Phase::Running {
            return; // the mailbox stays stored
        }
        match self.conns.get_mut(to.token) {
            Some(conn) if conn.id == to.conn && conn.is_open() && conn.session.expects(user) => {
                if conn.busy {
                    conn.drain_wanted = true;
                } else {
                    self.submit(to.token, Job { seq: None, kind: JobKind::Drain { user } });
                }
            }
            _ => {}
        }
    }

    fn on_job_done(&mut self, key: usize, id: u64, outcome: Outcome) {
        let Some(conn) = self.conns.get_mut(key).filter(|c| c.id == id && c.busy) else {
            log::error!("reactor {}: a job finished for a connection that is gone", self.idx);
            return;
        };
        conn.busy = false;
        conn.session.pending = None;
        self.jobs_in_flight -= 1;
        let open = conn.is_open();
        if let (Some(bytes), true) = (outcome.reply, open) {
            conn.queue(Out::Reply(bytes));
        }
        let mut unsent = Vec::new();
        let mut ended = None;
        match outcome.effect {
            Effect::None => {}
            Effect::LoggedIn { data, seq } if open => {
                conn.queue(Out::LoginAck(data.id, reply::login_ok(&data, seq.as_ref())));
                log::debug!("conn {}.{}: user {} logged in", self.idx, id, data.id);
                conn.session.user = Some(User { id: data.id, name: data.name });
            }
            Effect::LoggedIn { data, .. } => {
                // The client left while logging in: end the session, keep its mailbox.
                let mut mailbox: Vec<(UserId, Arc<str>)> =
                    data.offline.into_iter().map(|m| (data.id, Arc::from(m + "\n"))).collect();
                mailbox.append(&mut conn.held);
                ended = Some((data.id, mailbox));
            }
            Effect::Drained { user, msgs } => {
                let msgs = msgs.into_iter().map(|m| Arc::<str>::from(m + "\n"));
                if open && conn.session.user.as_ref().is_some_and(|u| u.id == user) {
                    msgs.for_each(|m| conn.queue(Out::Chat(user, m)));
                } else {
                    unsent.extend(msgs.map(|m| (user, m)));
                }
            }
        }
        let wanted = mem::take(&mut conn.drain_wanted) && open && self.phase == Phase::Running;
        let drain = wanted.then(|| conn.session.user.as_ref().map(|u| u.id)).flatten();
        // Deliveries that waited for this job now follow its answer, unless the mailbox is to be
        // fetched first: they were sent after what it holds, so they wait behind the drain too.
        if drain.is_none() {
            for (user, msg) in mem::take(&mut conn.held) {
                if open && conn.session.user.as_ref().is_some_and(|u| u.id == user) {
                    conn.queue(Out::Chat(user, msg));
                } else {
                    unsent.push((user, msg));
                }
            }
        }
        if let Some((user, mailbox)) = ended {
            self.end_session(key, user, mailbox, false);
        }
        if !open {
            self.conns.remove(key);
        }
        self.apply_effects(key);
        self.spill(unsent);
        if !open {
            return;
        }
        match drain {
            Some(user) => self.submit(key, Job { seq: None, kind: JobKind::Drain { user } }),
            None => self.pump(key),
        }
    }

    /// A framing error: answer it, end the session, and linger until the peer closes.
    fn reject_stream(&mut self, key: usize, errno: Errno, errmsg: &str) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        log::debug!("conn {}.{}: framing error: {errmsg}", self.idx, conn.id);
        conn.queue(Out::Reply(reply::error(None, None, errno, errmsg)));
        conn.state = State::Lingering { discarded: 0 };
        conn.inbuf = Vec::new();
        let user = conn.session.user.take();
        self.dirty.push(key);
        self.apply_effects(key);
        if let Some(user) = user {
            self.end_session(key, user.id, Vec::new(), false);
        }
    }

    /// Closes the socket now and ends the session; unsent messages go to the offline store.
    fn close(&mut self, key: usize, why: &str) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.state == State::Closed {
            return;
        }
        log::debug!("conn {}.{}: closed: {why}", self.idx, conn.id);
        conn.state = State::Closed;
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let _ = conn.stream.shutdown(Shutdown::Both);
        conn.inbuf = Vec::new();
        let user = conn.session.user.take();
        let unsent = conn.take_unsent();
        match user {
            Some(user) => self.end_session(key, user.id, unsent, false),
            None => self.spill(unsent),
        }
        if self.conns.get(key).is_some_and(|c| !c.busy) {
            self.conns.remove(key); // else removed when its job returns
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for key in dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if conn.state == State::Closed || !(conn.has_output() || conn.eof) {
                continue;
            }
            if let Err(e) = conn.flush() {
                self.close(key, &e.to_string());
                continue;
            }
            if conn.eof && !conn.busy && !conn.has_output() {
                self.close(key, "peer closed");
                continue;
            }
            if conn.backlog_bytes() > self.max_outbound {
                log::warn!(
                    "conn {}.{}: reader too slow, {} bytes queued; closing",
                    self.idx,
                    conn.id,
                    conn.backlog_bytes()
                );
                self.close(key, "outbound queue over its cap");
            }
        }
        if self.dirty.is_empty() {
            self.dirty = dirty; // keep the allocation
        }
    }

    /// Shutdown phase 2. Sessions end first so nothing new is delivered to them; output gets
    /// until `deadline` to drain; whatever is still unsent is stored offline.
    fn finish(&mut self, deadline: Instant) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for &key in &keys {
            if let Some(user) = self.conns.get_mut(key).and_then(|c| c.session.user.take()) {
                self.end_session(key, user.id, Vec::new(), false);
            }
        }
        let mut events = Events::with_capacity(256);
        loop {
            self.dirty.extend(self.conns.iter().filter(|(_, c)| c.has_output()).map(|(k, _)| k));
            self.flush_dirty();
            let pending = self.conns.iter().any(|(_, c)| c.has_output() && c.state != State::Closed);
            let now = Instant::now();
            if !pending || now >= deadline {
                break;
            }
            let _ = self.poll.poll(&mut events, Some(deadline - now));
        }
        for key in keys {
            self.close(key, "server shutting down");
        }
        self.phase = Phase::Finished;
    }

    /// Messages that raced with the exit: store what was meant for sessions.
    fn drain_channel_at_exit(&mut self) {
        let deferred: Vec<Msg> = self.deferred.drain(..).collect();
        for msg in deferred.into_iter().chain(self.rx.try_iter().collect::<Vec<_>>()) {
            match msg {
                Msg::Deliver(d) => self.spill(vec![(d.user, d.msg)]),
                Msg::JobDone { outcome: Outcome { effect: Effect::LoggedIn { data, .. }, .. }, .. } => {
                    let offline = data.offline.into_iter().map(|m| (data.id, Arc::from(m + "\n"))).collect();
                    self.spill(offline);
                }
                Msg::JobDone { outcome: Outcome { effect: Effect::Drained { user, msgs }, .. }, .. } => {
                    self.spill(msgs.into_iter().map(|m| (user, Arc::from(m + "\n"))).collect());
                }
                _ => {}
            }
        }
    }
}

/// Hands undeliverable messages to the mailbox lanes, grouped by user.
fn spill(service: &Service, router: &Arc<Router>, unsent: Vec<(UserId, Arc<str>)>) {
    let mut by_user: HashMap<UserId, Vec<Arc<str>>> = HashMap::new();
    for (user, msg) in unsent {
        by_user.entry(user).or_default().push(msg);
    }
    for (user, msgs) in by_user {
        service.spill(user, msgs, router.clone());
    }
}
