//! Who is logged in on this node, and on which connection. Any thread.
//!
//! Sharded so logins on different reactors and pool threads rarely meet on one lock; the
//! insert-if-absent of a login is what arbitrates two logins of one user.

use std::collections::HashMap;

use parking_lot::RwLock;

use crate::net::Loc;
use crate::UserId;

const SHARDS: usize = 64;

/// Where a user is live, and whether its session acknowledges deliveries (then every message
/// for it is stored before the sender is answered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Live {
    loc: Loc,
    acks: bool,
}

#[derive(Debug)]
pub struct Presence {
    shards: Box<[RwLock<HashMap<UserId, Live>>]>,
}

impl Default for Presence {
    fn default() -> Self {
        Presence { shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect() }
    }
}

impl Presence {
    fn shard(&self, user: UserId) -> &RwLock<HashMap<UserId, Live>> {
        &self.shards[user as usize % SHARDS]
    }

    /// Registers `user` at `loc` unless it is already live; `false` if it was. `acks`: the
    /// session acknowledges deliveries.
    pub fn insert_if_absent(&self, user: UserId, loc: Loc, acks: bool) -> bool {
        let mut shard = self.shard(user).write();
        if shard.contains_key(&user) {
            return false;
        }
        shard.insert(user, Live { loc, acks });
        true
    }

    pub fn get(&self, user: UserId) -> Option<Loc> {
        self.shard(user).read().get(&user).map(|l| l.loc)
    }

    /// The user's location and whether its session acknowledges deliveries.
    pub fn session(&self, user: UserId) -> Option<(Loc, bool)> {
        self.shard(user).read().get(&user).map(|l| (l.loc, l.acks))
    }

    /// Runs `f` with every shard read-locked, handing it a lookup of any user's location and
    /// acks mode: as with `with`, what `f` sends is queued before any `remove_with` of those
    /// users can finish (a group message reaches all its members here in one hand-over per
    /// reactor). Shards are locked in index order, and writers hold one at a time: no deadlock.
    pub fn with_all<R>(&self, f: impl FnOnce(&dyn Fn(UserId) -> Option<(Loc, bool)>) -> R) -> R {
        let shards: Vec<_> = self.shards.iter().map(|s| s.read()).collect();
        f(&|user| shards[user as usize % SHARDS].get(&user).map(|l| (l.loc, l.acks)))
    }

    /// Runs `f` with the user's location under the shard's read lock. What `f` sends to the
    /// session's reactor is queued there before any `remove_with` of that user can finish.
    pub fn with<R>(&self, user: UserId, f: impl FnOnce(Loc) -> R) -> Option<R> {
        let shard = self.shard(user).read();
        shard.get(&user).map(|l| f(l.loc))
    }

    /// As `with`, for a session without acks only; `Some(None)`: live in a session with acks.
    pub fn with_unacked<R>(&self, user: UserId, f: impl FnOnce(Loc) -> R) -> Option<Option<R>> {
        let shard = self.shard(user).read();
        shard.get(&user).map(|l| (!l.acks).then(|| f(l.loc)))
    }

    /// Removes `user` if still registered at `loc`, running `before` under the write lock first:
    /// no `with` runs meanwhile, so `before` sees everything ever sent to the session.
    pub fn remove_with(&self, user: UserId, loc: Loc, before: impl FnOnce()) -> bool {
        let mut shard = self.shard(user).write();
        before();
        if shard.get(&user).is_some_and(|l| l.loc == loc) {
            shard.remove(&user);
            return true;
        }
        false
    }

    /// Removes `user` only if it is still registered at `loc` (not a newer session).
    pub fn remove_if(&self, user: UserId, loc: Loc) -> bool {
        let mut shard = self.shard(user).write();
        if shard.get(&user).is_some_and(|l| l.loc == loc) {
            shard.remove(&user);
            return true;
        }
        false
    }

    /// Every user live on this node.
    pub fn users(&self) -> Vec<UserId> {
        self.shards.iter().flat_map(|s| s.read().keys().copied().collect::<Vec<_>>()).collect()
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_login_wins_and_only_it_can_leave() {
        let p = Presence::default();
        let a = Loc { reactor: 0, token: 1, conn: 1 };
        let b = Loc { reactor: 1, token: 1, conn: 2 };
        assert!(p.insert_if_absent(7, a, true));
        assert!(!p.insert_if_absent(7, b, false));
        assert_eq!(p.session(7), Some((a, true)));
        assert_eq!(p.with_unacked(7, |_| ()), Some(None));
        assert!(!p.remove_if(7, b));
        assert_eq!(p.get(7), Some(a));
        assert!(p.remove_if(7, a));
        assert!(p.is_empty());
    }
}
