//! The operator's hands on a run: halt pauses every active run, resume continues, pause during
//! a dwell holds the traffic where it is, abort ends the run and frees the service lock.

use std::time::Duration;

use anyhow::{Result, ensure};
use drcut_tests::cutover::{Env, attempts, run_record, watch_run_until};

async fn state(env: &Env, run: &str) -> Result<String> {
    let (info, _) = run_record(&env.cluster, 1, run).await?;
    Ok(info.state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_pause_resume_abort() -> Result<()> {
    let env = Env::start(94).await?;
    let c = &env.cluster;

    tracing::info!("--- a run awaiting approval is halted, resumed, approved");
    let run = env.start_cutover(1, "30s").await?;
    ensure!(state(&env, &run).await? == "awaiting_approval");
    let out = c.drctl(&["--json", "halt", "--reason", "change freeze"]).await?;
    ensure!(out.code == Some(0) && out.stdout.contains(&run), "{out}");
    ensure!(state(&env, &run).await? == "paused");
    // Approving a paused run is refused; resuming returns it to waiting for approval.
    let out = c.drctl(&["--actor", "bob", "approve", &run]).await?;
    ensure!(out.code == Some(1), "{out}");
    ensure!(c.drctl(&["run", "resume", &run]).await?.code == Some(0));
    ensure!(state(&env, &run).await? == "awaiting_approval");
    ensure!(c.drctl(&["--actor", "bob", "approve", &run]).await?.code == Some(0));

    tracing::info!("--- pause during the 30 s dwell: traffic stays at 25 %, the run waits");
    watch_run_until(c, 1, &run, Duration::from_secs(45), "shift phase 0 done", |rec| {
        rec["run"]["dwell_until_ms"].is_i64()
            && attempts(rec, "shift").is_ok_and(|a| a.iter().any(|a| a["ok"] == true && a["work"]["phase"] == 0))
    })
    .await?;
    ensure!(c.drctl(&["run", "pause", &run, "--reason", "look at dashboards"]).await?.code == Some(0));
    ensure!(state(&env, &run).await? == "paused");
    let answers = env.dns.query_a("wallet.gslb.example.").await?;
    ensure!(answers.len() == 1, "one answer per query while split: {answers:?}");

    tracing::info!("--- abort: the run ends, the service lock is free again");
    let out = c.drctl(&["--json", "run", "abort", &run, "--reason", "operator decision"]).await?;
    ensure!(out.code == Some(0), "{out}");
    let (info, _) = run_record(c, 1, &run).await?;
    ensure!(info.state == "aborted" && info.state_reason == "operator decision", "{info:?}");
    let out = c.drctl(&["run", "abort", &run]).await?;
    ensure!(out.code == Some(1) && out.stderr.contains("already ended"), "{out}");
    let out = c.drctl(&["--json", "run", "list", "--active"]).await?;
    ensure!(!out.stdout.contains(&run), "no active run holds the service: {out}");
    let audit = c.drctl(&["--json", "audit", "list", "--limit", "1000"]).await?;
    for action in ["run.pause", "run.resume", "run.approve", "run.abort"] {
        ensure!(audit.stdout.contains(action), "{action} audited");
    }
    c.audit_verify_ok().await?;
    env.cluster.finish();
    Ok(())
}
