//! Mutual TLS under a private CA: a 3-node cluster elects and replicates over mTLS, an agent
//! reports over it, drctl works with --ca; a certificate from another CA, a plain-text client,
//! an agent claiming another region than its certificate's, and non-node certificates on the
//! Raft transport are all refused, and the refusals are in the audit chain.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_proto::v1::RaftMessage;
use drcut_proto::v1::raft_transport_client::RaftTransportClient;
use drcut_tests::health::{HEALTH_WAIT, agent_yaml, board, wait_region};
use drcut_tests::tls::{TestCa, TlsFiles};
use drcut_tests::{AgentProc, Cluster, TestHttp, client, wait};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

const HEALTH: &str = "health:\n  down_after: 2\n  up_after: 2\n  tick_ms: 100\n";

/// A channel to `addr` over TLS with `tls` (None: plain text), from source address `from` so
/// the node's audit record names this client.
async fn channel(addr: SocketAddr, tls: Option<&TlsFiles>, from: &str) -> Result<Channel> {
    let ep = match tls {
        Some(t) => Endpoint::from_shared(format!("https://{addr}"))?.tls_config(t.client_config()?)?,
        None => Endpoint::from_shared(format!("http://{addr}"))?,
    };
    let ep = ep.local_address(Some(from.parse::<IpAddr>()?)).connect_timeout(Duration::from_secs(2));
    Ok(ep.timeout(Duration::from_secs(5)).connect().await?)
}

