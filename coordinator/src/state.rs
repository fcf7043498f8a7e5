//! The replicated state machine's logic: pure, deterministic, no I/O and no clock.
//!
//! [`State::apply_request`] turns one committed [`Request`] into a [`Response`] and the list of
//! [`Change`]s the store must persist. Every change that alters state also appends an audit
//! entry, so the chain is a complete account of the state's history.

use crate::audit::{AuditEntry, GENESIS_HASH};
use crate::command::{
    AgentRecord, CheckStatus, CheckTransition, ClusterMeta, Command, FenceOrder, HealthState, Outcome, Region,
    RegionStatus, RegionTransition, Rejection, Request, Response, Role, RunOp, RunRecord, ServiceState, StoredDrill,
    StoredPlaybook,
};
use crate::drill::{DrillRun, Trigger};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How many request ids are remembered for idempotency. A client retries within seconds; ten
/// thousand writes is far beyond any retry window while bounding memory and snapshot size.
pub const REMEMBERED_REQUESTS: usize = 10_000;

/// Small scalar state kept in one record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Core {
    /// Cluster identity, once bootstrapped.
    pub cluster: Option<ClusterMeta>,
    /// Number of audit entries.
    pub audit_len: u64,
    /// Hash of the last audit entry.
    pub audit_head: String,
    /// Latest leader time seen in the log; stamps audit entries of entries that carry no time
    /// of their own (membership changes), keeping them deterministic.
    pub clock_ms: i64,
    /// How many times `drctl drill halt` was committed: a leader that has not broadcast the
    /// newest halt to every agent does so.
    #[serde(default)]
    pub drill_halts: u64,
}

impl Default for Core {
    fn default() -> Self {
        Core { cluster: None, audit_len: 0, audit_head: GENESIS_HASH.to_string(), clock_ms: 0, drill_halts: 0 }
    }
}

/// One row the store must write after an apply.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A region was added or changed.
    Region(Region),
    /// A new audit entry.
    Audit(AuditEntry),
    /// Remember this request's response.
    Request {
        /// The request id.
        id: String,
        /// Its response.
        response: Response,
    },
    /// Forget an old request id.
    ForgetRequest(String),
    /// An agent was registered or updated.
    Agent(AgentRecord),
    /// A check's state changed.
    Check(CheckStatus),
    /// A region's health changed.
    RegionHealth(String, RegionStatus),
    /// A playbook was stored.
    Playbook(StoredPlaybook),
    /// A run was created or changed.
    Run(Box<RunRecord>),
    /// A service's failover state changed.
    Service(ServiceState),
    /// A drill file was stored (or its schedule marker moved).
    Drill(StoredDrill),
    /// A drill run was created or changed.
    DrillRun(Box<DrillRun>),
}

/// The replicated state (audit entries live in the store; only the chain's head is here).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// Scalars.
    pub core: Core,
    /// Regions by name.
    pub regions: BTreeMap<String, Region>,
    /// Responses of recent requests by request id.
    pub requests: BTreeMap<String, Response>,
    /// Registered agents by id.
    pub agents: BTreeMap<String, AgentRecord>,
    /// Check states by `agent/check`.
    pub checks: BTreeMap<String, CheckStatus>,
    /// Region health by region name.
    pub region_health: BTreeMap<String, RegionStatus>,
    /// Playbooks by content hash.
    pub playbooks: BTreeMap<String, StoredPlaybook>,
    /// Runs by id.
    pub runs: BTreeMap<String, RunRecord>,
    /// Failover state by service.
    pub services: BTreeMap<String, ServiceState>,
    /// Drill files by name.
    pub drills: BTreeMap<String, StoredDrill>,
    /// Drill runs by id.
    pub drill_runs: BTreeMap<String, DrillRun>,
    /// Request ids by the log index that first applied them, oldest first (for eviction).
    pub(crate) request_order: BTreeMap<u64, String>,
}

impl State {
    /// Rebuilds the derived index after the public fields were loaded from storage.
    pub fn reindexed(mut self) -> Self {
        self.request_order = self.requests.iter().map(|(id, r)| (r.log_index, id.clone())).collect();
        self
    }

    /// Applies one committed request at `log_index`.
    pub fn apply_request(&mut self, log_index: u64, req: &Request) -> (Response, Vec<Change>) {
        if !req.request_id.is_empty()
            && let Some(prev) = self.requests.get(&req.request_id)
        {
            return (prev.clone(), Vec::new());
        }
        self.core.clock_ms = self.core.clock_ms.max(req.at_ms);
        let mut changes = Vec::new();
        let outcome = match self.execute(req, log_index, &mut changes) {
            Ok(outcome) => outcome,
            Err((reason, message)) => {
                changes.clear();
                Outcome::Rejected { reason, message }
            }
        };
        let response = Response { log_index, outcome };
        if !req.request_id.is_empty() {
            self.remember(req.request_id.clone(), response.clone(), &mut changes);
        }
        (response, changes)
    }

    /// Records a membership change committed by Raft itself.
    pub fn apply_membership(&mut self, log_index: u64, membership: serde_json::Value) -> Vec<Change> {
        let mut changes = Vec::new();
        let at = self.core.clock_ms;
        self.audit(log_index, at, "raft", "cluster.membership", membership, &mut changes);
        changes
    }

