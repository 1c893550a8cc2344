//! A clustered instant-messaging server, wire-compatible with the canonical cluster-chat clients.
//!
//! # Layout
//! ```text
//!  clients ─► net::Acceptor ── round-robin Msg::NewConn ──► worker reactors (net::Reactor<H>)
//!                                                             │ transport: read, frame, write
//!                                                             │ H = service::ChatHandler:
//!                                                             │   frame → Request (proto/)
//!                                                             │   Service::handle decides
//!               ┌──────── fast path: presence hit ────────────┤ Event::Deliver to the owner
//!               │                                             │ slow path: Job, conn paused
//!               ▼                                             ▼
//!   the owning reactor's channel                  blocking pool (pool.rs): store/ and bus/
//!               ▲                                             │ mailbox lanes: ordered spills
//!               └─ Event::Deliver / Drain / JobDone / Evict ──┤ bus: publisher, subscriber
//!                  Event::Routed (the bus's answer to a chat) ┘ (cluster), via bus::Inbox
//! ```
//! - `net` (crate-private): transport only. The acceptor, and a reactor generic over a
//!   `net::Handler` (frames and channel messages in, decisions out through `net::Io`); the chat
//!   server and the bench's bare relay are two handlers on the same loop.
//! - [`proto`]: both directions of the wire: the streaming frame codec, `MsgId`, `Request`
//!   (parse and encode), replies (encode and [`proto::reply::decode`]), the one chat message
//!   type ([`proto::message::ChatMessage`]), errno, time, and byte scans for the load generator.
//! - `service` (crate-private): sessions and their transitions, presence, the chat logic; no
//!   sockets, no SQL.
//! - [`store`]: the `Store` trait: SQLite (embedded default), MySQL/MariaDB, memory.
//! - [`bus`]: the `Bus` trait (cross-node routing): in-process (one node) and Redis (cluster).
//! - [`server`]: wires the threads together and runs the graceful shutdown.
//! - `client`, `bench` (default features): the terminal client and the load generator.
//!
//! The wire contract is `docs/PROTOCOL.md`; threads, ownership and invariants `docs/DESIGN.md`.
#![deny(rust_2018_idioms)]
#![warn(unreachable_pub, missing_debug_implementations)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "bench")]
pub mod bench;
pub mod bus;
#[cfg(feature = "client")]
pub mod client;
pub mod config;
mod net;
mod pool;
pub mod proto;
pub mod server;
mod service;
pub mod store;

pub use config::Config;
pub use server::{Server, ShutdownHandle};
/// For the hot-path benchmarks, which measure the presence map and deliveries directly.
pub use service::{Delivery, Loc, Presence};

/// A user's id: an integer in 1..=2^31-1, as in the canonical schema.
pub type UserId = u32;
/// A group's id, same range as [`UserId`].
pub type GroupId = u32;
