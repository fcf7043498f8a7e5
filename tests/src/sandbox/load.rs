//! The sandbox's players: a few tasks that log in, then spin, deposit and withdraw without end,
//! resolving `wallet.gslb.example.` through the GSLB for every request (no cache, as a client
//! honouring a short TTL would), so they follow each phase of a traffic shift. Every answer is
//! recorded: an acknowledged write carries its ledger entry's id, which is how the sandbox
//! counts what a cutover lost.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The name the players resolve.
pub const APP_NAME: &str = "wallet.gslb.example.";

/// What one request came to.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A write the app acknowledged: its ledger entry and the region that served it.
    Acked { entry: i64, region: String },
    /// Refused for the player's balance (a business answer, not an outage).
    Refused,
    /// Anything else: why, in a few words.
    Failed(String),
}

/// Every request so far, by time since the load started.
#[derive(Debug, Default, Clone)]
pub struct LoadLog {
    /// `(since start, outcome)`, in completion order.
    pub requests: Vec<(Duration, Outcome)>,
}

impl LoadLog {
    /// The requests that completed within `[from, to]`.
    pub fn window(&self, from: Duration, to: Duration) -> impl Iterator<Item = &(Duration, Outcome)> {
        self.requests.iter().filter(move |(t, _)| *t >= from && *t <= to)
    }

    /// Acknowledged entries within the window.
    pub fn acked(&self, from: Duration, to: Duration) -> Vec<i64> {
        self.window(from, to)
            .filter_map(|(_, o)| match o {
                Outcome::Acked { entry, .. } => Some(*entry),
                _ => None,
            })
            .collect()
    }

    /// Acknowledged writes per serving region within the window.
    pub fn by_region(&self, from: Duration, to: Duration) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (_, o) in self.window(from, to) {
            if let Outcome::Acked { region, .. } = o {
                *out.entry(region.clone()).or_default() += 1;
            }
        }
        out
    }

    /// Failed requests within the window, grouped by reason, most frequent first.
    pub fn failures(&self, from: Duration, to: Duration) -> Vec<(String, usize)> {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for (_, o) in self.window(from, to) {
            if let Outcome::Failed(why) = o {
                *m.entry(why.clone()).or_default() += 1;
            }
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        v
    }

    /// The longest stretch within the window with no acknowledged write: what a player felt.
    pub fn longest_gap(&self, from: Duration, to: Duration) -> Duration {
        let mut last = from;
        let mut gap = Duration::ZERO;
        for (t, o) in self.window(from, to) {
            if matches!(o, Outcome::Acked { .. }) {
                gap = gap.max(t.saturating_sub(last));
                last = *t;
            }
        }
        gap.max(to.saturating_sub(last))
    }

    /// Per `bucket` of the window: the share (0–100) of acknowledged writes `region` served,
    /// `None` for a bucket without any.
    pub fn share(&self, region: &str, from: Duration, to: Duration, bucket: Duration) -> Vec<Option<u32>> {
        let n = ((to.saturating_sub(from)).as_millis() / bucket.as_millis().max(1)) as usize + 1;
        let mut counts = vec![(0u32, 0u32); n];
        for (t, o) in self.window(from, to) {
            if let Outcome::Acked { region: r, .. } = o {
                let i = (t.saturating_sub(from).as_millis() / bucket.as_millis().max(1)) as usize;
                let c = &mut counts[i.min(n - 1)];
                c.1 += 1;
                if r == region {
                    c.0 += 1;
                }
            }
        }
        counts.into_iter().map(|(mine, all)| (all > 0).then(|| mine * 100 / all)).collect()
    }
}

/// The running players.
pub struct Load {
    started: Instant,
    log: Arc<Mutex<LoadLog>>,
    /// Off once the show is over: the players go on, the sandbox stops keeping every answer.
    recording: Arc<AtomicBool>,
    /// Each player's pause between requests, in milliseconds.
    pause_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `players` players against the GSLB at `dns`, each pausing `pause` between
    /// requests.
    pub fn start(dns: SocketAddr, players: usize, pause: Duration) -> anyhow::Result<Load> {
        let log = Arc::new(Mutex::new(LoadLog::default()));
        let recording = Arc::new(AtomicBool::new(true));
        let pause_ms = Arc::new(AtomicU64::new(pause.as_millis() as u64));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for n in 0..players {
            let player = Player {
                name: format!("player-{}", n + 1),
                resolver: crate::pdns::resolver(dns)?,
                http: crate::http_server::http_client(),
                log: log.clone(),
                recording: recording.clone(),
                started,
            };
            let (stop, pause) = (stop.clone(), pause_ms.clone());
            tasks.push(tokio::spawn(async move { player.play(stop, pause).await }));
        }
        Ok(Load { started, log, recording, pause_ms, stop, tasks })
    }

    /// Time since the load started (the clock of [`LoadLog`]).
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> LoadLog {
        self.log.lock().expect("load log").clone()
    }