/// The `auth.denied` audit records.
async fn denials(cluster: &Cluster) -> Result<Vec<Value>> {
    let out = cluster.drctl(&["--json", "audit", "list", "--limit", "10000"]).await?;
    ensure!(out.code == Some(0), "audit list failed:\n{out}");
    let audit: Value = serde_json::from_str(&out.stdout)?;
    Ok(audit["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter(|e| e["action"] == "auth.denied")
        .map(|e| e["details"].clone())
        .collect())
}

/// Waits for an `auth.denied` record of `call` whose reason contains `reason` (and whose peer
/// address starts with `peer`).
async fn wait_denial(cluster: &Cluster, call: &str, reason: &str, peer: &str) -> Result<Value> {
    wait::until(&format!("an auth.denied record for {call}: {reason}"), Duration::from_secs(20), async || {
        let all = denials(cluster).await?;
        let text = |d: &Value, k: &str| d[k].as_str().unwrap_or("").to_string();
        all.iter()
            .find(|d| d["call"] == call && text(d, "reason").contains(reason) && text(d, "peer").starts_with(peer))
            .cloned()
            .with_context(|| format!("not yet; denials so far: {all:?}"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_cluster_agent_and_refusals() -> Result<()> {
    let cluster = Cluster::builder(145).nodes(3).extra_yaml(HEALTH).with_tls().with_http().start().await?;
    let all = [1, 2, 3];
    let leader = cluster.wait_leader(&all).await?.leader_id;
    cluster.add_region(leader, "eu-west").await?;
    cluster.add_region(leader, "us-east").await?;
    cluster.wait_converged(&all).await?;
    let pki = cluster.pki().context("tls cluster")?;
    let dir = cluster.dir().join("tls");
    for id in all {
        ensure!(!cluster.node(id)?.stderr().contains("machine links unauthenticated"), "node {id} warned");
    }

    tracing::info!("--- the console and metrics are served over HTTPS with the node's certificate");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let https = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(5))
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.ca_pem().as_bytes())?)
        .build()?;
    let http_addr = drcut_tests::cluster::http_addr(145, leader);
    let page = https.get(format!("https://{http_addr}/")).send().await?;
    ensure!(page.status() == 200, "console over HTTPS: {}", page.status());
    ensure!(page.text().await?.contains("drcut"), "the console page");
    let plain = drcut_tests::http_server::http_client().get(format!("http://{http_addr}/healthz")).send().await;
    ensure!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200), "no plain-text HTTP on a TLS node");
    let rogue = drcut_tests::tls::TestCa::new("rogue-browser")?;
    let untrusting = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(rogue.ca_pem().as_bytes())?)
        .build()?;
    ensure!(
        untrusting.get(format!("https://{http_addr}/healthz")).send().await.is_err(),
        "a client trusting another CA refuses the node's certificate"
    );

    let probe = std::process::Command::new(drcut_tests::bins::bin_path("drcut-coordinator")?)
        .args(["--probe", &http_addr.to_string()])
        .output()?;
    ensure!(probe.status.success(), "--probe of an HTTPS listener: {}", String::from_utf8_lossy(&probe.stderr));

    tracing::info!("--- drctl status over TLS: every member reachable (the probes speak TLS too)");
    let out = cluster.drctl(&["--json", "status"]).await?;
    ensure!(out.code == Some(0), "{out}");
    let st: Value = serde_json::from_str(&out.stdout)?;
    let members = st["members"].as_array().context("members")?;
    ensure!(members.len() == 3 && members.iter().all(|m| m["state"] != "Unreachable"), "{st}");
    // The CA alone is enough for Control (API callers authenticate with tokens, not certificates).
    let ca = pki.client.ca.to_str().context("path")?;
    let out = drcut_tests::process::drctl(["--ca", ca, "--endpoint", &cluster.endpoints(&[1]), "status"]).await?;
    ensure!(out.code == Some(0), "{out}");
    // Without --ca drctl speaks plain text and is refused.
    let out = drcut_tests::process::drctl(["--endpoint", &cluster.endpoints(&[1]), "--timeout", "3", "status"]).await?;
    ensure!(out.code != Some(0), "plain-text drctl must fail:\n{out}");
    ensure!(out.stderr.contains("pass --ca"), "drctl should hint at --ca:\n{out}");

    tracing::info!("--- an agent with its region's certificate registers and reports");
    let app = TestHttp::start("127.0.145.50:0".parse()?).await?;
    let coords: Vec<String> = all.iter().map(|&i| cluster.addr(i).to_string()).collect();
    let checks = format!(
        "checks:\n  - name: api\n    type: http\n    url: {}\n    interval_ms: 100\n    timeout_ms: 500\n    window: 5\n",
        app.url("/health")
    );
    let eu = pki.ca.write(&dir, "agent-eu-west", &pki.ca.agent("eu-west")?)?;
    let yaml = format!("{}{}", agent_yaml("agent-eu-west", "eu-west", &coords, &checks), eu.yaml());
    let mut agent = AgentProc::start(cluster.dir(), "agent-eu-west", &yaml, &[])?;
    wait_region(&cluster, leader, "eu-west", "up", HEALTH_WAIT).await?;

    tracing::info!("--- a client certificate from another CA is refused at the handshake, and audited");
    let rogue = TestCa::new("rogue")?;
    let mallory = rogue.write(&dir, "mallory", &rogue.client("mallory")?)?;
    // It trusts the real CA (so it could verify the node); its own certificate is the problem.
    let mallory = TlsFiles { ca: pki.client.ca.clone(), ..mallory };
    let res = async {
        let ch = channel(cluster.addr(1), Some(&mallory), "127.0.145.61").await?;
        client::status(&mut drcut_proto::v1::control_client::ControlClient::new(ch)).await
    }
    .await;
    ensure!(res.is_err(), "a rogue-CA client got an answer: {res:?}");
    let d = wait_denial(&cluster, "tls", "not signed by this cluster's CA", "127.0.145.61:").await?;
    ensure!(d["peer"].as_str().unwrap_or("").starts_with("127.0.145.61:"), "{d}");
    ensure!(d["code"] == "Unauthenticated", "{d}");

    tracing::info!("--- a plain-text client is refused, and audited");
    let res = async {
        let ch = channel(cluster.addr(2), None, "127.0.145.62").await?;
        client::status(&mut drcut_proto::v1::control_client::ControlClient::new(ch)).await
    }
    .await;
    ensure!(res.is_err(), "a plain-text client got an answer: {res:?}");
    let d = wait_denial(&cluster, "tls", "not a TLS client", "127.0.145.62:").await?;
    ensure!(d["peer"].as_str().unwrap_or("").starts_with("127.0.145.62:"), "{d}");

    tracing::info!("--- an agent holding eu-west's certificate claiming us-east is refused and audited");
    let liar_yaml = format!("{}{}", agent_yaml("agent-liar", "us-east", &coords, &checks), eu.yaml());
    let mut liar = AgentProc::start(cluster.dir(), "agent-liar", &liar_yaml, &[])?;
    wait_denial(&cluster, "AgentLink.Session", "certificate is for region eu-west, agent claims us-east", "").await?;
    let b = board(&cluster, leader).await?;
    ensure!(!b.agents.iter().any(|a| a.agent_id == "agent-liar"), "the liar registered: {:?}", b.agents);
    let us = b.regions.iter().find(|r| r.region == "us-east").context("us-east")?;
    ensure!(us.checks.is_empty(), "us-east got checks from the liar: {:?}", us.checks);
    liar.wait_log("tls.cert (region \"us-east\"): refused by the coordinator", Duration::from_secs(10)).await?;
    ensure!(liar.exited().is_none(), "a refused agent keeps retrying (slowly)");
    liar.terminate().await?;

    tracing::info!("--- the Raft transport takes node certificates only");
    let vote = || RaftMessage { payload: b"{}".to_vec() };
    // A node certificate from the rogue CA does not get past the handshake.
    let rogue_node = rogue.write(&dir, "rogue-node", &rogue.node(9, "127.0.145.63".parse()?)?)?;
    let rogue_node = TlsFiles { ca: pki.client.ca.clone(), ..rogue_node };
    let res = async {
        let ch = channel(cluster.addr(1), Some(&rogue_node), "127.0.145.63").await?;
        Ok::<_, anyhow::Error>(RaftTransportClient::new(ch).vote(vote()).await?)
    }
    .await;
    ensure!(res.is_err(), "a rogue node certificate reached Raft: {res:?}");
    // The eu-west agent's (valid) certificate is not a node's.
    let ch = channel(cluster.addr(1), Some(&eu), "127.0.145.64").await?;
    let s = RaftTransportClient::new(ch).vote(vote()).await.expect_err("an agent certificate must not vote");
    ensure!(s.code() == tonic::Code::PermissionDenied, "{s:?}");
    wait_denial(&cluster, "RaftTransport.Vote", "needs a coordinator node certificate", "127.0.145.64:").await?;
    // No certificate at all: Unauthenticated.
    let ch = Endpoint::from_shared(format!("https://{}", cluster.addr(1)))?
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(&eu.ca)?))
                .domain_name(drcut_tests::tls::NODE_NAME),
        )?
        .connect()
        .await?;
    let s = RaftTransportClient::new(ch).append_entries(vote()).await.expect_err("no certificate, no Raft");
    ensure!(s.code() == tonic::Code::Unauthenticated, "{s:?}");

    tracing::info!("--- the cluster is unharmed: still replicating, agent still connected, chain intact");
    cluster.add_region(2, "ap-south").await?;
    cluster.wait_converged(&all).await?;
    wait::until("the eu-west agent connected", HEALTH_WAIT, async || {
        let b = board(&cluster, leader).await?;
        ensure!(b.agents.iter().any(|a| a.agent_id == "agent-eu-west" && a.connected), "{:?}", b.agents);
        Ok(())
    })
    .await?;
    ensure!(agent.exited().is_none(), "the agent must keep running");
    cluster.audit_verify_ok().await?;
    agent.terminate().await?;
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_are_config_errors() -> Result<()> {
    drcut_tests::init_tracing();
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("tls");
    // An address of this test's block no cluster of it uses: the node must exit before serving.
    let addr: SocketAddr = "127.0.145.201:7001".parse()?;
    let ca = TestCa::new("good")?;
    let good = ca.write(&dir, "node-1", &ca.node(1, addr.ip())?)?;
    let rogue = TestCa::new("rogue")?;
    let other = rogue.write(&dir, "other-node", &rogue.node(1, addr.ip())?)?;
    let agent = ca.write(&dir, "agent-x", &ca.agent("x")?)?;
    let cases = [
        (TlsFiles { cert: dir.join("missing.pem"), ..good.clone() }, "tls.cert", "cannot read"),
        (TlsFiles { ca: other.ca.clone(), ..good.clone() }, "tls.cert", "under the CA"),
        (TlsFiles { key: other.key.clone(), ..good.clone() }, "tls.key", "does not fit"),
        (agent, "tls.cert", "node.drcut.internal"),
    ];
    for (i, (tls, field, what)) in cases.into_iter().enumerate() {
        let mut cfg = drcut_tests::NodeConfig::new(1, "bad-tls", tmp.path().join(format!("data{i}")), addr);
        cfg.tls = Some(tls);
        let path = tmp.path().join(format!("bad{i}.yaml"));
        std::fs::write(&path, cfg.to_yaml())?;
        let out = drcut_tests::process::coordinator_to_exit(&path).await?;
        ensure!(out.code == Some(2), "case {i}: {out}");
        ensure!(out.stderr.contains(field) && out.stderr.contains(what), "case {i}: want {field} / {what}:\n{out}");
        ensure!(!cfg.data_dir.exists(), "case {i}: the data dir was created");
    }
    Ok(())
}

