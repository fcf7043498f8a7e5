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

/// A planned switchover (the source cooperates) or an unplanned failover (it may be gone).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunMode {
    /// Every step runs where it says.
    #[default]
    Planned,
    /// Source-side steps are skipped once the source is confirmed down (or fenced otherwise),
    /// and the promotion waits for fencing and for consent to the measured loss.
    Unplanned,
}

/// The failover side of a plan: which region is lost and what loss passes without consent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailoverPlan {
    /// The region giving up the service.
    pub source: String,
    /// The region taking it over.
    pub target: String,
    /// Loss accepted without an operator's consent.
    pub accept_loss: crate::playbook::LossBudget,
}

/// What the standby lacked when the source was lost (from the last replication sample before
/// the loss): a lower bound, since the primary may have written more after the sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Loss {
    /// False when no sample was taken before the loss: the loss is unknown.
    pub known: bool,
    /// WAL bytes the standby had not received.
    pub bytes: u64,
    /// Seconds of transactions behind.
    pub seconds: f64,
    /// The standby was synchronous: every acknowledged commit had reached it, so the missing
    /// WAL holds unacknowledged work only.
    pub synchronous: bool,
    /// Where the figures come from.
    pub evidence: String,
}

impl Loss {
    /// Acknowledged writes at risk, in WAL bytes (0 when replication was synchronous).
    pub fn acknowledged_bytes(&self) -> u64 {
        if self.synchronous { 0 } else { self.bytes }
    }

    /// Whether it exceeds `budget` (an unknown loss always does).
    pub fn exceeds(&self, budget: &crate::playbook::LossBudget) -> bool {
        !self.known
            || self.acknowledged_bytes() > budget.bytes
            || (!self.synchronous && self.seconds > budget.seconds as f64)
    }

    /// One line for operators, e.g. `4096 bytes / 1.2 s of writes (asynchronous standby)`.
    pub fn text(&self) -> String {
        if !self.known {
            return format!("unknown ({})", self.evidence);
        }
        if self.synchronous {
            return format!("0 acknowledged writes (synchronous standby; {} bytes of unacknowledged WAL)", self.bytes);
        }
        format!("{} bytes / {:.1} s of writes (asynchronous standby)", self.bytes, self.seconds)
    }
}

/// How the run knows the old primary takes no writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fencing {
    /// `agent` (its fence step ran), `quorum_down`, `self_fence`, `stonith`, or `override`.
    pub how: String,
    /// Who or what confirmed it, and when it matters, the risk named.
    pub detail: String,
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
    /// Planned or unplanned.
    #[serde(default)]
    pub mode: RunMode,
    /// Set when the playbook handles a region loss.
    #[serde(default)]
    pub failover: Option<FailoverPlan>,
    /// The playbook's RPO and RTO, which `drctl run show` grades the finished run against.
    #[serde(default)]
    pub targets: crate::playbook::Targets,
}

/// Facts from outside the record that an unplanned run's decisions depend on (the leader
/// gathers them; the stepper stays pure).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The source is confirmed down by the vantage quorum (the reason), from replicated health.
    pub source_down: Option<String>,
    /// An agent of the source region has a live session with this leader.
    pub source_agent: bool,
    /// The source's agents self-fence: the time by which they have (lease floor + delay +
    /// margin), with who. None: no self-fencing agent in the source region.
    pub self_fence_at: Option<(i64, String)>,
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
    /// Steps skipped (an unplanned run's source-side steps), with why.
    #[serde(default)]
    pub skipped: BTreeMap<usize, String>,
    /// Why the run cannot move now (fencing unconfirmed, consent missing); None when it can.
    #[serde(default)]
    pub hold: Option<String>,
    /// Unplanned: how the old primary is known to take no writes.
    #[serde(default)]
    pub fencing: Option<Fencing>,
    /// Unplanned: the data the promotion loses.
    #[serde(default)]
    pub loss: Option<Loss>,
    /// Unplanned: who consented to the loss, naming it.
    #[serde(default)]
    pub consent: Option<String>,
    /// Every gate evaluated after a traffic phase, in order (the console and metrics show them).
    #[serde(default)]
    pub gates: Vec<GateRecord>,
    /// Paused because a compensation failed: why the rollback started, so `resume` carries on
    /// undoing (retrying that compensation) instead of going forward again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck_rollback: Option<String>,
}

