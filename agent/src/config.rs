//! The agent's config file: who the agent is, where the coordinators are, the named resources
//! its checks (and later its step executors) use, and the checks themselves.
//!
//! Loading is strict: unknown fields, unknown types, dangling references, missing secrets and
//! bad addresses all fail at start-up with the file, the field (`checks[2].slo[0]`) and the
//! problem, rather than as a check that quietly never passes. Secrets come from environment
//! variables or files named in the config and are held as [`Secret`]s, so neither `Debug` output
//! nor an error text ever shows one.

use crate::checks::dns::{self, DnsProbe};
use crate::checks::http::HttpProbe;
use crate::checks::postgres::{PostgresProbe, Role};
use crate::checks::prometheus::PrometheusProbe;
use crate::checks::tcp::TcpProbe;
use crate::checks::{Probe, error_chain};
use crate::secrets::{self, Secret};
use crate::slo::Slo;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Built-in check interval when neither the check nor `defaults` sets one. With the
/// coordinator's default of 3 bad evaluations, 300 ms detects refused connections within
/// ~1 s and silent drops (400 ms timeouts) within ~1.6 s (see docs/BENCHMARKS.md).
pub const DEFAULT_INTERVAL_MS: u64 = 300;
/// Built-in check timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 400;
/// Built-in window length (samples).
pub const DEFAULT_WINDOW: u64 = 20;
/// Longest timeout a check may have: a probe slower than this tells nothing a cutover can wait for.
pub const MAX_TIMEOUT_MS: u64 = 60_000;
/// Longest interval: a day; anything slower is not monitoring.
pub const MAX_INTERVAL_MS: u64 = 86_400_000;
/// Largest window.
pub const MAX_WINDOW: u64 = 10_000;
/// The check types, in the order error messages list them.
pub const CHECK_TYPES: [&str; 5] = ["http", "tcp", "dns", "postgres", "prometheus"];

/// A config problem: which file, which field (a dotted path such as `checks[2].slo[0]`), what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// Dotted path of the field, e.g. `resources.postgres.wallet-primary.dsn_env`.
    pub field: String,
    /// What is wrong; names variables and files, never a secret's value.
    pub message: String,
}

/// The loaded, validated agent config, with secrets resolved and probes built.
#[derive(Debug)]
pub struct AgentConfig {
    /// Unique id of this agent.
    pub agent_id: String,
    /// The region this agent lives in (a DNS label).
    pub region: String,
    /// Coordinator gRPC addresses (`host:port`, optionally with an `http://` or `https://` scheme).
    pub coordinators: Vec<String>,
    /// Where `GET /metrics` is served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The named resources, secrets resolved; step executors use them.
    pub resources: Resources,
    /// The checks, in file order.
    pub checks: Vec<CheckSpec>,
    /// What GameDay drills may break on this host (see [`crate::faults`]).
    pub faults: FaultsConfig,
    /// Mutual TLS to the coordinators (the `tls:` section); plain text when `None`.
    pub tls: Option<std::sync::Arc<crate::tls::AgentTls>>,
}

/// The `faults:` section: the fault proxies the agent runs and the processes it may kill.
#[derive(Debug, Default, Clone)]
pub struct FaultsConfig {
    /// TCP fault proxies by name, pass-through until a fault switches one.
    pub proxies: BTreeMap<String, ProxySpec>,
    /// DNS (UDP) fault proxies by name, forwarding until a fault fails a name.
    pub dns_proxies: BTreeMap<String, ProxySpec>,
    /// Processes a `process_kill` fault may kill, by name.
    pub processes: BTreeMap<String, ProcessSpec>,
}

/// Where a fault proxy listens and what it forwards to, both on loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxySpec {
    /// The address clients dial instead of the upstream.
    pub listen: SocketAddr,
    /// The real dependency.
    pub upstream: SocketAddr,
}

/// A process a fault may kill, and how to start it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Absolute path of the file holding its pid.
    pub pidfile: PathBuf,
    /// argv that starts it again on revert (none: it stays down until someone starts it).
    pub start: Option<Vec<String>>,
}

/// One check, ready to schedule.
#[derive(Debug)]
pub struct CheckSpec {
    /// Unique (per agent) check name, a DNS label.
    pub name: String,
    /// The check type: one of [`CHECK_TYPES`].
    pub kind: &'static str,
    /// The region this check judges: the agent's own, or another one it is a vantage point for.
    pub target_region: String,
    /// Time between runs.
    pub interval: Duration,
    /// Bound on one run.
    pub timeout: Duration,
    /// Samples kept in the sliding window.
    pub window: usize,
    /// Objectives over the window's values.
    pub slo: Vec<Slo>,
    /// The probe doing the measurement.
    pub probe: Probe,
}

/// The named resources of the config, by type and name.
#[derive(Debug, Default)]
pub struct Resources {
    /// PostgreSQL servers.
    pub postgres: BTreeMap<String, PostgresResource>,
    /// HTTP services.
    pub http: BTreeMap<String, HttpResource>,
    /// Authoritative DNS servers (and their management APIs).
    pub dns: BTreeMap<String, DnsResource>,
    /// Prometheus-compatible query APIs.
    pub prometheus: BTreeMap<String, PrometheusResource>,
}

/// A PostgreSQL server.
#[derive(Debug, Default)]
pub struct PostgresResource {
    /// libpq-style connection string; a secret since it may hold a password.
    pub dsn: Secret,
    /// Its data directory on this host: lets the agent stop, start, rebuild and fence it
    /// while it is down.
    pub data_dir: Option<PathBuf>,
    /// Where `pg_ctl`, `pg_rewind` and `pg_basebackup` live (default: found at use, see
    /// [`crate::pgdata::bin_dir`]).
    pub bin_dir: Option<PathBuf>,
    /// Fence this server when the agent holds no lease from the coordinators for a while.
    pub self_fence: Option<SelfFence>,
}

/// How a `fence` leaves a PostgreSQL server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FenceMode {
    /// Running, refusing writes (`default_transaction_read_only`).
    #[default]
    ReadOnly,
    /// Read-only, then shut down.
    Stop,
    /// Read-only, then restarted as a standby without an upstream: it cannot take writes
    /// again until it is rebuilt.
    Recovery,
}

impl FenceMode {
    /// The spellings, in the order error messages list them.
    pub const NAMES: [&'static str; 3] = ["read_only", "stop", "recovery"];

    /// Parses the config and params spelling.
    pub fn parse(s: &str) -> Result<FenceMode, String> {
        match s {
            "read_only" => Ok(FenceMode::ReadOnly),
            "stop" => Ok(FenceMode::Stop),
            "recovery" => Ok(FenceMode::Recovery),
            _ => Err(format!("{s:?} is not a fence mode (expected one of {})", FenceMode::NAMES.join(", "))),
        }
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FenceMode::ReadOnly => "read_only",
            FenceMode::Stop => "stop",
            FenceMode::Recovery => "recovery",
        }
    }
}

/// Self-fencing of a postgres resource (see [`crate::lease`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelfFence {
    /// Time without a lease after which the server is fenced.
    pub after: Duration,
    /// How it is fenced.
    pub mode: FenceMode,
}

/// Shortest `self_fence.after`: heartbeats go out every `after / 3`, and a shorter time would
/// fence on an ordinary leader election.
pub const MIN_SELF_FENCE_AFTER: Duration = Duration::from_secs(1);
/// Longest `self_fence.after`.
pub const MAX_SELF_FENCE_AFTER: Duration = Duration::from_secs(3600);

/// An HTTP service.
#[derive(Debug)]
pub struct HttpResource {
    /// Base URL that check paths are appended to.
    pub base_url: Url,
    /// Extra request headers (not secret; tokens go in `bearer_token`).
    pub headers: BTreeMap<String, String>,
    /// Sent as `Authorization: Bearer …`.
    pub bearer_token: Option<Secret>,
}

