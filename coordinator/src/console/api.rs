//! The console's JSON endpoints: each authorizes the caller for the `Control` RPC it maps to,
//! then calls that RPC in process (see the module docs of [`super`]).

use super::view::{self, PlaybookHint};
use super::{ApiError, admit, authenticate, grpc_request, json};
use crate::grpc::control::ControlService;
use crate::node::AppRef;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use drcut_proto::v1 as pb;
use drcut_proto::v1::control_server::Control;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

type Peer = ConnectInfo<SocketAddr>;
type ApiResult = Result<Response, ApiError>;

/// How long the status board waits for the leader's quorum confirmation or its live health
/// values before it answers without them (the board is polled every second or two).
const STATUS_WAIT: Duration = Duration::from_millis(1500);

/// Audit entries scanned for a run's events (approvals, gate verdicts, step results): the tail
/// of the chain, which holds every event of a run in progress.
const RUN_EVENTS_TAIL: u64 = 2000;

/// The calls a principal's roles allow, so the page can disable what the server would refuse.
const UI_CALLS: [&str; 7] =
    ["PlanCutover", "StartCutover", "ApproveRun", "PauseRun", "ResumeRun", "AbortRun", "RunDrill"];

fn control(app: &AppRef) -> ControlService {
    ControlService::new(app.clone())
}

fn body<T: serde::de::DeserializeOwned>(b: &Bytes) -> Result<T, ApiError> {
    let b: &[u8] = if b.iter().all(u8::is_ascii_whitespace) { b"{}" } else { b };
    serde_json::from_slice(b).map_err(|e| ApiError::bad(format!("request body: {e}")))
}

/// `GET /api/me`: who the token belongs to and what the page may offer them.
pub async fn me(State(app): State<AppRef>, ConnectInfo(peer): Peer, h: HeaderMap) -> ApiResult {
    let p = authenticate(&app, &h, peer, "Me")?;
    let may: BTreeMap<&str, bool> = UI_CALLS.iter().map(|c| (*c, app.auth.authorize(&p, c).is_ok())).collect();
    Ok(json(json!({
        "name": p.name,
        "roles": p.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "regions": p.regions,
        "auth_enabled": app.auth.enabled(),
        "may": may,
        "node_id": app.id,
    })))
}

/// Why writes cannot succeed now (None: the cluster has a leader confirmed by a quorum).
async fn read_only(app: &AppRef) -> Option<String> {
    if app.leader().is_none() {
        return Some(
            "no leader is known: an election is in progress or this node cannot reach a quorum of the cluster".into(),
        );
    }
    match tokio::time::timeout(STATUS_WAIT, app.linearizable_barrier()).await {
        Ok(Ok(())) => None,
        Ok(Err(s)) => Some(format!("the cluster cannot confirm a quorum: {}", s.message())),
        Err(_) => Some(format!("the leader did not confirm a quorum within {} ms", STATUS_WAIT.as_millis())),
    }
}

/// The board from the leader's live values, or this node's replicated states when the leader
/// does not answer in time (marked not live).
async fn health(app: &AppRef, p: &crate::auth::Principal) -> pb::HealthBoard {
    let svc = control(app);
    match tokio::time::timeout(STATUS_WAIT, svc.get_health(grpc_request(pb::GetHealthRequest {}, p))).await {
        Ok(Ok(b)) => b.into_inner(),
        _ => app.hub.board(&app.view.health(), app.id, false, crate::node::now_ms()),
    }
}

/// Per service, what its latest playbook says (source and target by default).
fn hints(app: &AppRef) -> BTreeMap<String, PlaybookHint> {
    let mut latest: BTreeMap<String, crate::command::StoredPlaybook> = BTreeMap::new();
    for p in app.view.playbooks().into_values() {
        if latest.get(&p.service).is_none_or(|q| q.applied_ms < p.applied_ms) {
            latest.insert(p.service.clone(), p);
        }
    }
    latest
        .into_iter()
        .filter_map(|(service, stored)| {
            let r =
                crate::playbook::Playbook::parse(&stored.name, &stored.text).ok()?.resolve(&BTreeMap::new()).ok()?;
            let hint = PlaybookHint {
                source: r.failover.as_ref().map(|f| f.source.clone()).or_else(|| r.params.get("source").cloned()),
                target: r
                    .failover
                    .as_ref()
                    .map(|f| f.target.clone())
                    .or_else(|| r.preconditions.target_region.clone())
                    .or_else(|| r.params.get("target").cloned()),
            };
            Some((service, hint))
        })
        .collect()
}

