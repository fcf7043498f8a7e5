//! [`AgentProc`]: one `drcut-agent` process, its config file (YAML written by the test) and
//! its log files.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::bins;
use crate::pg::{die_with_test, file_tail};

/// How long an agent gets to exit after SIGTERM before the test calls it hung.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// An agent: config, files, extra environment, and the running process if any. Dropping it
/// kills the process; if the test panicked, its log tail is printed first.
pub struct AgentProc {
    name: String,
    /// The YAML written to `config_path` at every start; tests may change it before a restart.
    pub config: String,
    config_path: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    /// Extra environment (secrets the config refers to).
    env: Vec<(String, String)>,
    child: Option<Child>,
    starts: u32,
}

impl AgentProc {
    /// An agent named `name` (file names, logs) whose files live in `dir`; nothing is started.
    pub fn new(dir: &Path, name: &str, config_yaml: &str) -> Self {
        AgentProc {
            name: name.to_string(),
            config: config_yaml.to_string(),
            config_path: dir.join(format!("{name}.yaml")),
            stdout_path: dir.join(format!("{name}.stdout.log")),
            stderr_path: dir.join(format!("{name}.stderr.log")),
            env: Vec::new(),
            child: None,
            starts: 0,
        }
    }

    /// Adds an environment variable for the process (from the next start on).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Writes the config into `dir` and starts `drcut-agent --config FILE` with `env`.
    pub fn start(dir: &Path, name: &str, config_yaml: &str, env: &[(&str, &str)]) -> Result<Self> {
        let mut agent = env.iter().fold(AgentProc::new(dir, name, config_yaml), |a, (k, v)| a.env(k, v));
        agent.spawn()?;
        Ok(agent)
    }

    /// Writes the config and starts the process; output is appended to the agent's log files
    /// so a restarted agent's history stays in one place.
    pub fn spawn(&mut self) -> Result<()> {
        if self.child.is_some() && self.exited().is_none() {
            bail!("agent {} is already running", self.name);
        }
        std::fs::write(&self.config_path, &self.config)
            .with_context(|| format!("writing {}", self.config_path.display()))?;
        self.starts += 1;
        let open = |p: &Path| -> Result<std::fs::File> {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))?;
            writeln!(f, "=== harness: start #{} of agent {}", self.starts, self.name)?;
            Ok(f)
        };
        let stdout = open(&self.stdout_path)?;
        let stderr = open(&self.stderr_path)?;
        let log = std::env::var("DRCUT_AGENT_LOG")
            .or_else(|_| std::env::var("DRCUT_NODE_LOG"))
            .unwrap_or_else(|_| "info".into());
        let mut cmd = Command::new(bins::bin_path(bins::AGENT)?);
        cmd.arg("--config")
            .arg(&self.config_path)
            // The flag decides; an inherited variable must not point elsewhere.
            .env_remove("DRCUT_AGENT_CONFIG")
            .env("DRCUT_LOG", log)
            // Colour codes in the log files would split the phrases wait_log looks for.
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        die_with_test(&mut cmd);
        let child = cmd.spawn().with_context(|| format!("spawning agent {}", self.name))?;
        tracing::info!(agent = %self.name, pid = child.id(), "agent started");
        self.child = Some(child);
        Ok(())
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the config file is written.
    pub fn config_path(&self) -> &Path {
        &self.config_path
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

    /// SIGKILL: the agent gets no chance to clean up.
    pub async fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("agent {} is not running", self.name);
        };
        child.start_kill().ok();
        child.wait().await?;
        tracing::info!(agent = %self.name, "agent killed (SIGKILL)");
        Ok(())
    }

    /// SIGTERM and wait for the process to exit; returns its exit status.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("agent {} is not running", self.name);
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
                tracing::info!(agent = %self.name, %status, "agent stopped (SIGTERM)");
                Ok(status)
            }
            Err(_) => {
                child.start_kill().ok();
                child.wait().await.ok();
                bail!("agent {} did not exit within {STOP_TIMEOUT:?} of SIGTERM", self.name)
            }
        }
    }

    /// Waits until the process exits on its own (a refused config) and returns its status.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self.child.as_mut().with_context(|| format!("agent {} is not running", self.name))?;
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .with_context(|| format!("agent {} still running after {timeout:?}", self.name))??;
        self.child = None;
        Ok(status)
    }

    /// Waits until the agent's stderr or stdout contains `needle` (a log line the test
    /// expects); fails at once, with the log tail, if the process exits first.
    pub async fn wait_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().contains(needle) || self.stdout().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.exited() {
                bail!("agent {} exited with {status} before logging {needle:?}\n{}", self.name, self.log_tail(30));
            }
            if Instant::now() >= deadline {
                bail!("agent {} did not log {needle:?} within {timeout:?}\n{}", self.name, self.log_tail(30));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL and reap without an async context: for `Drop`.
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
        format!(
            "----- agent {} stdout ({}):\n{}\n----- agent {} stderr ({}):\n{}\n",
            self.name,
            self.stdout_path.display(),
            file_tail(&self.stdout_path, lines),
            self.name,
            self.stderr_path.display(),
            file_tail(&self.stderr_path, lines),
        )
    }

    /// Everything the agent printed to stdout so far (all starts).
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything the agent logged to stderr so far (all starts).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill_now();
        if std::thread::panicking() {
            eprintln!("===== drcut-tests: agent log (test failed)\n{}", self.log_tail(40));
        }
    }
}

/// A postgres resource for an agent config, as lines under `resources.postgres` (indented by
/// four spaces): the DSN, optionally `data_dir` and `bin_dir`, and `extra` fields (each line
/// one field, e.g. `self_fence: { after: 3s }`).
pub fn postgres_resource_yaml(
    name: &str,
    dsn: &str,
    data_dir: Option<&Path>,
    bin_dir: Option<&Path>,
    extra: &[&str],
) -> String {
    let mut out = format!("    {name}:\n      dsn: \"{dsn}\"\n");
    if let Some(d) = data_dir {
        out.push_str(&format!("      data_dir: {}\n", d.display()));
    }
    if let Some(b) = bin_dir {
        out.push_str(&format!("      bin_dir: {}\n", b.display()));
    }
    for line in extra {
        out.push_str(&format!("      {line}\n"));
    }
    out
}

/// An agent config's `faults:` section (for appending at the top level): TCP proxies and DNS
/// proxies as (name, listen, upstream), processes as (name, pidfile, start argv).
pub fn faults_yaml(
    proxies: &[(&str, std::net::SocketAddr, std::net::SocketAddr)],
    dns_proxies: &[(&str, std::net::SocketAddr, std::net::SocketAddr)],
    processes: &[(&str, &Path, Option<&[&str]>)],
) -> String {
    let mut out = String::from("faults:\n");
    for (section, list) in [("proxies", proxies), ("dns_proxies", dns_proxies)] {
        if !list.is_empty() {
            out.push_str(&format!("  {section}:\n"));
        }
        for (name, listen, upstream) in list {
            out.push_str(&format!("    {name}: {{ listen: \"{listen}\", upstream: \"{upstream}\" }}\n"));
        }
    }
    if !processes.is_empty() {
        out.push_str("  processes:\n");
    }
    for (name, pidfile, start) in processes {
        // JSON strings and arrays are YAML flow scalars and sequences.
        let pidfile = serde_json::Value::from(pidfile.display().to_string());
        let start = start.map(|a| format!(", start: {}", serde_json::json!(a))).unwrap_or_default();
        out.push_str(&format!("    {name}: {{ pidfile: {pidfile}{start} }}\n"));
    }
    out
}
