//! The agent refuses bad input loudly and precisely. A bad config file (unknown check type,
//! missing secret, bad SLO, dangling resource) stops it at once: exit code 2, a message naming
//! the file, the field and the value (never a secret's value), and no coordinator dialled. A
//! config the coordinator refuses (a region or a check target it does not know) keeps the
//! agent running and retrying, with an error naming what is unknown, and registers nothing.
//! Unreachable coordinators get a warning naming the config entry, and endless retries.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_tests::health::{HEALTH_WAIT, agent_yaml, audit_entries, board, wait_region};
use drcut_tests::{AgentProc, Cluster, wait};
use tokio::net::TcpListener;

const HEALTH: &str = "health:\n  down_after: 2\n  up_after: 2\n  tick_ms: 100\n";

/// How long a refused agent may take to exit.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// Runs an agent whose config is refused and checks the refusal. The agent's only coordinator
/// is a listener owned by the test on `127.0.86.{host}:7001`, which must see no connection.
/// stderr must name the config file and contain every text in `says`, and none in `never`.
async fn assert_refused(host: u8, body: &str, env: &[(&str, &str)], says: &[&str], never: &[&str]) -> Result<()> {
    drcut_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let coordinator = TcpListener::bind(format!("127.0.86.{host}:7001")).await?;
    let addr = coordinator.local_addr()?.to_string();
    let yaml = agent_yaml("agent-bad", "eu-west", std::slice::from_ref(&addr), body);
    let mut agent = AgentProc::start(dir.path(), "agent-bad", &yaml, env)?;
    let status = agent.wait_exit(EXIT_WAIT).await?;
    let stderr = agent.stderr();
    let context = format!("config:\n{yaml}\n{}", agent.log_tail(20));
    ensure!(status.code() == Some(2), "expected exit code 2, got {status}; {context}");
    let path = agent.config_path().display().to_string();
    ensure!(stderr.contains(&format!("config error: {path}: ")), "stderr does not name {path}; {context}");
    for s in says {
        ensure!(stderr.contains(s), "stderr does not say {s:?}; {context}");
    }
    for s in never {
        ensure!(!stderr.contains(s) && !agent.stdout().contains(s), "output shows {s:?}; {context}");
    }
    ensure!(!agent.stdout().contains("running"), "a refused agent claims to run checks; {context}");
    // Touching nothing: no session attempt (a connection would be waiting in the backlog)...
    let dialled = tokio::time::timeout(Duration::from_millis(300), coordinator.accept()).await;
    ensure!(dialled.is_err(), "a refused agent dialled its coordinator {addr}; {context}");
    // ...and no file besides the harness's config and logs.
    let mut files: Vec<String> = std::fs::read_dir(dir.path())?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    files.sort();
    ensure!(files == ["agent-bad.stderr.log", "agent-bad.stdout.log", "agent-bad.yaml"], "files {files:?}; {context}");
    Ok(())
}

#[tokio::test]
async fn unknown_check_type_is_refused() -> Result<()> {
    let body = "checks:\n  - name: ping\n    type: icmp\n";
    assert_refused(21, body, &[], &["checks[0].type", "\"icmp\"", "http, tcp, dns, postgres, prometheus"], &[]).await
}

#[tokio::test]
async fn missing_secret_is_refused_naming_the_variable_only() -> Result<()> {
    // Two secrets: the first is set (its value must not show), the second is missing.
    let set = "host=127.0.86.99 port=5432 user=postgres password=t86-Set-Secret-41d";
    let body = "resources:\n  postgres:\n    a-set:\n      dsn_env: T86_SET_DSN\n    \
                b-missing:\n      dsn_env: T86_UNSET_DSN\n";
    let says = ["resources.postgres.b-missing.dsn_env", "T86_UNSET_DSN", "not set"];
    assert_refused(22, body, &[("T86_SET_DSN", set)], &says, &[set, "t86-Set-Secret-41d"]).await
}