fn service_facts(app: &AppRef) -> view::ServiceFacts {
    let active_runs = app.view.active_runs().into_iter().map(|r| (r.run.service.clone(), r.run.id.clone())).collect();
    let mut promoted: BTreeMap<String, (i64, String, String)> = BTreeMap::new();
    for r in app.view.runs().into_values().filter(|r| r.run.state == crate::run::RunState::Succeeded) {
        let Some(step) = r.run.plan.steps.iter().find(|s| s.act.action == "promote_db") else { continue };
        if promoted.get(&r.run.service).is_none_or(|(t, ..)| *t < r.ended_ms) {
            promoted.insert(r.run.service.clone(), (r.ended_ms, step.act.region.clone(), r.run.id.clone()));
        }
    }
    let promoted = promoted.into_iter().map(|(s, (_, region, run))| (s, (region, run))).collect();
    view::ServiceFacts { hints: hints(app), active_runs, promoted }
}

/// `GET /api/status`: the board — cluster, regions' health, services with lag and the loss
/// an unplanned failover would cause now — and whether the console is read-only, and why.
pub async fn status(State(app): State<AppRef>, ConnectInfo(peer): Peer, h: HeaderMap) -> ApiResult {
    let p = admit(&app, &h, peer, "GetStatus")?;
    let req = pb::GetStatusRequest { consistency: pb::ReadConsistency::Local as i32 };
    let st = control(&app).get_status(grpc_request(req, &p)).await?.into_inner();
    let (ro, board) = tokio::join!(read_only(&app), health(&app, &p));
    let now = crate::node::now_ms();
    let services = view::services(&st, &board, &service_facts(&app), now);
    Ok(json(json!({
        "now_unix_ms": now,
        "cluster": view::cluster(&st, ro.as_deref()),
        "read_only": ro,
        "health": view::board(&board),
        "services": services,
        "regions": st.regions.iter().map(|r| json!({"name": r.name, "display_name": r.display_name})).collect::<Vec<_>>(),
    })))
}

/// `GET /api/playbooks`: the latest version of each playbook, with its parameters (the page's
/// playbook and target choice) and whether it needs approval or can run unplanned.
pub async fn playbooks(State(app): State<AppRef>, ConnectInfo(peer): Peer, h: HeaderMap) -> ApiResult {
    let p = admit(&app, &h, peer, "ListPlaybooks")?;
    let list = control(&app).list_playbooks(grpc_request(pb::ListPlaybooksRequest {}, &p)).await?.into_inner();
    let mut latest: BTreeMap<String, pb::PlaybookInfo> = BTreeMap::new();
    for i in list.playbooks {
        if latest.get(&i.name).is_none_or(|q| q.applied_unix_ms < i.applied_unix_ms) {
            latest.insert(i.name.clone(), i);
        }
    }
    let stored = app.view.playbooks();
    let out: Vec<Value> = latest
        .into_values()
        .map(|i| {
            let parsed = stored.get(&i.hash).and_then(|s| crate::playbook::Playbook::parse(&s.name, &s.text).ok());
            let resolved = parsed.as_ref().and_then(|pb_| pb_.resolve(&BTreeMap::new()).ok());
            let params: Vec<Value> = parsed
                .iter()
                .flat_map(|pb_| pb_.parameters.iter())
                .map(|(name, prm)| {
                    let kind = match prm.kind {
                        crate::playbook::ParamKind::Region => "region",
                        crate::playbook::ParamKind::String => "string",
                    };
                    json!({"name": name, "kind": kind, "default": prm.default, "description": prm.description})
                })
                .collect();
            json!({
                "name": i.name, "hash": i.hash, "service": i.service, "applied_unix_ms": i.applied_unix_ms,
                "applied_by": i.applied_by,
                "description": parsed.as_ref().map(|x| x.description.clone()).unwrap_or_default(),
                "parameters": params,
                "approvals_required": resolved.as_ref().map(|r| r.approvals_required),
                "unplanned_capable": resolved.as_ref().map(|r| r.failover.is_some()).unwrap_or(false),
            })
        })
        .collect();
    let regions: Vec<String> = app.view.regions().into_iter().map(|r| r.name).collect();
    Ok(json(json!({ "playbooks": out, "regions": regions })))
}