    fn execute(
        &mut self,
        req: &Request,
        log_index: u64,
        changes: &mut Vec<Change>,
    ) -> Result<Outcome, (Rejection, String)> {
        match &req.cmd {
            Command::InitCluster { cluster_id, bootstrap_node } => {
                if let Some(c) = &self.core.cluster {
                    return Err((
                        Rejection::FailedPrecondition,
                        format!("cluster already initialised as {:?}", c.cluster_id),
                    ));
                }
                let meta = ClusterMeta {
                    cluster_id: cluster_id.clone(),
                    created_at_ms: req.at_ms,
                    bootstrap_node: *bootstrap_node,
                };
                self.core.cluster = Some(meta.clone());
                self.audit(
                    log_index,
                    req.at_ms,
                    &req.actor,
                    "cluster.init",
                    serde_json::to_value(&meta).unwrap_or_default(),
                    changes,
                );
                Ok(Outcome::Done)
            }
            Command::AddRegion { region } => {
                validate_region(region).map_err(|m| (Rejection::InvalidArgument, m))?;
                if self.regions.contains_key(&region.name) {
                    return Err((Rejection::AlreadyExists, format!("region {:?} already exists", region.name)));
                }
                self.regions.insert(region.name.clone(), region.clone());
                changes.push(Change::Region(region.clone()));
                let details = serde_json::to_value(region).unwrap_or_default();
                self.audit(log_index, req.at_ms, &req.actor, "region.add", details, changes);
                Ok(Outcome::Region { region: region.clone() })
            }
            Command::RegisterAgent { agent } => {
                validate_name("agent.region", &agent.region).map_err(|m| (Rejection::InvalidArgument, m))?;
                if agent.agent_id.is_empty() || agent.agent_id.len() > 128 {
                    return Err((Rejection::InvalidArgument, "agent.agent_id: must be 1-128 characters".into()));
                }
                if !self.regions.contains_key(&agent.region) {
                    return Err((
                        Rejection::FailedPrecondition,
                        format!("agent {:?}: unknown region {:?}; add the region first", agent.agent_id, agent.region),
                    ));
                }
                match self.agents.get(&agent.agent_id) {
                    Some(old) if old.region != agent.region => {
                        return Err((
                            Rejection::FailedPrecondition,
                            format!(
                                "agent {:?} is registered in region {:?}, not {:?}; an agent never changes region",
                                agent.agent_id, old.region, agent.region
                            ),
                        ));
                    }
                    Some(old) if old == agent => return Ok(Outcome::Agent { agent: agent.clone() }),
                    Some(_) => {
                        let details = serde_json::to_value(agent).unwrap_or_default();
                        self.audit(log_index, req.at_ms, &req.actor, "agent.update", details, changes);
                    }
                    None => {
                        let details = serde_json::to_value(agent).unwrap_or_default();
                        self.audit(log_index, req.at_ms, &req.actor, "agent.register", details, changes);
                    }
                }
                self.agents.insert(agent.agent_id.clone(), agent.clone());
                changes.push(Change::Agent(agent.clone()));
                Ok(Outcome::Agent { agent: agent.clone() })
            }
            Command::HealthTransitions { checks, regions } => {
                for t in checks {
                    self.apply_check_transition(t, log_index, req, changes);
                }
                for t in regions {
                    self.apply_region_transition(t, log_index, req, changes);
                }
                Ok(Outcome::Done)
            }
            Command::ApplyPlaybook { playbook } => {
                validate_name("playbook.name", &playbook.name).map_err(|m| (Rejection::InvalidArgument, m))?;
                let mut p = playbook.clone();
                p.applied_ms = req.at_ms;
                p.applied_by = req.actor.clone();
                let details = serde_json::json!({"name": p.name, "service": p.service, "hash": p.hash});
                self.playbooks.insert(p.hash.clone(), p.clone());
                changes.push(Change::Playbook(p));
                self.audit(log_index, req.at_ms, &req.actor, "playbook.apply", details, changes);
                Ok(Outcome::Playbook { hash: playbook.hash.clone() })
            }
            Command::CreateRun { record } => {
                if let Some(holder) =
                    self.runs.values().find(|r| r.run.service == record.run.service && !r.run.state.is_terminal())
                {
                    return Err((
                        Rejection::FailedPrecondition,
                        format!(
                            "run {} holds service {:?} (state {:?}); one run per service at a time",
                            holder.run.id, holder.run.service, holder.run.state
                        ),
                    ));
                }
                if self.runs.contains_key(&record.run.id) {
                    return Err((Rejection::AlreadyExists, format!("run {} exists", record.run.id)));
                }
                let mut rec = (**record).clone();
                rec.created_ms = req.at_ms;
                rec.revision = log_index;
                let details = serde_json::json!({
                    "run_id": rec.run.id, "service": rec.run.service, "playbook": rec.playbook,
                    "playbook_hash": rec.playbook_hash, "params": rec.params, "reason": rec.reason,
                    "approvals_required": rec.run.plan.approvals_required,
                });
                let (id, service, automatic) = (rec.run.id.clone(), rec.run.service.clone(), rec.automatic);
                let mut details = details;
                if let Some(o) = details.as_object_mut() {
                    o.insert("mode".into(), serde_json::to_value(rec.run.plan.mode).unwrap_or_default());
                    o.insert("automatic".into(), serde_json::json!(automatic));
                    if let Some(l) = &rec.run.loss {
                        o.insert("expected_loss".into(), serde_json::to_value(l).unwrap_or_default());
                    }
                }
                self.runs.insert(id.clone(), rec.clone());
                changes.push(Change::Run(Box::new(rec)));
                self.audit(log_index, req.at_ms, &req.actor, "run.create", details, changes);
                if automatic {
                    let sv = self.service_mut(&service);
                    sv.last_automatic = Some((id, req.at_ms));
                    sv.ack_requested = None;
                    let sv = sv.clone();
                    changes.push(Change::Service(sv));
                }
                Ok(Outcome::Run { run_id: record.run.id.clone() })
            }
            Command::UpdateRun { run_id, op } => {
                let Some(mut rec) = self.runs.get(run_id).cloned() else {
                    return Err((Rejection::InvalidArgument, format!("no run {run_id:?}")));
                };
                let r = &mut rec.run;
                let res: Result<bool, String> = match op {
                    RunOp::Approve { who } => r.approve(who, req.at_ms).map(|_| true),
                    RunOp::Pause { reason } => r.pause(reason).map(|_| true),
                    RunOp::Resume => r.resume().map(|_| true),
                    RunOp::Abort { reason } => r.abort(reason).map(|_| true),
                    RunOp::Dispatch { work, token } => {
                        if r.in_flight.is_some() || r.state.is_terminal() {
                            Ok(false)
                        } else {
                            r.record_dispatch(work.clone(), *token, req.at_ms);
                            Ok(true)
                        }
                    }
                    RunOp::Result { work, ok, detail, measurements, data } => {
                        Ok(r.record_result(work, *ok, detail, measurements.clone(), data.clone(), req.at_ms))
                    }
                    RunOp::Gate { ok, detail } => {
                        if r.dwell_until_ms.is_some() {
                            r.record_gate(*ok, detail, req.at_ms);
                            Ok(true)
                        } else {
                            Ok(false)
                        }
                    }
                    RunOp::Finish { state } => {
                        if r.state.is_terminal() {
                            Ok(false)
                        } else {
                            r.state = state.clone();
                            Ok(true)
                        }
                    }
                    RunOp::Skip { step, reason } => Ok(r.record_skip(*step, reason)),
                    RunOp::Hold { reason } => {
                        if r.state.is_terminal() || r.hold.as_deref() == Some(reason.as_str()) {
                            Ok(false)
                        } else {
                            r.hold = Some(reason.clone());
                            Ok(true)
                        }
                    }
                    RunOp::ConfirmFencing { fencing } => {
                        Ok(!r.state.is_terminal() && r.record_fencing(fencing.clone()))
                    }
                    RunOp::Consent { who, bytes } => r.consent(who, *bytes).map(|_| true),
                    RunOp::RecordLoss { loss } => {
                        if r.loss.is_some() || r.state.is_terminal() {
                            Ok(false)
                        } else {
                            r.loss = Some(loss.clone());
                            Ok(true)
                        }
                    }
                    RunOp::OverrideFencing { who, risk } => r.override_fencing(who, risk).map(|_| true),
                };
                let applied = res.map_err(|m| (Rejection::FailedPrecondition, m))?;
                if !applied {
                    // A stale intent or a late result: recorded as a no-op, changes nothing.
                    return Ok(Outcome::Run { run_id: run_id.clone() });
                }
                if rec.run.state.is_terminal() && rec.ended_ms == 0 {
                    rec.ended_ms = req.at_ms;
                }
                rec.revision = log_index;
                let mut details = serde_json::to_value(op).unwrap_or_default();
                if let Some(o) = details.as_object_mut() {
                    o.insert("run_id".into(), serde_json::json!(run_id));
                    o.insert("state".into(), serde_json::to_value(&rec.run.state).unwrap_or_default());
                }
                self.runs.insert(run_id.clone(), rec.clone());
                self.after_run_change(&rec, op, req.at_ms, changes);
                changes.push(Change::Run(Box::new(rec)));
                self.audit(log_index, req.at_ms, &req.actor, op.action(), details, changes);
                Ok(Outcome::Run { run_id: run_id.clone() })
            }
            Command::FenceDone { service, region, ok, detail } => {
                let Some(order) = self.services.get_mut(service).and_then(|sv| sv.fences.get_mut(region)) else {
                    return Err((Rejection::FailedPrecondition, format!("no fence order for {service} in {region}")));
                };
                if order.done_ms != 0 && !ok {
                    // A failed repeat never un-does a fence that held.
                    return Ok(Outcome::Done);
                }
                order.detail = detail.clone();
                if *ok {
                    order.done_ms = req.at_ms;
                }
                let sv = self.services[service].clone();
                changes.push(Change::Service(sv));
                let details = serde_json::json!({"service": service, "region": region, "ok": ok, "detail": detail});
                self.audit(log_index, req.at_ms, &req.actor, "fence.rejoin", details, changes);
                Ok(Outcome::Done)
            }
            Command::FailoverSuppressed { service, reason } => {
                let sv = self.service_mut(service);
                if sv.ack_requested.is_some() {
                    return Ok(Outcome::Done);
                }
                sv.ack_requested = Some(reason.clone());
                let sv = sv.clone();
                changes.push(Change::Service(sv));
                let details = serde_json::json!({"service": service, "reason": reason, "ack": "drctl failover ack"});
                self.audit(log_index, req.at_ms, &req.actor, "failover.suppressed", details, changes);
                Ok(Outcome::Done)
            }
            Command::AckFailover { service, note } => {
                if !self.services.contains_key(service) && !self.runs.values().any(|r| &r.run.service == service) {
                    return Err((Rejection::InvalidArgument, format!("unknown service {service:?}")));
                }
                let sv = self.service_mut(service);
                let pending = sv.ack_requested.take();
                sv.acknowledged_ms = req.at_ms;
                let sv = sv.clone();
                changes.push(Change::Service(sv));
                let details = serde_json::json!({"service": service, "note": note, "suppressed": pending});
                self.audit(log_index, req.at_ms, &req.actor, "failover.acknowledged", details, changes);
                Ok(Outcome::Done)
            }
            Command::ApplyDrill { drill } => {
                validate_name("drill.name", &drill.name).map_err(|m| (Rejection::InvalidArgument, m))?;
                let mut d = drill.clone();
                d.applied_ms = req.at_ms;
                d.applied_by = req.actor.clone();
                // A new version keeps the schedule marker: re-applying never re-fires an occurrence.
                d.last_occurrence_ms = self.drills.get(&d.name).and_then(|o| o.last_occurrence_ms);
                let details = serde_json::json!({"name": d.name, "hash": d.hash});
                self.drills.insert(d.name.clone(), d.clone());
                changes.push(Change::Drill(d));
                self.audit(log_index, req.at_ms, &req.actor, "drill.apply", details, changes);
                Ok(Outcome::Done)
            }
            Command::StartDrill { record } => {
                let Some(stored) = self.drills.get(&record.drill).cloned() else {
                    return Err((
                        Rejection::FailedPrecondition,
                        format!("no drill {:?}; apply it first (drctl drill apply FILE)", record.drill),
                    ));
                };
                if let Some(active) = self.drill_runs.values().find(|d| !d.is_done()) {
                    return Err((
                        Rejection::FailedPrecondition,
                        format!("drill run {} ({}) is active; one drill at a time", active.id, active.drill),
                    ));
                }
                if self.drill_runs.contains_key(&record.id) {
                    return Err((Rejection::AlreadyExists, format!("drill run {} exists", record.id)));
                }
                self.take_occurrence(&stored, &record.trigger, changes)?;
                let mut rec = (**record).clone();
                rec.created_ms = req.at_ms;
                rec.state_since_ms = req.at_ms;
                rec.revision = log_index;
                let details = serde_json::json!({
                    "id": rec.id, "drill": rec.drill, "drill_hash": rec.drill_hash, "trigger": rec.trigger,
                });
                self.drill_runs.insert(rec.id.clone(), rec.clone());
                changes.push(Change::DrillRun(Box::new(rec)));
                self.audit(log_index, req.at_ms, &req.actor, "drill.start", details, changes);
                Ok(Outcome::Drill { id: record.id.clone() })
            }
            Command::SkipDrill { drill, occurrence_ms, reason } => {
                let Some(stored) = self.drills.get(drill).cloned() else {
                    return Err((Rejection::FailedPrecondition, format!("no drill {drill:?}")));
                };
                let trigger = Trigger::Schedule { occurrence_ms: *occurrence_ms, late: false };
                self.take_occurrence(&stored, &trigger, changes)?;
                let details = serde_json::json!({"drill": drill, "occurrence_ms": occurrence_ms, "reason": reason});
                self.audit(log_index, req.at_ms, &req.actor, "drill.skip", details, changes);
                Ok(Outcome::Done)
            }
            Command::UpdateDrill { id, op } => {
                let Some(mut rec) = self.drill_runs.get(id).cloned() else {
                    return Err((Rejection::InvalidArgument, format!("no drill run {id:?}")));
                };
                let applied = rec.apply(op, req.at_ms).map_err(|m| (Rejection::FailedPrecondition, m))?;
                if !applied {
                    return Ok(Outcome::Drill { id: id.clone() });
                }
                rec.revision = log_index;
                self.drill_runs.insert(id.clone(), rec.clone());
                changes.push(Change::DrillRun(Box::new(rec.clone())));
                if op.audited() {
                    let mut details = serde_json::to_value(op).unwrap_or_default();
                    if let Some(o) = details.as_object_mut() {
                        o.insert("id".into(), serde_json::json!(id));
                        // The report is kept in the run; the chain pins its hash.
                        if let Some(r) = o.remove("report") {
                            use sha2::Digest;
                            let text = serde_json::to_string(&r).unwrap_or_default();
                            let hash = hex::encode(sha2::Sha256::digest(text.as_bytes()));
                            o.insert("report_sha256".into(), serde_json::json!(hash));
                        }
                    }
                    self.audit(log_index, req.at_ms, &req.actor, op.action(), details, changes);
                }
                Ok(Outcome::Drill { id: id.clone() })
            }
            Command::HaltDrills { reason } => {
                self.core.drill_halts += 1;
                let mut halted = Vec::new();
                for d in self.drill_runs.values_mut().filter(|d| !d.is_done() && d.halt.is_none()) {
                    d.halt = Some(reason.clone());
                    d.revision = log_index;
                    halted.push(d.id.clone());
                    changes.push(Change::DrillRun(Box::new(d.clone())));
                }
                let details = serde_json::json!({"reason": reason, "drill_runs": halted});
                self.audit(log_index, req.at_ms, &req.actor, "drill.halt", details, changes);
                Ok(Outcome::Done)
            }
            Command::Record { action, details } => {
                if action.is_empty() {
                    return Err((Rejection::InvalidArgument, "record: action is empty".into()));
                }
                self.audit(log_index, req.at_ms, &req.actor, action, details.clone(), changes);
                Ok(Outcome::Done)
            }
        }
    }

