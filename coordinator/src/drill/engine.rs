//! The drill engine: the leader's loop that fires scheduled drills and walks each drill run
//! through preflight, injection, the response, restore and the report.
//!
//! As for runs, intents are committed before acting (a fault command goes out only after its
//! `FaultDispatch` is in the log), so a new leader knows what may be active and carries on
//! from the committed state: a drill fired under a leader that dies mid-drill completes once.
//! Faults are idempotent on the agent (injecting an active fault answers "already active"),
//! so re-sending after a leader change is safe. The canary and guardrail timers are the only
//! leader-local memory; a new leader restarts them (the canary with fresh sequence numbers).

use super::canary::{self, CanaryHandle};
use super::observe;
use super::ops::{DrillOp, Purpose};
use super::record::{CheckLine, DrillOutcome, DrillRun, DrillState, GuardrailTrip, Trigger, milestone};
use super::spec::{Drill, Response, ResponseStart};
use crate::command::{Command, Request, RunOp, RunRecord};
use crate::node::{AppRef, LeaderRequest};
use crate::run::{RunMode, RunState};
use drcut_proto::v1::{StepCommand, StepResult};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The step index of a fault command (no step of any plan; agents keep it apart).
pub const FAULT_STEP: u32 = u32::MAX - 1;
/// A fault command without an answer is sent again after this long.
const RESEND_MS: i64 = 3000;
/// Grace after an injection before a fault missing from the agent's heartbeat counts as
/// reverted by its dead-man switch (a heartbeat may have left before the fault went in).
const HEARTBEAT_GRACE_MS: i64 = 2500;
/// How long the restore waits for steady state to hold again.
const STEADY_AFTER_WAIT_MS: i64 = 60_000;
/// Acknowledged canary writes before the first fault goes in (the baseline).
const BASELINE_WRITES: u64 = 10;
/// ... within this long, or the drill aborts before injecting anything.
const BASELINE_WAIT_MS: i64 = 10_000;
/// A replication sample older than this does not count in the preflight.
const LAG_FRESH_MS: i64 = 10_000;
/// How often the scheduler looks at the calendar.
const SCHEDULE_EVERY_MS: i64 = 500;

/// A fault command: (drill run, fault, revert).
type SentKey = (String, String, bool);
/// When it was last sent: (term, attempt, leader time).
type Sent = (u64, u32, i64);

/// Leader-local memory of the drill engine.
#[derive(Default)]
pub struct DrillMem {
    canaries: Mutex<BTreeMap<String, CanaryHandle>>,
    /// What this leader sent, for resends.
    sent: Mutex<BTreeMap<SentKey, Sent>>,
    /// (drill, guardrail) → breached since.
    breach: Mutex<BTreeMap<(String, String), i64>>,
    /// Newest drill halt this leader broadcast to every agent.
    halts_sent: std::sync::atomic::AtomicU64,
    /// Parsed drills by content hash.
    specs: Mutex<HashMap<String, Option<Drill>>>,
    last_schedule_ms: std::sync::atomic::AtomicI64,
    /// Per agent: when its last heartbeat arrived and the faults it listed as active.
    heartbeats: Mutex<BTreeMap<String, (i64, BTreeSet<String>)>>,
}

impl DrillMem {
    /// An agent's heartbeat listed these active faults (`run_id/fault_id`).
    pub fn heartbeat(&self, agent: &str, at_ms: i64, active: Vec<String>) {
        self.heartbeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(agent.to_string(), (at_ms, active.into_iter().collect()));
    }

