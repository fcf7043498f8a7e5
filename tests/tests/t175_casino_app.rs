//! The sandbox's sample casino against a real PostgreSQL primary and streaming standby: login,
//! deposit, withdrawal and spin are real writes (a wallet row and a ledger entry per write, in
//! one transaction) on the primary's app; the standby's app is healthy but refuses writes
//! naming why; the maintenance switch drcut's freeze step flips turns writes away; bad input
//! is refused naming the field; every acknowledged write is in the ledger.

use anyhow::{Context, Result, ensure};
use drcut_tests::PgPair;
use serde_json::{Value, json};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

const BLOCK: u8 = 175;

fn start(region: &str, addr: SocketAddr, dsn: &str) -> Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(drcut_tests::bins::bin_path("drcut-casino")?)
        .args(["--listen", &addr.to_string(), "--region", region, "--db", dsn])
        .kill_on_drop(true)
        .spawn()?)
}

async fn call(http: &reqwest::Client, base: &str, path: &str, body: Value) -> Result<(u16, Value)> {
    let r = http.post(format!("{base}{path}")).body(body.to_string()).send().await?;
    let code = r.status().as_u16();
    Ok((code, serde_json::from_str(&r.text().await?).unwrap_or(Value::Null)))
}

async fn wait_up(http: &reqwest::Client, base: &str) -> Result<Value> {
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{base}/health")).send().await
            && r.status() == 200
        {
            return Ok(serde_json::from_str(&r.text().await?)?);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{base} not healthy within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn casino_writes_on_the_primary_and_refuses_on_the_standby() -> Result<()> {
    let pg = PgPair::start(Ipv4Addr::new(127, 0, BLOCK, 10), Ipv4Addr::new(127, 0, BLOCK, 11)).await?;
    let west: SocketAddr = (Ipv4Addr::new(127, 0, BLOCK, 10), 18080).into();
    let central: SocketAddr = (Ipv4Addr::new(127, 0, BLOCK, 11), 18080).into();
    let _w = start("eu-west", west, &pg.primary_dsn())?;
    let http = drcut_tests::http_server::http_client();
    let (wb, cb) = (format!("http://{west}"), format!("http://{central}"));
    let h = wait_up(&http, &wb).await?;
    ensure!(h["database"] == "primary" && h["region"] == "eu-west", "{h}");
    let _c = start("eu-central", central, &pg.standby_dsn())?;
    let h = wait_up(&http, &cb).await?;
    ensure!(h["database"] == "standby", "{h}");

    tracing::info!("--- a player's session on the primary's app");
    let (code, v) = call(&http, &wb, "/api/login", json!({ "player": "ana" })).await?;
    ensure!(code == 200 && v["balance"] == 0, "login: {code} {v}");
    let (code, v) = call(&http, &wb, "/api/deposit", json!({ "player": "ana", "amount": 100 })).await?;
    ensure!(code == 200 && v["balance"] == 100, "deposit: {code} {v}");
    let entry = v["entry"].as_i64().context("deposit: no ledger entry id")?;
    let (code, v) = call(&http, &wb, "/api/withdrawal", json!({ "player": "ana", "amount": 500 })).await?;
    ensure!(code == 409 && v["error"].as_str().unwrap_or("").contains("too little"), "overdraw: {code} {v}");
    let (code, v) = call(&http, &wb, "/api/spin", json!({ "player": "ana", "bet": 10 })).await?;
    let after = v["balance"].as_i64().context("balance")?;
    ensure!(code == 200 && (after == 90 || after == 110) && (v["win"] == (after == 110)), "spin: {code} {v}");
    let (code, v) = call(&http, &wb, "/api/withdrawal", json!({ "player": "ana", "amount": 50 })).await?;
    ensure!(code == 200 && v["balance"] == after - 50, "withdraw: {code} {v}");

    tracing::info!("--- bad input is refused naming the field");
    let (code, v) = call(&http, &wb, "/api/deposit", json!({ "player": "ana", "amount": "lots" })).await?;
    ensure!(code == 400 && v["error"].as_str().unwrap_or("").starts_with("amount:"), "{code} {v}");
    let (code, v) = call(&http, &wb, "/api/spin", json!({ "bet": 1 })).await?;
    ensure!(code == 400 && v["error"].as_str().unwrap_or("").starts_with("player:"), "{code} {v}");
    let r = http.post(format!("{wb}/api/login")).body("{not json").send().await?;
    ensure!(r.status() == 400, "not JSON: {}", r.status());

    tracing::info!("--- maintenance (drcut's freeze step) turns writes and health away, and back");
    let (code, _) = call(&http, &wb, "/maintenance", json!({ "maintenance": true })).await?;
    ensure!(code == 200);
    ensure!(http.get(format!("{wb}/health")).send().await?.status() == 503, "health in maintenance");
    let (code, v) = call(&http, &wb, "/api/deposit", json!({ "player": "ana", "amount": 1 })).await?;
    ensure!(code == 503 && v["error"].as_str().unwrap_or("").contains("maintenance"), "{code} {v}");
    call(&http, &wb, "/maintenance", json!({ "maintenance": false })).await?;
    wait_up(&http, &wb).await?;

    tracing::info!("--- every acknowledged write is in the ledger, replicated to the standby");
    let stats: Value = serde_json::from_str(&http.get(format!("{wb}/stats")).send().await?.text().await?)?;
    ensure!(stats["acknowledged_writes"] == 3, "deposit, spin, withdrawal acknowledged: {stats}");
    let primary = pg.primary_client().await?;
    let n: i64 = primary.query_one("SELECT count(*) FROM casino_ledger WHERE player = 'ana'", &[]).await?.get(0);
    ensure!(n == 3, "ledger rows: {n}");
    let kind: String = primary.query_one("SELECT kind FROM casino_ledger WHERE id = $1", &[&entry]).await?.get(0);
    ensure!(kind == "deposit", "the entry id answered for the deposit is its ledger row: {kind}");

    tracing::info!("--- journeys' readiness (what a smoke step GETs) and the lobby");
    for path in ["/api/login", "/api/spin", "/api/deposit", "/api/withdrawal", "/api/games"] {
        let r = http.get(format!("{wb}{path}")).send().await?;
        ensure!(r.status() == 200, "GET {path} on the primary's app: {}", r.status());
    }
    let standby = pg.standby_client().await?;
    let mut replicated = false;
    for _ in 0..100 {
        let m: i64 =
            standby.query_one("SELECT count(*) FROM pg_tables WHERE tablename = 'casino_ledger'", &[]).await?.get(0);
        if m == 1 {
            let m: i64 =
                standby.query_one("SELECT count(*) FROM casino_ledger WHERE player = 'ana'", &[]).await?.get(0);
            if m == 3 {
                replicated = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(replicated, "the ledger did not reach the standby");

    tracing::info!("--- the standby's app is healthy but takes no writes, saying why");
    let (code, v) = call(&http, &cb, "/api/deposit", json!({ "player": "ana", "amount": 1 })).await?;
    ensure!(code == 503 && v["error"].as_str().unwrap_or("").contains("read-only"), "standby write: {code} {v}");
    let r = http.get(format!("{cb}/api/spin")).send().await?;
    ensure!(r.status() == 503, "a standby's app is not ready for spins: {}", r.status());
    ensure!(http.get(format!("{cb}/api/games")).send().await?.status() == 200, "the lobby reads anywhere");
    Ok(())
}