/// scripts/gen-certs (openssl CLI) makes a CA, node, agent and client certificates the
/// coordinator accepts; skipped where openssl is not installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gen_certs_script_output_is_accepted() -> Result<()> {
    if std::process::Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl not installed: skipped");
        return Ok(());
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/gen-certs");
    let dir = tempfile::tempdir()?;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&script).arg("--dir").arg(dir.path()).args(args).output()?;
        anyhow::Ok((
            out.status.code(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        ))
    };
    let (code, out) = run(&["ca"])?;
    ensure!(code == Some(0), "{out}");
    let (code, out) = run(&["node", "1", "--ip", "127.0.147.1", "--dns", "coord-1.example"])?;
    ensure!(code == Some(0), "{out}");
    let (code, out) = run(&["agent", "eu-west"])?;
    ensure!(code == Some(0), "{out}");
    let (code, out) = run(&["client", "alice"])?;
    ensure!(code == Some(0), "{out}");
    // Idempotent: a second run keeps the CA key; overwriting needs --force.
    let key_before = std::fs::read(dir.path().join("ca.key"))?;
    let (code, out) = run(&["ca"])?;
    ensure!(code == Some(0) && out.contains("exists"), "{out}");
    ensure!(std::fs::read(dir.path().join("ca.key"))? == key_before, "the CA key changed");

    let p = |n: &str| dir.path().join(n);
    let yaml = format!(
        "node_id: 1\ncluster_id: c1\ndata_dir: /nonexistent/x\nlisten: 127.0.147.1:7001\ntls:\n  ca: {:?}\n  cert: {:?}\n  key: {:?}\n",
        p("ca.pem"),
        p("node-1.pem"),
        p("node-1.key")
    );
    let cfg = drcut_coordinator::config::Config::parse("gen.yaml", &yaml)?;
    drcut_coordinator::tls::install_crypto_provider();
    ensure!(drcut_coordinator::tls::from_config(&cfg)?.is_some());
    for (cert, key) in [("agent-eu-west.pem", "agent-eu-west.key"), ("client-alice.pem", "client-alice.key")] {
        drcut_coordinator::tls::Material::load(&p("ca.pem"), &p(cert), &p(key))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let agent = CertificateDer::from_pem_file(p("agent-eu-west.pem"))?;
    ensure!(drcut_coordinator::tls::check_agent_region(&agent, "eu-west").is_ok());
    ensure!(drcut_coordinator::tls::check_agent_region(&agent, "us-east").is_err());
    let node = CertificateDer::from_pem_file(p("node-1.pem"))?;
    ensure!(drcut_coordinator::tls::is_node_cert(&node));
    Ok(())
}

