//! The automatic policy does not flap.
//!
//! - One vantage point's network to eu-west flaps (eu-central's link to eu-west's database is
//!   cut): 1 of 3 vantage points sees it down, below the quorum: no failover.
//! - eu-west's database dies: one automatic failover of the `login` service to eu-central.
//!   eu-west comes back; then eu-central dies, inside the cooldown: the reverse failover is
//!   suppressed and an acknowledgement is requested (audited), until an operator acknowledges;
//!   then it runs.
//!
//! The `login` playbooks only call hooks and smoke-test: the policy, not the database, is what
//! this test is about (t110 covers the database).

use std::time::Duration;

use anyhow::{Result, ensure};
use drcut_tests::cutover::{Env, EnvOptions};
use drcut_tests::health::{HEALTH_WAIT, audit_entries, wait_audit_entry, wait_region};

/// A `login` failover playbook from `source` to `target`, automatic with a 10 min cooldown.
fn login_playbook(name: &str, source: &str, target: &str, target_url: &str) -> String {
    format!(
        r#"apiVersion: drcut/v1
kind: Playbook
metadata: {{ name: {name} }}
spec:
  service: login
  failover:
    source: {source}
    target: {target}
    automatic: {{ enabled: true, cooldown: 10m }}
  defaults: {{ timeout: 10s }}
  steps:
    - {{ id: page, action: hook, region: {target}, with: {{ exec: [/bin/true] }} }}
    - {{ id: smoke, action: smoke, region: {target}, with: {{ urls: ["{target_url}"] }} }}
"#
    )
}

fn login_runs(runs: &[drcut_proto::v1::RunInfo]) -> Vec<&drcut_proto::v1::RunInfo> {
    runs.iter().filter(|r| r.service == "login").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flapping_vantage_does_not_fail_over_and_a_second_loss_waits_for_an_ack() -> Result<()> {
    let mut env = Env::start_with(114, EnvOptions { witness: true, ..Default::default() }).await?;
    let central_url = env.central_app.url("/health");
    let west_url = env.west_app.url("/health");
    env.apply_playbook("login-out", &login_playbook("login-out", "eu-west", "eu-central", &central_url)).await?;
    env.apply_playbook("login-back", &login_playbook("login-back", "eu-central", "eu-west", &west_url)).await?;
    let leader = env.cluster.wait_leader(&[1, 2, 3]).await?.leader_id;

    tracing::info!("--- one vantage point's link to eu-west flaps");
    for _ in 0..3 {
        env.vantage_proxy.cut();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        env.vantage_proxy.heal();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(login_runs(&env.runs().await?).is_empty(), "a flapping vantage point caused a failover");

    tracing::info!("--- eu-west's database dies: one automatic failover");
    env.pg.stop_primary_immediate().await?;
    let first =
        env.wait_run(Duration::from_secs(20), "the first automatic failover", |r| r.playbook == "login-out").await?;
    ensure!(first.requester == "system", "requester {}", first.requester);
    env.poll_run(&first.run_id, Duration::from_secs(30), "success", |r| r.state == "succeeded").await?;

    tracing::info!("--- eu-west comes back; then eu-central dies inside the cooldown");
    env.pg.restart_primary().await?;
    wait_region(&env.cluster, leader, "eu-west", "up", HEALTH_WAIT).await?;
    env.central_app.set_down(true)?;
    env.pg.stop_standby_immediate().await?;
    wait_region(&env.cluster, leader, "eu-central", "down", HEALTH_WAIT).await?;
    let e = wait_audit_entry(&env.cluster, Duration::from_secs(10), "a suppressed failover", |e| {
        e["action"] == "failover.suppressed"
    })
    .await?;
    ensure!(e["details"]["reason"].as_str().unwrap_or_default().contains("cooldown"), "{e}");
    ensure!(e["actor"] == "system", "{e}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = env.runs().await?;
    ensure!(login_runs(&runs).len() == 1, "a second automatic failover ran inside the cooldown");
    let out = env.cluster.drctl(&["--json", "status"]).await?;
    let st: serde_json::Value = serde_json::from_str(out.stdout.lines().last().unwrap_or_default())?;
    let login = st["services"].as_array().and_then(|a| a.iter().find(|s| s["service"] == "login").cloned());
    ensure!(
        login.as_ref().is_some_and(|l| l["ack_requested"].as_str().is_some_and(|a| a.contains("drctl failover ack"))),
        "status does not ask for the acknowledgement: {login:?} in {st}"
    );

    tracing::info!("--- an operator acknowledges: the reverse failover runs");
    let out = env.cluster.drctl(&["failover", "ack", "login"]).await?;
    ensure!(out.code != Some(0), "an ack without a note was accepted");
    let out = env
        .cluster
        .drctl(&["--actor", "alice", "failover", "ack", "login", "--note", "eu-central is really gone; checked"])
        .await?;
    ensure!(out.code == Some(0), "ack: {}{}", out.stdout, out.stderr);
    let second =
        env.wait_run(Duration::from_secs(10), "the acknowledged failover", |r| r.playbook == "login-back").await?;
    ensure!(second.requester == "system", "requester {}", second.requester);
    let (_, entries) = audit_entries(&env.cluster).await?;
    ensure!(
        entries.iter().filter(|e| e["action"] == "failover.suppressed").count() == 1,
        "the request for an acknowledgement is made once"
    );
    ensure!(entries.iter().any(|e| e["action"] == "failover.acknowledged" && e["actor"] == "alice"));
    Ok(())
}
