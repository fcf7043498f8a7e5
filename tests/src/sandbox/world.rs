//! The sandbox's platform: 3 coordinator nodes, regions eu-west (PostgreSQL primary, casino app)
//! and eu-central (streaming standby, casino app), a PowerDNS serving the GSLB names, and one
//! agent per region. Built from the harness's own types, so stopping it is theirs too: every
//! process dies and every temp dir goes when [`World`] is dropped (or the supervisor holding
//! it is killed outright: the processes carry a parent-death signal).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use crate::cutover::HEALTH;
use crate::health::{HEALTH_WAIT, agent_yaml, wait_region};
use crate::pg::PgOptions;
use crate::{AgentProc, Cluster, Pdns, PgPair, bins};

/// The port every casino app is reached on (its region's agent's fault proxy); the app itself
/// listens on [`CASINO_BACKEND_PORT`] behind it, so a drill can slow or cut it.
pub const CASINO_PORT: u16 = 8080;
/// Where the casino app process itself listens.
pub const CASINO_BACKEND_PORT: u16 = 18080;
/// The regions, in order: the one holding the primary first.
pub const REGIONS: [&str; 2] = ["eu-west", "eu-central"];

/// Everything the sandbox runs.
pub struct World {
    /// The coordinators (console and metrics on `127.0.B.N:9100`).
    pub cluster: Cluster,
    /// eu-west's primary and eu-central's streaming standby.
    pub pg: PgPair,
    /// The GSLB.
    pub dns: Pdns,
    /// The agents, in [`REGIONS`] order.
    pub agents: Vec<AgentProc>,
    /// The casino app processes, in [`REGIONS`] order.
    casinos: Vec<Child>,
    block: u8,
    logs: PathBuf,
}

impl World {
    /// A region's address: its database, app and GSLB answer (`.10` eu-west, `.11` eu-central).
    pub fn region_ip(&self, region: usize) -> Ipv4Addr {
        Ipv4Addr::new(127, 0, self.block, 10 + region as u8)
    }

    /// Where users reach a region's casino app.
    pub fn app_addr(&self, region: usize) -> SocketAddr {
        SocketAddr::from((self.region_ip(region), CASINO_PORT))
    }

    /// `drctl --endpoint` for all three nodes.
    pub fn endpoints(&self) -> String {
        self.cluster.endpoints(&[1, 2, 3])
    }

    /// The ops console on node 1 (every node serves it).
    pub fn console_url(&self) -> String {
        format!("http://{}/", crate::cluster::http_addr(self.block, 1))
    }

    /// Where the casino apps' logs are.
    pub fn logs(&self) -> &Path {
        &self.logs
    }

    /// The process ids of everything running, named (for `sandbox down`'s check and the
    /// instructions).
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for id in [1, 2, 3] {
            if let Some(p) = self.cluster.node(id).ok().and_then(|n| n.pid()) {
                out.push((format!("coordinator-{id}"), p));
            }
        }
        for a in &self.agents {
            if let Some(p) = a.pid() {
                out.push((a.name().to_string(), p));
            }
        }
        for (i, c) in self.casinos.iter().enumerate() {
            if let Some(p) = c.id() {
                out.push((format!("casino-{}", REGIONS[i]), p));
            }
        }
        out
    }

    /// Starts everything in address block `block` (`127.0.block.x`), the casino apps logging
    /// into `logs`, reporting each stage through `say`, and waits until both regions are up.
    pub async fn start(block: u8, logs: &Path, say: impl Fn(&str)) -> Result<World> {
        say(&format!("3 coordinator nodes on 127.0.{block}.1-3:7001 (gRPC), console and metrics on :9100"));
        let cluster =
            Cluster::builder(block).nodes(3).cluster_id("sandbox").with_http().extra_yaml(HEALTH).start().await?;
        let leader = cluster.wait_leader(&[1, 2, 3]).await?.leader_id;
        for (i, r) in REGIONS.iter().enumerate() {
            add_region(&cluster, leader, r, i == 0).await?;
        }
        let ip = |n: u8| Ipv4Addr::new(127, 0, block, n);
        // One port on both addresses: the apps find the primary by the GSLB name alone.
        let pg = PgPair::start_with(ip(10), ip(11), PgOptions { same_port: true, ..Default::default() }).await?;
        say(&format!(
            "PostgreSQL: primary (eu-west) on {}, streaming standby (eu-central) on {}",
            pg.primary_addr(),
            pg.standby_addr()
        ));
        let dns = Pdns::start(ip(20)).await?;
        dns.create_zone("gslb.example.").await?;
        dns.set_a("wallet.gslb.example.", &[ip(10)], 5).await?;
        dns.set_a("wallet-db.gslb.example.", &[ip(10)], 5).await?;
        say(&format!(
            "PowerDNS on {}: wallet.gslb.example. and wallet-db.gslb.example. answer {} (eu-west)",
            dns.dns_addr(),
            ip(10)
        ));

        // Every app writes to the database wallet-db.gslb.example. names: the primary, wherever
        // it is (the playbook's repoint step moves the name, and with it every app).
        let db = format!(
            "host=wallet-db.gslb.example. port={} user=postgres dbname=postgres connect_timeout=2",
            pg.primary_addr().port()
        );
        let mut casinos = Vec::new();
        for (i, region) in REGIONS.iter().enumerate() {
            let backend = SocketAddr::from((ip(10 + i as u8), CASINO_BACKEND_PORT));
            casinos.push(spawn_casino(region, backend, &db, dns.dns_addr(), logs)?);
            wait_healthy(&format!("http://{backend}/health"), &mut casinos[i], region).await?;
        }
        say(&format!(
            "casino app per region (login, spin, deposit, withdrawal): eu-west {}:{CASINO_PORT}, eu-central {}:{CASINO_PORT}; both write to the primary wallet-db.gslb.example. names",
            ip(10),
            ip(11)
        ));

        let coords: Vec<String> = [1, 2, 3].iter().map(|&i| cluster.addr(i).to_string()).collect();
        let mut agents = Vec::new();
        for (i, region) in REGIONS.iter().enumerate() {
            let (own, peer) =
                if i == 0 { (pg.primary_dsn(), pg.standby_dsn()) } else { (pg.standby_dsn(), pg.primary_dsn()) };
            let body = agent_body(i, ip(10 + i as u8), &own, &peer, &dns);
            let name = format!("agent-{region}");
            agents.push(AgentProc::start(
                cluster.dir(),
                &name,
                &agent_yaml(&name, region, &coords, &body),
                &[("PDNS_API_KEY", dns.api_key())],
            )?);
        }
        for r in REGIONS {
            wait_region(&cluster, leader, r, "up", HEALTH_WAIT).await?;
        }
        say("an agent per region: SLI checks of the app and the database, reported to the leader; both regions up");
        Ok(World { cluster, pg, dns, agents, casinos, block, logs: logs.to_path_buf() })
    }

    /// Stops everything (the standby before the primary, agents before what they watch) and
    /// deletes the temp dirs.
    pub async fn stop(mut self) {
        for a in &mut self.agents {
            a.kill_now();
        }
        for c in &mut self.casinos {
            let _ = c.kill().await;
        }
        let World { cluster, pg, dns, .. } = self;
        cluster.finish();
        drop(dns);
        drop(pg);
    }
}

