//! `http` checks: one request with a reused client; the status and (optionally) the body decide.

use super::{Sample, error_chain, millis, timeout_text, unreachable};
use reqwest::header::HeaderMap;
use reqwest::{Client, Method, Url};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use tokio::time::Instant;

/// How much of a body is read: enough for a health page, bounded so a huge or endless body
/// cannot hold the probe (the timeout bounds time, this bounds memory).
const MAX_BODY: usize = 1 << 20;

/// Sends one request per run with a client kept for the probe's life (connection reuse, like
/// the clients whose experience it measures).
pub struct HttpProbe {
    client: Client,
    method: Method,
    url: Url,
    /// Configured headers, including `Authorization` (marked sensitive) when a token is set.
    headers: HeaderMap,
    /// Accepted statuses; empty means any 2xx or 3xx.
    expect_status: Vec<u16>,
    body_contains: Option<String>,
}

impl fmt::Debug for HttpProbe {
    // By hand: the headers may carry a bearer token, and only the header names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpProbe")
            .field("method", &self.method)
            .field("url", &self.url.as_str())
            .field("headers", &self.headers.keys().map(|k| k.as_str()).collect::<Vec<_>>())
            .field("expect_status", &self.expect_status)
            .field("body_contains", &self.body_contains)
            .finish()
    }
}

impl HttpProbe {
    /// A probe sending `method url` with `headers`. `expect_status` empty accepts 200..=399.
    pub fn new(
        method: Method,
        url: Url,
        headers: HeaderMap,
        expect_status: Vec<u16>,
        body_contains: Option<String>,
    ) -> Result<HttpProbe, String> {
        let client = build_client()?;
        Ok(HttpProbe { client, method, url, headers, expect_status, body_contains })
    }

    /// Sends the request. reachable = any HTTP response; ok = the status is accepted and the body
    /// contains `body_contains`; values `latency_ms`; labels `status`.
    pub async fn run(&mut self, timeout: Duration) -> Sample {
        let start = Instant::now();
        let req = self.client.request(self.method.clone(), self.url.clone()).headers(self.headers.clone());
        let exchange = async {
            let mut resp = req.send().await?;
            let status = resp.status().as_u16();
            // Read the body even without body_contains: a drained response lets the connection
            // be reused; a body error after the status still means the server answered.
            let mut body = Vec::new();
            let body_err = loop {
                match resp.chunk().await {
                    Ok(Some(c)) => {
                        let room = MAX_BODY - body.len();
                        body.extend_from_slice(&c[..c.len().min(room)]);
                        if body.len() >= MAX_BODY {
                            break None;
                        }
                    }
                    Ok(None) => break None,
                    Err(e) => break Some(error_chain(&e.without_url())),
                }
            };
            Ok::<_, reqwest::Error>((status, body, body_err))
        };
        let (status, body, body_err) = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let text = if e.is_timeout() { timeout_text(timeout) } else { error_chain(&e.without_url()) };
                return unreachable(start.elapsed(), format!("{} {}: {text}", self.method, self.url));
            }
            Err(_) => {
                return unreachable(
                    start.elapsed(),
                    format!("{} {}: {}", self.method, self.url, timeout_text(timeout)),
                );
            }
        };
        let latency_ms = millis(start.elapsed());
        let status_ok = if self.expect_status.is_empty() {
            (200..=399).contains(&status)
        } else {
            self.expect_status.contains(&status)
        };
        let mut error = None;
        if !status_ok {
            error = Some(if self.expect_status.is_empty() {
                format!("status {status}, expected 2xx or 3xx")
            } else {
                format!("status {status}, expected one of {:?}", self.expect_status)
            });
        } else if let Some(e) = body_err {
            error = Some(format!("reading body: {e}"));
        } else if let Some(needle) = &self.body_contains
            && !contains(&body, needle.as_bytes())
        {
            error = Some(format!("body does not contain {needle:?}"));
        }
        Sample {
            reachable: true,
            ok: error.is_none(),
            latency_ms,
            values: BTreeMap::from([("latency_ms".to_string(), latency_ms)]),
            labels: BTreeMap::from([("status".to_string(), status.to_string())]),
            error,
        }
    }
}

