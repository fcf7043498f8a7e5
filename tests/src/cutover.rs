//! The cutover environment: 3 coordinator nodes, regions eu-west (PostgreSQL primary, app) and
//! eu-central (streaming standby, app), a PowerDNS serving the GSLB name and the database
//! endpoint name, and one agent per region. Plus a canary writer that records every
//! acknowledged write, the measure of RPO.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::time::Instant;

use crate::health::{HEALTH_WAIT, agent_yaml, wait_region};
use crate::{AgentProc, Cluster, FaultProxy, Pdns, PgPair, TestHttp};

/// Fast health for tests.
pub const HEALTH: &str = "health:\n  down_after: 2\n  up_after: 2\n  tick_ms: 100\n";

/// Everything a cutover test needs, torn down on drop.
pub struct Env {
    /// The coordinators.
    pub cluster: Cluster,
    /// Primary (eu-west) and standby (eu-central).
    pub pg: PgPair,
    /// The GSLB.
    pub dns: Pdns,
    /// eu-west's app.
    pub west_app: TestHttp,
    /// eu-central's app.
    pub central_app: TestHttp,
    /// The agents: eu-west, eu-central, then the witness (with [`EnvOptions::witness`]).
    pub agents: Vec<AgentProc>,
    block: u8,
    /// The links from eu-west's agent to each coordinator (with
    /// [`EnvOptions::west_agent_via_proxy`]).
    pub west_proxies: Vec<FaultProxy>,
    /// The link from eu-central's vantage check to eu-west's primary database.
    pub vantage_proxy: FaultProxy,
}

/// The witness region: a third vantage point, so that losing eu-west's own agent still leaves
/// a quorum (2 of 3) able to declare it down, and one flapping vantage cannot.
pub const WITNESS: &str = "eu-north";

/// What an environment adds for the unplanned-failover tests.
#[derive(Debug, Clone, Default)]
pub struct EnvOptions {
    /// A witness region with an agent probing both regions' databases, and a vantage check of
    /// eu-west's database from eu-central.
    pub witness: bool,
    /// eu-west's agent reaches the coordinators only through [`Env::west_proxies`].
    pub west_agent_via_proxy: bool,
    /// Extra settings of eu-west's `wallet-db` resource, e.g. `, self_fence: { after: 3s }`.
    pub west_db_extra: String,
    /// eu-west's agent knows its primary's data and bin dirs (offline fencing, rebuilds).
    pub west_data_dir: bool,
    /// eu-central's agent knows its database's data and bin dirs (a failback can rebuild it
    /// as a standby of eu-west again: see [`Env::failback_playbook_full`]).
    pub central_data_dir: bool,
    /// The coordinator's and agents' default health settings instead of the tests' faster ones
    /// (for benchmarks: figures at the defaults).
    pub default_health: bool,
    /// Every coordinator serves HTTP (`/metrics` and the console) on `127.0.B.N:9100`.
    pub http: bool,
    /// Verbatim YAML appended to every coordinator's config.
    pub coordinator_yaml: String,
    /// Authentication with these principals (plus the harness's admin, whose token the
    /// environment's own calls carry).
    pub auth: Option<crate::auth::TestPrincipals>,
    /// Coordinators log JSON lines.
    pub json_logs: bool,
}

