//! A connection's chat session and its transitions, and what queues on its socket.
//!
//! ```text
//!   Anonymous ──login──► LoggingIn ──job done: ok──► Live ──logout──► Anonymous
//!       ▲                    │                         │
//!       └──── job done: refused ┘        close / reset / evict / framing error / shutdown
//!                                                      ▼
//!                                                    ended (the session leaves the table)
//! ```
//! While a job is in flight the connection reads nothing further (per-connection order), and
//! deliveries for it are held, to follow the job's answer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::message_log::LogResult;
use super::{Job, User};
use crate::net::{Loc, Outbound};
use crate::proto::request::Parsed;
use crate::store::Mid;
use crate::UserId;

/// Who a connection is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum SessionState {
    #[default]
    Anonymous,
    /// A login for this user is in flight; deliveries for the user are already accepted.
    LoggingIn(UserId),
    Live(User),
}

impl SessionState {
    pub(crate) fn live(&self) -> Option<&User> {
        match self {
            SessionState::Live(user) => Some(user),
            _ => None,
        }
    }

    pub(crate) fn live_id(&self) -> Option<UserId> {
        self.live().map(|u| u.id)
    }

    /// Whether a message for `user` belongs to this session, now or once its login completes.
    pub(crate) fn expects(&self, user: UserId) -> bool {
        match self {
            SessionState::Anonymous => false,
            SessionState::LoggingIn(id) => *id == user,
            SessionState::Live(u) => u.id == user,
        }
    }
}

/// One connection's session, owned by its reactor's handler.
#[derive(Debug)]
pub(super) struct Session {
    pub at: Loc,
    pub state: SessionState,
    /// A job is in flight: the connection is paused, deliveries are held.
    pub job: bool,
    /// Deliveries that arrived while a job was in flight; they queue behind its answer.
    pub held: Vec<(UserId, Arc<str>)>,
    /// A mailbox drain was asked for while a job was in flight.
    pub drain_wanted: bool,
    /// A canonical session's mailbox is larger than one slice: it is being sent slice by
    /// slice, each once the one before is written, and live messages queue behind it there.
    pub streaming: bool,
    /// A mailbox slice is written to the socket but not out of it yet: the next drain waits
    /// for it, so the store, not the output queue, holds a mailbox the reader has not taken.
    pub slice_unflushed: bool,
    /// The chat messages this connection sent that are not answered yet, and what was to be
    /// answered after them, in request order. At `MAX_QUEUED` the connection is paused: a
    /// sender faster than the store waits instead of filling the node's memory.
    pub sent: VecDeque<Sent>,
    /// A request that waits for `sent` to empty (the connection is paused meanwhile).
    pub deferred: Option<Parsed>,
    /// Answers held behind those of chats still on their way to other nodes, in request order,
    /// and deliveries that arrived meanwhile (they follow the answers, as behind a job).
    pub replies: VecDeque<Reply>,
    /// Chats of this connection on their way to other nodes (or stored instead). At
    /// `MAX_ROUTING` the connection is paused, as for the log.
    pub routing: usize,
    /// Since when the connection has had no login (see the login timeout); kept by the tick.
    pub anonymous_since: Option<std::time::Instant>,
    /// A job that waits for this connection's chats to other nodes to be settled (`job` is set).
    pub waiting_job: Option<Job>,
    /// Acknowledged delivery, when the login asked for it.
    pub acks: Option<AckState>,
}

/// An acks session's view of its mailbox: every message for the user is stored there first and
/// stays until the client acknowledges it, so an ended session (however it ended) loses nothing.
#[derive(Debug)]
pub(crate) struct AckState {
    pub window: usize,
    /// Delivered, not yet acknowledged.
    pub unacked: Unacked,
    /// The last mailbox row read.
    pub cursor: u64,
    /// More may be waiting than the window let through.
    pub more: bool,
    /// Since when deliveries have waited without any acknowledgement coming.
    pub stalled_since: Option<Instant>,
}

impl AckState {
    pub(crate) fn new(window: usize) -> AckState {
        AckState { window, unacked: Unacked::default(), cursor: 0, more: true, stalled_since: None }
    }

    /// Deliveries went out: the clock runs unless it already does.
    pub(crate) fn delivered(&mut self, now: Instant) {
        if !self.unacked.is_empty() {
            self.stalled_since.get_or_insert(now);
        }
    }

    /// Some deliveries were acknowledged: the client is alive.
    pub(crate) fn acknowledged(&mut self, now: Instant) {
        self.stalled_since = (!self.unacked.is_empty()).then_some(now);
    }

    /// Whether the client has let deliveries wait longer than `timeout` (zero: never).
    pub(crate) fn stalled(&self, now: Instant, timeout: Duration) -> bool {
        !timeout.is_zero() && self.stalled_since.is_some_and(|t| now.duration_since(t) >= timeout)
    }

    /// How many more may be delivered now.
    pub(crate) fn room(&self) -> usize {
        self.window.saturating_sub(self.unacked.len())
    }
}

