//! The TLS accept loop: handshakes run here rather than inside tonic, so a refused one (a
//! certificate from another CA, a plain-text client) is logged and audited instead of
//! vanishing. Each handshake runs in its own task under [`HANDSHAKE_TIMEOUT`]: a stalled client
//! holds one task, never the accept loop.

use super::NodeTls;
use crate::node::AppRef;
use futures::Stream;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a client gets to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Peers tracked by the throttle; beyond this (a flood from many addresses) refusals are only
/// logged, so memory stays bounded.
const MAX_TRACKED: usize = 4096;

/// At most one `true` per (peer IP, kind) per period.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: HashMap<(IpAddr, String), Instant>,
}

impl Throttle {
    /// A throttle letting one event per key through every `every`.
    pub fn new(every: Duration) -> Self {
        Throttle { every, last: HashMap::new() }
    }

    /// Whether an event of kind `what` from `ip` at `now` should be recorded.
    pub fn allow(&mut self, ip: IpAddr, what: &str, now: Instant) -> bool {
        if self.last.len() >= MAX_TRACKED {
            let every = self.every;
            self.last.retain(|_, t| now.saturating_duration_since(*t) < every);
            if self.last.len() >= MAX_TRACKED {
                return false;
            }
        }
        let key = (ip, what.to_string());
        match self.last.get(&key) {
            Some(t) if now.saturating_duration_since(*t) < self.every => false,
            _ => {
                self.last.insert(key, now);
                true
            }
        }
    }
}

/// Why a handshake failed, and whether that is worth an audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// A fixed label for the cause (the audit throttle counts each cause separately, so a
    /// plain-text probe does not hide a bad certificate from the same address).
    pub kind: &'static str,
    /// In words an operator can act on.
    pub reason: String,
    /// Authentication failures and non-TLS clients are audited; a peer that just closed the
    /// connection (a TCP health check, a port scan) is not.
    pub audit: bool,
}

/// Classifies a failed handshake.
pub fn classify(e: &std::io::Error) -> Failure {
    use rustls::{CertificateError, Error};
    let tls = e.get_ref().and_then(|i| i.downcast_ref::<Error>());
    let (kind, reason, audit) = match tls {
        Some(Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            ("tls:unknown-ca", "client certificate not signed by this cluster's CA".to_string(), true)
        }
        Some(Error::InvalidCertificate(c)) => ("tls:bad-cert", format!("client certificate refused: {c:?}"), true),
        Some(Error::InvalidMessage(m)) => {
            ("tls:not-tls", format!("not a TLS client (plain-text gRPC to a TLS-only node?): {m:?}"), true)
        }
        Some(Error::NoCertificatesPresented) => ("tls:bad-cert", "no client certificate".to_string(), true),
        Some(other) => ("tls:other", format!("TLS handshake failed: {other}"), true),
        None => match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe => {
                ("tls:closed", format!("peer closed the connection during the handshake: {e}"), false)
            }
            _ => ("tls:io", format!("TLS handshake failed: {e}"), false),
        },
    };
    Failure { kind, reason, audit }
}

/// The remote address in a connection's info, when it is a TCP connection.
fn peer_of<IO: Connected>(io: &IO) -> Option<SocketAddr> {
    let info = io.connect_info();
    (&info as &dyn std::any::Any).downcast_ref::<TcpConnectInfo>().and_then(|i| i.remote_addr())
}

/// Records a refused handshake: a log line always, an audit record when it is worth one and
/// the peer was not audited in the last [`super::AUDIT_EVERY`].
fn refused(app: &AppRef, tls: &NodeTls, peer: Option<SocketAddr>, f: Failure) {
    let who = peer.map(|p| p.to_string()).unwrap_or_else(|| "unknown peer".into());
    if f.audit && tls.should_audit(peer, f.kind) {
        let d = crate::auth::Denial { code: tonic::Code::Unauthenticated, who, message: f.reason };
        crate::auth::audit_denied(app, "tls", &d, peer);
    } else if f.audit {
        tracing::warn!(peer = %who, "TLS handshake refused (audit throttled): {}", f.reason);
    } else {
        tracing::debug!(peer = %who, "TLS handshake abandoned: {}", f.reason);
    }
}

