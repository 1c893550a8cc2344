//! Cross-node routing: presence arbitration and delivery to users on other nodes.
//!
//! A single node uses [`LocalBus`], for which every user is local: the in-memory presence map
//! decides everything and the bus answers "nobody elsewhere". A cluster bus (Redis) implements the
//! same calls; they block, so they run on the pool.

use std::sync::Arc;

use crate::net::Loc;
use crate::{GroupId, UserId};

mod redis;

pub use self::redis::RedisBus;

/// How a bus hands what arrives from other nodes to this one. Called on the bus's own thread.
pub trait Inbox: Send + Sync + std::fmt::Debug {
    /// A message (newline included) for a user who should be live on this node.
    fn deliver(&self, user: UserId, msg: Arc<str>);
    /// A group message for members who should be live on this node.
    fn deliver_many(&self, users: &[UserId], msg: Arc<str>);
    /// The users live on this node, to claim again after the bus was lost.
    fn local_users(&self) -> Vec<UserId>;
    /// Ends a user's session here: another node holds its presence.
    fn evict(&self, user: UserId);
    /// Has a live user fetch its mailbox (messages may have been stored while the bus was away).
    fn drain(&self, user: UserId);
    /// Answers to [`Bus::route_async`] calls that were [`Routing::Queued`], each with its
    /// sender, in the order routed.
    fn routed(&self, answers: Vec<(Loc, Result<bool, BusError>)>);
}

/// The bus could not answer; the request gets errno 10. Clone: one failed round trip fails
/// every route it carried.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("redis timed out: {0}")]
    Timeout(#[source] Arc<::redis::RedisError>),
    #[error("redis: {0}")]
    Io(#[source] Arc<::redis::RedisError>),
    #[error("redis at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: Arc<::redis::RedisError>,
    },
    #[error("redis answered {0}")]
    Protocol(&'static str),
    #[error("the bus publisher has stopped")]
    Stopped,
}

impl From<::redis::RedisError> for BusError {
    fn from(e: ::redis::RedisError) -> Self {
        match e.is_timeout() {
            true => BusError::Timeout(Arc::new(e)),
            false => BusError::Io(Arc::new(e)),
        }
    }
}

/// What became of a message handed to [`Bus::route_async`].
#[derive(Debug)]
pub enum Routing {
    /// Settled at once: `true` if a node received it.
    Done(Result<bool, BusError>),
    /// In flight: the answer comes to [`Inbox::routed`].
    Queued,
}

/// A group message for [`Bus::route_groups`]: for those of `users` (members of `group`, read
/// under `version`) live on other nodes.
#[derive(Debug, Clone, Copy)]
pub struct GroupSend<'a> {
    pub group: GroupId,
    pub version: u64,
    pub users: &'a [UserId],
    pub msg: &'a str,
}

/// A count of attempts (failed logins, registrations) under `key`: `limit` of them within
/// `window` block the key for `block`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRule {
    pub key: String,
    pub limit: u32,
    pub window: std::time::Duration,
    pub block: std::time::Duration,
}

/// Where attempts under some rules stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attempts {
    /// The longest block among them still lasts this long.
    pub blocked: Option<std::time::Duration>,
    /// Some of them have attempts counted (so a success has a count to clear).
    pub counted: bool,
}

/// What became of a group message handed to [`Bus::route_groups`].
#[derive(Debug, PartialEq, Eq)]
pub enum GroupRouting {
    /// The group's members changed since the version given (it is `current` now): nothing was
    /// sent; read the members again.
    Stale { current: u64 },
    /// Published once to each node where some of the members are live. `missed`: those no node
    /// took it for (not online, in a session with acks, or on a node that is gone): store it.
    Routed { missed: Vec<UserId> },
}

