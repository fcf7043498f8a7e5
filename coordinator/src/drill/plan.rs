//! What a dry run shows: the drill in the order it will happen, with every setting that decides
//! how far it can go (faults, guardrails, deadline, dead man) spelled out.

use super::parse::human;
use super::schedule::next_fires;
use super::spec::{Drill, FaultKind, MissedPolicy, Probe, Require, Response, ResponseStart};
use std::fmt::Write;

/// A human-readable plan of `d`, with the next 3 fire times after the current wall-clock time.
/// Use [`plan_text_at`] where the time must be injected.
pub fn plan_text(d: &Drill) -> String {
    plan_text_at(d, crate::clock::now_ms())
}

/// A human-readable plan of `d`: schedule (the next 3 fire times after `now_ms`, local and UTC),
/// faults in order, steady state, preflight, guardrails, response, expectations, canary,
/// restore, deadline and dead-man settings.
pub fn plan_text_at(d: &Drill, now_ms: i64) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_plan(&mut out, d, now_ms);
    out
}

fn write_plan(out: &mut String, d: &Drill, now_ms: i64) -> std::fmt::Result {
    writeln!(
        out,
        "Drill: {} for service {} (owner {}), blast radius: {}",
        d.name, d.service, d.owner, d.target_region
    )?;
    writeln!(out, "Hypothesis: {}", d.hypothesis.trim())?;

    match &d.schedule {
        None => writeln!(out, "Schedule: on demand only")?,
        Some(s) => {
            let state = if s.enabled { "" } else { " (DISABLED: kept on file, never fires)" };
            writeln!(out, "Schedule: {} in {}{state}", s.rrule, s.timezone)?;
            if let Some(start) = &s.start {
                writeln!(out, "  from {start} local")?;
            }
            let missed = match s.missed {
                MissedPolicy::Skip => "skipped".to_string(),
                MissedPolicy::RunLate => format!("run late, up to {} after its time", human(s.late_limit_ms)),
            };
            writeln!(out, "  start tolerance {}; a missed occurrence is {missed}", human(s.start_tolerance_ms))?;
            if !s.blackout.is_empty() {
                writeln!(out, "  blackout dates ({}): {}", s.timezone, s.blackout.join(", "))?;
            }
            for f in next_fires(s, now_ms, 3) {
                let black = if f.blackout { "  [blackout: skipped]" } else { "" };
                writeln!(out, "  next: {} ({}){black}", f.local, f.utc)?;
            }
        }
    }
    writeln!(
        out,
        "Deadline: {} (agents revert every fault by themselves then); dead man: an agent reverts after {} without \
         the coordinator",
        human(d.deadline_ms),
        human(d.lost_coordinator_ms)
    )?;
    writeln!(out)?;

    let mut pre = vec!["no other run active for the service".to_string()];
    if let Some(l) = d.preflight.max_lag_seconds {
        pre.push(format!("replication lag ≤ {l}s"));
    }
    writeln!(out, "Preflight: {}", pre.join("; "))?;
    if d.steady_state.is_empty() {
        writeln!(out, "Steady state: none declared")?;
    } else {
        writeln!(out, "Steady state (before injecting and after restoring):")?;
        for p in &d.steady_state {
            writeln!(out, "  - {}", probe(p))?;
        }
    }
    writeln!(out)?;

    writeln!(out, "Faults, in order:")?;
    for (i, f) in d.faults.iter().enumerate() {
        let until = match f.duration_ms {
            Some(ms) => format!("reverted after {}", human(ms)),
            None => "reverted at restore".into(),
        };
        writeln!(out, "  {}. {} @ {}: {}; {until}", i + 1, f.id, f.region, fault(&f.kind))?;
    }
    if d.guardrails.is_empty() {
        writeln!(out, "Guardrails: none")?;
    } else {
        writeln!(out, "Guardrails (a breach aborts and restores at once):")?;
        for g in &d.guardrails {
            let hold = if g.for_ms > 0 { format!(" (breach must last {})", human(g.for_ms)) } else { String::new() };
            writeln!(out, "  - {}: {}{hold}", g.name, probe(&g.probe))?;
        }
    }
    writeln!(out)?;

    let response = match &d.response {
        Response::Playbook { playbook, params, unplanned, start } => {
            let when = match start {
                ResponseStart::OnDown => format!("once {} is declared down", d.target_region),
                ResponseStart::OnDetection => "once the first check fails".into(),
                ResponseStart::Immediately => "right after injection".into(),
            };
            let kind = if *unplanned { "an unplanned failover" } else { "a planned cutover" };
            let ps: Vec<_> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let ps = if ps.is_empty() { String::new() } else { format!(" with {}", ps.join(", ")) };
            format!("run playbook {playbook}{ps} as {kind}, {when}")
        }
        Response::AutomaticFailover => "the service's automatic failover must start a run by itself".into(),
        Response::None { observe_ms } => format!("none: observe the platform riding it out for {}", human(*observe_ms)),
    };
    writeln!(out, "Response: {response}")?;
    let e = &d.expect;
    let mut expect = Vec::new();
    if let Some(ms) = e.detection_ms {
        expect.push(format!("detection ≤ {}", human(ms)));
    }
    if let Some(ms) = e.rto_ms {
        expect.push(format!("RTO ≤ {}", human(ms)));
    }
    match e.rpo_rows {
        Some(0) => expect.push("RPO 0 (no acknowledged canary row lost)".into()),
        Some(rows) => expect.push(format!("RPO ≤ {rows} acknowledged canary row(s) lost")),
        None => {}
    }
    match e.failover {
        Some(true) => expect.push("a successful failover".into()),
        Some(false) => expect.push("no failover".into()),
        None => {}
    }
    for c in &e.integrity {
        expect.push(format!("integrity {}: `{}` = {:?}", c.name, c.query, c.expect));
    }
    if expect.is_empty() {
        writeln!(out, "Expect: nothing graded")?;
    } else {
        writeln!(out, "Expect: {}", expect.join("; "))?;
    }
    match &d.canary {
        None => writeln!(out, "Canary: none (RPO not measured)")?,
        Some(c) => {
            let pw = c.password_env.as_deref().map(|v| format!(", password from ${v}")).unwrap_or_default();
            writeln!(out, "Canary: a row into {} every {} through `{}`{pw}", c.table, human(c.interval_ms), c.dsn)?;
        }
    }
    let r = &d.restore;
    let how = match &r.playbook {
        Some(p) => {
            let ps: Vec<_> = r.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let ps = if ps.is_empty() { String::new() } else { format!(" with {}", ps.join(", ")) };
            format!("revert the faults, then run failback playbook {p}{ps} as a gated cutover")
        }
        None => "revert the faults".into(),
    };
    writeln!(out, "Restore: {how}, within {}", human(r.timeout_ms))?;
    writeln!(out, "Report: compared with the {} earlier run(s)", d.report.trend_runs)?;
    Ok(())
}

