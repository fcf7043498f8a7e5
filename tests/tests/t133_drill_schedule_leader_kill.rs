//! The scheduler lives in the replicated state: a drill whose occurrence comes due fires once,
//! and when the leader that fired it is killed mid-drill, the next leader carries the same run
//! to its end: the fault is injected once and reverted once, and no second run starts. Invalid
//! drill files are refused with file, line and field, and nothing is scheduled.

use std::time::{Duration, SystemTime};

use anyhow::{Result, ensure};
use drcut_tests::drill::{DrillEnv, apply_drill, drill_runs, nightly_exec_drill, wait_drill, wait_drill_started};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_drill_fires_once_and_survives_its_leader() -> Result<()> {
    let mut env = DrillEnv::start(133).await?;

    tracing::info!("--- invalid drill files: clear errors, nothing stored");
    let bad = "apiVersion: drcut/v1\nkind: Drill\nmetadata: { name: bad, owner: x }\nspec:\n  service: wallet\n  hypothesis: h\n  target: { region: eu-west }\n  schedule: { rrule: \"FREQ=SOMETIMES\", timezone: Europe/Dublin }\n  faults: [ { id: a, region: eu-west, type: exec, inject: [/bin/true], revert: [/bin/true] } ]\n  response: { observe: 1s }\n";
    let out = apply_drill(&env.cluster, "bad", bad).await?;
    ensure!(out.code == Some(2), "an invalid rrule was accepted: {out}");
    ensure!(
        out.stderr.contains("bad.yaml:8") && out.stderr.contains("rrule"),
        "error names file, line, field: {}",
        out.stderr
    );
    let zone = bad.replace("FREQ=SOMETIMES", "FREQ=DAILY").replace("Europe/Dublin", "Europe/Atlantis");
    let out = apply_drill(&env.cluster, "bad", &zone).await?;
    ensure!(out.code == Some(2) && out.stderr.contains("Europe/Atlantis"), "unknown zone: {out}");
    let list = env.cluster.drctl(&["--json", "drill", "list"]).await?;
    ensure!(list.stdout.contains("\"drills\":[]"), "nothing scheduled: {}", list.stdout);

    tracing::info!("--- a drill due in a few seconds");
    let marker = env.cluster.dir().join("marker.log");
    let at = SystemTime::now() + Duration::from_secs(4);
    let start = humantime::format_rfc3339_seconds(at).to_string().trim_end_matches('Z').to_string();
    let m = marker.display();
    let (inject, revert) =
        (format!("[/bin/sh, -c, \"echo inject >> {m}\"]"), format!("[/bin/sh, -c, \"echo revert >> {m}\"]"));
    let out = apply_drill(&env.cluster, "nightly", &nightly_exec_drill(&start, &inject, &revert, "6s")).await?;
    ensure!(out.code == Some(0), "apply: {out}");
    let list = env.cluster.drctl(&["drill", "list"]).await?;
    ensure!(list.stdout.contains(&start), "next fire time listed: {}", list.stdout);

    let id = wait_drill_started(&env.cluster, "nightly-exec", Duration::from_secs(20)).await?;
    wait_drill(&env.cluster, &id, Duration::from_secs(20), "the fault in", |r| {
        r["faults"]["marker"]["injected_ms"].as_i64() > Some(0)
    })
    .await?;
    let leader = env.cluster.wait_leader(&[1, 2, 3]).await?;
    tracing::info!(leader = leader.leader_id, "--- killing the leader mid-drill");
    env.cluster.kill(leader.leader_id).await?;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != leader.leader_id).collect();
    env.cluster.wait_leader_after(&others, leader.term).await?;
    let rec = wait_drill(&env.cluster, &id, Duration::from_secs(40), "its end", |r| r["state"] == "done").await?;
    ensure!(rec["outcome"] == "passed", "outcome {} ({})", rec["outcome"], rec["outcome_detail"]);
    ensure!(rec["trigger"]["kind"] == "schedule", "trigger {}", rec["trigger"]);

    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs: Vec<_> = drill_runs(&env.cluster).await?.into_iter().filter(|r| r.drill == "nightly-exec").collect();
    ensure!(runs.len() == 1, "one run for the occurrence, got {}", runs.len());
    let log = std::fs::read_to_string(&marker)?;
    let lines: Vec<&str> = log.lines().collect();
    ensure!(lines == ["inject", "revert"], "the fault was injected and reverted once each: {lines:?}");
    let starts = drcut_tests::health::audit_entries(&env.cluster)
        .await?
        .1
        .into_iter()
        .filter(|e| e["action"] == "drill.start")
        .count();
    ensure!(starts == 1, "{starts} drill.start entries");
    Ok(())
}
