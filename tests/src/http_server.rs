//! [`TestHttp`]: a real HTTP server whose health the test controls while it runs (latency,
//! error rate, body, up/down), plus a Prometheus-compatible query endpoint returning a value
//! the test sets: the targets of the agent's HTTP and Prometheus checks.
//!
//! Paths:
//! - `GET /health` and `GET /`: the body (`ok` by default), 200, or 500 for an injected error.
//! - `GET|POST /api/v1/query`: a Prometheus instant-query answer, a vector with one sample of
//!   the value set by [`TestHttp::set_prom_value`], or an empty vector.
//!
//! Latency, injected errors and "down" apply to every path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{AbortHandle, JoinHandle};

/// A controllable HTTP server on a loopback address. Dropping it stops it.
pub struct TestHttp {
    addr: SocketAddr,
    shared: Arc<Shared>,
    router: Router,
    /// The accept loop while the server is up; `None` while it is down.
    accept_task: Mutex<Option<JoinHandle<()>>>,
}

/// State shared by the handle, the accept loop and the handlers.
struct Shared {
    behaviour: Mutex<Behaviour>,
    /// While set, the listener is closed and connections accepted in a race are dropped.
    down: AtomicBool,
    /// Requests that reached a handler, errors included.
    requests: AtomicU64,
    /// Requests answered with an injected 500.
    errors: AtomicU64,
    /// Serving tasks of open connections, so going down can close them.
    conns: Mutex<Vec<AbortHandle>>,
    /// The `query` parameter of the last Prometheus query.
    last_prom_query: Mutex<Option<String>>,
    /// Every maintenance flag posted to `/maintenance`, in order.
    maintenance: Mutex<Vec<bool>>,
}

/// What the handlers do; changed by the test at any time.
struct Behaviour {
    latency: Duration,
    /// Injected errors per million requests.
    error_ppm: u64,
    /// Requests since the error rate was last set: errors are spread over this count.
    since_rate_set: u64,
    body: String,
    prom_value: Option<f64>,
}

impl TestHttp {
    /// Binds `addr` (port 0 picks a free port) and serves: healthy, no latency, body `ok`,
    /// no Prometheus sample.
    pub async fn start(addr: SocketAddr) -> Result<TestHttp> {
        crate::init_tracing();
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(Behaviour {
                latency: Duration::ZERO,
                error_ppm: 0,
                since_rate_set: 0,
                body: "ok".into(),
                prom_value: None,
            }),
            down: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
            last_prom_query: Mutex::new(None),
            maintenance: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/", get(health))
            .route("/health", get(health))
            .route("/api/v1/query", get(prom_get).post(prom_post))
            .route("/maintenance", axum::routing::post(maintenance))
            .with_state(shared.clone());
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        let accept_task = tokio::spawn(accept_loop(listener, router.clone(), shared.clone()));
        tracing::info!(%addr, "test http server started");
        Ok(TestHttp { addr, shared, router, accept_task: Mutex::new(Some(accept_task)) })
    }

    /// The maintenance flags posted so far (`{"maintenance": bool}` to `/maintenance`).
    pub fn maintenance_posts(&self) -> Vec<bool> {
        self.shared.maintenance.lock().unwrap().clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Delays every response by `latency`.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.behaviour.lock().unwrap().latency = latency;
    }

    /// Answers this fraction of requests (0.0 to 1.0) with 500, spread evenly rather than at
    /// random so a test can count on it: at 0.25, every 4th request from now fails.
    pub fn set_error_rate(&self, rate: f64) {
        let mut b = self.shared.behaviour.lock().unwrap();
        b.error_ppm = (rate.clamp(0.0, 1.0) * 1e6).round() as u64;
        b.since_rate_set = 0;
    }

    /// The body of `/health` and `/`.
    pub fn set_body(&self, body: &str) {
        self.shared.behaviour.lock().unwrap().body = body.to_string();
    }

    /// The value of the one sample every Prometheus query returns.
    pub fn set_prom_value(&self, value: f64) {
        self.shared.behaviour.lock().unwrap().prom_value = Some(value);
    }

    /// Makes Prometheus queries return an empty vector (no such series).
    pub fn clear_prom_value(&self) {
        self.shared.behaviour.lock().unwrap().prom_value = None;
    }

    /// The `query` parameter of the last Prometheus query, decoded.
    pub fn last_prom_query(&self) -> Option<String> {
        self.shared.last_prom_query.lock().unwrap().clone()
    }

    /// Down: closes the listener (new connections are refused) and every open connection
    /// (requests in flight fail). Up: listens on the same address again.
    pub fn set_down(&self, down: bool) -> Result<()> {
        let mut task = self.accept_task.lock().unwrap();
        if down {
            // The flag first, so a connection accepted in between is dropped too.
            self.shared.down.store(true, Ordering::SeqCst);
            if let Some(t) = task.take() {
                t.abort();
            }
            for conn in self.shared.conns.lock().unwrap().drain(..) {
                conn.abort();
            }
            tracing::info!(addr = %self.addr, "test http server down");
        } else if task.is_none() {
            let listener = bind(self.addr)?;
            self.shared.down.store(false, Ordering::SeqCst);
            *task = Some(tokio::spawn(accept_loop(listener, self.router.clone(), self.shared.clone())));
            tracing::info!(addr = %self.addr, "test http server up");
        }
        Ok(())
    }

    /// Requests that reached a handler so far (refused connections do not count).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Requests answered with an injected 500 so far.
    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::SeqCst)
    }
}

