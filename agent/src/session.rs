//! The AgentLink session: hello with the declared checks, reports and heartbeats out, redirects
//! in. Sessions terminate on the leader; on a redirect the agent goes straight to the named
//! leader, otherwise it walks the configured coordinators with backoff. Check runners keep
//! their windows meanwhile, so nothing measured is lost by a leader change.

use crate::config::{AgentConfig, CheckSpec};
use crate::executor::Executor;
use crate::faults::FaultManager;
use crate::lease::{self, Lease};
use crate::metrics::AgentMetrics;
use drcut_proto::v1::agent_link_client::AgentLinkClient;
use drcut_proto::v1::agent_message::Body as AgentBody;
use drcut_proto::v1::coordinator_message::Body as CoordBody;
use drcut_proto::v1::{AgentMessage, CheckInfo, CheckReport, Heartbeat, Hello, StepResult};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

/// How a session ended.
enum End {
    /// Go to this leader next.
    Redirect(String),
    /// The coordinator refused us (bad config on our side, or an unknown region): say so
    /// loudly, keep retrying slowly.
    Refused(String),
    /// Connection trouble; `bool`: the session had been open (retry at once, elsewhere).
    Lost(String, bool),
}

/// What the coordinator learns about a check at hello.
pub fn check_info(c: &CheckSpec) -> CheckInfo {
    CheckInfo {
        name: c.name.clone(),
        r#type: c.kind.to_string(),
        target_region: c.target_region.clone(),
        slo: c.slo.iter().map(|s| s.to_string()).collect(),
        interval_ms: c.interval.as_millis() as u32,
        timeout_ms: c.timeout.as_millis() as u32,
    }
}

fn hello(cfg: &AgentConfig, checks: &[CheckInfo]) -> Hello {
    let mut capabilities: std::collections::BTreeSet<String> =
        checks.iter().map(|c| format!("check:{}", c.r#type)).collect();
    if lease::self_fence_after_ms(cfg) > 0 {
        capabilities.insert("self_fence".to_string());
    }
    Hello {
        agent_id: cfg.agent_id.clone(),
        region: cfg.region.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        capabilities: capabilities.into_iter().collect(),
        checks: checks.to_vec(),
        self_fence_after_ms: lease::self_fence_after_ms(cfg),
    }
}

/// A heartbeat; it tells the coordinator which GameDay faults are still injected, so one the
/// dead-man switch reverted shows up as gone.
pub fn heartbeat_message(seq: u64, faults: &FaultManager) -> Heartbeat {
    Heartbeat { seq, active_faults: faults.active() }
}

/// The channels a session carries besides its own stream.
pub struct Links {
    /// Check reports (latest wins).
    pub reports: mpsc::Receiver<CheckReport>,
    /// Step results (never dropped: a new leader may ask for them).
    pub results: mpsc::UnboundedReceiver<StepResult>,
    /// Executes step commands.
    pub executor: Arc<Executor>,
    /// Where leases granted with heartbeat acks are recorded.
    pub lease: Arc<Lease>,
}

/// The endpoint for a coordinator address: TLS with the agent's certificate when configured
/// (a leader's redirect names a bare `host:port`, dialed the same way), as the files hold it
/// now, so a rotated certificate is presented from the next connection on.
fn endpoint(cfg: &AgentConfig, addr: &str) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    let host_port = addr.split_once("://").map(|(_, hp)| hp).unwrap_or(addr);
    let ep = match &cfg.tls {
        Some(tls) => {
            tonic::transport::Endpoint::from_shared(format!("https://{host_port}"))?.tls_config(tls.current())?
        }
        None => tonic::transport::Endpoint::from_shared(if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        })?,
    };
    Ok(ep.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true).http2_keep_alive_interval(Duration::from_secs(5)))
}