    /// A scheduled trigger claims its occurrence: each occurrence fires or is skipped once.
    fn take_occurrence(
        &mut self,
        stored: &StoredDrill,
        trigger: &Trigger,
        changes: &mut Vec<Change>,
    ) -> Result<(), (Rejection, String)> {
        let Trigger::Schedule { occurrence_ms, .. } = trigger else { return Ok(()) };
        if stored.last_occurrence_ms.is_some_and(|l| l >= *occurrence_ms) {
            return Err((
                Rejection::AlreadyExists,
                format!("drill {}: occurrence {occurrence_ms} was already handled", stored.name),
            ));
        }
        let mut d = stored.clone();
        d.last_occurrence_ms = Some(*occurrence_ms);
        self.drills.insert(d.name.clone(), d.clone());
        changes.push(Change::Drill(d));
        Ok(())
    }

    fn service_mut(&mut self, service: &str) -> &mut ServiceState {
        self.services
            .entry(service.to_string())
            .or_insert_with(|| ServiceState { service: service.to_string(), ..Default::default() })
    }

    /// What a run's change means for its service: a skipped source fence becomes an order for
    /// the region's return; a rebuilt standby clears it; a finished failover moves the primary.
    fn after_run_change(&mut self, rec: &RunRecord, op: &RunOp, at_ms: i64, changes: &mut Vec<Change>) {
        let run = &rec.run;
        let service = run.service.clone();
        match op {
            RunOp::Skip { step, .. } => {
                let st = &run.plan.steps[*step];
                if st.act.action == "fence" && st.act.with.get("database").is_some() {
                    let order = FenceOrder {
                        region: st.act.region.clone(),
                        with: st.act.with.clone(),
                        run_id: run.id.clone(),
                        ordered_ms: at_ms,
                        done_ms: 0,
                        detail: "to fence when its region returns".into(),
                    };
                    let sv = self.service_mut(&service);
                    sv.fences.insert(order.region.clone(), order);
                    let sv = sv.clone();
                    changes.push(Change::Service(sv));
                }
            }
            RunOp::Result { work, ok: true, .. } if !work.compensation => {
                let st = &run.plan.steps[work.step];
                if st.act.action == "rebuild_standby" && run.completed.contains(&work.step) {
                    let sv = self.service_mut(&service);
                    if sv.fences.remove(&st.act.region).is_some() {
                        let sv = sv.clone();
                        changes.push(Change::Service(sv));
                    }
                }
            }
            RunOp::Finish { state: crate::run::RunState::Succeeded } => {
                let Some(f) = &run.plan.failover else { return };
                let (source, target) = (f.source.clone(), f.target.clone());
                let sv = self.service_mut(&service);
                sv.primary_region = target.clone();
                let sv = sv.clone();
                changes.push(Change::Service(sv));
                for (region, role) in [(source, Role::Standby), (target, Role::Primary)] {
                    if let Some(r) = self.regions.get_mut(&region) {
                        r.roles.insert(service.clone(), role);
                        changes.push(Change::Region(r.clone()));
                    }
                }
            }
            _ => {}
        }
    }

