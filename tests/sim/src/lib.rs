//! Deterministic simulation of drcut (issue 5, "proven invariants").
//!
//! The real coordinator (openraft, the state machine on redb, the run engine, the gRPC services)
//! runs on turmoil hosts and talks tonic over turmoil's simulated TCP; fake agents speak the real
//! `AgentLink` session and act on a shared world model; an operator host drives the real
//! `Control` API. A seed fixes everything: the fault schedule, message latencies, openraft's
//! election timeouts, agents' failures and slowness. See `docs/SIMULATION.md`.
//!
//! - [`scenario`]: one seed, end to end; [`world`]: the world model and its invariants;
//!   [`check`]: invariants on the replicated state; [`agent`], [`client`]: the fake agents and
//!   the operator; [`net`]: the coordinator's transport hooks over turmoil; [`rng`]: randomness.

pub mod agent;
pub mod check;
pub mod client;
pub mod net;
pub mod rng;
pub mod scenario;
pub mod world;

pub use scenario::{Options, Outcome, run};

/// The command that replays `seed` verbosely.
pub fn replay_command(seed: u64) -> String {
    format!("scripts/sim --seed {seed} --trace")
}

/// A failing seed, for humans: the invariant, the last events, and how to replay it.
pub fn report(o: &Outcome) -> String {
    let mut s = format!("seed {} FAILED after {} steps\n", o.seed, o.steps);
    for v in &o.violations {
        s.push_str(&format!("  invariant {}: {}\n", v.invariant, v.detail));
    }
    s.push_str("  last events:\n");
    for l in &o.tail {
        s.push_str(&format!("    {l}\n"));
    }
    s.push_str(&format!("  replay: {}\n", replay_command(o.seed)));
    s
}

/// Runs seeds `from..from + n`, spread over the available cores (each seed runs on one thread
/// from start to end, so parallelism does not touch determinism). Outcomes come back by seed.
pub fn run_many(from: u64, n: u64, opts: impl Fn(u64) -> Options + Sync) -> Vec<Outcome> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(n.max(1) as usize) as u64;
    let mut out: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let opts = &opts;
                s.spawn(move || (from + t..from + n).step_by(threads as usize).map(|seed| run(&opts(seed))).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a simulation thread panicked")).collect()
    });
    out.sort_by_key(|o| o.seed);
    out
}