fn probe(p: &Probe) -> String {
    let what = match &p.check {
        Some(c) => format!("check {c} in {}", p.region),
        None => format!("region {}", p.region),
    };
    let from = match &p.vantage {
        Some(v) => format!(" as seen from {v}"),
        None => String::new(),
    };
    let require = match p.require {
        Require::Up => "up",
        Require::NotDown => "not down",
    };
    format!("{what}{from} is {require}")
}

fn fault(k: &FaultKind) -> String {
    match k {
        FaultKind::PostgresStop { database } => format!("stop PostgreSQL {database} hard (pg_ctl stop -m immediate)"),
        FaultKind::ProcessKill { process } => format!("kill -9 process {process}"),
        FaultKind::Proxy { proxy, mode, latency_ms, jitter_ms, bytes_per_second, failure_rate } => {
            use super::spec::ProxyMode::*;
            let how = match mode {
                Blackhole => "blackhole (accept, never answer)".to_string(),
                Latency if *jitter_ms > 0 => format!("latency {}ms ± {}ms", latency_ms, jitter_ms),
                Latency => format!("latency {latency_ms}ms"),
                Reset => "reset every connection".into(),
                Bandwidth => format!("bandwidth capped at {bytes_per_second} B/s"),
                Partial => format!("reset {:.0}% of new connections", failure_rate * 100.0),
            };
            format!("proxy {proxy}: {how}")
        }
        FaultKind::Dns { proxy, name, answer } => {
            let a = match answer {
                super::spec::DnsAnswer::Nxdomain => "NXDOMAIN",
                super::spec::DnsAnswer::Servfail => "SERVFAIL",
            };
            format!("DNS proxy {proxy}: answer {a} for {name}")
        }
        FaultKind::Exec { inject, revert } => format!("exec {:?} (revert: {:?})", inject.join(" "), revert.join(" ")),
    }
}
