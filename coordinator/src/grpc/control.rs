//! The client API: status, membership, regions, audit.

use crate::auth::{Principal, StreamGrant};
use crate::command::{self, Command, Outcome, Rejection, Role};
use crate::node::{AppRef, Ctx, LeaderReply, LeaderRequest};
use crate::state::validate_region;
use drcut_proto::v1 as pb;
use drcut_proto::v1::control_server::Control;
use tonic::{Request, Response, Status};

/// Audit actions that are health events for `WatchHealth`.
const HEALTH_ACTIONS: [&str; 4] = ["health.region", "health.check", "agent.register", "agent.update"];

/// Default and maximum page size of `ListAudit`.
const AUDIT_PAGE: usize = 1000;

/// The `Control` service.
pub struct ControlService {
    app: AppRef,
}

impl ControlService {
    /// A service over the node.
    pub fn new(app: AppRef) -> Self {
        ControlService { app }
    }

    async fn read_barrier(&self, c: i32) -> Result<(), Status> {
        if c == pb::ReadConsistency::Linearizable as i32 {
            self.app.linearizable_barrier().await?;
        }
        Ok(())
    }

    async fn write(&self, ctx: Ctx, cmd: Command) -> Result<command::Response, Status> {
        let req = command::Request { request_id: ctx.request_id, actor: ctx.actor, at_ms: 0, cmd };
        let LeaderReply::Write(resp) = self.app.leader_call(LeaderRequest::Write(req), false).await? else {
            return Err(Status::internal("unexpected reply to a write"));
        };
        if let Outcome::Rejected { reason, message } = &resp.outcome {
            return Err(match reason {
                Rejection::InvalidArgument => Status::invalid_argument(message.clone()),
                Rejection::AlreadyExists => Status::already_exists(message.clone()),
                Rejection::FailedPrecondition => Status::failed_precondition(message.clone()),
            });
        }
        Ok(resp)
    }

    async fn membership(&self, req: LeaderRequest) -> Result<Response<pb::MembershipReply>, Status> {
        let LeaderReply::Membership { log_index } = self.app.leader_call(req, false).await? else {
            return Err(Status::internal("unexpected reply to a membership change"));
        };
        // The change committed on the leader; this node may apply it a moment later.
        let _ = self
            .app
            .raft
            .wait(Some(std::time::Duration::from_secs(2)))
            .applied_index_at_least(Some(log_index), "membership")
            .await;
        Ok(Response::new(pb::MembershipReply { log_index, members: self.members() }))
    }

    fn members(&self) -> Vec<pb::Member> {
        let m = self.app.metrics();
        let last = m.last_log_index.unwrap_or(0);
        let progress = m.replication.clone();
        let mem = m.membership_config.membership();
        let voters: Vec<u64> = mem.voter_ids().collect();
        mem.nodes()
            .map(|(id, n)| {
                let matched =
                    progress.as_ref().and_then(|p| p.get(id)).map(|l| l.as_ref().map(|l| l.index()).unwrap_or(0));
                pb::Member {
                    id: *id,
                    addr: n.addr.clone(),
                    voter: voters.contains(id),
                    has_progress: matched.is_some(),
                    matched_index: matched.unwrap_or(0),
                    lag: matched.map(|x| last.saturating_sub(x)).unwrap_or(0),
                }
            })
            .collect()
    }
}

/// The principal making a call: put in the request by the auth layer (gRPC) or by the console
/// (in-process calls).
pub fn principal<T>(req: &Request<T>) -> Option<&Principal> {
    req.extensions().get::<Principal>()
}

/// Actor and request id of a write. With authentication the actor is the authenticated
/// principal, whatever the body or headers say (nobody can act, or approve, as someone else);
/// in open mode it is the declared one: the body's, else `x-drcut-actor`, else the principal's.
pub fn context<T>(app: &AppRef, req: &Request<T>, ctx: Option<&pb::WriteContext>) -> Result<Ctx, Status> {
    let md = req.metadata();
    let header = |k: &str| md.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = ctx.cloned().unwrap_or_default();
    let request_id =
        if body.request_id.is_empty() { header("x-drcut-request-id").unwrap_or_default() } else { body.request_id };
    let actor = if app.auth.enabled() {
        principal(req)
            .map(|p| p.name.clone())
            .ok_or_else(|| Status::unauthenticated("no authenticated principal for this call"))?
    } else if !body.actor.is_empty() {
        body.actor
    } else {
        header("x-drcut-actor").or_else(|| principal(req).map(|p| p.name.clone())).unwrap_or_else(|| "anonymous".into())
    };
    Ok(Ctx { actor, request_id })
}

