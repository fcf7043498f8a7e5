//! Polling with a deadline: tests wait for an outcome and fail with the last reason it was
//! not there yet, rather than sleeping and hoping.

use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::time::Instant;

/// How often a condition is re-checked.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Calls `check` until it returns `Ok`, or fails after `timeout` with the last error.
pub async fn until<T>(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(anyhow!("timed out after {timeout:?} waiting for {what}; last: {e:#}"));
            }
            Err(_) => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}

/// Checks that `check` keeps returning `Ok` for the whole of `duration`: an invariant that
/// must hold over time (a stable leader), not a state to reach.
pub async fn always(what: &str, duration: Duration, mut check: impl AsyncFnMut() -> Result<()>) -> Result<()> {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        check().await.map_err(|e| anyhow!("{what} stopped holding: {e:#}"))?;
        tokio::time::sleep(POLL_EVERY * 2).await;
    }
    Ok(())
}
