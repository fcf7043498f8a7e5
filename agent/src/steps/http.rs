//! `warm_caches`, `smoke` and `hook`: HTTP requests against the application, and call-outs.
//!
//! URLs come from `urls` (absolute, sent without credentials) and/or an `http` resource with
//! `paths` (joined to its `base_url`, sent with its headers and bearer token: credentials go
//! only where the resource says).
//!
//! # `warm_caches`
//! `{urls?, http?, paths?, concurrency?: 8, until_p95_ms?, max_duration?, min_rounds?: 1}`.
//! A *round* requests every URL, cycling through the list until at least `concurrency`
//! requests are made (one URL with `concurrency: 8` is 8 concurrent requests), at most
//! `concurrency` in flight; each response body is read to the end. With `until_p95_ms`, rounds
//! repeat (at least `min_rounds`) until one has no errors and a p95 latency ≤ the target:
//! ok; if `max_duration` passes first: not ok. Without a target, `min_rounds` rounds run and ok
//! means the last one had no errors. `max_duration` is a string with a unit, `"500ms"`,
//! `"30s"` or `"2m"` (default, and upper bound: the step's timeout less a margin); no round
//! starts after it, and the round in progress completes (within the step's timeout), so the
//! verdict is always about a whole round. An error is a transport failure (each request is
//! bounded by 10 s) or a status outside 2xx/3xx. Measurements: `requests`, `errors`,
//! `p95_ms` (last round), `duration_ms`, `rounds`.
//!
//! # `smoke`
//! `{urls?, http?, paths?, expect_status?: [200]}`: one GET per URL (8 at a time); ok when every
//! status is expected. The detail lists the failures. Measurements: `latency_ms.<path>` per URL
//! that answered (`<path>` is the path as given with `paths`, `host:port/path` for `urls`),
//! `failed`.
//!
//! # `hook`
//! `{exec: [program, args…]}`: runs the program directly (no shell) in its own process group,
//! stdin closed, with only `PATH`, `HOME`, `LANG`, `LC_ALL`, `TZ`, `TMPDIR`, `USER`, `LOGNAME`
//! of the agent's environment (the rest holds the agent's secrets); ok = exit status 0; the
//! detail carries the last lines of its output (stdout and stderr, any resource secret in them
//! replaced by `***`). At the step's timeout the whole process group is killed.
//! Or `{webhook: url, body?: json}`: POSTs the JSON (default `{}`); ok = 2xx.
//! Details name the program (not its arguments) and the webhook's origin (not its path): both
//! may carry tokens. Measurements: `duration_ms`, and `exit_code` or `status`.
//!
//! `freeze_writes` / `unfreeze_writes` (maintenance URLs included) belong to the postgres
//! module. Every params object may carry `inputs` (outputs of earlier steps); ignored here.

use super::{StepContext, StepOutcome};
use super::{budget, parse_params};
use crate::checks::{error_chain, millis};
use crate::config::HttpResource;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Client, Url};
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Default requests in flight for `warm_caches`, and the bound for `smoke`.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// Largest `concurrency` accepted.
const MAX_CONCURRENCY: usize = 256;
/// Bound on one warming request.
const WARM_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of a hook's output kept for the detail.
const HOOK_TAIL_LINES: usize = 5;
/// The agent's environment variables a hook inherits; nothing else (see `run_exec`).
const HOOK_ENV: [&str; 8] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME"];
/// Bytes of a hook's output kept (the tail).
const HOOK_TAIL_BYTES: usize = 8 * 1024;
/// How long a hook's output is still read after it exits (a child it left behind may hold the
/// pipes open).
const HOOK_OUTPUT_GRACE: Duration = Duration::from_millis(300);

/// Executes `action` if it belongs to this module.
pub async fn execute(action: &str, params: &serde_json::Value, ctx: &StepContext<'_>) -> Option<StepOutcome> {
    let deadline = Instant::now() + budget(ctx.timeout);
    let outcome = match action {
        "warm_caches" => warm_caches(params, ctx, deadline).await,
        "smoke" => smoke(params, ctx, deadline).await,
        "hook" => hook(params, ctx, deadline).await,
        _ => return None,
    };
    Some(outcome.unwrap_or_else(|e| StepOutcome::failed(format!("{action}: {e}"))))
}

