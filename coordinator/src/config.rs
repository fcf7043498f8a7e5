//! The coordinator's YAML config, validated completely before anything touches the disk.

use crate::state::validate_name;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A refused config: names the file, the field and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// The offending field (dotted path), or `(file)` for problems with the file as a whole.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// One member of the bootstrap set.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    /// Node id (≥ 1, never reused).
    pub id: u64,
    /// The node's gRPC `host:port`.
    pub addr: String,
}

/// Raft timing and log compaction.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Lower bound of the randomised election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomised election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every_logs: u64,
    /// Entries kept in the log behind the snapshot (for slow followers to catch up without one).
    pub keep_logs_after_snapshot: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        // Election timeouts of 0.4-0.8 s: a dead leader is replaced well within 1.5 s, while a
        // loaded two-core machine's scheduling hiccups do not cause spurious elections.
        RaftTuning {
            heartbeat_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            snapshot_every_logs: 5000,
            keep_logs_after_snapshot: 1000,
        }
    }
}

/// Health model tuning.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthTuning {
    /// Consecutive bad evaluations before a check goes down/degraded.
    pub down_after: u32,
    /// Consecutive good evaluations before it comes back up.
    pub up_after: u32,
    /// How often the leader commits transitions and re-evaluates regions.
    pub tick_ms: u64,
}

impl Default for HealthTuning {
    fn default() -> Self {
        HealthTuning { down_after: 3, up_after: 3, tick_ms: 100 }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node_id: Option<u64>,
    cluster_id: Option<String>,
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    advertise: Option<String>,
    #[serde(default)]
    initial_members: Vec<MemberConfig>,
    #[serde(default)]
    peer_dial_overrides: BTreeMap<u64, String>,
    #[serde(default)]
    raft: RaftTuning,
    #[serde(default)]
    log_format: LogFormat,
    http_listen: Option<String>,
    #[serde(default)]
    health: HealthTuning,
    #[serde(default)]
    auth: Option<AuthConfig>,
    #[serde(default)]
    tls: Option<RawTls>,
}

/// The `tls:` section as written; every field is required, checked in [`Config::parse`] so the
/// error names `tls.FIELD`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    crl: Option<PathBuf>,
}

/// Mutual TLS for every connection to and from this node (see `crate::tls`).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    /// PEM file of the cluster's CA: peers, agents and client certificates must chain to it.
    pub ca: PathBuf,
    /// PEM file of this node's certificate (DNS name `node.drcut.internal`), leaf first.
    pub cert: PathBuf,
    /// PEM file of its private key.
    pub key: PathBuf,
    /// Optional PEM file of certificate revocation lists (`X509 CRL` blocks) issued by the CA:
    /// client certificates listed there are refused at the handshake.
    pub crl: Option<PathBuf>,
}

/// Authentication of API callers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The principals file (names, roles, SHA-256 hashes of API tokens); re-read when it changes.
    pub principals_file: PathBuf,
    /// Calls per principal (and failed authentications per peer IP).
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
}

/// A token bucket: `burst` calls at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained calls per second.
    pub per_second: u32,
    /// Calls allowed at once after a quiet spell.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        // Far above a person or a console polling every second, far below what would let one
        // token keep a node busy.
        RateLimitConfig { per_second: 50, burst: 100 }
    }
}

