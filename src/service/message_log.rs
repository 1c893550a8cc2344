//! The message log's writer: every accepted chat message is made durable here before anyone
//! sees it. One thread takes everything queued since its last commit and writes it as one
//! transaction (group commit: one batch per commit round trip, never one round trip per message
//! serially), then hands the results back to the senders' reactors, one channel message per
//! reactor per batch. A second thread prunes history older than the retention, and cids
//! older than the deduplication window.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use serde_json::Value;

use super::Event;
use crate::net::{Loc, Router};
use crate::proto::time::Clock;
use crate::store::{Logged, Mid, NewMessage, Store};

/// Most messages in one transaction.
const MAX_BATCH: usize = 1024;
/// How long a `cid` is remembered (the protocol's 24 hours).
const DEDUP_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// How often history older than the retention is deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A chat message its sender's reactor accepted, on its way to the log.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// The sender's connection, which gets the answer.
    pub(crate) at: Loc,
    /// The request's `seq`, echoed in the answer.
    pub(crate) seq: Option<Value>,
    pub(crate) msg: NewMessage,
}

/// What the log made of an accepted message; `None`: the store failed (errno 10).
#[derive(Debug)]
pub(crate) struct LogResult {
    pub(crate) accepted: Accepted,
    pub(crate) logged: Option<Logged>,
    /// A retry whose first copy this node did not log lately: that copy may have been logged
    /// by a node that died before delivering it, so this one is delivered (same mid).
    pub(crate) again: bool,
}

/// The mids this node logged lately, to tell a client's retry of a message this node is
/// delivering anyway from one whose first copy may have died with another node (or an
/// earlier run of this one). Bounded: a retry older than that is delivered again, which costs
/// a copy that recipients drop by its mid, never a loss.
#[derive(Debug, Default)]
pub(crate) struct RecentMids {
    set: std::collections::HashSet<Mid>,
    order: std::collections::VecDeque<Mid>,
}

impl RecentMids {
    const CAPACITY: usize = 1 << 16;

    fn insert(&mut self, mid: Mid) {
        if self.set.insert(mid) {
            self.order.push_back(mid);
        }
        while self.order.len() > Self::CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    fn contains(&self, mid: Mid) -> bool {
        self.set.contains(&mid)
    }
}

/// Hands accepted messages to the writer. Any thread.
#[derive(Debug, Clone)]
pub(crate) struct LogHandle {
    tx: Sender<Accepted>,
}

impl LogHandle {
    /// A handle and the queue it feeds; the writer (or a test) takes from the queue.
    pub(crate) fn channel() -> (LogHandle, Receiver<Accepted>) {
        let (tx, rx) = unbounded();
        (LogHandle { tx }, rx)
    }

    /// Queues `a`; gives it back if the writer has stopped.
    pub(crate) fn append(&self, a: Accepted) -> Result<(), Box<Accepted>> {
        self.tx.send(a).map_err(|e| Box::new(e.0))
    }
}

/// The writer and pruner threads.
#[derive(Debug)]
pub(crate) struct MessageLog {
    writer: JoinHandle<()>,
    pruner: Option<(Sender<()>, JoinHandle<()>)>,
}

impl MessageLog {
    /// Starts the writer on the queue of [`LogHandle::channel`], and the pruner (cids older
    /// than a day; history older than `history_days`, unless 0: keep everything). The writer
    /// ends once every handle is dropped.
    pub(crate) fn start(
        rx: Receiver<Accepted>,
        store: Arc<dyn Store>,
        router: Arc<Router<Event>>,
        clock: Clock,
        history_days: u32,
    ) -> std::io::Result<MessageLog> {
        let writer = {
            let (store, clock) = (store.clone(), clock.clone());
            std::thread::Builder::new()
                .name("message-log".into())
                .spawn(move || write_loop(&*store, &rx, &router, &clock))?
        };
        let (stop, stopped) = unbounded::<()>();
        let retention = (history_days > 0).then(|| u64::from(history_days) * 24 * 3600 * 1000);
        let thread = std::thread::Builder::new()
            .name("history-prune".into())
            .spawn(move || prune_loop(&*store, &stopped, &clock, retention))?;
        let pruner = Some((stop, thread));
        Ok(MessageLog { writer, pruner })
    }

    /// Commits what is queued, then stops both threads. Call once the reactors (which hold
    /// the handles) are gone.
    pub(crate) fn shutdown(self) {
        let MessageLog { writer, pruner } = self;
        if writer.join().is_err() {
            log::error!("the message log writer panicked");
        }
        if let Some((stop, thread)) = pruner {
            drop(stop);
            if thread.join().is_err() {
                log::error!("the history pruner panicked");
            }
        }
    }
}

fn write_loop(store: &dyn Store, rx: &Receiver<Accepted>, router: &Router<Event>, clock: &Clock) {
    let mut recent = RecentMids::default();
    // Ends when every handle is gone (shutdown) and the queue is empty.
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        // Whatever queued while the last batch was being written goes in this one.
        batch.extend(rx.try_iter().take(MAX_BATCH - 1));
        commit(store, batch, clock, router, &mut recent);
    }
}

/// Writes one batch and sends each result to its sender's reactor.
pub(crate) fn commit(
    store: &dyn Store,
    batch: Vec<Accepted>,
    clock: &Clock,
    router: &Router<Event>,
    recent: &mut RecentMids,
) {
    let since = clock.now_ms().saturating_sub(DEDUP_WINDOW_MS);
    let msgs: Vec<&NewMessage> = batch.iter().map(|a| &a.msg).collect();
    let logged = match store.log_messages(&msgs, since) {
        Ok(logged) if logged.len() == batch.len() => logged.into_iter().map(Some).collect(),
        Ok(_) => {
            log::error!("message log: the store answered a batch of {} with the wrong count", batch.len());
            vec![None; batch.len()]
        }
        Err(e) => {
            log::error!("message log: a batch of {} not stored: {e}", batch.len());
            vec![None; batch.len()]
        }
    };
    let mut by_reactor: HashMap<usize, Vec<LogResult>> = HashMap::new();
    for (accepted, logged) in batch.into_iter().zip(logged) {
        let again = match logged {
            Some(Logged::Fresh(mid)) => {
                recent.insert(mid);
                false
            }
            Some(Logged::Dup(mid)) => !recent.contains(mid),
            None => false,
        };
        by_reactor.entry(accepted.at.reactor).or_default().push(LogResult { accepted, logged, again });
    }
    for (reactor, results) in by_reactor {
        router.send(reactor, Event::Logged(results));
    }
}

fn prune_loop(store: &dyn Store, stopped: &Receiver<()>, clock: &Clock, retention: Option<u64>) {
    loop {
        let now = clock.now_ms();
        if let Err(e) = store.prune_cids(now.saturating_sub(DEDUP_WINDOW_MS)) {
            log::warn!("message log: forgetting old cids failed: {e}");
        }
        match retention.map(|r| store.prune_history(now.saturating_sub(r))) {
            None | Some(Ok(0)) => {}
            Some(Ok(n)) => log::info!("history: {n} messages past the retention deleted"),
            Some(Err(e)) => log::warn!("history: pruning failed: {e}"),
        }
        match stopped.recv_timeout(PRUNE_EVERY) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}