/// An authoritative DNS server.
#[derive(Debug)]
pub struct DnsResource {
    /// `IP:port` the server answers queries on.
    pub server: SocketAddr,
    /// Its management API (PowerDNS), if any.
    pub api_url: Option<Url>,
    /// The API key, if any.
    pub api_key: Option<Secret>,
    /// RFC 2136 dynamic updates signed with this TSIG key, when there is no API.
    pub tsig: Option<TsigKey>,
}

/// A TSIG key for RFC 2136 updates.
#[derive(Debug)]
pub struct TsigKey {
    /// Key name as the server knows it.
    pub name: String,
    /// `hmac-sha256` (default), `hmac-sha384` or `hmac-sha512`.
    pub algorithm: String,
    /// The base64 secret (decoded when used).
    pub secret: Secret,
}

/// A Prometheus-compatible query API.
#[derive(Debug)]
pub struct PrometheusResource {
    /// Base URL (`{base}/api/v1/query`).
    pub base_url: Url,
}

/// Reads, parses and validates the file at `path`, resolves its secrets from the process
/// environment and files, and builds the probes.
pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        field: "(file)".to_string(),
        message: format!("cannot read: {e}"),
    })?;
    parse(&file, &text)
}

/// Like [`load`], from text; `file` names the source in errors, and relative secret file paths
/// are taken from its directory.
pub fn parse(file: &str, text: &str) -> Result<AgentConfig, ConfigError> {
    parse_with_env(file, text, &|k| std::env::var(k).ok())
}

/// [`parse`] with an injected environment: tests must not mutate the process environment (it is
/// shared by concurrently running tests and `set_var` is unsafe).
pub(crate) fn parse_with_env(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AgentConfig, ConfigError> {
    let raw: RawConfig = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(file, &e))?;
    let base_dir = Path::new(file).parent().map(Path::to_path_buf).unwrap_or_default();
    Ctx { file, env, base_dir }.build(raw)
}

// === raw file format ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agent_id: String,
    region: String,
    coordinators: Vec<String>,
    #[serde(default)]
    metrics_listen: Option<String>,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    resources: RawResources,
    #[serde(default)]
    checks: Vec<RawCheck>,
    #[serde(default)]
    faults: RawFaults,
    #[serde(default)]
    tls: Option<RawTls>,
}

/// `tls: { ca, cert, key }`: PEM files, relative to the config file's directory.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFaults {
    #[serde(default)]
    proxies: BTreeMap<String, RawProxy>,
    #[serde(default)]
    dns_proxies: BTreeMap<String, RawProxy>,
    #[serde(default)]
    processes: BTreeMap<String, RawProcess>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: String,
    upstream: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcess {
    pidfile: PathBuf,
    start: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    window: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawResources {
    #[serde(default)]
    postgres: BTreeMap<String, RawPostgres>,
    #[serde(default)]
    http: BTreeMap<String, RawHttp>,
    #[serde(default)]
    dns: BTreeMap<String, RawDns>,
    #[serde(default)]
    prometheus: BTreeMap<String, RawPrometheus>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    dsn: Option<String>,
    dsn_env: Option<String>,
    dsn_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    bin_dir: Option<PathBuf>,
    self_fence: Option<RawSelfFence>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelfFence {
    after: String,
    #[serde(default)]
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    base_url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    bearer_token_env: Option<String>,
    bearer_token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    server: String,
    api_url: Option<String>,
    api_key_env: Option<String>,
    api_key_file: Option<PathBuf>,
    tsig_key_name: Option<String>,
    tsig_algorithm: Option<String>,
    tsig_secret_env: Option<String>,
    tsig_secret_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrometheus {
    base_url: String,
}

/// One check as written: the union of every type's fields, so that serde reports unknown fields
/// with their line and column; which fields apply to which type is checked afterwards.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    target_region: Option<String>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    window: Option<u64>,
    #[serde(default)]
    slo: Vec<String>,
    resource: Option<String>,
    url: Option<String>,
    path: Option<String>,
    method: Option<String>,
    expect_status: Option<Vec<u16>>,
    body_contains: Option<String>,
    addr: Option<String>,
    server: Option<String>,
    query: Option<String>,
    record_type: Option<String>,
    expect_answers: Option<Vec<String>>,
    primary: Option<String>,
    expect_role: Option<String>,
}

impl RawCheck {
    /// The type-specific fields that are set, for the "does not apply" check.
    fn set_fields(&self) -> Vec<&'static str> {
        let all = [
            ("resource", self.resource.is_some()),
            ("url", self.url.is_some()),
            ("path", self.path.is_some()),
            ("method", self.method.is_some()),
            ("expect_status", self.expect_status.is_some()),
            ("body_contains", self.body_contains.is_some()),
            ("addr", self.addr.is_some()),
            ("server", self.server.is_some()),
            ("query", self.query.is_some()),
            ("record_type", self.record_type.is_some()),
            ("expect_answers", self.expect_answers.is_some()),
            ("primary", self.primary.is_some()),
            ("expect_role", self.expect_role.is_some()),
        ];
        all.into_iter().filter(|(_, set)| *set).map(|(n, _)| n).collect()
    }
}

/// The type-specific fields each check type takes.
fn fields_of(kind: &str) -> &'static [&'static str] {
    match kind {
        "http" => &["resource", "url", "path", "method", "expect_status", "body_contains"],
        "tcp" => &["addr"],
        "dns" => &["resource", "server", "query", "record_type", "expect_answers"],
        "postgres" => &["resource", "primary", "expect_role"],
        "prometheus" => &["resource", "url", "query"],
        _ => &[],
    }
}

// === validation ===

/// Turns a serde_yaml_ng error into a [`ConfigError`]. Its text is `PATH: MESSAGE at line L
/// column C` (no `PATH: ` at the root); for unknown and missing fields the field's own name is
/// appended to the path, so the error points at the field, not at its parent.
fn yaml_error(file: &str, e: &serde_yaml_ng::Error) -> ConfigError {
    let text = e.to_string();
    let (path, message) = match text.split_once(": ") {
        Some((p, m)) if !p.is_empty() && p.bytes().all(|b| !b.is_ascii_whitespace() && b != b'`') => {
            (p.to_string(), m.to_string())
        }
        _ => (String::new(), text.clone()),
    };
    let named = ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix).and_then(|rest| rest.split_once('`')).map(|(n, _)| n));
    let field = match (path.is_empty(), named) {
        (true, Some(n)) => n.to_string(),
        (false, Some(n)) => format!("{path}.{n}"),
        (false, None) => path,
        (true, None) => "(yaml)".to_string(),
    };
    ConfigError { file: file.to_string(), field, message }
}

struct Ctx<'a> {
    file: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// Directory relative secret file paths are taken from: the config file's.
    base_dir: PathBuf,
}

/// Check-level settings after `defaults` and built-ins are applied.
struct Timing {
    interval_ms: u64,
    timeout_ms: u64,
    window: u64,
}

