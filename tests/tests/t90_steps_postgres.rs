//! The PostgreSQL step executors against a real primary and a streaming standby, called
//! directly (`drcut_agent::steps::execute`) with resources parsed from an agent config.
//!
//! The planned cutover's database half, under concurrent writers that record every insert the
//! primary acknowledged: `freeze_writes` stops the writes (read-only errors), `wait_replication`
//! with the frozen LSN returns only once the standby holds every acknowledged row (RPO 0), and
//! no row is written after the frozen LSN; `promote_db` makes the standby a writable primary,
//! `fence` makes the old one refuse writes, `unfreeze_writes` re-opens writes on the new one.
//! Every step is repeated to show it is idempotent. Then the failure paths: a wait that cannot
//! finish times out cleanly, bad params and unknown databases are named, an unreachable server
//! cannot be fenced; no detail ever shows a DSN.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_agent::config::{self, Resources};
use drcut_agent::steps::StepOutcome;
use drcut_tests::PgPair;
use drcut_tests::pg::connect;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;

/// A password no detail may show (trust auth: the server never asks for it).
const SECRET: &str = "t90-Pg-Secret-4b2d8e";

const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// The agent's resources, through the real config parser: `primary` and `standby`, plus
/// `extra` YAML lines under `resources.postgres`.
fn resources(pg: &PgPair, extra: &str) -> Result<Resources> {
    let yaml = format!(
        "agent_id: t90\nregion: eu-west\ncoordinators: [127.0.90.1:7001]\nresources:\n  postgres:\n    \
         primary:\n      dsn: \"{} password={SECRET}\"\n    standby:\n      dsn: \"{} password={SECRET}\"\n{extra}",
        pg.primary_dsn(),
        pg.standby_dsn()
    );
    Ok(config::parse("t90-agent.yaml", &yaml)?.resources)
}

/// Runs one step and checks that nothing it reports shows a DSN or the password.
async fn step(res: &Resources, action: &str, params: Value, timeout: Duration) -> Result<StepOutcome> {
    drcut_tests::steps::run_step(res, action, params, timeout, SECRET).await
}

fn measurement(o: &StepOutcome, name: &str) -> Result<f64> {
    o.measurements.get(name).copied().with_context(|| format!("no measurement {name}: {o:?}"))
}

/// Writers inserting numbered rows into `t90_rows` on one server, recording the ids whose insert
/// was acknowledged (committed without error).
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<i64>>>,
    read_only_errors: Arc<AtomicU64>,
    handles: Vec<JoinHandle<()>>,
}

