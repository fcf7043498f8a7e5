//! GameDay faults through the agent library's executor (`fault.inject` / `fault.revert` step
//! commands, as the coordinator sends them), against real systems, no coordinator needed:
//!
//! - `postgres_stop`: a real PostgreSQL primary stops (`pg_ctl stop -m immediate`) and
//!   refuses connections; the revert starts it again and it takes writes. A second inject is
//!   reverted by the dead-man switch when its deadline passes.
//! - `process_kill`: a real `sleep` process found by its pidfile dies of SIGKILL; the revert
//!   runs the configured start command, which writes a new pidfile.
//! - `exec`: inject and revert commands run; a failing one fails the result with its stderr.

use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_agent::config::{self, AgentConfig};
use drcut_agent::executor::Executor;
use drcut_agent::faults::{FAULT_STEP, FaultManager};
use drcut_agent::lease::Lease;
use drcut_agent::metrics::AgentMetrics;
use drcut_proto::v1::{StepCommand, StepResult};
use drcut_tests::PgPair;
use drcut_tests::agent::{faults_yaml, postgres_resource_yaml};
use drcut_tests::wait;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

const RUN: &str = "drill-t120";
const RESULT_TIMEOUT: Duration = Duration::from_secs(40);

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 120, n)
}

/// The agent side of the session: an executor with its fault manager and dead-man switch.
struct Agent {
    executor: Arc<Executor>,
    results: UnboundedReceiver<StepResult>,
    attempt: u32,
}

impl Agent {
    async fn start(extra_yaml: &str) -> Result<Agent> {
        let yaml = format!("agent_id: t120\nregion: eu-west\ncoordinators: [127.0.120.100:7001]\n{extra_yaml}");
        let cfg: Arc<AgentConfig> = Arc::new(config::parse("t120-agent.yaml", &yaml)?);
        let lease = Lease::new();
        // The coordinator would keep granting leases with heartbeat acks.
        lease.granted(tokio::time::Instant::now() + Duration::from_secs(3600));
        let faults =
            FaultManager::start(cfg.clone(), lease, Arc::new(AgentMetrics::new())).await.map_err(anyhow::Error::msg)?;
        tokio::spawn(faults.clone().watchdog());
        let (executor, results) = Executor::new(cfg, faults);
        Ok(Agent { executor, results, attempt: 0 })
    }

    /// Sends one fault command and waits for its result.
    async fn send(&mut self, action: &str, fault_id: &str, params: Value) -> Result<StepResult> {
        self.attempt += 1;
        self.executor.handle(StepCommand {
            run_id: RUN.into(),
            step_id: fault_id.into(),
            step_index: FAULT_STEP,
            phase: -1,
            compensation: false,
            attempt: self.attempt,
            fencing_token: 7,
            action: action.into(),
            params_json: params.to_string(),
            timeout_ms: 30_000,
            service: String::new(),
        });
        let r = tokio::time::timeout(RESULT_TIMEOUT, self.results.recv())
            .await
            .with_context(|| format!("no result for {action} {fault_id}"))?
            .context("executor gone")?;
        ensure!(r.attempt == self.attempt, "result of another command: {r:?}");
        tracing::info!(action, fault_id, ok = r.ok, detail = %r.detail, "result");
        Ok(r)
    }

    async fn inject(&mut self, fault_id: &str, fault: Value, deadline_ms: u64) -> Result<StepResult> {
        let params = json!({"fault": fault, "deadline_ms": deadline_ms, "lost_coordinator_ms": 600_000});
        self.send("fault.inject", fault_id, params).await
    }

    async fn revert(&mut self, fault_id: &str) -> Result<StepResult> {
        self.send("fault.revert", fault_id, json!({})).await
    }

