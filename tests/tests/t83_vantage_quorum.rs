//! A region is declared down only when a quorum of vantage points agree: one agent's broken
//! path to the region (a fault proxy between it and the target) degrades it, never downs it;
//! when every vantage agrees, it goes down, and the audit entry carries each vantage's evidence.

use anyhow::{Result, ensure};
use drcut_tests::health::{HEALTH_WAIT, agent_yaml, wait_region};
use drcut_tests::{AgentProc, Cluster, FaultProxy, TestHttp};

const HEALTH: &str = "health:\n  down_after: 2\n  up_after: 2\n  tick_ms: 100\n";

fn http_check(name: &str, region: &str, url: &str) -> String {
    format!(
        "  - name: {name}\n    type: http\n    target_region: {region}\n    url: {url}\n    interval_ms: 100\n    timeout_ms: 500\n    window: 5\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_vantage_cannot_take_a_region_down_all_of_them_can() -> Result<()> {
    let cluster = Cluster::builder(83).nodes(1).extra_yaml(HEALTH).start().await?;
    cluster.wait_leader(&[1]).await?;
    cluster.add_region(1, "eu-west").await?;
    cluster.add_region(1, "eu-central").await?;
    let west = TestHttp::start("127.0.83.50:0".parse()?).await?;
    // The eu-central agent reaches the eu-west app through a proxy: its own network path.
    let path = FaultProxy::start("127.0.83.51:0".parse()?, west.addr()).await?;
    let coords = [cluster.addr(1).to_string()];

    let own = format!("checks:\n{}", http_check("west-api", "eu-west", &west.url("/health")));
    let _a_west =
        AgentProc::start(cluster.dir(), "agent-west", &agent_yaml("agent-west", "eu-west", &coords, &own), &[])?;
    let peer_url = format!("http://{}/health", path.addr());
    let peer = format!("checks:\n{}", http_check("west-api-from-central", "eu-west", &peer_url));
    let _a_central = AgentProc::start(
        cluster.dir(),
        "agent-central",
        &agent_yaml("agent-central", "eu-central", &coords, &peer),
        &[],
    )?;

    tracing::info!("--- both vantage points see eu-west up");
    let r = wait_region(&cluster, 1, "eu-west", "up", HEALTH_WAIT).await?;
    ensure!(r.reason.contains("2 vantage points"), "{}", r.reason);

    tracing::info!("--- cut eu-central's path to eu-west: one vantage sees it down");
    path.cut();
    let r = wait_region(&cluster, 1, "eu-west", "degraded", HEALTH_WAIT).await?;
    ensure!(r.reason.contains("1 of 2 see it down, below quorum 2"), "{}", r.reason);
    // It stays degraded, never down, for many evaluations.
    drcut_tests::wait::always(
        "eu-west not down on one vantage's word",
        std::time::Duration::from_secs(3),
        async || {
            let b = drcut_tests::health::board(&cluster, 1).await?;
            let r = drcut_tests::health::region(&b, "eu-west")?;
            ensure!(r.state != "down", "declared down: {}", r.reason);
            Ok(())
        },
    )
    .await?;

    tracing::info!("--- the app itself dies: every vantage agrees, the region goes down");
    west.set_down(true)?;
    let r = wait_region(&cluster, 1, "eu-west", "down", HEALTH_WAIT).await?;
    ensure!(r.reason.contains("2 of 2 vantage points see it down (quorum 2)"), "{}", r.reason);

    tracing::info!("--- the audit entry names both vantages and their evidence");
    let out = cluster.drctl(&["--json", "audit", "list", "--limit", "1000"]).await?;
    let audit: serde_json::Value = serde_json::from_str(&out.stdout)?;
    let down = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["action"] == "health.region" && e["details"]["to"] == "down")
        .expect("a down transition");
    let ev = &down["details"]["evidence"];
    ensure!(ev["down"] == 2 && ev["quorum"] == 2, "{ev}");
    for (agent, check) in [("agent-west", "west-api"), ("agent-central", "west-api-from-central")] {
        let c = &ev["vantages"][agent]["checks"][check];
        ensure!(c["reachable"] == false && c["state"] == "down", "{agent}: {c}");
        ensure!(c["error"].as_str().is_some_and(|e| !e.is_empty()), "{agent} evidence names the error: {c}");
    }
    ensure!(ev["vantages"]["agent-central"]["region"] == "eu-central", "{ev}");

    tracing::info!("--- healing brings it back up");
    west.set_down(false)?;
    path.heal();
    wait_region(&cluster, 1, "eu-west", "up", HEALTH_WAIT).await?;
    cluster.audit_verify_ok().await?;
    cluster.finish();
    Ok(())
}
