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
    let mut s = format!("seed {} FAILED after {} steps (trace {})\n", o.seed, o.steps, &o.trace_hash[..16]);
    for v in &o.violations {
        s.push_str(&format!("  invariant {}: {}\n", v.invariant, v.detail));
    }
    s.push_str("  last events:\n");
    for l in &o.tail {
        s.push_str(&format!("    {l}\n"));
    }
    s.push_str(&format!("  replay: {}\n", replay_command(o.seed)));
    if !cfg!(tokio_unstable) {
        s.push_str(
            "  (this build lacks --cfg tokio_unstable: the replay runs the same faults and requests, but \
             tokio's select! order may differ; seeds found by scripts/sim replay exactly)\n",
        );
    }
    s
}
