//! The embedded store: one SQLite file in WAL mode, a few connections so readers run in parallel.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use std::collections::HashMap;

use super::{
    logged_message, Conversation, GroupRecord, HistoryPage, Logged, MemberRecord, Mid, NewMessage, Store, StoreError,
    StoreResult, UserRecord,
};
use crate::proto::message::Target;
use crate::{GroupId, UserId};

const SCHEMA: &str = include_str!("sqlite_schema.sql");

#[derive(Debug)]
pub struct SqliteStore {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

/// Ids are `INTEGER` in SQLite; anything outside `u32` means the file was edited by hand.
fn id_of(v: i64) -> rusqlite::Result<u32> {
    u32::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, v))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with `conns` connections.
    pub fn open(path: impl AsRef<Path>, conns: usize) -> StoreResult<SqliteStore> {
        let path = path.as_ref();
        let mut all = Vec::new();
        for i in 0..conns.max(1) {
            let conn = Connection::open(path)
                .map_err(|e| StoreError::Open { spec: path.display().to_string(), source: Box::new(e.into()) })?;
            conn.busy_timeout(Duration::from_secs(5))?;
            // WAL lets readers run beside the writer. NORMAL syncs at checkpoints, not at every
            // commit: a committed message survives a crash of the process (kill -9), not the
            // loss of power or of the machine (that takes FULL, an fsync per batch).
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.pragma_update(None, "foreign_keys", "OFF")?;
            if i == 0 {
                conn.execute_batch(SCHEMA)?;
            }
            all.push(Mutex::new(conn));
        }
        Ok(SqliteStore { conns: all, next: AtomicUsize::new(0) })
    }

    /// Runs `f` on a free connection, or waits for one.
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        let result = match self.conns.iter().find_map(|c| c.try_lock()) {
            Some(mut conn) => f(&mut conn),
            None => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
                f(&mut self.conns[i].lock())
            }
        };
        Ok(result?)
    }
}

impl Store for SqliteStore {
    fn create_user(&self, name: &str, password_hash: &str) -> StoreResult<Option<UserId>> {
        self.with(|c| {
            let inserted =
                c.execute("INSERT OR IGNORE INTO User (name, password) VALUES (?1, ?2)", params![name, password_hash])?;
            if inserted == 0 {
                return Ok(None);
            }
            id_of(c.last_insert_rowid()).map(Some)
        })
    }

    fn user(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        self.with(|c| {
            c.prepare_cached("SELECT name, password FROM User WHERE id = ?1")?
                .query_row([id], |r| Ok(UserRecord { id, name: r.get(0)?, password: r.get(1)? }))
                .optional()
        })
    }

    fn user_exists(&self, id: UserId) -> StoreResult<bool> {
        self.with(|c| c.prepare_cached("SELECT 1 FROM User WHERE id = ?1")?.exists([id]))
    }

    fn set_state(&self, id: UserId, online: bool) -> StoreResult<()> {
        let state = if online { "online" } else { "offline" };
        self.with(|c| {
            c.prepare_cached("UPDATE User SET state = ?2 WHERE id = ?1")?.execute(params![id, state]).map(drop)
        })
    }

