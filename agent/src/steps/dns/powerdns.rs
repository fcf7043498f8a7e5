//! [`PowerDnsApi`]: a [`TrafficDriver`] over the PowerDNS Authoritative HTTP API.
//!
//! Every change is one `PATCH /api/v1/servers/localhost/zones/ZONE` carrying all the RRsets
//! it touches: PowerDNS applies a PATCH in one backend transaction and purges its caches for
//! the zone, so a query sees either the old answers or the new ones, never a name without
//! records in between.

use super::{DriverError, Split, TrafficDriver};
use crate::checks::error_chain;
use crate::secrets::Secret;
use hickory_proto::rr::Name;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use reqwest::{Client, StatusCode, Url};
use serde_json::{Value, json};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

/// How much of an error body is quoted: PowerDNS errors are one sentence.
const MAX_ERROR_TEXT: usize = 300;

/// One zone on a PowerDNS server, changed through its API.
pub struct PowerDnsApi {
    client: Client,
    /// `{api}/api/v1/servers/localhost/zones/{zone}`.
    zone_url: Url,
    api_key: Secret,
    /// Bound on one API call.
    timeout: Duration,
}

impl fmt::Debug for PowerDnsApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PowerDnsApi").field("zone_url", &self.zone_url.as_str()).field("api_key", &"***").finish()
    }
}

impl PowerDnsApi {
    /// A driver for `zone` (absolute) on the server whose webserver is at `api_url` (the base
    /// URL; a trailing `/api/v1` is accepted too), authenticating with `api_key`.
    pub fn new(api_url: &Url, api_key: Secret, zone: &Name, timeout: Duration) -> Result<PowerDnsApi, String> {
        let base = api_url.as_str().trim_end_matches('/');
        let base = base.strip_suffix("/api/v1").unwrap_or(base);
        let zone_url = Url::parse(&format!("{base}/api/v1/servers/localhost/zones/{}", zone.to_lowercase()))
            .map_err(|e| format!("cannot build the zone URL from {api_url}: {e}"))?;
        if HeaderValue::from_str(api_key.expose()).is_err() {
            return Err("the API key contains characters not allowed in an HTTP header".into());
        }
        let client = crate::checks::http::build_client()?;
        Ok(PowerDnsApi { client, zone_url, api_key, timeout })
    }

    /// Sends one PATCH with `rrsets`; 204 is success.
    async fn patch(&self, rrsets: Vec<Value>) -> Result<(), DriverError> {
        let body = json!({ "rrsets": rrsets }).to_string();
        let mut key = HeaderValue::from_str(self.api_key.expose())
            .map_err(|_| DriverError::Rejected("the API key is not a valid header value".into()))?;
        // Kept out of hyper's Debug output.
        key.set_sensitive(true);
        let req = self
            .client
            .patch(self.zone_url.clone())
            .header("X-API-Key", key)
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        let exchange = async {
            let resp = req.send().await?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            Ok::<_, reqwest::Error>((status, text))
        };
        let at = format!("PowerDNS API PATCH {}", self.zone_url);
        let (status, text) = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(DriverError::Unavailable(format!("{at}: {}", error_chain(&e.without_url())))),
            Err(_) => {
                return Err(DriverError::Unavailable(format!(
                    "{at}: no answer within {} ms",
                    self.timeout.as_millis()
                )));
            }
        };
        judge(status, &self.api_key.redact(&text)).map_err(|e| match e {
            DriverError::Auth(m) => DriverError::Auth(format!("{at}: {m}")),
            DriverError::Rejected(m) => DriverError::Rejected(format!("{at}: {m}")),
            DriverError::Unavailable(m) => DriverError::Unavailable(format!("{at}: {m}")),
        })
    }
}

impl TrafficDriver for PowerDnsApi {
    fn describe(&self) -> String {
        format!("PowerDNS API {}", self.zone_url.origin().ascii_serialization())
    }

    /// One PATCH: the A RRset replaced, and any LUA RRset of the name (a weighted split left by
    /// `shift_traffic`) deleted, so the name answers exactly `ips`.
    async fn replace_a(&self, name: &Name, ips: &[Ipv4Addr], ttl: u32) -> Result<(), DriverError> {
        let contents: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
        self.patch(vec![replace(name, "A", ttl, &contents), delete(name, "LUA")]).await
    }

