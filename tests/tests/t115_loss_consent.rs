//! Asynchronous replication and a standby that has stopped receiving: when eu-west dies, writes
//! it acknowledged are missing on eu-central. The automatic run measures that loss and holds
//! before the promotion until an operator consents naming it; a consent naming another figure
//! is refused. The canary then counts the acknowledged rows that were really lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_tests::cutover::{Env, EnvOptions, canary};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_loss_above_budget_waits_for_consent_naming_it() -> Result<()> {
    let mut env = Env::start_with(115, EnvOptions { witness: true, ..Default::default() }).await?;
    env.apply_playbook("failover", &env.failover_playbook("    automatic: { enabled: true, cooldown: 10m }\n")).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = canary(env.dns.dns_addr(), env.db_ports(), stop.clone());

    tracing::info!("--- the standby stops receiving (its upstream now points nowhere); writes go on");
    env.pg.exec_standby("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1 connect_timeout=1'").await?;
    env.pg.exec_standby("SELECT pg_reload_conf()").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    tracing::info!("--- eu-west dies");
    env.agents[0].kill().await?;
    env.pg.stop_primary_immediate().await?;
    let run = env.wait_run(Duration::from_secs(20), "an automatic run", |r| r.requester == "system").await?;
    let held = env
        .poll_run(&run.run_id, Duration::from_secs(20), "a consent hold", |r| {
            r.state == "held" && r.state_reason.contains("--accept-loss")
        })
        .await?;
    stop.store(true, Ordering::SeqCst);
    let log = writer.await??;
    let figure = held
        .state_reason
        .split("--accept-loss ")
        .nth(1)
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .context("no figure in the hold reason")?
        .to_string();
    let bytes: u64 = figure.parse()?;
    ensure!(bytes > 0, "a loss of 0 bytes needs no consent: {}", held.state_reason);
    ensure!(
        env.pg.scalar_standby("SELECT pg_is_in_recovery()").await?.as_deref() == Some("t"),
        "promoted before consent"
    );

    tracing::info!(bytes, "--- consent naming another figure is refused; naming the loss goes on");
    let wrong = (bytes + 1).to_string();
    let out = env.cluster.drctl(&["--actor", "bob", "approve", &run.run_id, "--accept-loss", &wrong]).await?;
    ensure!(out.code != Some(0), "a wrong figure was accepted: {}", out.stdout);
    ensure!(out.stderr.contains(&figure), "the refusal names the loss: {}", out.stderr);
    let out = env.cluster.drctl(&["--actor", "bob", "approve", &run.run_id, "--accept-loss", &figure]).await?;
    ensure!(out.code == Some(0), "consent: {}{}", out.stdout, out.stderr);
    let done = env.poll_run(&run.run_id, Duration::from_secs(60), "its end", |r| r.ended_unix_ms > 0).await?;
    ensure!(done.state == "succeeded", "{} {}", done.state, done.state_reason);
    let rec: serde_json::Value = serde_json::from_str(&done.record_json)?;
    ensure!(rec["run"]["consent"].as_str().is_some_and(|c| c.starts_with("bob")), "consent: {}", rec["run"]["consent"]);
    let have = env.canary_ids_in_central().await?;
    let lost = log.acked.iter().filter(|id| !have.contains(id)).count();
    tracing::info!(lost, acked = log.acked.len(), bytes, "acknowledged writes lost, as consented");
    ensure!(lost > 0, "the measured loss of {bytes} bytes lost no acknowledged write?");
    Ok(())
}
