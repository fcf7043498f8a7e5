//! Agents survive a coordinator leader kill: they reconnect to the new leader on their own and
//! keep reporting there, so health keeps moving after a failover.

use std::time::Duration;

use anyhow::{Result, ensure};
use drcut_tests::health::{HEALTH_WAIT, agent_yaml, board, region, wait_region};
use drcut_tests::{AgentProc, Cluster, TestHttp, wait};

const HEALTH: &str = "health:\n  down_after: 2\n  up_after: 2\n  tick_ms: 100\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reports_to_the_new_leader_after_a_leader_kill() -> Result<()> {
    let mut cluster = Cluster::builder(84).nodes(3).extra_yaml(HEALTH).start().await?;
    let all = [1, 2, 3];
    let leader = cluster.wait_leader(&all).await?.leader_id;
    cluster.add_region(leader, "eu-west").await?;
    let app = TestHttp::start("127.0.84.50:0".parse()?).await?;
    let coords: Vec<String> = all.iter().map(|&i| cluster.addr(i).to_string()).collect();
    let checks = format!(
        "checks:\n  - name: api\n    type: http\n    url: {}\n    interval_ms: 100\n    timeout_ms: 500\n    window: 5\n    slo: [\"p95_ms <= 150\"]\n",
        app.url("/health")
    );
    // The agent is told about every node; it must find the leader by itself.
    let mut agent =
        AgentProc::start(cluster.dir(), "agent", &agent_yaml("agent-eu-west", "eu-west", &coords, &checks), &[])?;
    wait_region(&cluster, leader, "eu-west", "up", HEALTH_WAIT).await?;

    tracing::info!("--- kill -9 the leader (node {leader})");
    cluster.kill(leader).await?;
    let survivors: Vec<u64> = all.iter().copied().filter(|&i| i != leader).collect();
    let new_leader = cluster.wait_leader(&survivors).await?.leader_id;

    tracing::info!("--- the agent reconnects to node {new_leader} and its reports arrive there");
    wait::until("fresh reports from the agent on the new leader", HEALTH_WAIT, async || {
        let b = board(&cluster, new_leader).await?;
        ensure!(b.live && b.node_id == new_leader, "board from node {} live={}", b.node_id, b.live);
        ensure!(
            b.agents.iter().any(|a| a.agent_id == "agent-eu-west" && a.connected),
            "agent not connected: {:?}",
            b.agents
        );
        let r = region(&b, "eu-west")?;
        ensure!(
            r.checks.iter().any(|c| c.vantage_agent == "agent-eu-west" && !c.stale),
            "no fresh check: {:?}",
            r.checks
        );
        Ok(())
    })
    .await?;
    // The replicated state carried over: the new leader did not re-announce "up".
    ensure!(region(&board(&cluster, new_leader).await?, "eu-west")?.state == "up");

    tracing::info!("--- health still moves: latency degrades the region, seen by the new leader");
    app.set_latency(Duration::from_millis(300));
    wait_region(&cluster, new_leader, "eu-west", "degraded", HEALTH_WAIT).await?;
    app.set_latency(Duration::ZERO);
    wait_region(&cluster, new_leader, "eu-west", "up", HEALTH_WAIT).await?;
    ensure!(agent.exited().is_none(), "the agent must keep running");

    tracing::info!("--- the old leader restarts; the chain holds one unknown->up for the region");
    cluster.start_node(leader).await?;
    cluster.wait_converged(&all).await?;
    let out = cluster.drctl(&["--json", "audit", "list", "--limit", "1000"]).await?;
    let audit: serde_json::Value = serde_json::from_str(&out.stdout)?;
    let ups = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "health.region" && e["details"]["from"] == "unknown")
        .count();
    ensure!(ups == 1, "region announced from unknown {ups} times");
    cluster.audit_verify_ok().await?;
    cluster.finish();
    Ok(())
}
