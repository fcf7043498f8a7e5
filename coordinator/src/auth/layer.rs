//! The tower layer that authenticates, rate-limits and authorizes every `Control` call before a
//! handler sees it. Other services (health, reflection, the agent link, the Raft transport) pass
//! untouched: machines are identified by their certificates, not by API tokens.

use super::{Denial, Principal, audit_denied};
use crate::node::AppRef;
use rustls::pki_types::CertificateDer;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The path prefix of the client API.
const CONTROL: &str = "/drcut.v1.Control/";

/// Wraps the gRPC router of a node (`Server::builder().layer(AuthLayer::new(app))`).
#[derive(Clone)]
pub struct AuthLayer {
    app: AppRef,
}

impl AuthLayer {
    /// A layer checking callers against `app.auth`.
    pub fn new(app: AppRef) -> Self {
        AuthLayer { app }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { app: self.app.clone(), inner }
    }
}

/// The service [`AuthLayer`] builds.
#[derive(Clone)]
pub struct AuthService<S> {
    app: AppRef,
    inner: S,
}

/// The `Control` method a request path names (`/drcut.v1.Control/StartCutover` → `StartCutover`).
pub fn control_method(path: &str) -> Option<&str> {
    path.strip_prefix(CONTROL).filter(|m| !m.is_empty() && !m.contains('/'))
}

/// The token of an `authorization: Bearer <token>` header (`Some("")` for a malformed one, so
/// the caller is told how to send it).
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?;
    let v = v.to_str().unwrap_or_default().trim();
    match v.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Some(token.trim()),
        _ => Some(""),
    }
}

/// Who is making a request (gRPC or console): the failed-sign-in limit of its address, its
/// token or else its verified client certificate (`cert`, gRPC over TLS only), then its
/// principal's rate limit.
pub fn authenticate(
    app: &AppRef,
    headers: &http::HeaderMap,
    peer: Option<SocketAddr>,
    cert: Option<&CertificateDer<'_>>,
) -> Result<Principal, Denial> {
    let auth = &app.auth;
    let ip = peer.map(|p| p.ip());
    auth.admit_peer(ip)?;
    let declared = headers.get("x-drcut-actor").and_then(|v| v.to_str().ok());
    let p = auth.authenticate(bearer(headers), declared, cert).inspect_err(|_| auth.note_failure(ip))?;
    auth.admit(&p.name)?;
    Ok(p)
}

/// Decides about one `Control` call: the principal making it, or why it is refused.
pub fn check(
    app: &AppRef,
    method: &str,
    headers: &http::HeaderMap,
    peer: Option<SocketAddr>,
    cert: Option<&CertificateDer<'_>>,
) -> Result<Principal, Denial> {
    let auth = &app.auth;
    if !auth.enabled() && super::required_role(method).is_none() {
        // Open mode: an unknown method is tonic's to answer (Unimplemented).
        let declared = headers.get("x-drcut-actor").and_then(|v| v.to_str().ok());
        return auth.authenticate(None, declared, None);
    }
    let p = authenticate(app, headers, peer, cert)?;
    auth.authorize(&p, method)?;
    Ok(p)
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower_service::Service<http::Request<B>> for AuthService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone is not ready; the instance polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(method) = control_method(req.uri().path()).map(str::to_string) else {
            return Box::pin(inner.call(req));
        };
        // Plain TCP or TLS: the connect info tonic stores differs.
        let tls = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>();
        let peer = req
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(|i| i.remote_addr())
            .or_else(|| tls.and_then(|i| i.get_ref().remote_addr()));
        // The leaf of a client certificate rustls verified against the cluster CA.
        let certs = tls.and_then(|i| i.peer_certs());
        let cert = certs.as_ref().and_then(|c| c.first());
        match check(&self.app, &method, req.headers(), peer, cert) {
            Ok(p) => {
                req.extensions_mut().insert(p);
                Box::pin(inner.call(req))
            }
            Err(d) => {
                audit_denied(&self.app, &method, &d, peer);
                let resp = d.to_status().into_http::<Body>();
                Box::pin(async move { Ok(resp) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_control_methods_are_checked() {
        assert_eq!(control_method("/drcut.v1.Control/StartCutover"), Some("StartCutover"));
        assert_eq!(control_method("/drcut.v1.AgentLink/Session"), None);
        assert_eq!(control_method("/grpc.health.v1.Health/Check"), None);
        assert_eq!(control_method("/drcut.v1.Control/"), None);
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(http::header::AUTHORIZATION, "Bearer drcut_abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("drcut_abc"));
        h.insert(http::header::AUTHORIZATION, "bearer  drcut_abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("drcut_abc"));
        h.insert(http::header::AUTHORIZATION, "Basic eDp5".parse().unwrap());
        assert_eq!(bearer(&h), Some(""));
    }
}
