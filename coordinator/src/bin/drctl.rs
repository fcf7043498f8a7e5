//! `drctl`: the operator's CLI for the drcut coordinator cluster.

use clap::{Parser, Subcommand};
use drcut_coordinator::audit::{AuditEntry, ChainVerifier};
use drcut_coordinator::client::{Bearer, Client};
use drcut_proto::v1 as pb;
use serde_json::{Value, json};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[path = "drctl/drill.rs"]
mod drill;
#[path = "drctl/token.rs"]
mod token;

/// Operate a drcut coordinator cluster.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Coordinator gRPC addresses (host:port), comma-separated; the first live one is used and
    /// the leader is followed.
    #[arg(long, short, env = "DRCUT_ENDPOINT", value_delimiter = ',', default_value = "127.0.0.1:7001", global = true)]
    endpoint: Vec<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// Principal recorded in the audit chain in open mode (defaults to $USER@host); with
    /// authentication the cluster records the token's principal instead.
    #[arg(long, env = "DRCUT_ACTOR", global = true)]
    actor: Option<String>,
    /// API token (`drctl token new` makes one). Prefer DRCUT_TOKEN or --token-file: a flag is
    /// visible to other users in the process list.
    #[arg(long, env = "DRCUT_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// A file whose first line is the API token.
    #[arg(long, env = "DRCUT_TOKEN_FILE", global = true)]
    token_file: Option<std::path::PathBuf>,
    /// Idempotency key for a write; retrying with the same key applies the write once.
    #[arg(long, global = true)]
    request_id: Option<String>,
    /// Per-call timeout in seconds.
    #[arg(long, default_value_t = 15, global = true)]
    timeout: u64,
    /// The cluster CA (PEM): speak TLS and verify the nodes against it.
    #[arg(long, env = "DRCUT_CA", global = true)]
    ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) presented to the nodes; needs --ca and --key.
    #[arg(long, env = "DRCUT_CERT", global = true, requires = "key")]
    cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, env = "DRCUT_KEY", global = true, requires = "cert")]
    key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Leader, term, commit index, members with their state and lag, regions.
    Status {
        /// Confirm with a quorum before answering.
        #[arg(long)]
        linearizable: bool,
    },
    /// Change the coordinator cluster's membership.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Regions of the protected platform.
    #[command(subcommand)]
    Region(RegionCmd),
    /// The hash-chained audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Cutover playbooks.
    #[command(subcommand)]
    Playbook(PlaybookCmd),
    /// Print exactly what a cutover would do and whether it could start now. Changes nothing.
    Plan {
        /// Playbook name or hash.
        playbook: String,
        /// NAME=VALUE, repeatable.
        #[arg(long = "param")]
        params: Vec<String>,
        /// Plan an unplanned failover (the source may be gone).
        #[arg(long)]
        unplanned: bool,
    },
    /// Start cutovers.
    #[command(subcommand)]
    Cutover(CutoverCmd),
    /// Inspect and steer runs.
    #[command(subcommand)]
    Run(RunCmd),
    /// Approve a run before its first step or at the `approval` step it waits at (the
    /// requester cannot approve their own), or consent to the loss an unplanned promotion
    /// causes (--accept-loss, naming it as the run states it).
    Approve {
        /// Run id.
        run: String,
        /// The acknowledged WAL bytes the run says it would lose, or "unknown".
        #[arg(long)]
        accept_loss: Option<String>,
    },
    /// Automatic failover policy.
    #[command(subcommand)]
    Failover(FailoverCmd),
    /// Pause every active run at its next safe point.
    Halt {
        /// Why.
        #[arg(long, default_value = "halt")]
        reason: String,
    },
    /// GameDay drills: schedules, runs, reports, halt.
    #[command(subcommand)]
    Drill(drill::DrillCmd),
    /// Region health: the regions x checks x vantage board, or a live stream of transitions.
    Health {
        #[command(subcommand)]
        cmd: Option<HealthCmd>,
    },
    /// API tokens: make one for a principal, or hash one (local; contacts no cluster).
    #[command(subcommand)]
    Token(token::TokenCmd),
}

#[derive(Subcommand)]
enum PlaybookCmd {
    /// Check a playbook file locally (syntax, fields, order); regions are checked on apply.
    Validate {
        /// The YAML file.
        file: std::path::PathBuf,
    },
    /// Validate against the cluster and store it (by content hash).
    Apply {
        /// The YAML file.
        file: std::path::PathBuf,
    },
    /// Stored playbooks.
    List,
}

#[derive(Subcommand)]
enum FailoverCmd {
    /// Re-arm automatic failover of a service inside its cooldown (after a suppressed one).
    Ack {
        /// The service.
        service: String,
        /// What was checked (recorded in the audit chain).
        #[arg(long)]
        note: String,
    },
}

#[derive(Subcommand)]
enum CutoverCmd {
    /// Start a cutover; --request-id is its idempotency key.
    Start {
        /// Playbook name or hash.
        playbook: String,
        /// NAME=VALUE, repeatable.
        #[arg(long = "param")]
        params: Vec<String>,
        /// Why (recorded in the audit chain).
        #[arg(long)]
        reason: String,
        /// Follow the run until it ends; exit 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
        /// An unplanned failover: source-side steps are skipped once the source is confirmed
        /// down, and the promotion waits for fencing and for consent to the measured loss.
        #[arg(long)]
        unplanned: bool,
    },
}

