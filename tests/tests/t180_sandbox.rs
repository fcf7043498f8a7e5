//! The newcomer's sandbox, run the way the README tells a newcomer to run it: `scripts/sandbox`
//! (non-interactive here, and without its build step: the suite has just built) must start the platform, finish a successful planned cutover under
//! load with nothing lost and a passed drill with its report, and leave everything running;
//! a second `up` starts nothing twice; `down` leaves no process and no dir behind.

use anyhow::{Context, Result, ensure};
use drcut_tests::ProcessOutput;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

const BLOCK: u8 = 180;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/sandbox")
}

async fn sandbox(cmd: &str, dir: &Path, timeout: Duration) -> Result<ProcessOutput> {
    let dir = dir.display().to_string();
    let block = BLOCK.to_string();
    // scripts/test built everything just before; a build inside the suite would wait on the
    // cargo lock of whatever else runs.
    let env = [("DRCUT_SANDBOX_NO_BUILD", "1")];
    let out = drcut_tests::process::run_env(&script(), [cmd, "--dir", &dir, "--block", &block], &env, timeout).await?;
    tracing::info!(cmd, code = ?out.code, "scripts/sandbox finished:\n{}", out.combined());
    Ok(out)
}

/// Every live process: pid → (parent, state, command line).
fn processes() -> BTreeMap<u32, (u32, char, String)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let mut f = rest.split_whitespace();
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        out.insert(pid, (ppid, state, cmd));
    }
    out
}

/// `root` and every process below it.
fn tree(root: u32) -> BTreeSet<u32> {
    let all = processes();
    let mut found = BTreeSet::from([root]);
    loop {
        let more: Vec<u32> =
            all.iter().filter(|(p, (pp, _, _))| found.contains(pp) && !found.contains(p)).map(|(p, _)| *p).collect();
        if more.is_empty() {
            return found;
        }
        found.extend(more);
    }
}

fn alive(pid: u32) -> bool {
    processes().get(&pid).is_some_and(|(_, state, _)| *state != 'Z')
}

/// Takes the sandbox down if the test stops early, so a failure leaves nothing running.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = std::process::Command::new(script())
                .args(["down", "--dir", &self.0.display().to_string(), "--block", &BLOCK.to_string()])
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_cuts_over_drills_stays_up_and_goes_away() -> Result<()> {
    drcut_tests::init_tracing();
    let tmp = tempfile::tempdir()?;
    // PostgreSQL runs as `postgres` when the suite runs as root: it must get through (0700 by
    // default; the sandbox refuses a dir it cannot reach).
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let dir = tmp.path().join("sandbox");
    let _down = Down(dir.clone());

    let out = sandbox("up", &dir, Duration::from_secs(600)).await?;
    let text = out.stdout.clone();
    ensure!(out.code == Some(0), "scripts/sandbox up failed:\n{out}");
    for want in [
        "both regions up",
        "preconditions: all hold now",
        "bob approves it",
        "ok   promote",
        "shift phase 3",
        "state succeeded",
        "# Drill report: casino-latency",
        "**PASSED**",
        "| no failover | PASS |",
        "The sandbox is up and stays up",
        "drctl status",
        &format!("http://127.0.{BLOCK}.1:9100/"),
        "scripts/sandbox down",
    ] {
        ensure!(text.contains(want), "the sandbox's output lacks {want:?}:\n{text}");
    }
    let lost = text.lines().find(|l| l.trim_start().starts_with("lost:")).context("no `lost:` line")?;
    ensure!(lost.split_whitespace().nth(1) == Some("0"), "acknowledged writes lost: {lost}");
    let acked = text.lines().find(|l| l.trim_start().starts_with("acknowledged writes:")).context("no acked line")?;
    let n: u64 = acked.split_whitespace().nth(2).context("count")?.parse()?;
    ensure!(n >= 100, "the players' load acknowledged only {n} writes during the cutover: {acked}");

    let pid: u32 = std::fs::read_to_string(dir.join("supervisor.pid"))?.trim().parse()?;
    let procs = tree(pid);
    let all = processes();
    let count = |bin: &str| procs.iter().filter(|p| all.get(p).is_some_and(|(_, _, c)| c.contains(bin))).count();
    ensure!(count("drcut-coordinator") == 3, "3 coordinators run: {procs:?}");
    ensure!(count("drcut-agent") == 2 && count("drcut-casino") == 2, "an agent and an app per region");
    ensure!(count("pdns_server") == 1 && count("bin/postgres") >= 2, "PowerDNS and both PostgreSQL servers");

    tracing::info!("--- it stays up: the console and drctl answer");
    let console = drcut_tests::http_server::http_client().get(format!("http://127.0.{BLOCK}.1:9100/")).send().await?;
    ensure!(console.status() == 200, "console: {}", console.status());
    let eps: Vec<String> = (1..=3).map(|i| drcut_tests::cluster::node_addr(BLOCK, i).to_string()).collect();
    let runs = drcut_tests::process::drctl(["--endpoint", &eps.join(","), "run", "list"]).await?;
    ensure!(runs.code == Some(0) && runs.stdout.contains("succeeded"), "drctl run list:\n{runs}");

    tracing::info!("--- a second up starts nothing");
    let again = sandbox("up", &dir, Duration::from_secs(300)).await?;
    ensure!(again.code == Some(0) && again.stdout.contains("already up"), "second up:\n{again}");
    let procs_after = tree(pid);
    ensure!(
        procs_after
            .iter()
            .filter(|p| processes().get(p).is_some_and(|(_, _, c)| c.contains("drcut-coordinator")))
            .count()
            == 3,
        "still 3 coordinators"
    );
    let status = sandbox("status", &dir, Duration::from_secs(120)).await?;
    ensure!(status.code == Some(0) && status.stdout.contains("Leader"), "sandbox status:\n{status}");

    tracing::info!("--- down: nothing left");
    let down = sandbox("down", &dir, Duration::from_secs(120)).await?;
    ensure!(down.code == Some(0), "down:\n{down}");
    let left: Vec<u32> = procs_after.iter().copied().filter(|&p| alive(p)).collect();
    ensure!(
        left.is_empty(),
        "processes left after down: {:?}",
        left.iter().map(|p| processes().get(p).cloned()).collect::<Vec<_>>()
    );
    ensure!(!dir.exists(), "{} still exists after down", dir.display());
    let listening =
        std::net::TcpStream::connect_timeout(&drcut_tests::cluster::node_addr(BLOCK, 1), Duration::from_millis(500));
    ensure!(listening.is_err(), "a coordinator still listens after down");
    let twice = sandbox("down", &dir, Duration::from_secs(120)).await?;
    ensure!(twice.code == Some(0) && twice.stdout.contains("no sandbox"), "down again:\n{twice}");
    Ok(())
}