async fn session(
    cfg: &AgentConfig,
    checks: &[CheckInfo],
    addr: &str,
    links: &mut Links,
    metrics: &AgentMetrics,
) -> End {
    let reports = &mut links.reports;
    let ep = match endpoint(cfg, addr) {
        Ok(e) => e,
        Err(e) => return End::Refused(format!("{addr}: not a valid address: {e}")),
    };
    let ch = match ep.connect().await {
        Ok(c) => c,
        Err(e) => return End::Lost(format!("{addr}: cannot connect: {}", crate::checks::error_chain(&e)), false),
    };
    let (tx, rx) = mpsc::channel(64);
    if tx.send(AgentMessage { body: Some(AgentBody::Hello(hello(cfg, checks))) }).await.is_err() {
        return End::Lost("session closed".into(), false);
    }
    let mut inbound = match AgentLinkClient::new(ch).session(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s)
            if matches!(
                s.code(),
                tonic::Code::FailedPrecondition
                    | tonic::Code::InvalidArgument
                    | tonic::Code::PermissionDenied
                    | tonic::Code::Unauthenticated
            ) =>
        {
            return End::Refused(s.message().to_string());
        }
        Err(s) => return End::Lost(format!("{addr}: {}", s.message()), false),
    };
    // Reports queued while disconnected describe the past; the runners send fresh ones.
    while reports.try_recv().is_ok() {}
    let mut heartbeat = tokio::time::interval(lease::heartbeat_interval(cfg));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hb_seq = 0;
    // Send times of heartbeats not acked yet: a lease counts from when its heartbeat left.
    let mut sent: std::collections::BTreeMap<u64, tokio::time::Instant> = Default::default();
    let mut open = false;
    loop {
        tokio::select! {
            msg = inbound.next() => match msg {
                Some(Ok(m)) => match m.body {
                    Some(CoordBody::Welcome(w)) => {
                        tracing::info!(node = w.node_id, coordinator = %addr, "session open");
                        open = true;
                        metrics.session.set(1);
                    }
                    Some(CoordBody::Step(cmd)) => links.executor.handle(cmd),
                    Some(CoordBody::HeartbeatAck(ack)) => {
                        if let Some(at) = sent.get(&ack.seq).copied() && ack.lease_ms > 0 {
                            links.lease.granted(at);
                        }
                        // Acks come in order: older heartbeats will not be acked any more.
                        sent = sent.split_off(&(ack.seq + 1));
                    }
                    Some(CoordBody::Redirect(r)) => {
                        metrics.session.set(0);
                        tracing::info!(leader = r.leader_id, addr = %r.leader_addr, reason = %r.reason, "redirected");
                        return if r.leader_addr.is_empty() { End::Lost(format!("{addr}: {}; no leader known", r.reason), open) } else { End::Redirect(r.leader_addr) };
                    }
                    _ => {}
                },
                Some(Err(s)) => {
                    metrics.session.set(0);
                    return if s.code() == tonic::Code::InvalidArgument { End::Refused(s.message().to_string()) } else { End::Lost(format!("{addr}: {}", s.message()), open) };
                }
                None => {
                    metrics.session.set(0);
                    return End::Lost(format!("{addr}: session ended"), open);
                }
            },
            Some(r) = reports.recv(), if open => {
                if tx.send(AgentMessage { body: Some(AgentBody::Report(r)) }).await.is_err() {
                    metrics.session.set(0);
                    return End::Lost("session closed".into(), open);
                }
            }
            Some(r) = links.results.recv(), if open => {
                if tx.send(AgentMessage { body: Some(AgentBody::StepResult(r)) }).await.is_err() {
                    metrics.session.set(0);
                    return End::Lost("session closed".into(), open);
                }
            }
            _ = heartbeat.tick() => {
                hb_seq += 1;
                sent.insert(hb_seq, tokio::time::Instant::now());
                // A leader that never acks must not make this grow without bound.
                while sent.len() > 64 {
                    sent.pop_first();
                }
                if tx.send(AgentMessage { body: Some(AgentBody::Heartbeat(heartbeat_message(hb_seq, links.executor.faults()))) }).await.is_err() {
                    metrics.session.set(0);
                    return End::Lost("session closed".into(), open);
                }
            }
        }
    }
}

/// The config field a refusal is about, with its value, for the operator who must fix it.
fn refused_field(cfg: &AgentConfig, checks: &[CheckInfo], why: &str) -> String {
    if let Some((i, c)) = checks.iter().enumerate().find(|(_, c)| why.contains(&format!("check {:?}", c.name))) {
        return format!("checks[{i}].target_region: {:?}", c.target_region);
    }
    if why.contains("certificate") {
        return format!("tls.cert (region {:?})", cfg.region);
    }
    if why.contains("region") {
        return format!("region: {:?}", cfg.region);
    }
    format!("agent_id: {:?}", cfg.agent_id)
}

/// Holds a session with the cluster's leader for as long as the process lives.
pub async fn run(
    cfg: Arc<AgentConfig>,
    checks: Vec<CheckInfo>,
    file: String,
    mut links: Links,
    metrics: Arc<AgentMetrics>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut next: Option<String> = None;
    let mut i = 0usize;
    loop {
        let (addr, field) = match next.take() {
            Some(a) => (a, "leader (redirect)".to_string()),
            None => {
                let k = i % cfg.coordinators.len();
                i += 1;
                (cfg.coordinators[k].clone(), format!("coordinators[{k}]"))
            }
        };
        match session(&cfg, &checks, &addr, &mut links, &metrics).await {
            End::Redirect(leader) => {
                next = Some(leader);
                backoff = Duration::from_millis(100);
                continue;
            }
            End::Refused(why) => {
                let field = refused_field(&cfg, &checks, &why);
                tracing::error!("{file}: {field}: refused by the coordinator: {why}");
                backoff = Duration::from_secs(5);
            }
            End::Lost(why, was_open) => {
                tracing::warn!("{file}: {field}: {why} (retrying)");
                if was_open {
                    // The leader just went away: try the next coordinator at once.
                    backoff = Duration::from_millis(100);
                    continue;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn heartbeats_list_the_active_faults() {
        let cfg = Arc::new(
            crate::config::parse("a.yaml", "agent_id: a\nregion: eu-west\ncoordinators: [127.0.0.1:7001]\n").unwrap(),
        );
        let faults =
            FaultManager::new(cfg, Lease::new(), Arc::new(AgentMetrics::new()), Default::default(), Default::default());
        assert_eq!(heartbeat_message(1, &faults), Heartbeat { seq: 1, active_faults: vec![] });
        let exec = serde_json::json!({"fault": {"type": "exec", "inject": ["/bin/true"], "revert": ["/bin/true"]},
            "deadline_ms": 60000, "lost_coordinator_ms": 60000});
        let now = tokio::time::Instant::now();
        for (run, id) in [("r2", "a"), ("r1", "b"), ("r1", "a")] {
            assert!(faults.execute("fault.inject", run, id, &exec, now, Duration::from_secs(5)).await.ok);
        }
        assert_eq!(heartbeat_message(2, &faults).active_faults, ["r1/a", "r1/b", "r2/a"]);
    }
}
