//! Probes: one real client per check type. A probe does one measurement and returns a
//! [`Sample`]; scheduling, windows and SLOs live in `runner` and `window`.
//!
//! Every probe measures with `tokio::time::Instant` and bounds its whole measurement with the
//! timeout it is given, so a hung target costs one timeout, never a stuck runner.

pub mod dns;
pub mod http;
pub mod postgres;
pub mod prometheus;
pub mod tcp;

use std::collections::BTreeMap;
use std::time::Duration;

/// One measurement.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// The target answered at all (an HTTP response of any status, a TCP connect, a DNS reply
    /// of any rcode, a database session). False means unreachable: refused, reset, timed out.
    pub reachable: bool,
    /// The answer was the expected one (status, body, answer set, role, …).
    pub ok: bool,
    /// Wall time of the probe in milliseconds.
    pub latency_ms: f64,
    /// Type-specific numbers (e.g. `lag_seconds`, `value`, `connect_ms`).
    pub values: BTreeMap<String, f64>,
    /// Type-specific facts (e.g. `role=standby`, `status=200`, `answers=192.0.2.1`).
    pub labels: BTreeMap<String, String>,
    /// What went wrong, for operators.
    pub error: Option<String>,
}

/// A configured probe of one check, ready to run; built by `config` from the check's spec.
#[derive(Debug)]
pub enum Probe {
    /// An HTTP request; see [`http::HttpProbe`].
    Http(http::HttpProbe),
    /// A TCP connect; see [`tcp::TcpProbe`].
    Tcp(tcp::TcpProbe),
    /// A DNS query to one server; see [`dns::DnsProbe`].
    Dns(dns::DnsProbe),
    /// A PostgreSQL role and lag query; see [`postgres::PostgresProbe`].
    Postgres(postgres::PostgresProbe),
    /// A Prometheus instant query; see [`prometheus::PrometheusProbe`].
    Prometheus(prometheus::PrometheusProbe),
}

impl Probe {
    /// Does one measurement. Never panics and returns within `timeout` (plus scheduling slack):
    /// a timeout is reported as an unreachable sample.
    pub async fn run(&mut self, timeout: Duration) -> Sample {
        match self {
            Probe::Http(p) => p.run(timeout).await,
            Probe::Tcp(p) => p.run(timeout).await,
            Probe::Dns(p) => p.run(timeout).await,
            Probe::Postgres(p) => p.run(timeout).await,
            Probe::Prometheus(p) => p.run(timeout).await,
        }
    }

    /// The check type this probe implements (`http`, `tcp`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Probe::Http(_) => "http",
            Probe::Tcp(_) => "tcp",
            Probe::Dns(_) => "dns",
            Probe::Postgres(_) => "postgres",
            Probe::Prometheus(_) => "prometheus",
        }
    }
}

// === helpers shared by the probes ===

/// Milliseconds of a duration as f64, the unit of every `*_ms` value.
pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A sample for a target that did not answer at all.
pub(crate) fn unreachable(elapsed: Duration, error: impl Into<String>) -> Sample {
    let latency_ms = millis(elapsed);
    Sample {
        reachable: false,
        ok: false,
        latency_ms,
        values: BTreeMap::from([("latency_ms".to_string(), latency_ms)]),
        labels: BTreeMap::new(),
        error: Some(error.into()),
    }
}

/// The error text for a probe cut off by its timeout.
pub(crate) fn timeout_text(timeout: Duration) -> String {
    format!("timed out after {} ms", timeout.as_millis())
}

/// An error and its sources on one line: client libraries put the useful part ("Connection
/// refused") several `source()` levels down, under generic texts ("error sending request").
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let part = s.to_string();
        // Some errors repeat their source in their own text; don't say it twice.
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cur = s.source();
    }
    text
}

/// Test servers for the probes: raw TCP, so a test shows exactly what is on the wire.
#[cfg(test)]
pub(crate) mod testutil {
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Serves `status` (e.g. `200 OK`) with `body` to every connection on 127.0.0.1:0, reading
    /// the request head first, and returns the address and a log of request heads.
    pub(crate) async fn http_server(
        status: &'static str,
        body: &'static str,
    ) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = log.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    seen.lock().unwrap().push(String::from_utf8_lossy(&buf).into_owned());
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        (addr, log)
    }

    /// An address on which nothing listens: bound, then released.
    pub(crate) async fn closed_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_and_their_runs_can_move_to_tasks() {
        // The runner spawns one task per check: probes and their run futures must be Send +
        // 'static (this would not compile otherwise), and the config shareable.
        let mut p = Probe::Tcp(tcp::TcpProbe::new("127.0.0.1:9"));
        let s = tokio::spawn(async move { p.run(Duration::from_millis(200)).await }).await.unwrap();
        assert!(!s.ok);
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Probe>();
        shareable::<crate::config::AgentConfig>();
    }

    /// Every probe's run future is Send (a compile-time check; never called).
    #[allow(dead_code)]
    fn run_futures_are_send(
        a: &mut http::HttpProbe,
        b: &mut dns::DnsProbe,
        c: &mut postgres::PostgresProbe,
        d: &mut prometheus::PrometheusProbe,
    ) {
        fn send<T: Send>(_: T) {}
        let t = Duration::ZERO;
        send(a.run(t));
        send(b.run(t));
        send(c.run(t));
        send(d.run(t));
    }
}
