//! Step commands from the coordinator: fencing, exactly-once bookkeeping, execution.
//!
//! A command whose fencing token is older than the newest seen comes from a deposed leader and
//! is refused. A command for an attempt already executed gets the recorded result again (a new
//! leader re-sends what it found in flight); one still running is not started twice.
//!
//! A newer command of the same run supersedes an attempt still running (the coordinator gave
//! up on it: timed out, retried, rolled back): it is cancelled before the new one starts, and its
//! result is dropped. Otherwise a slow attempt's effect could land after newer work, e.g. a
//! traffic phase after the rollback that undid it (found by the deterministic simulation).
//! Rejoin fences and GameDay fault commands (`fault.*`, run by [`crate::faults`]) stand outside
//! any run's sequence and are exempt both ways: a fault's revert must never be cancelled.

use crate::config::AgentConfig;
use crate::faults::{FAULT_STEP, FaultManager};
use crate::steps::{self, StepContext};
use drcut_proto::v1::{StepCommand, StepResult};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

type Key = (String, u32, i32, bool, u32);

/// The step index of a returning region's fence (coordinator `engine::REJOIN_STEP`): outside
/// any run's sequence, so it neither supersedes nor is superseded.
const REJOIN_STEP: u32 = u32::MAX;

/// Commands outside any run's sequence (a rejoin fence, GameDay faults): they neither
/// supersede nor are superseded. A fault's revert must never be cancelled by a newer step.
fn unsequenced(step_index: u32) -> bool {
    step_index == REJOIN_STEP || step_index == FAULT_STEP
}

/// An attempt in progress.
struct Running {
    /// Its service (or run id, from an older coordinator).
    scope: String,
    /// The newest token it was sent with.
    token: u64,
    task: tokio::task::AbortHandle,
}

/// Executes step commands and queues their results for the session.
pub struct Executor {
    cfg: Arc<AgentConfig>,
    faults: Arc<FaultManager>,
    max_token: AtomicU64,
    done: Mutex<HashMap<Key, StepResult>>,
    running: Mutex<HashMap<Key, Running>>,
    out: mpsc::UnboundedSender<StepResult>,
}

fn key(c: &StepCommand) -> Key {
    (c.run_id.clone(), c.step_index, c.phase, c.compensation, c.attempt)
}

fn result(c: &StepCommand, ok: bool, detail: String) -> StepResult {
    StepResult {
        run_id: c.run_id.clone(),
        step_index: c.step_index,
        phase: c.phase,
        compensation: c.compensation,
        attempt: c.attempt,
        fencing_token: c.fencing_token,
        ok,
        detail,
        ..Default::default()
    }
}

impl Executor {
    /// An executor whose results go to the returned receiver (drained by the session);
    /// `fault.*` commands go to `faults`.
    pub fn new(
        cfg: Arc<AgentConfig>,
        faults: Arc<FaultManager>,
    ) -> (Arc<Executor>, mpsc::UnboundedReceiver<StepResult>) {
        let (out, rx) = mpsc::unbounded_channel();
        let e = Executor {
            cfg,
            faults,
            max_token: AtomicU64::new(0),
            done: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            out,
        };
        (Arc::new(e), rx)
    }

    /// The GameDay faults this executor injects.
    pub fn faults(&self) -> &Arc<FaultManager> {
        &self.faults
    }

