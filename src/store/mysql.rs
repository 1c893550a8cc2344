//! The cluster store: MySQL or MariaDB through a connection pool, prepared statements, and a
//! transaction wherever one step writes twice or reads what it then deletes.

use std::time::Duration;

use mysql::prelude::{FromRow, Queryable};
use mysql::{params::Params, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, PooledConn, Transaction, TxOpts};

use super::{GroupRecord, MemberRecord, Store, StoreError, StoreResult, UserRecord};
use crate::{GroupId, UserId};

const SCHEMA: &str = include_str!("../../schema.sql");
/// Every read-then-write of a mailbox, from any node, first locks its owner's `User` row: one
/// row lock taken first puts them in one order. Locking the mailbox rows themselves would take
/// gap locks, which do not exclude each other, so two inserts could each wait for the other.
const LOCK_MAILBOX: &str = "SELECT id FROM User WHERE id = ? FOR UPDATE";
/// Network timeouts: a request needing a dead database fails with errno 10 instead of hanging.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct MysqlStore {
    pool: Pool,
}

impl From<mysql::Error> for StoreError {
    fn from(e: mysql::Error) -> Self {
        match &e {
            mysql::Error::MySqlError(m) if matches!(m.code, 1205 | 1213) => StoreError::Conflict(e),
            _ => StoreError::Mysql(e),
        }
    }
}

/// `schema.sql` as statements: comments dropped, split at `;`.
fn schema_statements() -> impl Iterator<Item = String> {
    let text: String = SCHEMA.lines().filter(|l| !l.trim_start().starts_with("--")).map(|l| format!("{l}\n")).collect();
    text.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>().into_iter()
}

impl MysqlStore {
    /// Connects to `url` (`mysql://user:pass@host:port/db`) with up to `conns` connections and
    /// creates the tables that are missing.
    pub fn open(url: &str, conns: usize) -> StoreResult<MysqlStore> {
        let opts = Opts::from_url(url).map_err(|e| StoreError::Spec(format!("bad url: {e}")))?;
        let constraints = PoolConstraints::new(1, conns.max(1)).unwrap_or_default();
        let opts = OptsBuilder::from_opts(opts)
            .tcp_connect_timeout(Some(IO_TIMEOUT))
            .read_timeout(Some(IO_TIMEOUT))
            .write_timeout(Some(IO_TIMEOUT))
            .pool_opts(PoolOpts::default().with_constraints(constraints));
        let pool = Pool::new(opts)?;
        let store = MysqlStore { pool };
        let mut conn = store.conn()?;
        for statement in schema_statements() {
            conn.query_drop(statement)?;
        }
        Ok(store)
    }

    /// Runs `body` in a transaction and commits it; a transaction the server chose as a
    /// deadlock victim (1213) or that waited too long for a lock (1205) is tried again, as the
    /// server advises: both roll back whole.
    fn transaction<T>(&self, mut body: impl FnMut(&mut Transaction<'_>) -> mysql::Result<T>) -> StoreResult<T> {
        let mut conn = self.conn()?;
        let mut attempt = 1;
        loop {
            let result = conn.start_transaction(TxOpts::default()).and_then(|mut tx| {
                let value = body(&mut tx)?;
                tx.commit()?;
                Ok(value)
            });
            match result {
                Err(mysql::Error::MySqlError(e)) if matches!(e.code, 1205 | 1213) && attempt < 3 => {
                    log::warn!("store: {e}; trying again");
                    attempt += 1;
                }
                other => return Ok(other?),
            }
        }
    }

    fn conn(&self) -> StoreResult<PooledConn> {
        Ok(self.pool.try_get_conn(IO_TIMEOUT)?)
    }

    fn rows<T: FromRow>(&self, sql: &str, params: impl Into<Params>) -> StoreResult<Vec<T>> {
        Ok(self.conn()?.exec(sql, params)?)
    }
}

fn role(creator: bool) -> &'static str {
    if creator {
        "creator"
    } else {
        "normal"
    }
}

impl Store for MysqlStore {
    fn create_user(&self, name: &str, password_hash: &str) -> StoreResult<Option<UserId>> {
        let mut conn = self.conn()?;
        conn.exec_drop("INSERT IGNORE INTO User (name, password) VALUES (?, ?)", (name, password_hash))?;
        if conn.affected_rows() == 0 {
            return Ok(None);
        }
        let id = u32::try_from(conn.last_insert_id()).map_err(|_| StoreError::OutOfRange("user id"))?;
        Ok(Some(id))
    }

    fn user(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        let row: Option<(String, String)> =
            self.conn()?.exec_first("SELECT name, password FROM User WHERE id = ?", (id,))?;
        Ok(row.map(|(name, password)| UserRecord { id, name, password }))
    }

    fn user_exists(&self, id: UserId) -> StoreResult<bool> {
        Ok(self.conn()?.exec_first::<u8, _, _>("SELECT 1 FROM User WHERE id = ?", (id,))?.is_some())
    }

