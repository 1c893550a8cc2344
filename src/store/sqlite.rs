//! The embedded store: one SQLite file in WAL mode, a few connections so readers run in parallel.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, ToSql};

use std::collections::HashMap;

use super::{
    logged_message, Conversation, GroupRecord, HistoryPage, Logged, MemberRecord, Mid, NewMessage, OfflineWrite, Store,
    StoreError, StoreResult, UserRecord,
};
use crate::proto::message::Target;
use crate::{GroupId, UserId};

const SCHEMA: &str = include_str!("sqlite_schema.sql");
/// Rows per multi-row insert into the log.
const INSERT_ROWS: usize = 64;
const INSERT_MESSAGE: &str = "INSERT INTO Message (mid, conv, sender, name, toid, groupid, msg, sendtime, ts, cid)";

/// One log row's values, owned where they are computed.
struct MessageColumns<'a> {
    ints: [i64; 3],
    m: &'a NewMessage,
    name: &'a str,
    toid: Option<UserId>,
    groupid: Option<GroupId>,
}

impl MessageColumns<'_> {
    /// In `INSERT_MESSAGE` order.
    fn params(&self) -> impl Iterator<Item = &dyn ToSql> {
        let [mid, conv, ts] = &self.ints;
        let m = self.m;
        [mid as &dyn ToSql, conv, &m.from, &self.name, &self.toid, &self.groupid, &m.msg, &m.time, ts, &m.cid]
            .into_iter()
    }
}

fn columns(mid: Mid, m: &NewMessage) -> MessageColumns<'_> {
    let (toid, groupid) = match m.to {
        Target::User(u) => (Some(u), None),
        Target::Group(g) => (None, Some(g)),
    };
    let ints = [mid as i64, Conversation::of(m.from, m.to).key(), m.ts as i64];
    MessageColumns { ints, m, name: &m.name, toid, groupid }
}

/// Messages deleted per transaction by the retention.
const PRUNE_CHUNK: usize = 1000;

#[derive(Debug)]
pub struct SqliteStore {
    /// Every write goes through this one connection. SQLite lets one writer in at a time, and
    /// a connection that finds another writing waits in its busy handler, which sleeps (1, 2,
    /// 5, 10 ms and on): writers queue here instead, and share commits.
    writer: SharedCommit,
    /// Readers, beside the writer (WAL).
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
    /// The next mid. This process is the database's only writer (one node), so the counter
    /// lives here instead of in a row every commit would write; `MessageSeq` keeps what a
    /// restart could not see in `Message` (a removed last message).
    next_mid: Mutex<Mid>,
}

/// Most writes one commit carries, and the longest a transaction stays open for more: a
/// writer waits for its commit at most about this long behind others' writes.
const COMMIT_WRITES: usize = 256;
const COMMIT_OPEN: Duration = Duration::from_millis(1);

/// The writer connection, shared by every thread that writes, with commits shared too: a
/// writer that sees others queued behind it leaves the transaction open for them and waits,
/// and the last of the queue (or the one that reaches a bound) commits for all. A commit is
/// most of a small write's cost (WAL frames, checksums, locks), and the log writer, the
/// mailbox lanes and the pool write at once, so this pays one commit for what they bring
/// together. Each write runs in its own savepoint: a failed one undoes only itself.
#[derive(Debug)]
struct SharedCommit {
    state: Mutex<Txn>,
    /// Writers waiting for `state`: while there are any, the transaction stays open.
    queued: AtomicUsize,
}

#[derive(Debug)]
struct Txn {
    conn: Connection,
    /// When the open transaction began (`None`: none is open).
    since: Option<Instant>,
    writes: usize,
    /// Writers whose work is in the open transaction and who wait for its commit.
    waiting: Vec<Sender<bool>>,
}

impl SharedCommit {
    fn new(conn: Connection) -> SharedCommit {
        let txn = Txn { conn, since: None, writes: 0, waiting: Vec::new() };
        SharedCommit { state: Mutex::new(txn), queued: AtomicUsize::new(0) }
    }