impl Ctx<'_> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.to_string(), field: field.into(), message: message.into() }
    }

    fn build(&self, raw: RawConfig) -> Result<AgentConfig, ConfigError> {
        if raw.agent_id.trim().is_empty() {
            return Err(self.err("agent_id", "must not be empty"));
        }
        dns_label(&raw.region).map_err(|m| self.err("region", m))?;
        if raw.coordinators.is_empty() {
            return Err(self.err("coordinators", "list at least one coordinator address (host:port)"));
        }
        for (i, c) in raw.coordinators.iter().enumerate() {
            let hp = c.strip_prefix("http://").or_else(|| c.strip_prefix("https://")).unwrap_or(c);
            host_port(hp).map_err(|m| self.err(format!("coordinators[{i}]"), m))?;
        }
        let tls = match raw.tls {
            None => None,
            Some(t) => {
                if let Some(i) = raw.coordinators.iter().position(|c| c.starts_with("http://")) {
                    return Err(self.err(
                        format!("coordinators[{i}]"),
                        "http:// with a tls section: write host:port (or https://host:port)",
                    ));
                }
                Some(self.tls(t)?)
            }
        };
        let metrics_listen = match &raw.metrics_listen {
            None => None,
            Some(s) => Some(
                s.parse::<SocketAddr>()
                    .map_err(|_| self.err("metrics_listen", format!("{s:?} is not an IP:port socket address")))?,
            ),
        };
        let defaults = Timing {
            interval_ms: raw.defaults.interval_ms.unwrap_or(DEFAULT_INTERVAL_MS),
            timeout_ms: raw.defaults.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
            window: raw.defaults.window.unwrap_or(DEFAULT_WINDOW),
        };
        self.check_timing(&defaults, "defaults")?;
        let resources = self.resources(raw.resources)?;
        let faults = self.faults(raw.faults)?;
        let mut checks: Vec<CheckSpec> = Vec::with_capacity(raw.checks.len());
        for (i, c) in raw.checks.into_iter().enumerate() {
            let at = format!("checks[{i}]");
            if let Some(j) = checks.iter().position(|o| o.name == c.name) {
                return Err(
                    self.err(format!("{at}.name"), format!("duplicate check name {:?} (also checks[{j}])", c.name))
                );
            }
            checks.push(self.check(&at, c, &raw.region, &defaults, &resources)?);
        }
        Ok(AgentConfig {
            agent_id: raw.agent_id,
            region: raw.region,
            coordinators: raw.coordinators,
            metrics_listen,
            resources,
            checks,
            faults,
            tls,
        })
    }

    /// The `tls:` section: the CA to verify coordinators with (they carry the DNS name
    /// `node.drcut.internal`) and this agent's certificate (`REGION.agent.drcut.internal`).
    fn tls(&self, t: RawTls) -> Result<std::sync::Arc<crate::tls::AgentTls>, ConfigError> {
        let path = |v: Option<PathBuf>, field: &str, what: &str| -> Result<PathBuf, ConfigError> {
            let p = v.ok_or_else(|| self.err(format!("tls.{field}"), format!("missing ({what}, a PEM file)")))?;
            let full = self.base_dir.join(p);
            // Field by field, in order: the first unusable one is the one named.
            std::fs::metadata(&full)
                .map_err(|e| self.err(format!("tls.{field}"), format!("{}: cannot read: {e}", full.display())))?;
            Ok(full)
        };
        let ca = path(t.ca, "ca", "the cluster CA's certificate")?;
        let cert = path(t.cert, "cert", "this agent's certificate")?;
        let key = path(t.key, "key", "this agent's private key")?;
        crate::tls::AgentTls::open(ca, cert, key)
            .map(std::sync::Arc::new)
            .map_err(|(field, message)| self.err(format!("tls.{field}"), message))
    }

    /// The `faults:` section. A proxy listens on loopback only (a sidecar: the application on
    /// this host is pointed at it, and nothing outside the host can reach or break through it);
    /// its upstream is the real dependency, wherever it lives.
    fn faults(&self, raw: RawFaults) -> Result<FaultsConfig, ConfigError> {
        let mut out = FaultsConfig::default();
        for (section, raws, into) in
            [("proxies", raw.proxies, &mut out.proxies), ("dns_proxies", raw.dns_proxies, &mut out.dns_proxies)]
        {
            for (name, r) in raws {
                let at = format!("faults.{section}.{name}");
                dns_label(&name).map_err(|m| self.err(&at, m))?;
                let listen = loopback_addr(&r.listen).map_err(|m| self.err(format!("{at}.listen"), m))?;
                let upstream = ip_port(&r.upstream).map_err(|m| self.err(format!("{at}.upstream"), m))?;
                if listen == upstream {
                    return Err(
                        self.err(format!("{at}.upstream"), format!("{upstream} is the proxy's own listen address"))
                    );
                }
                if let Some((other, _)) = into.iter().find(|(_, s)| s.listen == listen) {
                    return Err(
                        self.err(format!("{at}.listen"), format!("{listen} is also faults.{section}.{other}.listen"))
                    );
                }
                into.insert(name, ProxySpec { listen, upstream });
            }
        }
        for (name, r) in raw.processes {
            let at = format!("faults.processes.{name}");
            dns_label(&name).map_err(|m| self.err(&at, m))?;
            if !r.pidfile.is_absolute() {
                return Err(
                    self.err(format!("{at}.pidfile"), format!("{} is not an absolute path", r.pidfile.display()))
                );
            }
            if let Some(argv) = &r.start
                && argv.first().is_none_or(|p| p.trim().is_empty())
            {
                return Err(self.err(format!("{at}.start"), "list the program and its arguments (or leave it out)"));
            }
            out.processes.insert(name, ProcessSpec { pidfile: r.pidfile, start: r.start });
        }
        Ok(out)
    }

    fn check_timing(&self, t: &Timing, at: &str) -> Result<(), ConfigError> {
        if t.interval_ms == 0 || t.interval_ms > MAX_INTERVAL_MS {
            return Err(
                self.err(format!("{at}.interval_ms"), format!("{} is not in 1..={MAX_INTERVAL_MS}", t.interval_ms))
            );
        }
        if t.timeout_ms == 0 || t.timeout_ms > MAX_TIMEOUT_MS {
            return Err(
                self.err(format!("{at}.timeout_ms"), format!("{} is not in 1..={MAX_TIMEOUT_MS}", t.timeout_ms))
            );
        }
        if t.window == 0 || t.window > MAX_WINDOW {
            return Err(self.err(format!("{at}.window"), format!("{} is not in 1..={MAX_WINDOW}", t.window)));
        }
        Ok(())
    }

    /// Resolves a secret given as at most one of `{key}` (inline, when allowed), `{key}_env`,
    /// `{key}_file`. Returns it with the field it came from, for later errors about its content.
    fn secret(
        &self,
        at: &str,
        key: &str,
        inline: Option<&str>,
        env: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Option<(Secret, String)>, ConfigError> {
        let set = [inline.is_some(), env.is_some(), file.is_some()].iter().filter(|s| **s).count();
        if set > 1 {
            let choices = if inline.is_some() {
                format!("{key}, {key}_env, {key}_file")
            } else {
                format!("{key}_env, {key}_file")
            };
            return Err(self.err(at, format!("set only one of {choices}")));
        }
        if let Some(v) = inline {
            if v.trim().is_empty() {
                return Err(self.err(format!("{at}.{key}"), "must not be empty"));
            }
            return Ok(Some((Secret::new(v), format!("{at}.{key}"))));
        }
        if let Some(var) = env {
            let field = format!("{at}.{key}_env");
            if var.is_empty() {
                return Err(self.err(field, "name an environment variable"));
            }
            return secrets::from_env(var, self.env).map(|s| Some((s, field.clone()))).map_err(|m| self.err(field, m));
        }
        if let Some(path) = file {
            let field = format!("{at}.{key}_file");
            let full = self.base_dir.join(path);
            return secrets::from_file(&full).map(|s| Some((s, field.clone()))).map_err(|m| self.err(field, m));
        }
        Ok(None)
    }

    fn resources(&self, raw: RawResources) -> Result<Resources, ConfigError> {
        let mut out = Resources::default();
        for (name, r) in raw.postgres {
            let at = format!("resources.postgres.{name}");
            let Some((dsn, field)) =
                self.secret(&at, "dsn", r.dsn.as_deref(), r.dsn_env.as_deref(), r.dsn_file.as_deref())?
            else {
                return Err(self.err(at, "set one of dsn, dsn_env, dsn_file"));
            };
            // Parse now so a bad DSN fails at start-up; the parser's text may quote the DSN.
            if let Err(e) = dsn.expose().parse::<tokio_postgres::Config>() {
                return Err(self.err(field, dsn.redact(&format!("not a valid DSN: {}", error_chain(&e)))));
            }
            let data_dir = r
                .data_dir
                .map(|d| existing_dir(&d).map(|()| d))
                .transpose()
                .map_err(|m| self.err(format!("{at}.data_dir"), m))?;
            let bin_dir = r
                .bin_dir
                .map(|d| pg_bin_dir(&d).map(|()| d))
                .transpose()
                .map_err(|m| self.err(format!("{at}.bin_dir"), m))?;
            let self_fence = match r.self_fence {
                None => None,
                Some(sf) => Some(self.self_fence(&format!("{at}.self_fence"), sf, data_dir.is_some())?),
            };
            out.postgres.insert(name, PostgresResource { dsn, data_dir, bin_dir, self_fence });
        }
        for (name, r) in raw.http {
            let at = format!("resources.http.{name}");
            let base_url = http_url(&r.base_url).map_err(|m| self.err(format!("{at}.base_url"), m))?;
            for (k, v) in &r.headers {
                HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| self.err(format!("{at}.headers.{k}"), "not a valid header name"))?;
                HeaderValue::from_str(v)
                    .map_err(|_| self.err(format!("{at}.headers.{k}"), "not a valid header value"))?;
                if k.eq_ignore_ascii_case("authorization") {
                    return Err(self.err(
                        format!("{at}.headers.{k}"),
                        "credentials do not belong in the config: use bearer_token_env or bearer_token_file",
                    ));
                }
            }
            let token =
                self.secret(&at, "bearer_token", None, r.bearer_token_env.as_deref(), r.bearer_token_file.as_deref())?;
            if let Some((t, field)) = &token
                && HeaderValue::from_str(&format!("Bearer {}", t.expose())).is_err()
            {
                return Err(self.err(field, "the token contains characters not allowed in an HTTP header"));
            }
            out.http.insert(name, HttpResource { base_url, headers: r.headers, bearer_token: token.map(|(t, _)| t) });
        }
        for (name, r) in raw.dns {
            let at = format!("resources.dns.{name}");
            let server = ip_port(&r.server).map_err(|m| self.err(format!("{at}.server"), m))?;
            let api_url =
                r.api_url.as_deref().map(http_url).transpose().map_err(|m| self.err(format!("{at}.api_url"), m))?;
            let key = self.secret(&at, "api_key", None, r.api_key_env.as_deref(), r.api_key_file.as_deref())?;
            if key.is_some() && api_url.is_none() {
                return Err(self.err(format!("{at}.api_url"), "an API key is set but no api_url"));
            }
            let tsig_secret =
                self.secret(&at, "tsig_secret", None, r.tsig_secret_env.as_deref(), r.tsig_secret_file.as_deref())?;
            let tsig = match (r.tsig_key_name, tsig_secret) {
                (Some(name), Some((secret, _))) => {
                    let algorithm = r.tsig_algorithm.unwrap_or_else(|| "hmac-sha256".into());
                    if !["hmac-sha256", "hmac-sha384", "hmac-sha512"].contains(&algorithm.as_str()) {
                        return Err(self.err(
                            format!("{at}.tsig_algorithm"),
                            format!("{algorithm:?} is not hmac-sha256, hmac-sha384 or hmac-sha512"),
                        ));
                    }
                    Some(TsigKey { name, algorithm, secret })
                }
                (None, None) if r.tsig_algorithm.is_none() => None,
                (Some(_), None) => {
                    return Err(self.err(
                        format!("{at}.tsig_secret_env"),
                        "tsig_key_name needs its secret (tsig_secret_env or tsig_secret_file)",
                    ));
                }
                _ => {
                    return Err(self
                        .err(format!("{at}.tsig_key_name"), "a TSIG secret or algorithm is set but no tsig_key_name"));
                }
            };
            out.dns.insert(name, DnsResource { server, api_url, api_key: key.map(|(k, _)| k), tsig });
        }
        for (name, r) in raw.prometheus {
            let at = format!("resources.prometheus.{name}");
            let base_url = http_url(&r.base_url).map_err(|m| self.err(format!("{at}.base_url"), m))?;
            out.prometheus.insert(name, PrometheusResource { base_url });
        }
        Ok(out)
    }

    fn self_fence(&self, at: &str, raw: RawSelfFence, has_data_dir: bool) -> Result<SelfFence, ConfigError> {
        let after = parse_duration(&raw.after).map_err(|m| self.err(format!("{at}.after"), m))?;
        if !(MIN_SELF_FENCE_AFTER..=MAX_SELF_FENCE_AFTER).contains(&after) {
            return Err(self.err(
                format!("{at}.after"),
                format!("{:?} is not between 1s and 1h: shorter would fence on a leader election", raw.after),
            ));
        }
        let mode = raw
            .mode
            .as_deref()
            .map(FenceMode::parse)
            .transpose()
            .map_err(|m| self.err(format!("{at}.mode"), m))?
            .unwrap_or_default();
        if mode != FenceMode::ReadOnly && !has_data_dir {
            return Err(self.err(
                format!("{at}.mode"),
                format!("{} needs the resource's data_dir (the agent stops the server with pg_ctl)", mode.as_str()),
            ));
        }
        Ok(SelfFence { after, mode })
    }

    fn check(
        &self,
        at: &str,
        c: RawCheck,
        region: &str,
        defaults: &Timing,
        res: &Resources,
    ) -> Result<CheckSpec, ConfigError> {
        dns_label(&c.name).map_err(|m| self.err(format!("{at}.name"), m))?;
        if !CHECK_TYPES.contains(&c.kind.as_str()) {
            return Err(self.err(
                format!("{at}.type"),
                format!("unknown check type {:?}: expected one of {}", c.kind, CHECK_TYPES.join(", ")),
            ));
        }
        let allowed = fields_of(&c.kind);
        if let Some(f) = c.set_fields().into_iter().find(|f| !allowed.contains(f)) {
            return Err(self.err(
                format!("{at}.{f}"),
                format!("does not apply to a {} check (it takes: {})", c.kind, allowed.join(", ")),
            ));
        }
        let target_region = match &c.target_region {
            Some(r) => {
                dns_label(r).map_err(|m| self.err(format!("{at}.target_region"), m))?;
                r.clone()
            }
            None => region.to_string(),
        };
        let timing = Timing {
            interval_ms: c.interval_ms.unwrap_or(defaults.interval_ms),
            timeout_ms: c.timeout_ms.unwrap_or(defaults.timeout_ms),
            window: c.window.unwrap_or(defaults.window),
        };
        self.check_timing(&timing, at)?;
        let timeout = Duration::from_millis(timing.timeout_ms);
        let slo = c
            .slo
            .iter()
            .enumerate()
            .map(|(j, s)| Slo::parse(s).map_err(|m| self.err(format!("{at}.slo[{j}]"), m)))
            .collect::<Result<Vec<_>, _>>()?;
        let probe = match c.kind.as_str() {
            "http" => Probe::Http(self.http_probe(at, &c, res)?),
            "tcp" => {
                let addr =
                    c.addr.as_deref().ok_or_else(|| self.err(format!("{at}.addr"), "required for a tcp check"))?;
                host_port(addr).map_err(|m| self.err(format!("{at}.addr"), m))?;
                Probe::Tcp(TcpProbe::new(addr))
            }
            "dns" => Probe::Dns(self.dns_probe(at, &c, res, timeout)?),
            "postgres" => Probe::Postgres(self.postgres_probe(at, &c, res)?),
            _ => Probe::Prometheus(self.prometheus_probe(at, &c, res)?),
        };
        Ok(CheckSpec {
            name: c.name,
            kind: probe.kind(),
            target_region,
            interval: Duration::from_millis(timing.interval_ms),
            timeout,
            window: timing.window as usize,
            slo,
            probe,
        })
    }

    /// Exactly one of `resource` / `{other}`.
    fn one_of<'c>(
        &self,
        at: &str,
        kind: &str,
        resource: Option<&'c str>,
        other_name: &str,
        other: Option<&'c str>,
    ) -> Result<(), ConfigError> {
        match (resource, other) {
            (Some(_), Some(_)) => Err(self.err(at, format!("a {kind} check takes resource or {other_name}, not both"))),
            (None, None) => Err(self.err(at, format!("a {kind} check needs resource or {other_name}"))),
            _ => Ok(()),
        }
    }

    fn lookup<'r, T>(
        &self,
        at: &str,
        field: &str,
        kind: &str,
        map: &'r BTreeMap<String, T>,
        name: &str,
    ) -> Result<&'r T, ConfigError> {
        map.get(name).ok_or_else(|| {
            let known: Vec<&str> = map.keys().map(String::as_str).collect();
            let known = if known.is_empty() { "none defined".to_string() } else { known.join(", ") };
            self.err(format!("{at}.{field}"), format!("no {kind} resource named {name:?} (known: {known})"))
        })
    }

    fn http_probe(&self, at: &str, c: &RawCheck, res: &Resources) -> Result<HttpProbe, ConfigError> {
        self.one_of(at, "http", c.resource.as_deref(), "url", c.url.as_deref())?;
        let mut headers = HeaderMap::new();
        let url = if let Some(name) = &c.resource {
            let r = self.lookup(at, "resource", "http", &res.http, name)?;
            for (k, v) in &r.headers {
                // Both were validated with the resource.
                if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                    headers.insert(k, v);
                }
            }
            if let Some(t) = &r.bearer_token
                && let Ok(mut v) = HeaderValue::from_str(&format!("Bearer {}", t.expose()))
            {
                // Sensitive: kept out of hyper's Debug output and HPACK tables.
                v.set_sensitive(true);
                headers.insert(AUTHORIZATION, v);
            }
            join_path(&r.base_url, c.path.as_deref().unwrap_or("")).map_err(|m| self.err(format!("{at}.path"), m))?
        } else {
            if c.path.is_some() {
                return Err(
                    self.err(format!("{at}.path"), "path goes with resource; with url, put the path in the url")
                );
            }
            http_url(c.url.as_deref().unwrap_or_default()).map_err(|m| self.err(format!("{at}.url"), m))?
        };
        let method = match c.method.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("GET") => Method::GET,
            Some("HEAD") => Method::HEAD,
            Some("POST") => Method::POST,
            Some(_) => {
                let m = c.method.as_deref().unwrap_or_default();
                return Err(
                    self.err(format!("{at}.method"), format!("unknown method {m:?}: expected GET, HEAD or POST"))
                );
            }
        };
        let expect = c.expect_status.clone().unwrap_or_default();
        if c.expect_status.as_ref().is_some_and(Vec::is_empty) {
            return Err(self.err(format!("{at}.expect_status"), "list at least one status (or leave it out: 2xx/3xx)"));
        }
        if let Some(k) = expect.iter().position(|s| !(100..=599).contains(s)) {
            return Err(self.err(format!("{at}.expect_status[{k}]"), format!("{} is not an HTTP status", expect[k])));
        }
        if c.body_contains.as_deref() == Some("") {
            return Err(self.err(format!("{at}.body_contains"), "must not be empty"));
        }
        HttpProbe::new(method, url, headers, expect, c.body_contains.clone()).map_err(|m| self.err(at, m))
    }

    fn dns_probe(&self, at: &str, c: &RawCheck, res: &Resources, timeout: Duration) -> Result<DnsProbe, ConfigError> {
        self.one_of(at, "dns", c.resource.as_deref(), "server", c.server.as_deref())?;
        let server = match (&c.resource, &c.server) {
            (Some(name), _) => self.lookup(at, "resource", "dns", &res.dns, name)?.server,
            (None, Some(s)) => ip_port(s).map_err(|m| self.err(format!("{at}.server"), m))?,
            (None, None) => return Err(self.err(at, "a dns check needs resource or server")),
        };
        let query = match c.query.as_deref() {
            Some(q) if !q.trim().is_empty() => q,
            _ => return Err(self.err(format!("{at}.query"), "required for a dns check: the name to ask")),
        };
        let rt_text = c.record_type.as_deref().unwrap_or("A");
        let rt = dns::parse_record_type(rt_text).map_err(|m| self.err(format!("{at}.record_type"), m))?;
        if let Some(list) = &c.expect_answers {
            if list.is_empty() {
                return Err(self.err(format!("{at}.expect_answers"), "list at least one answer (or leave it out)"));
            }
            for (k, a) in list.iter().enumerate() {
                dns::normalize_answer(rt, a).map_err(|m| self.err(format!("{at}.expect_answers[{k}]"), m))?;
            }
        }
        DnsProbe::new(server, query, rt_text, c.expect_answers.as_deref(), timeout)
            .map_err(|m| self.err(format!("{at}.query"), m))
    }

    fn postgres_probe(&self, at: &str, c: &RawCheck, res: &Resources) -> Result<PostgresProbe, ConfigError> {
        let name =
            c.resource.as_deref().ok_or_else(|| self.err(format!("{at}.resource"), "required for a postgres check"))?;
        let target = self.lookup(at, "resource", "postgres", &res.postgres, name)?;
        let primary = match c.primary.as_deref() {
            None => None,
            Some(p) if p == name => {
                return Err(
                    self.err(format!("{at}.primary"), "names the checked resource itself: lag would always be 0")
                );
            }
            Some(p) => Some((p, &self.lookup(at, "primary", "postgres", &res.postgres, p)?.dsn)),
        };
        let role = c
            .expect_role
            .as_deref()
            .map(Role::parse)
            .transpose()
            .map_err(|m| self.err(format!("{at}.expect_role"), m))?;
        PostgresProbe::new((name, &target.dsn), primary, role).map_err(|m| self.err(at, m))
    }

    fn prometheus_probe(&self, at: &str, c: &RawCheck, res: &Resources) -> Result<PrometheusProbe, ConfigError> {
        self.one_of(at, "prometheus", c.resource.as_deref(), "url", c.url.as_deref())?;
        let base = match (&c.resource, &c.url) {
            (Some(name), _) => self.lookup(at, "resource", "prometheus", &res.prometheus, name)?.base_url.clone(),
            (None, Some(u)) => http_url(u).map_err(|m| self.err(format!("{at}.url"), m))?,
            (None, None) => return Err(self.err(at, "a prometheus check needs resource or url")),
        };
        let query = match c.query.as_deref() {
            Some(q) if !q.trim().is_empty() => q,
            _ => return Err(self.err(format!("{at}.query"), "required for a prometheus check: the PromQL expression")),
        };
        PrometheusProbe::new(&base, query).map_err(|m| self.err(at, m))
    }
}

