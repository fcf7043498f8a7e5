//! The client side of `Control`, shared by drctl and the node itself: tries several endpoints,
//! follows the leader named in an `Unavailable` answer, and keeps one request id across
//! retries so a retried write applies once.

use crate::network::{Dialer, endpoint};
use drcut_proto::v1::control_client::ControlClient;
use drcut_proto::v1::{ClusterStatus, GetStatusRequest};
use std::future::Future;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Code, Status};

/// A `Control` client that sends the API token with every call.
pub type Conn = ControlClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every request (nothing without a token). Its Debug
/// output never shows the token.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// For `token` (`None`: send none); refuses a token that cannot travel in a header.
    pub fn new(token: Option<&str>) -> Result<Bearer, String> {
        match token.map(str::trim).filter(|t| !t.is_empty()) {
            None => Ok(Bearer(None)),
            Some(t) => format!("Bearer {t}")
                .parse()
                .map(|v| Bearer(Some(v)))
                .map_err(|_| "the API token contains characters a header cannot carry".to_string()),
        }
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Bearer(<token>)" } else { "Bearer(none)" })
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Connect timeout per endpoint.
const CONNECT: Duration = Duration::from_millis(800);

/// Asks one node for its status through `dialer` (TLS or not), sending `bearer` (an API token)
/// if any; None when it does not answer within `timeout`.
pub async fn probe_status_via(
    dialer: &Dialer,
    addr: &str,
    timeout: Duration,
    bearer: &Bearer,
) -> Option<ClusterStatus> {
    let fut = async {
        let ch = dialer.connect(addr).await.ok()?;
        ControlClient::with_interceptor(ch, bearer.clone())
            .get_status(GetStatusRequest::default())
            .await
            .ok()
            .map(|r| r.into_inner())
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
    /// The API token sent with every call.
    bearer: Bearer,
    /// TLS to the nodes (`drctl --ca`); plain text when `None`.
    tls: Option<ClientTlsConfig>,
}

impl Client {
    /// A client trying `endpoints` in order.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Self {
        Client { endpoints, pinned: false, timeout, bearer: Bearer::default(), tls: None }
    }

    /// Sends `bearer` (an API token) with every call.
    pub fn with_bearer(mut self, bearer: Bearer) -> Self {
        self.bearer = bearer;
        self
    }

    /// The token this client sends.
    pub fn bearer(&self) -> &Bearer {
        &self.bearer
    }

    /// Speak TLS to the nodes (verifying them against the CA in `tls`).
    pub fn with_tls(mut self, tls: Option<ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// [`probe_status_via`] with this client's TLS settings and token.
    pub async fn probe_status(&self, addr: &str, timeout: Duration) -> Option<ClusterStatus> {
        probe_status_via(&Dialer::tcp().with_tls(self.tls.clone()), addr, timeout, &self.bearer).await
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
        F: Fn(Conn) -> Fut,
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
            let client =
                ControlClient::with_interceptor(ch, self.bearer.clone()).max_decoding_message_size(64 * 1024 * 1024);
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
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<tonic::Response<tonic::Streaming<T>>, Status>>,
    {
        self.call(open).await
    }
}
