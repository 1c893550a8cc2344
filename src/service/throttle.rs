//! Failed logins, and registrations, counted per account and per source address: past a limit
//! within a window, further attempts are refused (errno 14, with when to retry) for a while,
//! before any password hash is computed. In a cluster the counts live on the bus (Redis), so
//! attempts spread over nodes add up; a single node counts in memory. Pool threads.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::bus::{AttemptRule, Attempts, Bus, BusError};
use crate::config::ThrottleLimits;
use crate::UserId;

/// Failed logins are counted over this long...
const LOGIN_WINDOW: Duration = Duration::from_secs(10 * 60);
/// ...and past the limit refused for this long.
const LOGIN_BLOCK: Duration = Duration::from_secs(15 * 60);
/// Registrations from one address are counted over an hour, and past the limit refused for one.
const REGISTER_WINDOW: Duration = Duration::from_secs(60 * 60);
/// Keys counted in memory at most; past it the oldest windows are dropped first.
const LOCAL_KEYS: usize = 100_000;

#[derive(Debug)]
pub(crate) struct Throttle {
    limits: ThrottleLimits,
    /// Counts of a single node; `None` in a cluster (the bus counts).
    local: Option<Mutex<HashMap<String, Count>>>,
}

#[derive(Debug, Clone, Copy)]
struct Count {
    n: u32,
    window_ends: Instant,
    blocked_until: Option<Instant>,
}

impl Throttle {
    pub(crate) fn new(limits: ThrottleLimits, sole_node: bool) -> Throttle {
        Throttle { limits, local: sole_node.then(Mutex::default) }
    }

    fn login_rules(&self, user: UserId, from: Option<IpAddr>) -> Vec<AttemptRule> {
        let mut rules = Vec::new();
        if self.limits.login_failures > 0 {
            rules.push(rule(format!("login:user:{user}"), self.limits.login_failures, LOGIN_WINDOW, LOGIN_BLOCK));
        }
        if let Some(ip) = from.filter(|_| self.limits.login_failures_per_ip > 0) {
            rules.push(rule(format!("login:ip:{ip}"), self.limits.login_failures_per_ip, LOGIN_WINDOW, LOGIN_BLOCK));
        }
        rules
    }

    fn register_rules(&self, from: Option<IpAddr>) -> Vec<AttemptRule> {
        let limit = self.limits.registrations_per_ip;
        let ip = from.filter(|_| limit > 0);
        ip.map(|ip| rule(format!("register:ip:{ip}"), limit, REGISTER_WINDOW, REGISTER_WINDOW)).into_iter().collect()
    }

    /// Whether a login of `user` from `from` must wait, and how long.
    pub(crate) fn login_attempts(
        &self,
        bus: &dyn Bus,
        user: UserId,
        from: Option<IpAddr>,
    ) -> Result<Attempts, BusError> {
        self.attempts(bus, &self.login_rules(user, from))
    }

    pub(crate) fn login_failed(&self, bus: &dyn Bus, user: UserId, from: Option<IpAddr>) -> Result<(), BusError> {
        self.count(bus, &self.login_rules(user, from))
    }

    /// A successful login starts its account's count again (not its address's); `before`:
    /// where its attempts stood (nothing counted: nothing to clear, no round trip).
    pub(crate) fn login_succeeded(&self, bus: &dyn Bus, user: UserId, before: Attempts) -> Result<(), BusError> {
        if self.limits.login_failures == 0 || !before.counted {
            return Ok(());
        }
        let key = format!("login:user:{user}");
        match &self.local {
            Some(local) => {
                local.lock().remove(&key);
                Ok(())
            }
            None => bus.clear_attempts(&key),
        }
    }

    pub(crate) fn register_blocked(&self, bus: &dyn Bus, from: Option<IpAddr>) -> Result<Option<Duration>, BusError> {
        Ok(self.attempts(bus, &self.register_rules(from))?.blocked)
    }

    pub(crate) fn registered(&self, bus: &dyn Bus, from: Option<IpAddr>) -> Result<(), BusError> {
        self.count(bus, &self.register_rules(from))
    }

