//! The chat server's reactor handler: what frames and channel messages mean for sessions.
//!
//! The transport ([`crate::net`]) hands over frames; this handler parses them, lets
//! [`Service::handle`] decide, and carries the decisions out through [`Io`]: replies and live
//! deliveries queue on sockets, a [`Job`] pauses the connection until its [`Event::JobDone`]
//! comes back, sessions end under the presence lock so nothing sent to them is lost or
//! reordered. Reactor thread only.

use std::collections::HashMap;
use std::mem;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::message_log::{Accepted, LogHandle, LogResult};
use super::routes::Routes;
use super::session::{delivered, AckState, Out, Reply, Sent, SessionState, Sessions};
use super::{Delivery, Effect, Effects, GroupChat, Job, JobKind, Outcome, Outlet, Service, User};
use crate::bus::{BusError, Routing};
use crate::net::{Handler, Io, Loc, Router};
use crate::pool::PoolHandle;
use crate::proto::codec::FrameError;
use crate::proto::message::{ChatMessage, Target};
use crate::proto::request::{self, Parsed};
use crate::proto::{reply, Errno, MsgId};
use crate::store::{Logged, Mid};
use crate::UserId;

/// Most chat messages of one connection between reading and their turn: in the log, or back
/// from it behind earlier ones (at 16 KiB each, 4 MiB).
pub(super) const MAX_QUEUED: usize = 256;
/// Most chat messages of one connection on their way to other nodes (or stored instead).
pub(super) const MAX_ROUTING: usize = 64;
/// Most group messages of one connection sent in one pool job.
const MAX_GROUP_BATCH: usize = 64;

/// What other threads send a chat reactor.
#[derive(Debug)]
pub(crate) enum Event {
    Deliver(Delivery),
    /// Deliveries to sessions of this reactor, one hand-over (a group message's members here).
    Deliveries(Vec<Delivery>),
    /// Fetch the mailbox of the session at `to` (messages were stored while it logged in, or
    /// the sweep found some): all of it, or with `newest`, only if the session has not read
    /// that row yet.
    Drain {
        to: Loc,
        user: UserId,
        newest: Option<u64>,
    },
    /// The job of the connection at `at` is done.
    JobDone {
        at: Loc,
        outcome: Outcome,
    },
    /// The bus's answers, each to the oldest unanswered chat its connection sent to another
    /// node, in the order sent.
    Routed(Vec<(Loc, Result<bool, BusError>)>),
    /// Chats of the connection at `at` that no node received are stored (or refused).
    Stored {
        at: Loc,
        outcomes: Vec<Outcome>,
    },
    /// Chat messages of this reactor's connections are back from the log, in the order sent.
    Logged(Vec<LogResult>),
    /// Close the connection at `to`: its user is live on another node.
    Evict {
        to: Loc,
    },
}

impl Outlet for Router<Event> {
    fn deliver(&self, d: Delivery) {
        self.send(d.to.reactor, Event::Deliver(d));
    }

    fn deliver_many(&self, mut ds: Vec<Delivery>) {
        ds.sort_by_key(|d| d.to.reactor); // stable: each session's own stay in order
        while let Some(last) = ds.last() {
            let reactor = last.to.reactor;
            let split = ds.partition_point(|d| d.to.reactor < reactor);
            self.send(reactor, Event::Deliveries(ds.split_off(split)));
        }
    }

    fn drain(&self, to: Loc, user: UserId) {
        self.send(to.reactor, Event::Drain { to, user, newest: None });
    }

    fn fetch_after(&self, to: Loc, user: UserId, newest: u64) {
        self.send(to.reactor, Event::Drain { to, user, newest: Some(newest) });
    }

    fn evict(&self, to: Loc) {
        self.send(to.reactor, Event::Evict { to });
    }
}

/// One reactor's chat sessions.
#[derive(Debug)]
pub(crate) struct ChatHandler {
    service: Arc<Service>,
    router: Arc<Router<Event>>,
    pool: PoolHandle,
    log: LogHandle,
    sessions: Sessions,
    /// Chats to users not live here, by sender, until settled. Kept apart from the sessions: a
    /// sender that closes meanwhile still has its messages stored if nobody received them.
    routes: HashMap<Loc, Routes>,
    jobs_in_flight: usize,
    fx: Effects,
}

impl ChatHandler {
    pub(crate) fn new(
        service: Arc<Service>,
        router: Arc<Router<Event>>,
        pool: PoolHandle,
        log: LogHandle,
    ) -> ChatHandler {
        let (sessions, routes, fx) = (Sessions::default(), HashMap::new(), Effects::default());
        ChatHandler { service, router, pool, log, sessions, routes, jobs_in_flight: 0, fx }
    }