impl Writers {
    /// `autocommit` writers of one-row inserts, and `in_tx` writers of two-row transactions
    /// that sleep 200 ms between their inserts (so a freeze finds them inside a writing
    /// transaction).
    fn start(dsn: &str, autocommit: usize, in_tx: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let read_only_errors = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicI64::new(1));
        let handles = (0..autocommit + in_tx)
            .map(|i| {
                let (dsn, stop, acked, ro, next) =
                    (dsn.to_string(), stop.clone(), acked.clone(), read_only_errors.clone(), next.clone());
                let two_row = i >= autocommit;
                tokio::spawn(async move {
                    let mut client = None;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match client.take() {
                            Some(c) => c,
                            None => match connect(&dsn).await {
                                Ok(c) => c,
                                Err(_) => {
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    continue;
                                }
                            },
                        };
                        let a = next.fetch_add(1, Ordering::Relaxed);
                        let (result, ids) = if two_row {
                            let b = next.fetch_add(1, Ordering::Relaxed);
                            let sql = format!(
                                "BEGIN; INSERT INTO t90_rows (id) VALUES ({a}); SELECT pg_sleep(0.2); \
                                 INSERT INTO t90_rows (id) VALUES ({b}); COMMIT"
                            );
                            (c.batch_execute(&sql).await, vec![a, b])
                        } else {
                            (c.execute("INSERT INTO t90_rows (id) VALUES ($1)", &[&a]).await.map(|_| ()), vec![a])
                        };
                        match result {
                            Ok(()) => {
                                acked.lock().unwrap().extend(ids);
                                client = Some(c);
                            }
                            Err(e) => {
                                if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) {
                                    ro.fetch_add(1, Ordering::Relaxed);
                                }
                                // A failed multi-statement batch leaves its transaction open:
                                // start over on a new session.
                                if !two_row && !c.is_closed() {
                                    client = Some(c);
                                }
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Writers { stop, acked, read_only_errors, handles }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Stops the writers and returns the acknowledged ids.
    async fn stop(self) -> Result<BTreeSet<i64>> {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            h.await?;
        }
        Ok(self.acked.lock().unwrap().iter().copied().collect())
    }
}

/// Ids in `t90_rows` on the standby.
async fn standby_ids(pg: &PgPair) -> Result<BTreeSet<i64>> {
    let rows = pg.query_standby("SELECT id FROM t90_rows").await?;
    rows.into_iter()
        .map(|r| r[0].as_deref().context("NULL id")?.parse::<i64>().context("id"))
        .collect::<Result<BTreeSet<i64>>>()
}

/// The SQLSTATE of an insert on a new session (`None`: it succeeded).
async fn insert_code(dsn: &str, id: i64) -> Result<Option<SqlState>> {
    let c = connect(dsn).await?;
    Ok(c.execute("INSERT INTO t90_rows (id) VALUES ($1)", &[&id]).await.err().map(|e| {
        tracing::info!(error = ?e.as_db_error().map(|d| d.message()), "insert refused");
        e.code().cloned().unwrap_or(SqlState::CONNECTION_FAILURE)
    }))
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_cutover_loses_no_acknowledged_write() -> Result<()> {
    let pg = PgPair::start("127.0.90.10".parse()?, "127.0.90.11".parse()?).await?;
    let res = resources(&pg, "")?;
    // pg_walinspect shows what the primary wrote after the freeze.
    pg.exec_primary("CREATE TABLE t90_rows (id int8 PRIMARY KEY); CREATE EXTENSION pg_walinspect").await?;

    tracing::info!("--- writers running; freeze the primary under them");
    let writers = Writers::start(&pg.primary_dsn(), 2, 2);
    wait_for("200 acknowledged inserts", Duration::from_secs(20), || writers.acked_count() >= 200).await?;
    // The app's maintenance switch goes up with the freeze.
    let app = drcut_tests::TestHttp::start("127.0.90.40:0".parse()?).await?;
    let freeze = json!({"database": "primary", "maintenance_url": app.url("/maintenance")});
    let f1 = step(&res, "freeze_writes", freeze.clone(), STEP_TIMEOUT).await?;
    ensure!(f1.ok, "freeze: {f1:?}");
    ensure!(app.maintenance_posts().first() == Some(&true), "maintenance flag: {:?}", app.maintenance_posts());
    let lsn = f1.data["frozen_lsn"].as_str().context("frozen_lsn")?.to_string();
    for m in ["frozen_lsn_bytes", "freeze_ms"] {
        measurement(&f1, m)?;
    }
    // The two-row writers spend nearly all their time inside a writing transaction.
    ensure!(measurement(&f1, "terminated_sessions")? >= 1.0, "no writing session terminated: {f1:?}");

    tracing::info!(%lsn, "--- wait until the standby replays the frozen LSN; it then has every acknowledged row");
    let w = step(&res, "wait_replication", json!({"database": "standby", "lsn": lsn}), STEP_TIMEOUT).await?;
    ensure!(w.ok && measurement(&w, "remaining_bytes")? == 0.0, "wait: {w:?}");
    measurement(&w, "wait_ms")?;
    let on_standby = standby_ids(&pg).await?;

    let ro = writers.read_only_errors.load(Ordering::Relaxed);
    wait_for("writes refused as read-only", Duration::from_secs(5), || {
        writers.read_only_errors.load(Ordering::Relaxed) > ro + 10
    })
    .await?;
    let f2 = step(&res, "freeze_writes", freeze, STEP_TIMEOUT).await?;
    ensure!(f2.ok && f2.detail.contains("already frozen"), "second freeze: {f2:?}");
    ensure!(measurement(&f2, "frozen_lsn_bytes")? >= measurement(&f1, "frozen_lsn_bytes")?, "{f2:?}");
    let acked = writers.stop().await?;
    ensure!(acked.len() >= 200, "only {} acknowledged inserts", acked.len());
    let missing: Vec<&i64> = acked.difference(&on_standby).collect();
    ensure!(
        missing.is_empty(),
        "{} of {} acknowledged rows missing on the standby at the frozen LSN: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(20)]
    );
    let late = pg
        .scalar_primary(&format!(
            "SELECT count(*) FROM pg_get_wal_records_info('{lsn}', pg_current_wal_flush_lsn()) \
             WHERE resource_manager = 'Heap'"
        ))
        .await?;
    ensure!(late.as_deref() == Some("0"), "{late:?} heap records written after the frozen LSN {lsn}");
    tracing::info!(acked = acked.len(), on_standby = on_standby.len(), "RPO 0: every acknowledged row replicated");

    tracing::info!("--- promote the standby (its copied config is read-only: promote resets it)");
    pg.exec_standby("ALTER SYSTEM SET default_transaction_read_only = on").await?;
    pg.exec_standby("SELECT pg_reload_conf()").await?;
    let p1 = step(&res, "promote_db", json!({"database": "standby"}), STEP_TIMEOUT).await?;
    ensure!(p1.ok && p1.detail.contains("promoted"), "promote: {p1:?}");
    ensure!(p1.detail.contains("reset default_transaction_read_only"), "{p1:?}");
    ensure!(p1.data["timeline"] == json!(2) && p1.data["lsn"].is_string(), "{p1:?}");
    measurement(&p1, "promote_ms")?;
    let p2 = step(&res, "promote_db", json!({"database": "standby"}), STEP_TIMEOUT).await?;
    ensure!(p2.ok && p2.detail.contains("already a primary") && p2.data["timeline"] == json!(2), "{p2:?}");
    ensure!(pg.scalar_standby("SELECT pg_is_in_recovery()").await?.as_deref() == Some("f"));
    // Waiting again after the promotion: the new timeline holds the frozen LSN.
    let w2 = step(&res, "wait_replication", json!({"database": "standby", "lsn": lsn}), STEP_TIMEOUT).await?;
    ensure!(w2.ok && w2.detail.contains("already promoted"), "{w2:?}");
    let w3 = step(&res, "wait_replication", json!({"database": "standby", "lsn": "FF/0"}), STEP_TIMEOUT).await?;
    ensure!(!w3.ok && measurement(&w3, "remaining_bytes")? > 0.0, "{w3:?}");

    tracing::info!("--- fence the old primary: every session ends, new ones refuse writes");
    let idle = pg.primary_client().await?;
    let fe = step(&res, "fence", json!({"database": "primary"}), STEP_TIMEOUT).await?;
    ensure!(fe.ok && measurement(&fe, "terminated_sessions")? >= 1.0, "fence: {fe:?}");
    ensure!(idle.simple_query("SELECT 1").await.is_err(), "a session from before the fence survived it");
    ensure!(
        insert_code(&pg.primary_dsn(), -1).await? == Some(SqlState::READ_ONLY_SQL_TRANSACTION),
        "the fenced old primary took a write"
    );
    let fe2 = step(&res, "fence", json!({"database": "primary", "mode": "read_only"}), STEP_TIMEOUT).await?;
    ensure!(fe2.ok, "second fence: {fe2:?}");

    tracing::info!("--- unfreeze the new primary: it takes writes");
    let u = step(&res, "unfreeze_writes", json!({"database": "standby"}), STEP_TIMEOUT).await?;
    ensure!(u.ok, "unfreeze: {u:?}");
    ensure!(insert_code(&pg.standby_dsn(), -2).await?.is_none(), "the new primary refused a write");
    let u2 = step(&res, "unfreeze_writes", json!({"database": "standby"}), STEP_TIMEOUT).await?;
    ensure!(u2.ok && u2.detail.contains("was not frozen"), "second unfreeze: {u2:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_time_out_and_bad_input_fails_cleanly() -> Result<()> {
    let pg = PgPair::start("127.0.90.20".parse()?, "127.0.90.21".parse()?).await?;
    // A server that is not there: a port nothing listens on.
    let gone = std::net::TcpListener::bind("127.0.90.22:0")?.local_addr()?;
    let res = resources(
        &pg,
        &format!(
            "    gone:\n      dsn: \"host={} port={} user=postgres connect_timeout=2 password={SECRET}\"\n",
            gone.ip(),
            gone.port()
        ),
    )?;

    tracing::info!("--- replay paused: a wait for an LSN the standby has not replayed times out");
    pg.pause_replay().await?;
    pg.exec_primary("CREATE TABLE t90_b AS SELECT generate_series(1, 20000) AS i").await?;
    let lsn = pg.scalar_primary("SELECT pg_current_wal_lsn()").await?.context("lsn")?;
    let t0 = Instant::now();
    let timeout = Duration::from_secs(1);
    let w = step(&res, "wait_replication", json!({"database": "standby", "lsn": lsn}), timeout).await?;
    let took = t0.elapsed();
    ensure!(!w.ok && measurement(&w, "remaining_bytes")? > 0.0, "{w:?}");
    ensure!(w.detail.contains("short of") && w.data["replay_lsn"].is_string(), "{w:?}");
    ensure!(took >= Duration::from_millis(800) && took < timeout, "the wait took {took:?}");
    // Without an LSN: replay behind what the standby received.
    let w = step(&res, "wait_replication", json!({"database": "standby"}), timeout).await?;
    ensure!(!w.ok && measurement(&w, "remaining_bytes")? > 0.0, "{w:?}");
    let w =
        step(&res, "wait_replication", json!({"database": "standby", "max_lag_bytes": 1u64 << 30}), timeout).await?;
    ensure!(w.ok, "within a 1 GiB budget: {w:?}");
    pg.resume_replay().await?;
    let w = step(&res, "wait_replication", json!({"database": "standby", "lsn": lsn}), STEP_TIMEOUT).await?;
    ensure!(w.ok && measurement(&w, "remaining_bytes")? == 0.0, "after resuming: {w:?}");

    tracing::info!("--- bad params and unknown databases are named");
    let cases = [
        ("wait_replication", json!({"database": "standby", "max_lag": 5}), "max_lag"),
        ("wait_replication", json!({"database": "standby", "max_lag_bytes": "lots"}), "param max_lag_bytes"),
        ("wait_replication", json!({"database": "standby", "lsn": "zz"}), "param lsn"),
        ("promote_db", json!({}), "database"),
        ("fence", json!({"database": "primary", "mode": "stonith"}), "param mode"),
        ("freeze_writes", json!({"database": "nope"}), "\"nope\""),
        ("unfreeze_writes", json!({"database": 7}), "param database"),
    ];
    for (action, params, want) in cases {
        let o = step(&res, action, params, STEP_TIMEOUT).await?;
        ensure!(!o.ok && o.detail.starts_with(action) && o.detail.contains(want), "{action}: {o:?}");
    }

    tracing::info!("--- wrong role: a standby cannot be frozen or unfrozen");
    let o = step(&res, "freeze_writes", json!({"database": "standby"}), STEP_TIMEOUT).await?;
    ensure!(!o.ok && o.detail.contains("in recovery"), "{o:?}");
    let o = step(&res, "unfreeze_writes", json!({"database": "standby"}), STEP_TIMEOUT).await?;
    ensure!(!o.ok && o.detail.contains("promote it first"), "{o:?}");
    ensure!(pg.scalar_primary("SHOW default_transaction_read_only").await?.as_deref() == Some("off"));

    tracing::info!("--- an unreachable server cannot be fenced");
    let o = step(&res, "fence", json!({"database": "gone"}), STEP_TIMEOUT).await?;
    ensure!(!o.ok && o.detail.contains("unreachable: cannot verify fence"), "{o:?}");
    Ok(())
}
