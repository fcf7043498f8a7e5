//! A region dies without warning: eu-west's PostgreSQL primary and its agent are killed at
//! once. The vantage quorum (eu-central and the witness eu-north) declares eu-west down, the
//! automatic policy starts an unplanned run as `system`, the source-side steps are skipped, the
//! loss is measured (0 acknowledged writes: replication is synchronous) and a write canary
//! confirms it, eu-central is promoted and takes the traffic. When eu-west comes back, its old
//! primary is fenced before it can take a write, and the failback plan says it must be rebuilt.
//!
//! Second case: the coordinator leader is killed right after it started the automatic run; the
//! new leader finishes that run, and there is exactly one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_tests::cutover::{Env, EnvOptions, attempts, canary};
use drcut_tests::health::wait_audit_entry;
use tokio::time::Instant;

const AUTOMATIC: &str = "    automatic: { enabled: true, cooldown: 10m }\n";

/// Kills eu-west's agent and primary database at once; returns when.
async fn lose_west(env: &mut Env) -> Result<Instant> {
    let t0 = Instant::now();
    env.agents[0].kill().await?;
    env.pg.kill9_primary().await?;
    Ok(t0)
}

async fn succeeded(env: &Env, run: &str, timeout: Duration) -> Result<serde_json::Value> {
    let info = env.poll_run(run, timeout, "success", |r| r.state == "succeeded").await?;
    Ok(serde_json::from_str(&info.record_json)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn automatic_failover_loses_nothing_and_the_old_primary_stays_fenced() -> Result<()> {
    let mut env = Env::start_with(110, EnvOptions { witness: true, west_data_dir: true, ..Default::default() }).await?;
    env.synchronous_replication().await?;
    env.apply_playbook("failover", &env.failover_playbook(AUTOMATIC)).await?;

    tracing::info!("--- a canary writes through the loss");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = canary(env.dns.dns_addr(), env.db_ports(), stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;

    tracing::info!("--- kill eu-west's primary and its agent");
    let t0 = lose_west(&mut env).await?;
    let run = env
        .wait_run(Duration::from_secs(20), "an automatic run", |r| r.requester == "system" && r.service == "wallet")
        .await?;
    let started = t0.elapsed();
    let rec = succeeded(&env, &run.run_id, Duration::from_secs(60)).await?;
    let done = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let log = writer.await??;
    tracing::info!(?started, ?done, acked = log.acked.len(), "automatic failover finished");

    tracing::info!("--- the run: automatic, source skipped, loss recorded, fenced by quorum");
    ensure!(rec["automatic"] == true, "not automatic: {}", rec["automatic"]);
    ensure!(run.reason.contains("declared down"), "reason: {}", run.reason);
    let loss = &rec["run"]["loss"];
    ensure!(loss["known"] == true, "loss unknown: {loss}");
    ensure!(loss["synchronous"] == true, "replication was synchronous: {loss}");
    let skipped = rec["run"]["skipped"].as_object().context("no skipped steps")?;
    ensure!(skipped.len() == 2, "freeze and fence skipped: {skipped:?}");
    ensure!(rec["run"]["fencing"]["how"] == "quorum_down", "fencing: {}", rec["run"]["fencing"]);
    ensure!(attempts(&rec, "promote")?.iter().all(|a| a["ok"] == true), "promote attempts");

    tracing::info!("--- nothing acknowledged is lost: every canary id is on eu-central");
    let have = env.canary_ids_in_central().await?;
    let lost: Vec<i64> = log.acked.iter().copied().filter(|id| !have.contains(id)).collect();
    ensure!(lost.is_empty(), "{} acknowledged writes lost: {:?}", lost.len(), &lost[..lost.len().min(10)]);
    ensure!(env.pg.scalar_standby("SELECT pg_is_in_recovery()").await?.as_deref() == Some("f"), "not promoted");

    tracing::info!("--- eu-west returns: its agent first (fences the data directory), then the database");
    env.agents[0].spawn()?;
    wait_audit_entry(&env.cluster, Duration::from_secs(20), "a successful rejoin fence", |e| {
        e["action"] == "fence.rejoin" && e["details"]["ok"] == true
    })
    .await
    .map_err(|e| e.context(env.agents[0].log_tail(30)))?;
    env.pg.restart_primary().await?;
    env.pg.assert_primary_write_fails().await?;

    tracing::info!("--- no automatic failback; the failback plan says what must be rebuilt");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = env.runs().await?;
    ensure!(runs.len() == 1, "one run only, got {}", runs.len());
    let out = env
        .cluster
        .drctl(&["plan", "wallet-failover", "--param", "source=eu-central", "--param", "target=eu-west"])
        .await?;
    ensure!(out.stdout.contains("rebuild_standby"), "failback plan: {}{}", out.stdout, out.stderr);
    ensure!(out.stdout.contains("BLOCKED"), "failback must be blocked until rebuilt: {}", out.stdout);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_during_automatic_failover_completes_once() -> Result<()> {
    let mut env = Env::start_with(111, EnvOptions { witness: true, ..Default::default() }).await?;
    env.apply_playbook("failover", &env.failover_playbook(AUTOMATIC)).await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let leader = env.cluster.wait_leader(&[1, 2, 3]).await?.leader_id;
    lose_west(&mut env).await?;
    let run = env.wait_run(Duration::from_secs(20), "an automatic run", |r| r.requester == "system").await?;
    // The loss is measured from the leader's memory of replication samples: a leader killed
    // before recording it leaves an unknown loss, which (rightly) holds the run for consent.
    // This test is about the run surviving its leader once under way.
    env.poll_run(&run.run_id, Duration::from_secs(10), "its loss recorded", |r| {
        serde_json::from_str::<serde_json::Value>(&r.record_json).is_ok_and(|v| !v["run"]["loss"].is_null())
    })
    .await?;
    tracing::info!(run = %run.run_id, leader, "--- kill the leader that started it");
    env.cluster.kill(leader).await?;
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
    let new = env.cluster.wait_leader(&rest).await?.leader_id;
    ensure!(new != leader, "a new leader");
    let rec = succeeded(&env, &run.run_id, Duration::from_secs(60)).await?;
    let runs = env.runs().await?;
    ensure!(runs.len() == 1, "exactly one automatic run, got {:?}", runs.iter().map(|r| &r.run_id).collect::<Vec<_>>());
    // The promotion happened once: every recorded promote attempt agrees and eu-central is one
    // timeline past where it started.
    ensure!(attempts(&rec, "promote")?.iter().all(|a| a["ok"] == true), "promote attempts");
    let tli = env.pg.scalar_standby("SELECT timeline_id FROM pg_control_checkpoint()").await?;
    tracing::info!(?tli, "eu-central timeline");
    env.cluster.start_node(leader).await?;
    let out = env.cluster.drctl(&["audit", "verify"]).await?;
    ensure!(out.code == Some(0), "audit verify: {}{}", out.stdout, out.stderr);
    Ok(())
}
