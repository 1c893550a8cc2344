//! How other threads reach reactors: a typed message on the reactor's channel, and a wake-up
//! only when the reactor is not already due to look at its queue. Any thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;
use mio::net::TcpStream;
use mio::Waker;

/// Where a connection lives: its reactor, its slab key there, and the connection's id, which
/// tells a new connection in a reused slot from the one a message was meant for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Loc {
    pub reactor: usize,
    pub token: usize,
    pub conn: u64,
}

/// What a reactor receives: transport control, or a message for its handler (`M`).
#[derive(Debug)]
pub(crate) enum Msg<M> {
    /// A socket from the acceptor, to register with this reactor's `Poll`.
    NewConn(TcpStream, super::Ticket),
    /// For the handler.
    App(M),
    /// Shutdown, phase 1: read no more; report once the handler has nothing in flight.
    Quiesce,
    /// Shutdown, phase 2: the handler ends its sessions, output is flushed until `deadline`,
    /// every connection is closed, the reactor exits.
    Finish { deadline: Instant },
}

/// Sends to one reactor. Any thread.
#[derive(Debug)]
pub(crate) struct ReactorHandle<M> {
    tx: Sender<Msg<M>>,
    waker: Arc<Waker>,
    /// Set when a wake-up is pending, so a busy reactor is woken once, not per message.
    notified: Arc<AtomicBool>,
}

impl<M> Clone for ReactorHandle<M> {
    fn clone(&self) -> Self {
        ReactorHandle { tx: self.tx.clone(), waker: self.waker.clone(), notified: self.notified.clone() }
    }
}

impl<M> ReactorHandle<M> {
    pub(super) fn new(tx: Sender<Msg<M>>, waker: Arc<Waker>, notified: Arc<AtomicBool>) -> Self {
        ReactorHandle { tx, waker, notified }
    }

    pub(crate) fn send(&self, msg: Msg<M>) {
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
pub(crate) struct Router<M> {
    reactors: Vec<ReactorHandle<M>>,
}

impl<M> Router<M> {
    pub(crate) fn new(reactors: Vec<ReactorHandle<M>>) -> Self {
        Router { reactors }
    }

    /// A message for the handler of reactor `reactor`.
    pub(crate) fn send(&self, reactor: usize, msg: M) {
        self.control(reactor, Msg::App(msg));
    }

    pub(crate) fn control(&self, reactor: usize, msg: Msg<M>) {
        if let Some(h) = self.reactors.get(reactor) {
            h.send(msg);
        }
    }

    pub(crate) fn broadcast(&self, msg: impl Fn() -> Msg<M>) {
        for h in &self.reactors {
            h.send(msg());
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.reactors.len()
    }
}