    /// A transition whose `from` no longer matches the stored state was decided on stale
    /// information (e.g. by a deposed leader) and is dropped, keeping the chain truthful.
    fn apply_check_transition(
        &mut self,
        t: &CheckTransition,
        log_index: u64,
        req: &Request,
        changes: &mut Vec<Change>,
    ) {
        let key = format!("{}/{}", t.agent, t.check);
        let current = self.checks.get(&key).map(|c| c.state).unwrap_or(HealthState::Unknown);
        if current != t.from || t.from == t.to {
            return;
        }
        let status = CheckStatus {
            agent: t.agent.clone(),
            vantage_region: t.vantage_region.clone(),
            check: t.check.clone(),
            region: t.region.clone(),
            state: t.to,
            since_ms: req.at_ms,
        };
        self.checks.insert(key, status.clone());
        changes.push(Change::Check(status));
        let details = serde_json::json!({
            "agent": t.agent, "vantage_region": t.vantage_region, "check": t.check, "region": t.region,
            "from": t.from.as_str(), "to": t.to.as_str(), "evidence": t.evidence,
        });
        self.audit(log_index, req.at_ms, &req.actor, "health.check", details, changes);
    }

    fn apply_region_transition(
        &mut self,
        t: &RegionTransition,
        log_index: u64,
        req: &Request,
        changes: &mut Vec<Change>,
    ) {
        let current = self.region_health.get(&t.region).map(|r| r.state).unwrap_or(HealthState::Unknown);
        if current != t.from || t.from == t.to || !self.regions.contains_key(&t.region) {
            return;
        }
        let status = RegionStatus { state: t.to, since_ms: req.at_ms, reason: t.reason.clone() };
        self.region_health.insert(t.region.clone(), status.clone());
        changes.push(Change::RegionHealth(t.region.clone(), status));
        let details = serde_json::json!({
            "region": t.region, "from": t.from.as_str(), "to": t.to.as_str(), "reason": t.reason, "evidence": t.evidence,
        });
        self.audit(log_index, req.at_ms, &req.actor, "health.region", details, changes);
    }

