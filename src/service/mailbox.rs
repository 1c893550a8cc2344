//! Ordered offline storage. Every write to a user's mailbox goes through one lane (a thread and
//! a FIFO queue) chosen by the user id, so writes to one mailbox happen in the order they were
//! handed over, whichever thread handed them over. Together with ending sessions under the
//! presence write lock (see `Presence::remove_with`), this keeps each sender's messages in order
//! when a recipient goes offline mid-stream.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Sender};
use parking_lot::Mutex;

use super::{stored_form, Outlet, Presence};
use crate::bus::Bus;
use crate::store::{OfflineWrite, Store, StoreError, StoreResult};

/// Most queued writes a lane commits together.
const LANE_BATCH: usize = 256;
use crate::UserId;

/// Where a lane reports: a waiting caller, or (for spills) nobody but the log.
type Reply = Option<Sender<StoreResult<bool>>>;

struct Write {
    user: UserId,
    msgs: Vec<Arc<str>>,
    cap: Option<usize>,
    reply: Reply,
    /// Spills poke a session that came online meanwhile; waiting callers do that themselves.
    poke: Option<Arc<dyn Outlet + Send + Sync>>,
}

pub(crate) struct Mailboxes {
    lanes: Mutex<Vec<Sender<Write>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Without lanes (unit tests): writes wait here, in order, until the test runs them (or a
    /// waiting `store` does). Not at once: a spill is handed over under the presence lock.
    inline: Option<(Writer, Mutex<VecDeque<Write>>)>,
}

/// What carries a write out.
#[derive(Clone)]
struct Writer {
    store: Arc<dyn Store>,
    presence: Arc<Presence>,
    bus: Arc<dyn Bus>,
}

impl Writer {
    /// Carries out the writes queued on a lane in one store transaction (group commit: a lane
    /// under load pays one commit for many messages), each write still all or none with its
    /// own cap. If the batch fails, each is tried alone, so each caller gets its own answer.
    fn write_batch(&self, batch: Vec<Write>) {
        if batch.len() == 1 {
            batch.into_iter().for_each(|w| self.write(w));
            return;
        }
        let writes: Vec<OfflineWrite<'_>> = batch
            .iter()
            .map(|w| OfflineWrite { user: w.user, msgs: w.msgs.iter().map(|m| stored_form(m)).collect(), cap: w.cap })
            .collect();
        let result = self.store.store_offline_batch(&writes);
        drop(writes);
        match result {
            Ok(stored) if stored.len() == batch.len() => {
                for (w, stored) in batch.into_iter().zip(stored) {
                    self.finish(w, Ok(stored));
                }
            }
            _ => batch.into_iter().for_each(|w| self.write(w)),
        }
    }

    fn write(&self, w: Write) {
        let stored: Vec<&str> = w.msgs.iter().map(|m| stored_form(m)).collect();
        let result = self.store.store_offline(w.user, &stored, w.cap);
        self.finish(w, result);
    }

    fn finish(&self, w: Write, result: StoreResult<bool>) {
        if let (Ok(true), Some(outlet)) = (&result, &w.poke) {
            poke_if_online(&self.presence, &*self.bus, &**outlet, w.user);
        }
        match (w.reply, result) {
            (Some(reply), result) => drop(reply.send(result)),
            (None, Err(e)) => log::error!("user {}: {} undeliverable messages lost: {e}", w.user, w.msgs.len()),
            (None, Ok(_)) => {}
        }
    }
}

impl std::fmt::Debug for Mailboxes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailboxes").field("lanes", &self.lanes.lock().len()).finish()
    }
}

impl Mailboxes {
    pub(crate) fn start(
        lanes: usize,
        store: Arc<dyn Store>,
        presence: Arc<Presence>,
        bus: Arc<dyn Bus>,
    ) -> std::io::Result<Mailboxes> {
        let writer = Writer { store, presence, bus };
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for i in 0..lanes.max(1) {
            let (tx, rx) = unbounded::<Write>();
            let writer = writer.clone();
            threads.push(std::thread::Builder::new().name(format!("mailbox-{i}")).spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter().take(LANE_BATCH - 1));
                    writer.write_batch(batch);
                }
            })?);
            senders.push(tx);
        }
        Ok(Mailboxes { lanes: Mutex::new(senders), threads: Mutex::new(threads), inline: None })
    }

    /// Mailboxes written on the caller's thread, for tests that run without threads.
    #[cfg(test)]
    pub(crate) fn inline(store: Arc<dyn Store>, presence: Arc<Presence>, bus: Arc<dyn Bus>) -> Mailboxes {
        let inline = Some((Writer { store, presence, bus }, Mutex::new(VecDeque::new())));
        Mailboxes { lanes: Mutex::new(Vec::new()), threads: Mutex::new(Vec::new()), inline }
    }

    /// Runs the writes an inline mailbox holds; `false` if there were none.
    pub(crate) fn run_pending(&self) -> bool {
        let Some((writer, pending)) = &self.inline else { return false };
        let writes: Vec<Write> = pending.lock().drain(..).collect();
        let any = !writes.is_empty();
        writes.into_iter().for_each(|w| writer.write(w));
        any
    }

    fn send(&self, w: Write) {
        if let Some((_, pending)) = &self.inline {
            let waiting = w.reply.is_some();
            pending.lock().push_back(w);
            if waiting {
                self.run_pending();
            }
            return;
        }
        let lanes = self.lanes.lock();
        match lanes.get(w.user as usize % lanes.len().max(1)) {
            Some(lane) => {
                if let Err(e) = lane.send(w) {
                    log::error!("user {}: mailbox lane gone; {} messages lost", e.0.user, e.0.msgs.len());
                }
            }
            None => log::error!("user {}: mailboxes closed; {} messages lost", w.user, w.msgs.len()),
        }
    }

    /// Queues messages that were accepted but could not be written to their session. Any thread;
    /// never blocks.
    pub(crate) fn spill(&self, user: UserId, msgs: Vec<Arc<str>>, poke: Arc<dyn Outlet + Send + Sync>) {
        self.send(Write { user, msgs, cap: None, reply: None, poke: Some(poke) });
    }

    /// Stores one message and waits for the outcome; `false`: the mailbox is full.
    pub(crate) fn store(&self, user: UserId, msg: Arc<str>, cap: usize) -> StoreResult<bool> {
        let (tx, rx) = bounded(1);
        self.send(Write { user, msgs: vec![msg], cap: Some(cap), reply: Some(tx), poke: None });
        rx.recv().unwrap_or_else(|_| Err(StoreError::Closed))
    }

    /// Finishes every queued write, then joins the lanes.
    pub(crate) fn close(&self) {
        self.lanes.lock().clear();
        for t in self.threads.lock().drain(..) {
            if t.join().is_err() {
                log::error!("a mailbox lane panicked");
            }
        }
    }
}

/// After storing for `user`: a session that logged in meanwhile, here or on another node, may
/// have taken its mailbox before the store, so ask it to take the mailbox again (nothing lost: docs/DESIGN.md, invariant 3).
pub(crate) fn poke_if_online(presence: &Presence, bus: &dyn Bus, outlet: &dyn Outlet, user: UserId) {
    match presence.get(user) {
        Some(loc) => outlet.drain(loc, user),
        None => {
            if let Err(e) = bus.poke(user) {
                log::warn!("user {user}: stored messages wait for the next login: {e}");
            }
        }
    }
}
