//! `drcut-sim`: runs seeds of the deterministic simulation.
//!
//! `drcut-sim --seeds 10000 --from 0` runs many, spread over worker processes (one per core);
//! `drcut-sim --seed 42 --trace` replays one and prints every event. Exit status 1 when any seed
//! breaks an invariant.
//!
//! Parallelism is by process, never by thread: two simulations sharing one process perturb each
//! other's schedules (measured: the same seed gave different traces), so a seed found failing in
//! a batch would not replay. One process runs its seeds one after another on one thread.

use clap::Parser;
use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
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
    #[arg(long, default_value_t = drcut_sim::Options::new(0).chaos_secs)]
    chaos_secs: u64,
    /// Simulated seconds of calm before the final checks.
    #[arg(long, default_value_t = drcut_sim::Options::new(0).settle_secs)]
    settle_secs: u64,
    /// Keep going after a failing seed.
    #[arg(long)]
    keep_going: bool,
    /// Print every seed's trace hash (`SEED <seed> ok|FAIL <hash> <steps>`): two runs of a range
    /// must print the same lines.
    #[arg(long)]
    list: bool,
    /// Worker processes (default: one per core).
    #[arg(long)]
    jobs: Option<usize>,
    /// Internal: run as a worker, taking every `stride`-th seed.
    #[arg(long, hide = true)]
    worker: bool,
    /// Internal: the worker's stride.
    #[arg(long, hide = true, default_value_t = 1)]
    stride: u64,
}

fn options(a: &Args, seed: u64) -> drcut_sim::Options {
    drcut_sim::Options { seed, chaos_secs: a.chaos_secs, settle_secs: a.settle_secs, verbose: a.trace }
}

/// Runs seeds in this process, printing one `SEED` line each (workers' protocol).
fn work(a: &Args) -> Vec<u64> {
    let mut failed = Vec::new();
    for seed in (a.from..a.from + a.seeds).step_by(a.stride as usize) {
        let o = drcut_sim::run(&options(a, seed));
        let ok = o.violations.is_empty();
        println!("SEED {seed} {} {} {}", if ok { "ok" } else { "FAIL" }, o.trace_hash, o.steps);
        if !ok {
            eprintln!("{}", drcut_sim::report(&o));
            failed.push(seed);
            if !a.keep_going {
                break;
            }
        }
    }
    failed
}

fn main() -> ExitCode {
    let a = Args::parse();
    let started = Instant::now();
    if let Some(seed) = a.seed {
        let o = drcut_sim::run(&options(&a, seed));
        if o.violations.is_empty() {
            println!("seed {seed} ok ({} steps, runs {:?}, trace {})", o.steps, o.runs, o.trace_hash);
            return ExitCode::SUCCESS;
        }
        eprintln!("{}", drcut_sim::report(&o));
        return ExitCode::FAILURE;
    }
    if a.worker {
        return if work(&a).is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    let jobs = a.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let jobs = jobs.clamp(1, a.seeds.max(1) as usize) as u64;
    let exe = std::env::current_exe().expect("own executable");
    let mut children = Vec::new();
    for j in 0..jobs {
        let mut c = Command::new(&exe);
        c.args(["--worker", "--from", &(a.from + j).to_string(), "--seeds", &(a.seeds - j).to_string()])
            .args(["--stride", &jobs.to_string(), "--chaos-secs", &a.chaos_secs.to_string()])
            .args(["--settle-secs", &a.settle_secs.to_string()])
            .stdout(Stdio::piped());
        if a.keep_going {
            c.arg("--keep-going");
        }
        children.push(c.spawn().expect("spawn a worker"));
    }
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let readers: Vec<_> = children
        .iter_mut()
        .map(|c| {
            let out = c.stdout.take().expect("piped stdout");
            let tx = tx.clone();
            std::thread::spawn(move || BufReader::new(out).lines().map_while(Result::ok).for_each(|l| _ = tx.send(l)))
        })
        .collect();
    drop(tx);
    let (mut done, mut failed) = (0u64, Vec::new());
    for line in rx {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() != Some(&"SEED") {
            println!("{line}");
            continue;
        }
        done += 1;
        if a.list {
            println!("{line}");
        }
        if f.get(2) == Some(&"FAIL") {
            failed.push(f[1].parse::<u64>().unwrap_or(0));
        }
        if done.is_multiple_of(50) || done == a.seeds {
            println!("{done}/{} seeds, {} failed, {:.1}s", a.seeds, failed.len(), started.elapsed().as_secs_f64());
        }
    }
    readers.into_iter().for_each(|r| _ = r.join());
    let all_ok = children.iter_mut().all(|c| c.wait().map(|s| s.success()).unwrap_or(false));
    failed.sort_unstable();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{done} seeds in {secs:.1}s ({:.2} seeds/s), {} failed {failed:?}",
        done as f64 / secs.max(1e-9),
        failed.len()
    );
    if all_ok && failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
