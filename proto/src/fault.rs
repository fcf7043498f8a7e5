//! The wire form of a GameDay fault, as the coordinator sends it in `fault.inject`'s
//! `params_json` (`{"fault": {...}, ...}`) and the agent reads it: one type for both sides.

use serde::{Deserialize, Serialize};

/// A fault's type and settings (JSON tagged by `type`, snake_case).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultKind {
    /// `pg_ctl stop -m immediate` of the agent's postgres resource; revert starts it again.
    PostgresStop {
        /// The agent's postgres resource.
        database: String,
    },
    /// `kill -9` of a configured process; revert runs its configured `start` argv, if any.
    ProcessKill {
        /// The agent's `faults.processes` entry.
        process: String,
    },
    /// Degrade a dependency through a fault proxy the agent runs; revert: pass-through.
    Proxy {
        /// The agent's `faults.proxies` entry.
        proxy: String,
        /// How it fails.
        mode: ProxyMode,
        /// `latency` mode: added per chunk and direction.
        #[serde(default, skip_serializing_if = "is_zero")]
        latency_ms: u64,
        /// `latency` mode: uniform spread added to the latency.
        #[serde(default, skip_serializing_if = "is_zero")]
        jitter_ms: u64,
        /// `bandwidth` mode: cap per connection and direction.
        #[serde(default, skip_serializing_if = "is_zero")]
        bytes_per_second: u64,
        /// `partial` mode: share of new connections reset, 0..=1.
        #[serde(default, skip_serializing_if = "is_zero_f")]
        failure_rate: f64,
    },
    /// A DNS fault proxy answers a failure for one name; revert: forward it again.
    Dns {
        /// The agent's `faults.dns_proxies` entry.
        proxy: String,
        /// The name, absolute (trailing dot), compared case-insensitively.
        name: String,
        /// What it answers.
        answer: DnsAnswer,
    },
    /// A command for faults drcut has no driver for, and the command that undoes it.
    Exec {
        /// argv that injects.
        inject: Vec<String>,
        /// argv that reverts.
        revert: Vec<String>,
    },
}

impl FaultKind {
    /// The wire `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            FaultKind::PostgresStop { .. } => "postgres_stop",
            FaultKind::ProcessKill { .. } => "process_kill",
            FaultKind::Proxy { .. } => "proxy",
            FaultKind::Dns { .. } => "dns",
            FaultKind::Exec { .. } => "exec",
        }
    }

    /// What it acts on, for refusing two faults on one target: `("proxy", "psp")`.
    pub fn target(&self) -> Option<(&'static str, &str)> {
        match self {
            FaultKind::PostgresStop { database } => Some(("database", database)),
            FaultKind::ProcessKill { process } => Some(("process", process)),
            FaultKind::Proxy { proxy, .. } => Some(("proxy", proxy)),
            // Names on one DNS proxy are independent; commands are the operator's business.
            FaultKind::Dns { .. } | FaultKind::Exec { .. } => None,
        }
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_f(v: &f64) -> bool {
    *v == 0.0
}

/// How a fault proxy degrades its dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyMode {
    /// Accept, never forward, never answer (a silent drop only a timeout detects).
    Blackhole,
    /// Add latency (and jitter) to every chunk.
    Latency,
    /// Reset every connection.
    Reset,
    /// Cap throughput.
    Bandwidth,
    /// Reset a share of new connections (`failure_rate`).
    Partial,
}

impl ProxyMode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Blackhole => "blackhole",
            ProxyMode::Latency => "latency",
            ProxyMode::Reset => "reset",
            ProxyMode::Bandwidth => "bandwidth",
            ProxyMode::Partial => "partial",
        }
    }
}

/// A DNS failure answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsAnswer {
    /// The name does not exist.
    Nxdomain,
    /// The server failed.
    Servfail,
}
