//! The parsed form of a drill file (`apiVersion: drcut/v1`, `kind: Drill`): what the engine
//! runs and a drill run pins. Parsing and validation live in `parse`; the wire format of a
//! fault (its `type` tag and fields) is exactly what the agent's `fault.inject` reads.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A validated drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drill {
    /// metadata.name (a DNS-label style name).
    pub name: String,
    /// metadata.owner: the team answerable for the drill.
    pub owner: String,
    /// spec.hypothesis: what the team believes will happen.
    pub hypothesis: String,
    /// spec.service: the protected service the drill exercises.
    pub service: String,
    /// spec.target.region: the region in the blast radius.
    pub target_region: String,
    /// spec.schedule (None: run on demand only).
    pub schedule: Option<Schedule>,
    /// spec.deadline: the whole drill must end by then; agents revert its faults by themselves
    /// when it passes (dead-man switch).
    pub deadline_ms: u64,
    /// spec.dead_man.lost_coordinator: an agent reverts the drill's faults by itself when it has
    /// held no lease from the coordinator for this long.
    pub lost_coordinator_ms: u64,
    /// spec.faults, injected in order.
    pub faults: Vec<Fault>,
    /// spec.steady_state: what must hold before the drill starts and after it restored.
    pub steady_state: Vec<Probe>,
    /// spec.preflight: extra conditions checked before anything is injected.
    pub preflight: Preflight,
    /// spec.guardrails: breaches abort the drill and restore at once.
    pub guardrails: Vec<Guardrail>,
    /// spec.response: what the platform is expected to do about the fault.
    pub response: Response,
    /// spec.expect: the targets the report grades.
    pub expect: Expectations,
    /// spec.canary: the write canary that measures RPO (None: RPO not measured).
    pub canary: Option<Canary>,
    /// spec.restore: how the platform is put back.
    pub restore: Restore,
    /// spec.report: report settings.
    pub report: ReportSettings,
}

/// When a drill fires: an RFC 5545 recurrence rule in an explicit time zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// The RRULE body, e.g. `FREQ=MONTHLY;BYMONTH=1,4,7,10;BYDAY=1TU;BYHOUR=3;BYMINUTE=0`.
    pub rrule: String,
    /// IANA time zone name the rule is read in, e.g. `Europe/Dublin`.
    pub timezone: String,
    /// DTSTART as local wall time in `timezone` (`YYYY-MM-DDTHH:MM:SS`); occurrences before it
    /// never fire. Default: the rule's first occurrence after the drill was applied.
    pub start: Option<String>,
    /// Dates (`YYYY-MM-DD`, in `timezone`) on which an occurrence is skipped and recorded.
    pub blackout: Vec<String>,
    /// How late after its time an occurrence may still start and count as on time.
    pub start_tolerance_ms: u64,
    /// What happens to an occurrence that could not start within the tolerance.
    pub missed: MissedPolicy,
    /// With `run_late`: the latest a missed occurrence may still start.
    pub late_limit_ms: u64,
    /// `enabled: false` keeps the drill on file without firing it.
    pub enabled: bool,
}

/// The policy for an occurrence that could not start on time (no leader, another drill
/// running). An occurrence that fired and was refused by preflight is spent, not missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissedPolicy {
    /// Record it as missed and wait for the next occurrence.
    Skip,
    /// Start it at the first chance up to `late_limit` after its time, recorded as late.
    RunLate,
}

/// One fault to inject, by the agent of `region`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// Unique within the drill.
    pub id: String,
    /// The region whose agent injects it.
    pub region: String,
    /// What to do (serialized with a `type` tag: the agent's `fault.inject` format).
    pub kind: FaultKind,
    /// The engine reverts it this long after injecting it (None: at restore).
    pub duration_ms: Option<u64>,
}

pub use drcut_proto::fault::{DnsAnswer, FaultKind, ProxyMode};

/// What a health probe requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Require {
    /// Reachable and within its SLOs.
    Up,
    /// Anything but down (degraded allowed).
    NotDown,
}

/// A condition on the replicated health model: a region's health, or one check's (as seen from
/// every vantage, or from one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// The region measured.
    pub region: String,
    /// A check name (None: the region's overall health).
    pub check: Option<String>,
    /// Only this vantage region's view of the check (None: every vantage must satisfy it).
    pub vantage: Option<String>,
    /// What must hold.
    pub require: Require,
}

/// A guardrail: a probe outside the blast radius that must keep holding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guardrail {
    /// Unique within the drill; named in the report.
    pub name: String,
    /// What must hold.
    pub probe: Probe,
    /// A breach must last this long before it trips (0: at once).
    pub for_ms: u64,
}

/// Conditions checked before injecting (besides steady state and "no other run active").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preflight {
    /// Replication lag of the service's standby must be at most this (None: not checked).
    pub max_lag_seconds: Option<f64>,
}

/// What the platform is expected to do about the fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// drcut runs this playbook (a cutover as any other run: approvals, gates, rollback).
    Playbook {
        /// Stored playbook name.
        playbook: String,
        /// Its parameters.
        params: BTreeMap<String, String>,
        /// Run it as an unplanned failover (source region lost).
        unplanned: bool,
        /// When to start it.
        start: ResponseStart,
    },
    /// The service's automatic failover policy must start a run by itself.
    AutomaticFailover,
    /// No cutover: the platform must ride the fault out (observed for `observe_ms`).
    None {
        /// How long the fault is observed before restoring.
        observe_ms: u64,
    },
}

/// When a playbook response starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseStart {
    /// Once the target region is declared down.
    OnDown,
    /// Once the first check fails.
    OnDetection,
    /// Right after injection.
    Immediately,
}

/// The targets the report grades.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expectations {
    /// Fault injected → first failing check, at most.
    pub detection_ms: Option<u64>,
    /// Fault injected → writes available again (and traffic fully moved when a cutover runs).
    pub rto_ms: Option<u64>,
    /// Acknowledged canary writes lost, at most (0: none).
    pub rpo_rows: Option<u64>,
    /// Whether the response must end in a successful failover (true), must not fail over
    /// (false), or either (None).
    pub failover: Option<bool>,
    /// SQL checks run on the primary after the response, through the canary's connection.
    pub integrity: Vec<IntegrityCheck>,
}

/// One integrity query: its single value must equal `expect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntegrityCheck {
    /// Named in the report.
    pub name: String,
    /// Returns one row, one column.
    pub query: String,
    /// The expected value, as text.
    pub expect: String,
}

/// The write canary: numbered rows inserted through the drill, each acknowledgement recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    /// libpq connection string naming every host the primary may be on (with
    /// `target_session_attrs=read-write`, the canary follows the primary). No password: see
    /// `password_env`.
    pub dsn: String,
    /// Environment variable of the coordinator holding the password (None: none/pgpass).
    pub password_env: Option<String>,
    /// The table (created if missing).
    pub table: String,
    /// Between inserts.
    pub interval_ms: u64,
}

/// How the platform is put back after the response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restore {
    /// A failback playbook, run as its own gated cutover (None: reverting the faults is enough).
    pub playbook: Option<String>,
    /// Its parameters.
    pub params: BTreeMap<String, String>,
    /// The restore must finish within this.
    pub timeout_ms: u64,
}

/// Report settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportSettings {
    /// How many earlier runs of the drill the trend compares.
    pub trend_runs: usize,
}
