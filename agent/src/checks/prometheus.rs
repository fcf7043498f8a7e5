//! `prometheus` checks: an instant query against a Prometheus-compatible API, for business SLIs
//! such as a deposit success ratio.

use super::{Sample, error_chain, millis, timeout_text, unreachable};
use reqwest::{Client, Url};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// Bound on the answer read: an instant query for one SLI is small; a mistaken query returning
/// every series must not fill memory.
const MAX_BODY: usize = 4 << 20;

/// Runs `GET {base}/api/v1/query?query=…` and takes the first sample's value.
#[derive(Debug)]
pub struct PrometheusProbe {
    client: Client,
    /// The full query URL, built once.
    url: Url,
}

impl PrometheusProbe {
    /// A probe of `query` against the API at `base` (e.g. `http://127.0.0.1:9090`, or with a
    /// path prefix such as `http://host/prometheus`).
    pub fn new(base: &Url, query: &str) -> Result<PrometheusProbe, String> {
        Ok(PrometheusProbe { client: super::http::build_client()?, url: query_url(base, query)? })
    }

    /// Queries once. reachable = an HTTP answer; ok = status `success` with a non-empty vector or
    /// scalar; values `value` (first sample) and `latency_ms`.
    pub async fn run(&mut self, timeout: Duration) -> Sample {
        let start = Instant::now();
        let exchange = async {
            let mut resp = match self.client.get(self.url.clone()).send().await {
                Ok(r) => r,
                Err(e) => return Err(e),
            };
            let status = resp.status().as_u16();
            // A body error after the status line still means the server answered: reachable.
            let mut body = Vec::new();
            loop {
                match resp.chunk().await {
                    Ok(Some(c)) if body.len() + c.len() > MAX_BODY => {
                        return Ok((status, Err(format!("answer larger than {MAX_BODY} bytes"))));
                    }
                    Ok(Some(c)) => body.extend_from_slice(&c),
                    Ok(None) => return Ok((status, Ok(body))),
                    Err(e) => return Ok((status, Err(format!("reading answer: {}", error_chain(&e.without_url()))))),
                }
            }
        };
        let (status, body) = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if e.is_timeout() => return unreachable(start.elapsed(), timeout_text(timeout)),
            Ok(Err(e)) => return unreachable(start.elapsed(), error_chain(&e.without_url())),
            Err(_) => return unreachable(start.elapsed(), timeout_text(timeout)),
        };
        let latency_ms = millis(start.elapsed());
        let mut values = BTreeMap::from([("latency_ms".to_string(), latency_ms)]);
        let outcome = body.and_then(|b| first_value(status, &b));
        let error = match outcome {
            Ok(v) => {
                values.insert("value".to_string(), v);
                None
            }
            Err(e) => Some(e),
        };
        Sample {
            reachable: true,
            ok: error.is_none(),
            latency_ms,
            values,
            labels: BTreeMap::from([("status".to_string(), status.to_string())]),
            error,
        }
    }
}

/// `{base}/api/v1/query?query=…`, keeping any path prefix of `base`.
fn query_url(base: &Url, query: &str) -> Result<Url, String> {
    let mut url = base.clone();
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    let mut url = url.join("api/v1/query").map_err(|e| format!("{base}: {e}"))?;
    url.query_pairs_mut().clear().append_pair("query", query);
    Ok(url)
}

/// The API's envelope: `{"status": "success"|"error", "data": {...}, "error": "..."}`.
#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

