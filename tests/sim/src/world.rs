//! The world outside the coordinator, as the fake agents change it: per region, the service's
//! database and its share of traffic; per agent, the fencing tokens it has seen and the step
//! attempts it has run. Every effect is checked against the world-level invariants the moment
//! it happens.

use crate::rng::Rng;
use drcut_proto::v1::{StepCommand, StepResult};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

/// The step index of a returning region's fence (the coordinator's `engine::REJOIN_STEP`).
const REJOIN_STEP: u32 = u32::MAX;
/// How long the health model takes at most to declare a failing region down (ms).
pub const DETECT_MS: i64 = 1500;
/// The protected service.
pub const SERVICE: &str = "wallet";
/// The regions, each with one agent named after it.
pub const REGIONS: [&str; 2] = ["eu-west", "eu-central"];

/// Database role in one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Takes writes unless read-only.
    Primary,
    /// Replays the primary's log.
    Standby,
}

/// One region's database for the service.
#[derive(Debug, Clone)]
pub struct Db {
    /// Primary or standby.
    pub role: Role,
    /// Frozen or fenced (`default_transaction_read_only`).
    pub read_only: bool,
}

impl Db {
    /// Accepts writes.
    pub fn writable(&self) -> bool {
        self.role == Role::Primary && !self.read_only
    }
}

/// (run, step, phase, compensation): one unit of work, all attempts together.
pub type WorkKey = (String, u32, i32, bool);
/// A work item plus its attempt: what the agent's exactly-once bookkeeping is keyed by.
pub type AttemptKey = (String, u32, i32, bool, u32);

/// One execution of an attempt by an agent (a repeat answered from memory is not one).
#[derive(Debug, Clone)]
pub struct Execution {
    /// The attempt.
    pub key: AttemptKey,
    /// The action.
    pub action: String,
    /// Simulated time (Unix ms) when its effect landed.
    pub at_ms: i64,
    /// Whether it changed the world (a mutating action that succeeded).
    pub effective: bool,
}

/// Per-agent memory, as a real agent process keeps it (it survives session drops).
#[derive(Debug, Default)]
pub struct AgentMem {
    /// Newest fencing token seen.
    pub max_token: u64,
    /// Results of finished attempts.
    pub done: BTreeMap<AttemptKey, StepResult>,
    /// Attempts executing now, with the newest token they were (re-)sent with: a new leader
    /// re-sending an attempt already running adopts that execution.
    pub running: BTreeMap<AttemptKey, (u64, String)>,
    /// Results waiting for a session to carry them.
    pub outbox: VecDeque<StepResult>,
}

/// A broken invariant.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Which invariant.
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
}

/// The simulated world.
pub struct World {
    /// Schedule randomness for agents (slowness, failures), drawn in deterministic order.
    pub rng: Rng,
    /// Database per region.
    pub dbs: BTreeMap<String, Db>,
    /// GSLB weights (percent) per region.
    pub traffic: BTreeMap<String, u32>,
    /// Where the database endpoint name points.
    pub db_endpoint: String,
    /// Regions whose SLI checks pass.
    pub up: BTreeMap<String, bool>,
    /// When each region that is down went down (simulated ms since the start).
    pub down_since: BTreeMap<String, i64>,
    /// Agent memories by agent id.
    pub agents: BTreeMap<String, AgentMem>,
    /// Every execution, in order.
    pub executions: Vec<Execution>,
    /// Per run: the region the forward traffic shift moved users to.
    pub shift_targets: BTreeMap<String, String>,
    /// Probability that an attempt fails without effect.
    pub fail_rate: f64,
    /// Probability that an attempt is slow (beyond a short timeout).
    pub slow_rate: f64,
    /// What-if (`DRCUT_SIM_AGENT_RECHECK=1`): the agent checks its newest token again right
    /// before an effect and drops a stale one. Off by default: the real agent does not.
    pub recheck_before_effect: bool,
    /// The event trace (hashed for the determinism proof, printed on failure).
    pub trace: Vec<String>,
    /// Broken invariants (the run stops at the first).
    pub violations: Vec<Violation>,
}

/// Which region an address of the example playbook belongs to.
fn region_of_ip(ip: &str) -> Option<&'static str> {
    if ip.starts_with("192.0.2.") {
        Some("eu-west")
    } else if ip.starts_with("198.51.100.") {
        Some("eu-central")
    } else {
        None
    }
}

fn attempt_key(c: &StepCommand) -> AttemptKey {
    (c.run_id.clone(), c.step_index, c.phase, c.compensation, c.attempt)
}

