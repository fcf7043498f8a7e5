//! `fence` against a real PostgreSQL primary, called directly (`drcut_agent::steps::execute`)
//! with resources parsed from an agent config that declares the data and bin dirs.
//!
//! Online: `read_only` (a write fails, the server keeps running), `recovery` (restarted in
//! recovery without an upstream: a write fails), `stop` (no server left; started again by
//! hand it comes up as a standby, and a write fails). Offline: a primary that crashed is fenced
//! in its data dir, started again, and refuses a write. STONITH: an exec hook's exit status
//! decides. No result ever shows the DSN.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_agent::config::{self, Resources};
use drcut_agent::steps::StepOutcome;
use drcut_tests::PgPair;
use drcut_tests::agent::postgres_resource_yaml;
use serde_json::{Value, json};

const SECRET: &str = "t101-Pg-Secret-71c";
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

fn resources(pg: &PgPair) -> Result<Resources> {
    let primary = postgres_resource_yaml(
        "old-primary",
        &format!("{} password={SECRET}", pg.primary_dsn()),
        Some(pg.primary_data_dir()),
        Some(pg.bin_dir()),
        &[],
    );
    let yaml = format!(
        "agent_id: t101\nregion: eu-west\ncoordinators: [127.0.101.100:7001]\nresources:\n  postgres:\n{primary}"
    );
    Ok(config::parse("t101-agent.yaml", &yaml)?.resources)
}

/// Runs one step and checks that nothing it reports shows a DSN or the password.
async fn step(res: &Resources, action: &str, params: Value) -> Result<StepOutcome> {
    drcut_tests::steps::run_step(res, action, params, STEP_TIMEOUT, SECRET).await
}

fn fenced(o: &StepOutcome, mode: &str, how: &str) -> Result<()> {
    ensure!(o.ok, "fence failed: {}", o.detail);
    ensure!(o.data["fenced"] == true && o.data["mode"] == mode && o.data["how"] == how, "data {}", o.data);
    ensure!(o.measurements.get("fenced") == Some(&1.0), "measurements {:?}", o.measurements);
    let offline = if how == "offline" { 1.0 } else { 0.0 };
    ensure!(o.measurements.get("offline") == Some(&offline), "measurements {:?}", o.measurements);
    Ok(())
}

