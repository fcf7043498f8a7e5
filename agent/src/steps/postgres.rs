//! PostgreSQL step executors: `freeze_writes`, `wait_replication`, `promote_db` and
//! `unfreeze_writes`, each against a named `postgres` resource of the agent, and the session
//! helpers `fence` (in [`super::fence`]) builds on.
//!
//! Every executor is idempotent and verifies its effect from a fresh session (the state a new
//! client connection would see) rather than trusting the command it sent. Details name the
//! resource, never its DSN.
//!
//! # Freezing, and the frozen LSN
//!
//! `ALTER SYSTEM SET default_transaction_read_only = on` plus `pg_reload_conf()` makes every
//! transaction that starts after a backend has processed the reload read-only; a backend
//! processes it before its next command. What can still write after the reload is a
//! transaction that began before it (it keeps its read-write mode to the end, even one that has
//! written nothing yet). So the freeze:
//!
//! 1. reloads, then waits until a new session has the reloaded configuration (`pg_conf_load_time`
//!    after the reload: the postmaster has reloaded and signalled every backend by then) and
//!    checks that its write attempt is refused (SQLSTATE 25006); the server's clock at that
//!    point is the freeze time `T`;
//! 2. terminates client sessions whose transaction began before `T` (writing, idle in
//!    transaction, or active but yet to write), and any holding a transaction id, and waits until
//!    they have left `pg_stat_activity` (by then their transactions are aborted);
//! 3. forces the WAL to disk and reports `pg_current_wal_flush_lsn()` as the frozen LSN.
//!
//! Why the flush position after a forced flush, not `pg_current_wal_lsn()`: with
//! `synchronous_commit = off` a commit is acknowledged once its record is *inserted*, before it
//! is written, so the write position (`pg_current_wal_lsn()`) can lie before acknowledged
//! commits. The insert position covers them, but WAL that is inserted and not flushed is not
//! sent to standbys, and the WAL writer flushes a partial page of non-commit records only when
//! something else asks for it, so a standby might never reach the insert position. The freeze
//! therefore commits one transaction of its own with `synchronous_commit = local` that writes a
//! WAL record (a transactional logical message `drcut: freeze_writes`, a no-op for physical
//! replicas): its commit flushes everything inserted before it, which includes every commit
//! acknowledged before the freeze. The flush position after it is then at or after every
//! acknowledged commit, and at or before what the walsender can send.
//!
//! Limits: `default_transaction_read_only` is a default, not a privilege. A client that runs
//! `BEGIN READ WRITE` or `SET default_transaction_read_only = off` can still write; the freeze
//! terminates any session found holding a transaction id, and refuses to report success when a
//! role or database setting (`ALTER ROLE … SET default_transaction_read_only = off`) overrides
//! it. A backend that read its next command in the instant before the reload signal reached it,
//! and was then descheduled for longer than it takes to open the verifying session, could start
//! a read-write transaction after `T`. Only client backends are terminated: background workers
//! (autovacuum, logical replication apply workers) are left alone.
//!
//! # Promotion
//!
//! `promote_db` signals the promotion with `pg_promote(wait => false)` and polls
//! `pg_is_in_recovery()` every 5 ms: `pg_promote`'s own wait checks only every 100 ms, and the
//! promotion is inside the write-unavailability window. SQLSTATE 55000 (not in recovery) means
//! another attempt or an operator promoted it first.

use super::{StepContext, StepOutcome, budget};
use crate::checks::{error_chain, millis};
use crate::secrets::Secret;
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::json;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

/// How often `wait_replication` asks the standby for its replay position.
const POLL: Duration = Duration::from_millis(20);

/// How long replay must stand still, short of the received end, before a drain accepts the
/// rest as a torn record the lost primary never finished sending.
const DRAIN_SETTLE: Duration = Duration::from_secs(1);

/// How often a fresh session checks whether a configuration reload has reached new sessions.
const RELOAD_POLL: Duration = Duration::from_millis(10);

/// How often terminated sessions are checked for having exited, and a promotion for having
/// ended recovery.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// Termination rounds before sessions that keep writing fail the step.
const TERMINATE_ROUNDS: usize = 5;

/// Executes `action` if it belongs to this module.
pub async fn execute(action: &str, params: &serde_json::Value, ctx: &StepContext<'_>) -> Option<StepOutcome> {
    let start = Instant::now();
    let deadline = start + budget(ctx.timeout);
    let maintenance = params.get("maintenance_url").and_then(|v| v.as_str()).map(str::to_string);
    let outcome = match action {
        // The app's maintenance flag goes up before the database refuses writes (users see a
        // maintenance page, not errors) and comes down after writes are open again.
        "freeze_writes" => match &maintenance {
            Some(url) => match set_maintenance(url, true, deadline).await {
                Ok(ms) => freeze_writes(params, ctx, start, deadline).await.map(|o| with_maintenance(o, ms)),
                Err(e) => return Some(StepOutcome::failed(format!("freeze_writes: maintenance flag: {e}"))),
            },
            None => freeze_writes(params, ctx, start, deadline).await,
        },
        "unfreeze_writes" => match unfreeze_writes(params, ctx, start, deadline).await {
            Ok(o) if o.ok && maintenance.is_some() => {
                match set_maintenance(maintenance.as_deref().unwrap_or_default(), false, deadline).await {
                    Ok(ms) => Ok(with_maintenance(o, ms)),
                    Err(e) => {
                        return Some(StepOutcome::failed(format!(
                            "unfreeze_writes: writes open, but the maintenance flag: {e}"
                        )));
                    }
                }
            }
            other => other,
        },
        "wait_replication" => wait_replication(params, ctx, start, deadline).await,
        "promote_db" => promote_db(params, ctx, start, deadline).await,
        _ => return None,
    };
    Some(outcome.unwrap_or_else(|e| StepOutcome::failed(format!("{action}: {}", e.text()))))
}

