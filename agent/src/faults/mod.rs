//! GameDay fault injection: what a drill breaks on this host, and the dead-man switch that
//! mends it when the drill's coordinator cannot.
//!
//! The coordinator drives faults over the agent session with three actions (step index
//! [`FAULT_STEP`], the fault id as `step_id`):
//!
//! - `fault.inject` `{"fault": {...}, "deadline_ms": N, "lost_coordinator_ms": N}`: breaks
//!   something (see [`spec::Fault`]): `postgres_stop` (`pg_ctl stop -m immediate` of a postgres
//!   resource with a `data_dir`), `process_kill` (SIGKILL of a `faults.processes` entry),
//!   `proxy` (a `faults.proxies` TCP proxy into a failure [`proxy::Mode`]), `dns` (a
//!   `faults.dns_proxies` forwarder answers NXDOMAIN / SERVFAIL for a name), `exec` (a
//!   command, with the command that undoes it). Injecting an active fault again is ok and
//!   changes nothing.
//! - `fault.revert` `{}`: undoes one fault (ok when it was not active).
//! - `fault.halt` `{"run_id": ...}` or `{}`: undoes every fault of one drill run, or of all.
//!
//! Every active fault carries a dead-man switch, checked every [`TICK`]: the agent reverts it
//! by itself once its deadline (relative to when the command arrived) passes, or once the
//! agent has held no lease from the coordinators for longer than `lost_coordinator_ms`. The
//! heartbeat lists the active faults ([`FaultManager::active`]), so the coordinator sees one
//! vanish.
//!
//! Actions are serialised (one at a time, in arrival order): an inject and a revert of the same
//! fault, or a halt racing an inject, never interleave half-way. A revert that fails leaves the
//! fault active; the switch retries it every [`RETRY`]. Active faults live in memory only: an
//! agent restart forgets them (proxies come back in pass-through, but a stopped database or a
//! killed process stays down until the drill's restore or an operator brings it back).
//!
//! The `faults:` config section (see [`crate::config::FaultsConfig`]):
//!
//! ```yaml
//! faults:
//!   proxies:        # TCP, started with the agent, pass-through until a fault
//!     psp: { listen: 127.0.0.21:18443, upstream: 127.0.0.22:8443 }
//!   dns_proxies:    # UDP DNS forwarders
//!     resolver: { listen: 127.0.0.21:5353, upstream: 127.0.0.30:53 }
//!   processes:
//!     casino-app: { pidfile: /tmp/casino.pid, start: ["/usr/bin/casino", "--port", "8080"] }
//! ```

pub mod dns;
pub mod process;
pub mod proxy;
pub mod spec;

use crate::config::AgentConfig;
use crate::lease::Lease;
use crate::metrics::AgentMetrics;
use crate::pgdata::DataDir;
use crate::steps::{StepContext, StepOutcome, parse_params};
use dns::DnsFaultProxy;
use proxy::{FaultProxy, Mode};
use spec::{Expiry, Fault, HaltParams, InjectParams, ProxyFault, RevertParams};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The step index of fault commands (coordinator side: u32::MAX - 1): outside any run's
/// sequence, so they neither supersede nor are superseded.
pub const FAULT_STEP: u32 = u32::MAX - 1;
/// How often the dead-man switch looks.
pub const TICK: Duration = Duration::from_millis(100);
/// Between attempts at a revert that failed.
pub const RETRY: Duration = Duration::from_secs(1);
/// Bound on one revert by the dead-man switch (a database start included).
pub const SWITCH_REVERT_TIMEOUT: Duration = Duration::from_secs(60);

/// (run id, fault id).
type Key = (String, String);

/// An injected fault.
#[derive(Debug)]
struct Active {
    fault: Fault,
    /// Reverted by the switch at this time.
    deadline: Instant,
    /// ... or after this long without a lease.
    lost_after: Duration,
    /// `postgres_stop`: the options the server last ran with, to start it the same way.
    pg_options: Option<String>,
    /// A revert failed: not retried before this.
    retry_at: Option<Instant>,
}