#[tokio::test]
async fn empty_secret_is_refused_without_showing_it() -> Result<()> {
    let body = "resources:\n  http:\n    api:\n      base_url: http://127.0.86.99:8080\n      \
                bearer_token_env: T86_EMPTY_TOKEN\n";
    let says = ["resources.http.api.bearer_token_env", "T86_EMPTY_TOKEN", "is empty"];
    assert_refused(23, body, &[("T86_EMPTY_TOKEN", "   ")], &says, &[]).await
}

#[tokio::test]
async fn invalid_slo_expression_is_refused() -> Result<()> {
    let body = "checks:\n  - name: api\n    type: tcp\n    addr: 127.0.86.99:80\n    \
                slo: [\"p95_ms <= 300\", \"p95_ms <== 3\"]\n";
    assert_refused(24, body, &[], &["checks[0].slo[1]", "p95_ms <== 3", "not a number"], &[]).await
}

#[tokio::test]
async fn unknown_resource_reference_is_refused() -> Result<()> {
    let body = "resources:\n  postgres:\n    wallet-primary:\n      dsn: \"host=127.0.86.99 user=postgres\"\n\
                checks:\n  - name: db\n    type: postgres\n    resource: wallet-db\n";
    let says = ["checks[0].resource", "no postgres resource named \"wallet-db\"", "known: wallet-primary"];
    assert_refused(25, body, &[], &says, &[]).await
}

/// The first line of the agent's stderr containing `needle`.
fn log_line(agent: &AgentProc, needle: &str) -> Result<String> {
    agent
        .stderr()
        .lines()
        .find(|l| l.contains(needle))
        .map(str::to_string)
        .with_context(|| format!("no line with {needle:?}\n{}", agent.log_tail(20)))
}

fn config_path(agent: &AgentProc) -> String {
    agent.config_path().display().to_string()
}