impl Drop for TestHttp {
    fn drop(&mut self) {
        if let Some(t) = self.accept_task.lock().unwrap().take() {
            t.abort();
        }
        for conn in self.shared.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

/// A reqwest client for plain-http calls from the harness and tests: no proxy from the
/// environment, 10 s timeout.
pub fn http_client() -> reqwest::Client {
    // The workspace builds reqwest with `rustls-no-provider` (the agent's choice), and building
    // a client panics unless a crypto provider is installed, even for plain http. Installing
    // twice fails harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a plain-http reqwest client always builds")
}

/// A listener on `addr` with SO_REUSEADDR, so going up again right after going down works.
fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr).with_context(|| format!("binding test http server on {addr}"))?;
    Ok(socket.listen(128)?)
}

/// Accepts connections and serves each in its own task, until aborted.
async fn accept_loop(listener: TcpListener, router: Router, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if shared.down.load(Ordering::SeqCst) {
            continue;
        }
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
        let mut conns = shared.conns.lock().unwrap();
        // Forget finished connections so a long test does not accumulate handles.
        conns.retain(|c| !c.is_finished());
        if shared.down.load(Ordering::SeqCst) {
            // Going down ran while this connection was being set up and did not see it.
            conn.abort();
        } else {
            conns.push(conn.abort_handle());
        }
    }
}

/// Counts the request, waits the latency and decides whether to inject an error.
async fn admit(shared: &Shared) -> bool {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let (latency, fail) = {
        let mut b = shared.behaviour.lock().unwrap();
        let n = b.since_rate_set;
        b.since_rate_set += 1;
        (b.latency, injects_error(n, b.error_ppm))
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if fail {
        shared.errors.fetch_add(1, Ordering::SeqCst);
    }
    !fail
}

/// Whether request `n` (counted from when the rate was set) gets an injected error: when the
/// running total of errors owed, n * rate, crosses an integer. That is exactly `rate` of any
/// 1/rate consecutive requests; integers, so no float drift.
fn injects_error(n: u64, error_ppm: u64) -> bool {
    (n + 1) * error_ppm / 1_000_000 > n * error_ppm / 1_000_000
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    if !admit(&shared).await {
        return (StatusCode::INTERNAL_SERVER_ERROR, "injected error\n").into_response();
    }
    let body = shared.behaviour.lock().unwrap().body.clone();
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn prom_get(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    prom_answer(&shared, query.as_deref().unwrap_or("")).await
}

/// Prometheus also takes the parameters as a form body.
async fn prom_post(State(shared): State<Arc<Shared>>, body: String) -> Response {
    prom_answer(&shared, &body).await
}

/// An instant-query answer in the Prometheus HTTP API format, for `params` (urlencoded).
async fn prom_answer(shared: &Shared, params: &str) -> Response {
    let query = form_urlencoded::parse(params.as_bytes()).find(|(k, _)| k == "query").map(|(_, v)| v.into_owned());
    *shared.last_prom_query.lock().unwrap() = query;
    if !admit(shared).await {
        let body = serde_json::json!({ "status": "error", "errorType": "internal", "error": "injected error" });
        return (StatusCode::INTERNAL_SERVER_ERROR, axum_json(&body)).into_response();
    }
    let value = shared.behaviour.lock().unwrap().prom_value;
    let result = match value {
        Some(v) => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
            serde_json::json!([{ "metric": {}, "value": [now, prom_float(v)] }])
        }
        None => serde_json::json!([]),
    };
    let body = serde_json::json!({ "status": "success", "data": { "resultType": "vector", "result": result } });
    (StatusCode::OK, axum_json(&body)).into_response()
}

/// A JSON body with its content type (axum's `Json` needs a feature the workspace leaves off).
fn axum_json(value: &serde_json::Value) -> impl IntoResponse + use<> {
    ([(header::CONTENT_TYPE, "application/json")], value.to_string())
}

/// A sample value as Prometheus writes it: a string, with `NaN`, `+Inf` and `-Inf`.
fn prom_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        v.to_string()
    }
}

/// The app's maintenance switch, as a deploy tool or drcut's freeze step flips it.
async fn maintenance(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    body: String,
) -> axum::http::StatusCode {
    match serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["maintenance"].as_bool()) {
        Some(on) => {
            shared.maintenance.lock().unwrap().push(on);
            axum::http::StatusCode::NO_CONTENT
        }
        None => axum::http::StatusCode::BAD_REQUEST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which of the first `n` requests fail at `rate`.
    fn failures(rate: f64, n: u64) -> Vec<u64> {
        let ppm = (rate * 1e6).round() as u64;
        (0..n).filter(|&k| injects_error(k, ppm)).collect()
    }

    #[test]
    fn error_rate_spreads_evenly() {
        assert_eq!(failures(0.0, 10), Vec::<u64>::new());
        assert_eq!(failures(1.0, 3), vec![0, 1, 2]);
        assert_eq!(failures(0.25, 12), vec![3, 7, 11]);
        assert_eq!(failures(0.1, 100).len(), 10);
        assert_eq!(failures(0.5, 6), vec![1, 3, 5]);
    }

    #[test]
    fn prom_floats() {
        assert_eq!(prom_float(0.97), "0.97");
        assert_eq!(prom_float(f64::INFINITY), "+Inf");
        assert_eq!(prom_float(f64::NAN), "NaN");
    }
}
