//! A gate is judged on fresh evidence, never on a new leader's memory: the leader dies during a
//! shift dwell and the target degrades meanwhile; the new leader must wait for the agents'
//! reports and fail the gate (traffic shifted back), not pass it on the last committed state.

use std::time::Duration;

use anyhow::{Result, ensure};
use drcut_tests::cutover::{Env, attempts, watch_run_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_after_failover_uses_fresh_health() -> Result<()> {
    let mut env = Env::start(99).await?;
    let all = [1, 2, 3];
    let old = env.cluster.wait_leader(&all).await?;
    let run = env.start_cutover(0, "3s").await?;

    tracing::info!("--- wait for the first shift phase, then kill the leader and slow the target");
    watch_run_until(&env.cluster, old.node_id, &run, Duration::from_secs(45), "shift phase 0 done", |rec| {
        rec["run"]["dwell_until_ms"].is_i64()
            && attempts(rec, "shift").is_ok_and(|a| a.iter().any(|a| a["ok"] == true && a["work"]["phase"] == 0))
    })
    .await?;
    env.cluster.kill(old.node_id).await?;
    env.central_app.set_latency(Duration::from_millis(350));
    let survivors: Vec<u64> = all.iter().copied().filter(|&i| i != old.node_id).collect();

    tracing::info!("--- the run must roll the traffic back under the new leader");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        env.cluster.drctl_at(&survivors, &["--json", "run", "watch", &run]),
    )
    .await??;
    ensure!(out.code == Some(1), "the run must not succeed:\n{out}");
    let shown = env.cluster.drctl_at(&survivors, &["--json", "run", "show", &run]).await?;
    let v: serde_json::Value = serde_json::from_str(&shown.stdout)?;
    ensure!(v["state"] == "rolled_back", "{v}");
    ensure!(v["state_reason"].as_str().is_some_and(|r| r.contains("gate")), "{}", v["state_reason"]);
    ensure!(env.dns.query_a("wallet.gslb.example.").await? == vec![env.west_ip()], "traffic back on eu-west");
    env.central_app.set_latency(Duration::ZERO);
    env.cluster.start_node(old.node_id).await?;
    env.cluster.wait_converged(&all).await?;
    env.cluster.audit_verify_ok().await?;
    env.cluster.finish();
    Ok(())
}