/// A validated coordinator config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from (for error messages).
    pub file: String,
    /// This node's id.
    pub node_id: u64,
    /// The cluster this node belongs to.
    pub cluster_id: String,
    /// Where the Raft log, state and identity live.
    pub data_dir: PathBuf,
    /// The gRPC listen address.
    pub listen: SocketAddr,
    /// The address peers and clients use to reach this node.
    pub advertise: String,
    /// The bootstrap set (empty for a node that joins later).
    pub initial_members: Vec<MemberConfig>,
    /// Dial these peers at another address.
    pub peer_dial_overrides: BTreeMap<u64, String>,
    /// Raft timing.
    pub raft: RaftTuning,
    /// Log format.
    pub log_format: LogFormat,
    /// Where to serve HTTP (`/metrics`), if anywhere.
    pub http_listen: Option<SocketAddr>,
    /// Health model tuning.
    pub health: HealthTuning,
    /// API authentication; `None` = open mode (sandboxes and tests).
    pub auth: Option<AuthConfig>,
    /// Mutual TLS; `None` = plain-text gRPC, machine links unauthenticated (sandboxes only).
    pub tls: Option<TlsConfig>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            field: "(file)".into(),
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&file, &text)
    }

    /// Parses and validates config text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let err =
            |field: &str, message: String| ConfigError { file: file.to_string(), field: field.to_string(), message };
        let raw: RawConfig = serde_yaml_ng::from_str(text).map_err(|e| {
            let field = yaml_field(&e.to_string());
            err(&field, e.to_string())
        })?;
        let node_id =
            raw.node_id.ok_or_else(|| err("node_id", "missing (a number ≥ 1, unique in the cluster)".into()))?;
        if node_id == 0 {
            return Err(err("node_id", "must be ≥ 1".into()));
        }
        let cluster_id = raw.cluster_id.ok_or_else(|| err("cluster_id", "missing".into()))?;
        validate_name("cluster_id", &cluster_id).map_err(|m| err("cluster_id", m))?;
        let data_dir = raw.data_dir.ok_or_else(|| err("data_dir", "missing".into()))?;
        if data_dir.as_os_str().is_empty() {
            return Err(err("data_dir", "is empty".into()));
        }
        let listen_s = raw.listen.ok_or_else(|| err("listen", "missing (host:port)".into()))?;
        let listen: SocketAddr =
            listen_s.parse().map_err(|_| err("listen", format!("{listen_s:?} is not an IP:port address")))?;
        let advertise = raw.advertise.unwrap_or_else(|| listen.to_string());
        check_host_port(&advertise).map_err(|m| err("advertise", m))?;
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (i, m) in raw.initial_members.iter().enumerate() {
            let f = format!("initial_members[{i}]");
            if m.id == 0 {
                return Err(err(&format!("{f}.id"), "must be ≥ 1".into()));
            }
            if !ids.insert(m.id) {
                return Err(err(&format!("{f}.id"), format!("node id {} appears more than once", m.id)));
            }
            check_host_port(&m.addr).map_err(|msg| err(&format!("{f}.addr"), msg))?;
            if !addrs.insert(m.addr.clone()) {
                return Err(err(&format!("{f}.addr"), format!("address {} appears more than once", m.addr)));
            }
        }
        if !raw.initial_members.is_empty() {
            match raw.initial_members.iter().find(|m| m.id == node_id) {
                None => {
                    return Err(err(
                        "initial_members",
                        format!(
                            "node_id {node_id} is not listed; list every bootstrap member including this node, \
                             or leave initial_members empty for a node that joins later"
                        ),
                    ));
                }
                Some(me) if me.addr != advertise => {
                    return Err(err(
                        "initial_members",
                        format!("this node's entry says {} but it advertises {advertise}", me.addr),
                    ));
                }
                Some(_) => {}
            }
        }
        for (id, a) in &raw.peer_dial_overrides {
            check_host_port(a).map_err(|m| err(&format!("peer_dial_overrides.{id}"), m))?;
        }
        let r = &raw.raft;
        if r.heartbeat_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_ms {
            return Err(err("raft.election_timeout_min_ms", "must exceed raft.heartbeat_ms (> 0)".into()));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(err("raft.election_timeout_max_ms", "must exceed raft.election_timeout_min_ms".into()));
        }
        if r.snapshot_every_logs == 0 {
            return Err(err("raft.snapshot_every_logs", "must be ≥ 1".into()));
        }
        let http_listen = match raw.http_listen {
            Some(h) => Some(h.parse().map_err(|_| err("http_listen", format!("{h:?} is not an IP:port address")))?),
            None => None,
        };
        if raw.health.down_after == 0 || raw.health.up_after == 0 {
            return Err(err("health", "down_after and up_after must be ≥ 1".into()));
        }
        if raw.health.tick_ms == 0 {
            return Err(err("health.tick_ms", "must be ≥ 1".into()));
        }
        if let Some(a) = &raw.auth {
            if a.rate_limit.per_second == 0 {
                return Err(err("auth.rate_limit.per_second", "must be ≥ 1".into()));
            }
            if a.rate_limit.burst == 0 {
                return Err(err("auth.rate_limit.burst", "must be ≥ 1".into()));
            }
        }
        let tls = match raw.tls {
            None => None,
            Some(t) => {
                let need = |v: Option<PathBuf>, f: &str, what: &str| {
                    v.filter(|p| !p.as_os_str().is_empty())
                        .ok_or_else(|| err(&format!("tls.{f}"), format!("missing ({what}, a PEM file)")))
                };
                Some(TlsConfig {
                    ca: need(t.ca, "ca", "the cluster CA's certificate")?,
                    cert: need(t.cert, "cert", "this node's certificate")?,
                    key: need(t.key, "key", "this node's private key")?,
                    crl: t.crl.filter(|p| !p.as_os_str().is_empty()),
                })
            }
        };
        Ok(Config {
            file: file.to_string(),
            node_id,
            cluster_id,
            data_dir,
            listen,
            advertise,
            initial_members: raw.initial_members,
            peer_dial_overrides: raw.peer_dial_overrides,
            raft: raw.raft,
            log_format: raw.log_format,
            http_listen,
            health: raw.health,
            auth: raw.auth,
            tls,
        })
    }

    /// An error about this config.
    pub fn error(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError { file: self.file.clone(), field: field.to_string(), message: message.into() }
    }
}

