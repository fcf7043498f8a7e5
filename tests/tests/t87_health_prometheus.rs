//! Business SLIs arrive through a Prometheus-compatible query API: the deposit success ratio
//! falling below its SLO degrades the region; recovering brings it back.

use anyhow::{Result, ensure};
use drcut_tests::health::{HEALTH_WAIT, agent_yaml, wait_region};
use drcut_tests::{AgentProc, Cluster, TestHttp};

const HEALTH: &str = "health:\n  down_after: 2\n  up_after: 2\n  tick_ms: 100\n";
const QUERY: &str = "sum(rate(deposits_ok[1m])) / sum(rate(deposits_total[1m]))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposit_success_ratio_below_slo_degrades_the_region() -> Result<()> {
    let cluster = Cluster::builder(87).nodes(1).extra_yaml(HEALTH).start().await?;
    cluster.wait_leader(&[1]).await?;
    cluster.add_region(1, "eu-west").await?;
    let prom = TestHttp::start("127.0.87.50:0".parse()?).await?;
    prom.set_prom_value(0.9995);
    let checks = format!(
        "resources:\n  prometheus:\n    metrics:\n      base_url: {}\nchecks:\n  - name: deposits\n    type: prometheus\n    resource: metrics\n    query: '{QUERY}'\n    interval_ms: 100\n    slo: [\"value >= 0.9985\"]\n",
        prom.url("").trim_end_matches('/')
    );
    let _agent = AgentProc::start(
        cluster.dir(),
        "agent",
        &agent_yaml("agent-eu-west", "eu-west", &[cluster.addr(1).to_string()], &checks),
        &[],
    )?;

    let r = wait_region(&cluster, 1, "eu-west", "up", HEALTH_WAIT).await?;
    ensure!(r.checks[0].values.get("value") == Some(&0.9995), "{:?}", r.checks[0].values);
    ensure!(prom.last_prom_query().as_deref() == Some(QUERY), "query sent: {:?}", prom.last_prom_query());

    tracing::info!("--- deposits start failing: 99 % success breaks the 99.85 % SLO");
    prom.set_prom_value(0.99);
    let r = wait_region(&cluster, 1, "eu-west", "degraded", HEALTH_WAIT).await?;
    ensure!(r.reason.contains("value >= 0.9985") && r.reason.contains("0.99"), "{}", r.reason);

    tracing::info!("--- recovered");
    prom.set_prom_value(0.9999);
    wait_region(&cluster, 1, "eu-west", "up", HEALTH_WAIT).await?;

    tracing::info!("--- no data is not good data: an empty result degrades too");
    prom.clear_prom_value();
    let r = wait_region(&cluster, 1, "eu-west", "degraded", HEALTH_WAIT).await?;
    ensure!(r.reason.contains("deposits"), "{}", r.reason);
    cluster.finish();
    Ok(())
}
