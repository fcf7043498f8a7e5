//! Drill reports: a finished drill run graded against its expectations, written as JSON (kept in
//! the replicated state, schema [`SCHEMA`]) and as Markdown rendered from that JSON alone, so the
//! two never disagree. Pure: every time is a leader wall-clock stamp already in the record.
//!
//! Durations in the JSON are integer milliseconds and absent measurements are `null`, never a
//! guess; the Markdown shows seconds with two decimals and "—" for what was not measured.

use super::record::{CheckLine, DrillOutcome, DrillRun, FaultStatus, Trigger, milestone};
use super::spec::{Fault, FaultKind, Response, ResponseStart};
use crate::command::RunRecord;
use crate::run::RunState;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

/// The report schema; trends read older reports by it, so an incompatible change needs a new one.
pub const SCHEMA: &str = "drcut.drill-report/v1";

/// How many missing canary sequence numbers a report lists (the count is always complete).
const MISSING_LISTED: usize = 20;

/// The phases of [`phases`] that add up to the RTO (the rest are totals).
const STEP_PHASES: [&str; 6] = ["detection", "declaration", "decision", "recovery", "traffic", "convergence"];

/// What a report is built from: the run, its response and restore runs, and earlier runs of the
/// same drill (ended, newest first) for the trend.
pub struct ReportInputs<'a> {
    /// The run reported on (ended).
    pub run: &'a DrillRun,
    /// Its response run, when one was started.
    pub response: Option<&'a RunRecord>,
    /// Its restore run, when one was started.
    pub restore: Option<&'a RunRecord>,
    /// Earlier runs of the same drill, newest first.
    pub previous: &'a [DrillRun],
}

/// A graded expectation with the task a failure asks for.
struct Graded {
    line: CheckLine,
    action: Option<String>,
}

impl Graded {
    fn new(name: String, ok: bool, detail: String, action: impl FnOnce() -> String) -> Self {
        let action = (!ok).then(action);
        Graded { line: CheckLine { name, ok, detail }, action }
    }
}

/// Grades every expectation of `run.spec.expect` (+ steady state after restore, + "no
/// guardrail tripped", + integrity lines already in run.integrity) against what the run
/// recorded. One CheckLine per expectation, named e.g. "detection ≤ 5s", detail with the
/// measured value ("measured 1.21 s") or why it could not be measured ("no failing check seen").
pub fn grade(run: &DrillRun, response: Option<&RunRecord>) -> Vec<CheckLine> {
    grade_all(run, response).into_iter().map(|g| g.line).collect()
}

/// The measured RTO phases in ms between milestones (see record::milestone):
/// detection = first_failing_check − fault_injected; declaration = region_declared_down −
/// first_failing_check; decision = run_started − region_declared_down; recovery =
/// writes_available − run_started; traffic = traffic_100 − writes_available (or − run_started);
/// convergence = dns_converged − traffic_100; plus totals: rto_writes = writes_available −
/// fault_injected, rto_traffic = traffic_100 − fault_injected, rto_dns = dns_converged −
/// fault_injected. Missing milestones → phase absent (None), never a negative number.
pub fn phases(run: &DrillRun) -> Vec<(String, Option<i64>)> {
    // A zero stamp is "not yet" in the record, never a time.
    let at = |name: &str| run.milestones.get(name).copied().filter(|&t| t > 0);
    let fault = at(milestone::FAULT_INJECTED);
    let failing = at(milestone::FIRST_FAILING_CHECK);
    let down = at(milestone::REGION_DOWN);
    let started = at(milestone::RUN_STARTED);
    let writes = at(milestone::WRITES_AVAILABLE);
    let traffic = at(milestone::TRAFFIC_100);
    let dns = at(milestone::DNS_CONVERGED);
    // Writes can come back after the traffic moved (the canary retries on its own interval):
    // the traffic phase then counts from the run's start rather than going negative.
    let traffic_from = match (writes, traffic) {
        (Some(w), Some(t)) if w <= t => Some(w),
        _ => started,
    };
    [
        ("detection", span(fault, failing)),
        ("declaration", span(failing, down)),
        ("decision", span(down, started)),
        ("recovery", span(started, writes)),
        ("traffic", span(traffic_from, traffic)),
        ("convergence", span(traffic, dns)),
        ("rto_writes", span(fault, writes)),
        ("rto_traffic", span(fault, traffic)),
        ("rto_dns", span(fault, dns)),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v))
    .collect()
}

/// `to − from` when both happened in that order; out-of-order stamps measure nothing.
fn span(from: Option<i64>, to: Option<i64>) -> Option<i64> {
    match (from, to) {
        (Some(a), Some(b)) if b >= a => Some(b - a),
        _ => None,
    }
}

fn phase(phases: &[(String, Option<i64>)], name: &str) -> Option<i64> {
    phases.iter().find(|(n, _)| n == name).and_then(|(_, v)| *v)
}

// === grading ===

/// The RTO as graded: the later of "writes available" (with a canary) and "traffic fully
/// moved" (when the response shifts traffic), with the parts named; Err says why not measured.
struct RtoMeasure {
    measured: Result<i64, String>,
    writes: Option<i64>,
    traffic: Option<i64>,
    parts: String,
}