async fn in_recovery(pg: &PgPair) -> Result<bool> {
    Ok(pg.scalar_primary("SELECT pg_is_in_recovery()").await?.as_deref() == Some("t"))
}

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 101, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_read_only_then_recovery() -> Result<()> {
    let pg = PgPair::start(ip(1), ip(2)).await?;
    let res = resources(&pg)?;
    pg.try_write_primary().await?.map_err(anyhow::Error::msg).context("writable before the fence")?;

    let o = step(&res, "fence", json!({"database": "old-primary"})).await?;
    fenced(&o, "read_only", "online")?;
    pg.assert_primary_write_fails().await?;
    ensure!(!in_recovery(&pg).await?, "read_only keeps a primary running as a primary");

    // Writes back, so recovery mode has a writable primary to fence.
    let o = step(&res, "unfreeze_writes", json!({"database": "old-primary"})).await?;
    ensure!(o.ok, "{}", o.detail);
    pg.try_write_primary().await?.map_err(anyhow::Error::msg).context("writable after unfreeze")?;

    let o = step(&res, "fence", json!({"database": "old-primary", "mode": "recovery"})).await?;
    fenced(&o, "recovery", "online")?;
    ensure!(in_recovery(&pg).await?, "recovery mode restarts the server in recovery");
    pg.assert_primary_write_fails().await?;
    ensure!(pg.primary_data_dir().join("standby.signal").exists());
    let upstream = pg.scalar_primary("SELECT count(*) FROM pg_stat_wal_receiver").await?;
    ensure!(upstream.as_deref() == Some("0"), "a fenced server streams from nobody: {upstream:?}");
    // Idempotent: fencing it again succeeds and leaves it as it is.
    let o = step(&res, "fence", json!({"database": "old-primary", "mode": "recovery"})).await?;
    fenced(&o, "recovery", "online")?;
    ensure!(o.detail.contains("already in recovery"), "{}", o.detail);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_then_offline_and_a_restart_refuses_writes() -> Result<()> {
    let mut pg = PgPair::start(ip(3), ip(4)).await?;
    let res = resources(&pg)?;

    let o = step(&res, "fence", json!({"database": "old-primary", "mode": "stop"})).await?;
    fenced(&o, "stop", "online")?;
    ensure!(!pg.primary_running(), "stop mode leaves no postmaster");
    ensure!(pg.try_write_primary().await.is_err(), "nothing answers on the primary's address");

    // Down now: fencing again works on the data dir.
    let o = step(&res, "fence", json!({"database": "old-primary", "mode": "recovery"})).await?;
    fenced(&o, "recovery", "offline")?;

    // Started by hand (as a service manager would): a standby, refusing writes.
    pg.restart_primary().await?;
    ensure!(in_recovery(&pg).await?, "a stopped-and-fenced primary starts in recovery");
    pg.assert_primary_write_fails().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_primary_is_fenced_offline_and_comes_up_read_only() -> Result<()> {
    let mut pg = PgPair::start(ip(5), ip(6)).await?;
    let res = resources(&pg)?;

    // The region goes dark: the postmaster and its children die at once.
    pg.kill9_primary().await?;
    let o = step(&res, "fence", json!({"database": "old-primary"})).await?;
    fenced(&o, "read_only", "offline")?;
    ensure!(o.detail.contains("fenced offline"), "{}", o.detail);
    let auto = std::fs::read_to_string(pg.primary_data_dir().join("postgresql.auto.conf"))?;
    ensure!(auto.contains("default_transaction_read_only = 'on'"), "{auto}");

    // The region comes back: PostgreSQL starts (crash recovery) already fenced.
    pg.restart_primary().await?;
    ensure!(!in_recovery(&pg).await?, "read_only mode keeps it a primary");
    pg.assert_primary_write_fails().await?;
    let setting = pg.scalar_primary("SHOW default_transaction_read_only").await?;
    ensure!(setting.as_deref() == Some("on"), "{setting:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stonith_hook_success_and_failure() -> Result<()> {
    drcut_tests::init_tracing();
    let res = Resources::default();
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("powered-off");
    let script = format!("echo 'ipmi: chassis power off'; touch {}", marker.display());
    let o = step(&res, "fence", json!({"hook": {"exec": ["/bin/sh", "-c", script]}})).await?;
    ensure!(o.ok && o.data["fenced"] == true && o.data["how"] == "hook", "{o:?}");
    ensure!(o.detail.contains("chassis power off") && marker.exists(), "{}", o.detail);

    let o =
        step(&res, "fence", json!({"hook": {"exec": ["/bin/sh", "-c", "echo 'bmc unreachable' >&2; exit 7"]}})).await?;
    ensure!(!o.ok && o.data["fenced"] == false, "{o:?}");
    ensure!(o.detail.contains("hook failed") && o.detail.contains("bmc unreachable"), "{}", o.detail);
    ensure!(o.measurements.get("exit_code") == Some(&7.0), "{:?}", o.measurements);

    // A webhook answering non-2xx is a failed fence (nothing listens on this port: refused).
    let o = step(&res, "fence", json!({"hook": {"webhook": "http://127.0.101.99:9/stonith/T0KEN"}})).await?;
    ensure!(!o.ok && !o.detail.contains("T0KEN"), "{o:?}");
    Ok(())
}

/// The postgres check's `synchronous` value: 1 with a `sync` standby on the primary, 0
/// without (what the coordinator records as the possible loss of acknowledged writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_reports_synchronous_replication() -> Result<()> {
    use drcut_agent::checks::postgres::{PostgresProbe, Role};
    use drcut_agent::secrets::Secret;
    use drcut_tests::pg::PgOptions;

    let pg = PgPair::start_with(ip(7), ip(8), PgOptions { synchronous: true, ..Default::default() }).await?;
    let (standby, primary) = (Secret::new(pg.standby_dsn()), Secret::new(pg.primary_dsn()));
    let mut probe = PostgresProbe::new(("standby", &standby), Some(("primary", &primary)), Some(Role::Standby))
        .map_err(anyhow::Error::msg)?;
    let s = probe.run(Duration::from_secs(5)).await;
    ensure!(s.ok && s.values.get("synchronous") == Some(&1.0), "{s:?}");
    ensure!(s.values.contains_key("lag_bytes"), "existing values stay: {s:?}");

    let c = pg.primary_client().await?;
    c.batch_execute("ALTER SYSTEM RESET synchronous_standby_names").await?;
    c.batch_execute("SELECT pg_reload_conf()").await?;
    drcut_tests::wait::until("the standby reported async", Duration::from_secs(10), async || {
        let s = probe.run(Duration::from_secs(5)).await;
        ensure!(s.values.get("synchronous") == Some(&0.0), "{s:?}");
        Ok(())
    })
    .await
}