// === targets ===

/// One URL to request, with the headers that go with it.
struct Target {
    /// Names the URL in details and measurement keys.
    label: String,
    url: Url,
    headers: HeaderMap,
}

/// The targets of `urls` and `http` + `paths`, deduplicated by label. Errors name the param.
fn targets(
    ctx: &StepContext<'_>,
    urls: &[String],
    http: Option<&str>,
    paths: &[String],
) -> Result<Vec<Target>, String> {
    let mut out = Vec::new();
    for (i, u) in urls.iter().enumerate() {
        let url = http_url(u).map_err(|e| format!("param urls[{i}]: {e}"))?;
        let label = format!("{}{}", url.authority(), url.path());
        out.push(Target { label, url, headers: HeaderMap::new() });
    }
    match (http, paths.is_empty()) {
        (None, false) => return Err("param paths: paths go with an http resource (param http)".into()),
        (Some(_), true) => return Err("param paths: list the paths to request on the http resource".into()),
        (None, true) => {}
        (Some(name), false) => {
            let r = ctx.resources.http.get(name).ok_or_else(|| {
                let known: Vec<&str> = ctx.resources.http.keys().map(String::as_str).collect();
                let known = if known.is_empty() { "none defined".to_string() } else { known.join(", ") };
                format!("param http: no http resource named {name:?} (known: {known})")
            })?;
            let headers = resource_headers(r);
            for (i, p) in paths.iter().enumerate() {
                let label = if p.starts_with('/') { p.clone() } else { format!("/{p}") };
                let base = r.base_url.as_str().trim_end_matches('/');
                let url = http_url(&format!("{base}{label}")).map_err(|e| format!("param paths[{i}]: {e}"))?;
                out.push(Target { label, url, headers: headers.clone() });
            }
        }
    }
    if out.is_empty() {
        return Err("bad params: list urls, or an http resource with paths".into());
    }
    let mut seen = BTreeSet::new();
    out.retain(|t| seen.insert(t.label.clone()));
    Ok(out)
}

/// The resource's headers and bearer token (marked sensitive). Both were validated when the
/// config was loaded.
fn resource_headers(r: &HttpResource) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            headers.insert(k, v);
        }
    }
    if let Some(t) = &r.bearer_token
        && let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", t.expose()))
    {
        v.set_sensitive(true);
        headers.insert(AUTHORIZATION, v);
    }
    headers
}

/// An absolute `http://` or `https://` URL with a host.
fn http_url(s: &str) -> Result<Url, String> {
    let u = Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(format!("{s:?}: expected an http:// or https:// URL with a host"));
    }
    Ok(u)
}

// === requests ===

/// One GET's result: its latency (until the body was read) and its status, or why it failed.
struct Fetch {
    latency_ms: f64,
    status: Result<u16, String>,
}

/// GETs `t.url`, reading the body to the end (a warm cache serves the whole response).
async fn fetch(client: &Client, t: &Target, timeout: Duration) -> Fetch {
    let start = Instant::now();
    let exchange = async {
        let mut resp = client.get(t.url.clone()).headers(t.headers.clone()).send().await?;
        let status = resp.status().as_u16();
        while resp.chunk().await?.is_some() {}
        Ok::<_, reqwest::Error>(status)
    };
    let status = match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(error_chain(&e.without_url())),
        Err(_) => Err(format!("no response within {} ms", timeout.as_millis())),
    };
    Fetch { latency_ms: millis(start.elapsed()), status }
}