/// Who calls, for region-scope checks after the request body has been consumed.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The principal (none: an in-process call without one, or a test double).
    pub principal: Option<Principal>,
    /// The peer's address, for the denial record.
    pub peer: Option<std::net::SocketAddr>,
}

impl Caller {
    /// The caller of `req`.
    pub fn of<T>(req: &Request<T>) -> Caller {
        Caller { principal: principal(req).cloned(), peer: req.remote_addr() }
    }

    /// Whether the caller may act on every region in `regions`; a refusal is audited.
    pub fn may_act_on<'a>(
        &self,
        app: &AppRef,
        call: &str,
        regions: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), Status> {
        let Some(p) = &self.principal else { return Ok(()) };
        for r in regions {
            if let Err(d) = app.auth.authorize_region(p, call, r) {
                crate::auth::audit_denied(app, call, &d, self.peer);
                return Err(d.to_status());
            }
        }
        Ok(())
    }

    /// Whether the caller's scope covers every region in `regions` (no audit: for filtering).
    pub fn covers<'a>(&self, regions: impl IntoIterator<Item = &'a String>) -> bool {
        self.principal.as_ref().is_none_or(|p| regions.into_iter().all(|r| p.may_act_on(r)))
    }

    /// [`Caller::may_act_on`] the regions of run `run_id` (a missing run is the handler's to report).
    pub fn may_act_on_run(&self, app: &AppRef, call: &str, run_id: &str) -> Result<(), Status> {
        match app.view.run(run_id) {
            Some(rec) => self.may_act_on(app, call, &super::runs::plan_regions(&rec.run.plan)),
            None => Ok(()),
        }
    }
}

fn service_to_pb(s: &command::ServiceState) -> pb::ServiceStatus {
    pb::ServiceStatus {
        service: s.service.clone(),
        primary_region: s.primary_region.clone(),
        fences: s
            .fences
            .iter()
            .map(|(region, o)| {
                if o.done_ms > 0 {
                    format!("{region}: old primary fenced (run {}); rebuild it before a failback", o.run_id)
                } else {
                    format!("{region}: old primary to fence when it returns (run {})", o.run_id)
                }
            })
            .collect(),
        ack_requested: s.ack_requested.clone().unwrap_or_default(),
        last_automatic_run: s.last_automatic.as_ref().map(|(r, _)| r.clone()).unwrap_or_default(),
        last_automatic_unix_ms: s.last_automatic.as_ref().map(|(_, t)| *t).unwrap_or(0),
    }
}

fn region_to_pb(r: &command::Region) -> pb::Region {
    pb::Region {
        name: r.name.clone(),
        display_name: r.display_name.clone(),
        roles: r
            .roles
            .iter()
            .map(|(s, role)| pb::ServiceRole {
                service: s.clone(),
                role: match role {
                    Role::Primary => pb::RegionRole::Primary as i32,
                    Role::Standby => pb::RegionRole::Standby as i32,
                },
            })
            .collect(),
        down_quorum: r.down_quorum,
    }
}

fn region_from_pb(r: pb::Region) -> Result<command::Region, Status> {
    let mut roles = std::collections::BTreeMap::new();
    for (i, sr) in r.roles.into_iter().enumerate() {
        let role = match pb::RegionRole::try_from(sr.role) {
            Ok(pb::RegionRole::Primary) => Role::Primary,
            Ok(pb::RegionRole::Standby) => Role::Standby,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "region.roles[{i}].role: {} is not primary or standby",
                    sr.role
                )));
            }
        };
        if roles.insert(sr.service.clone(), role).is_some() {
            return Err(Status::invalid_argument(format!("region.roles[{i}].service: {:?} appears twice", sr.service)));
        }
    }
    let region = command::Region { name: r.name, display_name: r.display_name, roles, down_quorum: r.down_quorum };
    validate_region(&region).map_err(Status::invalid_argument)?;
    Ok(region)
}

fn audit_to_pb(e: crate::audit::AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        seq: e.seq,
        time_unix_ms: e.time_unix_ms,
        actor: e.actor,
        action: e.action,
        details_json: e.details.to_string(),
        prev_hash: e.prev_hash,
        hash: e.hash,
        log_index: e.log_index,
    }
}

