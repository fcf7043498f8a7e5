//! The health model: pure, deterministic code over reports and an injected clock.
//!
//! Agents report each evaluation of each check ([`Report`]). Per (vantage agent, check) a
//! [`Track`] applies hysteresis: `down_after` consecutive unreachable reports make it `down`,
//! `down_after` consecutive SLO breaches make it `degraded`, `up_after` consecutive good
//! reports bring it back `up`. A region is `down` only when a quorum of vantage points (agents
//! checking it, from its own region or others) each see every one of their checks on it down;
//! `degraded` when any vantage sees trouble short of that. Silence is not evidence: a vantage
//! that stopped reporting is left out, and a region nobody reports on keeps its last state.

use crate::command::{CheckTransition, HealthState, Region, RegionTransition};
use crate::store::ReplicatedHealth;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Hysteresis thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Consecutive bad evaluations before a check goes down (unreachable) or degraded (SLO).
    pub down_after: u32,
    /// Consecutive good evaluations before it comes back up.
    pub up_after: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { down_after: 3, up_after: 3 }
    }
}

/// One SLO's outcome in a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SloOutcome {
    /// The expression.
    pub expr: String,
    /// Current value, if known.
    pub value: Option<f64>,
    /// Whether it holds.
    pub ok: bool,
}

/// One evaluation of one check by one agent.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Report {
    /// Check name.
    pub check: String,
    /// Region the check measures.
    pub region: String,
    /// The newest probe reached the target.
    pub reachable: bool,
    /// Every SLO holds (and the probe was reachable).
    pub slo_ok: bool,
    /// SLO outcomes.
    pub slo: Vec<SloOutcome>,
    /// Window statistics and type-specific values.
    pub values: BTreeMap<String, f64>,
    /// Type-specific facts.
    pub labels: BTreeMap<String, String>,
    /// What went wrong.
    pub error: String,
}

/// What an agent declared about a check when it connected.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckDecl {
    /// Check name.
    pub name: String,
    /// Check type.
    pub kind: String,
    /// Region it measures.
    pub region: String,
    /// Cadence.
    pub interval_ms: u64,
    /// Probe timeout.
    pub timeout_ms: u64,
}

/// The model's view of one check from one vantage.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    /// Vantage agent.
    pub agent: String,
    /// The agent's region.
    pub vantage_region: String,
    /// Check name.
    pub check: String,
    /// Check type.
    pub kind: String,
    /// Region measured.
    pub region: String,
    /// Current state.
    pub state: HealthState,
    /// Since when.
    pub since_ms: i64,
    /// When the last report arrived (0: never in this leader's term).
    pub last_report_ms: i64,
    /// Silence longer than this makes the track stale.
    pub stale_after_ms: i64,
    /// The last report.
    pub last: Option<Report>,
    unreachable_run: u32,
    breach_run: u32,
    good_run: u32,
    reachable_run: u32,
    /// Reports received by this model (this leader's term): how much fresh evidence it holds.
    reports: u32,
    /// A session declared it to this model (seeded tracks are memories until then).
    declared: bool,
}

impl Track {
    /// No report for longer than the check's cadence allows.
    pub fn is_stale(&self, now_ms: i64) -> bool {
        self.last_report_ms == 0 || now_ms - self.last_report_ms > self.stale_after_ms
    }
}

/// The model's view of one region.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RegionView {
    /// Current state.
    pub state: HealthState,
    /// Since when.
    pub since_ms: i64,
    /// Why.
    pub reason: String,
}

/// The health model held by the leader.
#[derive(Debug, Clone, Default)]
pub struct HealthModel {
    th: Thresholds,
    tracks: BTreeMap<(String, String), Track>,
    regions: BTreeMap<String, RegionView>,
}

/// How long a check may stay silent: three missed evaluations, never less than 2 s.
fn stale_after(interval_ms: u64, timeout_ms: u64) -> i64 {
    (3 * interval_ms.max(1) + timeout_ms).max(2000) as i64
}

impl HealthModel {
    /// An empty model.
    pub fn new(th: Thresholds) -> Self {
        HealthModel { th, ..Default::default() }
    }

