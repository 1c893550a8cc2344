//! The chat logic: sessions, presence and what each request does. No sockets, no SQL.
//!
//! A request is handled in two halves. [`Service::handle`] runs on the connection's reactor: it
//! validates, checks the session, and either finishes at once (the fast path: the recipient is
//! online on this node, so the message goes straight to its reactor) or returns a [`Job`].
//! [`Service::run`] carries a job out on the blocking pool and returns an [`Outcome`] to the
//! reactor, which holds the connection's later requests until then (per-connection order).

mod chat;
mod fanout;
mod groups;
mod handler;
mod jobs;
mod mailbox;
mod message_log;
mod password;
mod presence;
mod routes;
mod session;
mod sweep;
mod throttle;

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

pub(crate) use password::{HashError, Hasher};

pub(crate) use chat::{ChatHandler, Event};
pub(crate) use message_log::{LogHandle, MessageLog};
pub use presence::Presence;
pub(crate) use session::SessionState;
pub(crate) use sweep::Sweeper;

pub use crate::net::Loc;

use crate::bus::{Bus, BusError, Routing};
use crate::config::Config;
use crate::proto::message::Target;
use crate::proto::reply::{self, LoginData};
use crate::proto::request::Limits;
use crate::proto::time::Clock;
use crate::proto::MsgId;
use crate::store::{Mid, NewMessage, Store};
use crate::{GroupId, UserId};

/// How long a node of a cluster trusts a group's cached members without reading them again: a
/// bound on staleness should a change never have reached the bus (every change does, normally).
const GROUP_MAX_AGE: Duration = Duration::from_secs(10);

/// Stored password hashes read at start to learn what most of them cost.
const PASSWORD_SAMPLES: usize = 1000;

/// Shared by every reactor and pool thread of a node.
#[derive(Debug)]
pub(crate) struct Service {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    presence: Arc<Presence>,
    mailboxes: mailbox::Mailboxes,
    /// Group members in memory (see `groups.rs`).
    groups: groups::GroupCache,
    hasher: Hasher,
    throttle: throttle::Throttle,
    limits: Limits,
    mailbox_cap: usize,
    window: usize,
    ack_timeout: Duration,
    login_timeout: Duration,
    clock: Clock,
    /// Users whose bus claim could not be released when their session ended here (the bus was
    /// unreachable): tried again after the next release or login that reaches the bus.
    unreleased: parking_lot::Mutex<Vec<UserId>>,
}

/// The logged-in user of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub id: UserId,
    pub name: Arc<str>,
}

/// A message to hand to the reactor that owns `to`.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub to: Loc,
    pub user: UserId,
    /// The encoded message, trailing newline included.
    pub msg: Arc<str>,
}

/// What a handler asks of its reactor besides a blocking job.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Bytes for this connection, in order.
    pub replies: Vec<Vec<u8>>,
    pub deliveries: Vec<Delivery>,
    /// Pool work nobody waits for.
    pub background: Vec<Job>,
    /// Work the connection waits for: it reads nothing further until the job is done.
    pub job: Option<Job>,
    /// An accepted chat message (with its request's `seq`), for the log: nobody sees it
    /// before it is durable.
    pub log: Option<(Option<Value>, NewMessage)>,
    /// Mids the client acknowledged (msgid 12), with the request's `seq`; they matter only
    /// to a session with acks.
    pub acked: Option<(Option<Value>, Vec<Mid>)>,
    /// The session ended (logout): the reactor ends it for good (`Service::end_session`).
    pub ended: Option<UserId>,
}

/// Work for the blocking pool.
#[derive(Debug)]
pub(crate) struct Job {
    /// Echoed in the answer.
    pub seq: Option<Value>,
    pub kind: JobKind,
}

/// One logged group message, answered on its own.
#[derive(Debug)]
pub(crate) struct GroupChat {
    pub seq: Option<Value>,
    pub groupid: GroupId,
    pub msg: Arc<str>,
    pub mid: Mid,
    /// A retry of a message logged before (same cid): delivered again, answered `dup`.
    pub dup: bool,
}

