//! Changes to a drill run ([`DrillOp`]) and their pure application: the engine proposes, the
//! state machine applies through [`DrillRun::apply`], every replica alike.

use super::record::{CheckLine, DrillOutcome, DrillRun, DrillState, Event, GuardrailTrip, milestone};
use serde::{Deserialize, Serialize};

/// Which run a drill links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// The response (cutover) run.
    Response,
    /// The restore (failback) run.
    Restore,
}

/// A change to a drill run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DrillOp {
    /// Preflight verdict: on to injection, or refused.
    Preflight {
        /// Each condition checked.
        lines: Vec<CheckLine>,
    },
    /// The engine commits the intent to send a fault command.
    FaultDispatch {
        /// Fault id.
        fault: String,
        /// Inject (false) or revert (true).
        revert: bool,
        /// Fencing token sent with it.
        token: u64,
    },
    /// An agent's answer to a fault command (or the dead-man switch noticed).
    FaultResult {
        /// Fault id.
        fault: String,
        /// To the revert (true) or the inject (false).
        revert: bool,
        /// Success.
        ok: bool,
        /// One line.
        detail: String,
    },
    /// A milestone observed by the leader at `at_ms` (first one wins).
    Milestone {
        /// Name (see `milestone`).
        name: String,
        /// When.
        at_ms: i64,
    },
    /// Move to a later state.
    Enter {
        /// The state.
        state: DrillState,
        /// Why, for the timeline.
        why: String,
    },
    /// A run the drill started or adopted.
    Link {
        /// Which.
        purpose: Purpose,
        /// Run id.
        run_id: String,
    },
    /// Canary acknowledgements since the last report.
    Canary {
        /// Newly acknowledged ranges.
        acked: Vec<(u64, u64)>,
        /// Newly failed attempts.
        failed: u64,
        /// First failure after injection (0: none yet).
        first_failure_ms: i64,
        /// First acknowledgement after that failure (0: none yet).
        recovered_ms: i64,
        /// A canary error worth recording (empty: none).
        error: String,
    },
    /// The canary's RPO check and the integrity queries, after the response.
    Verified {
        /// Acknowledged sequence numbers the primary lacks.
        missing: Option<Vec<u64>>,
        /// Where and when it was checked.
        checked: String,
        /// Integrity query results.
        integrity: Vec<CheckLine>,
        /// Why the check could not run (empty: it ran).
        error: String,
    },
    /// A guardrail tripped.
    Guardrail {
        /// The trip.
        trip: GuardrailTrip,
    },
    /// Steady state after restore.
    SteadyAfter {
        /// The probes' results.
        lines: Vec<CheckLine>,
    },
    /// Something did not go as planned.
    Deviation {
        /// What.
        text: String,
    },
    /// Stop the drill early (guardrail, deadline, failed injection): revert and restore.
    Abort {
        /// Why.
        reason: String,
        /// Whether the response passed its point of no return: then the drill holds for an
        /// operator (no automatic restore) instead of rolling back.
        hold: bool,
    },
    /// The drill ended.
    Finish {
        /// How.
        outcome: DrillOutcome,
        /// Why, one line.
        detail: String,
        /// The report.
        report: serde_json::Value,
    },
}

impl DrillOp {
    /// Audit action name.
    pub fn action(&self) -> &'static str {
        match self {
            DrillOp::Preflight { .. } => "drill.preflight",
            DrillOp::FaultDispatch { revert: false, .. } => "drill.fault_inject",
            DrillOp::FaultDispatch { revert: true, .. } => "drill.fault_revert",
            DrillOp::FaultResult { .. } => "drill.fault_result",
            DrillOp::Milestone { .. } => "drill.milestone",
            DrillOp::Enter { .. } => "drill.phase",
            DrillOp::Link { .. } => "drill.link_run",
            DrillOp::Canary { .. } => "drill.canary",
            DrillOp::Verified { .. } => "drill.verified",
            DrillOp::Guardrail { .. } => "drill.guardrail",
            DrillOp::SteadyAfter { .. } => "drill.steady_state_after",
            DrillOp::Deviation { .. } => "drill.deviation",
            DrillOp::Abort { .. } => "drill.abort",
            DrillOp::Finish { .. } => "drill.finish",
        }
    }

    /// Whether the audit chain records it (canary progress is summarised in the report).
    pub fn audited(&self) -> bool {
        !matches!(self, DrillOp::Canary { error, .. } if error.is_empty())
    }
}