fn check_host_port(s: &str) -> Result<(), String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} is not host:port"));
    };
    if host.is_empty() || port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
        return Err(format!("{s:?} is not host:port with a port in 1-65535"));
    }
    Ok(())
}

/// Pulls the field name out of a serde error message such as "unknown field `foo`, expected …"
/// or "raft.heartbeat_ms: invalid type …".
fn yaml_field(msg: &str) -> String {
    if let Some(rest) = msg.split("field `").nth(1)
        && let Some(name) = rest.split('`').next()
    {
        return name.to_string();
    }
    match msg.split_once(": ") {
        Some((path, _)) if !path.contains(' ') => path.to_string(),
        _ => "(file)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "node_id: 1\ncluster_id: c1\ndata_dir: /tmp/x\nlisten: 127.0.0.1:7001\n\
        initial_members:\n  - { id: 1, addr: 127.0.0.1:7001 }\n  - { id: 2, addr: 127.0.0.2:7001 }\n";

    fn field_of(text: &str) -> String {
        Config::parse("f.yaml", text).unwrap_err().field
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::parse("f.yaml", GOOD).unwrap();
        assert_eq!(c.node_id, 1);
        assert_eq!(c.advertise, "127.0.0.1:7001");
        assert_eq!(c.raft, RaftTuning::default());
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let e = Config::parse("f.yaml", &format!("{GOOD}colour: red\n")).unwrap_err();
        assert_eq!(e.field, "colour");
        assert!(e.to_string().contains("f.yaml"), "{e}");
        assert!(e.to_string().contains("line"), "{e}");
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_of(&GOOD.replace("node_id: 1\n", "")), "node_id");
        assert_eq!(field_of(&GOOD.replace("127.0.0.1:7001\ninit", "nowhere\ninit")), "listen");
        assert_eq!(field_of(&GOOD.replace("cluster_id: c1", "cluster_id: Bad_Id")), "cluster_id");
        assert_eq!(field_of(&GOOD.replace("id: 2", "id: 1")), "initial_members[1].id");
        assert_eq!(field_of(&GOOD.replace("node_id: 1", "node_id: 3")), "initial_members");
        assert_eq!(field_of(&format!("{GOOD}raft: {{ heartbeat_ms: 900 }}\n")), "raft.election_timeout_min_ms");
        assert_eq!(field_of(&format!("{GOOD}raft: {{ heartbeat: 9 }}\n")), "heartbeat");
        assert_eq!(field_of(&format!("{GOOD}tls: {{ ca: /a, cert: /b }}\n")), "tls.key");
        assert_eq!(field_of(&format!("{GOOD}tls: {{ ca: /a, cert: /b, key: /c, pin: 1 }}\n")), "pin");
    }

    #[test]
    fn auth_rate_limit_defaults_and_bad_values_are_named() {
        let c = Config::parse("f.yaml", &format!("{GOOD}auth: {{ principals_file: /p.yaml }}\n")).unwrap();
        assert_eq!(c.auth.unwrap().rate_limit, RateLimitConfig { per_second: 50, burst: 100 });
        let bad = |rl: &str| field_of(&format!("{GOOD}auth: {{ principals_file: /p.yaml, rate_limit: {rl} }}\n"));
        assert_eq!(bad("{ per_second: 0 }"), "auth.rate_limit.per_second");
        assert_eq!(bad("{ burst: 0 }"), "auth.rate_limit.burst");
    }

    #[test]
    fn joiner_needs_no_members() {
        let c =
            Config::parse("f.yaml", "node_id: 4\ncluster_id: c1\ndata_dir: /tmp/x\nlisten: 127.0.0.4:7001\n").unwrap();
        assert!(c.initial_members.is_empty());
    }
}