/// One SLO gate evaluation after a traffic phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateRecord {
    /// The step (index in the plan).
    pub step: usize,
    /// The traffic share the phase had moved to, in percent.
    pub percent: u8,
    /// Passed.
    pub ok: bool,
    /// The evidence (region state against what the gate requires).
    pub detail: String,
    /// When it was committed.
    pub at_ms: i64,
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
    /// Skip this (source-side) step of an unplanned run, for this reason.
    Skip {
        /// Step.
        step: usize,
        /// Why.
        reason: String,
    },
    /// Record how the old primary is known to be fenced, then go on.
    ConfirmFencing(Fencing),
    /// The run cannot move until an outside event: record why (once).
    Hold(String),
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
            skipped: BTreeMap::new(),
            hold: None,
            fencing: None,
            loss: None,
            consent: None,
            gates: vec![],
            stuck_rollback: None,
        }
    }

    /// The source region of an unplanned run.
    fn unplanned_source(&self) -> Option<&str> {
        match (&self.plan.mode, &self.plan.failover) {
            (RunMode::Unplanned, Some(f)) => Some(f.source.as_str()),
            _ => None,
        }
    }

    /// Consent to the measured loss. The operator names it: `bytes` must equal the recorded
    /// acknowledged loss (or be `None` for an unknown loss), so nobody consents to a figure
    /// they have not read.
    pub fn consent(&mut self, who: &str, bytes: Option<u64>) -> Result<(), String> {
        if self.state.is_terminal() {
            return Err(format!("run {} already ended", self.id));
        }
        let Some(loss) = &self.loss else {
            return Err(format!("run {} has no measured loss to consent to", self.id));
        };
        let expected = loss.known.then(|| loss.acknowledged_bytes());
        if bytes != expected {
            let name = |b: Option<u64>| b.map_or("unknown".to_string(), |b| b.to_string());
            return Err(format!(
                "run {} would lose {}: consent must name that loss (--accept-loss {}), not {}",
                self.id,
                loss.text(),
                name(expected),
                name(bytes)
            ));
        }
        self.consent = Some(format!("{who} accepted the loss of {}", loss.text()));
        self.hold = None;
        Ok(())
    }

    /// An operator takes the risk of promoting without fencing confirmation, naming it.
    pub fn override_fencing(&mut self, who: &str, risk: &str) -> Result<(), String> {
        if self.unplanned_source().is_none() {
            return Err(format!("run {} is not an unplanned failover: nothing to override", self.id));
        }
        if self.state.is_terminal() {
            return Err(format!("run {} already ended", self.id));
        }
        if risk.trim().len() < 10 {
            return Err(
                "an override must name the risk in words (e.g. \"eu-west primary may still take writes\")".into()
            );
        }
        self.fencing = Some(Fencing { how: "override".into(), detail: format!("{who}: {risk}") });
        self.hold = None;
        Ok(())
    }

    /// The gates an unplanned run passes before a step (None: go on). Source-side steps are
    /// skipped when the source is gone, and the promotion needs fencing and consent.
    fn unplanned_gate(&self, step: usize, now_ms: i64, facts: &Facts) -> Option<Decision> {
        let source = self.unplanned_source()?;
        let s = &self.plan.steps[step];
        let on_source = s.act.region == source;
        let fenced_by_step =
            self.plan.steps.iter().enumerate().any(|(i, st)| {
                st.act.action == "fence" && self.completed.contains(&i) && !self.skipped.contains_key(&i)
            });
        if on_source {
            if let Some(reason) = &facts.source_down {
                return Some(Decision::Skip { step, reason: format!("source {source} confirmed down: {reason}") });
            }
            if facts.source_agent {
                return None;
            }
            if let Some(f) = &self.fencing {
                return Some(Decision::Skip {
                    step,
                    reason: format!("source {source} unreachable; fenced ({}: {})", f.how, f.detail),
                });
            }
            return Some(self.fencing_decision(source, now_ms, facts));
        }
        if Some(step) == self.plan.point_of_no_return {
            if self.fencing.is_none() && !fenced_by_step {
                if let Some(reason) = &facts.source_down {
                    return Some(Decision::ConfirmFencing(Fencing {
                        how: "quorum_down".into(),
                        detail: format!("{source} unreachable from the vantage quorum: {reason}"),
                    }));
                }
                if !facts.source_agent {
                    return Some(self.fencing_decision(source, now_ms, facts));
                }
                let reason = format!(
                    "promotion needs the old primary in {source} fenced first: add a fence step on {source}, \
                     or override naming the risk"
                );
                return Some(self.hold_or_wait(reason, None));
            }
            if let Some(loss) = &self.loss
                && self.consent.is_none()
                && let Some(f) = &self.plan.failover
                && loss.exceeds(&f.accept_loss)
            {
                let named = if loss.known { loss.acknowledged_bytes().to_string() } else { "unknown".into() };
                let reason = format!(
                    "promotion would lose {}, above the accepted {} bytes / {} s: consent naming it \
                     (drctl approve {} --accept-loss {named})",
                    loss.text(),
                    f.accept_loss.bytes,
                    f.accept_loss.seconds,
                    self.id
                );
                return Some(self.hold_or_wait(reason, None));
            }
        }
        None
    }

    /// The source is neither confirmed down nor reachable: its primary may still take writes.
    fn fencing_decision(&self, source: &str, now_ms: i64, facts: &Facts) -> Decision {
        if let Some((at, who)) = &facts.self_fence_at {
            if now_ms >= *at {
                return Decision::ConfirmFencing(Fencing {
                    how: "self_fence".into(),
                    detail: format!("{who}: no lease for longer than its self-fencing delay"),
                });
            }
            let reason = format!("waiting until {at} for {who} to self-fence (its lease has lapsed)");
            return self.hold_or_wait(reason, Some(*at));
        }
        let reason = format!(
            "source {source} is not confirmed down and no agent there answers: its primary may still take \
             writes. Promote only with fencing confirmation (self-fencing, a STONITH fence step) or an \
             override naming the risk (drctl run override {} --risk TEXT)",
            self.id
        );
        self.hold_or_wait(reason, None)
    }

    fn hold_or_wait(&self, reason: String, until: Option<i64>) -> Decision {
        if self.hold.as_deref() == Some(reason.as_str()) { Decision::Wait(until) } else { Decision::Hold(reason) }
    }

    /// Records a skipped step: it counts as done (its compensation never runs).
    pub fn record_skip(&mut self, step: usize, reason: &str) -> bool {
        if self.cursor != step || self.in_flight.is_some() || self.state != RunState::Running {
            return false;
        }
        self.skipped.insert(step, reason.to_string());
        self.cursor += 1;
        self.phase = 0;
        self.failures = 0;
        self.hold = None;
        true
    }

    /// The old primary is known to take no writes.
    pub fn record_fencing(&mut self, f: Fencing) -> bool {
        if self.fencing.is_some() {
            return false;
        }
        self.fencing = Some(f);
        self.hold = None;
        true
    }

    /// The `approval` step the run is waiting at, if any (its attempt is in flight until
    /// someone approves or it times out).
    pub fn waiting_approval_step(&self) -> Option<&PlanStep> {
        let f = self.in_flight.as_ref().filter(|f| !f.work.compensation)?;
        self.plan.steps.get(f.work.step).filter(|s| s.act.action == "approval")
    }

    /// Records an approval at `now_ms`: of the run before its first step, or of the `approval`
    /// step it waits at. The requester can never approve their own run, nor anyone twice.
    pub fn approve(&mut self, who: &str, now_ms: i64) -> Result<(), String> {
        if !self.state.is_terminal()
            && let Some(step) = self.waiting_approval_step()
        {
            let step_id = step.id.clone();
            if who == self.requester {
                return Err(format!(
                    "{who} requested run {} and cannot approve its step {step_id} (two-person rule)",
                    self.id
                ));
            }
            let work = self.in_flight.as_ref().expect("waiting at a step").work.clone();
            self.record_result(
                &work,
                true,
                &format!("approved by {who}"),
                BTreeMap::new(),
                serde_json::Value::Null,
                now_ms,
            );
            return Ok(());
        }
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
        self.state = if let Some(reason) = self.stuck_rollback.take() {
            RunState::RollingBack { reason }
        } else if self.approvals.len() as u32 >= self.plan.approvals_required {
            RunState::Running
        } else {
            RunState::AwaitingApproval
        };
        self.failures = 0;
        self.not_before_ms = 0;
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

    /// The decision for now (a planned run needs no facts: see [`Run::decide_with`]).
    pub fn decide(&self, now_ms: i64) -> Decision {
        self.decide_with(now_ms, &Facts::default())
    }

    /// The decision for now, given the outside facts an unplanned run depends on.
    pub fn decide_with(&self, now_ms: i64, facts: &Facts) -> Decision {
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
                let work = Work { step, phase: None, compensation: true, attempt: self.next_attempt(step, None, true) };
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
                if self.phase == 0
                    && let Some(d) = self.unplanned_gate(self.cursor, now_ms, facts)
                {
                    return d;
                }
                let phase = if s.phases.is_empty() { None } else { Some(self.phase) };
                let work = Work {
                    step: self.cursor,
                    phase,
                    compensation: false,
                    attempt: self.next_attempt(self.cursor, phase, false),
                };
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
                // Shifting back puts all traffic on the forward step's `from`: 0 % on `to` when
                // the compensation names the pair in the same order, 100 % when it swaps them
                // (from the target back to the source, as people write it).
                let swapped = act.with.get("to").is_some() && act.with.get("to") == s.act.with.get("from");
                with_percent(&mut act.with, if swapped { 100 } else { 0 });
            }
        } else if let Some(p) = work.phase {
            with_percent(&mut act.with, *s.phases.get(p)?);
        }
        // Catch-up waits for exactly the LSN the freeze recorded: nothing acknowledged before
        // the freeze can be missing on the promoted standby.
        if act.action == "wait_replication"
            && let Some(obj) = act.with.as_object_mut()
            && !obj.contains_key("lsn")
        {
            match self.outputs.values().find_map(|o| o.get("frozen_lsn").cloned()) {
                Some(lsn) => {
                    obj.insert("lsn".into(), lsn);
                }
                // The source is gone and froze nothing: replay everything the standby
                // received, then report where it stands (the loss is measured, not waited away).
                None if self.plan.mode == RunMode::Unplanned => {
                    obj.insert("drain".into(), serde_json::json!(true));
                }
                None => {}
            }
        }
        Some(act)
    }

    /// The next attempt number of a work item: one past every attempt recorded for it, so a
    /// resumed step never reuses a number (the agent would answer with the old result).
    fn next_attempt(&self, step: usize, phase: Option<usize>, compensation: bool) -> u32 {
        let done = self
            .history
            .iter()
            .filter(|a| a.work.step == step && a.work.phase == phase && a.work.compensation == compensation)
            .map(|a| a.work.attempt)
            .max()
            .unwrap_or(0);
        done.max(self.failures) + 1
    }

    fn timeout_of(&self, w: &Work) -> u64 {
        self.plan.steps.get(w.step).map(|s| s.timeout_ms).unwrap_or(0)
    }

    /// The intent of `work` is committed with `token`. An `approval` step is then waiting for
    /// a person: the run says so (and how to go on) until someone approves.
    pub fn record_dispatch(&mut self, work: Work, fencing_token: u64, now_ms: i64) {
        self.hold = None;
        self.in_flight = Some(InFlight { work, fencing_token, started_ms: now_ms });
        if let Some(step) = self.waiting_approval_step() {
            let message =
                step.act.with.get("message").and_then(|m| m.as_str()).map(|m| format!(": {m}")).unwrap_or_default();
            self.hold = Some(format!(
                "step {} waits for an approval by anyone but {} (drctl approve {}){message}",
                step.id, self.requester, self.id
            ));
        }
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
        if self.waiting_approval_step().is_some() {
            self.hold = None;
        }
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
            // A compensation that cannot be done needs a human; resuming retries it.
            if let RunState::RollingBack { reason: why } = &self.state {
                self.stuck_rollback = Some(why.clone());
            }
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
    pub fn record_gate(&mut self, ok: bool, detail: &str, at_ms: i64) {
        self.dwell_until_ms = None;
        let step = &self.plan.steps[self.cursor];
        let percent = step.phases.get(self.phase.saturating_sub(1)).copied().unwrap_or(0);
        self.gates.push(GateRecord { step: self.cursor, percent, ok, detail: detail.to_string(), at_ms });
        if ok {
            return;
        }
        let reason = format!("gate after {} phase {}% failed: {detail}", step.id, step.phases[self.phase - 1]);
        self.start_rollback(reason, Some(self.cursor));
    }
}

