//! The coordinator leader is SIGKILLed in the middle of a cutover, at the two most delicate
//! points: (a) right after it committed and sent `promote`, the irreversible step, and (b)
//! during the dwell after the first traffic phase. Either way the new leader picks the run up
//! from the replicated record and finishes it: `succeeded`, no acknowledged canary write lost,
//! all traffic on eu-central, and the promotion took effect exactly once (every recorded
//! promote attempt agrees, and the new primary is exactly one timeline past the old one).
//! The killed node then restarts, catches up, and the audit chain verifies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_tests::cutover::{Env, attempts, canary, run_record, watch_run_until};

/// Where the leader dies.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// The `promote` intent is committed (and the command sent): the run's in-flight work is
    /// the promotion, or it has just finished.
    Promote,
    /// The first traffic phase is done and the run dwells before its gate.
    ShiftDwell,
}

async fn leader_dies_mid_cutover(block: u8, at: KillAt) -> Result<()> {
    let mut env = Env::start(block).await?;
    let all = [1, 2, 3];
    let old = env.cluster.wait_leader(&all).await?;
    let (west_tli, central_tli) = env.timelines().await?;
    ensure!(west_tli == central_tli, "before: eu-west on timeline {west_tli}, eu-central on {central_tli}");

    tracing::info!("--- a canary writer runs through the cutover");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = canary(env.dns.dns_addr(), env.db_ports(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    tracing::info!("--- start a cutover (no approvals, 3 s dwell)");
    let run = env.start_cutover(0, "3s").await?;

    tracing::info!(?at, leader = old.node_id, "--- follow the run on the leader until the kill point");
    let rec =
        watch_run_until(&env.cluster, old.node_id, &run, Duration::from_secs(45), &format!("{at:?}"), |rec| match at {
            KillAt::Promote => {
                let in_flight = &rec["run"]["in_flight"]["work"];
                let promote = drcut_tests::cutover::step_index(rec, "promote").ok().map(|i| i as u64);
                (in_flight["step"].as_u64() == promote && in_flight["compensation"] == false)
                    || attempts(rec, "promote").is_ok_and(|a| !a.is_empty())
            }
            KillAt::ShiftDwell => {
                rec["run"]["dwell_until_ms"].is_i64()
                    && attempts(rec, "shift")
                        .is_ok_and(|a| a.iter().any(|a| a["ok"] == true && a["work"]["phase"] == 0))
            }
        })
        .await?;
    env.cluster.kill(old.node_id).await?;
    tracing::info!(
        in_flight = %rec["run"]["in_flight"],
        dwell_until_ms = %rec["run"]["dwell_until_ms"],
        history = rec["run"]["history"].as_array().map(|h| h.len()).unwrap_or(0),
        "--- leader {} killed (SIGKILL)",
        old.node_id
    );
    if let KillAt::Promote = at
        && !rec["run"]["in_flight"].is_object()
    {
        // The watch coalesces revisions: the promotion finished before the kill.
        tracing::warn!("promote had already finished when the leader was killed");
    }

    tracing::info!("--- the survivors elect a new leader that finishes the run");
    let survivors = env.cluster.running();
    let new = env.cluster.wait_leader_after(&survivors, old.term).await?;
    ensure!(new.node_id != old.node_id);
    let watched =
        tokio::time::timeout(Duration::from_secs(60), env.cluster.drctl_at(&survivors, &["run", "watch", &run]))
            .await
            .context("run did not end")??;
    ensure!(
        watched.code == Some(0),
        "run did not succeed:\n{watched}\n{}\n{}",
        env.agents[0].log_tail(30),
        env.agents[1].log_tail(30)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let log = writer.await??;

    tracing::info!("--- the record: succeeded, every step done, the promotion recorded consistently");
    let (info, rec) = run_record(&env.cluster, new.node_id, &run).await?;
    ensure!(info.state == "succeeded", "{info:?}");
    for s in ["freeze", "catch-up", "fence", "promote", "repoint", "unfreeze", "warm", "shift", "smoke"] {
        ensure!(attempts(&rec, s)?.iter().any(|a| a["ok"] == true), "step {s} not recorded ok");
    }
    ensure!(
        !rec["run"]["history"].as_array().context("history")?.iter().any(|a| a["work"]["compensation"] == true),
        "nothing was compensated"
    );
    let promote = attempts(&rec, "promote")?;
    let oks = promote.iter().filter(|a| a["ok"] == true).count();
    ensure!(
        oks == 1 && promote.last().is_some_and(|a| a["ok"] == true),
        "promote: failed attempts (if any) then exactly one success: {promote:?}"
    );
    // A fresh promotion says so; a retry after a promotion that went through says "already".
    let fresh = promote.iter().filter(|a| a["detail"].as_str().is_some_and(|d| d.contains("promoted"))).count();
    ensure!(fresh >= 1, "the successful promote reports the promotion: {promote:?}");
    let agent_log = format!("{}{}", env.agents[1].stdout(), env.agents[1].stderr());
    let starts = agent_log
        .lines()
        .filter(|l| l.contains("step start") && l.contains("step=promote") && l.contains(run.as_str()))
        .count();
    ensure!(
        starts == promote.len(),
        "the agent executed promote {starts} time(s) for {} recorded attempt(s): a resent attempt must be answered from the record, not run again",
        promote.len()
    );

    tracing::info!("--- the promotion took effect once: the new primary is exactly one timeline ahead");
    let (west, central) = env.timelines().await?;
    ensure!(
        west == west_tli && central == west_tli + 1,
        "timelines: eu-west {west_tli} -> {west}, eu-central {central_tli} -> {central}"
    );

    tracing::info!("--- every acknowledged write is on the new primary; the old one refuses writes");
    let present = env.canary_ids_in_central().await?;
    let lost: Vec<i64> = log.acked.iter().copied().filter(|id| !present.contains(id)).collect();
    ensure!(lost.is_empty(), "{} acknowledged writes lost: {:?}", lost.len(), &lost[..lost.len().min(10)]);
    ensure!(log.acked.len() > 20, "the writer wrote: {}", log.acked.len());
    let after = log.attempts.iter().rev().take(5).filter(|(_, ok)| *ok).count();
    ensure!(after > 0, "writes succeed again after the cutover");
    ensure!(
        env.pg.exec_primary("INSERT INTO canary (id) VALUES (-1)").await.is_err(),
        "the old primary must refuse writes"
    );
    tracing::info!(acked = log.acked.len(), gap_ms = log.longest_gap().as_millis() as u64, "canary");

    tracing::info!("--- DNS: everyone resolves to eu-central");
    ensure!(env.dns.query_a("wallet.gslb.example.").await? == vec![env.central_ip()]);
    ensure!(env.dns.query_a("wallet-db.gslb.example.").await? == vec![env.central_ip()]);

    tracing::info!("--- the killed node restarts, catches up, and the audit chain verifies");
    env.cluster.start_node(old.node_id).await?;
    env.cluster.wait_converged(&all).await?;
    let (info, _) = run_record(&env.cluster, old.node_id, &run).await?;
    ensure!(info.state == "succeeded", "the restarted node sees the run succeeded: {info:?}");
    env.cluster.audit_verify_ok().await?;
    env.cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_right_after_promote_was_sent() -> Result<()> {
    leader_dies_mid_cutover(97, KillAt::Promote).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_during_the_shift_dwell() -> Result<()> {
    leader_dies_mid_cutover(98, KillAt::ShiftDwell).await
}
