//! One coordinator node: data-dir checks, stores, Raft, the gRPC server, bootstrap, and the
//! leader-side execution of writes and membership changes.

use crate::command::{Command, Request, Response};
use crate::config::{Config, ConfigError};
use crate::grpc;
use crate::health::Thresholds;
use crate::hub::HealthHub;
use crate::network::{ChannelPool, Dialer, Network};
use crate::store::{LogStore, StateMachineStore, StateView, Storage};
use crate::types::{Node, NodeId, Raft, TypeConfig};
use drcut_proto::v1::RaftMessage;
use drcut_proto::v1::raft_transport_client::RaftTransportClient;
use openraft::errors::RaftError;
use openraft::{ChangeMembers, ReadPolicy, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tonic::transport::server::{Connected, TcpIncoming};
use tonic::{Code, Status};

/// Name of the file that binds a data dir to one node of one cluster.
pub const IDENTITY_FILE: &str = "identity.json";

/// How long a forwarded request may take before the follower gives up on the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Which node and cluster a data dir belongs to.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Identity {
    /// The node id that created the dir.
    pub node_id: u64,
    /// Its cluster.
    pub cluster_id: String,
}

/// Checks the data dir against the config without writing anything. Returns true when the dir
/// is fresh (absent or empty) and must be initialised.
pub fn check_data_dir(cfg: &Config) -> Result<bool, ConfigError> {
    let dir = &cfg.data_dir;
    let shown = dir.display();
    if !dir.exists() {
        return Ok(true);
    }
    if !dir.is_dir() {
        return Err(cfg.error("data_dir", format!("{shown} exists and is not a directory")));
    }
    let entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| cfg.error("data_dir", format!("{shown}: cannot list: {e}")))?
        .filter_map(|e| e.ok())
        .collect();
    if entries.is_empty() {
        return Ok(true);
    }
    let idp = dir.join(IDENTITY_FILE);
    let text = std::fs::read_to_string(&idp).map_err(|_| {
        cfg.error(
            "data_dir",
            format!("{shown} is not empty and has no {IDENTITY_FILE}: not a drcut data dir, refusing to use it"),
        )
    })?;
    let id: Identity = serde_json::from_str(&text)
        .map_err(|e| cfg.error("data_dir", format!("{}: unreadable: {e}", idp.display())))?;
    if id.cluster_id != cfg.cluster_id {
        return Err(cfg.error(
            "cluster_id",
            format!("{shown} belongs to cluster {:?}, this config says {:?}", id.cluster_id, cfg.cluster_id),
        ));
    }
    if id.node_id != cfg.node_id {
        return Err(cfg.error(
            "node_id",
            format!("{shown} belongs to node {}, this config says node {}", id.node_id, cfg.node_id),
        ));
    }
    Ok(false)
}

pub(crate) fn init_data_dir(cfg: &Config) -> std::io::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)?;
    let id = Identity { node_id: cfg.node_id, cluster_id: cfg.cluster_id.clone() };
    let tmp = cfg.data_dir.join(format!("{IDENTITY_FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&id)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, cfg.data_dir.join(IDENTITY_FILE))
}

/// Current wall-clock time in Unix milliseconds (stamped on requests by the leader); see
/// [`crate::clock`].
pub fn now_ms() -> i64 {
    crate::clock::now_ms()
}

/// A request only the leader can execute; followers forward it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderRequest {
    /// Propose a replicated command.
    Write(Request),
    /// Add a learner.
    AddLearner {
        /// Who asks.
        ctx: Ctx,
        /// The new node.
        id: NodeId,
        /// Its address.
        addr: String,
    },
    /// Turn a learner into a voter.
    Promote {
        /// Who asks.
        ctx: Ctx,
        /// The learner.
        id: NodeId,
    },
    /// Remove a node.
    Remove {
        /// Who asks.
        ctx: Ctx,
        /// The node.
        id: NodeId,
    },
    /// Confirm leadership with a quorum and return the index a linearizable read must wait for.
    ReadIndex,
    /// The live health board (leader memory).
    Health,
}

