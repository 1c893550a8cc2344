//! Durable data: users, friends, groups and offline messages.
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

use crate::{GroupId, UserId};

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
    /// Removes and returns a user's mailbox, oldest first, in one transaction.
    fn take_offline(&self, user: UserId) -> StoreResult<Vec<String>>;
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
    use super::Store;

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
        assert_eq!(s.take_offline(b).unwrap(), vec!["1", "2", "3"]);
        assert!(s.take_offline(b).unwrap().is_empty());
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
