//! WatchHealth streams every committed health transition with a revision; a watcher that
//! disconnects mid-way and resumes from its last revision + 1 misses nothing and sees nothing
//! twice. drctl's watcher does the same.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_proto::v1::{HealthEvent, WatchHealthRequest};
use drcut_tests::health::{HEALTH_WAIT, agent_yaml, wait_region};
use drcut_tests::{AgentProc, Cluster, TestHttp};
use tokio_stream::StreamExt;

const HEALTH: &str = "health:\n  down_after: 2\n  up_after: 2\n  tick_ms: 100\n";

/// Reads events until one satisfies `last` (inclusive).
async fn read_until(
    stream: &mut tonic::Streaming<HealthEvent>,
    out: &mut Vec<HealthEvent>,
    last: impl Fn(&HealthEvent) -> bool,
) -> Result<()> {
    loop {
        let ev = tokio::time::timeout(HEALTH_WAIT, stream.next())
            .await
            .context("no event in time")?
            .context("stream ended")??;
        let done = last(&ev);
        out.push(ev);
        if done {
            return Ok(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_resumes_without_gaps() -> Result<()> {
    let cluster = Cluster::builder(85).nodes(1).extra_yaml(HEALTH).start().await?;
    cluster.wait_leader(&[1]).await?;
    cluster.add_region(1, "eu-west").await?;
    let app = TestHttp::start("127.0.85.50:0".parse()?).await?;

    tracing::info!("--- watch from revision 1, then start the agent");
    let mut client = cluster.client(1)?;
    let mut stream = client.watch_health(WatchHealthRequest { from_revision: 1 }).await?.into_inner();
    let checks = format!(
        "checks:\n  - name: api\n    type: http\n    url: {}\n    interval_ms: 100\n    timeout_ms: 500\n    window: 5\n    slo: [\"p95_ms <= 150\"]\n",
        app.url("/health")
    );
    let _agent = AgentProc::start(
        cluster.dir(),
        "agent",
        &agent_yaml("agent-eu-west", "eu-west", &[cluster.addr(1).to_string()], &checks),
        &[],
    )?;
    let mut seen = Vec::new();
    read_until(&mut stream, &mut seen, |e| e.kind == "health.region" && e.to == "up").await?;
    ensure!(seen.first().map(|e| e.kind.as_str()) == Some("agent.register"), "{seen:?}");

    tracing::info!("--- disconnect; transitions happen while nobody watches");
    drop(stream);
    let resume_from = seen.last().unwrap().revision + 1;
    app.set_latency(Duration::from_millis(300));
    wait_region(&cluster, 1, "eu-west", "degraded", HEALTH_WAIT).await?;
    app.set_latency(Duration::ZERO);
    wait_region(&cluster, 1, "eu-west", "up", HEALTH_WAIT).await?;

    tracing::info!("--- resume from revision {resume_from}");
    let mut stream = client.watch_health(WatchHealthRequest { from_revision: resume_from }).await?.into_inner();
    let before = seen.len();
    read_until(&mut stream, &mut seen, |e| e.kind == "health.region" && e.from == "degraded" && e.to == "up").await?;
    let resumed: Vec<String> = seen[before..].iter().map(|e| format!("{} {}->{}", e.kind, e.from, e.to)).collect();
    ensure!(resumed.iter().any(|e| e == "health.region up->degraded"), "{resumed:?}");

    tracing::info!("--- what the watcher saw is exactly the health part of the audit chain");
    let out = cluster.drctl(&["--json", "audit", "list", "--limit", "1000"]).await?;
    let audit: serde_json::Value = serde_json::from_str(&out.stdout)?;
    let last = seen.last().unwrap().revision;
    let want: Vec<u64> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            let a = e["action"].as_str().unwrap_or_default();
            (a.starts_with("health.") || a.starts_with("agent.")) && e["seq"].as_u64().unwrap() <= last
        })
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    let got: Vec<u64> = seen.iter().map(|e| e.revision).collect();
    ensure!(got == want, "watched revisions {got:?} != audit {want:?}");

    tracing::info!("--- drctl health watch replays from a revision, as JSON lines");
    let from = got[1].to_string();
    let out = cluster.drctl(&["--json", "health", "watch", "--from", &from, "--count", "3"]).await?;
    ensure!(out.code == Some(0), "{out}");
    let revs: Vec<u64> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).map(|v| v["revision"].as_u64().unwrap_or(0)))
        .collect::<Result<_, _>>()?;
    ensure!(revs == got[1..4], "drctl revisions {revs:?} vs {:?}", &got[1..4]);
    cluster.finish();
    Ok(())
}