impl DrillRun {
    /// Applies `op` at leader time `at`. `Ok(false)`: a stale or repeated change, nothing to
    /// store. `Err`: refused (the message says why).
    pub fn apply(&mut self, op: &DrillOp, at: i64) -> Result<bool, String> {
        if self.is_done() {
            return Ok(false);
        }
        let event = |s: &mut DrillRun, what: String| s.events.push(Event { at_ms: at, what });
        match op {
            DrillOp::Preflight { lines } => {
                if self.state != DrillState::Preflight {
                    return Ok(false);
                }
                self.preflight = lines.clone();
                let failed: Vec<_> = lines.iter().filter(|l| !l.ok).map(|l| l.name.clone()).collect();
                if failed.is_empty() {
                    self.enter(DrillState::Injecting, at);
                    event(self, "preflight passed".into());
                } else {
                    event(self, format!("preflight refused: {}", failed.join(", ")));
                }
            }
            DrillOp::FaultDispatch { fault, revert, token } => {
                let Some(f) = self.faults.get_mut(fault) else { return Err(format!("no fault {fault:?}")) };
                if *revert {
                    if f.revert_dispatched_ms != 0 && f.reverted_ms != 0 {
                        return Ok(false);
                    }
                    f.revert_dispatched_ms = at;
                } else {
                    if f.dispatched_ms != 0 {
                        return Ok(false);
                    }
                    f.dispatched_ms = at;
                }
                f.token = *token;
                let verb = if *revert { "revert" } else { "inject" };
                event(self, format!("{verb} {fault} sent"));
            }
            DrillOp::FaultResult { fault, revert, ok, detail } => {
                let Some(f) = self.faults.get_mut(fault) else { return Err(format!("no fault {fault:?}")) };
                let what = match (revert, ok) {
                    (false, true) if f.injected_ms == 0 => {
                        f.injected_ms = at;
                        f.detail = detail.clone();
                        self.milestones.entry(milestone::FAULT_INJECTED.into()).or_insert(at);
                        format!("fault {fault} injected: {detail}")
                    }
                    (false, false) if f.injected_ms == 0 && !f.failed => {
                        f.failed = true;
                        f.detail = detail.clone();
                        format!("fault {fault} could not be injected: {detail}")
                    }
                    (true, true) if f.reverted_ms == 0 && (f.injected_ms != 0 || f.dispatched_ms != 0) => {
                        f.reverted_ms = at;
                        f.detail = detail.clone();
                        format!("fault {fault} reverted: {detail}")
                    }
                    (true, false) if f.reverted_ms == 0 => {
                        f.detail = detail.clone();
                        format!("fault {fault} revert failed: {detail}")
                    }
                    _ => return Ok(false),
                };
                event(self, what);
            }
            DrillOp::Milestone { name, at_ms } => {
                if self.milestones.contains_key(name) {
                    return Ok(false);
                }
                // The report's timeline shows milestones beside the events.
                self.milestones.insert(name.clone(), *at_ms);
            }
            DrillOp::Enter { state, why } => {
                if *state <= self.state || *state == DrillState::Done {
                    return Ok(false);
                }
                self.enter(*state, at);
                event(self, format!("{state:?}: {why}").to_lowercase());
            }
            DrillOp::Link { purpose, run_id } => {
                let slot = match purpose {
                    Purpose::Response => &mut self.response_run,
                    Purpose::Restore => &mut self.restore_run,
                };
                if slot.is_some() {
                    return Ok(false);
                }
                *slot = Some(run_id.clone());
                event(self, format!("{purpose:?} run {run_id}").to_lowercase());
            }
            DrillOp::Canary { acked, failed, first_failure_ms, recovered_ms, error } => {
                let c = &mut self.canary;
                c.add_acked(acked);
                c.failed += failed;
                if c.first_failure_ms == 0 && *first_failure_ms != 0 {
                    c.first_failure_ms = *first_failure_ms;
                }
                if c.recovered_ms == 0 && *recovered_ms != 0 && c.first_failure_ms != 0 {
                    c.recovered_ms = *recovered_ms;
                    self.milestones.entry(milestone::WRITES_AVAILABLE.into()).or_insert(*recovered_ms);
                }
                if !error.is_empty() && c.error.is_empty() {
                    c.error = error.clone();
                }
            }
            DrillOp::Verified { missing, checked, integrity, error } => {
                if self.canary.missing.is_some() || !self.canary.checked.is_empty() {
                    return Ok(false);
                }
                self.canary.missing = missing.clone();
                self.canary.checked = checked.clone();
                if !error.is_empty() {
                    self.canary.error = error.clone();
                }
                self.integrity = integrity.clone();
                let what = match missing {
                    Some(m) => format!("RPO check: {} acknowledged writes missing ({checked})", m.len()),
                    None => format!("RPO not measured: {error}"),
                };
                event(self, what);
            }
            DrillOp::Guardrail { trip } => {
                if self.guardrails.iter().any(|g| g.name == trip.name) {
                    return Ok(false);
                }
                self.guardrails.push(trip.clone());
                event(self, format!("guardrail {} tripped: {} ({})", trip.name, trip.detail, trip.action));
            }
            DrillOp::SteadyAfter { lines } => {
                if !self.steady_after.is_empty() {
                    return Ok(false);
                }
                self.steady_after = lines.clone();
            }
            DrillOp::Deviation { text } => {
                if self.deviations.contains(text) {
                    return Ok(false);
                }
                self.deviations.push(text.clone());
                event(self, format!("deviation: {text}"));
            }
            DrillOp::Abort { reason, hold } => {
                if self.abort.is_some() {
                    return Ok(false);
                }
                self.abort = Some(super::record::Abort { reason: reason.clone(), hold: *hold, at_ms: at });
                if self.state < DrillState::Restoring {
                    self.enter(DrillState::Restoring, at);
                }
                let how = if *hold { "held for an operator" } else { "reverting and rolling back" };
                event(self, format!("aborted ({how}): {reason}"));
            }
            DrillOp::Finish { outcome, detail, report } => {
                self.outcome = Some(*outcome);
                self.outcome_detail = detail.clone();
                self.report = Some(report.clone());
                self.enter(DrillState::Done, at);
                self.ended_ms = at;
                event(self, format!("ended {}: {detail}", outcome.as_str()));
            }
        }
        Ok(true)
    }

