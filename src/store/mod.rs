//! Durable data: users, friends, groups, offline messages, and the message log (every accepted
//! chat message once, with its `mid`: durability, `cid` deduplication and history).
//!
//! Every method blocks; callers run them on the blocking pool, never on a reactor. Tables and
//! columns are the canonical ones (`schema.sql`); `User.state` is written for tools that read it
//! and decides nothing.

mod memory;
mod mysql;
mod sqlite;

pub use memory::MemoryStore;
pub use mysql::MysqlStore;
pub use sqlite::SqliteStore;

use std::sync::Arc;

use crate::proto::message::{ChatMessage, Target};
use crate::{GroupId, UserId};

/// A message's id in the cluster: 1..2^53-1, given out by the log.
pub type Mid = u64;

/// A chat message for the log, before it has a `mid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub from: UserId,
    /// The sender's name when sent (history keeps it).
    pub name: Arc<str>,
    pub to: Target,
    pub msg: String,
    pub time: String,
    pub ts: u64,
    pub cid: Option<String>,
}

impl NewMessage {
    /// The message as delivered, once it has its `mid`.
    pub fn with_mid(&self, mid: Mid) -> ChatMessage<'_> {
        ChatMessage {
            from: self.from,
            name: (*self.name).into(),
            to: self.to,
            msg: self.msg.as_str().into(),
            time: self.time.as_str().into(),
            ts: self.ts,
            mid: Some(mid),
            cid: self.cid.as_deref().map(Into::into),
        }
    }
}

/// What the log made of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    /// Stored, durable, under this new mid.
    Fresh(Mid),
    /// Its (sender, cid) was already logged, under this mid: not stored again.
    Dup(Mid),
}

/// A conversation of the log: the one-to-one messages between two users, or a group's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Conversation {
    /// The lower id first.
    Pair(UserId, UserId),
    Group(GroupId),
}

impl Conversation {
    pub fn of(from: UserId, to: Target) -> Conversation {
        match to {
            Target::User(u) => Conversation::Pair(from.min(u), from.max(u)),
            Target::Group(g) => Conversation::Group(g),
        }
    }

    /// The integer the log indexes it by: `low << 32 | high` for a pair, `-groupid` for a
    /// group (ids are below 2^31, so the two never meet).
    pub fn key(self) -> i64 {
        match self {
            Conversation::Pair(a, b) => (i64::from(a) << 32) | i64::from(b),
            Conversation::Group(g) => -i64::from(g),
        }
    }
}

/// One page of a conversation, oldest first; `more`: older messages exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryPage {
    pub messages: Vec<ChatMessage<'static>>,
    pub more: bool,
}

/// A logged message read back from its columns.
#[allow(clippy::too_many_arguments)]
fn logged_message(
    mid: Mid,
    from: UserId,
    name: String,
    toid: Option<UserId>,
    groupid: Option<GroupId>,
    msg: String,
    time: String,
    ts: u64,
    cid: Option<String>,
) -> Option<ChatMessage<'static>> {
    let to = match (toid, groupid) {
        (Some(u), None) => Target::User(u),
        (None, Some(g)) => Target::Group(g),
        _ => return None, // a row edited by hand
    };
    let (name, msg, time, cid) = (name.into(), msg.into(), time.into(), cid.map(Into::into));
    Some(ChatMessage { from, name, to, msg, time, ts, mid: Some(mid), cid })
}

/// One user's part of [`Store::store_offline_batch`].
#[derive(Debug)]
pub struct OfflineWrite<'a> {
    pub user: UserId,
    pub msgs: Vec<&'a str>,
    pub cap: Option<usize>,
}

