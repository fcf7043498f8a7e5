//! Run and playbook RPCs of the `Control` service (the handlers the trait impl delegates to).

use crate::command::{self, Command, Outcome, RunOp, RunRecord};
use crate::node::{AppRef, Ctx, LeaderReply, LeaderRequest};
use crate::run::RunState;
use drcut_proto::v1 as pb;
use tonic::Status;

/// The proto view of a run.
pub fn run_info(rec: &RunRecord) -> pb::RunInfo {
    let (state, reason) = match (&rec.run.state, &rec.run.hold) {
        // Running but unable to move: say so, with what it waits for.
        (RunState::Running, Some(h)) => ("held", h.clone()),
        (s, _) => state_text(s),
    };
    pb::RunInfo {
        run_id: rec.run.id.clone(),
        service: rec.run.service.clone(),
        playbook: rec.playbook.clone(),
        playbook_hash: rec.playbook_hash.clone(),
        requester: rec.run.requester.clone(),
        reason: rec.reason.clone(),
        state: state.into(),
        state_reason: reason,
        created_unix_ms: rec.created_ms,
        ended_unix_ms: rec.ended_ms,
        record_json: serde_json::to_string(rec).unwrap_or_default(),
        revision: rec.revision,
    }
}

pub use crate::run::state_text;

/// Proposes a command through the leader and maps refusals to gRPC codes.
pub async fn write(app: &AppRef, ctx: Ctx, cmd: Command) -> Result<command::Response, Status> {
    let req = command::Request { request_id: ctx.request_id, actor: ctx.actor, at_ms: 0, cmd };
    let LeaderReply::Write(resp) = app.leader_call(LeaderRequest::Write(req), false).await? else {
        return Err(Status::internal("unexpected reply to a write"));
    };
    if let Outcome::Rejected { reason, message } = &resp.outcome {
        return Err(match reason {
            command::Rejection::InvalidArgument => Status::invalid_argument(message.clone()),
            command::Rejection::AlreadyExists => Status::already_exists(message.clone()),
            command::Rejection::FailedPrecondition => Status::failed_precondition(message.clone()),
        });
    }
    Ok(resp)
}

/// The run as this node has applied it, waiting until it has applied `index`.
pub async fn read_run(app: &AppRef, id: &str, index: u64) -> Result<pb::RunInfo, Status> {
    let _ =
        app.raft.wait(Some(std::time::Duration::from_secs(2))).applied_index_at_least(Some(index), "run read").await;
    app.view.run(id).map(|r| run_info(&r)).ok_or_else(|| Status::not_found(format!("no run {id:?}")))
}

/// An operator action on a run.
pub async fn act(app: &AppRef, ctx: Ctx, run_id: &str, op: RunOp) -> Result<pb::RunInfo, Status> {
    if app.view.run(run_id).is_none() {
        return Err(Status::not_found(format!("no run {run_id:?}")));
    }
    let resp = write(app, ctx, Command::UpdateRun { run_id: run_id.to_string(), op }).await?;
    read_run(app, run_id, resp.log_index).await
}

/// The run plan a run pins, from a resolved playbook: the steps of its mode (`when`).
pub fn run_plan(r: &crate::playbook::ResolvedPlaybook, mode: crate::run::RunMode) -> crate::run::RunPlan {
    use crate::playbook::{Action, When};
    use crate::run::{Action as RAction, FailoverPlan, PlanStep, RunMode, RunPlan};
    let keep = |w: When| match mode {
        RunMode::Planned => w != When::Unplanned,
        RunMode::Unplanned => w != When::Planned,
    };
    let kept: Vec<&crate::playbook::ResolvedStep> = r.steps.iter().filter(|s| keep(s.when)).collect();
    let point_of_no_return = kept.iter().position(|s| s.action == Action::PromoteDb);
    let steps = kept
        .into_iter()
        .map(|s| PlanStep {
            id: s.id.clone(),
            act: RAction {
                action: s.action.as_str().to_string(),
                region: s.region.clone().unwrap_or_default(),
                with: s.with.clone(),
            },
            timeout_ms: s.timeout.as_millis() as u64,
            retries: s.retries,
            retry_backoff_ms: s.retry_backoff.as_millis() as u64,
            on_failure: s.on_failure,
            compensate: s.compensate.as_ref().map(|c| RAction {
                action: c.action.as_str().to_string(),
                region: c.region.clone(),
                with: c.with.clone(),
            }),
            phases: s.phases.clone(),
            dwell_ms: s.dwell.as_millis() as u64,
            gate_region: s.gate.as_ref().map(|g| g.region.clone()),
            gate_require: s.gate.as_ref().map(|g| g.require.as_str().to_string()).unwrap_or_else(|| "up".into()),
        })
        .collect();
    RunPlan {
        steps,
        point_of_no_return,
        approvals_required: r.approvals_required,
        mode,
        failover: r.failover.as_ref().map(|f| FailoverPlan {
            source: f.source.clone(),
            target: f.target.clone(),
            accept_loss: f.accept_loss,
        }),
        targets: r.targets.clone(),
    }
}

/// Every region a run plan acts on: step and compensation targets, gates, the failover's source
/// and target (what a region-scoped principal must cover to start or steer it).
pub fn plan_regions(plan: &crate::run::RunPlan) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for s in &plan.steps {
        out.insert(s.act.region.clone());
        out.extend(s.compensate.as_ref().map(|c| c.region.clone()));
        out.extend(s.gate_region.clone());
    }
    if let Some(f) = &plan.failover {
        out.insert(f.source.clone());
        out.insert(f.target.clone());
    }
    out.remove("");
    out
}

