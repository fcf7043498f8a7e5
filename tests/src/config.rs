//! The coordinator's YAML config as the harness writes it.
//!
//! Written by hand rather than serialized: `peer_dial_overrides` has integer keys, which a
//! JSON-shaped document could not express, and bad-config tests edit the text line by line.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Optional `raft:` settings; `None` leaves the coordinator's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftOptions {
    /// `raft.heartbeat_ms`.
    pub heartbeat_ms: Option<u64>,
    /// `raft.election_timeout_min_ms`.
    pub election_timeout_min_ms: Option<u64>,
    /// `raft.election_timeout_max_ms`.
    pub election_timeout_max_ms: Option<u64>,
    /// `raft.snapshot_every_logs`.
    pub snapshot_every_logs: Option<u64>,
    /// `raft.keep_logs_after_snapshot`.
    pub keep_logs_after_snapshot: Option<u64>,
}

impl RaftOptions {
    /// Timings for tests: elections slow enough that two busy cores running several clusters
    /// do not trigger spurious ones, fast enough that a failover takes a couple of seconds.
    pub fn for_tests() -> Self {
        RaftOptions {
            heartbeat_ms: Some(100),
            election_timeout_min_ms: Some(1000),
            election_timeout_max_ms: Some(2000),
            snapshot_every_logs: None,
            keep_logs_after_snapshot: None,
        }
    }
}

/// One node's config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// `node_id`.
    pub node_id: u64,
    /// `cluster_id`.
    pub cluster_id: String,
    /// `data_dir`.
    pub data_dir: PathBuf,
    /// `listen`, kept as text so tests can write invalid addresses.
    pub listen: String,
    /// `advertise`; omitted when `None`.
    pub advertise: Option<String>,
    /// `initial_members` as (id, addr); written as an empty list when empty.
    pub initial_members: Vec<(u64, String)>,
    /// `peer_dial_overrides`: dial node N through this address (its fault proxy).
    pub peer_dial_overrides: BTreeMap<u64, SocketAddr>,
    /// `raft:` section.
    pub raft: RaftOptions,
    /// `log_format`.
    pub log_format: String,
    /// `http_listen` (serves /metrics); omitted when `None`.
    pub http_listen: Option<SocketAddr>,
    /// Verbatim YAML appended at the end (e.g. a `health:` section).
    pub extra_yaml: String,
    /// `tls:` section (mTLS); omitted when `None`.
    pub tls: Option<crate::tls::TlsFiles>,
}

impl NodeConfig {
    /// A config for node `node_id` listening on `listen`, with no members and default Raft.
    pub fn new(node_id: u64, cluster_id: &str, data_dir: PathBuf, listen: SocketAddr) -> Self {
        NodeConfig {
            node_id,
            cluster_id: cluster_id.to_string(),
            data_dir,
            listen: listen.to_string(),
            advertise: None,
            initial_members: Vec::new(),
            peer_dial_overrides: BTreeMap::new(),
            raft: RaftOptions::default(),
            log_format: "text".to_string(),
            http_listen: None,
            extra_yaml: String::new(),
            tls: None,
        }
    }

    /// The YAML text of this config.
    pub fn to_yaml(&self) -> String {
        let mut y = String::new();
        // Writing to a String cannot fail; the unwraps below are on infallible writes.
        writeln!(y, "node_id: {}", self.node_id).unwrap();
        writeln!(y, "cluster_id: {}", self.cluster_id).unwrap();
        writeln!(y, "data_dir: {:?}", self.data_dir.display().to_string()).unwrap();
        writeln!(y, "listen: {:?}", self.listen).unwrap();
        if let Some(a) = &self.advertise {
            writeln!(y, "advertise: {a:?}").unwrap();
        }
        if self.initial_members.is_empty() {
            y.push_str("initial_members: []\n");
        } else {
            y.push_str("initial_members:\n");
            for (id, addr) in &self.initial_members {
                writeln!(y, "  - {{ id: {id}, addr: {addr:?} }}").unwrap();
            }
        }
        if !self.peer_dial_overrides.is_empty() {
            y.push_str("peer_dial_overrides:\n");
            for (id, addr) in &self.peer_dial_overrides {
                writeln!(y, "  {id}: \"{addr}\"").unwrap();
            }
        }
        let r = &self.raft;
        let raft = [
            ("heartbeat_ms", r.heartbeat_ms),
            ("election_timeout_min_ms", r.election_timeout_min_ms),
            ("election_timeout_max_ms", r.election_timeout_max_ms),
            ("snapshot_every_logs", r.snapshot_every_logs),
            ("keep_logs_after_snapshot", r.keep_logs_after_snapshot),
        ];
        if raft.iter().any(|(_, v)| v.is_some()) {
            y.push_str("raft:\n");
            for (k, v) in raft {
                if let Some(v) = v {
                    writeln!(y, "  {k}: {v}").unwrap();
                }
            }
        }
        writeln!(y, "log_format: {}", self.log_format).unwrap();
        if let Some(h) = self.http_listen {
            writeln!(y, "http_listen: \"{h}\"").unwrap();
        }
        if let Some(t) = &self.tls {
            y.push_str(&t.yaml());
        }
        y.push_str(&self.extra_yaml);
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_lists_members_overrides_and_raft() {
        let mut c = NodeConfig::new(2, "c1", PathBuf::from("/tmp/d"), "127.0.9.2:7001".parse().unwrap());
        c.initial_members = vec![(1, "127.0.9.1:7001".into())];
        c.peer_dial_overrides.insert(1, "127.0.9.121:4000".parse().unwrap());
        c.raft.heartbeat_ms = Some(50);
        let y = c.to_yaml();
        assert!(y.contains("node_id: 2\n"), "{y}");
        assert!(y.contains("  - { id: 1, addr: \"127.0.9.1:7001\" }\n"), "{y}");
        assert!(y.contains("  1: \"127.0.9.121:4000\"\n"), "{y}");
        assert!(y.contains("raft:\n  heartbeat_ms: 50\n"), "{y}");
        assert!(!y.contains("snapshot_every_logs"), "{y}");
    }

    #[test]
    fn yaml_writes_empty_member_list() {
        let c = NodeConfig::new(4, "c1", PathBuf::from("/tmp/d"), "127.0.9.4:7001".parse().unwrap());
        assert!(c.to_yaml().contains("initial_members: []\n"));
        assert!(!c.to_yaml().contains("raft:"));
    }
}
