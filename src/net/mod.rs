//! The network layer: the acceptor, worker reactors and their connections. It knows transport,
//! not chat: a reactor is generic over a [`Handler`] (frames and channel messages in, decisions
//! out through [`Io`]); the chat server and the benchmark's bare relay are two handlers on this
//! same loop, monomorphised, so neither pays for dynamic dispatch on the hot path.
//!
//! Each worker reactor is one thread with its own `mio::Poll` (edge-triggered) and owns its
//! connections in a slab. Other threads never touch a connection: they send a message on the
//! reactor's channel through the [`Router`], which wakes the reactor only when it is not already
//! due to look at its queue.

mod acceptor;
mod admission;
mod conn;
mod proxy;
mod reactor;
mod router;

use std::sync::Arc;
use std::thread::JoinHandle;

pub(crate) use acceptor::Acceptor;
pub use acceptor::ShutdownHandle;
pub(crate) use admission::{Admission, AdmissionLimits, Ticket};
pub(crate) use conn::Outbound;
pub(crate) use reactor::{Handler, Io, Limits, Reactor, ReactorSeed};
pub use router::Loc;
pub(crate) use router::{Msg, Router};

/// Running reactors: the router to them, and their threads to join.
#[derive(Debug)]
pub(crate) struct Reactors<M> {
    pub router: Arc<Router<M>>,
    pub threads: Vec<JoinHandle<()>>,
}

/// Starts `threads` reactors, each with the handler `make` builds for it (given its index and
/// the router to every reactor).
pub(crate) fn start_reactors<H, F>(
    name: &str,
    threads: usize,
    limits: Limits,
    quiet: Option<crossbeam_channel::Sender<usize>>,
    mut make: F,
) -> std::io::Result<Reactors<H::Msg>>
where
    H: Handler + Send + 'static,
    F: FnMut(usize, &Arc<Router<H::Msg>>) -> H,
{
    let mut seeds = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..threads.max(1) {
        let (seed, handle) = ReactorSeed::new()?;
        seeds.push(seed);
        handles.push(handle);
    }
    let router = Arc::new(Router::new(handles));
    let mut joins = Vec::new();
    for (i, seed) in seeds.into_iter().enumerate() {
        let reactor = Reactor::new(i, seed, limits, make(i, &router), quiet.clone());
        joins.push(std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || reactor.run())?);
    }
    Ok(Reactors { router, threads: joins })
}
