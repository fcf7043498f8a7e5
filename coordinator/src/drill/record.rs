//! A drill run as the replicated state holds it: what was pinned, what happened when, and the
//! report. Changed only through [`DrillOp`]s applied by the state machine.

use super::spec::Drill;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Why a drill run exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// Its schedule fired.
    Schedule {
        /// The occurrence (UTC ms) it stands for.
        occurrence_ms: i64,
        /// Started after the start tolerance, under the `run_late` policy.
        late: bool,
    },
    /// An operator asked (`drctl drill run`).
    Manual {
        /// Who.
        by: String,
    },
}

/// Where a drill run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrillState {
    /// Checking steady state, lag and that nothing else runs.
    Preflight,
    /// Sending the faults.
    Injecting,
    /// Faults active: watching detection, running or awaiting the response.
    Responding,
    /// Reverting faults and running the restore.
    Restoring,
    /// Ended (see `outcome`).
    Done,
}

/// How a drill run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrillOutcome {
    /// Every expectation held.
    Passed,
    /// It ran to the end, and an expectation failed.
    Failed,
    /// A guardrail tripped (or the deadline passed): aborted and restored.
    Aborted,
    /// Stopped by `drctl drill halt`.
    Halted,
    /// Preflight refused it; nothing was injected.
    Refused,
    /// A dry run: preflight and plan only.
    DryRun,
    /// The schedule's occurrence was skipped (blackout, missed window).
    Skipped,
}

impl DrillOutcome {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DrillOutcome::Passed => "passed",
            DrillOutcome::Failed => "failed",
            DrillOutcome::Aborted => "aborted",
            DrillOutcome::Halted => "halted",
            DrillOutcome::Refused => "refused",
            DrillOutcome::DryRun => "dry_run",
            DrillOutcome::Skipped => "skipped",
        }
    }
}

/// One fault's life in a drill run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultStatus {
    /// The inject command was committed (leader time; 0: not yet).
    pub dispatched_ms: i64,
    /// Fencing token of the inject command.
    pub token: u64,
    /// The agent confirmed the fault active (0: not yet).
    pub injected_ms: i64,
    /// The revert command was committed (0: not yet).
    pub revert_dispatched_ms: i64,
    /// The agent confirmed the fault reverted (0: not yet).
    pub reverted_ms: i64,
    /// The agent's last word.
    pub detail: String,
    /// The agent reported a failure injecting it.
    pub failed: bool,
}

/// A named, timed line of a check list (preflight, integrity, expectations).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckLine {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// Evidence.
    pub detail: String,
}

/// A guardrail that tripped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardrailTrip {
    /// Its name.
    pub name: String,
    /// When (leader time).
    pub at_ms: i64,
    /// The evidence.
    pub detail: String,
    /// What the drill did: `aborted and restored` or `held and paged`.
    pub action: String,
}

/// The write canary's account.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CanaryRecord {
    /// Acknowledged sequence numbers as inclusive ranges, ascending.
    pub acked: Vec<(u64, u64)>,
    /// Attempts that got an error (not acknowledged).
    pub failed: u64,
    /// The first failed attempt after injection (leader time; 0: none).
    pub first_failure_ms: i64,
    /// The first acknowledgement after that failure: writes available again (0: not yet).
    pub recovered_ms: i64,
    /// Acknowledged rows the primary lacks after the response (None: not checked yet).
    pub missing: Option<Vec<u64>>,
    /// When the check ran and against which server.
    pub checked: String,
    /// Why the canary could not run or check, if so.
    pub error: String,
}

impl CanaryRecord {
    /// How many writes were acknowledged.
    pub fn acked_count(&self) -> u64 {
        self.acked.iter().map(|(a, b)| b - a + 1).sum()
    }

    /// Adds acknowledged sequence numbers, keeping the ranges merged and sorted.
    pub fn add_acked(&mut self, ranges: &[(u64, u64)]) {
        self.acked.extend_from_slice(ranges);
        self.acked.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.acked.len());
        for &(a, b) in &self.acked {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        self.acked = merged;
    }

    /// The highest sequence number ever acknowledged (0: none).
    pub fn max_acked(&self) -> u64 {
        self.acked.last().map_or(0, |r| r.1)
    }
}

