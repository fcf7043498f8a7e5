//! Unplanned failover on the leader: the facts an unplanned run waits on, the loss it records,
//! the automatic policy with its anti-flap cooldown, and the fencing of an old primary whose
//! region comes back.
//!
//! The rules are pure functions ([`loss_from_sample`], [`policy`]); the async functions only
//! gather their inputs from the replicated state and the leader's memory, and commit.

use crate::command::{Command, HealthState, Request, RunRecord, ServiceState, StoredPlaybook};
use crate::hub::LagSample;
use crate::node::{AppRef, LeaderRequest};
use crate::playbook::{Automatic, ResolvedPlaybook};
use crate::run::{Facts, Loss, Run, RunMode};
use std::collections::BTreeMap;
use tonic::Status;

/// Clock skew and scheduling slack added to an agent's self-fencing delay before the leader
/// counts its primaries as fenced.
pub const SELF_FENCE_MARGIN_MS: i64 = 1000;

/// A replication sample older than this before the run cannot tell what was lost.
const SAMPLE_MAX_AGE_MS: i64 = 60_000;

/// The loss an unplanned failover causes, from the standby's last replication sample taken
/// while the primary still answered: (leader time, agent, check, values).
/// `lost_at` is when the source was declared down.
pub fn loss_from_sample(sample: Option<LagSample>, lost_at: i64) -> Loss {
    match sample {
        Some(LagSample { at_ms: at, agent, check, values: v, .. }) if lost_at - at <= SAMPLE_MAX_AGE_MS => {
            let bytes = v.get("receive_lag_bytes").copied().unwrap_or(0.0).max(0.0) as u64;
            // What the standby received is not lost (the catch-up replays it): only WAL it never
            // received counts, and its age is the replay lag behind the primary.
            let seconds = if bytes == 0 { 0.0 } else { v.get("lag_seconds").copied().unwrap_or(0.0).max(0.0) };
            Loss {
                known: true,
                bytes,
                seconds,
                synchronous: v.get("synchronous").copied().unwrap_or(0.0) >= 1.0,
                evidence: format!("last sample of check {check} by {agent}, {} ms before the loss", lost_at - at),
            }
        }
        Some(LagSample { at_ms: at, agent, check, .. }) => Loss {
            known: false,
            bytes: 0,
            seconds: 0.0,
            synchronous: false,
            evidence: format!(
                "last sample of check {check} by {agent} is {} s older than the loss",
                (lost_at - at) / 1000
            ),
        },
        None => Loss {
            known: false,
            bytes: 0,
            seconds: 0.0,
            synchronous: false,
            evidence: "no replication sample from the target's standby on this leader".into(),
        },
    }
}

/// What the automatic policy does about one playbook now.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyDecision {
    /// Nothing to do.
    Nothing,
    /// Start an unplanned run, for this reason.
    Start(String),
    /// The cooldown holds: ask an operator to acknowledge (once).
    Suppress(String),
}

/// Inputs of [`policy`] for one playbook.
#[derive(Debug, Clone)]
pub struct PolicyInput<'a> {
    /// The playbook's automatic settings.
    pub automatic: Automatic,
    /// The region it fails over from.
    pub source: &'a str,
    /// The region it fails over to.
    pub target: &'a str,
    /// The region holding the service's primary now.
    pub primary: &'a str,
    /// Replicated health of the source: state, since, reason.
    pub source_health: (HealthState, i64, &'a str),
    /// Replicated health of the target.
    pub target_health: HealthState,
    /// A run holds the service.
    pub active_run: bool,
    /// The target holds a fenced old primary not yet rebuilt.
    pub target_fenced: bool,
    /// The service's failover state.
    pub service: &'a ServiceState,
    /// Leader time.
    pub now_ms: i64,
}