    fn write<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let mut t = self.state.lock();
        self.queued.fetch_sub(1, Ordering::SeqCst);
        if t.since.is_none() {
            t.conn.execute_batch("BEGIN IMMEDIATE")?;
            t.since = Some(Instant::now());
            t.writes = 0;
        }
        let result = t.conn.execute_batch("SAVEPOINT w").and_then(|()| f(&mut t.conn));
        let end = if result.is_ok() { "RELEASE w" } else { "ROLLBACK TO w; RELEASE w" };
        if let Err(e) = t.conn.execute_batch(end) {
            // The transaction is broken (SQLite may have rolled it back): nobody's work in it
            // is committed.
            self.finish(&mut t, false);
            return Err(e.into());
        }
        t.writes += 1;
        let full = t.writes >= COMMIT_WRITES || t.since.is_some_and(|s| s.elapsed() >= COMMIT_OPEN);
        if self.queued.load(Ordering::SeqCst) > 0 && !full {
            // One of those queued will commit this work with its own (each queued writer
            // takes the lock and finds the queue empty or the bound reached in the end).
            let (tx, rx) = bounded(1);
            t.waiting.push(tx);
            drop(t);
            return match rx.recv() {
                Ok(true) => Ok(result?),
                _ => Err(StoreError::CommitFailed),
            };
        }
        let committed = t.conn.execute_batch("COMMIT");
        let ok = committed.is_ok();
        self.finish(&mut t, ok);
        committed?;
        Ok(result?)
    }

    /// Ends the open transaction (rolled back unless `committed`) and tells its writers.
    fn finish(&self, t: &mut Txn, committed: bool) {
        if !committed && !t.conn.is_autocommit() {
            let _ = t.conn.execute_batch("ROLLBACK");
        }
        t.since = None;
        for w in t.waiting.drain(..) {
            let _ = w.send(committed);
        }
    }
}