fn measure_rto(run: &DrillRun, response: Option<&RunRecord>) -> RtoMeasure {
    let ph = phases(run);
    let writes = phase(&ph, "rto_writes");
    let traffic = phase(&ph, "rto_traffic");
    let injected = run.milestones.get(milestone::FAULT_INJECTED).is_some_and(|&t| t > 0);
    // Without the response record, a traffic milestone is the only sign a shift was planned.
    let shifts_traffic =
        response.map(|r| r.run.plan.steps.iter().any(|s| s.act.action == "shift_traffic")).unwrap_or(traffic.is_some());
    let writes_part: Option<Result<i64, String>> = run.spec.canary.as_ref().map(|_| match writes {
        Some(w) => Ok(w),
        // The canary kept being acknowledged through the fault: writes were never lost.
        None if injected && run.canary.first_failure_ms == 0 && run.canary.acked_count() > 0 => Ok(0),
        None if !run.canary.error.is_empty() => Err(format!("canary: {}", run.canary.error)),
        None if run.canary.first_failure_ms > 0 => Err("writes never came back".to_string()),
        None => Err("the canary recorded nothing".to_string()),
    });
    let traffic_part: Option<Result<i64, String>> = shifts_traffic.then(|| match traffic {
        Some(t) => Ok(t),
        None => Err("traffic never reached 100 %".to_string()),
    });
    let mut parts = Vec::new();
    if let Some(Ok(w)) = &writes_part {
        parts.push(format!("writes {}", secs(*w)));
    }
    if let Some(Ok(t)) = &traffic_part {
        parts.push(format!("traffic {}", secs(*t)));
    }
    let measured = if !injected {
        Err("no fault confirmed injected".to_string())
    } else {
        match (writes_part, traffic_part) {
            (None, None) => Err("no canary and no traffic shift to measure".to_string()),
            (w, t) => {
                let mut worst = 0;
                let mut why = Vec::new();
                for part in [w, t].into_iter().flatten() {
                    match part {
                        Ok(v) => worst = worst.max(v),
                        Err(e) => why.push(e),
                    }
                }
                if why.is_empty() { Ok(worst) } else { Err(why.join("; ")) }
            }
        }
    };
    RtoMeasure { measured, writes, traffic, parts: parts.join(", ") }
}

/// Whether the response ended in a successful failover, and the evidence.
fn failed_over(run: &DrillRun, response: Option<&RunRecord>) -> (bool, String) {
    match (response, &run.response_run) {
        (Some(r), _) => {
            let (state, reason) = crate::run::state_text(&r.run.state);
            let ok = r.run.state == RunState::Succeeded;
            let reason = if reason.is_empty() { String::new() } else { format!(": {reason}") };
            (ok, format!("run {} {state}{reason}", r.run.id))
        }
        (None, Some(id)) => (false, format!("run {id} not available to the report")),
        (None, None) => (false, "no response run started".to_string()),
    }
}

fn grade_all(run: &DrillRun, response: Option<&RunRecord>) -> Vec<Graded> {
    let spec = &run.spec;
    let expect = &spec.expect;
    let region = &spec.target_region;
    let ph = phases(run);
    let injected = run.milestones.get(milestone::FAULT_INJECTED).is_some_and(|&t| t > 0);
    let mut out = Vec::new();

    if let Some(target) = expect.detection_ms {
        let name = format!("detection ≤ {}", dur(target));
        out.push(match phase(&ph, "detection") {
            Some(d) => Graded::new(name, d <= target as i64, format!("measured {}", secs(d)), || {
                format!(
                    "Detection took {} against a target of {}: review the health check interval and down \
                     quorum of {region}",
                    secs(d),
                    secs(target as i64)
                )
            }),
            None => {
                let why = if injected { "no failing check seen" } else { "no fault confirmed injected" };
                Graded::new(name, false, why.to_string(), || {
                    format!(
                        "Detection could not be measured ({why}): make sure a health check of {region} fails \
                         while the drill's faults are active"
                    )
                })
            }
        });
    }

    if let Some(target) = expect.rto_ms {
        let name = format!("RTO ≤ {}", dur(target));
        let rto = measure_rto(run, response);
        out.push(match rto.measured {
            Ok(v) => {
                let detail = if rto.parts.is_empty() {
                    format!("measured {}", secs(v))
                } else {
                    format!("measured {} ({})", secs(v), rto.parts)
                };
                Graded::new(name, v <= target as i64, detail, || {
                    let slowest = STEP_PHASES
                        .iter()
                        .filter_map(|p| phase(&ph, p).map(|v| (v, *p)))
                        .max_by_key(|(v, p)| (*v, std::cmp::Reverse(*p)));
                    let hint = match slowest {
                        Some((v, p)) => format!("shorten the slowest phase, {p} ({})", secs(v)),
                        None => "find which phase took the time".to_string(),
                    };
                    format!("RTO was {} against a target of {}: {hint}", secs(v), secs(target as i64))
                })
            }
            Err(why) => Graded::new(name, false, format!("not measured: {why}"), || {
                format!(
                    "RTO could not be measured ({why}): make sure the response completes and the canary \
                     reaches the primary"
                )
            }),
        });
    }

    if let Some(target) = expect.rpo_rows {
        let name = format!("RPO ≤ {target} rows");
        let c = &run.canary;
        out.push(match (&spec.canary, &c.missing) {
            (None, _) => Graded::new(name, false, "not measured: no canary".to_string(), || {
                "RPO could not be measured: add a canary to the drill".to_string()
            }),
            (Some(_), None) => {
                let why = if c.error.is_empty() { "the check did not run".to_string() } else { c.error.clone() };
                Graded::new(name, false, format!("not checked: {why}"), || {
                    format!("RPO could not be measured ({why}): fix the canary's check of acknowledged rows")
                })
            }
            (Some(_), Some(missing)) => {
                let n = missing.len() as u64;
                let detail = format!("{n} of {} acknowledged writes missing ({})", c.acked_count(), c.checked);
                Graded::new(name, n <= target, detail, || {
                    format!(
                        "{n} acknowledged canary writes were lost against a budget of {target}: review the \
                         replication mode of {}'s standby and the response's loss budget",
                        spec.service
                    )
                })
            }
        });
    }

    if let Some(expected) = expect.failover {
        let (did, evidence) = failed_over(run, response);
        out.push(if expected {
            Graded::new("failover succeeds".to_string(), did, evidence.clone(), || {
                format!(
                    "The response did not fail {} over ({evidence}): fix the failed step or the failover policy",
                    spec.service
                )
            })
        } else {
            Graded::new("no failover".to_string(), !did, evidence.clone(), || {
                format!(
                    "{} failed over although the drill expected the platform to ride the fault out ({evidence}): \
                     review what started the cutover",
                    spec.service
                )
            })
        });
    }

    // Every recorded integrity result counts; an expected check with no result was never run.
    for line in &run.integrity {
        let (name, detail) = (line.name.clone(), line.detail.clone());
        out.push(Graded::new(format!("integrity: {name}"), line.ok, detail.clone(), || {
            format!("Integrity check {name} failed ({detail}): investigate the data on the new primary")
        }));
    }
    for check in &expect.integrity {
        if !run.integrity.iter().any(|l| l.name == check.name) {
            let name = check.name.clone();
            out.push(Graded::new(format!("integrity: {name}"), false, "not run".to_string(), || {
                format!("Integrity check {name} never ran: make sure the canary connection reaches the primary")
            }));
        }
    }

    if !spec.steady_state.is_empty() {
        let failing: Vec<&str> = run.steady_after.iter().filter(|l| !l.ok).map(|l| l.name.as_str()).collect();
        let (ok, detail) = if run.steady_after.is_empty() {
            (false, "not checked".to_string())
        } else if failing.is_empty() {
            (true, format!("{n} of {n} probes hold", n = run.steady_after.len()))
        } else {
            (false, format!("failing: {}", failing.join(", ")))
        };
        let restore = match &spec.restore.playbook {
            Some(p) => format!("the restore playbook {p}"),
            None => "the fault reverts".to_string(),
        };
        out.push(Graded::new("steady state after restore".to_string(), ok, detail.clone(), || {
            format!("Steady state did not return after restore ({detail}): put {region} back by hand and fix {restore}")
        }));
    }

    if !spec.guardrails.is_empty() || !run.guardrails.is_empty() {
        let tripped: Vec<&str> = run.guardrails.iter().map(|g| g.name.as_str()).collect();
        let detail =
            if tripped.is_empty() { "none tripped".to_string() } else { format!("tripped: {}", tripped.join(", ")) };
        // Each trip gets its own action item; this line would only repeat them.
        out.push(Graded {
            line: CheckLine { name: "no guardrail tripped".to_string(), ok: tripped.is_empty(), detail },
            action: None,
        });
    }
    out
}

