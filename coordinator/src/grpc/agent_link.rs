//! The agent session. Sessions live on the leader: a node that does not lead answers hello with
//! a redirect, and a leader that loses leadership redirects its sessions, so every report
//! reaches the health model that decides. The agent keeps its sliding windows across
//! reconnects, so a leader change loses no measurements, only a few hundred ms of reports.

use crate::command::{AgentRecord, Command, Outcome, Request};
use crate::health::{CheckDecl, Report, SloOutcome};
use crate::node::{AppRef, LeaderReply, LeaderRequest, now_ms};
use drcut_proto::v1::agent_link_server::AgentLink;
use drcut_proto::v1::agent_message::Body as AgentBody;
use drcut_proto::v1::coordinator_message::Body as CoordBody;
use drcut_proto::v1::{AgentMessage, CheckReport, CoordinatorMessage, HeartbeatAck, Hello, Redirect, Welcome};
use futures::StreamExt;
use std::collections::BTreeSet;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request as TRequest, Response, Status, Streaming};

/// The `AgentLink` service.
pub struct AgentLinkService {
    app: AppRef,
}

impl AgentLinkService {
    /// A service over the node.
    pub fn new(app: AppRef) -> Self {
        AgentLinkService { app }
    }
}

/// How long a heartbeat may wait for the leader to confirm its quorum before the ack goes out
/// without a lease.
const LEASE_CONFIRM: Duration = Duration::from_millis(500);
/// The lease granted with an ack (informative: an agent self-fences after its own configured
/// time without a granted lease).
const LEASE_MS: u64 = 3000;

type Out = Pin<Box<dyn futures::Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

fn redirect(app: &AppRef, reason: &str) -> CoordinatorMessage {
    let (leader_id, leader_addr) = app.leader().filter(|(id, _)| *id != app.id).unwrap_or((0, String::new()));
    CoordinatorMessage { body: Some(CoordBody::Redirect(Redirect { leader_id, leader_addr, reason: reason.into() })) }
}

/// Checks the hello against the replicated state: known region, checks on known regions.
fn validate_hello(app: &AppRef, h: &Hello) -> Result<Vec<CheckDecl>, Status> {
    if h.agent_id.is_empty() || h.region.is_empty() {
        return Err(Status::invalid_argument("hello: agent_id and region are required"));
    }
    let rep = app.view.health();
    if !rep.regions.contains_key(&h.region) {
        return Err(Status::failed_precondition(format!(
            "agent {:?}: unknown region {:?}; known regions: {:?} (add it with drctl region add)",
            h.agent_id,
            h.region,
            rep.regions.keys().collect::<Vec<_>>()
        )));
    }
    let mut names = BTreeSet::new();
    let mut decls = Vec::new();
    for c in &h.checks {
        if !names.insert(c.name.clone()) {
            return Err(Status::invalid_argument(format!("hello: check {:?} declared twice", c.name)));
        }
        if !rep.regions.contains_key(&c.target_region) {
            return Err(Status::failed_precondition(format!(
                "agent {:?}: check {:?} targets unknown region {:?}",
                h.agent_id, c.name, c.target_region
            )));
        }
        decls.push(CheckDecl {
            name: c.name.clone(),
            kind: c.r#type.clone(),
            region: c.target_region.clone(),
            interval_ms: c.interval_ms as u64,
            timeout_ms: c.timeout_ms as u64,
        });
    }
    Ok(decls)
}

fn to_report(r: CheckReport) -> Report {
    Report {
        check: r.check,
        region: r.target_region,
        reachable: r.reachable,
        slo_ok: r.slo_ok,
        slo: r
            .slo
            .into_iter()
            .map(|s| SloOutcome { expr: s.expr, value: s.has_value.then_some(s.value), ok: s.ok })
            .collect(),
        values: r.values.into_iter().filter(|(_, v)| v.is_finite()).collect(),
        labels: r.labels.into_iter().collect(),
        error: r.error,
    }
}

#[tonic::async_trait]
impl AgentLink for AgentLinkService {
    type SessionStream = Out;

