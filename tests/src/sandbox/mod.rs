//! The newcomer's sandbox (`scripts/sandbox`): a whole platform on this machine, a planned
//! cutover and a GameDay drill in one command, left running to explore until `down`.
//!
//! `up` starts a detached *supervisor* (this binary again, `supervise`) in its own session and
//! follows its progress file until it says ready. The supervisor owns every component through
//! the harness's own types ([`world::World`]), so taking it all down is theirs: on SIGTERM it
//! drops them (processes stopped, temp dirs deleted). Its temp dirs live under the sandbox dir
//! (`TMPDIR` points there), and every process it starts carries a parent-death signal, so even
//! a supervisor killed outright leaves nothing that `down` cannot remove.
//!
//! The sandbox dir holds: `supervisor.pid`, `progress.log` (what `up` prints),
//! `supervisor.log` (its own log), the files it applied, `ready` (the instructions) or
//! `failed`, and `tmp/` (configs, data and logs of every component).

pub mod load;
pub mod show;
pub mod world;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::bins;

/// Where and on which addresses.
#[derive(Debug, Clone)]
pub struct Options {
    /// The sandbox dir (state, logs, temp data).
    pub dir: PathBuf,
    /// Address block: everything listens on `127.0.block.x`.
    pub block: u8,
}

const PID: &str = "supervisor.pid";
const PROGRESS: &str = "progress.log";
const LOG: &str = "supervisor.log";
const READY: &str = "ready";
const FAILED: &str = "failed";
/// How long `up` follows a supervisor before giving up on it.
const UP_TIMEOUT: Duration = Duration::from_secs(600);

fn alive(pid: u32) -> bool {
    crate::pg::pid_alive(pid as i32)
}

/// The live supervisor of the sandbox in `dir`, if any. The pid file alone is not trusted: after
/// a reboot its number may belong to another process, which must never be signalled.
fn running_supervisor(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join(PID)).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let ours = args.contains(&b"supervise".as_slice()) && args.contains(&dir.as_os_str().as_encoded_bytes());
    (ours && alive(pid)).then_some(pid)
}

fn chmod_755(p: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", p.display()))
}

/// `up`: starts the sandbox, or reports the one already running. Returns the exit code.
pub fn up(opt: &Options) -> Result<i32> {
    let dir = &opt.dir;
    if let Some(pid) = running_supervisor(dir) {
        if let Ok(text) = std::fs::read_to_string(dir.join(READY)) {
            println!(
                "==> the sandbox is already up (supervisor pid {pid}, {}); nothing started twice.\n",
                dir.display()
            );
            print!("{text}");
            return Ok(0);
        }
        if let Ok(text) = std::fs::read_to_string(dir.join(FAILED)) {
            println!("==> a sandbox is up, but its cutover or drill did not succeed:\n{text}");
            println!("Remove it with `scripts/sandbox down`, then run `scripts/sandbox` again.");
            return Ok(1);
        }
        println!("==> a sandbox is starting (supervisor pid {pid}); following it");
        return follow(dir, pid);
    }
    if dir.exists() {
        println!("==> removing what a stopped sandbox left in {}", dir.display());
        remove(dir)?;
    }
    // The servers run as `postgres` when this runs as root: they must be able to enter the dirs.
    reachable_by_postgres(dir)?;
    std::fs::create_dir_all(dir.join("tmp")).with_context(|| format!("creating {}", dir.display()))?;
    chmod_755(dir)?;
    chmod_755(&dir.join("tmp"))?;
    let progress = std::fs::File::create(dir.join(PROGRESS))?;
    let log = std::fs::File::create(dir.join(LOG))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("supervise")
        .arg("--dir")
        .arg(dir)
        .arg("--block")
        .arg(opt.block.to_string())
        .env("TMPDIR", dir.join("tmp"))
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(std::process::Stdio::null())
        .stdout(progress)
        .stderr(log);
    // Its own session: no terminal, so closing this one (or Ctrl-C here) leaves it running.
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the sandbox supervisor")?;
    std::fs::write(dir.join(PID), format!("{}\n", child.id()))?;
    println!(
        "==> the sandbox runs in the background (pid {}); Ctrl-C here only stops watching, `scripts/sandbox down` stops it",
        child.id()
    );
    follow(dir, child.id())
}

