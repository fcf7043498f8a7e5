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