/// [`plan_regions`] of the run a resolved playbook would start, plus its precondition's target.
pub fn playbook_regions(
    r: &crate::playbook::ResolvedPlaybook,
    mode: crate::run::RunMode,
) -> std::collections::BTreeSet<String> {
    let mut out = plan_regions(&run_plan(r, mode));
    out.extend(r.preconditions.target_region.clone());
    out
}

/// Finds a stored playbook by name (latest applied) or hash.
pub fn find_playbook(app: &AppRef, key: &str) -> Result<command::StoredPlaybook, Status> {
    let all = app.view.playbooks();
    if let Some(p) = all.get(key) {
        return Ok(p.clone());
    }
    all.values()
        .filter(|p| p.name == key)
        .max_by_key(|p| p.applied_ms)
        .cloned()
        .ok_or_else(|| Status::not_found(format!("no playbook {key:?}; apply it first (drctl playbook apply FILE)")))
}

/// Resolves a stored playbook against the cluster's regions.
pub fn resolve(
    app: &AppRef,
    key: &str,
    params: &std::collections::HashMap<String, String>,
) -> Result<(command::StoredPlaybook, crate::playbook::ResolvedPlaybook), Status> {
    let stored = find_playbook(app, key)?;
    let pb =
        crate::playbook::Playbook::parse(&stored.name, &stored.text).map_err(|e| Status::internal(e.to_string()))?;
    let params: std::collections::BTreeMap<String, String> = params.clone().into_iter().collect();
    let known: Vec<String> = app.view.regions().into_iter().map(|r| r.name).collect();
    let resolved =
        crate::playbook::validate_regions(&pb, &params, &known).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok((stored, resolved))
}

/// What stands in the way of starting now (empty: nothing).
pub async fn blockers(app: &AppRef, r: &crate::playbook::ResolvedPlaybook, mode: crate::run::RunMode) -> Vec<String> {
    preflight(app, r, mode).await.0
}

/// Blockers, and what an operator should know now: the target's health, the replication lag
/// (the data an unplanned failover would lose right now).
pub async fn preflight(
    app: &AppRef,
    r: &crate::playbook::ResolvedPlaybook,
    mode: crate::run::RunMode,
) -> (Vec<String>, Vec<String>) {
    use prost::Message;
    let unplanned = mode == crate::run::RunMode::Unplanned;
    let mut out = crate::failover::rebuild_blockers(app, r);
    let mut info = Vec::new();
    if unplanned && r.failover.is_none() {
        out.push(format!("playbook {} has no spec.failover: it cannot run unplanned", r.name));
    }
    for (region, order) in app.view.services().get(&r.service).map(|s| s.fences.clone()).unwrap_or_default() {
        let state = if order.done_ms > 0 { "fenced" } else { "to be fenced when it returns" };
        info.push(format!(
            "old primary in {region} {state} (run {}): it needs pg_rewind or a fresh base backup \
             (rebuild_standby) before it can serve again",
            order.run_id
        ));
    }
    if let Some(holder) = app.view.active_runs().into_iter().find(|x| x.run.service == r.service) {
        out.push(format!("run {} holds service {} ({})", holder.run.id, r.service, state_text(&holder.run.state).0));
    }
    let board = match app.leader_call(LeaderRequest::Health, false).await {
        Ok(LeaderReply::Health(bytes)) => pb::HealthBoard::decode(bytes.as_slice()).ok(),
        _ => None,
    };
    let Some(board) = board else {
        out.push("health unknown: no leader reachable".into());
        return (out, info);
    };
    for h in &board.regions {
        info.push(format!("region {} is {} ({})", h.region, h.state, h.reason));
        for c in h.checks.iter().filter(|c| !c.stale && c.values.contains_key("lag_seconds")) {
            info.push(format!(
                "replication lag measured by {} from {}: {:.1} s, {} bytes behind",
                c.check,
                c.vantage_agent,
                c.values["lag_seconds"],
                c.values.get("lag_bytes").copied().unwrap_or(0.0)
            ));
        }
    }
    if let Some(target) = &r.preconditions.target_region {
        match board.regions.iter().find(|x| &x.region == target) {
            Some(h) if h.state == "up" => {}
            Some(h) => out.push(format!("target region {target} is {} ({})", h.state, h.reason)),
            None => out.push(format!("target region {target} has no health yet")),
        }
        // Unplanned, the lag is not a precondition but the loss, measured and consented to.
        if let Some(budget) = r.preconditions.max_lag_seconds.filter(|_| !unplanned) {
            let lag = board
                .regions
                .iter()
                .filter(|x| &x.region == target)
                .flat_map(|x| x.checks.iter())
                .filter(|c| !c.stale)
                .filter_map(|c| c.values.get("lag_seconds").copied())
                .fold(None::<f64>, |m, v| Some(m.map_or(v, |m| m.max(v))));
            match lag {
                Some(l) if l > budget as f64 => {
                    out.push(format!("replication lag {l:.1} s exceeds the budget of {budget} s"))
                }
                Some(_) => {}
                None => out.push(format!(
                    "no replication lag measured in {target} (a postgres check on the standby is needed)"
                )),
            }
        }
    }
    (out, info)
}

/// A new run id: time-ordered and readable.
pub fn new_run_id(service: &str) -> String {
    let now = std::time::Duration::from_millis(crate::clock::now_ms().max(0) as u64);
    format!("{service}-{}-{:04x}", now.as_secs(), (now.subsec_nanos() >> 8) & 0xffff)
}