/// As root, PostgreSQL runs as `postgres`, which must be able to pass through every existing
/// parent of `dir`; refuses (changing nothing) with the parent that stops it.
fn reachable_by_postgres(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let Some((uid, gid)) = crate::pg::postgres_owner()? else { return Ok(()) };
    for parent in dir.ancestors().skip(1).filter(|p| p.exists()) {
        let m = std::fs::metadata(parent)?;
        let x = if m.uid() == uid {
            m.mode() & 0o100
        } else if m.gid() == gid {
            m.mode() & 0o010
        } else {
            m.mode() & 0o001
        };
        anyhow::ensure!(
            x != 0,
            "PostgreSQL runs as the postgres user, which cannot enter {} (mode {:o}): pick a --dir it can reach, e.g. under /tmp",
            parent.display(),
            m.mode() & 0o7777
        );
    }
    Ok(())
}

/// Prints the supervisor's progress as it comes, until it is ready (0), says it failed (1) or
/// stops (1).
fn follow(dir: &Path, pid: u32) -> Result<i32> {
    let mut file = std::fs::File::open(dir.join(PROGRESS))?;
    let mut at = 0u64;
    let started = std::time::Instant::now();
    let mut drain = |file: &mut std::fs::File| -> Result<()> {
        file.seek(SeekFrom::Start(at))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        at += buf.len() as u64;
        use std::io::Write as _;
        std::io::stdout().write_all(&buf)?;
        std::io::stdout().flush()?;
        Ok(())
    };
    loop {
        let ready = dir.join(READY).exists();
        let failed = dir.join(FAILED).exists();
        let gone = !alive(pid);
        drain(&mut file)?;
        if ready {
            return Ok(0);
        }
        if failed {
            println!("\nThe environment stays up for a look (see above); `scripts/sandbox down` removes it.");
            return Ok(1);
        }
        if gone {
            let log = std::fs::read_to_string(dir.join(LOG)).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            println!("\n==> the sandbox stopped while starting. Its log ({}):", dir.join(LOG).display());
            for l in tail.iter().rev() {
                println!("    {l}");
            }
            println!("`scripts/sandbox down` removes what it left in {}.", dir.display());
            return Ok(1);
        }
        if started.elapsed() > UP_TIMEOUT {
            println!(
                "\n==> not ready after {UP_TIMEOUT:?}; it keeps going in the background (pid {pid}): see {}",
                dir.join(LOG).display()
            );
            return Ok(1);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `down`: stops the supervisor (which stops everything) and removes the sandbox dir.
pub fn down(opt: &Options) -> Result<()> {
    let dir = &opt.dir;
    let Some(pid) = running_supervisor(dir) else {
        if dir.exists() {
            remove(dir)?;
            println!("no sandbox was running; removed {}", dir.display());
        } else {
            println!("no sandbox at {}", dir.display());
        }
        return Ok(());
    };
    {
        println!("==> stopping the sandbox (supervisor pid {pid})");
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if alive(pid) {
            println!("    still running after 30 s: SIGKILL (its processes die with it)");
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            while alive(pid) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    remove(dir)?;
    println!("sandbox stopped; removed {}", dir.display());
    Ok(())
}

fn remove(dir: &Path) -> Result<()> {
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// `status`: `drctl status` against the running sandbox.
pub fn status(opt: &Options) -> Result<i32> {
    if running_supervisor(&opt.dir).is_none() {
        println!("no sandbox is running at {} (start one: scripts/sandbox)", opt.dir.display());
        return Ok(1);
    }
    let eps = endpoints(opt.block);
    let st = std::process::Command::new(bins::bin_path(bins::DRCTL)?).args(["--endpoint", &eps, "status"]).status()?;
    Ok(st.code().unwrap_or(1))
}

fn endpoints(block: u8) -> String {
    [1, 2, 3].map(|i| crate::cluster::node_addr(block, i).to_string()).join(",")
}

/// `supervise`: starts the platform, runs the show, writes `ready` (or `failed`) and keeps it
/// all up until SIGTERM or SIGINT.
pub async fn supervise(opt: &Options) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let dir = opt.dir.clone();
    show::say(&format!("starting the platform on 127.0.{}.x (state and logs in {})", opt.block, dir.display()));
    let started = tokio::select! {
        w = world::World::start(opt.block, &dir, |s| println!("    {s}")) => w,
        _ = term.recv() => return Ok(()),
        _ = int.recv() => return Ok(()),
    };
    let world = match started {
        Ok(w) => w,
        Err(e) => {
            println!("\n==> FAILED to start the platform: {e:#}");
            return Err(e);
        }
    };
    let load = load::Load::start(world.dns.dns_addr(), 4, Duration::from_millis(40))?;
    let outcome = tokio::select! {
        r = show::run(&world, &load, &dir) => Some(r),
        _ = term.recv() => None,
        _ = int.recv() => None,
    };
    if let Some(outcome) = outcome {
        load.idle(Duration::from_secs(1));
        let text = instructions(&world, opt);
        match outcome {
            Ok(shown) if shown.ok() => {
                show::say(&format!(
                    "done: cutover {} succeeded, {} acknowledged writes, {} lost; drill {} {}",
                    shown.run_id, shown.acked, shown.lost, shown.drill_id, shown.drill_outcome
                ));
                println!();
                print!("{text}");
                std::fs::write(dir.join(READY), &text)?;
            }
            Ok(shown) => {
                let why = format!(
                    "cutover {} {} ({} acknowledged writes lost); drill {} {}\n",
                    shown.run_id,
                    shown.run_state,
                    shown.lost,
                    if shown.drill_id.is_empty() { "not run" } else { &shown.drill_id },
                    shown.drill_outcome
                );
                show::say(&format!("NOT as expected: {why}"));
                print!("{text}");
                std::fs::write(dir.join(FAILED), why + &text)?;
            }
            Err(e) => {
                let why = format!("{e:#}\n");
                show::say(&format!("FAILED: {why}"));
                print!("{text}");
                std::fs::write(dir.join(FAILED), why + &text)?;
            }
        }
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    }
    load.stop().await;
    world.stop().await;
    Ok(())
}

/// What to try next, and how to stop: printed at the end of `up` and again by a second `up`.
fn instructions(w: &world::World, opt: &Options) -> String {
    let drctl = bins::bin_path(bins::DRCTL).map(|p| p.display().to_string()).unwrap_or_else(|_| "drctl".into());
    let eps = w.endpoints();
    let pids: Vec<String> = w.pids().iter().map(|(n, p)| format!("{n} {p}")).collect();
    let app = format!("http://{}", w.app_addr(1));
    format!(
        r#"The sandbox is up and stays up; the players keep playing. Try:
  export DRCUT_ENDPOINT={eps}
  {drctl} status                   # the cluster, its leader, the regions
  {drctl} health                   # regions x checks x vantage points
  {drctl} run list                 # the cutover above; `run show RUN` for its record
  {drctl} drill runs               # the drill; `drill report ID` for its report
  {drctl} audit verify             # the hash-chained audit log, checked
  console (the DR button):  {console}   (every node serves it: 127.0.{b}.1-3:9100)
  the casino:  curl -s -X POST {app}/api/spin -d '{{"player":"player-1","bet":5}}'
  kill a coordinator (a pid below) and watch another lead:  kill -9 PID; {drctl} status
processes: {pids}
state, configs and logs: {dir}
Stop everything and remove it:  scripts/sandbox down
"#,
        console = w.console_url(),
        b = opt.block,
        pids = pids.join(", "),
        dir = opt.dir.display(),
    )
}
