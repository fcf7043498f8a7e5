//! The coordinator's HTTP side: Prometheus `/metrics`, `/healthz` for process liveness, and the
//! ops console (the page at `/`, its API under `/api/`: see [`crate::console`]).

use crate::command::HealthState;
use crate::node::AppRef;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;

/// Serves HTTP on `listener` until the process ends; HTTPS when the node has a `tls:` section
/// (`tls`), so API tokens typed into the console never cross the network in clear.
pub async fn serve(app: AppRef, listener: TcpListener, tls: Option<Arc<crate::tls::NodeTls>>) {
    let router = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(crate::console::router())
        .with_state(app);
    if let Some(tls) = tls {
        return serve_tls(router, listener, tls).await;
    }
    // The console records the peer address of refused calls.
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(e) = axum::serve(listener, service).await {
        tracing::error!("http server stopped: {e}");
    }
}

/// HTTPS: each connection's handshake in its own task (a stalled client never blocks the
/// accept loop), then HTTP/1.1 with the peer address where the console's `ConnectInfo` finds it.
async fn serve_tls(router: axum::Router, listener: TcpListener, tls: Arc<crate::tls::NodeTls>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("http accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // The current certificate: a rotated one serves the next connection.
        let (acceptor, router) = (tls.http_acceptor(), router.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!(%peer, "https handshake refused: {e}"),
                Err(_) => return tracing::debug!(%peer, "https handshake timed out"),
            };
            let svc = router.layer(axum::Extension(axum::extract::ConnectInfo(peer)));
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(svc),
            );
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "https connection: {e}");
            }
        });
    }
}

/// Ready = this node knows a leader and has applied everything it knows committed, so it answers
/// reads with current state and forwards writes somewhere; 503 with the reason otherwise. Never
/// tie liveness to this: restarting the nodes of a cluster without quorum brings no quorum back.
async fn readyz(State(app): State<AppRef>) -> impl IntoResponse {
    let m = app.metrics();
    let applied = m.last_applied.map(|l| l.index()).unwrap_or(0);
    let committed = m.cluster_committed.map(|l| l.index()).unwrap_or(0);
    match readiness(m.current_leader, applied, committed) {
        Ok(()) => (StatusCode::OK, format!("ready: leader {}, applied {applied}\n", m.current_leader.unwrap_or(0))),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")),
    }
}

/// Entries a ready node may trail the commit index by: under load an entry is always between
/// commit and apply for a moment; a node restoring from far behind is not ready.
const READY_APPLY_SLACK: u64 = 100;

/// The readiness rule, pure.
fn readiness(leader: Option<u64>, applied: u64, committed: u64) -> Result<(), String> {
    let Some(_) = leader else {
        return Err("no leader known (election in progress, or this node cannot reach a quorum)".into());
    };
    if applied + READY_APPLY_SLACK < committed {
        return Err(format!("catching up: applied {applied} of {committed} committed entries"));
    }
    Ok(())
}

/// Asks a node's HTTP listener for `/healthz` (the container health check). A listener that
/// speaks HTTPS (a node with `tls:`) refuses the plain request: it is up and accepting, which is
/// all a liveness check asks, so that counts as alive too.
pub async fn probe(addr: std::net::SocketAddr) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("cannot connect: {e}"))?;
        s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let head = String::from_utf8_lossy(&buf);
        let status = head.lines().next().unwrap_or("").to_string();
        if !status.starts_with("HTTP/") || status.split_whitespace().nth(1) == Some("200") {
            Ok(())
        } else {
            Err(format!("answered {status:?}"))
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(3), attempt)
        .await
        .map_err(|_| "no answer within 3 s".to_string())?
}

async fn metrics(State(app): State<AppRef>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], render(&app))
}

type Labels = Vec<(String, String)>;

fn gauge(reg: &mut Registry, name: &str, help: &str, v: i64) {
    let g = Gauge::<i64>::default();
    g.set(v);
    reg.register(name, help, g);
}

