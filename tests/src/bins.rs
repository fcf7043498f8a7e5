//! Locating the workspace binaries the tests run.
//!
//! `CARGO_BIN_EXE_*` only exists for a package's own binaries, and the coordinator lives in
//! another package, so the binaries are found next to the test executable instead:
//! `target/debug/deps/t10_… → target/debug/drcut-coordinator`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// The coordinator node binary.
pub const COORDINATOR: &str = "drcut-coordinator";
/// The CLI.
pub const DRCTL: &str = "drctl";
/// The region agent.
pub const AGENT: &str = "drcut-agent";

/// The directory holding the built binaries: `$DRCUT_BIN_DIR`, else the test executable's
/// grandparent (the cargo profile dir).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("DRCUT_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .with_context(|| format!("no profile dir above {}", exe.display()))
}

/// The path of binary `name`, failing with the command that builds it when it is missing.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.is_file() {
        bail!("{} not found: run `cargo build --workspace` first (or set DRCUT_BIN_DIR)", path.display());
    }
    Ok(path)
}
