//! The quarterly region-loss GameDay, end to end against real components: the drill stops
//! eu-west's primary PostgreSQL hard (`pg_ctl stop -m immediate`, through eu-west's agent),
//! the health model detects it and declares eu-west down, the drill runs the unplanned
//! failover playbook, the write canary counts acknowledged rows missing on the new primary
//! (none: replication is synchronous), the restore reverts the fault and fails back through
//! its own gated cutover (rebuild first), and the report carries the measured RTO phases.

use std::time::Duration;

use anyhow::{Result, ensure};
use drcut_tests::cutover::{Env, EnvOptions};
use drcut_tests::drill::{apply_drill, region_loss_drill, started_drill_id, wait_drill};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn region_loss_drill_measures_rto_and_rpo_and_restores() -> Result<()> {
    let env = Env::start_with(130, EnvOptions { witness: true, west_data_dir: true, ..Default::default() }).await?;
    env.synchronous_replication().await?;
    env.apply_playbook("failover", &env.failover_playbook("")).await?;
    env.apply_playbook("failback", &env.failback_playbook()).await?;
    let out = apply_drill(&env.cluster, "region-loss", &region_loss_drill(&env)).await?;
    ensure!(out.code == Some(0), "apply: {out}");

    let out = env.cluster.drctl(&["--json", "--actor", "gameday-lead", "drill", "run", "region-loss"]).await?;
    ensure!(out.code == Some(0), "run: {out}");
    let id = started_drill_id(&out.stdout)?;
    let rec = wait_drill(&env.cluster, &id, Duration::from_secs(240), "its end", |r| r["state"] == "done").await?;
    println!("events:\n{}", serde_json::to_string_pretty(&rec["events"])?);
    ensure!(rec["outcome"] == "passed", "outcome {} ({})", rec["outcome"], rec["outcome_detail"]);

    let m = &rec["milestones"];
    let at = |k: &str| m[k].as_i64();
    let order = ["fault_injected", "first_failing_check", "region_declared_down", "run_started", "writes_available"];
    for pair in order.windows(2) {
        let (a, b) = (at(pair[0]), at(pair[1]));
        ensure!(a.is_some() && b.is_some() && a <= b, "{} {a:?} then {} {b:?}", pair[0], pair[1]);
    }
    for k in ["traffic_100", "dns_converged", "response_ended", "restore_started", "restored"] {
        ensure!(at(k).is_some(), "milestone {k} missing: {m}");
    }
    let acked: u64 = drcut_tests::drill::acked(&rec);
    ensure!(acked > 10, "the canary wrote before and after the failover: {acked} acknowledged");
    ensure!(rec["canary"]["missing"].as_array().is_some_and(|m| m.is_empty()), "RPO: {}", rec["canary"]);

    // Cross-check the canary's account on the primary it failed back to.
    let rows = env.pg.query_primary(&format!("SELECT count(*) FROM drcut_canary WHERE drill = '{id}'")).await?;
    let stored: u64 = rows[0][0].as_deref().unwrap_or("0").parse()?;
    ensure!(stored >= acked, "eu-west holds {stored} canary rows, {acked} were acknowledged");
    ensure!(
        env.pg.scalar_primary("SELECT pg_is_in_recovery()").await?.as_deref() == Some("f"),
        "eu-west is primary again"
    );

    let report: serde_json::Value =
        serde_json::from_str(&drcut_tests::drill::drill_run(&env.cluster, &id).await?.0.report_json)?;
    println!("{}", serde_json::to_string_pretty(&report["phases"]).unwrap_or_default());
    let md = env.cluster.drctl(&["drill", "report", &id]).await?;
    ensure!(md.code == Some(0), "report: {md}");
    println!("{}", md.stdout);
    for needle in ["RPO", "detection", "region-loss", &rec["drill_hash"].as_str().unwrap_or("?")[..12]] {
        ensure!(md.stdout.contains(needle), "the Markdown report lacks {needle:?}");
    }

    tracing::info!("--- this failback left eu-central fenced, not streaming: the next drill must not start");
    tokio::time::sleep(Duration::from_secs(11)).await;
    let out = env.cluster.drctl(&["--json", "drill", "run", "region-loss"]).await?;
    ensure!(out.code == Some(0), "run: {out}");
    let id = started_drill_id(&out.stdout)?;
    let rec = wait_drill(&env.cluster, &id, Duration::from_secs(30), "its end", |r| r["state"] == "done").await?;
    ensure!(rec["outcome"] == "refused", "outcome {} ({})", rec["outcome"], rec["outcome_detail"]);
    let detail = rec["outcome_detail"].as_str().unwrap_or_default();
    ensure!(detail.contains("replication"), "the refusal says why: {detail}");
    ensure!(rec["faults"]["kill-primary-db"]["dispatched_ms"] == 0, "nothing was injected: {}", rec["faults"]);
    Ok(())
}
