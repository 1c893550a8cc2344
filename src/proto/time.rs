//! Time as the protocol carries it: `ts` in milliseconds since the Unix epoch, and `time` as
//! the `YYYY-MM-DD HH:MM:SS` UTC string canonical clients write.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a node reads the time: the system clock, or one a test sets by hand.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A clock that reads `ms` until [`Clock::set`].
    pub fn manual(ms: u64) -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(ms)))
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => now_ms(),
            Clock::Manual(ms) => ms.load(Ordering::Relaxed),
        }
    }

    /// Sets a manual clock; the system clock is not set.
    pub fn set(&self, ms: u64) {
        if let Clock::Manual(now) = self {
            now.store(ms, Ordering::Relaxed);
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, the shape canonical clients put in `time`.
pub fn format_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to civil date (Howard Hinnant's algorithm), valid for every u64 millisecond count.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Runs `f` with `format_utc(ms)`, formatted once per second per thread: every message that
/// comes without a `time` needs the current one.
pub fn with_utc<R>(ms: u64, f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static LAST: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    LAST.with_borrow_mut(|(secs, text)| {
        if *secs != ms / 1000 {
            (*secs, *text) = (ms / 1000, format_utc(ms));
        }
        f(text)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_known_instants() {
        assert_eq!(super::format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::format_utc(1_767_261_600_000), "2026-01-01 10:00:00");
        assert_eq!(super::format_utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(super::with_utc(1_767_261_600_999, str::to_owned), "2026-01-01 10:00:00");
        assert_eq!(super::with_utc(1_767_261_601_000, str::to_owned), "2026-01-01 10:00:01");
        let clock = super::Clock::manual(5);
        assert_eq!(clock.now_ms(), 5);
        clock.set(7);
        assert_eq!(clock.now_ms(), 7);
    }
}