#[derive(Subcommand)]
enum RunCmd {
    /// The run's record: steps, attempts, timings, measurements.
    Show {
        /// Run id.
        run: String,
    },
    /// Runs.
    List {
        /// Only active runs.
        #[arg(long)]
        active: bool,
    },
    /// Follow a run until it ends.
    Watch {
        /// Run id.
        run: String,
    },
    /// Pause at the next safe point.
    Pause {
        /// Run id.
        run: String,
        /// Why.
        #[arg(long, default_value = "operator pause")]
        reason: String,
    },
    /// Resume a paused run.
    Resume {
        /// Run id.
        run: String,
    },
    /// Promote without fencing confirmation: the old primary may still take writes. Name the
    /// risk you take (recorded in the run and the audit chain).
    Override {
        /// Run id.
        run: String,
        /// The risk, in words.
        #[arg(long)]
        risk: String,
    },
    /// Stop a run where it is.
    Abort {
        /// Run id.
        run: String,
        /// Why.
        #[arg(long, default_value = "operator abort")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum HealthCmd {
    /// Stream health transitions as they are committed; reconnects and resumes by revision.
    Watch {
        /// First revision to show (0 = from now on).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Stop after this many events (0 = run until interrupted).
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Add a node as a learner (receives the log, does not vote).
    AddLearner {
        /// New node id (never reuse one).
        #[arg(long)]
        id: u64,
        /// The node's gRPC host:port.
        #[arg(long)]
        addr: String,
    },
    /// Promote a learner to voter.
    Promote {
        /// The learner's id.
        #[arg(long)]
        id: u64,
    },
    /// Remove a node from the cluster.
    Remove {
        /// The node's id.
        #[arg(long)]
        id: u64,
    },
}

#[derive(Subcommand)]
enum RegionCmd {
    /// Register a region.
    Add {
        /// Name, e.g. eu-west.
        name: String,
        /// Human name.
        #[arg(long, default_value = "")]
        display_name: String,
        /// SERVICE=primary|standby, repeatable.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Vantage points that must agree before the region is declared down (0 = majority).
        #[arg(long, default_value_t = 0)]
        down_quorum: u32,
    },
    /// List regions.
    List,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Show audit entries.
    List {
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Maximum entries.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Recompute the hash chain here; exit 1 on any break. With FILE, an exported chain is
    /// checked offline (no cluster needed).
    Verify {
        /// Read the given node's own copy (no leader round trip), e.g. to check one replica.
        #[arg(long)]
        local: bool,
        /// A file written by `drctl audit export`.
        file: Option<std::path::PathBuf>,
    },
    /// Write the chain (or a range of it) as JSON Lines, one entry per line with its hashes,
    /// for an auditor or WORM storage; `drctl audit verify FILE` checks it offline.
    Export {
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last sequence number (default: the head).
        #[arg(long)]
        to: Option<u64>,
        /// Write here instead of standard output (refused if it exists: exports are immutable).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

/// A failure with its exit code: 1 for operational failures, 2 for usage errors.
struct Fail(u8, String);

impl From<tonic::Status> for Fail {
    fn from(s: tonic::Status) -> Self {
        let code = if s.code() == tonic::Code::InvalidArgument { 2 } else { 1 };
        Fail(code, format!("{:?}: {}", s.code(), s.message()))
    }
}

/// `drctl status | head`: printing into a closed pipe makes `println!` panic (Rust ignores
/// SIGPIPE). End quietly there, as any Unix tool does, and keep the default report for every
/// other panic. (Restoring SIGPIPE's default action instead would kill drctl whenever a server
/// closes a connection it is writing to, before it can say why.)
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    quiet_on_closed_stdout();
    drcut_coordinator::tls::install_crypto_provider();
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, mut msg)) => {
            // A TLS-only node drops a plain-text client's connection: an h2 or transport error.
            if cli.ca.is_none() && (msg.contains("h2 protocol error") || msg.contains("transport error")) {
                msg.push_str(" (if the node is TLS-only, pass --ca)");
            }
            if cli.json {
                println!("{}", json!({"ok": false, "error": msg}));
            }
            eprintln!("drctl: {msg}");
            ExitCode::from(code)
        }
    }
}

/// The login name: $USER, $LOGNAME, or the passwd entry of this process's uid.
fn login_name() -> String {
    if let Some(u) = ["USER", "LOGNAME"].iter().find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty())) {
        return u;
    }
    let uid = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
    });
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    uid.and_then(|uid| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid).then(|| f[0].to_string())
        })
    })
    .unwrap_or_else(|| "unknown".into())
}

fn actor(cli: &Cli) -> String {
    cli.actor.clone().unwrap_or_else(|| {
        let user = login_name();
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        if host.is_empty() { user } else { format!("{user}@{host}") }
    })
}

fn ctx(cli: &Cli) -> Option<pb::WriteContext> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let request_id = cli.request_id.clone().unwrap_or_else(|| format!("drctl-{}-{nanos}", std::process::id()));
    Some(pb::WriteContext { actor: actor(cli), request_id })
}