// === value checks (pure) ===

/// A DNS label: 1–63 of `a-z0-9-`, not starting or ending with `-`. Names that are labels can be
/// used in metrics, DNS names and file names without escaping.
fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok { Ok(()) } else { Err(format!("{s:?} is not a DNS label (1-63 of a-z, 0-9, '-'; no '-' at either end)")) }
}

/// `"500ms"`, `"5s"`, `"2m"`, `"1h"`: a whole number with a unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{s:?} is not a duration: a whole number and ms, s, m or h (e.g. \"5s\")")),
    };
    match num.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Duration::from_millis(n.saturating_mul(unit_ms))),
        _ => Err(format!("{s:?} is not a duration: a whole number above 0 and ms, s, m or h (e.g. \"5s\")")),
    }
}

/// An absolute path to an existing directory.
fn existing_dir(p: &Path) -> Result<(), String> {
    if !p.is_absolute() {
        return Err(format!("{} is not an absolute path", p.display()));
    }
    if !p.is_dir() {
        return Err(format!("{} is not a directory", p.display()));
    }
    Ok(())
}

/// An absolute path to a directory holding `pg_ctl`.
fn pg_bin_dir(p: &Path) -> Result<(), String> {
    existing_dir(p)?;
    if !p.join("pg_ctl").is_file() {
        return Err(format!("{} holds no pg_ctl", p.display()));
    }
    Ok(())
}

