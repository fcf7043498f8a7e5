//! `repoint_clients` and `shift_traffic`: change what an authoritative DNS server answers for a
//! name, then verify it by asking that server, the way clients' resolvers will (DESIGN §4).
//!
//! Changes go through a [`TrafficDriver`]:
//! - [`PowerDnsApi`]: the PowerDNS HTTP API; weighted answers are LUA records
//!   (`pickwrandom`), one address per reply.
//! - [`Rfc2136Driver`]: RFC 2136 dynamic updates signed with TSIG; weighted answers are
//!   proportional record sets (see [`Split::proportional`] for the granularity limit).
//!
//! Steps use the driver their `dns` resource configures: the PowerDNS API (`api_url` +
//! `api_key`) when present, else RFC 2136 signed with the resource's TSIG key
//! (`tsig_key_name`, `tsig_algorithm`, `tsig_secret_env`/`_file`, base64).
//!
//! # `repoint_clients`
//! `{dns, zone, name, answers: [ip…], ttl?: 5}`: replaces the A RRset of `name` with `answers`
//! (and drops any weighted LUA RRset of the name, in the same change), then queries the
//! resource's server (no cache, no recursion) until its answer set is exactly `answers`.
//! Measurements: `update_ms` (the change), `converged_ms` (from the start of the change until
//! the server first answered the new set). Data: `{"answers": [...]}`.
//!
//! # `shift_traffic`
//! `{dns, zone, name, from: [ip…], to: [ip…], percent: 0..=100, ttl?: 5,
//! verify?: {queries?: 200, tolerance?: 0.1}}`: ONE phase. Sets the weights (`percent` % of
//! answers to `to`, the rest to `from`), then sends `queries` queries to the server and counts
//! the answers in `to`. The observed share must be within `tolerance` (absolute) of
//! `percent / 100`; at 0 % and 100 % it must be exact. Measurements: `observed_to_ratio`,
//! `planned_to_ratio`, `queries`, `update_ms`, `verify_ms`. Data: `{"percent", "observed"}`.
//! Phases, dwell times and SLO gates are the coordinator's; rollback is `percent: 0`.
//!
//! Both steps are idempotent: a repeated command writes the same RRsets again.
//!
//! Every params object may carry `inputs` (outputs of earlier steps); these steps ignore it.

mod powerdns;
mod rfc2136;
mod split;

pub use powerdns::PowerDnsApi;
pub use rfc2136::{DEFAULT_UPDATE_TIMEOUT, Rfc2136Driver};
pub use split::{Split, Tally};

use super::{StepContext, StepOutcome, budget, parse_params};
use crate::checks::dns::DnsProbe;
use crate::checks::millis;
use crate::config::DnsResource;
use hickory_proto::rr::Name;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::json;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::time::Instant;

/// TTL of written records when the step does not say: short, so resolvers follow a move fast.
pub const DEFAULT_TTL: u32 = 5;
/// Queries `shift_traffic` sends to verify a split.
pub const DEFAULT_VERIFY_QUERIES: u32 = 200;
/// Allowed absolute difference between the observed and the planned share.
pub const DEFAULT_TOLERANCE: f64 = 0.1;
/// Bound on one verifying query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between convergence polls.
const POLL: Duration = Duration::from_millis(50);
/// Bound on one API call.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a driver could not make a change; the variants tell the caller whether to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The credentials were refused (API key, TSIG key): never retry, fix the key.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server refused the change (a name outside the zone, an unknown zone, a policy):
    /// never retry, fix the input or the server's config.
    #[error("change refused: {0}")]
    Rejected(String),
    /// The server did not answer, or failed: retry later.
    #[error("server unavailable: {0}")]
    Unavailable(String),
}

/// Something that can rewrite the address records of names in one zone. Each call is one
/// atomic change on the server: queries see the old answers or the new ones, never neither.
pub trait TrafficDriver {
    /// One line naming the driver and its server, for step details (no secrets).
    fn describe(&self) -> String;