/// The automatic failover rule: the source holds the primary and a quorum declared it down,
/// the target is up, nothing else runs; and at most one automatic failover per cooldown unless
/// an operator acknowledged since.
pub fn policy(i: &PolicyInput<'_>) -> PolicyDecision {
    let (state, since, reason) = i.source_health;
    if !i.automatic.enabled || state != HealthState::Down || i.primary != i.source || i.active_run {
        return PolicyDecision::Nothing;
    }
    if i.target_health != HealthState::Up || i.target_fenced {
        // Failing over into a sick region (or onto an unrebuilt old primary) helps nobody;
        // the board and the run list show the outage, a human decides.
        return PolicyDecision::Nothing;
    }
    if let Some((run, at)) = &i.service.last_automatic {
        let cooling = i.now_ms - at < i.automatic.cooldown.as_millis() as i64;
        let acknowledged = i.service.acknowledged_ms > *at;
        if cooling && !acknowledged {
            if i.service.ack_requested.is_some() {
                return PolicyDecision::Nothing;
            }
            let left = (at + i.automatic.cooldown.as_millis() as i64 - i.now_ms) / 1000;
            return PolicyDecision::Suppress(format!(
                "{} declared down ({reason}) but automatic failover {run} ran {} s ago; cooldown {} s left: \
                 acknowledge to re-arm (drctl failover ack {})",
                i.source,
                (i.now_ms - at) / 1000,
                left,
                i.service.service
            ));
        }
    }
    PolicyDecision::Start(format!(
        "region {} declared down by the vantage quorum since {since}: {reason}; failing over to {}",
        i.source, i.target
    ))
}

/// The region holding `service`'s primary: the last successful failover's target, else the
/// region whose role says so, else the playbook's source (as configured).
pub fn primary_region(app: &AppRef, service: &str, fallback: &str) -> String {
    if let Some(sv) = app.view.services().get(service)
        && !sv.primary_region.is_empty()
    {
        return sv.primary_region.clone();
    }
    app.view
        .regions()
        .into_iter()
        .find(|r| r.roles.get(service) == Some(&crate::command::Role::Primary))
        .map(|r| r.name)
        .unwrap_or_else(|| fallback.to_string())
}

/// The facts an unplanned run's next decision depends on.
pub fn facts(app: &AppRef, run: &Run, now_ms: i64) -> Facts {
    let Some(f) = run.plan.failover.as_ref().filter(|_| run.plan.mode == RunMode::Unplanned) else {
        return Facts::default();
    };
    let rep = app.view.health();
    let source_down = rep
        .region_health
        .get(&f.source)
        .filter(|h| h.state == HealthState::Down)
        .map(|h| if h.reason.is_empty() { "down".to_string() } else { h.reason.clone() });
    let agents: Vec<_> = rep.agents.values().filter(|a| a.region == f.source).collect();
    let source_agent = agents.iter().any(|a| app.engine.is_attached(&a.agent_id));
    // Every agent of the source must have self-fenced for its primaries to count as fenced.
    let self_fence_at = if !agents.is_empty() && agents.iter().all(|a| a.self_fence_after_ms > 0) {
        agents
            .iter()
            .map(|a| {
                let floor = app.engine.lease_floor(&a.agent_id).unwrap_or(now_ms);
                (floor + a.self_fence_after_ms as i64 + SELF_FENCE_MARGIN_MS, a.agent_id.clone())
            })
            .max()
    } else {
        None
    };
    Facts { source_down, source_agent, self_fence_at }
}

/// The loss an unplanned run records (on the leader, whose memory holds the samples): the
/// standby's last sample, judged against the moment the source was lost.
pub fn measure_loss(app: &AppRef, run: &Run, now_ms: i64) -> Option<Loss> {
    let f = run.plan.failover.as_ref().filter(|_| run.plan.mode == RunMode::Unplanned)?;
    let lost_at = app
        .view
        .health()
        .region_health
        .get(&f.source)
        .filter(|h| h.state == HealthState::Down)
        .map(|h| h.since_ms)
        .unwrap_or(now_ms);
    Some(loss_from_sample(app.hub.last_lag(&f.target), lost_at))
}

/// Builds the record of a new run of `resolved` in `mode` (the caller has checked that an
/// unplanned run's playbook has `spec.failover`: see [`crate::grpc::runs::preflight`]).
#[allow(clippy::too_many_arguments)]
pub fn new_record(
    stored: &StoredPlaybook,
    resolved: &ResolvedPlaybook,
    mode: RunMode,
    requester: &str,
    reason: String,
    idempotency_key: String,
    automatic: bool,
) -> RunRecord {
    let run = Run::new(
        &crate::grpc::runs::new_run_id(&resolved.service),
        &resolved.service,
        crate::grpc::runs::run_plan(resolved, mode),
        requester,
    );
    RunRecord {
        run,
        playbook: stored.name.clone(),
        playbook_hash: stored.hash.clone(),
        params: resolved.params.clone(),
        reason,
        created_ms: 0,
        ended_ms: 0,
        revision: 0,
        idempotency_key,
        automatic,
    }
}

