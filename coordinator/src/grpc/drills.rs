//! The drill calls of the `Control` service: apply, list, run (or dry-run), read, halt.

use crate::command::{Command, Outcome, StoredDrill};
use crate::drill::{self, DrillRun, Trigger};
use crate::node::{AppRef, Ctx, not_leader};
use drcut_proto::v1 as pb;
use std::collections::BTreeSet;
use tonic::Status;

/// How many upcoming occurrences `list` and `apply` show.
const NEXT_FIRES: usize = 3;

fn fires(spec: &drill::Drill, now: i64) -> Vec<pb::DrillFire> {
    let Some(s) = &spec.schedule else { return vec![] };
    drill::schedule::next_fires(s, now, NEXT_FIRES)
        .into_iter()
        .map(|f| pb::DrillFire { at_unix_ms: f.at_ms, local: f.local, utc: f.utc, blackout: f.blackout })
        .collect()
}

fn lines(l: &[drill::CheckLine]) -> Vec<pb::DrillCheckLine> {
    l.iter().map(|c| pb::DrillCheckLine { name: c.name.clone(), ok: c.ok, detail: c.detail.clone() }).collect()
}

/// The wire form of a drill run; `full` adds the record and the report bodies.
pub fn info(d: &DrillRun, full: bool) -> pb::DrillRunInfo {
    let (report_json, report_markdown) = match (&d.report, full) {
        (Some(r), true) => (serde_json::to_string_pretty(r).unwrap_or_default(), drill::report::markdown(r)),
        _ => (String::new(), String::new()),
    };
    pb::DrillRunInfo {
        id: d.id.clone(),
        drill: d.drill.clone(),
        state: format!("{:?}", d.state).to_lowercase(),
        outcome: d.outcome.map(|o| o.as_str().to_string()).unwrap_or_default(),
        outcome_detail: d.outcome_detail.clone(),
        record_json: if full { serde_json::to_string_pretty(d).unwrap_or_default() } else { String::new() },
        report_json,
        report_markdown,
        plan_text: String::new(),
        preflight: lines(&d.preflight),
        dry_run: d.dry_run,
        revision: d.revision,
    }
}

/// Validates and stores a drill file.
pub async fn apply(app: &AppRef, ctx: Ctx, r: pb::ApplyDrillRequest) -> Result<pb::ApplyDrillReply, Status> {
    let file = if r.file_name.is_empty() { "drill.yaml".to_string() } else { r.file_name.clone() };
    super::check_file_size(&file, &r.text)?;
    let (spec, hash) = drill::Drill::parse(&file, &r.text).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let regions: BTreeSet<String> = app.view.regions().into_iter().map(|x| x.name).collect();
    let playbooks: BTreeSet<String> = app.view.playbooks().into_values().map(|p| p.name).collect();
    let problems = drill::check_refs(&spec, &regions, &playbooks);
    if !problems.is_empty() {
        return Err(Status::invalid_argument(format!("{file}: {}", problems.join("; "))));
    }
    let stored = StoredDrill {
        name: spec.name.clone(),
        hash: hash.clone(),
        text: r.text,
        applied_ms: 0,
        applied_by: String::new(),
        last_occurrence_ms: None,
    };
    super::runs::write(app, ctx, Command::ApplyDrill { drill: stored }).await?;
    Ok(pb::ApplyDrillReply { name: spec.name.clone(), hash, next: fires(&spec, crate::clock::now_ms()) })
}

/// The drills on file.
pub fn list(app: &AppRef) -> pb::ListDrillsReply {
    let now = crate::clock::now_ms();
    let runs = app.view.drill_runs();
    let drills = app
        .view
        .drills()
        .into_values()
        .map(|stored| {
            let spec = drill::engine::parsed(app, &stored);
            let last = runs.values().filter(|d| d.drill == stored.name).max_by_key(|d| d.created_ms);
            let sched = spec.as_ref().and_then(|s| s.schedule.clone());
            pb::DrillSummary {
                name: stored.name.clone(),
                hash: stored.hash.clone(),
                owner: spec.as_ref().map(|s| s.owner.clone()).unwrap_or_default(),
                service: spec.as_ref().map(|s| s.service.clone()).unwrap_or_default(),
                target_region: spec.as_ref().map(|s| s.target_region.clone()).unwrap_or_default(),
                rrule: sched.as_ref().map(|s| s.rrule.clone()).unwrap_or_default(),
                timezone: sched.as_ref().map(|s| s.timezone.clone()).unwrap_or_default(),
                enabled: sched.as_ref().is_some_and(|s| s.enabled),
                next: spec.as_ref().map(|s| fires(s, now)).unwrap_or_default(),
                last_run: last.map(|d| d.id.clone()).unwrap_or_default(),
                last_outcome: last
                    .map(|d| d.outcome.map(|o| o.as_str().to_string()).unwrap_or_else(|| "active".into()))
                    .unwrap_or_default(),
                applied_unix_ms: stored.applied_ms,
                applied_by: stored.applied_by.clone(),
            }
        })
        .collect();
    pb::ListDrillsReply { drills }
}

