//! A store that keeps everything in memory and forgets it at exit: for unit tests of the
//! service, and for runs where nothing needs to survive (`--store memory`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use parking_lot::Mutex;

use super::{
    Conversation, GroupRecord, HistoryPage, Logged, MemberRecord, Mid, NewMessage, Store, StoreResult, UserRecord,
};
use crate::proto::message::ChatMessage;
use crate::{GroupId, UserId};

#[derive(Debug, Default)]
pub struct MemoryStore {
    data: Mutex<Data>,
}

#[derive(Debug, Default)]
struct Data {
    /// By id; ids are given out from 1 in order, as an auto-increment column would.
    users: BTreeMap<UserId, UserRecord>,
    online: BTreeSet<UserId>,
    friends: BTreeSet<(UserId, UserId)>,
    groups: BTreeMap<GroupId, (String, String)>,
    /// `(group, user)` → creator?
    members: BTreeMap<(GroupId, UserId), bool>,
    /// Rows `(id, message)`; ids grow across all mailboxes, as an auto-increment column's.
    mailboxes: HashMap<UserId, VecDeque<(u64, String)>>,
    last_row: u64,
    /// The log by mid, which the store gives out in order from 1.
    log: BTreeMap<Mid, (Conversation, ChatMessage<'static>)>,
    last_mid: Mid,
}

impl Store for MemoryStore {
    fn create_user(&self, name: &str, password_hash: &str) -> StoreResult<Option<UserId>> {
        let mut d = self.data.lock();
        if d.users.values().any(|u| u.name == name) {
            return Ok(None);
        }
        let id = d.users.keys().next_back().map_or(1, |last| last + 1);
        d.users.insert(id, UserRecord { id, name: name.to_owned(), password: password_hash.to_owned() });
        Ok(Some(id))
    }

    fn user(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        Ok(self.data.lock().users.get(&id).cloned())
    }

    fn set_password(&self, id: UserId, password_hash: &str) -> StoreResult<()> {
        if let Some(u) = self.data.lock().users.get_mut(&id) {
            u.password = password_hash.to_owned();
        }
        Ok(())
    }

    fn password_samples(&self, limit: usize) -> StoreResult<Vec<String>> {
        Ok(self.data.lock().users.values().rev().take(limit).map(|u| u.password.clone()).collect())
    }

    fn user_exists(&self, id: UserId) -> StoreResult<bool> {
        Ok(self.data.lock().users.contains_key(&id))
    }

    fn set_state(&self, id: UserId, online: bool) -> StoreResult<()> {
        let mut d = self.data.lock();
        match online {
            true => d.online.insert(id),
            false => d.online.remove(&id),
        };
        Ok(())
    }

    fn add_friend(&self, a: UserId, b: UserId) -> StoreResult<()> {
        let mut d = self.data.lock();
        d.friends.insert((a, b));
        d.friends.insert((b, a));
        Ok(())
    }

    fn friends(&self, id: UserId) -> StoreResult<Vec<(UserId, String)>> {
        let d = self.data.lock();
        let names = d.friends.range((id, 0)..=(id, UserId::MAX)).filter_map(|&(_, f)| d.users.get(&f));
        Ok(names.map(|u| (u.id, u.name.clone())).collect())
    }

    fn create_group(&self, creator: UserId, name: &str, desc: &str) -> StoreResult<GroupId> {
        let mut d = self.data.lock();
        let id = d.groups.keys().next_back().map_or(1, |last| last + 1);
        d.groups.insert(id, (name.to_owned(), desc.to_owned()));
        d.members.insert((id, creator), true);
        Ok(id)
    }

    fn join_group(&self, group: GroupId, user: UserId) -> StoreResult<bool> {
        let mut d = self.data.lock();
        if !d.groups.contains_key(&group) {
            return Ok(false);
        }
        d.members.entry((group, user)).or_insert(false);
        Ok(true)
    }

    fn group_members(&self, group: GroupId) -> StoreResult<Option<Vec<UserId>>> {
        let d = self.data.lock();
        if !d.groups.contains_key(&group) {
            return Ok(None);
        }
        Ok(Some(d.members.range((group, 0)..=(group, UserId::MAX)).map(|(&(_, u), _)| u).collect()))
    }

    fn user_groups(&self, user: UserId) -> StoreResult<Vec<GroupRecord>> {
        let d = self.data.lock();
        let mine = d.members.keys().filter(|&&(_, u)| u == user).map(|&(g, _)| g);
        let groups = mine.filter_map(|g| {
            let (name, desc) = d.groups.get(&g)?;
            let members = d.members.range((g, 0)..=(g, UserId::MAX)).filter_map(|(&(_, u), &creator)| {
                let name = d.users.get(&u)?.name.clone();
                Some(MemberRecord { id: u, name, creator })
            });
            Some(GroupRecord { id: g, name: name.clone(), desc: desc.clone(), members: members.collect() })
        });
        Ok(groups.collect())
    }

