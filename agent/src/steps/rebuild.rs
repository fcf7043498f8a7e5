//! `rebuild_standby`: turn an old (fenced) primary into a standby of the new one, the first
//! half of a failback.
//!
//! `{database, upstream}`: `database` is a postgres resource of this agent with a `data_dir`;
//! `upstream` another one, the server to stream from (the new primary). The agent
//!
//! 1. checks that the upstream answers (nothing is stopped for an upstream that is not there);
//! 2. keeps the server's own config files (`postgresql.conf`, `pg_hba.conf`, `pg_ident.conf`,
//!    `postgresql.auto.conf`, `postmaster.opts`): both tools below copy the upstream's;
//! 3. stops the server (`pg_ctl stop -m fast`, then immediate);
//! 4. runs `pg_rewind --target-pgdata=DATA_DIR --source-server=UPSTREAM`; it needs
//!    `wal_log_hints = on` or data checksums on the old primary, and the WAL since the
//!    divergence. If it fails, the data directory is moved aside (`<dir>.drcut-old-<unix
//!    time>`) and `pg_basebackup -X stream` makes a fresh copy; if that fails too, the old
//!    directory is moved back;
//! 5. puts back the config files, removes a fence's `default_transaction_read_only` from
//!    `postgresql.auto.conf` (a standby is read-only anyway, and after a later promotion it
//!    must take writes), sets `primary_conninfo` to the upstream (with `application_name` =
//!    the resource name) and writes `standby.signal`;
//! 6. starts the server with its last options, and waits until it is in recovery and its WAL
//!    receiver streams (`pg_stat_wal_receiver`). Only then is a moved-aside directory deleted.
//!
//! The upstream's password reaches the tools through `PGPASSWORD`, never their command line,
//! and `primary_conninfo` (a 0600 file, as `pg_basebackup -R` writes it). No detail, datum or
//! log line shows a DSN. Data: `{method: pg_rewind | pg_basebackup, fallback_reason?}`;
//! measurements `rebuild_ms`, `rewind_ms`, `basebackup_ms`, `start_ms`.

use super::postgres::{Db, measurements, ms_since};
use super::{StepContext, StepOutcome, budget};
use crate::config::PostgresResource;
use crate::pgdata::{self, AUTO_CONF, DataDir, STANDBY_SIGNAL};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::json;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::config::Host;

/// Config files a rebuild keeps from the server's own data directory.
const OWN_FILES: [&str; 5] = ["postgresql.conf", "pg_hba.conf", "pg_ident.conf", AUTO_CONF, "postmaster.opts"];

/// How often the restarted server is asked whether it streams.
const STREAM_POLL: Duration = Duration::from_millis(100);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RebuildParams {
    database: String,
    upstream: String,
    #[serde(default, rename = "inputs")]
    _inputs: IgnoredAny,
}

/// Executes `rebuild_standby` (the only action of this module).
pub async fn execute(action: &str, params: &serde_json::Value, ctx: &StepContext<'_>) -> Option<StepOutcome> {
    if action != "rebuild_standby" {
        return None;
    }
    let start = Instant::now();
    let deadline = start + budget(ctx.timeout);
    let outcome = match super::parse_params::<RebuildParams>(params) {
        Ok(p) => rebuild(&p, ctx, start, deadline).await,
        Err(e) => Err(e),
    };
    Some(outcome.unwrap_or_else(|e| StepOutcome::failed(format!("rebuild_standby: {e}"))))
}

fn lookup<'r>(ctx: &'r StepContext<'_>, param: &str, name: &str) -> Result<&'r PostgresResource, String> {
    ctx.resources.postgres.get(name).ok_or_else(|| {
        let known: Vec<&str> = ctx.resources.postgres.keys().map(String::as_str).collect();
        let known = if known.is_empty() { "none defined".to_string() } else { known.join(", ") };
        format!("param {param}: no postgres resource named {name:?} (known: {known})")
    })
}

