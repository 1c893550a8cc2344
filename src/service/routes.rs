//! The chats of one connection to users not live on this node, from the log to their answers.
//!
//! ```text
//!   route ──► on_bus (many at once, answered in order) ──received──► answered
//!     │            └──not received──► to_store ──► storing (one pool batch at a time) ──► answered
//!     └──(while anything is to be stored)──► waiting ──(once nothing is on the bus or stored)──► on_bus
//! ```
//!
//! Per-sender order (DESIGN invariant 1) is why it has these rooms: a message no node received
//! is stored, and nothing the sender sent after it may overtake it. The bus answers in order
//! and, once one of the sender's messages is not received, delivers none of its later ones of
//! that epoch (they come back "not received" and are stored behind it); messages sent after
//! the sender learned of it wait until all of that is stored, then go out under a new epoch.

use std::collections::VecDeque;

use super::Job;

#[derive(Debug, Default)]
pub(super) struct Routes {
    /// Handed to the bus, with the epoch they went under; answers come back in this order.
    pub(super) on_bus: VecDeque<(u32, Job)>,
    /// Received by no node: stored next, in this order.
    pub(super) to_store: Vec<Job>,
    /// How many are being stored now, in one pool task.
    pub(super) storing: usize,
    /// Sent after something was not received: routed once that is stored.
    pub(super) waiting: VecDeque<Job>,
    pub(super) epoch: u32,
}

impl Routes {
    /// Chats not settled yet.
    pub(super) fn len(&self) -> usize {
        self.on_bus.len() + self.to_store.len() + self.storing + self.waiting.len()
    }

    /// A new chat must wait: it could overtake one to be stored.
    pub(super) fn held_back(&self) -> bool {
        self.storing > 0 || !self.to_store.is_empty() || !self.waiting.is_empty()
    }

    /// Waiting chats may go: everything before them is settled or received.
    pub(super) fn may_release(&self) -> bool {
        self.storing == 0 && self.to_store.is_empty() && self.on_bus.is_empty()
    }

    /// The bus did not deliver a chat sent under `epoch`: later ones go under the next epoch.
    pub(super) fn not_received(&mut self, epoch: u32, job: Job) {
        if epoch == self.epoch {
            self.epoch = self.epoch.wrapping_add(1);
        }
        self.to_store.push(job);
    }
}
