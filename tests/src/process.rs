//! Running a binary to completion and capturing what it said: `drctl` invocations, and
//! coordinators that are expected to refuse their config and exit.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::bins;

/// What a finished process reported.
#[derive(Debug, Clone)]
pub struct ProcessOutput {
    /// Exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl ProcessOutput {
    /// stdout followed by stderr, for assertions that do not care which stream was used.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for ProcessOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {:?}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `program` with `args` and waits at most `timeout` for it to exit; a process still
/// running then is killed and reported as an error (it was expected to finish).
pub async fn run<I, S>(program: &Path, args: I, timeout: Duration) -> Result<ProcessOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_env(program, args, &[], timeout).await
}

/// [`run`] with extra environment variables.
pub async fn run_env<I, S>(program: &Path, args: I, env: &[(&str, &str)], timeout: Duration) -> Result<ProcessOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args)
        // Tests pass endpoints and tokens explicitly; inherited ones would silently change drctl.
        .env_remove("DRCUT_ENDPOINT")
        .env_remove("DRCUT_TOKEN")
        .env_remove("DRCUT_TOKEN_FILE")
        .envs(env.iter().copied())
        // Likewise TLS files: a test that wants TLS passes --ca/--cert/--key.
        .env_remove("DRCUT_CA")
        .env_remove("DRCUT_CERT")
        .env_remove("DRCUT_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("spawning {}", program.display()))?;
    let out = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out.with_context(|| format!("waiting for {}", program.display()))?,
        // Dropping the timed-out future drops the child, and kill_on_drop kills it.
        Err(_) => bail!("{} still running after {timeout:?}; expected it to exit", program.display()),
    };
    Ok(ProcessOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `drctl` with `args` (at most 30 s).
pub async fn drctl<I, S>(args: I) -> Result<ProcessOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    drctl_env(args, &[]).await
}

/// Runs `drctl` with `args` and extra environment variables (at most 30 s); values are not
/// logged (they may be tokens).
pub async fn drctl_env<I, S>(args: I, env: &[(&str, &str)]) -> Result<ProcessOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
    let names: Vec<&str> = env.iter().map(|(k, _)| *k).collect();
    tracing::info!(?args, env = ?names, "drctl");
    let out = run_env(&bins::bin_path(bins::DRCTL)?, args, env, Duration::from_secs(30)).await?;
    tracing::info!(code = ?out.code, stdout = %out.stdout.trim_end(), stderr = %out.stderr.trim_end(), "drctl finished");
    Ok(out)
}

/// Runs `drcut-coordinator --config FILE` expecting it to exit within 15 s (a refused config).
pub async fn coordinator_to_exit(config: &Path) -> Result<ProcessOutput> {
    let bin = bins::bin_path(bins::COORDINATOR)?;
    run(&bin, [OsStr::new("--config"), config.as_os_str()], Duration::from_secs(15)).await
}