    /// Stops keeping answers, and slows the players to `pause` between requests: a sandbox
    /// left running for days should not fill the disk with ledger rows.
    pub fn idle(&self, pause: Duration) {
        self.recording.store(false, Ordering::SeqCst);
        self.pause_ms.store(pause.as_millis() as u64, Ordering::SeqCst);
    }

    /// Stops the players.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

struct Player {
    name: String,
    resolver: hickory_resolver::TokioResolver,
    http: reqwest::Client,
    log: Arc<Mutex<LoadLog>>,
    recording: Arc<AtomicBool>,
    started: Instant,
}

impl Player {
    async fn play(self, stop: Arc<AtomicBool>, pause_ms: Arc<AtomicU64>) {
        let mut funded = false;
        let mut turn = 0u64;
        while !stop.load(Ordering::SeqCst) {
            turn += 1;
            let (path, body) = if !funded {
                ("/api/deposit", json!({ "player": self.name, "amount": 1000 }))
            } else {
                match turn % 8 {
                    0 | 1 => ("/api/deposit", json!({ "player": self.name, "amount": 20 })),
                    2 => ("/api/withdrawal", json!({ "player": self.name, "amount": 10 })),
                    _ => ("/api/spin", json!({ "player": self.name, "bet": 10 })),
                }
            };
            if !funded {
                // A wallet first (idempotent); a failure shows in the deposit that follows.
                let _ = self.request("/api/login", json!({ "player": self.name })).await;
            }
            let outcome = self.request(path, body).await;
            if matches!(outcome, Outcome::Acked { .. }) {
                funded = true;
            }
            if self.recording.load(Ordering::Relaxed) {
                self.log.lock().expect("load log").requests.push((self.started.elapsed(), outcome));
            }
            tokio::time::sleep(Duration::from_millis(pause_ms.load(Ordering::Relaxed))).await;
        }
    }

    async fn request(&self, path: &str, body: Value) -> Outcome {
        let ip = match crate::pdns::query_a_at(&self.resolver, APP_NAME).await {
            Ok(ips) if !ips.is_empty() => ips[0],
            _ => return Outcome::Failed("DNS: no answer".into()),
        };
        let url = format!("http://{ip}:{}{path}", super::world::CASINO_PORT);
        let send = self.http.post(url).body(body.to_string()).timeout(Duration::from_secs(2)).send();
        let r = match send.await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Outcome::Failed("timed out".into()),
            Err(_) => return Outcome::Failed("connection failed".into()),
        };
        let code = r.status().as_u16();
        let v: Value = r.text().await.ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null);
        match (code, v["entry"].as_i64()) {
            (200, Some(entry)) => Outcome::Acked { entry, region: v["region"].as_str().unwrap_or("?").to_string() },
            (200, None) => Outcome::Failed("200 without a ledger entry".into()),
            (409, _) => Outcome::Refused,
            (c, _) => Outcome::Failed(format!("{c} {}", reason(v["error"].as_str().unwrap_or("")))),
        }
    }
}

/// An app's error message cut to its gist, so equal causes group together.
fn reason(msg: &str) -> String {
    let gist: String = msg.split([':', ',']).take(2).collect::<Vec<_>>().join(":");
    gist.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(ms: u64, region: &str) -> (Duration, Outcome) {
        (Duration::from_millis(ms), Outcome::Acked { entry: ms as i64, region: region.into() })
    }

    #[test]
    fn gaps_shares_and_failures_are_counted_within_the_window() {
        let log = LoadLog {
            requests: vec![
                acked(100, "eu-west"),
                (Duration::from_millis(200), Outcome::Failed("503 maintenance".into())),
                (Duration::from_millis(300), Outcome::Failed("503 maintenance".into())),
                (Duration::from_millis(400), Outcome::Refused),
                acked(900, "eu-central"),
                acked(1100, "eu-central"),
                acked(1200, "eu-west"),
            ],
        };
        let (from, to) = (Duration::ZERO, Duration::from_millis(1300));
        assert_eq!(log.longest_gap(from, to), Duration::from_millis(800));
        assert_eq!(log.acked(from, to), vec![100, 900, 1100, 1200]);
        assert_eq!(log.by_region(from, to)["eu-central"], 2);
        assert_eq!(log.failures(from, to), vec![("503 maintenance".to_string(), 2)]);
        assert_eq!(log.share("eu-central", from, to, Duration::from_millis(500)), vec![Some(0), Some(100), Some(50)]);
        // A window after the last write counts its silence too.
        assert_eq!(
            log.longest_gap(Duration::from_millis(1200), Duration::from_millis(2000)),
            Duration::from_millis(800)
        );
    }

    #[test]
    fn reasons_keep_their_gist() {
        assert_eq!(
            reason("database: cannot execute INSERT in a read-only transaction"),
            "database: cannot execute INSERT in a read-only transaction"
        );
        assert_eq!(
            reason("maintenance: the platform is moving regions, retry shortly"),
            "maintenance: the platform is moving regions"
        );
    }
}
