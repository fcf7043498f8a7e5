//! One seed: build the simulated cluster, agents and operator, run a random fault schedule,
//! check the invariants after every step, heal everything, let it settle, check again.

use crate::agent::{self, Shared};
use crate::rng::Rng;
use crate::world::{REGIONS, Violation, World};
use crate::{check, client, net};
use drcut_coordinator::config::{Config, HealthTuning, LogFormat, MemberConfig, RaftTuning};
use drcut_coordinator::node::{self, Hooks};
use drcut_coordinator::store::{MemoryDisk, Storage};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

/// Simulated wall-clock at the start of every seed (2026-01-01T00:00:00Z).
pub const EPOCH_MS: i64 = 1_767_225_600_000;
/// Coordinator nodes.
pub const NODES: [u64; 3] = [1, 2, 3];
const PORT: u16 = 7000;
/// Simulated time per step: fine enough for 1-40 ms message latencies and 100 ms heartbeats.
const TICK_MS: u64 = 5;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The seed.
    pub seed: u64,
    /// Simulated seconds of faults and requests.
    pub chaos_secs: u64,
    /// Simulated seconds, all healed, before the final checks.
    pub settle_secs: u64,
    /// Print every event as it happens.
    pub verbose: bool,
}

impl Options {
    /// The defaults CI uses for `seed`.
    pub fn new(seed: u64) -> Self {
        Options { seed, chaos_secs: 10, settle_secs: 6, verbose: false }
    }
}

/// How a seed ended.
#[derive(Debug)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Broken invariants (empty: passed).
    pub violations: Vec<Violation>,
    /// SHA-256 over the whole event trace: equal for two runs of one seed.
    pub trace_hash: String,
    /// The trace's last events.
    pub tail: Vec<String>,
    /// Simulation steps taken.
    pub steps: u64,
    /// Runs at the end, by final state (from the most advanced node).
    pub runs: BTreeMap<String, usize>,
}

fn name(id: u64) -> String {
    format!("n{id}")
}

fn sim_clock() -> i64 {
    // Outside a host (never on the coordinator's paths) there is no simulated time.
    turmoil::since_epoch().map(|d| d.as_millis() as i64).unwrap_or(EPOCH_MS)
}

fn config(id: u64) -> Config {
    Config {
        file: format!("sim-n{id}"),
        node_id: id,
        cluster_id: "sim".into(),
        data_dir: format!("/nonexistent/sim/n{id}").into(),
        listen: ([0, 0, 0, 0], PORT).into(),
        advertise: format!("{}:{PORT}", name(id)),
        initial_members: NODES.iter().map(|n| MemberConfig { id: *n, addr: format!("{}:{PORT}", name(*n)) }).collect(),
        peer_dial_overrides: BTreeMap::new(),
        raft: RaftTuning {
            heartbeat_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            // Small, so snapshots are built and installed on lagging nodes within a seed.
            snapshot_every_logs: 300,
            keep_logs_after_snapshot: 50,
        },
        log_format: LogFormat::Text,
        http_listen: None,
        health: HealthTuning::default(),
        auth: None,
        tls: None,
    }
}

async fn node_host(id: u64, disk: MemoryDisk) -> turmoil::Result {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    let hooks = Hooks { dialer: net::dialer(), storage: Storage::InMemory(disk) };
    node::run_with(config(id), hooks, net::incoming(listener), std::future::pending()).await?;
    Ok(())
}

/// A network fault in force, undone at `until` (simulated ms since start).
#[derive(Debug)]
enum Fault {
    Partition(String, String),
    Crash(String),
    Loss(String, String),
    RegionDown(String),
}

fn hosts() -> Vec<String> {
    NODES.iter().map(|n| name(*n)).chain(REGIONS.iter().map(|r| r.to_string())).chain(["client".to_string()]).collect()
}

