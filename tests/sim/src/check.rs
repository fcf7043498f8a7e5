//! The invariants on the replicated state, read straight from every node's database: the audit
//! chain is intact and agrees across nodes, every committed run decision is audited exactly
//! once, runs are legal, and no completed step's effect was applied again.

use crate::world::{Violation, World};
use drcut_coordinator::audit::verify_chain;
use drcut_coordinator::run::RunState;
use drcut_coordinator::store::{Contents, MemoryDisk, read_contents};
use std::collections::BTreeMap;

fn v(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// Each run's revision (log index of its last change), from the most advanced node.
pub fn revisions(disks: &BTreeMap<u64, MemoryDisk>) -> BTreeMap<String, u64> {
    disks
        .values()
        .filter_map(|d| read_contents(&d.state).ok())
        .max_by_key(|c| c.last_applied.map(|l| l.index()).unwrap_or(0))
        .map(|c| c.state.runs.iter().map(|(id, r)| (id.clone(), r.revision)).collect())
        .unwrap_or_default()
}

/// Checks every node's state and the world's execution log against it. `healed`: the runs'
/// revisions when every fault was undone (given at the end, after the calm period).
pub fn replicated(
    disks: &BTreeMap<u64, MemoryDisk>,
    world: &World,
    healed: Option<&BTreeMap<String, u64>>,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut nodes: Vec<(u64, Contents)> = Vec::new();
    for (id, d) in disks {
        match read_contents(&d.state) {
            Ok(c) => nodes.push((*id, c)),
            Err(e) => out.push(v("storage_readable", format!("node {id}: {e}"))),
        }
    }
    for (id, c) in &nodes {
        chain(*id, c, &mut out);
        runs(*id, c, &mut out);
    }
    // Replicas agree: one audit chain is a prefix of the other.
    for w in nodes.windows(2) {
        let ((a, ca), (b, cb)) = (&w[0], &w[1]);
        let n = ca.audit.len().min(cb.audit.len());
        if n > 0 && ca.audit[n - 1].hash != cb.audit[n - 1].hash {
            out.push(v("replicas_agree", format!("nodes {a} and {b} disagree at audit seq {n}")));
        }
    }
    if let Some((_, newest)) = nodes.iter().max_by_key(|(_, c)| c.last_applied.map(|l| l.index()).unwrap_or(0)) {
        no_double_effect(newest, world, &mut out);
        if let Some(before) = healed {
            live(newest, before, &mut out);
        }
    }
    if healed.is_some() {
        // After the calm period every node has caught up (a few entries may be in flight).
        let applied: Vec<u64> = nodes.iter().map(|(_, c)| c.last_applied.map(|l| l.index()).unwrap_or(0)).collect();
        let (lo, hi) = (applied.iter().min().copied().unwrap_or(0), applied.iter().max().copied().unwrap_or(0));
        if lo + 3 < hi || hi == 0 {
            out.push(v("cluster_recovers", format!("after healing, nodes applied {applied:?}")));
        }
    }
    out
}

/// A run that is neither ended nor waiting for an operator keeps moving once the faults are
/// gone: its record changed during the calm period.
fn live(c: &Contents, before: &BTreeMap<String, u64>, out: &mut Vec<Violation>) {
    for (rid, rec) in &c.state.runs {
        // Paused, awaiting approval, or held for an operator (fencing, consent to a loss).
        let waiting =
            matches!(rec.run.state, RunState::Paused { .. } | RunState::AwaitingApproval) || rec.run.hold.is_some();
        if rec.run.state.is_terminal() || waiting {
            continue;
        }
        if before.get(rid).is_some_and(|r| *r == rec.revision) {
            out.push(v(
                "runs_live",
                format!(
                    "run {rid} in {:?} did not change after every fault was healed (in flight {:?})",
                    rec.run.state, rec.run.in_flight
                ),
            ));
        }
    }
}

fn chain(id: u64, c: &Contents, out: &mut Vec<Violation>) {
    if let Err(e) = verify_chain(&c.audit) {
        out.push(v("audit_chain_valid", format!("node {id}: {e}")));
    }
    if c.audit.len() as u64 != c.state.core.audit_len {
        out.push(v(
            "audit_chain_valid",
            format!("node {id}: {} entries stored, core says {}", c.audit.len(), c.state.core.audit_len),
        ));
    }
}

/// Every committed run decision appears in the audit chain once, in order; run records are legal.
fn runs(id: u64, c: &Contents, out: &mut Vec<Violation>) {
    let mut by_run: BTreeMap<&str, Vec<&drcut_coordinator::audit::AuditEntry>> = BTreeMap::new();
    for e in &c.audit {
        if let Some(r) = e.details.get("run_id").and_then(|r| r.as_str()) {
            by_run.entry(r).or_default().push(e);
        }
    }
    let active = c.state.runs.values().filter(|r| !r.run.state.is_terminal()).count();
    if active > 1 {
        out.push(v("one_run_per_service", format!("node {id}: {active} runs hold the service")));
    }
    for (rid, rec) in &c.state.runs {
        let entries = by_run.remove(rid.as_str()).unwrap_or_default();
        let creates = entries.iter().filter(|e| e.action == "run.create").count();
        if creates != 1 {
            out.push(v("decisions_audited_once", format!("node {id}: run {rid} has {creates} run.create entries")));
        }
        let finished: Vec<&serde_json::Value> =
            entries.iter().filter(|e| e.action == "run.step_finished").filter_map(|e| e.details.get("work")).collect();
        let history: Vec<serde_json::Value> =
            rec.run.history.iter().map(|a| serde_json::to_value(&a.work).unwrap_or_default()).collect();
        if finished.len() != history.len() || finished.iter().zip(&history).any(|(a, b)| *a != b) {
            out.push(v(
                "decisions_audited_once",
                format!(
                    "node {id}: run {rid}: {} results in history, {} step_finished audit entries (or out of order)",
                    history.len(),
                    finished.len()
                ),
            ));
        }
        let finishes = entries.iter().filter(|e| e.action == "run.finish").count();
        if finishes > 1 {
            out.push(v("decisions_audited_once", format!("node {id}: run {rid} finished {finishes} times")));
        }
        let r = &rec.run;
        let legal = match &r.state {
            RunState::Succeeded => r.cursor == r.plan.steps.len() && r.in_flight.is_none(),
            RunState::RolledBack { .. } => r.to_compensate.is_empty() && r.in_flight.is_none(),
            RunState::Aborted { .. } => r.in_flight.is_none(),
            _ => true,
        };
        if !legal {
            out.push(v(
                "runs_legal",
                format!("node {id}: run {rid} in {:?} with cursor {} in_flight {:?}", r.state, r.cursor, r.in_flight),
            ));
        }
        if r.state.is_terminal() != (rec.ended_ms > 0) {
            out.push(v(
                "runs_legal",
                format!("node {id}: run {rid} state {:?} but ended_ms {}", r.state, rec.ended_ms),
            ));
        }
    }
    for (rid, _) in by_run {
        out.push(v("decisions_audited_once", format!("node {id}: audit entries for unknown run {rid}")));
    }
}

/// An effect of a completed step is never applied again: once an attempt's success is
/// committed, no other attempt of the same work has an effect later.
fn no_double_effect(c: &Contents, world: &World, out: &mut Vec<Violation>) {
    for (rid, rec) in &c.state.runs {
        for a in rec.run.history.iter().filter(|a| a.ok) {
            let w = &a.work;
            let phase = w.phase.map(|p| p as i32).unwrap_or(-1);
            for e in &world.executions {
                let (er, es, ep, ec, ea) = &e.key;
                if er == rid
                    && *es == w.step as u32
                    && *ep == phase
                    && *ec == w.compensation
                    && *ea != w.attempt
                    && e.effective
                    && e.at_ms > a.finished_ms
                {
                    out.push(v(
                        "no_double_effect",
                        format!(
                            "run {rid} step {} phase {phase} comp {}: attempt {} committed ok at {}, attempt {ea} ({}) took effect again at {}",
                            w.step, w.compensation, w.attempt, a.finished_ms, e.action, e.at_ms
                        ),
                    ));
                }
            }
        }
    }
}
