//! A PostgreSQL data directory on the agent's host, for what SQL cannot do: stop and start the
//! server (`pg_ctl`), fence it while it is down, and rebuild it (`pg_rewind`, `pg_basebackup`).
//!
//! PostgreSQL's tools refuse to run as root, so when the agent is root every tool runs as the
//! data directory's owner, and every file the agent writes there is given to that owner: a
//! server that cannot read its own `postgresql.auto.conf` does not start.
//!
//! A server is started again with the options it last ran with (`postmaster.opts`, which the
//! postmaster writes at every start): a server started by hand or by a service manager with
//! `-c port=…` on its command line comes back on the same address.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::time::Instant;

/// The file `ALTER SYSTEM` writes, read by the server after `postgresql.conf`.
pub const AUTO_CONF: &str = "postgresql.auto.conf";
/// Its presence makes the server start in recovery, as a standby.
pub const STANDBY_SIGNAL: &str = "standby.signal";
/// Where `pg_ctl start` sends the server's output (the server's own logging may go elsewhere).
pub const START_LOG: &str = "drcut-pg_ctl.log";

/// Environment variables a tool inherits from the agent; everything else (the agent's secrets)
/// stays out.
const TOOL_ENV: [&str; 4] = ["PATH", "TZ", "TMPDIR", "LANG"];

/// A data directory, the bin dir of its tools, and the user they run as.
#[derive(Debug, Clone)]
pub struct DataDir {
    path: PathBuf,
    bin: PathBuf,
    /// `(uid, gid)` to run tools as and give files to; `None` when the agent is not root.
    owner: Option<(u32, u32)>,
}

