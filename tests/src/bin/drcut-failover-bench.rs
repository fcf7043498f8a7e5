//! Unplanned failover figures at the default health settings (agents check every 300 ms, the
//! coordinator needs 3 bad reports and a quorum of 2 of 3 vantage points), each trial in a
//! fresh environment with synchronous replication and a write canary: kill -9 of eu-west's
//! agent and of its PostgreSQL primary → region declared down → automatic run
//! started → eu-central writable → DNS answers converged (database endpoint and GSLB name),
//! plus acknowledged writes lost. Prints figures, asserts nothing.

use anyhow::{Context, Result};
use drcut_tests::cutover::{Env, EnvOptions, canary};
use drcut_tests::health::board;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::Instant;

fn stats(name: &str, v: &mut [f64]) {
    v.sort_by(|a, b| a.total_cmp(b));
    println!("{name:<28} min {:>6.0} ms  median {:>6.0} ms  max {:>6.0} ms", v[0], v[v.len() / 2], v[v.len() - 1]);
}

/// Milliseconds from `t0` until `probe` first holds (polled every 10 ms), up to 60 s.
async fn until<F, Fut>(t0: Instant, mut probe: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    while t0.elapsed() < Duration::from_secs(60) {
        if probe().await {
            return Ok(t0.elapsed().as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("not within 60 s")
}

#[tokio::main]
async fn main() -> Result<()> {
    let trials: u8 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(10);
    let (mut down, mut started, mut writable, mut dns, mut done) = (vec![], vec![], vec![], vec![], vec![]);
    let mut lost_total = 0usize;
    for i in 0..trials {
        let opt = EnvOptions { witness: true, default_health: true, ..Default::default() };
        let mut env = Env::start_with(220 + i, opt).await?;
        env.synchronous_replication().await?;
        env.apply_playbook("failover", &env.failover_playbook("    automatic: { enabled: true, cooldown: 10m }\n"))
            .await?;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = canary(env.dns.dns_addr(), env.db_ports(), stop.clone());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let leader = env.cluster.wait_leader(&[1, 2, 3]).await?.leader_id;

        let t0 = Instant::now();
        env.agents[0].kill().await?;
        env.pg.kill9_primary().await?;

        let c = &env.cluster;
        let t_down = until(t0, || async {
            board(c, leader).await.is_ok_and(|b| b.regions.iter().any(|r| r.region == "eu-west" && r.state == "down"))
        })
        .await
        .context("region down")?;
        let t_run = until(t0, || async { env.runs().await.is_ok_and(|r| !r.is_empty()) }).await?;
        let central = env.central_ip();
        let pg = &env.pg;
        let t_writable = until(t0, || async {
            pg.exec_standby("CREATE TABLE IF NOT EXISTS bench_probe (x int); INSERT INTO bench_probe VALUES (1)")
                .await
                .is_ok()
        })
        .await?;
        let d = &env.dns;
        let t_dns = until(t0, || async {
            d.query_a("wallet-db.gslb.example.").await.is_ok_and(|a| a == vec![central])
                && d.query_a("wallet.gslb.example.").await.is_ok_and(|a| a == vec![central])
        })
        .await?;
        let t_done =
            until(t0, || async { env.runs().await.is_ok_and(|r| r.first().is_some_and(|r| r.ended_unix_ms > 0)) })
                .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        let log = writer.await??;
        let present = env.canary_ids_in_central().await?;
        let lost = log.acked.iter().filter(|id| !present.contains(id)).count();
        lost_total += lost;
        let state = env.runs().await?.first().map(|r| r.state.clone()).unwrap_or_default();
        println!(
            "trial {:>2}: down {t_down:.0} ms, run {t_run:.0} ms, writable {t_writable:.0} ms, dns {t_dns:.0} ms, \
             run ended {t_done:.0} ms ({state}); acknowledged writes {} lost {lost}",
            i + 1,
            log.acked.len()
        );
        down.push(t_down);
        started.push(t_run);
        writable.push(t_writable);
        dns.push(t_dns);
        done.push(t_done);
    }
    println!("--- {trials} trials, from the fault (kill -9 of agent and primary):");
    stats("region declared down", &mut down);
    stats("automatic run started", &mut started);
    stats("new primary writable", &mut writable);
    stats("DNS answers converged", &mut dns);
    stats("run finished", &mut done);
    println!("acknowledged writes lost (synchronous replication): {lost_total}");
    Ok(())
}
