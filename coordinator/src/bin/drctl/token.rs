//! `drctl token ...`: new API tokens and their hashes, and the token drctl itself sends.

use super::{Cli, Fail};
use clap::Subcommand;
use drcut_coordinator::auth::{Principals, token_hash};
use serde_json::json;
use std::io::Read;
use std::path::PathBuf;

/// The token subcommands (local: they contact no cluster).
#[derive(Subcommand)]
pub enum TokenCmd {
    /// Make a random API token (256 bits): prints it ONCE, with the principals-file entry that
    /// holds only its SHA-256.
    New {
        /// The principal's name (the actor in the audit chain).
        #[arg(long)]
        name: String,
        /// viewer, operator, approver or admin; repeatable.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Restrict the principal to this region; repeatable (default: every region).
        #[arg(long = "region")]
        regions: Vec<String>,
        /// When the token stops working (RFC 3339, e.g. 2027-03-01T00:00:00Z).
        #[arg(long)]
        expires: Option<String>,
    },
    /// Print the SHA-256 of a token read from stdin (what a principals file stores).
    Hash,
}

/// A fresh token: `drcut_` and 256 random bits in hex (the prefix makes leaked tokens easy to
/// find with secret scanners).
fn new_token() -> String {
    use rand::Rng;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!("drcut_{}", hex::encode(b))
}

/// The principals-file entry for a token, as YAML list item text.
fn entry(name: &str, roles: &[String], regions: &[String], hash: &str, expires: Option<&str>) -> String {
    let mut y = format!("  - name: {name}\n    roles: [{}]\n", roles.join(", "));
    if !regions.is_empty() {
        y.push_str(&format!("    regions: [{}]\n", regions.join(", ")));
    }
    y.push_str(&format!("    tokens:\n      - sha256: {hash}\n"));
    if let Some(e) = expires {
        y.push_str(&format!("        expires: {e}\n"));
    }
    y
}

/// Runs a token subcommand.
pub fn run(cli: &Cli, cmd: &TokenCmd) -> Result<(), Fail> {
    match cmd {
        TokenCmd::New { name, roles, regions, expires } => {
            for r in roles {
                if !["viewer", "operator", "approver", "admin"].contains(&r.as_str()) {
                    return Err(Fail(2, format!("--role {r:?}: expected viewer, operator, approver or admin")));
                }
            }
            let token = new_token();
            let hash = token_hash(&token);
            let e = entry(name, roles, regions, &hash, expires.as_deref());
            // The entry must load as the coordinator will load it: check names, regions, expiry.
            Principals::parse("(new entry)", &format!("principals:\n{e}"))
                .map_err(|err| Fail(2, format!("{}: {}", err.field.replace("principals[0].", "--"), err.message)))?;
            if cli.json {
                println!("{}", json!({"ok": true, "name": name, "token": token, "sha256": hash, "entry": e}));
            } else {
                println!(
                    "API token for {name} (shown once: hand it to {name} through a secret store, never chat or email):"
                );
                println!();
                println!("  {token}");
                println!();
                println!("Add this entry under `principals:` in the coordinators' principals file (it holds only the");
                println!("token's SHA-256; nodes reload the file when it changes):");
                println!();
                print!("{e}");
            }
            Ok(())
        }
        TokenCmd::Hash => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map_err(|e| Fail(2, format!("stdin: {e}")))?;
            let t = s.trim();
            if t.is_empty() {
                return Err(Fail(2, "stdin: no token (pipe the token in: drctl token hash < token.txt)".into()));
            }
            let h = token_hash(t);
            if cli.json {
                println!("{}", json!({"ok": true, "sha256": h}));
            } else {
                println!("{h}");
            }
            Ok(())
        }
    }
}

/// The token drctl sends: `--token`/`DRCUT_TOKEN`, or the first line of `--token-file`/
/// `DRCUT_TOKEN_FILE`. Errors never contain the token.
pub fn resolve(token: Option<&str>, file: Option<&PathBuf>) -> Result<Option<String>, Fail> {
    match (token.map(str::trim).filter(|t| !t.is_empty()), file) {
        (Some(_), Some(f)) => Err(Fail(
            2,
            format!("both a token (--token/DRCUT_TOKEN) and a token file ({}) are given: use one", f.display()),
        )),
        (Some(t), None) => Ok(Some(t.to_string())),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f).map_err(|e| Fail(2, format!("--token-file {}: {e}", f.display())))?;
            let t = text.lines().next().unwrap_or_default().trim();
            if t.is_empty() {
                return Err(Fail(2, format!("--token-file {}: the file is empty", f.display())));
            }
            Ok(Some(t.to_string()))
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_tokens_are_long_random_and_their_entry_loads() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), "drcut_".len() + 64);
        let e =
            entry("alice", &["operator".into()], &["eu-west".into()], &token_hash(&a), Some("2030-01-01T00:00:00Z"));
        let p = Principals::parse("t", &format!("principals:\n{e}")).unwrap();
        let later = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        assert_eq!(p.authenticate(&a, later).unwrap().name, "alice");
    }
}
