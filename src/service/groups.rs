//! Group member lists kept in memory, so a group message needs no database read. Any thread.
//!
//! Only a node that is the only one may cache (see [`crate::bus::Bus::sole_node`]): with
//! several nodes, a member could join through another node unseen. A join invalidates its
//! group. A list read from the store is kept only if no invalidation happened since the read
//! began, so a read racing with a join cannot bring back the old list.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::{GroupId, UserId};

/// Groups cached at most; past it the cache starts over (a bound, not an eviction policy).
const CAPACITY: usize = 100_000;

#[derive(Debug, Default)]
pub(super) struct GroupCache {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    members: HashMap<GroupId, Arc<[UserId]>>,
    /// Bumped by every invalidation.
    generation: u64,
}

impl GroupCache {
    pub(super) fn members(&self, group: GroupId) -> Option<Arc<[UserId]>> {
        self.inner.read().members.get(&group).cloned()
    }

    /// To be taken before reading a group from the store; hand it to [`GroupCache::fill`].
    pub(super) fn generation(&self) -> u64 {
        self.inner.read().generation
    }

    /// Keeps `members`, read from the store after `generation` was taken, unless stale.
    pub(super) fn fill(&self, group: GroupId, members: &[UserId], generation: u64) {
        let mut inner = self.inner.write();
        if inner.generation != generation {
            return;
        }
        if inner.members.len() >= CAPACITY {
            inner.members.clear();
        }
        inner.members.insert(group, Arc::from(members));
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
        let cache = GroupCache::default();
        let before = cache.generation();
        cache.invalidate(1); // a join lands while the read is under way
        cache.fill(1, &[1, 2], before);
        assert!(cache.members(1).is_none());
        cache.fill(1, &[1, 2, 3], cache.generation());
        assert_eq!(cache.members(1).as_deref(), Some(&[1, 2, 3][..]));
        cache.invalidate(1);
        assert!(cache.members(1).is_none());
    }
}
