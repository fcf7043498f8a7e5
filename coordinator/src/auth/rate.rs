//! Rate limits (pure: every function takes the time, in milliseconds of a monotonic clock).
//!
//! - [`Buckets`]: a token bucket per key (a principal's name, or a peer's IP for failed
//!   authentications), so one caller cannot keep a node busy and token guessing is slow.
//! - [`AuditThrottle`]: how many denials per second reach the audit chain, so a flood of refused
//!   calls cannot fill the Raft log; the rest are counted and recorded as one summary.

use std::collections::HashMap;

/// How many keys [`Buckets`] tracks at most: idle keys are forgotten first (a full bucket is the
/// same as no bucket), then the least recently used.
pub const MAX_KEYS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
}

/// Token buckets by key: `burst` calls at once, refilled at `per_second`.
#[derive(Debug)]
pub struct Buckets {
    per_ms: f64,
    burst: f64,
    max_keys: usize,
    map: HashMap<String, Bucket>,
}

impl Buckets {
    /// Buckets of `burst` tokens refilled at `per_second` (both ≥ 1; config validation says so).
    pub fn new(per_second: u32, burst: u32) -> Self {
        Buckets::with_capacity(per_second, burst, MAX_KEYS)
    }

    /// Like [`Buckets::new`], tracking at most `max_keys` keys.
    pub fn with_capacity(per_second: u32, burst: u32, max_keys: usize) -> Self {
        Buckets {
            per_ms: f64::from(per_second.max(1)) / 1000.0,
            burst: f64::from(burst.max(1)),
            max_keys: max_keys.max(1),
            map: HashMap::new(),
        }
    }

    fn refilled(&self, key: &str, now_ms: u64) -> Bucket {
        match self.map.get(key) {
            Some(b) => {
                let elapsed = now_ms.saturating_sub(b.last_ms) as f64;
                Bucket { tokens: (b.tokens + elapsed * self.per_ms).min(self.burst), last_ms: now_ms.max(b.last_ms) }
            }
            None => Bucket { tokens: self.burst, last_ms: now_ms },
        }
    }

    /// Whether `key` has a call left now, without spending it.
    pub fn has_room(&self, key: &str, now_ms: u64) -> bool {
        self.refilled(key, now_ms).tokens >= 1.0
    }

    /// Spends one call of `key`; `Err(ms)` = refused, the next call is possible in `ms`.
    pub fn take(&mut self, key: &str, now_ms: u64) -> Result<(), u64> {
        let mut b = self.refilled(key, now_ms);
        let verdict = if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / self.per_ms).ceil() as u64)
        };
        if !self.map.contains_key(key) && self.map.len() >= self.max_keys {
            self.evict(now_ms);
        }
        self.map.insert(key.to_string(), b);
        verdict
    }

    fn evict(&mut self, now_ms: u64) {
        let (per_ms, burst) = (self.per_ms, self.burst);
        self.map.retain(|_, b| b.tokens + now_ms.saturating_sub(b.last_ms) as f64 * per_ms < burst);
        while self.map.len() >= self.max_keys {
            let Some(oldest) = self.map.iter().min_by_key(|(_, b)| b.last_ms).map(|(k, _)| k.clone()) else {
                return;
            };
            self.map.remove(&oldest);
        }
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// What to do with one denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditVerdict {
    /// Write it to the audit chain.
    Record,
    /// Count it only; `first` = the first one counted since the last summary (schedule one
    /// summary record at the end of the window).
    Suppress {
        /// First suppressed denial since the last summary.
        first: bool,
    },
}

/// At most `per_window` denial records per `window_ms`; the rest counted for one summary.
#[derive(Debug)]
pub struct AuditThrottle {
    per_window: u32,
    window_ms: u64,
    window_start: Option<u64>,
    recorded: u32,
    suppressed: u64,
}

impl AuditThrottle {
    /// `per_window` records per `window_ms`.
    pub fn new(per_window: u32, window_ms: u64) -> Self {
        AuditThrottle { per_window, window_ms: window_ms.max(1), window_start: None, recorded: 0, suppressed: 0 }
    }

    /// The length of a window: when a summary is due after the first suppressed denial.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// Decides about one denial at `now_ms`.
    pub fn note(&mut self, now_ms: u64) -> AuditVerdict {
        match self.window_start {
            Some(s) if now_ms < s + self.window_ms => {}
            _ => {
                self.window_start = Some(now_ms);
                self.recorded = 0;
            }
        }
        if self.recorded < self.per_window {
            self.recorded += 1;
            return AuditVerdict::Record;
        }
        self.suppressed += 1;
        AuditVerdict::Suppress { first: self.suppressed == 1 }
    }

    /// The denials suppressed since the last call (for the summary record), resetting the count.
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let mut b = Buckets::new(10, 3);
        for _ in 0..3 {
            assert_eq!(b.take("alice", 0), Ok(()));
        }
        assert_eq!(b.take("alice", 0), Err(100), "empty: one token per 100 ms");
        assert_eq!(b.take("bob", 0), Ok(()), "keys do not share a bucket");
        assert_eq!(b.take("alice", 50), Err(50));
        assert_eq!(b.take("alice", 100), Ok(()));
        assert!(!b.has_room("alice", 100));
        assert!(b.has_room("alice", 10_000));
        // A long quiet spell refills to the burst, not beyond.
        for _ in 0..3 {
            assert_eq!(b.take("alice", 1_000_000), Ok(()));
        }
        assert!(b.take("alice", 1_000_000).is_err());
    }

    #[test]
    fn has_room_spends_nothing() {
        let mut b = Buckets::new(1, 1);
        assert!(b.has_room("x", 0) && b.has_room("x", 0));
        assert_eq!(b.take("x", 0), Ok(()));
        assert!(!b.has_room("x", 0));
    }

    #[test]
    fn the_map_is_bounded_forgetting_idle_keys_first() {
        let mut b = Buckets::with_capacity(1, 2, 3);
        b.take("busy", 0).unwrap();
        b.take("busy", 0).unwrap();
        b.take("idle1", 0).unwrap();
        b.take("idle2", 0).unwrap();
        // At 1500 ms the idle keys have refilled (forgettable); busy has not.
        b.take("new", 1500).unwrap();
        assert_eq!(b.len(), 2);
        assert!(b.take("busy", 1500).is_ok() && b.take("busy", 1500).is_err(), "busy kept its state");
        // All active: the least recently used goes.
        let mut b = Buckets::with_capacity(1, 5, 2);
        b.take("a", 0).unwrap();
        b.take("b", 1).unwrap();
        b.take("c", 2).unwrap();
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn denials_beyond_the_budget_become_one_summary() {
        let mut t = AuditThrottle::new(2, 1000);
        assert_eq!(t.note(0), AuditVerdict::Record);
        assert_eq!(t.note(10), AuditVerdict::Record);
        assert_eq!(t.note(20), AuditVerdict::Suppress { first: true });
        assert_eq!(t.note(30), AuditVerdict::Suppress { first: false });
        assert_eq!(t.note(999), AuditVerdict::Suppress { first: false });
        assert_eq!(t.take_suppressed(), 3);
        assert_eq!(t.take_suppressed(), 0);
        // A new window records again.
        assert_eq!(t.note(1000), AuditVerdict::Record);
        assert_eq!(t.note(1001), AuditVerdict::Record);
        assert_eq!(t.note(1002), AuditVerdict::Suppress { first: true });
    }
}
