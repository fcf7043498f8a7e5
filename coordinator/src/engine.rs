//! The run engine: the leader's loop that turns the stepper's decisions into committed intents
//! and step commands, and agents' results into committed outcomes.
//!
//! Commit before acting: a step command is sent only after its `Dispatch` intent (with the
//! fencing token) is in the log, so a new leader knows exactly what may be in flight. It
//! re-sends in-flight work it never sent itself (same attempt: the agent answers a repeat with
//! its recorded result) instead of starting the step over.

use crate::command::{Command, HealthState, Request, RunOp, RunRecord};
use crate::node::{AppRef, LeaderRequest, now_ms};
use crate::run::{Decision, RunMode, Work};
use drcut_proto::v1::coordinator_message::Body as CoordBody;
use drcut_proto::v1::{CoordinatorMessage, StepCommand, StepResult};
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;

type Outbound = mpsc::Sender<Result<CoordinatorMessage, Status>>;

/// Agent sessions able to take step commands, and what this leader has sent.
#[derive(Default)]
pub struct Engine {
    sessions: Mutex<BTreeMap<String, (String, Outbound)>>,
    sent: Mutex<HashSet<(String, u64, Work)>>,
    seq: AtomicU64,
    /// Per agent: when this leader last granted it a lease.
    leases: Mutex<BTreeMap<String, i64>>,
    /// When this node last became leader (0: not leading).
    leader_since: std::sync::atomic::AtomicI64,
    /// Rejoin fences sent by this leader: (service, region) → (attempt, sent at).
    rejoin: Mutex<BTreeMap<(String, String), (u32, i64)>>,
    /// Automatic policies of stored playbooks by content hash (None: none or off).
    pub automatic_cache:
        Mutex<BTreeMap<String, Option<(crate::playbook::ResolvedPlaybook, crate::playbook::Automatic)>>>,
    /// The drill engine's leader-local memory.
    pub drill: crate::drill::engine::DrillMem,
}

/// The step index of a rejoin fence (no step of any plan: the agent records it apart).
pub const REJOIN_STEP: u32 = u32::MAX;
/// A rejoin fence without an answer is sent again after this long.
const REJOIN_RESEND_MS: i64 = 3000;

impl Engine {
    /// A session opened on this (leading) node.
    pub fn attach(&self, agent: &str, region: &str, tx: Outbound) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(agent.to_string(), (region.to_string(), tx));
    }

    /// A session closed (a newer session of the same agent stays attached).
    pub fn detach(&self, agent: &str, tx: &Outbound) {
        let mut g = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if g.get(agent).is_some_and(|(_, t)| t.same_channel(tx)) {
            g.remove(agent);
        }
    }

    /// This leader granted `agent` a lease at `now`.
    pub fn lease_granted(&self, agent: &str, now: i64) {
        self.leases.lock().unwrap_or_else(|p| p.into_inner()).insert(agent.to_string(), now);
    }

    /// The latest moment `agent` can hold a lease from: the last grant of this leader, or the
    /// start of its leadership (a lease from an earlier leader predates that, because an earlier
    /// leader's grants need a quorum this leader's election took away).
    pub fn lease_floor(&self, agent: &str) -> Option<i64> {
        let since = self.leader_since.load(Ordering::Relaxed);
        if since == 0 {
            return None;
        }
        let last = self.leases.lock().unwrap_or_else(|p| p.into_inner()).get(agent).copied().unwrap_or(0);
        Some(last.max(since))
    }

    /// Whether `agent` has a session able to take commands.
    pub fn is_attached(&self, agent: &str) -> bool {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(agent).is_some_and(|(_, tx)| !tx.is_closed())
    }

    /// Agents with an open session, and their regions.
    pub fn attached_agents(&self) -> Vec<(String, String)> {
        let g = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().filter(|(_, (_, tx))| !tx.is_closed()).map(|(a, (r, _))| (a.clone(), r.clone())).collect()
    }

    /// Agents of `region` with an open session.
    pub fn region_agents(&self, region: &str) -> Vec<String> {
        self.attached_agents().into_iter().filter(|(_, r)| r == region).map(|(a, _)| a).collect()
    }

    /// Whether some agent of `region` has an open session.
    pub fn region_attached(&self, region: &str) -> bool {
        self.agent_for(region).is_some()
    }

    /// Sends a command to one agent (false: no open session, or its queue is full).
    pub fn send_to_agent(&self, agent: &str, cmd: StepCommand) -> bool {
        let tx = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(agent).map(|(_, tx)| tx.clone());
        tx.is_some_and(|tx| tx.try_send(Ok(CoordinatorMessage { body: Some(CoordBody::Step(cmd)) })).is_ok())
    }

    /// Sends a command to an agent of `region` (false: none connected).
    pub fn send_to_region(&self, region: &str, cmd: StepCommand) -> bool {
        self.agent_for(region)
            .is_some_and(|(_, tx)| tx.try_send(Ok(CoordinatorMessage { body: Some(CoordBody::Step(cmd)) })).is_ok())
    }

    fn agent_for(&self, region: &str) -> Option<(String, Outbound)> {
        let g = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        g.iter().find(|(_, (r, tx))| r == region && !tx.is_closed()).map(|(a, (_, tx))| (a.clone(), tx.clone()))
    }

    /// A fencing token newer than any this cluster issued before: the term in the high bits
    /// (a new leader has a higher term), a per-leader counter below.
    pub(crate) fn token(&self, term: u64) -> u64 {
        (term << 32) | (self.seq.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff)
    }
}