/// An agent's config body: its region's database, app (through the agent's fault proxy named
/// `casino`) and the GSLB, with checks of the app and the database. eu-central's database
/// check also measures its replication lag behind the peer.
fn agent_body(region: usize, ip: Ipv4Addr, own_dsn: &str, peer_dsn: &str, dns: &Pdns) -> String {
    let lag = if region == 1 { ", primary: wallet-db-peer, slo: [\"lag_seconds <= 5\"]" } else { "" };
    format!(
        r#"faults:
  proxies:
    casino: {{ listen: "{ip}:{CASINO_PORT}", upstream: "{ip}:{CASINO_BACKEND_PORT}" }}
resources:
  postgres:
    wallet-db: {{ dsn: "{own_dsn}" }}
    wallet-db-peer: {{ dsn: "{peer_dsn}" }}
  dns:
    gslb: {{ server: "{}", api_url: "{}", api_key_env: PDNS_API_KEY }}
  http:
    wallet-api: {{ base_url: "http://{ip}:{CASINO_PORT}" }}
checks:
  - {{ name: app, type: http, resource: wallet-api, path: /health, interval_ms: 200, slo: ["p95_ms <= 300"] }}
  - {{ name: db, type: postgres, resource: wallet-db, interval_ms: 200{lag} }}
"#,
        dns.dns_addr(),
        dns.api_url()
    )
}

/// Adds `region` with the wallet service's role in it and a readable name.
async fn add_region(cluster: &Cluster, via: u64, region: &str, primary: bool) -> Result<()> {
    use drcut_proto::v1::{AddRegionRequest, Region, RegionRole, ServiceRole};
    let role = if primary { RegionRole::Primary } else { RegionRole::Standby };
    let display_name = match region {
        "eu-west" => "Europe West (Dublin)",
        "eu-central" => "Europe Central (Frankfurt)",
        other => other,
    };
    let region = Region {
        name: region.to_string(),
        display_name: display_name.to_string(),
        roles: vec![ServiceRole { service: "wallet".into(), role: role as i32 }],
        down_quorum: 0,
    };
    let req = AddRegionRequest { ctx: Some(crate::client::write_ctx()), region: Some(region) };
    cluster.client(via)?.add_region(cluster.request(req)).await.context("adding a region")?;
    Ok(())
}

/// Starts `drcut-casino` for `region` on `listen`, writing to `dsn` (its host looked up through
/// `dns`), its output in `logs/casino-REGION.log`.
fn spawn_casino(region: &str, listen: SocketAddr, dsn: &str, dns: SocketAddr, logs: &Path) -> Result<Child> {
    let log = logs.join(format!("casino-{region}.log"));
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(bins::bin_path("drcut-casino")?);
    cmd.args(["--listen", &listen.to_string(), "--region", region, "--db", dsn, "--dns", &dns.to_string()])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true);
    crate::pg::die_with_test(&mut cmd);
    cmd.spawn().with_context(|| format!("starting the {region} casino app"))
}

/// Waits until `url` answers 200; fails at once if the app exits.
async fn wait_healthy(url: &str, child: &mut Child, region: &str) -> Result<()> {
    let http = crate::http_server::http_client();
    for _ in 0..150 {
        if let Some(status) = child.try_wait()? {
            bail!("the {region} casino app exited with {status} while starting (see its log)");
        }
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the {region} casino app did not answer {url} within 15 s")
}
