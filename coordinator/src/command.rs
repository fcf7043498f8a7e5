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
    /// Registers a region agent (or updates its version and capabilities). An agent is bound to
    /// one region for life.
    RegisterAgent {
        /// The agent.
        agent: AgentRecord,
    },
    /// Health transitions decided by the leader's health model, with their evidence.
    HealthTransitions {
        /// Per (vantage agent, check) transitions.
        checks: Vec<CheckTransition>,
        /// Per region transitions.
        regions: Vec<RegionTransition>,
    },
    /// Stores a validated playbook by content hash.
    ApplyPlaybook {
        /// The stored playbook.
        playbook: StoredPlaybook,
    },
    /// Creates a run; refused while another run holds the service.
    CreateRun {
        /// The new run.
        record: Box<RunRecord>,
    },
    /// Changes a run (operator actions and the engine's intents and outcomes).
    UpdateRun {
        /// The run.
        run_id: String,
        /// What happens to it.
        op: RunOp,
    },
    /// An old primary fenced on its region's return (or the attempt failed).
    FenceDone {
        /// The service.
        service: String,
        /// The region of the old primary.
        region: String,
        /// Fenced and verified.
        ok: bool,
        /// What the agent did or saw.
        detail: String,
    },
    /// The automatic policy would have failed the service over but its cooldown holds:
    /// an operator must acknowledge.
    FailoverSuppressed {
        /// The service.
        service: String,
        /// Why, with the evidence.
        reason: String,
    },
    /// An operator re-arms automatic failover of a service.
    AckFailover {
        /// The service.
        service: String,
        /// Their note.
        note: String,
    },
    /// Stores a validated drill file (the latest version of a name replaces the previous one).
    ApplyDrill {
        /// The stored drill.
        drill: StoredDrill,
    },
    /// Starts a drill run (manual, or a scheduled occurrence: then at most once per occurrence).
    StartDrill {
        /// The new drill run.
        record: Box<crate::drill::DrillRun>,
    },
    /// The scheduler skips an occurrence (blackout, missed window) and records why.
    SkipDrill {
        /// The drill.
        drill: String,
        /// The occurrence (UTC ms).
        occurrence_ms: i64,
        /// Why.
        reason: String,
    },
    /// Changes a drill run (the drill engine's intents and observations).
    UpdateDrill {
        /// The drill run.
        id: String,
        /// What happens to it.
        op: crate::drill::DrillOp,
    },
    /// Stops every active drill: their faults are reverted at once.
    HaltDrills {
        /// Why.
        reason: String,
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
            Command::RegisterAgent { .. } => "agent.register",
            Command::HealthTransitions { .. } => "health.transitions",
            Command::ApplyPlaybook { .. } => "playbook.apply",
            Command::CreateRun { .. } => "run.create",
            Command::UpdateRun { op, .. } => op.action(),
            Command::FenceDone { .. } => "fence.rejoin",
            Command::FailoverSuppressed { .. } => "failover.suppressed",
            Command::AckFailover { .. } => "failover.acknowledged",
            Command::ApplyDrill { .. } => "drill.apply",
            Command::StartDrill { .. } => "drill.start",
            Command::SkipDrill { .. } => "drill.skip",
            Command::UpdateDrill { op, .. } => op.action(),
            Command::HaltDrills { .. } => "drill.halt",
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
    /// Vantage points that must agree before the region is declared down; 0 = a majority of
    /// the agents that check it.
    #[serde(default)]
    pub down_quorum: u32,
}

/// A playbook as stored (by content hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPlaybook {
    /// metadata.name.
    pub name: String,
    /// spec.service.
    pub service: String,
    /// SHA-256 of the text.
    pub hash: String,
    /// The YAML text.
    pub text: String,
    /// When (leader time).
    pub applied_ms: i64,
    /// By whom.
    pub applied_by: String,
}