/// Actor and idempotency key of a client request.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Ctx {
    /// Principal.
    pub actor: String,
    /// Idempotency key (may be empty).
    pub request_id: String,
}

/// The leader's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaderReply {
    /// The state machine's response.
    Write(Response),
    /// A membership change committed at this index.
    Membership {
        /// Log index of the change.
        log_index: u64,
    },
    /// Read index.
    ReadIndex {
        /// Wait until applied ≥ this.
        index: u64,
    },
    /// The health board, protobuf-encoded.
    Health(Vec<u8>),
}

/// An error that crosses the forward hop intact.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    /// gRPC code as i32.
    pub code: i32,
    /// Message.
    pub message: String,
}

impl From<Status> for WireError {
    fn from(s: Status) -> Self {
        WireError { code: s.code() as i32, message: s.message().to_string() }
    }
}

impl From<WireError> for Status {
    fn from(w: WireError) -> Self {
        Status::new(Code::from_i32(w.code), w.message)
    }
}

/// Everything the services need, shared.
pub struct App {
    /// This node's id.
    pub id: NodeId,
    /// This node's advertised address.
    pub addr: String,
    /// The cluster id from config.
    pub cluster_id: String,
    /// The Raft handle.
    pub raft: Raft,
    /// Read access to the applied state.
    pub view: StateView,
    /// Channels to peers.
    pub pool: ChannelPool,
    /// Live health (meaningful on the leader).
    pub hub: HealthHub,
    /// The run engine's session registry.
    pub engine: crate::engine::Engine,
    /// Who may call, and what they may do.
    pub auth: crate::auth::Auth,
    /// Leader changes this node has seen since it started (a metric: flapping leadership is an
    /// incident of its own).
    pub leader_changes: std::sync::atomic::AtomicU64,
    /// Mutual TLS (server side); `None` = plain text, machine links unauthenticated.
    pub tls: Option<Arc<crate::tls::NodeTls>>,
}

/// Shared handle.
pub type AppRef = Arc<App>;

/// The Unavailable status that names the leader, so a client can go there itself.
pub fn not_leader(leader: Option<(NodeId, String)>, why: &str) -> Status {
    match leader {
        Some((id, addr)) => {
            let mut s = Status::unavailable(format!("{why}; the leader is node {id} at {addr}"));
            if let Ok(v) = addr.parse() {
                s.metadata_mut().insert("x-drcut-leader", v);
            }
            s
        }
        None => Status::unavailable(format!("{why}; no leader is known (election in progress or no quorum)")),
    }
}

impl App {
    /// A copy of the latest Raft metrics.
    pub fn metrics(&self) -> openraft::RaftMetrics<TypeConfig> {
        use openraft::async_runtime::WatchReceiver;
        self.raft.metrics().borrow_watched().clone()
    }

