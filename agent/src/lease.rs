//! The lease from the coordinator quorum, and self-fencing when it runs out.
//!
//! The coordinator leader acks each heartbeat with a lease (`HeartbeatAck.lease_ms > 0`) only
//! after confirming it still holds a quorum. The agent counts the lease from when it *sent*
//! that heartbeat (the coordinator confirmed later, so the agent's count can only err towards
//! fencing early), and from process start before the first lease.
//!
//! A postgres resource with `self_fence: {after, mode}` is fenced (the `fence` step's code,
//! online or offline) once no lease is newer than `after`: a primary cut off from the control
//! plane stops taking writes before the coordinators, which count its primaries as fenced
//! only after that time plus a margin, promote another one. A standby is left alone. The agent
//! never unfences by itself: a run or an operator reopens writes with `unfreeze_writes`. The
//! trade-off is Patroni's: safety over availability. A control-plane outage that leaves the
//! database healthy still stops its writes, because from inside the partition the agent
//! cannot tell it apart from a failover happening elsewhere.
//!
//! Once per lease-loss episode: after fencing, a resource is not fenced again until a lease
//! has been granted and lost again, so an operator who reopens writes during a long outage is
//! not overruled every second. A fence that failed (the server neither answers nor declares a
//! data directory) is retried every [`RETRY`].

use crate::config::{AgentConfig, FenceMode};
use crate::metrics::AgentMetrics;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Heartbeat interval when no resource self-fences (or `after / 3` is longer).
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Between attempts at a fence that failed.
pub const RETRY: Duration = Duration::from_secs(1);
/// Bound on one self-fence.
const FENCE_TIMEOUT: Duration = Duration::from_secs(30);

/// When the agent last held a lease.
#[derive(Debug)]
pub struct Lease {
    started: Instant,
    /// Send time of the newest heartbeat whose ack carried a lease.
    last: Mutex<Option<Instant>>,
}

impl Lease {
    /// No lease yet; the count starts now.
    pub fn new() -> Arc<Lease> {
        Arc::new(Lease { started: Instant::now(), last: Mutex::new(None) })
    }

    /// A heartbeat sent at `sent` was acked with a lease.
    pub fn granted(&self, sent: Instant) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|l| sent > l) {
            *last = Some(sent);
        }
    }

    /// Where the count without a lease starts: the newest lease, else process start.
    pub fn since(&self) -> Instant {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or(self.started)
    }

    /// Whether any lease has been granted since start.
    pub fn ever(&self) -> bool {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}

/// The self-fencing resources: name → (after, mode).
fn targets(cfg: &AgentConfig) -> BTreeMap<String, (Duration, FenceMode)> {
    cfg.resources.postgres.iter().filter_map(|(n, r)| r.self_fence.map(|s| (n.clone(), (s.after, s.mode)))).collect()
}

/// `Hello.self_fence_after_ms`: the longest `after` (the coordinator must wait for the slowest
/// resource), 0 when none self-fences.
pub fn self_fence_after_ms(cfg: &AgentConfig) -> u64 {
    targets(cfg).values().map(|(a, _)| a.as_millis() as u64).max().unwrap_or(0)
}

/// Heartbeats often enough that one lost heartbeat cannot expire the shortest `after`.
pub fn heartbeat_interval(cfg: &AgentConfig) -> Duration {
    targets(cfg).values().map(|(a, _)| *a / 3).min().map_or(HEARTBEAT, |d| d.min(HEARTBEAT))
}

/// Per resource: the lease mark of the episode it was fenced in, and the last failed attempt.
#[derive(Default)]
struct State {
    fenced_in: Option<Instant>,
    failed_at: Option<Instant>,
}