fn health_event(e: &crate::audit::AuditEntry) -> pb::HealthEvent {
    let d = &e.details;
    let text = |k: &str| d.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let (agent, evidence) = if e.action.starts_with("agent.") {
        (text("agent_id"), d.clone())
    } else {
        (text("agent"), d.get("evidence").cloned().unwrap_or_default())
    };
    pb::HealthEvent {
        revision: e.seq,
        time_unix_ms: e.time_unix_ms,
        kind: e.action.clone(),
        region: text("region"),
        check: text("check"),
        vantage_agent: agent,
        from: text("from"),
        to: text("to"),
        evidence_json: evidence.to_string(),
    }
}

type HealthStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::HealthEvent, Status>> + Send>>;

type RunStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::RunInfo, Status>> + Send>>;

#[tonic::async_trait]
impl Control for ControlService {
    type WatchHealthStream = HealthStream;
    type WatchRunStream = RunStream;

    async fn apply_playbook(
        &self,
        req: Request<pb::ApplyPlaybookRequest>,
    ) -> Result<Response<pb::ApplyPlaybookReply>, Status> {
        let ctx = context(&self.app, &req, req.get_ref().ctx.as_ref())?;
        let r = req.into_inner();
        let file = if r.file.is_empty() { "playbook".to_string() } else { r.file.clone() };
        super::check_file_size(&file, &r.text)?;
        let pb_ =
            crate::playbook::Playbook::parse(&file, &r.text).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Regions can be checked now when every parameter has a default.
        let known: Vec<String> = self.app.view.regions().into_iter().map(|x| x.name).collect();
        if let Err(e) = crate::playbook::validate_regions(&pb_, &Default::default(), &known)
            && !e.message.contains("has no default")
        {
            return Err(Status::invalid_argument(e.to_string()));
        }
        let stored = command::StoredPlaybook {
            name: pb_.name.clone(),
            service: pb_.service.clone(),
            hash: pb_.hash.clone(),
            text: r.text,
            applied_ms: 0,
            applied_by: String::new(),
        };
        let resp = super::runs::write(&self.app, ctx, Command::ApplyPlaybook { playbook: stored }).await?;
        Ok(Response::new(pb::ApplyPlaybookReply { name: pb_.name, hash: pb_.hash, log_index: resp.log_index }))
    }

    async fn list_playbooks(
        &self,
        _req: Request<pb::ListPlaybooksRequest>,
    ) -> Result<Response<pb::ListPlaybooksReply>, Status> {
        let playbooks = self
            .app
            .view
            .playbooks()
            .into_values()
            .map(|p| pb::PlaybookInfo {
                name: p.name,
                hash: p.hash,
                service: p.service,
                applied_unix_ms: p.applied_ms,
                applied_by: p.applied_by,
            })
            .collect();
        Ok(Response::new(pb::ListPlaybooksReply { playbooks }))
    }

    async fn plan_cutover(&self, req: Request<pb::StartCutoverRequest>) -> Result<Response<pb::PlanReply>, Status> {
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let (stored, resolved) = super::runs::resolve(&self.app, &r.playbook, &r.params)?;
        let mode = if r.unplanned { crate::run::RunMode::Unplanned } else { crate::run::RunMode::Planned };
        caller.may_act_on(&self.app, "PlanCutover", &super::runs::playbook_regions(&resolved, mode))?;
        let (blockers, now) = super::runs::preflight(&self.app, &resolved, mode).await;
        let mut plan_text = crate::playbook::plan_text(&resolved);
        plan_text.push_str("\nNow:\n");
        for line in now {
            plan_text.push_str(&format!("  {line}\n"));
        }
        Ok(Response::new(pb::PlanReply { plan_text, blockers, playbook_hash: stored.hash }))
    }

