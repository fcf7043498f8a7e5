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

/// The directory holding the built binaries: `$DRCUT_BIN_DIR`, else the cargo profile dir the
/// running executable belongs to.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("DRCUT_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    let dir = exe.parent().with_context(|| format!("no dir above {}", exe.display()))?;
    // Test executables live in target/<profile>/deps; the harness's own binaries (bench,
    // sandbox) beside the others in target/<profile>.
    let dir = if dir.file_name().is_some_and(|n| n == "deps") { dir.parent().unwrap_or(dir) } else { dir };
    Ok(dir.to_path_buf())
}

/// The path of binary `name`, failing with the command that builds it when it is missing.
pub fn bin_path(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    if !path.is_file() {
        bail!("{} not found: run `cargo build --workspace` first (or set DRCUT_BIN_DIR)", path.display());
    }
    Ok(path)
}
