//! A playbook with its parameters substituted: what a run pins in the replicated state.

use super::action::Action;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// What to do when a step still fails after its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop and leave everything as it is.
    Abort,
    /// Run the compensations of completed steps in reverse, never past the point of no return.
    Rollback,
    /// Wait for an operator to retry or abort.
    Pause,
}

impl OnFailure {
    /// The playbook spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Abort => "abort",
            OnFailure::Rollback => "rollback",
            OnFailure::Pause => "pause",
        }
    }
}

/// What a `shift_traffic` gate requires of its region in the health model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Require {
    /// The region is up (every SLI check within its objective).
    Up,
    /// The region is up or degraded, but not down.
    NotDown,
}

impl Require {
    /// The playbook spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Require::Up => "up",
            Require::NotDown => "not_down",
        }
    }
}

/// The health check after each `shift_traffic` phase's dwell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    /// The region whose health is checked.
    pub region: String,
    /// What its health must be for the next phase to start.
    pub require: Require,
}

/// What a rollback runs to undo a step; it inherits the step's timeout and retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compensation {
    /// The action.
    pub action: Action,
    /// The region whose agent executes it.
    pub region: String,
    /// Its settings.
    pub with: serde_json::Value,
}

/// Recovery objectives the run and drill reports are measured against.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Targets {
    /// Recovery point objective (0: nothing acknowledged may be lost).
    pub rpo_seconds: Option<u64>,
    /// Recovery time objective.
    pub rto_seconds: Option<u64>,
}

/// What must hold for a run to start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preconditions {
    /// This region must be up in the health model.
    pub target_region: Option<String>,
    /// The replication lag budget, in seconds.
    pub max_lag_seconds: Option<u64>,
}

/// Which runs a step belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// Planned and unplanned runs.
    #[default]
    Always,
    /// Only planned switchovers (the source is up and cooperates).
    Planned,
    /// Only unplanned failovers (e.g. a STONITH hook run from outside the lost region).
    Unplanned,
}

impl When {
    /// The playbook spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            When::Always => "always",
            When::Planned => "planned",
            When::Unplanned => "unplanned",
        }
    }
}

/// Data an unplanned failover may lose without asking a human.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossBudget {
    /// WAL bytes the standby had not received.
    pub bytes: u64,
    /// Seconds of transactions.
    pub seconds: u64,
}

/// The automatic failover policy of a playbook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Automatic {
    /// Start a run by itself when the source is declared down.
    pub enabled: bool,
    /// After one automatic failover of the service, no other for this long unless an operator
    /// acknowledges.
    pub cooldown: Duration,
}

/// How the playbook handles the loss of its source region (`spec.failover`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    /// The region that gives up the service (holds the primary).
    pub source: String,
    /// The region that takes it over.
    pub target: String,
    /// Loss accepted without an operator's consent (default: nothing beyond the RPO target).
    pub accept_loss: LossBudget,
    /// Off unless stated.
    pub automatic: Option<Automatic>,
}

/// One concrete step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedStep {
    /// Unique id within the playbook.
    pub id: String,
    /// What to do.
    pub action: Action,
    /// The region whose agent executes it (`None` only for `approval`).
    pub region: Option<String>,
    /// Action settings: resource names the agent resolves, never secrets.
    pub with: serde_json::Value,
    /// Per attempt.
    pub timeout: Duration,
    /// Extra attempts after the first.
    pub retries: u32,
    /// Wait before a retry.
    pub retry_backoff: Duration,
    /// After the retries.
    pub on_failure: OnFailure,
    /// What rollback runs for this step.
    pub compensate: Option<Compensation>,
    /// `shift_traffic`: percent of traffic on `to` per phase, strictly increasing, ending at 100.
    pub phases: Vec<u8>,
    /// `shift_traffic`: wait after each phase before its gate.
    pub dwell: Duration,
    /// `shift_traffic`: checked after each dwell.
    pub gate: Option<Gate>,
    /// Which runs include it.
    #[serde(default)]
    pub when: When,
}

/// A playbook with its parameters substituted and defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedPlaybook {
    /// `metadata.name`.
    pub name: String,
    /// SHA-256 (hex) of the playbook file it came from.
    pub hash: String,
    /// The service a run holds the lock of.
    pub service: String,
    /// Every parameter's value, defaults included.
    pub params: BTreeMap<String, String>,
    /// Approvals needed from principals other than the requester.
    pub approvals_required: u32,
    /// Recovery objectives.
    pub targets: Targets,
    /// What must hold to start.
    pub preconditions: Preconditions,
    /// In order.
    pub steps: Vec<ResolvedStep>,
    /// Unplanned use: which region's loss it handles and the policy for it.
    #[serde(default)]
    pub failover: Option<Failover>,
}

impl ResolvedPlaybook {
    /// The index of `promote_db`: before it a failure rolls back, after it the run only moves
    /// forward (healing the old primary would mean two writable primaries).
    pub fn point_of_no_return(&self) -> Option<usize> {
        self.steps.iter().position(|s| s.action == Action::PromoteDb)
    }
}