/// Ids are `INTEGER` in SQLite; anything outside `u32` means the file was edited by hand.
fn id_of(v: i64) -> rusqlite::Result<u32> {
    u32::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, v))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with a writer and `conns` readers.
    pub fn open(path: impl AsRef<Path>, conns: usize) -> StoreResult<SqliteStore> {
        let path = path.as_ref();
        let mut all = Vec::new();
        for i in 0..=conns.max(1) {
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
                // The writer's cache holds the pages it last wrote (the tails of the tables);
                // readers keep what history queries read.
                conn.pragma_update(None, "cache_size", -4_096)?;
                conn.execute_batch(SCHEMA)?;
            } else {
                conn.pragma_update(None, "cache_size", -32_768)?;
            }
            all.push(Mutex::new(conn));
        }
        let writer = all.remove(0).into_inner();
        let next_mid: i64 = writer.query_row(
            "SELECT MAX((SELECT IFNULL(MAX(mid), 0) + 1 FROM Message), (SELECT next FROM MessageSeq WHERE id = 1))",
            [],
            |r| r.get(0),
        )?;
        let next_mid = Mutex::new(next_mid.max(1) as Mid);
        let writer = SharedCommit::new(writer);
        Ok(SqliteStore { writer, conns: all, next: AtomicUsize::new(0), next_mid })
    }

    /// Runs `f`, which writes, all or nothing; returns once what it wrote is committed.
    fn write<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        self.writer.write(f)
    }

    /// Runs `f`, which only reads, on a free reader, or waits for one.
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
        self.write(|c| {
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

    fn set_password(&self, id: UserId, password_hash: &str) -> StoreResult<()> {
        self.write(|c| {
            c.execute("UPDATE User SET password = ?1 WHERE id = ?2", params![password_hash, id])?;
            Ok(())
        })
    }

    fn password_samples(&self, limit: usize) -> StoreResult<Vec<String>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached("SELECT password FROM User ORDER BY id DESC LIMIT ?1")?;
            let rows = stmt.query_map([limit as i64], |r| r.get(0))?;
            rows.collect()
        })
    }

    fn user_exists(&self, id: UserId) -> StoreResult<bool> {
        self.with(|c| c.prepare_cached("SELECT 1 FROM User WHERE id = ?1")?.exists([id]))
    }

    fn set_state(&self, id: UserId, online: bool) -> StoreResult<()> {
        let state = if online { "online" } else { "offline" };
        self.write(|c| {
            c.prepare_cached("UPDATE User SET state = ?2 WHERE id = ?1")?.execute(params![id, state]).map(drop)
        })
    }

    fn add_friend(&self, a: UserId, b: UserId) -> StoreResult<()> {
        self.write(|c| {
            c.execute("INSERT OR IGNORE INTO Friend (userid, friendid) VALUES (?1, ?2), (?2, ?1)", params![a, b])?;
            Ok(())
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
        self.write(|c| {
            c.execute("INSERT INTO AllGroup (groupname, groupdesc) VALUES (?1, ?2)", params![name, desc])?;
            let id = id_of(c.last_insert_rowid())?;
            c.execute(
                "INSERT INTO GroupUser (groupid, userid, grouprole) VALUES (?1, ?2, 'creator')",
                params![id, creator],
            )?;
            Ok(id)
        })
    }

    fn join_group(&self, group: GroupId, user: UserId) -> StoreResult<bool> {
        self.write(|c| {
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
        self.write(|c| {
            if let Some(cap) = cap {
                let held: i64 = c
                    .prepare_cached("SELECT COUNT(*) FROM OfflineMessage WHERE userid = ?1")?
                    .query_row([user], |r| r.get(0))?;
                if usize::try_from(held).unwrap_or(usize::MAX).saturating_add(msgs.len()) > cap {
                    return Ok(false);
                }
            }
            {
                let mut st = c.prepare_cached("INSERT INTO OfflineMessage (userid, message) VALUES (?1, ?2)")?;
                for m in msgs {
                    st.execute(params![user, m])?;
                }
            }
            Ok(true)
        })
    }

    fn store_offline_batch(&self, writes: &[OfflineWrite<'_>]) -> StoreResult<Vec<bool>> {
        self.write(|c| {
            let mut stored = Vec::with_capacity(writes.len());
            {
                let mut count = c.prepare_cached("SELECT COUNT(*) FROM OfflineMessage WHERE userid = ?1")?;
                let mut insert = c.prepare_cached("INSERT INTO OfflineMessage (userid, message) VALUES (?1, ?2)")?;
                for w in writes {
                    if let Some(cap) = w.cap {
                        let held: i64 = count.query_row([w.user], |r| r.get(0))?;
                        if usize::try_from(held).unwrap_or(usize::MAX).saturating_add(w.msgs.len()) > cap {
                            stored.push(false);
                            continue;
                        }
                    }
                    for m in &w.msgs {
                        insert.execute(params![w.user, m])?;
                    }
                    stored.push(true);
                }
            }
            Ok(stored)
        })
    }

    fn take_offline(&self, user: UserId) -> StoreResult<Vec<String>> {
        self.write(|c| {
            let msgs = {
                let mut st = c.prepare_cached("SELECT message FROM OfflineMessage WHERE userid = ?1 ORDER BY id")?;
                let rows = st.query_map([user], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<Vec<String>>>()?
            };
            if !msgs.is_empty() {
                c.execute("DELETE FROM OfflineMessage WHERE userid = ?1", [user])?;
            }
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
        self.write(|c| {
            {
                let mut st = c.prepare_cached("DELETE FROM OfflineMessage WHERE userid = ?1 AND id = ?2")?;
                for &id in ids {
                    st.execute(params![user, id as i64])?;
                }
            }
            Ok(())
        })
    }

    fn waiting_mailboxes(&self, after: u64, limit: usize) -> StoreResult<Vec<(UserId, u64)>> {
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT userid, MAX(id) FROM OfflineMessage WHERE id > ?1 GROUP BY userid ORDER BY userid LIMIT ?2",
            )?;
            let rows = st.query_map(params![after as i64, limit as i64], |r| {
                Ok((r.get::<_, UserId>(0)?, r.get::<_, i64>(1)? as u64))
            })?;
            rows.collect()
        })
    }

    fn log_messages(&self, batch: &[&NewMessage], dedup_since: u64) -> StoreResult<Vec<Logged>> {
        let mut next_mid = self.next_mid.lock();
        self.write(|c| {
            let mut out = Vec::with_capacity(batch.len());
            let mut next = *next_mid;
            {
                let mut seen = HashMap::new();
                let mut find = c.prepare_cached("SELECT mid, ts FROM MessageCid WHERE sender = ?1 AND cid = ?2")?;
                let mut keep = c.prepare_cached(
                    "INSERT INTO MessageCid (sender, cid, mid, ts) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (sender, cid) DO UPDATE SET mid = excluded.mid, ts = excluded.ts",
                )?;
                let mut fresh: Vec<(Mid, &NewMessage)> = Vec::with_capacity(batch.len());
                for &m in batch {
                    if let Some(cid) = &m.cid {
                        if let Some(&mid) = seen.get(&(m.from, cid.as_str())) {
                            out.push(Logged::Dup(mid));
                            continue;
                        }
                        let earlier: Option<(i64, i64)> =
                            find.query_row(params![m.from, cid], |r| Ok((r.get(0)?, r.get(1)?))).optional()?;
                        if let Some((mid, _)) = earlier.filter(|&(_, ts)| ts >= dedup_since as i64) {
                            out.push(Logged::Dup(mid as Mid));
                            continue;
                        }
                        keep.execute(params![m.from, cid, next as i64, m.ts as i64])?;
                        seen.insert((m.from, cid.as_str()), next);
                    }
                    fresh.push((next, m));
                    out.push(Logged::Fresh(next));
                    next += 1;
                }
                // Full chunks as one multi-row statement (far fewer statement steps), the rest
                // row by row.
                let mut chunks = fresh.chunks_exact(INSERT_ROWS);
                if chunks.len() > 0 {
                    let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; INSERT_ROWS].join(", ");
                    let mut many = c.prepare_cached(&format!("{INSERT_MESSAGE} VALUES {values}"))?;
                    for chunk in &mut chunks {
                        let cols: Vec<MessageColumns<'_>> = chunk.iter().map(|&(mid, m)| columns(mid, m)).collect();
                        let params: Vec<&dyn ToSql> = cols.iter().flat_map(MessageColumns::params).collect();
                        many.execute(&*params)?;
                    }
                }
                let mut one = c.prepare_cached(&format!("{INSERT_MESSAGE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"))?;
                for &(mid, m) in chunks.remainder() {
                    let cols = columns(mid, m);
                    one.execute(&*cols.params().collect::<Vec<_>>())?;
                }
            }
            *next_mid = next;
            Ok(out)
        })
    }

    fn unlog(&self, mid: Mid) -> StoreResult<()> {
        let next_mid = self.next_mid.lock();
        self.write(|c| {
            c.execute("DELETE FROM MessageCid WHERE mid = ?1 AND (sender, cid) IN (SELECT sender, cid FROM Message WHERE mid = ?1)", [mid as i64])?;
            c.execute("DELETE FROM Message WHERE mid = ?1", [mid as i64])?;
            // Were it the last, its mid would come back after a restart: remember the next one.
            c.execute("UPDATE MessageSeq SET next = MAX(next, ?1) WHERE id = 1", [*next_mid as i64])?;
            Ok(())
        })
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

    /// In chunks, each its own transaction, so the log's writer is never held up for long.
    fn prune_history(&self, ts: u64) -> StoreResult<u64> {
        let mut total = 0;
        loop {
            let next_mid = self.next_mid.lock();
            let n = self.write(|c| {
                let n = c.execute(
                    "DELETE FROM Message WHERE mid IN (SELECT mid FROM Message WHERE ts < ?1 LIMIT ?2)",
                    params![ts as i64, PRUNE_CHUNK as i64],
                )?;
                c.execute("UPDATE MessageSeq SET next = MAX(next, ?1) WHERE id = 1", [*next_mid as i64])?;
                Ok(n)
            })?;
            drop(next_mid);
            total += n as u64;
            if n < PRUNE_CHUNK {
                return Ok(total);
            }
        }
    }

    fn prune_cids(&self, ts: u64) -> StoreResult<()> {
        self.write(|c| c.execute("DELETE FROM MessageCid WHERE ts < ?1", [ts as i64]).map(drop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Multi-row inserts and the rows left over keep the batch's order and every column.
    #[test]
    fn a_large_batch_keeps_order_and_columns() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path().join("t.db"), 1).unwrap();
        let msgs: Vec<NewMessage> = (0..INSERT_ROWS * 2 + 5)
            .map(|n| NewMessage {
                from: 1,
                name: "a".into(),
                to: Target::User(2),
                msg: format!("m{n}"),
                time: "t".into(),
                ts: 100 + n as u64,
                cid: (n % 3 == 0).then(|| format!("c{n}")),
            })
            .collect();
        let logged = s.log_messages(&msgs.iter().collect::<Vec<_>>(), 0).unwrap();
        assert!(logged.iter().all(|l| matches!(l, Logged::Fresh(_))));
        let page = s.history(Conversation::Pair(1, 2), None, 200).unwrap().unwrap();
        let got: Vec<(String, Option<String>, u64)> =
            page.messages.iter().map(|m| (m.msg.to_string(), m.cid.as_deref().map(str::to_owned), m.ts)).collect();
        let want: Vec<(String, Option<String>, u64)> =
            msgs.iter().map(|m| (m.msg.clone(), m.cid.clone(), m.ts)).collect();
        assert_eq!(got, want);
        // Mids survive a reopen: the next one is past every one given out.
        drop(s);
        let s = SqliteStore::open(dir.path().join("t.db"), 1).unwrap();
        let again = s.log_messages(&[&msgs[1]], 0).unwrap();
        assert!(matches!(again[0], Logged::Fresh(m) if m > page.messages.iter().filter_map(|m| m.mid).max().unwrap()));
    }

    /// Writers on many threads share commits: each write is there afterwards, in its
    /// mailbox's order, and one that fails undoes only itself.
    #[test]
    fn concurrent_writes_share_commits_and_fail_alone() {
        const THREADS: u32 = 8;
        const WRITES: usize = 200;
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path().join("t.db"), 2).unwrap();
        std::thread::scope(|scope| {
            for user in 1..=THREADS {
                let s = &s;
                scope.spawn(move || {
                    for n in 0..WRITES {
                        assert!(s.store_offline(user, &[&format!("{user}:{n}")], None).unwrap());
                        if n % 50 == 0 {
                            let failed = s.write(|c| {
                                c.execute(
                                    "INSERT INTO OfflineMessage (userid, message) VALUES (?1, 'undone')",
                                    [user],
                                )?;
                                c.execute("INSERT INTO NoSuchTable VALUES (1)", [])
                            });
                            assert!(failed.is_err());
                        }
                    }
                });
            }
        });
        for user in 1..=THREADS {
            let want: Vec<String> = (0..WRITES).map(|n| format!("{user}:{n}")).collect();
            assert_eq!(s.take_offline(user).unwrap(), want);
        }
    }

    #[test]
    fn roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        super::super::tests::roundtrip(&super::SqliteStore::open(dir.path().join("t.db"), 2).unwrap());
    }
}