/// A libpq connection string for the upstream, without its password (returned apart), and
/// with `application_name` when given.
fn conninfo(res: &PostgresResource, application_name: Option<&str>) -> Result<(String, Option<String>), String> {
    let cfg: tokio_postgres::Config =
        res.dsn.expose().parse().map_err(|_| "the upstream's DSN does not parse".to_string())?;
    let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut parts = Vec::new();
    match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => parts.push(format!("host={}", q(h))),
        Some(Host::Unix(p)) => parts.push(format!("host={}", q(&p.display().to_string()))),
        None => {}
    }
    if let Some(port) = cfg.get_ports().first() {
        parts.push(format!("port={port}"));
    }
    if let Some(u) = cfg.get_user() {
        parts.push(format!("user={}", q(u)));
    }
    if let Some(d) = cfg.get_dbname() {
        parts.push(format!("dbname={}", q(d)));
    }
    if let Some(a) = application_name {
        parts.push(format!("application_name={}", q(a)));
    }
    let password = cfg.get_password().map(|p| String::from_utf8_lossy(p).into_owned());
    Ok((parts.join(" "), password))
}

/// The config files kept across the rebuild (`None`: the server had none in its directory).
struct Kept(Vec<(&'static str, Option<Vec<u8>>)>);

impl Kept {
    fn read(dir: &Path) -> Kept {
        Kept(OWN_FILES.iter().map(|f| (*f, std::fs::read(dir.join(f)).ok())).collect())
    }

    fn get(&self, name: &str) -> Option<&[u8]> {
        self.0.iter().find(|(n, _)| *n == name).and_then(|(_, c)| c.as_deref())
    }

    /// Writes the kept files back, and the server's own `postgresql.auto.conf` as a standby of
    /// the upstream with no fence.
    fn restore(&self, dd: &DataDir, primary_conninfo: &str) -> Result<(), String> {
        for (name, content) in &self.0 {
            if let Some(c) = content
                && *name != AUTO_CONF
            {
                dd.write_file(name, c)?;
            }
        }
        let own = String::from_utf8_lossy(self.get(AUTO_CONF).unwrap_or_default()).into_owned();
        let auto = pgdata::conf_with(&own, "default_transaction_read_only", None);
        let auto = pgdata::conf_with(&auto, "primary_conninfo", Some(primary_conninfo));
        dd.write_file(AUTO_CONF, auto.as_bytes())?;
        dd.remove_file("recovery.signal")?;
        dd.write_file(STANDBY_SIGNAL, b"")
    }
}

async fn rebuild(
    p: &RebuildParams,
    ctx: &StepContext<'_>,
    start: Instant,
    deadline: Instant,
) -> Result<StepOutcome, String> {
    let res = lookup(ctx, "database", &p.database)?;
    let up = lookup(ctx, "upstream", &p.upstream)?;
    if p.database == p.upstream {
        return Err(format!("param upstream: {:?} is the database itself: name the new primary", p.upstream));
    }
    let dir = res.data_dir.clone().ok_or_else(|| {
        format!("param database: {:?} declares no data_dir: the agent rebuilds it on this host", p.database)
    })?;
    let dd = DataDir::new(&dir, res.bin_dir.as_deref())?;
    let (source, password) = conninfo(up, None)?;
    let (stream_from, _) = conninfo(up, Some(&p.database))?;
    let secrets: Vec<String> = [Some(up.dsn.expose().to_string()), password.clone(), Some(source.clone())]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect();
    let redact = |t: String| secrets.iter().fold(t, |t, s| t.replace(s.as_str(), "***"));

    // An upstream that is not there would leave nothing to stream from after the stop.
    let updb = Db::open(ctx, &p.upstream, deadline).map_err(|e| e.text())?;
    let c = updb.connect().await.map_err(|e| format!("upstream {}", e.text()))?;
    // A just-promoted server records its new timeline in its control file only at its next
    // checkpoint; before that, pg_rewind reads the old timeline and finds nothing to rewind.
    if let Err(e) = updb.within("CHECKPOINT", c.batch_execute("CHECKPOINT")).await {
        tracing::warn!(upstream = %p.upstream, "rebuild_standby: CHECKPOINT on the upstream: {}", redact(e.text()));
    }
    let tli_sql = "SELECT CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint()) \
                   ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END";
    let upstream_tli: i32 = updb
        .within("reading the upstream's timeline", c.query_one(tli_sql, &[]))
        .await
        .map_err(|e| format!("upstream {}", e.text()))?
        .get(0);
    drop(c);

    let kept = Kept::read(&dir);
    let options = dd.last_options();
    let stopped = dd.stop(deadline).await.map_err(|e| format!("{}: {}", p.database, redact(e)))?;
    tracing::info!(db = %p.database, upstream = %p.upstream, stopped, "rebuild_standby: server stopped");
    let env: Vec<(&str, &str)> = password.as_deref().map(|pw| vec![("PGPASSWORD", pw)]).unwrap_or_default();

    let rewind_started = Instant::now();
    let rewind_args: Vec<OsString> =
        vec![format!("--target-pgdata={}", dir.display()).into(), format!("--source-server={source}").into()];
    let rewind = dd.tool("pg_rewind", &rewind_args, &env, deadline).await;
    let rewind_ms = ms_since(rewind_started);
    let mut m = measurements(&[("rewind_ms", rewind_ms)]);
    let mut moved_aside: Option<PathBuf> = None;
    let (method, fallback) = match rewind {
        Ok(out) => {
            tracing::info!(db = %p.database, "rebuild_standby: pg_rewind: {}", redact(out));
            ("pg_rewind", None)
        }
        Err(e) => {
            let why = redact(e);
            tracing::warn!(db = %p.database, "rebuild_standby: pg_rewind failed, falling back to pg_basebackup: {why}");
            let bb_started = Instant::now();
            let aside = base_backup(&dd, &dir, &source, &env, deadline).await.map_err(|e| {
                format!("{}: pg_rewind failed ({why}); pg_basebackup failed too: {}", p.database, redact(e))
            })?;
            m.insert("basebackup_ms".into(), ms_since(bb_started));
            moved_aside = Some(aside);
            ("pg_basebackup", Some(why))
        }
    };
    let (with_password, _) = conninfo(up, Some(&p.database))?;
    let primary_conninfo = match &password {
        Some(pw) => format!("{with_password} password='{}'", pw.replace('\\', "\\\\").replace('\'', "\\'")),
        None => stream_from,
    };
    kept.restore(&dd, &primary_conninfo).map_err(|e| format!("{}: {e}", p.database))?;
    let start_started = Instant::now();
    dd.start(options.as_deref(), deadline).await.map_err(|e| {
        let kept_old = moved_aside.as_ref().map_or(String::new(), |a| format!(" (old data kept in {})", a.display()));
        format!("{}: rebuilt with {method} but cannot start: {}{kept_old}", p.database, redact(e))
    })?;
    let db = Db::open(ctx, &p.database, deadline).map_err(|e| e.text())?;
    let status = wait_streaming(&db, upstream_tli, deadline).await.map_err(|e| {
        let kept_old = moved_aside.as_ref().map_or(String::new(), |a| format!(" (old data kept in {})", a.display()));
        format!("{}: rebuilt with {method} and started, but {}{kept_old}", p.database, redact(e))
    })?;
    m.insert("start_ms".into(), ms_since(start_started));
    let mut notes = Vec::new();
    if let Some(a) = &moved_aside {
        match std::fs::remove_dir_all(a) {
            Ok(()) => notes.push("the old data directory is removed".to_string()),
            Err(e) => notes.push(format!("the old data directory {} is left: {e}", a.display())),
        }
    }
    m.insert("rebuild_ms".into(), ms_since(start));
    let how = match &fallback {
        None => format!("pg_rewind in {rewind_ms:.0} ms"),
        Some(why) => format!(
            "pg_basebackup in {:.0} ms after pg_rewind failed ({why})",
            m.get("basebackup_ms").copied().unwrap_or_default()
        ),
    };
    let notes = if notes.is_empty() { String::new() } else { format!("; {}", notes.join("; ")) };
    Ok(StepOutcome {
        ok: true,
        detail: format!(
            "{}: rebuilt as a standby of {} with {how}; in recovery and {status} (verified){notes}",
            p.database, p.upstream
        ),
        measurements: m,
        data: json!({ "method": method, "fallback_reason": fallback, "stopped": stopped }),
    })
}

/// Moves `dir` aside and makes a fresh copy of the upstream in its place; on failure puts the
/// old directory back. Returns where the old one went.
async fn base_backup(
    dd: &DataDir,
    dir: &Path,
    source: &str,
    env: &[(&str, &str)],
    deadline: Instant,
) -> Result<PathBuf, String> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into());
    let aside = dir.with_file_name(format!("{name}.drcut-old-{stamp}"));
    std::fs::rename(dir, &aside).map_err(|e| format!("moving {} aside: {e}", dir.display()))?;
    let put_back = |why: String| {
        let _ = std::fs::remove_dir_all(dir);
        match std::fs::rename(&aside, dir) {
            Ok(()) => why,
            Err(e) => format!("{why}; and moving {} back failed: {e}", aside.display()),
        }
    };
    if let Err(e) = dd.prepare_empty(dir) {
        return Err(put_back(e));
    }
    let args: Vec<OsString> = vec![
        "-D".into(),
        dir.as_os_str().to_owned(),
        "-d".into(),
        source.into(),
        "-X".into(),
        "stream".into(),
        "--checkpoint=fast".into(),
        "-w".into(),
    ];
    match dd.tool("pg_basebackup", &args, env, deadline).await {
        Ok(_) => Ok(aside),
        Err(e) => Err(put_back(e)),
    }
}