    fn store_offline(&self, user: UserId, msgs: &[&str], cap: Option<usize>) -> StoreResult<bool> {
        let mut d = self.data.lock();
        let held = d.mailboxes.get(&user).map_or(0, VecDeque::len);
        if cap.is_some_and(|cap| held.saturating_add(msgs.len()) > cap) {
            return Ok(false);
        }
        let first = d.last_row + 1;
        d.last_row += msgs.len() as u64;
        let mailbox = d.mailboxes.entry(user).or_default();
        mailbox.extend(msgs.iter().enumerate().map(|(i, &m)| (first + i as u64, m.to_owned())));
        Ok(true)
    }

    fn take_offline(&self, user: UserId) -> StoreResult<Vec<String>> {
        let taken = self.data.lock().mailboxes.remove(&user).unwrap_or_default();
        Ok(taken.into_iter().map(|(_, m)| m).collect())
    }

    fn peek_offline(&self, user: UserId, after: u64, limit: usize) -> StoreResult<Vec<(u64, String)>> {
        let d = self.data.lock();
        let rows = d.mailboxes.get(&user).into_iter().flatten().filter(|(id, _)| *id > after);
        Ok(rows.take(limit).cloned().collect())
    }

    fn delete_offline(&self, user: UserId, ids: &[u64]) -> StoreResult<()> {
        if let Some(mailbox) = self.data.lock().mailboxes.get_mut(&user) {
            mailbox.retain(|(id, _)| !ids.contains(id));
        }
        Ok(())
    }

    fn waiting_mailboxes(&self, after: u64, limit: usize) -> StoreResult<Vec<(UserId, u64)>> {
        let d = self.data.lock();
        let mut waiting: Vec<(UserId, u64)> = d
            .mailboxes
            .iter()
            .filter_map(|(&user, rows)| rows.back().filter(|(id, _)| *id > after).map(|&(id, _)| (user, id)))
            .collect();
        waiting.sort_unstable();
        waiting.truncate(limit);
        Ok(waiting)
    }

    fn log_messages(&self, batch: &[&NewMessage], dedup_since: u64) -> StoreResult<Vec<Logged>> {
        let mut d = self.data.lock();
        let mut out = Vec::with_capacity(batch.len());
        for &m in batch {
            let earlier = m.cid.as_deref().and_then(|cid| {
                d.log.iter().find(|(_, (_, l))| l.from == m.from && l.cid.as_deref() == Some(cid)).map(|(&mid, _)| mid)
            });
            if let Some(mid) = earlier {
                if d.log[&mid].1.ts >= dedup_since || out.contains(&Logged::Fresh(mid)) {
                    out.push(Logged::Dup(mid));
                    continue;
                }
                if let Some(entry) = d.log.get_mut(&mid) {
                    entry.1.cid = None;
                }
            }
            d.last_mid += 1;
            let mid = d.last_mid;
            d.log.insert(mid, (Conversation::of(m.from, m.to), m.with_mid(mid).into_owned()));
            out.push(Logged::Fresh(mid));
        }
        Ok(out)
    }

    fn unlog(&self, mid: Mid) -> StoreResult<()> {
        self.data.lock().log.remove(&mid);
        Ok(())
    }

    fn history(&self, conv: Conversation, before: Option<Mid>, limit: usize) -> StoreResult<Option<HistoryPage>> {
        let d = self.data.lock();
        let bound = match before {
            None => (u64::MAX, Mid::MAX),
            Some(mid) => match d.log.get(&mid) {
                Some((c, m)) if *c == conv => (m.ts, mid),
                _ => return Ok(None),
            },
        };
        let mut older: Vec<&ChatMessage<'static>> =
            d.log.iter().filter(|(&mid, (c, m))| *c == conv && (m.ts, mid) < bound).map(|(_, (_, m))| m).collect();
        older.sort_by_key(|m| (m.ts, m.mid));
        let more = older.len() > limit;
        let messages = older.split_off(older.len().saturating_sub(limit)).into_iter().cloned().collect();
        Ok(Some(HistoryPage { messages, more }))
    }

    fn prune_cids(&self, _ts: u64) -> StoreResult<()> {
        Ok(()) // deduplication compares each message's ts with the window already
    }

    fn prune_history(&self, ts: u64) -> StoreResult<u64> {
        let mut d = self.data.lock();
        let before = d.log.len();
        d.log.retain(|_, (_, m)| m.ts >= ts);
        Ok((before - d.log.len()) as u64)
    }
}
