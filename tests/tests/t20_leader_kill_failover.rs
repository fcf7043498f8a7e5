//! Killing the leader with SIGKILL loses no committed write: the survivors elect a new leader
//! that accepts writes, and the killed node restarts from its data dir and catches up.

use std::collections::BTreeSet;

use anyhow::{Result, ensure};
use drcut_tests::Cluster;
use drcut_tests::cluster::region_names;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_leader_takes_writes_and_killed_leader_catches_up() -> Result<()> {
    let mut cluster = Cluster::builder(20).nodes(3).start().await?;
    let all = [1, 2, 3];
    let old = cluster.wait_leader(&all).await?;

    tracing::info!("--- commit regions before the failure");
    let before: Vec<String> = (0..5).map(|i| format!("before-{i}")).collect();
    cluster.add_regions(old.node_id, &before).await?;
    cluster.wait_regions(&all, &before.iter().cloned().collect()).await?;

    tracing::info!("--- kill the leader (node {})", old.node_id);
    cluster.kill(old.node_id).await?;
    let survivors: Vec<u64> = all.iter().copied().filter(|&id| id != old.node_id).collect();
    let new = cluster.wait_leader_after(&survivors, old.term).await?;
    ensure!(new.node_id != old.node_id, "the killed node cannot lead");

    tracing::info!("--- the new leader (node {}) accepts writes", new.node_id);
    let after: Vec<String> = (0..5).map(|i| format!("after-{i}")).collect();
    cluster.add_regions(new.node_id, &after).await?;
    let every: BTreeSet<String> = before.iter().chain(&after).cloned().collect();
    cluster.wait_regions(&survivors, &every).await?;

    tracing::info!("--- restart the old leader from its data dir");
    cluster.start_node(old.node_id).await?;
    let restarted = cluster.status(old.node_id).await?;
    ensure!(restarted.node_id == old.node_id, "restarted node reports id {}", restarted.node_id);
    tracing::info!("--- it catches up and the cluster converges");
    cluster.wait_regions(&all, &every).await?;
    let converged = cluster.wait_converged(&all).await?;
    ensure!(region_names(&converged) == every, "regions {:?}", region_names(&converged));
    let leader = cluster.wait_leader(&all).await?;
    ensure!(leader.term > old.term, "term went from {} to {}", old.term, leader.term);

    tracing::info!("--- the audit chain verifies");
    cluster.audit_verify_ok().await?;
    cluster.finish();
    Ok(())
}
