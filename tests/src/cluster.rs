//! [`Cluster`]: the coordinator nodes of one test, the fault proxies between them and the temp
//! dir holding their configs, data and logs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use drcut_proto::v1::control_client::ControlClient;
use drcut_proto::v1::{AddRegionReply, ClusterStatus, GetStatusRequest, ReadConsistency};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::auth::TestPrincipals;
use crate::client;
use crate::config::{NodeConfig, RaftOptions};
use crate::node::Node;
use crate::process::{self, ProcessOutput};
use crate::proxy::FaultProxy;
use crate::tls::{TestCa, TlsFiles};
use crate::wait;

/// Every node's gRPC port; nodes differ by IP, so the port can be fixed and readable.
pub const NODE_PORT: u16 = 7001;

/// Upper bound for waits on cluster-wide outcomes (elections, catch-up, convergence).
pub const WAIT: Duration = Duration::from_secs(30);

/// The gRPC address of node `id` in address block `block`: `127.0.block.id:7001`.
pub fn node_addr(block: u8, id: u64) -> SocketAddr {
    let id = u8::try_from(id).expect("node id fits the last octet");
    SocketAddr::from((Ipv4Addr::new(127, 0, block, id), NODE_PORT))
}

/// The HTTP (`/metrics`) address of node `id` in block `block`, when enabled.
pub fn http_addr(block: u8, id: u64) -> SocketAddr {
    let id = u8::try_from(id).expect("node id fits the last octet");
    SocketAddr::from((Ipv4Addr::new(127, 0, block, id), 9100))
}

/// The listen address of the proxy carrying node `from`'s connections to node `to`.
fn proxy_addr(block: u8, from: u64, to: u64) -> SocketAddr {
    let octet = u8::try_from(100 + 10 * from + to).expect("proxy octet fits");
    SocketAddr::from((Ipv4Addr::new(127, 0, block, octet), 0))
}

/// Describes a cluster before it starts.
pub struct ClusterBuilder {
    block: u8,
    size: u64,
    initial: Option<Vec<u64>>,
    proxies: bool,
    raft: RaftOptions,
    cluster_id: String,
    extra_yaml: String,
    http: bool,
    auth: Option<(TestPrincipals, Option<(u32, u32)>)>,
    tls: bool,
    crl: bool,
    json_logs: bool,
}

impl ClusterBuilder {
    /// Nodes log one JSON object per line (`log_format: json`).
    pub fn json_logs(mut self) -> Self {
        self.json_logs = true;
        self
    }

    /// Turns on authentication: every node gets a principals file with `principals` plus the
    /// harness's own admin principal ([`crate::auth::HARNESS`]), and `rate_limit` as
    /// (per_second, burst) when given. The harness's calls then carry its token.
    pub fn with_auth(mut self, principals: &TestPrincipals, rate_limit: Option<(u32, u32)>) -> Self {
        self.auth = Some((principals.clone(), rate_limit));
        self
    }

    /// Appends verbatim YAML to every node's config (e.g. a `health:` section).
    pub fn extra_yaml(mut self, yaml: &str) -> Self {
        self.extra_yaml.push_str(yaml);
        self
    }

    /// With [`ClusterBuilder::with_tls`]: every node checks client certificates against the
    /// revocation list in `tls/crl.pem` (at first an empty one; [`Cluster::pki`]'s CA makes new
    /// ones).
    pub fn with_crl(mut self) -> Self {
        self.crl = true;
        self
    }

    /// mTLS everywhere: a fresh test CA ([`Cluster::pki`]), a node certificate per node, and
    /// the harness's clients (gRPC and drctl) presenting a client certificate.
    pub fn with_tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// The cluster id in every node's config (default `test-bB`).
    pub fn cluster_id(mut self, id: &str) -> Self {
        self.cluster_id = id.to_string();
        self
    }

    /// Gives every node an HTTP listener (`/metrics`) on `127.0.B.N:9100`.
    pub fn with_http(mut self) -> Self {
        self.http = true;
        self
    }

    /// Number of nodes the test may run, ids `1..=n` (at most 9: proxy addresses use the
    /// last octet).
    pub fn nodes(mut self, n: u64) -> Self {
        self.size = n;
        self
    }

