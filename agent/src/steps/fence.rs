//! `fence`: make sure an old primary can never take writes again.
//!
//! `{database, mode?}` fences a postgres resource of this agent:
//! - `read_only` (default): `default_transaction_read_only` set persistently (`ALTER SYSTEM` +
//!   reload) and every session from before it terminated;
//! - `stop`: read-only first (a stop that hangs leaves a read-only server), then `pg_ctl stop -m
//!   fast`, `-m immediate` if that fails;
//! - `recovery`: read-only, stopped, `standby.signal` written with an empty `primary_conninfo`,
//!   and started again: a standby without an upstream, which cannot take writes until it is
//!   rebuilt (`rebuild_standby`).
//!
//! Every mode is verified from a fresh session (a write must fail; `recovery`: in recovery;
//! `stop`: no postmaster left). When the server cannot be reached and the resource declares
//! its `data_dir`, the data directory itself is fenced (*offline*) so PostgreSQL comes up
//! fenced: `read_only` puts `default_transaction_read_only = 'on'` in `postgresql.auto.conf`;
//! `stop` and `recovery` also write `standby.signal`. A postmaster that still runs but does not
//! answer is stopped first in those two modes; in `read_only` mode it cannot be verified, and
//! the step fails.
//!
//! `{hook: {exec: [..]}}` or `{hook: {webhook: url, body?}}` fences by power or network
//! (STONITH), run by an agent outside the failed region: the `hook` step's code, where a
//! non-zero exit or a non-2xx answer is a failed fence.
//!
//! Data: `{fenced, mode, how: online | offline | hook}`; measurements `fenced` (1/0), `offline`
//! (1/0), `fence_ms`.

use super::postgres::{Db, Fail, Write, measurements, ms_since};
use super::{StepContext, StepOutcome, budget};
use crate::config::{FenceMode, PostgresResource};
use crate::pgdata::{DataDir, STANDBY_SIGNAL};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

/// How long self-fencing waits for a server to say whether it is a standby.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FenceParams {
    database: Option<String>,
    mode: Option<String>,
    hook: Option<serde_json::Value>,
    #[serde(default, rename = "inputs")]
    _inputs: IgnoredAny,
}

/// Executes `fence` (the only action of this module).
pub async fn execute(action: &str, params: &serde_json::Value, ctx: &StepContext<'_>) -> Option<StepOutcome> {
    if action != "fence" {
        return None;
    }
    let start = Instant::now();
    let deadline = start + budget(ctx.timeout);
    let p: FenceParams = match super::parse_params(params) {
        Ok(p) => p,
        Err(e) => return Some(StepOutcome::failed(format!("fence: {e}"))),
    };
    let outcome = match (p.database, p.hook) {
        (Some(db), None) => match p.mode.as_deref().map(FenceMode::parse).transpose() {
            Ok(mode) => fence_database(ctx, &db, mode.unwrap_or_default(), start, deadline).await,
            Err(e) => StepOutcome::failed(format!("fence: param mode: {e}")),
        },
        (None, Some(hook)) if p.mode.is_none() => stonith(&hook, ctx, start, deadline).await,
        (None, Some(_)) => StepOutcome::failed("fence: param mode: goes with database, not with hook"),
        (Some(_), Some(_)) => {
            StepOutcome::failed("fence: bad params: database or hook, not both (run two fence steps)")
        }
        (None, None) => StepOutcome::failed(
            "fence: bad params: name the database (a postgres resource) or a hook ({exec: [..]} or {webhook: url})",
        ),
    };
    Some(outcome)
}

/// Fences the postgres resource `name` in `mode`, online if it answers, else offline when it
/// declares a data directory. Used by the step and by self-fencing.
pub async fn fence_database(
    ctx: &StepContext<'_>,
    name: &str,
    mode: FenceMode,
    start: Instant,
    deadline: Instant,
) -> StepOutcome {
    let db = match Db::open(ctx, name, deadline) {
        Ok(db) => db,
        Err(e) => return StepOutcome::failed(format!("fence: {}", e.text())),
    };
    let res = &ctx.resources.postgres[name];
    match online(&db, res, mode, start, deadline).await {
        Ok(o) => o,
        Err(Fail::Unreachable(e)) => match &res.data_dir {
            Some(dir) => match offline(name, res, dir, mode, start, deadline).await {
                Ok(o) => o,
                Err(why) => {
                    StepOutcome::failed(format!("fence: {name}: unreachable ({e}); offline fence failed: {why}"))
                }
            },
            None => StepOutcome::failed(format!(
                "fence: unreachable: cannot verify fence: {e} (declare the resource's data_dir to fence it offline)"
            )),
        },
        Err(Fail::Other(e)) => StepOutcome::failed(format!("fence: {e}")),
    }
}

