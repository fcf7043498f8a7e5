//! The operator's hands on a run: halt pauses every active run, resume continues, pause during
//! a dwell holds the traffic where it is, abort ends the run and frees the service lock; an
//! `approval` step holds the run until someone other than the requester approves, then it
//! goes on to the end.

use std::time::Duration;

use anyhow::{Result, ensure};
use drcut_tests::cutover::{Env, attempts, run_record, started_run_id, watch_run_until};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_step_holds_the_run_until_someone_else_approves() -> Result<()> {
    let env = Env::start(98).await?;
    let c = &env.cluster;
    tracing::info!("--- an approval step after the freeze: held until bob approves, then on to the end");
    let text = env.playbook(0, "500ms").replacen(
        "    - id: catch-up\n",
        "    - { id: dba-ok, action: approval, with: { message: \"the DBA checked the replica\" }, timeout: 2m }\n    - id: catch-up\n",
        1,
    );
    env.apply_playbook("with-approval", &text).await?;
    let args = ["--json", "--actor", "alice", "cutover", "start", "wallet-test-cutover", "--reason", "step approval"];
    let out = c.drctl(&args).await?;
    ensure!(out.code == Some(0), "{out}");
    let run = started_run_id(&out.stdout)?;
    let held = env
        .poll_run(&run, Duration::from_secs(30), "held at the approval step", |r| {
            r.state == "held" && r.state_reason.contains("dba-ok")
        })
        .await?;
    ensure!(held.state_reason.contains("the DBA checked the replica"), "{}", held.state_reason);
    let out = c.drctl(&["--actor", "alice", "approve", &run]).await?;
    ensure!(out.code == Some(1) && out.stderr.contains("two-person"), "the requester approves her own step: {out}");
    ensure!(c.drctl(&["--actor", "bob", "approve", &run]).await?.code == Some(0));
    let done = env.poll_run(&run, Duration::from_secs(60), "the run ends", |r| r.ended_unix_ms > 0).await?;
    ensure!(done.state == "succeeded", "{} ({})", done.state, done.state_reason);
    let (_, rec) = run_record(c, 1, &run).await?;
    let a = attempts(&rec, "dba-ok")?;
    ensure!(a.len() == 1 && a[0]["ok"] == true && a[0]["detail"] == "approved by bob", "{a:?}");
    c.audit_verify_ok().await?;
    env.cluster.finish();
    Ok(())
}