/// Watches the lease and self-fences; runs for the life of the process (returns at once when
/// no resource self-fences).
pub async fn run(cfg: Arc<AgentConfig>, lease: Arc<Lease>, metrics: Arc<AgentMetrics>) {
    let targets = targets(&cfg);
    let Some(shortest) = targets.values().map(|(a, _)| *a).min() else {
        return;
    };
    // Fencing within a thirtieth of `after` of the deadline (a time comparison per tick).
    let tick = (shortest / 30).clamp(Duration::from_millis(20), Duration::from_millis(200));
    let mut state: BTreeMap<&str, State> = targets.keys().map(|k| (k.as_str(), State::default())).collect();
    tracing::info!(resources = ?targets.keys().collect::<Vec<_>>(), ?tick, "self-fencing armed");
    loop {
        tokio::time::sleep(tick).await;
        let since = lease.since();
        let age = since.elapsed();
        metrics.lease_age_seconds.set(age.as_secs_f64());
        for (name, (after, mode)) in &targets {
            let st = state.get_mut(name.as_str()).expect("a state per target");
            if age <= *after {
                if st.fenced_in.take().is_some() {
                    tracing::warn!(
                        db = %name,
                        "lease regained: {name} stays fenced until a run or an operator reopens writes (unfreeze_writes)"
                    );
                    metrics.self_fenced.get_or_create(&vec![("database".to_string(), name.clone())]).set(0);
                }
                st.failed_at = None;
                continue;
            }
            if st.fenced_in == Some(since) || st.failed_at.is_some_and(|t| t.elapsed() < RETRY) {
                continue;
            }
            let why = if lease.ever() { "since the last lease" } else { "since start, with no lease yet" };
            tracing::error!(
                db = %name,
                mode = mode.as_str(),
                "SELF-FENCE: no lease from the coordinator quorum for {} ms {why} (self_fence.after {} ms): fencing {name}",
                age.as_millis(),
                after.as_millis()
            );
            let ctx = crate::steps::StepContext { resources: &cfg.resources, timeout: FENCE_TIMEOUT };
            let o = crate::steps::fence::self_fence(&ctx, name, *mode).await;
            if o.ok {
                tracing::error!(db = %name, after_ms = age.as_millis() as u64, "SELF-FENCE done: {}", o.detail);
                st.fenced_in = Some(since);
                st.failed_at = None;
                if o.data["fenced"] == true {
                    let labels = vec![("database".to_string(), name.clone())];
                    metrics.self_fenced.get_or_create(&labels).set(1);
                    metrics.self_fences.get_or_create(&labels).inc();
                }
            } else {
                tracing::error!(db = %name, "SELF-FENCE FAILED (retrying every {RETRY:?}): {}", o.detail);
                st.failed_at = Some(Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_lease_counts_from_the_newest_send_time() {
        let l = Lease::new();
        assert!(!l.ever());
        assert_eq!(l.since(), l.started);
        let t1 = Instant::now();
        let t0 = t1 - Duration::from_millis(5);
        l.granted(t1);
        // An ack arriving late for an older heartbeat does not move the lease back.
        l.granted(t0);
        assert_eq!(l.since(), t1);
        assert!(l.ever());
    }

    #[test]
    fn heartbeats_follow_the_shortest_after() {
        let yaml = |sf: &str| {
            format!(
                "agent_id: a\nregion: eu-west\ncoordinators: [127.0.0.1:7001]\nresources:\n  postgres:\n    \
                 a: {{ dsn: 'host=127.0.0.1 user=postgres'{sf} }}\n    b: {{ dsn: 'host=127.0.0.1 user=postgres' }}\n"
            )
        };
        let none = crate::config::parse("a.yaml", &yaml("")).unwrap();
        assert_eq!((heartbeat_interval(&none), self_fence_after_ms(&none)), (HEARTBEAT, 0));
        let short = crate::config::parse("a.yaml", &yaml(", self_fence: { after: 1500ms }")).unwrap();
        assert_eq!((heartbeat_interval(&short), self_fence_after_ms(&short)), (Duration::from_millis(500), 1500));
        let long = crate::config::parse("a.yaml", &yaml(", self_fence: { after: 10s, mode: read_only }")).unwrap();
        assert_eq!((heartbeat_interval(&long), self_fence_after_ms(&long)), (HEARTBEAT, 10_000));
    }
}
