//! [`Node`]: one `drcut-coordinator` process, its config file and its log files.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use crate::bins;
use crate::config::NodeConfig;

/// How long a node gets to exit after SIGTERM before the test calls it hung.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A coordinator node: config, files, and the running process if any.
pub struct Node {
    /// The node id.
    pub id: u64,
    /// The gRPC address clients use (the node's listen address).
    pub addr: SocketAddr,
    /// The config written to `config_path` at every start.
    pub config: NodeConfig,
    /// Where the config file lives.
    pub config_path: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// Run this coordinator binary instead of the build's (a rolling upgrade to a new binary).
    pub binary: Option<PathBuf>,
}

impl Node {
    /// A node whose files live in `dir`; nothing is started.
    pub fn new(id: u64, addr: SocketAddr, config: NodeConfig, dir: &Path) -> Self {
        Node {
            id,
            addr,
            config,
            config_path: dir.join(format!("node{id}.yaml")),
            stdout_path: dir.join(format!("node{id}.stdout.log")),
            stderr_path: dir.join(format!("node{id}.stderr.log")),
            child: None,
            starts: 0,
            binary: None,
        }
    }

    /// Writes the config and starts the process; output is appended to the node's log files
    /// so a restarted node's history stays in one place.
    pub fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() && self.exited().is_none() {
            bail!("node {} is already running", self.id);
        }
        std::fs::write(&self.config_path, self.config.to_yaml())
            .with_context(|| format!("writing {}", self.config_path.display()))?;
        self.starts += 1;
        let open = |p: &Path| -> Result<std::fs::File> {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))?;
            writeln!(f, "=== harness: start #{} of node {}", self.starts, self.id)?;
            Ok(f)
        };
        let stdout = open(&self.stdout_path)?;
        let stderr = open(&self.stderr_path)?;
        let bin = match &self.binary {
            Some(b) => b.clone(),
            None => bins::bin_path(bins::COORDINATOR)?,
        };
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&self.config_path)
            .env("DRCUT_LOG", std::env::var("DRCUT_NODE_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            // Drop (including during a panic) kills the node.
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            // If the test process is killed outright (a nextest timeout), Drop never runs;
            // the kernel then kills the node so it cannot hold the test's addresses. The signal
            // follows the spawning *thread*: spawn from the test's own task, never from
            // `spawn_blocking`, whose threads exit when idle.
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("spawning node {}", self.id))?;
        tracing::info!(node = self.id, pid = child.id(), addr = %self.addr, "node started");
        self.child = Some(child);
        Ok(())
    }

    /// The process id while a process is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Whether the harness started the process and has not stopped it (it may have exited on
    /// its own since).
    pub fn has_process(&self) -> bool {
        self.child.is_some()
    }

    /// The exit status if the process has exited on its own, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL: the node gets no chance to flush or say goodbye.
    pub async fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("node {} is not running", self.id);
        };
        child.start_kill().ok();
        child.wait().await?;
        tracing::info!(node = self.id, "node killed (SIGKILL)");
        Ok(())
    }

    /// SIGTERM and wait for the process to exit; returns its exit status.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("node {} is not running", self.id);
        };
        if let Some(pid) = child.id() {
            // SAFETY: plain syscall on a pid this process spawned and has not reaped yet.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(status) => {
                let status = status?;
                tracing::info!(node = self.id, %status, "node stopped (SIGTERM)");
                Ok(status)
            }
            Err(_) => {
                child.start_kill().ok();
                child.wait().await.ok();
                bail!("node {} did not exit within {STOP_TIMEOUT:?} of SIGTERM", self.id)
            }
        }
    }

    /// SIGKILL and reap without an async context: for `Drop`, so no node outlives its test
    /// or keeps writing into a data dir being deleted.
    pub fn kill_now(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        child.start_kill().ok();
        for _ in 0..200 {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last `lines` lines of stdout and stderr, for failure reports.
    pub fn log_tail(&self, lines: usize) -> String {
        let tail = |p: &Path| -> String {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        };
        format!(
            "----- node {} stdout ({}):\n{}\n----- node {} stderr ({}):\n{}\n",
            self.id,
            self.stdout_path.display(),
            tail(&self.stdout_path),
            self.id,
            self.stderr_path.display(),
            tail(&self.stderr_path),
        )
    }

    /// Everything the node printed to stdout so far (all starts).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything the node logged to stderr so far (all starts).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}
