//! A real authoritative DNS server (PowerDNS), asked by a real agent: a check with expected
//! answers notices when the record changes and degrades the region until it is set back, while
//! a check without expected answers only cares that the name resolves, and stays up.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Result, ensure};
use drcut_tests::health::{
    HEALTH_WAIT, agent_yaml, audit_entries, board, check, describe, region, wait_check, wait_region,
};
use drcut_tests::{AgentProc, Cluster, Pdns, wait};

const HEALTH: &str = "health:\n  down_after: 2\n  up_after: 2\n  tick_ms: 100\n";

const NAME: &str = "wallet.gslb.example.";
const EXPECTED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const MOVED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

fn label<'a>(c: &'a drcut_proto::v1::CheckHealth, name: &str) -> &'a str {
    c.labels.get(name).map(String::as_str).unwrap_or("")
}

/// The check without expected answers: up, and answering `answers`.
fn resolves_up(r: &drcut_proto::v1::RegionHealth, answers: &str) -> Result<()> {
    let c = check(r, "wallet-resolves")?;
    ensure!(c.state == "up" && !c.stale, "wallet-resolves must stay up: {}", describe(c));
    ensure!(label(c, "answers") == answers, "wallet-resolves answers: {}", describe(c));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_change_degrades_only_the_check_that_expects_answers() -> Result<()> {
    let cluster = Cluster::builder(82).nodes(1).extra_yaml(HEALTH).start().await?;
    cluster.wait_leader(&[1]).await?;
    cluster.add_region(1, "eu-west").await?;
    let pdns = Pdns::start("127.0.82.20".parse()?).await?;
    pdns.create_zone("gslb.example.").await?;
    pdns.set_a(NAME, &[EXPECTED], 5).await?;
    ensure!(pdns.query_a(NAME).await? == [EXPECTED], "the server answers the record");

    let server = pdns.dns_addr();
    let checks = format!(
        "resources:\n  dns:\n    gslb-ns1:\n      server: \"{server}\"\n\
         checks:\n  - name: wallet-answer\n    type: dns\n    resource: gslb-ns1\n    query: {NAME}\n    \
         expect_answers: [{EXPECTED}]\n    interval_ms: 200\n    timeout_ms: 1000\n  \
         - name: wallet-resolves\n    type: dns\n    server: \"{server}\"\n    query: wallet.gslb.example\n    \
         interval_ms: 200\n    timeout_ms: 1000\n"
    );
    let yaml = agent_yaml("agent-eu-west", "eu-west", &[cluster.addr(1).to_string()], &checks);
    let mut agent = AgentProc::start(cluster.dir(), "agent-eu-west", &yaml, &[])?;

    tracing::info!("--- the expected answer: both checks up, the region up");
    let r = wait_region(&cluster, 1, "eu-west", "up", HEALTH_WAIT).await?;
    ensure!(r.checks.len() == 2, "{r:?}");
    let a = check(&r, "wallet-answer")?;
    ensure!(a.state == "up" && a.r#type == "dns" && a.vantage_agent == "agent-eu-west", "{}", describe(a));
    ensure!(label(a, "answers") == "192.0.2.1" && label(a, "rcode") == "NOERROR", "{}", describe(a));
    ensure!(a.values.get("answers") == Some(&1.0) && a.error.is_empty(), "{}", describe(a));
    resolves_up(&r, "192.0.2.1")?;

    tracing::info!("--- the record moves to {MOVED}: the expecting check notices, the region degrades");
    pdns.set_a(NAME, &[MOVED], 5).await?;
    ensure!(pdns.query_a(NAME).await? == [MOVED], "the server answers the new record");
    let r = wait_check(&cluster, 1, "eu-west", "wallet-answer", "degraded on the new answer", HEALTH_WAIT, |c| {
        ensure!(c.state == "degraded", "not degraded");
        Ok(())
    })
    .await?;
    let a = check(&r, "wallet-answer")?;
    ensure!(label(a, "answers") == "198.51.100.7" && label(a, "rcode") == "NOERROR", "{}", describe(a));
    ensure!(a.error.contains("198.51.100.7") && a.error.contains("expected [192.0.2.1]"), "{}", describe(a));
    let r = wait_region(&cluster, 1, "eu-west", "degraded", HEALTH_WAIT).await?;
    ensure!(r.reason.contains("wallet-answer"), "the reason names the check: {}", r.reason);
    ensure!(!r.reason.contains("wallet-resolves"), "only the expecting check is in trouble: {}", r.reason);
    // The answer changed, but the name still resolves: no failure for the check that expects
    // nothing in particular, for as long as the change lasts.
    resolves_up(&r, "198.51.100.7")?;
    wait::always("wallet-resolves up and eu-west degraded, not down", Duration::from_secs(2), async || {
        let r = board(&cluster, 1).await?;
        let r = region(&r, "eu-west")?;
        ensure!(r.state == "degraded", "region {} ({})", r.state, r.reason);
        ensure!(check(r, "wallet-answer")?.state == "degraded", "{}", describe(check(r, "wallet-answer")?));
        resolves_up(r, "198.51.100.7")
    })
    .await?;

    tracing::info!("--- the record is set back: up again");
    pdns.set_a(NAME, &[EXPECTED], 5).await?;
    let r = wait_region(&cluster, 1, "eu-west", "up", HEALTH_WAIT).await?;
    let a = check(&r, "wallet-answer")?;
    ensure!(a.state == "up" && label(a, "answers") == "192.0.2.1" && a.error.is_empty(), "{}", describe(a));
    resolves_up(&r, "192.0.2.1")?;

    tracing::info!("--- the audit chain: wallet-answer went up, degraded, up; wallet-resolves only came up");
    let (_, entries) = audit_entries(&cluster).await?;
    let transitions = |check: &str| -> Vec<String> {
        entries
            .iter()
            .filter(|e| e["action"] == "health.check" && e["details"]["check"] == check)
            .map(|e| {
                format!(
                    "{}->{}",
                    e["details"]["from"].as_str().unwrap_or(""),
                    e["details"]["to"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    ensure!(
        transitions("wallet-answer") == ["unknown->up", "up->degraded", "degraded->up"],
        "wallet-answer transitions {:?}",
        transitions("wallet-answer")
    );
    ensure!(
        transitions("wallet-resolves") == ["unknown->up"],
        "wallet-resolves transitions {:?}",
        transitions("wallet-resolves")
    );
    let degraded = entries
        .iter()
        .find(|e| {
            e["action"] == "health.check"
                && e["details"]["check"] == "wallet-answer"
                && e["details"]["to"] == "degraded"
        })
        .expect("found above");
    let ev = &degraded["details"]["evidence"];
    ensure!(ev["error"].as_str().unwrap_or("").contains("198.51.100.7"), "evidence carries the wrong answer: {ev}");
    cluster.audit_verify_ok().await?;
    ensure!(agent.exited().is_none(), "the agent must keep running");
    cluster.finish();
    Ok(())
}