async fn run(cli: &Cli) -> Result<(), Fail> {
    if let Cmd::Token(t) = &cli.cmd {
        return token::run(cli, t);
    }
    let tok = token::resolve(cli.token.as_deref(), cli.token_file.as_ref())?;
    let bearer = Bearer::new(tok.as_deref()).map_err(|e| Fail(2, e))?;
    let tls = match (&cli.ca, &cli.cert, &cli.key) {
        (None, None, None) => None,
        (None, _, _) => return Err(Fail(2, "--cert/--key need --ca (the cluster CA) too".into())),
        (Some(ca), cert, key) => Some(
            drcut_coordinator::tls::client_config(ca, cert.as_deref().zip(key.as_deref())).map_err(|m| Fail(2, m))?,
        ),
    };
    let client = Client::new(cli.endpoint.clone(), Duration::from_secs(cli.timeout)).with_bearer(bearer).with_tls(tls);
    match &cli.cmd {
        Cmd::Token(_) => unreachable!("handled above"),
        Cmd::Status { linearizable } => status(cli, &client, *linearizable).await,
        Cmd::Drill(d) => drill::run(cli, &client, d).await,
        Cmd::Cluster(c) => {
            let reply = match c {
                ClusterCmd::AddLearner { id, addr } => {
                    let r = pb::AddLearnerRequest { ctx: ctx(cli), node_id: *id, addr: addr.clone() };
                    client
                        .call(|mut c| {
                            let r = r.clone();
                            async move { c.add_learner(r).await }
                        })
                        .await?
                }
                ClusterCmd::Promote { id } => {
                    let r = pb::PromoteVoterRequest { ctx: ctx(cli), node_id: *id };
                    client
                        .call(|mut c| {
                            let r = r.clone();
                            async move { c.promote_voter(r).await }
                        })
                        .await?
                }
                ClusterCmd::Remove { id } => {
                    let r = pb::RemoveNodeRequest { ctx: ctx(cli), node_id: *id };
                    client
                        .call(|mut c| {
                            let r = r.clone();
                            async move { c.remove_node(r).await }
                        })
                        .await?
                }
            };
            if cli.json {
                let members: Vec<Value> = reply.members.iter().map(member_json).collect();
                println!("{}", json!({"ok": true, "log_index": reply.log_index, "members": members}));
            } else {
                println!("membership changed at log index {}", reply.log_index);
                print_members(&reply.members, &[]);
            }
            Ok(())
        }
        Cmd::Playbook(PlaybookCmd::Validate { file }) => {
            let text = std::fs::read_to_string(file).map_err(|e| Fail(2, format!("{}: {e}", file.display())))?;
            let pb = drcut_coordinator::playbook::Playbook::parse(&file.display().to_string(), &text)
                .map_err(|e| Fail(2, e.to_string()))?;
            if cli.json {
                println!("{}", json!({"ok": true, "name": pb.name, "service": pb.service, "hash": pb.hash}));
            } else {
                println!(
                    "{}: ok (playbook {} for service {}, hash {})",
                    file.display(),
                    pb.name,
                    pb.service,
                    short(&pb.hash)
                );
            }
            Ok(())
        }
        Cmd::Playbook(PlaybookCmd::Apply { file }) => {
            let text = std::fs::read_to_string(file).map_err(|e| Fail(2, format!("{}: {e}", file.display())))?;
            let r = pb::ApplyPlaybookRequest { ctx: ctx(cli), file: file.display().to_string(), text };
            let reply = client
                .call(|mut c| {
                    let r = r.clone();
                    async move { c.apply_playbook(r).await }
                })
                .await?;
            if cli.json {
                println!(
                    "{}",
                    json!({"ok": true, "name": reply.name, "hash": reply.hash, "log_index": reply.log_index})
                );
            } else {
                println!("playbook {} stored as {}", reply.name, reply.hash);
            }
            Ok(())
        }
        Cmd::Playbook(PlaybookCmd::List) => {
            let reply = client.call(|mut c| async move { c.list_playbooks(pb::ListPlaybooksRequest {}).await }).await?;
            if cli.json {
                let list: Vec<Value> = reply.playbooks.iter().map(|p| json!({"name": p.name, "hash": p.hash, "service": p.service, "applied_unix_ms": p.applied_unix_ms, "applied_by": p.applied_by})).collect();
                println!("{}", json!({"playbooks": list}));
            } else {
                println!("{:<28} {:<10} {:<18} {:<24} BY", "NAME", "SERVICE", "HASH", "APPLIED (UTC)");
                for p in &reply.playbooks {
                    println!(
                        "{:<28} {:<10} {:<18} {:<24} {}",
                        p.name,
                        p.service,
                        short(&p.hash),
                        fmt_time(p.applied_unix_ms),
                        p.applied_by
                    );
                }
            }
            Ok(())
        }
        Cmd::Plan { playbook, params, unplanned } => {
            let r = pb::StartCutoverRequest {
                ctx: ctx(cli),
                playbook: playbook.clone(),
                params: parse_params(params)?,
                reason: String::new(),
                unplanned: *unplanned,
            };
            let reply = client
                .call(|mut c| {
                    let r = r.clone();
                    async move { c.plan_cutover(r).await }
                })
                .await?;
            if cli.json {
                println!(
                    "{}",
                    json!({"plan": reply.plan_text, "blockers": reply.blockers, "playbook_hash": reply.playbook_hash})
                );
            } else {
                println!("{}", reply.plan_text);
                if reply.blockers.is_empty() {
                    println!("preconditions: all hold now");
                } else {
                    for b in &reply.blockers {
                        println!("BLOCKED: {b}");
                    }
                }
            }
            Ok(())
        }
        Cmd::Cutover(CutoverCmd::Start { playbook, params, reason, wait, unplanned }) => {
            let r = pb::StartCutoverRequest {
                ctx: ctx(cli),
                playbook: playbook.clone(),
                params: parse_params(params)?,
                reason: reason.clone(),
                unplanned: *unplanned,
            };
            let info = client
                .call(|mut c| {
                    let r = r.clone();
                    async move { c.start_cutover(r).await }
                })
                .await?;
            if !*wait {
                print_run(cli, &info);
                return Ok(());
            }
            watch_run(cli, &client, &info.run_id).await
        }
        Cmd::Run(RunCmd::Show { run }) => {
            let r = pb::GetRunRequest { run_id: run.clone() };
            let info = client
                .call(|mut c| {
                    let r = r.clone();
                    async move { c.get_run(r).await }
                })
                .await?;
            print_run(cli, &info);
            Ok(())
        }
        Cmd::Run(RunCmd::List { active }) => {
            let r = pb::ListRunsRequest { active_only: *active };
            let reply = client.call(|mut c| async move { c.list_runs(r).await }).await?;
            if cli.json {
                let runs: Vec<Value> = reply.runs.iter().map(run_json).collect();
                println!("{}", json!({"runs": runs}));
            } else {
                println!(
                    "{:<26} {:<10} {:<18} {:<14} {:<24} REQUESTER",
                    "RUN", "SERVICE", "STATE", "PLAYBOOK", "CREATED (UTC)"
                );
                for i in &reply.runs {
                    println!(
                        "{:<26} {:<10} {:<18} {:<14} {:<24} {}",
                        i.run_id,
                        i.service,
                        i.state,
                        i.playbook,
                        fmt_time(i.created_unix_ms),
                        i.requester
                    );
                }
            }
            Ok(())
        }
        Cmd::Run(RunCmd::Watch { run }) => watch_run(cli, &client, run).await,
        Cmd::Run(RunCmd::Pause { run, reason }) => run_action(cli, &client, RunAct::Pause, run, reason).await,
        Cmd::Run(RunCmd::Resume { run }) => run_action(cli, &client, RunAct::Resume, run, "").await,
        Cmd::Run(RunCmd::Abort { run, reason }) => run_action(cli, &client, RunAct::Abort, run, reason).await,
        Cmd::Approve { run, accept_loss } => {
            let act = match accept_loss {
                Some(l) => RunAct::Consent(l.clone()),
                None => RunAct::Approve,
            };
            run_action(cli, &client, act, run, "").await
        }
        Cmd::Run(RunCmd::Override { run, risk }) => {
            let r = pb::OverrideFencingRequest { ctx: ctx(cli), run_id: run.clone(), risk: risk.clone() };
            let info = client
                .call(|mut c| {
                    let r = r.clone();
                    async move { c.override_fencing(r).await }
                })
                .await?;
            print_run(cli, &info);
            Ok(())
        }
        Cmd::Failover(FailoverCmd::Ack { service, note }) => {
            let r = pb::AckFailoverRequest { ctx: ctx(cli), service: service.clone(), note: note.clone() };
            let reply = client
                .call(|mut c| {
                    let r = r.clone();
                    async move { c.ack_failover(r).await }
                })
                .await?;
            if cli.json {
                println!("{}", reply.state_json);
            } else {
                println!("automatic failover of {} re-armed", reply.service);
            }
            Ok(())
        }
        Cmd::Halt { reason } => {
            let r = pb::RunActionRequest {
                ctx: ctx(cli),
                run_id: String::new(),
                reason: reason.clone(),
                accept_loss: String::new(),
            };
            let reply = client
                .call(|mut c| {
                    let r = r.clone();
                    async move { c.halt(r).await }
                })
                .await?;
            if cli.json {
                let runs: Vec<Value> = reply.runs.iter().map(run_json).collect();
                println!("{}", json!({"ok": true, "paused": runs}));
            } else {
                println!("halted: {} run(s) pausing at their next safe point", reply.runs.len());
            }
            Ok(())
        }
        Cmd::Health { cmd: None } => {
            let board = client.call(|mut c| async move { c.get_health(pb::GetHealthRequest {}).await }).await?;
            if cli.json {
                println!("{}", board_json(&board));
            } else {
                print_board(&board);
            }
            Ok(())
        }
        Cmd::Health { cmd: Some(HealthCmd::Watch { from, count }) } => watch_health(cli, &client, *from, *count).await,
        Cmd::Region(RegionCmd::Add { name, display_name, roles, down_quorum }) => {
            let mut parsed = Vec::new();
            for r in roles {
                let (svc, role) = r
                    .split_once('=')
                    .ok_or_else(|| Fail(2, format!("--role {r:?}: expected SERVICE=primary|standby")))?;
                let role = match role {
                    "primary" => pb::RegionRole::Primary,
                    "standby" => pb::RegionRole::Standby,
                    other => {
                        return Err(Fail(2, format!("--role {r:?}: role {other:?} is not primary or standby")));
                    }
                };
                parsed.push(pb::ServiceRole { service: svc.to_string(), role: role as i32 });
            }
            let region = pb::Region {
                name: name.clone(),
                display_name: display_name.clone(),
                roles: parsed,
                down_quorum: *down_quorum,
            };
            let r = pb::AddRegionRequest { ctx: ctx(cli), region: Some(region) };
            let reply = client
                .call(|mut c| {
                    let r = r.clone();
                    async move { c.add_region(r).await }
                })
                .await?;
            if cli.json {
                println!(
                    "{}",
                    json!({"ok": true, "log_index": reply.log_index, "region": reply.region.as_ref().map(region_json)})
                );
            } else {
                println!("region {name} added (log index {})", reply.log_index);
            }
            Ok(())
        }
        Cmd::Region(RegionCmd::List) => {
            let r = pb::ListRegionsRequest { consistency: pb::ReadConsistency::Linearizable as i32 };
            let reply = client.call(|mut c| async move { c.list_regions(r).await }).await?;
            if cli.json {
                let regions: Vec<Value> = reply.regions.iter().map(region_json).collect();
                println!("{}", json!({"regions": regions, "applied_index": reply.applied_index}));
            } else {
                print_regions(&reply.regions);
            }
            Ok(())
        }
        Cmd::Audit(AuditCmd::List { from, limit }) => {
            let r = pb::ListAuditRequest {
                from_seq: *from,
                limit: *limit,
                consistency: pb::ReadConsistency::Linearizable as i32,
            };
            let reply = client.call(|mut c| async move { c.list_audit(r).await }).await?;
            if cli.json {
                let entries: Vec<Value> = reply.entries.iter().map(audit_json).collect();
                println!("{}", json!({"entries": entries, "total": reply.total, "head_hash": reply.head_hash}));
            } else {
                println!("{:<6} {:<24} {:<20} {:<22} DETAILS", "SEQ", "TIME (UTC)", "ACTOR", "ACTION");
                for e in &reply.entries {
                    println!(
                        "{:<6} {:<24} {:<20} {:<22} {}",
                        e.seq,
                        fmt_time(e.time_unix_ms),
                        e.actor,
                        e.action,
                        e.details_json
                    );
                }
                println!("{} of {} entries; head {}", reply.entries.len(), reply.total, short(&reply.head_hash));
            }
            Ok(())
        }
        Cmd::Audit(AuditCmd::Verify { file: Some(file), .. }) => verify_file(cli, file),
        Cmd::Audit(AuditCmd::Verify { local, file: None }) => verify(cli, client, *local).await,
        Cmd::Audit(AuditCmd::Export { from, to, out }) => export(cli, &client, *from, *to, out.as_deref()).await,
    }
}