/// The TLS connections completed on top of another stream of connections.
pub struct TlsIncoming<I, IO> {
    inner: Option<Pin<Box<I>>>,
    done_tx: Option<mpsc::UnboundedSender<TlsStream<IO>>>,
    done: mpsc::UnboundedReceiver<TlsStream<IO>>,
    app: AppRef,
    tls: Arc<NodeTls>,
}

impl<I, IO, IE> TlsIncoming<I, IO>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    /// Runs TLS handshakes on the connections `inner` yields.
    pub fn new(app: AppRef, tls: Arc<NodeTls>, inner: I) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        TlsIncoming { inner: Some(Box::pin(inner)), done_tx: Some(tx), done: rx, app, tls }
    }

    fn handshake(&self, io: IO) {
        let Some(tx) = self.done_tx.clone() else {
            return;
        };
        let (app, tls) = (self.app.clone(), self.tls.clone());
        tokio::spawn(async move {
            let peer = peer_of(&io);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(io)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(stream);
                }
                Ok(Err(e)) => refused(&app, &tls, peer, classify(&e)),
                Err(_) => refused(
                    &app,
                    &tls,
                    peer,
                    Failure {
                        kind: "tls:timeout",
                        reason: format!("TLS handshake not completed within {HANDSHAKE_TIMEOUT:?}"),
                        audit: false,
                    },
                ),
            }
        });
    }
}

impl<I, IO, IE> Stream for TlsIncoming<I, IO>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Item = Result<TlsStream<IO>, Box<dyn std::error::Error + Send + Sync>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Only Pin<Box<_>> and channel halves inside: the struct is Unpin.
        let this = self.get_mut();
        while let Some(inner) = this.inner.as_mut() {
            match inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(io))) => this.handshake(io),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => {
                    // No more connections: the stream ends once the pending handshakes have.
                    this.inner = None;
                    this.done_tx = None;
                }
                Poll::Pending => break,
            }
        }
        this.done.poll_recv(cx).map(|s| s.map(Ok))
    }
}

impl<I, IO> Unpin for TlsIncoming<I, IO> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_one_per_peer_and_kind_per_period() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let a: IpAddr = "127.0.0.9".parse().unwrap();
        let b: IpAddr = "127.0.0.10".parse().unwrap();
        assert!(t.allow(a, "tls", t0));
        assert!(!t.allow(a, "tls", t0 + Duration::from_secs(9)));
        assert!(t.allow(a, "RaftTransport.Vote", t0 + Duration::from_secs(1)));
        assert!(t.allow(b, "tls", t0 + Duration::from_secs(1)));
        assert!(t.allow(a, "tls", t0 + Duration::from_secs(10)));
    }

    #[test]
    fn throttle_memory_is_bounded() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            assert!(t.allow(IpAddr::from(i.to_be_bytes()), "tls", t0));
        }
        // Full of fresh entries: a new peer is only logged.
        assert!(!t.allow("10.9.9.9".parse().unwrap(), "tls", t0));
        // Once the old entries have expired they are dropped and new peers count again.
        assert!(t.allow("10.9.9.9".parse().unwrap(), "tls", t0 + Duration::from_secs(11)));
        assert!(t.last.len() == 1);
    }

    #[test]
    fn classify_names_the_cause() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let f = classify(&io(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)));
        assert_eq!(
            f,
            Failure {
                kind: "tls:unknown-ca",
                reason: "client certificate not signed by this cluster's CA".into(),
                audit: true
            }
        );
        let f = classify(&io(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)));
        assert!(f.audit && f.reason.starts_with("not a TLS client"), "{f:?}");
        let f = classify(&std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "eof"));
        assert!(!f.audit, "{f:?}");
    }
}
