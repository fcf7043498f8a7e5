//! The run stepper: pure decisions over a run's committed record. No I/O, no clock (time comes
//! in as an argument), so every rule is unit-tested and a new leader that reads the same record
//! takes exactly the decision the old one would have.
//!
//! The leader's driver loops: `decide(run, now)` → commit the decision's intent → act (send a
//! step command, evaluate a gate) → commit the outcome with `record_*`. Nothing irreversible
//! happens that is not first in the log, and because the intent carries the attempt number and
//! fencing token, a resent command is recognised by the agent as a repeat.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What to do when a step fails after its retries (the playbook's own type).
pub use crate::playbook::OnFailure;

/// One action for one region's agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Vocabulary word, e.g. `promote_db`.
    pub action: String,
    /// The region whose agent executes it (empty for `approval`).
    pub region: String,
    /// Settings (resource names, not secrets).
    pub with: serde_json::Value,
}

/// A concrete step of a run (parameters already substituted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStep {
    /// Unique id within the run.
    pub id: String,
    /// What to do.
    pub act: Action,
    /// Per attempt.
    pub timeout_ms: u64,
    /// Extra attempts after the first.
    pub retries: u32,
    /// Wait before a retry (doubles each time).
    pub retry_backoff_ms: u64,
    /// After the retries.
    pub on_failure: OnFailure,
    /// What rollback runs for this step.
    pub compensate: Option<Action>,
    /// shift_traffic: traffic percentages, one phase each.
    pub phases: Vec<u8>,
    /// shift_traffic: wait after each phase before its gate.
    pub dwell_ms: u64,
    /// shift_traffic: the region that must be healthy before the next phase.
    pub gate_region: Option<String>,
    /// shift_traffic: `up`, or `not_down` (degraded passes).
    #[serde(default)]
    pub gate_require: String,
}

/// The steps a run executes, pinned at creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPlan {
    /// In order.
    pub steps: Vec<PlanStep>,
    /// Index of `promote_db`: before it a failure rolls back, after it the run only moves
    /// forward (healing the old primary would mean two writable primaries).
    pub point_of_no_return: Option<usize>,
    /// Approvals needed from principals other than the requester.
    pub approvals_required: u32,
}

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunState {
    /// Waiting for approvals.
    AwaitingApproval,
    /// Executing steps.
    Running,
    /// Stopped at a safe point until an operator resumes or aborts.
    Paused {
        /// Why.
        reason: String,
    },
    /// Running compensations.
    RollingBack {
        /// Why.
        reason: String,
    },
    /// Every step done.
    Succeeded,
    /// Compensations done.
    RolledBack {
        /// Why the rollback started.
        reason: String,
    },
    /// Stopped by an operator or a failure with policy `abort`.
    Aborted {
        /// Why.
        reason: String,
    },
}

impl RunState {
    /// No more decisions will be taken.
    pub fn is_terminal(&self) -> bool {
        matches!(self, RunState::Succeeded | RunState::RolledBack { .. } | RunState::Aborted { .. })
    }
}

/// A unit of work sent to an agent: a step, one phase of a step, or a compensation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Work {
    /// Step index.
    pub step: usize,
    /// Phase index (shift_traffic).
    pub phase: Option<usize>,
    /// True for a compensation.
    pub compensation: bool,
    /// 1-based attempt.
    pub attempt: u32,
}

/// An attempt whose intent is committed and whose result is awaited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InFlight {
    /// What.
    pub work: Work,
    /// The token the agent must see (newer than any it has seen).
    pub fencing_token: u64,
    /// When the intent was committed.
    pub started_ms: i64,
}

/// The record of one finished attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// What.
    pub work: Work,
    /// Start and end (leader time).
    pub started_ms: i64,
    /// End.
    pub finished_ms: i64,
    /// Verified success.
    pub ok: bool,
    /// One line.
    pub detail: String,
    /// Numbers.
    pub measurements: BTreeMap<String, f64>,
}

/// The replicated record of a run: everything decisions depend on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Run id.
    pub id: String,
    /// The service whose lock it holds while not terminal.
    pub service: String,
    /// The plan.
    pub plan: RunPlan,
    /// Who asked.
    pub requester: String,
    /// Approvers so far.
    pub approvals: Vec<String>,
    /// Where it stands.
    pub state: RunState,
    /// Next forward step.
    pub cursor: usize,
    /// Next phase of the current step.
    pub phase: usize,
    /// Steps completed forward (for rollback), in order.
    pub completed: Vec<usize>,
    /// Compensations still to run, next first.
    pub to_compensate: Vec<usize>,
    /// The attempt in progress.
    pub in_flight: Option<InFlight>,
    /// The next attempt of the current work may not start before this (retry backoff).
    pub not_before_ms: i64,
    /// Failed attempts of the current work so far.
    pub failures: u32,
    /// A dwell in progress: the gate is checked at this time.
    pub dwell_until_ms: Option<i64>,
    /// Outputs of finished steps by step id (e.g. the frozen LSN), fed to later steps.
    pub outputs: BTreeMap<String, serde_json::Value>,
    /// Every finished attempt.
    pub history: Vec<Attempt>,
}

