//! Wall-clock time for the coordinator, with a replaceable source.
//!
//! Every time the coordinator stamps on a decision (leader time on requests, health freshness,
//! run ids) comes from [`now_ms`]. Real binaries read the system clock; the deterministic
//! simulation (`tests/sim`) installs a source driven by simulated time, so a seed replays exactly.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// A clock: Unix milliseconds.
pub type Source = fn() -> i64;

static SOURCE: OnceLock<Source> = OnceLock::new();

/// Current wall-clock time in Unix milliseconds, from the installed source (the system clock
/// unless [`set_source`] was called).
pub fn now_ms() -> i64 {
    match SOURCE.get() {
        Some(f) => f(),
        None => system_ms(),
    }
}

/// The system clock in Unix milliseconds.
pub fn system_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Installs the process-wide clock source, once (later calls are ignored and return false). A
/// source must be cheap and must not block; the simulation's reads thread-local simulated time.
pub fn set_source(f: Source) -> bool {
    SOURCE.set(f).is_ok()
}