    fn forget(&self) {
        self.canaries.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.breach.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

fn req(actor: &str, cmd: Command) -> Request {
    Request { request_id: String::new(), actor: actor.into(), at_ms: 0, cmd }
}

async fn commit(app: &AppRef, id: &str, op: DrillOp) -> bool {
    let cmd = Command::UpdateDrill { id: id.to_string(), op };
    match app.execute(LeaderRequest::Write(req("drill-engine", cmd))).await {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(drill_run = %id, "drill engine: {e}");
            false
        }
    }
}

/// Parses a stored drill once per version.
pub fn parsed(app: &AppRef, stored: &crate::command::StoredDrill) -> Option<Drill> {
    let mut g = app.engine.drill.specs.lock().unwrap_or_else(|p| p.into_inner());
    g.entry(stored.hash.clone())
        .or_insert_with(|| super::Drill::parse(&stored.name, &stored.text).ok().map(|(d, _)| d))
        .clone()
}

/// A drill run id: the drill and the UTC start, readable and sortable.
pub fn new_id(drill: &str, at_ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(at_ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string().replace(['-', ':'], "");
    format!("drill-{drill}-{}", s.trim_end_matches('Z'))
}

/// `id`, or `id-2`, `id-3`… when a run already has it: ids have whole seconds, and a drill
/// that ends quickly can be started again within the same second.
pub fn free_id(app: &AppRef, id: String) -> String {
    if app.view.drill_run(&id).is_none() {
        return id;
    }
    (2..).map(|n| format!("{id}-{n}")).find(|c| app.view.drill_run(c).is_none()).expect("an unused suffix")
}

/// A new drill run record for `spec` (stored as `stored`).
pub fn new_run(stored: &crate::command::StoredDrill, spec: Drill, trigger: Trigger, now: i64) -> DrillRun {
    DrillRun {
        id: new_id(&stored.name, now),
        drill: stored.name.clone(),
        drill_hash: stored.hash.clone(),
        faults: spec.faults.iter().map(|f| (f.id.clone(), Default::default())).collect(),
        spec,
        trigger,
        dry_run: false,
        state: DrillState::Preflight,
        outcome: None,
        outcome_detail: String::new(),
        created_ms: 0,
        state_since_ms: 0,
        ended_ms: 0,
        preflight: vec![],
        milestones: BTreeMap::new(),
        response_run: None,
        restore_run: None,
        canary: Default::default(),
        guardrails: vec![],
        integrity: vec![],
        steady_after: vec![],
        deviations: vec![],
        events: vec![],
        report: None,
        revision: 0,
        halt: None,
        abort: None,
    }
}

/// The engine loop: acts only while this node leads.
pub async fn run(app: AppRef) {
    let mut applied = app.view.subscribe();
    let mut every = tokio::time::interval(Duration::from_millis(100));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading = false;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            r = applied.changed() => if r.is_err() { return },
        }
        if !app.raft.is_leader() {
            if leading {
                app.engine.drill.forget();
                leading = false;
            }
            continue;
        }
        leading = true;
        let term = app.metrics().current_term;
        let now = crate::clock::now_ms();
        broadcast_halt(&app, term);
        if now - app.engine.drill.last_schedule_ms.load(Ordering::Relaxed) >= SCHEDULE_EVERY_MS {
            app.engine.drill.last_schedule_ms.store(now, Ordering::Relaxed);
            schedule_tick(&app, now).await;
        }
        for d in app.view.active_drills() {
            tick(&app, &d, term).await;
        }
    }
}

/// Fires due occurrences and records skipped ones (exactly once: the state machine refuses an
/// occurrence already handled).
async fn schedule_tick(app: &AppRef, now: i64) {
    let busy = !app.view.active_drills().is_empty();
    for stored in app.view.drills().into_values() {
        let Some(spec) = parsed(app, &stored) else { continue };
        let Some(sched) = &spec.schedule else { continue };
        let due = super::schedule::due(sched, stored.applied_ms, stored.last_occurrence_ms, now);
        let cmd = match due {
            super::schedule::Due::Nothing => continue,
            super::schedule::Due::Skip { occurrence_ms, reason } => {
                tracing::warn!(drill = %stored.name, occurrence_ms, "drill occurrence skipped: {reason}");
                Command::SkipDrill { drill: stored.name.clone(), occurrence_ms, reason }
            }
            // Another drill is running: wait; the tolerance and the missed policy decide later.
            super::schedule::Due::Fire { .. } if busy => continue,
            super::schedule::Due::Fire { occurrence_ms, late } => {
                tracing::info!(drill = %stored.name, occurrence_ms, late, "drill fired by its schedule");
                let mut rec = new_run(&stored, spec.clone(), Trigger::Schedule { occurrence_ms, late }, now);
                rec.id = free_id(app, rec.id);
                Command::StartDrill { record: Box::new(rec) }
            }
        };
        if let Err(e) = app.execute(LeaderRequest::Write(req("scheduler", cmd))).await {
            tracing::debug!(drill = %stored.name, "scheduler: {e}");
        }
        return;
    }
}

/// After a `drctl drill halt`, every connected agent reverts every drill fault it holds.
fn broadcast_halt(app: &AppRef, term: u64) {
    let halts = app.view.core().drill_halts;
    if app.engine.drill.halts_sent.swap(halts, Ordering::Relaxed) >= halts {
        return;
    }
    for (agent, region) in app.engine.attached_agents() {
        let cmd = StepCommand {
            run_id: String::new(),
            step_id: "halt".into(),
            step_index: FAULT_STEP,
            phase: -1,
            compensation: true,
            attempt: ((term as u32) << 16) | (halts as u32 & 0xffff),
            fencing_token: app.engine.token(term),
            action: "fault.halt".into(),
            params_json: "{}".into(),
            timeout_ms: 30_000,
            service: String::new(),
        };
        tracing::warn!(%agent, %region, "drill halt: reverting every fault on the agent");
        app.engine.send_to_agent(&agent, cmd);
    }
}

