//! `drcut-agent --config agent.yaml`: the region agent.
//!
//! This first cut holds the session with the coordinator cluster: it says hello (agent id,
//! region, version, capabilities), sends heartbeats, reconnects with backoff, and prefers the
//! leader the cluster names. Checks, step executors and fault injectors come with later work.

use clap::Parser;
use drcut_proto::v1::agent_link_client::AgentLinkClient;
use drcut_proto::v1::agent_message::Body as AgentBody;
use drcut_proto::v1::coordinator_message::Body as CoordBody;
use drcut_proto::v1::{AgentMessage, Heartbeat, Hello};
use serde::Deserialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_stream::StreamExt;

/// A region agent of drcut.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The agent's YAML config.
    #[arg(long, short, env = "DRCUT_AGENT_CONFIG")]
    config: PathBuf,
}

/// The agent config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Unique agent id.
    agent_id: String,
    /// The region this agent lives in.
    region: String,
    /// Coordinator gRPC addresses (host:port).
    coordinators: Vec<String>,
    /// Heartbeat interval.
    #[serde(default = "default_heartbeat_ms")]
    heartbeat_ms: u64,
}

fn default_heartbeat_ms() -> u64 {
    2000
}

fn load(path: &PathBuf) -> Result<Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let c: Config = serde_yaml_ng::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if c.agent_id.is_empty() {
        return Err(format!("{}: agent_id: must not be empty", path.display()));
    }
    if c.region.is_empty() {
        return Err(format!("{}: region: must not be empty", path.display()));
    }
    if c.coordinators.is_empty() {
        return Err(format!("{}: coordinators: list at least one coordinator address", path.display()));
    }
    Ok(c)
}

/// One session: returns the leader address the cluster named, if any, when it ends.
async fn session(cfg: &Config, addr: &str) -> Result<Option<String>, String> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let ch = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let hello = Hello {
        agent_id: cfg.agent_id.clone(),
        region: cfg.region.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        capabilities: vec![],
    };
    tx.send(AgentMessage { body: Some(AgentBody::Hello(hello)) }).await.map_err(|e| e.to_string())?;
    let mut inbound = AgentLinkClient::new(ch)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("{addr}: {}", e.message()))?
        .into_inner();
    let mut leader = None;
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.heartbeat_ms));
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                seq += 1;
                if tx.send(AgentMessage { body: Some(AgentBody::Heartbeat(Heartbeat { seq })) }).await.is_err() {
                    return Ok(leader);
                }
            }
            msg = inbound.next() => match msg {
                Some(Ok(m)) => {
                    if let Some(CoordBody::Welcome(w)) = m.body {
                        tracing::info!(node = w.node_id, leader = w.leader_id, "session open");
                        leader = (!w.leader_addr.is_empty()).then_some(w.leader_addr);
                    }
                }
                Some(Err(e)) => return Err(format!("{addr}: {}", e.message())),
                None => return Ok(leader),
            }
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drcut-agent: config error: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let mut backoff = Duration::from_millis(200);
    let mut next: Option<String> = None;
    let mut i = 0;
    loop {
        let addr = next.take().unwrap_or_else(|| {
            i += 1;
            cfg.coordinators[i % cfg.coordinators.len()].clone()
        });
        tokio::select! {
            r = session(&cfg, &addr) => match r {
                Ok(leader) => {
                    backoff = Duration::from_millis(200);
                    next = leader;
                }
                Err(e) => tracing::warn!("session: {e}"),
            },
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