#[derive(Debug)]
pub(crate) enum JobKind {
    /// `from`: the client's address (filled in by the reactor, which knows the connection).
    Login {
        id: UserId,
        password: String,
        acks: bool,
        from: Option<std::net::IpAddr>,
    },
    Register {
        name: String,
        password: String,
        from: Option<std::net::IpAddr>,
    },
    /// A logged one-to-one message whose recipient is not live on this node.
    Chat {
        toid: UserId,
        msg: Arc<str>,
        mid: Mid,
        /// A retry of a message logged before (same cid): delivered again, answered `dup`.
        dup: bool,
    },
    AddFriend {
        me: UserId,
        friendid: UserId,
    },
    CreateGroup {
        me: UserId,
        name: String,
        desc: String,
    },
    AddGroup {
        me: UserId,
        groupid: GroupId,
    },
    /// Logged group messages of one sender that the reactor could not deliver itself, in the
    /// order sent. Consecutive ones go as one job: the pool sends them one after the other,
    /// and their deliveries reach each reactor together, to be written together.
    GroupChats {
        me: UserId,
        chats: Vec<GroupChat>,
    },
    History {
        me: UserId,
        with: Target,
        before: Option<Mid>,
        limit: usize,
    },
    /// Deliver the mailbox of a session that came online while messages were being stored.
    Drain {
        user: UserId,
    },
    /// An acks session's next messages from its mailbox, after row `after`; they stay there
    /// until acknowledged.
    Peek {
        user: UserId,
        after: u64,
        limit: usize,
    },
    /// Delete mailbox rows an acks session acknowledged.
    Forget {
        user: UserId,
        rows: Vec<u64>,
    },
    /// A session ended: compatibility state and the bus claim.
    Offline {
        user: UserId,
    },
    /// A logout: as `Offline`, answered once the claim is gone, so a client that saw the
    /// answer is offline on every node.
    Logout {
        user: UserId,
    },
}

/// A job's result, for the reactor that submitted it.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub reply: Option<Vec<u8>>,
    pub effect: Effect,
}

#[derive(Debug, Default)]
pub(crate) enum Effect {
    #[default]
    None,
    LoggedIn {
        data: LoginData,
        /// The login ack, built here on the pool: with a full mailbox it is large.
        bytes: Vec<u8>,
        /// The mailbox held more than one ack carries: the rest follows in slices.
        more: bool,
    },
    Drained {
        user: UserId,
        msgs: Vec<String>,
        /// More is waiting than one slice carries.
        more: bool,
    },
    Peeked {
        user: UserId,
        rows: Vec<(u64, String)>,
        limit: usize,
    },
}

/// How the pool reaches reactors. Any thread.
pub(crate) trait Outlet {
    fn deliver(&self, d: Delivery);
    /// Delivers many at once: one hand-over per reactor.
    fn deliver_many(&self, ds: Vec<Delivery>);
    /// Asks the session at `to` to fetch its mailbox.
    fn drain(&self, to: Loc, user: UserId);
    /// As `drain`, unless the session has read mailbox row `newest` already.
    fn fetch_after(&self, to: Loc, user: UserId, newest: u64);
    /// Closes the session at `to`: the user is live on another node.
    fn evict(&self, to: Loc);
}

impl Service {
    /// The service of one node; starts its mailbox lanes.
    pub(crate) fn new(store: Box<dyn Store>, bus: Box<dyn Bus>, config: &Config) -> std::io::Result<Service> {
        let (store, bus): (Arc<dyn Store>, Arc<dyn Bus>) = (Arc::from(store), Arc::from(bus));
        let presence = Arc::new(Presence::default());
        let lanes = config.mailbox_lanes();
        let mailboxes = mailbox::Mailboxes::start(lanes, store.clone(), presence.clone(), bus.clone())?;
        Service::with_parts(store, bus, presence, mailboxes, config)
    }

    /// A service that starts no thread: mailbox writes run on the caller's thread.
    #[cfg(test)]
    pub(crate) fn without_threads(store: Arc<dyn Store>, bus: Arc<dyn Bus>, config: &Config) -> Service {
        let presence = Arc::new(Presence::default());
        let mailboxes = mailbox::Mailboxes::inline(store.clone(), presence.clone(), bus.clone());
        Service::with_parts(store, bus, presence, mailboxes, config).expect("a valid test configuration")
    }