/// The first sample's value from an instant-query answer, or why there is none. Pure.
fn first_value(http_status: u16, body: &[u8]) -> Result<f64, String> {
    let env: Envelope = serde_json::from_slice(body).map_err(|e| {
        let head = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        format!("HTTP {http_status}: not a Prometheus API answer ({e}): {head:?}")
    })?;
    if env.status != "success" {
        return Err(format!(
            "HTTP {http_status}: query failed: {}: {}",
            env.error_type.as_deref().unwrap_or("error"),
            env.error.as_deref().unwrap_or("(no message)")
        ));
    }
    let data = env.data.ok_or_else(|| "answer has no data".to_string())?;
    // vector: [{"metric": {...}, "value": [ts, "v"]}, ...]; scalar: [ts, "v"].
    let pair = match data.result_type.as_str() {
        "vector" => match data.result.as_array().and_then(|a| a.first()) {
            None => return Err("empty result".to_string()),
            Some(s) => s.get("value").cloned().ok_or_else(|| "vector sample has no value".to_string())?,
        },
        "scalar" => data.result,
        other => return Err(format!("result type {other}: expected vector or scalar (an instant query)")),
    };
    let text = pair
        .as_array()
        .and_then(|p| p.get(1))
        .and_then(|v| v.as_str())
        .ok_or_else(|| format!("malformed sample {pair}"))?;
    // Prometheus writes NaN and ±Inf as "NaN", "+Inf", "-Inf", which f64 parsing accepts.
    text.parse::<f64>().map_err(|_| format!("sample value {text:?} is not a number"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::testutil::{closed_port, http_server};

    const VECTOR: &str =
        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000,"0.999"]}]}}"#;

    #[tokio::test]
    async fn vector_answer_gives_value() {
        let (addr, log) = http_server("200 OK", VECTOR).await;
        let base: Url = format!("http://{addr}").parse().unwrap();
        let mut p = PrometheusProbe::new(&base, "sum(rate(deposits_ok[1m])) / sum(rate(deposits_total[1m]))").unwrap();
        let s = p.run(Duration::from_secs(2)).await;
        assert!(s.reachable && s.ok, "{s:?}");
        assert_eq!(s.values["value"], 0.999);
        assert!(s.values.contains_key("latency_ms"));
        let head = log.lock().unwrap()[0].clone();
        assert!(head.starts_with("GET /api/v1/query?query=sum%28rate%28deposits_ok%5B1m%5D%29%29"), "{head}");
    }

    #[tokio::test]
    async fn empty_result_is_not_ok() {
        let (addr, _) =
            http_server("200 OK", r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#).await;
        let mut p = PrometheusProbe::new(&format!("http://{addr}").parse().unwrap(), "up").unwrap();
        let s = p.run(Duration::from_secs(2)).await;
        assert!(s.reachable && !s.ok);
        assert_eq!(s.error.as_deref(), Some("empty result"));
        assert!(!s.values.contains_key("value"));
    }

    #[tokio::test]
    async fn bad_query_and_dead_server() {
        let (addr, _) =
            http_server("400 Bad Request", r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#).await;
        let s = PrometheusProbe::new(&format!("http://{addr}").parse().unwrap(), "up{")
            .unwrap()
            .run(Duration::from_secs(2))
            .await;
        assert!(s.reachable && !s.ok);
        assert!(s.error.unwrap().contains("bad_data: parse error"));
        let dead = closed_port().await;
        let s = PrometheusProbe::new(&format!("http://{dead}").parse().unwrap(), "up")
            .unwrap()
            .run(Duration::from_secs(2))
            .await;
        assert!(!s.reachable && !s.ok);
    }

    #[test]
    fn parses_scalar_and_rejects_matrix() {
        assert_eq!(
            first_value(200, br#"{"status":"success","data":{"resultType":"scalar","result":[1,"2.5"]}}"#),
            Ok(2.5)
        );
        let nan = first_value(200, br#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#);
        assert!(nan.unwrap().is_nan());
        let m = first_value(200, br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#);
        assert!(m.unwrap_err().contains("matrix"));
        assert!(first_value(502, b"<html>bad gateway</html>").unwrap_err().contains("502"));
    }

    #[test]
    fn query_url_keeps_prefix() {
        let u = query_url(&"http://127.0.0.1:9090/prom".parse().unwrap(), "a b").unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:9090/prom/api/v1/query?query=a+b");
        let u = query_url(&"http://127.0.0.1:9090/".parse().unwrap(), "up").unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:9090/api/v1/query?query=up");
    }
}