// === the JSON report ===

/// The report as JSON (schema "drcut.drill-report/v1").
pub fn build(inputs: &ReportInputs<'_>) -> Value {
    let run = inputs.run;
    let spec = &run.spec;
    let outcome = run.outcome.map_or("unfinished", DrillOutcome::as_str);
    let mut report = json!({
        "schema": SCHEMA,
        "title": format!("Drill {} — run {}", spec.name, run.id),
        "drill": spec.name,
        "run_id": run.id,
        "outcome": outcome,
        "outcome_detail": run.outcome_detail,
        "trigger": trigger(run),
        "dry_run": run.dry_run,
        "owner": spec.owner,
        "hypothesis": spec.hypothesis,
        "service": spec.service,
        "target_region": spec.target_region,
        "created_ms": run.created_ms,
        "created_utc": utc(run.created_ms),
        "ended_ms": run.ended_ms,
        "ended_utc": utc(run.ended_ms),
        "pinned": pinned(inputs),
        "preflight": run.preflight,
        "plan": plan(run),
        "summary": summary(run),
    });
    let short = matches!(run.outcome, Some(DrillOutcome::Refused | DrillOutcome::DryRun | DrillOutcome::Skipped));
    report["short"] = json!(short);
    if short {
        return report;
    }
    let graded = grade_all(run, inputs.response);
    let base = run.milestones.get(milestone::FAULT_INJECTED).copied().filter(|&t| t > 0);
    let (base_ms, base_name) = match base {
        Some(t) => (t, "fault_injected"),
        None => (run.created_ms, "created"),
    };
    report["timeline_base"] = json!({ "at_ms": base_ms, "from": base_name });
    report["timeline"] = timeline(run, base_ms);
    report["phases"] = Value::Array(phases(run).into_iter().map(|(n, v)| json!({ "name": n, "ms": v })).collect());
    report["rto"] = rto(run, inputs.response);
    report["rpo"] = rpo(run);
    report["faults"] = faults(run, base_ms);
    report["response"] = inputs.response.map_or(Value::Null, response_run);
    report["expectations"] = json!(graded.iter().map(|g| &g.line).collect::<Vec<_>>());
    report["guardrails"] = Value::Array(
        run.guardrails
            .iter()
            .map(|g| {
                json!({
                    "name": g.name,
                    "at_ms": g.at_ms,
                    "at_utc": utc(g.at_ms),
                    "offset_ms": g.at_ms.saturating_sub(base_ms),
                    "detail": g.detail,
                    "action": g.action,
                })
            })
            .collect(),
    );
    report["deviations"] = json!(run.deviations);
    report["steady_after"] = json!(run.steady_after);
    report["action_items"] = json!(action_items(run, &graded, base_ms));
    report["trend"] = trend(run, &report["summary"], inputs.previous);
    report
}

fn trigger(run: &DrillRun) -> Value {
    match &run.trigger {
        Trigger::Schedule { occurrence_ms, late } => json!({
            "kind": "schedule",
            "occurrence_ms": occurrence_ms,
            "occurrence_utc": utc(*occurrence_ms),
            "occurrence_local": run.spec.schedule.as_ref().map(|s| local(*occurrence_ms, &s.timezone)),
            "timezone": run.spec.schedule.as_ref().map(|s| s.timezone.clone()),
            "late": late,
        }),
        Trigger::Manual { by } => json!({ "kind": "manual", "by": by }),
    }
}

fn pinned(inputs: &ReportInputs<'_>) -> Value {
    let run = inputs.run;
    let pin = |id: &Option<String>, rec: Option<&RunRecord>| match (id, rec) {
        (None, None) => Value::Null,
        _ => json!({
            "run_id": id.clone().or_else(|| rec.map(|r| r.run.id.clone())),
            "playbook": rec.map(|r| r.playbook.clone()),
            "playbook_sha256": rec.map(|r| r.playbook_hash.clone()),
            "state": rec.map(|r| crate::run::state_text(&r.run.state).0),
        }),
    };
    json!({
        "drill_sha256": run.drill_hash,
        "response": pin(&run.response_run, inputs.response),
        "restore": pin(&run.restore_run, inputs.restore),
    })
}

