//! The Raft transport: openraft messages as JSON bytes over the `RaftTransport` gRPC service.
//!
//! One tonic [`Channel`] per peer is created lazily and cached for the life of the process
//! (tonic reconnects it by itself), so a heartbeat never pays a TCP or HTTP/2 handshake.

use crate::types::{Node, NodeId, RPCError, Snapshot, SnapshotData, StreamingError, TypeConfig, Vote};
use drcut_proto::v1::raft_transport_client::RaftTransportClient;
use drcut_proto::v1::{RaftMessage, SnapshotChunk};
use openraft::errors::{NetworkError, ReplicationClosed, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Uri};

/// Snapshot chunk size: far below gRPC's 4 MiB default message limit.
const SNAPSHOT_CHUNK: usize = 512 * 1024;

/// A vote request on the wire; pre-votes share the RPC.
#[derive(Serialize, Deserialize)]
pub struct VoteEnvelope {
    /// True for a pre-vote (asks whether an election could win, changes nothing).
    pub pre_vote: bool,
    /// The request.
    pub req: VoteRequest<TypeConfig>,
}

/// The first chunk of a snapshot stream.
#[derive(Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The sender's vote.
    pub vote: Vote,
    /// What the snapshot covers.
    pub meta: crate::types::SnapshotMeta,
}

/// A byte stream a [`Dialer`] opens.
pub trait Conn: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Conn for T {}

/// What a custom dial returns.
pub type DialFuture = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Conn>>> + Send>>;

/// How a node opens connections to `host:port`: TCP (the default), or a function the embedder
/// supplies (the deterministic simulation dials through its simulated network); over TLS when
/// the node has a `tls:` section.
#[derive(Clone, Default)]
pub struct Dialer {
    custom: Option<Arc<dyn Fn(String) -> DialFuture + Send + Sync>>,
    tls: Option<DialTls>,
}

/// The TLS a [`Dialer`] speaks: a fixed config (tools), or a node's, which follows its files.
#[derive(Clone)]
enum DialTls {
    Fixed(ClientTlsConfig),
    Node(Arc<crate::tls::NodeTls>),
}

impl Dialer {
    /// Plain TCP, as tonic does it.
    pub fn tcp() -> Self {
        Dialer::default()
    }

    /// Dials with `f` (given `host:port`).
    pub fn custom(f: impl Fn(String) -> DialFuture + Send + Sync + 'static) -> Self {
        Dialer { custom: Some(Arc::new(f)), tls: None }
    }

    /// The same dialer speaking TLS with `tls` (when given): `https://`, the server verified as
    /// a node of the cluster's CA, this holder's certificate presented.
    pub fn with_tls(mut self, tls: Option<ClientTlsConfig>) -> Self {
        self.tls = tls.map(DialTls::Fixed);
        self
    }

    /// The same dialer speaking the node's TLS, whatever its files hold at the time of each dial.
    pub fn with_node_tls(mut self, tls: Option<Arc<crate::tls::NodeTls>>) -> Self {
        self.tls = tls.map(DialTls::Node);
        self
    }

    fn endpoint(&self, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        match &self.tls {
            None => endpoint(addr),
            Some(tls) => {
                let host_port = addr.split_once("://").map(|(_, hp)| hp).unwrap_or(addr);
                let config = match tls {
                    DialTls::Fixed(c) => c.clone(),
                    DialTls::Node(n) => n.client(),
                };
                endpoint(&format!("https://{host_port}"))?.tls_config(config)
            }
        }
    }

    /// Which TLS material new connections use (0 without TLS): a cached channel dialed under an
    /// older generation presents a rotated-out certificate on its reconnects, so it is replaced.
    pub fn generation(&self) -> u64 {
        match &self.tls {
            Some(DialTls::Node(n)) => n.generation(),
            _ => 0,
        }
    }

    /// A channel to `addr` that connects on first use.
    pub fn lazy(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let ep = self.endpoint(addr)?;
        Ok(match &self.custom {
            Some(f) => ep.connect_with_connector_lazy(DialService(f.clone())),
            None => ep.connect_lazy(),
        })
    }

    /// A channel to `addr`, connected now.
    pub async fn connect(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let ep = self.endpoint(addr)?;
        match &self.custom {
            Some(f) => ep.connect_with_connector(DialService(f.clone())).await,
            None => ep.connect().await,
        }
    }
}

/// Adapts a custom dial function to the connector tonic expects.
#[derive(Clone)]
struct DialService(Arc<dyn Fn(String) -> DialFuture + Send + Sync>);

impl tower_service::Service<Uri> for DialService {
    type Response = hyper_util::rt::TokioIo<Box<dyn Conn>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let host = uri.host().unwrap_or_default();
        let addr = format!("{host}:{}", uri.port_u16().unwrap_or(80));
        let fut = (self.0)(addr);
        Box::pin(async move { Ok(hyper_util::rt::TokioIo::new(fut.await?)) })
    }
}

/// Builds channels to peers and caches one per address.
#[derive(Clone, Default)]
pub struct ChannelPool {
    /// With the dialer's TLS generation each was made under.
    channels: Arc<Mutex<HashMap<String, (u64, Channel)>>>,
    /// Dial these nodes at another address (a fault proxy in tests, a NAT in production).
    overrides: Arc<HashMap<NodeId, String>>,
    dialer: Dialer,
}

