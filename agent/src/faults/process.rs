//! The `process_kill` fault: SIGKILL of a configured process found by its pidfile, and its
//! configured `start` argv on revert.

use crate::config::ProcessSpec;
use std::path::Path;
use std::process::Stdio;

/// Environment variables a started process inherits from the agent; the agent's own
/// environment holds its secrets (`*_env` DSNs and tokens), which stay out.
const START_ENV: [&str; 7] = ["PATH", "HOME", "LANG", "TZ", "TMPDIR", "USER", "LOGNAME"];

/// The pid in `pidfile` (its first line), if it names a running process.
pub fn running(pidfile: &Path) -> Result<Option<i32>, String> {
    let text = match std::fs::read_to_string(pidfile) {
        Ok(t) => t,
        // No pidfile: not running (a service removes it when it stops).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read pidfile {}: {e}", pidfile.display())),
    };
    let first = text.lines().next().unwrap_or("").trim();
    let pid: i32 = first.parse().map_err(|_| format!("pidfile {} holds {first:?}, not a pid", pidfile.display()))?;
    // 0, 1 and negative numbers address groups or init: kill(2) on them would hit far more
    // than one process. The agent itself is not a target either.
    if pid <= 1 || pid as u32 == std::process::id() {
        return Err(format!("pidfile {} names pid {pid}, which the agent will not kill", pidfile.display()));
    }
    Ok(alive(pid).then_some(pid))
}

/// Whether `pid` exists and is not a zombie (killed, waiting for its parent to reap it).
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let exists =
        unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
            != Some(true)
}

/// Kills process `name` with SIGKILL; the detail names the pid.
pub fn kill(name: &str, spec: &ProcessSpec) -> Result<String, String> {
    let at = |m: String| format!("fault.process: {name:?}: {m}");
    let Some(pid) = running(&spec.pidfile).map_err(at)? else {
        return Err(at(format!("not running (pidfile {}): nothing to kill", spec.pidfile.display())));
    };
    // SAFETY: kill(2) with a checked positive pid (not init, not the agent) and a signal number.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        return Err(at(format!("kill -9 {pid}: {}", std::io::Error::last_os_error())));
    }
    Ok(format!("killed {name:?} (pid {pid}) with SIGKILL"))
}

/// Starts process `name` again with its `start` argv, detached in its own process group (it
/// outlives this fault and is not killed with the agent's hooks); nothing when it has no
/// `start` or is running already.
pub fn start(name: &str, spec: &ProcessSpec) -> Result<String, String> {
    let at = |m: String| format!("faults.processes.{name}: {m}");
    if let Some(pid) = running(&spec.pidfile).map_err(at)? {
        return Ok(format!("{name:?} already running (pid {pid})"));
    }
    let Some(argv) = &spec.start else {
        return Ok(format!("{name:?} has no start command: left down"));
    };
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .envs(START_ENV.iter().filter_map(|k| std::env::var_os(k).map(|v| (k, v))))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| at(format!("start: cannot run {:?}: {e}", argv[0])))?;
    let pid = child.id().unwrap_or(0);
    // Reaped when it exits, so it never lingers as a zombie of the agent.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(format!("started {name:?} again (pid {pid})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfiles_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.pid");
        assert_eq!(running(&f), Ok(None));
        std::fs::write(&f, "abc\n").unwrap();
        assert!(running(&f).unwrap_err().contains("holds \"abc\", not a pid"));
        for bad in ["1", "0", "-5"] {
            std::fs::write(&f, bad).unwrap();
            assert!(running(&f).unwrap_err().contains("will not kill"), "{bad}");
        }
        std::fs::write(&f, std::process::id().to_string()).unwrap();
        assert!(running(&f).is_err());
        let spec = ProcessSpec { pidfile: f.clone(), start: None };
        std::fs::remove_file(&f).unwrap();
        let e = kill("app", &spec).unwrap_err();
        assert!(e.starts_with("fault.process: \"app\": not running"), "{e}");
    }
}