/// Commits an agent's answer to a fault command.
pub async fn on_fault_result(app: &AppRef, r: StepResult) {
    let Some(d) = app.view.drill_run(&r.run_id) else { return };
    let Some(fault) = usize::try_from(r.phase).ok().and_then(|i| d.spec.faults.get(i)) else { return };
    if !r.ok {
        // Let the next attempt go out at once.
        app.engine.drill.sent.lock().unwrap_or_else(|p| p.into_inner()).remove(&(
            d.id.clone(),
            fault.id.clone(),
            r.compensation,
        ));
    }
    let op = DrillOp::FaultResult { fault: fault.id.clone(), revert: r.compensation, ok: r.ok, detail: r.detail };
    commit(app, &d.id, op).await;
}

/// Sends (or re-sends) a fault command whose intent is committed.
fn send_fault(app: &AppRef, d: &DrillRun, index: usize, revert: bool, term: u64, now: i64) {
    let f = &d.spec.faults[index];
    let key = (d.id.clone(), f.id.clone(), revert);
    let attempt = {
        let mut g = app.engine.drill.sent.lock().unwrap_or_else(|p| p.into_inner());
        let e = g.entry(key).or_insert((0, 0, 0));
        if e.0 == term && now - e.2 < RESEND_MS {
            return;
        }
        *e = (term, e.1 + 1, now);
        ((term as u32) << 16) | (e.1 & 0xffff)
    };
    let params = if revert {
        serde_json::json!({})
    } else {
        let remaining = (d.created_ms + d.spec.deadline_ms as i64 - now).max(1000);
        serde_json::json!({"fault": f.kind, "deadline_ms": remaining, "lost_coordinator_ms": d.spec.lost_coordinator_ms})
    };
    let cmd = StepCommand {
        run_id: d.id.clone(),
        step_id: f.id.clone(),
        step_index: FAULT_STEP,
        phase: index as i32,
        compensation: revert,
        attempt,
        fencing_token: app.engine.token(term),
        action: if revert { "fault.revert" } else { "fault.inject" }.into(),
        params_json: params.to_string(),
        timeout_ms: 30_000,
        service: String::new(),
    };
    let verb = if revert { "revert" } else { "inject" };
    if !app.engine.send_to_region(&f.region, cmd) {
        tracing::warn!(drill_run = %d.id, fault = %f.id, region = %f.region, "no agent connected to {verb} the fault");
    } else {
        tracing::warn!(drill_run = %d.id, fault = %f.id, region = %f.region, attempt, "fault {verb} sent");
    }
}

/// One pass over one active drill run.
async fn tick(app: &AppRef, d: &DrillRun, term: u64) {
    let now = crate::clock::now_ms();
    if let Some(reason) = &d.halt
        && d.abort.is_none()
    {
        let hold = response(app, d).is_some_and(|r| observe::past_point_of_no_return(&r));
        commit(app, &d.id, DrillOp::Abort { reason: format!("halted: {reason}"), hold }).await;
        return;
    }
    if d.abort.is_none() && d.state < DrillState::Restoring && now > d.created_ms + d.spec.deadline_ms as i64 {
        let hold = response(app, d).is_some_and(|r| observe::past_point_of_no_return(&r));
        let reason = format!("deadline of {} passed", fmt_ms(d.spec.deadline_ms as i64));
        commit(app, &d.id, DrillOp::Abort { reason, hold }).await;
        return;
    }
    flush_canary(app, d).await;
    match d.state {
        DrillState::Preflight => preflight(app, d, now).await,
        DrillState::Injecting => {
            if guardrails(app, d, now).await {
                return;
            }
            inject(app, d, term, now).await
        }
        DrillState::Responding => {
            if guardrails(app, d, now).await {
                return;
            }
            respond(app, d, term, now).await
        }
        DrillState::Restoring => restore(app, d, term, now).await,
        DrillState::Done => {}
    }
}

fn response(app: &AppRef, d: &DrillRun) -> Option<RunRecord> {
    d.response_run.as_deref().and_then(|id| app.view.run(id))
}

fn fmt_ms(ms: i64) -> String {
    humantime::format_duration(Duration::from_millis(ms.max(0) as u64)).to_string()
}

async fn flush_canary(app: &AppRef, d: &DrillRun) {
    let progress = {
        let g = app.engine.drill.canaries.lock().unwrap_or_else(|p| p.into_inner());
        match g.get(&d.id) {
            Some(c) => c.take(),
            None => return,
        }
    };
    if progress.is_empty() && progress.error.is_empty() {
        return;
    }
    commit(app, &d.id, progress.into()).await;
}