    /// The leader as this node currently knows it.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.metrics();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id).map(|n| n.addr.clone())?;
        Some((id, addr))
    }

    /// Runs a leader-only request here if this node leads, else forwards it to the leader
    /// (once: a forwarded request is never forwarded again).
    pub async fn leader_call(&self, req: LeaderRequest, forwarded: bool) -> Result<LeaderReply, Status> {
        if self.raft.is_leader() {
            return self.execute(req).await;
        }
        let leader = self.leader();
        if forwarded {
            return Err(not_leader(leader, "this node is not the leader"));
        }
        let Some((lid, laddr)) = leader.clone().filter(|(lid, _)| *lid != self.id) else {
            return Err(not_leader(None, "this node is not the leader"));
        };
        let ch = self
            .pool
            .channel(&self.pool.dial_addr(lid, &laddr))
            .map_err(|e| Status::unavailable(format!("leader node {lid} at {laddr}: {e}")))?;
        let payload = serde_json::to_vec(&req).map_err(|e| Status::internal(e.to_string()))?;
        let mut client = RaftTransportClient::new(ch);
        let reply = match tokio::time::timeout(FORWARD_TIMEOUT, client.forward(RaftMessage { payload })).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) if s.code() == Code::Unavailable && s.metadata().get("x-drcut-leader").is_some() => {
                return Err(s);
            }
            Ok(Err(s)) => {
                return Err(not_leader(leader, &format!("forwarding to the leader failed: {}", s.message())));
            }
            Err(_) => {
                return Err(not_leader(
                    leader,
                    "the leader did not answer in time (outcome unknown; retry with the same request id)",
                ));
            }
        };
        let res: Result<LeaderReply, WireError> = serde_json::from_slice(&reply.payload)
            .map_err(|e| Status::internal(format!("bad reply from leader: {e}")))?;
        res.map_err(Status::from)
    }

    /// Executes a leader request on this node (which believes it leads).
    pub async fn execute(&self, req: LeaderRequest) -> Result<LeaderReply, Status> {
        match req {
            LeaderRequest::Write(mut r) => {
                r.at_ms = now_ms();
                Ok(LeaderReply::Write(self.propose(r).await?))
            }
            LeaderRequest::Health => {
                use prost::Message;
                let board = self.hub.board(&self.view.health(), self.id, true, now_ms());
                Ok(LeaderReply::Health(board.encode_to_vec()))
            }
            LeaderRequest::ReadIndex => {
                let read = self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await.map_err(|e| self.raft_err(e))?;
                Ok(LeaderReply::ReadIndex { index: read.log_id().index() })
            }
            LeaderRequest::AddLearner { ctx, id, addr } => {
                let m = self.membership();
                if m.voters.contains(&id) {
                    return Err(Status::already_exists(format!("node {id} is already a voter")));
                }
                if let Some(a) = m.nodes.get(&id).filter(|a| **a != addr) {
                    return Err(Status::already_exists(format!(
                        "node {id} is already a member at {a}; node ids are never reused"
                    )));
                }
                self.record(&ctx, "cluster.add_learner", serde_json::json!({"node_id": id, "addr": addr})).await?;
                let r = self.raft.add_learner(id, Node { addr }, true).await.map_err(|e| self.raft_err(e))?;
                Ok(LeaderReply::Membership { log_index: r.log_id.index() })
            }
            LeaderRequest::Promote { ctx, id } => {
                let m = self.membership();
                if m.voters.contains(&id) {
                    return Err(Status::already_exists(format!("node {id} is already a voter")));
                }
                if !m.nodes.contains_key(&id) {
                    return Err(Status::not_found(format!("node {id} is not a learner; add it first")));
                }
                self.record(&ctx, "cluster.promote", serde_json::json!({"node_id": id})).await?;
                let ch = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
                let r = self.raft.change_membership(ch, false).await.map_err(|e| self.raft_err(e))?;
                Ok(LeaderReply::Membership { log_index: r.log_id.index() })
            }
            LeaderRequest::Remove { ctx, id } => {
                let m = self.membership();
                if !m.nodes.contains_key(&id) {
                    return Err(Status::not_found(format!("node {id} is not a member")));
                }
                if m.voters.contains(&id) && m.voters.len() == 1 {
                    return Err(Status::failed_precondition(format!("node {id} is the last voter")));
                }
                self.record(&ctx, "cluster.remove", serde_json::json!({"node_id": id})).await?;
                let ch = if m.voters.contains(&id) {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                let r = self.raft.change_membership(ch, false).await.map_err(|e| self.raft_err(e))?;
                Ok(LeaderReply::Membership { log_index: r.log_id.index() })
            }
        }
    }

    async fn record(&self, ctx: &Ctx, action: &str, details: serde_json::Value) -> Result<Response, Status> {
        let cmd = Command::Record { action: action.to_string(), details };
        self.propose(Request { request_id: ctx.request_id.clone(), actor: ctx.actor.clone(), at_ms: now_ms(), cmd })
            .await
    }

    async fn propose(&self, r: Request) -> Result<Response, Status> {
        let out = self.raft.client_write(r).await.map_err(|e| self.raft_err(e))?;
        Ok(out.data)
    }

    fn raft_err<
        E: std::fmt::Display + std::fmt::Debug + openraft::TryAsRef<openraft::errors::ForwardToLeader<TypeConfig>>,
    >(
        &self,
        e: RaftError<TypeConfig, E>,
    ) -> Status {
        if e.forward_to_leader().is_some() {
            return not_leader(self.leader(), "leadership moved while handling the request");
        }
        Status::unavailable(format!("raft: {e}"))
    }

    /// Voters and all nodes of the current membership.
    pub fn membership(&self) -> MembershipView {
        let m = self.metrics().membership_config.clone();
        let mm = m.membership();
        MembershipView {
            voters: mm.voter_ids().collect(),
            nodes: mm.nodes().map(|(id, n)| (*id, n.addr.clone())).collect(),
        }
    }

    /// Waits until this node has applied everything the leader had committed when asked: a
    /// linearizable read served from any node.
    pub async fn linearizable_barrier(&self) -> Result<(), Status> {
        let LeaderReply::ReadIndex { index } = self.leader_call(LeaderRequest::ReadIndex, false).await? else {
            return Err(Status::internal("unexpected reply to read-index"));
        };
        self.raft
            .wait(Some(Duration::from_secs(5)))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|e| Status::unavailable(format!("this node did not catch up with the leader: {e}")))?;
        Ok(())
    }

    /// The server state as a word.
    pub fn state_name(&self) -> &'static str {
        match self.metrics().state {
            ServerState::Leader => "Leader",
            ServerState::Follower => "Follower",
            ServerState::Candidate => "Candidate",
            ServerState::Learner => "Learner",
            ServerState::Shutdown => "Shutdown",
        }
    }
}