/// Audit entries registering `agent_id`.
fn registrations(entries: &[serde_json::Value], agent_id: &str) -> usize {
    entries.iter().filter(|e| e["action"] == "agent.register" && e["details"]["agent_id"] == agent_id).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_refuses_unknown_regions_and_the_agent_keeps_trying() -> Result<()> {
    let cluster = Cluster::builder(86).nodes(1).extra_yaml(HEALTH).start().await?;
    cluster.wait_leader(&[1]).await?;
    cluster.add_region(1, "eu-west").await?;
    let coords = [cluster.addr(1).to_string()];
    // A check every agent can run: the coordinator's own port.
    let tcp_check = |extra: &str| {
        format!(
            "checks:\n  - name: coord-port\n    type: tcp\n    addr: {}\n    interval_ms: 200\n{extra}",
            cluster.addr(1)
        )
    };
    let dir = cluster.dir();

    tracing::info!("--- control: an agent of a known region registers and reports");
    let good = agent_yaml("agent-good", "eu-west", &coords, &tcp_check(""));
    let _good = AgentProc::start(dir, "agent-good", &good, &[])?;
    wait_region(&cluster, 1, "eu-west", "up", HEALTH_WAIT).await?;

    tracing::info!("--- an agent of an unregistered region is refused, and keeps running");
    let mars = agent_yaml("agent-mars", "mars", &coords, &tcp_check(""));
    let mut a_mars = AgentProc::start(dir, "agent-mars", &mars, &[])?;
    a_mars.wait_log("unknown region", HEALTH_WAIT).await?;
    let line = log_line(&a_mars, "unknown region")?;
    ensure!(line.contains("ERROR"), "logged as an error: {line}");
    ensure!(line.contains("\"mars\"") && line.contains("agent-mars"), "names the region and agent: {line}");
    ensure!(line.contains(&config_path(&a_mars)), "names the config file: {line}");

    tracing::info!("--- a check on an unregistered target region is refused the same way");
    let stray_check =
        tcp_check("  - name: peer-api\n    type: tcp\n    addr: 127.0.86.99:80\n    target_region: ap-south\n");
    let stray = agent_yaml("agent-stray", "eu-west", &coords, &stray_check);
    let mut a_stray = AgentProc::start(dir, "agent-stray", &stray, &[])?;
    a_stray.wait_log("unknown region", HEALTH_WAIT).await?;
    let line = log_line(&a_stray, "unknown region")?;
    ensure!(line.contains("ERROR") && line.contains(&config_path(&a_stray)), "{line}");
    ensure!(line.contains("\"peer-api\"") && line.contains("\"ap-south\""), "names the check and the region: {line}");

    tracing::info!("--- neither is on the board or in the audit chain; the control agent is");
    let b = board(&cluster, 1).await?;
    let agents: Vec<&str> = b.agents.iter().map(|a| a.agent_id.as_str()).collect();
    ensure!(agents == ["agent-good"], "agents on the board: {agents:?}");
    let regions: Vec<&str> = b.regions.iter().map(|r| r.region.as_str()).collect();
    ensure!(regions == ["eu-west"], "regions on the board: {regions:?}");
    let (_, entries) = audit_entries(&cluster).await?;
    ensure!(registrations(&entries, "agent-good") == 1, "the control agent registered once");
    for id in ["agent-mars", "agent-stray"] {
        ensure!(registrations(&entries, id) == 0, "{id} registered: {entries:?}");
        ensure!(!entries.iter().any(|e| e["actor"] == format!("agent:{id}")), "{id} wrote to the audit chain");
    }
    ensure!(a_mars.exited().is_none() && a_stray.exited().is_none(), "refused agents keep running");

    tracing::info!("--- once the region is added, the refused agent gets in on its own next try");
    cluster.add_region(1, "mars").await?;
    wait::until("agent-mars registered and connected", HEALTH_WAIT, async || {
        let b = board(&cluster, 1).await?;
        ensure!(b.agents.iter().any(|a| a.agent_id == "agent-mars" && a.connected), "agents {:?}", b.agents);
        Ok(())
    })
    .await?;
    ensure!(a_mars.stderr().contains("session open"), "{}", a_mars.log_tail(10));
    let (_, entries) = audit_entries(&cluster).await?;
    ensure!(registrations(&entries, "agent-mars") == 1 && registrations(&entries, "agent-stray") == 0);
    // agent-stray is still refused: it keeps saying so, and keeps running.
    ensure!(a_stray.exited().is_none() && !a_stray.stderr().contains("session open"), "{}", a_stray.log_tail(10));
    cluster.audit_verify_ok().await?;
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_coordinators_are_named_and_retried() -> Result<()> {
    drcut_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    // Nothing listens here: every connection is refused.
    let addr = "127.0.86.30:7001";
    let checks = "checks:\n  - name: local\n    type: tcp\n    addr: 127.0.86.30:7002\n    interval_ms: 200\n";
    let yaml = agent_yaml("agent-lonely", "eu-west", &[addr.to_string()], checks);
    let mut agent = AgentProc::start(dir.path(), "agent-lonely", &yaml, &[])?;
    agent.wait_log("coordinators[0]", Duration::from_secs(10)).await?;
    let line = log_line(&agent, "coordinators[0]")?;
    ensure!(line.contains("WARN"), "logged as a warning: {line}");
    let path = agent.config_path().display().to_string();
    ensure!(line.contains(&format!("{path}: coordinators[0]: {addr}")), "names file, entry and address: {line}");
    ensure!(line.contains("retrying"), "{line}");

    tracing::info!("--- it keeps retrying (with backoff) and keeps running");
    wait::until("three connection attempts", Duration::from_secs(10), async || {
        let n = agent.stderr().lines().filter(|l| l.contains("coordinators[0]")).count();
        ensure!(n >= 3, "{n} attempts so far");
        Ok(())
    })
    .await?;
    ensure!(agent.exited().is_none(), "the agent must keep running\n{}", agent.log_tail(20));
    let status = agent.terminate().await?;
    ensure!(status.success(), "SIGTERM stops it cleanly: {status}");
    Ok(())
}