    async fn session(&self, req: TRequest<Streaming<AgentMessage>>) -> Result<Response<Out>, Status> {
        let (peer, certs) = (req.remote_addr(), req.peer_certs());
        let mut inbound = req.into_inner();
        let first = inbound.next().await.ok_or_else(|| Status::invalid_argument("session closed before hello"))??;
        let Some(AgentBody::Hello(hello)) = first.body else {
            return Err(Status::invalid_argument("the first message of a session must be hello"));
        };
        // With TLS the certificate decides the region, before anything else (even a redirect)
        // is answered: an agent of one region must not speak for another.
        crate::tls::require_agent(
            &self.app,
            certs.as_deref().map(Vec::as_slice),
            peer,
            &hello.agent_id,
            &hello.region,
        )?;
        let (tx, rx) = mpsc::channel(16);
        let app = self.app.clone();
        if !app.raft.is_leader() {
            let _ = tx.send(Ok(redirect(&app, "not the leader"))).await;
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        let decls = validate_hello(&app, &hello)?;
        let record = AgentRecord {
            agent_id: hello.agent_id.clone(),
            region: hello.region.clone(),
            version: hello.version.clone(),
            capabilities: hello.capabilities.clone(),
            self_fence_after_ms: hello.self_fence_after_ms,
        };
        let req = Request {
            request_id: String::new(),
            actor: format!("agent:{}", hello.agent_id),
            at_ms: 0,
            cmd: Command::RegisterAgent { agent: record },
        };
        match app.execute(LeaderRequest::Write(req)).await? {
            LeaderReply::Write(r) => {
                if let Outcome::Rejected { message, .. } = r.outcome {
                    return Err(Status::failed_precondition(message));
                }
            }
            _ => return Err(Status::internal("unexpected reply to agent registration")),
        }
        let agent = hello.agent_id.clone();
        app.hub.hello(&agent, &hello.region, &decls, now_ms());
        if let (Some(tls), Some(chain)) = (&app.tls, certs.as_deref()) {
            app.hub.agent_certificate(&agent, tls.peer_valid_until(chain));
        }
        tracing::info!(agent = %agent, region = %hello.region, checks = decls.len(), "agent session open");
        let welcome = Welcome { node_id: app.id, leader_id: app.id, leader_addr: app.addr.clone() };
        tx.send(Ok(CoordinatorMessage { body: Some(CoordBody::Welcome(welcome)) }))
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;
        let declared: BTreeSet<String> = decls.into_iter().map(|d| d.name).collect();
        app.engine.attach(&agent, &hello.region, tx.clone());
        tokio::spawn(async move {
            let mut leadership = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    msg = inbound.next() => match msg {
                        Some(Ok(AgentMessage { body: Some(AgentBody::Heartbeat(hb)) })) => {
                            app.hub.seen(&agent, now_ms());
                            app.engine.drill.heartbeat(&agent, now_ms(), hb.active_faults.clone());
                            // A lease only from a leader that still holds a quorum: a deposed
                            // leader cut off with the agent must not keep it from self-fencing.
                            let quorum = tokio::time::timeout(LEASE_CONFIRM, app.raft.ensure_linearizable(
                                openraft::raft::ReadPolicy::ReadIndex,
                            )).await;
                            let lease_ms = if matches!(quorum, Ok(Ok(_))) {
                                app.engine.lease_granted(&agent, now_ms());
                                LEASE_MS
                            } else {
                                0
                            };
                            let ack = CoordBody::HeartbeatAck(HeartbeatAck { seq: hb.seq, lease_ms });
                            if tx.send(Ok(CoordinatorMessage { body: Some(ack) })).await.is_err() {
                                break;
                            }
                        }
                        Some(Ok(AgentMessage { body: Some(AgentBody::StepResult(r)) })) => {
                            app.hub.seen(&agent, now_ms());
                            let app = app.clone();
                            tokio::spawn(async move { crate::engine::on_result(&app, r).await });
                        }
                        Some(Ok(AgentMessage { body: Some(AgentBody::Report(r)) })) => {
                            if !declared.contains(&r.check) {
                                let _ = tx.send(Err(Status::invalid_argument(format!(
                                    "report for check {:?}, which this session did not declare", r.check
                                )))).await;
                                break;
                            }
                            app.hub.report(&agent, to_report(r), now_ms());
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break,
                    },
                    _ = leadership.tick() => {
                        if !app.raft.is_leader() {
                            let _ = tx.send(Ok(redirect(&app, "leadership moved"))).await;
                            break;
                        }
                    }
                }
            }
            app.engine.detach(&agent, &tx);
            app.hub.goodbye(&agent, now_ms());
            tracing::info!(agent = %agent, "agent session closed");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
