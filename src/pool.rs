//! The blocking pool: threads that run store, bus and hashing work so reactors never wait.
//!
//! Requests are admission-controlled by their submitter (`is_busy`: over `limit` queued, the
//! client gets errno 10 at once); internal work such as storing undeliverable messages is always
//! accepted, because dropping it would lose messages.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Sender};

pub(crate) type Task = Box<dyn FnOnce() + Send + 'static>;

#[derive(Debug)]
pub(crate) struct Pool {
    handle: PoolHandle,
    workers: Vec<JoinHandle<()>>,
}

/// Submits work to the pool. Any thread.
#[derive(Debug, Clone)]
pub(crate) struct PoolHandle {
    tx: Sender<Task>,
    queued: Arc<AtomicUsize>,
    limit: usize,
}

impl Pool {
    pub(crate) fn start(threads: usize, limit: usize) -> std::io::Result<Pool> {
        let (tx, rx) = unbounded::<Task>();
        let queued = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let queued = queued.clone();
            workers.push(std::thread::Builder::new().name(format!("pool-{i}")).spawn(move || {
                for task in rx {
                    task();
                    queued.fetch_sub(1, Ordering::AcqRel);
                }
            })?);
        }
        Ok(Pool { handle: PoolHandle { tx, queued, limit }, workers })
    }

    pub(crate) fn handle(&self) -> PoolHandle {
        self.handle.clone()
    }

    /// Runs every queued task, then joins the threads. Call after all other handles are dropped.
    pub(crate) fn shutdown(self) {
        drop(self.handle);
        for w in self.workers {
            if w.join().is_err() {
                log::error!("a pool thread panicked");
            }
        }
    }
}

impl PoolHandle {
    /// A handle whose tasks nobody runs but the holder of the receiver, one by one: for tests
    /// that drive the service step by step without threads.
    #[cfg(test)]
    pub(crate) fn manual(limit: usize) -> (PoolHandle, crossbeam_channel::Receiver<Task>) {
        let (tx, rx) = unbounded::<Task>();
        (PoolHandle { tx, queued: Arc::new(AtomicUsize::new(0)), limit }, rx)
    }

    /// Whether the queue is over its limit: new client requests should get errno 10.
    pub(crate) fn is_busy(&self) -> bool {
        self.queued.load(Ordering::Acquire) >= self.limit
    }

    /// Queues a task. Internal work is always queued: dropping it would lose messages.
    pub(crate) fn submit(&self, task: impl FnOnce() + Send + 'static) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(Box::new(task)).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            log::error!("pool is gone; task dropped");
        }
    }
}
