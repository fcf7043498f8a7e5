//! Health figures at the default settings: detection time (fault → region declared down) for
//! refused connections and for a silent packet drop, over N trials each; agent CPU and RSS
//! running 200 checks at 1 s; coordinator CPU with 50 simulated agents × 20 checks at 1 s.
//! Prints figures, asserts nothing. Run through `scripts/bench-health`.

use anyhow::{Context, Result};
use drcut_proto::v1::agent_link_client::AgentLinkClient;
use drcut_proto::v1::agent_message::Body;
use drcut_proto::v1::{AgentMessage, CheckInfo, CheckReport, Hello, WatchHealthRequest};
use drcut_tests::health::{HEALTH_WAIT, agent_yaml, wait_region};
use drcut_tests::{AgentProc, Cluster, FaultProxy, TestHttp};
use std::time::Duration;
use tokio::time::Instant;
use tokio_stream::StreamExt;

const BLOCK: u8 = 201;

fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("VmRSS")?
        .parse()?;
    Ok(kb / 1024.0)
}

/// CPU use of `pid` over `secs` seconds, as a percentage of one core.
async fn cpu_percent(pid: u32, secs: u64) -> Result<f64> {
    let hz = 100.0; // USER_HZ on Linux
    let t0 = cpu_ticks(pid)?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let t1 = cpu_ticks(pid)?;
    Ok((t1 - t0) as f64 / hz / secs as f64 * 100.0)
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    format!("min {}  median {}  max {}", ms(v[0]), ms(v[v.len() / 2]), ms(*v.last().unwrap()))
}