/// What the leader should do for a run now.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing until this time (or until an outside event when None).
    Wait(Option<i64>),
    /// Commit the intent and send this work.
    Dispatch {
        /// The work.
        work: Work,
        /// The action to execute.
        act: Action,
        /// Per-attempt timeout.
        timeout_ms: u64,
    },
    /// The dwell of step `step` after phase `phase` is over: evaluate its gate.
    Gate {
        /// Step.
        step: usize,
        /// The phase just completed.
        phase: usize,
        /// The region that must be healthy.
        region: String,
    },
    /// The run reached a terminal state: commit it.
    Finish(RunState),
    /// An attempt outlived its timeout: record it as failed.
    TimedOut(Work),
}

impl Run {
    /// A new run; it waits for approvals when the plan needs them.
    pub fn new(id: &str, service: &str, plan: RunPlan, requester: &str) -> Run {
        let state = if plan.approvals_required > 0 { RunState::AwaitingApproval } else { RunState::Running };
        Run {
            id: id.to_string(),
            service: service.to_string(),
            plan,
            requester: requester.to_string(),
            approvals: vec![],
            state,
            cursor: 0,
            phase: 0,
            completed: vec![],
            to_compensate: vec![],
            in_flight: None,
            not_before_ms: 0,
            failures: 0,
            dwell_until_ms: None,
            outputs: BTreeMap::new(),
            history: vec![],
        }
    }

    /// Records an approval; the requester can never approve their own run, nor anyone twice.
    pub fn approve(&mut self, who: &str) -> Result<(), String> {
        if self.state != RunState::AwaitingApproval {
            return Err(format!("run {} is not awaiting approval", self.id));
        }
        if who == self.requester {
            return Err(format!("{who} requested run {} and cannot approve it (two-person rule)", self.id));
        }
        if self.approvals.iter().any(|a| a == who) {
            return Err(format!("{who} already approved run {}", self.id));
        }
        self.approvals.push(who.to_string());
        if self.approvals.len() as u32 >= self.plan.approvals_required {
            self.state = RunState::Running;
        }
        Ok(())
    }

    /// Pauses at the next safe point (the attempt in flight finishes first).
    pub fn pause(&mut self, reason: &str) -> Result<(), String> {
        match self.state {
            RunState::Running | RunState::AwaitingApproval => {
                self.state = RunState::Paused { reason: reason.to_string() };
                Ok(())
            }
            _ => Err(format!("run {} cannot be paused in state {:?}", self.id, self.state)),
        }
    }

    /// Resumes a paused run; a step that failed is retried from a fresh attempt count.
    pub fn resume(&mut self) -> Result<(), String> {
        if !matches!(self.state, RunState::Paused { .. }) {
            return Err(format!("run {} is not paused", self.id));
        }
        self.state = if self.approvals.len() as u32 >= self.plan.approvals_required {
            RunState::Running
        } else {
            RunState::AwaitingApproval
        };
        self.failures = 0;
        Ok(())
    }

    /// Stops the run where it is (an attempt in flight is abandoned; its result is ignored).
    pub fn abort(&mut self, reason: &str) -> Result<(), String> {
        if self.state.is_terminal() {
            return Err(format!("run {} already ended", self.id));
        }
        self.state = RunState::Aborted { reason: reason.to_string() };
        self.in_flight = None;
        Ok(())
    }

    fn past_point_of_no_return(&self) -> bool {
        self.plan.point_of_no_return.is_some_and(|p| self.completed.contains(&p))
    }

    /// Starts a rollback: compensate completed steps in reverse, but never a step at or
    /// before the point of no return once it has passed (the promoted database stays).
    fn start_rollback(&mut self, reason: String, current: Option<usize>) {
        let floor = if self.past_point_of_no_return() { self.plan.point_of_no_return } else { None };
        let mut steps: Vec<usize> = self.completed.clone();
        // A partially done shift (some phases applied) needs its compensation too.
        if let Some(c) = current
            && !steps.contains(&c)
            && self.phase > 0
        {
            steps.push(c);
        }
        self.to_compensate = steps
            .into_iter()
            .rev()
            .filter(|s| floor.is_none_or(|f| *s > f) && self.plan.steps[*s].compensate.is_some())
            .collect();
        self.failures = 0;
        self.not_before_ms = 0;
        self.state = RunState::RollingBack { reason };
    }

