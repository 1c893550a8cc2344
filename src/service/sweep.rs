//! The mailbox sweep: a message stored for a user who is live on this node reaches the session
//! even if the notification that should have fetched it was lost (a publish Redis dropped, a
//! poke during a bus outage). Every period one query lists the mailboxes written since the
//! sweep before last; each live session among them is asked to fetch what it has not read.
//! Cheap when nothing was stored: one indexed range query that returns no row.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use super::{Outlet, Service};
use crate::store::StoreResult;

/// Most mailboxes looked at per period; more are seen in the next ones.
const MAX_USERS: usize = 100_000;

/// The sweeping thread.
#[derive(Debug)]
pub(crate) struct Sweeper {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl Sweeper {
    pub(crate) fn start(
        service: Arc<Service>,
        outlet: Arc<dyn Outlet + Send + Sync>,
        every: Duration,
    ) -> std::io::Result<Sweeper> {
        let (stop, stopped) = bounded::<()>(1);
        let thread = std::thread::Builder::new().name("mailbox-sweep".into()).spawn(move || {
            let mut cursor = Cursor::default();
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                if let Err(e) = cursor.sweep(&service, &*outlet) {
                    log::warn!("mailbox sweep: {e}");
                }
            }
        })?;
        Ok(Sweeper { stop, thread })
    }

    pub(crate) fn shutdown(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            log::error!("the mailbox sweep panicked");
        }
    }
}

/// Which rows a sweep looks at. Rows are numbered as inserted, but on a shared database a
/// transaction may commit after one holding a higher number; so each sweep starts from the
/// newest row the sweep before last saw, and such a row is still seen one period later.
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    from: u64,
    seen: u64,
}

impl Cursor {
    /// One sweep; returns how many sessions were asked to fetch their mailbox.
    pub(crate) fn sweep(&mut self, service: &Service, outlet: &dyn Outlet) -> StoreResult<usize> {
        let waiting = service.store.waiting_mailboxes(self.from, MAX_USERS)?;
        let newest = waiting.iter().map(|&(_, row)| row).max().unwrap_or(self.seen);
        let full = waiting.len() >= MAX_USERS;
        let mut asked = 0;
        for (user, row) in waiting {
            if let Some(to) = service.presence.get(user) {
                outlet.fetch_after(to, user, row);
                asked += 1;
            }
        }
        // A full answer may have left users out: look at the same rows again next time.
        if !full {
            (self.from, self.seen) = (self.seen, newest.max(self.seen));
        }
        Ok(asked)
    }
}
