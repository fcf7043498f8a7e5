//! `postgres` checks: is the database there, is it primary or standby, can it write, and how far
//! behind its primary is it (bytes and seconds) — what a cutover gate needs to know.

use super::{Sample, error_chain, millis, timeout_text, unreachable};
use crate::secrets::Secret;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::{Client, Config, NoTls, Statement};

/// Everything about the target in one round trip. The LSNs come as text (`16/B374D848`) to need
/// no pg_lsn type support; they are NULL on a primary.
const TARGET_SQL: &str = "SELECT pg_is_in_recovery(), \
     current_setting('transaction_read_only') = 'off', \
     pg_last_wal_receive_lsn()::text, \
     pg_last_wal_replay_lsn()::text, \
     EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8";

/// The primary's write position, the reference for a standby's lag, and whether a standby
/// acknowledges its commits synchronously (then an unplanned failover to it loses no
/// acknowledged write).
const PRIMARY_SQL: &str = "SELECT pg_current_wal_lsn()::text, \
     EXISTS (SELECT 1 FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum'))";

/// The role a server plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts writes (not in recovery).
    Primary,
    /// In recovery: streaming or replaying WAL.
    Standby,
}

impl Role {
    /// `primary` or `standby`, the label value and the config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }

    /// Parses the config spelling.
    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "primary" => Ok(Role::Primary),
            "standby" => Ok(Role::Standby),
            _ => Err(format!("unknown role {s:?}: expected primary or standby")),
        }
    }
}

/// A named database: the resource name for messages, the parsed DSN, and the session kept
/// between runs (a connect per run would measure the connect, and load the server).
struct Db {
    name: String,
    config: Config,
    sql: &'static str,
    conn: Option<(Client, Statement)>,
}

impl Db {
    fn new(name: &str, dsn: &Secret, sql: &'static str) -> Result<Db, String> {
        let mut config: Config = dsn
            .expose()
            .parse()
            .map_err(|e: tokio_postgres::Error| dsn.redact(&format!("not a valid DSN: {}", error_chain(&e))))?;
        if config.get_application_name().is_none() {
            // Lets a DBA tell the agent's sessions apart in pg_stat_activity.
            config.application_name("drcut-agent");
        }
        Ok(Db { name: name.to_string(), config, sql, conn: None })
    }

    /// Runs the statement on the kept session, connecting first if there is none (or it died).
    async fn query(&mut self) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
        let (client, stmt) = match self.conn.take() {
            Some(conn) if !conn.0.is_closed() => self.conn.insert(conn),
            _ => {
                let (client, connection) = self.config.connect(NoTls).await?;
                // The connection task ends when the client is dropped or the server goes away;
                // the client then reports closed and the next run reconnects.
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                let stmt = client.prepare(self.sql).await?;
                self.conn.insert((client, stmt))
            }
        };
        client.query_one(&*stmt, &[]).await
    }
}

/// Queries a database for role, writability and replication lag, optionally against its primary.
pub struct PostgresProbe {
    // Boxed: a tokio-postgres Config is large, and `Probe` variants should be of similar size.
    target: Box<Db>,
    primary: Option<Box<Db>>,
    expect_role: Option<Role>,
}

impl fmt::Debug for PostgresProbe {
    // By hand: only resource names, never DSNs (they may hold passwords).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresProbe")
            .field("target", &self.target.name)
            .field("primary", &self.primary.as_ref().map(|p| &p.name))
            .field("expect_role", &self.expect_role)
            .finish()
    }
}

impl PostgresProbe {
    /// A probe of the database `target` (name, DSN); with `primary`, lag is measured against
    /// that server's current WAL position.
    pub fn new(
        target: (&str, &Secret),
        primary: Option<(&str, &Secret)>,
        expect_role: Option<Role>,
    ) -> Result<PostgresProbe, String> {
        let target = Box::new(Db::new(target.0, target.1, TARGET_SQL)?);
        let primary = primary.map(|(n, d)| Db::new(n, d, PRIMARY_SQL).map(Box::new)).transpose()?;
        Ok(PostgresProbe { target, primary, expect_role })
    }