    /// A model that starts from the replicated states (a new leader continues where the old
    /// one stopped instead of re-announcing every transition).
    pub fn seeded(th: Thresholds, rep: &ReplicatedHealth) -> Self {
        let mut m = HealthModel::new(th);
        for c in rep.checks.values() {
            m.tracks.insert(
                (c.agent.clone(), c.check.clone()),
                Track {
                    agent: c.agent.clone(),
                    vantage_region: c.vantage_region.clone(),
                    check: c.check.clone(),
                    kind: String::new(),
                    region: c.region.clone(),
                    state: c.state,
                    since_ms: c.since_ms,
                    last_report_ms: 0,
                    stale_after_ms: 2000,
                    last: None,
                    unreachable_run: 0,
                    reports: 0,
                    declared: false,
                    breach_run: 0,
                    good_run: 0,
                    reachable_run: 0,
                },
            );
        }
        for (name, r) in &rep.region_health {
            m.regions
                .insert(name.clone(), RegionView { state: r.state, since_ms: r.since_ms, reason: r.reason.clone() });
        }
        m
    }

    /// Carries over which checks the open sessions declared (type, cadence, vantage) from an
    /// older model, keeping this model's states: used when a leader reseeds from the
    /// replicated states while its sessions stay open.
    pub fn adopt_declarations(&mut self, old: &HealthModel) {
        for (key, o) in &old.tracks {
            let t = self.tracks.entry(key.clone()).or_insert_with(|| Track {
                state: HealthState::Unknown,
                since_ms: 0,
                ..o.clone()
            });
            t.kind = o.kind.clone();
            t.region = o.region.clone();
            t.vantage_region = o.vantage_region.clone();
            t.stale_after_ms = o.stale_after_ms;
            t.declared = o.declared;
        }
    }

    /// Records the checks an agent runs (creating unknown tracks for new ones).
    pub fn declare(&mut self, agent: &str, vantage_region: &str, checks: &[CheckDecl]) {
        for c in checks {
            let t = self.tracks.entry((agent.to_string(), c.name.clone())).or_insert_with(|| Track {
                agent: agent.to_string(),
                vantage_region: vantage_region.to_string(),
                check: c.name.clone(),
                kind: c.kind.clone(),
                region: c.region.clone(),
                state: HealthState::Unknown,
                since_ms: 0,
                last_report_ms: 0,
                stale_after_ms: 0,
                last: None,
                unreachable_run: 0,
                reports: 0,
                declared: false,
                breach_run: 0,
                good_run: 0,
                reachable_run: 0,
            });
            t.kind = c.kind.clone();
            t.region = c.region.clone();
            t.vantage_region = vantage_region.to_string();
            t.stale_after_ms = stale_after(c.interval_ms, c.timeout_ms);
            t.declared = true;
        }
    }

    /// Applies one report; returns the transition it caused, if any. Reports for checks the
    /// agent never declared are ignored (the session layer refuses them first).
    pub fn observe(&mut self, agent: &str, r: Report, now_ms: i64) -> Option<CheckTransition> {
        let th = self.th;
        let t = self.tracks.get_mut(&(agent.to_string(), r.check.clone()))?;
        if !r.reachable {
            t.unreachable_run += 1;
            t.breach_run += 1;
            t.good_run = 0;
            t.reachable_run = 0;
        } else if !r.slo_ok {
            t.unreachable_run = 0;
            t.breach_run += 1;
            t.good_run = 0;
            t.reachable_run += 1;
        } else {
            t.unreachable_run = 0;
            t.breach_run = 0;
            t.good_run += 1;
            t.reachable_run += 1;
        }
        let next = if t.unreachable_run >= th.down_after {
            HealthState::Down
        } else if t.good_run >= th.up_after {
            HealthState::Up
        } else if r.reachable && !r.slo_ok && t.state != HealthState::Down && t.breach_run >= th.down_after {
            HealthState::Degraded
        } else if r.reachable && !r.slo_ok && t.state == HealthState::Down && t.reachable_run >= th.up_after {
            // Reachable again but still outside its SLOs.
            HealthState::Degraded
        } else {
            t.state
        };
        t.last_report_ms = now_ms;
        t.reports += 1;
        t.last = Some(r);
        if next == t.state {
            return None;
        }
        let from = t.state;
        t.state = next;
        t.since_ms = now_ms;
        Some(CheckTransition {
            agent: t.agent.clone(),
            vantage_region: t.vantage_region.clone(),
            check: t.check.clone(),
            region: t.region.clone(),
            from,
            to: next,
            evidence: check_evidence(t),
        })
    }

