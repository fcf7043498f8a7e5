//! The sandbox's sample "casino": the app one region serves, with the endpoints an online
//! casino's users hit — `POST /api/login`, `/api/spin`, `/api/deposit`, `/api/withdrawal` —
//! each a real write to the region's PostgreSQL (a wallet row and a ledger entry in one
//! transaction, the entry's id in the answer), `GET /api/games` (the lobby, for cache warming),
//! and `GET` on each journey's path: 200 only when that journey would work here now (not in
//! maintenance, the database a writable primary), which is what a playbook's `smoke` step
//! asks. Plus the switches drcut's steps use: `GET /health` and `POST /maintenance`.
//! Active-standby: the app writes to its region's database, which only takes writes while it
//! is the primary, so a cutover moves the writes with the traffic.
//!
//! `drcut-casino --listen IP:PORT --region NAME --db DSN [--dns IP:PORT]`
//!
//! With `--dns`, the DSN's host is a name (the GSLB's database endpoint, e.g.
//! `wallet-db.gslb.example.`) looked up through that DNS server before every request, and the
//! connection is remade when the answer changes: every region's app writes to whichever
//! database the name points at, so a cutover's `repoint_clients` moves all of them at once.

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
    dns: Option<std::net::SocketAddr>,
}

fn args() -> Result<Args> {
    let (mut listen, mut region, mut db, mut dns) = (None, None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(val()?.parse().context("--listen: not an IP:port")?),
            "--region" => region = Some(val()?),
            "--db" => db = Some(val()?),
            "--dns" => dns = Some(val()?.parse().context("--dns: not an IP:port")?),
            other => bail!("unknown flag {other} (use --listen IP:PORT --region NAME --db DSN [--dns IP:PORT])"),
        }
    }
    Ok(Args {
        listen: listen.context("--listen IP:PORT is required")?,
        region: region.context("--region NAME is required")?,
        db: db.context("--db DSN is required")?,
        dns,
    })
}

/// What the app shares between requests.
struct App {
    region: String,
    dsn: tokio_postgres::Config,
    /// With `--dns`: the resolver and the DSN's host name it looks up.
    resolve: Option<(hickory_resolver::TokioResolver, String)>,
    /// One connection and the address it went to, re-made after an error (a promotion, a
    /// fence or a restart ends it) or when the name points elsewhere.
    conn: Mutex<Conn>,
    maintenance: AtomicBool,
    /// Writes the database acknowledged, for the sandbox's summary.
    acked: AtomicU64,
}

type Shared = Arc<App>;

/// Schema of the sample: one wallet per player and an append-only ledger.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS casino_wallet (player text PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE IF NOT EXISTS casino_ledger (id bigserial PRIMARY KEY, player text NOT NULL, kind text NOT NULL,
  amount bigint NOT NULL, region text NOT NULL, at timestamptz NOT NULL DEFAULT now());";

/// The app's database connection.
#[derive(Default)]
struct Conn {
    client: Option<tokio_postgres::Client>,
    /// Where the name pointed when it was made (`None` without `--dns`).
    addr: Option<std::net::IpAddr>,
}