/// A drill file as stored (by name: the latest version applies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredDrill {
    /// metadata.name.
    pub name: String,
    /// SHA-256 of the text.
    pub hash: String,
    /// The YAML text.
    pub text: String,
    /// When (leader time).
    pub applied_ms: i64,
    /// By whom.
    pub applied_by: String,
    /// The newest schedule occurrence already fired or skipped (UTC ms): the scheduler never
    /// handles an occurrence twice, whichever node leads.
    #[serde(default)]
    pub last_occurrence_ms: Option<i64>,
}

/// A run with what it was started from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The stepper's record.
    pub run: crate::run::Run,
    /// Playbook name.
    pub playbook: String,
    /// The playbook version the run pinned.
    pub playbook_hash: String,
    /// Parameters as given.
    pub params: BTreeMap<String, String>,
    /// Why the run was started.
    pub reason: String,
    /// Created (leader time).
    pub created_ms: i64,
    /// Ended (0 while active).
    pub ended_ms: i64,
    /// Log index of the last change.
    pub revision: u64,
    /// The idempotency key it was started with (empty: none).
    #[serde(default)]
    pub idempotency_key: String,
    /// Started by the automatic failover policy (actor `system`).
    #[serde(default)]
    pub automatic: bool,
}

/// An old primary that must be fenced when its region returns, and rebuilt before failback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FenceOrder {
    /// Its region.
    pub region: String,
    /// The fence step's settings (database resource, mode), sent to the region's agent.
    pub with: serde_json::Value,
    /// The run that left it behind.
    pub run_id: String,
    /// When (leader time).
    pub ordered_ms: i64,
    /// When its agent fenced it (0: not yet).
    pub done_ms: i64,
    /// The agent's last word on it.
    pub detail: String,
}

/// Per-service failover state: who holds the primary, fenced old primaries, the cooldown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    /// The service.
    pub service: String,
    /// The region holding the primary since the last successful run (empty: as configured).
    pub primary_region: String,
    /// Old primaries by region: fenced (or to fence on return) until rebuilt as standbys.
    pub fences: BTreeMap<String, FenceOrder>,
    /// The last automatic failover: (run, leader time).
    pub last_automatic: Option<(String, i64)>,
    /// An automatic failover the cooldown suppressed, waiting for an acknowledgement.
    pub ack_requested: Option<String>,
    /// When an operator last acknowledged (re-arms the policy inside the cooldown).
    pub acknowledged_ms: i64,
}

/// A change to a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RunOp {
    /// An approver approves.
    Approve {
        /// Who.
        who: String,
    },
    /// Pause at the next safe point.
    Pause {
        /// Why.
        reason: String,
    },
    /// Resume a paused run.
    Resume,
    /// Stop it.
    Abort {
        /// Why.
        reason: String,
    },
    /// The engine commits the intent to send `work`.
    Dispatch {
        /// What.
        work: crate::run::Work,
        /// The fencing token sent with it.
        token: u64,
    },
    /// An attempt's outcome (or its timeout).
    Result {
        /// What.
        work: crate::run::Work,
        /// Verified success.
        ok: bool,
        /// One line.
        detail: String,
        /// Numbers.
        measurements: BTreeMap<String, f64>,
        /// Output for later steps.
        data: serde_json::Value,
    },
    /// A gate's verdict after a dwell.
    Gate {
        /// Passed.
        ok: bool,
        /// Why.
        detail: String,
    },
    /// The run reached a terminal state.
    Finish {
        /// Which.
        state: crate::run::RunState,
    },
    /// An unplanned run skips a source-side step.
    Skip {
        /// Step.
        step: usize,
        /// Why.
        reason: String,
    },
    /// An unplanned run cannot move: why.
    Hold {
        /// Why.
        reason: String,
    },
    /// How the old primary is known to take no writes.
    ConfirmFencing {
        /// The confirmation.
        fencing: crate::run::Fencing,
    },
    /// An operator consents to the loss, naming it.
    Consent {
        /// Who.
        who: String,
        /// The acknowledged bytes named (None: "unknown").
        bytes: Option<u64>,
    },
    /// The leader records the loss an unplanned promotion causes.
    RecordLoss {
        /// The measure.
        loss: crate::run::Loss,
    },
    /// An operator promotes without fencing confirmation, naming the risk.
    OverrideFencing {
        /// Who.
        who: String,
        /// The risk in words.
        risk: String,
    },
}

