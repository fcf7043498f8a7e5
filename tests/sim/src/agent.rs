//! A fake region agent: speaks the real `AgentLink` session (hello, heartbeats, check reports,
//! step results) and executes step commands against the shared [`World`].

use crate::net;
use crate::world::{Receipt, World, describe};
use drcut_coordinator::clock::now_ms;
use drcut_proto::v1::agent_link_client::AgentLinkClient;
use drcut_proto::v1::agent_message::Body as AgentBody;
use drcut_proto::v1::coordinator_message::Body as CoordBody;
use drcut_proto::v1::{AgentMessage, CheckInfo, CheckReport, Heartbeat, Hello};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The world, shared by every host of one simulation (all run on one thread).
pub type Shared = Arc<Mutex<World>>;

/// How often checks report and heartbeats go out (each heartbeat costs the leader a quorum
/// round, so this is the main cost of a simulated second).
const REPORT_EVERY: Duration = Duration::from_millis(300);
/// A session without a heartbeat ack for this long is dead (the coordinator is cut off).
const ACK_TIMEOUT_MS: i64 = 1500;

fn lock(w: &Shared) -> std::sync::MutexGuard<'_, World> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// The agent of `region` (its id is the region's name), run as a turmoil host.
pub async fn run(region: String, world: Shared, coordinators: Vec<String>) -> turmoil::Result {
    let mut next = 0usize;
    let mut prefer: Option<String> = None;
    loop {
        let addr = prefer.take().unwrap_or_else(|| {
            next += 1;
            coordinators[next % coordinators.len()].clone()
        });
        if let Ok(Some(leader)) = session(&region, &world, &addr).await {
            prefer = Some(leader);
            continue;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

fn hello(region: &str) -> AgentMessage {
    let check = |name: &str, kind: &str| CheckInfo {
        name: name.into(),
        r#type: kind.into(),
        target_region: region.into(),
        slo: vec![],
        interval_ms: REPORT_EVERY.as_millis() as u32,
        timeout_ms: REPORT_EVERY.as_millis() as u32,
    };
    AgentMessage {
        body: Some(AgentBody::Hello(Hello {
            agent_id: region.into(),
            region: region.into(),
            version: "sim".into(),
            capabilities: vec![],
            checks: vec![check("api", "http"), check("db", "postgres")],
            self_fence_after_ms: 0,
        })),
    }
}

fn reports(region: &str, up: bool, seq: u64) -> Vec<AgentMessage> {
    ["api", "db"]
        .into_iter()
        .map(|check| {
            let mut values = HashMap::new();
            if check == "db" && up {
                values.insert("lag_seconds".to_string(), 0.0);
                values.insert("lag_bytes".to_string(), 0.0);
                values.insert("receive_lag_bytes".to_string(), 0.0);
                values.insert("synchronous".to_string(), 1.0);
            }
            AgentMessage {
                body: Some(AgentBody::Report(CheckReport {
                    check: check.into(),
                    target_region: region.into(),
                    seq,
                    reachable: up,
                    ok: up,
                    slo_ok: up,
                    values,
                    error: if up { String::new() } else { "region down".into() },
                    at_unix_ms: now_ms(),
                    ..Default::default()
                })),
            }
        })
        .collect()
}

/// One session with `addr`; returns the leader to go to when redirected.
async fn session(region: &str, world: &Shared, addr: &str) -> Result<Option<String>, Box<dyn std::error::Error>> {
    let ch = tokio::time::timeout(Duration::from_secs(1), net::dialer().connect(addr)).await??;
    let mut client = AgentLinkClient::new(ch);
    let (tx, rx) = mpsc::channel(256);
    tx.send(hello(region)).await?;
    let mut inbound =
        tokio::time::timeout(Duration::from_secs(2), client.session(ReceiverStream::new(rx))).await??.into_inner();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_ack = now_ms();
    let mut last_report = 0i64;
    let mut seq = 0u64;
    loop {
        // Results wait in the agent's outbox until a session carries them, never dropped.
        loop {
            let Some(r) = lock(world).agents.get_mut(region).and_then(|m| m.outbox.pop_front()) else { break };
            if let Err(e) = tx.try_send(AgentMessage { body: Some(AgentBody::StepResult(r)) }) {
                let AgentMessage { body: Some(AgentBody::StepResult(r)) } = e.into_inner() else { break };
                if let Some(m) = lock(world).agents.get_mut(region) {
                    m.outbox.push_front(r);
                }
                return Ok(None);
            }
        }
        tokio::select! {
            biased;
            m = inbound.message() => match m {
                Ok(Some(msg)) => match msg.body {
                    Some(CoordBody::HeartbeatAck(_)) => last_ack = now_ms(),
                    Some(CoordBody::Redirect(r)) => {
                        return Ok((!r.leader_addr.is_empty()).then_some(r.leader_addr));
                    }
                    Some(CoordBody::Step(cmd)) => on_step(region, world, cmd),
                    _ => {}
                },
                _ => return Ok(None),
            },
            _ = tick.tick() => {
                let now = now_ms();
                if now - last_ack > ACK_TIMEOUT_MS {
                    return Ok(None);
                }
                if now - last_report >= REPORT_EVERY.as_millis() as i64 {
                    last_report = now;
                    seq += 1;
                    let up = lock(world).up.get(region).copied().unwrap_or(false);
                    let hb = AgentMessage { body: Some(AgentBody::Heartbeat(Heartbeat { seq, ..Default::default() })) };
                    for m in std::iter::once(hb).chain(reports(region, up, seq)) {
                        if tx.try_send(m).is_err() {
                            return Ok(None);
                        }
                    }
                }
            }
        }
    }
}

fn on_step(region: &str, world: &Shared, cmd: drcut_proto::v1::StepCommand) {
    let receipt = lock(world).receive(region, now_ms(), &cmd);
    if let Receipt::Execute { delay_ms, fail } = receipt {
        let world = world.clone();
        let region = region.to_string();
        // Execution outlives the session, as a real agent's does.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            let mut w = lock(&world);
            let now = now_ms();
            w.log(now, format!("{region} effect of {}", describe(&cmd)));
            w.complete(&region, &region, now, &cmd, fail);
        });
    }
}
