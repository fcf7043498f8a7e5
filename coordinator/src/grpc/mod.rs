//! The gRPC surface of a node: `Control` for clients, `AgentLink` for agents, `RaftTransport`
//! for peers, plus standard health checking and reflection.

mod agent_link;
pub mod control;
mod drills;
mod raft_transport;
pub mod runs;

use crate::node::AppRef;
use drcut_proto::v1::agent_link_server::AgentLinkServer;
use drcut_proto::v1::control_server::ControlServer;
use drcut_proto::v1::raft_transport_server::RaftTransportServer;
use futures::Stream;
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tonic::transport::server::{Connected, TcpIncoming};

/// Largest message a node accepts (snapshots travel in smaller chunks).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Largest request a client or an agent may send: far above any playbook, drill or report, far
/// below what would let one caller make a node buffer much.
const MAX_REQUEST: usize = 1024 * 1024;
/// Largest playbook or drill file the API stores (its text travels in the log and snapshots).
pub const MAX_FILE_BYTES: usize = 256 * 1024;

/// Refuses a file text above [`MAX_FILE_BYTES`], naming the file and both sizes.
pub fn check_file_size(file: &str, text: &str) -> Result<(), tonic::Status> {
    if text.len() > MAX_FILE_BYTES {
        return Err(tonic::Status::invalid_argument(format!(
            "{file}: text is {} bytes; the limit is {MAX_FILE_BYTES}",
            text.len()
        )));
    }
    Ok(())
}

/// Serves every service on `listener` until `shutdown` resolves.
pub async fn serve(app: AppRef, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    // The builder's tcp_nodelay only applies to listeners it binds itself; without nodelay on
    // accepted sockets, Nagle plus delayed ACKs add ~40 ms to a third of all replies.
    serve_incoming(app, TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown).await
}

/// Serves every service on the connections `incoming` yields (a TCP listener in production, a
/// simulated network in `tests/sim`) until `shutdown` resolves.
pub async fn serve_incoming<I, IO, IE>(app: AppRef, incoming: I, shutdown: impl Future<Output = ()>)
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let app_tls = app.tls.clone().map(|t| (app.clone(), t));
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<ControlServer<control::ControlService>>().await;
    health.set_serving::<AgentLinkServer<agent_link::AgentLinkService>>().await;
    health.set_serving::<RaftTransportServer<raft_transport::RaftService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(drcut_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        // API tokens, roles and rate limits on `Control`; other services pass untouched.
        .layer(crate::auth::AuthLayer::new(app.clone()))
        .add_service(health_svc)
        .add_service(reflection)
        .add_service(
            ControlServer::new(control::ControlService::new(app.clone())).max_decoding_message_size(MAX_REQUEST),
        )
        .add_service(
            AgentLinkServer::new(agent_link::AgentLinkService::new(app.clone())).max_decoding_message_size(MAX_REQUEST),
        )
        .add_service(
            RaftTransportServer::new(raft_transport::RaftService::new(app))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        );
    // With TLS the node runs the handshakes itself (crate::tls::accept), so refused ones are
    // logged and audited; tonic then sees finished TLS streams (and their client certificates).
    let res = match app_tls {
        Some((app, tls)) => {
            let incoming = crate::tls::accept::TlsIncoming::new(app, tls, incoming);
            router.serve_with_incoming_shutdown(incoming, shutdown).await
        }
        None => router.serve_with_incoming_shutdown(incoming, shutdown).await,
    };
    if let Err(e) = res {
        tracing::error!("gRPC server stopped: {e}");
    }
}
