//! Failback after an unplanned failover is a planned cutover in the other direction, gated like
//! any other. eu-west's old primary was fenced when it returned; the failback plan says it must
//! be rebuilt, a failback playbook without `rebuild_standby` is refused, and the one that
//! rebuilds it first (pg_rewind) moves the primary back with every acknowledged write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use drcut_tests::cutover::{Env, EnvOptions, canary};
use drcut_tests::health::{HEALTH_WAIT, wait_audit_entry, wait_region};

async fn wait_ended(env: &Env, run: &str, timeout: Duration) -> Result<drcut_proto::v1::RunInfo> {
    env.poll_run(run, timeout, "its end", |r| r.ended_unix_ms > 0).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failback_rebuilds_the_old_primary_then_moves_back() -> Result<()> {
    let mut env = Env::start_with(116, EnvOptions { witness: true, west_data_dir: true, ..Default::default() }).await?;
    env.synchronous_replication().await?;
    env.apply_playbook("failover", &env.failover_playbook("    automatic: { enabled: true, cooldown: 10m }\n")).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = canary(env.dns.dns_addr(), env.db_ports(), stop.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;

    tracing::info!("--- eu-west lost: automatic failover to eu-central");
    env.agents[0].kill().await?;
    env.pg.kill9_primary().await?;
    let run = env.wait_run(Duration::from_secs(20), "automatic run", |r| r.requester == "system").await?;
    let r = wait_ended(&env, &run.run_id, Duration::from_secs(60)).await?;
    ensure!(r.state == "succeeded", "failover {} {}", r.state, r.state_reason);

    tracing::info!("--- eu-west returns fenced");
    env.agents[0].spawn()?;
    wait_audit_entry(&env.cluster, Duration::from_secs(20), "a rejoin fence", |e| {
        e["action"] == "fence.rejoin" && e["details"]["ok"] == true
    })
    .await?;
    env.pg.restart_primary().await?;
    env.pg.assert_primary_write_fails().await?;
    let leader = env.cluster.wait_leader(&[1, 2, 3]).await?.leader_id;
    wait_region(&env.cluster, leader, "eu-west", "up", HEALTH_WAIT).await?;

    tracing::info!("--- a failback without a rebuild is refused, and says why");
    let no_rebuild = env.failback_playbook().replace("wallet-failback", "wallet-failback-bare");
    let no_rebuild: String =
        no_rebuild.lines().filter(|l| !l.contains("id: rebuild")).map(|l| format!("{l}\n")).collect();
    env.apply_playbook("failback-bare", &no_rebuild).await?;
    let out = env.cluster.drctl(&["cutover", "start", "wallet-failback-bare", "--reason", "failback"]).await?;
    ensure!(out.code != Some(0), "a failback onto an unrebuilt old primary started");
    ensure!(out.stderr.contains("rebuild_standby"), "refusal: {}", out.stderr);

    tracing::info!("--- the failback playbook rebuilds it first, then moves the primary back");
    env.apply_playbook("failback", &env.failback_playbook()).await?;
    let plan = env.cluster.drctl(&["plan", "wallet-failback"]).await?;
    ensure!(plan.stdout.contains("pg_rewind"), "plan: {}", plan.stdout);
    let out = env.cluster.drctl(&["--json", "cutover", "start", "wallet-failback", "--reason", "failback"]).await?;
    ensure!(out.code == Some(0), "failback start: {}{}", out.stdout, out.stderr);
    let id = drcut_tests::cutover::started_run_id(&out.stdout)?;
    let done = wait_ended(&env, &id, Duration::from_secs(120)).await?;
    ensure!(done.state == "succeeded", "failback {} {}", done.state, done.state_reason);
    let rec: serde_json::Value = serde_json::from_str(&done.record_json)?;
    let method = rec["run"]["outputs"]["rebuild"]["method"].clone();
    tracing::info!(%method, "rebuilt");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let log = writer.await??;

    ensure!(env.pg.scalar_primary("SELECT pg_is_in_recovery()").await?.as_deref() == Some("f"), "west not primary");
    let rows = env.pg.query_primary("SELECT id FROM canary").await?;
    let have: std::collections::BTreeSet<i64> =
        rows.iter().filter_map(|r| r[0].as_ref().and_then(|v| v.parse().ok())).collect();
    let lost: Vec<i64> = log.acked.iter().copied().filter(|id| !have.contains(id)).collect();
    ensure!(lost.is_empty(), "{} acknowledged writes missing on eu-west after failback", lost.len());
    let st = env.cluster.drctl(&["--json", "status"]).await?;
    let v: serde_json::Value = serde_json::from_str(st.stdout.lines().last().unwrap_or_default())?;
    let wallet = v["services"].as_array().and_then(|a| a.iter().find(|s| s["service"] == "wallet").cloned());
    ensure!(
        wallet.as_ref().is_some_and(|w| w["fences"].as_array().is_some_and(|f| f.is_empty())),
        "the rebuild cleared eu-west's fence order: {wallet:?}"
    );
    Ok(())
}
