//! A clustered instant-messaging server, wire-compatible with the canonical cluster-chat clients.
//!
//! # Layout
//! ```text
//!  clients ─► acceptor (server.rs) ── round-robin NewConn ──► worker reactors (net/)
//!                                                               │ frame → Request (proto/)
//!                                                               │ handler decides (service/)
//!                  ┌────────── fast path: presence hit ─────────┤ Deliver to the owning reactor
//!                  │                                            │ slow path: Job to the pool
//!                  ▼                                            ▼
//!      other reactor's channel                     blocking pool (pool.rs): store/ and bus/ calls
//!                  ▲                                            │
//!                  └──────── Deliver / Drain / JobDone ─────────┘
//! ```
//! - [`net`]: mio reactors, connections and their buffers. Only the owning reactor touches a socket.
//! - [`proto`]: the streaming frame codec, the `Request` enum, reply encoding, errno.
//! - [`service`]: sessions, presence and the chat logic; no sockets, no SQL.
//! - [`store`]: the `Store` trait and its SQLite implementation.
//! - [`bus`]: the `Bus` trait (cross-node routing) and its in-process implementation.
//! - [`server`]: wires the threads together and runs the graceful shutdown.
#![deny(rust_2018_idioms)]
#![warn(unreachable_pub, missing_debug_implementations)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "bench")]
pub mod bench;
pub mod bus;
#[cfg(feature = "client")]
pub mod client;
pub mod config;
pub mod net;
mod pool;
pub mod proto;
pub mod server;
pub mod service;
pub mod store;

pub use config::Config;
pub use server::{Server, ShutdownHandle};

/// A user's id: an integer in 1..=2^31-1, as in the canonical schema.
pub type UserId = u32;
/// A group's id, same range as [`UserId`].
pub type GroupId = u32;