fn command(rec: &RunRecord, w: &Work, token: u64) -> Option<(String, StepCommand)> {
    let step = rec.run.plan.steps.get(w.step)?;
    let act = rec.run.action_for(w)?;
    // An approval waits on the coordinator, bounded by the step's timeout, for `ApproveRun`
    // by someone other than the requester: no agent has anything to do.
    if act.action == "approval" {
        return None;
    }
    Some((
        act.region.clone(),
        StepCommand {
            run_id: rec.run.id.clone(),
            step_id: step.id.clone(),
            step_index: w.step as u32,
            phase: w.phase.map(|p| p as i32).unwrap_or(-1),
            compensation: w.compensation,
            attempt: w.attempt,
            fencing_token: token,
            action: act.action.clone(),
            params_json: act.with.to_string(),
            timeout_ms: step.timeout_ms as u32,
            service: rec.run.service.clone(),
        },
    ))
}

async fn commit(app: &AppRef, run_id: &str, op: RunOp) -> Result<(), Status> {
    let cmd = Command::UpdateRun { run_id: run_id.to_string(), op };
    let req = Request { request_id: String::new(), actor: "engine".into(), at_ms: 0, cmd };
    app.execute(LeaderRequest::Write(req)).await.map(|_| ())
}

fn send(app: &AppRef, rec: &RunRecord, w: &Work, token: u64) -> bool {
    let Some((region, cmd)) = command(rec, w, token) else { return false };
    let Some((agent, tx)) = app.engine.agent_for(&region) else {
        tracing::warn!(run_id = %rec.run.id, step = %cmd.step_id, %region, "no agent connected for the step's region");
        return false;
    };
    tracing::info!(run_id = %rec.run.id, step = %cmd.step_id, action = %cmd.action, %region, %agent, attempt = w.attempt, fencing_token = token, "step sent");
    tx.try_send(Ok(CoordinatorMessage { body: Some(CoordBody::Step(cmd)) })).is_ok()
}