    /// The decision for now.
    pub fn decide(&self, now_ms: i64) -> Decision {
        if let Some(f) = &self.in_flight {
            let timeout = self.timeout_of(&f.work);
            let deadline = f.started_ms + timeout as i64;
            return if now_ms >= deadline {
                Decision::TimedOut(f.work.clone())
            } else {
                Decision::Wait(Some(deadline))
            };
        }
        match &self.state {
            RunState::AwaitingApproval | RunState::Paused { .. } => Decision::Wait(None),
            s if s.is_terminal() => Decision::Wait(None),
            RunState::RollingBack { reason } => {
                let Some(&step) = self.to_compensate.first() else {
                    return Decision::Finish(RunState::RolledBack { reason: reason.clone() });
                };
                if now_ms < self.not_before_ms {
                    return Decision::Wait(Some(self.not_before_ms));
                }
                let work = Work { step, phase: None, compensation: true, attempt: self.failures + 1 };
                let act = self.action_for(&work).expect("only steps with a compensation are queued");
                Decision::Dispatch { work, act, timeout_ms: self.plan.steps[step].timeout_ms }
            }
            RunState::Running => {
                if let Some(until) = self.dwell_until_ms {
                    let s = &self.plan.steps[self.cursor];
                    if now_ms < until {
                        return Decision::Wait(Some(until));
                    }
                    if let Some(region) = &s.gate_region {
                        return Decision::Gate { step: self.cursor, phase: self.phase - 1, region: region.clone() };
                    }
                }
                let Some(s) = self.plan.steps.get(self.cursor) else {
                    return Decision::Finish(RunState::Succeeded);
                };
                if now_ms < self.not_before_ms {
                    return Decision::Wait(Some(self.not_before_ms));
                }
                let phase = if s.phases.is_empty() { None } else { Some(self.phase) };
                let work = Work { step: self.cursor, phase, compensation: false, attempt: self.failures + 1 };
                let act = self.action_for(&work).expect("the cursor is on a step");
                Decision::Dispatch { work, act, timeout_ms: s.timeout_ms }
            }
            _ => Decision::Wait(None),
        }
    }

    /// The exact action `work` sends: the step (or its compensation) with its phase's percent,
    /// and the frozen LSN for a catch-up. Decisions and re-sends after a leader change both
    /// use it, so a re-sent attempt is byte-for-byte the one first sent.
    pub fn action_for(&self, work: &Work) -> Option<Action> {
        let s = self.plan.steps.get(work.step)?;
        let mut act = if work.compensation { s.compensate.clone()? } else { s.act.clone() };
        if work.compensation {
            if s.act.action == "shift_traffic" && act.action == "shift_traffic" {
                // Shifting back = the same driver at 0 %.
                with_percent(&mut act.with, 0);
            }
        } else if let Some(p) = work.phase {
            with_percent(&mut act.with, *s.phases.get(p)?);
        }
        // Catch-up waits for exactly the LSN the freeze recorded: nothing acknowledged before
        // the freeze can be missing on the promoted standby.
        if act.action == "wait_replication"
            && let Some(obj) = act.with.as_object_mut()
            && !obj.contains_key("lsn")
            && let Some(lsn) = self.outputs.values().find_map(|o| o.get("frozen_lsn").cloned())
        {
            obj.insert("lsn".into(), lsn);
        }
        Some(act)
    }

    fn timeout_of(&self, w: &Work) -> u64 {
        self.plan.steps.get(w.step).map(|s| s.timeout_ms).unwrap_or(0)
    }

    /// The intent of `work` is committed with `token`.
    pub fn record_dispatch(&mut self, work: Work, fencing_token: u64, now_ms: i64) {
        self.in_flight = Some(InFlight { work, fencing_token, started_ms: now_ms });
    }