    /// Queries once. reachable = session up and query ran; values `latency_ms`, `is_primary`,
    /// `writable`, `receive_lag_bytes`, `replay_lag_bytes`, `lag_bytes`, `lag_seconds`, and,
    /// when the primary answered, `synchronous` (1 when it has a `sync` or `quorum` standby); labels
    /// `role`; ok = the expected role (if any).
    pub async fn run(&mut self, timeout: Duration) -> Sample {
        let start = Instant::now();
        let deadline = start + timeout;
        let row = match tokio::time::timeout_at(deadline, self.target.query()).await {
            Ok(Ok(row)) => row,
            Ok(Err(e)) => {
                self.target.conn = None;
                return unreachable(start.elapsed(), format!("{}: {}", self.target.name, error_chain(&e)));
            }
            Err(_) => {
                // A query cut off mid-flight would leave the next one queued behind it on a hung
                // server: start over with a new session.
                self.target.conn = None;
                return unreachable(start.elapsed(), format!("{}: {}", self.target.name, timeout_text(timeout)));
            }
        };
        let target = match TargetRow::from_row(&row) {
            Ok(t) => t,
            Err(e) => return unreachable(start.elapsed(), format!("{}: {}", self.target.name, error_chain(&e))),
        };
        let mut error = None;
        // Lag of a standby. The primary is asked after the standby, so its position is never
        // older than the standby's: lag may be overstated by the writes in between, never hidden.
        let mut synchronous = None;
        let lag = if target.in_recovery {
            let mut reference = None;
            if let Some(p) = &mut self.primary {
                match tokio::time::timeout_at(deadline, p.query()).await {
                    Ok(Ok(row)) => match (row.try_get::<_, Option<String>>(0), row.try_get::<_, bool>(1)) {
                        (Ok(_), Err(e)) | (Err(e), _) => {
                            error = Some(format!("primary {}: {}", p.name, error_chain(&e)))
                        }
                        (Ok(text), Ok(sync)) => {
                            synchronous = Some(sync);
                            match text {
                                Some(text) => match parse_lsn(&text) {
                                    Some(lsn) => reference = Some(lsn),
                                    None => error = Some(format!("primary {}: cannot parse LSN {text:?}", p.name)),
                                },
                                None => error = Some(format!("primary {}: no WAL position", p.name)),
                            }
                        }
                    },
                    Ok(Err(e)) => {
                        p.conn = None;
                        error = Some(format!("primary {}: {}", p.name, error_chain(&e)));
                    }
                    Err(_) => {
                        p.conn = None;
                        error = Some(format!("primary {}: {}", p.name, timeout_text(timeout)));
                    }
                }
            }
            match standby_lag(target.receive_lsn, target.replay_lsn, reference, target.replay_age_s) {
                Some(l) => Some(l),
                None => {
                    error.get_or_insert_with(|| "standby has not replayed any WAL yet: lag unknown".to_string());
                    None
                }
            }
        } else {
            Some(Lag::default())
        };
        let role = if target.in_recovery { Role::Standby } else { Role::Primary };
        let latency_ms = millis(start.elapsed());
        let mut values = BTreeMap::from([
            ("latency_ms".to_string(), latency_ms),
            ("is_primary".to_string(), if role == Role::Primary { 1.0 } else { 0.0 }),
            ("writable".to_string(), if target.writable { 1.0 } else { 0.0 }),
        ]);
        if let Some(sync) = synchronous {
            values.insert("synchronous".to_string(), if sync { 1.0 } else { 0.0 });
        }
        if let Some(l) = lag {
            values.insert("receive_lag_bytes".to_string(), l.receive_bytes as f64);
            values.insert("replay_lag_bytes".to_string(), l.replay_bytes as f64);
            values.insert("lag_bytes".to_string(), l.replay_bytes as f64);
            values.insert("lag_seconds".to_string(), l.seconds);
        }
        let role_ok = self.expect_role.is_none_or(|r| r == role);
        if !role_ok {
            let want = self.expect_role.map_or("", Role::as_str);
            // The role is the verdict; a primary problem is secondary to it.
            error = Some(format!("role is {}, expected {want}", role.as_str()));
        }
        Sample {
            reachable: true,
            ok: role_ok,
            latency_ms,
            values,
            labels: BTreeMap::from([("role".to_string(), role.as_str().to_string())]),
            error,
        }
    }
}

/// The target's answer to [`TARGET_SQL`].
struct TargetRow {
    in_recovery: bool,
    writable: bool,
    receive_lsn: Option<u64>,
    replay_lsn: Option<u64>,
    replay_age_s: Option<f64>,
}

impl TargetRow {
    fn from_row(row: &tokio_postgres::Row) -> Result<TargetRow, tokio_postgres::Error> {
        let lsn = |i: usize| row.try_get::<_, Option<String>>(i).map(|t| t.as_deref().and_then(parse_lsn));
        Ok(TargetRow {
            in_recovery: row.try_get(0)?,
            writable: row.try_get(1)?,
            receive_lsn: lsn(2)?,
            replay_lsn: lsn(3)?,
            replay_age_s: row.try_get(4)?,
        })
    }
}