/// One pass over the active runs.
async fn tick(app: &AppRef, term: u64) {
    let now = now_ms();
    for rec in app.view.active_runs() {
        let id = rec.run.id.clone();
        if rec.run.plan.mode == RunMode::Unplanned
            && rec.run.loss.is_none()
            && let Some(loss) = crate::failover::measure_loss(app, &rec.run, now)
        {
            if let Err(e) = commit(app, &id, RunOp::RecordLoss { loss }).await {
                tracing::debug!(run_id = %id, "engine: {e}");
            }
            continue;
        }
        let facts = crate::failover::facts(app, &rec.run, now);
        let res = match rec.run.decide_with(now, &facts) {
            Decision::Skip { step, reason } => {
                tracing::warn!(run_id = %id, step = %rec.run.plan.steps[step].id, "step skipped: {reason}");
                commit(app, &id, RunOp::Skip { step, reason }).await
            }
            Decision::ConfirmFencing(fencing) => {
                tracing::warn!(run_id = %id, how = %fencing.how, "old primary counted as fenced: {}", fencing.detail);
                commit(app, &id, RunOp::ConfirmFencing { fencing }).await
            }
            Decision::Hold(reason) => {
                tracing::warn!(run_id = %id, "run held: {reason}");
                commit(app, &id, RunOp::Hold { reason }).await
            }
            Decision::Wait(_) => {
                if let Some(f) = &rec.run.in_flight {
                    let key = (id.clone(), term, f.work.clone());
                    let fresh = !app.engine.sent.lock().unwrap_or_else(|p| p.into_inner()).contains(&key);
                    if fresh && send(app, &rec, &f.work, app.engine.token(term)) {
                        app.engine.sent.lock().unwrap_or_else(|p| p.into_inner()).insert(key);
                    }
                }
                Ok(())
            }
            Decision::Dispatch { work, .. } => {
                let token = app.engine.token(term);
                match commit(app, &id, RunOp::Dispatch { work: work.clone(), token }).await {
                    Ok(()) => {
                        if let Some(rec) = app.view.run(&id)
                            && rec.run.in_flight.as_ref().is_some_and(|f| f.work == work)
                            && send(app, &rec, &work, token)
                        {
                            app.engine.sent.lock().unwrap_or_else(|p| p.into_inner()).insert((id.clone(), term, work));
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Decision::TimedOut(work) => {
                let region = rec.run.plan.steps[work.step].act.region.clone();
                let connected = app.engine.agent_for(&region).is_some();
                let timeout = rec.run.plan.steps[work.step].timeout_ms;
                let detail = if rec.run.waiting_approval_step().is_some() {
                    format!("no approval within {timeout} ms")
                } else {
                    format!(
                        "no result within {timeout} ms{}",
                        if connected { String::new() } else { format!(" (no agent connected in {region})") }
                    )
                };
                let op = RunOp::Result {
                    work,
                    ok: false,
                    detail,
                    measurements: BTreeMap::new(),
                    data: serde_json::Value::Null,
                };
                commit(app, &id, op).await
            }
            Decision::Gate { step, region, .. } => {
                let rep = app.view.health();
                let s = &rec.run.plan.steps[step];
                let require = s.gate_require.as_str();
                match app.hub.gate_state(&rep, &region, now) {
                    Some(state) => {
                        let ok = match require {
                            "not_down" => matches!(state, HealthState::Up | HealthState::Degraded),
                            _ => state == HealthState::Up,
                        };
                        let detail = format!("region {region} is {} (gate requires {require})", state.as_str());
                        commit(app, &id, RunOp::Gate { ok, detail }).await
                    }
                    // After a leader change the model holds memories, not evidence: wait for
                    // fresh reports, but not forever.
                    None if now > rec.run.dwell_until_ms.unwrap_or(now) + s.timeout_ms as i64 => {
                        let detail = format!("no fresh health evidence for region {region} within {} ms", s.timeout_ms);
                        commit(app, &id, RunOp::Gate { ok: false, detail }).await
                    }
                    None => Ok(()),
                }
            }
            Decision::Finish(state) => commit(app, &id, RunOp::Finish { state }).await,
        };
        if let Err(e) = res {
            tracing::debug!(run_id = %id, "engine: {e}");
        }
    }
}

/// Sends the fence of an old primary to its region's agent as soon as one is connected, and
/// again until it answers: a returning region's database must be fenced before anything else
/// writes to it.
fn rejoin_fences(app: &AppRef, term: u64, now: i64) {
    for (service, sv) in app.view.services() {
        for (region, order) in sv.fences.iter().filter(|(_, o)| o.done_ms == 0) {
            let Some((agent, tx)) = app.engine.agent_for(region) else { continue };
            let key = (service.clone(), region.clone());
            let attempt = {
                let mut g = app.engine.rejoin.lock().unwrap_or_else(|p| p.into_inner());
                let e = g.entry(key).or_insert((0, 0));
                if e.0 > 0 && now - e.1 < REJOIN_RESEND_MS {
                    continue;
                }
                *e = (e.0 + 1, now);
                e.0
            };
            let token = app.engine.token(term);
            let cmd = StepCommand {
                run_id: order.run_id.clone(),
                step_id: "rejoin-fence".into(),
                step_index: REJOIN_STEP,
                phase: -1,
                compensation: false,
                // Distinct per leader and attempt, so an agent never answers from an old record.
                attempt: ((term as u32) << 16) | (attempt & 0xffff),
                fencing_token: token,
                action: "fence".into(),
                params_json: order.with.to_string(),
                timeout_ms: 30_000,
                service: service.clone(),
            };
            tracing::warn!(%service, %region, %agent, run_id = %order.run_id, fencing_token = token, "fencing the returning old primary");
            let _ = tx.try_send(Ok(CoordinatorMessage { body: Some(CoordBody::Step(cmd)) }));
        }
    }
}

/// Commits an agent's rejoin fence result.
async fn on_rejoin_result(app: &AppRef, r: StepResult) {
    let Some((service, region)) = app.view.services().into_iter().find_map(|(name, sv)| {
        sv.fences.iter().find(|(_, o)| o.run_id == r.run_id).map(|(region, _)| (name.clone(), region.clone()))
    }) else {
        return;
    };
    if !r.ok {
        // Let the next attempt go out at once rather than after the resend delay.
        app.engine
            .rejoin
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((service.clone(), region.clone()))
            .and_modify(|e| e.1 = 0);
    }
    let req = Request {
        request_id: String::new(),
        actor: "engine".into(),
        at_ms: 0,
        cmd: Command::FenceDone { service, region, ok: r.ok, detail: r.detail },
    };
    if let Err(e) = app.execute(LeaderRequest::Write(req)).await {
        tracing::warn!(run_id = %r.run_id, "rejoin fence result not committed: {e}");
    }
}

/// Commits an agent's result (late or stale results change nothing in apply).
pub async fn on_result(app: &AppRef, r: StepResult) {
    if r.step_index == REJOIN_STEP {
        return on_rejoin_result(app, r).await;
    }
    if r.step_index == crate::drill::engine::FAULT_STEP {
        return crate::drill::engine::on_fault_result(app, r).await;
    }
    let work = Work {
        step: r.step_index as usize,
        phase: (r.phase >= 0).then_some(r.phase as usize),
        compensation: r.compensation,
        attempt: r.attempt,
    };
    let data = serde_json::from_str(&r.data_json).unwrap_or(serde_json::Value::Null);
    let op =
        RunOp::Result { work, ok: r.ok, detail: r.detail, measurements: r.measurements.into_iter().collect(), data };
    if let Err(e) = commit(app, &r.run_id, op).await {
        tracing::warn!(run_id = %r.run_id, "step result not committed: {e}");
    }
}

/// The engine loop: acts only while this node leads.
pub async fn run(app: AppRef) {
    // Wake on every applied entry (a result or an operator action is in: decide at once) and
    // on a timer for time-based decisions (timeouts, backoff, dwell ends).
    let mut applied = app.view.subscribe();
    let mut tick_every = tokio::time::interval(Duration::from_millis(50));
    tick_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick_every.tick() => {}
            r = applied.changed() => if r.is_err() { return },
        }
        if !app.raft.is_leader() {
            app.engine.leader_since.store(0, Ordering::Relaxed);
            continue;
        }
        if app.engine.leader_since.load(Ordering::Relaxed) == 0 {
            app.engine.leader_since.store(now_ms(), Ordering::Relaxed);
        }
        let term = app.metrics().current_term;
        tick(&app, term).await;
        let now = now_ms();
        rejoin_fences(&app, term, now);
        // On every wake: a region declared down is acted on as soon as it is applied.
        crate::failover::automatic_tick(&app, now).await;
    }
}