/// What the drill does, from the pinned spec: the plan a dry run shows and an auditor checks.
fn plan(run: &DrillRun) -> Vec<String> {
    let spec = &run.spec;
    let mut lines: Vec<String> = spec.faults.iter().map(fault_line).collect();
    lines.push(match &spec.response {
        Response::Playbook { playbook, params, unplanned, start } => {
            let when = match start {
                ResponseStart::OnDown => "once the target region is declared down",
                ResponseStart::OnDetection => "once the first check fails",
                ResponseStart::Immediately => "right after injection",
            };
            let kind = if *unplanned { "unplanned failover" } else { "planned cutover" };
            let params: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let params = if params.is_empty() { String::new() } else { format!(" ({})", params.join(", ")) };
            format!("response: run playbook {playbook}{params} as {kind} {when}")
        }
        Response::AutomaticFailover => format!("response: automatic failover of {} is expected", spec.service),
        Response::None { observe_ms } => format!("response: none, the fault is observed for {}", dur(*observe_ms)),
    });
    lines.push(match &spec.canary {
        Some(c) => format!("canary: a numbered write into {} every {}", c.table, dur(c.interval_ms)),
        None => "canary: none (RPO not measured)".to_string(),
    });
    lines.push(match &spec.restore.playbook {
        Some(p) => format!("restore: revert the faults, then run playbook {p} within {}", dur(spec.restore.timeout_ms)),
        None => format!("restore: revert the faults within {}", dur(spec.restore.timeout_ms)),
    });
    lines.push(format!(
        "dead-man switch: agents revert by themselves after {} without the coordinator, or {} after the start",
        dur(spec.lost_coordinator_ms),
        dur(spec.deadline_ms)
    ));
    lines
}

fn fault_line(f: &Fault) -> String {
    let what = match &f.kind {
        FaultKind::PostgresStop { database } => format!("stop PostgreSQL {database} (immediate)"),
        FaultKind::ProcessKill { process } => format!("kill -9 process {process}"),
        FaultKind::Proxy { proxy, mode, latency_ms, jitter_ms, bytes_per_second, failure_rate } => {
            let mode = serde_json::to_value(mode).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            let mut s = format!("proxy {proxy}: {mode}");
            if *latency_ms > 0 {
                let _ = write!(s, " {latency_ms} ms");
            }
            if *jitter_ms > 0 {
                let _ = write!(s, " ± {jitter_ms} ms");
            }
            if *bytes_per_second > 0 {
                let _ = write!(s, " {bytes_per_second} B/s");
            }
            if *failure_rate > 0.0 {
                let _ = write!(s, " {:.0} % of connections", failure_rate * 100.0);
            }
            s
        }
        FaultKind::Dns { proxy, name, answer } => {
            let answer = serde_json::to_value(answer).ok().and_then(|v| v.as_str().map(str::to_uppercase));
            format!("DNS {} for {name} through {proxy}", answer.unwrap_or_default())
        }
        FaultKind::Exec { inject, .. } => format!("run `{}`", inject.join(" ")),
    };
    let how_long = f.duration_ms.map_or(" until restore".to_string(), |d| format!(" for {}", dur(d)));
    format!("inject {} in {}: {what}{how_long}", f.id, f.region)
}

/// The numbers a trend compares, kept in every report so a later run's trend does not depend
/// on recomputing them (the spec or playbooks may have changed since).
fn summary(run: &DrillRun) -> Value {
    let ph = phases(run);
    json!({
        "outcome": run.outcome.map_or("unfinished", DrillOutcome::as_str),
        "date_ms": run.created_ms,
        "detection_ms": phase(&ph, "detection"),
        "rto_writes_ms": phase(&ph, "rto_writes"),
        "rto_traffic_ms": phase(&ph, "rto_traffic"),
        "rpo_missing": run.canary.missing.as_ref().map(|m| m.len()),
    })
}

fn timeline(run: &DrillRun, base_ms: i64) -> Value {
    // (time, milestones before events at the same ms, position) keeps the order stable.
    let mut entries: Vec<(i64, u8, usize, &str, String)> = Vec::new();
    for (i, name) in milestone::ORDER.iter().enumerate() {
        if let Some(&t) = run.milestones.get(*name).filter(|&&t| t > 0) {
            entries.push((t, 0, i, "milestone", milestone_label(name).to_string()));
        }
    }
    for (i, (name, &t)) in run.milestones.iter().enumerate() {
        if t > 0 && !milestone::ORDER.contains(&name.as_str()) {
            entries.push((t, 0, milestone::ORDER.len() + i, "milestone", name.replace('_', " ")));
        }
    }
    for (i, e) in run.events.iter().enumerate() {
        entries.push((e.at_ms, 1, i, "event", e.what.clone()));
    }
    entries.sort_by_key(|e| (e.0, e.1, e.2));
    Value::Array(
        entries
            .into_iter()
            .map(|(t, _, _, kind, what)| {
                let off = t.saturating_sub(base_ms);
                json!({ "at_ms": t, "at_utc": utc(t), "offset_ms": off, "kind": kind, "what": what })
            })
            .collect(),
    )
}

fn milestone_label(name: &str) -> &'static str {
    match name {
        milestone::FAULT_INJECTED => "fault injected (first fault confirmed active)",
        milestone::FIRST_FAILING_CHECK => "first failing check in the target region",
        milestone::REGION_DOWN => "target region declared down",
        milestone::RUN_STARTED => "response run started",
        milestone::WRITES_AVAILABLE => "writes available again (canary acknowledged)",
        milestone::TRAFFIC_100 => "traffic 100 % on the new target",
        milestone::DNS_CONVERGED => "DNS converged on the new target",
        milestone::RESPONSE_ENDED => "response run ended",
        milestone::RESTORE_STARTED => "restore started",
        milestone::RESTORED => "restored",
        _ => "milestone",
    }
}

fn rto(run: &DrillRun, response: Option<&RunRecord>) -> Value {
    let m = measure_rto(run, response);
    let target = run.spec.expect.rto_ms;
    let (measured, why) = match &m.measured {
        Ok(v) => (Some(*v), None),
        Err(e) => (None, Some(e.clone())),
    };
    let dns = phase(&phases(run), "rto_dns");
    json!({
        "target_ms": target,
        "measured_ms": measured,
        "not_measured": why,
        "writes_ms": m.writes,
        "traffic_ms": m.traffic,
        "dns_ms": dns,
        "ok": target.map(|t| measured.is_some_and(|v| v <= t as i64)),
    })
}