    fn attempts(&self, bus: &dyn Bus, rules: &[AttemptRule]) -> Result<Attempts, BusError> {
        if rules.is_empty() {
            return Ok(Attempts::default());
        }
        let Some(local) = &self.local else { return bus.attempts(rules) };
        let now = Instant::now();
        let counts = local.lock();
        let until = rules.iter().filter_map(|r| counts.get(&r.key)?.blocked_until).filter(|&t| t > now).max();
        let counted = rules.iter().any(|r| counts.get(&r.key).is_some_and(|c| c.n > 0 && c.window_ends > now));
        Ok(Attempts { blocked: until.map(|t| t - now), counted })
    }

    fn count(&self, bus: &dyn Bus, rules: &[AttemptRule]) -> Result<(), BusError> {
        if rules.is_empty() {
            return Ok(());
        }
        let Some(local) = &self.local else { return bus.count_attempt(rules) };
        let now = Instant::now();
        let mut counts = local.lock();
        if counts.len() >= LOCAL_KEYS {
            counts.retain(|_, c| c.window_ends > now || c.blocked_until.is_some_and(|t| t > now));
            if counts.len() >= LOCAL_KEYS {
                counts.clear(); // a bound under a flood of distinct keys, not a policy
            }
        }
        for r in rules {
            let c =
                counts.entry(r.key.clone()).or_insert(Count { n: 0, window_ends: now + r.window, blocked_until: None });
            if c.window_ends <= now {
                *c = Count { n: 0, window_ends: now + r.window, blocked_until: c.blocked_until };
            }
            c.n += 1;
            if c.n >= r.limit {
                c.blocked_until = Some(now + r.block);
                c.n = 0;
            }
        }
        Ok(())
    }
}

fn rule(key: String, limit: u32, window: Duration, block: Duration) -> AttemptRule {
    AttemptRule { key, limit, window, block }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::LocalBus;

    #[test]
    fn an_account_is_blocked_at_its_limit_and_a_success_starts_it_again() {
        let limits = ThrottleLimits { login_failures: 3, ..ThrottleLimits::default() };
        let t = Throttle::new(limits, true);
        let bus = LocalBus;
        for _ in 0..2 {
            t.login_failed(&bus, 1, None).unwrap();
        }
        t.login_succeeded(&bus, 1, t.login_attempts(&bus, 1, None).unwrap()).unwrap();
        for _ in 0..2 {
            t.login_failed(&bus, 1, None).unwrap();
        }
        assert_eq!(t.login_attempts(&bus, 1, None).unwrap().blocked, None, "the success reset the count");
        t.login_failed(&bus, 1, None).unwrap();
        let wait = t.login_attempts(&bus, 1, None).unwrap().blocked.expect("blocked");
        assert!(wait > LOGIN_BLOCK - Duration::from_secs(5) && wait <= LOGIN_BLOCK);
        assert_eq!(t.login_attempts(&bus, 2, None).unwrap().blocked, None, "another account");
    }

    #[test]
    fn addresses_count_only_when_their_limit_is_on() {
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let off = Throttle::new(ThrottleLimits::default(), true);
        for _ in 0..100 {
            off.login_failed(&LocalBus, 1, Some(ip)).unwrap();
            off.registered(&LocalBus, Some(ip)).unwrap();
        }
        assert_eq!(off.login_attempts(&LocalBus, 1, Some(ip)).unwrap().blocked, None);
        assert_eq!(off.register_blocked(&LocalBus, Some(ip)).unwrap(), None);
        let on = Throttle::new(ThrottleLimits { registrations_per_ip: 2, ..ThrottleLimits::default() }, true);
        on.registered(&LocalBus, Some(ip)).unwrap();
        assert_eq!(on.register_blocked(&LocalBus, Some(ip)).unwrap(), None);
        on.registered(&LocalBus, Some(ip)).unwrap();
        assert!(on.register_blocked(&LocalBus, Some(ip)).unwrap().is_some());
        assert_eq!(on.register_blocked(&LocalBus, Some("127.0.0.3".parse().unwrap())).unwrap(), None);
    }
}
