//! `drcut-sim`: runs seeds of the deterministic simulation.
//!
//! `drcut-sim --seeds 10000 --from 0` runs many; `drcut-sim --seed 42 --trace` replays one and
//! prints every event. Exit status 1 when any seed breaks an invariant.

use clap::Parser;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Deterministic simulation of the drcut coordinator")]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 200)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Replay exactly this seed (overrides --seeds/--from).
    #[arg(long)]
    seed: Option<u64>,
    /// Print every event of the seed as it happens.
    #[arg(long)]
    trace: bool,
    /// Simulated seconds of faults and requests per seed.
    #[arg(long, default_value_t = 20)]
    chaos_secs: u64,
    /// Simulated seconds of calm before the final checks.
    #[arg(long, default_value_t = 12)]
    settle_secs: u64,
    /// Keep going after a failing seed.
    #[arg(long)]
    keep_going: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let (from, count) = match a.seed {
        Some(s) => (s, 1),
        None => (a.from, a.seeds),
    };
    let started = Instant::now();
    let mut failed = Vec::new();
    for seed in from..from + count {
        let opts = drcut_sim::Options { seed, chaos_secs: a.chaos_secs, settle_secs: a.settle_secs, verbose: a.trace };
        let o = drcut_sim::run(&opts);
        if o.violations.is_empty() {
            if a.seed.is_some() || (seed - from + 1).is_multiple_of(50) {
                println!(
                    "seed {seed} ok ({} steps, runs {:?}, trace {}) [{} seeds in {:.1}s]",
                    o.steps,
                    o.runs,
                    &o.trace_hash[..16],
                    seed - from + 1,
                    started.elapsed().as_secs_f64()
                );
            }
        } else {
            eprintln!("{}", drcut_sim::report(&o));
            failed.push(seed);
            if !a.keep_going {
                break;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{} seed(s) failed {failed:?}; {:.2} seeds/s", failed.len(), count as f64 / secs.max(1e-9));
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