fn entry_from_pb(e: &pb::AuditEntry) -> Result<AuditEntry, Fail> {
    let details: Value = serde_json::from_str(&e.details_json)
        .map_err(|err| Fail(1, format!("audit chain broken at seq {}: details are not JSON: {err}", e.seq)))?;
    Ok(AuditEntry {
        seq: e.seq,
        time_unix_ms: e.time_unix_ms,
        actor: e.actor.clone(),
        action: e.action.clone(),
        details,
        prev_hash: e.prev_hash.clone(),
        hash: e.hash.clone(),
        log_index: e.log_index,
    })
}

/// Exports entries `from..=to` (linearizable reads), verifying them on the way: a broken chain
/// is never written out as if it were sound.
async fn export(
    cli: &Cli,
    client: &Client,
    from: u64,
    to: Option<u64>,
    out: Option<&std::path::Path>,
) -> Result<(), Fail> {
    use std::io::Write;
    if from == 0 || to.is_some_and(|t| t < from) {
        return Err(Fail(2, format!("--from {from} --to {to:?}: not a range of sequence numbers (they start at 1)")));
    }
    let mut sink: Box<dyn Write> = match out {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p)
                .map_err(|e| Fail(1, format!("{}: {e}", p.display())))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut v: Option<ChainVerifier> = None;
    let mut next = from;
    let mut written = 0u64;
    loop {
        let limit = to.map_or(1000, |t| (t + 1 - next).min(1000)) as u32;
        if limit == 0 {
            break;
        }
        let r = pb::ListAuditRequest { from_seq: next, limit, consistency: pb::ReadConsistency::Linearizable as i32 };
        let page = client.call(|mut c| async move { c.list_audit(r).await }).await?;
        for e in &page.entries {
            let entry = entry_from_pb(e)?;
            let verifier = v.get_or_insert_with(|| ChainVerifier::resume(entry.seq, &entry.prev_hash));
            verifier.push(&entry).map_err(|err| Fail(1, err.to_string()))?;
            let line = serde_json::to_string(&entry).map_err(|e| Fail(1, e.to_string()))?;
            writeln!(sink, "{line}").map_err(|e| Fail(1, format!("writing the export: {e}")))?;
            written += 1;
        }
        next += page.entries.len() as u64;
        if page.entries.is_empty() || next > page.total || to.is_some_and(|t| next > t) {
            break;
        }
    }
    sink.flush().map_err(|e| Fail(1, format!("writing the export: {e}")))?;
    if written == 0 {
        return Err(Fail(1, format!("no audit entries from seq {from}")));
    }
    let head = v.map(|v| v.summary().head).unwrap_or_default();
    if let Some(p) = out {
        let msg = format!("exported {written} entries (seq {from}..{}) to {}, head {head}", next - 1, p.display());
        if cli.json {
            println!("{}", json!({"ok": true, "entries": written, "from": from, "to": next - 1, "head": head}));
        } else {
            println!("{msg}");
        }
    }
    Ok(())
}