    /// Makes `name` answer exactly `ips` (its A RRset, nothing weighted).
    fn replace_a(
        &self,
        name: &Name,
        ips: &[Ipv4Addr],
        ttl: u32,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Makes `name` answer according to `split`; returns the share of `to` the written records
    /// give (exactly `percent / 100` where the driver can weight, the nearest reachable share
    /// where it cannot).
    fn set_split(&self, name: &Name, split: &Split, ttl: u32) -> impl Future<Output = Result<f64, DriverError>> + Send;
}

/// Either driver, chosen per resource (the trait's async methods are not object safe).
pub enum AnyDriver {
    /// PowerDNS HTTP API.
    Api(PowerDnsApi),
    /// RFC 2136 with TSIG.
    Update(Rfc2136Driver),
}

impl TrafficDriver for AnyDriver {
    fn describe(&self) -> String {
        match self {
            AnyDriver::Api(d) => d.describe(),
            AnyDriver::Update(d) => d.describe(),
        }
    }

    async fn replace_a(&self, name: &Name, ips: &[Ipv4Addr], ttl: u32) -> Result<(), DriverError> {
        match self {
            AnyDriver::Api(d) => d.replace_a(name, ips, ttl).await,
            AnyDriver::Update(d) => d.replace_a(name, ips, ttl).await,
        }
    }

