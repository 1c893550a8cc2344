//! The network layer: worker reactors and their connections.
//!
//! Each worker reactor is one thread with its own `mio::Poll` (edge-triggered) and owns its
//! connections in a slab. Other threads never touch a connection: they send a [`Msg`] on the
//! reactor's channel through a [`ReactorHandle`], which wakes the reactor only when it is not
//! already due to look at its queue.

mod conn;
mod reactor;
pub mod relay;
mod router;

pub(crate) use reactor::Reactor;
pub(crate) use router::{Msg, Router};