async fn wait_down_event(stream: &mut tonic::Streaming<drcut_proto::v1::HealthEvent>) -> Result<()> {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), stream.next()).await?.context("stream ended")??;
        if ev.kind == "health.region" && ev.region == "eu-west" && ev.to == "down" {
            return Ok(());
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let trials: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(10);
    // Default settings everywhere: no health section, no check timings in the agents.
    let cluster = Cluster::builder(BLOCK).nodes(1).start().await?;
    cluster.wait_leader(&[1]).await?;
    cluster.add_region(1, "eu-west").await?;
    cluster.add_region(1, "eu-central").await?;
    let app = TestHttp::start(format!("127.0.{BLOCK}.50:0").parse()?).await?;
    let coords = [cluster.addr(1).to_string()];
    // Each vantage reaches the app through its own proxy (its network path).
    let p_west = FaultProxy::start(format!("127.0.{BLOCK}.51:0").parse()?, app.addr()).await?;
    let p_central = FaultProxy::start(format!("127.0.{BLOCK}.52:0").parse()?, app.addr()).await?;
    let check = |name: &str, url: String| {
        format!("checks:\n  - name: {name}\n    type: http\n    target_region: eu-west\n    url: {url}\n")
    };
    let _w = AgentProc::start(
        cluster.dir(),
        "agent-west",
        &agent_yaml("agent-west", "eu-west", &coords, &check("api", format!("http://{}/health", p_west.addr()))),
        &[],
    )?;
    let _c = AgentProc::start(
        cluster.dir(),
        "agent-central",
        &agent_yaml(
            "agent-central",
            "eu-central",
            &coords,
            &check("west-api", format!("http://{}/health", p_central.addr())),
        ),
        &[],
    )?;
    println!(
        "detection: 1 coordinator, 2 vantage agents (eu-west, eu-central) probing one eu-west HTTP app, default settings"
    );
    wait_region(&cluster, 1, "eu-west", "up", HEALTH_WAIT).await?;

    let mut client = cluster.client(1)?;
    for (fault, label) in [(0, "process dies (connection refused)"), (1, "silent packet drop (blackhole)")] {
        let mut times = Vec::new();
        for trial in 0..trials {
            let head = client.get_status(drcut_proto::v1::GetStatusRequest::default()).await?.into_inner().audit_len;
            let mut stream = client.watch_health(WatchHealthRequest { from_revision: head + 1 }).await?.into_inner();
            // Random phase against the probes' cadence.
            tokio::time::sleep(Duration::from_millis(37 * trial as u64 % 300)).await;
            let t0 = Instant::now();
            if fault == 0 {
                app.set_down(true)?;
            } else {
                p_west.blackhole();
                p_central.blackhole();
            }
            wait_down_event(&mut stream).await?;
            let dt = t0.elapsed();
            times.push(dt);
            println!("  {label}, trial {:>2}: region down after {:.0} ms", trial + 1, dt.as_secs_f64() * 1000.0);
            if fault == 0 {
                app.set_down(false)?;
            } else {
                p_west.heal();
                p_central.heal();
            }
            wait_region(&cluster, 1, "eu-west", "up", HEALTH_WAIT).await?;
        }
        println!("detection, {label} ({trials} trials): {}", stats(times));
    }

    // --- agent cost: 200 HTTP checks at 1 s.
    let mut checks = String::from("checks:\n");
    for i in 0..200 {
        checks.push_str(&format!(
            "  - name: c{i:03}\n    type: http\n    url: {}\n    interval_ms: 1000\n",
            app.url("/health")
        ));
    }
    let big = AgentProc::start(cluster.dir(), "agent-200", &agent_yaml("agent-200", "eu-west", &coords, &checks), &[])?;
    let pid = big.pid().context("agent pid")?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu = cpu_percent(pid, 20).await?;
    println!("agent running 200 HTTP checks at 1 s: CPU {cpu:.1} % of one core, RSS {:.1} MiB", rss_mib(pid)?);
    drop(big);

    // --- coordinator cost: 50 simulated agents x 20 checks reporting every second.
    let node_pid = cluster.node(1)?.pid().context("node pid")?;
    let idle = cpu_percent(node_pid, 5).await?;
    let mut sims = Vec::new();
    for a in 0..50 {
        let addr = format!("http://{}", cluster.addr(1));
        sims.push(tokio::spawn(async move {
            let ch = tonic::transport::Endpoint::from_shared(addr)?.connect().await?;
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            let id = format!("sim-{a:02}");
            let checks: Vec<CheckInfo> = (0..20)
                .map(|c| CheckInfo {
                    name: format!("c{c:02}"),
                    r#type: "http".into(),
                    target_region: "eu-central".into(),
                    slo: vec!["p95_ms <= 300".into()],
                    interval_ms: 1000,
                    timeout_ms: 400,
                })
                .collect();
            let hello = Hello {
                agent_id: id,
                region: "eu-central".into(),
                version: "sim".into(),
                capabilities: vec![],
                checks,
                self_fence_after_ms: 0,
            };
            tx.send(AgentMessage { body: Some(Body::Hello(hello)) }).await?;
            let mut inbound =
                AgentLinkClient::new(ch).session(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
            tokio::spawn(async move { while let Some(Ok(_)) = inbound.next().await {} });
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            for seq in 0.. {
                tick.tick().await;
                for c in 0..20 {
                    let r = CheckReport {
                        check: format!("c{c:02}"),
                        target_region: "eu-central".into(),
                        seq,
                        reachable: true,
                        ok: true,
                        slo_ok: true,
                        values: [("p95_ms".to_string(), 12.0), ("error_ratio".to_string(), 0.0)].into_iter().collect(),
                        ..Default::default()
                    };
                    if tx.send(AgentMessage { body: Some(Body::Report(r)) }).await.is_err() {
                        return anyhow::Ok(());
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let busy = cpu_percent(node_pid, 20).await?;
    println!(
        "coordinator with 50 simulated agents x 20 checks at 1 s (1000 reports/s): CPU {busy:.1} % of one core (idle {idle:.1} %), RSS {:.1} MiB",
        rss_mib(node_pid)?
    );
    for s in sims {
        s.abort();
    }
    cluster.finish();
    Ok(())
}