    async fn set_split(&self, name: &Name, split: &Split, ttl: u32) -> Result<f64, DriverError> {
        match self {
            AnyDriver::Api(d) => d.set_split(name, split, ttl).await,
            AnyDriver::Update(d) => d.set_split(name, split, ttl).await,
        }
    }
}

/// Executes `action` if it belongs to this module.
pub async fn execute(action: &str, params: &serde_json::Value, ctx: &StepContext<'_>) -> Option<StepOutcome> {
    let outcome = match action {
        "repoint_clients" => repoint_clients(params, ctx).await,
        "shift_traffic" => shift_traffic(params, ctx).await,
        _ => return None,
    };
    Some(outcome.unwrap_or_else(|e| StepOutcome::failed(format!("{action}: {e}"))))
}

// === params ===

fn default_ttl() -> u32 {
    DEFAULT_TTL
}

fn default_queries() -> u32 {
    DEFAULT_VERIFY_QUERIES
}

fn default_tolerance() -> f64 {
    DEFAULT_TOLERANCE
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RepointParams {
    dns: String,
    zone: String,
    name: String,
    answers: Vec<String>,
    #[serde(default = "default_ttl")]
    ttl: u32,
    #[serde(default, rename = "inputs")]
    _inputs: IgnoredAny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShiftParams {
    dns: String,
    zone: String,
    name: String,
    from: Vec<String>,
    to: Vec<String>,
    percent: u32,
    #[serde(default = "default_ttl")]
    ttl: u32,
    #[serde(default)]
    verify: Option<VerifyParams>,
    #[serde(default, rename = "inputs")]
    _inputs: IgnoredAny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyParams {
    #[serde(default = "default_queries")]
    queries: u32,
    #[serde(default = "default_tolerance")]
    tolerance: f64,
}

/// The part both steps share: which server, which zone, which name.
struct Target<'a> {
    resource: &'a DnsResource,
    resource_name: &'a str,
    zone: Name,
    name: Name,
}

impl<'a> Target<'a> {
    fn new(ctx: &'a StepContext<'_>, dns: &'a str, zone: &str, name: &str) -> Result<Target<'a>, String> {
        let resource = ctx.resources.dns.get(dns).ok_or_else(|| {
            let known: Vec<&str> = ctx.resources.dns.keys().map(String::as_str).collect();
            let known = if known.is_empty() { "none defined".to_string() } else { known.join(", ") };
            format!("param dns: no dns resource named {dns:?} (known: {known})")
        })?;
        let zone = rfc2136::absolute(zone).map_err(|e| format!("param zone: {e}"))?;
        let name = rfc2136::absolute(name).map_err(|e| format!("param name: {e}"))?;
        if !zone.zone_of(&name) {
            return Err(format!("param name: {name} is not in zone {zone}"));
        }
        Ok(Target { resource, resource_name: dns, zone, name })
    }

    /// The resource's driver: its PowerDNS API when it has one, else RFC 2136 with its TSIG key.
    fn driver(&self, budget: Duration) -> Result<AnyDriver, String> {
        if let (Some(url), Some(key)) = (&self.resource.api_url, &self.resource.api_key) {
            return PowerDnsApi::new(url, key.clone(), &self.zone, API_TIMEOUT.min(budget))
                .map(AnyDriver::Api)
                .map_err(|e| format!("dns resource {:?}: {e}", self.resource_name));
        }
        let Some(tsig) = &self.resource.tsig else {
            return Err(format!(
                "dns resource {:?} has neither api_url + api_key (PowerDNS API) nor tsig_key_name + \
                 tsig_secret (RFC 2136): it cannot change DNS",
                self.resource_name
            ));
        };
        let key = data_encoding::BASE64
            .decode(tsig.secret.expose().trim().as_bytes())
            .map_err(|_| format!("dns resource {:?}: the TSIG secret is not base64", self.resource_name))?;
        Rfc2136Driver::new(self.resource.server, &self.zone.to_string(), &tsig.name, &tsig.algorithm, key)
            .map(|d| AnyDriver::Update(d.with_timeout(API_TIMEOUT.min(budget))))
            .map_err(|e| format!("dns resource {:?}: {e}", self.resource_name))
    }
}

/// Parses a list of IPv4 addresses; errors name `param[i]`.
fn ipv4_list(param: &str, list: &[String]) -> Result<Vec<Ipv4Addr>, String> {
    list.iter()
        .enumerate()
        .map(|(i, s)| s.trim().parse().map_err(|_| format!("param {param}[{i}]: {s:?} is not an IPv4 address")))
        .collect()
}

// === repoint_clients ===

async fn repoint_clients(params: &serde_json::Value, ctx: &StepContext<'_>) -> Result<StepOutcome, String> {
    let start = Instant::now();
    let deadline = start + budget(ctx.timeout);
    let p: RepointParams = parse_params(params)?;
    let target = Target::new(ctx, &p.dns, &p.zone, &p.name)?;
    let mut answers = ipv4_list("answers", &p.answers)?;
    answers.sort();
    answers.dedup();
    if answers.is_empty() {
        return Err("param answers: list at least one address".into());
    }
    let driver = target.driver(deadline.saturating_duration_since(Instant::now()))?;
    let name = &target.name;

    driver.replace_a(name, &answers, p.ttl).await.map_err(|e| format!("{name}: {e}"))?;
    let update_ms = millis(start.elapsed());
    let mut measurements = BTreeMap::from([("update_ms".to_string(), update_ms)]);
    let want: Vec<String> = answers.iter().map(Ipv4Addr::to_string).collect();
    let data = json!({ "answers": want });
    let server = target.resource.server;
    match converge(server, name, &want, deadline).await {
        Ok(()) => {
            let converged_ms = millis(start.elapsed());
            measurements.insert("converged_ms".to_string(), converged_ms);
            Ok(StepOutcome {
                ok: true,
                detail: format!(
                    "{name} A -> [{}] via {}; {server} answers it after {converged_ms:.0} ms",
                    want.join(", "),
                    driver.describe()
                ),
                measurements,
                data,
            })
        }
        Err(e) => Ok(StepOutcome {
            ok: false,
            detail: format!("{name} A -> [{}] written via {}, but {e}", want.join(", "), driver.describe()),
            measurements,
            data,
        }),
    }
}

/// Asks `server` until its A answer set for `name` is exactly `want` (normalised, sorted).
async fn converge(server: SocketAddr, name: &Name, want: &[String], deadline: Instant) -> Result<(), String> {
    let start = Instant::now();
    let mut probe = DnsProbe::new(server, &name.to_string(), "A", Some(want), QUERY_TIMEOUT)?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let sample = probe.run(QUERY_TIMEOUT.min(left).max(Duration::from_millis(1))).await;
        if sample.ok {
            return Ok(());
        }
        if Instant::now() + POLL >= deadline {
            return Err(format!(
                "{server} did not answer the new set within {} ms (last reply: {})",
                start.elapsed().as_millis(),
                sample.error.as_deref().unwrap_or("?")
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

// === shift_traffic ===

async fn shift_traffic(params: &serde_json::Value, ctx: &StepContext<'_>) -> Result<StepOutcome, String> {
    let start = Instant::now();
    let deadline = start + budget(ctx.timeout);
    let p: ShiftParams = parse_params(params)?;
    let target = Target::new(ctx, &p.dns, &p.zone, &p.name)?;
    let (queries, tolerance) = match &p.verify {
        Some(v) => (v.queries, v.tolerance),
        None => (DEFAULT_VERIFY_QUERIES, DEFAULT_TOLERANCE),
    };
    if !(1..=10_000).contains(&queries) {
        return Err(format!("param verify.queries: {queries} is not in 1..=10000"));
    }
    if !(0.0..=1.0).contains(&tolerance) {
        return Err(format!("param verify.tolerance: {tolerance} is not in 0..=1 (an absolute share)"));
    }
    let percent = u8::try_from(p.percent)
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| format!("param percent: {} is not in 0..=100", p.percent))?;
    let split = Split::new(&ipv4_list("from", &p.from)?, &ipv4_list("to", &p.to)?, percent)
        .map_err(|e| format!("param {e}"))?;
    let driver = target.driver(deadline.saturating_duration_since(Instant::now()))?;
    let name = &target.name;

    let planned = driver.set_split(name, &split, p.ttl).await.map_err(|e| format!("{name}: {e}"))?;
    let update_ms = millis(start.elapsed());
    let verify_start = Instant::now();
    let server = target.resource.server;
    let tally = observe_split(server, name, &split, queries, deadline).await;
    let verify_ms = millis(verify_start.elapsed());
    let mut measurements = BTreeMap::from([
        ("update_ms".to_string(), update_ms),
        ("verify_ms".to_string(), verify_ms),
        ("planned_to_ratio".to_string(), planned),
        ("queries".to_string(), f64::from(queries)),
    ]);
    let written = format!("{name}: {percent} % to [{}] via {}", join(split.to()), driver.describe());
    let tally = match tally {
        Ok(t) => t,
        Err(e) => {
            return Ok(StepOutcome {
                ok: false,
                detail: format!("{written}, but {e}"),
                measurements,
                ..Default::default()
            });
        }
    };
    let observed = tally.observed();
    measurements.insert("observed_to_ratio".to_string(), observed);
    let data = json!({ "percent": percent, "observed": observed });
    let seen = format!("{server} answered {:.1} % to `to` over {} replies", observed * 100.0, tally.answered);
    Ok(match tally.judge(percent, tolerance) {
        Ok(()) => StepOutcome { ok: true, detail: format!("{written}; {seen}"), measurements, data },
        Err(e) => StepOutcome { ok: false, detail: format!("{written}, but {e}"), measurements, data },
    })
}

/// Sends `queries` A queries for `name` to `server` (uncached, one at a time) and tallies each
/// reply's share of `split.to()`. Works for both drivers: a LUA record answers one address per
/// reply (share 0 or 1), a proportional RRset answers all of them (share `k / n`). Stops early,
/// with an error, if `deadline` passes first.
pub async fn observe_split(
    server: SocketAddr,
    name: &Name,
    split: &Split,
    queries: u32,
    deadline: Instant,
) -> Result<Tally, String> {
    let mut probe = DnsProbe::new(server, &name.to_string(), "A", None, QUERY_TIMEOUT)?;
    let mut tally = Tally::default();
    for i in 0..queries {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("verification ran out of time after {i} of {queries} queries"));
        }
        let sample = probe.run(QUERY_TIMEOUT.min(left)).await;
        if !sample.reachable {
            tally.lost += 1;
            continue;
        }
        let reply = match (&sample.error, sample.labels.get("answers")) {
            (None, Some(list)) => list
                .split(',')
                .map(|s| s.parse::<Ipv4Addr>().map_err(|_| format!("answer {s:?} is not an IPv4 address")))
                .collect::<Result<Vec<_>, _>>()
                .and_then(|answers| split.share_of(&answers)),
            (Some(e), _) => Err(e.clone()),
            (None, None) => Err("no answers".to_string()),
        };
        match reply {
            Ok(share) => {
                tally.answered += 1;
                tally.to_share_sum += share;
            }
            Err(e) => {
                tally.wrong += 1;
                tally.first_wrong.get_or_insert(e);
            }
        }
    }
    Ok(tally)
}

fn join(ips: &[Ipv4Addr]) -> String {
    ips.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Resources;
    use crate::secrets::Secret;

    fn ctx_with(resources: &Resources) -> StepContext<'_> {
        StepContext { resources, timeout: Duration::from_secs(5) }
    }

    fn resources() -> Resources {
        let mut r = Resources::default();
        r.dns.insert(
            "gslb".into(),
            DnsResource {
                server: "127.0.0.1:1".parse().unwrap(),
                api_url: Some("http://127.0.0.1:1".parse().unwrap()),
                api_key: Some(Secret::new("k")),
                tsig: None,
            },
        );
        r.dns.insert(
            "plain".into(),
            DnsResource { server: "127.0.0.1:1".parse().unwrap(), api_url: None, api_key: None, tsig: None },
        );
        r
    }

    async fn fail(action: &str, params: serde_json::Value) -> String {
        let r = resources();
        let o = execute(action, &params, &ctx_with(&r)).await.expect("handled");
        assert!(!o.ok, "{o:?}");
        o.detail
    }

    #[tokio::test]
    async fn bad_params_name_the_param() {
        let base = json!({"dns": "gslb", "zone": "gslb.example", "name": "db.gslb.example", "answers": ["192.0.2.1"]});
        let with = |k: &str, v: serde_json::Value| {
            let mut p = base.clone();
            p[k] = v;
            p
        };
        let d = fail("repoint_clients", with("ttl", json!("five"))).await;
        assert!(d.starts_with("repoint_clients: param ttl: invalid type"), "{d}");
        let d = fail("repoint_clients", with("answerz", json!([]))).await;
        assert!(d.contains("unknown field `answerz`"), "{d}");
        let d = fail("repoint_clients", with("answers", json!(["192.0.2.1", "nope"]))).await;
        assert!(d.contains("param answers[1]: \"nope\" is not an IPv4 address"), "{d}");
        let d = fail("repoint_clients", with("name", json!("db.elsewhere.example"))).await;
        assert!(d.contains("param name: db.elsewhere.example. is not in zone gslb.example."), "{d}");
        let d = fail("repoint_clients", with("dns", json!("nope"))).await;
        assert!(d.contains("param dns: no dns resource named \"nope\" (known: gslb, plain)"), "{d}");
        let d = fail("repoint_clients", with("dns", json!("plain"))).await;
        assert!(d.contains("has neither api_url + api_key"), "{d}");
        let d = fail("repoint_clients", json!(null)).await;
        assert!(d.contains("missing field `dns`"), "{d}");

        let shift = json!({"dns": "gslb", "zone": "gslb.example", "name": "www.gslb.example",
            "from": ["192.0.2.1"], "to": ["198.51.100.1"], "percent": 25});
        let with = |k: &str, v: serde_json::Value| {
            let mut p = shift.clone();
            p[k] = v;
            p
        };
        assert!(
            fail("shift_traffic", with("percent", json!(101))).await.contains("param percent: 101 is not in 0..=100")
        );
        assert!(
            fail("shift_traffic", with("to", json!(["192.0.2.1"])))
                .await
                .contains("param to: 192.0.2.1 is also in from")
        );
        let d = fail("shift_traffic", with("verify", json!({"queries": 0}))).await;
        assert!(d.contains("param verify.queries: 0 is not in 1..=10000"), "{d}");
        let d = fail("shift_traffic", with("verify", json!({"tolerence": 0.2}))).await;
        assert!(d.contains("param verify.tolerence: unknown field `tolerence`"), "{d}");
        // `inputs` from earlier steps is accepted and ignored: this fails later, at the server.
        let d = fail("shift_traffic", with("inputs", json!({"lsn": "0/1"}))).await;
        assert!(d.contains("server unavailable"), "{d}");
        assert!(!d.contains("\"k\""), "{d}");
    }

    #[tokio::test]
    async fn other_actions_are_not_claimed() {
        let r = resources();
        assert!(execute("smoke", &json!({}), &ctx_with(&r)).await.is_none());
    }

    #[test]
    fn budget_leaves_a_margin() {
        assert_eq!(budget(Duration::from_secs(30)), Duration::from_secs(29));
        assert_eq!(budget(Duration::from_secs(2)), Duration::from_millis(1800));
    }
}