/// Sets the application's maintenance flag: `POST {"maintenance": on}`; any 2xx is success.
async fn set_maintenance(url: &str, on: bool, deadline: Instant) -> Result<f64, String> {
    let started = Instant::now();
    let client = crate::checks::http::build_client()?;
    let left = deadline.saturating_duration_since(started);
    let resp = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::json!({ "maintenance": on, "by": "drcut" }).to_string())
        .timeout(left)
        .send()
        .await
        .map_err(|e| format!("POST {}: {}", origin(url), crate::checks::error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(format!("POST {} answered {}", origin(url), resp.status()));
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// Scheme, host and port only: paths of such URLs often carry tokens.
fn origin(url: &str) -> String {
    url.split('/').take(3).collect::<Vec<_>>().join("/")
}

fn with_maintenance(mut o: StepOutcome, ms: f64) -> StepOutcome {
    o.measurements.insert("maintenance_ms".into(), ms);
    o.detail.push_str("; app maintenance flag set");
    o
}

// === params ===

/// Params of `freeze_writes` and `unfreeze_writes`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FreezeParams {
    database: String,
    /// The application's maintenance flag (set around the freeze in `execute`).
    #[serde(default, rename = "maintenance_url")]
    _maintenance_url: Option<String>,
    #[serde(default, rename = "inputs")]
    _inputs: IgnoredAny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitParams {
    database: String,
    #[serde(default)]
    max_lag_bytes: u64,
    #[serde(default)]
    lsn: Option<String>,
    /// Unplanned failover (the source is gone, nothing was frozen): replay what was received,
    /// and accept a tail that can never replay (a record cut off by the primary's loss) once
    /// replay has stood still for [`DRAIN_SETTLE`].
    #[serde(default)]
    drain: bool,
    #[serde(default, rename = "inputs")]
    _inputs: IgnoredAny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteParams {
    database: String,
    #[serde(default, rename = "inputs")]
    _inputs: IgnoredAny,
}

/// A step's params (see [`super::parse_params`]).
fn parse_params<T: DeserializeOwned>(params: &serde_json::Value) -> Result<T, Fail> {
    super::parse_params(params).map_err(Fail::Other)
}

// === failures ===

/// Why a step failed. `Unreachable` (no session, a session lost, no answer in time) is told
/// apart because for `fence` it means "not verified", not "refused".
#[derive(Debug)]
pub(super) enum Fail {
    Unreachable(String),
    Other(String),
}

impl Fail {
    pub(super) fn text(self) -> String {
        match self {
            Fail::Unreachable(t) | Fail::Other(t) => t,
        }
    }
}

// === LSNs ===

/// Parses a pg_lsn text (`16/B374D848`: high and low 32 bits in hex) to a byte position.
fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
        return None;
    }
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// Formats a byte position as PostgreSQL does (`16/B374D848`).
fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The switch point of the newest timeline switch in a timeline history file
/// (`<parent tli>\t<switch LSN>\t<reason>` per line).
fn last_switchpoint(history: &str) -> Option<u64> {
    history
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().nth(1).and_then(parse_lsn))
        .next_back()
}

/// Whether a setting value (as in `ALTER ROLE … SET name = value`) is a PostgreSQL boolean
/// true (`on`, `true`, `yes`, `1` and their unique prefixes).
fn pg_bool_true(value: &str) -> bool {
    let v = value.trim().trim_matches(|c| c == '\'' || c == '"').to_ascii_lowercase();
    matches!(v.as_str(), "on" | "1" | "t" | "tr" | "tru" | "true" | "y" | "ye" | "yes")
}

// === the database ===

/// One named database for the length of a step: its connection settings, the step's deadline,
/// and the backends of the step's own short-lived sessions (which are never terminated).
pub(super) struct Db<'a> {
    pub(super) name: &'a str,
    dsn: &'a Secret,
    config: Config,
    deadline: Instant,
    own_pids: Mutex<Vec<i32>>,
}

/// What a fresh session sees.
pub(super) struct Probe {
    pub(super) in_recovery: bool,
    /// The session has the configuration loaded at or after the time asked about.
    reloaded: bool,
    /// `transaction_read_only` of its first transaction.
    read_only: bool,
    /// `default_transaction_read_only`, and where that value comes from.
    default_read_only: bool,
    default_source: String,
    /// The server's clock when the session looked, µs since the epoch.
    pub(super) now_us: i64,
    /// The outcome of a write attempt; `None` when not attempted (not reloaded yet).
    pub(super) write: Option<Write>,
}