    fn active(&self) -> Vec<String> {
        self.executor.faults().active()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t120_postgres_stop_and_revert() -> Result<()> {
    drcut_tests::init_tracing();
    let mut pg = PgPair::start(ip(1), ip(2)).await?;
    let res = postgres_resource_yaml("wallet", &pg.primary_dsn(), Some(pg.primary_data_dir()), Some(pg.bin_dir()), &[]);
    let mut agent = Agent::start(&format!("resources:\n  postgres:\n{res}")).await?;
    pg.try_write_primary().await?.map_err(anyhow::Error::msg).context("writable before the fault")?;

    tracing::info!("--- inject postgres_stop");
    let stop = json!({"type": "postgres_stop", "database": "wallet"});
    let r = agent.inject("pg-down", stop.clone(), 600_000).await?;
    ensure!(r.ok && r.measurements.contains_key("inject_ms"), "{r:?}");
    ensure!(!pg.primary_running(), "the primary still runs");
    ensure!(pg.try_write_primary().await.is_err(), "the primary still accepts connections");
    ensure!(agent.active() == [format!("{RUN}/pg-down")], "{:?}", agent.active());
    let r = agent.inject("pg-down", stop.clone(), 600_000).await?;
    ensure!(r.ok && r.detail.ends_with("already active"), "{r:?}");

    tracing::info!("--- revert: the primary comes back and takes writes");
    let r = agent.revert("pg-down").await?;
    ensure!(r.ok && r.measurements.contains_key("revert_ms"), "{r:?}\n{}", pg.log_tail(20));
    pg.try_write_primary().await?.map_err(anyhow::Error::msg).context("writable after the revert")?;
    ensure!(agent.active().is_empty());
    let r = agent.revert("pg-down").await?;
    ensure!(r.ok && r.detail.ends_with("not active"), "{r:?}");

    tracing::info!("--- the dead-man switch brings it back at the deadline");
    let r = agent.inject("pg-down-2", stop, 1_500).await?;
    ensure!(r.ok, "{r:?}");
    ensure!(pg.try_write_primary().await.is_err(), "the primary still accepts connections");
    wait::until("the dead-man switch to restart the primary", Duration::from_secs(30), async || {
        pg.try_write_primary().await?.map_err(anyhow::Error::msg)
    })
    .await?;
    ensure!(agent.active().is_empty(), "{:?}", agent.active());

    tracing::info!("--- an unknown database is refused by name");
    let r = agent.inject("x", json!({"type": "postgres_stop", "database": "ledger"}), 600_000).await?;
    ensure!(!r.ok && r.detail.contains(r#"fault.database: no postgres resource "ledger""#), "{r:?}");
    Ok(())
}

/// Starts `sleep 300` and writes its pid to `pidfile`.
async fn sleeper(pidfile: &Path) -> Result<tokio::process::Child> {
    let child = tokio::process::Command::new("sleep").arg("300").kill_on_drop(true).spawn()?;
    std::fs::write(pidfile, format!("{}\n", child.id().context("no pid")?))?;
    Ok(child)
}

fn pid_in(pidfile: &Path) -> Option<i32> {
    std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t120_process_kill_and_restart() -> Result<()> {
    drcut_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let (app_pid, worker_pid) = (dir.path().join("app.pid"), dir.path().join("worker.pid"));
    let start = format!("echo $$ > {}; exec sleep 300", app_pid.display());
    let yaml =
        faults_yaml(&[], &[], &[("app", &app_pid, Some(&["/bin/sh", "-c", &start])), ("worker", &worker_pid, None)]);
    let mut agent = Agent::start(&yaml).await?;
    let mut app = sleeper(&app_pid).await?;
    let mut worker = sleeper(&worker_pid).await?;

    tracing::info!("--- kill -9 of app");
    let r = agent.inject("kill-app", json!({"type": "process_kill", "process": "app"}), 600_000).await?;
    ensure!(r.ok, "{r:?}");
    let status = tokio::time::timeout(Duration::from_secs(5), app.wait()).await.context("app still runs")??;
    ensure!(status.signal() == Some(libc::SIGKILL), "app ended with {status:?}");

    tracing::info!("--- revert runs its start command");
    let old = pid_in(&app_pid);
    let r = agent.revert("kill-app").await?;
    ensure!(r.ok && r.detail.contains("started"), "{r:?}");
    let new = wait::until("the restarted app's pidfile", Duration::from_secs(10), async || {
        let p = pid_in(&app_pid).context("no pid")?;
        ensure!(Some(p) != old && Path::new(&format!("/proc/{p}")).exists(), "pid {p} not new or not running");
        Ok(p)
    })
    .await?;

    tracing::info!("--- a process without a start command stays down");
    let r = agent.inject("kill-worker", json!({"type": "process_kill", "process": "worker"}), 600_000).await?;
    ensure!(r.ok, "{r:?}");
    tokio::time::timeout(Duration::from_secs(5), worker.wait()).await.context("worker still runs")??;
    let r = agent.inject("kill-worker-again", json!({"type": "process_kill", "process": "worker"}), 600_000).await?;
    ensure!(!r.ok && r.detail.contains("already carries fault"), "{r:?}");
    let r = agent.revert("kill-worker").await?;
    ensure!(r.ok && r.detail.contains("no start command: left down"), "{r:?}");
    let r = agent.inject("kill-worker-3", json!({"type": "process_kill", "process": "worker"}), 600_000).await?;
    ensure!(!r.ok && r.detail.contains("not running"), "{r:?}");

    // The restarted app is not this test's child: end it here.
    // SAFETY: kill(2) of the pid this test just saw start, with a signal number.
    unsafe {
        libc::kill(new, libc::SIGKILL);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t120_exec_inject_and_revert() -> Result<()> {
    drcut_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let flag = dir.path().join("injected");
    let flag_s = flag.display().to_string();
    let mut agent = Agent::start("").await?;

    let fault = json!({"type": "exec", "inject": ["/usr/bin/touch", flag_s], "revert": ["/bin/rm", flag_s]});
    let r = agent.inject("cmd", fault, 600_000).await?;
    ensure!(r.ok && flag.exists(), "{r:?}");
    let r = agent.revert("cmd").await?;
    ensure!(r.ok && !flag.exists(), "{r:?}");

    // A revert that fails reports its stderr and leaves the fault active.
    let fault =
        json!({"type": "exec", "inject": ["/bin/true"], "revert": ["/bin/sh", "-c", "echo cannot undo >&2; exit 4"]});
    ensure!(agent.inject("bad", fault, 600_000).await?.ok);
    let r = agent.revert("bad").await?;
    ensure!(!r.ok && r.detail.contains("exit status: 4: cannot undo"), "{r:?}");
    ensure!(agent.active() == [format!("{RUN}/bad")], "{:?}", agent.active());
    let r = agent.send("fault.halt", "", json!({"run_id": RUN})).await?;
    ensure!(!r.ok && r.detail.contains("FAILED"), "{r:?}");
    Ok(())
}
