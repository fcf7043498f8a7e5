//! A payment-provider outage drill through the agent's fault proxy: the guardrail (deposits
//! through the PSP must stay up) trips as soon as the fault bites, the drill aborts, every
//! fault is reverted (the PSP answers through the proxy again) and the report says why.

use std::time::Duration;

use anyhow::{Result, ensure};
use drcut_tests::drill::{DrillEnv, answers, apply_drill, started_drill_id, wait_drill};

const DRILL: &str = r#"apiVersion: drcut/v1
kind: Drill
metadata:
  name: psp-outage
  owner: payments-sre
spec:
  service: wallet
  hypothesis: Deposits degrade gracefully when the payment provider stops answering.
  target: { region: eu-west }
  deadline: 2m
  dead_man: { lost_coordinator: 30s }
  faults:
    - { id: psp-reset, region: eu-west, type: proxy, proxy: psp, mode: reset }
  steady_state:
    - { region: eu-west, check: psp }
  guardrails:
    - { name: deposits-stay-up, region: eu-west, check: psp, require: up, for: 0s }
  response: { observe: 60s }
  expect: { failover: false }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn psp_outage_trips_the_guardrail_aborts_and_reverts() -> Result<()> {
    let env = DrillEnv::start(131).await?;
    let out = apply_drill(&env.cluster, "psp-outage", DRILL).await?;
    ensure!(out.code == Some(0), "apply: {out}");
    ensure!(answers(&env.psp_via_proxy()).await, "the PSP answers through the proxy before the drill");

    let dry = env.cluster.drctl(&["drill", "run", "psp-outage", "--dry-run"]).await?;
    ensure!(dry.code == Some(0), "dry run: {dry}");
    ensure!(dry.stdout.contains("nothing was injected"), "dry run: {}", dry.stdout);
    ensure!(answers(&env.psp_via_proxy()).await, "a dry run injected nothing");

    // As an operator runs it: the timeline as it happens, then the report; exit 1 unless passed.
    let out = env.cluster.drctl(&["--actor", "alice", "drill", "run", "psp-outage", "--wait"]).await?;
    ensure!(out.code == Some(1), "an aborted drill exits 1: {out}");
    ensure!(out.stdout.contains("guardrail deposits-stay-up tripped"), "timeline: {}", out.stdout);
    ensure!(out.stdout.contains("# Drill report: psp-outage"), "report: {}", out.stdout);
    let id = drcut_tests::drill::drill_runs(&env.cluster).await?.first().map(|r| r.id.clone()).unwrap_or_default();
    let rec = wait_drill(&env.cluster, &id, Duration::from_secs(40), "its end", |r| r["state"] == "done").await?;
    ensure!(rec["outcome"] == "aborted", "outcome {} ({})", rec["outcome"], rec["outcome_detail"]);
    let trips = rec["guardrails"].as_array().cloned().unwrap_or_default();
    ensure!(trips.len() == 1 && trips[0]["name"] == "deposits-stay-up", "guardrails: {trips:?}");
    ensure!(trips[0]["action"].as_str().is_some_and(|a| a.contains("aborted")), "{trips:?}");
    let f = &rec["faults"]["psp-reset"];
    ensure!(f["injected_ms"].as_i64() > Some(0) && f["reverted_ms"].as_i64() > Some(0), "fault: {f}");
    ensure!(answers(&env.psp_via_proxy()).await, "the PSP answers through the proxy after the abort");

    let report = env.cluster.drctl(&["drill", "report", &id]).await?;
    ensure!(report.code == Some(0), "report: {report}");
    ensure!(report.stdout.contains("deposits-stay-up"), "report names the guardrail:\n{}", report.stdout);
    let (_, entries) = drcut_tests::health::audit_entries(&env.cluster).await?;
    ensure!(entries.iter().any(|e| e["action"] == "drill.guardrail"), "the trip is audited");
    ensure!(entries.iter().any(|e| e["action"] == "drill.finish"), "the end is audited");

    tracing::info!("--- drctl drill halt stops a drill and reverts its fault at once");
    let calm = DRILL.replace("for: 0s", "for: 10m");
    let out = apply_drill(&env.cluster, "psp-outage", &calm).await?;
    ensure!(out.code == Some(0), "apply: {out}");
    let out = env.cluster.drctl(&["--json", "drill", "run", "psp-outage"]).await?;
    ensure!(out.code == Some(0), "run: {out}");
    let id = started_drill_id(&out.stdout)?;
    wait_drill(&env.cluster, &id, Duration::from_secs(20), "the fault in", |r| {
        r["faults"]["psp-reset"]["injected_ms"].as_i64() > Some(0)
    })
    .await?;
    ensure!(!answers(&env.psp_via_proxy()).await, "the fault holds");
    let out = env.cluster.drctl(&["drill", "halt", "--reason", "real incident in eu-west"]).await?;
    ensure!(out.code == Some(0) && out.stdout.contains("1 active drill run"), "halt: {out}");
    let rec = wait_drill(&env.cluster, &id, Duration::from_secs(20), "its end", |r| r["state"] == "done").await?;
    ensure!(rec["outcome"] == "halted", "outcome {} ({})", rec["outcome"], rec["outcome_detail"]);
    ensure!(answers(&env.psp_via_proxy()).await, "the PSP answers after the halt");
    Ok(())
}