/// Membership as plain data.
#[derive(Debug, Clone)]
pub struct MembershipView {
    /// Voter ids.
    pub voters: BTreeSet<NodeId>,
    /// Every node (voters and learners) with its address.
    pub nodes: BTreeMap<NodeId, String>,
}

/// How a node reaches the outside world. The defaults are production's: TCP to peers and redb
/// files in the data dir. The deterministic simulation (`tests/sim`) replaces both, and serves
/// on its own stream of connections ([`run_with`]).
#[derive(Clone, Default)]
pub struct Hooks {
    /// How the node dials peers (Raft, forwarding, bootstrap probes).
    pub dialer: Dialer,
    /// Where the Raft log and state live.
    pub storage: Storage,
}

/// Starts a node on an already-bound listener and runs it until `shutdown` resolves.
///
/// Errors before the listener serves are config or data-dir problems (exit code 2 in main);
/// nothing is written to the data dir until every check has passed.
pub async fn run(cfg: Config, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    run_with(cfg, Hooks::default(), TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown).await
}

/// [`run`] with the node's I/O replaced by `hooks`, serving the connections `incoming` yields.
pub async fn run_with<I, IO, IE>(
    cfg: Config,
    hooks: Hooks,
    incoming: I,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError>
where
    I: futures::Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    let on_files = matches!(hooks.storage, Storage::Files);
    // Before the data dir is touched: a bad certificate is a config error like any other.
    let tls = crate::tls::from_config(&cfg)?;
    let (fresh, log, sm) = match &hooks.storage {
        Storage::Files => {
            let fresh = check_data_dir(&cfg)?;
            if fresh {
                init_data_dir(&cfg)
                    .map_err(|e| cfg.error("data_dir", format!("{}: cannot create: {e}", cfg.data_dir.display())))?;
            }
            let log = open_store(&cfg, "raft-log.redb", LogStore::open)?;
            let sm = open_store(&cfg, "state.redb", StateMachineStore::open)?;
            (fresh, log, sm)
        }
        Storage::InMemory(disk) => {
            let log = LogStore::on_memory(disk.log.clone()).map_err(|e| NodeError::Io(format!("log store: {e}")))?;
            let sm = StateMachineStore::on_memory(disk.state.clone())
                .map_err(|e| NodeError::Io(format!("state store: {e}")))?;
            (false, log, sm)
        }
    };
    let log_fresh = log.is_fresh().map_err(|e| NodeError::Io(e.to_string()))?;

    let rc = openraft::Config {
        cluster_name: cfg.cluster_id.clone(),
        heartbeat_interval: cfg.raft.heartbeat_ms,
        election_timeout_min: cfg.raft.election_timeout_min_ms,
        election_timeout_max: cfg.raft.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.raft.snapshot_every_logs),
        max_in_snapshot_log_to_keep: cfg.raft.keep_logs_after_snapshot,
        install_snapshot_timeout: 2000,
        enable_pre_vote: Some(true),
        ..Default::default()
    };
    let rc = Arc::new(rc.validate().map_err(|e| cfg.error("raft", e.to_string()))?);
    let dialer = hooks.dialer.clone().with_node_tls(tls.clone());
    let pool = ChannelPool::with_dialer(cfg.peer_dial_overrides.clone().into_iter().collect(), dialer);
    if tls.is_none() {
        tracing::warn!(
            "no tls section: peers, agents and clients connect in plain text, machine links unauthenticated (sandboxes only)"
        );
    }
    let raft = Raft::new(cfg.node_id, rc, Network::new(pool.clone()), log, sm.clone())
        .await
        .map_err(|e| NodeError::Io(format!("raft start: {e}")))?;
    let auth = match &cfg.auth {
        Some(a) => crate::auth::Auth::from_config(a).map_err(|e| cfg.error("auth.principals_file", e.to_string()))?,
        None => {
            tracing::warn!("no auth.principals_file: open mode, every caller may do everything (sandboxes only)");
            crate::auth::Auth::open()
        }
    };
    let app = Arc::new(App {
        id: cfg.node_id,
        addr: cfg.advertise.clone(),
        cluster_id: cfg.cluster_id.clone(),
        raft: raft.clone(),
        view: sm.view(),
        pool,
        hub: HealthHub::new(Thresholds { down_after: cfg.health.down_after, up_after: cfg.health.up_after }),
        engine: crate::engine::Engine::default(),
        auth,
        leader_changes: Default::default(),
        tls: tls.clone(),
    });

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(grpc::serve_incoming(app.clone(), incoming, async {
        let _ = stop_rx.await;
    }));

    if log_fresh && should_bootstrap(&cfg) {
        bootstrap(&app, &cfg).await;
    }
    tokio::spawn(ensure_cluster_identity(app.clone()));
    tokio::spawn(count_leader_changes(app.clone()));
    tokio::spawn(health_ticker(app.clone(), Duration::from_millis(cfg.health.tick_ms)));
    tokio::spawn(crate::engine::run(app.clone()));
    tokio::spawn(crate::drill::engine::run(app.clone()));
    if let Some(tls) = &tls {
        tokio::spawn(crate::tls::follow_files(app.clone(), tls.clone()));
    }
    if let Some(addr) = cfg.http_listen {
        let l =
            TcpListener::bind(addr).await.map_err(|e| cfg.error("http_listen", format!("cannot bind {addr}: {e}")))?;
        tokio::spawn(crate::http::serve(app.clone(), l, tls.clone()));
    }

    if on_files {
        println!("drcut-coordinator: node {} serving on {}", cfg.node_id, cfg.advertise);
    }
    tracing::info!(node = cfg.node_id, addr = %cfg.advertise, fresh, "serving");

    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(());
    if let Err(e) = raft.shutdown().await {
        tracing::warn!("raft shutdown: {e}");
    }
    sm.flush().await.map_err(|e| NodeError::Io(format!("flush state: {e}")))?;
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    Ok(())
}