/// The fault proxies and the active faults of this agent.
pub struct FaultManager {
    cfg: Arc<AgentConfig>,
    proxies: BTreeMap<String, FaultProxy>,
    dns: BTreeMap<String, DnsFaultProxy>,
    lease: Arc<Lease>,
    metrics: Arc<AgentMetrics>,
    active: Mutex<BTreeMap<Key, Active>>,
    /// Held while acting (see the module docs: one action at a time).
    acting: tokio::sync::Mutex<()>,
}

fn key_str(k: &Key) -> String {
    format!("{}/{}", k.0, k.1)
}

/// `a, b` (or `none`), for "has: …" in errors.
fn names<V>(m: &BTreeMap<String, V>) -> String {
    if m.is_empty() { "none".to_string() } else { m.keys().cloned().collect::<Vec<_>>().join(", ") }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl FaultManager {
    /// Binds every proxy of the config's `faults:` section (a bind failure names the field)
    /// and returns the manager; the caller spawns [`FaultManager::watchdog`].
    pub async fn start(
        cfg: Arc<AgentConfig>,
        lease: Arc<Lease>,
        metrics: Arc<AgentMetrics>,
    ) -> Result<Arc<FaultManager>, String> {
        let mut proxies = BTreeMap::new();
        for (name, p) in &cfg.faults.proxies {
            let l = tokio::net::TcpListener::bind(p.listen)
                .await
                .map_err(|e| format!("faults.proxies.{name}.listen: cannot bind {}: {e}", p.listen))?;
            let proxy = FaultProxy::start(l, p.upstream).map_err(|e| format!("faults.proxies.{name}: {e}"))?;
            tracing::info!(proxy = %name, listen = %proxy.addr(), upstream = %p.upstream, "fault proxy up (pass-through)");
            proxies.insert(name.clone(), proxy);
        }
        let mut dns = BTreeMap::new();
        for (name, p) in &cfg.faults.dns_proxies {
            let s = tokio::net::UdpSocket::bind(p.listen)
                .await
                .map_err(|e| format!("faults.dns_proxies.{name}.listen: cannot bind {}: {e}", p.listen))?;
            let proxy = DnsFaultProxy::start(s, p.upstream).map_err(|e| format!("faults.dns_proxies.{name}: {e}"))?;
            tracing::info!(proxy = %name, listen = %proxy.addr(), upstream = %p.upstream, "DNS fault proxy up (forwarding)");
            dns.insert(name.clone(), proxy);
        }
        Ok(FaultManager::new(cfg, lease, metrics, proxies, dns))
    }

    /// A manager over proxies already running (tests bind them on port 0).
    pub fn new(
        cfg: Arc<AgentConfig>,
        lease: Arc<Lease>,
        metrics: Arc<AgentMetrics>,
        proxies: BTreeMap<String, FaultProxy>,
        dns: BTreeMap<String, DnsFaultProxy>,
    ) -> Arc<FaultManager> {
        Arc::new(FaultManager {
            cfg,
            proxies,
            dns,
            lease,
            metrics,
            active: Mutex::new(BTreeMap::new()),
            acting: tokio::sync::Mutex::new(()),
        })
    }

    /// The TCP fault proxy `name`, if configured.
    pub fn proxy(&self, name: &str) -> Option<&FaultProxy> {
        self.proxies.get(name)
    }

    /// The DNS fault proxy `name`, if configured.
    pub fn dns_proxy(&self, name: &str) -> Option<&DnsFaultProxy> {
        self.dns.get(name)
    }

    /// The active faults as `"<run_id>/<fault_id>"`, sorted (the heartbeat's `active_faults`).
    pub fn active(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().keys().map(key_str).collect();
        v.sort();
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Active>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, active: &BTreeMap<Key, Active>) {
        self.metrics.faults_active.set(active.len() as i64);
    }

    /// Runs a `fault.*` command received at `received`, bounded by `timeout`.
    pub async fn execute(
        &self,
        action: &str,
        run_id: &str,
        fault_id: &str,
        params: &serde_json::Value,
        received: Instant,
        timeout: Duration,
    ) -> StepOutcome {
        let deadline = received + crate::steps::budget(timeout);
        match action {
            "fault.inject" => match parse_params::<InjectParams>(params).and_then(|p| p.validate().map(|()| p)) {
                Ok(p) => self.inject(run_id, fault_id, p, received, deadline).await,
                Err(e) => StepOutcome::failed(format!("fault.inject {run_id}/{fault_id}: {e}")),
            },
            "fault.revert" => match parse_params::<RevertParams>(params) {
                Ok(_) => self.revert(run_id, fault_id, deadline).await,
                Err(e) => StepOutcome::failed(format!("fault.revert {run_id}/{fault_id}: {e}")),
            },
            "fault.halt" => match parse_params::<HaltParams>(params) {
                Ok(p) => self.halt(p.run_id.as_deref(), deadline).await,
                Err(e) => StepOutcome::failed(format!("fault.halt: {e}")),
            },
            _ => StepOutcome::failed(format!(
                "unknown action {action:?}; fault actions are fault.inject, fault.revert, fault.halt"
            )),
        }
    }

    /// Injects `p.fault` as (run_id, fault_id), its dead-man switch counting from `received`.
    pub async fn inject(
        &self,
        run_id: &str,
        fault_id: &str,
        p: InjectParams,
        received: Instant,
        deadline: Instant,
    ) -> StepOutcome {
        let _acting = self.acting.lock().await;
        let key = (run_id.to_string(), fault_id.to_string());
        let shown = key_str(&key);
        {
            let active = self.lock();
            if active.contains_key(&key) {
                return StepOutcome {
                    ok: true,
                    detail: format!("fault {shown}: already active"),
                    ..Default::default()
                };
            }
            if let Some((field, target)) = p.fault.target()
                && let Some((other, _)) = active.iter().find(|(_, a)| a.fault.target() == Some((field, target)))
            {
                return StepOutcome::failed(format!(
                    "fault {shown}: fault.{field}: {target:?} already carries fault {}",
                    key_str(other)
                ));
            }
        }
        let started = Instant::now();
        let acted = self.act_inject(&key, &p.fault, deadline).await;
        let inject_ms = ms(started.elapsed());
        let (detail, pg_options) = match acted {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(fault = %shown, kind = p.fault.kind(), "fault inject failed: {e}");
                let mut o = StepOutcome::failed(format!("fault {shown}: {e}"));
                o.measurements.insert("inject_ms".into(), inject_ms);
                return o;
            }
        };
        let mut active = self.lock();
        active.insert(
            key,
            Active {
                fault: p.fault.clone(),
                deadline: received + Duration::from_millis(p.deadline_ms),
                lost_after: Duration::from_millis(p.lost_coordinator_ms),
                pg_options,
                retry_at: None,
            },
        );
        self.publish(&active);
        tracing::warn!(fault = %shown, kind = p.fault.kind(), deadline_ms = p.deadline_ms, lost_coordinator_ms = p.lost_coordinator_ms, "FAULT INJECTED: {detail}");
        StepOutcome {
            ok: true,
            detail: format!("fault {shown} injected: {detail}"),
            measurements: BTreeMap::from([("inject_ms".to_string(), inject_ms)]),
            data: serde_json::Value::Null,
        }
    }

    /// Reverts (run_id, fault_id); ok when reverted or not active.
    pub async fn revert(&self, run_id: &str, fault_id: &str, deadline: Instant) -> StepOutcome {
        let _acting = self.acting.lock().await;
        let key = (run_id.to_string(), fault_id.to_string());
        self.revert_locked(&key, deadline, "reverted by the coordinator").await
    }

    /// Reverts every active fault of `run_id` (every drill's when none).
    pub async fn halt(&self, run_id: Option<&str>, deadline: Instant) -> StepOutcome {
        let _acting = self.acting.lock().await;
        let keys: Vec<Key> = self.lock().keys().filter(|k| run_id.is_none_or(|r| k.0 == r)).cloned().collect();
        let started = Instant::now();
        let (mut reverted, mut failed) = (Vec::new(), Vec::new());
        for k in &keys {
            let o = self.revert_locked(k, deadline, "halt").await;
            if o.ok { reverted.push(key_str(k)) } else { failed.push(o.detail) }
        }
        let scope = run_id.map_or("every drill".to_string(), |r| format!("drill run {r}"));
        let detail = match (reverted.is_empty(), failed.is_empty()) {
            (true, true) => format!("halt of {scope}: no fault was active"),
            (_, true) => format!("halt of {scope}: reverted {}", reverted.join(", ")),
            _ => format!("halt of {scope}: reverted [{}]; FAILED: {}", reverted.join(", "), failed.join("; ")),
        };
        StepOutcome {
            ok: failed.is_empty(),
            detail,
            measurements: BTreeMap::from([("revert_ms".to_string(), ms(started.elapsed()))]),
            data: serde_json::json!({ "reverted": reverted }),
        }
    }

    /// Reverts `key` with the acting lock held; a failure leaves it active for a retry.
    async fn revert_locked(&self, key: &Key, deadline: Instant, why: &str) -> StepOutcome {
        let shown = key_str(key);
        let Some(a) = self.lock().remove(key) else {
            return StepOutcome { ok: true, detail: format!("fault {shown}: not active"), ..Default::default() };
        };
        let started = Instant::now();
        let acted = self.act_revert(key, &a, deadline).await;
        let revert_ms = ms(started.elapsed());
        let mut active = self.lock();
        let o = match acted {
            Ok(detail) => {
                tracing::warn!(fault = %shown, kind = a.fault.kind(), "FAULT REVERTED ({why}): {detail}");
                StepOutcome { ok: true, detail: format!("fault {shown} reverted: {detail}"), ..Default::default() }
            }
            Err(e) => {
                tracing::error!(fault = %shown, kind = a.fault.kind(), "fault revert FAILED ({why}; stays active): {e}");
                active.insert(key.clone(), Active { retry_at: Some(Instant::now() + RETRY), ..a });
                StepOutcome::failed(format!("fault {shown}: revert failed (still active): {e}"))
            }
        };
        self.publish(&active);
        let mut o = o;
        o.measurements.insert("revert_ms".into(), revert_ms);
        o
    }

    /// Reverts what the dead-man switch finds due at `now`; returns what it reverted, each with
    /// why. Time is an argument so tests need not wait.
    pub async fn check_dead_man(&self, now: Instant) -> Vec<(String, Expiry)> {
        let since = self.lease.since();
        let due: Vec<(Key, Expiry)> = self
            .lock()
            .iter()
            .filter(|(_, a)| a.retry_at.is_none_or(|t| now >= t))
            .filter_map(|(k, a)| spec::expiry(a.deadline, a.lost_after, now, since).map(|e| (k.clone(), e)))
            .collect();
        if due.is_empty() {
            return vec![];
        }
        let _acting = self.acting.lock().await;
        let mut done = Vec::new();
        for (k, why) in due {
            tracing::warn!(fault = %key_str(&k), "DEAD-MAN SWITCH: reverting fault {}: {why}", key_str(&k));
            let o = self
                .revert_locked(&k, Instant::now() + SWITCH_REVERT_TIMEOUT, &format!("dead-man switch: {why}"))
                .await;
            if o.ok && !o.detail.ends_with("not active") {
                done.push((key_str(&k), why));
            }
        }
        done
    }

    /// The dead-man switch: checks every [`TICK`] for the life of the process.
    pub async fn watchdog(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.check_dead_man(Instant::now()).await;
        }
    }

    // === acting ===

    /// Breaks it; Ok with a detail (and, for postgres, the server's start options).
    async fn act_inject(&self, key: &Key, f: &Fault, deadline: Instant) -> Result<(String, Option<String>), String> {
        match f {
            Fault::PostgresStop { database } => self.pg_stop(database, deadline).await,
            Fault::ProcessKill { process } => {
                let spec = self.cfg.faults.processes.get(process).ok_or_else(|| {
                    format!(
                        "fault.process: no process {process:?} in this agent's config (has: {})",
                        names(&self.cfg.faults.processes)
                    )
                })?;
                process::kill(process, spec).map(|d| (d, None))
            }
            Fault::Proxy { proxy, .. } => {
                let p = self.proxies.get(proxy).ok_or_else(|| {
                    format!("fault.proxy: no proxy {proxy:?} in this agent's config (has: {})", names(&self.proxies))
                })?;
                let mode = f.proxy_mode()?;
                p.set(mode);
                Ok((format!("proxy {proxy:?} ({} -> {}) in {} mode", p.addr(), p.upstream(), mode.name()), None))
            }
            Fault::Dns { proxy, name, answer } => {
                let p = self.dns.get(proxy).ok_or_else(|| {
                    format!("fault.proxy: no DNS proxy {proxy:?} in this agent's config (has: {})", names(&self.dns))
                })?;
                p.fail(&key_str(key), name, (*answer).into()).map_err(|m| format!("fault.name: {m}"))?;
                let rcode = match answer {
                    spec::DnsAnswer::Nxdomain => "NXDOMAIN",
                    spec::DnsAnswer::Servfail => "SERVFAIL",
                };
                Ok((format!("DNS proxy {proxy:?} answers {rcode} for {name}"), None))
            }
            Fault::Exec { inject, .. } => self.exec("inject", inject, deadline).await.map(|d| (d, None)),
        }
    }

    /// Mends it.
    async fn act_revert(&self, key: &Key, a: &Active, deadline: Instant) -> Result<String, String> {
        match &a.fault {
            Fault::PostgresStop { database } => self.pg_start(database, a.pg_options.as_deref(), deadline).await,
            Fault::ProcessKill { process } => match self.cfg.faults.processes.get(process) {
                Some(spec) => process::start(process, spec),
                None => Err(format!("fault.process: no process {process:?} in this agent's config")),
            },
            Fault::Proxy { proxy, .. } => match self.proxies.get(proxy) {
                Some(p) => {
                    p.set(Mode::PassThrough);
                    Ok(format!("proxy {proxy:?} passes through again"))
                }
                None => Err(format!("fault.proxy: no proxy {proxy:?} in this agent's config")),
            },
            Fault::Dns { proxy, name, .. } => match self.dns.get(proxy) {
                Some(p) => {
                    p.heal(&key_str(key));
                    Ok(format!("DNS proxy {proxy:?} forwards {name} again"))
                }
                None => Err(format!("fault.proxy: no DNS proxy {proxy:?} in this agent's config")),
            },
            Fault::Exec { revert, .. } => self.exec("revert", revert, deadline).await,
        }
    }

    /// Runs `argv` the way the `hook` step does (own process group, killed on timeout, neutral
    /// environment, secrets redacted from its output); exit 0 or an error with its last lines.
    async fn exec(&self, field: &str, argv: &[String], deadline: Instant) -> Result<String, String> {
        let ctx =
            StepContext { resources: &self.cfg.resources, timeout: deadline.saturating_duration_since(Instant::now()) };
        let o = crate::steps::http::run_exec(argv, &ctx, deadline)
            .await
            .map_err(|e| format!("fault.{field}: {}", e.trim_start_matches("param exec: ")))?;
        if o.ok { Ok(o.detail) } else { Err(format!("fault.{field}: {}", o.detail)) }
    }

    fn pg_dir(&self, database: &str) -> Result<(DataDir, &crate::config::PostgresResource), String> {
        let res = self.cfg.resources.postgres.get(database).ok_or_else(|| {
            format!(
                "fault.database: no postgres resource {database:?} in this agent's config (has: {})",
                names(&self.cfg.resources.postgres)
            )
        })?;
        let dir = res.data_dir.as_deref().ok_or_else(|| {
            format!("fault.database: postgres resource {database:?} has no data_dir (pg_ctl needs it)")
        })?;
        let dd = DataDir::new(dir, res.bin_dir.as_deref()).map_err(|e| format!("fault.database: {database:?}: {e}"))?;
        Ok((dd, res))
    }

    async fn pg_stop(&self, database: &str, deadline: Instant) -> Result<(String, Option<String>), String> {
        let (dd, res) = self.pg_dir(database)?;
        let Some(pid) = dd.running_pid() else {
            return Err(format!(
                "fault.database: postgres {database:?} is not running on {}: nothing to stop",
                dd.path().display()
            ));
        };
        // Read before the stop: the options it runs with now are the ones it comes back with.
        let options = dd.last_options();
        let secs = deadline.saturating_duration_since(Instant::now()).as_secs().max(1).to_string();
        let args: Vec<OsString> = vec![
            "stop".into(),
            "-D".into(),
            dd.path().as_os_str().to_owned(),
            "-m".into(),
            "immediate".into(),
            "-w".into(),
            "-t".into(),
            secs.into(),
        ];
        if let Err(e) = dd.tool("pg_ctl", &args, &[], deadline).await
            && dd.running_pid().is_some()
        {
            return Err(format!("pg_ctl stop -m immediate of {database:?}: {}", res.dsn.redact(&e)));
        }
        Ok((format!("postgres {database:?} stopped (pg_ctl stop -m immediate; postmaster {pid})"), options))
    }

    async fn pg_start(&self, database: &str, options: Option<&str>, deadline: Instant) -> Result<String, String> {
        let (dd, res) = self.pg_dir(database)?;
        if let Some(pid) = dd.running_pid() {
            return Ok(format!("postgres {database:?} already running (postmaster {pid})"));
        }
        let options = options.map(str::to_string).or_else(|| dd.last_options());
        dd.start(options.as_deref(), deadline)
            .await
            .map_err(|e| format!("pg_ctl start of {database:?}: {}", res.dsn.redact(&e)))?;
        Ok(format!("postgres {database:?} started again (pg_ctl start -w)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fixture {
        m: Arc<FaultManager>,
        lease: Arc<Lease>,
        metrics: Arc<AgentMetrics>,
    }

    async fn fixture() -> Fixture {
        let cfg = crate::config::parse("a.yaml", "agent_id: a\nregion: eu-west\ncoordinators: [127.0.0.1:7001]\n")
            .expect("config");
        let lease = Lease::new();
        lease.granted(Instant::now());
        let metrics = Arc::new(AgentMetrics::new());
        let proxies = BTreeMap::from([("psp".to_string(), proxy::tests::proxy_to_echo().await)]);
        let upstream = dns::tests::responder().await;
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dns = BTreeMap::from([("resolver".to_string(), DnsFaultProxy::start(sock, upstream).unwrap())]);
        let m = FaultManager::new(Arc::new(cfg), lease.clone(), metrics.clone(), proxies, dns);
        Fixture { m, lease, metrics }
    }

    fn params(fault: serde_json::Value, deadline_ms: u64, lost_ms: u64) -> serde_json::Value {
        json!({"fault": fault, "deadline_ms": deadline_ms, "lost_coordinator_ms": lost_ms})
    }

    impl Fixture {
        async fn run(&self, action: &str, run: &str, id: &str, p: serde_json::Value) -> StepOutcome {
            self.m.execute(action, run, id, &p, Instant::now(), Duration::from_secs(10)).await
        }

        fn mode(&self) -> Mode {
            self.m.proxy("psp").unwrap().mode()
        }

        fn gauge(&self) -> bool {
            self.metrics.render().contains(&format!("drcut_agent_faults_active {}", self.m.active().len()))
        }
    }

    fn reset() -> serde_json::Value {
        json!({"type": "proxy", "proxy": "psp", "mode": "reset"})
    }

    #[tokio::test]
    async fn inject_and_revert_are_idempotent() {
        let f = fixture().await;
        let o = f.run("fault.inject", "r1", "f1", params(reset(), 600_000, 30_000)).await;
        assert!(o.ok && o.measurements.contains_key("inject_ms"), "{o:?}");
        assert_eq!((f.mode(), f.m.active()), (Mode::Reset, vec!["r1/f1".to_string()]));
        assert!(f.gauge());
        // Again: ok, nothing refreshed (a different mode in the repeat is not applied).
        let latency = json!({"type": "proxy", "proxy": "psp", "mode": "latency", "latency_ms": 5});
        let o = f.run("fault.inject", "r1", "f1", params(latency.clone(), 600_000, 30_000)).await;
        assert!(o.ok && o.detail.ends_with("already active"), "{o:?}");
        assert_eq!(f.mode(), Mode::Reset);
        // Another fault on the same proxy is refused.
        let o = f.run("fault.inject", "r1", "f2", params(latency, 600_000, 30_000)).await;
        assert!(!o.ok && o.detail.contains("fault.proxy: \"psp\" already carries fault r1/f1"), "{o:?}");
        let o = f.run("fault.revert", "r1", "f1", json!({})).await;
        assert!(o.ok && o.detail.contains("reverted") && o.measurements.contains_key("revert_ms"), "{o:?}");
        assert_eq!((f.mode(), f.m.active().len()), (Mode::PassThrough, 0));
        assert!(f.gauge());
        let o = f.run("fault.revert", "r1", "f1", json!({})).await;
        assert!(o.ok && o.detail.ends_with("not active"), "{o:?}");
    }

    #[tokio::test]
    async fn refused_injects_name_the_field_and_change_nothing() {
        let f = fixture().await;
        let e = |o: StepOutcome| {
            assert!(!o.ok, "{o:?}");
            o.detail
        };
        let p = params(json!({"type": "proxy", "proxy": "psp2", "mode": "reset"}), 600_000, 30_000);
        let d = e(f.run("fault.inject", "r1", "f1", p).await);
        assert!(d.ends_with(r#"fault.proxy: no proxy "psp2" in this agent's config (has: psp)"#), "{d}");
        let p = params(json!({"type": "dns", "proxy": "dns9", "name": "a.example.", "answer": "nxdomain"}), 1, 1);
        let d = e(f.run("fault.inject", "r1", "f1", p).await);
        assert!(d.contains(r#"no DNS proxy "dns9" in this agent's config (has: resolver)"#), "{d}");
        let p = params(json!({"type": "postgres_stop", "database": "wallet"}), 1, 1);
        let d = e(f.run("fault.inject", "r1", "f1", p).await);
        assert!(
            d.contains(r#"fault.database: no postgres resource "wallet" in this agent's config (has: none)"#),
            "{d}"
        );
        let p = params(json!({"type": "process_kill", "process": "app"}), 1, 1);
        assert!(e(f.run("fault.inject", "r1", "f1", p).await).contains(r#"fault.process: no process "app""#));
        let p = params(
            json!({"type": "exec", "inject": ["/bin/sh", "-c", "echo boom >&2; exit 3"], "revert": ["/bin/true"]}),
            1000,
            1000,
        );
        let d = e(f.run("fault.inject", "r1", "f1", p).await);
        assert!(d.contains("fault.inject: hook sh: exit status: 3: boom"), "{d}");
        let d = e(f.run("fault.inject", "r1", "f1", json!({"fault": reset()})).await);
        assert!(d.contains("missing field `deadline_ms`"), "{d}");
        assert!(e(f.run("fault.revert", "r1", "f1", json!({"x": 1})).await).contains("unknown field `x`"));
        assert!(e(f.run("fault.boom", "r1", "f1", json!({})).await).contains("unknown action"));
        assert_eq!((f.mode(), f.m.active().len()), (Mode::PassThrough, 0));
    }

    #[tokio::test]
    async fn halt_reverts_one_run_or_all() {
        let f = fixture().await;
        let dns = json!({"type": "dns", "proxy": "resolver", "name": "psp.example.", "answer": "servfail"});
        let exec = json!({"type": "exec", "inject": ["/bin/true"], "revert": ["/bin/true"]});
        assert!(f.run("fault.inject", "r1", "net", params(reset(), 600_000, 30_000)).await.ok);
        assert!(f.run("fault.inject", "r1", "dns", params(dns, 600_000, 30_000)).await.ok);
        assert!(f.run("fault.inject", "r2", "cmd", params(exec, 600_000, 30_000)).await.ok);
        let resolver = f.m.dns_proxy("resolver").unwrap().addr();
        let rcode = |r: hickory_proto::op::Message| r.metadata.response_code;
        assert_eq!(rcode(dns::tests::ask(resolver, "psp.example.").await), hickory_proto::op::ResponseCode::ServFail);
        let o = f.run("fault.halt", "", "", json!({"run_id": "r1"})).await;
        assert!(o.ok && o.detail == "halt of drill run r1: reverted r1/dns, r1/net", "{o:?}");
        assert_eq!(f.m.active(), ["r2/cmd"]);
        assert_eq!(f.mode(), Mode::PassThrough);
        assert_eq!(rcode(dns::tests::ask(resolver, "psp.example.").await), hickory_proto::op::ResponseCode::NoError);
        let o = f.run("fault.halt", "", "", json!({})).await;
        assert!(o.ok && o.detail == "halt of every drill: reverted r2/cmd", "{o:?}");
        let o = f.run("fault.halt", "", "", json!({})).await;
        assert!(o.ok && o.detail == "halt of every drill: no fault was active", "{o:?}");
        assert!(f.gauge());
    }

    #[tokio::test]
    async fn the_dead_man_switch_reverts_on_deadline_and_on_a_lost_lease() {
        let f = fixture().await;
        let t0 = Instant::now();
        assert!(f.run("fault.inject", "r1", "f1", params(reset(), 1000, 600_000)).await.ok);
        assert!(f.m.check_dead_man(t0 + Duration::from_millis(500)).await.is_empty());
        let done = f.m.check_dead_man(t0 + Duration::from_secs(2)).await;
        assert_eq!(done.len(), 1);
        assert!(matches!(done[0], (ref k, Expiry::Deadline { .. }) if k == "r1/f1"), "{done:?}");
        assert_eq!((f.mode(), f.m.active().len()), (Mode::PassThrough, 0));

        assert!(f.run("fault.inject", "r1", "f2", params(reset(), 600_000, 30_000)).await.ok);
        f.lease.granted(Instant::now());
        let since = f.lease.since();
        assert!(f.m.check_dead_man(since + Duration::from_secs(30)).await.is_empty());
        let done = f.m.check_dead_man(since + Duration::from_secs(31)).await;
        assert!(
            matches!(done[..], [(ref k, Expiry::LostCoordinator { without_lease, .. })] if k == "r1/f2" && without_lease == Duration::from_secs(31)),
            "{done:?}"
        );
        assert_eq!((f.mode(), f.m.active().len()), (Mode::PassThrough, 0));
        assert!(f.gauge());
    }

    #[tokio::test]
    async fn the_watchdog_runs_the_switch_by_itself() {
        let f = fixture().await;
        tokio::spawn(f.m.clone().watchdog());
        assert!(f.run("fault.inject", "r1", "f1", params(reset(), 300, 600_000)).await.ok);
        assert_eq!(f.mode(), Mode::Reset);
        tokio::time::sleep(Duration::from_millis(300) + 3 * TICK).await;
        assert_eq!((f.mode(), f.m.active().len()), (Mode::PassThrough, 0));
    }

    #[tokio::test]
    async fn a_failed_revert_stays_active_and_is_retried_later() {
        let f = fixture().await;
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("ok");
        let exec = json!({"type": "exec", "inject": ["/bin/true"], "revert": ["/bin/test", "-e", flag]});
        assert!(f.run("fault.inject", "r1", "f1", params(exec, 100, 600_000)).await.ok);
        let o = f.run("fault.revert", "r1", "f1", json!({})).await;
        assert!(!o.ok && o.detail.contains("revert failed (still active)"), "{o:?}");
        assert_eq!(f.m.active(), ["r1/f1"]);
        // The switch waits RETRY before trying again.
        let now = Instant::now() + Duration::from_millis(200);
        assert!(f.m.check_dead_man(now).await.is_empty());
        std::fs::write(&flag, "").unwrap();
        assert_eq!(f.m.check_dead_man(now + RETRY).await.len(), 1);
        assert!(f.m.active().is_empty());
    }

    #[tokio::test]
    async fn start_binds_the_configured_proxies_and_names_a_bind_failure() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = proxy::tests::echo_server().await;
        let yaml = |listen: std::net::SocketAddr| {
            format!(
                "agent_id: a\nregion: eu-west\ncoordinators: [127.0.0.1:7001]\nfaults:\n  proxies:\n    psp: {{ listen: \"{listen}\", upstream: \"{upstream}\" }}\n"
            )
        };
        let start = async |listen| {
            let cfg = Arc::new(crate::config::parse("a.yaml", &yaml(listen)).unwrap());
            FaultManager::start(cfg, Lease::new(), Arc::new(AgentMetrics::new())).await
        };
        let e = start(taken.local_addr().unwrap()).await.err().expect("a bind failure");
        assert!(
            e.starts_with(&format!("faults.proxies.psp.listen: cannot bind {}", taken.local_addr().unwrap())),
            "{e}"
        );
        // A free port: the proxy forwards at once, in pass-through.
        let free = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let m = start(free).await.unwrap();
        assert_eq!(m.proxy("psp").unwrap().mode(), Mode::PassThrough);
        let mut s = tokio::net::TcpStream::connect(free).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"hi").await.unwrap();
        let mut got = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(&got, b"hi");
    }
}
