//! GameDay drill tests: a light environment (3 coordinators, regions eu-west and eu-central,
//! one eu-west agent running a fault proxy in front of a stand-in payment provider, reaching the
//! coordinators through proxies a test can cut), and helpers to read drill runs.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result};
use drcut_proto::v1 as pb;
use tokio::time::Instant;

use crate::cutover::{Env, HEALTH};
use crate::health::{HEALTH_WAIT, agent_yaml, wait_region};
use crate::{AgentProc, Cluster, FaultProxy, TestHttp};

/// The port the agent's fault proxy listens on (its address is per block).
pub const PSP_PROXY_PORT: u16 = 18443;

/// The light drill environment.
pub struct DrillEnv {
    /// The coordinators.
    pub cluster: Cluster,
    /// The stand-in payment provider (the proxy's upstream).
    pub psp: TestHttp,
    /// eu-west's agent.
    pub agent: AgentProc,
    /// The links from the agent to each coordinator.
    pub coord_proxies: Vec<FaultProxy>,
    block: u8,
}

impl DrillEnv {
    /// Starts everything in address block `block`; `extra_checks` are more check list items
    /// for the agent. Waits until eu-west is up.
    pub async fn start(block: u8) -> Result<DrillEnv> {
        let cluster = Cluster::builder(block).nodes(3).extra_yaml(HEALTH).start().await?;
        let leader = cluster.wait_leader(&[1, 2, 3]).await?.leader_id;
        cluster.add_region(leader, "eu-west").await?;
        cluster.add_region(leader, "eu-central").await?;
        let psp = TestHttp::start(SocketAddr::from((Ipv4Addr::new(127, 0, block, 30), 0))).await?;
        let mut coord_proxies = Vec::new();
        for i in [1, 2, 3] {
            let listen = SocketAddr::from((Ipv4Addr::new(127, 0, block, 40 + i as u8), 0));
            coord_proxies.push(FaultProxy::start(listen, cluster.addr(i)).await?);
        }
        let coords: Vec<String> = coord_proxies.iter().map(|p| p.addr().to_string()).collect();
        let proxy = SocketAddr::from((Ipv4Addr::new(127, 0, block, 31), PSP_PROXY_PORT));
        let body = format!(
            "faults:\n  proxies:\n    psp: {{ listen: \"{proxy}\", upstream: \"{}\" }}\nresources:\n  http:\n    psp-api: {{ base_url: \"http://{proxy}\" }}\nchecks:\n  - {{ name: psp, type: http, resource: psp-api, path: /health, interval_ms: 200, timeout_ms: 500 }}\n",
            psp.addr()
        );
        let agent = AgentProc::start(
            cluster.dir(),
            "agent-eu-west",
            &agent_yaml("agent-eu-west", "eu-west", &coords, &body),
            &[],
        )?;
        wait_region(&cluster, leader, "eu-west", "up", HEALTH_WAIT).await?;
        Ok(DrillEnv { cluster, psp, agent, coord_proxies, block })
    }

    /// The payment provider as the platform reaches it: through the agent's fault proxy.
    pub fn psp_via_proxy(&self) -> String {
        format!("http://127.0.{}.31:{PSP_PROXY_PORT}/health", self.block)
    }

    /// A file in the test dir.
    pub fn file(&self, name: &str, text: &str) -> Result<String> {
        let p = self.cluster.dir().join(name);
        std::fs::write(&p, text)?;
        Ok(p.display().to_string())
    }
}

/// Whether `url` answers 200 within a second.
pub async fn answers(url: &str) -> bool {
    let c = crate::http_server::http_client();
    matches!(
        tokio::time::timeout(Duration::from_secs(1), c.get(url).send()).await,
        Ok(Ok(r)) if r.status().is_success()
    )
}

/// Writes `text` as `name`.yaml in the cluster's dir and applies it with drctl.
pub async fn apply_drill(cluster: &Cluster, name: &str, text: &str) -> Result<crate::ProcessOutput> {
    let p = cluster.dir().join(format!("{name}.yaml"));
    std::fs::write(&p, text)?;
    cluster.drctl(&["drill", "apply", &p.display().to_string()]).await
}

/// Every drill run as the first node that answers lists them (oldest first).
pub async fn drill_runs(cluster: &Cluster) -> Result<Vec<pb::DrillRunInfo>> {
    let mut last = None;
    for id in cluster.running() {
        let Ok(mut c) = cluster.client(id) else { continue };
        match c.list_drill_runs(cluster.request(pb::ListDrillRunsRequest::default())).await {
            Ok(r) => return Ok(r.into_inner().runs),
            Err(e) => last = Some(e),
        }
    }
    anyhow::bail!("no node lists drill runs: {last:?}")
}

