//! Certificates and the CA rotate without a restart: a whole CA is replaced on a running 3-node
//! cluster with an agent (old + new CA trusted, new certificates installed, old CA dropped), and
//! afterwards new handshakes everywhere (drctl, peers after a leader kill, the agent following
//! the new leader) work under the new CA only, while a client trusting only the old CA is
//! refused; the HTTPS console serves the new certificate. A half-written or broken file is refused with the field named and the node keeps
//! serving with what it had. Every reload is in the audit chain.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_tests::health::{HEALTH_WAIT, agent_yaml, board, wait_region};
use drcut_tests::tls::TestCa;
use drcut_tests::{AgentProc, Cluster, TestHttp, wait};
use serde_json::Value;

const HEALTH: &str = "health:\n  down_after: 2\n  up_after: 2\n  tick_ms: 100\n";

/// The `tls.*` audit records of `action`, as (node, details).
async fn tls_records(cluster: &Cluster, action: &str) -> Result<Vec<(u64, Value)>> {
    let out = cluster.drctl(&["--json", "audit", "list", "--limit", "10000"]).await?;
    ensure!(out.code == Some(0), "audit list:\n{out}");
    let audit: Value = serde_json::from_str(&out.stdout)?;
    Ok(audit["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter(|e| e["action"] == action)
        .map(|e| (e["details"]["node"].as_u64().unwrap_or(0), e["details"].clone()))
        .collect())
}

/// Waits until each of `nodes` recorded a `tls.reloaded` of at least `generation`.
async fn wait_reloaded(cluster: &Cluster, nodes: &[u64], generation: u64) -> Result<()> {
    wait::until(&format!("nodes {nodes:?} reloaded to generation {generation}"), Duration::from_secs(20), async || {
        let done = tls_records(cluster, "tls.reloaded").await?;
        for n in nodes {
            ensure!(
                done.iter().any(|(node, d)| node == n && d["generation"].as_u64() >= Some(generation)),
                "node {n} not yet; records so far: {done:?}"
            );
        }
        Ok(())
    })
    .await
}

/// Waits for a `tls.reload_refused` record of `node` naming `field`.
async fn wait_refused(cluster: &Cluster, node: u64, field: &str) -> Result<Value> {
    wait::until(&format!("node {node} refusing its new {field}"), Duration::from_secs(20), async || {
        let refused = tls_records(cluster, "tls.reload_refused").await?;
        refused
            .into_iter()
            .find(|(n, d)| *n == node && d["field"] == field)
            .map(|(_, d)| d)
            .with_context(|| format!("not yet (node {node}, {field})"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_rotates_on_a_running_cluster() -> Result<()> {
    let mut cluster = Cluster::builder(146).nodes(3).extra_yaml(HEALTH).with_tls().with_http().start().await?;
    let all = [1, 2, 3];
    let leader = cluster.wait_leader(&all).await?.leader_id;
    cluster.add_region(leader, "eu-west").await?;
    let pki = cluster.pki().context("tls cluster")?;
    let dir = cluster.dir().join("tls");
    let ca_file = pki.client.ca.clone();
    let old_ca = pki.ca.ca_pem();

    let app = TestHttp::start("127.0.146.50:0".parse()?).await?;
    let coords: Vec<String> = all.iter().map(|&i| cluster.addr(i).to_string()).collect();
    let checks = format!(
        "checks:\n  - name: api\n    type: http\n    url: {}\n    interval_ms: 100\n    timeout_ms: 500\n    window: 5\n",
        app.url("/health")
    );
    let agent_files = pki.ca.write(&dir, "agent-eu-west", &pki.ca.agent("eu-west")?)?;
    let yaml = format!("{}{}", agent_yaml("agent-eu-west", "eu-west", &coords, &checks), agent_files.yaml());
    let mut agent = AgentProc::start(cluster.dir(), "agent-eu-west", &yaml, &[])?;
    wait_region(&cluster, leader, "eu-west", "up", HEALTH_WAIT).await?;

    tracing::info!("--- step 1: every holder trusts the old and the new CA");
    let next = TestCa::new("test-b146-next")?;
    std::fs::write(&ca_file, format!("{old_ca}{}", next.ca_pem()))?;
    wait_reloaded(&cluster, &all, 2).await?;

    tracing::info!("--- step 2: new certificates; node 1's key lands before its certificate");
    let fresh = next.node(1, cluster.addr(1).ip())?;
    std::fs::write(dir.join("node-1.key"), &fresh.key_pem)?;
    let d = wait_refused(&cluster, 1, "tls.key").await?;
    ensure!(d["reason"].as_str().unwrap_or("").contains("does not fit"), "{d}");
    let out = cluster.drctl(&["--endpoint", &cluster.endpoints(&[1]), "status"]).await?;
    ensure!(out.code == Some(0), "node 1 keeps serving on its old certificate:\n{out}");
    std::fs::write(dir.join("node-1.pem"), &fresh.cert_pem)?;
    for id in [2, 3] {
        let c = next.node(id, cluster.addr(id).ip())?;
        std::fs::write(dir.join(format!("node-{id}.pem")), &c.cert_pem)?;
        std::fs::write(dir.join(format!("node-{id}.key")), &c.key_pem)?;
    }
    let a = next.agent("eu-west")?;
    std::fs::write(&agent_files.cert, &a.cert_pem)?;
    std::fs::write(&agent_files.key, &a.key_pem)?;
    let h = next.client("drcut-tests")?;
    std::fs::write(&pki.client.cert, &h.cert_pem)?;
    std::fs::write(&pki.client.key, &h.key_pem)?;
    wait_reloaded(&cluster, &all, 3).await?;

    tracing::info!("--- step 3: the old CA is dropped");
    std::fs::write(&ca_file, next.ca_pem())?;
    wait_reloaded(&cluster, &all, 4).await?;
    cluster.forget_clients();
    // rcgen's certificates run until 4096-01-01: found by bisection to the second.
    let reloaded = tls_records(&cluster, "tls.reloaded").await?;
    ensure!(reloaded.iter().all(|(_, d)| d["valid_until"] == "4096-01-01T00:00:00Z"), "{reloaded:?}");

    tracing::info!("--- new handshakes work under the new CA only");
    let out = cluster.drctl(&["--json", "status"]).await?;
    ensure!(out.code == Some(0), "{out}");
    let st: Value = serde_json::from_str(&out.stdout)?;
    let members = st["members"].as_array().context("members")?;
    ensure!(members.len() == 3 && members.iter().all(|m| m["state"] != "Unreachable"), "{st}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let https = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .add_root_certificate(reqwest::Certificate::from_pem(next.ca_pem().as_bytes())?)
        .build()?;
    for id in all {
        let url = format!("https://{}/healthz", drcut_tests::cluster::http_addr(146, id));
        let r = https.get(&url).send().await.with_context(|| format!("{url} under the new CA"))?;
        ensure!(r.status() == 200, "{url}: {}", r.status());
    }
    let old_only = dir.join("old-ca.pem");
    std::fs::write(&old_only, &old_ca)?;
    let out = drcut_tests::process::drctl([
        "--ca",
        old_only.to_str().context("path")?,
        "--endpoint",
        &cluster.endpoints(&[1]),
        "--timeout",
        "3",
        "status",
    ])
    .await?;
    ensure!(out.code != Some(0), "a client trusting only the old CA must refuse the nodes:\n{out}");

    tracing::info!("--- a follower restarts: the leader's replication reaches it with the new certificates");
    let follower = all.iter().copied().find(|&i| i != leader).context("a follower")?;
    cluster.kill(follower).await?;
    cluster.start_node(follower).await?;
    cluster.add_region(leader, "us-east").await.context("a write while the follower is back")?;
    cluster.wait_converged(&all).await?;

    tracing::info!("--- peers dial each other with the new certificates: kill -9 the leader (node {leader})");
    cluster.kill(leader).await?;
    let survivors: Vec<u64> = all.iter().copied().filter(|&i| i != leader).collect();
    let new_leader = cluster.wait_leader(&survivors).await?.leader_id;
    cluster.add_region(new_leader, "eu-central").await.context("a write after the rotation")?;

    tracing::info!("--- the agent follows node {new_leader} with its new certificate");
    wait::until("the agent connected to the new leader", HEALTH_WAIT, async || {
        let b = board(&cluster, new_leader).await?;
        ensure!(b.agents.iter().any(|a| a.agent_id == "agent-eu-west" && a.connected), "{:?}", b.agents);
        Ok(())
    })
    .await?;
    ensure!(agent.exited().is_none(), "the agent keeps running");
    // The new leader knows when the agent's (new) certificate stops verifying: 4096-01-01.
    let url = format!("https://{}/metrics", drcut_tests::cluster::http_addr(146, new_leader));
    let m = https.get(&url).send().await?.text().await?;
    ensure!(
        m.contains(r#"drcut_agent_cert_valid_until_seconds{agent="agent-eu-west"} 67090118400"#),
        "agent certificate expiry not exported:\n{m}"
    );

    tracing::info!("--- the old leader restarts on the new files and catches up");
    cluster.start_node(leader).await?;
    cluster.wait_converged(&all).await?;

    tracing::info!("--- a broken certificate file is refused by name; the node keeps serving");
    let pem = dir.join(format!("node-{new_leader}.pem"));
    let good = std::fs::read(&pem)?;
    std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")?;
    let d = wait_refused(&cluster, new_leader, "tls.cert").await?;
    ensure!(d["reason"].as_str().unwrap_or("").contains(&format!("node-{new_leader}.pem")), "{d}");
    let out = cluster.drctl(&["--endpoint", &cluster.endpoints(&[new_leader]), "status"]).await?;
    ensure!(out.code == Some(0), "node {new_leader} keeps serving:\n{out}");
    let metrics = format!("https://{}/metrics", drcut_tests::cluster::http_addr(146, new_leader));
    let scrape = async || -> Result<String> { Ok(https.get(&metrics).send().await?.text().await?) };
    ensure!(scrape().await?.contains("drcut_tls_files_refused 1"), "the refusal shows in /metrics");
    std::fs::write(&pem, good)?;
    wait::until("the good files back in use", Duration::from_secs(10), async || {
        let m = scrape().await?;
        ensure!(m.contains("drcut_tls_files_refused 0"), "still refused");
        Ok(())
    })
    .await?;
    cluster.audit_verify_ok().await?;
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused_at_the_handshake() -> Result<()> {
    let cluster = Cluster::builder(149).nodes(1).with_tls().with_crl().start().await?;
    cluster.wait_leader(&[1]).await?;
    let pki = cluster.pki().context("tls cluster")?;
    let dir = cluster.dir().join("tls");
    let ci = pki.ca.client("ci")?;
    let ci_files = drcut_tests::tls::TlsFiles { ca: pki.client.ca.clone(), ..pki.ca.write(&dir, "ci", &ci)? };
    let ep = cluster.endpoints(&[1]);
    let status_as_ci = || {
        let mut args = ci_files.drctl_args();
        args.extend(["--endpoint".into(), ep.clone(), "--timeout".into(), "3".into(), "status".into()]);
        drcut_tests::process::drctl(args)
    };
    let out = status_as_ci().await?;
    ensure!(out.code == Some(0), "ci before revocation:\n{out}");

    tracing::info!("--- the CA revokes ci's certificate; the node takes the new list");
    std::fs::write(dir.join("crl.pem"), pki.ca.crl(&[ci.serial])?)?;
    wait_reloaded(&cluster, &[1], 2).await?;
    let out = status_as_ci().await?;
    ensure!(out.code != Some(0), "a revoked certificate must be refused:\n{out}");
    wait::until("the refusal audited", Duration::from_secs(20), async || {
        let out = cluster.drctl(&["--json", "audit", "list", "--limit", "10000"]).await?;
        ensure!(out.code == Some(0), "{out}");
        let audit: Value = serde_json::from_str(&out.stdout)?;
        let found = audit["entries"].as_array().context("entries")?.iter().any(|e| {
            e["action"] == "auth.denied"
                && e["details"]["call"] == "tls"
                && e["details"]["reason"].as_str().unwrap_or("").contains("Revoked")
        });
        ensure!(found, "no auth.denied record for the revoked certificate yet");
        Ok(())
    })
    .await?;
    let out = cluster.drctl(&["status"]).await?;
    ensure!(out.code == Some(0), "other certificates still work:\n{out}");

    tracing::info!("--- a broken list is refused by name and the last good one stays");
    std::fs::write(dir.join("crl.pem"), "-----BEGIN X509 CRL-----\nbroken\n-----END X509 CRL-----\n")?;
    let d = wait_refused(&cluster, 1, "tls.crl").await?;
    ensure!(d["reason"].as_str().unwrap_or("").contains("crl.pem"), "{d}");
    ensure!(status_as_ci().await?.code != Some(0), "still revoked under the last good list");
    cluster.finish();
    Ok(())
}