/// Verifies an exported chain offline: every entry's hash, every link, no gap. An export that
/// starts at seq 1 is anchored at the genesis; a later range at its first entry's `prev_hash`
/// (compare it with the previous export's head).
fn verify_file(cli: &Cli, file: &std::path::Path) -> Result<(), Fail> {
    use std::io::BufRead;
    let name = file.display().to_string();
    let f = std::fs::File::open(file).map_err(|e| Fail(2, format!("{name}: {e}")))?;
    let mut v: Option<ChainVerifier> = None;
    let (mut first, mut anchor) = (0u64, String::new());
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| Fail(1, format!("{name}:{}: {e}", i + 1)))?;
        if line.trim().is_empty() {
            continue;
        }
        let e: AuditEntry = serde_json::from_str(&line)
            .map_err(|err| Fail(1, format!("{name}:{}: not an audit entry: {err}", i + 1)))?;
        let verifier = v.get_or_insert_with(|| {
            first = e.seq;
            anchor = e.prev_hash.clone();
            if e.seq == 1 { ChainVerifier::new() } else { ChainVerifier::resume(e.seq, &e.prev_hash) }
        });
        verifier.push(&e).map_err(|err| Fail(1, format!("{name}:{}: {err}", i + 1)))?;
    }
    let s = v.ok_or_else(|| Fail(1, format!("{name}: no audit entries")))?.summary();
    let last = first + s.entries - 1;
    let anchored =
        if first == 1 { "the genesis".to_string() } else { format!("prev_hash {anchor} of seq {}", first - 1) };
    if cli.json {
        println!(
            "{}",
            json!({"ok": true, "entries": s.entries, "from": first, "to": last, "head": s.head, "anchor": anchor})
        );
    } else {
        println!(
            "{name}: chain intact: {} entries (seq {first}..{last}), anchored at {anchored}, head {}",
            s.entries, s.head
        );
    }
    Ok(())
}

async fn verify(cli: &Cli, client: Client, local: bool) -> Result<(), Fail> {
    let (client, consistency) =
        if local { (client.pinned(), pb::ReadConsistency::Local) } else { (client, pb::ReadConsistency::Linearizable) };
    let mut v = ChainVerifier::new();
    let mut from = 1;
    let (total, head) = loop {
        let r = pb::ListAuditRequest { from_seq: from, limit: 1000, consistency: consistency as i32 };
        let page = client.call(|mut c| async move { c.list_audit(r).await }).await?;
        for e in &page.entries {
            v.push(&entry_from_pb(e)?).map_err(|err| Fail(1, err.to_string()))?;
        }
        from += page.entries.len() as u64;
        if page.entries.is_empty() || from > page.total {
            break (page.total, page.head_hash);
        }
    };
    let s = v.summary();
    if s.entries != total {
        return Err(Fail(
            1,
            format!(
                "audit chain broken at seq {}: the node reports {total} entries but served {}",
                s.entries + 1,
                s.entries
            ),
        ));
    }
    if s.head != head {
        return Err(Fail(
            1,
            format!(
                "audit chain broken at seq {total}: recomputed head {} differs from the node's head {}",
                s.head, head
            ),
        ));
    }
    if cli.json {
        println!("{}", json!({"ok": true, "entries": s.entries, "head": s.head}));
    } else {
        println!("audit chain intact: {} entries, head {}", s.entries, s.head);
    }
    Ok(())
}

async fn status(cli: &Cli, client: &Client, linearizable: bool) -> Result<(), Fail> {
    let consistency = if linearizable { pb::ReadConsistency::Linearizable } else { pb::ReadConsistency::Local } as i32;
    let st = client.call(|mut c| async move { c.get_status(pb::GetStatusRequest { consistency }).await }).await?;
    // Replication progress is only known to the leader; ask it when we reached a follower.
    let st = if st.state != "Leader" && !st.leader_addr.is_empty() {
        client.probe_status(&st.leader_addr, Duration::from_secs(2)).await.unwrap_or(st)
    } else {
        st
    };
    let probes =
        futures::future::join_all(st.members.iter().map(|m| client.probe_status(&m.addr, Duration::from_secs(1))))
            .await;
    if cli.json {
        let members: Vec<Value> = st
            .members
            .iter()
            .zip(&probes)
            .map(|(m, p)| {
                let mut j = member_json(m);
                j["state"] = json!(p.as_ref().map(|p| p.state.clone()).unwrap_or_else(|| "Unreachable".into()));
                j["term"] = json!(p.as_ref().map(|p| p.term));
                j["last_applied"] = json!(p.as_ref().map(|p| p.last_applied));
                j
            })
            .collect();
        let regions: Vec<Value> = st.regions.iter().map(region_json).collect();
        let services: Vec<Value> = st
            .services
            .iter()
            .map(|s| {
                json!({"service": s.service, "primary_region": s.primary_region, "fences": s.fences,
                       "ack_requested": s.ack_requested, "last_automatic_run": s.last_automatic_run})
            })
            .collect();
        println!(
            "{}",
            json!({
                "services": services,
                "cluster_id": st.cluster_id, "answered_by": st.node_id, "leader_id": st.leader_id,
                "leader_addr": st.leader_addr, "term": st.term, "commit_index": st.commit_index,
                "last_applied": st.last_applied, "last_log_index": st.last_log_index,
                "snapshot_index": st.snapshot_index, "members": members, "regions": regions,
                "audit": {"entries": st.audit_len, "head": st.audit_head},
                "auth": {"enabled": st.auth_enabled, "principal": st.principal, "roles": st.roles,
                         "regions": st.principal_regions},
            })
        );
        return Ok(());
    }
    let leader = if st.leader_id == 0 {
        "none (no quorum?)".to_string()
    } else {
        format!("node {} ({})", st.leader_id, st.leader_addr)
    };
    println!("cluster {}  leader {}  term {}  commit {}", st.cluster_id, leader, st.term, st.commit_index);
    if st.auth_enabled {
        let scope =
            if st.principal_regions.is_empty() { "all regions".to_string() } else { st.principal_regions.join(", ") };
        println!("authentication: enabled; you are {} ({}; {scope})", st.principal, st.roles.join(", "));
    } else {
        println!(
            "authentication: DISABLED (open mode): every caller may do everything and names itself; \
             set auth.principals_file on every node"
        );
    }
    print_members(&st.members, &probes);
    println!();
    print_regions(&st.regions);
    for sv in &st.services {
        let primary = if sv.primary_region.is_empty() { "as configured" } else { sv.primary_region.as_str() };
        println!("service {}: primary {primary}", sv.service);
        for f in &sv.fences {
            println!("  {f}");
        }
        if !sv.ack_requested.is_empty() {
            println!("  ACKNOWLEDGE: {}", sv.ack_requested);
        }
    }
    println!();
    match client.call(|mut c| async move { c.get_health(pb::GetHealthRequest {}).await }).await {
        Ok(board) => print_board(&board),
        Err(e) => println!("health: unavailable ({})", e.message()),
    }
    println!();
    println!("audit: {} entries, head {}", st.audit_len, short(&st.audit_head));
    Ok(())
}

