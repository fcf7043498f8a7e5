//! The newcomer's sandbox: `drcut-sandbox up|down|status [--dir DIR] [--block B]`. Run it
//! through `scripts/sandbox`, which installs PostgreSQL and PowerDNS and builds first. See
//! `drcut_tests::sandbox`.

use anyhow::{Context, Result, bail};
use drcut_tests::sandbox::{self, Options};

fn parse() -> Result<(String, Options)> {
    let mut cmd = None;
    let tmp = std::env::var_os("TMPDIR").map(std::path::PathBuf::from).unwrap_or_else(|| "/tmp".into());
    let mut opt = Options { dir: tmp.join("drcut-sandbox"), block: 0 };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => opt.dir = it.next().context("--dir needs a path")?.into(),
            "--block" => {
                let v = it.next().context("--block needs a number")?;
                opt.block = v.parse().with_context(|| format!("--block {v:?}: a number from 0 to 254"))?;
            }
            "up" | "down" | "status" | "supervise" if cmd.is_none() => cmd = Some(a),
            other => bail!("unknown argument {other:?}; usage: drcut-sandbox [up|down|status] [--dir DIR] [--block B]"),
        }
    }
    // Absolute, so the supervisor is recognised by its command line from any directory.
    opt.dir = std::path::absolute(&opt.dir).with_context(|| format!("--dir {}", opt.dir.display()))?;
    Ok((cmd.unwrap_or_else(|| "up".into()), opt))
}

fn main() {
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // The message alone: it names the problem; a backtrace would bury it.
            eprintln!("drcut-sandbox: {e:#}");
            std::process::exit(1)
        }
    }
}

fn run() -> Result<i32> {
    let (cmd, opt) = parse()?;
    let code = match cmd.as_str() {
        "up" => sandbox::up(&opt)?,
        "down" => {
            sandbox::down(&opt)?;
            0
        }
        "status" => sandbox::status(&opt)?,
        _ => {
            // One thread: the processes it starts die with the thread that spawned them.
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(sandbox::supervise(&opt))?;
            0
        }
    };
    Ok(code)
}