/// Self-fencing of `name` (see [`crate::lease`]): a standby takes no writes and is left
/// alone; anything else is fenced as [`fence_database`] does.
pub async fn self_fence(ctx: &StepContext<'_>, name: &str, mode: FenceMode) -> StepOutcome {
    let start = Instant::now();
    let deadline = start + budget(ctx.timeout);
    // A quick look only: a server that does not answer soon is fenced (offline if need be).
    if let Ok(db) = Db::open(ctx, name, start + PROBE_TIMEOUT.min(budget(ctx.timeout)))
        && let Ok(c) = db.connect().await
        && let Ok(true) = db.in_recovery(&c).await
    {
        return StepOutcome {
            ok: true,
            detail: format!("{name}: a standby (in recovery): takes no writes, nothing to fence"),
            measurements: measurements(&[("fenced", 0.0), ("fence_ms", ms_since(start))]),
            data: json!({ "fenced": false, "mode": mode.as_str(), "how": "none" }),
        };
    }
    fence_database(ctx, name, mode, start, deadline).await
}

fn outcome(
    name: &str,
    mode: FenceMode,
    how: &str,
    detail: String,
    start: Instant,
    extra: &[(&str, f64)],
) -> StepOutcome {
    let mut m = measurements(&[
        ("fenced", 1.0),
        ("offline", if how == "offline" { 1.0 } else { 0.0 }),
        ("fence_ms", ms_since(start)),
    ]);
    m.extend(extra.iter().map(|(k, v)| (k.to_string(), *v)));
    StepOutcome {
        ok: true,
        detail: format!("{name}: {detail}"),
        measurements: m,
        data: json!({ "fenced": true, "mode": mode.as_str(), "how": how }),
    }
}

/// Fences a server that answers.
async fn online(
    db: &Db<'_>,
    res: &PostgresResource,
    mode: FenceMode,
    start: Instant,
    deadline: Instant,
) -> Result<StepOutcome, Fail> {
    let c = db.connect_own().await?;
    let in_recovery = db.in_recovery(&c).await?;
    let probe = db.make_read_only(&c).await?;
    // Every session that existed before the fence took effect; new ones start read-only.
    let terminated = db
        .terminate(
            &c,
            "backend_xid IS NOT NULL OR (extract(epoch FROM backend_start) * 1000000)::int8 < $1::int8",
            probe.now_us,
        )
        .await?;
    let after = db.probe(i64::MIN).await?;
    if after.write != Some(Write::RefusedReadOnly) {
        return Err(db.other(format!("a new session's write was not refused after fencing: {:?}", after.write)));
    }
    let role = if in_recovery { "a standby, now also read-only if promoted" } else { "a primary" };
    let read_only =
        format!("read-only ({role}): new sessions refuse writes (verified), {terminated} session(s) terminated");
    let extra = [("terminated_sessions", terminated as f64)];
    if mode == FenceMode::ReadOnly || (mode == FenceMode::Recovery && in_recovery) {
        let note = if mode == FenceMode::Recovery { "; already in recovery: left running" } else { "" };
        return Ok(outcome(db.name, mode, "online", format!("fenced {read_only}{note}"), start, &extra));
    }
    let dir = match &res.data_dir {
        Some(d) => d.clone(),
        None => {
            let row = db.within("reading data_directory", c.query_one("SHOW data_directory", &[])).await?;
            PathBuf::from(row.get::<_, String>(0))
        }
    };
    drop(c);
    let dd = DataDir::new(&dir, res.bin_dir.as_deref()).map_err(|e| db.other(e))?;
    let options = dd.last_options();
    let how_stopped = dd.stop(deadline).await.map_err(|e| db.other(redact(res, &e)))?;
    if mode == FenceMode::Stop {
        if let Some(pid) = dd.running_pid() {
            return Err(db.other(format!("postmaster {pid} still runs after pg_ctl stop")));
        }
        // Starting it again by hand must not bring back a writable primary either.
        write_standby_files(&dd).map_err(|e| db.other(e))?;
        return Ok(outcome(
            db.name,
            mode,
            "online",
            format!("fenced {read_only}; stopped ({how_stopped}); standby.signal written for any restart"),
            start,
            &extra,
        ));
    }
    write_standby_files(&dd).map_err(|e| db.other(e))?;
    dd.start(options.as_deref(), deadline).await.map_err(|e| db.other(redact(res, &e)))?;
    let p = db.probe(i64::MIN).await?;
    if !p.in_recovery {
        return Err(db.other("restarted with standby.signal but not in recovery"));
    }
    if p.write != Some(Write::RefusedReadOnly) {
        return Err(db.other(format!("restarted in recovery but a write was not refused: {:?}", p.write)));
    }
    Ok(outcome(
        db.name,
        mode,
        "online",
        format!(
            "fenced {read_only}; stopped ({how_stopped}) and restarted in recovery without an upstream (verified: \
             in recovery, writes refused); rebuild it to use it again"
        ),
        start,
        &extra,
    ))
}