fn parse_params(params: &[String]) -> Result<std::collections::HashMap<String, String>, Fail> {
    params
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Fail(2, format!("--param {p:?}: expected NAME=VALUE")))
        })
        .collect()
}

enum RunAct {
    Approve,
    Consent(String),
    Pause,
    Resume,
    Abort,
}

async fn run_action(cli: &Cli, client: &Client, act: RunAct, run: &str, reason: &str) -> Result<(), Fail> {
    let accept_loss = if let RunAct::Consent(l) = &act { l.clone() } else { String::new() };
    let r = pb::RunActionRequest { ctx: ctx(cli), run_id: run.to_string(), reason: reason.to_string(), accept_loss };
    let info = client
        .call(|mut c| {
            let r = r.clone();
            let act = &act;
            async move {
                match act {
                    RunAct::Approve | RunAct::Consent(_) => c.approve_run(r).await,
                    RunAct::Pause => c.pause_run(r).await,
                    RunAct::Resume => c.resume_run(r).await,
                    RunAct::Abort => c.abort_run(r).await,
                }
            }
        })
        .await?;
    print_run(cli, &info);
    Ok(())
}

fn run_json(i: &pb::RunInfo) -> Value {
    let record: Value = serde_json::from_str(&i.record_json).unwrap_or(Value::Null);
    let figures = run_figures(&record);
    json!({"figures": figures,"run_id": i.run_id, "service": i.service, "playbook": i.playbook, "playbook_hash": i.playbook_hash,
           "requester": i.requester, "reason": i.reason, "state": i.state, "state_reason": i.state_reason,
           "created_unix_ms": i.created_unix_ms, "ended_unix_ms": i.ended_unix_ms, "revision": i.revision, "record": record})
}