    /// The bootstrap members; the others start with an empty `initial_members` and must be
    /// added. Defaults to every node.
    pub fn initial_members(mut self, ids: &[u64]) -> Self {
        self.initial = Some(ids.to_vec());
        self
    }

    /// Routes all node-to-node traffic through a [`FaultProxy`] per directed link.
    pub fn with_proxies(mut self) -> Self {
        self.proxies = true;
        self
    }

    /// Adjusts the `raft:` section every node gets.
    pub fn raft(mut self, edit: impl FnOnce(&mut RaftOptions)) -> Self {
        edit(&mut self.raft);
        self
    }

    /// Creates the temp dir, proxies and configs; starts no process.
    pub async fn build(self) -> Result<Cluster> {
        ensure!((1..=9).contains(&self.size), "1 to 9 nodes, not {}", self.size);
        let dir = tempfile::Builder::new().prefix(&format!("drcut-b{}-", self.block)).tempdir()?;
        let mut extra_yaml = self.extra_yaml.clone();
        let mut token = None;
        if let Some((principals, rate)) = &self.auth {
            let all = principals.clone().add(crate::auth::HARNESS, &["admin", "operator"], &[]);
            token = Some(all.token(crate::auth::HARNESS).to_string());
            let file = dir.path().join("principals.yaml");
            std::fs::write(&file, all.yaml())?;
            extra_yaml.push_str(&format!("auth:\n  principals_file: {:?}\n", file.display().to_string()));
            if let Some((per_second, burst)) = rate {
                extra_yaml.push_str(&format!("  rate_limit: {{ per_second: {per_second}, burst: {burst} }}\n"));
            }
        }
        let ids: Vec<u64> = (1..=self.size).collect();
        let initial = self.initial.unwrap_or_else(|| ids.clone());
        let members: Vec<(u64, String)> =
            initial.iter().map(|&id| (id, node_addr(self.block, id).to_string())).collect();

        let mut proxies = BTreeMap::new();
        if self.proxies {
            for &from in &ids {
                for &to in ids.iter().filter(|&&to| to != from) {
                    let p = FaultProxy::start(proxy_addr(self.block, from, to), node_addr(self.block, to)).await?;
                    proxies.insert((from, to), p);
                }
            }
        }

        let pki = match self.tls {
            false => None,
            true => {
                let ca = TestCa::new(&format!("test-b{}", self.block))?;
                let client = ca.write(&dir.path().join("tls"), "harness", &ca.client("drcut-tests")?)?;
                Some(ClusterPki { ca, client })
            }
        };
        let mut nodes = BTreeMap::new();
        for &id in &ids {
            let addr = node_addr(self.block, id);
            let data = dir.path().join(format!("node{id}")).join("data");
            let mut cfg = NodeConfig::new(id, &self.cluster_id, data, addr);
            if initial.contains(&id) {
                cfg.initial_members = members.clone();
            }
            cfg.raft = self.raft.clone();
            cfg.extra_yaml = extra_yaml.clone();
            if self.json_logs {
                cfg.log_format = "json".into();
            }
            if self.http {
                cfg.http_listen = Some(http_addr(self.block, id));
            }
            if let Some(p) = &pki {
                let cert = p.ca.node(id, addr.ip())?;
                let mut files = p.ca.write(&dir.path().join("tls"), &format!("node-{id}"), &cert)?;
                if self.crl {
                    let crl = dir.path().join("tls").join("crl.pem");
                    if !crl.exists() {
                        std::fs::write(&crl, p.ca.crl(&[])?)?;
                    }
                    files.crl = Some(crl);
                }
                cfg.tls = Some(files);
            }
            cfg.peer_dial_overrides = proxies
                .iter()
                .filter(|((from, _), _)| *from == id)
                .map(|((_, to), p): (&(u64, u64), &FaultProxy)| (*to, p.addr()))
                .collect();
            nodes.insert(id, Node::new(id, addr, cfg, dir.path()));
        }
        tracing::info!(block = self.block, dir = %dir.path().display(), nodes = self.size, ?initial, proxies = self.proxies, "cluster built");
        Ok(Cluster {
            block: self.block,
            initial,
            dir: Some(dir),
            nodes,
            proxies,
            clients: Mutex::new(HashMap::new()),
            finished: false,
            token,
            pki,
        })
    }