    fn enter(&mut self, state: DrillState, at: i64) {
        self.state = state;
        self.state_since_ms = at;
    }
}

/// A minimal drill for other modules' tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use crate::drill::spec::*;
    use std::collections::BTreeMap;

    /// One postgres_stop fault, automatic failover expected, nothing else.
    pub(crate) fn drill() -> Drill {
        Drill {
            name: "d".into(),
            owner: "sre".into(),
            hypothesis: "h".into(),
            service: "wallet".into(),
            target_region: "eu-west".into(),
            schedule: None,
            deadline_ms: 60_000,
            lost_coordinator_ms: 10_000,
            faults: vec![Fault {
                id: "kill".into(),
                region: "eu-west".into(),
                kind: FaultKind::PostgresStop { database: "db".into() },
                duration_ms: None,
            }],
            steady_state: vec![],
            preflight: Preflight { max_lag_seconds: None },
            guardrails: vec![],
            response: Response::AutomaticFailover,
            expect: Expectations {
                detection_ms: None,
                rto_ms: None,
                rpo_rows: None,
                failover: None,
                integrity: vec![],
            },
            canary: None,
            restore: Restore { playbook: None, params: BTreeMap::new(), timeout_ms: 60_000 },
            report: ReportSettings { trend_runs: 4 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::drill;
    use super::*;
    use crate::drill::record::Trigger;

    fn run() -> DrillRun {
        let stored = crate::command::StoredDrill {
            name: "d".into(),
            hash: "h".into(),
            text: String::new(),
            applied_ms: 0,
            applied_by: String::new(),
            last_occurrence_ms: None,
        };
        crate::drill::engine::new_run(&stored, drill(), Trigger::Manual { by: "alice".into() }, 0)
    }

    #[test]
    fn a_drill_moves_forward_only_and_records_first_milestones() {
        let mut r = run();
        let ok = CheckLine { name: "steady".into(), ok: true, detail: String::new() };
        assert_eq!(r.apply(&DrillOp::Preflight { lines: vec![ok] }, 10), Ok(true));
        assert_eq!(r.state, DrillState::Injecting);
        let dispatch = DrillOp::FaultDispatch { fault: "kill".into(), revert: false, token: 7 };
        assert_eq!(r.apply(&dispatch, 11), Ok(true));
        assert_eq!(r.apply(&dispatch, 12), Ok(false), "a repeated intent is a no-op");
        let res = DrillOp::FaultResult { fault: "kill".into(), revert: false, ok: true, detail: "stopped".into() };
        assert_eq!(r.apply(&res, 20), Ok(true));
        assert_eq!(r.apply(&res, 25), Ok(false));
        assert_eq!(r.milestones[milestone::FAULT_INJECTED], 20);
        let enter = |s| DrillOp::Enter { state: s, why: "x".into() };
        assert_eq!(r.apply(&enter(DrillState::Responding), 21), Ok(true));
        assert_eq!(r.apply(&enter(DrillState::Injecting), 22), Ok(false), "never backwards");
        let m = |at| DrillOp::Milestone { name: milestone::REGION_DOWN.into(), at_ms: at };
        assert_eq!(r.apply(&m(30), 31), Ok(true));
        assert_eq!(r.apply(&m(40), 41), Ok(false));
        assert_eq!(r.milestones[milestone::REGION_DOWN], 30);
        assert!(
            r.apply(&DrillOp::FaultResult { fault: "nope".into(), revert: true, ok: true, detail: String::new() }, 1)
                .is_err()
        );
    }

    #[test]
    fn canary_ranges_merge_and_writes_available_needs_a_failure_first() {
        let mut r = run();
        let c = |acked: Vec<(u64, u64)>, first, rec| DrillOp::Canary {
            acked,
            failed: 1,
            first_failure_ms: first,
            recovered_ms: rec,
            error: String::new(),
        };
        r.apply(&c(vec![(1, 5)], 0, 99), 1).unwrap();
        assert!(!r.milestones.contains_key(milestone::WRITES_AVAILABLE));
        r.apply(&c(vec![(6, 9), (12, 12)], 50, 0), 2).unwrap();
        r.apply(&c(vec![(10, 11)], 0, 80), 3).unwrap();
        assert_eq!(r.canary.acked, vec![(1, 12)]);
        assert_eq!(r.canary.acked_count(), 12);
        assert_eq!(r.canary.failed, 3);
        assert_eq!(r.milestones[milestone::WRITES_AVAILABLE], 80);
    }

    #[test]
    fn nothing_changes_a_finished_drill() {
        let mut r = run();
        let fin = DrillOp::Finish { outcome: DrillOutcome::Passed, detail: "ok".into(), report: serde_json::json!({}) };
        assert_eq!(r.apply(&fin, 5), Ok(true));
        assert_eq!((r.state, r.ended_ms), (DrillState::Done, 5));
        assert_eq!(r.apply(&DrillOp::Deviation { text: "late".into() }, 6), Ok(false));
    }
}
