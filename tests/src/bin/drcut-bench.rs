//! Raft figures for a 3-node loopback cluster with default settings: commit latency of a small
//! replicated command, throughput with concurrent clients, and leader failover time
//! (kill -9 the leader → first write accepted by the new leader). Prints figures; asserts
//! nothing (machines are shared and noisy). Run through `scripts/bench`.

use anyhow::{Context, Result};
use drcut_proto::v1::control_client::ControlClient;
use drcut_tests::client::{add_region_request, connect, connect_tls};
use drcut_tests::cluster::Cluster;
use drcut_tests::config::RaftOptions;
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;

/// Address block of the benchmark cluster (tests use lower blocks).
const BLOCK: u8 = 200;

struct Args {
    writes: usize,
    concurrency: usize,
    trials: usize,
    /// mTLS on every link and API tokens on every call (what production runs).
    secure: bool,
}

fn args() -> Result<Args> {
    let mut a = Args { writes: 2000, concurrency: 16, trials: 10, secure: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--writes" => a.writes = val()?.parse()?,
            "--concurrency" => a.concurrency = val()?.parse()?,
            "--trials" => a.trials = val()?.parse()?,
            "--secure" => a.secure = true,
            other => anyhow::bail!("unknown flag {other} (use --writes N --concurrency N --trials N --secure)"),
        }
    }
    Ok(a)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// How the benchmark's clients reach the cluster: plain, or TLS with the harness's client
/// certificate and its API token on every request.
#[derive(Clone)]
struct Dial {
    tls: Option<tonic::transport::ClientTlsConfig>,
    token: Option<String>,
}

impl Dial {
    fn connect(&self, addr: std::net::SocketAddr) -> Result<ControlClient<Channel>> {
        match &self.tls {
            Some(t) => connect_tls(addr, t.clone()),
            None => connect(addr),
        }
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        match &self.token {
            Some(t) => drcut_tests::auth::with_token(msg, t),
            None => tonic::Request::new(msg),
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let all = [1, 2, 3];
    let mut b = Cluster::builder(BLOCK).nodes(3).raft(|r| *r = RaftOptions::default());
    if a.secure {
        // No rate limit in the way of a benchmark's thousands of calls per second.
        b = b.with_tls().with_auth(&drcut_tests::auth::TestPrincipals::new(), Some((1_000_000, 1_000_000)));
    }
    let mut c = b.start().await?;
    let dial =
        Dial { tls: c.pki().map(|p| p.client.client_config()).transpose()?, token: c.token().map(str::to_string) };
    let leader = c.wait_leader(&all).await?.leader_id;
    let mode =
        if a.secure { "mTLS between nodes and clients, API token on every call" } else { "plain text, open mode" };
    println!("3-node cluster on 127.0.{BLOCK}.1-3, default raft settings, {mode}, leader node {leader}");

    // --- commit latency: one client, sequential writes to the leader.
    let mut client = dial.connect(c.addr(leader))?;
    for i in 0..50 {
        client.add_region(dial.req(add_region_request(&format!("warm-{i}")))).await?;
    }
    let mut lat = Vec::with_capacity(a.writes);
    for i in 0..a.writes {
        let t = Instant::now();
        client.add_region(dial.req(add_region_request(&format!("lat-{i}")))).await?;
        lat.push(t.elapsed());
    }
    let slow: Vec<(usize, u128)> =
        lat.iter().enumerate().filter(|(_, d)| d.as_millis() >= 10).map(|(i, d)| (i, d.as_millis())).collect();
    if std::env::var_os("DRCUT_BENCH_DEBUG").is_some() {
        println!("slow writes (index, ms): {slow:?}");
    }
    lat.sort();
    println!(
        "commit latency ({} sequential writes): p50 {}  p99 {}  max {}",
        a.writes,
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );

    // --- throughput: N concurrent clients against the leader.
    let per = a.writes / a.concurrency.max(1);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..a.concurrency {
        let mut cl = dial.connect(c.addr(leader))?;
        let d = dial.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                cl.add_region(d.req(add_region_request(&format!("tp-{w}-{i}")))).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let el = t.elapsed();
    println!(
        "throughput ({} clients, {} writes): {:.0} commands/s",
        a.concurrency,
        per * a.concurrency,
        (per * a.concurrency) as f64 / el.as_secs_f64()
    );

    // --- failover: kill -9 the leader, write through the survivors until one is accepted.
    let mut times = Vec::new();
    for trial in 0..a.trials {
        let st = c.wait_converged(&all).await?;
        let lid = st.leader_id;
        let survivors: Vec<u64> = all.iter().copied().filter(|&i| i != lid).collect();
        let mut clients: Vec<_> = survivors.iter().map(|&i| dial.connect(c.addr(i))).collect::<Result<_>>()?;
        let t0 = Instant::now();
        c.kill(lid).await?;
        // Watch the survivors for the new leader while the writer below retries.
        let watch: Vec<_> = survivors.iter().map(|&i| dial.connect(c.addr(i))).collect::<Result<_>>()?;
        let d = dial.clone();
        let elected = tokio::spawn(async move {
            loop {
                for mut w in watch.clone() {
                    if let Ok(Ok(st)) = tokio::time::timeout(
                        Duration::from_millis(200),
                        w.get_status(d.req(drcut_proto::v1::GetStatusRequest::default())),
                    )
                    .await
                        && st.get_ref().state == "Leader"
                    {
                        return t0.elapsed();
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let mut n = 0usize;
        loop {
            let k = clients.len();
            let cl = &mut clients[n % k];
            n += 1;
            let req = dial.req(add_region_request(&format!("fo-{trial}-{n}")));
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), cl.add_region(req)).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let dt = t0.elapsed();
        let el = elected.await?;
        println!(
            "failover trial {:>2}: killed node {lid}, new leader after {}, first write accepted after {}",
            trial + 1,
            ms(el),
            ms(dt)
        );
        times.push(dt);
        c.start_node(lid).await?;
    }
    times.sort();
    if !times.is_empty() {
        println!(
            "failover ({} trials): min {}  median {}  max {}",
            times.len(),
            ms(times[0]),
            ms(pct(&times, 0.5)),
            ms(*times.last().unwrap())
        );
    }
    c.finish();
    Ok(())
}