    /// Builds the cluster and starts the initial members, waiting until each serves gRPC.
    pub async fn start(self) -> Result<Cluster> {
        let mut cluster = self.build().await?;
        for id in cluster.initial.clone() {
            cluster.node_mut(id)?.spawn()?;
        }
        for id in cluster.initial.clone() {
            cluster.wait_serving(id).await?;
        }
        Ok(cluster)
    }
}

/// The test CA of a cluster built [`ClusterBuilder::with_tls`], and the harness's own client
/// certificate.
pub struct ClusterPki {
    /// Signs every certificate of the cluster.
    pub ca: TestCa,
    /// What the harness's clients present.
    pub client: TlsFiles,
}

/// Running coordinator nodes of one test. Dropping it kills every node; when the test failed
/// (or never called [`Cluster::finish`]) it prints each node's log tail first.
pub struct Cluster {
    block: u8,
    initial: Vec<u64>,
    nodes: BTreeMap<u64, Node>,
    proxies: BTreeMap<(u64, u64), FaultProxy>,
    clients: Mutex<HashMap<u64, ControlClient<Channel>>>,
    finished: bool,
    /// The harness principal's API token on a cluster with authentication.
    token: Option<String>,
    pki: Option<ClusterPki>,
    /// Last, so it is deleted after the nodes are gone.
    dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// A builder for a cluster in address block `block` (unique per test), 3 nodes by default
    /// with the test Raft timings.
    pub fn builder(block: u8) -> ClusterBuilder {
        crate::init_tracing();
        ClusterBuilder {
            block,
            size: 3,
            initial: None,
            proxies: false,
            raft: RaftOptions::for_tests(),
            cluster_id: format!("test-b{block}"),
            extra_yaml: String::new(),
            http: false,
            auth: None,
            tls: false,
            crl: false,
            json_logs: false,
        }
    }

    /// The test CA and the harness's client certificate, when built with TLS.
    pub fn pki(&self) -> Option<&ClusterPki> {
        self.pki.as_ref()
    }

