//! A cutover whose health gate fails after the point of no return: once the first traffic
//! phase (25 %) is out, eu-central's app turns slow (p95 above the agents' 300 ms SLO), the
//! region degrades during the dwell, and the gate after it fails. The run rolls back only what
//! can be undone past the promotion: traffic shifts back to eu-west, but the database stays
//! promoted (the old primary stays fenced, the new one takes writes), and the audit chain
//! records the failed gate.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_tests::cutover::{Env, attempts, run_record, step_index, watch_run_until};
use drcut_tests::health::{board, region};
use drcut_tests::wait;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_gate_shifts_traffic_back_and_keeps_the_promotion() -> Result<()> {
    let env = Env::start(96).await?;
    let c = &env.cluster;
    let leader = c.wait_leader(&[1, 2, 3]).await?.leader_id;

    tracing::info!("--- start a cutover (no approvals) whose shift dwells 4 s after each phase");
    let run = env.start_cutover(0, "4s").await?;

    tracing::info!("--- wait until the first phase (25 %) of the shift is done");
    let rec = watch_run_until(c, leader, &run, Duration::from_secs(45), "shift phase 0 ok", |rec| {
        attempts(rec, "shift").is_ok_and(|a| a.iter().any(|a| a["ok"] == true && a["work"]["phase"] == 0))
    })
    .await?;
    ensure!(rec["run"]["dwell_until_ms"].is_i64(), "dwelling after phase 0: {}", rec["run"]);

    tracing::info!("--- eu-central's app turns slow: p95 above the 300 ms SLO");
    env.central_app.set_latency(Duration::from_millis(350));
    let degraded = wait::until("eu-central to leave up", Duration::from_secs(15), async || {
        let b = board(c, leader).await?;
        let r = region(&b, "eu-central")?;
        ensure!(r.state != "up", "eu-central is {} ({})", r.state, r.reason);
        Ok(r.clone())
    })
    .await?;
    tracing::info!(state = %degraded.state, reason = %degraded.reason, "eu-central no longer up");
    // The region must have left `up` before the gate: the run is still dwelling or rolling back
    // because of it, never past phase 1.
    let (info, rec) = run_record(c, leader, &run).await?;
    ensure!(
        !attempts(&rec, "shift")?.iter().any(|a| a["work"]["phase"] == 1),
        "phase 100 % was sent although the region degraded during the dwell: {}",
        info.state
    );

    tracing::info!("--- the gate fails and the run rolls back");
    let watched = tokio::time::timeout(Duration::from_secs(45), c.drctl(&["run", "watch", &run]))
        .await
        .context("run did not end")??;
    ensure!(watched.code == Some(1) && watched.stderr.contains("rolled_back"), "{watched}");
    let (info, rec) = run_record(c, leader, &run).await?;
    ensure!(info.state == "rolled_back", "{info:?}");
    ensure!(
        info.state_reason.contains("gate after shift phase 25% failed")
            && info.state_reason.contains("region eu-central is")
            && info.state_reason.contains("gate requires up"),
        "the reason names the gate: {}",
        info.state_reason
    );

    let gates = rec["run"]["gates"].as_array().context("gates")?;
    ensure!(
        gates.len() == 1
            && gates[0]["ok"] == false
            && gates[0]["percent"] == 25
            && gates[0]["at_ms"].as_i64() > Some(0),
        "the failed gate is recorded with its phase and time: {gates:?}"
    );

    tracing::info!("--- only the traffic shift was undone");
    let shift = step_index(&rec, "shift")? as u64;
    let history = rec["run"]["history"].as_array().context("history")?;
    let comps: Vec<&serde_json::Value> = history.iter().filter(|a| a["work"]["compensation"] == true).collect();
    ensure!(
        !comps.is_empty() && comps.iter().all(|a| a["work"]["step"] == shift) && comps.last().unwrap()["ok"] == true,
        "compensations: {comps:?}"
    );
    for s in ["freeze", "catch-up", "fence", "promote", "repoint", "unfreeze", "warm"] {
        let a = attempts(&rec, s)?;
        ensure!(a.iter().any(|a| a["ok"] == true), "step {s} done before the shift: {a:?}");
    }
    ensure!(attempts(&rec, "smoke")?.is_empty(), "smoke never ran");
    ensure!(
        env.west_app.maintenance_posts() == vec![true, false],
        "maintenance: up at freeze, down at unfreeze, not touched by the rollback: {:?}",
        env.west_app.maintenance_posts()
    );

    tracing::info!("--- DNS: the app name answers eu-west only again; the database name stays on eu-central");
    ensure!(env.dns.query_a("wallet.gslb.example.").await? == vec![env.west_ip()]);
    ensure!(env.dns.query_a("wallet-db.gslb.example.").await? == vec![env.central_ip()]);

    tracing::info!("--- the database stays promoted: eu-central takes writes, the old primary refuses them");
    env.pg.exec_standby("INSERT INTO canary (id) VALUES (-96)").await.context("the promoted standby takes writes")?;
    let err = env.pg.exec_primary("INSERT INTO canary (id) VALUES (-1)").await;
    ensure!(
        err.as_ref().is_err_and(|e| format!("{e:#}").contains("read-only")),
        "the old primary must refuse writes: {err:?}"
    );
    let (west, central) = env.timelines().await?;
    ensure!(central == west + 1, "timelines: eu-west {west}, eu-central {central}");

    tracing::info!("--- the audit chain verifies and holds the failed gate");
    c.audit_verify_ok().await?;
    let (_, entries) = drcut_tests::health::audit_entries(c).await?;
    let gates: Vec<&serde_json::Value> =
        entries.iter().filter(|e| e["action"] == "run.gate" && e["details"]["run_id"] == run.as_str()).collect();
    ensure!(
        gates.iter().any(|e| e["details"]["ok"] == false
            && e["details"]["detail"].as_str().is_some_and(|d| d.contains("eu-central"))),
        "no failed run.gate in the audit chain: {gates:?}"
    );
    env.central_app.set_latency(Duration::ZERO);
    env.cluster.finish();
    Ok(())
}