/// `standby.signal`, no upstream, and the read-only default: whatever starts this data
/// directory next gets a server that refuses writes.
fn write_standby_files(dd: &DataDir) -> Result<(), String> {
    dd.set_auto_conf("default_transaction_read_only", Some("on"))?;
    dd.set_auto_conf("primary_conninfo", Some(""))?;
    dd.remove_file("recovery.signal")?;
    dd.write_file(STANDBY_SIGNAL, b"")
}

/// Fences the data directory of a server that does not answer.
async fn offline(
    name: &str,
    res: &PostgresResource,
    dir: &std::path::Path,
    mode: FenceMode,
    start: Instant,
    deadline: Instant,
) -> Result<StepOutcome, String> {
    let dd = DataDir::new(dir, res.bin_dir.as_deref())?;
    let mut notes = Vec::new();
    if let Some(pid) = dd.running_pid() {
        if mode == FenceMode::ReadOnly {
            return Err(format!(
                "postmaster {pid} runs on {} but does not answer: a read-only fence cannot be verified (use mode stop)",
                dir.display()
            ));
        }
        let how = dd.stop(deadline).await.map_err(|e| redact(res, &e))?;
        notes.push(format!("stopped the unanswering postmaster {pid} ({how})"));
    }
    dd.set_auto_conf("default_transaction_read_only", Some("on"))?;
    if dd.auto_conf_value("default_transaction_read_only").as_deref() != Some("on") {
        return Err("postgresql.auto.conf does not read back default_transaction_read_only = 'on'".into());
    }
    notes.push("default_transaction_read_only = 'on' in postgresql.auto.conf".into());
    if mode != FenceMode::ReadOnly {
        write_standby_files(&dd)?;
        if !dd.has(STANDBY_SIGNAL) {
            return Err("standby.signal is not there after writing it".into());
        }
        notes.push("standby.signal written with no upstream (it starts as a standby)".into());
    }
    if let Some(pid) = dd.running_pid() {
        return Err(format!("postmaster {pid} started meanwhile: fence it online"));
    }
    Ok(outcome(
        name,
        mode,
        "offline",
        format!("unreachable and not running: fenced offline in {}: {}", dir.display(), notes.join("; ")),
        start,
        &[],
    ))
}

/// A tool's text with the resource's DSN (and its password alone) replaced.
fn redact(res: &PostgresResource, text: &str) -> String {
    let t = res.dsn.redact(text);
    match res.dsn.expose().parse::<tokio_postgres::Config>().ok().and_then(|c| c.get_password().map(<[u8]>::to_vec)) {
        Some(pw) if !pw.is_empty() => t.replace(&*String::from_utf8_lossy(&pw), "***"),
        _ => t,
    }
}