fn rpo(run: &DrillRun) -> Value {
    let target = run.spec.expect.rpo_rows;
    let c = &run.canary;
    if run.spec.canary.is_none() {
        return json!({ "measured": false, "target_rows": target, "why": "no canary", "ok": target.map(|_| false) });
    }
    let Some(missing) = &c.missing else {
        let why = if c.error.is_empty() { "the check did not run".to_string() } else { c.error.clone() };
        return json!({
            "measured": false, "target_rows": target, "why": why, "acked": c.acked_count(),
            "failed_attempts": c.failed, "ok": target.map(|_| false),
        });
    };
    json!({
        "measured": true,
        "target_rows": target,
        "acked": c.acked_count(),
        "failed_attempts": c.failed,
        "missing_count": missing.len(),
        "missing_first": missing.iter().take(MISSING_LISTED).collect::<Vec<_>>(),
        "checked": c.checked,
        "error": c.error,
        "ok": target.map(|t| missing.len() as u64 <= t),
    })
}

/// Who reverted a fault: the engine, or the agent's dead-man switch (it says so in its detail,
/// or the revert came with no revert command committed).
fn reverted_by(s: &FaultStatus) -> Option<&'static str> {
    if s.reverted_ms <= 0 {
        return None;
    }
    let d = s.detail.to_lowercase();
    if d.contains("dead-man") || d.contains("dead man") || d.contains("deadman") || s.revert_dispatched_ms <= 0 {
        Some("dead-man switch")
    } else {
        Some("engine")
    }
}

fn faults(run: &DrillRun, base_ms: i64) -> Value {
    let empty = FaultStatus::default();
    let stamp = |t: i64| if t > 0 { json!(t) } else { Value::Null };
    let off = |t: i64| if t > 0 { json!(t.saturating_sub(base_ms)) } else { Value::Null };
    let entry = |id: &str, region: Option<&str>, kind: Option<String>, line: Option<String>, s: &FaultStatus| {
        json!({
            "id": id,
            "region": region,
            "type": kind,
            "what": line,
            "dispatched_ms": stamp(s.dispatched_ms),
            "injected_ms": stamp(s.injected_ms),
            "injected_utc": utc(s.injected_ms),
            "injected_offset_ms": off(s.injected_ms),
            "revert_dispatched_ms": stamp(s.revert_dispatched_ms),
            "reverted_ms": stamp(s.reverted_ms),
            "reverted_utc": utc(s.reverted_ms),
            "reverted_offset_ms": off(s.reverted_ms),
            "reverted_by": reverted_by(s),
            "failed": s.failed,
            "detail": s.detail,
        })
    };
    let mut out: Vec<Value> = run
        .spec
        .faults
        .iter()
        .map(|f| {
            let kind = serde_json::to_value(&f.kind).ok().and_then(|v| v["type"].as_str().map(str::to_string));
            entry(&f.id, Some(&f.region), kind, Some(fault_line(f)), run.faults.get(&f.id).unwrap_or(&empty))
        })
        .collect();
    for (id, s) in &run.faults {
        if !run.spec.faults.iter().any(|f| &f.id == id) {
            out.push(entry(id, None, None, None, s));
        }
    }
    Value::Array(out)
}

/// The response run's steps with their timings, from its attempt history.
fn response_run(r: &RunRecord) -> Value {
    let run = &r.run;
    let steps: Vec<Value> = run
        .plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let tries: Vec<_> = run.history.iter().filter(|a| a.work.step == i && !a.work.compensation).collect();
            let compensated = run.history.iter().any(|a| a.work.step == i && a.work.compensation && a.ok);
            let started = tries.iter().map(|a| a.started_ms).min();
            let finished = tries.iter().map(|a| a.finished_ms).max();
            let result = if let Some(why) = run.skipped.get(&i) {
                format!("skipped: {why}")
            } else if compensated {
                "compensated".to_string()
            } else if run.completed.contains(&i) {
                "done".to_string()
            } else if let Some(last) = tries.iter().max_by_key(|a| (a.finished_ms, a.work.attempt)) {
                if last.ok { "done".to_string() } else { format!("failed: {}", last.detail) }
            } else {
                "not run".to_string()
            };
            json!({
                "id": step.id,
                "action": step.act.action,
                "region": step.act.region,
                "started_ms": started,
                "ms": span(started, finished),
                "attempts": tries.len(),
                "result": result,
            })
        })
        .collect();
    let (state, reason) = crate::run::state_text(&run.state);
    json!({
        "run_id": run.id,
        "playbook": r.playbook,
        "playbook_sha256": r.playbook_hash,
        "automatic": r.automatic,
        "state": state,
        "reason": reason,
        "steps": steps,
        "loss": run.loss.as_ref().map(|l| l.text()),
        "fencing": run.fencing.as_ref().map(|f| format!("{}: {}", f.how, f.detail)),
        "consent": run.consent,
    })
}

fn action_items(run: &DrillRun, graded: &[Graded], base_ms: i64) -> Vec<String> {
    let mut items: Vec<String> = graded.iter().filter_map(|g| g.action.clone()).collect();
    let target = &run.spec.target_region;
    for g in &run.guardrails {
        items.push(format!(
            "Guardrail {} tripped at {} ({}): find out how the fault reached outside the blast radius of {target}",
            g.name,
            offset(g.at_ms.saturating_sub(base_ms)),
            g.detail
        ));
    }
    for d in &run.deviations {
        items.push(format!("Explain the deviation from the plan: {d}"));
    }
    let empty = FaultStatus::default();
    for f in &run.spec.faults {
        let s = run.faults.get(&f.id).unwrap_or(&empty);
        let why = if s.detail.is_empty() { String::new() } else { format!(" ({})", s.detail) };
        if s.failed || (s.dispatched_ms > 0 && s.injected_ms <= 0) {
            items.push(format!(
                "Fault {} could not be injected in {}{why}: fix the agent's configuration for it",
                f.id, f.region
            ));
        } else if s.injected_ms > 0 && s.reverted_ms <= 0 {
            items.push(format!(
                "Fault {} in {} was never confirmed reverted{why}: check the agent and revert it by hand",
                f.id, f.region
            ));
        } else if reverted_by(s) == Some("dead-man switch") {
            items.push(format!(
                "Fault {} in {} was reverted by the agent's dead-man switch, not the engine{why}: find out why \
                 the coordinator did not revert it",
                f.id, f.region
            ));
        }
    }
    items
}

