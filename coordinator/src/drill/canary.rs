//! The write canary: numbered rows inserted one at a time through the drill, every
//! acknowledgement remembered, so RPO is counted rather than guessed. Runs on the leader
//! (outside the blast radius); progress is committed to the drill run in batches.
//!
//! One insert at a time: an acknowledged row is exactly one whose INSERT returned success.
//! An insert that errors or times out is not acknowledged (it may or may not have landed;
//! either way no client was told it did). The connection string names every host the
//! primary may live on and the canary always asks for a read-write session, so it follows the
//! primary through a failover by reconnecting.

use super::spec::Canary as CanarySpec;
use crate::clock::now_ms;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::{Client, NoTls};

/// Bound on one insert (and one connection attempt).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the canary saw since the last [`CanaryHandle::take`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Progress {
    /// Newly acknowledged sequence numbers as inclusive ranges.
    pub acked: Vec<(u64, u64)>,
    /// Newly failed attempts.
    pub failed: u64,
    /// The first failure after arming (0: none).
    pub first_failure_ms: i64,
    /// The first acknowledgement after that failure (0: none).
    pub recovered_ms: i64,
    /// The latest error, if it is new.
    pub error: String,
}

impl From<Progress> for super::ops::DrillOp {
    fn from(p: Progress) -> Self {
        super::ops::DrillOp::Canary {
            acked: p.acked,
            failed: p.failed,
            first_failure_ms: p.first_failure_ms,
            recovered_ms: p.recovered_ms,
            error: p.error,
        }
    }
}

impl Progress {
    /// Nothing to report.
    pub fn is_empty(&self) -> bool {
        self.acked.is_empty() && self.failed == 0 && self.first_failure_ms == 0 && self.recovered_ms == 0
    }
}

#[derive(Default)]
struct Shared {
    pending: Progress,
    /// Failures count towards the RTO only after the fault is in (leader time).
    armed_at: i64,
    first_failure_ms: i64,
    recovered_ms: i64,
    last_error: String,
    stop: bool,
}

/// A running canary; dropping it stops it.
pub struct CanaryHandle {
    shared: Arc<Mutex<Shared>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CanaryHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CanaryHandle {
    /// Starts inserting rows `first_seq, first_seq + 1, ...` tagged with `drill_id`.
    pub fn start(spec: &CanarySpec, drill_id: &str, first_seq: u64) -> CanaryHandle {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = tokio::spawn(run(spec.clone(), drill_id.to_string(), first_seq, shared.clone()));
        CanaryHandle { shared, task }
    }

    /// From now on, failures are the fault's doing: record the first and the recovery.
    pub fn arm(&self, at_ms: i64) {
        let mut g = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if g.armed_at == 0 {
            g.armed_at = at_ms;
        }
    }

    /// Takes what happened since the last call.
    pub fn take(&self) -> Progress {
        std::mem::take(&mut self.shared.lock().unwrap_or_else(|p| p.into_inner()).pending)
    }

    /// Stops inserting (the task ends after its current insert).
    pub fn stop(&self) {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
    }
}

/// The connection settings: the drill's DSN, always read-write, bounded connect time, the
/// password from the coordinator's environment.
pub fn config(spec: &CanarySpec) -> Result<tokio_postgres::Config, String> {
    let mut cfg = tokio_postgres::Config::from_str(&spec.dsn).map_err(|e| format!("canary.dsn: {e}"))?;
    cfg.target_session_attrs(TargetSessionAttrs::ReadWrite);
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(STATEMENT_TIMEOUT);
    }
    if let Some(var) = &spec.password_env {
        let pw =
            std::env::var(var).map_err(|_| format!("canary.password_env: {var} is not set on this coordinator"))?;
        cfg.password(pw);
    }
    Ok(cfg)
}

/// Connects to the primary (whichever listed host takes writes).
pub async fn connect(spec: &CanarySpec) -> Result<Client, String> {
    let cfg = config(spec)?;
    let (client, conn) = tokio::time::timeout(STATEMENT_TIMEOUT * 3, cfg.connect(NoTls))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Creates the canary table if missing (the preflight calls this: it proves the canary can write).
pub async fn prepare(spec: &CanarySpec) -> Result<String, String> {
    let client = connect(spec).await?;
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {} (drill text NOT NULL, seq bigint NOT NULL, at timestamptz NOT NULL DEFAULT now())",
        spec.table
    );
    client.batch_execute(&sql).await.map_err(|e| format!("creating {}: {e}", spec.table))?;
    Ok(server(&client).await)
}

/// The server a client is connected to, for reports (`addr:port`).
async fn server(client: &Client) -> String {
    client
        .query_one("SELECT inet_server_addr()::text || ':' || inet_server_port()::text", &[])
        .await
        .ok()
        .and_then(|r| r.get::<_, Option<String>>(0))
        .unwrap_or_else(|| "the primary".into())
}