/// Fetches `targets[order[i]]` for every `i`, at most `concurrency` at a time, each bounded by
/// `per_request` and by `deadline`. Results come back in `order`'s order.
async fn fetch_all(
    client: &Client,
    targets: &Arc<Vec<Target>>,
    order: Vec<usize>,
    concurrency: usize,
    per_request: Duration,
    deadline: Instant,
) -> Vec<Fetch> {
    let order = Arc::new(order);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.clamp(1, order.len().max(1)) {
        let (client, targets, order, next) = (client.clone(), targets.clone(), order.clone(), next.clone());
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&t) = order.get(i) else { break };
                let left = deadline.saturating_duration_since(Instant::now());
                let f = if left.is_zero() {
                    Fetch { latency_ms: 0.0, status: Err("not sent: out of time".into()) }
                } else {
                    fetch(&client, &targets[t], per_request.min(left)).await
                };
                done.push((i, f));
            }
            done
        });
    }
    let mut all: Vec<(usize, Fetch)> = Vec::with_capacity(order.len());
    while let Some(r) = workers.join_next().await {
        // A worker only panics if reqwest does; its requests are then missing, counted below.
        if let Ok(done) = r {
            all.extend(done);
        }
    }
    all.sort_by_key(|(i, _)| *i);
    let mut out: Vec<Fetch> = Vec::with_capacity(order.len());
    let mut it = all.into_iter().peekable();
    for i in 0..order.len() {
        match it.next_if(|(j, _)| *j == i) {
            Some((_, f)) => out.push(f),
            None => out.push(Fetch { latency_ms: 0.0, status: Err("request task failed".into()) }),
        }
    }
    out
}

