//! The sandbox's sample "casino": the app one region serves, with the endpoints an online
//! casino's users hit — login, spin, deposit, withdrawal — each a real write to the region's
//! PostgreSQL (a wallet row and a ledger entry in one transaction), plus the switches drcut's
//! steps use: `GET /health` and `POST /maintenance`. Active-standby: the app writes to its
//! region's database, which only takes writes while it is the primary, so a cutover moves the
//! writes with the traffic.
//!
//! `drcut-casino --listen IP:PORT --region NAME --db DSN`

use anyhow::{Context, Result, bail};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::Mutex;

struct Args {
    listen: std::net::SocketAddr,
    region: String,
    db: String,
}

fn args() -> Result<Args> {
    let (mut listen, mut region, mut db) = (None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(val()?.parse().context("--listen: not an IP:port")?),
            "--region" => region = Some(val()?),
            "--db" => db = Some(val()?),
            other => bail!("unknown flag {other} (use --listen IP:PORT --region NAME --db DSN)"),
        }
    }
    Ok(Args {
        listen: listen.context("--listen IP:PORT is required")?,
        region: region.context("--region NAME is required")?,
        db: db.context("--db DSN is required")?,
    })
}

/// What the app shares between requests.
struct App {
    region: String,
    dsn: String,
    /// One connection, re-made after an error (a promotion, a fence or a restart ends it).
    conn: Mutex<Option<tokio_postgres::Client>>,
    maintenance: AtomicBool,
    /// Writes the database acknowledged, for the sandbox's summary.
    acked: AtomicU64,
}

type Shared = Arc<App>;

/// Schema of the sample: one wallet per player and an append-only ledger.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS casino_wallet (player text PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE IF NOT EXISTS casino_ledger (id bigserial PRIMARY KEY, player text NOT NULL, kind text NOT NULL,
  amount bigint NOT NULL, region text NOT NULL, at timestamptz NOT NULL DEFAULT now());";

impl App {
    /// The connection, made (again) when there is none or the old one ended (a promotion, a
    /// fence or a restart ends it).
    async fn db(&self) -> Result<tokio::sync::MutexGuard<'_, Option<tokio_postgres::Client>>, String> {
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let (client, conn) = tokio_postgres::connect(&self.dsn, tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("database: {e}"))?;
            tokio::spawn(conn);
            *guard = Some(client);
        }
        Ok(guard)
    }
}

/// The database's own words for an error.
fn db_error(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("database: {}", d.message()),
        None => format!("database: {e}"),
    }
}

