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
    let opts = |seed| drcut_sim::Options { seed, chaos_secs: a.chaos_secs, settle_secs: a.settle_secs, verbose: a.trace };
    let mut done = 0;
    while done < count {
        // Chunks keep progress visible and stop soon after a failure.
        let chunk = (count - done).min(if a.seed.is_some() { 1 } else { 50 });
        let outcomes = if a.seed.is_some() {
            vec![drcut_sim::run(&opts(from + done))]
        } else {
            drcut_sim::run_many(from + done, chunk, opts)
        };
        done += chunk;
        for o in &outcomes {
            if o.violations.is_empty() {
                if a.seed.is_some() {
                    println!("seed {} ok ({} steps, runs {:?}, trace {})", o.seed, o.steps, o.runs, o.trace_hash);
                }
            } else {
                eprintln!("{}", drcut_sim::report(o));
                failed.push(o.seed);
            }
        }
        if a.seed.is_none() {
            println!("{done}/{count} seeds, {} failed, {:.1}s", failed.len(), started.elapsed().as_secs_f64());
        }
        if !failed.is_empty() && !a.keep_going {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{} seed(s) failed {failed:?}; {:.2} seeds/s", failed.len(), done as f64 / secs.max(1e-9));
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