/// The 95th percentile (nearest rank) of `v`; 0 for none.
fn p95(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((0.95 * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// `"500ms"`, `"30s"`, `"2m"` (decimals allowed: `"1.5s"`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return Err(format!("{s:?} needs a unit: ms, s or m (e.g. \"30s\")"));
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v * unit_ms < 86_400_000.0 => {
            Ok(Duration::from_secs_f64(v * unit_ms / 1000.0))
        }
        _ => Err(format!("{s:?} is not a positive duration such as \"30s\"")),
    }
}

/// A client for warming: like the probes' (no proxy, no redirects followed), with an idle pool
/// as large as the concurrency, so every round reuses its connections; a pool smaller than the
/// concurrency would reconnect (and, over TLS, handshake) on most requests and measure that
/// instead of the caches.
fn warm_client(concurrency: usize) -> Result<Client, String> {
    crate::tls::install_crypto_provider();
    Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("drcut-agent/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(concurrency)
        .build()
        .map_err(|e| format!("cannot build HTTP client: {}", error_chain(&e)))
}

// === warm_caches ===

fn default_concurrency() -> usize {
    DEFAULT_CONCURRENCY
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WarmParams {
    #[serde(default)]
    urls: Vec<String>,
    http: Option<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    until_p95_ms: Option<f64>,
    max_duration: Option<String>,
    #[serde(default = "one")]
    min_rounds: u32,
    #[serde(default, rename = "inputs")]
    _inputs: IgnoredAny,
}

async fn warm_caches(
    params: &serde_json::Value,
    ctx: &StepContext<'_>,
    step_deadline: Instant,
) -> Result<StepOutcome, String> {
    let start = Instant::now();
    let p: WarmParams = parse_params(params)?;
    let targets = Arc::new(targets(ctx, &p.urls, p.http.as_deref(), &p.paths)?);
    if !(1..=MAX_CONCURRENCY).contains(&p.concurrency) {
        return Err(format!("param concurrency: {} is not in 1..={MAX_CONCURRENCY}", p.concurrency));
    }
    if let Some(t) = p.until_p95_ms
        && !(t.is_finite() && t > 0.0)
    {
        return Err(format!("param until_p95_ms: {t} is not a positive number of milliseconds"));
    }
    if p.min_rounds == 0 {
        return Err("param min_rounds: must be at least 1".into());
    }
    // No round starts after `stop`; the round in progress completes, bounded by the step's own
    // deadline (cutting it at `stop` would report a truncated round instead of the caches).
    let stop = match &p.max_duration {
        Some(d) => (start + parse_duration(d).map_err(|e| format!("param max_duration: {e}"))?).min(step_deadline),
        None => step_deadline,
    };
    let client = warm_client(p.concurrency)?;
    let per_round = targets.len().max(p.concurrency);
    let order: Vec<usize> = (0..per_round).map(|i| i % targets.len()).collect();

    let (mut rounds, mut requests, mut errors) = (0u32, 0usize, 0usize);
    // The last round's first error.
    let mut first_error: Option<String>;
    // (target met, last round's p95, last round's errors)
    let (met, last_p95, last_errors) = loop {
        let fetched =
            fetch_all(&client, &targets, order.clone(), p.concurrency, WARM_REQUEST_TIMEOUT, step_deadline).await;
        rounds += 1;
        requests += fetched.len();
        let mut round_errors = 0;
        first_error = None;
        for (f, &t) in fetched.iter().zip(&order) {
            let why = match &f.status {
                Ok(s) if (200..=399).contains(s) => continue,
                Ok(s) => format!("status {s}"),
                Err(e) => e.clone(),
            };
            round_errors += 1;
            first_error.get_or_insert_with(|| format!("{}: {why}", targets[t].label));
        }
        errors += round_errors;
        let latencies: Vec<f64> = fetched.iter().map(|f| f.latency_ms).collect();
        let round_p95 = p95(&latencies);
        let round_ok = round_errors == 0 && p.until_p95_ms.is_none_or(|t| round_p95 <= t);
        let enough = rounds >= p.min_rounds;
        if (enough && (round_ok || p.until_p95_ms.is_none())) || Instant::now() >= stop {
            break (round_ok && enough, round_p95, round_errors);
        }
    };
    let duration_ms = millis(start.elapsed());
    let measurements = BTreeMap::from([
        ("requests".to_string(), requests as f64),
        ("errors".to_string(), errors as f64),
        ("p95_ms".to_string(), last_p95),
        ("duration_ms".to_string(), duration_ms),
        ("rounds".to_string(), f64::from(rounds)),
    ]);
    let what = format!(
        "{} URL(s), {rounds} round(s) of {per_round} ({requests} requests, {errors} errors) in {duration_ms:.0} ms",
        targets.len()
    );
    let p95_text = format!("last round p95 {last_p95:.1} ms");
    let detail = match (met, p.until_p95_ms) {
        (true, Some(t)) => format!("warmed {what}: {p95_text} <= {t} ms"),
        (true, None) => format!("warmed {what}: {p95_text}"),
        (false, _) if last_errors > 0 => format!(
            "not warm: {what}; {last_errors} error(s) in the last round (first error: {})",
            first_error.as_deref().unwrap_or("?")
        ),
        (false, Some(t)) => format!("not warm: {what}; {p95_text} > {t} ms when max_duration ran out"),
        (false, None) => format!("not warm: {what}; ran out of time before {} rounds", p.min_rounds),
    };
    Ok(StepOutcome { ok: met, detail, measurements, data: serde_json::Value::Null })
}

// === smoke ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SmokeParams {
    #[serde(default)]
    urls: Vec<String>,
    http: Option<String>,
    #[serde(default)]
    paths: Vec<String>,
    expect_status: Option<Vec<u16>>,
    #[serde(default, rename = "inputs")]
    _inputs: IgnoredAny,
}

async fn smoke(params: &serde_json::Value, ctx: &StepContext<'_>, deadline: Instant) -> Result<StepOutcome, String> {
    let p: SmokeParams = parse_params(params)?;
    let targets = Arc::new(targets(ctx, &p.urls, p.http.as_deref(), &p.paths)?);
    let expect = p.expect_status.unwrap_or_else(|| vec![200]);
    if expect.is_empty() {
        return Err("param expect_status: list at least one status (or leave it out: [200])".into());
    }
    if let Some(i) = expect.iter().position(|s| !(100..=599).contains(s)) {
        return Err(format!("param expect_status[{i}]: {} is not an HTTP status", expect[i]));
    }
    let client = crate::checks::http::build_client()?;
    let left = deadline.saturating_duration_since(Instant::now());
    let order: Vec<usize> = (0..targets.len()).collect();
    let fetched = fetch_all(&client, &targets, order, DEFAULT_CONCURRENCY, left, deadline).await;
    let mut measurements = BTreeMap::new();
    let mut failures = Vec::new();
    for (t, f) in targets.iter().zip(&fetched) {
        match &f.status {
            Ok(s) => {
                measurements.insert(format!("latency_ms.{}", t.label), f.latency_ms);
                if !expect.contains(s) {
                    failures.push(format!("{}: status {s}, expected {expect:?}", t.label));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", t.label)),
        }
    }
    measurements.insert("failed".to_string(), failures.len() as f64);
    let detail = if failures.is_empty() {
        format!("all {} URL(s) answered {expect:?}", targets.len())
    } else {
        format!("{} of {} URL(s) failed: {}", failures.len(), targets.len(), failures.join("; "))
    };
    Ok(StepOutcome { ok: failures.is_empty(), detail, measurements, data: serde_json::Value::Null })
}

// === hook ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HookParams {
    exec: Option<Vec<String>>,
    webhook: Option<String>,
    body: Option<serde_json::Value>,
    #[serde(default, rename = "inputs")]
    _inputs: IgnoredAny,
}

pub(super) async fn hook(
    params: &serde_json::Value,
    ctx: &StepContext<'_>,
    deadline: Instant,
) -> Result<StepOutcome, String> {
    let p: HookParams = parse_params(params)?;
    match (p.exec, p.webhook) {
        (Some(argv), None) => {
            if p.body.is_some() {
                return Err("param body: goes with webhook, not exec".into());
            }
            run_exec(&argv, ctx, deadline).await
        }
        (None, Some(url)) => post_webhook(&url, p.body.unwrap_or_else(|| serde_json::json!({})), deadline).await,
        (Some(_), Some(_)) => Err("bad params: a hook takes exec or webhook, not both".into()),
        (None, None) => Err("bad params: a hook needs exec (a program and its arguments) or webhook (a URL)".into()),
    }
}

/// The last `HOOK_TAIL_BYTES` of a hook's output, stdout and stderr interleaved as read.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
        if self.0.len() > HOOK_TAIL_BYTES {
            let cut = self.0.len() - HOOK_TAIL_BYTES;
            self.0.drain(..cut);
        }
    }

    /// The last non-empty lines, joined on one line.
    fn last_lines(&self) -> String {
        let text = String::from_utf8_lossy(&self.0);
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        lines[lines.len().saturating_sub(HOOK_TAIL_LINES)..].join(" | ")
    }
}

async fn read_into(mut from: impl AsyncRead + Unpin, tail: Arc<Mutex<Tail>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.lock().unwrap_or_else(|e| e.into_inner()).push(&buf[..n]);
    }
}

