//! The client side of `Control`, shared by drctl and the node itself: tries several endpoints,
//! follows the leader named in an `Unavailable` answer, and keeps one request id across
//! retries so a retried write applies once.

use crate::network::{Dialer, endpoint};
use drcut_proto::v1::control_client::ControlClient;
use drcut_proto::v1::{ClusterStatus, GetStatusRequest};
use std::future::Future;
use std::time::Duration;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Code, Status};

/// Connect timeout per endpoint.
const CONNECT: Duration = Duration::from_millis(800);

/// Asks one node for its status, giving up after `timeout` (None when it does not answer).
pub async fn probe_status(addr: &str, timeout: Duration) -> Option<ClusterStatus> {
    probe_status_via(&Dialer::tcp(), addr, timeout).await
}

/// [`probe_status`] through a given dialer.
pub async fn probe_status_via(dialer: &Dialer, addr: &str, timeout: Duration) -> Option<ClusterStatus> {
    let fut = async {
        let ch = dialer.connect(addr).await.ok()?;
        ControlClient::new(ch).get_status(GetStatusRequest::default()).await.ok().map(|r| r.into_inner())
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

/// A client over a list of endpoints.
#[derive(Debug, Clone)]
pub struct Client {
    endpoints: Vec<String>,
    /// Only talk to the first endpoint; never fail over or follow the leader.
    pinned: bool,
    timeout: Duration,
    /// TLS to the nodes (`drctl --ca`); plain text when `None`.
    tls: Option<ClientTlsConfig>,
}

impl Client {
    /// A client trying `endpoints` in order.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Self {
        Client { endpoints, pinned: false, timeout, tls: None }
    }

    /// Speak TLS to the nodes (verifying them against the CA in `tls`).
    pub fn with_tls(mut self, tls: Option<ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// [`probe_status`] with this client's TLS settings.
    pub async fn probe_status(&self, addr: &str, timeout: Duration) -> Option<ClusterStatus> {
        probe_status_via(&Dialer::tcp().with_tls(self.tls.clone()), addr, timeout).await
    }

    /// Talk to the first endpoint only (for reads of one node's local state).
    pub fn pinned(mut self) -> Self {
        self.pinned = true;
        self
    }

    /// Runs `call` against the first endpoint that answers; on `Unavailable` naming a leader,
    /// retries there. Errors other than unavailability are returned at once: they are answers.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, Status>
    where
        F: Fn(ControlClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut queue: Vec<String> = self.endpoints.clone();
        if self.pinned {
            queue.truncate(1);
        }
        let mut tried: Vec<String> = Vec::new();
        let mut last = Status::unavailable("no endpoint given");
        while let Some(addr) = (!queue.is_empty()).then(|| queue.remove(0)) {
            if tried.contains(&addr) {
                continue;
            }
            tried.push(addr.clone());
            let dialer = Dialer::tcp().with_tls(self.tls.clone());
            let ch = match endpoint(&addr) {
                Ok(_) => match tokio::time::timeout(CONNECT, dialer.connect(&addr)).await {
                    Ok(Ok(ch)) => ch,
                    Ok(Err(e)) => {
                        last = Status::unavailable(format!("{addr}: cannot connect: {e}"));
                        continue;
                    }
                    Err(_) => {
                        last = Status::unavailable(format!("{addr}: connect timed out"));
                        continue;
                    }
                },
                Err(e) => return Err(Status::invalid_argument(format!("endpoint {addr:?}: {e}"))),
            };
            let client = ControlClient::new(ch).max_decoding_message_size(64 * 1024 * 1024);
            match tokio::time::timeout(self.timeout, call(client)).await {
                Ok(Ok(r)) => return Ok(r.into_inner()),
                Ok(Err(s)) if s.code() == Code::Unavailable => {
                    if !self.pinned
                        && let Some(leader) = s.metadata().get("x-drcut-leader").and_then(|v| v.to_str().ok())
                    {
                        queue.insert(0, leader.to_string());
                    }
                    last = Status::unavailable(format!("{addr}: {}", s.message()));
                }
                Ok(Err(s)) => return Err(s),
                Err(_) => last = Status::deadline_exceeded(format!("{addr}: no answer within {:?}", self.timeout)),
            }
        }
        Err(last)
    }

    /// Opens a server stream on the first endpoint that accepts it (following the leader like
    /// [`Client::call`]); the stream itself is not subject to the call timeout.
    pub async fn open_stream<T, F, Fut>(&self, open: F) -> Result<tonic::Streaming<T>, Status>
    where
        F: Fn(ControlClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<tonic::Streaming<T>>, Status>>,
    {
        self.call(open).await
    }
}
