//! The agent session: agents say hello, the node answers with the leader to prefer, and
//! heartbeats keep the session alive. Later work fills the stream with checks and steps.

use crate::node::AppRef;
use drcut_proto::v1::agent_link_server::AgentLink;
use drcut_proto::v1::agent_message::Body as AgentBody;
use drcut_proto::v1::coordinator_message::Body as CoordBody;
use drcut_proto::v1::{AgentMessage, CoordinatorMessage, HeartbeatAck, Welcome};
use futures::StreamExt;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The `AgentLink` service.
pub struct AgentLinkService {
    app: AppRef,
}

impl AgentLinkService {
    /// A service over the node.
    pub fn new(app: AppRef) -> Self {
        AgentLinkService { app }
    }
}

type Out = Pin<Box<dyn futures::Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentLink for AgentLinkService {
    type SessionStream = Out;

    async fn session(&self, req: Request<Streaming<AgentMessage>>) -> Result<Response<Out>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound.next().await.ok_or_else(|| Status::invalid_argument("session closed before hello"))??;
        let Some(AgentBody::Hello(hello)) = first.body else {
            return Err(Status::invalid_argument("the first message of a session must be hello"));
        };
        if hello.agent_id.is_empty() || hello.region.is_empty() {
            return Err(Status::invalid_argument("hello: agent_id and region are required"));
        }
        tracing::info!(agent = %hello.agent_id, region = %hello.region, version = %hello.version, "agent connected");
        let (tx, rx) = mpsc::channel(16);
        let (leader_id, leader_addr) = self.app.leader().unwrap_or((0, String::new()));
        let welcome = Welcome { node_id: self.app.id, leader_id, leader_addr };
        tx.send(Ok(CoordinatorMessage { body: Some(CoordBody::Welcome(welcome)) }))
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;
        tokio::spawn(async move {
            while let Some(Ok(msg)) = inbound.next().await {
                if let Some(AgentBody::Heartbeat(hb)) = msg.body {
                    let ack = CoordinatorMessage { body: Some(CoordBody::HeartbeatAck(HeartbeatAck { seq: hb.seq })) };
                    if tx.send(Ok(ack)).await.is_err() {
                        break;
                    }
                }
            }
            tracing::info!(agent = %hello.agent_id, "agent disconnected");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