/// A timeline entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Leader time.
    pub at_ms: i64,
    /// What happened, one line.
    pub what: String,
}

/// The RTO milestones (leader time; absent: did not happen).
pub mod milestone {
    /// The first fault confirmed active.
    pub const FAULT_INJECTED: &str = "fault_injected";
    /// The first check in the target region left `up`.
    pub const FIRST_FAILING_CHECK: &str = "first_failing_check";
    /// The target region declared down.
    pub const REGION_DOWN: &str = "region_declared_down";
    /// The response run was created.
    pub const RUN_STARTED: &str = "run_started";
    /// The canary's first acknowledgement after writes failed.
    pub const WRITES_AVAILABLE: &str = "writes_available";
    /// The last traffic phase (100 %) completed.
    pub const TRAFFIC_100: &str = "traffic_100";
    /// The last DNS change plus its TTL: no resolver cache can still hold an old answer.
    pub const DNS_CONVERGED: &str = "dns_converged";
    /// The response run ended.
    pub const RESPONSE_ENDED: &str = "response_ended";
    /// Restore started.
    pub const RESTORE_STARTED: &str = "restore_started";
    /// Restore ended.
    pub const RESTORED: &str = "restored";
    /// In order, for reports.
    pub const ORDER: [&str; 10] = [
        FAULT_INJECTED,
        FIRST_FAILING_CHECK,
        REGION_DOWN,
        RUN_STARTED,
        WRITES_AVAILABLE,
        TRAFFIC_100,
        DNS_CONVERGED,
        RESPONSE_ENDED,
        RESTORE_STARTED,
        RESTORED,
    ];
}

/// A drill run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRun {
    /// `drill-<name>-<yyyymmddThhmmss>` (UTC start).
    pub id: String,
    /// The drill's name.
    pub drill: String,
    /// SHA-256 of the drill file it ran from (pinned for auditors).
    pub drill_hash: String,
    /// The parsed drill it pinned.
    pub spec: Drill,
    /// Why it exists.
    pub trigger: Trigger,
    /// Preflight and plan only.
    pub dry_run: bool,
    /// Where it is.
    pub state: DrillState,
    /// How it ended (with `state == Done`).
    pub outcome: Option<DrillOutcome>,
    /// Why it ended so, one line.
    pub outcome_detail: String,
    /// Created (leader time).
    pub created_ms: i64,
    /// Entered the current state (leader time).
    pub state_since_ms: i64,
    /// Ended (0 while active).
    pub ended_ms: i64,
    /// Preflight results.
    pub preflight: Vec<CheckLine>,
    /// Faults by id.
    pub faults: BTreeMap<String, FaultStatus>,
    /// RTO milestones by name (see [`milestone`]).
    pub milestones: BTreeMap<String, i64>,
    /// The response run (and the playbook hash it pinned).
    pub response_run: Option<String>,
    /// The restore run.
    pub restore_run: Option<String>,
    /// The canary's account.
    pub canary: CanaryRecord,
    /// Guardrails that tripped.
    pub guardrails: Vec<GuardrailTrip>,
    /// Integrity query results.
    pub integrity: Vec<CheckLine>,
    /// Steady state after restore.
    pub steady_after: Vec<CheckLine>,
    /// Differences between what the plan said and what happened.
    pub deviations: Vec<String>,
    /// The timeline.
    pub events: Vec<Event>,
    /// The report (JSON; Markdown is rendered from it), once ended.
    pub report: Option<serde_json::Value>,
    /// Log index of the last change.
    pub revision: u64,
    /// `drctl drill halt` asked it to stop (why).
    #[serde(default)]
    pub halt: Option<String>,
    /// Stopped early (guardrail, deadline, a fault that would not inject).
    #[serde(default)]
    pub abort: Option<Abort>,
}

/// Why and how a drill stopped early.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Abort {
    /// Why.
    pub reason: String,
    /// Past the point of no return: held for an operator, no automatic restore.
    pub hold: bool,
    /// When (leader time).
    pub at_ms: i64,
}

impl DrillRun {
    /// Whether it has ended.
    pub fn is_done(&self) -> bool {
        self.state == DrillState::Done
    }
}