    fn audit(
        &mut self,
        log_index: u64,
        at_ms: i64,
        actor: &str,
        action: &str,
        details: serde_json::Value,
        changes: &mut Vec<Change>,
    ) {
        let seq = self.core.audit_len + 1;
        let e = AuditEntry::new(seq, at_ms, actor, action, details, &self.core.audit_head, log_index);
        self.core.audit_len = seq;
        self.core.audit_head = e.hash.clone();
        changes.push(Change::Audit(e));
    }

    fn remember(&mut self, id: String, response: Response, changes: &mut Vec<Change>) {
        self.request_order.insert(response.log_index, id.clone());
        self.requests.insert(id.clone(), response.clone());
        changes.push(Change::Request { id, response });
        while self.requests.len() > REMEMBERED_REQUESTS {
            let Some((_, old)) = self.request_order.pop_first() else {
                break;
            };
            self.requests.remove(&old);
            changes.push(Change::ForgetRequest(old));
        }
    }
}

/// Checks a region's fields; the message names the field and the bad value.
pub fn validate_region(r: &Region) -> Result<(), String> {
    validate_name("region.name", &r.name)?;
    if r.display_name.chars().count() > 200 {
        return Err("region.display_name: longer than 200 characters".into());
    }
    for service in r.roles.keys() {
        validate_name("region.roles.service", service)?;
    }
    Ok(())
}

