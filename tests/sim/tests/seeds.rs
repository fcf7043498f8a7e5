//! The simulation suite: `DRCUT_SIM_SEEDS` seeds (default 200) from `DRCUT_SIM_FROM` (default
//! 0), spread over the machine's cores, and the proof that a seed replays exactly.

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
fn seeds_hold_every_invariant() {
    let (from, n) = (env("DRCUT_SIM_FROM", 0), env("DRCUT_SIM_SEEDS", 200));
    let started = std::time::Instant::now();
    let outcomes = drcut_sim::run_many(from, n, drcut_sim::Options::new);
    let failures: Vec<u64> = outcomes.iter().filter(|o| !o.violations.is_empty()).map(|o| o.seed).collect();
    for o in outcomes.iter().filter(|o| !o.violations.is_empty()) {
        eprintln!("{}", drcut_sim::report(o));
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!("{n} seeds in {secs:.1}s ({:.2} seeds/s)", n as f64 / secs);
    assert!(failures.is_empty(), "failing seeds {failures:?}; replay one with: scripts/sim --seed SEED --trace");
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
