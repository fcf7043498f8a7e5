//! The leader's live health hub: agent sessions feed it reports, a ticker turns the model's
//! transitions into replicated commands, and `GetHealth` reads the board from it.
//!
//! Everything here is memory on the leader (reports arrive every few hundred ms per check; they
//! never enter the Raft log). Only transitions are committed. A new leader seeds its model from
//! the replicated states, so it continues rather than re-announcing.

use crate::command::{CheckTransition, HealthState, RegionTransition};
use crate::health::{CheckDecl, HealthModel, Report, Thresholds};
use crate::store::ReplicatedHealth;
use drcut_proto::v1 as pb;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Liveness of one agent (leader memory only).
#[derive(Debug, Clone, Default)]
struct Liveness {
    sessions: u32,
    last_seen_ms: i64,
    /// The last second (Unix time) the certificate of its latest session verifies.
    cert_valid_until: Option<u64>,
}

struct Inner {
    /// The leader term the model was seeded in; 0 = not seeded.
    term: u64,
    model: HealthModel,
    pending: Vec<CheckTransition>,
    live: BTreeMap<String, Liveness>,
    /// The last report with replication lag per (agent, check). Kept past failures: after the
    /// primary is lost it is the measure of what was lost.
    lag: BTreeMap<(String, String), LagSample>,
}

/// A standby's replication sample as the leader received it.
#[derive(Debug, Clone, PartialEq)]
pub struct LagSample {
    /// Leader time of arrival.
    pub at_ms: i64,
    /// The vantage agent.
    pub agent: String,
    /// The check.
    pub check: String,
    /// The region of the standby.
    pub region: String,
    /// `receive_lag_bytes`, `lag_seconds`, `synchronous`, ...
    pub values: BTreeMap<String, f64>,
}

/// Shared by the agent sessions, the ticker and the API.
pub struct HealthHub {
    th: Thresholds,
    inner: Mutex<Inner>,
}

