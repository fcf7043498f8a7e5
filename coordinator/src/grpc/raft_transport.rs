//! Server side of the Raft transport: decodes openraft messages and hands them to Raft. With
//! TLS, only holders of a node certificate may call it (`crate::tls::require_node`).

use crate::network::{SnapshotHeader, VoteEnvelope};
use crate::node::{AppRef, LeaderReply, LeaderRequest, WireError};
use crate::types::Snapshot;
use drcut_proto::v1::raft_transport_server::RaftTransport;
use drcut_proto::v1::{RaftMessage, SnapshotChunk};
use futures::StreamExt;
use serde::Serialize;
use tonic::{Request, Response, Status, Streaming};

/// The `RaftTransport` service.
pub struct RaftService {
    app: AppRef,
}

impl RaftService {
    /// A service over the node.
    pub fn new(app: AppRef) -> Self {
        RaftService { app }
    }
}

fn decode<T: serde::de::DeserializeOwned>(m: &RaftMessage) -> Result<T, Status> {
    serde_json::from_slice(&m.payload).map_err(|e| Status::invalid_argument(format!("bad raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    let payload = serde_json::to_vec(v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftMessage { payload }))
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn append_entries(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        crate::tls::require_node(&self.app, "RaftTransport.AppendEntries", &req)?;
        let rpc = decode(req.get_ref())?;
        let resp = self.app.raft.append_entries(rpc).await.map_err(|e| Status::internal(e.to_string()))?;
        encode(&resp)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        crate::tls::require_node(&self.app, "RaftTransport.Vote", &req)?;
        let env: VoteEnvelope = decode(req.get_ref())?;
        let resp = if env.pre_vote { self.app.raft.pre_vote(env.req).await } else { self.app.raft.vote(env.req).await };
        encode(&resp.map_err(|e| Status::internal(e.to_string()))?)
    }

    async fn install_snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<RaftMessage>, Status> {
        crate::tls::require_node(&self.app, "RaftTransport.InstallSnapshot", &req)?;
        let mut stream = req.into_inner();
        let first = stream.next().await.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let header: SnapshotHeader = serde_json::from_slice(&first.header)
            .map_err(|e| Status::invalid_argument(format!("bad snapshot header: {e}")))?;
        let mut data = first.data;
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(&chunk?.data);
        }
        tracing::info!(bytes = data.len(), last = ?header.meta.last_log_id, "installing snapshot from leader");
        let snap = Snapshot { meta: header.meta, snapshot: data };
        let resp = self
            .app
            .raft
            .install_full_snapshot(header.vote, snap)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        encode(&resp)
    }

    async fn forward(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        crate::tls::require_node(&self.app, "RaftTransport.Forward", &req)?;
        let lr: LeaderRequest = decode(req.get_ref())?;
        let res: Result<LeaderReply, WireError> = self.app.leader_call(lr, true).await.map_err(WireError::from);
        encode(&res)
    }

    async fn peer_state(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        crate::tls::require_node(&self.app, "RaftTransport.PeerState", &req)?;
        let m = self.app.metrics();
        encode(&crate::node::PeerState { term: m.current_term, leader_id: m.current_leader.unwrap_or(0) })
    }
}