/// What the page sends to plan or start a cutover.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CutoverBody {
    playbook: String,
    params: BTreeMap<String, String>,
    unplanned: bool,
    /// Start only: why (recorded in the audit chain).
    reason: String,
    /// Start only: the service name, typed by the operator.
    confirm: String,
    /// Start only: the idempotency key (a retried click starts one run).
    request_id: String,
}

impl CutoverBody {
    fn request(&self) -> pb::StartCutoverRequest {
        pb::StartCutoverRequest {
            ctx: Some(pb::WriteContext { actor: String::new(), request_id: self.request_id.clone() }),
            playbook: self.playbook.clone(),
            params: self.params.clone().into_iter().collect(),
            reason: self.reason.clone(),
            unplanned: self.unplanned,
        }
    }
}

/// `POST /api/plan`: what a cutover would do, with the preconditions as they stand now.
pub async fn plan(State(app): State<AppRef>, ConnectInfo(peer): Peer, h: HeaderMap, b: Bytes) -> ApiResult {
    let p = admit(&app, &h, peer, "PlanCutover")?;
    let b: CutoverBody = body(&b)?;
    let r = control(&app).plan_cutover(grpc_request(b.request(), &p)).await?.into_inner();
    Ok(json(json!({ "plan_text": r.plan_text, "blockers": r.blockers, "playbook_hash": r.playbook_hash })))
}

/// `POST /api/runs`: the DR button. The operator must have typed the service's name and given
/// a reason (the page checks both too; this is the check that counts).
pub async fn start_run(State(app): State<AppRef>, ConnectInfo(peer): Peer, h: HeaderMap, b: Bytes) -> ApiResult {
    let p = admit(&app, &h, peer, "StartCutover")?;
    let b: CutoverBody = body(&b)?;
    if b.reason.trim().is_empty() {
        return Err(ApiError::bad("reason: say why this cutover runs (it is recorded in the audit chain)"));
    }
    let stored = crate::grpc::runs::find_playbook(&app, &b.playbook)?;
    if b.confirm.trim() != stored.service {
        return Err(ApiError::bad(format!(
            "confirm: type the service name {:?} to confirm a cutover of it (got {:?})",
            stored.service, b.confirm
        )));
    }
    let run = control(&app).start_cutover(grpc_request(b.request(), &p)).await?.into_inner();
    Ok((StatusCode::CREATED, json(view::run(&run))).into_response())
}

/// Query of `GET /api/runs`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RunsQuery {
    active: bool,
}

/// `GET /api/runs`: newest first, without the full records.
pub async fn list_runs(
    State(app): State<AppRef>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Query(q): Query<RunsQuery>,
) -> ApiResult {
    let p = admit(&app, &h, peer, "ListRuns")?;
    let req = pb::ListRunsRequest { active_only: q.active };
    let mut runs = control(&app).list_runs(grpc_request(req, &p)).await?.into_inner().runs;
    runs.reverse();
    let runs: Vec<Value> = runs
        .iter()
        .map(|r| {
            let mut v = view::run(&pb::RunInfo { record_json: String::new(), ..r.clone() });
            if let Some(o) = v.as_object_mut() {
                o.remove("record");
            }
            v
        })
        .collect();
    Ok(json(json!({ "runs": runs })))
}

/// The run with its events from the audit chain (approvals, gate verdicts with the health
/// they saw, step results).
async fn run_with_events(app: &AppRef, p: &crate::auth::Principal, run: &pb::RunInfo) -> Value {
    let total = app.view.core().audit_len;
    let req = pb::ListAuditRequest {
        from_seq: total.saturating_sub(RUN_EVENTS_TAIL - 1).max(1),
        limit: RUN_EVENTS_TAIL as u32,
        consistency: pb::ReadConsistency::Local as i32,
    };
    let mut events = Vec::new();
    // The service pages at 1000 entries: read the tail in pages.
    let mut from = req.from_seq;
    while from <= total {
        let page = match control(app).list_audit(grpc_request(pb::ListAuditRequest { from_seq: from, ..req }, p)).await
        {
            Ok(r) => r.into_inner().entries,
            Err(_) => break,
        };
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        events.extend(page.iter().filter(|e| e.details_json.contains(&run.run_id)).map(view::audit_entry).filter(
            |e| {
                e["details"]["run_id"] == run.run_id.as_str()
                    || e["details"]["record"]["run"]["id"] == run.run_id.as_str()
            },
        ));
    }
    let mut v = view::run(run);
    v["events"] = Value::Array(events);
    v
}