impl HealthHub {
    /// An empty hub.
    pub fn new(th: Thresholds) -> Self {
        HealthHub {
            th,
            inner: Mutex::new(Inner {
                term: 0,
                model: HealthModel::new(th),
                pending: vec![],
                live: BTreeMap::new(),
                lag: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reseeds the model from the replicated states when this node starts a new term as
    /// leader. Sessions from the previous term were redirected, so only liveness carries over.
    pub fn ensure_term(&self, term: u64, rep: &ReplicatedHealth) {
        let mut g = self.lock();
        if g.term != term {
            g.term = term;
            let mut model = HealthModel::seeded(self.th, rep);
            model.adopt_declarations(&g.model);
            g.model = model;
            g.pending.clear();
        }
    }

    /// An agent opened a session and declared its checks.
    pub fn hello(&self, agent: &str, vantage_region: &str, checks: &[CheckDecl], now_ms: i64) {
        let mut g = self.lock();
        g.model.declare(agent, vantage_region, checks);
        let l = g.live.entry(agent.to_string()).or_default();
        l.sessions += 1;
        l.last_seen_ms = now_ms;
    }

    /// The certificate an agent's session presented verifies until `valid_until` (Unix time).
    pub fn agent_certificate(&self, agent: &str, valid_until: Option<u64>) {
        if let Some(l) = self.lock().live.get_mut(agent) {
            l.cert_valid_until = valid_until;
        }
    }

    /// Connected agents and when their certificates stop verifying (Unix time).
    pub fn agent_certificates(&self) -> Vec<(String, u64)> {
        let g = self.lock();
        g.live
            .iter()
            .filter(|(_, l)| l.sessions > 0)
            .filter_map(|(a, l)| Some((a.clone(), l.cert_valid_until?)))
            .collect()
    }

    /// A session ended.
    pub fn goodbye(&self, agent: &str, now_ms: i64) {
        let mut g = self.lock();
        if let Some(l) = g.live.get_mut(agent) {
            l.sessions = l.sessions.saturating_sub(1);
            l.last_seen_ms = now_ms;
        }
    }

    /// Any sign of life from an agent.
    pub fn seen(&self, agent: &str, now_ms: i64) {
        if let Some(l) = self.lock().live.get_mut(agent) {
            l.last_seen_ms = now_ms;
        }
    }

    /// One report; a transition it causes waits for the next tick to be committed.
    pub fn report(&self, agent: &str, r: Report, now_ms: i64) {
        let mut g = self.lock();
        if let Some(l) = g.live.get_mut(agent) {
            l.last_seen_ms = now_ms;
        }
        // Only a standby measured against its primary says what it lacks: the agent reports
        // `synchronous` exactly when the primary answered the same probe.
        if r.values.contains_key("receive_lag_bytes") && r.values.contains_key("synchronous") {
            let sample = LagSample {
                at_ms: now_ms,
                agent: agent.to_string(),
                check: r.check.clone(),
                region: r.region.clone(),
                values: r.values.clone(),
            };
            g.lag.insert((agent.to_string(), r.check.clone()), sample);
        }
        if let Some(t) = g.model.observe(agent, r, now_ms) {
            g.pending.push(t);
        }
    }

    /// The transitions to commit now: pending check transitions and fresh region verdicts.
    pub fn take_transitions(
        &self,
        rep: &ReplicatedHealth,
        now_ms: i64,
    ) -> (Vec<CheckTransition>, Vec<RegionTransition>) {
        let mut g = self.lock();
        let checks = std::mem::take(&mut g.pending);
        let regions = g.model.evaluate_regions(&rep.regions, now_ms);
        (checks, regions)
    }

    /// The latest replication sample of a standby in `region`.
    pub fn last_lag(&self, region: &str) -> Option<LagSample> {
        self.lock().lag.values().filter(|s| s.region == region).max_by_key(|s| s.at_ms).cloned()
    }

    /// Number of open agent sessions.
    pub fn sessions(&self) -> u32 {
        self.lock().live.values().map(|l| l.sessions).sum()
    }

    /// The board: replicated states overlaid with the live model when `live`.
    pub fn board(&self, rep: &ReplicatedHealth, node_id: u64, live: bool, now_ms: i64) -> pb::HealthBoard {
        let g = self.lock();
        let mut regions: BTreeMap<String, pb::RegionHealth> = rep
            .regions
            .keys()
            .map(|name| {
                let st = rep.region_health.get(name).cloned().unwrap_or_default();
                let (state, since, reason) = match g.model.region_view(name).filter(|_| live) {
                    Some(v) => (v.state, v.since_ms, v.reason.clone()),
                    None => (st.state, st.since_ms, st.reason),
                };
                let rh = pb::RegionHealth {
                    region: name.clone(),
                    state: state.as_str().into(),
                    since_unix_ms: since,
                    reason,
                    checks: vec![],
                };
                (name.clone(), rh)
            })
            .collect();
        if live {
            for t in g.model.tracks() {
                let Some(rh) = regions.get_mut(&t.region) else { continue };
                let last = t.last.clone().unwrap_or_default();
                rh.checks.push(pb::CheckHealth {
                    check: t.check.clone(),
                    r#type: t.kind.clone(),
                    region: t.region.clone(),
                    vantage_agent: t.agent.clone(),
                    vantage_region: t.vantage_region.clone(),
                    state: t.state.as_str().into(),
                    since_unix_ms: t.since_ms,
                    slo: last
                        .slo
                        .iter()
                        .map(|s| pb::SloResult {
                            expr: s.expr.clone(),
                            has_value: s.value.is_some(),
                            value: s.value.unwrap_or(0.0),
                            ok: s.ok,
                        })
                        .collect(),
                    values: last.values.into_iter().collect(),
                    labels: last.labels.into_iter().collect(),
                    error: last.error,
                    last_report_unix_ms: t.last_report_ms,
                    stale: t.is_stale(now_ms),
                });
            }
        } else {
            for c in rep.checks.values() {
                let Some(rh) = regions.get_mut(&c.region) else { continue };
                rh.checks.push(pb::CheckHealth {
                    check: c.check.clone(),
                    region: c.region.clone(),
                    vantage_agent: c.agent.clone(),
                    vantage_region: c.vantage_region.clone(),
                    state: c.state.as_str().into(),
                    since_unix_ms: c.since_ms,
                    stale: true,
                    ..Default::default()
                });
            }
        }
        let agents = rep
            .agents
            .values()
            .map(|a| {
                let l = g.live.get(&a.agent_id).cloned().unwrap_or_default();
                pb::AgentInfo {
                    agent_id: a.agent_id.clone(),
                    region: a.region.clone(),
                    version: a.version.clone(),
                    capabilities: a.capabilities.clone(),
                    connected: live && l.sessions > 0,
                    last_seen_unix_ms: l.last_seen_ms,
                }
            })
            .collect();
        pb::HealthBoard { regions: regions.into_values().collect(), agents, node_id, live }
    }

    /// A region's state for a gate, on fresh evidence only (None: wait for reports).
    pub fn gate_state(&self, rep: &ReplicatedHealth, region: &str, now_ms: i64) -> Option<HealthState> {
        let q = rep.regions.get(region).map(|r| r.down_quorum).unwrap_or(0);
        self.lock().model.fresh_verdict(region, q, now_ms)
    }

    /// Region states for metrics: (region, state).
    pub fn region_states(&self, rep: &ReplicatedHealth) -> Vec<(String, HealthState)> {
        let g = self.lock();
        rep.regions
            .keys()
            .map(|n| {
                let s = g
                    .model
                    .region_view(n)
                    .map(|v| v.state)
                    .or_else(|| rep.region_health.get(n).map(|r| r.state))
                    .unwrap_or_default();
                (n.clone(), s)
            })
            .collect()
    }

    /// Latest values per (agent, check, region, metric), for metrics.
    pub fn check_values(&self) -> Vec<(String, String, String, String, f64)> {
        let g = self.lock();
        g.model
            .tracks()
            .filter_map(|t| t.last.as_ref().map(|r| (t, r)))
            .flat_map(|(t, r)| {
                r.values.iter().map(|(k, v)| (t.agent.clone(), t.check.clone(), t.region.clone(), k.clone(), *v))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_certificates_are_listed_while_connected() {
        let hub = HealthHub::new(Thresholds { down_after: 2, up_after: 2 });
        hub.hello("agent-a", "eu-west", &[], 1);
        hub.agent_certificate("agent-a", Some(2_000_000_000));
        hub.hello("agent-b", "eu-central", &[], 1);
        hub.agent_certificate("agent-b", None);
        assert_eq!(hub.agent_certificates(), vec![("agent-a".to_string(), 2_000_000_000)]);
        hub.goodbye("agent-a", 2);
        assert!(hub.agent_certificates().is_empty(), "a disconnected agent is not reported");
    }
}