    fn add_friend(&self, a: UserId, b: UserId) -> StoreResult<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("INSERT OR IGNORE INTO Friend (userid, friendid) VALUES (?1, ?2), (?2, ?1)", params![a, b])?;
            tx.commit()
        })
    }

    fn friends(&self, id: UserId) -> StoreResult<Vec<(UserId, String)>> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT u.id, u.name FROM Friend f JOIN User u ON u.id = f.friendid WHERE f.userid = ?1 ORDER BY u.id",
            )?;
            let rows = st.query_map([id], |r| Ok((id_of(r.get(0)?)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    fn create_group(&self, creator: UserId, name: &str, desc: &str) -> StoreResult<GroupId> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("INSERT INTO AllGroup (groupname, groupdesc) VALUES (?1, ?2)", params![name, desc])?;
            let id = id_of(tx.last_insert_rowid())?;
            tx.execute(
                "INSERT INTO GroupUser (groupid, userid, grouprole) VALUES (?1, ?2, 'creator')",
                params![id, creator],
            )?;
            tx.commit()?;
            Ok(id)
        })
    }

    fn join_group(&self, group: GroupId, user: UserId) -> StoreResult<bool> {
        self.with(|c| {
            let joined = c.execute(
                "INSERT OR IGNORE INTO GroupUser (groupid, userid, grouprole)
                 SELECT id, ?2, 'normal' FROM AllGroup WHERE id = ?1",
                params![group, user],
            )?;
            Ok(joined > 0 || c.prepare_cached("SELECT 1 FROM AllGroup WHERE id = ?1")?.exists([group])?)
        })
    }

    fn group_members(&self, group: GroupId) -> StoreResult<Option<Vec<UserId>>> {
        self.with(|c| {
            if !c.prepare_cached("SELECT 1 FROM AllGroup WHERE id = ?1")?.exists([group])? {
                return Ok(None);
            }
            let mut st = c.prepare_cached("SELECT userid FROM GroupUser WHERE groupid = ?1 ORDER BY userid")?;
            let rows = st.query_map([group], |r| id_of(r.get(0)?))?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map(Some)
        })
    }

    fn user_groups(&self, user: UserId) -> StoreResult<Vec<GroupRecord>> {
        self.with(|c| {
            let tx = c.transaction()?;
            let mut groups: Vec<GroupRecord> = {
                let mut st = tx.prepare_cached(
                    "SELECT g.id, g.groupname, g.groupdesc FROM AllGroup g
                     JOIN GroupUser gu ON gu.groupid = g.id WHERE gu.userid = ?1 ORDER BY g.id",
                )?;
                let rows = st.query_map([user], |r| {
                    Ok(GroupRecord { id: id_of(r.get(0)?)?, name: r.get(1)?, desc: r.get(2)?, members: Vec::new() })
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut st = tx.prepare_cached(
                "SELECT u.id, u.name, gu.grouprole FROM GroupUser gu
                 JOIN User u ON u.id = gu.userid WHERE gu.groupid = ?1 ORDER BY u.id",
            )?;
            for g in &mut groups {
                let rows = st.query_map([g.id], |r| {
                    let role: String = r.get(2)?;
                    Ok(MemberRecord { id: id_of(r.get(0)?)?, name: r.get(1)?, creator: role == "creator" })
                })?;
                g.members = rows.collect::<rusqlite::Result<_>>()?;
            }
            drop(st);
            tx.commit()?;
            Ok(groups)
        })
    }

    fn store_offline(&self, user: UserId, msgs: &[&str], cap: Option<usize>) -> StoreResult<bool> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if let Some(cap) = cap {
                let held: i64 = tx
                    .prepare_cached("SELECT COUNT(*) FROM OfflineMessage WHERE userid = ?1")?
                    .query_row([user], |r| r.get(0))?;
                if usize::try_from(held).unwrap_or(usize::MAX).saturating_add(msgs.len()) > cap {
                    return Ok(false);
                }
            }
            {
                let mut st = tx.prepare_cached("INSERT INTO OfflineMessage (userid, message) VALUES (?1, ?2)")?;
                for m in msgs {
                    st.execute(params![user, m])?;
                }
            }
            tx.commit()?;
            Ok(true)
        })
    }

    fn take_offline(&self, user: UserId) -> StoreResult<Vec<String>> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let msgs = {
                let mut st = tx.prepare_cached("SELECT message FROM OfflineMessage WHERE userid = ?1 ORDER BY id")?;
                let rows = st.query_map([user], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<Vec<String>>>()?
            };
            if !msgs.is_empty() {
                tx.execute("DELETE FROM OfflineMessage WHERE userid = ?1", [user])?;
            }
            tx.commit()?;
            Ok(msgs)
        })
    }

    fn peek_offline(&self, user: UserId, after: u64, limit: usize) -> StoreResult<Vec<(u64, String)>> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT id, message FROM OfflineMessage WHERE userid = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            )?;
            let rows = st.query_map(params![user, after as i64, limit as i64], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })?;
            rows.collect()
        })
    }

    fn delete_offline(&self, user: UserId, ids: &[u64]) -> StoreResult<()> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut st = tx.prepare_cached("DELETE FROM OfflineMessage WHERE userid = ?1 AND id = ?2")?;
                for &id in ids {
                    st.execute(params![user, id as i64])?;
                }
            }
            tx.commit()
        })
    }

    fn log_messages(&self, batch: &[&NewMessage], dedup_since: u64) -> StoreResult<Vec<Logged>> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut out = Vec::with_capacity(batch.len());
            let mut next: i64 = tx.query_row("SELECT next FROM MessageSeq WHERE id = 1", [], |r| r.get(0))?;
            {
                let mut seen = HashMap::new();
                let mut find = tx.prepare_cached("SELECT mid, ts FROM Message WHERE sender = ?1 AND cid = ?2")?;
                let mut forget = tx.prepare_cached("UPDATE Message SET cid = NULL WHERE mid = ?1")?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO Message (mid, conv, sender, name, toid, groupid, msg, sendtime, ts, cid)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                for &m in batch {
                    if let Some(cid) = &m.cid {
                        if let Some(&mid) = seen.get(&(m.from, cid.as_str())) {
                            out.push(Logged::Dup(mid));
                            continue;
                        }
                        let earlier: Option<(i64, i64)> =
                            find.query_row(params![m.from, cid], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
                        match earlier {
                            Some((mid, ts)) if ts >= dedup_since as i64 => {
                                out.push(Logged::Dup(mid as Mid));
                                continue;
                            }
                            Some((mid, _)) => drop(forget.execute([mid])?),
                            None => {}
                        }
                        seen.insert((m.from, cid.as_str()), next as Mid);
                    }
                    let (toid, groupid) = match m.to {
                        Target::User(u) => (Some(u), None),
                        Target::Group(g) => (None, Some(g)),
                    };
                    let conv = Conversation::of(m.from, m.to).key();
                    insert.execute(params![
                        next,
                        conv,
                        m.from,
                        &*m.name,
                        toid,
                        groupid,
                        m.msg,
                        m.time,
                        m.ts as i64,
                        m.cid
                    ])?;
                    out.push(Logged::Fresh(next as Mid));
                    next += 1;
                }
            }
            tx.execute("UPDATE MessageSeq SET next = ?1 WHERE id = 1", [next])?;
            tx.commit()?;
            Ok(out)
        })
    }

    fn unlog(&self, mid: Mid) -> StoreResult<()> {
        self.with(|c| c.execute("DELETE FROM Message WHERE mid = ?1", [mid as i64]).map(drop))
    }

    fn history(&self, conv: Conversation, before: Option<Mid>, limit: usize) -> StoreResult<Option<HistoryPage>> {
        self.with(|c| {
            let key = conv.key();
            let tx = c.transaction()?;
            let bound = match before {
                None => (i64::MAX, i64::MAX),
                Some(mid) => {
                    let ts: Option<i64> = tx
                        .prepare_cached("SELECT ts FROM Message WHERE mid = ?1 AND conv = ?2")?
                        .query_row(params![mid as i64, key], |r| r.get(0))
                        .optional()?;
                    match ts {
                        Some(ts) => (ts, mid as i64),
                        None => return Ok(None),
                    }
                }
            };
            let mut st = tx.prepare_cached(
                "SELECT mid, sender, name, toid, groupid, msg, sendtime, ts, cid FROM Message
                 WHERE conv = ?1 AND (ts < ?2 OR (ts = ?2 AND mid < ?3))
                 ORDER BY ts DESC, mid DESC LIMIT ?4",
            )?;
            let rows = st.query_map(params![key, bound.0, bound.1, limit as i64 + 1], |r| {
                Ok(logged_message(
                    r.get::<_, i64>(0)? as Mid,
                    id_of(r.get(1)?)?,
                    r.get(2)?,
                    r.get::<_, Option<i64>>(3)?.map(id_of).transpose()?,
                    r.get::<_, Option<i64>>(4)?.map(id_of).transpose()?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get::<_, i64>(7)? as u64,
                    r.get(8)?,
                ))
            })?;
            let mut messages: Vec<_> = rows.collect::<rusqlite::Result<Vec<_>>>()?.into_iter().flatten().collect();
            let more = messages.len() > limit;
            messages.truncate(limit);
            messages.reverse();
            Ok(Some(HistoryPage { messages, more }))
        })
    }

    fn prune_history(&self, ts: u64) -> StoreResult<u64> {
        self.with(|c| c.execute("DELETE FROM Message WHERE ts < ?1", [ts as i64]).map(|n| n as u64))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        super::super::tests::roundtrip(&super::SqliteStore::open(dir.path().join("t.db"), 2).unwrap());
    }
}