/// Automation that holds a client certificate needs no token: a principal lists the
/// certificate's name, and calls made with that certificate act as it (roles, audit actor),
/// until the name is taken off the list, which also ends its open streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_stand_for_principals() -> Result<()> {
    use drcut_tests::auth::TestPrincipals;
    let p = TestPrincipals::new().add("eve", &["viewer"], &[]).add_certificates(
        "ci",
        &["operator"],
        &["ci.clients.drcut.internal"],
    );
    let cluster = Cluster::builder(148).nodes(1).with_tls().with_auth(&p, None).start().await?;
    cluster.wait_leader(&[1]).await?;
    let pki = cluster.pki().context("tls cluster")?;
    let dir = cluster.dir().join("tls");
    let ci = TlsFiles { ca: pki.client.ca.clone(), ..pki.ca.write(&dir, "ci", &pki.ca.client("ci")?)? };
    let stranger =
        TlsFiles { ca: pki.client.ca.clone(), ..pki.ca.write(&dir, "stranger", &pki.ca.client("stranger")?)? };
    let wild = pki.ca.issue("wild", &["*.clients.drcut.internal".to_string()], &[], false)?;
    let wild = TlsFiles { ca: pki.client.ca.clone(), ..pki.ca.write(&dir, "wild", &wild)? };
    let ep = cluster.endpoints(&[1]);
    let drctl = |files: &TlsFiles, args: &[&str]| {
        let mut all = files.drctl_args();
        all.extend(["--endpoint".to_string(), ep.clone()]);
        all.extend(args.iter().map(|a| a.to_string()));
        drcut_tests::process::drctl(all)
    };

    tracing::info!("--- ci's certificate is enough: it acts as ci, with ci's roles");
    let out = drctl(&ci, &["status"]).await?;
    ensure!(out.code == Some(0) && out.stdout.contains("you are ci (operator"), "{out}");
    let out = drctl(&ci, &["region", "add", "eu-west"]).await?;
    ensure!(out.code == Some(1) && out.stderr.contains("AddRegion needs the admin role; ci has operator"), "{out}");
    wait::until("ci's refusal audited as ci", Duration::from_secs(10), async || {
        let d = denials(&cluster).await?;
        ensure!(d.iter().any(|d| d["who"] == "ci" && d["call"] == "AddRegion"), "{d:?}");
        Ok(())
    })
    .await?;

    tracing::info!("--- a certificate no principal lists, or a wildcard one, is not enough");
    for (who, files) in [("stranger", &stranger), ("wildcard", &wild)] {
        let out = drctl(files, &["status"]).await?;
        ensure!(out.code == Some(1) && out.stderr.contains("stands for no principal"), "{who}: {out}");
    }
    // A token still works with any certificate, and wins.
    let out = drctl(&stranger, &["--token", p.token("eve"), "status"]).await?;
    ensure!(out.code == Some(0) && out.stdout.contains("you are eve"), "{out}");

    tracing::info!("--- ci's name is taken off the list: its open stream ends, new calls are refused");
    let ch = channel(cluster.addr(1), Some(&ci), "127.0.148.60").await?;
    let mut control = drcut_proto::v1::control_client::ControlClient::new(ch);
    let mut stream = control.watch_health(drcut_proto::v1::WatchHealthRequest::default()).await?.into_inner();
    let file = cluster.dir().join("principals.yaml");
    let text = std::fs::read_to_string(&file)?;
    std::fs::write(&file, text.replace("[ci.clients.drcut.internal]", "[ci-next.clients.drcut.internal]"))?;
    let end = client::stream_end("ci", &mut stream, Duration::from_secs(5)).await?;
    ensure!(end.code() == tonic::Code::Unauthenticated && end.message().contains("no longer stands for ci"), "{end:?}");
    let out = drctl(&ci, &["status"]).await?;
    ensure!(out.code == Some(1) && out.stderr.contains("stands for no principal"), "{out}");
    cluster.finish();
    Ok(())
}