pub(crate) async fn run_exec(argv: &[String], ctx: &StepContext<'_>, deadline: Instant) -> Result<StepOutcome, String> {
    let Some(program) = argv.first().filter(|p| !p.trim().is_empty()) else {
        return Err("param exec: list the program and its arguments".into());
    };
    // Named without its path and arguments in details: arguments may carry tokens.
    let shown = std::path::Path::new(program).file_name().map_or(program.clone(), |n| n.to_string_lossy().into());
    let start = Instant::now();
    let mut child = tokio::process::Command::new(program)
        .args(&argv[1..])
        // Only a neutral environment: the agent's own holds its secrets (DSNs, tokens from
        // `*_env`), and a hook's output travels to the coordinator, which must never see them.
        .env_clear()
        .envs(HOOK_ENV.iter().filter_map(|k| std::env::var_os(k).map(|v| (k, v))))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("param exec: cannot start {program:?}: {e}"))?;
    let tail = Arc::new(Mutex::new(Tail::default()));
    let mut readers = JoinSet::new();
    if let Some(out) = child.stdout.take() {
        readers.spawn(read_into(out, tail.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.spawn(read_into(err, tail.clone()));
    }
    let status = tokio::time::timeout_at(deadline, child.wait()).await;
    let timed_out = status.is_err();
    if timed_out {
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) with a process group id and a signal number touches no memory.
            // The group is the hook's own (process_group(0) made its pid the group id), and the
            // child is not yet reaped, so the id cannot have been reused.
            unsafe {
                libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
            }
        }
        let _ = child.wait().await;
    }
    // Output still in the pipes; a process the hook left running may keep them open.
    let _ = tokio::time::timeout(HOOK_OUTPUT_GRACE, async { while readers.join_next().await.is_some() {} }).await;
    readers.abort_all();
    let duration_ms = millis(start.elapsed());
    let output = redact_secrets(ctx, tail.lock().unwrap_or_else(|e| e.into_inner()).last_lines());
    let output = if output.is_empty() { String::new() } else { format!(": {output}") };
    let mut measurements = BTreeMap::from([("duration_ms".to_string(), duration_ms)]);
    let (ok, what) = match status {
        Err(_) => (false, format!("did not exit within {:.0} ms; its process group was killed", duration_ms)),
        Ok(Err(e)) => (false, format!("cannot wait for it: {e}")),
        Ok(Ok(s)) => {
            if let Some(code) = s.code() {
                measurements.insert("exit_code".to_string(), f64::from(code));
            }
            (s.success(), s.to_string())
        }
    };
    Ok(StepOutcome { ok, detail: format!("hook {shown}: {what}{output}"), measurements, data: serde_json::Value::Null })
}