fn reply(code: StatusCode, v: Value) -> Response {
    (code, [(axum::http::header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn ok(v: Value) -> Response {
    reply(StatusCode::OK, v)
}

fn refuse(code: StatusCode, msg: impl Into<String>) -> Response {
    reply(code, json!({ "error": msg.into() }))
}

/// A refused request: its status and why (a `Response` is too big to pass around in errors).
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        refuse(self.0, self.1)
    }
}

/// The request body as JSON; a 400 naming the problem otherwise.
fn parse(b: &Bytes) -> Result<Value, Refusal> {
    serde_json::from_slice(b).map_err(|e| Refusal(StatusCode::BAD_REQUEST, format!("body: not JSON: {e}")))
}

/// Player and amount from a JSON body; a clear 400 naming the field otherwise.
fn input(body: &Value, amount_field: Option<&str>) -> Result<(String, i64), Refusal> {
    let player = body["player"].as_str().filter(|p| !p.is_empty() && p.len() <= 64).ok_or_else(|| {
        Refusal(StatusCode::BAD_REQUEST, "player: a non-empty name of at most 64 characters is required".into())
    })?;
    let amount = match amount_field {
        None => 0,
        Some(f) => body[f].as_i64().filter(|a| (1..=1_000_000).contains(a)).ok_or_else(|| {
            Refusal(StatusCode::BAD_REQUEST, format!("{f}: a whole number from 1 to 1000000 is required"))
        })?,
    };
    Ok((player.to_string(), amount))
}

/// One wallet change and its ledger entry, in one transaction; `None` when the balance would go
/// below zero.
async fn transact(app: &App, player: &str, kind: &str, delta: i64) -> Result<Option<i64>, String> {
    let mut guard = app.db().await?;
    let c = guard.as_mut().expect("connected");
    let r = async {
        let tx = c.transaction().await?;
        let row = tx
            .query_opt(
                "UPDATE casino_wallet SET balance = balance + $2 WHERE player = $1 AND balance + $2 >= 0 \
                 RETURNING balance",
                &[&player, &delta],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        tx.execute(
            "INSERT INTO casino_ledger (player, kind, amount, region) VALUES ($1, $2, $3, $4)",
            &[&player, &kind, &delta, &app.region],
        )
        .await?;
        tx.commit().await?;
        Ok(Some(row.get::<_, i64>(0)))
    }
    .await
    .map_err(db_error)?;
    if r.is_some() {
        app.acked.fetch_add(1, Ordering::Relaxed);
    }
    Ok(r)
}

fn guard(app: &App) -> Result<(), Refusal> {
    if app.maintenance.load(Ordering::Relaxed) {
        return Err(Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "maintenance: the platform is moving regions, retry shortly".into(),
        ));
    }
    Ok(())
}

async fn login(State(app): State<Shared>, b: Bytes) -> Response {
    let (player, _) = match guard(&app).and_then(|_| parse(&b)).and_then(|body| input(&body, None)) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let r = async {
        let mut guard = app.db().await?;
        let c = guard.as_mut().expect("connected");
        c.execute(
            "INSERT INTO casino_wallet (player, balance) VALUES ($1, 0) ON CONFLICT (player) DO NOTHING",
            &[&player],
        )
        .await
        .map_err(db_error)?;
        let row =
            c.query_one("SELECT balance FROM casino_wallet WHERE player = $1", &[&player]).await.map_err(db_error)?;
        Ok::<i64, String>(row.get::<_, i64>(0))
    }
    .await;
    match r {
        Ok(balance) => ok(json!({ "player": player, "balance": balance, "region": app.region })),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn money(app: Shared, b: Bytes, kind: &str, field: &str, sign: i64) -> Response {
    let (player, amount) = match guard(&app).and_then(|_| parse(&b)).and_then(|body| input(&body, Some(field))) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    match transact(&app, &player, kind, sign * amount).await {
        Ok(Some(balance)) => ok(json!({ "player": player, "balance": balance, "region": app.region })),
        Ok(None) => refuse(StatusCode::CONFLICT, format!("{kind}: {player} has no wallet or too little money")),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn deposit(State(app): State<Shared>, b: Bytes) -> Response {
    money(app, b, "deposit", "amount", 1).await
}

async fn withdraw(State(app): State<Shared>, b: Bytes) -> Response {
    money(app, b, "withdrawal", "amount", -1).await
}

/// A bet: lost or doubled, the outcome drawn here (the sample needs writes, not fairness).
async fn spin(State(app): State<Shared>, b: Bytes) -> Response {
    let (player, bet) = match guard(&app).and_then(|_| parse(&b)).and_then(|body| input(&body, Some("bet"))) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let win = rand::random::<bool>();
    match transact(&app, &player, if win { "spin-win" } else { "spin-loss" }, if win { bet } else { -bet }).await {
        Ok(Some(balance)) => ok(json!({ "player": player, "win": win, "balance": balance, "region": app.region })),
        Ok(None) => refuse(StatusCode::CONFLICT, format!("spin: {player} has no wallet or too little money")),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// 200 when the database answers (a standby answers too: the region is healthy, just not
/// active); 503 in maintenance or when the database does not answer.
async fn health(State(app): State<Shared>) -> Response {
    if let Err(r) = guard(&app) {
        return r.into_response();
    }
    let r = async {
        let mut guard = app.db().await?;
        let c = guard.as_mut().expect("connected");
        c.query_one("SELECT pg_is_in_recovery()", &[]).await.map(|r| r.get::<_, bool>(0)).map_err(db_error)
    }
    .await;
    match r {
        Ok(standby) => {
            ok(json!({ "status": "ok", "region": app.region, "database": if standby { "standby" } else { "primary" } }))
                .into_response()
        }
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// drcut's freeze and unfreeze steps flip this (`{"maintenance": true|false}`).
async fn maintenance(State(app): State<Shared>, b: Bytes) -> Response {
    let body = match parse(&b) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let Some(on) = body["maintenance"].as_bool() else {
        return refuse(StatusCode::BAD_REQUEST, "maintenance: true or false is required");
    };
    app.maintenance.store(on, Ordering::Relaxed);
    ok(json!({ "maintenance": on }))
}

async fn stats(State(app): State<Shared>) -> Response {
    ok(json!({
        "region": app.region,
        "acknowledged_writes": app.acked.load(Ordering::Relaxed),
        "maintenance": app.maintenance.load(Ordering::Relaxed),
    }))
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let app = Arc::new(App {
        region: a.region.clone(),
        dsn: a.db.clone(),
        conn: Mutex::new(None),
        maintenance: AtomicBool::new(false),
        acked: AtomicU64::new(0),
    });
    // The schema goes in through the primary; a standby receives it by replication (a standby
    // refuses DDL, which is fine: it has or will have the tables).
    let schema = async { app.db().await?.as_mut().expect("connected").batch_execute(SCHEMA).await.map_err(db_error) };
    if let Err(e) = schema.await {
        eprintln!("drcut-casino: schema not created here ({e}); expecting it by replication");
    }
    let router = axum::Router::new()
        .route("/health", get(health))
        .route("/login", post(login))
        .route("/deposit", post(deposit))
        .route("/withdraw", post(withdraw))
        .route("/spin", post(spin))
        .route("/maintenance", post(maintenance))
        .route("/stats", get(stats))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("binding {}", a.listen))?;
    println!("drcut-casino: region {} serving on {}", a.region, a.listen);
    axum::serve(listener, router).await?;
    Ok(())
}