/// STONITH through the `hook` step's code.
async fn stonith(hook: &serde_json::Value, ctx: &StepContext<'_>, start: Instant, deadline: Instant) -> StepOutcome {
    let o = match super::http::hook(hook, ctx, deadline).await {
        Ok(o) => o,
        Err(e) => return StepOutcome::failed(format!("fence: hook: {e}")),
    };
    let mut m = o.measurements;
    m.insert("fenced".into(), if o.ok { 1.0 } else { 0.0 });
    m.insert("offline".into(), 0.0);
    m.insert("fence_ms".into(), ms_since(start));
    let detail =
        if o.ok { format!("fenced by hook: {}", o.detail) } else { format!("fence: hook failed: {}", o.detail) };
    StepOutcome { ok: o.ok, detail, measurements: m, data: json!({ "fenced": o.ok, "how": "hook" }) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Resources;
    use crate::secrets::Secret;

    async fn run(r: &Resources, params: serde_json::Value) -> StepOutcome {
        let ctx = StepContext { resources: r, timeout: Duration::from_secs(5) };
        execute("fence", &params, &ctx).await.expect("fence")
    }

    #[tokio::test]
    async fn bad_params_name_the_param() {
        let r = Resources::default();
        let d = run(&r, json!({"database": "db", "mode": "stonith"})).await.detail;
        assert!(d.contains("param mode") && d.contains("read_only, stop, recovery"), "{d}");
        let d = run(&r, json!({"hook": {"exec": ["/bin/true"]}, "mode": "stop"})).await.detail;
        assert!(d.contains("param mode: goes with database"), "{d}");
        let d = run(&r, json!({"hook": {"exec": ["/bin/true"]}, "database": "db"})).await.detail;
        assert!(d.contains("not both"), "{d}");
        let d = run(&r, json!({})).await.detail;
        assert!(d.contains("name the database"), "{d}");
        let d = run(&r, json!({"hook": {"exec": []}})).await.detail;
        assert!(d.contains("param exec"), "{d}");
        let d = run(&r, json!({"database": "nope"})).await.detail;
        assert!(d.contains("no postgres resource named \"nope\""), "{d}");
    }

    #[tokio::test]
    async fn stonith_hook_exit_status_decides() {
        let r = Resources::default();
        let o = run(&r, json!({"hook": {"exec": ["/bin/sh", "-c", "echo powered off"]}})).await;
        assert!(o.ok && o.detail.contains("powered off") && o.data["how"] == "hook", "{o:?}");
        assert_eq!(o.measurements["fenced"], 1.0);
        let o = run(&r, json!({"hook": {"exec": ["/bin/sh", "-c", "echo no ipmi; exit 3"]}})).await;
        assert!(!o.ok && o.detail.contains("hook failed") && o.detail.contains("no ipmi"), "{o:?}");
        assert_eq!(o.measurements["exit_code"], 3.0);
    }

    #[tokio::test]
    async fn unreachable_with_a_data_dir_is_fenced_offline() {
        let addr = crate::checks::testutil::closed_port().await;
        let dir = tempfile::tempdir().unwrap();
        let mut r = Resources::default();
        let dsn = format!("host={} port={} user=postgres password=pw-Fence-7", addr.ip(), addr.port());
        let res = PostgresResource {
            dsn: Secret::new(dsn),
            data_dir: Some(dir.path().to_path_buf()),
            bin_dir: Some(PathBuf::from("/bin")),
            ..Default::default()
        };
        r.postgres.insert("old".into(), res);
        let o = run(&r, json!({"database": "old"})).await;
        assert!(o.ok && o.data["how"] == "offline" && o.data["mode"] == "read_only", "{o:?}");
        assert!(!o.detail.contains("pw-Fence-7"));
        let conf = std::fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap();
        assert!(conf.contains("default_transaction_read_only = 'on'"), "{conf}");
        assert!(!dir.path().join("standby.signal").exists());
        let o = run(&r, json!({"database": "old", "mode": "recovery"})).await;
        assert!(o.ok && o.measurements["offline"] == 1.0, "{o:?}");
        assert!(dir.path().join("standby.signal").exists());
    }
}