impl Env {
    /// The eu-west address (primary DB, app, GSLB answer).
    pub fn west_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, self.block, 10)
    }

    /// The eu-central address.
    pub fn central_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, self.block, 11)
    }

    /// Starts everything in address block `block` and waits until both regions are up.
    pub async fn start(block: u8) -> Result<Env> {
        Env::start_with(block, EnvOptions::default()).await
    }

    /// [`Env::start`] with the options of the unplanned-failover tests.
    pub async fn start_with(block: u8, opt: EnvOptions) -> Result<Env> {
        let health = if opt.default_health { "" } else { HEALTH };
        let mut builder = Cluster::builder(block).nodes(3).extra_yaml(health).extra_yaml(&opt.coordinator_yaml);
        if opt.http {
            builder = builder.with_http();
        }
        if let Some(p) = &opt.auth {
            builder = builder.with_auth(p, None);
        }
        if opt.json_logs {
            builder = builder.json_logs();
        }
        let cluster = builder.start().await?;
        // Check cadence: the tests' 200 ms, or the agent's default (300 ms) for benchmarks.
        let cadence =
            |y: String| if opt.default_health { y.replace("interval_ms: 200", "interval_ms: 300") } else { y };
        let leader = cluster.wait_leader(&[1, 2, 3]).await?.leader_id;
        cluster.add_region(leader, "eu-west").await?;
        cluster.add_region(leader, "eu-central").await?;
        if opt.witness {
            cluster.add_region(leader, WITNESS).await?;
        }
        let west = Ipv4Addr::new(127, 0, block, 10);
        let central = Ipv4Addr::new(127, 0, block, 11);
        let pg = PgPair::start(west, central).await?;
        pg.exec_primary("CREATE TABLE canary (id bigint PRIMARY KEY, at timestamptz DEFAULT now())").await?;
        let dns = Pdns::start(Ipv4Addr::new(127, 0, block, 20)).await?;
        dns.create_zone("gslb.example.").await?;
        dns.set_a("wallet.gslb.example.", &[west], 5).await?;
        dns.set_a("wallet-db.gslb.example.", &[west], 5).await?;
        let west_app = TestHttp::start(SocketAddr::from((west, 0))).await?;
        let central_app = TestHttp::start(SocketAddr::from((central, 0))).await?;
        let coords: Vec<String> = [1, 2, 3].iter().map(|&i| cluster.addr(i).to_string()).collect();
        // eu-west's agent may reach the coordinators only through proxies a test can cut.
        let mut west_proxies = Vec::new();
        let west_coords: Vec<String> = if opt.west_agent_via_proxy {
            for i in [1, 2, 3] {
                let p = FaultProxy::start(
                    SocketAddr::from((Ipv4Addr::new(127, 0, block, 40 + i as u8), 0)),
                    cluster.addr(i),
                )
                .await?;
                west_proxies.push(p);
            }
            west_proxies.iter().map(|p| p.addr().to_string()).collect()
        } else {
            coords.clone()
        };
        // The primary's vantage checks from other regions go through a proxy too (a flapping
        // network between one vantage point and eu-west).
        let vantage_proxy =
            FaultProxy::start(SocketAddr::from((Ipv4Addr::new(127, 0, block, 45), 0)), pg.primary_addr()).await?;
        let resources = |db: &str, db_extra: &str, peer: Option<&str>, app: &TestHttp| {
            let mut y = format!(
                "resources:\n  postgres:\n    wallet-db: {{ dsn: \"{db}\"{db_extra} }}\n{}  dns:\n    gslb: {{ server: \"{}\", api_url: \"{}\", api_key_env: PDNS_API_KEY }}\n  http:\n    wallet-api: {{ base_url: \"{}\" }}\n",
                peer.map(|p| format!("    wallet-db-peer: {{ dsn: \"{p}\" }}\n")).unwrap_or_default(),
                dns.dns_addr(),
                dns.api_url(),
                app.url("/").trim_end_matches('/')
            );
            y.push_str("checks:\n  - { name: app, type: http, resource: wallet-api, path: /health, interval_ms: 200, slo: [\"p95_ms <= 300\"] }\n");
            y
        };
        let mut west_extra = opt.west_db_extra.clone();
        if opt.west_data_dir {
            west_extra.push_str(&format!(
                ", data_dir: \"{}\", bin_dir: \"{}\"",
                pg.primary_data_dir().display(),
                pg.bin_dir().display()
            ));
        }
        // With its data dir, eu-west can be rebuilt as a standby of eu-central (failback).
        let west_peer = opt.west_data_dir.then(|| pg.standby_dsn());
        let mut west_yaml = resources(&pg.primary_dsn(), &west_extra, west_peer.as_deref(), &west_app);
        west_yaml.push_str("  - { name: db, type: postgres, resource: wallet-db, interval_ms: 200 }\n");
        let central_extra = if opt.central_data_dir {
            format!(", data_dir: \"{}\", bin_dir: \"{}\"", pg.standby_data_dir().display(), pg.bin_dir().display())
        } else {
            String::new()
        };
        let mut central_yaml = resources(&pg.standby_dsn(), &central_extra, Some(&pg.primary_dsn()), &central_app);
        central_yaml.push_str(
            "  - { name: db, type: postgres, resource: wallet-db, primary: wallet-db-peer, interval_ms: 200, slo: [\"lag_seconds <= 5\"] }\n",
        );
        let via_proxy = format!(
            "host={} port={} user=postgres dbname=postgres connect_timeout=1",
            vantage_proxy.addr().ip(),
            vantage_proxy.addr().port()
        );
        if opt.witness {
            // Vantage points on eu-west's primary database: eu-central (through the proxy) and
            // the witness region. Only the database: the service is lost with it.
            central_yaml = central_yaml.replacen(
                "  dns:\n",
                &format!("    west-db-vantage: {{ dsn: \"{via_proxy}\" }}\n  dns:\n"),
                1,
            );
            central_yaml.push_str("  - { name: west-db, type: postgres, resource: west-db-vantage, target_region: eu-west, interval_ms: 200, timeout_ms: 400 }\n");
        }
        let env = [("PDNS_API_KEY", dns.api_key())];
        let a_west = AgentProc::start(
            cluster.dir(),
            "agent-eu-west",
            &cadence(agent_yaml("agent-eu-west", "eu-west", &west_coords, &west_yaml)),
            &env,
        )?;
        let a_central = AgentProc::start(
            cluster.dir(),
            "agent-eu-central",
            &cadence(agent_yaml("agent-eu-central", "eu-central", &coords, &central_yaml)),
            &env,
        )?;
        let mut agents = vec![a_west, a_central];
        if opt.witness {
            let yaml = format!(
                "resources:\n  postgres:\n    west-db: {{ dsn: \"{}\" }}\n    central-db: {{ dsn: \"{}\" }}\n  http:\n    central-api: {{ base_url: \"{}\" }}\nchecks:\n  - {{ name: west-db, type: postgres, resource: west-db, target_region: eu-west, interval_ms: 200, timeout_ms: 400 }}\n  - {{ name: central-db, type: postgres, resource: central-db, target_region: eu-central, interval_ms: 200, timeout_ms: 400 }}\n  - {{ name: central-app, type: http, resource: central-api, path: /health, target_region: eu-central, interval_ms: 200 }}\n",
                pg.primary_dsn().replace("connect_timeout=5", "connect_timeout=1"),
                pg.standby_dsn(),
                central_app.url("/").trim_end_matches('/')
            );
            agents.push(AgentProc::start(
                cluster.dir(),
                "agent-eu-north",
                &cadence(agent_yaml("agent-eu-north", WITNESS, &coords, &yaml)),
                &env,
            )?);
        }
        wait_region(&cluster, leader, "eu-west", "up", HEALTH_WAIT).await?;
        wait_region(&cluster, leader, "eu-central", "up", HEALTH_WAIT).await?;
        Ok(Env { cluster, pg, dns, west_app, central_app, agents, block, west_proxies, vantage_proxy })
    }

    /// The canary ids the eu-central server (the new primary after a cutover) holds.
    pub async fn canary_ids_in_central(&self) -> Result<std::collections::BTreeSet<i64>> {
        let rows = self.pg.query_standby("SELECT id FROM canary").await?;
        Ok(rows.iter().filter_map(|r| r[0].as_ref().and_then(|v| v.parse().ok())).collect())
    }

    /// Which PostgreSQL port answers at each region's address (for the canary writer).
    pub fn db_ports(&self) -> BTreeMap<Ipv4Addr, u16> {
        BTreeMap::from([
            (self.west_ip(), self.pg.primary_addr().port()),
            (self.central_ip(), self.pg.standby_addr().port()),
        ])
    }

    /// The playbook text for this environment: the design's order, phases 25/100.
    pub fn playbook(&self, approvals: u32, dwell: &str) -> String {
        self.playbook_with(approvals, dwell, "[25, 100]")
    }

    /// The playbook with the given shift phases (e.g. `[100]` for the instant profile).
    pub fn playbook_with(&self, approvals: u32, dwell: &str, phases: &str) -> String {
        let (w, c) = (self.west_ip(), self.central_ip());
        // One app-wide maintenance switch (served by the eu-west app in this environment).
        let m = self.west_app.url("/maintenance");
        format!(
            r#"apiVersion: drcut/v1
kind: Playbook
metadata:
  name: wallet-test-cutover
  description: Test cutover of the wallet service.
spec:
  service: wallet
  parameters:
    source: {{ kind: region, default: eu-west }}
    target: {{ kind: region, default: eu-central }}
  approvals: {{ required: {approvals} }}
  targets: {{ rpo_seconds: 0, rto_seconds: 60 }}
  preconditions: {{ target_region: "${{target}}", max_lag_seconds: 5 }}
  defaults: {{ timeout: 15s, retries: 1, retry_backoff: 200ms, on_failure: rollback }}
  steps:
    - id: freeze
      action: freeze_writes
      region: ${{source}}
      with: {{ database: wallet-db, maintenance_url: "{m}" }}
      compensate: {{ action: unfreeze_writes, region: "${{source}}", with: {{ database: wallet-db, maintenance_url: "{m}" }} }}
    - id: catch-up
      action: wait_replication
      region: ${{target}}
      with: {{ database: wallet-db }}
    - id: fence
      action: fence
      region: ${{source}}
      with: {{ database: wallet-db }}
    - id: promote
      action: promote_db
      region: ${{target}}
      with: {{ database: wallet-db }}
      on_failure: pause
    - id: repoint
      action: repoint_clients
      region: ${{target}}
      with: {{ dns: gslb, zone: gslb.example., name: wallet-db.gslb.example., answers: ["{c}"], ttl: 5 }}
      on_failure: pause
    - id: unfreeze
      action: unfreeze_writes
      region: ${{target}}
      with: {{ database: wallet-db, maintenance_url: "{m}" }}
      on_failure: pause
    - id: warm
      action: warm_caches
      region: ${{target}}
      with: {{ http: wallet-api, paths: [/health], until_p95_ms: 300 }}
      on_failure: pause
    - id: shift
      action: shift_traffic
      region: ${{target}}
      with: {{ dns: gslb, zone: gslb.example., name: wallet.gslb.example., from: ["{w}"], to: ["{c}"], ttl: 5, verify: {{ queries: 100, tolerance: 0.15 }} }}
      phases: {phases}
      dwell: {dwell}
      gate: {{ region: "${{target}}", require: up }}
      compensate: {{ action: shift_traffic, region: "${{target}}", with: {{ dns: gslb, zone: gslb.example., name: wallet.gslb.example., from: ["{w}"], to: ["{c}"], ttl: 5 }} }}
    - id: smoke
      action: smoke
      region: ${{target}}
      with: {{ http: wallet-api, paths: [/health] }}
      on_failure: pause
"#
        )
    }

    /// The cutover playbook with `spec.failover` (eu-west → eu-central) and `failover_extra`
    /// lines under it (e.g. `    automatic: { enabled: true, cooldown: 10m }`), instant
    /// profile. No app maintenance switch: the app lives in the region that is lost.
    pub fn failover_playbook(&self, failover_extra: &str) -> String {
        let m = self.west_app.url("/maintenance");
        self.playbook_with(0, "500ms", "[100]")
            .replace(&format!(", maintenance_url: \"{m}\""), "")
            .replace("name: wallet-test-cutover", "name: wallet-failover")
            .replace(
                "  steps:\n",
                &format!("  failover:\n    source: ${{source}}\n    target: ${{target}}\n{failover_extra}  steps:\n"),
            )
    }

    /// The failback playbook (eu-central → eu-west after an unplanned failover): rebuild the
    /// fenced old primary as a standby of eu-central first, then the planned order.
    pub fn failback_playbook(&self) -> String {
        let (w, c) = (self.west_ip(), self.central_ip());
        format!(
            r#"apiVersion: drcut/v1
kind: Playbook
metadata: {{ name: wallet-failback }}
spec:
  service: wallet
  parameters:
    source: {{ kind: region, default: eu-central }}
    target: {{ kind: region, default: eu-west }}
  preconditions: {{ target_region: "${{target}}" }}
  defaults: {{ timeout: 15s, retries: 1, retry_backoff: 200ms, on_failure: rollback }}
  steps:
    - {{ id: rebuild, action: rebuild_standby, region: "${{target}}", timeout: 60s, retries: 0, with: {{ database: wallet-db, upstream: wallet-db-peer }} }}
    - {{ id: freeze, action: freeze_writes, region: "${{source}}", with: {{ database: wallet-db }}, compensate: {{ action: unfreeze_writes, region: "${{source}}", with: {{ database: wallet-db }} }} }}
    - {{ id: catch-up, action: wait_replication, region: "${{target}}", with: {{ database: wallet-db }} }}
    - {{ id: fence, action: fence, region: "${{source}}", with: {{ database: wallet-db }} }}
    - {{ id: promote, action: promote_db, region: "${{target}}", with: {{ database: wallet-db }}, on_failure: pause }}
    - {{ id: repoint, action: repoint_clients, region: "${{target}}", with: {{ dns: gslb, zone: gslb.example., name: wallet-db.gslb.example., answers: ["{w}"], ttl: 5 }}, on_failure: pause }}
    - {{ id: unfreeze, action: unfreeze_writes, region: "${{target}}", with: {{ database: wallet-db }}, on_failure: pause }}
    - {{ id: shift, action: shift_traffic, region: "${{target}}", phases: [100], with: {{ dns: gslb, zone: gslb.example., name: wallet.gslb.example., from: ["{c}"], to: ["{w}"], ttl: 5 }}, on_failure: pause }}
"#
        )
    }

    /// [`Env::failback_playbook`] that also rebuilds the region it leaves (eu-central) as a
    /// standby of the returning primary, so the original layout is back: eu-west primary,
    /// eu-central streaming (needs [`EnvOptions::central_data_dir`]).
    pub fn failback_playbook_full(&self) -> String {
        let mut p = self.failback_playbook();
        p.push_str("    - { id: rebuild-source, action: rebuild_standby, region: \"${source}\", timeout: 60s, retries: 0, on_failure: pause, with: { database: wallet-db, upstream: wallet-db-peer } }\n");
        p
    }

    /// Turns on synchronous replication (a commit is acknowledged once the standby has it) and
    /// waits until the primary reports its standby as `sync`.
    pub async fn synchronous_replication(&self) -> Result<()> {
        self.pg.exec_primary("ALTER SYSTEM SET synchronous_standby_names = '*'").await?;
        self.pg.exec_primary("ALTER SYSTEM SET synchronous_commit = 'on'").await?;
        self.pg.exec_primary("SELECT pg_reload_conf()").await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.pg.scalar_primary("SELECT string_agg(sync_state, ',') FROM pg_stat_replication").await?;
            if s.as_deref() == Some("sync") {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "standby not synchronous: {s:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Applies `text` as a playbook through drctl (writes it into the test dir first).
    pub async fn apply_playbook(&self, name: &str, text: &str) -> Result<()> {
        let p = self.cluster.dir().join(format!("{name}.yaml"));
        std::fs::write(&p, text)?;
        let out = self.cluster.drctl(&["playbook", "apply", &p.display().to_string()]).await?;
        anyhow::ensure!(out.code == Some(0), "playbook apply: {}{}", out.stdout, out.stderr);
        Ok(())
    }

    /// Every run as the first node that answers lists them (oldest first): a test may have
    /// killed some nodes.
    pub async fn runs(&self) -> Result<Vec<drcut_proto::v1::RunInfo>> {
        let mut last = None;
        for id in [1, 2, 3] {
            let Ok(mut c) = self.cluster.client(id) else { continue };
            match c.list_runs(self.cluster.request(drcut_proto::v1::ListRunsRequest { active_only: false })).await {
                Ok(r) => return Ok(r.into_inner().runs),
                Err(e) => last = Some(e),
            }
        }
        anyhow::bail!("no node lists runs: {last:?}")
    }

    /// Run `id` as the first node that answers lists it.
    pub async fn run(&self, id: &str) -> Result<drcut_proto::v1::RunInfo> {
        self.runs().await?.into_iter().find(|r| r.run_id == id).with_context(|| format!("run {id} not listed"))
    }

    /// Polls run `id` until `pred` holds for it and returns it; fails if the run ends first
    /// (without `pred` holding), or after `timeout`.
    pub async fn poll_run(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&drcut_proto::v1::RunInfo) -> bool,
    ) -> Result<drcut_proto::v1::RunInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.run(id).await?;
            if pred(&r) {
                return Ok(r);
            }
            anyhow::ensure!(r.ended_unix_ms == 0, "run {id} ended {} ({}) before {what}", r.state, r.state_reason);
            anyhow::ensure!(
                Instant::now() < deadline,
                "run {id}: {what} not within {timeout:?}; {} ({})",
                r.state,
                r.state_reason
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a run exists that `pred` accepts, and returns it.
    pub async fn wait_run(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&drcut_proto::v1::RunInfo) -> bool,
    ) -> Result<drcut_proto::v1::RunInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(runs) = self.runs().await
                && let Some(r) = runs.into_iter().find(|r| pred(r))
            {
                return Ok(r);
            }
            anyhow::ensure!(Instant::now() < deadline, "{what}: not within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes the playbook into the test dir and returns its path.
    pub fn write_playbook(&self, approvals: u32, dwell: &str) -> Result<String> {
        let p = self.cluster.dir().join(format!("playbook-{approvals}-{dwell}.yaml"));
        std::fs::write(&p, self.playbook(approvals, dwell))?;
        Ok(p.display().to_string())
    }
}

/// What the canary writer saw.
#[derive(Debug, Default, Clone)]
pub struct CanaryLog {
    /// Ids whose insert was acknowledged (committed without error).
    pub acked: Vec<i64>,
    /// Per write: (start, ok) relative to the writer's start.
    pub attempts: Vec<(Duration, bool)>,
}

impl CanaryLog {
    /// The longest stretch without an acknowledged write, between the first failure and the
    /// next success: the client-visible write-unavailability window.
    pub fn longest_gap(&self) -> Duration {
        let mut gap = Duration::ZERO;
        let mut last_ok: Option<Duration> = None;
        for (t, ok) in &self.attempts {
            if *ok {
                if let Some(l) = last_ok {
                    gap = gap.max(t.saturating_sub(l));
                }
                last_ok = Some(*t);
            }
        }
        gap
    }
}

/// A writer that resolves the database endpoint name through the GSLB for every write (as an
/// application with a short DNS TTL would) and inserts numbered rows until stopped.
pub fn canary(
    dns_addr: SocketAddr,
    ports: BTreeMap<Ipv4Addr, u16>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Result<CanaryLog>> {
    let log = Arc::new(Mutex::new(CanaryLog::default()));
    tokio::spawn(async move {
        let start = Instant::now();
        let resolver = crate::pdns::resolver(dns_addr)?;
        let mut id = 0i64;
        let mut client: Option<(Ipv4Addr, tokio_postgres::Client)> = None;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            id += 1;
            let t = start.elapsed();
            let ip = crate::pdns::query_a_at(&resolver, "wallet-db.gslb.example.")
                .await
                .ok()
                .and_then(|l| l.first().copied());
            let ok = async {
                let ip = ip.context("no answer")?;
                if client.as_ref().is_none_or(|(cip, c)| *cip != ip || c.is_closed()) {
                    let port = ports.get(&ip).context("unknown address")?;
                    let dsn = format!("host={ip} port={port} user=postgres dbname=postgres connect_timeout=2");
                    client = Some((ip, crate::pg::connect(&dsn).await?));
                }
                let (_, c) = client.as_ref().context("client")?;
                tokio::time::timeout(Duration::from_secs(2), c.execute("INSERT INTO canary (id) VALUES ($1)", &[&id]))
                    .await
                    .context("insert timed out")??;
                anyhow::Ok(())
            }
            .await;
            if ok.is_err() {
                client = None;
            }
            {
                let mut g = log.lock().unwrap();
                if ok.is_ok() {
                    g.acked.push(id);
                }
                g.attempts.push((t, ok.is_ok()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let g = log.lock().unwrap().clone();
        Ok(g)
    })
}

// === run records: for tests that act at an exact point of a run ===

/// The `run_id` in `drctl --json cutover start`'s output (its last line).
pub fn started_run_id(stdout: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .with_context(|| format!("not JSON: {stdout}"))?;
    Ok(v["run_id"].as_str().context("no run_id")?.to_string())
}

/// Run `run`'s info and record (`RunRecord` as JSON) as node `id` holds it (a local read).
pub async fn run_record(
    cluster: &Cluster,
    id: u64,
    run: &str,
) -> Result<(drcut_proto::v1::RunInfo, serde_json::Value)> {
    let mut c = cluster.client(id)?;
    let info =
        c.get_run(cluster.request(drcut_proto::v1::GetRunRequest { run_id: run.to_string() })).await?.into_inner();
    let rec = serde_json::from_str(&info.record_json).context("parsing record_json")?;
    Ok((info, rec))
}

/// Follows run `run` on node `id` (WatchRun: a message per applied revision, latest state
/// first) until `pred` holds for its record, and returns that record. Reacts within
/// milliseconds of the node applying the change, so a test can act at an exact point of a run.
/// Fails if the run ends first, or after `timeout`.
pub async fn watch_run_until(
    cluster: &Cluster,
    id: u64,
    run: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let watch = async {
        let mut c = cluster.client(id)?;
        let mut stream = c
            .watch_run(cluster.request(drcut_proto::v1::GetRunRequest { run_id: run.to_string() }))
            .await?
            .into_inner();
        let mut last = None;
        while let Some(info) = stream.message().await? {
            let rec: serde_json::Value = serde_json::from_str(&info.record_json).context("parsing record_json")?;
            if pred(&rec) {
                return Ok(rec);
            }
            anyhow::ensure!(info.ended_unix_ms == 0, "run ended {} ({}) before {what}", info.state, info.state_reason);
            last = Some(info.state);
        }
        anyhow::bail!("watch on node {id} ended before {what} (last state {last:?})")
    };
    tokio::time::timeout(timeout, watch).await.with_context(|| format!("{what}: not within {timeout:?}"))?
}

/// The index of step `step_id` in a run record's plan.
pub fn step_index(rec: &serde_json::Value, step_id: &str) -> Result<usize> {
    rec["run"]["plan"]["steps"]
        .as_array()
        .context("no plan steps in the record")?
        .iter()
        .position(|s| s["id"] == step_id)
        .with_context(|| format!("no step {step_id:?} in the plan"))
}

/// The finished attempts (forward and compensation) of step `step_id` in a run record, in
/// order.
pub fn attempts(rec: &serde_json::Value, step_id: &str) -> Result<Vec<serde_json::Value>> {
    let i = step_index(rec, step_id)? as u64;
    Ok(rec["run"]["history"]
        .as_array()
        .context("no history in the record")?
        .iter()
        .filter(|a| a["work"]["step"].as_u64() == Some(i))
        .cloned()
        .collect())
}

impl Env {
    /// Writes and applies the playbook (`approvals`, `dwell`), starts a cutover as alice and
    /// returns its run id.
    pub async fn start_cutover(&self, approvals: u32, dwell: &str) -> Result<String> {
        let file = self.write_playbook(approvals, dwell)?;
        let out = self.cluster.drctl(&["--actor", "alice", "playbook", "apply", &file]).await?;
        anyhow::ensure!(out.code == Some(0), "{out}");
        let out = self
            .cluster
            .drctl(&["--json", "--actor", "alice", "cutover", "start", "wallet-test-cutover", "--reason", "test"])
            .await?;
        anyhow::ensure!(out.code == Some(0), "{out}");
        started_run_id(&out.stdout)
    }

    /// The timeline each server is on, `(eu-west, eu-central)`, from its control file after a
    /// `CHECKPOINT` (a restartpoint on a standby); for a server out of recovery it is
    /// cross-checked against the timeline of the WAL segment it writes.
    pub async fn timelines(&self) -> Result<(u32, u32)> {
        let mut out = [0u32; 2];
        for (i, dsn) in [self.pg.primary_dsn(), self.pg.standby_dsn()].iter().enumerate() {
            let c = crate::pg::connect(dsn).await?;
            c.batch_execute("CHECKPOINT").await.context("CHECKPOINT")?;
            let row =
                c.query_one("SELECT timeline_id::int8, pg_is_in_recovery() FROM pg_control_checkpoint()", &[]).await?;
            let (tli, in_recovery): (i64, bool) = (row.get(0), row.get(1));
            if !in_recovery {
                let hex: String =
                    c.query_one("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)", &[]).await?.get(0);
                let wal = i64::from_str_radix(&hex, 16).with_context(|| format!("WAL timeline {hex:?}"))?;
                anyhow::ensure!(wal == tli, "{dsn}: checkpoint on timeline {tli}, WAL written on {wal}");
            }
            out[i] = u32::try_from(tli)?;
        }
        Ok((out[0], out[1]))
    }
}