/// `GET /api/runs/{id}`.
pub async fn get_run(
    State(app): State<AppRef>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let p = admit(&app, &h, peer, "GetRun")?;
    let run = control(&app).get_run(grpc_request(pb::GetRunRequest { run_id: id }, &p)).await?.into_inner();
    Ok(json(run_with_events(&app, &p, &run).await))
}

/// `GET /api/runs/{id}/stream`: server-sent events, a `run` event (the run with its events)
/// each time the record changes as this node applies it, then `end`. The page reads it with
/// fetch() (EventSource cannot send the Authorization header).
pub async fn stream_run(
    State(app): State<AppRef>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let p = admit(&app, &h, peer, "WatchRun")?;
    let watch = control(&app).watch_run(grpc_request(pb::GetRunRequest { run_id: id }, &p)).await?.into_inner();
    let events = watch
        .then(move |item| {
            let (app, p) = (app.clone(), p.clone());
            async move {
                Ok::<_, std::convert::Infallible>(match item {
                    Ok(run) => Event::default().event("run").data(run_with_events(&app, &p, &run).await.to_string()),
                    Err(s) => Event::default().event("error").data(json!({"error": s.message()}).to_string()),
                })
            }
        })
        .chain(futures::stream::once(async { Ok(Event::default().event("end").data("{}")) }));
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))).into_response())
}

/// What the page sends with an action on a run.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionBody {
    reason: String,
    /// Approve on an unplanned run held for consent: the loss accepted, as the run states it
    /// (bytes, or "unknown").
    accept_loss: String,
    request_id: String,
}

/// `POST /api/runs/{id}/{approve|pause|resume|abort}`.
pub async fn run_action(
    State(app): State<AppRef>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    b: Bytes,
) -> ApiResult {
    let call = match action.as_str() {
        "approve" => "ApproveRun",
        "pause" => "PauseRun",
        "resume" => "ResumeRun",
        "abort" => "AbortRun",
        other => {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("no run action {other:?} (approve, pause, resume, abort)"),
            });
        }
    };
    let p = admit(&app, &h, peer, call)?;
    let b: ActionBody = body(&b)?;
    let req = pb::RunActionRequest {
        ctx: Some(pb::WriteContext { actor: String::new(), request_id: b.request_id }),
        run_id: id,
        reason: b.reason,
        accept_loss: b.accept_loss,
    };
    let svc = control(&app);
    let r = grpc_request(req, &p);
    let run = match call {
        "ApproveRun" => svc.approve_run(r).await,
        "PauseRun" => svc.pause_run(r).await,
        "ResumeRun" => svc.resume_run(r).await,
        _ => svc.abort_run(r).await,
    }?
    .into_inner();
    Ok(json(view::run(&run)))
}

/// `GET /api/drills`: the drills on file with their next fire times (the calendar).
pub async fn drills(State(app): State<AppRef>, ConnectInfo(peer): Peer, h: HeaderMap) -> ApiResult {
    let p = admit(&app, &h, peer, "ListDrills")?;
    let d = control(&app).list_drills(grpc_request(pb::ListDrillsRequest {}, &p)).await?.into_inner();
    Ok(json(json!({ "drills": d.drills.iter().map(view::drill).collect::<Vec<_>>() })))
}

/// `GET /api/drill-runs`: newest first.
pub async fn drill_runs(State(app): State<AppRef>, ConnectInfo(peer): Peer, h: HeaderMap) -> ApiResult {
    let p = admit(&app, &h, peer, "ListDrillRuns")?;
    let req = pb::ListDrillRunsRequest { drill: String::new(), active_only: false };
    let mut runs = control(&app).list_drill_runs(grpc_request(req, &p)).await?.into_inner().runs;
    runs.reverse();
    Ok(json(json!({ "runs": runs.iter().map(view::drill_run).collect::<Vec<_>>() })))
}

/// `GET /api/drill-runs/{id}`: with its report (JSON and Markdown) once ended.
pub async fn drill_run(
    State(app): State<AppRef>,
    ConnectInfo(peer): Peer,
    h: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let p = admit(&app, &h, peer, "GetDrillRun")?;
    let d = control(&app).get_drill_run(grpc_request(pb::GetDrillRunRequest { id }, &p)).await?.into_inner();
    Ok(json(view::drill_run(&d)))
}

/// Anything else.
pub async fn not_found() -> ApiError {
    ApiError { status: StatusCode::NOT_FOUND, message: "no such page or API endpoint".into() }
}