// === trend ===

/// The trend's numbers for one run: its report's summary when it has one of this schema, else
/// recomputed from the record.
fn summary_of(run: &DrillRun) -> Value {
    match &run.report {
        Some(r) if r["schema"] == SCHEMA && r["summary"].is_object() => r["summary"].clone(),
        _ => summary(run),
    }
}

fn trend(run: &DrillRun, current: &Value, previous: &[DrillRun]) -> Value {
    let row = |id: &str, s: &Value| {
        let date = s["date_ms"].as_i64().unwrap_or(0);
        json!({
            "run_id": id,
            "date_ms": date,
            "date_utc": utc(date),
            "outcome": s["outcome"],
            "detection_ms": s["detection_ms"],
            "rto_writes_ms": s["rto_writes_ms"],
            "rto_traffic_ms": s["rto_traffic_ms"],
            "rpo_missing": s["rpo_missing"],
        })
    };
    // Dry runs measure nothing; refused and skipped occurrences stay (a drill that keeps not
    // running is itself a trend).
    let earlier: Vec<Value> = previous
        .iter()
        .filter(|p| p.id != run.id && !p.dry_run && p.outcome != Some(DrillOutcome::DryRun))
        .take(run.spec.report.trend_runs)
        .map(|p| row(&p.id, &summary_of(p)))
        .collect();
    let changes: Vec<Value> = ["detection_ms", "rto_writes_ms", "rto_traffic_ms"]
        .iter()
        .map(|metric| {
            let now = current[*metric].as_i64();
            let last = earlier.iter().find_map(|r| r[*metric].as_i64().map(|v| (r["run_id"].clone(), v)));
            let mut values: Vec<i64> = earlier.iter().filter_map(|r| r[*metric].as_i64()).collect();
            let median = median(&mut values);
            json!({
                "metric": metric,
                "current_ms": now,
                "previous_run": last.as_ref().map(|l| l.0.clone()),
                "previous_ms": last.as_ref().map(|l| l.1),
                "delta_ms": now.zip(last.as_ref().map(|l| l.1)).map(|(a, b)| a.saturating_sub(b)),
                "median_ms": median,
                "median_of": values.len(),
                "delta_median_ms": now.zip(median).map(|(a, b)| a.saturating_sub(b)),
            })
        })
        .collect();
    let mut rows = vec![row(&run.id, current)];
    rows.extend(earlier);
    json!({ "rows": rows, "changes": changes })
}

fn median(values: &mut [i64]) -> Option<i64> {
    values.sort_unstable();
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some(((i128::from(values[n / 2 - 1]) + i128::from(values[n / 2])) / 2) as i64),
    }
}

// === formatting ===

/// The wall-clock time in IANA zone `zone` with its offset (`2026-01-06 03:00 +00:00`), as the
/// people who scheduled the drill wrote it; empty for an unknown zone or a "not yet" stamp.
fn local(ms: i64, zone: &str) -> String {
    let (Ok(tz), Some(at)) = (zone.parse::<chrono_tz::Tz>(), chrono::DateTime::from_timestamp_millis(ms)) else {
        return String::new();
    };
    if ms <= 0 {
        return String::new();
    }
    at.with_timezone(&tz).format("%Y-%m-%d %H:%M %:z").to_string()
}

/// RFC 3339 UTC with milliseconds; empty for "not yet" (0) stamps.
fn utc(ms: i64) -> String {
    if ms <= 0 {
        return String::new();
    }
    // humantime refuses years past 9999 with a fmt::Error, which `to_string` turns into a
    // panic; a corrupt stamp must not take the state machine down with it.
    let mut out = String::new();
    match write!(out, "{}", humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms as u64))) {
        Ok(()) => out,
        Err(_) => format!("out of range ({ms} ms)"),
    }
}

/// A duration in seconds with two decimals: `1.21 s`.
fn secs(ms: i64) -> String {
    let sign = if ms < 0 { "−" } else { "" };
    // Rounded to the nearest hundredth, so 1_205 ms reads 1.21 s.
    let cs = (ms.unsigned_abs() + 5) / 10;
    format!("{sign}{}.{:02} s", cs / 100, cs % 100)
}

/// A signed change: `+0.31 s`, `−1.20 s`.
fn delta(ms: i64) -> String {
    if ms < 0 { secs(ms) } else { format!("+{}", secs(ms)) }
}

/// An offset from the timeline's base: `T+1.234 s`.
fn offset(ms: i64) -> String {
    let sign = if ms < 0 { "−" } else { "+" };
    let a = ms.unsigned_abs();
    format!("T{sign}{}.{:03} s", a / 1000, a % 1000)
}

