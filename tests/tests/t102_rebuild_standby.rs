//! `rebuild_standby` against real PostgreSQL: after a failover (the standby promoted and
//! written to) and a write on the old primary that the new one never saw (split brain), the
//! old primary is rebuilt as a standby of the new one and streams its writes; the divergent
//! write is gone. With `wal_log_hints` on, `pg_rewind` does it; with it off a rewind is
//! impossible and the step falls back to `pg_basebackup`. Timings are printed.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_agent::config::{self, Resources};
use drcut_agent::steps::StepOutcome;
use drcut_tests::agent::postgres_resource_yaml;
use drcut_tests::pg::PgOptions;
use drcut_tests::{PgPair, wait};
use serde_json::{Value, json};

const SECRET: &str = "t102-Pg-Secret-9ae";
const STEP_TIMEOUT: Duration = Duration::from_secs(40);

fn resources(pg: &PgPair) -> Result<Resources> {
    let old = postgres_resource_yaml(
        "old-primary",
        &format!("{} password={SECRET}", pg.primary_dsn()),
        Some(pg.primary_data_dir()),
        Some(pg.bin_dir()),
        &[],
    );
    let new =
        postgres_resource_yaml("new-primary", &format!("{} password={SECRET}", pg.standby_dsn()), None, None, &[]);
    let yaml = format!(
        "agent_id: t102\nregion: eu-west\ncoordinators: [127.0.102.100:7001]\nresources:\n  postgres:\n{old}{new}"
    );
    Ok(config::parse("t102-agent.yaml", &yaml)?.resources)
}

/// Runs one step and checks that nothing it reports shows a DSN or the password.
async fn step(res: &Resources, action: &str, params: Value) -> Result<StepOutcome> {
    drcut_tests::steps::run_step(res, action, params, STEP_TIMEOUT, SECRET).await
}

/// Failover with split brain: the standby is promoted and written to, and the old primary,
/// still up, takes a write of its own.
async fn failover_with_divergence(pg: &PgPair, res: &Resources) -> Result<()> {
    pg.exec_primary("CREATE TABLE t102 (id int PRIMARY KEY); INSERT INTO t102 SELECT generate_series(1, 100)").await?;
    wait::until("the standby has the rows", Duration::from_secs(10), async || {
        let n = pg.scalar_standby("SELECT count(*) FROM t102").await?;
        ensure!(n.as_deref() == Some("100"), "{n:?}");
        Ok(())
    })
    .await?;
    let o = step(res, "promote_db", json!({"database": "new-primary"})).await?;
    ensure!(o.ok, "{}", o.detail);
    pg.exec_primary("INSERT INTO t102 VALUES (1000)").await.context("the divergent write")?;
    pg.exec_standby("INSERT INTO t102 SELECT generate_series(2000, 2099)").await?;
    Ok(())
}

/// The old primary streams from the new one: it has the new writes, not its own divergent
/// one, and is in recovery.
async fn verify_follows(pg: &PgPair, round: i32) -> Result<()> {
    ensure!(pg.scalar_primary("SELECT pg_is_in_recovery()").await?.as_deref() == Some("t"));
    pg.exec_standby(&format!("INSERT INTO t102 VALUES ({})", 3000 + round)).await?;
    let want = (100 + round).to_string();
    wait::until("the rebuilt standby has the new primary's writes", Duration::from_secs(10), async || {
        let n = pg.scalar_primary("SELECT count(*) FROM t102 WHERE id >= 2000").await?;
        ensure!(n.as_deref() == Some(want.as_str()), "{n:?}");
        Ok(())
    })
    .await?;
    let divergent = pg.scalar_primary("SELECT count(*) FROM t102 WHERE id = 1000").await?;
    ensure!(divergent.as_deref() == Some("0"), "the divergent write survived: {divergent:?}");
    let app = pg.scalar_standby("SELECT application_name FROM pg_stat_replication").await?;
    ensure!(app.as_deref() == Some("old-primary"), "walsender for {app:?}");
    pg.assert_primary_write_fails().await?;
    let auto = std::fs::read_to_string(pg.primary_data_dir().join("postgresql.auto.conf"))?;
    ensure!(!auto.contains("default_transaction_read_only"), "a fence left in {auto}");
    Ok(())
}

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 102, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_rewind_rebuilds_the_fenced_old_primary() -> Result<()> {
    let pg = PgPair::start(ip(1), ip(2)).await?;
    let res = resources(&pg)?;
    failover_with_divergence(&pg, &res).await?;
    // The old primary is fenced first, as the runbook does.
    let o = step(&res, "fence", json!({"database": "old-primary"})).await?;
    ensure!(o.ok, "{}", o.detail);

    let o = step(&res, "rebuild_standby", json!({"database": "old-primary", "upstream": "new-primary"})).await?;
    ensure!(o.ok, "{}", o.detail);
    ensure!(o.data["method"] == "pg_rewind", "{}", o.data);
    let ms = o.measurements.get("rebuild_ms").copied().unwrap_or_default();
    println!(
        "t102 rebuild_standby via pg_rewind: {ms:.0} ms total (rewind {:.0} ms, start {:.0} ms)",
        o.measurements.get("rewind_ms").copied().unwrap_or_default(),
        o.measurements.get("start_ms").copied().unwrap_or_default()
    );
    verify_follows(&pg, 1).await?;

    // Idempotent: rebuilding a standby that already follows succeeds again.
    let o = step(&res, "rebuild_standby", json!({"database": "old-primary", "upstream": "new-primary"})).await?;
    ensure!(o.ok, "{}", o.detail);
    verify_follows(&pg, 2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wal_log_hints_it_falls_back_to_pg_basebackup() -> Result<()> {
    let pg = PgPair::start_with(ip(3), ip(4), PgOptions { wal_log_hints: false, ..Default::default() }).await?;
    let res = resources(&pg)?;
    failover_with_divergence(&pg, &res).await?;

    let o = step(&res, "rebuild_standby", json!({"database": "old-primary", "upstream": "new-primary"})).await?;
    ensure!(o.ok, "{}", o.detail);
    ensure!(o.data["method"] == "pg_basebackup", "{}", o.data);
    let why = o.data["fallback_reason"].as_str().unwrap_or_default();
    ensure!(why.contains("wal_log_hints"), "fallback reason: {why}");
    println!(
        "t102 rebuild_standby via pg_basebackup: {:.0} ms total (failed rewind {:.0} ms, base backup {:.0} ms)",
        o.measurements.get("rebuild_ms").copied().unwrap_or_default(),
        o.measurements.get("rewind_ms").copied().unwrap_or_default(),
        o.measurements.get("basebackup_ms").copied().unwrap_or_default()
    );
    verify_follows(&pg, 1).await?;
    // The moved-aside directory is gone once the new one streams.
    let left: Vec<String> = std::fs::read_dir(pg.dir())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("drcut-old"))
        .collect();
    ensure!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}