    /// Recomputes every region's state from the vantages' current views.
    pub fn evaluate_regions(&mut self, regions: &BTreeMap<String, Region>, now_ms: i64) -> Vec<RegionTransition> {
        let mut out = Vec::new();
        for (name, region) in regions {
            let Some((state, reason, evidence)) = self.region_verdict(name, region.down_quorum, now_ms) else {
                continue;
            };
            let view = self.regions.entry(name.clone()).or_default();
            if view.state == state {
                view.reason = reason;
                continue;
            }
            out.push(RegionTransition {
                region: name.clone(),
                from: view.state,
                to: state,
                reason: reason.clone(),
                evidence,
            });
            *view = RegionView { state, since_ms: now_ms, reason };
        }
        out
    }

    /// The verdict for one region, or None when no vantage reports on it (keep the last state).
    fn region_verdict(
        &self,
        region: &str,
        down_quorum: u32,
        now_ms: i64,
    ) -> Option<(HealthState, String, serde_json::Value)> {
        let on_region: Vec<&Track> = self.tracks.values().filter(|t| t.region == region).collect();
        let all_vantages: BTreeSet<&str> = on_region.iter().map(|t| t.agent.as_str()).collect();
        let mut views: BTreeMap<&str, Vec<&Track>> = BTreeMap::new();
        for t in on_region.iter().filter(|t| !t.is_stale(now_ms)) {
            views.entry(t.agent.as_str()).or_default().push(t);
        }
        if views.is_empty() {
            return None;
        }
        let quorum = if down_quorum > 0 { down_quorum as usize } else { all_vantages.len() / 2 + 1 };
        let mut verdicts = BTreeMap::new();
        for (agent, tracks) in &views {
            verdicts.insert(*agent, vantage_view(tracks));
        }
        let downs = verdicts.values().filter(|v| **v == HealthState::Down).count();
        let troubled = verdicts.values().filter(|v| matches!(v, HealthState::Down | HealthState::Degraded)).count();
        let ups = verdicts.values().filter(|v| **v == HealthState::Up).count();
        let n = all_vantages.len();
        let (state, reason) = if downs >= quorum {
            (HealthState::Down, format!("{downs} of {n} vantage points see it down (quorum {quorum})"))
        } else if troubled > 0 {
            let worst = on_region
                .iter()
                .filter(|t| !t.is_stale(now_ms) && matches!(t.state, HealthState::Down | HealthState::Degraded))
                .map(|t| format!("{} from {} is {}{}", t.check, t.agent, t.state.as_str(), breach_text(t)))
                .collect::<Vec<_>>()
                .join("; ");
            let below =
                if downs > 0 { format!(" ({downs} of {n} see it down, below quorum {quorum})") } else { String::new() };
            (HealthState::Degraded, format!("{worst}{below}"))
        } else if ups > 0 {
            let checks = views.values().map(|v| v.len()).sum::<usize>();
            (HealthState::Up, format!("{checks} checks from {} vantage points up", views.len()))
        } else {
            (HealthState::Unknown, "no verdict yet".to_string())
        };
        let vantages: serde_json::Map<String, serde_json::Value> = views
            .iter()
            .map(|(agent, tracks)| {
                let checks: serde_json::Map<String, serde_json::Value> =
                    tracks.iter().map(|t| (t.check.clone(), check_evidence(t))).collect();
                let v = serde_json::json!({
                    "view": verdicts[agent].as_str(),
                    "region": tracks.first().map(|t| t.vantage_region.clone()).unwrap_or_default(),
                    "checks": checks,
                });
                (agent.to_string(), v)
            })
            .collect();
        let evidence =
            serde_json::json!({ "quorum": quorum, "vantages_total": n, "down": downs, "vantages": vantages });
        Some((state, reason, evidence))
    }

    /// The region's state on fresh evidence only: None until some vantage has reported on it
    /// at least `down_after` times to this model and is not stale — enough for the
    /// hysteresis to have moved. A new leader's seeded states are memory, not evidence.
    pub fn fresh_verdict(&self, region: &str, down_quorum: u32, now_ms: i64) -> Option<HealthState> {
        // Every check an open session declared on the region must have had its say (a check
        // that reported this term and then fell silent is left out, as in any verdict).
        let declared: Vec<&Track> = self.tracks.values().filter(|t| t.region == region && t.declared).collect();
        let waiting = declared.iter().any(|t| t.reports < self.th.down_after && !(t.reports > 0 && t.is_stale(now_ms)));
        if declared.is_empty() || waiting {
            return None;
        }
        self.region_verdict(region, down_quorum, now_ms).map(|(s, _, _)| s)
    }

    /// Every track, for the board.
    pub fn tracks(&self) -> impl Iterator<Item = &Track> {
        self.tracks.values()
    }