/// A configured duration as written in drill files: `5s`, `1m 30s`.
fn dur(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

// === Markdown ===

/// The report as Markdown, rendered from `build`'s JSON only.
pub fn markdown(report: &Value) -> String {
    let mut md = String::new();
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let _ = writeln!(md, "# Drill report: {}\n", s(&report["drill"]));
    let _ = writeln!(
        md,
        "Run `{}` · **{}** — {}\n",
        s(&report["run_id"]),
        s(&report["outcome"]).to_uppercase().replace('_', " "),
        s(&report["outcome_detail"])
    );
    md.push_str("| | |\n|---|---|\n");
    let mut facts = vec![
        ("Trigger", trigger_text(&report["trigger"])),
        ("Owner", s(&report["owner"])),
        ("Service", s(&report["service"])),
        ("Target region", s(&report["target_region"])),
        ("Hypothesis", s(&report["hypothesis"])),
        ("Started", s(&report["created_utc"])),
    ];
    if !s(&report["ended_utc"]).is_empty() {
        facts.push(("Ended", s(&report["ended_utc"])));
    }
    for (k, v) in facts {
        let _ = writeln!(md, "| {k} | {} |", cell(&v));
    }
    md.push('\n');

    md.push_str("## Pinned versions\n\n");
    let pinned = &report["pinned"];
    let _ = writeln!(md, "- Drill file sha256: `{}`", s(&pinned["drill_sha256"]));
    for (label, key) in [("Response", "response"), ("Restore", "restore")] {
        let p = &pinned[key];
        if p.is_null() {
            let _ = writeln!(md, "- {label}: none");
        } else {
            let _ = writeln!(
                md,
                "- {label}: playbook `{}` sha256 `{}`, run `{}` ({})",
                s(&p["playbook"]),
                s(&p["playbook_sha256"]),
                s(&p["run_id"]),
                p["state"].as_str().unwrap_or("state unknown")
            );
        }
    }
    md.push('\n');

    if report["short"].as_bool().unwrap_or(false) {
        let _ = writeln!(md, "## Reason\n\n{}\n", s(&report["outcome_detail"]));
        check_table(&mut md, "Preflight", "Check", &report["preflight"]);
        md.push_str("## Plan\n\n");
        for line in report["plan"].as_array().into_iter().flatten() {
            let _ = writeln!(md, "- {}", s(line));
        }
        return md;
    }

    md.push_str("## Timeline\n\n");
    let base = &report["timeline_base"];
    let from = if base["from"] == "fault_injected" { "fault injection" } else { "the run's creation" };
    let _ = writeln!(md, "Offsets from {from}.\n");
    md.push_str("| Offset | Time (UTC) | What |\n|---:|---|---|\n");
    for e in report["timeline"].as_array().into_iter().flatten() {
        let what = if e["kind"] == "milestone" { format!("**{}**", s(&e["what"])) } else { s(&e["what"]) };
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            offset(e["offset_ms"].as_i64().unwrap_or(0)),
            s(&e["at_utc"]),
            cell(&what)
        );
    }
    md.push('\n');

    md.push_str("## RTO phases\n\n| Phase | Between | Duration |\n|---|---|---:|\n");
    for p in report["phases"].as_array().into_iter().flatten() {
        let name = s(&p["name"]);
        let _ = writeln!(md, "| {} | {} | {} |", phase_label(&name), phase_between(&name), opt_secs(&p["ms"]));
    }
    md.push('\n');

    md.push_str("## RTO and RPO\n\n");
    let rto = &report["rto"];
    let rto_line = match (rto["measured_ms"].as_i64(), rto["target_ms"].as_i64()) {
        (Some(m), Some(t)) => format!("{} against a target of {}: **{}**", secs(m), secs(t), met(&rto["ok"])),
        (Some(m), None) => format!("{} (no target)", secs(m)),
        (None, _) => format!("not measured ({})", s(&rto["not_measured"])),
    };
    let _ = writeln!(
        md,
        "- RTO: {rto_line} (writes {}, traffic {}, DNS {})",
        opt_secs(&rto["writes_ms"]),
        opt_secs(&rto["traffic_ms"]),
        opt_secs(&rto["dns_ms"])
    );
    let rpo = &report["rpo"];
    if rpo["measured"].as_bool().unwrap_or(false) {
        let target = match rpo["target_rows"].as_u64() {
            Some(t) => format!(" against a budget of {t} rows: **{}**", met(&rpo["ok"])),
            None => String::new(),
        };
        let _ = writeln!(
            md,
            "- RPO: {} of {} acknowledged canary writes missing{target} (checked {})",
            rpo["missing_count"],
            rpo["acked"],
            s(&rpo["checked"])
        );
        let first: Vec<String> = rpo["missing_first"].as_array().into_iter().flatten().map(|v| v.to_string()).collect();
        if !first.is_empty() {
            let _ = writeln!(md, "- Missing sequence numbers (first {MISSING_LISTED}): {}", first.join(", "));
        }
    } else {
        let _ = writeln!(md, "- RPO: not measured ({})", s(&rpo["why"]));
    }
    md.push('\n');

    md.push_str("## Faults\n\n| Fault | Region | What | Injected | Reverted | Reverted by | Agent's word |\n");
    md.push_str("|---|---|---|---|---|---|---|\n");
    for f in report["faults"].as_array().into_iter().flatten() {
        let injected = if f["failed"].as_bool().unwrap_or(false) {
            "**failed**".to_string()
        } else {
            opt_offset(&f["injected_offset_ms"])
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {injected} | {} | {} | {} |",
            s(&f["id"]),
            s(&f["region"]),
            cell(&s(&f["what"])),
            opt_offset(&f["reverted_offset_ms"]),
            f["reverted_by"].as_str().unwrap_or("**not reverted**"),
            cell(&s(&f["detail"]))
        );
    }
    md.push('\n');

    let resp = &report["response"];
    if resp.is_object() {
        let reason = s(&resp["reason"]);
        let reason = if reason.is_empty() { String::new() } else { format!(": {reason}") };
        let auto = if resp["automatic"].as_bool().unwrap_or(false) { ", started by the automatic policy" } else { "" };
        let _ = writeln!(
            md,
            "## Response run\n\nRun `{}` of playbook `{}`{auto}: {}{reason}\n",
            s(&resp["run_id"]),
            s(&resp["playbook"]),
            s(&resp["state"])
        );
        let mut facts = false;
        for (label, key) in [("Loss at promotion", "loss"), ("Fencing", "fencing"), ("Loss consented by", "consent")] {
            if let Some(v) = resp[key].as_str() {
                let _ = writeln!(md, "- {label}: {v}");
                facts = true;
            }
        }
        if facts {
            md.push('\n');
        }
        md.push_str("| Step | Action | Region | Duration | Attempts | Result |\n|---|---|---|---:|---:|---|\n");
        for st in resp["steps"].as_array().into_iter().flatten() {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                s(&st["id"]),
                s(&st["action"]),
                s(&st["region"]),
                opt_secs(&st["ms"]),
                st["attempts"],
                cell(&s(&st["result"]))
            );
        }
        md.push('\n');
    }

    check_table(&mut md, "Preflight", "Check", &report["preflight"]);
    check_table(&mut md, "Expectations", "Expectation", &report["expectations"]);

    md.push_str("## Guardrails\n\n");
    let trips = report["guardrails"].as_array().cloned().unwrap_or_default();
    if trips.is_empty() {
        md.push_str("None tripped.\n\n");
    } else {
        md.push_str("| Guardrail | When | Evidence | Action |\n|---|---|---|---|\n");
        for g in &trips {
            let when = format!("{} ({})", offset(g["offset_ms"].as_i64().unwrap_or(0)), s(&g["at_utc"]));
            let _ = writeln!(
                md,
                "| {} | {when} | {} | {} |",
                s(&g["name"]),
                cell(&s(&g["detail"])),
                cell(&s(&g["action"]))
            );
        }
        md.push('\n');
    }

    list(&mut md, "Deviations", &report["deviations"], "- ", "None.");
    check_table(&mut md, "Steady state after restore", "Probe", &report["steady_after"]);
    list(&mut md, "Action items", &report["action_items"], "- [ ] ", "None.");

    md.push_str("## Trend\n\n");
    md.push_str("| Run | Date (UTC) | Outcome | Detection | RTO writes | RTO traffic | RPO (rows lost) |\n");
    md.push_str("|---|---|---|---:|---:|---:|---:|\n");
    for (i, r) in report["trend"]["rows"].as_array().into_iter().flatten().enumerate() {
        let id = if i == 0 { format!("`{}` (this run)", s(&r["run_id"])) } else { format!("`{}`", s(&r["run_id"])) };
        let date = s(&r["date_utc"]).get(..16).unwrap_or("").replace('T', " ");
        let rpo = r["rpo_missing"].as_u64().map_or("—".to_string(), |n| n.to_string());
        let _ = writeln!(
            md,
            "| {id} | {date} | {} | {} | {} | {} | {rpo} |",
            s(&r["outcome"]),
            opt_secs(&r["detection_ms"]),
            opt_secs(&r["rto_writes_ms"]),
            opt_secs(&r["rto_traffic_ms"])
        );
    }
    md.push('\n');
    for c in report["trend"]["changes"].as_array().into_iter().flatten() {
        let label = match c["metric"].as_str() {
            Some("detection_ms") => "Detection",
            Some("rto_writes_ms") => "RTO writes",
            _ => "RTO traffic",
        };
        let Some(now) = c["current_ms"].as_i64() else {
            let _ = writeln!(md, "- {label}: not measured in this run");
            continue;
        };
        let mut parts = Vec::new();
        if let Some(d) = c["delta_ms"].as_i64() {
            parts.push(format!("{} against the previous run (`{}`)", delta(d), s(&c["previous_run"])));
        }
        if let (Some(d), Some(m)) = (c["delta_median_ms"].as_i64(), c["median_ms"].as_i64()) {
            parts.push(format!("{} against the median of {} earlier runs ({})", delta(d), c["median_of"], secs(m)));
        }
        if parts.is_empty() {
            parts.push("no earlier measurement to compare".to_string());
        }
        let _ = writeln!(md, "- {label}: {}; {}", secs(now), parts.join(", "));
    }
    md
}

