//! The real servers the health-check tests run against behave as those tests assume: the
//! PostgreSQL standby streams from the primary and replay can be paused, PowerDNS answers what
//! was last set through its API, and the test HTTP server's latency, errors, body, Prometheus
//! value and availability follow the test's settings.
//!
//! Address block 5: PostgreSQL on 127.0.5.1-2, PowerDNS on 127.0.5.10, HTTP on 127.0.5.20.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Result, ensure};
use drcut_tests::http_server::http_client;
use drcut_tests::{Pdns, PgPair, TestHttp, wait};
use tokio::time::Instant;

/// Upper bound for replication and DNS changes to show.
const WAIT: Duration = Duration::from_secs(20);

/// Whether the standby holds the row with `id` in `t`.
async fn standby_has(pg: &PgPair, id: i32) -> Result<bool> {
    Ok(pg.scalar_standby(&format!("SELECT count(*) FROM t WHERE id = {id}")).await?.as_deref() == Some("1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_standby_streams_and_replay_pauses() -> Result<()> {
    let started = Instant::now();
    let mut pg = PgPair::start(Ipv4Addr::new(127, 0, 5, 1), Ipv4Addr::new(127, 0, 5, 2)).await?;
    tracing::info!(took = ?started.elapsed(), "--- pair started");

    ensure!(pg.scalar_primary("SELECT pg_is_in_recovery()").await?.as_deref() == Some("f"), "primary in recovery");
    ensure!(pg.scalar_standby("SELECT pg_is_in_recovery()").await?.as_deref() == Some("t"), "standby not in recovery");

    tracing::info!("--- a row written on the primary appears on the standby");
    pg.exec_primary("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);").await?;
    wait::until("row 1 on the standby", WAIT, async || {
        ensure!(standby_has(&pg, 1).await?, "not replayed yet");
        Ok(())
    })
    .await?;

    tracing::info!("--- with replay paused, WAL arrives but the row does not appear");
    pg.pause_replay().await?;
    pg.exec_primary("INSERT INTO t VALUES (2)").await?;
    // The insert position, past the commit record: with synchronous_commit off the write
    // position may still be short of it.
    let lsn = pg.scalar_primary("SELECT pg_current_wal_insert_lsn()").await?.unwrap_or_default();
    // Received past the insert: the row's absence is replay paused, not WAL still in flight.
    wait::until("the standby receiving the insert's WAL", WAIT, async || {
        let got = pg.scalar_standby(&format!("SELECT pg_last_wal_receive_lsn() >= '{lsn}'::pg_lsn")).await?;
        ensure!(got.as_deref() == Some("t"), "received only up to before {lsn}");
        Ok(())
    })
    .await?;
    wait::always("row 2 absent from the paused standby", Duration::from_secs(1), async || {
        ensure!(!standby_has(&pg, 2).await?, "row 2 replayed while paused");
        Ok(())
    })
    .await?;
    let replayed = pg.scalar_standby(&format!("SELECT pg_last_wal_replay_lsn() < '{lsn}'::pg_lsn")).await?;
    ensure!(replayed.as_deref() == Some("t"), "replay LSN should lag the primary while paused");

    tracing::info!("--- resumed replay catches up");
    pg.resume_replay().await?;
    wait::until("row 2 on the standby", WAIT, async || {
        ensure!(standby_has(&pg, 2).await?, "not replayed yet");
        Ok(())
    })
    .await?;

    tracing::info!("--- the primary crashes; the standby keeps serving reads, still in recovery");
    pg.stop_primary_immediate().await?;
    ensure!(pg.exec_primary("SELECT 1").await.is_err(), "primary still answers after an immediate stop");
    ensure!(standby_has(&pg, 2).await?, "standby lost row 2");
    ensure!(pg.scalar_standby("SELECT pg_is_in_recovery()").await?.as_deref() == Some("t"), "standby left recovery");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn powerdns_answers_what_was_last_set() -> Result<()> {
    let started = Instant::now();
    let pdns = Pdns::start(Ipv4Addr::new(127, 0, 5, 10)).await?;
    tracing::info!(took = ?started.elapsed(), "--- pdns started");
    pdns.create_zone("gslb.example.").await?;

    let primary = Ipv4Addr::new(192, 0, 2, 1);
    let secondary = [Ipv4Addr::new(198, 51, 100, 1), Ipv4Addr::new(198, 51, 100, 2)];
    ensure!(pdns.query_a("app.gslb.example.").await?.is_empty(), "answer before any record was set");

    tracing::info!("--- an A record set through the API is answered");
    pdns.set_a("app.gslb.example.", &[primary], 5).await?;
    let got = pdns.query_a("app.gslb.example.").await?;
    ensure!(got == [primary], "expected [{primary}], DNS answered {got:?}");

    tracing::info!("--- a replaced record is answered on the next query");
    pdns.set_a("app.gslb.example", &secondary, 5).await?;
    let got = pdns.query_a("app.gslb.example.").await?;
    ensure!(got == secondary, "expected {secondary:?}, DNS answered {got:?}");

    tracing::info!("--- a deleted record is no longer answered; names outside the zone are refused");
    pdns.set_a("app.gslb.example.", &[], 5).await?;
    ensure!(pdns.query_a("app.gslb.example.").await?.is_empty(), "deleted record still answered");
    ensure!(pdns.set_a("app.other.example.", &[primary], 5).await.is_err(), "set_a outside any zone succeeded");

    tracing::info!("--- the API refuses a request without the key");
    let url = format!("{}/api/v1/servers/localhost/zones", pdns.api_url());
    let status = http_client().get(&url).send().await?.status();
    ensure!(status == 401, "API without key answered {status}, expected 401");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_http_follows_its_controls() -> Result<()> {
    let http = TestHttp::start(SocketAddr::from((Ipv4Addr::new(127, 0, 5, 20), 0))).await?;
    let client = http_client();
    let get = async |path: &str| -> Result<(u16, String, Duration)> {
        let t = Instant::now();
        let resp = client.get(http.url(path)).send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?, t.elapsed()))
    };

    tracing::info!("--- healthy by default; the body follows set_body");
    let (status, body, _) = get("/health").await?;
    ensure!(status == 200 && body == "ok", "default /health: {status} {body:?}");
    http.set_body("degraded");
    let (status, body, _) = get("/").await?;
    ensure!(status == 200 && body == "degraded", "/ after set_body: {status} {body:?}");

    tracing::info!("--- latency delays every answer");
    http.set_latency(Duration::from_millis(300));
    let (_, _, took) = get("/health").await?;
    ensure!(took >= Duration::from_millis(300), "answered in {took:?} with 300 ms latency set");
    http.set_latency(Duration::ZERO);
    let (_, _, took) = get("/health").await?;
    ensure!(took < Duration::from_millis(250), "answered in {took:?} with latency cleared");

    tracing::info!("--- an error rate of 0.25 fails exactly every 4th request");
    http.set_error_rate(0.25);
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get("/health").await?.0);
    }
    ensure!(statuses == [200, 200, 200, 500, 200, 200, 200, 500], "statuses at 0.25: {statuses:?}");
    ensure!(http.errors() == 2, "errors counted: {}", http.errors());
    http.set_error_rate(0.0);

    tracing::info!("--- the Prometheus endpoint answers the value set, or no sample");
    let (status, body, _) = get("/api/v1/query?query=up%7Bjob%3D%22app%22%7D").await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(status == 200 && v["data"]["result"] == serde_json::json!([]), "no value set: {status} {body}");
    ensure!(http.last_prom_query().as_deref() == Some(r#"up{job="app"}"#), "query seen: {:?}", http.last_prom_query());
    http.set_prom_value(0.97);
    let (_, body, _) = get("/api/v1/query?query=slo_ratio").await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    ensure!(v["status"] == "success" && v["data"]["resultType"] == "vector", "prom envelope: {body}");
    ensure!(v["data"]["result"][0]["value"][1] == "0.97", "prom value: {body}");
    ensure!(v["data"]["result"][0]["value"][0].as_f64().unwrap_or(0.0) > 1.7e9, "prom timestamp: {body}");
    let resp = client.post(http.url("/api/v1/query")).body("query=slo_post").send().await?;
    ensure!(resp.status() == 200, "POST query: {}", resp.status());
    ensure!(http.last_prom_query().as_deref() == Some("slo_post"), "POST query seen: {:?}", http.last_prom_query());

    tracing::info!("--- down refuses connections and ends requests in flight; up serves again");
    http.set_latency(Duration::from_secs(5));
    let in_flight = tokio::spawn(client.get(http.url("/health")).send());
    wait::until("the slow request to arrive", WAIT, async || {
        ensure!(http.requests() >= 16, "requests so far {}", http.requests());
        Ok(())
    })
    .await?;
    http.set_down(true)?;
    let t = Instant::now();
    ensure!(in_flight.await?.is_err(), "a request in flight survived going down");
    ensure!(t.elapsed() < Duration::from_secs(2), "in-flight request ended only after {:?}", t.elapsed());
    ensure!(get("/health").await.is_err(), "a new request succeeded while down");
    http.set_latency(Duration::ZERO);
    http.set_down(false)?;
    let (status, _, _) = get("/health").await?;
    ensure!(status == 200, "after coming back up: {status}");
    ensure!(http.requests() == 17, "requests counted: {}", http.requests());
    Ok(())
}