async fn preflight(app: &AppRef, d: &DrillRun, now: i64) {
    let lines = preflight_lines(app, &d.spec).await;
    if commit(app, &d.id, DrillOp::Preflight { lines: lines.clone() }).await && lines.iter().any(|l| !l.ok) {
        let failed: Vec<String> = lines.iter().filter(|l| !l.ok).map(|l| format!("{}: {}", l.name, l.detail)).collect();
        let mut after = d.clone();
        let _ = after.apply(&DrillOp::Preflight { lines }, now);
        finish(app, &after, DrillOutcome::Refused, format!("preflight refused: {}", failed.join("; ")), now).await;
    }
}

/// Steady state, replication lag, nothing else running, agents connected, the canary can write,
/// the response playbook exists. Also what `drctl drill run --dry-run` shows.
pub async fn preflight_lines(app: &AppRef, spec: &Drill) -> Vec<CheckLine> {
    let rep = app.view.health();
    let now = crate::clock::now_ms();
    let mut lines = Vec::new();
    for p in &spec.steady_state {
        let (ok, detail) = observe::evaluate(p, &rep);
        lines.push(CheckLine { name: format!("steady state: {}", observe::probe_name(p)), ok, detail });
    }
    if let Some(budget) = spec.preflight.max_lag_seconds {
        let lags: Vec<(String, f64)> = rep
            .regions
            .keys()
            .filter(|r| **r != spec.target_region)
            .filter_map(|r| app.hub.last_lag(r).filter(|s| now - s.at_ms <= LAG_FRESH_MS).map(|s| (r.clone(), s)))
            .filter_map(|(r, s)| s.values.get("lag_seconds").map(|l| (r, *l)))
            .collect();
        let worst = lags.iter().cloned().fold(None::<(String, f64)>, |m, x| match m {
            Some(m) if m.1 >= x.1 => Some(m),
            _ => Some(x),
        });
        lines.push(match worst {
            Some((r, l)) => CheckLine {
                name: format!("replication lag ≤ {budget} s"),
                ok: l <= budget,
                detail: format!("{l:.2} s behind in {r}"),
            },
            None => CheckLine {
                name: format!("replication lag ≤ {budget} s"),
                ok: false,
                detail: format!(
                    "no replication sample in the last {} s: no standby is streaming (or no postgres check on it)",
                    LAG_FRESH_MS / 1000
                ),
            },
        });
    }
    let active: Vec<String> =
        app.view.active_runs().into_iter().filter(|r| r.run.service == spec.service).map(|r| r.run.id).collect();
    lines.push(CheckLine {
        name: format!("no run active for {}", spec.service),
        ok: active.is_empty(),
        detail: if active.is_empty() { "none".into() } else { format!("active: {}", active.join(", ")) },
    });
    let regions: BTreeSet<&String> = spec.faults.iter().map(|f| &f.region).collect();
    for region in regions {
        let ok = app.engine.region_attached(region);
        lines.push(CheckLine {
            name: format!("agent connected in {region}"),
            ok,
            detail: if ok {
                "connected".into()
            } else {
                format!("no agent of {region} holds a session with the leader")
            },
        });
    }
    if let Some(c) = &spec.canary {
        let (ok, detail) = match canary::prepare(c).await {
            Ok(server) => (true, format!("writes to {server}")),
            Err(e) => (false, e),
        };
        lines.push(CheckLine { name: "write canary".into(), ok, detail });
    }
    let mut playbooks: Vec<(&str, &String)> = Vec::new();
    if let Response::Playbook { playbook, .. } = &spec.response {
        playbooks.push(("response", playbook));
    }
    if let Some(p) = &spec.restore.playbook {
        playbooks.push(("restore", p));
    }
    for (what, name) in playbooks {
        let found = crate::grpc::runs::find_playbook(app, name);
        lines.push(CheckLine {
            name: format!("{what} playbook {name} applied"),
            ok: found.is_ok(),
            detail: match found {
                Ok(p) => format!("sha256 {}", &p.hash[..12.min(p.hash.len())]),
                Err(e) => e.message().to_string(),
            },
        });
    }
    lines
}