fn trigger_text(t: &Value) -> String {
    match t["kind"].as_str() {
        Some("schedule") => {
            let late = if t["late"].as_bool().unwrap_or(false) { "; started late" } else { "; on time" };
            let utc = t["occurrence_utc"].as_str().unwrap_or("");
            match (t["occurrence_local"].as_str().filter(|l| !l.is_empty()), t["timezone"].as_str()) {
                (Some(local), Some(zone)) => format!("scheduled occurrence {local} {zone} ({utc}){late}"),
                (_, zone) => {
                    let zone = zone.map_or(String::new(), |z| format!(", schedule in {z}"));
                    format!("scheduled occurrence {utc}{zone}{late}")
                }
            }
        }
        _ => format!("manual, by {}", t["by"].as_str().unwrap_or("unknown")),
    }
}

fn check_table(md: &mut String, title: &str, what: &str, lines: &Value) {
    let _ = writeln!(md, "## {title}\n");
    let lines = lines.as_array().cloned().unwrap_or_default();
    if lines.is_empty() {
        md.push_str("None.\n\n");
        return;
    }
    let _ = writeln!(md, "| {what} | Result | Detail |\n|---|---|---|");
    for l in &lines {
        let ok = if l["ok"].as_bool().unwrap_or(false) { "PASS" } else { "**FAIL**" };
        let _ = writeln!(
            md,
            "| {} | {ok} | {} |",
            cell(l["name"].as_str().unwrap_or("")),
            cell(l["detail"].as_str().unwrap_or(""))
        );
    }
    md.push('\n');
}

fn list(md: &mut String, title: &str, items: &Value, bullet: &str, none: &str) {
    let _ = writeln!(md, "## {title}\n");
    let items = items.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        let _ = writeln!(md, "{none}\n");
        return;
    }
    for i in &items {
        let _ = writeln!(md, "{bullet}{}", i.as_str().unwrap_or(""));
    }
    md.push('\n');
}

fn phase_label(name: &str) -> &str {
    match name {
        "detection" => "Detection",
        "declaration" => "Declaration",
        "decision" => "Decision",
        "recovery" => "Recovery",
        "traffic" => "Traffic",
        "convergence" => "Convergence",
        "rto_writes" => "RTO (writes)",
        "rto_traffic" => "RTO (traffic)",
        "rto_dns" => "RTO (DNS)",
        other => other,
    }
}

fn phase_between(name: &str) -> &str {
    match name {
        "detection" => "fault injected → first failing check",
        "declaration" => "first failing check → region declared down",
        "decision" => "region declared down → response run started",
        "recovery" => "response run started → writes available",
        "traffic" => "writes available (or run started) → traffic 100 %",
        "convergence" => "traffic 100 % → DNS converged",
        "rto_writes" => "fault injected → writes available",
        "rto_traffic" => "fault injected → traffic 100 %",
        "rto_dns" => "fault injected → DNS converged",
        _ => "",
    }
}

fn met(ok: &Value) -> &'static str {
    if ok.as_bool().unwrap_or(false) { "met" } else { "missed" }
}

fn opt_secs(v: &Value) -> String {
    v.as_i64().map_or("—".to_string(), secs)
}

fn opt_offset(v: &Value) -> String {
    v.as_i64().map_or("—".to_string(), offset)
}

/// A Markdown table cell: pipes escaped, one line.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

#[cfg(test)]
#[path = "report_tests.rs"]
mod tests;
