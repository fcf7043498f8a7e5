//! GameDay figures at the default health settings: the region-loss drill (stop eu-west's
//! primary PostgreSQL hard, unplanned failover, failback) run N times in a row in one
//! environment with synchronous replication, each measured by drcut itself: the RTO phases
//! from its report, acknowledged canary writes lost, and the drill's wall time. The last
//! report's trend table shows the runs side by side. Prints figures, asserts nothing.

use anyhow::{Context, Result};
use drcut_tests::cutover::{Env, EnvOptions};
use drcut_tests::drill::{apply_drill, drill_run, region_loss_drill, started_drill_id, wait_drill};
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<()> {
    let trials: usize = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(5);
    let opt = EnvOptions {
        witness: true,
        west_data_dir: true,
        central_data_dir: true,
        default_health: true,
        ..Default::default()
    };
    let env = Env::start_with(230, opt).await?;
    env.synchronous_replication().await?;
    env.apply_playbook("failover", &env.failover_playbook("")).await?;
    // The full failback rebuilds eu-central as a standby too: every drill starts from the same layout.
    env.apply_playbook("failback", &env.failback_playbook_full()).await?;
    let out = apply_drill(&env.cluster, "region-loss", &region_loss_drill(&env)).await?;
    anyhow::ensure!(out.code == Some(0), "apply: {out}");
    let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let (mut lost, mut acked, mut last) = (0u64, 0u64, String::new());
    for i in 0..trials {
        // Let health settle after the previous restore (both regions up, lag measured).
        tokio::time::sleep(Duration::from_secs(3)).await;
        let out = env.cluster.drctl(&["--json", "drill", "run", "region-loss"]).await?;
        anyhow::ensure!(out.code == Some(0), "run: {out}");
        let id = started_drill_id(&out.stdout)?;
        let rec = wait_drill(&env.cluster, &id, Duration::from_secs(300), "its end", |r| r["state"] == "done").await?;
        let (info, _) = drill_run(&env.cluster, &id).await?;
        let report: serde_json::Value = serde_json::from_str(&info.report_json).context("report")?;
        println!(
            "drill {}: {} in {:.1} s",
            i + 1,
            rec["outcome"],
            (rec["ended_ms"].as_i64().unwrap_or(0) - rec["created_ms"].as_i64().unwrap_or(0)) as f64 / 1000.0
        );
        for p in report["phases"].as_array().into_iter().flatten() {
            if let (Some(name), Some(ms)) = (p["name"].as_str(), p["ms"].as_i64()) {
                phases.entry(name.to_string()).or_default().push(ms as f64);
            }
        }
        let missing = rec["canary"]["missing"].as_array().map_or(0, |m| m.len() as u64);
        let n: u64 = drcut_tests::drill::acked(&rec);
        lost += missing;
        acked += n;
        last = id;
    }
    println!("\nRTO phases over {trials} drills (as each drill's report measured them):");
    for (name, v) in &mut phases {
        v.sort_by(|a, b| a.total_cmp(b));
        println!(
            "  {name:<14} min {:>7.0} ms  median {:>7.0} ms  max {:>7.0} ms",
            v[0],
            v[v.len() / 2],
            v[v.len() - 1]
        );
    }
    println!("acknowledged canary writes lost: {lost} of {acked}");
    let md = env.cluster.drctl(&["drill", "report", &last]).await?;
    if let Some(trend) = md.stdout.split("## Trend").nth(1) {
        println!("\nTrend (from the last report):{}", trend.split("\n## ").next().unwrap_or_default());
    }
    env.cluster.finish();
    Ok(())
}