/// Evaluates the guardrails; a breach that lasted its `for` aborts the drill. True: tripped.
async fn guardrails(app: &AppRef, d: &DrillRun, now: i64) -> bool {
    if d.spec.guardrails.is_empty() || d.abort.is_some() {
        return false;
    }
    let rep = app.view.health();
    for g in &d.spec.guardrails {
        let key = (d.id.clone(), g.name.clone());
        let (ok, detail) = observe::evaluate(&g.probe, &rep);
        let since = {
            let mut b = app.engine.drill.breach.lock().unwrap_or_else(|p| p.into_inner());
            if ok {
                b.remove(&key);
                continue;
            }
            *b.entry(key).or_insert(now)
        };
        if now - since < g.for_ms as i64 {
            continue;
        }
        let run = response(app, d);
        let hold = run.as_ref().is_some_and(observe::past_point_of_no_return);
        let action = if hold { "held and paged (past the point of no return)" } else { "aborted and restored" };
        tracing::error!(drill_run = %d.id, guardrail = %g.name, "guardrail tripped: {detail}");
        let trip = GuardrailTrip { name: g.name.clone(), at_ms: now, detail: detail.clone(), action: action.into() };
        if commit(app, &d.id, DrillOp::Guardrail { trip }).await {
            let reason = format!("guardrail {} tripped: {detail}", g.name);
            commit(app, &d.id, DrillOp::Abort { reason, hold }).await;
        }
        return true;
    }
    false
}

/// Keeps the drill's canary writing on this leader (until the RPO check), armed once the
/// faults are in.
fn ensure_canary(app: &AppRef, d: &DrillRun) {
    let Some(c) = &d.spec.canary else { return };
    if !d.canary.checked.is_empty() {
        return;
    }
    let mut g = app.engine.drill.canaries.lock().unwrap_or_else(|p| p.into_inner());
    let handle = g.entry(d.id.clone()).or_insert_with(|| {
        // A new leader continues well above anything the previous one may have written.
        let first = if d.canary.max_acked() == 0 { 1 } else { d.canary.max_acked() + 100_000 };
        CanaryHandle::start(c, &d.id, first)
    });
    if let Some(at) = d.milestones.get(milestone::FAULT_INJECTED) {
        handle.arm(*at);
    }
}

async fn inject(app: &AppRef, d: &DrillRun, term: u64, now: i64) {
    ensure_canary(app, d);
    // A baseline first: the canary must have written steadily before anything breaks. A
    // platform that cannot take writes now is not in a steady state to break.
    if d.spec.canary.is_some()
        && d.canary.acked_count() < BASELINE_WRITES
        && !d.faults.values().any(|f| f.dispatched_ms > 0)
    {
        if now - d.state_since_ms < BASELINE_WAIT_MS {
            return;
        }
        let why = if d.canary.error.is_empty() { "writes too slow".to_string() } else { d.canary.error.clone() };
        let reason = format!(
            "the canary got {} of {BASELINE_WRITES} baseline writes acknowledged in {} s ({why}); nothing was injected",
            d.canary.acked_count(),
            BASELINE_WAIT_MS / 1000
        );
        commit(app, &d.id, DrillOp::Abort { reason, hold: false }).await;
        return;
    }
    for (i, f) in d.spec.faults.iter().enumerate() {
        let st = &d.faults[&f.id];
        if st.failed {
            let reason = format!("fault {} could not be injected: {}", f.id, st.detail);
            commit(app, &d.id, DrillOp::Abort { reason, hold: false }).await;
            return;
        }
        if st.dispatched_ms == 0 {
            let token = app.engine.token(term);
            if commit(app, &d.id, DrillOp::FaultDispatch { fault: f.id.clone(), revert: false, token }).await
                && let Some(d) = app.view.drill_run(&d.id)
            {
                send_fault(app, &d, i, false, term, now);
            }
            return;
        }
        if st.injected_ms == 0 {
            send_fault(app, d, i, false, term, now);
            return;
        }
    }
    ensure_canary(app, d);
    commit(app, &d.id, DrillOp::Enter { state: DrillState::Responding, why: "every fault is in".into() }).await;
}

/// Milestones from health and from the response run; returns true when something was committed.
async fn milestones(app: &AppRef, d: &DrillRun) -> bool {
    let Some(&injected) = d.milestones.get(milestone::FAULT_INJECTED) else { return false };
    let rep = app.view.health();
    let mut found: Vec<(&str, i64)> = Vec::new();
    if let Some(t) = observe::first_failing_check(&rep, &d.spec.target_region, injected) {
        found.push((milestone::FIRST_FAILING_CHECK, t));
    }
    if let Some(t) = observe::region_down(&rep, &d.spec.target_region, injected) {
        found.push((milestone::REGION_DOWN, t));
    }
    if let Some(r) = response(app, d) {
        found.extend(observe::run_milestones(&r));
    }
    let mut any = false;
    for (name, at_ms) in found.into_iter().filter(|(n, _)| !d.milestones.contains_key(*n)) {
        any |= commit(app, &d.id, DrillOp::Milestone { name: name.into(), at_ms }).await;
    }
    any
}