async fn commit(app: &AppRef, actor: &str, cmd: Command) -> Result<(), Status> {
    let req = Request { request_id: String::new(), actor: actor.into(), at_ms: 0, cmd };
    app.execute(LeaderRequest::Write(req)).await.map(|_| ())
}

/// The latest version of every playbook with an automatic policy, resolved with its defaults.
fn automatic_playbooks(app: &AppRef) -> Vec<(StoredPlaybook, ResolvedPlaybook, Automatic)> {
    let mut latest: BTreeMap<String, StoredPlaybook> = BTreeMap::new();
    for p in app.view.playbooks().into_values() {
        if latest.get(&p.name).is_none_or(|q| q.applied_ms < p.applied_ms) {
            latest.insert(p.name.clone(), p);
        }
    }
    latest
        .into_values()
        .filter_map(|stored| {
            // Parsed once per version: the policy runs on every wake of the engine.
            let mut cache = app.engine.automatic_cache.lock().unwrap_or_else(|p| p.into_inner());
            let entry = cache.entry(stored.hash.clone()).or_insert_with(|| {
                let pb = crate::playbook::Playbook::parse(&stored.name, &stored.text).ok()?;
                let resolved = pb.resolve(&BTreeMap::new()).ok()?;
                let auto = resolved.failover.as_ref()?.automatic?;
                auto.enabled.then_some((resolved, auto))
            });
            let (resolved, auto) = entry.clone()?;
            Some((stored, resolved, auto))
        })
        .collect()
}

/// One pass of the automatic policy (leader only).
pub async fn automatic_tick(app: &AppRef, now_ms: i64) {
    for (stored, resolved, automatic) in automatic_playbooks(app) {
        let f = resolved.failover.as_ref().expect("filtered on failover");
        let rep = app.view.health();
        let services = app.view.services();
        let sv = services
            .get(&resolved.service)
            .cloned()
            .unwrap_or_else(|| ServiceState { service: resolved.service.clone(), ..Default::default() });
        let src = rep.region_health.get(&f.source).cloned().unwrap_or_default();
        let primary = primary_region(app, &resolved.service, &f.source);
        let input = PolicyInput {
            automatic,
            source: &f.source,
            target: &f.target,
            primary: &primary,
            source_health: (src.state, src.since_ms, &src.reason),
            target_health: rep.region_health.get(&f.target).map(|h| h.state).unwrap_or_default(),
            active_run: app.view.active_runs().iter().any(|r| r.run.service == resolved.service),
            target_fenced: sv.fences.contains_key(&f.target),
            service: &sv,
            now_ms,
        };
        let res = match policy(&input) {
            PolicyDecision::Nothing => Ok(()),
            PolicyDecision::Suppress(reason) => {
                tracing::warn!(service = %resolved.service, "automatic failover suppressed: {reason}");
                commit(app, "system", Command::FailoverSuppressed { service: resolved.service.clone(), reason }).await
            }
            PolicyDecision::Start(reason) => {
                tracing::warn!(service = %resolved.service, "automatic failover: {reason}");
                let record = new_record(&stored, &resolved, RunMode::Unplanned, "system", reason, String::new(), true);
                commit(app, "system", Command::CreateRun { record: Box::new(record) }).await
            }
        };
        if let Err(e) = res {
            tracing::warn!(service = %resolved.service, "automatic failover policy: {e}");
        }
    }
}