    fn set_state(&self, id: UserId, online: bool) -> StoreResult<()> {
        Ok(self
            .conn()?
            .exec_drop("UPDATE User SET state = ? WHERE id = ?", (if online { "online" } else { "offline" }, id))?)
    }

    fn add_friend(&self, a: UserId, b: UserId) -> StoreResult<()> {
        // One statement, two rows: atomic without a transaction.
        Ok(self
            .conn()?
            .exec_drop("INSERT IGNORE INTO Friend (userid, friendid) VALUES (?, ?), (?, ?)", (a, b, b, a))?)
    }

    fn friends(&self, id: UserId) -> StoreResult<Vec<(UserId, String)>> {
        self.rows(
            "SELECT u.id, u.name FROM Friend f JOIN User u ON u.id = f.friendid WHERE f.userid = ? ORDER BY u.id",
            (id,),
        )
    }

    fn create_group(&self, creator: UserId, name: &str, desc: &str) -> StoreResult<GroupId> {
        let id = self.transaction(|tx| {
            tx.exec_drop("INSERT INTO AllGroup (groupname, groupdesc) VALUES (?, ?)", (name, desc))?;
            let id = tx.last_insert_id().and_then(|id| u32::try_from(id).ok());
            if let Some(id) = id {
                tx.exec_drop(
                    "INSERT INTO GroupUser (groupid, userid, grouprole) VALUES (?, ?, ?)",
                    (id, creator, role(true)),
                )?;
            }
            Ok(id)
        })?;
        id.ok_or(StoreError::OutOfRange("group id"))
    }

    fn join_group(&self, group: GroupId, user: UserId) -> StoreResult<bool> {
        let mut conn = self.conn()?;
        conn.exec_drop(
            "INSERT IGNORE INTO GroupUser (groupid, userid, grouprole) SELECT id, ?, 'normal' FROM AllGroup WHERE id = ?",
            (user, group),
        )?;
        if conn.affected_rows() > 0 {
            return Ok(true);
        }
        Ok(conn.exec_first::<u8, _, _>("SELECT 1 FROM AllGroup WHERE id = ?", (group,))?.is_some())
    }

    fn group_members(&self, group: GroupId) -> StoreResult<Option<Vec<UserId>>> {
        let mut conn = self.conn()?;
        if conn.exec_first::<u8, _, _>("SELECT 1 FROM AllGroup WHERE id = ?", (group,))?.is_none() {
            return Ok(None);
        }
        Ok(Some(conn.exec("SELECT userid FROM GroupUser WHERE groupid = ? ORDER BY userid", (group,))?))
    }

    fn user_groups(&self, user: UserId) -> StoreResult<Vec<GroupRecord>> {
        let mut conn = self.conn()?;
        let groups: Vec<(GroupId, String, String)> = conn.exec(
            "SELECT g.id, g.groupname, g.groupdesc FROM AllGroup g
             JOIN GroupUser gu ON gu.groupid = g.id WHERE gu.userid = ? ORDER BY g.id",
            (user,),
        )?;
        let mut out = Vec::with_capacity(groups.len());
        for (id, name, desc) in groups {
            let members: Vec<(UserId, String, String)> = conn.exec(
                "SELECT u.id, u.name, gu.grouprole FROM GroupUser gu
                 JOIN User u ON u.id = gu.userid WHERE gu.groupid = ? ORDER BY u.id",
                (id,),
            )?;
            let members = members
                .into_iter()
                .map(|(id, name, role)| MemberRecord { id, name, creator: role == "creator" })
                .collect();
            out.push(GroupRecord { id, name, desc, members });
        }
        Ok(out)
    }

    fn store_offline(&self, user: UserId, msgs: &[&str], cap: Option<usize>) -> StoreResult<bool> {
        self.transaction(|tx| {
            tx.exec_drop(LOCK_MAILBOX, (user,))?;
            if let Some(cap) = cap {
                let held: u64 =
                    tx.exec_first("SELECT COUNT(*) FROM OfflineMessage WHERE userid = ?", (user,))?.unwrap_or(0);
                if usize::try_from(held).unwrap_or(usize::MAX).saturating_add(msgs.len()) > cap {
                    return Ok(false);
                }
            }
            tx.exec_batch(
                "INSERT INTO OfflineMessage (userid, message) VALUES (?, ?)",
                msgs.iter().map(|m| (user, *m)),
            )?;
            Ok(true)
        })
    }

    fn take_offline(&self, user: UserId) -> StoreResult<Vec<String>> {
        self.transaction(|tx| {
            tx.exec_drop(LOCK_MAILBOX, (user,))?;
            let rows: Vec<(u64, String)> =
                tx.exec("SELECT id, message FROM OfflineMessage WHERE userid = ? ORDER BY id", (user,))?;
            if let Some((last, _)) = rows.last() {
                tx.exec_drop("DELETE FROM OfflineMessage WHERE userid = ? AND id <= ?", (user, last))?;
            }
            Ok(rows.into_iter().map(|(_, m)| m).collect())
        })
    }
}