impl RunOp {
    /// Audit action name.
    pub fn action(&self) -> &'static str {
        match self {
            RunOp::Approve { .. } => "run.approve",
            RunOp::Pause { .. } => "run.pause",
            RunOp::Resume => "run.resume",
            RunOp::Abort { .. } => "run.abort",
            RunOp::Dispatch { .. } => "run.step_started",
            RunOp::Result { .. } => "run.step_finished",
            RunOp::Gate { .. } => "run.gate",
            RunOp::Finish { .. } => "run.finish",
            RunOp::Skip { .. } => "run.step_skipped",
            RunOp::Hold { .. } => "run.hold",
            RunOp::ConfirmFencing { .. } => "run.fencing_confirmed",
            RunOp::Consent { .. } => "run.loss_consent",
            RunOp::RecordLoss { .. } => "run.loss_measured",
            RunOp::OverrideFencing { .. } => "run.fencing_override",
        }
    }
}

/// A registered region agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Unique agent id.
    pub agent_id: String,
    /// The region it lives in.
    pub region: String,
    /// Its version.
    pub version: String,
    /// What it can do.
    pub capabilities: Vec<String>,
    /// Self-fencing delay without a lease (0 = off).
    #[serde(default)]
    pub self_fence_after_ms: u64,
}

/// Health state of a check (as one vantage sees it) or of a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Not enough evidence yet.
    #[default]
    Unknown,
    /// Reachable and within its SLOs.
    Up,
    /// Reachable, but SLOs break (or some vantages cannot reach it, below quorum).
    Degraded,
    /// Unreachable (for a region: a quorum of vantage points agree).
    Down,
}

impl HealthState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Unknown => "unknown",
            HealthState::Up => "up",
            HealthState::Degraded => "degraded",
            HealthState::Down => "down",
        }
    }
}

/// A check changed state as seen from one vantage agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckTransition {
    /// Vantage agent.
    pub agent: String,
    /// The agent's own region.
    pub vantage_region: String,
    /// Check name.
    pub check: String,
    /// Region the check measures.
    pub region: String,
    /// Previous state.
    pub from: HealthState,
    /// New state.
    pub to: HealthState,
    /// The values and SLO results that caused it.
    pub evidence: serde_json::Value,
}

/// A region changed state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionTransition {
    /// The region.
    pub region: String,
    /// Previous state.
    pub from: HealthState,
    /// New state.
    pub to: HealthState,
    /// One-line reason.
    pub reason: String,
    /// Which vantages saw what.
    pub evidence: serde_json::Value,
}

/// The replicated state of one check from one vantage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckStatus {
    /// Vantage agent.
    pub agent: String,
    /// The agent's own region.
    pub vantage_region: String,
    /// Check name.
    pub check: String,
    /// Region the check measures.
    pub region: String,
    /// Current state.
    pub state: HealthState,
    /// Since when (leader time).
    pub since_ms: i64,
}

impl CheckStatus {
    /// Storage key: `agent/check`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.agent, self.check)
    }
}

/// The replicated health of a region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RegionStatus {
    /// Current state.
    pub state: HealthState,
    /// Since when (leader time).
    pub since_ms: i64,
    /// Why.
    pub reason: String,
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
    /// The run as stored after the change.
    Run {
        /// Run id.
        run_id: String,
    },
    /// The stored playbook.
    Playbook {
        /// Content hash.
        hash: String,
    },
    /// The drill run as stored.
    Drill {
        /// Drill run id.
        id: String,
    },
    /// The agent as registered.
    Agent {
        /// The stored record.
        agent: AgentRecord,
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