/// Starts a drill now, or shows what it would do.
pub async fn run(
    app: &AppRef,
    ctx: Ctx,
    caller: &super::control::Caller,
    r: pb::RunDrillRequest,
) -> Result<pb::DrillRunInfo, Status> {
    let stored =
        app.view.drills().remove(&r.name).ok_or_else(|| {
            Status::not_found(format!("no drill {:?}; apply it first (drctl drill apply FILE)", r.name))
        })?;
    let spec = drill::engine::parsed(app, &stored)
        .ok_or_else(|| Status::internal(format!("stored drill {} no longer parses", stored.name)))?;
    // The blast radius: the target region and every region a fault is injected in.
    let touched: BTreeSet<String> =
        std::iter::once(spec.target_region.clone()).chain(spec.faults.iter().map(|f| f.region.clone())).collect();
    caller.may_act_on(app, "RunDrill", &touched)?;
    if r.dry_run {
        // The preflight reads agent sessions and live lag: only the leader has them.
        if !app.raft.is_leader() {
            return Err(not_leader(app.leader(), "a dry run is answered by the leader"));
        }
        let pre = drill::engine::preflight_lines(app, &spec).await;
        let ok = pre.iter().all(|l| l.ok);
        return Ok(pb::DrillRunInfo {
            drill: stored.name.clone(),
            state: "dry_run".into(),
            outcome: "dry_run".into(),
            outcome_detail: if ok {
                "preflight passed: the drill would start now (nothing was injected)".into()
            } else {
                "preflight refused: the drill would not start now (nothing was injected)".into()
            },
            plan_text: drill::plan_text(&spec),
            preflight: lines(&pre),
            dry_run: true,
            ..Default::default()
        });
    }
    // A retried request (same idempotency key) gets the first answer from the state machine.
    let trigger = Trigger::Manual { by: ctx.actor.clone() };
    let mut rec = drill::engine::new_run(&stored, spec, trigger, crate::clock::now_ms());
    rec.id = drill::engine::free_id(app, rec.id);
    let id = rec.id.clone();
    let resp = super::runs::write(app, ctx, Command::StartDrill { record: Box::new(rec) }).await?;
    let id = match resp.outcome {
        Outcome::Drill { id } => id,
        _ => id,
    };
    let _ = app
        .raft
        .wait(Some(std::time::Duration::from_secs(2)))
        .applied_index_at_least(Some(resp.log_index), "drill read")
        .await;
    get(app, &id)
}

/// One drill run, whole.
pub fn get(app: &AppRef, id: &str) -> Result<pb::DrillRunInfo, Status> {
    app.view.drill_run(id).map(|d| info(&d, true)).ok_or_else(|| Status::not_found(format!("no drill run {id:?}")))
}

/// Drill runs, oldest first, without their bodies.
pub fn list_runs(app: &AppRef, r: &pb::ListDrillRunsRequest) -> pb::ListDrillRunsReply {
    let mut runs: Vec<DrillRun> = app
        .view
        .drill_runs()
        .into_values()
        .filter(|d| r.drill.is_empty() || d.drill == r.drill)
        .filter(|d| !r.active_only || !d.is_done())
        .collect();
    runs.sort_by_key(|d| d.created_ms);
    pb::ListDrillRunsReply { runs: runs.iter().map(|d| info(d, false)).collect() }
}

/// Stops every active drill.
pub async fn halt(app: &AppRef, ctx: Ctx, r: pb::HaltDrillsRequest) -> Result<pb::HaltDrillsReply, Status> {
    let reason = if r.reason.trim().is_empty() { format!("halt by {}", ctx.actor) } else { r.reason };
    let active: Vec<String> = app.view.active_drills().into_iter().map(|d| d.id).collect();
    super::runs::write(app, ctx, Command::HaltDrills { reason }).await?;
    Ok(pb::HaltDrillsReply { drill_runs: active })
}
