//! The dead-man switch: an agent cut off from the coordinators during a drill reverts its
//! fault by itself once it has held no lease for the drill's `lost_coordinator` time, and the
//! coordinator records that when the agent is back.

use std::time::Duration;

use anyhow::{Result, ensure};
use drcut_tests::drill::{DrillEnv, answers, apply_drill, started_drill_id, wait_drill};
use tokio::time::Instant;

const LOST: Duration = Duration::from_secs(2);

fn drill() -> String {
    format!(
        r#"apiVersion: drcut/v1
kind: Drill
metadata: {{ name: psp-blackhole, owner: payments-sre }}
spec:
  service: wallet
  hypothesis: Deposits queue while the payment provider is silent.
  target: {{ region: eu-west }}
  deadline: 5m
  dead_man: {{ lost_coordinator: {}s }}
  faults:
    - {{ id: psp-silent, region: eu-west, type: proxy, proxy: psp, mode: blackhole }}
  response: {{ observe: 12s }}
"#,
        LOST.as_secs()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_cut_off_reverts_its_fault_within_the_set_time() -> Result<()> {
    let env = DrillEnv::start(132).await?;
    let out = apply_drill(&env.cluster, "psp-blackhole", &drill()).await?;
    ensure!(out.code == Some(0), "apply: {out}");
    let out = env.cluster.drctl(&["--json", "drill", "run", "psp-blackhole"]).await?;
    ensure!(out.code == Some(0), "run: {out}");
    let id = started_drill_id(&out.stdout)?;
    wait_drill(&env.cluster, &id, Duration::from_secs(20), "the fault in", |r| {
        r["faults"]["psp-silent"]["injected_ms"].as_i64() > Some(0)
    })
    .await?;
    ensure!(!answers(&env.psp_via_proxy()).await, "the blackhole holds");

    tracing::info!("--- the agent loses the coordinators");
    let cut = Instant::now();
    for p in &env.coord_proxies {
        p.cut();
    }
    let reverted = loop {
        if answers(&env.psp_via_proxy()).await {
            break cut.elapsed();
        }
        ensure!(cut.elapsed() < LOST * 5, "the fault is still active {:?} after the cut", cut.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("dead-man switch reverted the fault {:.2} s after the agent was cut off", reverted.as_secs_f64());
    ensure!(reverted >= LOST.saturating_sub(Duration::from_millis(1100)), "reverted too early: {reverted:?}");

    tracing::info!("--- back in contact: the coordinator learns the fault is gone");
    for p in &env.coord_proxies {
        p.heal();
    }
    let rec = wait_drill(&env.cluster, &id, Duration::from_secs(30), "the revert recorded", |r| {
        r["faults"]["psp-silent"]["reverted_ms"].as_i64() > Some(0)
    })
    .await?;
    let detail = rec["faults"]["psp-silent"]["detail"].as_str().unwrap_or_default().to_string();
    ensure!(detail.contains("dead-man"), "detail: {detail}");
    let rec = wait_drill(&env.cluster, &id, Duration::from_secs(40), "its end", |r| r["state"] == "done").await?;
    ensure!(rec["report"].is_object(), "a report: {}", rec["report"]);
    Ok(())
}