/// The outcome of a write attempt (`CREATE TEMP TABLE` in a transaction rolled back).
#[derive(Debug, PartialEq)]
pub(super) enum Write {
    Succeeded,
    /// Refused as a write in a read-only transaction (SQLSTATE 25006).
    RefusedReadOnly,
    /// Failed for another reason (permissions, …): proves nothing either way.
    Failed(String),
}

impl<'a> Db<'a> {
    /// The database resource `name` of the agent.
    pub(super) fn open(ctx: &'a StepContext<'_>, name: &'a str, deadline: Instant) -> Result<Db<'a>, Fail> {
        let resource = ctx.resources.postgres.get(name).ok_or_else(|| {
            let known: Vec<&str> = ctx.resources.postgres.keys().map(String::as_str).collect();
            let known = if known.is_empty() { "none defined".to_string() } else { known.join(", ") };
            Fail::Other(format!("param database: no postgres resource named {name:?} (known: {known})"))
        })?;
        let dsn = &resource.dsn;
        let mut config: Config = dsn.expose().parse().map_err(|e: tokio_postgres::Error| {
            Fail::Other(dsn.redact(&format!("{name}: not a valid DSN: {}", error_chain(&e))))
        })?;
        if config.get_application_name().is_none() {
            config.application_name("drcut-agent");
        }
        Ok(Db { name, dsn, config, deadline, own_pids: Mutex::new(Vec::new()) })
    }

    /// Bounds `fut` by the step's deadline and turns its error into a [`Fail`] that names the
    /// database and what was being done.
    pub(super) async fn within<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, Fail> {
        match tokio::time::timeout_at(self.deadline, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.pg_fail(what, &e)),
            Err(_) => Err(Fail::Unreachable(format!("{}: {what}: no answer before the step's deadline", self.name))),
        }
    }

    fn pg_fail(&self, what: &str, e: &tokio_postgres::Error) -> Fail {
        let text = self.dsn.redact(&format!("{}: {what}: {}", self.name, error_chain(e)));
        // No server error: the session could not be opened or was lost.
        if e.as_db_error().is_none() { Fail::Unreachable(text) } else { Fail::Other(text) }
    }

    pub(super) fn other(&self, text: impl std::fmt::Display) -> Fail {
        Fail::Other(format!("{}: {text}", self.name))
    }