/// Faults whose duration is over are reverted; faults an agent's dead-man switch reverted are
/// recorded as such.
async fn fault_upkeep(app: &AppRef, d: &DrillRun, term: u64, now: i64) {
    let beats = app.engine.drill.heartbeats.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (i, f) in d.spec.faults.iter().enumerate() {
        let st = &d.faults[&f.id];
        if st.injected_ms == 0 || st.reverted_ms != 0 {
            continue;
        }
        let key = format!("{}/{}", d.id, f.id);
        let agents = app.engine.region_agents(&f.region);
        let gone = agents.iter().any(|a| {
            beats.get(a).is_some_and(|(at, active)| *at > st.injected_ms + HEARTBEAT_GRACE_MS && !active.contains(&key))
        });
        if gone && st.revert_dispatched_ms == 0 {
            let detail = "reverted by the agent's dead-man switch (no longer active on the agent)".to_string();
            commit(app, &d.id, DrillOp::FaultResult { fault: f.id.clone(), revert: true, ok: true, detail }).await;
            continue;
        }
        if let Some(dur) = f.duration_ms
            && now >= st.injected_ms + dur as i64
        {
            if st.revert_dispatched_ms == 0 {
                let token = app.engine.token(term);
                commit(app, &d.id, DrillOp::FaultDispatch { fault: f.id.clone(), revert: true, token }).await;
            } else {
                send_fault(app, d, i, true, term, now);
            }
        }
    }
}

async fn respond(app: &AppRef, d: &DrillRun, term: u64, now: i64) {
    ensure_canary(app, d);
    if milestones(app, d).await {
        return;
    }
    fault_upkeep(app, d, term, now).await;
    let injected = d.milestones.get(milestone::FAULT_INJECTED).copied().unwrap_or(d.state_since_ms);
    match &d.spec.response {
        Response::None { observe_ms } => {
            if now >= injected + *observe_ms as i64 {
                verify_and_restore(app, d, "observation window over").await;
            }
        }
        Response::AutomaticFailover | Response::Playbook { .. } => match response(app, d) {
            Some(r) if r.run.state.is_terminal() => {
                let why = format!("response run {} ended {}", r.run.id, crate::grpc::runs::state_text(&r.run.state).0);
                verify_and_restore(app, d, &why).await;
            }
            Some(_) => {}
            None => start_response(app, d, injected).await,
        },
    }
}

/// Adopts a run the platform started on its own after the injection, or starts the drill's
/// playbook when its start condition holds.
async fn start_response(app: &AppRef, d: &DrillRun, injected: i64) {
    let reason = format!("GameDay drill {} ({})", d.id, d.drill);
    let adopted = app
        .view
        .runs()
        .into_values()
        .filter(|r| r.run.service == d.spec.service && r.created_ms >= injected)
        .min_by_key(|r| r.created_ms);
    if let Some(r) = adopted {
        if r.reason != reason && matches!(d.spec.response, Response::Playbook { .. }) {
            let text = format!(
                "run {} (automatic: {}) started before the drill's playbook and was adopted",
                r.run.id, r.automatic
            );
            commit(app, &d.id, DrillOp::Deviation { text }).await;
        }
        commit(app, &d.id, DrillOp::Link { purpose: Purpose::Response, run_id: r.run.id }).await;
        return;
    }
    let Response::Playbook { playbook, params, unplanned, start } = &d.spec.response else { return };
    let ready = match start {
        ResponseStart::Immediately => true,
        ResponseStart::OnDetection => d.milestones.contains_key(milestone::FIRST_FAILING_CHECK),
        ResponseStart::OnDown => d.milestones.contains_key(milestone::REGION_DOWN),
    };
    if !ready {
        return;
    }
    let mode = if *unplanned { RunMode::Unplanned } else { RunMode::Planned };
    if let Err(text) = start_playbook(app, d, playbook, params, mode, reason).await {
        commit(app, &d.id, DrillOp::Deviation { text }).await;
    }
}

async fn start_playbook(
    app: &AppRef,
    d: &DrillRun,
    playbook: &str,
    params: &BTreeMap<String, String>,
    mode: RunMode,
    reason: String,
) -> Result<(), String> {
    let map: HashMap<String, String> = params.clone().into_iter().collect();
    let (stored, resolved) =
        crate::grpc::runs::resolve(app, playbook, &map).map_err(|e| format!("playbook {playbook}: {}", e.message()))?;
    let blockers = crate::grpc::runs::blockers(app, &resolved, mode).await;
    if !blockers.is_empty() {
        return Err(format!("playbook {playbook} cannot start yet: {}", blockers.join("; ")));
    }
    let actor = format!("drill:{}", d.id);
    let record = crate::failover::new_record(&stored, &resolved, mode, &actor, reason, String::new(), false);
    let id = record.run.id.clone();
    app.execute(LeaderRequest::Write(req(&actor, Command::CreateRun { record: Box::new(record) })))
        .await
        .map_err(|e| format!("starting {playbook}: {}", e.message()))?;
    let purpose = if d.state >= DrillState::Restoring { Purpose::Restore } else { Purpose::Response };
    commit(app, &d.id, DrillOp::Link { purpose, run_id: id }).await;
    Ok(())
}