/// `text` with every secret of the agent's resources replaced by `***`: a hook may print what
/// it was given or found.
fn redact_secrets(ctx: &StepContext<'_>, text: String) -> String {
    let r = ctx.resources;
    let secrets = r
        .postgres
        .values()
        .map(|p| &p.dsn)
        .chain(r.http.values().filter_map(|h| h.bearer_token.as_ref()))
        .chain(r.dns.values().filter_map(|d| d.api_key.as_ref()));
    secrets.fold(text, |t, s| s.redact(&t))
}

async fn post_webhook(url: &str, body: serde_json::Value, deadline: Instant) -> Result<StepOutcome, String> {
    let parsed = http_url(url).map_err(|e| format!("param webhook: {}", redact_url_error(&e, url)))?;
    // The origin only: webhook paths often carry the token (chat and pager integrations).
    let shown = format!("{}/…", parsed.origin().ascii_serialization());
    let client = crate::checks::http::build_client()?;
    let start = Instant::now();
    let left = deadline.saturating_duration_since(start);
    let exchange = async {
        let resp = client.post(parsed).header(CONTENT_TYPE, "application/json").body(body.to_string()).send().await?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        Ok::<_, reqwest::Error>((status, text))
    };
    let result = tokio::time::timeout(left, exchange).await;
    let duration_ms = millis(start.elapsed());
    let mut measurements = BTreeMap::from([("duration_ms".to_string(), duration_ms)]);
    let (ok, detail) = match result {
        Ok(Ok((status, text))) => {
            measurements.insert("status".to_string(), f64::from(status.as_u16()));
            if status.is_success() {
                (true, format!("webhook POST {shown}: HTTP {status}"))
            } else {
                let text: String = text.trim().chars().take(200).collect();
                let text = if text.is_empty() { text } else { format!(": {text}") };
                (false, format!("webhook POST {shown}: HTTP {status}, expected 2xx{text}"))
            }
        }
        Ok(Err(e)) => (false, format!("webhook POST {shown}: {}", error_chain(&e.without_url()))),
        Err(_) => (false, format!("webhook POST {shown}: no response within {} ms", left.as_millis())),
    };
    Ok(StepOutcome { ok, detail, measurements, data: serde_json::Value::Null })
}