    /// A new session; its connection task ends when the client is dropped.
    pub(super) async fn connect(&self) -> Result<Client, Fail> {
        let (client, connection) = self.within("connecting", self.config.connect(NoTls)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// A new session whose backend is remembered as the step's own.
    pub(super) async fn connect_own(&self) -> Result<Client, Fail> {
        let client = self.connect().await?;
        let pid: i32 =
            self.within("reading the session's pid", client.query_one("SELECT pg_backend_pid()", &[])).await?.get(0);
        self.own_pids.lock().expect("pid list lock").push(pid);
        Ok(client)
    }

    pub(super) async fn in_recovery(&self, c: &Client) -> Result<bool, Fail> {
        Ok(self.within("reading the role", c.query_one("SELECT pg_is_in_recovery()", &[])).await?.get(0))
    }

    /// Whether the server is in recovery, and whether writes are frozen (read-only default).
    async fn role_and_freeze(&self, c: &Client) -> Result<(bool, bool), Fail> {
        let sql = "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only') = 'on'";
        let row = self.within("reading the role", c.query_one(sql, &[])).await?;
        Ok((row.get(0), row.get(1)))
    }

    /// Sets (or resets) `default_transaction_read_only` server-wide and reloads. Returns the
    /// server's clock just before the reload (µs since the epoch), to tell when it took effect.
    async fn set_read_only(&self, c: &Client, on: bool) -> Result<i64, Fail> {
        let since: i64 = self
            .within(
                "reading the clock",
                c.query_one("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8", &[]),
            )
            .await?
            .get(0);
        let sql = if on {
            "ALTER SYSTEM SET default_transaction_read_only = on"
        } else {
            "ALTER SYSTEM RESET default_transaction_read_only"
        };
        self.within(sql, c.batch_execute(sql)).await?;
        self.within("reloading the configuration", c.query_one("SELECT pg_reload_conf()", &[])).await?;
        Ok(since)
    }

    /// Opens a fresh session and reports what it sees; tries a write when the session has the
    /// configuration loaded at or after `since_us`.
    pub(super) async fn probe(&self, since_us: i64) -> Result<Probe, Fail> {
        let c = self.connect_own().await?;
        let row = self
            .within(
                "probing a new session",
                c.query_one(
                    "SELECT pg_is_in_recovery(), \
                     (extract(epoch FROM pg_conf_load_time()) * 1000000)::int8 >= $1::int8, \
                     current_setting('transaction_read_only') = 'on', \
                     current_setting('default_transaction_read_only') = 'on', \
                     (SELECT source || coalesce(' (' || sourcefile || ')', '') FROM pg_settings \
                      WHERE name = 'default_transaction_read_only'), \
                     (extract(epoch FROM clock_timestamp()) * 1000000)::int8",
                    &[&since_us],
                ),
            )
            .await?;
        let mut probe = Probe {
            in_recovery: row.get(0),
            reloaded: row.get(1),
            read_only: row.get(2),
            default_read_only: row.get(3),
            default_source: row.get::<_, Option<String>>(4).unwrap_or_default(),
            now_us: row.get(5),
            write: None,
        };
        if probe.reloaded {
            probe.write = Some(self.try_write(&c).await?);
        }
        Ok(probe)
    }

    /// Attempts a write that leaves nothing behind: a temp table created in a transaction that
    /// is rolled back. (`txid_current()` is no test: it assigns an id in a read-only
    /// transaction too.)
    async fn try_write(&self, c: &Client) -> Result<Write, Fail> {
        let attempt = async {
            c.batch_execute("BEGIN").await?;
            let created = c.batch_execute("CREATE TEMP TABLE drcut_write_probe (x int)").await;
            c.batch_execute("ROLLBACK").await?;
            Ok::<_, tokio_postgres::Error>(created)
        };
        match tokio::time::timeout_at(self.deadline, attempt).await {
            Ok(Ok(Ok(()))) => Ok(Write::Succeeded),
            Ok(Ok(Err(e))) if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) => Ok(Write::RefusedReadOnly),
            Ok(Ok(Err(e))) => Ok(Write::Failed(self.dsn.redact(&error_chain(&e)))),
            Ok(Err(e)) => Err(self.pg_fail("write probe", &e)),
            Err(_) => {
                Err(Fail::Unreachable(format!("{}: write probe: no answer before the step's deadline", self.name)))
            }
        }
    }

    /// Probes fresh sessions until one has the configuration reloaded at or after `since_us`.
    async fn probe_reloaded(&self, since_us: i64) -> Result<Probe, Fail> {
        let start = Instant::now();
        for round in 1.. {
            let p = self.probe(since_us).await?;
            if p.reloaded {
                tracing::debug!(
                    db = self.name,
                    round,
                    ms = ms_since(start),
                    "new sessions have the reloaded configuration"
                );
                return Ok(p);
            }
            if Instant::now() + RELOAD_POLL >= self.deadline {
                return Err(
                    self.other("new sessions did not get the reloaded configuration before the step's deadline")
                );
            }
            tokio::time::sleep(RELOAD_POLL).await;
        }
        unreachable!("the loop returns")
    }

    /// Role or database settings that turn `default_transaction_read_only` off for new sessions
    /// of that role or database, overriding the server-wide setting.
    async fn read_write_overrides(&self, c: &Client) -> Result<Vec<String>, Fail> {
        let rows = self
            .within(
                "reading role and database settings",
                c.query(
                    "SELECT coalesce('role ' || quote_ident(r.rolname), 'every role') || ' in ' || \
                     coalesce('database ' || quote_ident(d.datname), 'every database'), \
                     substr(cfg, length('default_transaction_read_only=') + 1) \
                     FROM pg_db_role_setting s \
                     LEFT JOIN pg_roles r ON r.oid = s.setrole \
                     LEFT JOIN pg_database d ON d.oid = s.setdatabase, \
                     unnest(s.setconfig) AS cfg \
                     WHERE lower(cfg) LIKE 'default\\_transaction\\_read\\_only=%'",
                    &[],
                ),
            )
            .await?;
        Ok(rows
            .iter()
            .filter(|r| !pg_bool_true(r.get::<_, &str>(1)))
            .map(|r| format!("{} (default_transaction_read_only = {})", r.get::<_, &str>(0), r.get::<_, &str>(1)))
            .collect())
    }

    /// Terminates the client sessions matching `filter` (SQL over `pg_stat_activity`, with `$1`
    /// a server time in µs since the epoch), other than this step's own, and waits until they
    /// are gone (their transactions aborted); repeats until none matches. Returns how many were
    /// terminated. All are signalled at once and then polled: `pg_terminate_backend(pid,
    /// timeout)` would wait for them one by one, 100 ms at a time.
    pub(super) async fn terminate(&self, c: &Client, filter: &str, since_us: i64) -> Result<u64, Fail> {
        let mut terminated = 0u64;
        for _ in 0..TERMINATE_ROUNDS {
            let own: Vec<i32> = self.own_pids.lock().expect("pid list lock").clone();
            let sql = format!(
                "SELECT coalesce(array_agg(pid) FILTER (WHERE t), '{{}}'::int4[]), count(*) FROM ( \
                 SELECT pid, pg_terminate_backend(pid) AS t FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND pid <> ALL($2::int4[]) \
                 AND ({filter})) s"
            );
            let row = self.within("terminating sessions", c.query_one(&sql, &[&since_us, &own])).await?;
            let (pids, matched): (Vec<i32>, i64) = (row.get(0), row.get(1));
            if matched == 0 {
                return Ok(terminated);
            }
            terminated += pids.len() as u64;
            // Gone from pg_stat_activity: the backend has aborted its transaction and is exiting.
            loop {
                let left: i64 = self
                    .within(
                        "waiting for terminated sessions to exit",
                        c.query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int4[])", &[&pids]),
                    )
                    .await?
                    .get(0);
                if left == 0 {
                    break;
                }
                if Instant::now() + EXIT_POLL >= self.deadline {
                    return Err(self.other(format!("{left} terminated session(s) still there at the step's deadline")));
                }
                tokio::time::sleep(EXIT_POLL).await;
            }
        }
        Err(self.other(format!(
            "sessions still match after {TERMINATE_ROUNDS} rounds of terminating them ({terminated} terminated): \
             clients that override the read-only default (BEGIN READ WRITE), or that cannot be terminated"
        )))
    }