impl App {
    /// The connection, made (again) when there is none, the old one ended (a promotion, a
    /// fence or a restart ends it) or the database's name now points elsewhere.
    async fn db(&self) -> Result<tokio::sync::MappedMutexGuard<'_, tokio_postgres::Client>, String> {
        let addr = match &self.resolve {
            None => None,
            Some((resolver, name)) => {
                let answer =
                    drcut_tests::pdns::query_a_at(resolver, name).await.map_err(|e| format!("database: {e:#}"))?;
                let ip = answer.first().ok_or_else(|| format!("database: {name}: no address"))?;
                Some(std::net::IpAddr::V4(*ip))
            }
        };
        let mut guard = self.conn.lock().await;
        if guard.client.as_ref().is_none_or(|c| c.is_closed()) || guard.addr != addr {
            let mut cfg = self.dsn.clone();
            if let Some(ip) = addr {
                cfg.hostaddr(ip);
            }
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.map_err(|e| format!("database: {e}"))?;
            tokio::spawn(conn);
            *guard = Conn { client: Some(client), addr };
        }
        Ok(tokio::sync::MutexGuard::map(guard, |c| c.client.as_mut().expect("connected above")))
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

/// One wallet change and its ledger entry, in one transaction: the new balance and the entry's
/// id; `None` when the balance would go below zero.
async fn transact(app: &App, player: &str, kind: &str, delta: i64) -> Result<Option<(i64, i64)>, String> {
    let mut c = app.db().await?;
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
        let entry = tx
            .query_one(
                "INSERT INTO casino_ledger (player, kind, amount, region) VALUES ($1, $2, $3, $4) RETURNING id",
                &[&player, &kind, &delta, &app.region],
            )
            .await?;
        tx.commit().await?;
        Ok(Some((row.get::<_, i64>(0), entry.get::<_, i64>(0))))
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
        let c = app.db().await?;
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
        Ok(Some((balance, entry))) => {
            ok(json!({ "player": player, "balance": balance, "entry": entry, "region": app.region }))
        }
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
        Ok(Some((balance, entry))) => {
            ok(json!({ "player": player, "win": win, "balance": balance, "entry": entry, "region": app.region }))
        }
        Ok(None) => refuse(StatusCode::CONFLICT, format!("spin: {player} has no wallet or too little money")),
        Err(e) => refuse(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// A yes/no question to the database, asked only outside maintenance; the refusal otherwise.
async fn ask(app: &App, sql: &str) -> Result<bool, Response> {
    guard(app).map_err(IntoResponse::into_response)?;
    let c = app.db().await.map_err(|e| refuse(StatusCode::SERVICE_UNAVAILABLE, e))?;
    c.query_one(sql, &[])
        .await
        .map(|r| r.get::<_, bool>(0))
        .map_err(|e| refuse(StatusCode::SERVICE_UNAVAILABLE, db_error(e)))
}

/// 200 when the database answers (a standby answers too: the region is healthy, just not
/// active); 503 in maintenance or when the database does not answer.
async fn health(State(app): State<Shared>) -> Response {
    match ask(&app, "SELECT pg_is_in_recovery()").await {
        Ok(standby) => {
            ok(json!({ "status": "ok", "region": app.region, "database": if standby { "standby" } else { "primary" } }))
        }
        Err(refused) => refused,
    }
}

/// Whether a journey would work here now: not in maintenance and the database a primary that
/// takes writes (a fenced primary is read-only). What a `smoke` step's GET asks.
async fn ready(State(app): State<Shared>) -> Response {
    match ask(&app, "SELECT pg_is_in_recovery() OR current_setting('default_transaction_read_only') = 'on'").await {
        Ok(false) => ok(json!({ "ready": true, "region": app.region })),
        Ok(true) => refuse(StatusCode::SERVICE_UNAVAILABLE, "database: read-only here (a standby or fenced)"),
        Err(refused) => refused,
    }
}

/// The lobby: the games on offer (static; what cache warming fetches).
async fn games(State(app): State<Shared>) -> Response {
    ok(json!({ "region": app.region, "games": ["book-of-ra", "starburst", "roulette", "blackjack"] }))
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
        dsn: a.db.parse().context("--db: not a PostgreSQL connection string")?,
        resolve: match a.dns {
            None => None,
            Some(server) => {
                let cfg: tokio_postgres::Config = a.db.parse().context("--db")?;
                let Some(tokio_postgres::config::Host::Tcp(name)) = cfg.get_hosts().first().cloned() else {
                    bail!("--dns needs --db with a host name (host=NAME)");
                };
                Some((drcut_tests::pdns::resolver(server)?, name))
            }
        },
        conn: Mutex::new(Conn::default()),
        maintenance: AtomicBool::new(false),
        acked: AtomicU64::new(0),
    });
    // The schema goes in through the primary; a standby receives it by replication (a standby
    // refuses DDL, which is fine: it has or will have the tables).
    let schema = async { app.db().await?.batch_execute(SCHEMA).await.map_err(db_error) };
    if let Err(e) = schema.await {
        eprintln!("drcut-casino: schema not created here ({e}); expecting it by replication");
    }
    let router = axum::Router::new()
        .route("/health", get(health))
        .route("/api/login", post(login).get(ready))
        .route("/api/deposit", post(deposit).get(ready))
        .route("/api/withdrawal", post(withdraw).get(ready))
        .route("/api/spin", post(spin).get(ready))
        .route("/api/games", get(games))
        .route("/maintenance", post(maintenance))
        .route("/stats", get(stats))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("binding {}", a.listen))?;
    println!("drcut-casino: region {} serving on {}", a.region, a.listen);
    axum::serve(listener, router).await?;
    Ok(())
}