/// Why the store could not answer. A request that meets one gets errno 10 and nothing was
/// changed; the cause is kept for the log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store unavailable: {0}")]
    Mysql(#[source] ::mysql::Error),
    /// A lock conflict that outlasted the retries (deadlock victim, lock wait timeout).
    #[error("store conflict: {0}")]
    Conflict(#[source] ::mysql::Error),
    /// Data the store cannot represent: an id out of range (a table edited by hand).
    #[error("store data out of range: {0}")]
    OutOfRange(&'static str),
    /// The commit that carried this write along with others failed.
    #[error("store unavailable: a commit failed")]
    CommitFailed,
    /// The node is shutting down: its mailbox lanes are gone.
    #[error("store closed")]
    Closed,
    /// A `--store` spec that names no store this node can open.
    #[error("{0}")]
    Spec(String),
    /// Opening `spec` (password redacted) failed.
    #[error("{spec}: {source}")]
    Open {
        spec: String,
        #[source]
        source: Box<StoreError>,
    },
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: UserId,
    pub name: String,
    /// The PHC string of the password hash.
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub id: UserId,
    pub name: String,
    pub creator: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub id: GroupId,
    pub name: String,
    pub desc: String,
    pub members: Vec<MemberRecord>,
}

/// Storage of one chat service. Implementations are shared by all pool threads.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Creates a user; `None` when the name is taken.
    fn create_user(&self, name: &str, password_hash: &str) -> StoreResult<Option<UserId>>;
    fn user(&self, id: UserId) -> StoreResult<Option<UserRecord>>;
    /// Replaces a user's password hash (a hash made with an older cost, upgraded at login).
    fn set_password(&self, id: UserId, password_hash: &str) -> StoreResult<()>;
    /// Up to `limit` stored password hashes, any users: what a hash costs here now.
    fn password_samples(&self, limit: usize) -> StoreResult<Vec<String>>;
    fn user_exists(&self, id: UserId) -> StoreResult<bool>;
    /// Writes `User.state` for compatibility; presence never reads it.
    fn set_state(&self, id: UserId, online: bool) -> StoreResult<()>;
    /// Makes `a` and `b` friends of each other; idempotent. Both must exist.
    fn add_friend(&self, a: UserId, b: UserId) -> StoreResult<()>;
    /// `(id, name)` of every friend, by id.
    fn friends(&self, id: UserId) -> StoreResult<Vec<(UserId, String)>>;
    /// Creates a group whose only member is its creator.
    fn create_group(&self, creator: UserId, name: &str, desc: &str) -> StoreResult<GroupId>;
    /// Joins `user` to `group` as a normal member; idempotent. `false`: no such group.
    fn join_group(&self, group: GroupId, user: UserId) -> StoreResult<bool>;
    /// Member ids of a group; `None`: no such group.
    fn group_members(&self, group: GroupId) -> StoreResult<Option<Vec<UserId>>>;
    /// The groups `user` belongs to, each with all its members.
    fn user_groups(&self, user: UserId) -> StoreResult<Vec<GroupRecord>>;
    /// Appends messages to a user's mailbox, all or none. With `cap`, refuses (returns `false`)
    /// when the mailbox would pass `cap` messages.
    fn store_offline(&self, user: UserId, msgs: &[&str], cap: Option<usize>) -> StoreResult<bool>;
    /// Several `store_offline` writes, in order, each all or none with its own cap; a store that
    /// can do them in one transaction (group commit) does.
    fn store_offline_batch(&self, writes: &[OfflineWrite<'_>]) -> StoreResult<Vec<bool>> {
        writes.iter().map(|w| self.store_offline(w.user, &w.msgs, w.cap)).collect()
    }
    /// Removes and returns a user's mailbox, oldest first, in one transaction.
    fn take_offline(&self, user: UserId) -> StoreResult<Vec<String>>;
    /// Reads up to `limit` messages of a user's mailbox after row `after`, oldest first, with
    /// their row ids, leaving them there (an acks session deletes what the client acknowledged).
    fn peek_offline(&self, user: UserId, after: u64, limit: usize) -> StoreResult<Vec<(u64, String)>>;
    /// Deletes rows of a user's mailbox; ids that are gone already are ignored.
    fn delete_offline(&self, user: UserId, ids: &[u64]) -> StoreResult<()>;
    /// The users with mailbox rows after row `after`, each with its newest row id, by user id;
    /// at most `limit` of them. Cheap when nothing was stored since `after`.
    fn waiting_mailboxes(&self, after: u64, limit: usize) -> StoreResult<Vec<(UserId, u64)>>;
    /// Appends messages to the log in one transaction (all or none), in order, each under a
    /// fresh mid, unless its (sender, cid) was logged at or after `dedup_since` (ms) or earlier
    /// in the batch: then `Dup` with that message's mid, and nothing is stored.
    fn log_messages(&self, batch: &[&NewMessage], dedup_since: u64) -> StoreResult<Vec<Logged>>;
    /// Removes a message from the log: it was refused after all (a full mailbox).
    fn unlog(&self, mid: Mid) -> StoreResult<()>;
    /// The newest `limit` messages of `conv` sorting before `before` (by ts, then mid), oldest
    /// first; `None` when `before` is not a message of `conv`.
    fn history(&self, conv: Conversation, before: Option<Mid>, limit: usize) -> StoreResult<Option<HistoryPage>>;
    /// Deletes the logged messages received before `ts` (ms); returns how many.
    fn prune_history(&self, ts: u64) -> StoreResult<u64>;
    /// Forgets the cids of messages received before `ts` (ms): they may be used again.
    fn prune_cids(&self, ts: u64) -> StoreResult<()>;
}

/// Opens the store named by `spec`: `sqlite:PATH`, `mysql://user:pass@host:port/db`, or
/// `memory` (nothing survives the process).
pub fn open(spec: &str, conns: usize) -> StoreResult<Box<dyn Store>> {
    let opened: StoreResult<Box<dyn Store>> = if spec == "memory" {
        Ok(Box::new(MemoryStore::default()))
    } else if let Some(path) = spec.strip_prefix("sqlite:") {
        SqliteStore::open(path, conns).map(|s| Box::new(s) as Box<dyn Store>)
    } else if spec.starts_with("mysql://") {
        MysqlStore::open(spec, conns).map(|s| Box::new(s) as Box<dyn Store>)
    } else {
        return Err(StoreError::Spec(format!(
            "unsupported store {:?}: expected sqlite:PATH, mysql://user:pass@host:port/db or memory",
            redacted(spec)
        )));
    };
    opened.map_err(|e| StoreError::Open { spec: redacted(spec), source: Box::new(e) })
}

/// `spec` with any password replaced, for messages and logs.
pub fn redacted(spec: &str) -> String {
    match (spec.find("://"), spec.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &spec[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &spec[..scheme + 3], &spec[at..]),
                None => spec.to_owned(),
            }
        }
        _ => spec.to_owned(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::{Conversation, Logged, NewMessage, Store};
    use crate::proto::message::Target;
    use crate::{GroupId, UserId};

    /// What every store must do alike.
    pub(crate) fn roundtrip(s: &dyn Store) {
        let a = s.create_user("a", "h").unwrap().unwrap();
        let b = s.create_user("b", "h").unwrap().unwrap();
        assert_eq!(s.create_user("a", "h").unwrap(), None);
        assert_eq!(s.user(a).unwrap().unwrap().name, "a");
        assert!(s.user_exists(b).unwrap() && !s.user_exists(b + 1).unwrap());
        s.add_friend(a, b).unwrap();
        s.add_friend(b, a).unwrap();
        assert_eq!(s.friends(a).unwrap(), vec![(b, "b".to_owned())]);
        assert_eq!(s.friends(b).unwrap(), vec![(a, "a".to_owned())]);
        let g = s.create_group(a, "g", "d").unwrap();
        assert!(s.join_group(g, b).unwrap());
        assert!(s.join_group(g, b).unwrap());
        assert!(!s.join_group(g + 1, b).unwrap());
        assert_eq!(s.group_members(g).unwrap(), Some(vec![a, b]));
        assert_eq!(s.group_members(g + 1).unwrap(), None);
        let groups = s.user_groups(b).unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!((groups[0].name.as_str(), groups[0].desc.as_str()), ("g", "d"));
        assert!(groups[0].members[0].creator && !groups[0].members[1].creator);
        assert!(s.store_offline(b, &["1", "2"], Some(2)).unwrap());
        assert!(!s.store_offline(b, &["3"], Some(2)).unwrap());
        assert!(s.store_offline(b, &["3"], None).unwrap());
        let rows = s.peek_offline(b, 0, 2).unwrap();
        assert_eq!(rows.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>(), ["1", "2"]);
        let rest = s.peek_offline(b, rows[1].0, 10).unwrap();
        assert_eq!(rest.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>(), ["3"]);
        s.delete_offline(b, &[rows[0].0]).unwrap();
        s.delete_offline(a, &[rows[1].0]).unwrap(); // not a's: nothing happens
        assert_eq!(s.waiting_mailboxes(0, 10).unwrap(), vec![(b, rest[0].0)]);
        assert_eq!(s.waiting_mailboxes(rows[0].0, 10).unwrap(), vec![(b, rest[0].0)]);
        assert!(s.waiting_mailboxes(rest[0].0, 10).unwrap().is_empty());
        assert!(s.waiting_mailboxes(0, 0).unwrap().is_empty());
        assert_eq!(s.take_offline(b).unwrap(), vec!["2", "3"]);
        assert!(s.take_offline(b).unwrap().is_empty());
        // A batch: in order, each write with its own cap, later ones counting earlier ones.
        let w = |user, msgs: &[&'static str], cap| super::OfflineWrite { user, msgs: msgs.to_vec(), cap };
        let batch = [w(b, &["4", "5"], Some(3)), w(a, &["x"], None), w(b, &["6", "7"], Some(3)), w(b, &["8"], Some(3))];
        assert_eq!(s.store_offline_batch(&batch).unwrap(), vec![true, true, false, true]);
        assert_eq!(s.take_offline(b).unwrap(), vec!["4", "5", "8"]);
        assert_eq!(s.take_offline(a).unwrap(), vec!["x"]);
        message_log(s, a, b, g);
    }

    fn message_log(s: &dyn Store, a: UserId, b: UserId, g: GroupId) {
        let new = |from: UserId, to: Target, msg: &str, ts: u64, cid: Option<&str>| NewMessage {
            from,
            name: if from == a { "a" } else { "b" }.into(),
            to,
            msg: msg.to_owned(),
            time: "t".to_owned(),
            ts,
            cid: cid.map(str::to_owned),
        };
        let batch = [
            new(a, Target::User(b), "one", 10, Some("c1")),
            new(b, Target::User(a), "two", 10, Some("c1")),
            new(a, Target::User(b), "one again", 11, Some("c1")),
            new(a, Target::Group(g), "to the group", 12, None),
            new(a, Target::User(b), "three", 13, None),
        ];
        let all: Vec<&NewMessage> = batch.iter().collect();
        let logged = s.log_messages(&all, 0).unwrap();
        let Logged::Fresh(m1) = logged[0] else { panic!("{logged:?}") };
        assert!(matches!(logged[1], Logged::Fresh(m) if m > m1), "cids are per sender");
        assert_eq!(logged[2], Logged::Dup(m1), "a cid seen earlier in the batch");
        assert_eq!(s.log_messages(&all[..1], 5).unwrap(), vec![Logged::Dup(m1)], "seen in the window");
        let late = NewMessage { ts: 20, ..batch[0].clone() };
        let again = s.log_messages(&[&late], 11).unwrap();
        assert!(matches!(again[0], Logged::Fresh(m) if m > m1), "older than the window: accepted again");
        let Logged::Fresh(m3) = logged[4] else { panic!() };

        let pair = Conversation::of(b, Target::User(a));
        let page = s.history(pair, None, 2).unwrap().unwrap();
        let texts: Vec<&str> = page.messages.iter().map(|m| &*m.msg).collect();
        assert_eq!(texts, ["three", "one"], "the newest two, oldest first (ts, then mid)");
        assert!(page.more);
        assert_eq!(page.messages[0].mid, Some(m3));
        assert_eq!(page.messages[1].cid.as_deref(), Some("c1"));
        let older = s.history(pair, Some(m3), 10).unwrap().unwrap();
        let texts: Vec<&str> = older.messages.iter().map(|m| &*m.msg).collect();
        assert_eq!(texts, ["one", "two"]);
        assert!(!older.more);
        let group = s.history(Conversation::Group(g), None, 10).unwrap().unwrap();
        assert_eq!(group.messages.len(), 1);
        assert_eq!((group.messages[0].to, &*group.messages[0].name), (Target::Group(g), "a"));
        assert_eq!(s.history(Conversation::Group(g), Some(m3), 10).unwrap(), None, "not of this conversation");

        s.unlog(m3).unwrap();
        assert_eq!(s.history(pair, None, 10).unwrap().unwrap().messages.len(), 3);
        assert_eq!(s.prune_history(11).unwrap(), 2, "the two at ts 10");
        assert_eq!(s.history(pair, None, 10).unwrap().unwrap().messages.len(), 1);
    }

    #[test]
    fn the_memory_store_keeps_the_contract() {
        roundtrip(&super::MemoryStore::default());
    }
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(super::redacted("mysql://chat:s3cret@db:3306/chat"), "mysql://chat:***@db:3306/chat");
        assert_eq!(super::redacted("mysql://root@db/chat"), "mysql://root@db/chat");
        assert_eq!(super::redacted("sqlite:a@b.db"), "sqlite:a@b.db");
    }
}