    /// Makes new transactions read-only server-wide and verifies it from a fresh session.
    /// Returns that session's view (its `now_us` is the freeze time).
    pub(super) async fn make_read_only(&self, c: &Client) -> Result<Probe, Fail> {
        let since = self.set_read_only(c, true).await?;
        let p = self.probe_reloaded(since).await?;
        match &p.write {
            Some(Write::RefusedReadOnly) => {}
            Some(Write::Succeeded) => {
                return Err(self.other(format!(
                    "a new session can still write after the reload (default_transaction_read_only = {} from {})",
                    if p.default_read_only { "on" } else { "off" },
                    p.default_source
                )));
            }
            Some(Write::Failed(e)) => {
                return Err(self.other(format!("cannot verify: the write probe failed otherwise than read-only: {e}")));
            }
            None => return Err(self.other("the write probe did not run")),
        }
        let overrides = self.read_write_overrides(c).await?;
        if !overrides.is_empty() {
            return Err(self.other(format!(
                "new sessions of {} stay writable: their settings override the read-only default",
                overrides.join(", ")
            )));
        }
        Ok(p)
    }
}

/// Milliseconds since `start`.
pub(super) fn ms_since(start: Instant) -> f64 {
    millis(start.elapsed())
}

pub(super) fn measurements(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

// === freeze_writes ===

async fn freeze_writes(
    params: &serde_json::Value,
    ctx: &StepContext<'_>,
    start: Instant,
    deadline: Instant,
) -> Result<StepOutcome, Fail> {
    let p: FreezeParams = parse_params(params)?;
    let db = Db::open(ctx, &p.database, deadline)?;
    let c = db.connect_own().await?;
    let (in_recovery, was_frozen) = db.role_and_freeze(&c).await?;
    if in_recovery {
        return Err(db.other("is in recovery (a standby): freeze_writes applies to the primary"));
    }
    let probe = db.make_read_only(&c).await?;
    tracing::debug!(db = db.name, ms = ms_since(start), "read-only default in effect");
    // Transactions begun before the freeze took effect may be read-write: end them, and any
    // session holding a transaction id, and wait until they are gone.
    let terminated = db
        .terminate(
            &c,
            "backend_xid IS NOT NULL OR (extract(epoch FROM xact_start) * 1000000)::int8 < $1::int8",
            probe.now_us,
        )
        .await?;
    tracing::debug!(db = db.name, ms = ms_since(start), terminated, "sessions from before the freeze gone");
    // Flush everything inserted so far (see the module docs).
    let flush = async {
        c.batch_execute(
            "START TRANSACTION READ WRITE; SET LOCAL synchronous_commit = local; \
             SELECT pg_logical_emit_message(true, 'drcut', 'freeze_writes'); COMMIT",
        )
        .await?;
        c.query_one("SELECT pg_current_wal_flush_lsn()::text", &[]).await
    };
    let lsn_text: String = db.within("flushing the WAL", flush).await?.get(0);
    let lsn = parse_lsn(&lsn_text).ok_or_else(|| db.other(format!("cannot parse the flush LSN {lsn_text:?}")))?;
    let again = if was_frozen { " (already frozen)" } else { "" };
    Ok(StepOutcome {
        ok: true,
        detail: format!(
            "{}: writes frozen at {lsn_text}{again}: new sessions refuse writes (verified), \
             {terminated} session(s) terminated",
            db.name
        ),
        measurements: measurements(&[
            ("frozen_lsn_bytes", lsn as f64),
            ("terminated_sessions", terminated as f64),
            ("freeze_ms", ms_since(start)),
        ]),
        data: json!({ "frozen_lsn": lsn_text }),
    })
}

// === unfreeze_writes ===

async fn unfreeze_writes(
    params: &serde_json::Value,
    ctx: &StepContext<'_>,
    start: Instant,
    deadline: Instant,
) -> Result<StepOutcome, Fail> {
    let p: FreezeParams = parse_params(params)?;
    let db = Db::open(ctx, &p.database, deadline)?;
    let c = db.connect_own().await?;
    let (in_recovery, was_frozen) = db.role_and_freeze(&c).await?;
    if in_recovery {
        return Err(db.other("is in recovery (a standby) and cannot take writes: promote it first"));
    }
    let since = db.set_read_only(&c, false).await?;
    let probe = db.probe_reloaded(since).await?;
    verify_writable(&db, &probe)?;
    let again = if was_frozen { "" } else { " (was not frozen)" };
    Ok(StepOutcome {
        ok: true,
        detail: format!("{}: writes unfrozen{again}: a new session writes (verified)", db.name),
        measurements: measurements(&[("unfreeze_ms", ms_since(start))]),
        data: json!({ "was_frozen": was_frozen }),
    })
}

/// Fails unless a fresh session is a primary's, read-write, and its write attempt succeeded.
fn verify_writable(db: &Db<'_>, p: &Probe) -> Result<(), Fail> {
    if p.in_recovery {
        return Err(db.other("is in recovery (a standby): cannot take writes"));
    }
    match &p.write {
        Some(Write::Succeeded) if !p.read_only => Ok(()),
        Some(Write::Failed(e)) => Err(db.other(format!("a new session cannot write: {e}"))),
        _ => Err(db.other(format!(
            "new sessions are still read-only (default_transaction_read_only = {} from {})",
            if p.default_read_only { "on" } else { "off" },
            p.default_source
        ))),
    }
}

// === wait_replication ===

async fn wait_replication(
    params: &serde_json::Value,
    ctx: &StepContext<'_>,
    start: Instant,
    deadline: Instant,
) -> Result<StepOutcome, Fail> {
    let p: WaitParams = parse_params(params)?;
    let target = match &p.lsn {
        None => None,
        Some(t) => Some(
            parse_lsn(t).ok_or_else(|| Fail::Other(format!("param lsn: {t:?} is not an LSN (like 16/B374D848)")))?,
        ),
    };
    let db = Db::open(ctx, &p.database, deadline)?;
    let c = db.connect().await?;
    // The last replayed commit's time tells an unplanned failover how old the newest data is.
    let sql = "SELECT pg_is_in_recovery(), pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
               (extract(epoch from pg_last_xact_replay_timestamp()) * 1000)::float8";
    let stmt = db.within("preparing the poll", c.prepare(sql)).await?;
    // The last position seen: (replay, bytes remaining, what they are measured against).
    let mut last: Option<(u64, u64, String)> = None;
    // A drain: since when replay and receive stand still, and where.
    let mut stalled: Option<(Instant, u64, u64)> = None;
    let timed_out = |(replay, remaining, against): (u64, u64, String)| StepOutcome {
        ok: false,
        detail: format!(
            "wait_replication: {}: replay at {} still {remaining} byte(s) short of {against} (budget {}) after {:.0} ms",
            db.name,
            format_lsn(replay),
            p.max_lag_bytes,
            ms_since(start)
        ),
        measurements: measurements(&[("wait_ms", ms_since(start)), ("remaining_bytes", remaining as f64)]),
        data: json!({ "replay_lsn": format_lsn(replay) }),
    };
    loop {
        // A poll cut off by the deadline (a slow answer) still reports the last position seen.
        let row = match tokio::time::timeout_at(deadline, c.query_one(&stmt, &[])).await {
            Ok(Ok(row)) => row,
            Ok(Err(e)) => return Err(db.pg_fail("reading the replay position", &e)),
            Err(_) => match last {
                Some(l) => return Ok(timed_out(l)),
                None => return Err(db.other("reading the replay position: no answer before the step's deadline")),
            },
        };
        if !row.get::<_, bool>(0) {
            return promoted_has(&db, &c, target, start).await;
        }
        let lsn = |i: usize| row.get::<_, Option<String>>(i).as_deref().and_then(parse_lsn);
        let replay = lsn(2).unwrap_or(0);
        // Without streaming (WAL from an archive) what was replayed is all that was received.
        let receive = lsn(1).unwrap_or(replay).max(replay);
        let (remaining, against) = match target {
            Some(t) => (t.saturating_sub(replay), format!("LSN {}", format_lsn(t))),
            None => (receive - replay, format!("received {}", format_lsn(receive))),
        };
        if remaining <= p.max_lag_bytes {
            let replayed_at = row.get::<_, Option<f64>>(3).map(|ms| ms as i64);
            return Ok(StepOutcome {
                ok: true,
                detail: format!(
                    "{}: replayed to {} ({remaining} byte(s) short of {against}, budget {})",
                    db.name,
                    format_lsn(replay),
                    p.max_lag_bytes
                ),
                measurements: measurements(&[("wait_ms", ms_since(start)), ("remaining_bytes", remaining as f64)]),
                data: json!({
                    "replay_lsn": format_lsn(replay),
                    "receive_lsn": format_lsn(receive),
                    "last_replay_unix_ms": replayed_at,
                }),
            });
        }
        if p.drain && target.is_none() {
            let now = Instant::now();
            match stalled {
                Some((at, r, rc)) if r == replay && rc == receive => {
                    if now.duration_since(at) >= DRAIN_SETTLE {
                        return Ok(StepOutcome {
                            ok: true,
                            detail: format!(
                                "{}: drained: replay stands at {}, {remaining} byte(s) short of {against}: a torn \
                                 record the lost primary never finished sending",
                                db.name,
                                format_lsn(replay)
                            ),
                            measurements: measurements(&[
                                ("wait_ms", ms_since(start)),
                                ("remaining_bytes", remaining as f64),
                            ]),
                            data: json!({
                                "replay_lsn": format_lsn(replay),
                                "receive_lsn": format_lsn(receive),
                                "last_replay_unix_ms": row.get::<_, Option<f64>>(3).map(|ms| ms as i64),
                            }),
                        });
                    }
                }
                _ => stalled = Some((now, replay, receive)),
            }
        }
        if Instant::now() + POLL >= deadline {
            return Ok(timed_out((replay, remaining, against)));
        }
        last = Some((replay, remaining, against));
        tokio::time::sleep(POLL).await;
    }
}

/// `wait_replication` against a database that is no longer in recovery: ok when its history
/// holds `target`. On timeline 1 (never promoted) that is its whole WAL; on a later timeline,
/// the WAL it replayed before its newest promotion, up to the switch point in the timeline's
/// history file.
async fn promoted_has(db: &Db<'_>, c: &Client, target: Option<u64>, start: Instant) -> Result<StepOutcome, Fail> {
    let row = db
        .within(
            "reading the timeline",
            c.query_one(
                "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8), pg_current_wal_flush_lsn()::text",
                &[],
            ),
        )
        .await?;
    let (tli_hex, flush_text): (String, String) = (row.get(0), row.get(1));
    let tli = u32::from_str_radix(&tli_hex, 16).map_err(|_| db.other(format!("cannot parse timeline {tli_hex:?}")))?;
    let Some(target) = target else {
        return Ok(StepOutcome {
            ok: true,
            detail: format!("{}: not in recovery (a primary on timeline {tli}): nothing to wait for", db.name),
            measurements: measurements(&[("wait_ms", ms_since(start)), ("remaining_bytes", 0.0)]),
            data: json!({ "replay_lsn": flush_text, "promoted": true }),
        });
    };
    let (reached, what) = if tli == 1 {
        (parse_lsn(&flush_text).unwrap_or(0), "its WAL ends")
    } else {
        let history: String = db
            .within(
                "reading the timeline history",
                c.query_one("SELECT pg_read_file('pg_wal/' || $1::text || '.history')", &[&tli_hex]),
            )
            .await?
            .get(0);
        let switch = last_switchpoint(&history)
            .ok_or_else(|| db.other(format!("timeline {tli} history has no switch point")))?;
        (switch, "it was promoted")
    };
    let remaining = target.saturating_sub(reached);
    let ok = remaining == 0;
    let detail = if ok {
        format!(
            "{}: already promoted (timeline {tli}); {what} at {}, at or after LSN {}",
            db.name,
            format_lsn(reached),
            format_lsn(target)
        )
    } else {
        format!(
            "wait_replication: {}: promoted (timeline {tli}) without LSN {}: {what} at {}, {remaining} byte(s) short",
            db.name,
            format_lsn(target),
            format_lsn(reached)
        )
    };
    Ok(StepOutcome {
        ok,
        detail,
        measurements: measurements(&[("wait_ms", ms_since(start)), ("remaining_bytes", remaining as f64)]),
        data: json!({ "replay_lsn": format_lsn(reached), "promoted": true }),
    })
}

// === promote_db ===

async fn promote_db(
    params: &serde_json::Value,
    ctx: &StepContext<'_>,
    start: Instant,
    deadline: Instant,
) -> Result<StepOutcome, Fail> {
    let p: PromoteParams = parse_params(params)?;
    let db = Db::open(ctx, &p.database, deadline)?;
    let c = db.connect_own().await?;
    let mut notes = Vec::new();
    if db.in_recovery(&c).await? {
        // Without waiting: pg_promote's own wait checks every 100 ms.
        match tokio::time::timeout_at(deadline, c.query_one("SELECT pg_promote(false)", &[])).await {
            Ok(Ok(row)) if row.get::<_, bool>(0) => {}
            Ok(Ok(_)) => return Err(db.other("could not signal the promotion (see the server log)")),
            // Not in recovery (any more): promoted meanwhile, by another attempt or an operator;
            // the loop below checks.
            Ok(Err(e)) if e.code() == Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) => {}
            Ok(Err(e)) => return Err(db.pg_fail("promoting", &e)),
            Err(_) => return Err(db.other("promoting: no answer before the step's deadline")),
        }
        while db.in_recovery(&c).await? {
            if Instant::now() + EXIT_POLL >= deadline {
                return Err(db.other("still in recovery at the step's deadline"));
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
        tracing::debug!(db = db.name, ms = ms_since(start), "promoted");
        notes.push("promoted".to_string());
    } else {
        notes.push("already a primary".to_string());
    }
    let mut probe = db.probe(i64::MIN).await?;
    if !probe.in_recovery && probe.default_read_only {
        // A configuration copied from a frozen primary, or a fence: new sessions would refuse
        // writes. Promotion means this server takes the writes: reset it.
        notes.push(format!("reset default_transaction_read_only (was on from {})", probe.default_source));
        let since = db.set_read_only(&c, false).await?;
        probe = db.probe_reloaded(since).await?;
    }
    verify_writable(&db, &probe)?;
    let row = db
        .within(
            "reading the timeline",
            c.query_one("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8), pg_current_wal_lsn()::text", &[]),
        )
        .await?;
    let (tli_hex, lsn): (String, String) = (row.get(0), row.get(1));
    let tli = u32::from_str_radix(&tli_hex, 16).map_err(|_| db.other(format!("cannot parse timeline {tli_hex:?}")))?;
    Ok(StepOutcome {
        ok: true,
        detail: format!(
            "{}: {}; writable (verified from a new session), timeline {tli} at {lsn}",
            db.name,
            notes.join("; ")
        ),
        measurements: measurements(&[("promote_ms", ms_since(start)), ("timeline", f64::from(tli))]),
        data: json!({ "timeline": tli, "lsn": lsn }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PostgresResource, Resources};

    #[test]
    fn lsns_parse_and_format() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn(" 0/3000148 "), Some(0x300_0148));
        for bad in ["nope", "1/", "/1", "1/2/3", "123456789/0", "g/0"] {
            assert_eq!(parse_lsn(bad), None, "{bad}");
        }
        assert_eq!(format_lsn((0x16 << 32) | 0xB374_D848), "16/B374D848");
        assert_eq!(format_lsn(0x300_0060), "0/3000060");
    }

    #[test]
    fn history_files_give_the_last_switchpoint() {
        assert_eq!(last_switchpoint("1\t0/3000148\tno recovery target specified\n"), Some(0x300_0148));
        let two = "1\t0/3000148\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n";
        assert_eq!(last_switchpoint(two), Some(0x500_0000));
        assert_eq!(last_switchpoint("# comment\n"), None);
    }

    #[test]
    fn booleans_as_postgres_reads_them() {
        for t in ["on", "ON", "true", "yes", "1", "'on'", "t"] {
            assert!(pg_bool_true(t), "{t}");
        }
        for f in ["off", "false", "no", "0", "of", ""] {
            assert!(!pg_bool_true(f), "{f}");
        }
    }

    fn resources() -> Resources {
        let mut r = Resources::default();
        r.postgres.insert(
            "db".to_string(),
            PostgresResource {
                dsn: Secret::new("host=127.0.0.1 port=1 user=postgres password=pw-Secret-1"),
                ..Default::default()
            },
        );
        r
    }

    async fn run(action: &str, params: serde_json::Value) -> StepOutcome {
        let r = resources();
        let ctx = StepContext { resources: &r, timeout: Duration::from_secs(3) };
        let o = execute(action, &params, &ctx).await.expect("a postgres action");
        assert!(!o.detail.contains("pw-Secret-1") && !o.detail.contains("host="), "{}", o.detail);
        o
    }

    #[tokio::test]
    async fn bad_params_name_the_param() {
        let o = run("wait_replication", json!({"database": "db", "max_lag": 5})).await;
        assert!(!o.ok && o.detail.contains("max_lag"), "{}", o.detail);
        let o = run("wait_replication", json!({"database": "db", "max_lag_bytes": "lots"})).await;
        assert!(!o.ok && o.detail.contains("param max_lag_bytes"), "{}", o.detail);
        let o = run("wait_replication", json!({"database": "db", "lsn": "zz"})).await;
        assert!(!o.ok && o.detail.contains("param lsn"), "{}", o.detail);
        let o = run("promote_db", json!({})).await;
        assert!(!o.ok && o.detail.contains("database"), "{}", o.detail);
        let o = run("freeze_writes", json!({"database": "nope"})).await;
        assert!(!o.ok && o.detail.contains("\"nope\"") && o.detail.contains("known: db"), "{}", o.detail);
        let r = resources();
        let ctx = StepContext { resources: &r, timeout: Duration::from_secs(1) };
        assert!(execute("shift_traffic", &json!({}), &ctx).await.is_none());
    }

    #[tokio::test]
    async fn unreachable_fence_is_not_verified() {
        let addr = crate::checks::testutil::closed_port().await;
        let mut r = Resources::default();
        let dsn = format!("host={} port={} user=postgres password=pw-Secret-2", addr.ip(), addr.port());
        r.postgres.insert("old".to_string(), PostgresResource { dsn: Secret::new(dsn), ..Default::default() });
        let ctx = StepContext { resources: &r, timeout: Duration::from_secs(3) };
        let o = super::super::execute("fence", &json!({"database": "old"}), &ctx).await;
        assert!(!o.ok && o.detail.starts_with("fence: unreachable: cannot verify fence: old:"), "{}", o.detail);
        assert!(!o.detail.contains("pw-Secret-2"), "{}", o.detail);
        let o = execute("promote_db", &json!({"database": "old"}), &ctx).await.unwrap();
        assert!(!o.ok && o.detail.starts_with("promote_db: old: connecting:"), "{}", o.detail);
    }
}