    /// 0 % and 100 %: a plain A RRset (see [`Self::replace_a`]). In between: one PATCH replacing
    /// the LUA RRset with a `pickwrandom` over [`Split::weights`] and deleting the A RRset, so
    /// every answer comes from the weighted record.
    async fn set_split(&self, name: &Name, split: &Split, ttl: u32) -> Result<f64, DriverError> {
        if let Some(side) = split.plain() {
            self.replace_a(name, side, ttl).await?;
        } else {
            self.patch(vec![replace(name, "LUA", ttl, &[split.lua_content()]), delete(name, "A")]).await?;
        }
        Ok(f64::from(split.percent()) / 100.0)
    }
}

fn replace(name: &Name, rtype: &str, ttl: u32, contents: &[String]) -> Value {
    let records: Vec<Value> = contents.iter().map(|c| json!({ "content": c, "disabled": false })).collect();
    let name = name.to_lowercase().to_string();
    json!({ "name": name, "type": rtype, "ttl": ttl, "changetype": "REPLACE", "records": records })
}

fn delete(name: &Name, rtype: &str) -> Value {
    json!({ "name": name.to_lowercase().to_string(), "type": rtype, "changetype": "DELETE" })
}

/// The outcome of an API answer: 204 (or another 2xx) is success; 401 and 403 are a wrong key
/// (never retried); other 4xx are a refused change (a name outside the zone, an unknown zone,
/// bad content); 5xx is the server's trouble (retry later). `text` is already redacted.
fn judge(status: StatusCode, text: &str) -> Result<(), DriverError> {
    let code = status.as_u16();
    let why = error_text(text);
    // PowerDNS often answers just the reason phrase ("Not Found"): nothing to add then.
    let why = if status.canonical_reason().is_some_and(|r| r.eq_ignore_ascii_case(&why)) { String::new() } else { why };
    let with_why = |s: String| if why.is_empty() { s } else { format!("{s}: {why}") };
    match code {
        200..=299 => Ok(()),
        401 | 403 => {
            Err(DriverError::Auth(format!("HTTP {status}: the API key was refused (check the dns resource's api_key)")))
        }
        404 => Err(DriverError::Rejected(with_why(format!("HTTP {status}: no such zone on the server")))),
        400..=499 => Err(DriverError::Rejected(with_why(format!("HTTP {status}: the change was refused")))),
        _ => Err(DriverError::Unavailable(with_why(format!("HTTP {status}")))),
    }
}

/// PowerDNS answers errors as `{"error": "..."}`; anything else is quoted, shortened.
fn error_text(text: &str) -> String {
    let text = match serde_json::from_str::<Value>(text) {
        Ok(v) => v.get("error").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| text.to_string()),
        Err(_) => text.to_string(),
    };
    let text = text.trim().replace(['\n', '\r'], " ");
    match text.char_indices().nth(MAX_ERROR_TEXT) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert!(judge(StatusCode::NO_CONTENT, "").is_ok());
        let e = judge(StatusCode::UNAUTHORIZED, "Unauthorized").unwrap_err();
        assert!(matches!(e, DriverError::Auth(_)) && e.to_string().contains("API key was refused"), "{e}");
        let e = judge(StatusCode::UNPROCESSABLE_ENTITY, r#"{"error": "Name 'x.other.' is out of zone"}"#).unwrap_err();
        assert!(matches!(e, DriverError::Rejected(_)) && e.to_string().ends_with("is out of zone"), "{e}");
        let e = judge(StatusCode::INTERNAL_SERVER_ERROR, "boom").unwrap_err();
        assert!(matches!(e, DriverError::Unavailable(_)), "{e}");
        assert_eq!(error_text(&"x".repeat(400)).chars().count(), MAX_ERROR_TEXT + 1);
    }

    #[test]
    fn rrsets_are_lower_case_and_absolute() {
        let n = Name::from_ascii("Wallet.GSLB.example.").unwrap();
        assert_eq!(delete(&n, "LUA")["name"], "wallet.gslb.example.");
        let r = replace(&n, "A", 5, &["192.0.2.1".into()]);
        assert_eq!(r["records"][0]["content"], "192.0.2.1");
        assert_eq!(r["changetype"], "REPLACE");
    }

    #[test]
    fn zone_url_and_debug() {
        let zone = Name::from_ascii("gslb.example.").unwrap();
        let key = Secret::new("k-123");
        for base in ["http://127.0.0.1:8081", "http://127.0.0.1:8081/", "http://127.0.0.1:8081/api/v1"] {
            let api = PowerDnsApi::new(&base.parse().unwrap(), key.clone(), &zone, Duration::from_secs(1)).unwrap();
            assert_eq!(api.zone_url.as_str(), "http://127.0.0.1:8081/api/v1/servers/localhost/zones/gslb.example.");
            assert!(!format!("{api:?}").contains("k-123"));
        }
    }
}
