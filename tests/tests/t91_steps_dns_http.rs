//! The agent's DNS and HTTP step executors against real servers: `repoint_clients` and
//! `shift_traffic` rewrite what a real PowerDNS answers (through its API) and verify it with
//! real queries; the RFC 2136 driver updates it with TSIG-signed dynamic updates; `warm_caches`,
//! `smoke` and `hook` drive a real HTTP server and real processes.
//!
//! Executors are called in-process through `drcut_agent::steps::execute`, with resources parsed
//! from an agent config the way the agent loads them (API keys from files).
//!
//! Address block 91: PowerDNS on 127.0.91.20 (and a stale one on .21), HTTP on 127.0.91.30.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_agent::config::{self, AgentConfig, Resources};
use drcut_agent::secrets::Secret;
use drcut_agent::steps::dns::{DriverError, PowerDnsApi, Rfc2136Driver, Split, TrafficDriver, observe_split};
use drcut_agent::steps::{StepContext, StepOutcome, execute};
use drcut_tests::http_server::http_client;
use drcut_tests::{Pdns, TestHttp};
use hickory_resolver::proto::rr::Name;
use serde_json::{Value, json};
use tokio::time::Instant;

const ZONE: &str = "gslb.example.";
const WRONG_KEY: &str = "not-the-pdns-key-91";

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ips(v: &[&str]) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = v.iter().map(|s| ip(s)).collect();
    v.sort();
    v
}

/// An agent config whose resources are the given YAML (under `resources:`), with API keys in
/// files of `dir` next to it, parsed like the agent parses its file.
fn agent_config(dir: &Path, resources: &str) -> Result<AgentConfig> {
    let yaml = format!("agent_id: t91\nregion: eu-west\ncoordinators: [127.0.91.1:7001]\nresources:\n{resources}");
    let file = dir.join("agent.yaml");
    std::fs::write(&file, &yaml)?;
    config::parse(&file.display().to_string(), &yaml).map_err(|e| anyhow::anyhow!("{e}"))
}

/// `dns:` resources for `pdns`: `gslb` with the right key, `gslb-badkey` with a wrong one, and,
/// when given, `gslb-stale`: changes go to `pdns`, answers are read from `stale`.
fn dns_resources(dir: &Path, pdns: &Pdns, stale: Option<SocketAddr>) -> Result<String> {
    std::fs::write(dir.join("pdns-key"), format!("{}\n", pdns.api_key()))?;
    std::fs::write(dir.join("bad-key"), WRONG_KEY)?;
    let one = |name: &str, server: SocketAddr, key: &str| {
        format!(
            "    {name}:\n      server: \"{server}\"\n      api_url: \"{}\"\n      api_key_file: {key}\n",
            pdns.api_url()
        )
    };
    let mut y = format!(
        "  dns:\n{}{}",
        one("gslb", pdns.dns_addr(), "pdns-key"),
        one("gslb-badkey", pdns.dns_addr(), "bad-key")
    );
    if let Some(s) = stale {
        y.push_str(&one("gslb-stale", s, "pdns-key"));
    }
    Ok(y)
}

async fn run(cfg: &AgentConfig, action: &str, params: Value, timeout: Duration) -> StepOutcome {
    run_with(&cfg.resources, action, params, timeout).await
}

async fn run_with(resources: &Resources, action: &str, params: Value, timeout: Duration) -> StepOutcome {
    let ctx = StepContext { resources, timeout };
    let started = Instant::now();
    let o = execute(action, &params, &ctx).await;
    let took = started.elapsed();
    tracing::info!(action, ok = o.ok, ?took, detail = %o.detail, measurements = ?o.measurements, "step");
    o
}

fn measurement(o: &StepOutcome, key: &str) -> Result<f64> {
    o.measurements.get(key).copied().with_context(|| format!("no measurement {key} in {o:?}"))
}

