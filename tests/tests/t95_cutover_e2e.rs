//! A real planned cutover, end to end: 3 coordinators, 2 agents, PostgreSQL primary + streaming
//! standby, PowerDNS, an app per region and a canary writer. The playbook is validated and
//! applied, planned, started (idempotently, holding the service lock), approved by a second
//! person, and runs to success: no acknowledged write is lost, the old primary refuses writes,
//! and DNS sends everyone to the new region.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_tests::cutover::{Env, canary};

fn run_id(stdout: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())?;
    Ok(v["run_id"].as_str().context("run_id")?.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_cutover_loses_no_acknowledged_write() -> Result<()> {
    let env = Env::start(95).await?;
    let c = &env.cluster;
    let file = env.write_playbook(1, "1s")?;

    tracing::info!("--- a playbook with a typo is refused with file, line and field; nothing stored");
    let bad = c.dir().join("bad.yaml");
    std::fs::write(
        &bad,
        env.playbook(1, "1s").replace(
            "      with: { database: wallet-db }\n    - id: fence",
            "      wiht: { database: wallet-db }\n    - id: fence",
        ),
    )?;
    let out = c.drctl(&["playbook", "apply", &bad.display().to_string()]).await?;
    ensure!(out.code == Some(2) && out.stderr.contains("bad.yaml:") && out.stderr.contains("wiht"), "{out}");

    tracing::info!("--- validate, apply, plan");
    let out = c.drctl(&["playbook", "validate", &file]).await?;
    ensure!(out.code == Some(0), "{out}");
    let out = c.drctl(&["--actor", "alice", "playbook", "apply", &file]).await?;
    ensure!(out.code == Some(0), "{out}");
    let out = c.drctl(&["--json", "playbook", "list"]).await?;
    let list: serde_json::Value = serde_json::from_str(&out.stdout)?;
    ensure!(list["playbooks"].as_array().map(|a| a.len()) == Some(1), "only the valid playbook is stored: {list}");
    let out = c.drctl(&["plan", "wallet-test-cutover"]).await?;
    ensure!(out.code == Some(0) && out.stdout.contains("promote") && out.stdout.contains("all hold"), "{out}");

    tracing::info!("--- a canary writer runs through the cutover");
    let ports = env.db_ports();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = canary(env.dns.dns_addr(), ports, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    tracing::info!("--- start (idempotent), the service lock, the two-person rule");
    let start = [
        "--json",
        "--actor",
        "alice",
        "--request-id",
        "k1",
        "cutover",
        "start",
        "wallet-test-cutover",
        "--reason",
        "planned test",
    ];
    let out = c.drctl(&start).await?;
    ensure!(out.code == Some(0), "{out}");
    let run = run_id(&out.stdout)?;
    let again = c.drctl(&start).await?;
    ensure!(run_id(&again.stdout)? == run, "same idempotency key, same run: {again}");
    let other = c
        .drctl(&[
            "--actor",
            "carol",
            "--request-id",
            "k2",
            "cutover",
            "start",
            "wallet-test-cutover",
            "--reason",
            "second",
        ])
        .await?;
    ensure!(
        other.code == Some(1) && other.stderr.contains("FailedPrecondition") && other.stderr.contains("holds service"),
        "{other}"
    );
    let own = c.drctl(&["--actor", "alice", "approve", &run]).await?;
    ensure!(own.code == Some(1) && own.stderr.contains("two-person"), "{own}");
    let ok = c.drctl(&["--actor", "bob", "approve", &run]).await?;
    ensure!(ok.code == Some(0), "{ok}");

    tracing::info!("--- watch it to the end");
    let watched = tokio::time::timeout(Duration::from_secs(90), c.drctl(&["run", "watch", &run]))
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

    ensure!(
        env.west_app.maintenance_posts() == vec![true, false],
        "maintenance flag up at freeze, down at unfreeze: {:?}",
        env.west_app.maintenance_posts()
    );

    tracing::info!("--- DNS: everyone resolves to eu-central");
    ensure!(env.dns.query_a("wallet.gslb.example.").await? == vec![env.central_ip()]);
    ensure!(env.dns.query_a("wallet-db.gslb.example.").await? == vec![env.central_ip()]);

    tracing::info!("--- the record and the audit chain");
    let out = c.drctl(&["--json", "run", "show", &run]).await?;
    let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
    ensure!(v["state"] == "succeeded", "{v}");
    let done: BTreeSet<String> = v["record"]["run"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["ok"] == true)
        .map(|a| {
            v["record"]["run"]["plan"]["steps"][a["work"]["step"].as_u64().unwrap() as usize]["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for s in ["freeze", "catch-up", "fence", "promote", "repoint", "unfreeze", "warm", "shift", "smoke"] {
        ensure!(done.contains(s), "step {s} not recorded: {done:?}");
    }
    // The run graded against the playbook's targets (RPO 0, RTO 60 s).
    let text = c.drctl(&["run", "show", &run]).await?.stdout;
    ensure!(text.contains("; target 60 s: met"), "RTO graded: {text}");
    ensure!(text.contains("RPO 0 bytes short of the frozen LSN; target 0 s: met"), "RPO graded: {text}");
    c.audit_verify_ok().await?;
    env.cluster.finish();
    Ok(())
}