impl World {
    /// The starting world: eu-west primary with all traffic, eu-central a standby.
    pub fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed, 1);
        let fail_rate = [0.0, 0.02, 0.05, 0.1][rng.range(0, 4) as usize];
        let slow_rate = [0.0, 0.02, 0.05][rng.range(0, 3) as usize];
        World {
            rng,
            dbs: BTreeMap::from([
                ("eu-west".into(), Db { role: Role::Primary, read_only: false }),
                ("eu-central".into(), Db { role: Role::Standby, read_only: false }),
            ]),
            traffic: BTreeMap::from([("eu-west".into(), 100), ("eu-central".into(), 0)]),
            db_endpoint: "eu-west".into(),
            up: REGIONS.iter().map(|r| (r.to_string(), true)).collect(),
            down_since: BTreeMap::new(),
            agents: REGIONS.iter().map(|r| (r.to_string(), AgentMem::default())).collect(),
            executions: Vec::new(),
            shift_targets: BTreeMap::new(),
            fail_rate,
            slow_rate,
            recheck_before_effect: std::env::var("DRCUT_SIM_AGENT_RECHECK").is_ok_and(|v| v == "1"),
            trace: Vec::new(),
            violations: Vec::new(),
        }
    }

    /// A region's checks start failing (`up` false) or pass again, at `now` (ms since start).
    pub fn set_up(&mut self, region: &str, up: bool, now: i64) {
        self.up.insert(region.to_string(), up);
        if up {
            self.down_since.remove(region);
        } else {
            self.down_since.entry(region.to_string()).or_insert(now);
        }
    }

    /// Serving as far as anyone can know at `now_ms` (Unix ms): up, or down for less than the
    /// time the health model needs to see it (3 failed reports 300 ms apart, a 100 ms tick,
    /// margin), so a gate that passed just before the failure showed is no violation.
    fn serving(&self, region: &str, now_ms: i64) -> bool {
        let now = now_ms - crate::scenario::EPOCH_MS;
        self.up.get(region) == Some(&true) || self.down_since.get(region).is_some_and(|t| now - t < DETECT_MS)
    }

    /// Appends to the trace, stamped with simulated ms since the start (absolute Unix times
    /// are converted).
    pub fn log(&mut self, now_ms: i64, what: impl AsRef<str>) {
        let t = if now_ms >= crate::scenario::EPOCH_MS { now_ms - crate::scenario::EPOCH_MS } else { now_ms };
        self.trace.push(format!("{t:>6} {}", what.as_ref()));
    }

    /// Records a broken invariant.
    pub fn violate(&mut self, invariant: &'static str, detail: String) {
        self.trace.push(format!("VIOLATION {invariant}: {detail}"));
        self.violations.push(Violation { invariant, detail });
    }

    /// What an agent does on receiving a command: refuse a stale token, answer a repeat from
    /// memory, ignore one already running, or accept it (the caller executes it). Mirrors
    /// `agent/src/executor.rs`.
    pub fn receive(&mut self, agent: &str, now_ms: i64, c: &StepCommand) -> Receipt {
        let mem = self.agents.entry(agent.to_string()).or_default();
        let newest = mem.max_token.max(c.fencing_token);
        let before = mem.max_token;
        mem.max_token = newest;
        if c.fencing_token < before {
            let r = result(c, false, format!("stale fencing token {} < {before}", c.fencing_token));
            mem.outbox.push_back(r);
            self.log(now_ms, format!("{agent} refuses stale {} token {} < {before}", describe(c), c.fencing_token));
            return Receipt::Refused;
        }
        let k = attempt_key(c);
        // Anything still running for the same service (else run), other than this attempt and
        // with an older token, was given up by the coordinator: cancelled (no effect, no
        // result), as the real executor aborts it. A returning region's fence (REJOIN_STEP)
        // stands outside any run's sequence.
        let scope = if c.service.is_empty() { c.run_id.clone() } else { c.service.clone() };
        if c.step_index != REJOIN_STEP {
            let older: Vec<AttemptKey> = mem
                .running
                .iter()
                .filter(|(o, (t, sc))| *sc == scope && o.1 != REJOIN_STEP && **o != k && *t < c.fencing_token)
                .map(|(o, _)| o.clone())
                .collect();
            for o in older {
                mem.running.remove(&o);
                self.trace.push(format!("{agent} cancels superseded {}/{}#{}", o.0, o.1, o.4));
            }
        }
        let mem = self.agents.entry(agent.to_string()).or_default();
        if let Some(r) = mem.done.get(&k) {
            let again = StepResult { fencing_token: c.fencing_token, ..r.clone() };
            mem.outbox.push_back(again);
            self.log(now_ms, format!("{agent} repeats recorded result of {}", describe(c)));
            return Receipt::Repeat;
        }
        if let Some((t, _)) = mem.running.get_mut(&k) {
            *t = (*t).max(c.fencing_token);
            return Receipt::Running;
        }
        let mem = self.agents.entry(agent.to_string()).or_default();
        mem.running.insert(k, (c.fencing_token, scope));
        // Slowness and failures are drawn now, in the world's order, so they replay exactly.
        let slow = self.rng.chance(self.slow_rate);
        let delay_ms = if slow { c.timeout_ms as u64 + self.rng.range(0, 1000) } else { self.rng.range(1, 60) };
        let fail = self.rng.chance(self.fail_rate);
        self.log(
            now_ms,
            format!("{agent} starts {} token {} delay {delay_ms} fail {fail}", describe(c), c.fencing_token),
        );
        Receipt::Execute { delay_ms, fail }
    }

    /// The attempt's effect lands now (after its delay): apply it, check the invariants, record
    /// and queue the result.
    pub fn complete(&mut self, agent: &str, region: &str, now_ms: i64, c: &StepCommand, fail: bool) {
        let k = attempt_key(c);
        let Some(token) = self.agents.get(agent).and_then(|m| m.running.get(&k).map(|(t, _)| *t)) else {
            // Cancelled (superseded, or the agent crashed): it never finishes.
            self.log(now_ms, format!("{agent} {} was cancelled: no effect", describe(c)));
            return;
        };
        let newest = self.agents.get(agent).map(|m| m.max_token).unwrap_or(0);
        let mutating = is_mutating(&c.action);
        let (ok, detail) = if fail {
            (false, "injected failure (no effect)".to_string())
        } else if self.recheck_before_effect && mutating && token < newest {
            (false, format!("token {} is no longer the newest ({newest}): not applied", token))
        } else {
            self.apply(region, c, now_ms)
        };
        if ok && mutating && token < newest {
            self.violate(
                "stale_token_no_effect",
                format!(
                    "at {now_ms}: {agent} applied {} with token {} after seeing token {newest} (accepted when it was \
                     current, its effect landed after a newer leader or attempt took over)",
                    describe(c),
                    token
                ),
            );
        }
        self.executions.push(Execution {
            key: k.clone(),
            action: c.action.clone(),
            at_ms: now_ms,
            effective: ok && mutating,
        });
        self.log(now_ms, format!("{agent} done {} ok {ok}: {detail} | {}", describe(c), self.summary()));
        let mut r = result(c, ok, detail);
        r.measurements.insert("exec_ms".into(), 1.0);
        let mem = self.agents.entry(agent.to_string()).or_default();
        mem.running.remove(&k);
        mem.done.insert(k, r.clone());
        mem.outbox.push_back(r);
        self.check_world(now_ms);
    }

    /// The effect of one action on the world.
    fn apply(&mut self, region: &str, c: &StepCommand, now_ms: i64) -> (bool, String) {
        let with: serde_json::Value = serde_json::from_str(&c.params_json).unwrap_or_default();
        if !self.up.get(region).copied().unwrap_or(false) && c.action != "shift_traffic" {
            return (false, format!("region {region} is down"));
        }
        if c.action == "fence" && with.get("hook").is_some() {
            // STONITH from another region's agent: the old primary elsewhere is powered off.
            let Some(other) = REGIONS.iter().find(|r| **r != region) else { return (false, "no other region".into()) };
            if let Some(d) = self.dbs.get_mut(*other) {
                d.read_only = true;
            }
            return (true, format!("{other} powered off (STONITH)"));
        }
        let Some(db) = self.dbs.get_mut(region) else { return (false, format!("no database in {region}")) };
        match c.action.as_str() {
            "freeze_writes" | "fence" => {
                db.read_only = true;
                (true, format!("{region} read-only"))
            }
            "unfreeze_writes" => {
                db.read_only = false;
                (true, format!("{region} writable"))
            }
            "wait_replication" => (true, "replayed".into()),
            "promote_db" => {
                db.role = Role::Primary;
                db.read_only = false;
                (true, format!("{region} promoted"))
            }
            "repoint_clients" => {
                self.db_endpoint = region.to_string();
                (true, format!("endpoint -> {region}"))
            }
            "warm_caches" => (true, "warm".into()),
            "smoke" => (true, "journeys pass".into()),
            "shift_traffic" => {
                let regions = |key: &str| -> Option<&'static str> {
                    with.get(key)?.as_array()?.iter().filter_map(|v| region_of_ip(v.as_str()?)).next()
                };
                let (Some(from), Some(to)) = (regions("from"), regions("to")) else {
                    return (false, "shift_traffic: from/to name no known region".into());
                };
                let Some(p) = with.get("percent").and_then(|p| p.as_u64()).filter(|p| *p <= 100) else {
                    return (false, "shift_traffic: bad percent".into());
                };
                self.traffic.insert(to.to_string(), p as u32);
                self.traffic.insert(from.to_string(), 100 - p as u32);
                // A shift the coordinator ordered must leave some traffic on a region that serves,
                // unless no region's checks pass at all (then there is nowhere to send users).
                let serving: u32 = self.traffic.iter().filter(|(r, _)| self.serving(r, now_ms)).map(|(_, w)| w).sum();
                if serving == 0 && self.up.values().any(|u| *u) {
                    let detail = format!(
                        "run {}: {} sent {p} % to {to}, leaving 0 % on serving regions (weights {:?}, up {:?})",
                        c.run_id,
                        describe(c),
                        self.traffic,
                        self.up
                    );
                    self.violate("traffic_never_zero", detail);
                }
                if !c.compensation {
                    self.shift_targets.insert(c.run_id.clone(), to.to_string());
                } else if let Some(target) = self.shift_targets.get(&c.run_id).cloned()
                    && self.traffic.get(&target).copied().unwrap_or(0) != 0
                {
                    // Undoing a shift means users leave the region the run moved them to.
                    let detail = format!(
                        "run {}: the shift's compensation left {} % on {target}, the region the shift moved users to \
                         (it sent {p} % to {to})",
                        c.run_id, self.traffic[&target]
                    );
                    self.violate("rollback_restores_traffic", detail);
                }
                (true, format!("{p} % to {to}"))
            }
            other => (false, format!("unknown action {other}")),
        }
    }

    /// One line describing the world's safety-relevant state.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (r, db) in &self.dbs {
            let _ = write!(s, "{r}:{:?}{} ", db.role, if db.read_only { "/ro" } else { "" });
        }
        for (r, w) in &self.traffic {
            let _ = write!(s, "{r}={w}% ");
        }
        s
    }

    /// The invariants on the world itself, checked after every effect and every step.
    pub fn check_world(&mut self, now_ms: i64) {
        let writable: Vec<String> = self.dbs.iter().filter(|(_, d)| d.writable()).map(|(r, _)| r.clone()).collect();
        if writable.len() > 1 {
            self.violate("one_writable_database", format!("at {now_ms}: {writable:?} all accept writes for {SERVICE}"));
        }
        let total: u32 = self.traffic.values().sum();
        if total == 0 {
            self.violate("traffic_never_zero", format!("at {now_ms}: weights {:?} route 0 % anywhere", self.traffic));
        }
    }
}