    /// The temp dir holding configs, data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir lives until drop").path()
    }

    /// The address block of this cluster.
    pub fn block(&self) -> u8 {
        self.block
    }

    /// The node with id `id`.
    pub fn node(&self, id: u64) -> Result<&Node> {
        self.nodes.get(&id).with_context(|| format!("no node {id}"))
    }

    /// The node with id `id`, mutably (process control).
    pub fn node_mut(&mut self, id: u64) -> Result<&mut Node> {
        self.nodes.get_mut(&id).with_context(|| format!("no node {id}"))
    }

    /// Node `id`'s gRPC address.
    pub fn addr(&self, id: u64) -> SocketAddr {
        node_addr(self.block, id)
    }

    /// Ids of nodes whose process the harness started and has not stopped.
    pub fn running(&self) -> Vec<u64> {
        self.nodes.values().filter(|n| n.has_process()).map(|n| n.id).collect()
    }

    /// `ADDR,ADDR,…` of `ids`, the form `drctl --endpoint` takes.
    pub fn endpoints(&self, ids: &[u64]) -> String {
        ids.iter().map(|&id| self.addr(id).to_string()).collect::<Vec<_>>().join(",")
    }

    // === processes ===

    /// Starts node `id` (first start or restart with the same config and data dir) and waits
    /// until it answers GetStatus.
    pub async fn start_node(&mut self, id: u64) -> Result<()> {
        self.node_mut(id)?.spawn()?;
        self.wait_serving(id).await
    }

    /// SIGKILLs node `id`.
    pub async fn kill(&mut self, id: u64) -> Result<()> {
        self.node_mut(id)?.kill().await
    }

    /// SIGTERMs node `id` and checks that it shut down cleanly (exit 0).
    pub async fn stop(&mut self, id: u64) -> Result<ExitStatus> {
        let status = self.node_mut(id)?.terminate().await?;
        ensure!(status.success(), "node {id} exited with {status} after SIGTERM, expected 0");
        Ok(status)
    }

    /// Waits until node `id` answers GetStatus; fails at once if its process exits.
    pub async fn wait_serving(&mut self, id: u64) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.node_mut(id)?.exited() {
                bail!("node {id} exited with {status} while starting\n{}", self.node(id)?.log_tail(30));
            }
            let err = match self.status(id).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!("node {id} not serving after {WAIT:?}; last: {err:#}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // === faults ===

    /// The proxy carrying node `from`'s connections to node `to`.
    pub fn proxy(&self, from: u64, to: u64) -> Result<&FaultProxy> {
        self.proxies.get(&(from, to)).with_context(|| format!("no proxy {from}->{to} (build with_proxies)"))
    }

    /// Cuts every link to and from node `id`: a partition with `id` alone on its side.
    pub fn isolate(&self, id: u64) -> Result<()> {
        ensure!(!self.proxies.is_empty(), "isolate needs with_proxies()");
        for ((from, to), p) in &self.proxies {
            if *from == id || *to == id {
                p.cut();
            }
        }
        tracing::info!(node = id, "node isolated");
        Ok(())
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        for p in self.proxies.values() {
            p.heal();
        }
        tracing::info!("all links healed");
    }

    // === gRPC ===

    /// A `Control` client for node `id` (cached; reconnects across restarts).
    pub fn client(&self, id: u64) -> Result<ControlClient<Channel>> {
        let mut clients = self.clients.lock().unwrap();
        if let Some(c) = clients.get(&id) {
            return Ok(c.clone());
        }
        let c = match &self.pki {
            Some(p) => client::connect_tls(self.addr(id), p.client.client_config()?)?,
            None => client::connect(self.addr(id))?,
        };
        clients.insert(id, c.clone());
        Ok(c)
    }

    /// Drops the cached clients, so the next ones read the harness's TLS files again (after a
    /// test rotated them: a cached channel reconnects with the configuration it was made with).
    pub fn forget_clients(&self) {
        self.clients.lock().unwrap().clear();
    }

    /// The harness principal's API token (a cluster built [`ClusterBuilder::with_auth`]).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `msg` as a request carrying the harness's token, if the cluster has one.
    pub fn request<T>(&self, msg: T) -> tonic::Request<T> {
        match &self.token {
            Some(t) => crate::auth::with_token(msg, t),
            None => tonic::Request::new(msg),
        }
    }

    /// The whole audit chain as node `id` has applied it (local read, with the harness's token).
    pub async fn audit(&self, id: u64) -> Result<Vec<drcut_proto::v1::AuditEntry>> {
        let req = self.request(drcut_proto::v1::ListAuditRequest {
            from_seq: 1,
            limit: 0,
            consistency: ReadConsistency::Local as i32,
        });
        Ok(self
            .client(id)?
            .list_audit(req)
            .await
            .with_context(|| format!("ListAudit on node {id}"))?
            .into_inner()
            .entries)
    }

    /// Node `id`'s own view of the cluster (local read).
    pub async fn status(&self, id: u64) -> Result<ClusterStatus> {
        let req = self.request(GetStatusRequest { consistency: ReadConsistency::Local as i32 });
        Ok(self.client(id)?.get_status(req).await.with_context(|| format!("GetStatus on node {id}"))?.into_inner())
    }

    /// Adds region `name` through node `via`.
    pub async fn add_region(&self, via: u64, name: &str) -> Result<AddRegionReply> {
        let req = self.request(client::add_region_request(name));
        Ok(self
            .client(via)?
            .add_region(req)
            .await
            .with_context(|| format!("adding region {name} via node {via}"))?
            .into_inner())
    }

    /// Adds each region in `names` through node `via`, one after another.
    pub async fn add_regions(&self, via: u64, names: &[String]) -> Result<()> {
        for name in names {
            self.add_region(via, name).await?;
        }
        Ok(())
    }

    /// Waits until a leader is known to every node in `among`: one of them reports state
    /// Leader and all report it as leader in the same term. Returns the leader's status.
    pub async fn wait_leader(&self, among: &[u64]) -> Result<ClusterStatus> {
        self.wait_leader_after(among, 0).await
    }

    /// Like [`Cluster::wait_leader`], but only accepts a leader elected in a term above
    /// `term` (a new leader after a failover).
    pub async fn wait_leader_after(&self, among: &[u64], term: u64) -> Result<ClusterStatus> {
        let leader = wait::until(&format!("a leader among {among:?} in a term above {term}"), WAIT, async || {
            let statuses = self.statuses(among).await?;
            let leader = statuses
                .iter()
                .find(|s| s.state == "Leader" && s.term > term)
                .with_context(|| format!("no leader: {}", summary(&statuses)))?;
            for s in &statuses {
                ensure!(
                    s.leader_id == leader.node_id && s.term == leader.term,
                    "not agreed yet: {}",
                    summary(&statuses)
                );
            }
            Ok(leader.clone())
        })
        .await?;
        tracing::info!(leader = leader.node_id, term = leader.term, "leader elected");
        Ok(leader)
    }

    /// Waits until every node in `ids` holds (at least) the regions in `names`.
    pub async fn wait_regions(&self, ids: &[u64], names: &BTreeSet<String>) -> Result<()> {
        wait::until(&format!("{} regions on nodes {ids:?}", names.len()), WAIT, async || {
            for &id in ids {
                let have = region_names(&self.status(id).await?);
                let missing: Vec<_> = names.difference(&have).collect();
                ensure!(
                    missing.is_empty(),
                    "node {id} misses {} regions, e.g. {:?}",
                    missing.len(),
                    &missing[..missing.len().min(5)]
                );
            }
            Ok(())
        })
        .await
    }

    /// Waits until every node in `ids` has applied the same index and holds the same regions
    /// and audit chain head. Returns the common status of the first node.
    pub async fn wait_converged(&self, ids: &[u64]) -> Result<ClusterStatus> {
        wait::until(&format!("nodes {ids:?} to converge"), WAIT, async || {
            let statuses = self.statuses(ids).await?;
            let first = &statuses[0];
            for s in &statuses[1..] {
                ensure!(
                    s.last_applied == first.last_applied
                        && s.audit_len == first.audit_len
                        && s.audit_head == first.audit_head
                        && region_names(s) == region_names(first),
                    "differ: {}",
                    summary(&statuses)
                );
            }
            Ok(first.clone())
        })
        .await
    }

    /// GetStatus of every node in `ids`, failing if any does not answer.
    pub async fn statuses(&self, ids: &[u64]) -> Result<Vec<ClusterStatus>> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            out.push(self.status(id).await?);
        }
        Ok(out)
    }

    // === drctl ===

    /// Runs `drctl --endpoint <every running node> ARGS`.
    pub async fn drctl(&self, args: &[&str]) -> Result<ProcessOutput> {
        self.drctl_at(&self.running(), args).await
    }

    /// Runs `drctl --endpoint <nodes ids> ARGS`.
    pub async fn drctl_at(&self, ids: &[u64], args: &[&str]) -> Result<ProcessOutput> {
        let mut all: Vec<OsString> = vec!["--endpoint".into(), self.endpoints(ids).into()];
        if let Some(p) = &self.pki {
            all.extend(p.client.drctl_args().into_iter().map(OsString::from));
        }
        all.extend(args.iter().map(OsString::from));
        match &self.token {
            Some(t) => process::drctl_env(all, &[("DRCUT_TOKEN", t)]).await,
            None => process::drctl(all).await,
        }
    }

    /// Runs `drctl audit verify` against the cluster and fails unless it reports an intact
    /// chain (exit 0).
    pub async fn audit_verify_ok(&self) -> Result<()> {
        let out = self.drctl(&["audit", "verify"]).await?;
        ensure!(out.code == Some(0), "drctl audit verify failed:\n{out}");
        Ok(())
    }

    /// Marks the test as passed: dropping the cluster then kills the nodes without printing
    /// their logs.
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            node.kill_now();
        }
        if std::thread::panicking() || !self.finished {
            let mut report = String::from("===== drcut-tests: node logs (test failed)\n");
            for node in self.nodes.values() {
                report.push_str(&node.log_tail(40));
            }
            eprintln!("{report}");
        }
        // DRCUT_KEEP_TMP=1 keeps configs, data dirs and full logs for a post-mortem.
        if std::env::var_os("DRCUT_KEEP_TMP").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("drcut-tests: kept {}", dir.keep().display());
        }
    }
}

/// The names of the regions in a status.
pub fn region_names(s: &ClusterStatus) -> BTreeSet<String> {
    s.regions.iter().map(|r| r.name.clone()).collect()
}

/// One line per node for error messages: who thinks what.
fn summary(statuses: &[ClusterStatus]) -> String {
    statuses
        .iter()
        .map(|s| {
            format!(
                "[n{} {} term={} leader={} applied={} regions={} audit={}]",
                s.node_id,
                s.state,
                s.term,
                s.leader_id,
                s.last_applied,
                s.regions.len(),
                s.audit_len
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}
