//! The example Prometheus alert rules and Grafana dashboard in `docs/observability` stay true:
//! every rule is well formed (severity, summary), and every drcut metric a rule or a panel
//! names is exported: scraped from a real coordinator and agent, or (a labelled family with no
//! series yet) registered by their exporters.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_tests::health::agent_yaml;
use drcut_tests::{AgentProc, Cluster};

/// `drcut_*` names in an expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("drcut_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        // A counter's family `x` is scraped as the series `x_total`.
        let name = &tail[..end];
        out.push(name.strip_suffix("_total").unwrap_or(name).to_string());
        rest = &tail[end..];
    }
    out
}

/// Metric families a scrape declares (`# TYPE name kind`).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_and_dashboard_name_only_exported_metrics() -> Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/observability");
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(format!("{root}/alerts.yaml"))?)?;
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{root}/grafana-dashboard.json"))?)?;

    let mut wanted = BTreeSet::new();
    let groups = rules["groups"].as_sequence().context("alerts.yaml: no groups")?;
    for g in groups {
        for r in g["rules"].as_sequence().context("a group without rules")? {
            let name = r["alert"].as_str().context("a rule without alert")?;
            let expr = r["expr"].as_str().with_context(|| format!("{name}: no expr"))?;
            ensure!(r["labels"]["severity"].as_str().is_some(), "{name}: no severity");
            ensure!(r["annotations"]["summary"].as_str().is_some(), "{name}: no summary");
            wanted.extend(metric_names(expr));
        }
    }
    for p in dash["panels"].as_array().context("dashboard: no panels")? {
        for t in p["targets"].as_array().context("a panel without targets")? {
            wanted.extend(metric_names(t["expr"].as_str().context("a target without expr")?));
        }
    }
    ensure!(wanted.len() > 10, "only {wanted:?}");

    let cluster = Cluster::builder(88).nodes(1).with_http().start().await?;
    let leader = cluster.wait_leader(&[1]).await?.leader_id;
    cluster.add_region(leader, "eu-west").await?;
    let agent_metrics = "127.0.88.20:19100";
    let yaml = format!("metrics_listen: {agent_metrics}\nchecks: []\n");
    let _agent = AgentProc::start(
        cluster.dir(),
        "agent-eu-west",
        &agent_yaml("agent-eu-west", "eu-west", &[cluster.addr(1).to_string()], &yaml),
        &[],
    )?;
    let http = drcut_tests::http_server::http_client();
    let coord = format!("http://{}/metrics", drcut_tests::cluster::http_addr(88, 1));
    let mut have = BTreeSet::new();
    for _ in 0..50 {
        have = families(&http.get(&coord).send().await?.text().await?);
        if let Ok(r) = http.get(format!("http://{agent_metrics}/metrics")).send().await {
            have.extend(families(&r.text().await?));
        }
        // Both exporters answered (the agent's starts with its process).
        if have.contains("drcut_raft_is_leader") && have.contains("drcut_agent_faults_active") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in ["drcut_raft_is_leader", "drcut_runs_held", "drcut_drills_active", "drcut_agent_faults_active"] {
        ensure!(have.contains(m), "{m} not scraped: {have:?}");
    }

    // Readiness (Kubernetes) and the image's health check probe.
    let http_addr = drcut_tests::cluster::http_addr(88, 1);
    let mut ready = http.get(format!("http://{http_addr}/readyz")).send().await?;
    for _ in 0..50 {
        if ready.status() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = http.get(format!("http://{http_addr}/readyz")).send().await?;
    }
    ensure!(ready.status() == 200, "/readyz on a node with a leader: {}", ready.status());
    let probe = |addr: String| {
        std::process::Command::new(drcut_tests::bins::bin_path("drcut-coordinator").unwrap())
            .args(["--probe", &addr])
            .output()
    };
    let ok = probe(http_addr.to_string())?;
    ensure!(ok.status.success(), "--probe of a live node: {}", String::from_utf8_lossy(&ok.stderr));
    let dead = probe("127.0.88.99:9".into())?;
    ensure!(
        !dead.status.success() && String::from_utf8_lossy(&dead.stderr).contains("cannot connect"),
        "--probe of nothing fails: {}",
        String::from_utf8_lossy(&dead.stderr)
    );
    // A family with labels appears in a scrape only once it has a series (a fresh cluster has
    // no runs, drills or fences): those must at least be registered by an exporter.
    for src in ["coordinator/src/http.rs", "agent/src/metrics.rs"] {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../").to_string() + src)?;
        have.extend(text.split('"').filter(|t| t.starts_with("drcut_")).map(String::from));
    }
    let missing: Vec<_> = wanted.difference(&have).collect();
    ensure!(missing.is_empty(), "named in docs/observability but not exported: {missing:?}");
    cluster.finish();
    Ok(())
}
