//! Self-fencing: a real 3-node coordinator cluster, two real agents reaching the leader
//! through fault proxies, and two independent PostgreSQL primaries (a pair whose standby is
//! promoted). Agent A's primary declares `self_fence: { after: 3s }`, agent B's does not.
//!
//! Connected, A holds a lease and its primary stays writable past `after`. Cut both agents
//! off the coordinators while the databases stay up: A's primary turns read-only within
//! `after` + 1 s (the time is printed), B's stays writable. Then A is restarted while no
//! coordinator is reachable: with no lease since start, it fences again within `after` + 1 s
//! of its start.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use drcut_tests::agent::postgres_resource_yaml;
use drcut_tests::http_server::http_client;
use drcut_tests::{AgentProc, Cluster, FaultProxy, PgPair};
use tokio::time::Instant;

const AFTER: Duration = Duration::from_secs(3);
const METRICS: &str = "127.0.103.60:9100";

fn agent_yaml(id: &str, proxy: SocketAddr, resource: &str, metrics: Option<&str>, check_addr: SocketAddr) -> String {
    let metrics = metrics.map_or(String::new(), |m| format!("metrics_listen: {m}\n"));
    format!(
        "agent_id: {id}\nregion: eu-west\ncoordinators: [\"{proxy}\"]\n{metrics}resources:\n  postgres:\n{resource}\
         checks:\n  - {{ name: pg-port, type: tcp, addr: \"{check_addr}\", interval_ms: 500 }}\n"
    )
}

/// Polls writes on `dsn` until one fails; returns how long that took from `since`.
async fn until_write_fails(dsn: &str, since: Instant, limit: Duration) -> Result<Duration> {
    loop {
        if drcut_tests::pg::try_write(dsn).await?.is_err() {
            return Ok(since.elapsed());
        }
        if since.elapsed() > limit {
            bail!("still writable {:?} after the cut", since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics_text() -> Result<String> {
    Ok(http_client().get(format!("http://{METRICS}/metrics")).send().await?.text().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_agent_fences_its_primary_and_one_without_self_fence_does_not() -> Result<()> {
    let cluster = Cluster::builder(103).nodes(3).start().await?;
    let leader = cluster.wait_leader(&[1, 2, 3]).await?.leader_id;
    cluster.add_region(leader, "eu-west").await?;
    let pg = PgPair::start("127.0.103.21".parse()?, "127.0.103.22".parse()?).await?;
    // Two independent primaries: B's database is the promoted standby.
    pg.exec_standby("SELECT pg_promote(true, 30)").await?;
    pg.try_write_standby().await?.map_err(anyhow::Error::msg)?;

    let proxy_a = FaultProxy::start("127.0.103.50:0".parse()?, cluster.addr(leader)).await?;
    let proxy_b = FaultProxy::start("127.0.103.51:0".parse()?, cluster.addr(leader)).await?;
    let res_a = postgres_resource_yaml(
        "db",
        &pg.primary_dsn(),
        Some(pg.primary_data_dir()),
        Some(pg.bin_dir()),
        &["self_fence: { after: 3s, mode: read_only }"],
    );
    let res_b = postgres_resource_yaml("db", &pg.standby_dsn(), None, None, &[]);
    let yaml_a = agent_yaml("agent-a", proxy_a.addr(), &res_a, Some(METRICS), pg.primary_addr());
    let mut a = AgentProc::start(cluster.dir(), "agent-a", &yaml_a, &[])?;
    let yaml_b = agent_yaml("agent-b", proxy_b.addr(), &res_b, None, pg.standby_addr());
    let mut b = AgentProc::start(cluster.dir(), "agent-b", &yaml_b, &[])?;
    a.wait_log("session open", Duration::from_secs(15)).await?;
    b.wait_log("session open", Duration::from_secs(15)).await?;

    // Holding a lease, A leaves its primary alone for longer than `after`.
    tokio::time::sleep(AFTER + Duration::from_secs(1)).await;
    pg.try_write_primary().await?.map_err(anyhow::Error::msg)?;
    let m = metrics_text().await?;
    ensure!(!m.contains("drcut_agent_self_fenced{database=\"db\"} 1"), "fenced while connected:\n{m}");

    tracing::info!("--- cut both agents off the coordinators; the databases stay up");
    let cut = Instant::now();
    proxy_a.cut();
    proxy_b.cut();
    let took = until_write_fails(&pg.primary_dsn(), cut, AFTER + Duration::from_secs(3)).await?;
    println!("t103 self-fence: primary read-only {} ms after the cut (self_fence.after 3000 ms)", took.as_millis());
    ensure!(took <= AFTER + Duration::from_secs(1), "self-fenced only after {took:?}");
    pg.assert_primary_write_fails().await?;
    a.wait_log("SELF-FENCE done", Duration::from_secs(2)).await?;
    let m = metrics_text().await?;
    ensure!(m.contains("drcut_agent_self_fenced{database=\"db\"} 1"), "metrics:\n{m}");
    ensure!(m.contains("drcut_agent_self_fences_total{database=\"db\"} 1"), "metrics:\n{m}");

    // B, without self_fence, keeps its primary writable.
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.try_write_standby().await?.map_err(|e| anyhow::anyhow!("B's primary was fenced: {e}"))?;
    ensure!(!b.stderr().contains("SELF-FENCE"), "agent B self-fenced");

    tracing::info!("--- A restarts while no coordinator is reachable");
    a.kill().await?;
    // What an operator's unfreeze_writes does (each statement alone: ALTER SYSTEM refuses a
    // transaction block).
    let c = pg.primary_client().await?;
    for sql in [
        "SET default_transaction_read_only = off",
        "ALTER SYSTEM RESET default_transaction_read_only",
        "SELECT pg_reload_conf()",
    ] {
        c.batch_execute(sql).await?;
    }
    drcut_tests::wait::until("the primary writable again", Duration::from_secs(5), async || {
        pg.try_write_primary().await?.map_err(anyhow::Error::msg)
    })
    .await?;
    let started = Instant::now();
    a.spawn()?;
    let took = until_write_fails(&pg.primary_dsn(), started, AFTER + Duration::from_secs(3)).await?;
    println!("t103 self-fence after a restart without coordinators: read-only {} ms after start", took.as_millis());
    ensure!(took >= AFTER - Duration::from_millis(200), "fenced before `after` ran out: {took:?}");
    ensure!(took <= AFTER + Duration::from_secs(1), "self-fenced only after {took:?}");
    ensure!(a.stderr().contains("with no lease yet"), "{}", a.log_tail(20));
    ensure!(b.exited().is_none() && a.exited().is_none());
    drop(proxy_b);
    cluster.finish();
    Ok(())
}