/// What a start into a region holding a fenced old primary needs: a `rebuild_standby` first.
/// The target is the region the playbook promotes in (or fails over to).
pub fn rebuild_blockers(app: &AppRef, r: &ResolvedPlaybook) -> Vec<String> {
    use crate::playbook::Action;
    let target = r
        .steps
        .iter()
        .find(|s| s.action == Action::PromoteDb)
        .and_then(|s| s.region.clone())
        .or_else(|| r.failover.as_ref().map(|f| f.target.clone()));
    let Some(target) = target else { return vec![] };
    let rebuilds = r.steps.iter().any(|s| s.action == Action::RebuildStandby && s.region.as_ref() == Some(&target));
    match app.view.services().get(&r.service).and_then(|s| s.fences.get(&target).cloned()) {
        Some(order) if !rebuilds => vec![format!(
            "target {target} holds the old primary fenced by run {}: it needs pg_rewind or a fresh base backup \
             first (a rebuild_standby step in {target} before the promotion)",
            order.run_id
        )],
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn input<'a>(sv: &'a ServiceState, state: HealthState, now: i64) -> PolicyInput<'a> {
        PolicyInput {
            automatic: Automatic { enabled: true, cooldown: Duration::from_secs(600) },
            source: "eu-west",
            target: "eu-central",
            primary: "eu-west",
            source_health: (state, 1, "2 of 3 vantage points see it down"),
            target_health: HealthState::Up,
            active_run: false,
            target_fenced: false,
            service: sv,
            now_ms: now,
        }
    }

    #[test]
    fn starts_only_when_the_primary_region_is_down_by_quorum() {
        let sv = ServiceState { service: "wallet".into(), ..Default::default() };
        assert_eq!(policy(&input(&sv, HealthState::Degraded, 10)), PolicyDecision::Nothing);
        assert!(matches!(policy(&input(&sv, HealthState::Down, 10)), PolicyDecision::Start(_)));
        let mut i = input(&sv, HealthState::Down, 10);
        i.primary = "eu-central";
        assert_eq!(policy(&i), PolicyDecision::Nothing, "the source no longer holds the primary");
        let mut i = input(&sv, HealthState::Down, 10);
        i.target_health = HealthState::Degraded;
        assert_eq!(policy(&i), PolicyDecision::Nothing);
        let mut i = input(&sv, HealthState::Down, 10);
        i.automatic.enabled = false;
        assert_eq!(policy(&i), PolicyDecision::Nothing);
    }

    #[test]
    fn cooldown_suppresses_once_until_acknowledged() {
        let mut sv =
            ServiceState { service: "wallet".into(), last_automatic: Some(("r1".into(), 1000)), ..Default::default() };
        match policy(&input(&sv, HealthState::Down, 5000)) {
            PolicyDecision::Suppress(m) => assert!(m.contains("drctl failover ack wallet"), "{m}"),
            d => panic!("{d:?}"),
        }
        sv.ack_requested = Some("asked".into());
        assert_eq!(policy(&input(&sv, HealthState::Down, 6000)), PolicyDecision::Nothing);
        sv.acknowledged_ms = 7000;
        assert!(matches!(policy(&input(&sv, HealthState::Down, 8000)), PolicyDecision::Start(_)));
        sv.acknowledged_ms = 0;
        assert!(matches!(policy(&input(&sv, HealthState::Down, 1000 + 600_000)), PolicyDecision::Start(_)));
    }

    #[test]
    fn loss_comes_from_the_last_sample_and_synchronous_standbys_lose_no_acknowledged_write() {
        let v = |bytes: f64, sync: f64| {
            BTreeMap::from([
                ("receive_lag_bytes".to_string(), bytes),
                ("lag_seconds".to_string(), 0.4),
                ("synchronous".to_string(), sync),
            ])
        };
        let sample = |at: i64, values| {
            Some(LagSample { at_ms: at, agent: "a".into(), check: "db".into(), region: "c".into(), values })
        };
        let l = loss_from_sample(sample(900, v(4096.0, 0.0)), 1000);
        assert!(l.known && l.bytes == 4096 && l.acknowledged_bytes() == 4096 && !l.synchronous);
        let budget = crate::playbook::LossBudget { bytes: 0, seconds: 0 };
        assert!(l.exceeds(&budget));
        let s = loss_from_sample(sample(900, v(120.0, 1.0)), 1000);
        assert_eq!(s.acknowledged_bytes(), 0);
        assert!(!s.exceeds(&budget));
        assert!(!loss_from_sample(None, 1000).known);
        assert!(!loss_from_sample(sample(0, v(0.0, 0.0)), 120_000).known);
        assert!(loss_from_sample(None, 1000).exceeds(&budget));
    }
}