    /// The model's region views.
    pub fn region_view(&self, region: &str) -> Option<&RegionView> {
        self.regions.get(region)
    }
}

/// One vantage's view of a region from its (fresh) checks on it.
fn vantage_view(tracks: &[&Track]) -> HealthState {
    let known: Vec<HealthState> = tracks.iter().map(|t| t.state).filter(|s| *s != HealthState::Unknown).collect();
    if known.is_empty() {
        HealthState::Unknown
    } else if known.len() == tracks.len() && known.iter().all(|s| *s == HealthState::Down) {
        HealthState::Down
    } else if known.iter().any(|s| matches!(s, HealthState::Down | HealthState::Degraded)) {
        HealthState::Degraded
    } else {
        HealthState::Up
    }
}

fn breach_text(t: &Track) -> String {
    let Some(r) = &t.last else { return String::new() };
    if !r.reachable {
        return format!(" ({})", if r.error.is_empty() { "unreachable" } else { r.error.as_str() });
    }
    let bad: Vec<String> = r
        .slo
        .iter()
        .filter(|s| !s.ok)
        .map(|s| match s.value {
            Some(v) => format!("{} (value {})", s.expr, (v * 1000.0).round() / 1000.0),
            None => format!("{} (no value)", s.expr),
        })
        .collect();
    match (bad.is_empty(), r.error.is_empty()) {
        (false, _) => format!(" (breaks {})", bad.join(", ")),
        // A wrong answer without an SLO to break: the probe's own words say why.
        (true, false) => format!(" ({})", r.error),
        (true, true) => String::new(),
    }
}

