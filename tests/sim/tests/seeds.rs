//! The simulation suite: `DRCUT_SIM_SEEDS` seeds (default 200) from `DRCUT_SIM_FROM` (default
//! 0), in worker processes of the `drcut-sim` binary (one per core), and the proof that a seed
//! replays exactly.

use std::process::Command;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn seeds_hold_every_invariant() {
    let (from, n) = (env("DRCUT_SIM_FROM", 0), env("DRCUT_SIM_SEEDS", 200));
    let status = Command::new(env!("CARGO_BIN_EXE_drcut-sim"))
        .args(["--seeds", &n.to_string(), "--from", &from.to_string(), "--keep-going"])
        .status()
        .expect("run drcut-sim");
    assert!(
        status.success(),
        "some seeds broke an invariant (see above); replay one with: scripts/sim --seed SEED --trace"
    );
}

/// Exact replay needs tokio's scheduler RNG seeded, which tokio allows only under
/// `--cfg tokio_unstable` (`scripts/sim --replay-check` builds that way).
#[test]
#[cfg_attr(not(tokio_unstable), ignore = "exact replay needs --cfg tokio_unstable: run scripts/sim --replay-check")]
fn a_seed_replays_exactly() {
    for seed in [env("DRCUT_SIM_FROM", 0) + 7, 12345] {
        let a = drcut_sim::run(&drcut_sim::Options::new(seed));
        let b = drcut_sim::run(&drcut_sim::Options::new(seed));
        assert_eq!(a.steps, b.steps);
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed} did not replay exactly");
        eprintln!("seed {seed}: trace {} ({} steps) twice", a.trace_hash, a.steps);
    }
}

/// The shipped playbook still has the texts the simulation shortens (a silent miss would leave
/// approvals on, and no run would ever start).
#[test]
fn the_playbook_is_shortened_for_simulation() {
    let t = drcut_sim::client::playbook_text();
    assert!(t.contains("approvals: { required: 0 }"), "approvals not turned off");
    for long in ["30s", "60s", "150s", "2m", "timeout: 10s"] {
        assert!(!t.contains(long), "{long} left in the simulated playbook");
    }
}