    /// Handles one command (returns at once; execution runs in the background).
    pub fn handle(self: &Arc<Self>, cmd: StepCommand) {
        let newest = self.max_token.fetch_max(cmd.fencing_token, Ordering::SeqCst);
        if cmd.fencing_token < newest {
            tracing::warn!(run_id = %cmd.run_id, step = %cmd.step_id, fencing_token = cmd.fencing_token, newest, "stale fencing token: refused");
            let detail =
                format!("stale fencing token {} < {newest}: refusing a deposed leader's command", cmd.fencing_token);
            let _ = self.out.send(result(&cmd, false, detail));
            return;
        }
        let k = key(&cmd);
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        // Anything still running for the same service (else the same run), other than this very
        // attempt, was given up by the coordinator: cancel it before anything newer happens.
        let scope = if cmd.service.is_empty() { cmd.run_id.clone() } else { cmd.service.clone() };
        if !unsequenced(cmd.step_index) {
            let older: Vec<Key> = running
                .iter()
                .filter(|(o, r)| r.scope == scope && !unsequenced(o.1) && **o != k && r.token < cmd.fencing_token)
                .map(|(o, _)| o.clone())
                .collect();
            for o in older {
                if let Some(r) = running.remove(&o) {
                    r.task.abort();
                    tracing::warn!(run_id = %o.0, step_index = o.1, attempt = o.4, superseded_by = cmd.fencing_token, "running attempt superseded: cancelled");
                }
            }
        }
        if let Some(r) = self.done.lock().unwrap_or_else(|p| p.into_inner()).get(&k) {
            let _ = self.out.send(StepResult { fencing_token: cmd.fencing_token, ..r.clone() });
            return;
        }
        if let Some(r) = running.get_mut(&k) {
            // A new leader's re-send of an attempt still running: it now runs under that token.
            r.token = r.token.max(cmd.fencing_token);
            return;
        }
        let token = cmd.fencing_token;
        let this = self.clone();
        let k2 = k.clone();
        // A fault's deadline counts from arrival, not from when its task first runs.
        let received = tokio::time::Instant::now();
        let task = tokio::spawn(async move {
            let k = k2;
            tracing::info!(run_id = %cmd.run_id, step = %cmd.step_id, action = %cmd.action, attempt = cmd.attempt, fencing_token = cmd.fencing_token, "step start");
            let params: serde_json::Value = serde_json::from_str(&cmd.params_json).unwrap_or(serde_json::Value::Null);
            let ctx = StepContext {
                resources: &this.cfg.resources,
                timeout: Duration::from_millis(cmd.timeout_ms.max(1) as u64),
            };
            let started = tokio::time::Instant::now();
            let mut o = if cmd.action.starts_with("fault.") {
                this.faults.execute(&cmd.action, &cmd.run_id, &cmd.step_id, &params, received, ctx.timeout).await
            } else {
                steps::execute(&cmd.action, &params, &ctx).await
            };
            // Time inside the action, so a run can tell the coordinator's own overhead apart.
            o.measurements.insert("exec_ms".into(), started.elapsed().as_secs_f64() * 1000.0);
            tracing::info!(run_id = %cmd.run_id, step = %cmd.step_id, ok = o.ok, detail = %o.detail, "step done");
            let mut r = result(&cmd, o.ok, o.detail);
            r.measurements = o.measurements.into_iter().collect();
            r.data_json = if o.data.is_null() { String::new() } else { o.data.to_string() };
            // Superseded while finishing: the coordinator no longer waits for this result.
            if this.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&k).is_none() {
                return;
            }
            this.done.lock().unwrap_or_else(|p| p.into_inner()).insert(k.clone(), r.clone());
            let _ = this.out.send(r);
        });
        running.insert(k, Running { scope, token, task: task.abort_handle() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executor(cfg: AgentConfig) -> (Arc<Executor>, mpsc::UnboundedReceiver<StepResult>) {
        let cfg = Arc::new(cfg);
        let metrics = Arc::new(crate::metrics::AgentMetrics::new());
        let faults =
            FaultManager::new(cfg.clone(), crate::lease::Lease::new(), metrics, Default::default(), Default::default());
        Executor::new(cfg, faults)
    }

    fn cmd(token: u64, attempt: u32) -> StepCommand {
        StepCommand {
            run_id: "r".into(),
            step_id: "s".into(),
            step_index: 0,
            phase: -1,
            compensation: false,
            attempt,
            fencing_token: token,
            action: "no_such_action".into(),
            params_json: "{}".into(),
            timeout_ms: 1000,
            service: "wallet".into(),
        }
    }

    #[tokio::test]
    async fn stale_tokens_are_refused_and_repeats_get_the_recorded_result() {
        let cfg = crate::config::parse(
            "a.yaml",
            "agent_id: a\nregion: eu-west\ncoordinators: [127.0.0.1:7001]\nchecks: []\n",
        )
        .expect("config");
        let (ex, mut rx) = executor(cfg);
        ex.handle(cmd(10, 1));
        let first = rx.recv().await.unwrap();
        assert!(!first.ok && first.detail.contains("unknown action"), "{first:?}");
        // A deposed leader (older token) cannot act.
        ex.handle(cmd(5, 2));
        let stale = rx.recv().await.unwrap();
        assert!(!stale.ok && stale.detail.contains("stale fencing token 5 < 10"), "{stale:?}");
        // A new leader re-sending the same attempt gets the recorded result, not a re-run.
        ex.handle(cmd(11, 1));
        let again = rx.recv().await.unwrap();
        assert_eq!((again.detail.clone(), again.fencing_token), (first.detail.clone(), 11));
    }

    #[tokio::test]
    async fn a_newer_attempt_of_the_run_cancels_a_running_one_and_drops_its_result() {
        let cfg = crate::config::parse(
            "a.yaml",
            "agent_id: a\nregion: eu-west\ncoordinators: [127.0.0.1:7001]\nchecks: []\n",
        )
        .expect("config");
        let (ex, mut rx) = executor(cfg);
        let mut slow = cmd(10, 1);
        slow.action = "hook".into();
        slow.params_json = r#"{"exec": ["/bin/sleep", "1"]}"#.into();
        slow.timeout_ms = 5000;
        ex.handle(slow);
        tokio::time::sleep(Duration::from_millis(100)).await;
        ex.handle(cmd(11, 2));
        let r = rx.recv().await.unwrap();
        assert_eq!(r.attempt, 2, "{r:?}");
        // The superseded attempt never reports, even after it would have finished.
        let late = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await;
        assert!(late.is_err(), "a superseded attempt reported: {late:?}");
    }

    fn fault(token: u64, attempt: u32, action: &str, params: &str) -> StepCommand {
        StepCommand {
            step_id: "f1".into(),
            step_index: FAULT_STEP,
            action: action.into(),
            params_json: params.into(),
            timeout_ms: 5000,
            service: String::new(),
            ..cmd(token, attempt)
        }
    }

    #[tokio::test]
    async fn fault_commands_neither_supersede_nor_are_superseded() {
        let cfg = crate::config::parse(
            "a.yaml",
            "agent_id: a\nregion: eu-west\ncoordinators: [127.0.0.1:7001]\nchecks: []\n",
        )
        .expect("config");
        let (ex, mut rx) = executor(cfg);
        let recv = async |rx: &mut mpsc::UnboundedReceiver<StepResult>| {
            tokio::time::timeout(Duration::from_secs(3), rx.recv()).await.expect("a result").unwrap()
        };
        // A slow step of run r, then a slow fault inject with a newer token: the step finishes.
        let mut slow = cmd(10, 1);
        slow.service = String::new();
        slow.action = "hook".into();
        slow.params_json = r#"{"exec": ["/bin/sleep", "0.3"]}"#.into();
        ex.handle(slow);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let inject = r#"{"fault": {"type": "exec", "inject": ["/bin/sleep", "0.8"], "revert": ["/bin/true"]},
            "deadline_ms": 60000, "lost_coordinator_ms": 60000}"#;
        ex.handle(fault(11, 2, "fault.inject", inject));
        let r = recv(&mut rx).await;
        assert_eq!((r.attempt, r.ok), (1, true), "{r:?}");
        // A newer step of the run while the inject runs: the inject is not cancelled.
        let mut newer = cmd(12, 3);
        newer.service = String::new();
        ex.handle(newer);
        let r = recv(&mut rx).await;
        assert_eq!((r.attempt, r.ok), (3, false), "{r:?}");
        let r = recv(&mut rx).await;
        assert_eq!((r.attempt, r.ok), (2, true), "{r:?}");
        assert!(r.measurements.contains_key("inject_ms"), "{r:?}");
        assert_eq!(ex.faults().active(), ["r/f1"]);
        // Repeats get the recorded result; revert and halt route to the manager.
        ex.handle(fault(13, 2, "fault.inject", inject));
        assert!(rx.recv().await.unwrap().detail.contains("injected"));
        ex.handle(fault(13, 4, "fault.revert", "{}"));
        let r = rx.recv().await.unwrap();
        assert!(r.ok && r.detail.contains("reverted") && r.measurements.contains_key("revert_ms"), "{r:?}");
        assert!(ex.faults().active().is_empty());
    }
}