/// An acks session's deliveries awaiting acknowledgement, (mid, mailbox row) in delivery order.
/// A flat queue rather than a map: 16 bytes per message, so a full window of 1,000 costs 16 KiB
/// per session, and clients acknowledge mostly oldest first, which is the cheap case.
#[derive(Debug, Default)]
pub(crate) struct Unacked(VecDeque<(Mid, u64)>);

impl Unacked {
    pub(crate) fn insert(&mut self, mid: Mid, row: u64) {
        self.0.push_back((mid, row));
    }

    /// The row of the oldest delivery of `mid`, now acknowledged.
    pub(crate) fn remove(&mut self, mid: &Mid) -> Option<u64> {
        let at = self.0.iter().position(|(m, _)| m == mid)?;
        let (_, row) = self.0.remove(at)?;
        if self.0.is_empty() && self.0.capacity() > 64 {
            self.0 = VecDeque::new(); // a session that caught up gives the memory back
        }
        Some(row)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One answer of a connection's request order, while chat messages are in the log.
#[derive(Debug)]
pub(crate) enum Sent {
    /// In the log; the result comes back in order.
    Logging,
    /// Back from the log, waiting for what precedes it (a job of an earlier message).
    Logged(LogResult),
    /// A refusal of a later chat request, answered in its turn.
    Answer(Vec<u8>),
}

/// An answer in the order of requests, or a delivery behind it.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A chat's, once the bus (or the store) has settled it.
    Pending,
    Ready(Out),
}

impl Session {
    /// Nothing holds the connection's reading back: no job, no deferred request, room in the
    /// log and on the way to other nodes.
    pub(super) fn may_read(&self) -> bool {
        !self.job
            && self.deferred.is_none()
            && self.sent.len() < super::chat::MAX_QUEUED
            && self.routing < super::chat::MAX_ROUTING
    }

    pub(super) fn new(at: Loc) -> Session {
        Session {
            at,
            state: SessionState::Anonymous,
            job: false,
            held: Vec::new(),
            drain_wanted: false,
            streaming: false,
            slice_unflushed: false,
            sent: VecDeque::new(),
            deferred: None,
            replies: VecDeque::new(),
            routing: 0,
            anonymous_since: Some(std::time::Instant::now()),
            waiting_job: None,
            acks: None,
        }
    }
}

/// The sessions of one reactor, by slab key; a [`Loc`] of an earlier connection in a reused
/// slot finds nothing.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    slots: Vec<Option<Session>>,
}

impl Sessions {
    pub(super) fn insert(&mut self, at: Loc) {
        if self.slots.len() <= at.token {
            self.slots.resize_with(at.token + 1, || None);
        }
        self.slots[at.token] = Some(Session::new(at));
    }

    pub(super) fn get_mut(&mut self, at: Loc) -> Option<&mut Session> {
        self.slots.get_mut(at.token)?.as_mut().filter(|s| s.at == at)
    }

    /// Every session, for the periodic look at them.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Session> {
        self.slots.iter().flatten()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Session> {
        self.slots.iter_mut().flatten()
    }

    pub(super) fn remove(&mut self, at: Loc) -> Option<Session> {
        let slot = self.slots.get_mut(at.token)?;
        if slot.as_ref().is_some_and(|s| s.at == at) {
            return slot.take();
        }
        None
    }
}

/// One queued outbound message of a chat connection.
#[derive(Debug)]
pub(crate) enum Out {
    /// An answer to this connection's own request.
    Reply(Vec<u8>),
    /// A chat message for `user`, shared with its other recipients; stored offline if unsent.
    Chat(UserId, Arc<str>),
    /// A login ack and the stored messages it carries, which go back to the mailbox if it is
    /// not sent.
    LoginAck { user: UserId, bytes: Vec<u8>, offline: Vec<String> },
}

impl Outbound for Out {
    fn bytes(&self) -> &[u8] {
        match self {
            Out::Reply(b) | Out::LoginAck { bytes: b, .. } => b,
            Out::Chat(_, m) => m.as_bytes(),
        }
    }

    /// A canonical session cannot acknowledge: its messages count as delivered once the peer's
    /// TCP stack has acknowledged them (an acks session's deliveries are replies: they stay
    /// in the mailbox until the client acknowledges them).
    fn needs_peer_ack(&self) -> bool {
        match self {
            Out::Reply(_) => false,
            Out::Chat(..) => true,
            Out::LoginAck { offline, .. } => !offline.is_empty(),
        }
    }
}

impl Out {
    /// The messages inside that must not be lost if it is never written.
    pub(crate) fn into_unsent(self, unsent: &mut Vec<(UserId, Arc<str>)>) {
        match self {
            Out::Reply(_) => {}
            Out::Chat(user, msg) => unsent.push((user, msg)),
            Out::LoginAck { user, offline, .. } => unsent.extend(offline.into_iter().map(|m| (user, delivered(m)))),
        }
    }
}

/// A stored message as it is delivered: with its newline.
pub(super) fn delivered(stored: String) -> Arc<str> {
    Arc::from(stored + "\n")
}
