//! The plan an operator reads before pressing the button: every step in order with what it will
//! do, where, and what happens when it fails.

use super::action::Action;
use super::resolved::{ResolvedPlaybook, ResolvedStep};
use std::fmt::Write;

/// A human-readable plan of `r`: steps in order with region, action, key settings, timeout,
/// retries, failure policy, compensations, phases/dwell/gates, approvals and the point of no
/// return.
pub fn plan_text(r: &ResolvedPlaybook) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_plan(&mut out, r);
    out
}

fn write_plan(out: &mut String, r: &ResolvedPlaybook) -> std::fmt::Result {
    let short = r.hash.get(..12).unwrap_or(&r.hash);
    writeln!(out, "Plan: {} for service {} (playbook sha256 {short})", r.name, r.service)?;
    if !r.params.is_empty() {
        let ps: Vec<_> = r.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "Parameters: {}", ps.join(", "))?;
    }
    match r.approvals_required {
        0 => writeln!(out, "Approvals: none needed")?,
        n => writeln!(out, "Approvals: {n} approver(s) other than the requester, before the first step")?,
    }
    let mut pre = Vec::new();
    if let Some(t) = &r.preconditions.target_region {
        pre.push(format!("{t} is up"));
    }
    if let Some(l) = r.preconditions.max_lag_seconds {
        pre.push(format!("replication lag ≤ {l}s"));
    }
    pre.push(format!("no other run holds service {}", r.service));
    writeln!(out, "Preconditions: {}", pre.join("; "))?;
    let mut targets = Vec::new();
    if let Some(s) = r.targets.rpo_seconds {
        targets.push(format!("RPO {s}s"));
    }
    if let Some(s) = r.targets.rto_seconds {
        targets.push(format!("RTO {s}s"));
    }
    if !targets.is_empty() {
        writeln!(out, "Targets: {}", targets.join(", "))?;
    }
    if let Some(f) = &r.failover {
        let auto = match f.automatic {
            Some(a) if a.enabled => {
                format!(
                    "automatic when {} is declared down (cooldown {})",
                    f.source,
                    humantime::format_duration(a.cooldown)
                )
            }
            _ => "operator-started only".into(),
        };
        writeln!(
            out,
            "Unplanned failover {} → {}: {auto}; steps @ {} skipped once it is down; loss accepted without \
             consent: {} bytes / {} s",
            f.source, f.target, f.source, f.accept_loss.bytes, f.accept_loss.seconds
        )?;
    }
    writeln!(out)?;

    let ponr = r.point_of_no_return();
    for (i, s) in r.steps.iter().enumerate() {
        if ponr == Some(i) {
            writeln!(
                out,
                "  ---- POINT OF NO RETURN: from {} on the run only moves forward; rollback never undoes \
                 it or anything before it ----",
                s.id
            )?;
        }
        let at = s.region.as_deref().map(|r| format!(" @ {r}")).unwrap_or_else(|| " @ coordinator".into());
        let when = match s.when {
            super::When::Always => "",
            super::When::Planned => " (planned runs only)",
            super::When::Unplanned => " (unplanned runs only)",
        };
        writeln!(out, "{:>3}. {} [{}{at}]{when} {}", i + 1, s.id, s.action, settings(&s.with))?;
        writeln!(out, "       {}", policy(s))?;
        if !s.phases.is_empty() {
            let ph: Vec<_> = s.phases.iter().map(|p| format!("{p}%")).collect();
            let gate = match &s.gate {
                Some(g) => format!(", then gate: {} must be {}", g.region, g.require.as_str()),
                None => ", no gate".into(),
            };
            writeln!(
                out,
                "       phases {}; after each: dwell {}{gate}",
                ph.join(" → "),
                humantime::format_duration(s.dwell)
            )?;
        }
        if let Some(c) = &s.compensate {
            writeln!(out, "       compensation: {} @ {} {}", c.action, c.region, settings(&c.with))?;
        }
    }
    if ponr.is_none() {
        writeln!(out, "\n(no promote_db: every step can be rolled back)")?;
    }
    Ok(())
}

fn policy(s: &ResolvedStep) -> String {
    let mut p = format!("timeout {}", humantime::format_duration(s.timeout));
    if s.retries > 0 {
        let _ = write!(p, ", retries {} (backoff {})", s.retries, humantime::format_duration(s.retry_backoff));
    } else {
        p.push_str(", no retries");
    }
    let _ = write!(p, ", on failure: {}", s.on_failure.as_str());
    if s.action == Action::Approval {
        p.push_str(" (waits for a human)");
    }
    p
}

/// Settings as `key=value` pairs; lists comma-joined, nested settings as `key.sub=value`.
fn settings(v: &serde_json::Value) -> String {
    fn flat(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(o) => {
                for (k, x) in o {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    flat(&key, x, out);
                }
            }
            serde_json::Value::Array(a) => {
                let items: Vec<_> = a.iter().map(scalar).collect();
                out.push(format!("{prefix}={}", items.join(",")));
            }
            other => out.push(format!("{prefix}={}", scalar(other))),
        }
    }
    fn scalar(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
    let mut out = Vec::new();
    flat("", v, &mut out);
    out.join(" ")
}