fn with_percent(with: &mut serde_json::Value, percent: u8) {
    if let Some(obj) = with.as_object_mut() {
        obj.insert("percent".into(), serde_json::json!(percent));
    }
}

/// State name and reason.
pub fn state_text(s: &RunState) -> (&'static str, String) {
    match s {
        RunState::AwaitingApproval => ("awaiting_approval", String::new()),
        RunState::Running => ("running", String::new()),
        RunState::Paused { reason } => ("paused", reason.clone()),
        RunState::RollingBack { reason } => ("rolling_back", reason.clone()),
        RunState::Succeeded => ("succeeded", String::new()),
        RunState::RolledBack { reason } => ("rolled_back", reason.clone()),
        RunState::Aborted { reason } => ("aborted", reason.clone()),
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
            mode: RunMode::Planned,
            failover: None,
            targets: Default::default(),
        }
    }

    /// An unplanned plan: freeze and fence on the source `w`, the rest on the target `c`.
    fn unplanned(accept_bytes: u64) -> RunPlan {
        let on = |id: &str, action: &str, region: &str| {
            let mut s = step(id, action, None);
            s.act.region = region.into();
            s
        };
        RunPlan {
            steps: vec![
                on("freeze", "freeze_writes", "w"),
                on("catch-up", "wait_replication", "c"),
                on("fence", "fence", "w"),
                on("promote", "promote_db", "c"),
                on("smoke", "smoke", "c"),
            ],
            point_of_no_return: Some(3),
            approvals_required: 0,
            mode: RunMode::Unplanned,
            failover: Some(FailoverPlan {
                source: "w".into(),
                target: "c".into(),
                accept_loss: crate::playbook::LossBudget { bytes: accept_bytes, seconds: 0 },
            }),
            targets: Default::default(),
        }
    }

    fn loss(bytes: u64, synchronous: bool) -> Loss {
        Loss { known: true, bytes, seconds: 0.5, synchronous, evidence: "test".into() }
    }

    /// Applies what `decide_with` asks until it dispatches or waits; returns that decision.
    fn settle(r: &mut Run, now: i64, f: &Facts) -> Decision {
        loop {
            match r.decide_with(now, f) {
                Decision::Skip { step, reason } => assert!(r.record_skip(step, &reason)),
                Decision::ConfirmFencing(x) => assert!(r.record_fencing(x)),
                Decision::Hold(h) => r.hold = Some(h),
                d => return d,
            }
        }
    }

    #[test]
    fn unplanned_skips_the_source_when_the_quorum_says_down_and_records_the_fence() {
        let mut r = Run::new("r1", "wallet", unplanned(0), "system");
        r.loss = Some(loss(0, true));
        let down = Facts { source_down: Some("2 of 3 see it down".into()), ..Default::default() };
        let Decision::Dispatch { act, .. } = settle(&mut r, 0, &down) else { panic!() };
        assert!(r.skipped.contains_key(&0), "freeze skipped");
        // No frozen LSN: the catch-up drains what the standby received.
        assert_eq!((act.action.as_str(), &act.with["drain"]), ("wait_replication", &json!(true)));
        let w = drive(&mut r, 1, true);
        assert_eq!(w.step, 1);
        let Decision::Dispatch { act, .. } = settle(&mut r, 2, &down) else { panic!() };
        assert_eq!(act.action, "promote_db");
        assert!(r.skipped.contains_key(&2), "fence deferred");
        assert_eq!(r.fencing.as_ref().map(|f| f.how.as_str()), Some("quorum_down"));
    }

    #[test]
    fn unplanned_source_alive_but_unreachable_needs_fencing_or_an_override() {
        let mut r = Run::new("r1", "wallet", unplanned(0), "system");
        r.loss = Some(loss(0, false));
        let cut = Facts::default();
        assert_eq!(settle(&mut r, 0, &cut), Decision::Wait(None));
        assert!(r.hold.as_deref().unwrap().contains("override"), "{:?}", r.hold);
        // The same hold is not recorded twice.
        assert_eq!(r.decide_with(1, &cut), Decision::Wait(None));
        assert!(r.override_fencing("bob", "short").is_err());
        r.override_fencing("bob", "eu-west primary may still take writes").unwrap();
        assert!(matches!(settle(&mut r, 2, &cut), Decision::Dispatch { .. }));
        assert!(r.skipped.contains_key(&0));

        // With self-fencing: wait for the lease to lapse, then count it fenced.
        let mut r = Run::new("r2", "wallet", unplanned(0), "system");
        r.loss = Some(loss(0, false));
        let sf = Facts { self_fence_at: Some((5000, "agent-w".into())), ..Default::default() };
        assert_eq!(settle(&mut r, 100, &sf), Decision::Wait(Some(5000)));
        assert!(matches!(settle(&mut r, 5000, &sf), Decision::Dispatch { .. }));
        assert_eq!(r.fencing.as_ref().map(|f| f.how.as_str()), Some("self_fence"));
    }

    #[test]
    fn unplanned_source_reachable_runs_its_steps() {
        let mut r = Run::new("r1", "wallet", unplanned(0), "alice");
        r.loss = Some(loss(0, false));
        let up = Facts { source_agent: true, ..Default::default() };
        let Decision::Dispatch { act, .. } = settle(&mut r, 0, &up) else { panic!() };
        assert_eq!(act.action, "freeze_writes");
    }

    #[test]
    fn unplanned_promotion_waits_for_consent_naming_the_loss() {
        let mut r = Run::new("r1", "wallet", unplanned(100), "system");
        r.loss = Some(loss(4096, false));
        let down = Facts { source_down: Some("down".into()), ..Default::default() };
        settle(&mut r, 0, &down);
        drive(&mut r, 1, true); // catch-up
        assert_eq!(settle(&mut r, 2, &down), Decision::Wait(None));
        let hold = r.hold.clone().unwrap();
        assert!(hold.contains("--accept-loss 4096"), "{hold}");
        assert!(r.consent("bob", Some(100)).unwrap_err().contains("4096"));
        assert!(r.consent("bob", None).is_err());
        r.consent("bob", Some(4096)).unwrap();
        let Decision::Dispatch { act, .. } = settle(&mut r, 3, &down) else { panic!() };
        assert_eq!(act.action, "promote_db");

        // A synchronous standby lost no acknowledged write: no consent needed.
        let mut r = Run::new("r2", "wallet", unplanned(0), "system");
        r.loss = Some(loss(4096, true));
        settle(&mut r, 0, &down);
        drive(&mut r, 1, true);
        assert!(matches!(settle(&mut r, 2, &down), Decision::Dispatch { .. }));
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
        assert!(r.approve("alice", 0).unwrap_err().contains("two-person"));
        r.approve("bob", 0).unwrap();
        assert!(r.approve("bob", 0).is_err());
        assert_eq!(r.state, RunState::Running);
    }

    /// A plan with an `approval` step (no region, 5 s to approve, no retries) after freeze.
    fn plan_with_approval_step(on_failure: OnFailure) -> RunPlan {
        let mut p = plan(0);
        let mut gate = step("go-ahead", "approval", None);
        gate.act.region = String::new();
        gate.act.with = json!({ "message": "the DBA confirms" });
        gate.timeout_ms = 5000;
        gate.retries = 0;
        gate.on_failure = on_failure;
        p.steps.insert(1, gate);
        p.point_of_no_return = Some(3);
        p
    }

    #[test]
    fn an_approval_step_waits_for_someone_else_then_the_run_goes_on() {
        let mut r = Run::new("r1", "wallet", plan_with_approval_step(OnFailure::Rollback), "alice");
        drive(&mut r, 0, true);
        let Decision::Dispatch { work, act, .. } = r.decide(10) else { panic!("{:?}", r.decide(10)) };
        assert_eq!((work.step, act.action.as_str()), (1, "approval"));
        r.record_dispatch(work, 7, 10);
        let hold = r.hold.clone().unwrap_or_default();
        assert!(hold.contains("go-ahead") && hold.contains("alice") && hold.contains("the DBA confirms"), "{hold}");
        // Waiting, bounded by the step's timeout.
        assert_eq!(r.decide(20), Decision::Wait(Some(5010)));
        assert!(r.approve("alice", 30).unwrap_err().contains("two-person"));
        r.approve("bob", 40).unwrap();
        assert_eq!((r.cursor, r.hold.clone(), r.in_flight.clone()), (2, None, None));
        let last = r.history.last().expect("the approval is recorded as an attempt");
        assert!(last.ok && last.detail == "approved by bob" && last.finished_ms == 40);
        // On with the next step; nothing is left to approve.
        assert!(matches!(r.decide(50), Decision::Dispatch { work: Work { step: 2, .. }, .. }));
        assert!(r.approve("carol", 60).is_err());
    }

    #[test]
    fn an_approval_step_that_nobody_approves_fails_by_its_policy() {
        let mut r = Run::new("r1", "wallet", plan_with_approval_step(OnFailure::Rollback), "alice");
        drive(&mut r, 0, true);
        let Decision::Dispatch { work, .. } = r.decide(10) else { panic!() };
        r.record_dispatch(work.clone(), 7, 10);
        assert_eq!(r.decide(5010), Decision::TimedOut(work.clone()));
        assert!(r.record_result(&work, false, "no approval within 5000 ms", BTreeMap::new(), json!(null), 5010));
        // No retry: the freeze is undone at once.
        assert!(matches!(r.state, RunState::RollingBack { .. }), "{:?}", r.state);
        assert_eq!((r.to_compensate.clone(), r.hold.clone()), (vec![0], None));
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
        r.record_gate(true, "eu-central up", 520);
        assert_eq!((r.gates[0].step, r.gates[0].percent, r.gates[0].ok, r.gates[0].at_ms), (3, 25, true, 520));
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
    fn resuming_a_stuck_rollback_carries_on_undoing() {
        let mut r = Run::new("r1", "wallet", plan(0), "alice");
        drive(&mut r, 0, true); // freeze
        drive(&mut r, 0, false);
        drive(&mut r, 101, false); // catch-up out of retries: roll back
        // The unfreeze fails twice (one retry): the rollback is stuck and the run pauses.
        let w = drive(&mut r, 200, false);
        assert!(w.compensation);
        drive(&mut r, 400, false);
        assert!(
            matches!(&r.state, RunState::Paused { reason } if reason.starts_with("rollback stuck")),
            "{:?}",
            r.state
        );
        r.resume().unwrap();
        // Back to undoing: the compensation again, a fresh attempt, never catch-up.
        match &r.state {
            RunState::RollingBack { reason } => assert!(reason.contains("catch-up"), "{reason}"),
            s => panic!("{s:?}"),
        }
        let again = drive(&mut r, 500, true);
        assert!(again.compensation && again.step == 0 && again.attempt == 3, "{again:?}");
        assert!(matches!(r.decide(600), Decision::Finish(RunState::RolledBack { .. })));
        assert_eq!(r.stuck_rollback, None);
    }

    #[test]
    fn failed_gate_after_promotion_shifts_back_but_keeps_the_database() {
        let mut r = Run::new("r1", "wallet", plan(0), "alice");
        for _ in 0..4 {
            drive(&mut r, 0, true);
        }
        r.record_gate(false, "eu-central degraded", 530);
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
        // A resumed step continues the attempt numbers: the agent must not answer attempt 1's
        // old result.
        let Decision::Dispatch { work: again, .. } = r.decide(5000) else { panic!() };
        assert_eq!(again.attempt, 2);
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

    #[test]
    fn shifting_back_puts_all_traffic_on_the_source_whichever_way_the_compensation_names_it() {
        let forward = json!({"from": ["192.0.2.10"], "to": ["198.51.100.10"]});
        for (comp, want) in [
            (json!({"from": ["192.0.2.10"], "to": ["198.51.100.10"]}), 0),
            (json!({"from": ["198.51.100.10"], "to": ["192.0.2.10"]}), 100),
        ] {
            let mut p = plan(0);
            p.steps[3].act.with = forward.clone();
            p.steps[3].compensate.as_mut().unwrap().with = comp;
            let r = Run::new("r1", "wallet", p, "alice");
            let w = Work { step: 3, phase: None, compensation: true, attempt: 1 };
            assert_eq!(r.action_for(&w).unwrap().with["percent"], json!(want));
        }
    }
}
