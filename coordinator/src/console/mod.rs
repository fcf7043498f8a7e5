//! The ops console: a web page served on the node's `http_listen` address, and the JSON API it
//! calls under `/api/`.
//!
//! The API is a thin adapter over the in-process gRPC `Control` service: every endpoint
//! authenticates the caller, authorizes the call by the name of the RPC it maps to (one role
//! table for gRPC and the console), and calls that RPC with the principal in the request's
//! extensions. Validation, audit and leader forwarding are therefore exactly those of `drctl`,
//! and any node serves the console (writes reach the leader inside the service).
//!
//! Callers send `Authorization: Bearer <token>` on every request (no cookies, so no CSRF); in
//! open mode the page's `X-Drcut-Actor` header names the caller. Everything the page needs is
//! compiled into the binary ([`assets`]): no external fonts, scripts or CDNs.

mod api;
mod assets;
mod view;

use crate::auth::{Denial, Principal};
use crate::node::AppRef;
use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::net::SocketAddr;

/// The console's routes: the page and its assets at `/`, the JSON API under `/api/`.
pub fn router() -> Router<AppRef> {
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/app.css", get(assets::style))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/api/me", get(api::me))
        .route("/api/status", get(api::status))
        .route("/api/playbooks", get(api::playbooks))
        .route("/api/plan", post(api::plan))
        .route("/api/runs", get(api::list_runs).post(api::start_run))
        .route("/api/runs/{id}", get(api::get_run))
        .route("/api/runs/{id}/stream", get(api::stream_run))
        .route("/api/runs/{id}/{action}", post(api::run_action))
        .route("/api/drills", get(api::drills))
        .route("/api/drill-runs", get(api::drill_runs))
        .route("/api/drill-runs/{id}", get(api::drill_run))
        .fallback(api::not_found)
}

/// An API refusal: an HTTP status and a message the page shows as is.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// Bad input from the page (400).
    fn bad(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, [(CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    }
}

/// The HTTP status for a gRPC code: the same refusal reads the same in drctl and the console.
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        Ok => StatusCode::OK,
        InvalidArgument | OutOfRange => StatusCode::BAD_REQUEST,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | FailedPrecondition | Aborted => StatusCode::CONFLICT,
        PermissionDenied => StatusCode::FORBIDDEN,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        ApiError { status: http_status(s.code()), message: s.message().to_string() }
    }
}

impl From<Denial> for ApiError {
    fn from(d: Denial) -> Self {
        ApiError { status: http_status(d.code), message: d.message }
    }
}

/// A JSON response.
fn json(v: serde_json::Value) -> Response {
    ([(CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// Authenticates the caller and admits it for `call` (an RPC name from the role table), or
/// refuses with 401/403/429 and records the refusal in the audit chain.
fn admit(app: &AppRef, headers: &HeaderMap, peer: SocketAddr, call: &str) -> Result<Principal, ApiError> {
    let p = authenticate(app, headers, peer, call)?;
    app.auth.authorize(&p, call).map_err(|d| refuse(app, call, d, peer))?;
    Ok(p)
}

/// Authentication and the rate limits only (for `/api/me`, which any principal may read): the
/// same rules as the gRPC layer's, failed sign-ins per address included.
fn authenticate(app: &AppRef, headers: &HeaderMap, peer: SocketAddr, call: &str) -> Result<Principal, ApiError> {
    crate::auth::layer::authenticate(app, headers, Some(peer), None).map_err(|d| refuse(app, call, d, peer))
}

fn refuse(app: &AppRef, call: &str, d: Denial, peer: SocketAddr) -> ApiError {
    crate::auth::audit_denied(app, &format!("console {call}"), &d, Some(peer));
    ApiError::from(d)
}

/// A request to the in-process `Control` service on behalf of `p`: the principal travels in
/// the extensions, as the gRPC auth layer puts it there (the handlers' actor in every mode).
fn grpc_request<T>(msg: T, p: &Principal) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.extensions_mut().insert(p.clone());
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_http_statuses() {
        assert_eq!(http_status(tonic::Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(tonic::Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(tonic::Code::FailedPrecondition), StatusCode::CONFLICT);
        assert_eq!(http_status(tonic::Code::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(http_status(tonic::Code::ResourceExhausted), StatusCode::TOO_MANY_REQUESTS);
    }
}