/// Builds a fresh registry per scrape: values come from Raft metrics and the health hub, which
/// already hold the current numbers; nothing has to be kept in step between scrapes.
pub fn render(app: &AppRef) -> String {
    let mut reg = Registry::default();
    let m = app.metrics();
    gauge(&mut reg, "drcut_raft_term", "Current Raft term", m.current_term as i64);
    gauge(&mut reg, "drcut_raft_last_log_index", "Last log index", m.last_log_index.unwrap_or(0) as i64);
    gauge(
        &mut reg,
        "drcut_raft_applied_index",
        "Last applied index",
        m.last_applied.map(|l| l.index()).unwrap_or(0) as i64,
    );
    gauge(
        &mut reg,
        "drcut_raft_committed_index",
        "Last index known committed by a quorum",
        m.cluster_committed.map(|l| l.index()).unwrap_or(0) as i64,
    );
    let changes = Counter::<u64>::default();
    changes.inc_by(app.leader_changes.load(Ordering::Relaxed));
    reg.register("drcut_raft_leader_changes", "Leader changes this node has seen since it started", changes);
    gauge(&mut reg, "drcut_raft_is_leader", "1 when this node leads", app.raft.is_leader() as i64);
    let (generation, refusing) = app.tls.as_ref().map_or((0, false), |t| (t.generation(), t.refusing()));
    gauge(
        &mut reg,
        "drcut_tls_generation",
        "TLS files in use: 1 as started, +1 per applied reload (0 without TLS)",
        generation as i64,
    );
    gauge(
        &mut reg,
        "drcut_tls_cert_valid_until_seconds",
        "Unix time until which this node's certificate verifies under its CA (0 without TLS)",
        app.tls.as_ref().and_then(|t| t.valid_until()).unwrap_or(0) as i64,
    );
    gauge(
        &mut reg,
        "drcut_tls_files_refused",
        "1 while the TLS files on disk cannot be used and the node serves older ones",
        refusing as i64,
    );
    gauge(&mut reg, "drcut_raft_leader_id", "Known leader's node id (0 = none)", m.current_leader.unwrap_or(0) as i64);
    gauge(&mut reg, "drcut_agent_sessions", "Open agent sessions on this node", app.hub.sessions() as i64);
    let agent_certs = Family::<Labels, Gauge>::default();
    for (agent, until) in app.hub.agent_certificates() {
        agent_certs.get_or_create(&vec![("agent".to_string(), agent)]).set(until as i64);
    }
    reg.register(
        "drcut_agent_cert_valid_until_seconds",
        "Unix time until which a connected agent's certificate verifies under this node's CA",
        agent_certs,
    );

    let rep = app.view.health();
    let region = Family::<Labels, Gauge>::default();
    for (name, state) in app.hub.region_states(&rep) {
        for s in [HealthState::Unknown, HealthState::Up, HealthState::Degraded, HealthState::Down] {
            let l = vec![("region".to_string(), name.clone()), ("state".to_string(), s.as_str().to_string())];
            region.get_or_create(&l).set((s == state) as i64);
        }
    }
    reg.register("drcut_region_state", "1 for the region's current health state", region);

    let values = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (agent, check, region, metric, v) in app.hub.check_values() {
        let l = vec![
            ("agent".to_string(), agent),
            ("check".to_string(), check),
            ("region".to_string(), region),
            ("metric".to_string(), metric),
        ];
        values.get_or_create(&l).set(v);
    }
    reg.register("drcut_check_value", "Latest value reported by an agent's check (leader only)", values);

    let pending = Family::<Labels, Gauge>::default();
    let fenced = Family::<Labels, Gauge>::default();
    for sv in app.view.services().values() {
        pending
            .get_or_create(&vec![("service".to_string(), sv.service.clone())])
            .set(sv.ack_requested.is_some() as i64);
        for (region, o) in &sv.fences {
            let l = vec![("service".to_string(), sv.service.clone()), ("region".to_string(), region.clone())];
            fenced.get_or_create(&l).set(if o.done_ms > 0 { 1 } else { 0 });
        }
    }
    reg.register(
        "drcut_failover_ack_pending",
        "1 while an automatic failover of the service is suppressed by its cooldown and waits for an operator (page on it)",
        pending,
    );
    reg.register(
        "drcut_old_primary_fenced",
        "Old primaries awaiting rebuild: 1 fenced, 0 still to fence when their region returns",
        fenced,
    );
    // A run waiting at an `approval` step carries a hold text too, but waits as designed: it is
    // counted with the runs awaiting approval, not as held (which pages).
    let active = app.view.active_runs();
    let at_step = |r: &&crate::command::RunRecord| r.run.waiting_approval_step().is_some();
    let held = active.iter().filter(|r| r.run.hold.is_some() && !at_step(r)).count();
    gauge(&mut reg, "drcut_runs_held", "Active runs that cannot move (fencing or consent missing)", held as i64);
    let approving =
        active.iter().filter(|r| at_step(r) || r.run.state == crate::run::RunState::AwaitingApproval).count();
    gauge(
        &mut reg,
        "drcut_runs_awaiting_approval",
        "Active runs waiting for someone other than the requester to approve (before the first step or at an approval step)",
        approving as i64,
    );

    // Runs by state, and every step attempt by action and result (recounted per scrape from
    // the replicated runs: nothing to keep in step, and the same on every node).
    let runs = app.view.runs();
    let by_state = Family::<Labels, Gauge>::default();
    let attempts = Family::<Labels, Gauge>::default();
    let gates = Family::<Labels, Gauge>::default();
    for r in runs.values() {
        for g in &r.run.gates {
            gates
                .get_or_create(&vec![("result".to_string(), if g.ok { "passed" } else { "failed" }.to_string())])
                .inc();
        }
        by_state.get_or_create(&vec![("state".to_string(), crate::run::state_text(&r.run.state).0.to_string())]).inc();
        for a in r.run.history.iter().filter(|a| a.finished_ms > 0) {
            let action = r.run.plan.steps.get(a.work.step).map(|s| s.act.action.clone()).unwrap_or_default();
            let l = vec![
                ("action".to_string(), action),
                ("result".to_string(), if a.ok { "ok" } else { "failed" }.to_string()),
                ("compensation".to_string(), a.work.compensation.to_string()),
            ];
            attempts.get_or_create(&l).inc();
        }
    }
    reg.register("drcut_runs", "Runs by state", by_state);
    reg.register("drcut_step_attempts", "Finished step attempts by action and result", attempts);
    reg.register("drcut_gates", "SLO gate evaluations after traffic phases, by result", gates);

    // GameDay drills: what is running and what is broken right now, and how drills ended.
    let drills = app.view.drill_runs();
    let active: Vec<_> = drills.values().filter(|d| !d.is_done()).collect();
    gauge(&mut reg, "drcut_drills_active", "Drill runs in progress", active.len() as i64);
    let faults =
        active.iter().flat_map(|d| d.faults.values()).filter(|f| f.injected_ms > 0 && f.reverted_ms == 0).count();
    gauge(&mut reg, "drcut_drill_faults_active", "Injected drill faults not yet confirmed reverted", faults as i64);
    let held = active.iter().filter(|d| d.abort.as_ref().is_some_and(|a| a.hold)).count();
    gauge(
        &mut reg,
        "drcut_drills_held",
        "Drills aborted past their response's point of no return, waiting for an operator (page on it)",
        held as i64,
    );
    let ended = Family::<Labels, Gauge>::default();
    for d in drills.values() {
        if let Some(o) = d.outcome {
            let l = vec![("drill".to_string(), d.drill.clone()), ("outcome".to_string(), o.as_str().to_string())];
            ended.get_or_create(&l).inc();
        }
    }
    reg.register("drcut_drill_runs", "Ended drill runs by drill and outcome", ended);

    let mut out = String::new();
    if let Err(e) = encode(&mut out, &reg) {
        tracing::warn!("metrics encoding: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ready_needs_a_leader_and_no_backlog() {
        assert!(super::readiness(None, 5, 5).unwrap_err().contains("no leader"));
        assert!(super::readiness(Some(2), 4, 505).unwrap_err().contains("applied 4 of 505"));
        assert!(super::readiness(Some(2), 5, 5).is_ok());
        assert!(super::readiness(Some(2), 4, 5).is_ok(), "an entry between commit and apply is normal");
    }
}