/// Actions that change the world (the others only observe it: catch-up, warm-up, smoke).
pub fn is_mutating(action: &str) -> bool {
    matches!(action, "freeze_writes" | "unfreeze_writes" | "fence" | "promote_db" | "repoint_clients" | "shift_traffic")
}

/// What the agent does with a received command.
#[derive(Debug)]
pub enum Receipt {
    /// Stale token: refused, result queued, no effect.
    Refused,
    /// Already done: the recorded result was queued again.
    Repeat,
    /// Still running: ignored.
    Running,
    /// Execute after `delay_ms`; `fail` = an injected failure.
    Execute {
        /// Simulated execution time.
        delay_ms: u64,
        /// Fails without effect.
        fail: bool,
    },
}

fn result(c: &StepCommand, ok: bool, detail: String) -> StepResult {
    StepResult {
        run_id: c.run_id.clone(),
        step_index: c.step_index,
        phase: c.phase,
        compensation: c.compensation,
        attempt: c.attempt,
        fencing_token: c.fencing_token,
        ok,
        detail,
        ..Default::default()
    }
}

/// `run/step[phase]{comp}#attempt action`.
pub fn describe(c: &StepCommand) -> String {
    format!(
        "{}/{}{}{}#{} {}",
        c.run_id,
        c.step_index,
        if c.phase >= 0 { format!("[{}]", c.phase) } else { String::new() },
        if c.compensation { "{comp}" } else { "" },
        c.attempt,
        c.action
    )
}