/// The RPO count and the integrity queries (through the canary), then on to restore.
async fn verify_and_restore(app: &AppRef, d: &DrillRun, why: &str) {
    if let Some(c) = &d.spec.canary
        && d.canary.checked.is_empty()
    {
        flush_canary(app, d).await;
        let acked = app.view.drill_run(&d.id).map(|x| x.canary.acked).unwrap_or_default();
        let op = match canary::verify(c, &d.id, &acked, &d.spec.expect.integrity).await {
            Ok((missing, checked, integrity)) => {
                DrillOp::Verified { missing: Some(missing), checked, integrity, error: String::new() }
            }
            Err(error) => DrillOp::Verified { missing: None, checked: "not checked".into(), integrity: vec![], error },
        };
        commit(app, &d.id, op).await;
    }
    commit(app, &d.id, DrillOp::Enter { state: DrillState::Restoring, why: why.into() }).await;
}

async fn restore(app: &AppRef, d: &DrillRun, term: u64, now: i64) {
    if !d.milestones.contains_key(milestone::RESTORE_STARTED) {
        commit(app, &d.id, DrillOp::Milestone { name: milestone::RESTORE_STARTED.into(), at_ms: now }).await;
        return;
    }
    if milestones(app, d).await {
        return;
    }
    let taken = app.engine.drill.canaries.lock().unwrap_or_else(|p| p.into_inner()).remove(&d.id);
    if let Some(c) = taken {
        c.stop();
        let p = c.take();
        drop(c);
        if !p.is_empty() {
            commit(app, &d.id, p.into()).await;
            return;
        }
    }
    let started = d.milestones[milestone::RESTORE_STARTED];
    let timed_out = now > started + d.spec.restore.timeout_ms as i64;
    // 1. Every fault out (retried until the restore times out; the agents' dead-man switches
    //    remain the backstop).
    let mut pending = false;
    for (i, f) in d.spec.faults.iter().enumerate() {
        let st = &d.faults[&f.id];
        if st.reverted_ms != 0 || (st.dispatched_ms == 0 && st.injected_ms == 0) || (st.failed && st.injected_ms == 0) {
            continue;
        }
        pending = true;
        // A stopped old primary starts again only once it is fenced: otherwise it would come
        // back writable beside the new primary.
        if matches!(f.kind, super::spec::FaultKind::PostgresStop { .. })
            && app
                .view
                .services()
                .get(&d.spec.service)
                .and_then(|sv| sv.fences.get(&f.region))
                .is_some_and(|o| o.done_ms == 0)
        {
            continue;
        }
        if st.revert_dispatched_ms == 0 {
            let token = app.engine.token(term);
            if commit(app, &d.id, DrillOp::FaultDispatch { fault: f.id.clone(), revert: true, token }).await
                && let Some(d) = app.view.drill_run(&d.id)
            {
                send_fault(app, &d, i, true, term, now);
            }
        } else {
            send_fault(app, d, i, true, term, now);
        }
    }
    if pending && !timed_out {
        return;
    }
    if pending {
        let text = "not every fault was confirmed reverted before the restore timed out (the agents' dead-man switches remain)".to_string();
        commit(app, &d.id, DrillOp::Deviation { text }).await;
    }
    // 2. The response run: an abort before the point of no return rolls it back.
    let run = response(app, d);
    if let Some(abort) = &d.abort
        && let Some(r) = run.as_ref().filter(|r| !r.run.state.is_terminal())
    {
        if abort.hold {
            if !d.deviations.iter().any(|x| x.starts_with("paged:")) {
                let text = format!(
                    "paged: run {} is past its point of no return; an operator must finish or restore it",
                    r.run.id
                );
                page(app, d, &text).await;
                commit(app, &d.id, DrillOp::Deviation { text }).await;
            }
        } else {
            let op = RunOp::Abort { reason: format!("drill {} aborted: {}", d.id, abort.reason) };
            let cmd = Command::UpdateRun { run_id: r.run.id.clone(), op };
            let _ = app.execute(LeaderRequest::Write(req("drill-engine", cmd))).await;
            if !timed_out {
                return;
            }
        }
    }
    // 3. The failback, as its own gated cutover, when the response moved the service.
    let moved = run.as_ref().is_some_and(|r| r.run.state == RunState::Succeeded && r.run.plan.failover.is_some());
    if d.abort.is_none()
        && moved
        && let Some(pb) = &d.spec.restore.playbook
    {
        let reason = format!("GameDay drill {} ({}): restore", d.id, d.drill);
        // A restore run started by a leader that died before linking it.
        if d.restore_run.is_none()
            && let Some(r) = app.view.runs().into_values().find(|r| r.reason == reason)
        {
            commit(app, &d.id, DrillOp::Link { purpose: Purpose::Restore, run_id: r.run.id }).await;
            return;
        }
        match d.restore_run.as_deref().and_then(|id| app.view.run(id)) {
            None if !timed_out => {
                if let Err(text) = start_playbook(app, d, pb, &d.spec.restore.params, RunMode::Planned, reason).await {
                    // Health may need a moment after the faults are reverted: retry until the timeout.
                    tracing::info!(drill_run = %d.id, "restore not started yet: {text}");
                }
                return;
            }
            None => {
                let text = format!("restore playbook {pb} could not start before the restore timed out");
                commit(app, &d.id, DrillOp::Deviation { text }).await;
            }
            Some(r) if !r.run.state.is_terminal() && !timed_out => return,
            Some(r) if r.run.state != RunState::Succeeded => {
                let text = format!("restore run {} ended {}", r.run.id, crate::grpc::runs::state_text(&r.run.state).0);
                commit(app, &d.id, DrillOp::Deviation { text }).await;
            }
            Some(_) => {}
        }
    }
    // 4. Steady state again (given time to settle).
    if d.steady_after.is_empty() && !d.spec.steady_state.is_empty() {
        let rep = app.view.health();
        let lines: Vec<CheckLine> = d
            .spec
            .steady_state
            .iter()
            .map(|p| {
                let (ok, detail) = observe::evaluate(p, &rep);
                CheckLine { name: format!("steady state: {}", observe::probe_name(p)), ok, detail }
            })
            .collect();
        let settled = d.state_since_ms.max(started);
        if lines.iter().all(|l| l.ok)
            || now > settled + STEADY_AFTER_WAIT_MS.min(d.spec.restore.timeout_ms as i64)
            || timed_out
        {
            commit(app, &d.id, DrillOp::SteadyAfter { lines }).await;
        }
        return;
    }
    if !d.milestones.contains_key(milestone::RESTORED) {
        commit(app, &d.id, DrillOp::Milestone { name: milestone::RESTORED.into(), at_ms: now }).await;
        return;
    }
    let (outcome, detail) = verdict(app, d);
    finish(app, d, outcome, detail, now).await;
}