    async fn start_cutover(&self, req: Request<pb::StartCutoverRequest>) -> Result<Response<pb::RunInfo>, Status> {
        let ctx = context(&self.app, &req, req.get_ref().ctx.as_ref())?;
        let caller = Caller::of(&req);
        let r = req.into_inner();
        if r.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "reason: say why this cutover runs (it is recorded in the audit chain)",
            ));
        }
        // A retried request (same idempotency key) returns the first run without re-checking.
        if !ctx.request_id.is_empty()
            && let Some(run) = self.app.view.runs().into_values().find(|x| x.idempotency_key == ctx.request_id)
        {
            caller.may_act_on(&self.app, "StartCutover", &super::runs::plan_regions(&run.run.plan))?;
            return Ok(Response::new(super::runs::run_info(&run)));
        }
        let (stored, resolved) = super::runs::resolve(&self.app, &r.playbook, &r.params)?;
        let mode = if r.unplanned { crate::run::RunMode::Unplanned } else { crate::run::RunMode::Planned };
        caller.may_act_on(&self.app, "StartCutover", &super::runs::playbook_regions(&resolved, mode))?;
        let blockers = super::runs::blockers(&self.app, &resolved, mode).await;
        if !blockers.is_empty() {
            return Err(Status::failed_precondition(format!("cannot start: {}", blockers.join("; "))));
        }
        let record =
            crate::failover::new_record(&stored, &resolved, mode, &ctx.actor, r.reason, ctx.request_id.clone(), false);
        let id = record.run.id.clone();
        let resp = super::runs::write(&self.app, ctx, Command::CreateRun { record: Box::new(record) }).await?;
        let id = match &resp.outcome {
            Outcome::Run { run_id } => run_id.clone(),
            _ => id,
        };
        Ok(Response::new(super::runs::read_run(&self.app, &id, resp.log_index).await?))
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Result<Response<pb::RunInfo>, Status> {
        let id = &req.get_ref().run_id;
        let rec = self.app.view.run(id).ok_or_else(|| Status::not_found(format!("no run {id:?}")))?;
        Ok(Response::new(super::runs::run_info(&rec)))
    }

    async fn list_runs(&self, req: Request<pb::ListRunsRequest>) -> Result<Response<pb::ListRunsReply>, Status> {
        let active = req.get_ref().active_only;
        let mut runs: Vec<_> =
            self.app.view.runs().into_values().filter(|r| !active || !r.run.state.is_terminal()).collect();
        runs.sort_by_key(|r| r.created_ms);
        Ok(Response::new(pb::ListRunsReply { runs: runs.iter().map(super::runs::run_info).collect() }))
    }

    async fn watch_run(&self, req: Request<pb::GetRunRequest>) -> Result<Response<RunStream>, Status> {
        let id = req.get_ref().run_id.clone();
        if self.app.view.run(&id).is_none() {
            return Err(Status::not_found(format!("no run {id:?}")));
        }
        let view = self.app.view.clone();
        let mut grant = StreamGrant::new(&self.app, principal(&req).cloned(), "WatchRun");
        let mut applied = view.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                if let Err(s) = grant.check() {
                    let _ = tx.send(Err(s)).await;
                    return;
                }
                if let Some(rec) = view.run(&id)
                    && rec.revision != last
                {
                    last = rec.revision;
                    let ended = rec.ended_ms > 0;
                    if tx.send(Ok(super::runs::run_info(&rec))).await.is_err() || ended {
                        return;
                    }
                }
                tokio::select! {
                    r = applied.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep_until(grant.due()) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn approve_run(&self, req: Request<pb::RunActionRequest>) -> Result<Response<pb::RunInfo>, Status> {
        let ctx = context(&self.app, &req, req.get_ref().ctx.as_ref())?;
        Caller::of(&req).may_act_on_run(&self.app, "ApproveRun", &req.get_ref().run_id)?;
        let who = ctx.actor.clone();
        let r = req.into_inner();
        // With a named loss this is consent to an unplanned promotion, not a start approval.
        let op = match r.accept_loss.trim() {
            "" => command::RunOp::Approve { who },
            "unknown" => command::RunOp::Consent { who, bytes: None },
            n => {
                let bytes = n.parse::<u64>().map_err(|_| {
                    Status::invalid_argument(format!(
                        "accept_loss: {n:?} is not a byte count or \"unknown\" (name the loss the run states)"
                    ))
                })?;
                command::RunOp::Consent { who, bytes: Some(bytes) }
            }
        };
        Ok(Response::new(super::runs::act(&self.app, ctx, &r.run_id, op).await?))
    }

    async fn override_fencing(
        &self,
        req: Request<pb::OverrideFencingRequest>,
    ) -> Result<Response<pb::RunInfo>, Status> {
        let ctx = context(&self.app, &req, req.get_ref().ctx.as_ref())?;
        Caller::of(&req).may_act_on_run(&self.app, "OverrideFencing", &req.get_ref().run_id)?;
        let who = ctx.actor.clone();
        let r = req.into_inner();
        let op = command::RunOp::OverrideFencing { who, risk: r.risk };
        Ok(Response::new(super::runs::act(&self.app, ctx, &r.run_id, op).await?))
    }

    async fn ack_failover(
        &self,
        req: Request<pb::AckFailoverRequest>,
    ) -> Result<Response<pb::AckFailoverReply>, Status> {
        let ctx = context(&self.app, &req, req.get_ref().ctx.as_ref())?;
        let caller = Caller::of(&req);
        let r = req.into_inner();
        if r.note.trim().is_empty() {
            return Err(Status::invalid_argument("note: say what was checked before re-arming automatic failover"));
        }
        // Re-arming acts on every region that serves the service.
        let serving: Vec<String> =
            self.app.view.regions().into_iter().filter(|x| x.roles.contains_key(&r.service)).map(|x| x.name).collect();
        caller.may_act_on(&self.app, "AckFailover", &serving)?;
        let cmd = Command::AckFailover { service: r.service.clone(), note: r.note };
        let resp = super::runs::write(&self.app, ctx, cmd).await?;
        let _ = self
            .app
            .raft
            .wait(Some(std::time::Duration::from_secs(2)))
            .applied_index_at_least(Some(resp.log_index), "ack read")
            .await;
        let state = self.app.view.services().get(&r.service).cloned().unwrap_or_default();
        Ok(Response::new(pb::AckFailoverReply {
            service: r.service,
            state_json: serde_json::to_string(&state).unwrap_or_default(),
        }))
    }

    async fn pause_run(&self, req: Request<pb::RunActionRequest>) -> Result<Response<pb::RunInfo>, Status> {
        let ctx = context(&self.app, &req, req.get_ref().ctx.as_ref())?;
        Caller::of(&req).may_act_on_run(&self.app, "PauseRun", &req.get_ref().run_id)?;
        let r = req.into_inner();
        let reason = if r.reason.is_empty() { format!("paused by {}", ctx.actor) } else { r.reason };
        Ok(Response::new(super::runs::act(&self.app, ctx, &r.run_id, command::RunOp::Pause { reason }).await?))
    }

    async fn resume_run(&self, req: Request<pb::RunActionRequest>) -> Result<Response<pb::RunInfo>, Status> {
        let ctx = context(&self.app, &req, req.get_ref().ctx.as_ref())?;
        Caller::of(&req).may_act_on_run(&self.app, "ResumeRun", &req.get_ref().run_id)?;
        let id = req.into_inner().run_id;
        Ok(Response::new(super::runs::act(&self.app, ctx, &id, command::RunOp::Resume).await?))
    }

    async fn abort_run(&self, req: Request<pb::RunActionRequest>) -> Result<Response<pb::RunInfo>, Status> {
        let ctx = context(&self.app, &req, req.get_ref().ctx.as_ref())?;
        Caller::of(&req).may_act_on_run(&self.app, "AbortRun", &req.get_ref().run_id)?;
        let r = req.into_inner();
        let reason = if r.reason.is_empty() { format!("aborted by {}", ctx.actor) } else { r.reason };
        Ok(Response::new(super::runs::act(&self.app, ctx, &r.run_id, command::RunOp::Abort { reason }).await?))
    }

    async fn halt(&self, req: Request<pb::RunActionRequest>) -> Result<Response<pb::ListRunsReply>, Status> {
        let ctx = context(&self.app, &req, req.get_ref().ctx.as_ref())?;
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let reason = if r.reason.is_empty() { format!("halt by {}", ctx.actor) } else { format!("halt: {}", r.reason) };
        let mut out = Vec::new();
        for rec in self.app.view.active_runs() {
            // A region-scoped principal halts the runs in its regions only.
            if matches!(rec.run.state, crate::run::RunState::Running | crate::run::RunState::AwaitingApproval)
                && caller.covers(&super::runs::plan_regions(&rec.run.plan))
            {
                let c = Ctx { actor: ctx.actor.clone(), request_id: String::new() };
                out.push(
                    super::runs::act(&self.app, c, &rec.run.id, command::RunOp::Pause { reason: reason.clone() })
                        .await?,
                );
            }
        }
        Ok(Response::new(pb::ListRunsReply { runs: out }))
    }

    async fn apply_drill(&self, req: Request<pb::ApplyDrillRequest>) -> Result<Response<pb::ApplyDrillReply>, Status> {
        let ctx = context(&self.app, &req, req.get_ref().ctx.as_ref())?;
        super::drills::apply(&self.app, ctx, req.into_inner()).await.map(Response::new)
    }

    async fn list_drills(&self, _req: Request<pb::ListDrillsRequest>) -> Result<Response<pb::ListDrillsReply>, Status> {
        Ok(Response::new(super::drills::list(&self.app)))
    }

    async fn run_drill(&self, req: Request<pb::RunDrillRequest>) -> Result<Response<pb::DrillRunInfo>, Status> {
        let ctx = context(&self.app, &req, req.get_ref().ctx.as_ref())?;
        let caller = Caller::of(&req);
        super::drills::run(&self.app, ctx, &caller, req.into_inner()).await.map(Response::new)
    }

    async fn get_drill_run(&self, req: Request<pb::GetDrillRunRequest>) -> Result<Response<pb::DrillRunInfo>, Status> {
        super::drills::get(&self.app, &req.get_ref().id).map(Response::new)
    }

    async fn list_drill_runs(
        &self,
        req: Request<pb::ListDrillRunsRequest>,
    ) -> Result<Response<pb::ListDrillRunsReply>, Status> {
        Ok(Response::new(super::drills::list_runs(&self.app, req.get_ref())))
    }

    async fn halt_drills(&self, req: Request<pb::HaltDrillsRequest>) -> Result<Response<pb::HaltDrillsReply>, Status> {
        let ctx = context(&self.app, &req, req.get_ref().ctx.as_ref())?;
        super::drills::halt(&self.app, ctx, req.into_inner()).await.map(Response::new)
    }

    async fn get_health(&self, _req: Request<pb::GetHealthRequest>) -> Result<Response<pb::HealthBoard>, Status> {
        use prost::Message;
        // Live values are in the leader's memory; without a reachable leader, answer the
        // replicated states and say so (live = false).
        match self.app.leader_call(LeaderRequest::Health, false).await {
            Ok(LeaderReply::Health(bytes)) => {
                let board = pb::HealthBoard::decode(bytes.as_slice())
                    .map_err(|e| Status::internal(format!("bad board from leader: {e}")))?;
                Ok(Response::new(board))
            }
            Ok(_) => Err(Status::internal("unexpected reply to a health read")),
            Err(s) if s.code() == tonic::Code::Unavailable => {
                let rep = self.app.view.health();
                Ok(Response::new(self.app.hub.board(&rep, self.app.id, false, crate::node::now_ms())))
            }
            Err(s) => Err(s),
        }
    }

    async fn watch_health(&self, req: Request<pb::WatchHealthRequest>) -> Result<Response<HealthStream>, Status> {
        let view = self.app.view.clone();
        let from = req.get_ref().from_revision;
        let mut next = if from == 0 { view.core().audit_len + 1 } else { from };
        let mut grant = StreamGrant::new(&self.app, principal(&req).cloned(), "WatchHealth");
        let mut applied = view.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                if let Err(s) = grant.check() {
                    let _ = tx.send(Err(s)).await;
                    return;
                }
                let page = match view.audit(next, 500).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(format!("audit read: {e}")))).await;
                        return;
                    }
                };
                for e in &page {
                    next = e.seq + 1;
                    if HEALTH_ACTIONS.contains(&e.action.as_str()) && tx.send(Ok(health_event(e))).await.is_err() {
                        return;
                    }
                }
                if page.is_empty() {
                    tokio::select! {
                        r = applied.changed() => if r.is_err() { return },
                        _ = tokio::time::sleep_until(grant.due()) => {}
                        _ = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn get_status(&self, req: Request<pb::GetStatusRequest>) -> Result<Response<pb::ClusterStatus>, Status> {
        self.read_barrier(req.get_ref().consistency).await?;
        let me = principal(&req).cloned();
        let m = self.app.metrics();
        let (leader_id, leader_addr) = self.app.leader().unwrap_or((0, String::new()));
        let core = self.app.view.core();
        Ok(Response::new(pb::ClusterStatus {
            node_id: self.app.id,
            cluster_id: core.cluster.map(|c| c.cluster_id).unwrap_or_else(|| self.app.cluster_id.clone()),
            state: self.app.state_name().to_string(),
            term: m.current_term,
            leader_id,
            leader_addr,
            commit_index: m.cluster_committed.as_ref().or(m.local_committed.as_ref()).map(|l| l.index()).unwrap_or(0),
            last_applied: m.last_applied.as_ref().map(|l| l.index()).unwrap_or(0),
            last_log_index: m.last_log_index.unwrap_or(0),
            members: self.members(),
            regions: self.app.view.regions().iter().map(region_to_pb).collect(),
            node_addr: self.app.addr.clone(),
            snapshot_index: m.snapshot.as_ref().map(|l| l.index()).unwrap_or(0),
            audit_len: core.audit_len,
            audit_head: core.audit_head,
            services: self.app.view.services().values().map(service_to_pb).collect(),
            auth_enabled: self.app.auth.enabled(),
            principal: me.as_ref().map(|p| p.name.clone()).unwrap_or_default(),
            roles: me.as_ref().map(|p| p.roles.iter().map(|r| r.as_str().to_string()).collect()).unwrap_or_default(),
            principal_regions: me.map(|p| p.regions.into_iter().collect()).unwrap_or_default(),
        }))
    }

    async fn add_learner(&self, req: Request<pb::AddLearnerRequest>) -> Result<Response<pb::MembershipReply>, Status> {
        let ctx = context(&self.app, &req, req.get_ref().ctx.as_ref())?;
        let r = req.into_inner();
        if r.node_id == 0 {
            return Err(Status::invalid_argument("node_id: must be ≥ 1"));
        }
        if r.addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
            return Err(Status::invalid_argument(format!("addr: {:?} is not host:port", r.addr)));
        }
        self.membership(LeaderRequest::AddLearner { ctx, id: r.node_id, addr: r.addr }).await
    }

    async fn promote_voter(
        &self,
        req: Request<pb::PromoteVoterRequest>,
    ) -> Result<Response<pb::MembershipReply>, Status> {
        let ctx = context(&self.app, &req, req.get_ref().ctx.as_ref())?;
        self.membership(LeaderRequest::Promote { ctx, id: req.get_ref().node_id }).await
    }

    async fn remove_node(&self, req: Request<pb::RemoveNodeRequest>) -> Result<Response<pb::MembershipReply>, Status> {
        let ctx = context(&self.app, &req, req.get_ref().ctx.as_ref())?;
        self.membership(LeaderRequest::Remove { ctx, id: req.get_ref().node_id }).await
    }

    async fn add_region(&self, req: Request<pb::AddRegionRequest>) -> Result<Response<pb::AddRegionReply>, Status> {
        let ctx = context(&self.app, &req, req.get_ref().ctx.as_ref())?;
        let caller = Caller::of(&req);
        let r = req.into_inner();
        let region = region_from_pb(r.region.ok_or_else(|| Status::invalid_argument("region: missing"))?)?;
        caller.may_act_on(&self.app, "AddRegion", [&region.name])?;
        let resp = self.write(ctx, Command::AddRegion { region: region.clone() }).await?;
        let stored = match resp.outcome {
            Outcome::Region { region } => region,
            _ => region,
        };
        Ok(Response::new(pb::AddRegionReply { region: Some(region_to_pb(&stored)), log_index: resp.log_index }))
    }

    async fn list_regions(
        &self,
        req: Request<pb::ListRegionsRequest>,
    ) -> Result<Response<pb::ListRegionsReply>, Status> {
        self.read_barrier(req.get_ref().consistency).await?;
        Ok(Response::new(pb::ListRegionsReply {
            regions: self.app.view.regions().iter().map(region_to_pb).collect(),
            applied_index: self.app.view.applied_index(),
        }))
    }

    async fn list_audit(&self, req: Request<pb::ListAuditRequest>) -> Result<Response<pb::ListAuditReply>, Status> {
        let r = req.into_inner();
        self.read_barrier(r.consistency).await?;
        let limit = if r.limit == 0 { AUDIT_PAGE } else { (r.limit as usize).min(AUDIT_PAGE) };
        let core = self.app.view.core();
        let entries = self
            .app
            .view
            .audit(r.from_seq.max(1), limit)
            .await
            .map_err(|e| Status::internal(format!("audit read: {e}")))?;
        Ok(Response::new(pb::ListAuditReply {
            entries: entries.into_iter().map(audit_to_pb).collect(),
            total: core.audit_len,
            head_hash: core.audit_head,
        }))
    }
}