/// Counts changes of the known leader (to another node or to none) for the metrics.
async fn count_leader_changes(app: AppRef) {
    use openraft::async_runtime::WatchReceiver;
    let mut rx = app.raft.metrics();
    let mut last = rx.borrow_watched().current_leader;
    while rx.changed().await.is_ok() {
        let now = rx.borrow_watched().current_leader;
        if now != last {
            last = now;
            app.leader_changes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

pub(crate) fn open_store<T>(
    cfg: &Config,
    name: &str,
    open: impl Fn(&Path) -> std::io::Result<T>,
) -> Result<T, NodeError> {
    let p = cfg.data_dir.join(name);
    open(&p).map_err(|e| {
        if e.to_string().contains("already open") {
            NodeError::Config(cfg.error("data_dir", format!("{} is in use by another process", p.display())))
        } else {
            NodeError::Io(format!("{}: {e}", p.display()))
        }
    })
}

fn should_bootstrap(cfg: &Config) -> bool {
    cfg.initial_members.iter().map(|m| m.id).min() == Some(cfg.node_id)
}

/// A peer's own Raft state, as `RaftTransport.PeerState` answers it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PeerState {
    /// Its current term.
    pub term: u64,
    /// The leader it knows (0 = none).
    pub leader_id: u64,
}

/// Asks a peer for its Raft state over the node-to-node transport (a node certificate under
/// TLS; never an API token, so it works with authentication on). None when it does not answer.
pub(crate) async fn peer_state(dialer: &crate::network::Dialer, addr: &str, timeout: Duration) -> Option<PeerState> {
    let fut = async {
        let ch = dialer.connect(addr).await.ok()?;
        let reply = RaftTransportClient::new(ch).peer_state(RaftMessage { payload: vec![] }).await.ok()?;
        serde_json::from_slice(&reply.into_inner().payload).ok()
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

/// Initialises the cluster from the bootstrap set, exactly once: skipped when any other member
/// answers that it already belongs to an initialised cluster (this node's data was lost and it
/// must rejoin instead, or two bootstrap runs would create two clusters).
async fn bootstrap(app: &App, cfg: &Config) {
    for m in cfg.initial_members.iter().filter(|m| m.id != cfg.node_id) {
        let addr = app.pool.dial_addr(m.id, &m.addr);
        if let Some(st) = peer_state(app.pool.dialer(), &addr, Duration::from_millis(700)).await
            && (st.term > 0 || st.leader_id != 0)
        {
            tracing::warn!(peer = m.id, "peer already belongs to an initialised cluster; not bootstrapping");
            return;
        }
    }
    let members: BTreeMap<NodeId, Node> =
        cfg.initial_members.iter().map(|m| (m.id, Node { addr: m.addr.clone() })).collect();
    match app.raft.initialize(members).await {
        Ok(()) => tracing::info!("cluster bootstrapped"),
        Err(e) => tracing::warn!("bootstrap skipped: {e}"),
    }
}

/// On the leader: commits the health model's transitions every tick (batched in one entry).
/// Reports reach the model as they arrive; only changes of state go through Raft.
async fn health_ticker(app: AppRef, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !app.raft.is_leader() {
            continue;
        }
        let term = app.metrics().current_term;
        let rep = app.view.health();
        app.hub.ensure_term(term, &rep);
        let (checks, regions) = app.hub.take_transitions(&rep, now_ms());
        if checks.is_empty() && regions.is_empty() {
            continue;
        }
        for r in &regions {
            tracing::info!(region = %r.region, from = r.from.as_str(), to = r.to.as_str(), reason = %r.reason, "region health");
        }
        let cmd = Command::HealthTransitions { checks, regions };
        let req = Request { request_id: String::new(), actor: "system".into(), at_ms: 0, cmd };
        if let Err(e) = app.execute(LeaderRequest::Write(req)).await {
            tracing::warn!("health transitions not committed: {e}");
        }
    }
}

/// Whoever leads first records the cluster identity in the replicated state (idempotent by its
/// fixed request id, so a leader change mid-way cannot record it twice).
async fn ensure_cluster_identity(app: AppRef) {
    loop {
        if app.view.core().cluster.is_some() {
            return;
        }
        if app.raft.is_leader() {
            let cmd = Command::InitCluster { cluster_id: app.cluster_id.clone(), bootstrap_node: app.id };
            let req = Request { request_id: "cluster-init".into(), actor: "system".into(), at_ms: 0, cmd };
            if let Err(e) = app.execute(LeaderRequest::Write(req)).await {
                tracing::debug!("cluster init not yet recorded: {e}");
            }
        }
        // Soon after the first election, so the identity is the chain's first write rather than
        // landing after whatever clients send in the meantime; the loop ends once it is recorded.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Why a node could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Bad config or data dir: exit code 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Anything else.
    #[error("{0}")]
    Io(String),
}