pub trait Bus: Send + Sync + std::fmt::Debug {
    /// Claims cluster-wide presence for `user`, logging in on this node. `false`: live elsewhere.
    /// `acks`: whether the session acknowledges deliveries (`None`: as the claim said before).
    /// Messages for such a session are stored before anyone is told, so other nodes do not
    /// route them to it through the bus, where a Redis crash could lose them in transit.
    fn claim(&self, user: UserId, acks: Option<bool>) -> Result<bool, BusError>;
    /// Releases a claim made by this node.
    fn release(&self, user: UserId) -> Result<(), BusError>;
    /// Delivers an encoded message to `user` on another node. `false`: not online elsewhere, or
    /// in an acks session there (store it, then `poke`).
    fn route(&self, user: UserId, msg: &str) -> Result<bool, BusError>;
    /// Like `route`, without blocking the caller: many messages can share one round trip.
    /// Messages handed over one after the other are routed in that order, and answered in
    /// that order; `from` (the sender) comes back with the answer. Once a message of `from`
    /// and `epoch` is not received, later ones of that sender and epoch are not delivered
    /// either (answered `false`): the sender stores them in order, then routes again under a
    /// new epoch. Called on reactor threads: the default, which routes in
    /// place, suits only a bus that never blocks; a bus that does I/O overrides it.
    fn route_async(&self, user: UserId, msg: Arc<str>, from: Loc, epoch: u32) -> Routing {
        let _ = (from, epoch);
        Routing::Done(self.route(user, &msg))
    }
    /// Asks the node where `user` is live, if another, to have the session fetch its mailbox:
    /// something was stored for it after it may have taken the mailbox at login.
    fn poke(&self, _user: UserId) -> Result<(), BusError> {
        Ok(())
    }
    /// Whether each of `users` is online on another node, in order (for friend and member
    /// states); a bus that does I/O answers in one round trip (a login with 100 friends asks
    /// once, not 100 times).
    fn online_elsewhere(&self, users: &[UserId]) -> Result<Vec<bool>, BusError>;
    /// The version of `group`'s member list, cluster-wide: read it before reading the members
    /// from the store, and hand it to `route_groups` with them.
    fn group_version(&self, _group: GroupId) -> Result<u64, BusError> {
        Ok(0)
    }
    /// Gives `group` a new version, after a change to its members is in the store: from now
    /// on, no node sends to it with the members it read before.
    fn group_changed(&self, _group: GroupId) -> Result<(), BusError> {
        Ok(())
    }
    /// Delivers encoded group messages, in order, each to its users live on other nodes: one
    /// publish per message and node, whatever the number of members there. Answers one
    /// routing per message, up to and including the first whose version is stale: that one
    /// and those after it are not sent (and not answered).
    fn route_groups(&self, sends: &[GroupSend<'_>]) -> Result<Vec<GroupRouting>, BusError>;
    /// Where attempts under `rules` stand, cluster-wide (a bus that keeps no counts: nowhere).
    fn attempts(&self, _rules: &[AttemptRule]) -> Result<Attempts, BusError> {
        Ok(Attempts::default())
    }
    /// Counts one attempt under each rule, cluster-wide.
    fn count_attempt(&self, _rules: &[AttemptRule]) -> Result<(), BusError> {
        Ok(())
    }
    /// Starts `key`'s count again (its block, if any, stays).
    fn clear_attempts(&self, _key: &str) -> Result<(), BusError> {
        Ok(())
    }
    /// Whether this node is the only one: then every change to the data passes through it, and
    /// it may cache what it read (group members) without hearing from other nodes.
    fn sole_node(&self) -> bool {
        false
    }
    /// Starts receiving messages for this node's users.
    fn start(&self, _inbox: Arc<dyn Inbox>) -> std::io::Result<()> {
        Ok(())
    }
    /// Stops receiving; joins what `start` started.
    fn shutdown(&self) {}
}

/// The in-process bus of a single node.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalBus;

impl Bus for LocalBus {
    fn claim(&self, _user: UserId, _acks: Option<bool>) -> Result<bool, BusError> {
        Ok(true)
    }

    fn release(&self, _user: UserId) -> Result<(), BusError> {
        Ok(())
    }

    fn route(&self, _user: UserId, _msg: &str) -> Result<bool, BusError> {
        Ok(false)
    }

    fn online_elsewhere(&self, users: &[UserId]) -> Result<Vec<bool>, BusError> {
        Ok(vec![false; users.len()])
    }

    fn route_groups(&self, sends: &[GroupSend<'_>]) -> Result<Vec<GroupRouting>, BusError> {
        Ok(sends.iter().map(|s| GroupRouting::Routed { missed: s.users.to_vec() }).collect())
    }

    fn sole_node(&self) -> bool {
        true
    }
}