/// A URL error without the URL's path and query (they may carry a token).
fn redact_url_error(e: &str, url: &str) -> String {
    match url.split_once("://").and_then(|(_, rest)| rest.find('/').map(|i| url.len() - rest.len() + i)) {
        Some(i) => e.replace(&url[i..], "/…"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Resources;
    use serde_json::json;

    #[test]
    fn p95_is_nearest_rank() {
        assert_eq!(p95(&[]), 0.0);
        assert_eq!(p95(&[5.0]), 5.0);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(p95(&v), 95.0);
        assert_eq!(p95(&[1.0, 2.0, 3.0, 100.0]), 100.0);
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 1.5s "), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("30").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("0s").is_err());
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let mut t = Tail::default();
        for i in 0..10 {
            t.push(format!("line {i}\n\n").as_bytes());
        }
        assert_eq!(t.last_lines(), "line 5 | line 6 | line 7 | line 8 | line 9");
        t.push(&vec![b'x'; HOOK_TAIL_BYTES * 2]);
        assert_eq!(t.0.len(), HOOK_TAIL_BYTES);
    }

    #[test]
    fn webhook_errors_hide_the_path() {
        let e = redact_url_error("\"http://h/hooks/T0KEN\": bad", "http://h/hooks/T0KEN");
        assert_eq!(e, "\"http://h/…\": bad");
    }

    async fn run(action: &str, params: serde_json::Value) -> StepOutcome {
        let r = Resources::default();
        let ctx = StepContext { resources: &r, timeout: Duration::from_secs(5) };
        execute(action, &params, &ctx).await.expect("handled")
    }

    #[tokio::test]
    async fn bad_params_name_the_param() {
        let d = run("smoke", json!({"paths": ["/x"]})).await.detail;
        assert!(d.contains("param paths: paths go with an http resource"), "{d}");
        let d = run("smoke", json!({"http": "api", "paths": ["/x"]})).await.detail;
        assert!(d.contains("param http: no http resource named \"api\" (known: none defined)"), "{d}");
        let d = run("smoke", json!({"urls": ["ftp://x/"]})).await.detail;
        assert!(d.contains("param urls[0]:"), "{d}");
        let d = run("smoke", json!({"urls": ["http://127.0.0.1/"], "expect_status": [99]})).await.detail;
        assert!(d.contains("param expect_status[0]: 99"), "{d}");
        let d = run("warm_caches", json!({"urls": ["http://127.0.0.1/"], "max_duration": 30})).await.detail;
        assert!(d.contains("param max_duration: invalid type: integer `30`, expected a string"), "{d}");
        let d = run("warm_caches", json!({"urls": ["http://127.0.0.1/"], "concurrency": 0})).await.detail;
        assert!(d.contains("param concurrency: 0"), "{d}");
        let d = run("hook", json!({"exec": ["/bin/true"], "webhook": "http://127.0.0.1/"})).await.detail;
        assert!(d.contains("not both"), "{d}");
        let d = run("hook", json!({"exec": []})).await.detail;
        assert!(d.contains("param exec: list the program"), "{d}");
        let d = run("hook", json!({"exec": ["/nonexistent/drcut-hook", "s3cret"]})).await.detail;
        assert!(d.contains("cannot start") && !d.contains("s3cret"), "{d}");
        let d = run("hook", json!({"webhook": "http://h/x/T0KEN", "bodY": {}})).await.detail;
        assert!(d.contains("unknown field `bodY`"), "{d}");
    }

    #[tokio::test]
    async fn hook_exec_sees_no_secrets_and_shows_none() {
        // cargo sets this for test processes: proof that the agent's environment is not passed.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let mut r = Resources::default();
        r.dns.insert(
            "gslb".into(),
            crate::config::DnsResource {
                server: "127.0.0.1:53".parse().unwrap(),
                api_url: Some("http://127.0.0.1:8081".parse().unwrap()),
                api_key: Some(crate::secrets::Secret::new("pdns-k3y-91")),
                tsig: None,
            },
        );
        let ctx = StepContext { resources: &r, timeout: Duration::from_secs(5) };
        let script = "echo \"[${CARGO_MANIFEST_DIR:-unset}] [${PATH:+path}]\"; echo found pdns-k3y-91";
        let o = execute("hook", &json!({"exec": ["/bin/sh", "-c", script]}), &ctx).await.unwrap();
        assert!(o.ok, "{o:?}");
        assert!(o.detail.contains("[unset] [path]") && o.detail.contains("found ***"), "{}", o.detail);
        assert!(!o.detail.contains("pdns-k3y-91"), "{}", o.detail);
    }

    #[tokio::test]
    async fn hook_exec_times_out_and_kills_the_group() {
        let r = Resources::default();
        let ctx = StepContext { resources: &r, timeout: Duration::from_millis(800) };
        let start = Instant::now();
        // A shell that leaves a child holding the pipes: both die with the group.
        let params = json!({"exec": ["/bin/sh", "-c", "echo started; sleep 30 & sleep 30"]});
        let o = execute("hook", &params, &ctx).await.unwrap();
        assert!(!o.ok && o.detail.contains("did not exit") && o.detail.contains("started"), "{o:?}");
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
        assert!(execute("freeze_writes", &json!({}), &ctx).await.is_none());
    }
}