/// How far a standby is behind.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Lag {
    receive_bytes: u64,
    replay_bytes: u64,
    seconds: f64,
}

/// Parses a pg_lsn text (`16/B374D848`: high and low 32 bits in hex) to a byte position.
fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// A standby's lag. With the primary's position `primary`, both lags are measured from it (what
/// a cutover would lose); without it, receive lag is 0 and replay lag is what the standby has
/// received but not applied. Seconds: 0 once replay has reached the reference position (an idle
/// primary writes nothing new, so the age of the last replayed transaction would grow forever),
/// else the age of the last replayed transaction. `None` when the standby has no replay position.
/// Pure.
fn standby_lag(
    receive: Option<u64>,
    replay: Option<u64>,
    primary: Option<u64>,
    replay_age_s: Option<f64>,
) -> Option<Lag> {
    let replay = replay?;
    // Without streaming (WAL from an archive) there is no receive position: what was replayed is
    // all that was received.
    let receive = receive.unwrap_or(replay).max(replay);
    let (receive_bytes, replay_bytes, reference) = match primary {
        Some(p) => (p.saturating_sub(receive), p.saturating_sub(replay), p),
        None => (0, receive - replay, receive),
    };
    let seconds =
        if replay >= reference { 0.0 } else { replay_age_s.filter(|s| s.is_finite()).unwrap_or(0.0).max(0.0) };
    Some(Lag { receive_bytes, replay_bytes, seconds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lsns() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn("0/3000148"), Some(0x300_0148));
        assert_eq!(parse_lsn("nope"), None);
        assert_eq!(parse_lsn("1/"), None);
    }

    #[test]
    fn lag_against_the_primary() {
        let l = standby_lag(Some(900), Some(800), Some(1000), Some(12.5)).unwrap();
        assert_eq!((l.receive_bytes, l.replay_bytes, l.seconds), (100, 200, 12.5));
        // Caught up with the primary: no lag, however old the last replayed transaction.
        let l = standby_lag(Some(1000), Some(1000), Some(1000), Some(3600.0)).unwrap();
        assert_eq!(l, Lag { receive_bytes: 0, replay_bytes: 0, seconds: 0.0 });
        // Positions read a moment apart never give a negative lag.
        let l = standby_lag(Some(1010), Some(1005), Some(1000), Some(1.0)).unwrap();
        assert_eq!(l, Lag { receive_bytes: 0, replay_bytes: 0, seconds: 0.0 });
    }

    #[test]
    fn lag_without_the_primary() {
        let l = standby_lag(Some(900), Some(800), None, Some(2.0)).unwrap();
        assert_eq!((l.receive_bytes, l.replay_bytes, l.seconds), (0, 100, 2.0));
        let l = standby_lag(Some(900), Some(900), None, Some(50.0)).unwrap();
        assert_eq!(l.seconds, 0.0);
        // Behind, but no transaction replayed yet: the age is unknown, reported as 0.
        assert_eq!(standby_lag(Some(900), Some(800), None, None).unwrap().seconds, 0.0);
        // No streaming: receive position missing.
        assert_eq!(standby_lag(None, Some(800), None, Some(9.0)).unwrap(), Lag::default());
        assert_eq!(standby_lag(Some(1), None, Some(5), None), None);
    }

    #[test]
    fn roles_parse_and_dsn_errors_hide_the_dsn() {
        assert_eq!(Role::parse("standby").unwrap(), Role::Standby);
        assert!(Role::parse("replica").is_err());
        let bad = Secret::new("host=127.0.0.1 password=pw-xyz port=notaport");
        let e = PostgresProbe::new(("db", &bad), None, None).unwrap_err();
        assert!(e.contains("not a valid DSN") && !e.contains("pw-xyz"), "{e}");
        let good = Secret::new("host=127.0.0.1 user=postgres password=pw-xyz");
        let p = PostgresProbe::new(("db", &good), Some(("pri", &good)), Some(Role::Standby)).unwrap();
        assert!(!format!("{p:?}").contains("pw-xyz"));
    }

    #[tokio::test]
    async fn dead_server_is_unreachable() {
        let addr = crate::checks::testutil::closed_port().await;
        let dsn = Secret::new(format!("host={} port={} user=postgres", addr.ip(), addr.port()));
        let mut p = PostgresProbe::new(("db", &dsn), None, None).unwrap();
        let s = p.run(Duration::from_secs(2)).await;
        assert!(!s.reachable && !s.ok, "{s:?}");
        assert!(s.error.unwrap().starts_with("db: error connecting"));
    }
}
