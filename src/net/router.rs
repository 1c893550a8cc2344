//! How other threads reach reactors: a typed message on the reactor's channel, and a wake-up
//! only when the reactor is not already due to look at its queue. Any thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;
use mio::net::TcpStream;
use mio::Waker;

use crate::service::{Delivery, Loc, Outcome, Outlet};
use crate::UserId;

/// What other threads ask of a reactor.
#[derive(Debug)]
pub(crate) enum Msg {
    /// A socket from the acceptor, to register with this reactor's `Poll`.
    NewConn(TcpStream),
    Deliver(Delivery),
    /// Fetch the mailbox of the session at `to` (messages were stored while it logged in).
    Drain {
        to: Loc,
        user: UserId,
    },
    JobDone {
        token: usize,
        conn: u64,
        outcome: Outcome,
    },
    /// Close the connection at `to`: its user is live on another node.
    Evict {
        to: Loc,
    },
    /// Shutdown, phase 1: read no more; report once no job is in flight.
    Quiesce,
    /// Shutdown, phase 2: end sessions, flush until `deadline`, store what is unsent, exit.
    Finish {
        deadline: Instant,
    },
}

/// Sends to one reactor. Any thread.
#[derive(Debug, Clone)]
pub(crate) struct ReactorHandle {
    tx: Sender<Msg>,
    waker: Arc<Waker>,
    /// Set when a wake-up is pending, so a busy reactor is woken once, not per message.
    notified: Arc<AtomicBool>,
}

impl ReactorHandle {
    pub(super) fn new(tx: Sender<Msg>, waker: Arc<Waker>, notified: Arc<AtomicBool>) -> ReactorHandle {
        ReactorHandle { tx, waker, notified }
    }

    pub(crate) fn send(&self, msg: Msg) {
        if self.tx.send(msg).is_err() {
            return; // the reactor has exited: shutdown is past the point of delivering
        }
        if !self.notified.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                log::error!("reactor wake-up failed: {e}");
            }
        }
    }
}

/// Every reactor of the node, by index. Any thread.
#[derive(Debug)]
pub(crate) struct Router {
    reactors: Vec<ReactorHandle>,
}

impl Router {
    pub(crate) fn new(reactors: Vec<ReactorHandle>) -> Router {
        Router { reactors }
    }

    pub(crate) fn send(&self, reactor: usize, msg: Msg) {
        if let Some(h) = self.reactors.get(reactor) {
            h.send(msg);
        }
    }

    pub(crate) fn broadcast(&self, msg: impl Fn() -> Msg) {
        for h in &self.reactors {
            h.send(msg());
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.reactors.len()
    }
}

impl Outlet for Router {
    fn deliver(&self, d: Delivery) {
        self.send(d.to.reactor, Msg::Deliver(d));
    }

    fn drain(&self, to: Loc, user: UserId) {
        self.send(to.reactor, Msg::Drain { to, user });
    }

    fn evict(&self, to: Loc) {
        self.send(to.reactor, Msg::Evict { to });
    }
}
