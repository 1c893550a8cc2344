//! The wire protocol of PROTOCOL.md: framing, requests, replies and error numbers.
//!
//! Bytes flow `codec::Decoder` (where does one JSON value end?) → `request::parse` (a chat
//! request straight to its fields, anything else to a `serde_json::Value`) →
//! `request::parse_envelope` / `parse_body` (what is asked?) → the service; answers come back
//! as bytes from `reply`, each a compact JSON object and one `\n`.

pub mod codec;
mod errno;
pub mod message;
pub mod peek;
pub mod reply;
pub mod request;
pub mod time;

pub use errno::Errno;
pub use request::{MsgId, Request};