fn lock(w: &Shared) -> std::sync::MutexGuard<'_, World> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs one seed to the end (or to the first broken invariant).
pub fn run(opts: &Options) -> Outcome {
    drcut_coordinator::clock::set_source(sim_clock);
    drcut_coordinator::rt::seed_thread_rng(opts.seed);
    let seed = opts.seed;
    let mut rng = Rng::new(seed, 2);
    let world: Shared = Arc::new(Mutex::new(World::new(seed)));
    let disks: BTreeMap<u64, MemoryDisk> =
        NODES.iter().map(|id| (*id, MemoryDisk::new().expect("in-memory redb"))).collect();
    let chaos_ms = opts.chaos_secs * 1000;
    let total_ms = chaos_ms + opts.settle_secs * 1000;
    let max_latency = rng.range(2, 40);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_millis(total_ms + 10_000))
        .tick_duration(Duration::from_millis(TICK_MS))
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS as u64))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(max_latency))
        .rng_seed(seed)
        .build();
    for id in NODES {
        let disk = disks[&id].clone();
        sim.host(name(id), move || node_host(id, disk.clone()));
    }
    let addrs: Vec<String> = NODES.iter().map(|n| format!("{}:{PORT}", name(*n))).collect();
    for r in REGIONS {
        let (w, a) = (world.clone(), addrs.clone());
        sim.host(r, move || agent::run(r.to_string(), w.clone(), a.clone()));
    }
    {
        let (w, a) = (world.clone(), addrs.clone());
        let until = EPOCH_MS + chaos_ms as i64;
        sim.host("client", move || client::run(seed, w.clone(), a.clone(), until));
    }
    lock(&world).log(0, format!("seed {seed}: max latency {max_latency} ms"));

    let all = hosts();
    let mut faults: Vec<(u64, Fault)> = Vec::new();
    let mut next_fault = rng.range(1000, 3000);
    let mut steps = 0u64;
    let mut printed = 0usize;
    let mut violations: Vec<Violation> = Vec::new();
    let mut healed: Option<BTreeMap<String, u64>> = None;
    loop {
        let now = sim.elapsed().as_millis() as u64;
        if now >= total_ms {
            break;
        }
        if now >= chaos_ms && healed.is_none() {
            for (_, f) in faults.drain(..) {
                undo(&mut sim, &world, f, now);
            }
            lock(&world).log(now as i64, "healed: every fault undone");
            healed = Some(check::revisions(&disks));
        }
        if now < chaos_ms {
            let due: Vec<usize> = faults.iter().enumerate().filter(|(_, (u, _))| *u <= now).map(|(i, _)| i).collect();
            for i in due.into_iter().rev() {
                let (_, f) = faults.remove(i);
                undo(&mut sim, &world, f, now);
            }
            if now >= next_fault {
                next_fault = now + rng.range(300, 2500);
                if let Some(f) = inject(&mut sim, &world, &mut rng, &all, &faults, now) {
                    faults.push((now + rng.range(200, 4000), f));
                }
            }
        }
        if let Err(e) = sim.step() {
            violations.push(Violation { invariant: "simulation_runs", detail: format!("a host failed: {e}") });
            break;
        }
        steps += 1;
        {
            let mut w = lock(&world);
            w.check_world(sim.elapsed().as_millis() as i64);
            if opts.verbose {
                for line in &w.trace[printed..] {
                    println!("{line}");
                }
                printed = w.trace.len();
            }
            if !w.violations.is_empty() {
                violations.append(&mut w.violations);
                break;
            }
        }
        if steps.is_multiple_of(2000) {
            let found = check::replicated(&disks, &lock(&world), None);
            if !found.is_empty() {
                violations.extend(found);
                break;
            }
        }
    }
    if violations.is_empty() {
        violations.extend(check::replicated(&disks, &lock(&world), Some(&healed.clone().unwrap_or_default())));
    }
    let runs = final_runs(&disks);
    let mut w = lock(&world);
    // The replicated end state belongs to the trace too: two runs of a seed must agree on it.
    for (id, d) in &disks {
        if let Ok(c) = drcut_coordinator::store::read_contents(&d.state) {
            let applied = c.last_applied.map(|l| l.index()).unwrap_or(0);
            w.trace.push(format!(
                "end n{id}: applied {applied}, audit {} head {}",
                c.audit.len(),
                c.state.core.audit_head
            ));
        }
    }
    for v in &violations {
        w.trace.push(format!("VIOLATION {}: {}", v.invariant, v.detail));
    }
    if opts.verbose {
        for line in &w.trace[printed.min(w.trace.len())..] {
            println!("{line}");
        }
    }
    let mut h = Sha256::new();
    for line in &w.trace {
        h.update(line.as_bytes());
        h.update(b"\n");
    }
    let tail = w.trace.iter().rev().take(40).rev().cloned().collect();
    let trace_hash = hex::encode(h.finalize());
    if let Ok(dir) = std::env::var("DRCUT_SIM_DUMP") {
        // The whole trace, for comparing two runs of one seed line by line.
        let _ = std::fs::write(format!("{dir}/seed-{seed}-{}.trace", &trace_hash[..16]), w.trace.join("\n"));
    }
    drcut_coordinator::rt::unseed_thread_rng();
    Outcome { seed, violations, trace_hash, tail, steps, runs }
}

