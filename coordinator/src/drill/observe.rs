//! What the drill engine reads off the replicated state, as pure functions: probes (steady
//! state, guardrails), the detection milestones, and the milestones of a response run.

use super::record::milestone;
use super::spec::{Probe, Require};
use crate::command::{HealthState, RunRecord};
use crate::store::ReplicatedHealth;

fn satisfies(state: HealthState, require: Require) -> bool {
    match require {
        Require::Up => state == HealthState::Up,
        Require::NotDown => matches!(state, HealthState::Up | HealthState::Degraded),
    }
}

/// A probe's name for reports: `eu-central`, `login-api@eu-central`, `login-api@eu-central from eu-north`.
pub fn probe_name(p: &Probe) -> String {
    let mut s = match &p.check {
        Some(c) => format!("{c}@{}", p.region),
        None => format!("region {}", p.region),
    };
    if let Some(v) = &p.vantage {
        s.push_str(&format!(" from {v}"));
    }
    let req = match p.require {
        Require::Up => "up",
        Require::NotDown => "not down",
    };
    format!("{s} is {req}")
}

/// Whether `p` holds on the replicated health, and the evidence.
pub fn evaluate(p: &Probe, rep: &ReplicatedHealth) -> (bool, String) {
    match &p.check {
        None => {
            let state = rep.region_health.get(&p.region).map(|h| h.state).unwrap_or_default();
            (satisfies(state, p.require), format!("region {} is {}", p.region, state.as_str()))
        }
        Some(check) => {
            let seen: Vec<_> = rep
                .checks
                .values()
                .filter(|c| &c.check == check && c.region == p.region)
                .filter(|c| p.vantage.as_ref().is_none_or(|v| &c.vantage_region == v))
                .collect();
            if seen.is_empty() {
                return (false, format!("no agent reports check {check} on region {}", p.region));
            }
            let bad: Vec<String> = seen
                .iter()
                .filter(|c| !satisfies(c.state, p.require))
                .map(|c| format!("{} from {} is {}", check, c.vantage_region, c.state.as_str()))
                .collect();
            if bad.is_empty() {
                let states: Vec<String> =
                    seen.iter().map(|c| format!("{} from {}", c.state.as_str(), c.vantage_region)).collect();
                (true, format!("{check}@{}: {}", p.region, states.join(", ")))
            } else {
                (false, bad.join("; "))
            }
        }
    }
}

/// The first check measuring `region` that left `up` at or after `after_ms`.
pub fn first_failing_check(rep: &ReplicatedHealth, region: &str, after_ms: i64) -> Option<i64> {
    rep.checks
        .values()
        .filter(|c| c.region == region && matches!(c.state, HealthState::Degraded | HealthState::Down))
        .filter(|c| c.since_ms >= after_ms)
        .map(|c| c.since_ms)
        .min()
}

/// When `region` was declared down, if it was at or after `after_ms` and still is.
pub fn region_down(rep: &ReplicatedHealth, region: &str, after_ms: i64) -> Option<i64> {
    rep.region_health.get(region).filter(|h| h.state == HealthState::Down && h.since_ms >= after_ms).map(|h| h.since_ms)
}