    fn dispatch(&mut self, io: &mut impl Io<Self>, at: Loc, parsed: Parsed) {
        let Some(session) = self.sessions.get_mut(at) else { return };
        if !session.sent.is_empty() && !parsed.is_chat() {
            // Chat messages of this connection are in the log: what comes after them waits
            // for their answers (per-connection order), reading nothing further meanwhile.
            session.deferred = Some(parsed);
            io.pause(at);
            return;
        }
        self.service.handle(&mut session.state, parsed, &mut self.fx);
        if !session.sent.is_empty() {
            // A refused chat message is answered after the messages before it.
            session.sent.extend(self.fx.replies.drain(..).map(Sent::Answer));
        }
        let mut unlogged = None;
        if let Some((seq, msg)) = self.fx.log.take() {
            session.sent.push_back(Sent::Logging);
            if session.sent.len() >= MAX_QUEUED {
                io.pause(at); // resumed as they take their turn (`advance`)
            }
            self.jobs_in_flight += 1;
            if let Err(accepted) = self.log.append(Accepted { at, seq, msg }) {
                unlogged = Some(LogResult { accepted: *accepted, logged: None, again: false });
                // the writer has stopped
            }
        }
        let mut job = self.fx.job.take();
        if let Some(Job { kind: JobKind::Login { from, .. } | JobKind::Register { from, .. }, .. }) = &mut job {
            *from = io.peer(at); // counted per address by the throttle
        }
        let ended = self.fx.ended.take();
        let acked = self.fx.acked.take();
        if let Some(r) = unlogged {
            self.on_logged(io, vec![r]);
        }
        if let Some((seq, mids)) = acked {
            self.on_acked(io, at, seq, mids);
        }
        self.apply_effects(io, at);
        if let Some(user) = ended {
            io.trust(at, false);
            let released = job.as_ref().is_some_and(|j| matches!(j.kind, JobKind::Logout { .. }));
            self.end_session(io, at, user, Vec::new(), released);
        }
        if let Some(job) = job {
            self.submit(io, at, job);
        }
    }