    /// An attempt finished (or timed out). Results for anything but the attempt in flight (a
    /// late reply from an abandoned attempt) are ignored: returns false.
    #[allow(clippy::too_many_arguments)]
    pub fn record_result(
        &mut self,
        work: &Work,
        ok: bool,
        detail: &str,
        measurements: BTreeMap<String, f64>,
        data: serde_json::Value,
        now_ms: i64,
    ) -> bool {
        let Some(f) = self.in_flight.clone().filter(|f| &f.work == work) else {
            return false;
        };
        self.in_flight = None;
        self.history.push(Attempt {
            work: work.clone(),
            started_ms: f.started_ms,
            finished_ms: now_ms,
            ok,
            detail: detail.to_string(),
            measurements,
        });
        let step = &self.plan.steps[work.step];
        if ok {
            self.failures = 0;
            self.not_before_ms = 0;
            if work.compensation {
                self.to_compensate.retain(|s| *s != work.step);
                return true;
            }
            if !data.is_null() {
                self.outputs.insert(step.id.clone(), data);
            }
            if let Some(p) = work.phase {
                self.phase = p + 1;
                if self.phase < step.phases.len() {
                    self.dwell_until_ms = Some(now_ms + step.dwell_ms as i64);
                    return true;
                }
            }
            self.completed.push(work.step);
            self.cursor += 1;
            self.phase = 0;
            self.dwell_until_ms = None;
            return true;
        }
        self.failures += 1;
        if self.failures <= step.retries {
            self.not_before_ms = now_ms + (step.retry_backoff_ms << (self.failures - 1).min(10)) as i64;
            return true;
        }
        let reason = format!("step {} failed after {} attempt(s): {detail}", step.id, self.failures);
        if work.compensation {
            // A compensation that cannot be done needs a human.
            self.state = RunState::Paused { reason: format!("rollback stuck: {reason}") };
            return true;
        }
        let policy =
            if self.past_point_of_no_return() && step.on_failure == OnFailure::Rollback && step.compensate.is_none() {
                // Past the point of no return with nothing to undo here: hold for an operator.
                OnFailure::Pause
            } else {
                step.on_failure
            };
        match policy {
            OnFailure::Abort => self.state = RunState::Aborted { reason },
            OnFailure::Pause => self.state = RunState::Paused { reason },
            OnFailure::Rollback => self.start_rollback(reason, Some(work.step)),
        }
        true
    }

    /// The gate after a dwell passed or failed.
    pub fn record_gate(&mut self, ok: bool, detail: &str) {
        self.dwell_until_ms = None;
        if ok {
            return;
        }
        let step = &self.plan.steps[self.cursor];
        let reason = format!("gate after {} phase {}% failed: {detail}", step.id, step.phases[self.phase - 1]);
        self.start_rollback(reason, Some(self.cursor));
    }
}