/// The RTO milestones a response run shows: run started, traffic at 100 % (the last phase of
/// the last traffic step), DNS answers converged (the last DNS change plus its TTL: by then no
/// resolver can still serve an old answer), run ended.
pub fn run_milestones(rec: &RunRecord) -> Vec<(&'static str, i64)> {
    let mut out = vec![(milestone::RUN_STARTED, rec.created_ms)];
    let steps = &rec.run.plan.steps;
    let ok = rec.run.history.iter().filter(|a| a.ok && !a.work.compensation && a.finished_ms > 0);
    let mut traffic = None;
    let mut dns = None;
    for a in ok {
        let Some(st) = steps.get(a.work.step) else { continue };
        let last_phase = st.phases.len().checked_sub(1);
        if st.act.action == "shift_traffic" && a.work.phase.is_some() && a.work.phase == last_phase {
            traffic = traffic.max(Some(a.finished_ms));
        }
        // Every resolver holds the new answer once the last change's TTL has run out.
        if matches!(st.act.action.as_str(), "repoint_clients" | "shift_traffic") {
            let ttl_ms = st.act.with.get("ttl").and_then(|t| t.as_i64()).unwrap_or(0) * 1000;
            dns = dns.max(Some(a.finished_ms + ttl_ms));
        }
    }
    if let Some(t) = traffic {
        out.push((milestone::TRAFFIC_100, t));
    }
    if let Some(d) = dns {
        out.push((milestone::DNS_CONVERGED, d));
    }
    if rec.ended_ms > 0 {
        out.push((milestone::RESPONSE_ENDED, rec.ended_ms));
    }
    out
}

/// Whether a run has passed its point of no return (the promotion was sent).
pub fn past_point_of_no_return(rec: &RunRecord) -> bool {
    let Some(p) = rec.run.plan.point_of_no_return else { return false };
    rec.run.completed.contains(&p)
        || rec.run.in_flight.as_ref().is_some_and(|f| f.work.step == p)
        || rec.run.history.iter().any(|a| a.work.step == p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{CheckStatus, RegionStatus};

    fn rep() -> ReplicatedHealth {
        let mut r = ReplicatedHealth::default();
        let mut check = |agent: &str, vantage: &str, name: &str, region: &str, state, since| {
            let c = CheckStatus {
                agent: agent.into(),
                vantage_region: vantage.into(),
                check: name.into(),
                region: region.into(),
                state,
                since_ms: since,
            };
            r.checks.insert(c.key(), c);
        };
        check("a1", "eu-central", "api", "eu-west", HealthState::Down, 500);
        check("a2", "eu-north", "api", "eu-west", HealthState::Degraded, 450);
        check("a1", "eu-central", "login", "eu-central", HealthState::Up, 10);
        check("a3", "eu-west", "psp", "eu-west", HealthState::Down, 100);
        r.region_health
            .insert("eu-west".into(), RegionStatus { state: HealthState::Down, since_ms: 700, reason: "x".into() });
        r
    }

    fn probe(region: &str, check: Option<&str>, vantage: Option<&str>, require: Require) -> Probe {
        Probe { region: region.into(), check: check.map(Into::into), vantage: vantage.map(Into::into), require }
    }

    #[test]
    fn probes_read_every_vantage_or_the_named_one() {
        let r = rep();
        assert!(evaluate(&probe("eu-central", Some("login"), None, Require::Up), &r).0);
        let (ok, why) = evaluate(&probe("eu-west", Some("api"), None, Require::NotDown), &r);
        assert!(!ok && why.contains("api from eu-central is down"), "{why}");
        assert!(evaluate(&probe("eu-west", Some("api"), Some("eu-north"), Require::NotDown), &r).0);
        let (ok, why) = evaluate(&probe("eu-west", Some("nope"), None, Require::Up), &r);
        assert!(!ok && why.contains("no agent reports"), "{why}");
        let (ok, why) = evaluate(&probe("eu-west", None, None, Require::NotDown), &r);
        assert!(!ok && why == "region eu-west is down", "{why}");
        assert!(!evaluate(&probe("eu-south", None, None, Require::Up), &r).0, "unknown health is not up");
    }

    #[test]
    fn detection_counts_only_changes_after_injection() {
        let r = rep();
        assert_eq!(first_failing_check(&r, "eu-west", 200), Some(450));
        assert_eq!(first_failing_check(&r, "eu-west", 0), Some(100));
        assert_eq!(first_failing_check(&r, "eu-west", 600), None);
        assert_eq!(region_down(&r, "eu-west", 600), Some(700));
        assert_eq!(region_down(&r, "eu-west", 800), None);
    }
}