/// A DNS-label style name: 1–63 of `a-z 0-9 -`, not starting or ending with `-`.
pub fn validate_name(field: &str, v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{field}: {v:?} is not a valid name (1-63 of a-z, 0-9, '-'; no leading or trailing '-')"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::verify_chain;
    use crate::command::Role;

    fn region(name: &str) -> Region {
        Region {
            name: name.into(),
            display_name: name.to_uppercase(),
            roles: BTreeMap::from([("wallet".into(), Role::Primary)]),
            down_quorum: 0,
        }
    }

    fn req(id: &str, cmd: Command) -> Request {
        Request { request_id: id.into(), actor: "alice".into(), at_ms: 42, cmd }
    }

    fn audits(changes: &[Change]) -> Vec<AuditEntry> {
        changes.iter().filter_map(|c| if let Change::Audit(e) = c { Some(e.clone()) } else { None }).collect()
    }

    #[test]
    fn add_region_stores_and_audits() {
        let mut s = State::default();
        let (r, ch) = s.apply_request(5, &req("a", Command::AddRegion { region: region("eu-west") }));
        assert_eq!(r.log_index, 5);
        assert!(matches!(r.outcome, Outcome::Region { .. }));
        assert!(s.regions.contains_key("eu-west"));
        let a = audits(&ch);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].action, "region.add");
        assert_eq!(a[0].actor, "alice");
        assert_eq!(s.core.audit_head, a[0].hash);
    }

    #[test]
    fn retried_request_applies_once() {
        let mut s = State::default();
        let r = req("same", Command::AddRegion { region: region("eu-west") });
        let (first, _) = s.apply_request(5, &r);
        let before = s.clone();
        let (second, ch) = s.apply_request(9, &r);
        assert_eq!(first, second);
        assert!(ch.is_empty());
        assert_eq!(s, before);
    }

    #[test]
    fn duplicate_region_is_rejected_and_changes_nothing_but_the_request_record() {
        let mut s = State::default();
        s.apply_request(1, &req("a", Command::AddRegion { region: region("eu-west") }));
        let regions = s.regions.clone();
        let core = s.core.clone();
        let (r, ch) = s.apply_request(2, &req("b", Command::AddRegion { region: region("eu-west") }));
        assert!(matches!(r.outcome, Outcome::Rejected { reason: Rejection::AlreadyExists, .. }));
        assert_eq!(s.regions, regions);
        assert_eq!(s.core.audit_len, core.audit_len);
        assert!(ch.iter().all(|c| matches!(c, Change::Request { .. })));
    }

    #[test]
    fn invalid_region_names_the_field() {
        let mut s = State::default();
        let (r, _) = s.apply_request(1, &req("", Command::AddRegion { region: region("EU_West") }));
        match r.outcome {
            Outcome::Rejected { reason: Rejection::InvalidArgument, message } => {
                assert!(message.contains("region.name"))
            }
            o => panic!("unexpected {o:?}"),
        }
        assert!(s.regions.is_empty());
    }

    #[test]
    fn chain_over_many_changes_verifies() {
        let mut s = State::default();
        let mut all = Vec::new();
        let (_, ch) = s.apply_request(1, &req("i", Command::InitCluster { cluster_id: "c".into(), bootstrap_node: 1 }));
        all.extend(audits(&ch));
        for i in 0..20 {
            let (_, ch) =
                s.apply_request(2 + i, &req(&format!("r{i}"), Command::AddRegion { region: region(&format!("r{i}")) }));
            all.extend(audits(&ch));
        }
        all.extend(audits(&s.apply_membership(30, serde_json::json!({"voters": [1, 2, 3]}))));
        let sum = verify_chain(&all).unwrap();
        assert_eq!(sum.entries, 22);
        assert_eq!(sum.head, s.core.audit_head);
    }

    #[test]
    fn request_memory_is_bounded() {
        let mut s = State::default();
        for i in 0..(REMEMBERED_REQUESTS as u64 + 5) {
            s.apply_request(
                i + 1,
                &req(&format!("q{i}"), Command::Record { action: "x.y".into(), details: serde_json::Value::Null }),
            );
        }
        assert_eq!(s.requests.len(), REMEMBERED_REQUESTS);
        assert!(!s.requests.contains_key("q0"));
        let rebuilt = State {
            core: s.core.clone(),
            regions: s.regions.clone(),
            requests: s.requests.clone(),
            ..Default::default()
        }
        .reindexed();
        assert_eq!(rebuilt, s);
    }

    #[test]
    fn second_init_is_refused() {
        let mut s = State::default();
        s.apply_request(1, &req("", Command::InitCluster { cluster_id: "c".into(), bootstrap_node: 1 }));
        let (r, _) = s.apply_request(2, &req("", Command::InitCluster { cluster_id: "d".into(), bootstrap_node: 2 }));
        assert!(matches!(r.outcome, Outcome::Rejected { reason: Rejection::FailedPrecondition, .. }));
        assert_eq!(s.core.cluster.unwrap().cluster_id, "c");
    }

    fn agent(id: &str, region: &str) -> AgentRecord {
        AgentRecord {
            agent_id: id.into(),
            region: region.into(),
            version: "1".into(),
            capabilities: vec![],
            self_fence_after_ms: 0,
        }
    }

    #[test]
    fn agent_registers_once_and_is_bound_to_its_region() {
        let mut s = State::default();
        s.apply_request(1, &req("", Command::AddRegion { region: region("eu-west") }));
        s.apply_request(2, &req("", Command::AddRegion { region: region("eu-central") }));
        let (r, ch) = s.apply_request(3, &req("", Command::RegisterAgent { agent: agent("a1", "eu-west") }));
        assert!(matches!(r.outcome, Outcome::Agent { .. }));
        assert_eq!(audits(&ch).len(), 1);
        let (_, ch) = s.apply_request(4, &req("", Command::RegisterAgent { agent: agent("a1", "eu-west") }));
        assert!(ch.is_empty(), "re-registering unchanged changes nothing");
        let (r, _) = s.apply_request(5, &req("", Command::RegisterAgent { agent: agent("a1", "eu-central") }));
        assert!(matches!(r.outcome, Outcome::Rejected { reason: Rejection::FailedPrecondition, .. }));
        let (r, _) = s.apply_request(6, &req("", Command::RegisterAgent { agent: agent("a2", "mars") }));
        match r.outcome {
            Outcome::Rejected { message, .. } => assert!(message.contains("unknown region")),
            o => panic!("unexpected {o:?}"),
        }
        assert_eq!(s.agents.len(), 1);
    }

    #[test]
    fn stale_transitions_are_dropped_and_real_ones_audited() {
        let mut s = State::default();
        s.apply_request(1, &req("", Command::AddRegion { region: region("eu-west") }));
        let ct = |from, to| CheckTransition {
            agent: "a1".into(),
            vantage_region: "eu-west".into(),
            check: "api".into(),
            region: "eu-west".into(),
            from,
            to,
            evidence: serde_json::json!({"p95_ms": 900}),
        };
        let rt = |from, to| RegionTransition {
            region: "eu-west".into(),
            from,
            to,
            reason: "r".into(),
            evidence: serde_json::Value::Null,
        };
        let cmd = Command::HealthTransitions {
            checks: vec![ct(HealthState::Unknown, HealthState::Up)],
            regions: vec![rt(HealthState::Unknown, HealthState::Up)],
        };
        let (_, ch) = s.apply_request(2, &req("", cmd));
        assert_eq!(
            audits(&ch).iter().map(|a| a.action.as_str()).collect::<Vec<_>>(),
            ["health.check", "health.region"]
        );
        assert_eq!(s.checks["a1/api"].state, HealthState::Up);
        // A deposed leader's transition from a state that no longer holds is ignored.
        let stale =
            Command::HealthTransitions { checks: vec![ct(HealthState::Unknown, HealthState::Down)], regions: vec![] };
        let (_, ch) = s.apply_request(3, &req("", stale));
        assert!(ch.is_empty());
        assert_eq!(s.checks["a1/api"].state, HealthState::Up);
        let down = Command::HealthTransitions { checks: vec![], regions: vec![rt(HealthState::Up, HealthState::Down)] };
        s.apply_request(4, &req("", down));
        assert_eq!(s.region_health["eu-west"].state, HealthState::Down);
    }

    fn unplanned_record() -> RunRecord {
        use crate::run::{Action, FailoverPlan, PlanStep, RunMode, RunPlan};
        let step = |id: &str, action: &str, region: &str, with: serde_json::Value| PlanStep {
            id: id.into(),
            act: Action { action: action.into(), region: region.into(), with },
            timeout_ms: 1000,
            retries: 0,
            retry_backoff_ms: 10,
            on_failure: crate::run::OnFailure::Rollback,
            compensate: None,
            phases: vec![],
            dwell_ms: 0,
            gate_region: None,
            gate_require: "up".into(),
        };
        let plan = RunPlan {
            steps: vec![
                step("fence", "fence", "eu-west", serde_json::json!({"database": "db", "mode": "recovery"})),
                step("promote", "promote_db", "eu-central", serde_json::json!({"database": "db"})),
                step("rebuild", "rebuild_standby", "eu-west", serde_json::json!({"database": "db", "upstream": "up"})),
            ],
            point_of_no_return: Some(1),
            approvals_required: 0,
            mode: RunMode::Unplanned,
            failover: Some(FailoverPlan {
                source: "eu-west".into(),
                target: "eu-central".into(),
                accept_loss: Default::default(),
            }),
            targets: Default::default(),
        };
        RunRecord {
            run: crate::run::Run::new("r1", "wallet", plan, "system"),
            playbook: "p".into(),
            playbook_hash: "h".into(),
            params: BTreeMap::new(),
            reason: "down".into(),
            created_ms: 0,
            ended_ms: 0,
            revision: 0,
            idempotency_key: String::new(),
            automatic: true,
        }
    }

    #[test]
    fn unplanned_run_leaves_a_fence_order_a_rebuild_clears_it_and_the_primary_moves() {
        let mut st = State::default();
        for r in ["eu-west", "eu-central"] {
            st.apply_request(1, &req("", Command::AddRegion { region: region(r) }));
        }
        let (resp, _) = st.apply_request(2, &req("", Command::CreateRun { record: Box::new(unplanned_record()) }));
        assert!(matches!(resp.outcome, Outcome::Run { .. }), "{resp:?}");
        assert_eq!(st.services["wallet"].last_automatic, Some(("r1".into(), 42)));
        let up = |op: RunOp| Command::UpdateRun { run_id: "r1".into(), op };
        st.apply_request(3, &req("", up(RunOp::Skip { step: 0, reason: "eu-west down".into() })));
        let order = &st.services["wallet"].fences["eu-west"];
        assert_eq!((order.run_id.as_str(), order.with["mode"].as_str(), order.done_ms), ("r1", Some("recovery"), 0));
        let fenced =
            Command::FenceDone { service: "wallet".into(), region: "eu-west".into(), ok: true, detail: "ok".into() };
        let (_, changes) = st.apply_request(4, &req("", fenced));
        assert_eq!(audits(&changes)[0].action, "fence.rejoin");
        assert_eq!(st.services["wallet"].fences["eu-west"].done_ms, 42);
        // A failed repeat does not undo a fence that held.
        let failed =
            Command::FenceDone { service: "wallet".into(), region: "eu-west".into(), ok: false, detail: "x".into() };
        st.apply_request(5, &req("", failed));
        assert_eq!(st.services["wallet"].fences["eu-west"].done_ms, 42);
        let work = |step| crate::run::Work { step, phase: None, compensation: false, attempt: 1 };
        for (i, step) in [(6, 1), (8, 2)] {
            st.apply_request(i, &req("", up(RunOp::Dispatch { work: work(step), token: 9 })));
            let res = RunOp::Result {
                work: work(step),
                ok: true,
                detail: "ok".into(),
                measurements: BTreeMap::new(),
                data: serde_json::Value::Null,
            };
            st.apply_request(i + 1, &req("", up(res)));
        }
        assert!(st.services["wallet"].fences.is_empty(), "the rebuild cleared the order");
        st.apply_request(10, &req("", up(RunOp::Finish { state: crate::run::RunState::Succeeded })));
        assert_eq!(st.services["wallet"].primary_region, "eu-central");
        assert_eq!(st.regions["eu-central"].roles["wallet"], Role::Primary);
        assert_eq!(st.regions["eu-west"].roles["wallet"], Role::Standby);
    }

    #[test]
    fn a_suppressed_failover_is_recorded_once_and_an_ack_clears_it() {
        let mut st = State::default();
        let sup = || Command::FailoverSuppressed { service: "wallet".into(), reason: "cooldown".into() };
        let (_, c1) = st.apply_request(1, &req("", sup()));
        let (_, c2) = st.apply_request(2, &req("", sup()));
        assert_eq!((audits(&c1).len(), audits(&c2).len()), (1, 0));
        let (_, c3) =
            st.apply_request(3, &req("", Command::AckFailover { service: "wallet".into(), note: "checked".into() }));
        assert_eq!(audits(&c3)[0].action, "failover.acknowledged");
        assert_eq!((st.services["wallet"].ack_requested.clone(), st.services["wallet"].acknowledged_ms), (None, 42));
        let (resp, _) =
            st.apply_request(4, &req("", Command::AckFailover { service: "nope".into(), note: "checked".into() }));
        assert!(matches!(resp.outcome, Outcome::Rejected { .. }));
    }

    fn stored_drill(name: &str) -> StoredDrill {
        StoredDrill {
            name: name.into(),
            hash: "h1".into(),
            text: "t".into(),
            applied_ms: 0,
            applied_by: String::new(),
            last_occurrence_ms: None,
        }
    }

    fn drill_run(id: &str, trigger: Trigger) -> DrillRun {
        let stored = stored_drill("q");
        let spec = crate::drill::ops::tests_support::drill();
        let mut r = crate::drill::engine::new_run(&stored, spec, trigger, 0);
        r.id = id.into();
        r
    }

    #[test]
    fn a_scheduled_occurrence_fires_or_is_skipped_once_whoever_proposes_it() {
        let mut st = State::default();
        st.apply_request(1, &req("", Command::ApplyDrill { drill: stored_drill("q") }));
        let fire = |id: &str, occ| Command::StartDrill {
            record: Box::new(drill_run(id, Trigger::Schedule { occurrence_ms: occ, late: false })),
        };
        let (r, ch) = st.apply_request(2, &req("", fire("d1", 1000)));
        assert!(matches!(r.outcome, Outcome::Drill { .. }), "{r:?}");
        assert_eq!(audits(&ch)[0].action, "drill.start");
        assert_eq!(st.drills["q"].last_occurrence_ms, Some(1000));
        // One drill at a time.
        let (r, _) = st.apply_request(3, &req("", fire("d2", 2000)));
        assert!(matches!(r.outcome, Outcome::Rejected { reason: Rejection::FailedPrecondition, .. }), "{r:?}");
        let fin = crate::drill::DrillOp::Finish {
            outcome: crate::drill::DrillOutcome::Passed,
            detail: "ok".into(),
            report: serde_json::json!({}),
        };
        st.apply_request(4, &req("", Command::UpdateDrill { id: "d1".into(), op: fin }));
        // A second leader proposing the same occurrence: refused, nothing changes.
        let (r, ch) = st.apply_request(5, &req("", fire("d3", 1000)));
        assert!(matches!(r.outcome, Outcome::Rejected { reason: Rejection::AlreadyExists, .. }), "{r:?}");
        assert!(ch.is_empty() && !st.drill_runs.contains_key("d3"));
        // A skip claims its occurrence too; re-applying the file keeps the marker.
        let skip = Command::SkipDrill { drill: "q".into(), occurrence_ms: 3000, reason: "blackout".into() };
        let (_, ch) = st.apply_request(6, &req("", skip));
        assert_eq!(audits(&ch)[0].action, "drill.skip");
        st.apply_request(7, &req("", Command::ApplyDrill { drill: stored_drill("q") }));
        assert_eq!(st.drills["q"].last_occurrence_ms, Some(3000));
        let (r, _) = st.apply_request(8, &req("", fire("d4", 3000)));
        assert!(matches!(r.outcome, Outcome::Rejected { .. }), "{r:?}");
        let (r, _) = st.apply_request(9, &req("", fire("d5", 4000)));
        assert!(matches!(r.outcome, Outcome::Drill { .. }), "{r:?}");
    }

    #[test]
    fn a_halt_marks_every_active_drill_and_counts() {
        let mut st = State::default();
        st.apply_request(1, &req("", Command::ApplyDrill { drill: stored_drill("q") }));
        let start = Command::StartDrill { record: Box::new(drill_run("d1", Trigger::Manual { by: "alice".into() })) };
        st.apply_request(2, &req("", start));
        let (_, ch) = st.apply_request(3, &req("", Command::HaltDrills { reason: "incident".into() }));
        assert_eq!(audits(&ch)[0].action, "drill.halt");
        assert_eq!(st.drill_runs["d1"].halt.as_deref(), Some("incident"));
        assert_eq!(st.core.drill_halts, 1);
    }
}
