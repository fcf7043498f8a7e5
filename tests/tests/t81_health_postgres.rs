//! Real PostgreSQL replication, measured by real agents: the board shows which server is the
//! primary and which the standby, a standby whose replay stops falls behind (seconds and bytes)
//! and degrades its region by the lag SLO, and catches up when replay resumes. The DSNs, given
//! to the agents as secrets in environment variables, appear in no log and no audit entry.

use std::time::Duration;

use anyhow::{Result, ensure};
use drcut_tests::health::{
    HEALTH_WAIT, agent_yaml, audit_entries, board, check, describe, region, wait_check, wait_region,
};
use drcut_tests::{AgentProc, Cluster, PgPair};

const HEALTH: &str = "health:\n  down_after: 2\n  up_after: 2\n  tick_ms: 100\n";

/// A password no log line or audit entry may ever show (trust auth: the server never asks).
const SECRET: &str = "t81-Pg-Secret-7c1e9a";

fn value(c: &drcut_proto::v1::CheckHealth, name: &str) -> Result<f64> {
    c.values.get(name).copied().ok_or_else(|| anyhow::anyhow!("no value {name}: {}", describe(c)))
}

fn label<'a>(c: &'a drcut_proto::v1::CheckHealth, name: &str) -> &'a str {
    c.labels.get(name).map(String::as_str).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_lag_degrades_its_region_and_recovers() -> Result<()> {
    let cluster = Cluster::builder(81).nodes(1).extra_yaml(HEALTH).start().await?;
    cluster.wait_leader(&[1]).await?;
    cluster.add_region(1, "eu-west").await?;
    cluster.add_region(1, "eu-central").await?;
    let pg = PgPair::start("127.0.81.10".parse()?, "127.0.81.11".parse()?).await?;
    let primary_dsn = format!("{} password={SECRET}", pg.primary_dsn());
    let standby_dsn = format!("{} password={SECRET}", pg.standby_dsn());
    let env = [("T81_PRIMARY_DSN", primary_dsn.as_str()), ("T81_STANDBY_DSN", standby_dsn.as_str())];
    // Debug logging: every bad evaluation is logged with its error, more chances to leak.
    let log = ("DRCUT_LOG", "debug");
    let coords = [cluster.addr(1).to_string()];

    let west = "resources:\n  postgres:\n    wallet-primary:\n      dsn_env: T81_PRIMARY_DSN\n\
                checks:\n  - name: pg-primary\n    type: postgres\n    resource: wallet-primary\n    \
                expect_role: primary\n    interval_ms: 200\n    timeout_ms: 2000\n";
    let mut a_west = AgentProc::start(
        cluster.dir(),
        "agent-eu-west",
        &agent_yaml("agent-eu-west", "eu-west", &coords, west),
        &[env[0], log],
    )?;
    let central = "resources:\n  postgres:\n    wallet-primary:\n      dsn_env: T81_PRIMARY_DSN\n    \
                   wallet-standby:\n      dsn_env: T81_STANDBY_DSN\n\
                   checks:\n  - name: pg-standby\n    type: postgres\n    resource: wallet-standby\n    \
                   primary: wallet-primary\n    expect_role: standby\n    interval_ms: 200\n    timeout_ms: 2000\n    \
                   window: 5\n    slo: [\"lag_seconds <= 2\"]\n";
    let mut a_central = AgentProc::start(
        cluster.dir(),
        "agent-eu-central",
        &agent_yaml("agent-eu-central", "eu-central", &coords, central),
        &[env[0], env[1], log],
    )?;

    tracing::info!("--- both regions come up; the board tells the primary from the standby");
    wait_region(&cluster, 1, "eu-west", "up", HEALTH_WAIT).await?;
    wait_region(&cluster, 1, "eu-central", "up", HEALTH_WAIT).await?;
    let b = board(&cluster, 1).await?;
    let p = check(region(&b, "eu-west")?, "pg-primary")?;
    ensure!(p.state == "up" && p.r#type == "postgres" && p.vantage_agent == "agent-eu-west", "{}", describe(p));
    ensure!(label(p, "role") == "primary", "{}", describe(p));
    ensure!(value(p, "writable")? == 1.0 && value(p, "is_primary")? == 1.0, "{}", describe(p));
    ensure!(
        value(p, "lag_seconds")? == 0.0 && value(p, "lag_bytes")? == 0.0,
        "a primary lags nothing: {}",
        describe(p)
    );
    let s = check(region(&b, "eu-central")?, "pg-standby")?;
    ensure!(s.state == "up" && s.vantage_agent == "agent-eu-central", "{}", describe(s));
    ensure!(label(s, "role") == "standby", "{}", describe(s));
    ensure!(value(s, "writable")? == 0.0 && value(s, "is_primary")? == 0.0, "{}", describe(s));
    ensure!(value(s, "lag_seconds")? < 2.0, "{}", describe(s));

    tracing::info!("--- a write load on the primary; the streaming standby keeps up");
    pg.exec_primary("CREATE TABLE t81_load (id bigserial PRIMARY KEY, payload text NOT NULL)").await?;
    let writer = pg.primary_client().await?;
    let load: tokio::task::JoinHandle<Result<()>> = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            let r = writer.execute("INSERT INTO t81_load (payload) SELECT repeat('x', 2000)", &[]).await;
            if let Err(e) = r {
                return Err(anyhow::anyhow!("insert {n} failed: {e}"));
            }
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    wait_check(&cluster, 1, "eu-central", "pg-standby", "replaying the load", HEALTH_WAIT, |c| {
        ensure!(c.state == "up" && value(c, "replay_lag_bytes")? < 1_000_000.0, "not caught up");
        Ok(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n = pg.scalar_standby("SELECT count(*) FROM t81_load").await?.unwrap_or_default();
    ensure!(n.parse::<u64>()? > 0, "the standby replays the load: {n} rows");
    ensure!(region(&board(&cluster, 1).await?, "eu-central")?.state == "up");

    tracing::info!("--- replay paused on the standby: lag grows, eu-central degrades on lag_seconds");
    pg.pause_replay().await?;
    let r = wait_region(&cluster, 1, "eu-central", "degraded", HEALTH_WAIT).await?;
    ensure!(r.reason.contains("lag_seconds"), "the reason names the broken SLO: {}", r.reason);
    ensure!(r.reason.contains("pg-standby"), "the reason names the check: {}", r.reason);
    let s = check(&r, "pg-standby")?;
    ensure!(s.state == "degraded", "{}", describe(s));
    ensure!(value(s, "lag_seconds")? > 2.0, "lag_seconds: {}", describe(s));
    let replay_lag = value(s, "replay_lag_bytes")?;
    ensure!(replay_lag > 0.0 && value(s, "lag_bytes")? > 0.0, "{}", describe(s));
    // WAL still arrives: only replay is behind.
    ensure!(value(s, "receive_lag_bytes")? < replay_lag, "receive lag below replay lag: {}", describe(s));
    ensure!(label(s, "role") == "standby", "{}", describe(s));
    let slo = s.slo.iter().find(|o| o.expr.starts_with("lag_seconds")).map(|o| (o.ok, o.has_value, o.value));
    ensure!(matches!(slo, Some((false, true, v)) if v > 2.0), "slo outcome {slo:?}: {}", describe(s));
    // The primary's region is not concerned.
    ensure!(region(&board(&cluster, 1).await?, "eu-west")?.state == "up");
    // The lag keeps growing while replay stays paused.
    wait_check(&cluster, 1, "eu-central", "pg-standby", "replay lag still growing", HEALTH_WAIT, |c| {
        ensure!(value(c, "replay_lag_bytes")? > replay_lag, "not growing");
        Ok(())
    })
    .await?;
    if load.is_finished() {
        anyhow::bail!("the write load stopped: {:?}", load.await);
    }

    tracing::info!("--- replay resumed: the standby catches up and eu-central is up again");
    pg.resume_replay().await?;
    wait_region(&cluster, 1, "eu-central", "up", HEALTH_WAIT).await?;
    wait_check(&cluster, 1, "eu-central", "pg-standby", "lag back to ~0", HEALTH_WAIT, |c| {
        ensure!(c.state == "up", "not up");
        ensure!(value(c, "lag_seconds")? < 1.0, "lag_seconds");
        ensure!(value(c, "replay_lag_bytes")? < replay_lag, "replay lag not down");
        Ok(())
    })
    .await?;
    load.abort();

    tracing::info!("--- the audit chain holds the degradation with the measured lag");
    let (raw_audit, entries) = audit_entries(&cluster).await?;
    let transitions: Vec<(String, String)> = entries
        .iter()
        .filter(|e| e["action"] == "health.region" && e["details"]["region"] == "eu-central")
        .map(|e| (e["details"]["from"].as_str().unwrap_or("").into(), e["details"]["to"].as_str().unwrap_or("").into()))
        .collect();
    let want: Vec<(String, String)> = [("unknown", "up"), ("up", "degraded"), ("degraded", "up")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    ensure!(transitions == want, "eu-central transitions {transitions:?}");
    let degraded = entries
        .iter()
        .find(|e| e["action"] == "health.region" && e["details"]["to"] == "degraded")
        .expect("found above");
    let ev = &degraded["details"]["evidence"]["vantages"]["agent-eu-central"]["checks"]["pg-standby"];
    ensure!(ev["values"]["lag_seconds"].as_f64().unwrap_or(0.0) > 2.0, "evidence carries the lag: {ev}");
    cluster.audit_verify_ok().await?;

    tracing::info!("--- the secret DSNs show nowhere: agent logs, audit chain, board");
    let health = cluster.drctl(&["--json", "health"]).await?;
    ensure!(health.code == Some(0), "{health}");
    for (what, text) in [
        ("agent-eu-west output", a_west.stderr() + &a_west.stdout()),
        ("agent-eu-central output", a_central.stderr() + &a_central.stdout()),
        ("drctl --json audit list", raw_audit),
        ("drctl --json health", health.stdout),
    ] {
        ensure!(!text.is_empty(), "{what} is empty");
        for secret in [SECRET, primary_dsn.as_str(), standby_dsn.as_str()] {
            ensure!(!text.contains(secret), "{what} shows the secret {secret:?}");
        }
    }
    // The debug log did run: the leak check looked at real evaluations.
    ensure!(a_central.stderr().contains("session open"), "{}", a_central.log_tail(20));
    ensure!(a_west.exited().is_none() && a_central.exited().is_none(), "agents must keep running");
    cluster.finish();
    Ok(())
}