impl DataDir {
    /// The data directory at `path`, with its tools in `bin_dir` (or found by [`bin_dir`]).
    pub fn new(path: &Path, bin_dir_declared: Option<&Path>) -> Result<DataDir, String> {
        let meta = std::fs::metadata(path).map_err(|e| format!("data_dir {}: {e}", path.display()))?;
        if !meta.is_dir() {
            return Err(format!("data_dir {} is not a directory", path.display()));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let owner = (root && meta.uid() != 0).then_some((meta.uid(), meta.gid()));
        Ok(DataDir { path: path.to_path_buf(), bin: bin_dir(Some(path), bin_dir_declared)?, owner })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tools' directory.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// `(uid, gid)` tools run as, when the agent is root.
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.owner
    }

    /// The pid of the postmaster running on this directory, if one is. A `postmaster.pid`
    /// left by a crash names a dead process, or one that reused the pid: the running
    /// postmaster's working directory is its data directory, which tells them apart.
    pub fn running_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.path.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        if pid <= 0 {
            return None;
        }
        // SAFETY: signal 0 only checks that the process exists.
        let alive =
            unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            return None;
        }
        match (std::fs::read_link(format!("/proc/{pid}/cwd")), std::fs::canonicalize(&self.path)) {
            (Ok(cwd), Ok(dir)) if cwd != dir => None,
            _ => Some(pid),
        }
    }

    /// The options of the last start, from `postmaster.opts` (the program name dropped).
    pub fn last_options(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.path.join("postmaster.opts")).ok()?;
        let line = text.lines().next()?;
        // `/usr/lib/postgresql/15/bin/postgres "-D" "/data" "-c" "port=5433"`, as pg_ctl's
        // own restart reads it.
        line.find(" \"").map(|i| line[i + 1..].to_string())
    }

    /// Stops the server: `pg_ctl stop -m fast`, then `-m immediate` if that fails. Returns how
    /// it stopped (`fast`, `immediate`, or `was not running`).
    pub async fn stop(&self, deadline: Instant) -> Result<&'static str, String> {
        if self.running_pid().is_none() {
            return Ok("was not running");
        }
        let mut last = String::new();
        for mode in ["fast", "immediate"] {
            // Leave time for the immediate shutdown when the fast one hangs.
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = if mode == "fast" { left.mul_f64(0.6) } else { left };
            let secs = wait.as_secs().max(1).to_string();
            let args = ["stop", "-D", path_str(&self.path), "-m", mode, "-w", "-t", &secs];
            match self.tool("pg_ctl", &args.map(OsString::from), &[], Instant::now() + wait).await {
                Ok(_) if self.running_pid().is_none() => return Ok(mode),
                Ok(out) => last = format!("pg_ctl stop -m {mode} returned but the server still runs: {out}"),
                Err(e) => last = e,
            }
            if self.running_pid().is_none() {
                return Ok(mode);
            }
        }
        Err(format!("cannot stop the server: {last}"))
    }

    /// Starts the server with the options it last ran with and waits until it accepts
    /// connections (a standby: read-only ones).
    pub async fn start(&self, options: Option<&str>, deadline: Instant) -> Result<(), String> {
        let left = deadline.saturating_duration_since(Instant::now());
        let secs = left.as_secs().max(1).to_string();
        let log = self.path.join(START_LOG);
        let mut args: Vec<OsString> =
            ["start", "-D", path_str(&self.path), "-w", "-t", &secs, "-l"].iter().map(OsString::from).collect();
        args.push(log.clone().into_os_string());
        if let Some(o) = options.filter(|o| !o.trim().is_empty()) {
            args.push("-o".into());
            args.push(o.into());
        }
        self.tool("pg_ctl", &args, &[], deadline).await.map(|_| ()).map_err(|e| {
            let tail = crate::pgdata::file_tail(&log, 5);
            if tail.is_empty() { e } else { format!("{e}; server log: {tail}") }
        })
    }

    /// The value of `key` in `postgresql.auto.conf` (the last one wins, as for the server).
    pub fn auto_conf_value(&self, key: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.path.join(AUTO_CONF)).ok()?;
        conf_value(&text, key)
    }

    /// Sets (`Some`) or removes (`None`) `key` in `postgresql.auto.conf`, replacing the file
    /// atomically. Returns whether anything changed.
    pub fn set_auto_conf(&self, key: &str, value: Option<&str>) -> Result<bool, String> {
        let file = self.path.join(AUTO_CONF);
        let old = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("reading {}: {e}", file.display())),
        };
        let new = conf_with(&old, key, value);
        if new == old {
            return Ok(false);
        }
        self.write_file(AUTO_CONF, new.as_bytes())?;
        Ok(true)
    }

    /// Writes `name` in the directory atomically (a temp file renamed over it), mode 0600,
    /// owned by the directory's owner, synced.
    pub fn write_file(&self, name: &str, content: &[u8]) -> Result<(), String> {
        let target = self.path.join(name);
        let tmp = self.path.join(format!("{name}.drcut-tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            std::io::Write::write_all(&mut f, content)?;
            f.sync_all()?;
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))?;
            }
            std::fs::rename(&tmp, &target)?;
            // The rename is durable once the directory is.
            std::fs::File::open(&self.path)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("writing {}: {e}", target.display())
        })
    }

    /// Removes `name` from the directory if it is there.
    pub fn remove_file(&self, name: &str) -> Result<(), String> {
        match std::fs::remove_file(self.path.join(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("removing {}: {e}", self.path.join(name).display())),
        }
    }

    /// Whether `name` exists in the directory.
    pub fn has(&self, name: &str) -> bool {
        self.path.join(name).exists()
    }

    /// Runs tool `name` of the bin dir as the directory's owner, with a neutral environment
    /// plus `env`, until `deadline`. Ok with its output on exit status 0; otherwise an error
    /// holding the output's last lines (the caller redacts secrets from both).
    pub async fn tool(
        &self,
        name: &str,
        args: &[OsString],
        env: &[(&str, &str)],
        deadline: Instant,
    ) -> Result<String, String> {
        let program = self.bin.join(name);
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(args)
            .env_clear()
            .envs(TOOL_ENV.iter().filter_map(|k| std::env::var_os(k).map(|v| (k, v))))
            .env("LC_ALL", "C")
            .envs(env.iter().copied())
            // The tools need a working directory their user can enter.
            .current_dir(self.path.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        let child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let out = match tokio::time::timeout_at(deadline, child.wait_with_output()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => return Err(format!("{name}: {e}")),
            Err(_) => return Err(format!("{name}: still running at the step's deadline (killed)")),
        };
        let text =
            last_lines(&format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
        if out.status.success() { Ok(text) } else { Err(format!("{name} failed ({}): {text}", out.status)) }
    }

    /// Makes `dir` (a new, empty data directory) owned by the owner with mode 0700, as
    /// PostgreSQL requires.
    pub fn prepare_empty(&self, dir: &Path) -> Result<(), String> {
        let make = || -> std::io::Result<()> {
            std::fs::create_dir(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
            }
            Ok(())
        };
        make().map_err(|e| format!("creating {}: {e}", dir.display()))
    }
}

/// The path as text for a tool's argument (data dirs are UTF-8 in practice; a lossy text would
/// name another dir, so it is refused at config load by `Path` display anyway).
fn path_str(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Where PostgreSQL's tools are: `declared`, else the Debian dir of the data directory's major
/// version (`PG_VERSION`), else the newest `/usr/lib/postgresql/*/bin`, else the dir of a
/// `pg_ctl` on `PATH`.
pub fn bin_dir(data_dir: Option<&Path>, declared: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(d) = declared {
        return Ok(d.to_path_buf());
    }
    let debian = Path::new("/usr/lib/postgresql");
    if let Some(v) = data_dir.and_then(|d| std::fs::read_to_string(d.join("PG_VERSION")).ok()) {
        let bin = debian.join(v.trim()).join("bin");
        if bin.join("pg_ctl").is_file() {
            return Ok(bin);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(debian)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((major, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|d| d.join("pg_ctl").is_file())
        .ok_or_else(|| "no pg_ctl found (in /usr/lib/postgresql/*/bin or on PATH): set the resource's bin_dir".into())
}

/// A value as a configuration file string literal.
pub fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// Whether `line` sets `key` (`key = value`, `key value`, `key=value`).
fn sets(line: &str, key: &str) -> bool {
    let t = line.trim_start();
    t.len() > key.len()
        && t[..key.len()].eq_ignore_ascii_case(key)
        && t[key.len()..].starts_with(|c: char| c == '=' || c.is_whitespace())
}

/// The last value `text` gives `key`, unquoted.
pub fn conf_value(text: &str, key: &str) -> Option<String> {
    text.lines().rfind(|l| sets(l, key)).map(|l| {
        let v = l.trim_start()[key.len()..].trim_start().trim_start_matches('=').trim();
        let v = v.split(" #").next().unwrap_or(v).trim();
        v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')).map_or(v.to_string(), |s| s.replace("''", "'"))
    })
}

/// `text` with every line setting `key` removed and, for `Some(v)`, `key = 'v'` appended.
pub fn conf_with(text: &str, key: &str, value: Option<&str>) -> String {
    let mut out: String = text.lines().filter(|l| !sets(l, key)).map(|l| format!("{l}\n")).collect();
    if out.is_empty() {
        out.push_str("# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n");
    }
    if let Some(v) = value {
        out.push_str(&format!("{key} = {}\n", conf_quote(v)));
    }
    out
}

/// The last few non-empty lines of a tool's output, on one line.
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(4)..].join(" | ")
}

/// The last `n` lines of a file, on one line ("" when unreadable).
pub fn file_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_conf_edits_keep_other_settings() {
        let text =
            "# Do not edit\nwork_mem = '8MB'\ndefault_transaction_read_only = 'on'\nprimary_conninfo = 'host=x'\n";
        assert_eq!(conf_value(text, "default_transaction_read_only").as_deref(), Some("on"));
        let off = conf_with(text, "default_transaction_read_only", None);
        assert_eq!(off, "# Do not edit\nwork_mem = '8MB'\nprimary_conninfo = 'host=x'\n");
        let on = conf_with(&off, "primary_conninfo", Some("host=a password='p'"));
        assert!(on.ends_with("primary_conninfo = 'host=a password=''p'''\n"), "{on}");
        assert_eq!(conf_value(&on, "primary_conninfo").as_deref(), Some("host=a password='p'"));
        // A key that is a prefix of another is not matched.
        assert_eq!(conf_with("work_mem_x = 1\n", "work_mem", None), "work_mem_x = 1\n");
        assert!(conf_with("", "a", Some("b")).ends_with("a = 'b'\n"));
    }

    #[test]
    fn a_data_dir_without_a_server() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir { path: dir.path().to_path_buf(), bin: PathBuf::from("/nonexistent"), owner: None };
        assert_eq!(d.running_pid(), None);
        std::fs::write(dir.path().join("postmaster.pid"), "999999999\n/data\n").unwrap();
        assert_eq!(d.running_pid(), None, "a stale pid file");
        // Our own pid is alive but its cwd is not the data dir.
        std::fs::write(dir.path().join("postmaster.pid"), format!("{}\n", std::process::id())).unwrap();
        assert_eq!(d.running_pid(), None);
        std::fs::write(
            dir.path().join("postmaster.opts"),
            "/usr/lib/postgresql/15/bin/postgres \"-D\" \"/d\" \"-c\" \"port=5\"\n",
        )
        .unwrap();
        assert_eq!(d.last_options().as_deref(), Some("\"-D\" \"/d\" \"-c\" \"port=5\""));
        assert!(d.set_auto_conf("default_transaction_read_only", Some("on")).unwrap());
        assert!(!d.set_auto_conf("default_transaction_read_only", Some("on")).unwrap());
        assert_eq!(d.auto_conf_value("default_transaction_read_only").as_deref(), Some("on"));
        let mode = std::fs::metadata(dir.path().join(AUTO_CONF)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