async fn page(app: &AppRef, d: &DrillRun, text: &str) {
    tracing::error!(drill_run = %d.id, "PAGE: {text}");
    let details = serde_json::json!({"drill_run": d.id, "drill": d.drill, "owner": d.spec.owner, "text": text});
    let cmd = Command::Record { action: "drill.page".into(), details };
    let _ = app.execute(LeaderRequest::Write(req("drill-engine", cmd))).await;
}

fn verdict(app: &AppRef, d: &DrillRun) -> (DrillOutcome, String) {
    if let Some(h) = &d.halt {
        return (DrillOutcome::Halted, format!("halted: {h}"));
    }
    if let Some(a) = &d.abort {
        return (DrillOutcome::Aborted, a.reason.clone());
    }
    let lines = super::report::grade(d, response(app, d).as_ref());
    let failed: Vec<String> = lines.iter().filter(|l| !l.ok).map(|l| format!("{} ({})", l.name, l.detail)).collect();
    if failed.is_empty() {
        (DrillOutcome::Passed, format!("every expectation held ({} checked)", lines.len()))
    } else {
        (DrillOutcome::Failed, format!("failed: {}", failed.join("; ")))
    }
}

async fn finish(app: &AppRef, d: &DrillRun, outcome: DrillOutcome, detail: String, now: i64) {
    let mut done = d.clone();
    done.outcome = Some(outcome);
    done.outcome_detail = detail.clone();
    done.state = DrillState::Done;
    done.ended_ms = now;
    let resp = response(app, d);
    let rest = d.restore_run.as_deref().and_then(|id| app.view.run(id));
    let mut previous: Vec<DrillRun> =
        app.view.drill_runs().into_values().filter(|x| x.drill == d.drill && x.id != d.id && x.is_done()).collect();
    previous.sort_by_key(|x| std::cmp::Reverse(x.created_ms));
    let report = super::report::build(&super::report::ReportInputs {
        run: &done,
        response: resp.as_ref(),
        restore: rest.as_ref(),
        previous: &previous,
    });
    tracing::warn!(drill_run = %d.id, outcome = outcome.as_str(), "drill ended: {detail}");
    commit(app, &d.id, DrillOp::Finish { outcome, detail, report }).await;
    app.engine.drill.canaries.lock().unwrap_or_else(|p| p.into_inner()).remove(&d.id);
}
