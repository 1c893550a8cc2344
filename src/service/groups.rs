//! Group member lists kept in memory on every node, so a group message needs no database read.
//! Any thread.
//!
//! A list is kept with the group's version on the bus (see [`crate::bus::Bus::group_version`]):
//! a node that changes a group's members gives the group a new version, and a group message
//! goes out only after the bus has confirmed the version its list was read under, so a join on
//! one node is in effect for the next message sent on any node. A change made on this node also
//! drops the list at once; a list read from the store is kept only if no change happened here
//! since the read began, so a read racing with a join cannot bring back the old list.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::{GroupId, UserId};

/// Groups cached at most; past it the cache starts over (a bound, not an eviction policy).
const CAPACITY: usize = 100_000;

#[derive(Debug)]
pub(super) struct GroupCache {
    inner: RwLock<Inner>,
    /// How long a list is trusted without being read again (`None`: for ever). In a cluster a
    /// change whose new version never reached the bus (it failed meanwhile) is seen after this.
    max_age: Option<Duration>,
}

/// Members of a group as read from the store, under `version`.
#[derive(Debug, Clone)]
pub(super) struct Members {
    pub version: u64,
    pub users: Arc<[UserId]>,
    read_at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    members: HashMap<GroupId, Members>,
    /// Bumped by every invalidation.
    generation: u64,
}

impl GroupCache {
    pub(super) fn new(max_age: Option<Duration>) -> GroupCache {
        GroupCache { inner: RwLock::default(), max_age }
    }

    pub(super) fn members(&self, group: GroupId) -> Option<Members> {
        let inner = self.inner.read();
        let m = inner.members.get(&group)?;
        match self.max_age {
            Some(age) if m.read_at.elapsed() > age => None,
            _ => Some(m.clone()),
        }
    }

    /// To be taken before reading a group from the store; hand it to [`GroupCache::fill`].
    pub(super) fn generation(&self) -> u64 {
        self.inner.read().generation
    }

    /// Keeps `users`, read from the store under `version` after `generation` was taken, unless
    /// stale; returns them as kept.
    pub(super) fn fill(&self, group: GroupId, users: &[UserId], version: u64, generation: u64) -> Members {
        let m = Members { version, users: Arc::from(users), read_at: Instant::now() };
        let mut inner = self.inner.write();
        if inner.generation == generation {
            if inner.members.len() >= CAPACITY {
                inner.members.clear();
            }
            inner.members.insert(group, m.clone());
        }
        m
    }

    pub(super) fn invalidate(&self, group: GroupId) {
        let mut inner = self.inner.write();
        inner.generation += 1;
        inner.members.remove(&group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_raced_with_a_join_is_not_kept() {
        let cache = GroupCache::new(None);
        let before = cache.generation();
        cache.invalidate(1); // a join lands while the read is under way
        cache.fill(1, &[1, 2], 0, before);
        assert!(cache.members(1).is_none());
        cache.fill(1, &[1, 2, 3], 7, cache.generation());
        let kept = cache.members(1).expect("kept");
        assert_eq!((&*kept.users, kept.version), (&[1, 2, 3][..], 7));
        cache.invalidate(1);
        assert!(cache.members(1).is_none());
    }

    #[test]
    fn a_list_older_than_its_age_is_read_again() {
        let cache = GroupCache::new(Some(Duration::ZERO));
        cache.fill(1, &[1, 2], 0, cache.generation());
        std::thread::sleep(Duration::from_millis(2));
        assert!(cache.members(1).is_none());
    }
}
