//! Cutover figures with the instant profile (shift straight to 100 %, no dwell), each run in a
//! fresh environment (3 coordinators, 2 agents, PostgreSQL primary + standby, PowerDNS, a
//! canary writer): total cutover time, client-visible write-unavailability window, RPO
//! (acknowledged writes missing on the new primary) and the coordinator's own overhead (total
//! minus the time spent inside the actions). Prints figures, asserts nothing.

use anyhow::{Context, Result};
use drcut_tests::cutover::{Env, canary};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn stats(name: &str, unit: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.total_cmp(b));
    println!("{name}: min {:.0}{unit}  median {:.0}{unit}  max {:.0}{unit}", v[0], v[v.len() / 2], v[v.len() - 1]);
}

#[tokio::main]
async fn main() -> Result<()> {
    let runs: u8 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(5);
    let (mut total, mut gap, mut overhead, mut per_step, mut lost_all) = (vec![], vec![], vec![], vec![], 0usize);
    for i in 0..runs {
        let env = Env::start(210 + i).await?;
        let c = &env.cluster;
        let file = c.dir().join("instant.yaml");
        std::fs::write(&file, env.playbook_with(0, "0s", "[100]"))?;
        let out = c.drctl(&["playbook", "apply", &file.display().to_string()]).await?;
        anyhow::ensure!(out.code == Some(0), "{out}");
        let ports = env.db_ports();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = canary(env.dns.dns_addr(), ports, stop.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let out = c.drctl(&["--json", "cutover", "start", "wallet-test-cutover", "--reason", "bench"]).await?;
        let started: serde_json::Value =
            serde_json::from_str(out.stdout.lines().last().unwrap_or_default()).context(out.to_string())?;
        let run = started["run_id"].as_str().context("run id")?.to_string();
        let w = c.drctl(&["run", "watch", &run]).await?;
        anyhow::ensure!(w.code == Some(0), "run failed: {w}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        let log = writer.await??;
        let present = env.canary_ids_in_central().await?;
        let lost = log.acked.iter().filter(|id| !present.contains(id)).count();
        let show = c.drctl(&["--json", "run", "show", &run]).await?;
        let v: serde_json::Value = serde_json::from_str(&show.stdout)?;
        let t = (v["ended_unix_ms"].as_i64().unwrap_or(0) - v["created_unix_ms"].as_i64().unwrap_or(0)) as f64;
        let history = v["record"]["run"]["history"].as_array().cloned().unwrap_or_default();
        let exec: f64 = history.iter().filter_map(|a| a["measurements"]["exec_ms"].as_f64()).sum();
        let steps = history.len().max(1) as f64;
        println!(
            "run {}: total {:.0} ms, write gap {} ms, acknowledged writes {} lost {}, inside actions {:.0} ms, coordinator overhead {:.0} ms ({:.1} ms per step over {} steps)",
            i + 1,
            t,
            log.longest_gap().as_millis(),
            log.acked.len(),
            lost,
            exec,
            t - exec,
            (t - exec) / steps,
            history.len()
        );
        total.push(t);
        gap.push(log.longest_gap().as_secs_f64() * 1000.0);
        overhead.push(t - exec);
        per_step.push((t - exec) / steps);
        lost_all += lost;
        env.cluster.finish();
    }
    stats("total cutover time", " ms", total);
    stats("write-unavailability window (canary)", " ms", gap);
    stats("coordinator overhead per run", " ms", overhead);
    stats("coordinator overhead per step", " ms", per_step);
    println!("RPO: {lost_all} acknowledged writes lost over {runs} runs");
    Ok(())
}
