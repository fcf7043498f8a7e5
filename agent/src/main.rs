//! `drcut-agent --config agent.yaml`: the region agent.

use clap::Parser;
use drcut_agent::{config, executor, faults, lease, metrics, runner, session, tls};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// A region agent of drcut: runs SLI checks and reports them to the coordinator leader.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The agent's YAML config.
    #[arg(long, short, env = "DRCUT_AGENT_CONFIG")]
    config: PathBuf,
    /// Validate the config (including secrets) and exit.
    #[arg(long)]
    check_config: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    // Counted from here: an agent started while no coordinator answers self-fences too.
    let lease = lease::Lease::new();
    tls::install_crypto_provider();
    let args = Args::parse();
    let cfg = match config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drcut-agent: config error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("{}: ok ({} checks)", args.config.display(), cfg.checks.len());
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("DRCUT_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let metrics = Arc::new(metrics::AgentMetrics::new());
    if let Some(addr) = cfg.metrics_listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tokio::spawn(metrics::serve(l, metrics.clone()));
            }
            Err(e) => {
                eprintln!(
                    "drcut-agent: config error: {}: metrics_listen: cannot bind {addr}: {e}",
                    args.config.display()
                );
                return ExitCode::from(2);
            }
        }
    }
    let mut cfg = cfg;
    let checks = std::mem::take(&mut cfg.checks);
    let cfg = Arc::new(config::AgentConfig { checks: vec![], ..cfg });
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let specs_for_hello: Vec<_> = checks.iter().map(session::check_info).collect();
    for spec in checks {
        tokio::spawn(runner::run(spec, tx.clone(), metrics.clone()));
    }
    println!("drcut-agent: {} in {} running {} checks", cfg.agent_id, cfg.region, specs_for_hello.len());
    let file = args.config.display().to_string();
    // The fault proxies start with the agent and stay up for its life; a bind failure is a
    // config error, like metrics_listen's.
    let faults = match faults::FaultManager::start(cfg.clone(), lease.clone(), metrics.clone()).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("drcut-agent: config error: {}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    tokio::spawn(faults.clone().watchdog());
    let (executor, results) = executor::Executor::new(cfg.clone(), faults);
    tokio::spawn(lease::run(cfg.clone(), lease.clone(), metrics.clone()));
    let links = session::Links { reports: rx, results, executor, lease };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("drcut-agent: cannot handle SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = session::run(cfg, specs_for_hello, file, links, metrics) => ExitCode::FAILURE,
        _ = tokio::signal::ctrl_c() => ExitCode::SUCCESS,
        _ = term.recv() => ExitCode::SUCCESS,
    }
}
