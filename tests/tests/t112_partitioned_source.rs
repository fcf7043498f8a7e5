//! eu-west's agent is cut off from every coordinator while its database stays up (and keeps
//! answering the vantage points, so eu-west is not down). An operator starts an unplanned
//! failover anyway. The old primary may still take writes, so:
//!
//! - with self-fencing on (`self_fence: { after: 3s }`), the agent fences its own primary once
//!   its lease lapses — read-only within the set time — and the run, having waited out the same
//!   delay, counts it as fenced and promotes eu-central;
//! - with it off, the run holds before the source's first step and does not promote until an
//!   operator overrides, naming the risk.

use std::time::Duration;

use anyhow::{Result, ensure};
use drcut_tests::cutover::{Env, EnvOptions};
use tokio::time::Instant;

async fn start_unplanned(env: &Env) -> Result<String> {
    env.apply_playbook("failover", &env.failover_playbook("")).await?;
    let out = env
        .cluster
        .drctl(&["--json", "cutover", "start", "wallet-failover", "--unplanned", "--reason", "eu-west unreachable"])
        .await?;
    ensure!(out.code == Some(0), "start: {}{}", out.stdout, out.stderr);
    drcut_tests::cutover::started_run_id(&out.stdout)
}

async fn wait_state(env: &Env, id: &str, state: &str, timeout: Duration) -> Result<drcut_proto::v1::RunInfo> {
    env.poll_run(id, timeout, state, |r| r.state == state).await
}

async fn west_read_only(env: &Env) -> Result<bool> {
    Ok(env.pg.exec_primary("INSERT INTO canary (id) VALUES (nextval('probe'))").await.is_err())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_self_fencing_the_run_holds_until_an_override_naming_the_risk() -> Result<()> {
    let env =
        Env::start_with(112, EnvOptions { witness: true, west_agent_via_proxy: true, ..Default::default() }).await?;
    env.pg.exec_primary("CREATE SEQUENCE probe").await?;
    tracing::info!("--- cut eu-west's agent off from the coordinators; its database stays up");
    for p in &env.west_proxies {
        p.cut();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let id = start_unplanned(&env).await?;
    let held = wait_state(&env, &id, "held", Duration::from_secs(10)).await?;
    ensure!(held.state_reason.contains("override"), "hold reason: {}", held.state_reason);
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(env.run(&id).await?.state == "held", "still held without an override");
    ensure!(env.pg.scalar_standby("SELECT pg_is_in_recovery()").await?.as_deref() == Some("t"), "promoted unfenced");
    ensure!(!west_read_only(&env).await?, "nobody fenced eu-west: it still takes writes");

    tracing::info!("--- an override must name the risk");
    let out = env.cluster.drctl(&["run", "override", &id, "--risk", "ok"]).await?;
    ensure!(out.code != Some(0), "a two-letter risk was accepted");
    let out = env
        .cluster
        .drctl(&["run", "override", &id, "--risk", "eu-west primary may still take writes; ops bridge checked"])
        .await?;
    ensure!(out.code == Some(0), "override: {}{}", out.stdout, out.stderr);
    let done = wait_state(&env, &id, "succeeded", Duration::from_secs(60)).await?;
    let rec: serde_json::Value = serde_json::from_str(&done.record_json)?;
    ensure!(rec["run"]["fencing"]["how"] == "override", "fencing: {}", rec["run"]["fencing"]);
    ensure!(env.pg.scalar_standby("SELECT pg_is_in_recovery()").await?.as_deref() == Some("f"), "not promoted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_self_fencing_the_old_primary_turns_read_only_and_the_run_goes_on() -> Result<()> {
    let opt = EnvOptions {
        witness: true,
        west_agent_via_proxy: true,
        west_db_extra: ", self_fence: { after: 3s }".into(),
        ..Default::default()
    };
    let env = Env::start_with(113, opt).await?;
    env.pg.exec_primary("CREATE SEQUENCE probe").await?;
    ensure!(!west_read_only(&env).await?, "eu-west writable before the cut");
    tracing::info!("--- cut eu-west's agent off from the coordinators");
    let cut = Instant::now();
    for p in &env.west_proxies {
        p.cut();
    }
    let id = start_unplanned(&env).await?;
    let deadline = cut + Duration::from_secs(3 + 2);
    while !west_read_only(&env).await? {
        ensure!(Instant::now() < deadline, "eu-west still writable 5 s after the cut: {}", env.agents[0].log_tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fenced_after = cut.elapsed();
    tracing::info!(?fenced_after, "eu-west self-fenced");
    let done = wait_state(&env, &id, "succeeded", Duration::from_secs(60)).await?;
    let rec: serde_json::Value = serde_json::from_str(&done.record_json)?;
    ensure!(rec["run"]["fencing"]["how"] == "self_fence", "fencing: {}", rec["run"]["fencing"]);
    ensure!(env.pg.scalar_standby("SELECT pg_is_in_recovery()").await?.as_deref() == Some("f"), "not promoted");
    ensure!(west_read_only(&env).await?, "eu-west writable again");
    Ok(())
}