/// `host:port` with a host name, an IPv4 address or a bracketed IPv6 address, and a port ≥ 1.
fn host_port(s: &str) -> Result<(), String> {
    let bad = || format!("{s:?} is not host:port");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(format!("{s:?}: {port:?} is not a port (1-65535)")),
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().map(|_| ()).map_err(|_| bad());
    }
    let host_ok = !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if host_ok { Ok(()) } else { Err(bad()) }
}

/// An `IP:port` socket address with a non-zero port (DNS servers are given by address: the
/// probe must not depend on another resolver to find them).
fn ip_port(s: &str) -> Result<SocketAddr, String> {
    match s.parse::<SocketAddr>() {
        Ok(a) if a.port() > 0 => Ok(a),
        _ => Err(format!("{s:?} is not IP:port")),
    }
}

/// A loopback `IPv4:port` (127.0.0.0/8) with a non-zero port.
fn loopback_addr(s: &str) -> Result<SocketAddr, String> {
    let a = ip_port(s)?;
    match a.ip() {
        std::net::IpAddr::V4(v4) if v4.is_loopback() => Ok(a),
        _ => Err(format!("{s:?} is not a loopback address (127.0.0.0/8)")),
    }
}

/// An absolute `http://` or `https://` URL with a host.
fn http_url(s: &str) -> Result<Url, String> {
    let u = Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(format!("{s:?}: expected an http:// or https:// URL with a host"));
    }
    Ok(u)
}