fn with_percent(with: &mut serde_json::Value, percent: u8) {
    if let Some(obj) = with.as_object_mut() {
        obj.insert("percent".into(), serde_json::json!(percent));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn step(id: &str, action: &str, comp: Option<&str>) -> PlanStep {
        PlanStep {
            id: id.into(),
            act: Action { action: action.into(), region: "r".into(), with: json!({}) },
            timeout_ms: 1000,
            retries: 1,
            retry_backoff_ms: 100,
            on_failure: OnFailure::Rollback,
            compensate: comp.map(|c| Action { action: c.into(), region: "r".into(), with: json!({}) }),
            phases: vec![],
            dwell_ms: 0,
            gate_region: None,
            gate_require: "up".into(),
        }
    }

    fn plan(approvals: u32) -> RunPlan {
        let mut shift = step("shift", "shift_traffic", Some("shift_traffic"));
        shift.phases = vec![25, 100];
        shift.dwell_ms = 500;
        shift.gate_region = Some("eu-central".into());
        RunPlan {
            steps: vec![
                step("freeze", "freeze_writes", Some("unfreeze_writes")),
                step("catch-up", "wait_replication", None),
                step("promote", "promote_db", None),
                shift,
                step("smoke", "smoke", None),
            ],
            point_of_no_return: Some(2),
            approvals_required: approvals,
        }
    }

    /// Dispatches what `decide` asks and records `ok` for it; returns the work.
    fn drive(r: &mut Run, now: i64, ok: bool) -> Work {
        let Decision::Dispatch { work, .. } = r.decide(now) else {
            panic!("expected dispatch, got {:?}", r.decide(now))
        };
        r.record_dispatch(work.clone(), 7, now);
        assert!(r.record_result(&work, ok, if ok { "done" } else { "boom" }, BTreeMap::new(), json!(null), now + 1));
        work
    }

    #[test]
    fn two_person_rule() {
        let mut r = Run::new("r1", "wallet", plan(1), "alice");
        assert_eq!(r.decide(0), Decision::Wait(None));
        assert!(r.approve("alice").unwrap_err().contains("two-person"));
        r.approve("bob").unwrap();
        assert!(r.approve("bob").is_err());
        assert_eq!(r.state, RunState::Running);
    }

    #[test]
    fn happy_path_with_phases_dwell_and_gates() {
        let mut r = Run::new("r1", "wallet", plan(0), "alice");
        for _ in 0..3 {
            drive(&mut r, 0, true);
        }
        let w = drive(&mut r, 10, true);
        assert_eq!(w.phase, Some(0));
        // Dwelling until 11 + 500.
        assert_eq!(r.decide(100), Decision::Wait(Some(511)));
        assert!(matches!(r.decide(511), Decision::Gate { step: 3, phase: 0, .. }));
        r.record_gate(true, "eu-central up");
        let Decision::Dispatch { work, act, .. } = r.decide(512) else { panic!() };
        assert_eq!((work.phase, act.with["percent"].as_u64()), (Some(1), Some(100)));
        r.record_dispatch(work.clone(), 8, 512);
        r.record_result(&work, true, "", BTreeMap::new(), json!(null), 513);
        drive(&mut r, 600, true);
        assert_eq!(r.decide(700), Decision::Finish(RunState::Succeeded));
    }

    #[test]
    fn failure_before_promotion_rolls_back_to_the_start() {
        let mut r = Run::new("r1", "wallet", plan(0), "alice");
        drive(&mut r, 0, true); // freeze
        drive(&mut r, 0, false); // catch-up fails once: retry after backoff
        assert_eq!(r.decide(2), Decision::Wait(Some(101)));
        drive(&mut r, 101, false); // and again: out of retries
        assert!(matches!(r.state, RunState::RollingBack { .. }));
        let Decision::Dispatch { work, act, .. } = r.decide(200) else { panic!() };
        assert!(work.compensation && act.action == "unfreeze_writes");
        r.record_dispatch(work.clone(), 9, 200);
        r.record_result(&work, true, "", BTreeMap::new(), json!(null), 201);
        assert!(matches!(r.decide(202), Decision::Finish(RunState::RolledBack { .. })));
    }

    #[test]
    fn failed_gate_after_promotion_shifts_back_but_keeps_the_database() {
        let mut r = Run::new("r1", "wallet", plan(0), "alice");
        for _ in 0..4 {
            drive(&mut r, 0, true);
        }
        r.record_gate(false, "eu-central degraded");
        let Decision::Dispatch { work, act, .. } = r.decide(600) else { panic!() };
        // Only the traffic shift is undone: freeze (before the point of no return) is not.
        assert_eq!((work.step, act.with["percent"].as_u64()), (3, Some(0)));
        r.record_dispatch(work.clone(), 9, 600);
        r.record_result(&work, true, "", BTreeMap::new(), json!(null), 601);
        match r.decide(602) {
            Decision::Finish(RunState::RolledBack { reason }) => assert!(reason.contains("gate"), "{reason}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn timeouts_late_replies_pause_resume_abort() {
        let mut r = Run::new("r1", "wallet", plan(0), "alice");
        let Decision::Dispatch { work, .. } = r.decide(0) else { panic!() };
        r.record_dispatch(work.clone(), 1, 0);
        assert_eq!(r.decide(999), Decision::Wait(Some(1000)));
        assert_eq!(r.decide(1000), Decision::TimedOut(work.clone()));
        assert!(r.record_result(&work, false, "timed out", BTreeMap::new(), json!(null), 1000));
        // The timed-out attempt's late reply is ignored.
        assert!(!r.record_result(&work, true, "late", BTreeMap::new(), json!(null), 1001));
        r.pause("operator").unwrap();
        assert_eq!(r.decide(5000), Decision::Wait(None));
        r.resume().unwrap();
        assert!(matches!(r.decide(5000), Decision::Dispatch { .. }));
        r.abort("operator").unwrap();
        assert!(r.state.is_terminal());
        assert!(r.abort("again").is_err());
    }

    #[test]
    fn catch_up_waits_for_the_frozen_lsn() {
        let mut r = Run::new("r1", "wallet", plan(0), "alice");
        let Decision::Dispatch { work, .. } = r.decide(0) else { panic!() };
        r.record_dispatch(work.clone(), 1, 0);
        r.record_result(&work, true, "", BTreeMap::new(), json!({"frozen_lsn": "0/3000060"}), 1);
        let Decision::Dispatch { act, .. } = r.decide(2) else { panic!() };
        assert_eq!((act.action.as_str(), &act.with["lsn"]), ("wait_replication", &json!("0/3000060")));
    }

    #[test]
    fn run_record_round_trips() {
        let r = Run::new("r1", "wallet", plan(2), "alice");
        let back: Run = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