/// Waits until the server is in recovery and its WAL receiver streams the upstream's timeline
/// (`tli` or later): a receiver streaming an older timeline is a server that was not rewound.
async fn wait_streaming(db: &Db<'_>, tli: i32, deadline: Instant) -> Result<String, String> {
    let mut last: String;
    loop {
        let attempt = async {
            let c = db.connect().await.map_err(|e| e.text())?;
            let row = db
                .within(
                    "reading the WAL receiver",
                    c.query_one(
                        "SELECT pg_is_in_recovery(), (SELECT status FROM pg_stat_wal_receiver LIMIT 1), \
                         (SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1)",
                        &[],
                    ),
                )
                .await
                .map_err(|e| e.text())?;
            Ok::<_, String>((row.get::<_, bool>(0), row.get::<_, Option<String>>(1), row.get::<_, Option<i32>>(2)))
        };
        match attempt.await {
            Ok((false, _, _)) => return Err("it is not in recovery".into()),
            Ok((true, Some(s), Some(t))) if s == "streaming" && t >= tli => {
                return Ok(format!("streaming timeline {t}"));
            }
            Ok((true, s, t)) => {
                last = format!(
                    "WAL receiver {} on timeline {} (upstream: {tli})",
                    s.as_deref().unwrap_or("not running"),
                    t.map_or("-".into(), |t| t.to_string())
                )
            }
            Err(e) => last = e,
        }
        if Instant::now() + STREAM_POLL >= deadline {
            return Err(format!("not streaming at the step's deadline: {last}"));
        }
        tokio::time::sleep(STREAM_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Resources;
    use crate::secrets::Secret;

    fn res(dsn: &str, dir: Option<&Path>) -> PostgresResource {
        PostgresResource { dsn: Secret::new(dsn), data_dir: dir.map(Path::to_path_buf), ..Default::default() }
    }

    #[test]
    fn conninfo_keeps_the_password_apart() {
        let r = res("host=127.0.0.1 port=5433 user=rep password=pw'x dbname=postgres", None);
        let (c, pw) = conninfo(&r, Some("old-primary")).unwrap();
        assert_eq!(c, "host='127.0.0.1' port=5433 user='rep' dbname='postgres' application_name='old-primary'");
        assert_eq!(pw.as_deref(), Some("pw'x"));
    }

    #[tokio::test]
    async fn bad_params_name_the_param() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Resources::default();
        r.postgres.insert("old".into(), res("host=127.0.0.1 port=1 user=postgres password=pw-Rb-1", Some(dir.path())));
        r.postgres.insert("nodir".into(), res("host=127.0.0.1 port=1 user=postgres", None));
        let ctx = StepContext { resources: &r, timeout: Duration::from_secs(3) };
        let run = |p: serde_json::Value| {
            let ctx = &ctx;
            async move { execute("rebuild_standby", &p, ctx).await.unwrap().detail }
        };
        let d = run(json!({"database": "old"})).await;
        assert!(d.contains("missing field `upstream`"), "{d}");
        let d = run(json!({"database": "old", "upstream": "new"})).await;
        assert!(d.contains("param upstream: no postgres resource named \"new\" (known: nodir, old)"), "{d}");
        let d = run(json!({"database": "old", "upstream": "old"})).await;
        assert!(d.contains("is the database itself"), "{d}");
        let d = run(json!({"database": "nodir", "upstream": "old"})).await;
        assert!(d.contains("declares no data_dir"), "{d}");
        // The upstream is checked before anything is stopped; no DSN in the detail.
        let d = run(json!({"database": "old", "upstream": "nodir"})).await;
        assert!(d.contains("upstream nodir: connecting") && !d.contains("host="), "{d}");
    }
}