/// `base` + `path`, keeping a path prefix of `base` (`http://h/api` + `/health` is
/// `http://h/api/health`, where `Url::join` would drop `api`).
fn join_path(base: &Url, path: &str) -> Result<Url, String> {
    if path.is_empty() {
        return Ok(base.clone());
    }
    let b = base.as_str().trim_end_matches('/');
    let sep = if path.starts_with('/') { "" } else { "/" };
    let joined = format!("{b}{sep}{path}");
    http_url(&joined).map_err(|_| format!("{path:?} does not make a valid URL with {base}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
agent_id: agent-eu-west-1
region: eu-west
coordinators: [127.0.0.1:7001, "http://127.0.0.2:7001"]
metrics_listen: 127.0.0.21:9100
defaults:
  interval_ms: 1000
  window: 30
resources:
  postgres:
    wallet-primary:
      dsn: "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    wallet-standby:
      dsn_env: WALLET_STANDBY_DSN
  http:
    wallet-api:
      base_url: http://127.0.0.1:8080/v1
      headers: { X-Env: prod }
      bearer_token_env: WALLET_TOKEN
  dns:
    gslb-ns1:
      server: 127.0.0.1:5353
      api_url: http://127.0.0.1:8081
      api_key_env: PDNS_API_KEY
  prometheus:
    metrics:
      base_url: http://127.0.0.1:9090
checks:
  - name: wallet-api
    type: http
    resource: wallet-api
    path: /health
    method: get
    expect_status: [200, 204]
    body_contains: ok
    slo: ["p95_ms <= 300", "error_ratio <= 0.001"]
  - name: wallet-api-direct
    type: http
    url: http://127.0.0.1:8080/health
    target_region: eu-central
    timeout_ms: 250
  - name: pg-port
    type: tcp
    addr: 127.0.0.1:5432
  - name: gslb-answer
    type: dns
    resource: gslb-ns1
    query: wallet.gslb.example.
    expect_answers: [192.0.2.1]
  - name: gslb-direct
    type: dns
    server: 127.0.0.1:5353
    query: wallet.gslb.example
    record_type: cname
  - name: wallet-db
    type: postgres
    resource: wallet-standby
    primary: wallet-primary
    expect_role: standby
    slo: ["lag_seconds <= 5"]
  - name: deposit-success
    type: prometheus
    resource: metrics
    query: 'sum(rate(deposits_ok[1m])) / sum(rate(deposits_total[1m]))'
    slo: ["value >= 0.9985"]
"#;

    const SECRET_DSN: &str = "host=127.0.0.1 user=postgres password=SuperSecretPw1";
    const SECRET_TOKEN: &str = "tok-SuperSecret2";

    fn env(k: &str) -> Option<String> {
        match k {
            "WALLET_STANDBY_DSN" => Some(SECRET_DSN.to_string()),
            "WALLET_TOKEN" => Some(SECRET_TOKEN.to_string()),
            "PDNS_API_KEY" => Some("pdns-SuperSecret3".to_string()),
            _ => None,
        }
    }

    fn parse_env(text: &str) -> Result<AgentConfig, ConfigError> {
        parse_with_env("agent.yaml", text, &env)
    }

    /// `FULL` with one line replaced (the `from` text must occur exactly once).
    fn edit(from: &str, to: &str) -> String {
        assert_eq!(FULL.matches(from).count(), 1, "{from}");
        FULL.replace(from, to)
    }

    fn err(text: &str) -> ConfigError {
        match parse_env(text) {
            Ok(_) => panic!("expected an error"),
            Err(e) => {
                for s in [SECRET_DSN, SECRET_TOKEN, "SuperSecret"] {
                    assert!(!e.to_string().contains(s), "secret in error: {e}");
                }
                e
            }
        }
    }

    const MINIMAL: &str = "agent_id: a1\nregion: eu-west\ncoordinators: [127.0.0.1:7001]\n";

    #[test]
    fn tls_section_names_its_field_and_file() {
        let e = err(&format!("{MINIMAL}tls: {{ ca: /nonexistent/ca.pem, cert: /c.pem }}\n"));
        assert_eq!(e.field, "tls.ca");
        assert!(e.message.contains("/nonexistent/ca.pem: cannot read"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "no pem here").unwrap();
        let e = err(&format!("{MINIMAL}tls: {{ ca: {}, cert: {} }}\n", ca.display(), ca.display()));
        assert_eq!(e.field, "tls.key");
        let e =
            err(&format!("{MINIMAL}tls: {{ ca: {}, cert: {}, key: {} }}\n", ca.display(), ca.display(), ca.display()));
        assert_eq!(e.field, "tls.ca");
        assert!(e.message.contains("no CERTIFICATE"), "{e}");
        let plain = MINIMAL.replace("[127.0.0.1:7001]", "[\"http://127.0.0.1:7001\"]");
        let e = err(&format!("{plain}tls: {{ ca: /a, cert: /b, key: /c }}\n"));
        assert_eq!(e.field, "coordinators[0]");
    }

    #[test]
    fn full_example_loads() {
        let c = parse_env(FULL).unwrap();
        assert_eq!(c.agent_id, "agent-eu-west-1");
        assert_eq!(c.metrics_listen, Some("127.0.0.21:9100".parse().unwrap()));
        assert_eq!(c.checks.len(), 7);
        let kinds: Vec<&str> = c.checks.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, ["http", "http", "tcp", "dns", "dns", "postgres", "prometheus"]);
        let api = &c.checks[0];
        assert_eq!(
            (api.interval, api.timeout, api.window),
            (Duration::from_millis(1000), Duration::from_millis(400), 30)
        );
        assert_eq!(api.target_region, "eu-west");
        assert_eq!(api.slo.len(), 2);
        let direct = &c.checks[1];
        assert_eq!((direct.target_region.as_str(), direct.timeout), ("eu-central", Duration::from_millis(250)));
        assert!(format!("{:?}", api.probe).contains("http://127.0.0.1:8080/v1/health"));
        assert_eq!(c.resources.http["wallet-api"].bearer_token.as_ref().unwrap().expose(), SECRET_TOKEN);
        assert_eq!(c.resources.postgres["wallet-standby"].dsn.expose(), SECRET_DSN);
    }

    #[test]
    fn minimal_config_takes_built_in_defaults() {
        let c = parse_env(&format!("{MINIMAL}checks: [{{name: p, type: tcp, addr: 'localhost:5432'}}]\n")).unwrap();
        let p = &c.checks[0];
        assert_eq!(
            (p.interval, p.timeout, p.window),
            (Duration::from_millis(DEFAULT_INTERVAL_MS), Duration::from_millis(400), 20)
        );
        assert_eq!(c.metrics_listen, None);
    }

    #[test]
    fn secrets_never_show() {
        let c = parse_env(FULL).unwrap();
        let dump = format!("{c:?}");
        for s in [SECRET_DSN, SECRET_TOKEN, "pdns-SuperSecret3", "SuperSecret"] {
            assert!(!dump.contains(s), "{s} in {dump}");
        }
        assert!(dump.contains("***"));
    }

    #[test]
    fn unknown_fields_name_the_field_and_line() {
        let e = err(&edit("    addr: 127.0.0.1:5432", "    addr: 127.0.0.1:5432\n    adress: x"));
        assert_eq!(e.field, "checks[2].adress");
        assert!(e.message.contains("unknown field `adress`") && e.message.contains("line"), "{e}");
        let e = err(&format!("{MINIMAL}colour: blue\n"));
        assert_eq!(e.field, "colour");
        let e = err(&edit("      api_key_env: PDNS_API_KEY", "      api_key_env: PDNS_API_KEY\n      apikey: x"));
        assert_eq!(e.field, "resources.dns.gslb-ns1.apikey");
        let e = err("region: eu-west\ncoordinators: [127.0.0.1:7001]\n");
        assert_eq!(e.field, "agent_id");
        assert!(e.to_string().starts_with("agent.yaml: agent_id: missing field"), "{e}");
    }

    #[test]
    fn unknown_type_lists_the_types() {
        let e = err(&edit("    type: tcp", "    type: icmp"));
        assert_eq!(e.field, "checks[2].type");
        assert!(e.message.contains("\"icmp\"") && e.message.contains("http, tcp, dns, postgres, prometheus"), "{e}");
    }

    #[test]
    fn fields_of_other_types_are_refused() {
        let e = err(&edit("    addr: 127.0.0.1:5432", "    addr: 127.0.0.1:5432\n    path: /x"));
        assert_eq!(e.field, "checks[2].path");
        assert!(e.message.contains("does not apply to a tcp check"), "{e}");
    }

    #[test]
    fn dangling_resources_are_named() {
        let e = err(&edit("    resource: wallet-standby", "    resource: wallet-stanby"));
        assert_eq!(e.field, "checks[5].resource");
        assert!(e.message.contains("\"wallet-stanby\"") && e.message.contains("wallet-primary, wallet-standby"), "{e}");
        let e = err(&edit("    primary: wallet-primary", "    primary: nope"));
        assert_eq!(e.field, "checks[5].primary");
        // A resource of another type does not count.
        let e = err(&edit("    resource: metrics", "    resource: wallet-api"));
        assert!(e.message.contains("no prometheus resource named \"wallet-api\""), "{e}");
    }

    #[test]
    fn missing_secrets_name_the_variable_or_file() {
        let e = err(&edit("      dsn_env: WALLET_STANDBY_DSN", "      dsn_env: NOT_SET_ANYWHERE"));
        assert_eq!(e.field, "resources.postgres.wallet-standby.dsn_env");
        assert!(e.message.contains("NOT_SET_ANYWHERE is not set"), "{e}");
        let e = err(&edit("      bearer_token_env: WALLET_TOKEN", "      bearer_token_file: /nonexistent/drcut-token"));
        assert_eq!(e.field, "resources.http.wallet-api.bearer_token_file");
        assert!(e.message.contains("/nonexistent/drcut-token"), "{e}");
        let e = err(&edit("      dsn_env: WALLET_STANDBY_DSN", "      dsn_env: WALLET_STANDBY_DSN\n      dsn: x"));
        assert_eq!(e.field, "resources.postgres.wallet-standby");
        assert!(e.message.contains("only one of dsn, dsn_env, dsn_file"), "{e}");
    }

    #[test]
    fn secret_files_are_read_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dsn"), format!("{SECRET_DSN}\n")).unwrap();
        let text = edit("      dsn_env: WALLET_STANDBY_DSN", "      dsn_file: dsn");
        let file = dir.path().join("agent.yaml");
        std::fs::write(&file, &text).unwrap();
        // load() reads the real environment, which lacks WALLET_TOKEN: use parse_with_env.
        let c = parse_with_env(&file.display().to_string(), &text, &env).unwrap();
        assert_eq!(c.resources.postgres["wallet-standby"].dsn.expose(), SECRET_DSN);
    }

    #[test]
    fn bad_dsn_does_not_echo_it() {
        let text = edit(
            "      dsn: \"host=127.0.0.1 port=5432 user=postgres dbname=postgres\"",
            "      dsn: \"host=127.0.0.1 password=SuperSecret9 port=SuperSecret9\"",
        );
        let e = err(&text);
        assert_eq!(e.field, "resources.postgres.wallet-primary.dsn");
        assert!(e.message.contains("not a valid DSN"), "{e}");
    }

    #[test]
    fn bad_slo_names_its_index() {
        let e = err(&edit("\"error_ratio <= 0.001\"", "\"error_ratio <= lots\""));
        assert_eq!(e.field, "checks[0].slo[1]");
        assert!(e.message.contains("not a number"), "{e}");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let e = err(&edit("  - name: pg-port", "  - name: wallet-api"));
        assert_eq!(e.field, "checks[2].name");
        assert!(e.message.contains("duplicate") && e.message.contains("checks[0]"), "{e}");
    }

    #[test]
    fn bad_addresses_are_refused() {
        let e = err(&edit("    addr: 127.0.0.1:5432", "    addr: 127.0.0.1"));
        assert_eq!(e.field, "checks[2].addr");
        let e = err(&edit("      server: 127.0.0.1:5353", "      server: ns1.example:53"));
        assert_eq!(e.field, "resources.dns.gslb-ns1.server");
        let e = err(&edit("metrics_listen: 127.0.0.21:9100", "metrics_listen: localhost:9100"));
        assert_eq!(e.field, "metrics_listen");
        let e = err(&edit("coordinators: [127.0.0.1:7001,", "coordinators: [127.0.0.1:0,"));
        assert_eq!(e.field, "coordinators[0]");
        let e = err(&edit("[192.0.2.1]", "[192.0.2.1, 2001:db8::1]"));
        assert_eq!(e.field, "checks[3].expect_answers[1]");
        let e = err(&edit("      base_url: http://127.0.0.1:9090", "      base_url: 127.0.0.1:9090"));
        assert_eq!(e.field, "resources.prometheus.metrics.base_url");
    }

    #[test]
    fn http_needs_exactly_one_of_resource_and_url() {
        let e = err(&edit(
            "    url: http://127.0.0.1:8080/health",
            "    url: http://127.0.0.1:8080/health\n    resource: wallet-api",
        ));
        assert_eq!(e.field, "checks[1]");
        assert!(e.message.contains("not both"), "{e}");
        let e = err(&edit("    url: http://127.0.0.1:8080/health", ""));
        assert!(e.message.contains("needs resource or url"), "{e}");
    }

    #[test]
    fn ranges_and_names_are_checked() {
        assert_eq!(err(&edit("    timeout_ms: 250", "    timeout_ms: 0")).field, "checks[1].timeout_ms");
        assert_eq!(err(&edit("    timeout_ms: 250", "    timeout_ms: 60001")).field, "checks[1].timeout_ms");
        assert_eq!(err(&edit("  window: 30", "  window: 0")).field, "defaults.window");
        assert_eq!(err(&edit("region: eu-west", "region: EU_West")).field, "region");
        assert_eq!(err(&edit("target_region: eu-central", "target_region: -x")).field, "checks[1].target_region");
        assert_eq!(err(&edit("agent_id: agent-eu-west-1", "agent_id: ''")).field, "agent_id");
        assert_eq!(err(&edit("    method: get", "    method: DELETE")).field, "checks[0].method");
        assert_eq!(err(&edit("[200, 204]", "[200, 99]")).field, "checks[0].expect_status[1]");
        assert_eq!(err(&edit("    expect_role: standby", "    expect_role: replica")).field, "checks[5].expect_role");
        assert_eq!(err(&edit("    record_type: cname", "    record_type: MX")).field, "checks[4].record_type");
        assert_eq!(
            err(&format!("{MINIMAL}coordinators: []\n").replace("coordinators: [127.0.0.1:7001]\n", "")).field,
            "coordinators"
        );
    }

    /// MINIMAL with one postgres resource `db` whose mapping body is `body`.
    fn pg(body: &str) -> String {
        format!("{MINIMAL}resources:\n  postgres:\n    db:\n      dsn: 'host=127.0.0.1 user=postgres'\n{body}")
    }

    #[test]
    fn fencing_fields_load() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let c = parse_env(&pg(&format!(
            "      data_dir: {d}\n      bin_dir: /usr/lib/postgresql/15/bin\n      self_fence: {{ after: 5s, mode: recovery }}\n"
        )));
        // bin_dir must hold pg_ctl: on a host without PostgreSQL 15 the field is refused.
        let c = match c {
            Ok(c) => c,
            Err(e) => {
                assert_eq!(e.field, "resources.postgres.db.bin_dir", "{e}");
                parse_env(&pg(&format!("      data_dir: {d}\n      self_fence: {{ after: 5s, mode: recovery }}\n")))
                    .unwrap()
            }
        };
        let db = &c.resources.postgres["db"];
        assert_eq!(db.data_dir.as_deref(), Some(dir.path()));
        assert_eq!(db.self_fence, Some(SelfFence { after: Duration::from_secs(5), mode: FenceMode::Recovery }));
        let c = parse_env(&pg("      self_fence: { after: 2m }\n")).unwrap();
        let sf = c.resources.postgres["db"].self_fence.unwrap();
        assert_eq!((sf.after, sf.mode), (Duration::from_secs(120), FenceMode::ReadOnly));
        assert!(parse_env(&pg("")).unwrap().resources.postgres["db"].self_fence.is_none());
    }

    #[test]
    fn fencing_fields_are_checked() {
        let at = "resources.postgres.db";
        let e = err(&pg("      data_dir: relative/dir\n"));
        assert_eq!(e.field, format!("{at}.data_dir"));
        assert!(e.message.contains("not an absolute path"), "{e}");
        let e = err(&pg("      data_dir: /nonexistent/drcut-data\n"));
        assert!(e.field.ends_with("data_dir") && e.message.contains("not a directory"), "{e}");
        let e = err(&pg("      bin_dir: /\n"));
        assert_eq!(e.field, format!("{at}.bin_dir"));
        assert!(e.message.contains("holds no pg_ctl"), "{e}");
        let e = err(&pg("      self_fence: { after: 5 }\n"));
        assert_eq!(e.field, format!("{at}.self_fence.after"));
        assert!(e.message.contains("\"5\" is not a duration"), "{e}");
        let e = err(&pg("      self_fence: { after: 500ms }\n"));
        assert_eq!(e.field, format!("{at}.self_fence.after"));
        assert!(e.message.contains("not between 1s and 1h"), "{e}");
        let e = err(&pg("      self_fence: { after: 2h }\n"));
        assert_eq!(e.field, format!("{at}.self_fence.after"));
        let e = err(&pg("      self_fence: { after: 5s, mode: halt }\n"));
        assert_eq!(e.field, format!("{at}.self_fence.mode"));
        assert!(e.message.contains("\"halt\"") && e.message.contains("read_only, stop, recovery"), "{e}");
        let e = err(&pg("      self_fence: { after: 5s, mode: stop }\n"));
        assert_eq!(e.field, format!("{at}.self_fence.mode"));
        assert!(e.message.contains("needs the resource's data_dir"), "{e}");
        let e = err(&pg("      self_fence: { after: 5s, mdoe: stop }\n"));
        assert_eq!(e.field, format!("{at}.self_fence.mdoe"));
        let e = err(&pg("      self_fence: { mode: stop }\n"));
        assert_eq!(e.field, format!("{at}.self_fence.after"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["5", "s", "0s", "-1s", "1.5s", "5 s", "5d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let e = load(Path::new("/nonexistent/agent.yaml")).unwrap_err();
        assert_eq!(e.file, "/nonexistent/agent.yaml");
        assert!(e.to_string().starts_with("/nonexistent/agent.yaml: (file): cannot read"), "{e}");
    }

    #[test]
    fn value_checks() {
        assert!(host_port("db.internal:5432").is_ok());
        assert!(host_port("[::1]:53").is_ok());
        assert!(host_port("::1:53").is_err());
        assert!(host_port("host:99999").is_err());
        assert!(dns_label("eu-west-1").is_ok());
        assert!(dns_label(&"a".repeat(64)).is_err());
        let base: Url = "http://127.0.0.1:8080/api/".parse().unwrap();
        assert_eq!(join_path(&base, "/health").unwrap().as_str(), "http://127.0.0.1:8080/api/health");
        assert_eq!(join_path(&base, "health").unwrap().as_str(), "http://127.0.0.1:8080/api/health");
        assert_eq!(join_path(&base, "").unwrap().as_str(), "http://127.0.0.1:8080/api/");
    }

    const FAULTS: &str = r#"
faults:
  proxies:
    psp: { listen: 127.0.0.21:18443, upstream: 127.0.0.22:8443 }
  dns_proxies:
    resolver: { listen: 127.0.0.21:5353, upstream: 127.0.0.30:53 }
  processes:
    casino-app: { pidfile: /tmp/casino.pid, start: ["/usr/bin/casino", "--port", "8080"] }
    worker: { pidfile: /run/worker.pid }
"#;

    #[test]
    fn faults_section_loads() {
        let c = parse_env(&format!("{MINIMAL}{FAULTS}")).unwrap();
        let f = &c.faults;
        assert_eq!(
            f.proxies["psp"],
            ProxySpec { listen: "127.0.0.21:18443".parse().unwrap(), upstream: "127.0.0.22:8443".parse().unwrap() }
        );
        assert_eq!(f.dns_proxies["resolver"].upstream, "127.0.0.30:53".parse().unwrap());
        assert_eq!(f.processes["casino-app"].start.as_deref().unwrap()[0], "/usr/bin/casino");
        assert_eq!(f.processes["worker"], ProcessSpec { pidfile: "/run/worker.pid".into(), start: None });
        // No section: nothing to break.
        let none = parse_env(MINIMAL).unwrap();
        assert!(none.faults.proxies.is_empty() && none.faults.processes.is_empty());
    }

    #[test]
    fn faults_section_is_checked() {
        let with = |from: &str, to: &str| {
            assert_eq!(FAULTS.matches(from).count(), 1, "{from}");
            format!("{MINIMAL}{}", FAULTS.replace(from, to))
        };
        // The upstream is the real dependency; only where the proxy listens is restricted.
        assert!(parse_env(&with("upstream: 127.0.0.22:8443", "upstream: 10.0.0.22:8443")).is_ok());
        let e = err(&with("upstream: 127.0.0.22:8443", "upstream: psp.example:8443"));
        assert!(e.field == "faults.proxies.psp.upstream" && e.message.contains("not IP:port"), "{e}");
        let e = err(&with("listen: 127.0.0.21:18443", "listen: 10.0.0.21:18443"));
        assert!(e.field == "faults.proxies.psp.listen" && e.message.contains("not a loopback address"), "{e}");
        let e = err(&with("listen: 127.0.0.21:5353", "listen: 0.0.0.0:5353"));
        assert_eq!(e.field, "faults.dns_proxies.resolver.listen");
        let e = err(&with("listen: 127.0.0.21:5353", "listen: '[::1]:5353'"));
        assert_eq!(e.field, "faults.dns_proxies.resolver.listen");
        let e = err(&with("listen: 127.0.0.21:18443", "listen: psp.local:18443"));
        assert!(e.field == "faults.proxies.psp.listen" && e.message.contains("not IP:port"), "{e}");
        let e = err(&with("listen: 127.0.0.21:18443", "listen: 127.0.0.22:8443"));
        assert!(e.message.contains("own listen address"), "{e}");
        let e = err(&with(
            "psp: { listen: 127.0.0.21:18443, upstream: 127.0.0.22:8443 }",
            "psp: { listen: 127.0.0.21:18443, upstream: 127.0.0.22:8443 }\n    psp2: { listen: 127.0.0.21:18443, upstream: 127.0.0.23:1 }",
        ));
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("faults.proxies.psp2.listen", "127.0.0.21:18443 is also faults.proxies.psp.listen")
        );
        let e = err(&with("pidfile: /run/worker.pid", "pidfile: worker.pid"));
        assert_eq!(e.field, "faults.processes.worker.pidfile");
        let e = err(&with("pidfile: /run/worker.pid", "pidfile: /run/worker.pid, start: []"));
        assert_eq!(e.field, "faults.processes.worker.start");
        let e = err(&with("pidfile: /run/worker.pid", "pidfile: /run/worker.pid, user: x"));
        assert_eq!(e.field, "faults.processes.worker.user");
        let e = err(&with("psp:", "PSP:"));
        assert_eq!(e.field, "faults.proxies.PSP");
    }
}