fn final_runs(disks: &BTreeMap<u64, MemoryDisk>) -> BTreeMap<String, usize> {
    let newest = disks
        .values()
        .filter_map(|d| drcut_coordinator::store::read_contents(&d.state).ok())
        .max_by_key(|c| c.last_applied.map(|l| l.index()).unwrap_or(0));
    let mut out = BTreeMap::new();
    for r in newest.map(|c| c.state.runs).unwrap_or_default().values() {
        let (s, _) = drcut_coordinator::grpc::runs::state_text(&r.run.state);
        *out.entry(s.to_string()).or_default() += 1;
    }
    out
}

fn inject(
    sim: &mut turmoil::Sim<'_>,
    world: &Shared,
    rng: &mut Rng,
    all: &[String],
    active: &[(u64, Fault)],
    now: u64,
) -> Option<Fault> {
    let a = rng.pick(all).clone();
    let b = rng.pick(all).clone();
    let crashed = |h: &str| active.iter().any(|(_, f)| matches!(f, Fault::Crash(c) if c == h));
    let f = match rng.range(0, 100) {
        0..35 if a != b => {
            sim.partition(a.as_str(), b.as_str());
            Fault::Partition(a, b)
        }
        35..50 => {
            let n = name(*rng.pick(&NODES));
            if crashed(&n) {
                return None;
            }
            sim.crash(n.as_str());
            Fault::Crash(n)
        }
        50..55 => {
            // An agent process dies: attempts it was running never finish, and it forgets the
            // newest token and the results it recorded (a real agent keeps both in memory).
            let r = rng.pick(&REGIONS).to_string();
            if crashed(&r) {
                return None;
            }
            sim.crash(r.as_str());
            lock(world).agents.insert(r.clone(), crate::world::AgentMem::default());
            Fault::Crash(r)
        }
        55..70 if a != b => {
            sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.05);
            Fault::Loss(a, b)
        }
        70..85 => {
            let r = rng.pick(&REGIONS).to_string();
            lock(world).set_up(&r, false, now as i64);
            Fault::RegionDown(r)
        }
        85..100 => {
            // Cut one host off from everyone (an agent losing its coordinator, a node its peers).
            for o in all.iter().filter(|o| **o != a) {
                sim.partition(a.as_str(), o.as_str());
            }
            let f = Fault::Partition(a.clone(), "*".into());
            lock(world).log(now as i64, format!("fault {f:?}"));
            return Some(f);
        }
        _ => return None,
    };
    lock(world).log(now as i64, format!("fault {f:?}"));
    Some(f)
}

fn undo(sim: &mut turmoil::Sim<'_>, world: &Shared, f: Fault, now: u64) {
    match &f {
        Fault::Partition(a, b) if b == "*" => {
            for o in hosts().iter().filter(|o| *o != a) {
                sim.repair(a.as_str(), o.as_str());
            }
        }
        Fault::Partition(a, b) => sim.repair(a.as_str(), b.as_str()),
        Fault::Crash(n) => sim.bounce(n.as_str()),
        Fault::Loss(a, b) => sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.0),
        Fault::RegionDown(r) => {
            lock(world).set_up(r, true, now as i64);
        }
    }
    lock(world).log(now as i64, format!("undo {f:?}"));
}
