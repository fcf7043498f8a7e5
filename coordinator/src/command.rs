//! What goes through the Raft log ([`Request`]) and what the state machine answers
//! ([`Response`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A replicated write: the command plus who asked, when, and the idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Client-chosen id; a retried request with the same id applies once. Empty: no dedup.
    pub request_id: String,
    /// Principal recorded in the audit chain.
    pub actor: String,
    /// Wall-clock time stamped by the leader when it proposed the request. `apply` never
    /// reads a clock, so every replica computes identical audit hashes.
    pub at_ms: i64,
    /// The change itself.
    pub cmd: Command,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} by {} (request {})", self.cmd.action(), self.actor, self.request_id)
    }
}

/// The replicated commands of state v0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Records the cluster's identity; proposed once by the bootstrap node.
    InitCluster {
        /// The configured cluster id.
        cluster_id: String,
        /// The node that bootstrapped the cluster.
        bootstrap_node: u64,
    },
    /// Registers a new region.
    AddRegion {
        /// The region to add.
        region: Region,
    },
    /// Records an event that changes no other state (e.g. who asked for a membership change).
    Record {
        /// Dotted action name.
        action: String,
        /// What the event was about.
        details: serde_json::Value,
    },
}

impl Command {
    /// The audit action name of this command.
    pub fn action(&self) -> &str {
        match self {
            Command::InitCluster { .. } => "cluster.init",
            Command::AddRegion { .. } => "region.add",
            Command::Record { action, .. } => action,
        }
    }
}

/// The role a region plays for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Takes the service's writes and traffic.
    Primary,
    /// Replicates and waits.
    Standby,
}

/// A region of the protected platform.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Region {
    /// DNS-label style name, e.g. `eu-west`.
    pub name: String,
    /// Human name, e.g. `Europe (Ireland)`.
    pub display_name: String,
    /// Role per service.
    pub roles: BTreeMap<String, Role>,
}

/// Identity of the cluster, set once at bootstrap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterMeta {
    /// The configured cluster id.
    pub cluster_id: String,
    /// When the cluster was created (leader clock).
    pub created_at_ms: i64,
    /// The node that bootstrapped it.
    pub bootstrap_node: u64,
}

/// The state machine's answer to one entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Response {
    /// Log index of the entry that produced this answer (the first one, for a retried request).
    pub log_index: u64,
    /// The result.
    pub outcome: Outcome,
}

/// What applying a command produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    /// Applied, nothing to return.
    #[default]
    Done,
    /// The region as stored.
    Region {
        /// The stored region.
        region: Region,
    },
    /// Refused by a rule checked at apply time; nothing changed.
    Rejected {
        /// Why.
        reason: Rejection,
        /// Human message naming the problem.
        message: String,
    },
}

/// Kinds of refusal, mapped onto gRPC codes at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// Bad input.
    InvalidArgument,
    /// The thing already exists.
    AlreadyExists,
    /// A safety rule refuses it.
    FailedPrecondition,
}