async fn run(spec: CanarySpec, drill: String, first_seq: u64, shared: Arc<Mutex<Shared>>) {
    let insert = format!("INSERT INTO {} (drill, seq) VALUES ($1, $2)", spec.table);
    let mut client: Option<Client> = None;
    let mut seq = first_seq;
    let interval = Duration::from_millis(spec.interval_ms.max(1));
    loop {
        if shared.lock().unwrap_or_else(|p| p.into_inner()).stop {
            return;
        }
        let started = tokio::time::Instant::now();
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = connect(&spec).await.map_err(|e| note(&shared, false, seq, e)).ok();
        }
        if let Some(c) = &client {
            let r = tokio::time::timeout(STATEMENT_TIMEOUT, c.execute(&insert, &[&drill, &(seq as i64)])).await;
            match r {
                Ok(Ok(_)) => note(&shared, true, seq, String::new()),
                Ok(Err(e)) => {
                    note(&shared, false, seq, format!("insert: {e}"));
                    client = None;
                }
                Err(_) => {
                    note(&shared, false, seq, "insert timed out".into());
                    client = None;
                }
            }
            seq += 1;
        }
        tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
    }
}

fn note(shared: &Mutex<Shared>, ok: bool, seq: u64, error: String) {
    let now = now_ms();
    let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
    if ok {
        match g.pending.acked.last_mut() {
            Some(last) if last.1 + 1 == seq => last.1 = seq,
            _ => g.pending.acked.push((seq, seq)),
        }
        if g.first_failure_ms != 0 && g.recovered_ms == 0 {
            g.recovered_ms = now;
            g.pending.recovered_ms = now;
        }
        return;
    }
    g.pending.failed += 1;
    if g.armed_at != 0 && g.first_failure_ms == 0 {
        g.first_failure_ms = now;
        g.pending.first_failure_ms = now;
    }
    if error != g.last_error {
        g.last_error = error.clone();
        g.pending.error = error;
    }
}

/// After the response: which acknowledged rows the primary lacks, and the integrity queries.
pub async fn verify(
    spec: &CanarySpec,
    drill: &str,
    acked: &[(u64, u64)],
    integrity: &[super::spec::IntegrityCheck],
) -> Result<(Vec<u64>, String, Vec<super::record::CheckLine>), String> {
    let client = connect(spec).await?;
    let server = server(&client).await;
    let rows = client
        .query(&format!("SELECT seq FROM {} WHERE drill = $1", spec.table), &[&drill])
        .await
        .map_err(|e| format!("reading {}: {e}", spec.table))?;
    let present: std::collections::HashSet<i64> = rows.iter().map(|r| r.get::<_, i64>(0)).collect();
    let missing: Vec<u64> =
        acked.iter().flat_map(|&(a, b)| a..=b).filter(|s| !present.contains(&(*s as i64))).collect();
    let mut lines = Vec::new();
    for q in integrity {
        let line = match client.query_one(&q.query, &[]).await {
            Ok(row) => {
                let got = scalar_text(&row);
                let ok = got == q.expect;
                super::record::CheckLine {
                    name: q.name.clone(),
                    ok,
                    detail: format!("got {got}, expected {}", q.expect),
                }
            }
            Err(e) => {
                super::record::CheckLine { name: q.name.clone(), ok: false, detail: format!("query failed: {e}") }
            }
        };
        lines.push(line);
    }
    let checked = format!("{server} at {}", humantime::format_rfc3339_millis(std::time::SystemTime::now()));
    Ok((missing, checked, lines))
}

/// The single value of an integrity query's row, as text, whatever its type.
fn scalar_text(row: &tokio_postgres::Row) -> String {
    use tokio_postgres::types::Type;
    let ty = row.columns().first().map(|c| c.type_().clone());
    match ty {
        Some(Type::INT8) => row.get::<_, Option<i64>>(0).map(|v| v.to_string()),
        Some(Type::INT4) => row.get::<_, Option<i32>>(0).map(|v| v.to_string()),
        Some(Type::INT2) => row.get::<_, Option<i16>>(0).map(|v| v.to_string()),
        Some(Type::BOOL) => row.get::<_, Option<bool>>(0).map(|v| v.to_string()),
        Some(Type::FLOAT8) => row.get::<_, Option<f64>>(0).map(|v| v.to_string()),
        Some(Type::TEXT) | Some(Type::VARCHAR) | Some(Type::NAME) => row.get::<_, Option<String>>(0),
        _ => row.try_get::<_, Option<String>>(0).ok().flatten(),
    }
    .unwrap_or_else(|| "NULL".into())
}
