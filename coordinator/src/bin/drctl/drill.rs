//! `drctl drill ...`: GameDay drills.

use super::{Cli, Fail, ctx, fmt_time, short};
use clap::Subcommand;
use drcut_coordinator::client::Client;
use drcut_proto::v1 as pb;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Duration;

/// The drill subcommands.
#[derive(Subcommand)]
pub enum DrillCmd {
    /// Check drill files locally (syntax, fields, schedule); regions and playbooks on apply.
    Validate {
        /// Drill YAML files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Store drill files in the cluster (their schedules take effect).
    Apply {
        /// Drill YAML files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The drills on file with their next fire times (drill zone and UTC).
    List,
    /// Start a drill now (or --dry-run: preflight and plan, nothing injected).
    Run {
        /// Drill name.
        name: String,
        /// Only the preflight checks and the plan.
        #[arg(long)]
        dry_run: bool,
        /// Follow the drill until it ends, then print the report.
        #[arg(long)]
        wait: bool,
    },
    /// A drill run: state, milestones, faults, canary.
    Status {
        /// Drill run id.
        run: String,
    },
    /// Drill runs, oldest first.
    Runs {
        /// Only this drill's runs.
        #[arg(long)]
        drill: Option<String>,
    },
    /// A finished drill run's report.
    Report {
        /// Drill run id.
        run: String,
        /// `md` (Markdown) or `json`.
        #[arg(long, default_value = "md")]
        format: String,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Stop every active drill: every fault on every agent is reverted at once.
    Halt {
        /// Why.
        #[arg(long, default_value = "drill halt")]
        reason: String,
    },
}

/// Runs one drill subcommand.
pub async fn run(cli: &Cli, client: &Client, cmd: &DrillCmd) -> Result<(), Fail> {
    match cmd {
        DrillCmd::Validate { files } => {
            let mut bad = 0;
            for file in files {
                let name = file.display().to_string();
                let text = std::fs::read_to_string(file).map_err(|e| Fail(2, format!("{name}: {e}")))?;
                match drcut_coordinator::drill::Drill::parse(&name, &text) {
                    Ok((d, _)) => {
                        println!("{name}: ok (drill {} for service {}, target {})", d.name, d.service, d.target_region)
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        bad += 1;
                    }
                }
            }
            if bad > 0 { Err(Fail(2, format!("{bad} invalid drill file(s)"))) } else { Ok(()) }
        }
        DrillCmd::Apply { files } => {
            for file in files {
                let name = file.display().to_string();
                let text = std::fs::read_to_string(file).map_err(|e| Fail(2, format!("{name}: {e}")))?;
                let r = pb::ApplyDrillRequest { ctx: ctx(cli), file_name: name.clone(), text };
                let reply = client
                    .call(|mut c| {
                        let r = r.clone();
                        async move { c.apply_drill(r).await }
                    })
                    .await?;
                if cli.json {
                    let next: Vec<Value> = reply.next.iter().map(fire_json).collect();
                    println!("{}", json!({"ok": true, "name": reply.name, "hash": reply.hash, "next": next}));
                } else {
                    println!("drill {} stored as {}", reply.name, short(&reply.hash));
                    for f in &reply.next {
                        println!("  next: {}", fire_text(f));
                    }
                }
            }
            Ok(())
        }
        DrillCmd::List => {
            let reply = client.call(|mut c| async move { c.list_drills(pb::ListDrillsRequest {}).await }).await?;
            if cli.json {
                let list: Vec<Value> = reply
                    .drills
                    .iter()
                    .map(|d| {
                        json!({"name": d.name, "hash": d.hash, "owner": d.owner, "service": d.service,
                            "target_region": d.target_region, "rrule": d.rrule, "timezone": d.timezone,
                            "enabled": d.enabled, "next": d.next.iter().map(fire_json).collect::<Vec<_>>(),
                            "last_run": d.last_run, "last_outcome": d.last_outcome})
                    })
                    .collect();
                println!("{}", json!({"drills": list}));
                return Ok(());
            }
            for d in &reply.drills {
                println!("{} (owner {}, service {}, target {})", d.name, d.owner, d.service, d.target_region);
                if d.rrule.is_empty() {
                    println!("  schedule: on demand only");
                } else {
                    let on = if d.enabled { "" } else { " (disabled)" };
                    println!("  schedule: {} in {}{on}", d.rrule, d.timezone);
                }
                for f in &d.next {
                    println!("  next: {}", fire_text(f));
                }
                if !d.last_run.is_empty() {
                    println!("  last run: {} ({})", d.last_run, d.last_outcome);
                }
            }
            if reply.drills.is_empty() {
                println!("no drills on file (drctl drill apply FILE)");
            }
            Ok(())
        }
        DrillCmd::Run { name, dry_run, wait } => {
            let r = pb::RunDrillRequest { ctx: ctx(cli), name: name.clone(), dry_run: *dry_run };
            let info = client
                .call(|mut c| {
                    let r = r.clone();
                    async move { c.run_drill(r).await }
                })
                .await?;
            if *dry_run {
                return print_dry_run(cli, &info);
            }
            if !*wait {
                print_status(cli, &info);
                return Ok(());
            }
            let done = follow(cli, client, &info.id).await?;
            if cli.json {
                println!("{}", done.report_json);
            } else {
                println!("{}", done.report_markdown);
            }
            match done.outcome.as_str() {
                "passed" => Ok(()),
                other => Err(Fail(1, format!("drill {} ended {other}: {}", done.id, done.outcome_detail))),
            }
        }
        DrillCmd::Status { run } => {
            let info = get(client, run).await?;
            print_status(cli, &info);
            Ok(())
        }
        DrillCmd::Runs { drill } => {
            let r = pb::ListDrillRunsRequest { drill: drill.clone().unwrap_or_default(), active_only: false };
            let reply = client
                .call(|mut c| {
                    let r = r.clone();
                    async move { c.list_drill_runs(r).await }
                })
                .await?;
            if cli.json {
                let list: Vec<Value> = reply
                    .runs
                    .iter()
                    .map(|d| json!({"id": d.id, "drill": d.drill, "state": d.state, "outcome": d.outcome, "detail": d.outcome_detail}))
                    .collect();
                println!("{}", json!({"drill_runs": list}));
            } else {
                println!("{:<52} {:<10} {:<9} DETAIL", "ID", "STATE", "OUTCOME");
                for d in &reply.runs {
                    println!("{:<52} {:<10} {:<9} {}", d.id, d.state, d.outcome, d.outcome_detail);
                }
            }
            Ok(())
        }
        DrillCmd::Report { run, format, out } => {
            let info = get(client, run).await?;
            if info.report_json.is_empty() {
                return Err(Fail(1, format!("drill run {run} has no report yet (state {})", info.state)));
            }
            let body = match format.as_str() {
                "md" | "markdown" => info.report_markdown,
                "json" => info.report_json,
                other => return Err(Fail(2, format!("--format: {other:?} is not md or json"))),
            };
            match out {
                Some(path) => {
                    std::fs::write(path, body).map_err(|e| Fail(1, format!("{}: {e}", path.display())))?;
                    println!("report of {run} written to {}", path.display());
                }
                None => println!("{body}"),
            }
            Ok(())
        }
        DrillCmd::Halt { reason } => {
            let r = pb::HaltDrillsRequest { ctx: ctx(cli), reason: reason.clone() };
            let reply = client
                .call(|mut c| {
                    let r = r.clone();
                    async move { c.halt_drills(r).await }
                })
                .await?;
            if cli.json {
                println!("{}", json!({"ok": true, "halted": reply.drill_runs}));
            } else {
                println!(
                    "drill halt committed: {} active drill run(s) stopping; every agent reverts every fault",
                    reply.drill_runs.len()
                );
            }
            Ok(())
        }
    }
}

async fn get(client: &Client, id: &str) -> Result<pb::DrillRunInfo, Fail> {
    let r = pb::GetDrillRunRequest { id: id.to_string() };
    Ok(client
        .call(|mut c| {
            let r = r.clone();
            async move { c.get_drill_run(r).await }
        })
        .await?)
}

/// Polls the drill run, printing each new timeline entry, until it ends.
async fn follow(cli: &Cli, client: &Client, id: &str) -> Result<pb::DrillRunInfo, Fail> {
    let mut printed = std::collections::BTreeSet::new();
    loop {
        let info = get(client, id).await?;
        let rec: Value = serde_json::from_str(&info.record_json).unwrap_or(Value::Null);
        // Events and milestones, each printed once, in time order.
        let mut lines: Vec<(i64, String)> = rec["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| (e["at_ms"].as_i64().unwrap_or(0), e["what"].as_str().unwrap_or("").to_string()))
            .collect();
        if let Some(m) = rec["milestones"].as_object() {
            lines.extend(
                m.iter().map(|(k, v)| (v.as_i64().unwrap_or(0), format!("milestone: {}", k.replace('_', " ")))),
            );
        }
        lines.sort();
        for line in lines {
            if printed.insert(line.clone()) && !cli.json {
                println!("{}  {}", fmt_time(line.0), line.1);
            }
        }
        if info.state == "done" {
            return Ok(info);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn fire_json(f: &pb::DrillFire) -> Value {
    json!({"at_unix_ms": f.at_unix_ms, "local": f.local, "utc": f.utc, "blackout": f.blackout})
}

fn fire_text(f: &pb::DrillFire) -> String {
    let b = if f.blackout { "  (blackout: will be skipped)" } else { "" };
    format!("{}  =  {}{b}", f.local, f.utc)
}

fn print_dry_run(cli: &Cli, info: &pb::DrillRunInfo) -> Result<(), Fail> {
    let ok = info.preflight.iter().all(|l| l.ok);
    if cli.json {
        let pre: Vec<Value> =
            info.preflight.iter().map(|l| json!({"name": l.name, "ok": l.ok, "detail": l.detail})).collect();
        println!("{}", json!({"drill": info.drill, "would_start": ok, "preflight": pre, "plan": info.plan_text}));
    } else {
        println!("{}", info.plan_text);
        println!("Preflight (now):");
        for l in &info.preflight {
            println!("  [{}] {}: {}", if l.ok { "ok" } else { "FAIL" }, l.name, l.detail);
        }
        println!("{}", info.outcome_detail);
    }
    if ok { Ok(()) } else { Err(Fail(1, "preflight refused".into())) }
}

fn print_status(cli: &Cli, info: &pb::DrillRunInfo) {
    if cli.json {
        println!("{}", if info.record_json.is_empty() { "{}" } else { &info.record_json });
        return;
    }
    let rec: Value = serde_json::from_str(&info.record_json).unwrap_or(Value::Null);
    println!("drill run {} ({}): {}", info.id, info.drill, info.state);
    if !info.outcome.is_empty() {
        println!("outcome: {} — {}", info.outcome, info.outcome_detail);
    }
    for l in &info.preflight {
        println!("  preflight [{}] {}: {}", if l.ok { "ok" } else { "FAIL" }, l.name, l.detail);
    }
    if let Some(m) = rec["milestones"].as_object() {
        let mut ms: Vec<(&String, i64)> = m.iter().map(|(k, v)| (k, v.as_i64().unwrap_or(0))).collect();
        ms.sort_by_key(|x| x.1);
        let t0 = rec["milestones"]["fault_injected"].as_i64();
        for (k, at) in ms {
            let off = t0.map(|t| format!(" (T{:+.2} s)", (at - t) as f64 / 1000.0)).unwrap_or_default();
            println!("  {:<22} {}{off}", k, fmt_time(at));
        }
    }
    if let Some(f) = rec["faults"].as_object() {
        for (id, s) in f {
            let state = match (s["injected_ms"].as_i64(), s["reverted_ms"].as_i64()) {
                (_, Some(r)) if r > 0 => "reverted",
                (Some(i), _) if i > 0 => "ACTIVE",
                _ if s["failed"].as_bool() == Some(true) => "failed",
                _ => "pending",
            };
            println!("  fault {id}: {state} ({})", s["detail"].as_str().unwrap_or(""));
        }
    }
    let acked: u64 = serde_json::from_value::<drcut_coordinator::drill::CanaryRecord>(rec["canary"].clone())
        .map_or(0, |c| c.acked_count());
    if acked > 0 {
        let missing = rec["canary"]["missing"]
            .as_array()
            .map(|m| m.len().to_string())
            .unwrap_or_else(|| "not checked yet".into());
        println!("  canary: {acked} acknowledged writes, missing after the cutover: {missing}");
    }
    if let Some(r) = rec["response_run"].as_str() {
        println!("  response run: {r}");
    }
    if let Some(r) = rec["restore_run"].as_str() {
        println!("  restore run: {r}");
    }
}