/// The share of `to` over `n` real queries, counted by the harness's own resolver.
async fn share_to(pdns: &Pdns, name: &str, to: &[Ipv4Addr], n: usize) -> Result<f64> {
    let mut hits = 0.0;
    for _ in 0..n {
        let answers = pdns.query_a(name).await?;
        ensure!(!answers.is_empty(), "{name} answered nothing");
        hits += answers.iter().filter(|a| to.contains(a)).count() as f64 / answers.len() as f64;
    }
    Ok(hits / n as f64)
}

/// The RRset types the API holds for `name`.
async fn rrset_types(pdns: &Pdns, name: &str) -> Result<Vec<String>> {
    let zone = pdns.zone(ZONE).await?;
    let mut types: Vec<String> = zone["rrsets"]
        .as_array()
        .context("rrsets")?
        .iter()
        .filter(|r| r["name"] == name)
        .filter_map(|r| r["type"].as_str().map(str::to_string))
        .collect();
    types.sort();
    Ok(types)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repoint_clients_rewrites_and_verifies_the_answer() -> Result<()> {
    let pdns = Pdns::start(ip("127.0.91.20")).await?;
    pdns.create_zone(ZONE).await?;
    let name = "db.gslb.example.";
    pdns.set_a(name, &ips(&["192.0.2.10"]), 5).await?;
    let dir = tempfile::tempdir()?;
    let cfg = agent_config(dir.path(), &dns_resources(dir.path(), &pdns, None)?)?;
    let t = Duration::from_secs(10);

    tracing::info!("--- repoint to two new addresses: PowerDNS answers them, the step saw it");
    let params = json!({"dns": "gslb", "zone": "gslb.example", "name": "db.gslb.example",
        "answers": ["198.51.100.11", "198.51.100.10"]});
    let o = run(&cfg, "repoint_clients", params.clone(), t).await;
    ensure!(o.ok, "{o:?}");
    ensure!(pdns.query_a(name).await? == ips(&["198.51.100.10", "198.51.100.11"]), "PowerDNS answers the new set");
    let (update, converged) = (measurement(&o, "update_ms")?, measurement(&o, "converged_ms")?);
    ensure!(update > 0.0 && converged >= update && converged < 5_000.0, "{o:?}");
    ensure!(o.data["answers"] == json!(["198.51.100.10", "198.51.100.11"]), "{o:?}");
    ensure!(o.detail.contains("PowerDNS API") && !o.detail.contains(pdns.api_key()), "{}", o.detail);
    let zone = pdns.zone(ZONE).await?;
    let ttl = zone["rrsets"].as_array().unwrap().iter().find(|r| r["name"] == name && r["type"] == "A").unwrap()["ttl"]
        .clone();
    ensure!(ttl == 5, "default ttl 5, got {ttl}");

    tracing::info!("--- the same command again (a resend after a leader change) succeeds");
    let o = run(&cfg, "repoint_clients", params, t).await;
    ensure!(o.ok, "{o:?}");

    tracing::info!("--- a zone the server does not have: refused, not retried");
    let o = run(
        &cfg,
        "repoint_clients",
        json!({"dns": "gslb", "zone": "nowhere.example", "name": "db.nowhere.example",
        "answers": ["198.51.100.10"]}),
        t,
    )
    .await;
    ensure!(!o.ok && o.detail.contains("change refused"), "{o:?}");

    tracing::info!("--- a wrong API key: a clear auth failure that shows no key, and no change");
    let o = run(
        &cfg,
        "repoint_clients",
        json!({"dns": "gslb-badkey", "zone": ZONE, "name": name,
        "answers": ["203.0.113.99"]}),
        t,
    )
    .await;
    ensure!(!o.ok, "{o:?}");
    ensure!(o.detail.contains("authentication failed") && o.detail.contains("API key was refused"), "{}", o.detail);
    ensure!(!o.detail.contains(WRONG_KEY) && !o.detail.contains(pdns.api_key()), "a key in {}", o.detail);
    ensure!(pdns.query_a(name).await? == ips(&["198.51.100.10", "198.51.100.11"]), "unchanged after the refusal");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shift_traffic_weights_what_powerdns_answers() -> Result<()> {
    let pdns = Pdns::start(ip("127.0.91.20")).await?;
    pdns.create_zone(ZONE).await?;
    let name = "www.gslb.example.";
    let (from, to) = (ips(&["192.0.2.1"]), ips(&["198.51.100.1"]));
    pdns.set_a(name, &from, 5).await?;
    // A second server that never hears of the changes: what a stale secondary would answer.
    let stale = Pdns::start(ip("127.0.91.21")).await?;
    stale.create_zone(ZONE).await?;
    stale.set_a(name, &from, 5).await?;
    let dir = tempfile::tempdir()?;
    let cfg = agent_config(dir.path(), &dns_resources(dir.path(), &pdns, Some(stale.dns_addr()))?)?;
    let t = Duration::from_secs(20);
    let shift = |dns: &str, percent: u32| {
        json!({"dns": dns, "zone": ZONE, "name": name, "from": ["192.0.2.1"], "to": ["198.51.100.1"],
            "percent": percent, "verify": {"queries": 200, "tolerance": 0.1}})
    };

    tracing::info!("--- 25 %: a weighted LUA record; the step's 200 queries and ours agree");
    let o = run(&cfg, "shift_traffic", shift("gslb", 25), t).await;
    ensure!(o.ok, "{o:?}");
    let observed = measurement(&o, "observed_to_ratio")?;
    ensure!((observed - 0.25).abs() <= 0.1, "observed {observed}");
    ensure!(measurement(&o, "queries")? == 200.0 && measurement(&o, "verify_ms")? > 0.0, "{o:?}");
    ensure!(o.data["percent"] == 25 && o.data["observed"].as_f64() == Some(observed), "{o:?}");
    ensure!(rrset_types(&pdns, name).await? == ["LUA"], "LUA only, the A RRset went in the same PATCH");
    let ours = share_to(&pdns, name, &to, 200).await?;
    ensure!((ours - 0.25).abs() <= 0.1, "the harness saw {ours} to `to`");

    tracing::info!("--- 100 %: a plain A RRset of `to`, every answer");
    let o = run(&cfg, "shift_traffic", shift("gslb", 100), t).await;
    ensure!(o.ok && measurement(&o, "observed_to_ratio")? == 1.0, "{o:?}");
    ensure!(rrset_types(&pdns, name).await? == ["A"], "A only, the LUA RRset went in the same PATCH");
    ensure!(pdns.query_a(name).await? == to);

    tracing::info!("--- 0 % (rollback): every answer `from`");
    let o = run(&cfg, "shift_traffic", shift("gslb", 0), t).await;
    ensure!(o.ok && measurement(&o, "observed_to_ratio")? == 0.0, "{o:?}");
    ensure!(share_to(&pdns, name, &to, 20).await? == 0.0);

    tracing::info!("--- atomic: switching LUA <-> A 20 times while a client queries, never an empty answer");
    let api = PowerDnsApi::new(&pdns.api_url().parse()?, Secret::new(pdns.api_key()), &Name::from_ascii(ZONE)?, t)
        .map_err(anyhow::Error::msg)?;
    let www = Name::from_ascii(name)?;
    let seen = interleaved(
        20,
        async |i| {
            let split = Split::new(&from, &to, if i % 2 == 0 { 50 } else { 100 }).map_err(anyhow::Error::msg)?;
            api.set_split(&www, &split, 5).await?;
            Ok(())
        },
        async || {
            let got = pdns.query_a(name).await?;
            ensure!(got.len() == 1 && (got == from || got == to), "a query saw {got:?} mid-switch");
            Ok(())
        },
    )
    .await?;
    tracing::info!(seen, "queries during the switches");

    tracing::info!("--- verification is real: a server that did not follow fails the step");
    let o = run(&cfg, "shift_traffic", shift("gslb-stale", 100), t).await;
    ensure!(!o.ok && o.detail.contains("expected exactly 100 %"), "{o:?}");
    ensure!(measurement(&o, "observed_to_ratio")? == 0.0, "{o:?}");
    let o = run(
        &cfg,
        "repoint_clients",
        json!({"dns": "gslb-stale", "zone": ZONE, "name": name,
        "answers": ["198.51.100.1"]}),
        Duration::from_secs(2),
    )
    .await;
    ensure!(!o.ok && o.detail.contains("answers [192.0.2.1], expected [198.51.100.1]"), "{o:?}");
    ensure!(o.measurements.contains_key("update_ms") && !o.measurements.contains_key("converged_ms"), "{o:?}");

    tracing::info!("--- repoint after a weighted split drops the LUA RRset too");
    let o = run(&cfg, "shift_traffic", shift("gslb", 50), t).await;
    ensure!(o.ok, "{o:?}");
    let o = run(
        &cfg,
        "repoint_clients",
        json!({"dns": "gslb", "zone": ZONE, "name": name,
        "answers": ["203.0.113.5"]}),
        t,
    )
    .await;
    ensure!(o.ok, "{o:?}");
    ensure!(rrset_types(&pdns, name).await? == ["A"]);
    ensure!(share_to(&pdns, name, &ips(&["203.0.113.5"]), 20).await? == 1.0);
    Ok(())
}

/// Standard base64 (for the TSIG key the PowerDNS API takes).
fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            out.push(if i <= c.len() { T[((n >> (18 - 6 * i)) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

/// Creates TSIG key `key_name` on the server and allows it to update `ZONE`.
async fn enable_tsig(pdns: &Pdns, key_name: &str, key: &[u8]) -> Result<()> {
    let http = http_client();
    let api = format!("{}/api/v1/servers/localhost", pdns.api_url());
    let calls = [
        (
            reqwest::Method::POST,
            format!("{api}/tsigkeys"),
            json!({"name": key_name, "algorithm": "hmac-sha256", "key": base64(key)}),
        ),
        (
            reqwest::Method::PUT,
            format!("{api}/zones/{ZONE}/metadata/TSIG-ALLOW-DNSUPDATE"),
            json!({"metadata": [key_name]}),
        ),
    ];
    for (method, url, body) in calls {
        let resp = http
            .request(method.clone(), &url)
            .header("X-API-Key", pdns.api_key())
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await?;
        let status = resp.status();
        ensure!(status.is_success(), "{method} {url}: {status}: {}", resp.text().await?);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc2136_with_tsig_replaces_atomically_and_refuses_a_wrong_key() -> Result<()> {
    let pdns = Pdns::start(ip("127.0.91.20")).await?;
    pdns.create_zone(ZONE).await?;
    let key: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    enable_tsig(&pdns, "drcut-update", &key).await?;
    let name_text = "api.gslb.example.";
    let name = Name::from_ascii(name_text)?;
    let set_a = ips(&["192.0.2.1", "192.0.2.2"]);
    let set_b = ips(&["198.51.100.1", "198.51.100.2", "198.51.100.3"]);
    pdns.set_a(name_text, &set_a, 5).await?;
    let driver = Rfc2136Driver::new(pdns.dns_addr(), ZONE, "drcut-update", "hmac-sha256", key.clone())
        .map_err(anyhow::Error::msg)?;

    tracing::info!("--- one signed UPDATE replaces the RRset");
    driver.replace_a(&name, &set_b, 5).await?;
    ensure!(pdns.query_a(name_text).await? == set_b, "PowerDNS answers the updated set");

    tracing::info!("--- atomic: 30 replacements while a client queries, never an empty or mixed answer");
    let seen = interleaved(
        30,
        async |i| Ok(driver.replace_a(&name, if i % 2 == 0 { &set_a } else { &set_b }, 5).await?),
        async || {
            let got = pdns.query_a(name_text).await?;
            ensure!(got == set_a || got == set_b, "a query saw {got:?} mid-update");
            Ok(())
        },
    )
    .await?;
    tracing::info!(seen, "queries during the updates");

    tracing::info!("--- a proportional split: 1 of 4 records to `to` is exactly 25 %");
    let split = Split::new(&ips(&["192.0.2.1", "192.0.2.2", "192.0.2.3"]), &ips(&["198.51.100.9"]), 25)
        .map_err(anyhow::Error::msg)?;
    let planned = driver.set_split(&name, &split, 5).await?;
    ensure!(planned == 0.25, "planned {planned}");
    let tally = observe_split(pdns.dns_addr(), &name, &split, 50, Instant::now() + Duration::from_secs(10))
        .await
        .map_err(anyhow::Error::msg)?;
    ensure!(tally.answered == 50 && tally.observed() == 0.25, "{tally:?}");
    tally.judge(25, 0.0).map_err(anyhow::Error::msg)?;

    tracing::info!("--- a wrong TSIG secret: an auth failure at once, and no change");
    let mut bad_key = key.clone();
    bad_key[0] ^= 0xff;
    let bad = Rfc2136Driver::new(pdns.dns_addr(), ZONE, "drcut-update", "hmac-sha256", bad_key)
        .map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let err = bad.replace_a(&name, &ips(&["203.0.113.66"]), 5).await.expect_err("a wrong key must be refused");
    tracing::info!(%err, took = ?started.elapsed(), "wrong key");
    ensure!(matches!(err, DriverError::Auth(_)), "an auth failure, not {err:?}");
    ensure!(started.elapsed() < Duration::from_secs(3), "refused at once, not after retries");
    ensure!(!format!("{err} {err:?} {bad:?}").contains(&base64(&key)), "a key in the error");
    ensure!(pdns.query_a(name_text).await?.len() == 4, "unchanged after the refusal");

    tracing::info!("--- an unknown key name is refused too");
    let unknown = Rfc2136Driver::new(pdns.dns_addr(), ZONE, "no-such-key", "hmac-sha256", key.clone())
        .map_err(anyhow::Error::msg)?;
    let err = unknown.replace_a(&name, &ips(&["203.0.113.66"]), 5).await.expect_err("an unknown key must be refused");
    ensure!(matches!(err, DriverError::Auth(_)), "an auth failure, not {err:?}");
    tracing::info!("--- the step itself through an agent resource with a TSIG key (no API)");
    let dir = tempfile::tempdir()?;
    let b64 = data_encoding::BASE64.encode(&key);
    std::fs::write(dir.path().join("tsig"), format!("{b64}\n"))?;
    let res = format!(
        "  dns:\n    upd:\n      server: \"{}\"\n      tsig_key_name: drcut-update\n      tsig_secret_file: tsig\n",
        pdns.dns_addr()
    );
    let cfg = agent_config(dir.path(), &res)?;
    let o = run(
        &cfg,
        "repoint_clients",
        serde_json::json!({"dns": "upd", "zone": ZONE, "name": name_text, "answers": ["203.0.113.7"]}),
        Duration::from_secs(10),
    )
    .await;
    ensure!(o.ok, "repoint via RFC 2136: {o:?}");
    ensure!(pdns.query_a(name_text).await? == ips(&["203.0.113.7"]), "PowerDNS answers the repointed record");
    ensure!(!format!("{o:?}").contains(&b64), "the TSIG secret never appears");
    Ok(())
}

fn http_resources(http: &TestHttp) -> String {
    format!("  http:\n    app:\n      base_url: \"{}\"\n", http.url("/"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_caches_rounds_until_the_p95_target_holds() -> Result<()> {
    let http = TestHttp::start("127.0.91.30:0".parse()?).await?;
    let dir = tempfile::tempdir()?;
    let cfg = agent_config(dir.path(), &http_resources(&http))?;
    let t = Duration::from_secs(20);

    tracing::info!("--- cold (150 ms) until the cache warms (5 ms after ~1 s): ok once p95 <= 60 ms");
    http.set_latency(Duration::from_millis(150));
    let warm_later = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        http.set_latency(Duration::from_millis(5));
    };
    let before = http.requests();
    let params = json!({"http": "app", "paths": ["/health", "/"], "concurrency": 4, "until_p95_ms": 60,
        "max_duration": "10s"});
    let (o, ()) = tokio::join!(run(&cfg, "warm_caches", params, t), warm_later);
    ensure!(o.ok, "{o:?}");
    let rounds = measurement(&o, "rounds")?;
    ensure!(rounds >= 3.0, "cold rounds then a warm one: {rounds}");
    ensure!(measurement(&o, "p95_ms")? <= 60.0 && measurement(&o, "errors")? == 0.0, "{o:?}");
    // Two paths, concurrency 4: 4 requests per round, all of which reached the server.
    let requests = measurement(&o, "requests")?;
    ensure!(requests == rounds * 4.0, "{o:?}");
    ensure!(http.requests() - before == requests as u64, "server saw {}", http.requests() - before);
    // With 4 in flight, a cold round takes ~150 ms, not 4 x 150 ms.
    ensure!(measurement(&o, "duration_ms")? < 1000.0 + rounds * 400.0, "{o:?}");

    tracing::info!("--- never warm: not ok when max_duration runs out");
    http.set_latency(Duration::from_millis(100));
    let started = Instant::now();
    let o =
        run(&cfg, "warm_caches", json!({"urls": [http.url("/health")], "until_p95_ms": 20, "max_duration": "1s"}), t)
            .await;
    ensure!(!o.ok && o.detail.contains("> 20 ms"), "{o:?}");
    ensure!(started.elapsed() < Duration::from_millis(2500), "stopped near max_duration: {:?}", started.elapsed());
    ensure!(measurement(&o, "p95_ms")? >= 100.0, "{o:?}");

    tracing::info!("--- no target: min_rounds rounds; errors make it not ok");
    http.set_latency(Duration::ZERO);
    let o =
        run(&cfg, "warm_caches", json!({"urls": [http.url("/health")], "min_rounds": 3, "concurrency": 2}), t).await;
    ensure!(o.ok && measurement(&o, "rounds")? == 3.0 && measurement(&o, "requests")? == 6.0, "{o:?}");
    http.set_error_rate(1.0);
    let o = run(&cfg, "warm_caches", json!({"urls": [http.url("/health")]}), t).await;
    ensure!(!o.ok && o.detail.contains("status 500"), "{o:?}");
    ensure!(measurement(&o, "errors")? == 8.0, "{o:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_passes_and_fails_on_real_responses() -> Result<()> {
    let http = TestHttp::start("127.0.91.30:0".parse()?).await?;
    let dir = tempfile::tempdir()?;
    let cfg = agent_config(dir.path(), &http_resources(&http))?;
    let t = Duration::from_secs(10);

    tracing::info!("--- every path answers 200");
    let o = run(&cfg, "smoke", json!({"http": "app", "paths": ["/health", "/"]}), t).await;
    ensure!(o.ok && measurement(&o, "failed")? == 0.0, "{o:?}");
    ensure!(measurement(&o, "latency_ms./health")? > 0.0 && o.measurements.contains_key("latency_ms./"), "{o:?}");

    tracing::info!("--- an unknown path (404) and a dead server fail, and the detail says which");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.91.30:0")?;
        l.local_addr()?
    };
    let o = run(
        &cfg,
        "smoke",
        json!({"urls": [http.url("/health"), http.url("/missing"), format!("http://{dead}/login")]}),
        t,
    )
    .await;
    ensure!(!o.ok && measurement(&o, "failed")? == 2.0, "{o:?}");
    ensure!(o.detail.contains("/missing: status 404") && o.detail.contains(&format!("{dead}/login")), "{}", o.detail);
    ensure!(!o.detail.contains("/health"), "the passing URL is not listed: {}", o.detail);
    let ok_key = format!("latency_ms.{}/health", http.addr());
    ensure!(o.measurements.contains_key(&ok_key), "{:?}", o.measurements.keys().collect::<Vec<_>>());

    tracing::info!("--- expect_status decides: 500 expected passes");
    http.set_error_rate(1.0);
    let o = run(&cfg, "smoke", json!({"http": "app", "paths": ["/health"]}), t).await;
    ensure!(!o.ok && o.detail.contains("status 500, expected [200]"), "{o:?}");
    let o = run(&cfg, "smoke", json!({"http": "app", "paths": ["/health"], "expect_status": [500]}), t).await;
    ensure!(o.ok, "{o:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_programs_and_post_webhooks() -> Result<()> {
    let http = TestHttp::start("127.0.91.30:0".parse()?).await?;
    let none = Resources::default();
    let t = Duration::from_secs(10);

    tracing::info!("--- exec: exit status decides, output is in the detail");
    let o = run_with(&none, "hook", json!({"exec": ["/bin/true"]}), t).await;
    ensure!(o.ok && measurement(&o, "exit_code")? == 0.0, "{o:?}");
    let o = run_with(&none, "hook", json!({"exec": ["/bin/false"]}), t).await;
    ensure!(!o.ok && measurement(&o, "exit_code")? == 1.0, "{o:?}");
    let o = run_with(
        &none,
        "hook",
        json!({"exec": ["/bin/sh", "-c", "echo paging on-call; echo 'no route' >&2; exit 3", "TOKEN-91"]}),
        t,
    )
    .await;
    ensure!(!o.ok && measurement(&o, "exit_code")? == 3.0, "{o:?}");
    ensure!(o.detail.contains("paging on-call") && o.detail.contains("no route"), "{}", o.detail);
    ensure!(!o.detail.contains("TOKEN-91") && !o.detail.contains("echo"), "arguments are not shown: {}", o.detail);

    tracing::info!("--- webhook: 2xx is ok, anything else is not; the path is not shown");
    let o =
        run_with(&none, "hook", json!({"webhook": http.url("/api/v1/query"), "body": {"text": "cutover started"}}), t)
            .await;
    ensure!(o.ok && measurement(&o, "status")? == 200.0, "{o:?}");
    ensure!(!o.detail.contains("/api/v1/query"), "{}", o.detail);
    let o = run_with(&none, "hook", json!({"webhook": http.url("/health")}), t).await;
    ensure!(!o.ok && measurement(&o, "status")? == 405.0, "{o:?}");
    Ok(())
}

/// Runs `change(0..rounds)` while `check` runs in a loop, and returns how many
/// checks ran. Each change waits for two checks to finish after it, so at
/// least one check ran wholly between consecutive changes: the changes alone
/// take a few milliseconds and could otherwise all land between two checks.
async fn interleaved(
    rounds: usize,
    mut change: impl AsyncFnMut(usize) -> Result<()>,
    mut check: impl AsyncFnMut() -> Result<()>,
) -> Result<usize> {
    let done = AtomicBool::new(false);
    let checked = AtomicUsize::new(0);
    let changes = async {
        let result = async {
            for i in 0..rounds {
                change(i).await?;
                let before = checked.load(Ordering::SeqCst);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while checked.load(Ordering::SeqCst) < before + 2 {
                    ensure!(tokio::time::Instant::now() < deadline, "no check ran within 5 s of change {i}");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            Ok(())
        }
        .await;
        done.store(true, Ordering::SeqCst);
        result
    };
    let checks = async {
        while !done.load(Ordering::SeqCst) {
            check().await?;
            checked.fetch_add(1, Ordering::SeqCst);
        }
        Ok::<_, anyhow::Error>(())
    };
    let (changed, checked_ok) = tokio::join!(changes, checks);
    checked_ok?;
    changed?;
    Ok(checked.load(Ordering::SeqCst))
}