impl ChannelPool {
    /// A pool that dials node `id` at `overrides[id]` instead of its advertised address.
    pub fn new(overrides: HashMap<NodeId, String>) -> Self {
        Self::with_dialer(overrides, Dialer::tcp())
    }

    /// A pool whose channels connect through `dialer`.
    pub fn with_dialer(overrides: HashMap<NodeId, String>, dialer: Dialer) -> Self {
        ChannelPool { channels: Arc::default(), overrides: Arc::new(overrides), dialer }
    }

    /// How this pool opens connections.
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// The address to dial for a node.
    pub fn dial_addr(&self, id: NodeId, advertised: &str) -> String {
        self.overrides.get(&id).cloned().unwrap_or_else(|| advertised.to_string())
    }

    /// The cached channel to `addr` (`host:port`), created lazily on first use.
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let generation = self.dialer.generation();
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((g, c)) = map.get(addr)
            && *g == generation
        {
            return Ok(c.clone());
        }
        let ch = self.dialer.lazy(addr)?;
        map.insert(addr.to_string(), (generation, ch.clone()));
        Ok(ch)
    }

    /// Replaces the cached channel to `addr` with a new one (a new connection on first use).
    ///
    /// A connection whose packets were silently dropped (a partition, a peer that vanished
    /// without a reset) stays open until HTTP/2 keepalive declares it dead, up to ten seconds;
    /// every RPC sent on it meanwhile just times out. The simulation measured followers stuck
    /// that long after a healed partition, so a timed-out RPC starts over on a fresh connection.
    pub fn renew(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner()).remove(addr);
        self.channel(addr)
    }
}

/// A client endpoint with the timeouts and keepalives every drcut connection uses.
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true))
}

/// openraft's network factory.
#[derive(Clone)]
pub struct Network {
    pool: ChannelPool,
}

impl Network {
    /// A factory over a shared channel pool.
    pub fn new(pool: ChannelPool) -> Self {
        Network { pool }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Self::Network {
        let addr = self.pool.dial_addr(target, &node.addr);
        PeerClient { target, addr, pool: self.pool.clone() }
    }
}

/// The connection to one peer: the pool's channel to it, asked for at every call, so a channel
/// the pool replaced (renewed after a timeout, or made under rotated TLS files) is used at once
/// by the replication streams openraft keeps for as long as a leader leads.
pub struct PeerClient {
    target: NodeId,
    addr: String,
    pool: ChannelPool,
}

fn unreachable(msg: impl ToString) -> RPCError {
    RPCError::Unreachable(Unreachable::from_string(msg))
}

/// Connection-level failures back off (Unreachable); anything else is retried at once.
fn status_err(target: NodeId, s: tonic::Status) -> RPCError {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            unreachable(format!("node {target}: {}", s.message()))
        }
        _ => RPCError::Network(NetworkError::from_string(format!("node {target}: {}: {}", s.code(), s.message()))),
    }
}

impl PeerClient {
    fn client(&self) -> Result<RaftTransportClient<Channel>, RPCError> {
        let ch = self.pool.channel(&self.addr).map_err(unreachable)?;
        Ok(RaftTransportClient::new(ch).max_decoding_message_size(64 * 1024 * 1024))
    }

    async fn call<Req: Serialize, Resp: serde::de::DeserializeOwned>(
        &mut self,
        kind: &'static str,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError> {
        let payload = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self.client()?;
        let msg = RaftMessage { payload };
        let fut = async {
            match kind {
                "append" => client.append_entries(msg).await,
                _ => client.vote(msg).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, fut).await {
            Ok(r) => r.map_err(|s| status_err(self.target, s))?,
            Err(_) => {
                // No answer at all: the connection may be wedged; the next call uses a new one.
                if let Err(e) = self.pool.renew(&self.addr) {
                    tracing::warn!(addr = %self.addr, "cannot renew the channel: {e}");
                }
                return Err(unreachable(format!("node {}: {kind} timed out after {ttl:?}", self.target)));
            }
        };
        serde_json::from_slice(&reply.into_inner().payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError> {
        self.call("append", &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError> {
        self.call("vote", &VoteEnvelope { pre_vote: false, req: rpc }, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError> {
        self.call("vote", &VoteEnvelope { pre_vote: true, req: rpc }, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError> {
        let header = serde_json::to_vec(&SnapshotHeader { vote, meta: snapshot.meta.clone() })
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        let data = snapshot.snapshot;
        let mut chunks = vec![SnapshotChunk { header, data: Vec::new() }];
        chunks.extend(data.chunks(SNAPSHOT_CHUNK).map(|c| SnapshotChunk { header: Vec::new(), data: c.to_vec() }));
        let total = data.len();
        let mut client = self.client()?;
        tracing::info!(target_node = self.target, bytes = total, chunks = chunks.len() - 1, "sending snapshot");
        let send = client.install_snapshot(tokio_stream::iter(chunks));
        let reply = tokio::select! {
            r = send => r.map_err(|s| StreamingError::from(status_err(self.target, s)))?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        serde_json::from_slice(&reply.into_inner().payload).map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }

    fn backoff(&self) -> Option<Backoff> {
        // Exponential from 50 ms to 1 s: a dead peer is not hammered, a restarted one is found
        // again within a second.
        let steps = (0..).map(|i: u32| Duration::from_millis((50u64 << i.min(5)).min(1000)));
        Some(Backoff::new(steps))
    }
}
