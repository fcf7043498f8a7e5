//! Real HTTP latency and errors, measured by a real agent, move a region between up and
//! degraded (and down) with hysteresis; the board, the audit chain, drctl and both /metrics
//! endpoints show it.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use drcut_tests::health::{HEALTH_WAIT, agent_yaml, board, region, wait_region};
use drcut_tests::http_server::http_client;
use drcut_tests::{AgentProc, Cluster, TestHttp};

const HEALTH: &str = "health:\n  down_after: 2\n  up_after: 2\n  tick_ms: 100\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_and_errors_degrade_the_region_and_recover() -> Result<()> {
    let cluster = Cluster::builder(80).nodes(1).with_http().extra_yaml(HEALTH).start().await?;
    cluster.wait_leader(&[1]).await?;
    cluster.add_region(1, "eu-west").await?;
    let app = TestHttp::start("127.0.80.50:0".parse()?).await?;
    let metrics: SocketAddr = "127.0.80.60:9100".parse()?;
    let checks = format!(
        "metrics_listen: \"{metrics}\"\nchecks:\n  - name: wallet-api\n    type: http\n    url: {}\n    interval_ms: 100\n    timeout_ms: 1000\n    window: 5\n    slo: [\"p95_ms <= 150\", \"error_ratio <= 0.2\"]\n",
        app.url("/health")
    );
    let yaml = agent_yaml("agent-eu-west", "eu-west", &[cluster.addr(1).to_string()], &checks);
    let _agent = AgentProc::start(cluster.dir(), "agent-eu-west", &yaml, &[])?;

    tracing::info!("--- healthy: the region comes up");
    let r = wait_region(&cluster, 1, "eu-west", "up", HEALTH_WAIT).await?;
    ensure!(r.checks.len() == 1 && r.checks[0].vantage_agent == "agent-eu-west", "{r:?}");

    tracing::info!("--- 300 ms latency: p95 breaks its SLO, the region degrades");
    app.set_latency(Duration::from_millis(300));
    let r = wait_region(&cluster, 1, "eu-west", "degraded", HEALTH_WAIT).await?;
    ensure!(r.reason.contains("p95_ms <= 150"), "reason names the broken SLO: {}", r.reason);
    let p95 = r.checks[0].values.get("p95_ms").copied().unwrap_or(0.0);
    ensure!(p95 >= 290.0, "measured p95 {p95}");

    tracing::info!("--- latency back to normal: up again once the window clears");
    app.set_latency(Duration::ZERO);
    wait_region(&cluster, 1, "eu-west", "up", HEALTH_WAIT).await?;

    tracing::info!("--- half the requests fail: error ratio breaks its SLO");
    app.set_error_rate(0.5);
    let r = wait_region(&cluster, 1, "eu-west", "degraded", HEALTH_WAIT).await?;
    ensure!(r.reason.contains("error_ratio"), "{}", r.reason);
    app.set_error_rate(0.0);
    wait_region(&cluster, 1, "eu-west", "up", HEALTH_WAIT).await?;

    tracing::info!("--- the app dies: refused connections take the region down");
    app.set_down(true)?;
    let r = wait_region(&cluster, 1, "eu-west", "down", HEALTH_WAIT).await?;
    ensure!(r.reason.contains("1 of 1 vantage points"), "{}", r.reason);
    app.set_down(false)?;
    wait_region(&cluster, 1, "eu-west", "up", HEALTH_WAIT).await?;

    tracing::info!("--- every transition is in the audit chain with its evidence");
    let out = cluster.drctl(&["--json", "audit", "list", "--limit", "1000"]).await?;
    ensure!(out.code == Some(0), "{out}");
    let audit: serde_json::Value = serde_json::from_str(&out.stdout)?;
    let transitions: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "health.region")
        .map(|e| (e["details"]["from"].as_str().unwrap().to_string(), e["details"]["to"].as_str().unwrap().to_string()))
        .collect();
    let want: Vec<(String, String)> = [
        ("unknown", "up"),
        ("up", "degraded"),
        ("degraded", "up"),
        ("up", "degraded"),
        ("degraded", "up"),
        ("up", "down"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    // Coming back from down, the window still holds the failed probes: reachable but breaking
    // error_ratio is degraded until they slide out.
    ensure!(transitions.starts_with(&want), "region transitions {transitions:?}");
    ensure!(transitions.last().map(|t| t.1.as_str()) == Some("up"), "region transitions {transitions:?}");
    let degraded = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "health.region" && e["details"]["to"] == "degraded")
        .unwrap();
    let ev = &degraded["details"]["evidence"]["vantages"]["agent-eu-west"]["checks"]["wallet-api"];
    ensure!(ev["values"]["p95_ms"].as_f64().unwrap_or(0.0) >= 290.0, "evidence carries the value: {ev}");
    cluster.audit_verify_ok().await?;

    tracing::info!("--- drctl shows the board, in text and JSON");
    let out = cluster.drctl(&["status"]).await?;
    ensure!(out.code == Some(0) && out.stdout.contains("wallet-api") && out.stdout.contains("agent-eu-west"), "{out}");
    let out = cluster.drctl(&["--json", "health"]).await?;
    let b: serde_json::Value = serde_json::from_str(&out.stdout)?;
    ensure!(b["live"] == true && b["regions"][0]["checks"][0]["check"] == "wallet-api", "{b}");
    ensure!(b["agents"][0]["connected"] == true, "{b}");

    tracing::info!("--- both processes export metrics");
    let http = http_client();
    let agent_metrics = http.get(format!("http://{metrics}/metrics")).send().await?.text().await?;
    ensure!(
        agent_metrics.contains(
            "drcut_agent_check_value{check=\"wallet-api\",type=\"http\",region=\"eu-west\",metric=\"p95_ms\"}"
        ),
        "agent metrics:\n{agent_metrics}"
    );
    ensure!(agent_metrics.contains("drcut_agent_check_latency_seconds_bucket"), "{agent_metrics}");
    let node_metrics =
        http.get(format!("http://{}/metrics", drcut_tests::cluster::http_addr(80, 1))).send().await?.text().await?;
    ensure!(node_metrics.contains("drcut_region_state{region=\"eu-west\",state=\"up\"} 1"), "{node_metrics}");
    ensure!(node_metrics.contains("drcut_agent_sessions 1"), "{node_metrics}");
    let b = board(&cluster, 1).await?;
    ensure!(region(&b, "eu-west")?.state == "up");
    cluster.finish();
    Ok(())
}
