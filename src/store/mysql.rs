//! The cluster store: MySQL or MariaDB through a connection pool, prepared statements, and a
//! transaction wherever one step writes twice or reads what it then deletes.

use std::time::Duration;

use mysql::prelude::{FromRow, Queryable};
use mysql::{params::Params, Opts, OptsBuilder, Pool, PoolConstraints, PoolOpts, PooledConn, Transaction, TxOpts};

use std::collections::HashMap;

use mysql::Value;

use super::{
    logged_message, Conversation, GroupRecord, HistoryPage, Logged, MemberRecord, Mid, NewMessage, Store, StoreError,
    StoreResult, UserRecord,
};
use crate::proto::message::Target;
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

    fn set_password(&self, id: UserId, password_hash: &str) -> StoreResult<()> {
        Ok(self.conn()?.exec_drop("UPDATE User SET password = ? WHERE id = ?", (password_hash, id))?)
    }

    fn password_samples(&self, limit: usize) -> StoreResult<Vec<String>> {
        Ok(self.conn()?.exec("SELECT password FROM User ORDER BY id DESC LIMIT ?", (limit as u64,))?)
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

    fn peek_offline(&self, user: UserId, after: u64, limit: usize) -> StoreResult<Vec<(u64, String)>> {
        self.rows(
            "SELECT id, message FROM OfflineMessage WHERE userid = ? AND id > ? ORDER BY id LIMIT ?",
            (user, after, limit as u64),
        )
    }

    fn delete_offline(&self, user: UserId, ids: &[u64]) -> StoreResult<()> {
        self.transaction(|tx| {
            // Locked as every other read-then-write of a mailbox is (see LOCK_MAILBOX).
            tx.exec_drop(LOCK_MAILBOX, (user,))?;
            for chunk in ids.chunks(MAX_ROWS) {
                let sql = format!(
                    "DELETE FROM OfflineMessage WHERE userid = ? AND id IN ({})",
                    vec!["?"; chunk.len()].join(", ")
                );
                let mut params: Vec<Value> = vec![user.into()];
                params.extend(chunk.iter().map(|&id| Value::from(id)));
                tx.exec_drop(sql, params)?;
            }
            Ok(())
        })
    }

    fn waiting_mailboxes(&self, after: u64, limit: usize) -> StoreResult<Vec<(UserId, u64)>> {
        self.rows(
            "SELECT userid, MAX(id) FROM OfflineMessage WHERE id > ? GROUP BY userid ORDER BY userid LIMIT ?",
            (after, limit as u64),
        )
    }

    fn log_messages(&self, batch: &[&NewMessage], dedup_since: u64) -> StoreResult<Vec<Logged>> {
        let logged = self.transaction(|tx| {
            // Earlier messages under the batch's cids, in one query per chunk.
            let mut earlier: HashMap<(UserId, String), (Mid, u64)> = HashMap::new();
            let keyed: Vec<(UserId, &str)> = batch.iter().filter_map(|m| Some((m.from, m.cid.as_deref()?))).collect();
            for chunk in keyed.chunks(MAX_ROWS) {
                let sql = format!(
                    "SELECT sender, cid, mid, ts FROM MessageCid WHERE (sender, cid) IN ({})",
                    vec!["(?, ?)"; chunk.len()].join(", ")
                );
                let params: Vec<Value> = chunk.iter().flat_map(|&(u, c)| [u.into(), c.into()]).collect();
                let rows: Vec<(UserId, String, Mid, u64)> = tx.exec(sql, params)?;
                earlier.extend(rows.into_iter().map(|(u, c, mid, ts)| ((u, c), (mid, ts))));
            }
            let fresh = batch.iter().filter(|m| !is_dup(m, &earlier, dedup_since)).count();
            // Mids for the batch, reserved under the counter's row lock.
            tx.exec_drop("UPDATE MessageSeq SET next = LAST_INSERT_ID(next + ?) WHERE id = 1", (fresh,))?;
            if tx.affected_rows() != 1 && fresh > 0 {
                return Ok(None); // the counter row is gone (edited by hand)
            }
            let end: u64 = tx.exec_first("SELECT LAST_INSERT_ID()", ())?.unwrap_or(0);
            let mut next = end.saturating_sub(fresh as u64);
            let (mut out, mut rows, mut cids) = (Vec::with_capacity(batch.len()), Vec::new(), Vec::new());
            let mut seen: HashMap<(UserId, &str), Mid> = HashMap::new();
            for &m in batch {
                if let Some(cid) = m.cid.as_deref() {
                    if let Some(&mid) = seen.get(&(m.from, cid)) {
                        out.push(Logged::Dup(mid));
                        continue;
                    }
                    match earlier.get(&(m.from, cid.to_owned())) {
                        Some(&(mid, ts)) if ts >= dedup_since => {
                            out.push(Logged::Dup(mid));
                            continue;
                        }
                        _ => {}
                    }
                    seen.insert((m.from, cid), next);
                    cids.push((m.from, cid, next, m.ts));
                }
                rows.push((next, m));
                out.push(Logged::Fresh(next));
                next += 1;
            }
            for chunk in cids.chunks(MAX_ROWS) {
                let sql = format!(
                    "INSERT INTO MessageCid (sender, cid, mid, ts) VALUES {}
                     ON DUPLICATE KEY UPDATE mid = VALUES(mid), ts = VALUES(ts)",
                    vec!["(?, ?, ?, ?)"; chunk.len()].join(", ")
                );
                let params: Vec<Value> =
                    chunk.iter().flat_map(|&(u, c, mid, ts)| [u.into(), c.into(), mid.into(), ts.into()]).collect();
                tx.exec_drop(sql, params)?;
            }
            for chunk in rows.chunks(MAX_ROWS) {
                let sql = format!(
                    "INSERT INTO Message (mid, conv, sender, name, toid, groupid, msg, sendtime, ts, cid) VALUES {}",
                    vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
                );
                let mut params: Vec<Value> = Vec::with_capacity(chunk.len() * 10);
                for &(mid, m) in chunk {
                    let m: &NewMessage = m;
                    let (toid, groupid) = match m.to {
                        Target::User(u) => (Some(u), None),
                        Target::Group(g) => (None, Some(g)),
                    };
                    params.extend([
                        mid.into(),
                        Conversation::of(m.from, m.to).key().into(),
                        m.from.into(),
                        (*m.name).into(),
                        toid.into(),
                        groupid.into(),
                        m.msg.as_str().into(),
                        m.time.as_str().into(),
                        m.ts.into(),
                        m.cid.as_deref().into(),
                    ]);
                }
                tx.exec_drop(sql, params)?;
            }
            Ok(Some(out))
        })?;
        logged.ok_or(StoreError::OutOfRange("the MessageSeq row is missing"))
    }

    fn unlog(&self, mid: Mid) -> StoreResult<()> {
        self.transaction(|tx| {
            tx.exec_drop(
                "DELETE c FROM MessageCid c JOIN Message m ON m.sender = c.sender AND m.cid = c.cid
                 WHERE m.mid = ? AND c.mid = ?",
                (mid, mid),
            )?;
            tx.exec_drop("DELETE FROM Message WHERE mid = ?", (mid,))
        })
    }

    fn history(&self, conv: Conversation, before: Option<Mid>, limit: usize) -> StoreResult<Option<HistoryPage>> {
        let key = conv.key();
        let mut conn = self.conn()?;
        let bound = match before {
            None => (u64::MAX, Mid::MAX),
            Some(mid) => {
                let ts: Option<u64> =
                    conn.exec_first("SELECT ts FROM Message WHERE mid = ? AND conv = ?", (mid, &key))?;
                match ts {
                    Some(ts) => (ts, mid),
                    None => return Ok(None),
                }
            }
        };
        type Row = (Mid, UserId, String, Option<UserId>, Option<GroupId>, String, String, u64, Option<String>);
        let rows: Vec<Row> = conn.exec(
            "SELECT mid, sender, name, toid, groupid, msg, sendtime, ts, cid FROM Message
             WHERE conv = ? AND (ts < ? OR (ts = ? AND mid < ?)) ORDER BY ts DESC, mid DESC LIMIT ?",
            (&key, bound.0, bound.0, bound.1, limit as u64 + 1),
        )?;
        let mut messages: Vec<_> = rows
            .into_iter()
            .filter_map(|(mid, from, name, toid, groupid, msg, time, ts, cid)| {
                logged_message(mid, from, name, toid, groupid, msg, time, ts, cid)
            })
            .collect();
        let more = messages.len() > limit;
        messages.truncate(limit);
        messages.reverse();
        Ok(Some(HistoryPage { messages, more }))
    }

    fn prune_cids(&self, ts: u64) -> StoreResult<()> {
        Ok(self.conn()?.exec_drop("DELETE FROM MessageCid WHERE ts < ?", (ts,))?)
    }

    /// In chunks, each its own transaction, locking few rows at a time.
    fn prune_history(&self, ts: u64) -> StoreResult<u64> {
        let mut conn = self.conn()?;
        let mut total = 0;
        loop {
            conn.exec_drop("DELETE FROM Message WHERE ts < ? ORDER BY ts LIMIT 1000", (ts,))?;
            let n = conn.affected_rows();
            total += n;
            if n < 1000 {
                return Ok(total);
            }
        }
    }
}

/// Rows per multi-row statement: well under the 65,535 placeholders a statement may have.
const MAX_ROWS: usize = 500;

fn is_dup(m: &NewMessage, earlier: &HashMap<(UserId, String), (Mid, u64)>, dedup_since: u64) -> bool {
    // Duplicates inside the batch are found later; counting them as fresh only wastes a mid.
    m.cid.as_ref().is_some_and(|cid| earlier.get(&(m.from, cid.clone())).is_some_and(|&(_, ts)| ts >= dedup_since))
}