    /// Carries out what a handler decided: replies, deliveries, background work.
    fn apply_effects(&mut self, io: &mut impl Io<Self>, at: Loc) {
        let mut fx = mem::take(&mut self.fx);
        for r in fx.replies.drain(..) {
            self.answer(io, at, r);
        }
        for d in fx.deliveries.drain(..) {
            if d.to.reactor == io.reactor() {
                self.deliver(io, d);
                continue;
            }
            // Sent under the presence read lock, so a session ending meanwhile finds it queued.
            // The lookup is repeated here: the user may have moved since the handler's.
            let user = d.user;
            let mut pending = Some(d);
            let here_now = self.service.presence().with(user, |loc| {
                if loc.reactor == io.reactor() {
                    return Some(loc); // ours: delivered below; only this thread can end it
                }
                if let Some(d) = pending.take() {
                    self.router.deliver(Delivery { to: loc, ..d });
                }
                None
            });
            match (pending, here_now.flatten()) {
                (Some(d), Some(loc)) => self.deliver(io, Delivery { to: loc, ..d }),
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
    fn submit(&mut self, io: &mut impl Io<Self>, at: Loc, job: Job) {
        let pipelined = self.pipelines(&job);
        let Some(session) = self.sessions.get_mut(at) else { return };
        if self.pool.is_busy() && job.kind.sheddable() {
            if let SessionState::LoggingIn(_) = session.state {
                session.state = SessionState::Anonymous;
            }
            if let Some(bytes) = job.reject(Errno::Unavailable) {
                self.answer(io, at, bytes);
            }
            return;
        }
        if pipelined {
            return self.route(io, at, job);
        }
        session.job = true;
        io.pause(at);
        if self.routes.contains_key(&at) {
            session.waiting_job = Some(job); // after the chats before it are settled
            return;
        }
        self.start_job(io, at, job);
    }

    /// Whether `job` is a chat for another node, which goes to the bus without holding its
    /// connection up (on a single node, such a chat is for a user live nowhere: a job stores it).
    fn pipelines(&self, job: &Job) -> bool {
        matches!(job.kind, JobKind::Chat { .. }) && !self.service.bus().sole_node()
    }

    /// Starts a job, which answers with `Event::JobDone` (a chat for another node: see `route`).
    fn start_job(&mut self, io: &mut impl Io<Self>, at: Loc, job: Job) {
        if self.pipelines(&job) {
            return self.route(io, at, job);
        }
        self.jobs_in_flight += 1;
        self.run_on_pool(at, job);
    }

    /// Sends an answer to `at`, or holds it behind earlier answers still to come.
    fn answer(&mut self, io: &mut impl Io<Self>, at: Loc, bytes: Vec<u8>) {
        match self.sessions.get_mut(at) {
            Some(s) if !s.replies.is_empty() => s.replies.push_back(Reply::Ready(Out::Reply(bytes))),
            _ => drop(io.send(at, Out::Reply(bytes))), // a closed connection's answers go nowhere
        }
    }

    /// A chat of `at` is settled: its answer (if any) takes its place, and what is ready goes.
    fn settle_answer(&mut self, io: &mut impl Io<Self>, at: Loc, reply: Option<Vec<u8>>) {
        let Some(s) = self.sessions.get_mut(at) else { return };
        match (s.replies.iter().position(|r| matches!(r, Reply::Pending)), reply) {
            (Some(i), Some(bytes)) => s.replies[i] = Reply::Ready(Out::Reply(bytes)),
            (Some(i), None) => drop(s.replies.remove(i)),
            (None, Some(bytes)) => s.replies.push_back(Reply::Ready(Out::Reply(bytes))),
            (None, None) => {}
        }
        let mut unsent = Vec::new();
        while let Some(Reply::Ready(_)) = s.replies.front() {
            if let Some(Reply::Ready(out)) = s.replies.pop_front() {
                queue(io, at, out, &mut unsent);
            }
        }
        self.spill(unsent);
    }

    /// Whether the logged chat `r` goes on behind the sender's chats to other nodes without
    /// overtaking any: only one that goes to another node too, and only while none of those
    /// is to be stored.
    fn may_follow_routes(routes: Option<&Routes>, service: &Service, r: &LogResult) -> bool {
        let Some(routes) = routes else { return true };
        let local = |toid| matches!(service.presence().with_unacked(toid, |_| ()), Some(Some(())));
        match r.accepted.msg.to {
            Target::User(toid) => !routes.held_back() && !local(toid),
            Target::Group(_) => false,
        }
    }

    /// A logged chat for a user not live here: to the bus, behind the connection's others,
    /// many at once (see `routes.rs`).
    fn route(&mut self, io: &mut impl Io<Self>, at: Loc, job: Job) {
        if let Some(s) = self.sessions.get_mut(at) {
            s.replies.push_back(Reply::Pending);
        }
        let routes = self.routes.entry(at).or_default();
        if routes.held_back() {
            routes.waiting.push_back(job);
        } else {
            self.send_route(io, at, job);
        }
        self.pump_routes(io, at);
    }

    fn send_route(&mut self, io: &mut impl Io<Self>, at: Loc, job: Job) {
        let JobKind::Chat { toid, msg, .. } = &job.kind else { return };
        let routes = self.routes.entry(at).or_default();
        let epoch = routes.epoch;
        let routing = self.service.route(*toid, msg.clone(), at, epoch);
        routes.on_bus.push_back((epoch, job));
        self.jobs_in_flight += 1;
        if let Routing::Done(result) = routing {
            self.settle_route(io, at, result);
        }
    }

    /// The bus answered the oldest chat of `at` on it: received, or to be stored.
    fn settle_route(&mut self, io: &mut impl Io<Self>, at: Loc, result: Result<bool, BusError>) {
        self.jobs_in_flight = self.jobs_in_flight.saturating_sub(1);
        let Some((epoch, job)) = self.routes.get_mut(&at).and_then(|r| r.on_bus.pop_front()) else {
            return log::error!("conn {}.{}: a bus answer for no chat", at.reactor, at.conn);
        };
        match self.service.routed(&job, result) {
            Some(outcome) => self.settle_answer(io, at, outcome.reply),
            None => self.routes.entry(at).or_default().not_received(epoch, job),
        }
    }

    /// Moves the chats of `at` on: what is to be stored goes to the pool (one batch at a time,
    /// in order), what waited goes to the bus once nothing before it is unsettled.
    fn pump_routes(&mut self, io: &mut impl Io<Self>, at: Loc) {
        while let Some(routes) = self.routes.get_mut(&at) {
            if routes.storing == 0 && !routes.to_store.is_empty() {
                let jobs = mem::take(&mut routes.to_store);
                routes.storing = jobs.len();
                self.jobs_in_flight += 1;
                let (service, router) = (self.service.clone(), self.router.clone());
                self.pool.submit(move || {
                    let outcomes = jobs.into_iter().map(|job| service.run(job, at, &*router)).collect();
                    router.send(at.reactor, Event::Stored { at, outcomes });
                });
                break;
            }
            if !routes.may_release() {
                break;
            }
            let Some(job) = routes.waiting.pop_front() else { break };
            self.send_route(io, at, job);
        }
        self.routes_changed(io, at);
    }

    /// Backpressure and what waits on the connection's routes: read no further at
    /// `MAX_ROUTING`; a job waiting for the routes to settle starts once they have.
    fn routes_changed(&mut self, io: &mut impl Io<Self>, at: Loc) {
        let unsettled = self.routes.get(&at).map_or(0, Routes::len);
        if unsettled == 0 {
            self.routes.remove(&at);
        }
        let Some(s) = self.sessions.get_mut(at) else { return };
        let was = mem::replace(&mut s.routing, unsettled);
        if unsettled >= MAX_ROUTING && was < MAX_ROUTING {
            io.pause(at);
        } else if unsettled < MAX_ROUTING && was >= MAX_ROUTING && s.may_read() {
            io.resume(at);
        }
        if unsettled == 0 {
            if let Some(job) = s.waiting_job.take() {
                self.start_job(io, at, job);
            }
        }
    }

    fn on_stored(&mut self, io: &mut impl Io<Self>, at: Loc, outcomes: Vec<Outcome>) {
        self.jobs_in_flight = self.jobs_in_flight.saturating_sub(1);
        if let Some(routes) = self.routes.get_mut(&at) {
            routes.storing = 0;
        }
        for outcome in outcomes {
            self.settle_answer(io, at, outcome.reply);
        }
        self.pump_routes(io, at);
        self.advance(io, at);
    }

    fn run_on_pool(&self, at: Loc, job: Job) {
        let (service, router) = (self.service.clone(), self.router.clone());
        self.pool.submit(move || {
            let outcome = service.run(job, at, &*router);
            router.send(at.reactor, Event::JobDone { at, outcome });
        });
    }

    /// Pool work nobody waits for (store unsent messages, mark a session offline).
    fn submit_background(&self, job: Job) {
        let (service, router) = (self.service.clone(), self.router.clone());
        let nowhere = Loc { reactor: usize::MAX, token: usize::MAX, conn: 0 };
        self.pool.submit(move || drop(service.run(job, nowhere, &*router)));
    }

    fn spill(&self, unsent: Vec<(UserId, Arc<str>)>) {
        spill(&self.service, &self.router, unsent);
    }

    /// Ends the session of `user` at `at` without losing or reordering what was sent to it:
    /// under the presence write lock, deliveries already queued on this reactor's channel for
    /// it join `unsent`, and all of it goes to the mailbox lane before the user stops being
    /// live. A sender that then finds the user offline queues behind it.
    /// `released`: a logout job releases the bus claim; otherwise a background job does.
    fn end_session(
        &mut self,
        io: &mut impl Io<Self>,
        at: Loc,
        user: UserId,
        mut unsent: Vec<(UserId, Arc<str>)>,
        released: bool,
    ) {
        let (service, router) = (&self.service, &self.router);
        let before = || {
            // In the order queued: single deliveries, and its own out of batches (which stay).
            let for_it = |d: &Delivery| d.to == at && d.user == user;
            let mut mine = |m: &mut Event| match m {
                Event::Deliver(d) if for_it(d) => {
                    unsent.push((d.user, d.msg.clone()));
                    true
                }
                Event::Deliveries(ds) => {
                    ds.retain(|d| match for_it(d) {
                        true => {
                            unsent.push((d.user, d.msg.clone()));
                            false
                        }
                        false => true,
                    });
                    false
                }
                _ => false,
            };
            drop(io.take_queued(&mut mine));
            spill(service, router, unsent);
        };
        service.end_session(user, at, before, released, &mut self.fx);
        self.apply_effects(io, at);
    }

    /// A message for a session of this reactor, from this or another thread's handler.
    fn deliver(&mut self, io: &mut impl Io<Self>, d: Delivery) {
        match self.sessions.get_mut(d.to) {
            Some(s) if s.state.expects(d.user) => {
                if s.acks.is_some() || s.streaming {
                    // Stored first; the session reads it from its mailbox, in order.
                    self.spill(vec![(d.user, d.msg)]);
                } else if s.job {
                    s.held.push((d.user, d.msg));
                } else if !s.replies.is_empty() {
                    s.replies.push_back(Reply::Ready(Out::Chat(d.user, d.msg)));
                } else if let Err(out) = io.send(d.to, Out::Chat(d.user, d.msg)) {
                    self.spill(messages_of(vec![out]));
                }
            }
            // The session ended after the sender looked it up: the message is not lost.
            _ => self.spill(vec![(d.user, d.msg)]),
        }
    }

    fn on_drain(&mut self, io: &mut impl Io<Self>, to: Loc, user: UserId, newest: Option<u64>) {
        if !io.running() {
            return; // the mailbox stays stored
        }
        match self.sessions.get_mut(to) {
            Some(s) if s.state.expects(user) => {
                if let Some(acks) = &mut s.acks {
                    if newest.is_some_and(|row| row <= acks.cursor) {
                        return; // read already, waiting for its acknowledgement
                    }
                    acks.more = true;
                }
                self.fetch_mailbox(io, to);
            }
            _ => {}
        }
    }

    /// Has the session at `at` fetch its mailbox: all of it (a session without acks takes
    /// it), or as much as its window lets through (acks: read, left in place). After the job
    /// in flight, if there is one.
    fn fetch_mailbox(&mut self, io: &mut impl Io<Self>, at: Loc) {
        let Some(s) = self.sessions.get_mut(at) else { return };
        if s.job {
            s.drain_wanted = true;
            return;
        }
        let Some(user) = s.state.live_id() else { return };
        let kind = match &s.acks {
            // Streaming, the slice before not written yet: `on_flushed` fetches, so a slow
            // reader's queue never holds two slices.
            None if s.slice_unflushed => return,
            None => JobKind::Drain { user },
            Some(acks) if !acks.more || acks.room() == 0 => return,
            Some(acks) => JobKind::Peek { user, after: acks.cursor, limit: acks.room() },
        };
        self.submit(io, at, Job { seq: None, kind });
    }

    /// The client acknowledged deliveries (msgid 12): their mailbox rows go, the window opens.
    /// With `seq`, the answer comes once the rows are deleted: the client then knows those
    /// messages will not come again. Without acks, an acknowledgement changes nothing.
    fn on_acked(&mut self, io: &mut impl Io<Self>, at: Loc, seq: Option<Value>, mids: Vec<Mid>) {
        let Some(s) = self.sessions.get_mut(at) else { return };
        let forget = match (s.state.live_id(), s.acks.as_mut()) {
            (Some(user), Some(acks)) => {
                let rows: Vec<u64> = mids.iter().filter_map(|mid| acks.unacked.remove(mid)).collect();
                if !rows.is_empty() {
                    acks.acknowledged(Instant::now());
                }
                Some((user, rows))
            }
            _ => None,
        };
        match (forget, seq) {
            (Some((user, rows)), seq) if !rows.is_empty() => {
                let job = Job { seq, kind: JobKind::Forget { user, rows } };
                match job.seq {
                    Some(_) => self.submit(io, at, job),
                    None => self.submit_background(job),
                }
            }
            (_, Some(seq)) => self.answer(io, at, reply::ok(MsgId::Acknowledge, &seq, None)),
            (_, None) => {}
        }
        self.fetch_mailbox(io, at);
    }

    /// Results from the log, in the order their connections sent them. All take their
    /// places before any goes on: consecutive group messages then leave in one job.
    fn on_logged(&mut self, io: &mut impl Io<Self>, results: Vec<LogResult>) {
        let mut moved: Vec<Loc> = Vec::new();
        for r in results {
            self.jobs_in_flight = self.jobs_in_flight.saturating_sub(1);
            let at = r.accepted.at;
            let Some(session) = self.sessions.get_mut(at) else {
                self.settle_orphan(io, r);
                continue;
            };
            match session.sent.iter_mut().find(|s| matches!(s, Sent::Logging)) {
                Some(slot) => {
                    *slot = Sent::Logged(r);
                }
                None => {
                    log::error!("conn {}.{}: a log result it did not wait for", at.reactor, at.conn);
                    self.settle_orphan(io, r);
                    continue;
                }
            }
            if moved.last() != Some(&at) {
                moved.push(at); // a session twice is harmless: the second finds nothing to do
            }
        }
        for at in moved {
            self.advance(io, at);
        }
    }

    /// Answers and delivers, in request order, what the log has returned for `at`, up to the
    /// first message still in the log or a job; then a deferred request, once nothing waits.
    fn advance(&mut self, io: &mut impl Io<Self>, at: Loc) {
        loop {
            let Some(session) = self.sessions.get_mut(at) else { return };
            if session.job || matches!(session.sent.front(), Some(Sent::Logging)) {
                return;
            }
            if let Some(Sent::Logged(r)) = session.sent.front() {
                if !Self::may_follow_routes(self.routes.get(&at), &self.service, r) {
                    return; // on once the routes are settled
                }
            }
            let next = session.sent.pop_front();
            if session.sent.len() + 1 == MAX_QUEUED && session.may_read() {
                io.resume(at);
            }
            match next {
                Some(Sent::Answer(bytes)) => self.answer(io, at, bytes),
                Some(Sent::Logged(r)) => {
                    self.service.logged(r.accepted.seq, &r.accepted.msg, r.logged, r.again, &mut self.fx);
                    let mut job = self.fx.job.take();
                    if let Some(Job { kind: JobKind::GroupChats { chats, .. }, .. }) = &mut job {
                        self.join_group_chats(at, chats);
                    }
                    self.apply_effects(io, at);
                    if let Some(job) = job {
                        self.submit(io, at, job);
                    }
                }
                Some(Sent::Logging) => unreachable!("checked above"),
                None => break,
            }
        }
        let Some(session) = self.sessions.get_mut(at) else { return };
        if let Some(parsed) = session.deferred.take() {
            io.resume(at);
            self.dispatch(io, at, parsed);
        }
    }

    /// Takes the group messages logged right behind the one in `chats` into its job, as long as
    /// each would be a job of its own: in a cluster, they are sent one after the other all
    /// the same, and together their deliveries are written together.
    fn join_group_chats(&mut self, at: Loc, chats: &mut Vec<GroupChat>) {
        while chats.len() < MAX_GROUP_BATCH {
            let Some(session) = self.sessions.get_mut(at) else { return };
            let Some(Sent::Logged(r)) = session.sent.front() else { return };
            if !self.service.becomes_group_job(r.accepted.msg.to, r.logged, r.again) {
                return;
            }
            let Some(Sent::Logged(r)) = session.sent.pop_front() else { return };
            let mut fx = Effects::default();
            self.service.logged(r.accepted.seq, &r.accepted.msg, r.logged, r.again, &mut fx);
            match fx.job {
                Some(Job { kind: JobKind::GroupChats { chats: more, .. }, .. }) => chats.extend(more),
                other => log::error!("conn {}.{}: a group message that became {other:?}", at.reactor, at.conn),
            }
        }
    }

    /// A logged message whose sender has gone: delivered all the same, answered to nobody.
    fn settle_orphan(&mut self, io: &mut impl Io<Self>, r: LogResult) {
        let at = r.accepted.at;
        self.service.logged(None, &r.accepted.msg, r.logged, r.again, &mut self.fx);
        self.fx.replies.clear();
        let job = self.fx.job.take();
        self.apply_effects(io, at);
        if let Some(job) = job {
            self.start_job(io, at, job);
        }
    }

    fn on_job_done(&mut self, io: &mut impl Io<Self>, at: Loc, outcome: Outcome) {
        self.jobs_in_flight = self.jobs_in_flight.saturating_sub(1);
        let Some(session) = self.sessions.get_mut(at).filter(|s| s.job) else {
            // The connection closed while its job ran: nothing of the outcome may be lost.
            match outcome.effect {
                Effect::None => {}
                Effect::LoggedIn { data, .. } => {
                    let mailbox = data.offline.into_iter().map(|m| (data.id, delivered(m))).collect();
                    self.end_session(io, at, data.id, mailbox, false);
                }
                Effect::Drained { user, msgs, .. } => {
                    self.spill(msgs.into_iter().map(|m| (user, delivered(m))).collect())
                }
                Effect::Peeked { .. } => {} // read, not taken: the rows are still in the mailbox
            }
            return;
        };
        session.job = false;
        if let SessionState::LoggingIn(_) = session.state {
            session.state = SessionState::Anonymous;
        }
        if session.may_read() {
            io.resume(at);
        }
        let mut unsent = Vec::new();
        if let Some(bytes) = outcome.reply {
            queue(io, at, Out::Reply(bytes), &mut unsent);
        }
        let mut ended = None;
        let mut forget = None;
        match outcome.effect {
            Effect::None => {}
            Effect::LoggedIn { data, bytes, more } => {
                log::debug!("conn {}.{}: user {} logged in", at.reactor, at.conn, data.id);
                let (id, name, acks) = (data.id, data.name, data.acks);
                match io.send(at, Out::LoginAck { user: id, bytes, offline: data.offline }) {
                    Ok(()) => {
                        session.state = SessionState::Live(User { id, name });
                        io.trust(at, true);
                        session.streaming = more;
                        if acks {
                            // What waits follows the ack, as ordinary deliveries.
                            session.acks = Some(AckState::new(self.service.window()));
                            session.drain_wanted = true;
                        }
                    }
                    Err(out) => {
                        // The connection can no longer be written: the login never took, the
                        // mailbox it took is stored again.
                        let mut mailbox = Vec::new();
                        out.into_unsent(&mut mailbox);
                        ended = Some((id, mailbox));
                    }
                }
            }
            Effect::Drained { user, msgs, more } => {
                session.streaming = more && session.state.live_id() == Some(user);
                for m in msgs {
                    let out = Out::Chat(user, delivered(m));
                    match session.state.live_id() == Some(user) {
                        true => queue(io, at, out, &mut unsent),
                        false => out.into_unsent(&mut unsent),
                    }
                }
            }
            Effect::Peeked { user, rows, limit } => {
                let live = session.state.live_id() == Some(user);
                if let (true, Some(acks)) = (live, session.acks.as_mut()) {
                    let full = rows.len() >= limit;
                    let mut legacy = Vec::new();
                    for (row, text) in rows {
                        acks.cursor = acks.cursor.max(row);
                        match ChatMessage::decode(&text).and_then(|m| m.mid) {
                            Some(mid) => acks.unacked.insert(mid, row),
                            None => legacy.push(row), // stored before mids: delivered once, as in v1
                        }
                        // Sent as a reply: it stays in the mailbox, nothing to store if unsent.
                        let _ = io.send(at, Out::Reply(Vec::from(text + "\n")));
                    }
                    acks.more = full;
                    acks.delivered(Instant::now());
                    session.drain_wanted |= full;
                    if !legacy.is_empty() {
                        forget = Some(Job { seq: None, kind: JobKind::Forget { user, rows: legacy } });
                    }
                }
            }
        }
        let wanted = mem::take(&mut session.drain_wanted) && io.running();
        let drain = wanted.then(|| session.state.live_id()).flatten();
        // Deliveries that waited for this job now follow its answer, unless the mailbox is to be
        // fetched first: they were sent after what it holds, so they wait behind the drain too.
        if session.acks.is_some() || session.streaming {
            // An acks session reads everything from its mailbox; so does a session still being
            // given its mailbox in slices, so that nothing newer overtakes what waits there.
            unsent.append(&mut session.held);
        }
        if session.streaming {
            session.slice_unflushed = true;
            io.notify_flushed(at); // the next slice once this one is out
        }
        if drain.is_none() {
            for (user, msg) in mem::take(&mut session.held) {
                match session.state.live_id() == Some(user) {
                    true => queue(io, at, Out::Chat(user, msg), &mut unsent),
                    false => unsent.push((user, msg)),
                }
            }
        }
        if let Some((user, mailbox)) = ended {
            self.end_session(io, at, user, mailbox, false);
        }
        self.apply_effects(io, at);
        self.spill(unsent);
        if let Some(job) = forget {
            self.submit_background(job);
        }
        if drain.is_some() {
            self.fetch_mailbox(io, at);
        }
        self.advance(io, at);
    }

    /// A stream that cannot be read on: answer it, end the session, linger until the peer closes.
    fn reject_stream(&mut self, io: &mut impl Io<Self>, at: Loc, errno: Errno, errmsg: &str) {
        io.reject(at, Out::Reply(reply::error(None, None, errno, errmsg)));
        let Some(session) = self.sessions.get_mut(at) else { return };
        let user = mem::take(&mut session.state).live_id();
        self.apply_effects(io, at);
        if let Some(user) = user {
            self.end_session(io, at, user, Vec::new(), false);
        }
    }

    /// The connection is gone: end its session; what it never received goes to the mailbox.
    fn closed(&mut self, io: &mut impl Io<Self>, at: Loc, unsent: Vec<Out>) {
        let mut msgs = messages_of(unsent);
        let Some(mut session) = self.sessions.remove(at) else { return self.spill(msgs) };
        // Its messages back from the log but not yet delivered are delivered all the same.
        for slot in mem::take(&mut session.sent) {
            if let Sent::Logged(r) = slot {
                self.settle_orphan(io, r);
            }
        }
        msgs.append(&mut session.held);
        for r in mem::take(&mut session.replies) {
            if let Reply::Ready(out) = r {
                out.into_unsent(&mut msgs);
            }
        }
        // A logged message's job that waited for the routes runs all the same.
        if let Some(job) = session.waiting_job.take().filter(|j| j.kind.mid().is_some()) {
            self.jobs_in_flight += 1;
            self.run_on_pool(at, job);
        }
        match session.state.live_id() {
            Some(user) => self.end_session(io, at, user, msgs, false),
            None => self.spill(msgs),
        }
    }
}

impl Handler for ChatHandler {
    type Msg = Event;
    type Out = Out;

    fn on_open(&mut self, _io: &mut impl Io<Self>, at: Loc) {
        self.sessions.insert(at);
    }

    fn on_frame(&mut self, io: &mut impl Io<Self>, at: Loc, frame: &[u8]) {
        match request::parse(frame, self.service.limits()) {
            Ok(parsed) => self.dispatch(io, at, parsed),
            Err(_) => self.reject_stream(io, at, Errno::BadRequest, "bad request: not JSON"),
        }
    }

    fn on_frame_error(&mut self, io: &mut impl Io<Self>, at: Loc, error: FrameError) {
        let errno = if error == FrameError::TooLarge { Errno::TooLarge } else { Errno::BadRequest };
        self.reject_stream(io, at, errno, &error.to_string());
    }

    fn on_message(&mut self, io: &mut impl Io<Self>, msg: Event) {
        match msg {
            Event::Deliver(d) => self.deliver(io, d),
            Event::Deliveries(ds) => ds.into_iter().for_each(|d| self.deliver(io, d)),
            Event::Drain { to, user, newest } => self.on_drain(io, to, user, newest),
            Event::JobDone { at, outcome } => self.on_job_done(io, at, outcome),
            Event::Logged(results) => self.on_logged(io, results),
            Event::Routed(answers) => {
                let mut senders: Vec<Loc> = Vec::new();
                for (from, result) in answers {
                    self.settle_route(io, from, result);
                    if senders.last() != Some(&from) {
                        senders.push(from); // twice is harmless: the second finds nothing to do
                    }
                }
                for from in senders {
                    self.pump_routes(io, from);
                    self.advance(io, from);
                }
            }
            Event::Stored { at, outcomes } => self.on_stored(io, at, outcomes),
            Event::Evict { to } => {
                if self.sessions.get_mut(to).is_some() {
                    let unsent = io.close(to, "the user is live on another node");
                    self.closed(io, to, unsent);
                }
            }
        }
    }

    fn on_close(&mut self, io: &mut impl Io<Self>, at: Loc, unsent: Vec<Out>) {
        self.closed(io, at, unsent);
    }

    /// A session given its mailbox in slices wrote the last one: fetch the next.
    fn on_flushed(&mut self, io: &mut impl Io<Self>, at: Loc) {
        let Some(s) = self.sessions.get_mut(at) else { return };
        s.slice_unflushed = false;
        if s.streaming && s.acks.is_none() {
            self.fetch_mailbox(io, at);
        }
    }

    /// Ends acks sessions that stopped acknowledging: a connection that died without a FIN or
    /// a reset (a blackholed path, a proxy that hangs) still looks open, and would keep its
    /// user online (errno 2 at the next login) until TCP keepalive, if ever, noticed. What
    /// such a session did not acknowledge waits in the mailbox for the next login.
    fn on_tick(&mut self, io: &mut impl Io<Self>) {
        let (now, login_timeout) = (Instant::now(), self.service.login_timeout());
        let mut idle = Vec::new();
        for s in self.sessions.iter_mut() {
            match (&s.state, s.anonymous_since) {
                (SessionState::Anonymous, None) => s.anonymous_since = Some(now), // logged out
                (SessionState::Anonymous, Some(t)) if !login_timeout.is_zero() && now - t >= login_timeout => {
                    idle.push(s.at)
                }
                (SessionState::Anonymous, Some(_)) => {}
                (_, _) => s.anonymous_since = None,
            }
        }
        for at in idle {
            log::debug!("conn {}.{}: no login for {login_timeout:?}; closing", at.reactor, at.conn);
            let unsent = io.close(at, "no login");
            self.closed(io, at, unsent);
        }
        let timeout = self.service.ack_timeout();
        let stalled: Vec<Loc> = self
            .sessions
            .iter()
            .filter(|s| s.acks.as_ref().is_some_and(|a| a.stalled(now, timeout)))
            .map(|s| s.at)
            .collect();
        for at in stalled {
            log::info!("conn {}.{}: no acknowledgement for {timeout:?}; ending the session", at.reactor, at.conn);
            let unsent = io.close(at, "acknowledgements stopped");
            self.closed(io, at, unsent);
        }
    }

    /// Sessions end before output is flushed, so nothing new is delivered to them.
    fn on_shutdown(&mut self, io: &mut impl Io<Self>) {
        for at in io.conns() {
            let user = self.sessions.get_mut(at).and_then(|s| mem::take(&mut s.state).live_id());
            if let Some(user) = user {
                self.end_session(io, at, user, Vec::new(), false);
            }
        }
    }

    /// Messages that raced with the exit: store what was meant for sessions.
    fn on_exit(&mut self, leftover: Vec<Event>) {
        for msg in leftover {
            match msg {
                Event::Deliver(d) => self.spill(vec![(d.user, d.msg)]),
                Event::Deliveries(ds) => self.spill(ds.into_iter().map(|d| (d.user, d.msg)).collect()),
                Event::Logged(results) => {
                    for r in results {
                        self.unsettled_at_exit(&r);
                    }
                }
                Event::Routed(answers) => {
                    for (from, result) in answers {
                        let job = self.routes.get_mut(&from).and_then(|r| r.on_bus.pop_front());
                        if let (Some((_, job)), false) = (job, result.unwrap_or(false)) {
                            self.spill(chat_of(job)); // received by nobody: stored, as the pool would
                        }
                    }
                }
                Event::JobDone { outcome: Outcome { effect: Effect::LoggedIn { data, .. }, .. }, .. } => {
                    self.spill(data.offline.into_iter().map(|m| (data.id, delivered(m))).collect());
                }
                Event::JobDone { outcome: Outcome { effect: Effect::Drained { user, msgs, .. }, .. }, .. } => {
                    self.spill(msgs.into_iter().map(|m| (user, delivered(m))).collect());
                }
                _ => {}
            }
        }
        // Chats that never went to the bus or the pool.
        for (_, routes) in mem::take(&mut self.routes) {
            for job in routes.to_store.into_iter().chain(routes.waiting) {
                self.spill(chat_of(job));
            }
        }
    }

    fn busy(&self) -> bool {
        self.jobs_in_flight > 0
    }
}

impl ChatHandler {
    /// A logged message that came back after the reactor stopped: a one-to-one message is
    /// stored for its recipient; a group message stays in the log (history) only.
    fn unsettled_at_exit(&self, r: &LogResult) {
        let mid = match r.logged {
            Some(Logged::Fresh(mid)) => mid,
            Some(Logged::Dup(mid)) if r.again => mid,
            _ => return,
        };
        let m = &r.accepted.msg;
        match m.to {
            Target::User(toid) => self.spill(vec![(toid, m.with_mid(mid).encode())]),
            Target::Group(g) => log::warn!("group {g}: message {mid} logged during shutdown, not delivered"),
        }
    }
}

/// A one-to-one chat job's message, to be stored.
fn chat_of(job: Job) -> Vec<(UserId, Arc<str>)> {
    match job.kind {
        JobKind::Chat { toid, msg, .. } => vec![(toid, msg)],
        _ => Vec::new(),
    }
}

/// The messages inside output that was never written.
fn messages_of(unsent: Vec<Out>) -> Vec<(UserId, Arc<str>)> {
    let mut msgs = Vec::new();
    for out in unsent {
        out.into_unsent(&mut msgs);
    }
    msgs
}

/// Queues `out` on `at`, or keeps what it carries for the mailbox if `at` cannot be written.
fn queue(io: &mut impl Io<ChatHandler>, at: Loc, out: Out, unsent: &mut Vec<(UserId, Arc<str>)>) {
    if let Err(out) = io.send(at, out) {
        out.into_unsent(unsent);
    }
}

/// Hands undeliverable messages to the mailbox lanes, grouped by user.
fn spill(service: &Service, router: &Arc<Router<Event>>, unsent: Vec<(UserId, Arc<str>)>) {
    let mut by_user: HashMap<UserId, Vec<Arc<str>>> = HashMap::new();
    for (user, msg) in unsent {
        by_user.entry(user).or_default().push(msg);
    }
    for (user, msgs) in by_user {
        service.spill(user, msgs, router.clone());
    }
}