fn check_evidence(t: &Track) -> serde_json::Value {
    match &t.last {
        Some(r) => serde_json::json!({
            "state": t.state.as_str(), "reachable": r.reachable, "slo_ok": r.slo_ok,
            "slo": r.slo, "values": r.values, "error": r.error,
        }),
        None => serde_json::json!({ "state": t.state.as_str() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, region: &str) -> CheckDecl {
        CheckDecl { name: name.into(), kind: "http".into(), region: region.into(), interval_ms: 500, timeout_ms: 400 }
    }

    fn rep(check: &str, region: &str, reachable: bool, slo_ok: bool) -> Report {
        Report { check: check.into(), region: region.into(), reachable, slo_ok, ..Default::default() }
    }

    fn regions(q: u32) -> BTreeMap<String, Region> {
        let r = Region { name: "eu-west".into(), display_name: String::new(), roles: BTreeMap::new(), down_quorum: q };
        BTreeMap::from([("eu-west".to_string(), r)])
    }

    /// Feeds `n` reports one second apart starting at `t`; returns the transitions.
    fn feed(m: &mut HealthModel, agent: &str, r: &Report, n: u32, t: &mut i64) -> Vec<CheckTransition> {
        let mut out = Vec::new();
        for _ in 0..n {
            *t += 100;
            out.extend(m.observe(agent, r.clone(), *t));
        }
        out
    }

    #[test]
    fn hysteresis_needs_n_bad_and_m_good() {
        let mut m = HealthModel::new(Thresholds { down_after: 3, up_after: 2 });
        m.declare("a", "eu-west", &[decl("api", "eu-west")]);
        let mut t = 1000;
        assert_eq!(feed(&mut m, "a", &rep("api", "eu-west", true, true), 1, &mut t).len(), 0);
        let up = feed(&mut m, "a", &rep("api", "eu-west", true, true), 1, &mut t);
        assert_eq!((up[0].from, up[0].to), (HealthState::Unknown, HealthState::Up));
        // Two breaches are a blip, the third degrades.
        assert!(feed(&mut m, "a", &rep("api", "eu-west", true, false), 2, &mut t).is_empty());
        let d = feed(&mut m, "a", &rep("api", "eu-west", true, false), 1, &mut t);
        assert_eq!(d[0].to, HealthState::Degraded);
        // One good report between bad ones resets the count.
        feed(&mut m, "a", &rep("api", "eu-west", true, true), 1, &mut t);
        assert!(feed(&mut m, "a", &rep("api", "eu-west", false, false), 2, &mut t).is_empty());
        let down = feed(&mut m, "a", &rep("api", "eu-west", false, false), 1, &mut t);
        assert_eq!((down[0].from, down[0].to), (HealthState::Degraded, HealthState::Down));
        // Reachable but breaching after M reports: degraded, not up.
        let back = feed(&mut m, "a", &rep("api", "eu-west", true, false), 2, &mut t);
        assert_eq!(back[0].to, HealthState::Degraded);
        let up = feed(&mut m, "a", &rep("api", "eu-west", true, true), 2, &mut t);
        assert_eq!(up[0].to, HealthState::Up);
    }

    #[test]
    fn one_vantage_cannot_take_a_region_down() {
        let mut m = HealthModel::new(Thresholds { down_after: 1, up_after: 1 });
        m.declare("own", "eu-west", &[decl("api", "eu-west")]);
        m.declare("peer", "eu-central", &[decl("west-api", "eu-west")]);
        let mut t = 10_000;
        feed(&mut m, "own", &rep("api", "eu-west", true, true), 1, &mut t);
        feed(&mut m, "peer", &rep("west-api", "eu-west", true, true), 1, &mut t);
        let tr = m.evaluate_regions(&regions(0), t);
        assert_eq!(tr[0].to, HealthState::Up);

        feed(&mut m, "peer", &rep("west-api", "eu-west", false, false), 1, &mut t);
        let tr = m.evaluate_regions(&regions(0), t);
        assert_eq!(tr[0].to, HealthState::Degraded, "{}", tr[0].reason);
        assert!(tr[0].reason.contains("below quorum 2"), "{}", tr[0].reason);

        feed(&mut m, "own", &rep("api", "eu-west", false, false), 1, &mut t);
        let tr = m.evaluate_regions(&regions(0), t);
        assert_eq!(tr[0].to, HealthState::Down);
        assert_eq!(tr[0].evidence["down"], 2);
        assert!(tr[0].evidence["vantages"]["peer"]["checks"]["west-api"]["reachable"] == false);
    }

    #[test]
    fn configured_quorum_and_stale_vantages() {
        let mut m = HealthModel::new(Thresholds { down_after: 1, up_after: 1 });
        for a in ["a", "b", "c"] {
            m.declare(a, "x", &[decl("api", "eu-west")]);
        }
        let mut t = 10_000;
        for a in ["a", "b", "c"] {
            feed(&mut m, a, &rep("api", "eu-west", true, true), 1, &mut t);
        }
        m.evaluate_regions(&regions(1), t);
        feed(&mut m, "a", &rep("api", "eu-west", false, false), 1, &mut t);
        assert_eq!(m.evaluate_regions(&regions(1), t)[0].to, HealthState::Down, "quorum 1: one vantage suffices");

        // Everyone falls silent: the region keeps its last state rather than guessing.
        t += 60_000;
        assert!(m.evaluate_regions(&regions(1), t).is_empty());
        assert_eq!(m.region_view("eu-west").unwrap().state, HealthState::Down);
    }

    #[test]
    fn gates_need_fresh_evidence_not_seeded_memory() {
        let mut rep_state = ReplicatedHealth::default();
        rep_state.region_health.insert(
            "eu-west".into(),
            crate::command::RegionStatus { state: HealthState::Up, since_ms: 1, reason: String::new() },
        );
        let mut m = HealthModel::seeded(Thresholds { down_after: 2, up_after: 2 }, &rep_state);
        m.declare("a", "eu-west", &[decl("api", "eu-west")]);
        let mut t = 10_000;
        assert_eq!(m.fresh_verdict("eu-west", 0, t), None, "a new leader has no evidence yet");
        feed(&mut m, "a", &rep("api", "eu-west", true, false), 1, &mut t);
        assert_eq!(m.fresh_verdict("eu-west", 0, t), None, "one report cannot have moved the hysteresis");
        feed(&mut m, "a", &rep("api", "eu-west", true, false), 1, &mut t);
        assert_eq!(m.fresh_verdict("eu-west", 0, t), Some(HealthState::Degraded));
    }

    #[test]
    fn seeded_model_continues_without_reannouncing() {
        let mut rep_state = ReplicatedHealth::default();
        rep_state.checks.insert(
            "a/api".into(),
            crate::command::CheckStatus {
                agent: "a".into(),
                vantage_region: "eu-west".into(),
                check: "api".into(),
                region: "eu-west".into(),
                state: HealthState::Up,
                since_ms: 5,
            },
        );
        let mut m = HealthModel::seeded(Thresholds { down_after: 2, up_after: 2 }, &rep_state);
        m.declare("a", "eu-west", &[decl("api", "eu-west")]);
        let mut t = 1000;
        assert!(feed(&mut m, "a", &rep("api", "eu-west", true, true), 5, &mut t).is_empty());
    }
}