/// The client every HTTP-speaking probe uses (http, prometheus).
pub(crate) fn build_client() -> Result<Client, String> {
    // reqwest panics when building a client without an installed rustls provider.
    crate::tls::install_crypto_provider();
    Client::builder()
        // A probe measures the target itself: no proxy from the environment, and a redirect
        // is an answer (3xx counts as ok by default), not something to follow elsewhere.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("drcut-agent/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(2)
        .build()
        .map_err(|e| format!("cannot build HTTP client: {}", error_chain(&e)))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::testutil::{closed_port, http_server};
    use reqwest::header::{AUTHORIZATION, HeaderValue};

    fn probe(url: &str, expect: Vec<u16>, body: Option<&str>) -> HttpProbe {
        HttpProbe::new(Method::GET, url.parse().unwrap(), HeaderMap::new(), expect, body.map(str::to_string)).unwrap()
    }

    #[tokio::test]
    async fn status_200_is_ok() {
        let (addr, log) = http_server("200 OK", "all ok").await;
        let mut p = probe(&format!("http://{addr}/health"), vec![], Some("ok"));
        let s = p.run(Duration::from_secs(2)).await;
        assert!(s.reachable && s.ok, "{s:?}");
        assert_eq!(s.labels["status"], "200");
        assert!(s.values["latency_ms"] > 0.0);
        assert!(log.lock().unwrap()[0].starts_with("GET /health HTTP/1.1"));
    }

    #[tokio::test]
    async fn status_500_is_reachable_but_not_ok() {
        let (addr, _) = http_server("500 Internal Server Error", "boom").await;
        let mut p = probe(&format!("http://{addr}/"), vec![], None);
        let s = p.run(Duration::from_secs(2)).await;
        assert!(s.reachable && !s.ok, "{s:?}");
        assert_eq!(s.labels["status"], "500");
        assert!(s.error.unwrap().contains("500"));
    }

    #[tokio::test]
    async fn expect_status_and_body_decide() {
        let (addr, _) = http_server("503 Service Unavailable", "draining").await;
        let s = probe(&format!("http://{addr}/"), vec![503], None).run(Duration::from_secs(2)).await;
        assert!(s.ok, "{s:?}");
        let s = probe(&format!("http://{addr}/"), vec![503], Some("ready")).run(Duration::from_secs(2)).await;
        assert!(s.reachable && !s.ok);
        assert!(s.error.unwrap().contains("ready"));
    }

    #[tokio::test]
    async fn closed_port_is_unreachable() {
        let addr = closed_port().await;
        let s = probe(&format!("http://{addr}/"), vec![], None).run(Duration::from_secs(2)).await;
        assert!(!s.reachable && !s.ok, "{s:?}");
        assert!(s.error.unwrap().to_lowercase().contains("refused"));
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        // Accepts and never answers: the probe must give up at its timeout.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let start = Instant::now();
        let s = probe(&format!("http://{addr}/"), vec![], None).run(Duration::from_millis(200)).await;
        assert!(start.elapsed() < Duration::from_millis(1000));
        assert!(!s.reachable);
        assert!(s.error.unwrap().contains("timed out"));
    }

    #[tokio::test]
    async fn headers_are_sent_and_token_not_debugged() {
        let (addr, log) = http_server("200 OK", "").await;
        let mut h = HeaderMap::new();
        let mut v = HeaderValue::from_static("Bearer tok-123");
        v.set_sensitive(true);
        h.insert(AUTHORIZATION, v);
        h.insert("x-env", HeaderValue::from_static("prod"));
        let mut p = HttpProbe::new(Method::HEAD, format!("http://{addr}/").parse().unwrap(), h, vec![], None).unwrap();
        assert!(!format!("{p:?}").contains("tok-123"));
        let s = p.run(Duration::from_secs(2)).await;
        assert!(s.ok, "{s:?}");
        let head = log.lock().unwrap()[0].to_lowercase();
        assert!(
            head.starts_with("head / ")
                && head.contains("authorization: bearer tok-123")
                && head.contains("x-env: prod")
        );
    }
}