/// Drill run `id` (info and record) as the first running node that has it.
pub async fn drill_run(cluster: &Cluster, id: &str) -> Result<(pb::DrillRunInfo, serde_json::Value)> {
    let mut last = None;
    for n in cluster.running() {
        let Ok(mut c) = cluster.client(n) else { continue };
        match c.get_drill_run(cluster.request(pb::GetDrillRunRequest { id: id.to_string() })).await {
            Ok(r) => {
                let info = r.into_inner();
                let rec = serde_json::from_str(&info.record_json).context("record_json")?;
                return Ok((info, rec));
            }
            Err(e) => last = Some(e),
        }
    }
    anyhow::bail!("no node has drill run {id}: {last:?}")
}

/// Polls drill run `id` until `pred` holds for its record; fails when it ends first (unless
/// `pred` accepts the ended record) or after `timeout`.
pub async fn wait_drill(
    cluster: &Cluster,
    id: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((info, rec)) = drill_run(cluster, id).await {
            if pred(&rec) {
                return Ok(rec);
            }
            anyhow::ensure!(
                info.state != "done",
                "drill run {id} ended {} ({}) before {what}; events: {}",
                info.outcome,
                info.outcome_detail,
                rec["events"]
            );
        }
        anyhow::ensure!(Instant::now() < deadline, "drill run {id}: {what} not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a drill run of `drill` exists and returns its id.
pub async fn wait_drill_started(cluster: &Cluster, drill: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(runs) = drill_runs(cluster).await
            && let Some(r) = runs.into_iter().find(|r| r.drill == drill)
        {
            return Ok(r.id);
        }
        anyhow::ensure!(Instant::now() < deadline, "no run of drill {drill} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many canary writes a drill run record (JSON) counts as acknowledged.
pub fn acked(rec: &serde_json::Value) -> u64 {
    serde_json::from_value::<drcut_coordinator::drill::CanaryRecord>(rec["canary"].clone())
        .map_or(0, |c| c.acked_count())
}

/// The id in `drctl --json drill run`'s output (the record JSON).
pub fn started_drill_id(stdout: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).with_context(|| format!("not JSON: {stdout}"))?;
    Ok(v["id"].as_str().context("no id")?.to_string())
}

/// A harmless daily drill, `nightly-exec`, first due at `start` (UTC, RFC 3339 without the
/// zone): one `exec` fault on eu-west running `inject` and `revert` (YAML lists), then `observe`
/// of steady state; no failover expected.
pub fn nightly_exec_drill(start: &str, inject: &str, revert: &str, observe: &str) -> String {
    format!(
        r#"apiVersion: drcut/v1
kind: Drill
metadata: {{ name: nightly-exec, owner: platform-sre }}
spec:
  service: wallet
  hypothesis: The platform shrugs off a fault no driver knows.
  target: {{ region: eu-west }}
  schedule:
    rrule: FREQ=DAILY
    timezone: UTC
    start: "{start}"
    start_tolerance: 5m
  deadline: 5m
  faults:
    - {{ id: marker, region: eu-west, type: exec, inject: {inject}, revert: {revert} }}
  response: {{ observe: {observe} }}
  expect: {{ failover: false }}
"#
    )
}

/// The region-loss drill of the cutover environment ([`Env`] with a witness and eu-west's data
/// dir): stop eu-west's primary hard, fail over with `wallet-failover` (unplanned), count RPO
/// with a canary over both databases, fail back with `wallet-failback`.
pub fn region_loss_drill(env: &Env) -> String {
    let (w, c) = (env.west_ip(), env.central_ip());
    let (pw, pc) = (env.pg.primary_addr().port(), env.pg.standby_addr().port());
    format!(
        r#"apiVersion: drcut/v1
kind: Drill
metadata: {{ name: region-loss, owner: platform-sre }}
spec:
  service: wallet
  hypothesis: >-
    Losing eu-west's primary database moves wallet to eu-central within 30 s without losing
    an acknowledged write, and failback restores the original layout.
  target: {{ region: eu-west }}
  deadline: 10m
  faults:
    - {{ id: kill-primary-db, region: eu-west, type: postgres_stop, database: wallet-db }}
  steady_state:
    - {{ region: eu-west }}
    - {{ region: eu-central }}
  preflight: {{ max_lag: 5s }}
  guardrails:
    - {{ name: central-stays-up, region: eu-central, check: app, require: not_down, for: 3s }}
  response:
    playbook: wallet-failover
    unplanned: true
    start: on_down
  expect:
    detection: 5s
    rto: 30s
    rpo: 0
    failover: true
  canary:
    dsn: "host={w},{c} port={pw},{pc} user=postgres dbname=postgres"
    interval: 50ms
  restore:
    playbook: wallet-failback
    timeout: 5m
"#
    )
}