    /// Runs the mailbox writes of a service without threads; `false` if there were none.
    #[cfg(test)]
    pub(crate) fn run_mailbox_writes(&self) -> bool {
        self.mailboxes.run_pending()
    }

    fn with_parts(
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        presence: Arc<Presence>,
        mailboxes: mailbox::Mailboxes,
        config: &Config,
    ) -> std::io::Result<Service> {
        let mut hasher = Hasher::new(config.hash).map_err(std::io::Error::other)?;
        match store.password_samples(PASSWORD_SAMPLES) {
            Ok(samples) => hasher.calibrate(&samples).map_err(std::io::Error::other)?,
            Err(e) => log::warn!("stored password costs not read ({e}): unknown ids cost the configured one"),
        }
        Ok(Service {
            mailboxes,
            store,
            groups: groups::GroupCache::new((!bus.sole_node()).then_some(GROUP_MAX_AGE)),
            throttle: throttle::Throttle::new(config.throttle, bus.sole_node()),
            bus,
            presence,
            hasher,
            limits: Limits { max_msg: config.max_msg },
            mailbox_cap: config.mailbox_cap,
            window: config.window.max(1),
            ack_timeout: config.ack_timeout,
            login_timeout: config.login_timeout,
            clock: config.clock.clone(),
            unreleased: parking_lot::Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn presence(&self) -> &Presence {
        &self.presence
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    pub(crate) fn window(&self) -> usize {
        self.window
    }

    pub(crate) fn ack_timeout(&self) -> Duration {
        self.ack_timeout
    }

    pub(crate) fn login_timeout(&self) -> Duration {
        self.login_timeout
    }

    pub(crate) fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    pub(crate) fn bus(&self) -> &dyn Bus {
        &*self.bus
    }

    /// Ends a live session (logout, close, shutdown). `before` runs under the presence write
    /// lock, before the user stops being live: there the reactor hands everything already sent
    /// to the session to [`Service::spill`], ahead of whatever senders do once it is gone.
    /// The bus claim is released in the background unless a logout job does it (`released`).
    pub(crate) fn end_session(&self, user: UserId, here: Loc, before: impl FnOnce(), released: bool, fx: &mut Effects) {
        self.presence.remove_with(user, here, before);
        if !released {
            fx.background.push(Job { seq: None, kind: JobKind::Offline { user } });
        }
    }

    /// Stores messages that were accepted but could not be written to their session, in order
    /// with every other write to that mailbox. Any thread; never blocks.
    pub(crate) fn spill(&self, user: UserId, msgs: Vec<Arc<str>>, poke: Arc<dyn Outlet + Send + Sync>) {
        if !msgs.is_empty() {
            self.mailboxes.spill(user, msgs, poke);
        }
    }

    /// Hands a one-to-one chat whose recipient is not live here to the bus first, which
    /// routes it without holding a pool thread. The answer, now or later through the inbox,
    /// goes to [`Service::routed`].
    pub(crate) fn route(&self, toid: UserId, msg: Arc<str>, from: Loc, epoch: u32) -> Routing {
        self.bus.route_async(toid, msg, from, epoch)
    }

    /// What the bus's answer to a routed chat means: its outcome, or `None` when the job goes
    /// on to the pool, which stores the message: the recipient is live nowhere, or the bus
    /// could not say (the message is accepted already; stored, it is delivered at the next
    /// login, or when the bus is back and its node fetches the mailboxes of its users).
    pub(crate) fn routed(&self, job: &Job, result: Result<bool, BusError>) -> Option<Outcome> {
        match result {
            Ok(true) => Some(Outcome {
                reply: job
                    .seq
                    .as_ref()
                    .zip(job.kind.mid())
                    .map(|(seq, mid)| reply::sent(MsgId::OneChat, seq, mid, job.kind.dup())),
                effect: Effect::None,
            }),
            Ok(false) => None,
            Err(e) => {
                log::warn!("chat to another node: {e}; storing it instead");
                None
            }
        }
    }

    /// Finishes the queued mailbox writes and joins their threads. Call once nothing else will
    /// use the service.
    pub(crate) fn shutdown(&self) {
        self.mailboxes.close();
    }
}

/// A stored message is the delivered one without its newline.
fn stored_form(msg: &str) -> &str {
    msg.strip_suffix('\n').unwrap_or(msg)
}

#[cfg(test)]
mod tests;
