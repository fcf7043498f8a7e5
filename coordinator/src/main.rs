//! `drcut-coordinator --config FILE`: runs one coordinator node.

use clap::Parser;
use drcut_coordinator::config::{Config, LogFormat};
use drcut_coordinator::node::{self, NodeError};
use std::path::PathBuf;
use std::process::ExitCode;

/// One node of the drcut coordinator cluster.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The node's YAML config.
    #[arg(long, short, env = "DRCUT_CONFIG", required_unless_present = "probe")]
    config: Option<PathBuf>,
    /// Instead of running a node: ask the node whose HTTP listener is at HOST:PORT whether its
    /// process is alive (`/healthz`); exit 0 if so. For container health checks: the image has
    /// no shell or curl.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "config")]
    probe: Option<std::net::SocketAddr>,
    /// Instead of running the node: when a majority of the cluster is lost for good, make this
    /// (stopped) node's data a one-node cluster, keeping everything it holds, then exit. Refused
    /// while any other member answers. See docs/OPERATIONS.md.
    #[arg(long, requires = "config")]
    force_new_cluster: bool,
    /// Who runs --force-new-cluster (recorded in the audit chain; default: $USER@host).
    #[arg(long, requires = "force_new_cluster")]
    actor: Option<String>,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DRCUT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error"));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.init(),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    drcut_coordinator::tls::install_crypto_provider();
    let args = Args::parse();
    if let Some(addr) = args.probe {
        return match drcut_coordinator::http::probe(addr).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("drcut-coordinator: probe {addr}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(config) = args.config else { unreachable!("clap requires --config without --probe") };
    let cfg = match Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drcut-coordinator: config error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(cfg.log_format);
    if args.force_new_cluster {
        return force_new_cluster(&cfg, args.actor).await;
    }
    if let Err(e) = node::check_data_dir(&cfg) {
        eprintln!("drcut-coordinator: config error: {e}");
        return ExitCode::from(2);
    }
    let listener = match tokio::net::TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "drcut-coordinator: config error: {}",
                cfg.error("listen", format!("cannot bind {}: {e}", cfg.listen))
            );
            return ExitCode::from(2);
        }
    };
    match node::run(cfg, listener, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(NodeError::Config(e)) => {
            eprintln!("drcut-coordinator: config error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("drcut-coordinator: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--force-new-cluster`: the recovery, and what to do next.
async fn force_new_cluster(cfg: &Config, actor: Option<String>) -> ExitCode {
    let actor = actor.unwrap_or_else(|| {
        let user = std::env::var("USER").unwrap_or_else(|_| "operator".into());
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        if host.is_empty() { user } else { format!("{user}@{host}") }
    });
    match drcut_coordinator::recover::force_new_cluster(cfg, &actor).await {
        Ok(r) => {
            let gone: Vec<String> =
                r.previous_voters.iter().filter(|&&v| v != cfg.node_id).map(|v| v.to_string()).collect();
            println!(
                "drcut-coordinator: node {} is now a one-node cluster with everything it held: applied index {} before,                  {} entries of its own log replayed, new membership at index {} in term {} (audited as cluster.recovered by {actor}).",
                cfg.node_id, r.applied_before, r.replayed, r.index, r.term
            );
            println!("  the data dir as it was: {}", r.backup.display());
            println!(
                "  never start node(s) {} on their old data dirs again: wipe them, and add nodes under new ids.",
                gone.join(", ")
            );
            println!(
                "Next: start this node as usual; it leads alone. Then for each new node (new id, empty data dir):"
            );
            println!(
                "  drctl cluster add-learner --id N --addr HOST:7001   and, once it has caught up,   drctl cluster promote --id N"
            );
            ExitCode::SUCCESS
        }
        Err(NodeError::Config(e)) => {
            eprintln!("drcut-coordinator: force-new-cluster refused: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("drcut-coordinator: force-new-cluster failed: {e}");
            ExitCode::FAILURE
        }
    }
}