/// One line per finished attempt plus the run's key figures.
fn print_run(cli: &Cli, i: &pb::RunInfo) {
    if cli.json {
        println!("{}", run_json(i));
        return;
    }
    let rec: Value = serde_json::from_str(&i.record_json).unwrap_or(Value::Null);
    println!(
        "run {}  service {}  playbook {} ({})  state {}{}",
        i.run_id,
        i.service,
        i.playbook,
        short(&i.playbook_hash),
        i.state,
        if i.state_reason.is_empty() { String::new() } else { format!(": {}", i.state_reason) }
    );
    println!("requested by {} at {}: {}", i.requester, fmt_time(i.created_unix_ms), i.reason);
    let steps = rec["run"]["plan"]["steps"].as_array().cloned().unwrap_or_default();
    for a in rec["run"]["history"].as_array().cloned().unwrap_or_default() {
        let idx = a["work"]["step"].as_u64().unwrap_or(0) as usize;
        let id = steps.get(idx).and_then(|s| s["id"].as_str()).unwrap_or("?");
        let phase = a["work"]["phase"].as_u64().map(|p| format!(" phase {p}")).unwrap_or_default();
        let comp = if a["work"]["compensation"].as_bool() == Some(true) { " (compensation)" } else { "" };
        let ms = a["finished_ms"].as_i64().unwrap_or(0) - a["started_ms"].as_i64().unwrap_or(0);
        println!(
            "  {:<4} {:<16}{}{} attempt {} {:>6} ms  {}",
            if a["ok"] == true { "ok" } else { "FAIL" },
            id,
            phase,
            comp,
            a["work"]["attempt"],
            ms,
            a["detail"].as_str().unwrap_or_default()
        );
    }
    for (idx, why) in rec["run"]["skipped"].as_object().into_iter().flatten() {
        let id = idx.parse::<usize>().ok().and_then(|n| steps.get(n)).and_then(|s| s["id"].as_str()).unwrap_or("?");
        println!("  skip {id:<16} {}", why.as_str().unwrap_or_default());
    }
    let run = &rec["run"];
    if let Some(l) = run["loss"].as_object() {
        let text = if l["known"] == true {
            format!(
                "{} bytes / {:.1} s behind{} ({})",
                l["bytes"],
                l["seconds"].as_f64().unwrap_or(0.0),
                if l["synchronous"] == true { ", synchronous: 0 acknowledged writes" } else { "" },
                l["evidence"].as_str().unwrap_or_default()
            )
        } else {
            format!("unknown ({})", l["evidence"].as_str().unwrap_or_default())
        };
        println!("data loss: {text}");
        let replayed =
            run["outputs"].as_object().into_iter().flatten().find_map(|(_, o)| o["last_replay_unix_ms"].as_i64());
        if let Some(ms) = replayed {
            println!("last transaction replayed on the new primary: committed at {}", fmt_time(ms));
        }
    }
    if let Some(f) = run["fencing"].as_object() {
        println!("fencing: {} ({})", f["how"].as_str().unwrap_or_default(), f["detail"].as_str().unwrap_or_default());
    }
    if let Some(c) = run["consent"].as_str() {
        println!("consent: {c}");
    }
    let f = run_figures(&rec);
    let targets = &run["plan"]["targets"];
    if i.ended_unix_ms > 0 {
        let total = i.ended_unix_ms - i.created_unix_ms;
        match targets["rto_seconds"].as_i64() {
            Some(t) => println!("total (RTO) {total} ms; target {t} s: {}", verdict(total <= t * 1000)),
            None => println!("total (RTO) {total} ms"),
        }
    }
    if let Some(t) = targets["rpo_seconds"].as_f64()
        && i.ended_unix_ms > 0
    {
        // A planned run measures how far the standby was from the frozen LSN; an unplanned one
        // the loss it accepted.
        match (f["rpo_bytes_short_of_frozen_lsn"].as_f64(), run["loss"].as_object()) {
            (_, Some(l)) if l["known"] == true => {
                let s = l["seconds"].as_f64().unwrap_or(0.0);
                println!("RPO {s:.1} s of writes lost; target {t} s: {}", verdict(s <= t));
            }
            (_, Some(_)) => println!("RPO unknown (the loss could not be measured); target {t} s: not met"),
            (Some(b), None) => println!("RPO {b} bytes short of the frozen LSN; target {t} s: {}", verdict(b == 0.0)),
            (None, None) => println!("RPO not measured (no catch-up step finished); target {t} s"),
        }
    }
    for (k, v) in f.as_object().into_iter().flatten() {
        println!("{k}: {v}");
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// Figures an operator reads after a run: the write window (freeze → unfreeze), how far the
/// standby was from the frozen LSN (RPO in bytes), DNS convergence.
fn run_figures(rec: &Value) -> Value {
    let steps = rec["run"]["plan"]["steps"].as_array().cloned().unwrap_or_default();
    let history = rec["run"]["history"].as_array().cloned().unwrap_or_default();
    let action = |a: &Value| {
        let idx = a["work"]["step"].as_u64().unwrap_or(0) as usize;
        steps.get(idx).and_then(|s| s["act"]["action"].as_str()).unwrap_or_default().to_string()
    };
    let ok = |name: &str| {
        history
            .iter()
            .filter(|a| a["ok"] == true && a["work"]["compensation"] != true && action(a) == name)
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut out = serde_json::Map::new();
    if let (Some(f), Some(u)) = (ok("freeze_writes").first().cloned(), ok("unfreeze_writes").last().cloned()) {
        let ms = u["finished_ms"].as_i64().unwrap_or(0) - f["started_ms"].as_i64().unwrap_or(0);
        out.insert("write_unavailability_ms".into(), json!(ms));
    }
    if let Some(w) = ok("wait_replication").last() {
        out.insert("rpo_bytes_short_of_frozen_lsn".into(), w["measurements"]["remaining_bytes"].clone());
    }
    if let Some(r) = ok("repoint_clients").last() {
        out.insert("dns_repoint_converged_ms".into(), r["measurements"]["converged_ms"].clone());
    }
    Value::Object(out)
}

/// Whether a watch refused with `e` should stop rather than reconnect (a node going away or a
/// leader change is worth a retry; a missing run or a refused token is not).
fn final_refusal(e: &tonic::Status) -> bool {
    matches!(e.code(), tonic::Code::NotFound | tonic::Code::Unauthenticated | tonic::Code::PermissionDenied)
}

async fn watch_run(cli: &Cli, client: &Client, run: &str) -> Result<(), Fail> {
    use futures::StreamExt;
    use std::io::IsTerminal;
    // A progress bar only for a person at a terminal; pipes and --json get plain lines.
    let bar = (!cli.json && std::io::stdout().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let say = |line: String| match &bar {
        Some(b) => b.println(line),
        None => println!("{line}"),
    };
    let mut printed = 0usize;
    loop {
        let r = pb::GetRunRequest { run_id: run.to_string() };
        let mut stream = match client
            .open_stream(|mut c| {
                let r = r.clone();
                async move { c.watch_run(r).await }
            })
            .await
        {
            Ok(s) => s,
            Err(e) if final_refusal(&e) => return Err(e.into()),
            Err(e) => {
                eprintln!("drctl: watch: {} (retrying)", e.message());
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(info) => info,
                // A revoked or expired token ends the stream: reconnecting cannot help.
                Err(e) if final_refusal(&e) => return Err(e.into()),
                Err(_) => break,
            };
            let rec: Value = serde_json::from_str(&info.record_json).unwrap_or(Value::Null);
            let steps = rec["run"]["plan"]["steps"].as_array().cloned().unwrap_or_default();
            let history = rec["run"]["history"].as_array().cloned().unwrap_or_default();
            for a in history.iter().skip(printed) {
                let idx = a["work"]["step"].as_u64().unwrap_or(0) as usize;
                let id = steps.get(idx).and_then(|s| s["id"].as_str()).unwrap_or("?");
                let ms = a["finished_ms"].as_i64().unwrap_or(0) - a["started_ms"].as_i64().unwrap_or(0);
                if cli.json {
                    println!("{}", json!({"run_id": info.run_id, "step": id, "attempt": a}));
                } else {
                    let phase = a["work"]["phase"].as_u64().map(|p| format!(" phase {p}")).unwrap_or_default();
                    say(format!(
                        "{} {:<4} {id}{phase} ({} ms) {}",
                        fmt_time(a["finished_ms"].as_i64().unwrap_or(0)),
                        if a["ok"] == true { "ok" } else { "FAIL" },
                        ms,
                        a["detail"].as_str().unwrap_or_default()
                    ));
                }
            }
            printed = history.len();
            if let Some(b) = &bar {
                // Progress in units of work: one per step, one per phase of a phased step.
                let units: u64 =
                    steps.iter().map(|s| s["phases"].as_array().map(|p| p.len().max(1)).unwrap_or(1) as u64).sum();
                let done =
                    history.iter().filter(|a| a["ok"] == true && a["work"]["compensation"] != true).count() as u64;
                b.set_length(units);
                b.set_position(done.min(units));
                let cursor = rec["run"]["cursor"].as_u64().unwrap_or(0) as usize;
                let current = steps.get(cursor).and_then(|s| s["id"].as_str()).unwrap_or("");
                b.set_message(format!("{} {current}", info.state));
            }
            if info.ended_unix_ms > 0 {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                print_run(cli, &info);
                return if info.state == "succeeded" {
                    Ok(())
                } else {
                    Err(Fail(1, format!("run {} ended {}: {}", info.run_id, info.state, info.state_reason)))
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The most telling numbers of a check, compactly.
fn values_text(c: &pb::CheckHealth) -> String {
    let keys = [
        ("p95_ms", "p95", "ms"),
        ("error_ratio", "err", ""),
        ("connect_ms", "connect", "ms"),
        ("lag_seconds", "lag", "s"),
        ("lag_bytes", "lag", "B"),
        ("value", "value", ""),
    ];
    let mut parts: Vec<String> = keys
        .iter()
        .filter_map(|(k, label, unit)| c.values.get(*k).map(|v| format!("{label} {}{unit}", trim_num(*v))))
        .collect();
    if let Some(role) = c.labels.get("role") {
        parts.push(role.clone());
    }
    if !c.error.is_empty() {
        parts.push(format!("error: {}", c.error));
    }
    parts.join(", ")
}

fn trim_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e12 { format!("{v:.0}") } else { format!("{v:.3}") }
}

fn print_board(b: &pb::HealthBoard) {
    let src = if b.live {
        format!("live from the leader (node {})", b.node_id)
    } else {
        format!("replicated states only (node {}, no leader reachable)", b.node_id)
    };
    println!("HEALTH — {src}");
    println!("{:<14} {:<9} {:<24} REASON", "REGION", "STATE", "SINCE (UTC)");
    for r in &b.regions {
        println!("{:<14} {:<9} {:<24} {}", r.region, r.state, fmt_time(r.since_unix_ms), r.reason);
        for c in &r.checks {
            let slo: Vec<String> =
                c.slo.iter().map(|s| format!("{} {}", s.expr, if s.ok { "ok" } else { "BREACH" })).collect();
            let state = if c.stale { format!("{} (stale)", c.state) } else { c.state.clone() };
            println!(
                "  {:<18} {:<5} from {:<22} {:<16} since {:<24} {} {}",
                c.check,
                c.r#type,
                format!("{} ({})", c.vantage_agent, c.vantage_region),
                state,
                fmt_time(c.since_unix_ms),
                values_text(c),
                if slo.is_empty() { String::new() } else { format!("[{}]", slo.join("; ")) }
            );
        }
    }
    let agents: Vec<String> = b
        .agents
        .iter()
        .map(|a| format!("{} ({}, {})", a.agent_id, a.region, if a.connected { "connected" } else { "disconnected" }))
        .collect();
    println!("agents: {}", if agents.is_empty() { "none registered".to_string() } else { agents.join(", ") });
}

fn board_json(b: &pb::HealthBoard) -> Value {
    let regions: Vec<Value> = b
        .regions
        .iter()
        .map(|r| {
            let checks: Vec<Value> = r
                .checks
                .iter()
                .map(|c| {
                    let slo: Vec<Value> = c
                        .slo
                        .iter()
                        .map(|s| json!({"expr": s.expr, "value": s.has_value.then_some(s.value), "ok": s.ok}))
                        .collect();
                    json!({"check": c.check, "type": c.r#type, "region": c.region, "vantage_agent": c.vantage_agent,
                           "vantage_region": c.vantage_region, "state": c.state, "since_unix_ms": c.since_unix_ms,
                           "slo": slo, "values": c.values, "labels": c.labels, "error": c.error,
                           "last_report_unix_ms": c.last_report_unix_ms, "stale": c.stale})
                })
                .collect();
            json!({"region": r.region, "state": r.state, "since_unix_ms": r.since_unix_ms, "reason": r.reason, "checks": checks})
        })
        .collect();
    let agents: Vec<Value> = b
        .agents
        .iter()
        .map(|a| {
            json!({"agent_id": a.agent_id, "region": a.region, "version": a.version, "connected": a.connected,
                        "last_seen_unix_ms": a.last_seen_unix_ms})
        })
        .collect();
    json!({"node_id": b.node_id, "live": b.live, "regions": regions, "agents": agents})
}

async fn watch_health(cli: &Cli, client: &Client, from: u64, count: u64) -> Result<(), Fail> {
    use futures::StreamExt;
    // Pin "from now on" to a revision, so a reconnect resumes exactly where this started.
    let mut next = if from == 0 {
        let st = client.call(|mut c| async move { c.get_status(pb::GetStatusRequest::default()).await }).await?;
        st.audit_len + 1
    } else {
        from
    };
    let mut seen = 0u64;
    loop {
        let req = pb::WatchHealthRequest { from_revision: next };
        let stream = client.open_stream(|mut c| async move { c.watch_health(req).await }).await;
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) if final_refusal(&e) => return Err(e.into()),
            Err(e) => {
                eprintln!("drctl: watch: {} (retrying)", e.message());
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        while let Some(item) = stream.next().await {
            match item {
                Ok(ev) => {
                    next = ev.revision + 1;
                    if cli.json {
                        let evidence: Value = serde_json::from_str(&ev.evidence_json).unwrap_or(Value::Null);
                        println!(
                            "{}",
                            json!({"revision": ev.revision, "time_unix_ms": ev.time_unix_ms, "kind": ev.kind,
                                   "region": ev.region, "check": ev.check, "vantage_agent": ev.vantage_agent,
                                   "from": ev.from, "to": ev.to, "evidence": evidence})
                        );
                    } else {
                        let what = if ev.check.is_empty() {
                            ev.region.clone()
                        } else {
                            format!("{}/{} ({})", ev.vantage_agent, ev.check, ev.region)
                        };
                        println!(
                            "{:>6} {} {:<14} {:<40} {} -> {}",
                            ev.revision,
                            fmt_time(ev.time_unix_ms),
                            ev.kind,
                            what,
                            ev.from,
                            ev.to
                        );
                    }
                    seen += 1;
                    if count > 0 && seen >= count {
                        return Ok(());
                    }
                }
                Err(e) if final_refusal(&e) => return Err(e.into()),
                Err(e) => {
                    eprintln!("drctl: watch interrupted: {} (resuming at revision {next})", e.message());
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn print_members(members: &[pb::Member], probes: &[Option<pb::ClusterStatus>]) {
    println!(
        "{:<5} {:<22} {:<8} {:<12} {:<6} {:<9} {:<8} LAG",
        "NODE", "ADDRESS", "ROLE", "STATE", "TERM", "APPLIED", "MATCHED"
    );
    for (i, m) in members.iter().enumerate() {
        let p = probes.get(i).and_then(|p| p.as_ref());
        let dash = || "-".to_string();
        println!(
            "{:<5} {:<22} {:<8} {:<12} {:<6} {:<9} {:<8} {}",
            m.id,
            m.addr,
            if m.voter { "voter" } else { "learner" },
            p.map(|p| p.state.clone()).unwrap_or_else(|| if probes.is_empty() { dash() } else { "unreachable".into() }),
            p.map(|p| p.term.to_string()).unwrap_or_else(dash),
            p.map(|p| p.last_applied.to_string()).unwrap_or_else(dash),
            if m.has_progress { m.matched_index.to_string() } else { dash() },
            if m.has_progress { m.lag.to_string() } else { dash() },
        );
    }
}

fn print_regions(regions: &[pb::Region]) {
    if regions.is_empty() {
        println!("no regions (add one: drctl region add NAME --role SERVICE=primary)");
        return;
    }
    println!("{:<16} {:<28} ROLES", "REGION", "DISPLAY NAME");
    for r in regions {
        println!("{:<16} {:<28} {}", r.name, r.display_name, roles_text(r));
    }
}

fn roles_text(r: &pb::Region) -> String {
    r.roles.iter().map(|s| format!("{}={}", s.service, role_name(s.role))).collect::<Vec<_>>().join(",")
}

fn role_name(role: i32) -> &'static str {
    match pb::RegionRole::try_from(role) {
        Ok(pb::RegionRole::Primary) => "primary",
        Ok(pb::RegionRole::Standby) => "standby",
        _ => "unspecified",
    }
}

fn member_json(m: &pb::Member) -> Value {
    json!({"id": m.id, "addr": m.addr, "voter": m.voter,
           "matched_index": m.has_progress.then_some(m.matched_index), "lag": m.has_progress.then_some(m.lag)})
}

fn region_json(r: &pb::Region) -> Value {
    let roles: serde_json::Map<String, Value> =
        r.roles.iter().map(|s| (s.service.clone(), json!(role_name(s.role)))).collect();
    json!({"name": r.name, "display_name": r.display_name, "roles": roles})
}

fn audit_json(e: &pb::AuditEntry) -> Value {
    json!({"seq": e.seq, "time_unix_ms": e.time_unix_ms, "actor": e.actor, "action": e.action,
           "details": serde_json::from_str::<Value>(&e.details_json).unwrap_or(Value::String(e.details_json.clone())),
           "prev_hash": e.prev_hash, "hash": e.hash, "log_index": e.log_index})
}

fn fmt_time(ms: i64) -> String {
    // Membership entries made before any client write carry no leader time.
    if ms <= 0 {
        return "-".into();
    }
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn short(h: &str) -> &str {
    &h[..h.len().min(16)]
}
