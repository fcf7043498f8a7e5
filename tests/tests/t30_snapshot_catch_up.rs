//! A node that was down while the leader snapshotted and purged its log catches up through a
//! snapshot, then keeps replicating from the log.

use std::collections::BTreeSet;

use anyhow::{Result, ensure};
use drcut_tests::Cluster;
use drcut_tests::cluster::{WAIT, region_names};
use drcut_tests::wait;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restarted_after_log_purge_catches_up_via_snapshot() -> Result<()> {
    let mut cluster = Cluster::builder(30)
        .nodes(3)
        .raft(|r| {
            r.snapshot_every_logs = Some(20);
            r.keep_logs_after_snapshot = Some(0);
        })
        .start()
        .await?;
    let all = [1, 2, 3];
    cluster.wait_leader(&all).await?;
    cluster.add_region(1, "early").await?;
    cluster.wait_regions(&all, &BTreeSet::from(["early".to_string()])).await?;

    tracing::info!("--- stop node 3");
    let stopped_at = cluster.status(3).await?.last_applied;
    cluster.stop(3).await?;

    tracing::info!("--- write 100 regions while node 3 is down");
    let majority = [1, 2];
    let leader = cluster.wait_leader(&majority).await?;
    let names: Vec<String> = (0..100).map(|i| format!("bulk-{i:03}")).collect();
    cluster.add_regions(leader.node_id, &names).await?;
    let mut every: BTreeSet<String> = names.iter().cloned().collect();
    every.insert("early".to_string());
    cluster.wait_regions(&majority, &every).await?;

    tracing::info!("--- the leader has snapshotted past what node 3 holds");
    let snap = wait::until("a leader snapshot past node 3's last applied index", WAIT, async || {
        let s = cluster.status(leader.node_id).await?;
        ensure!(s.snapshot_index > stopped_at, "snapshot_index {} (node 3 stopped at {stopped_at})", s.snapshot_index);
        Ok(s.snapshot_index)
    })
    .await?;
    tracing::info!(snapshot_index = snap, stopped_at, "leader snapshot");

    tracing::info!("--- restart node 3: it must install the snapshot");
    cluster.start_node(3).await?;
    cluster.wait_regions(&[3], &every).await?;
    let s3 = cluster.status(3).await?;
    ensure!(
        s3.snapshot_index > stopped_at,
        "node 3 caught up without a snapshot: snapshot_index {}",
        s3.snapshot_index
    );
    // Its own snapshots would also raise snapshot_index; only the transport's log line proves
    // the leader's snapshot was streamed and installed.
    let log = cluster.node(3)?.stderr();
    ensure!(log.contains("installing snapshot from leader"), "node 3 never installed a snapshot from the leader");

    tracing::info!("--- node 3 keeps replicating from the log after the snapshot");
    cluster.add_region(3, "after-snapshot").await?;
    every.insert("after-snapshot".to_string());
    let converged = cluster.wait_converged(&all).await?;
    ensure!(
        region_names(&converged) == every,
        "converged on {} regions, expected {}",
        converged.regions.len(),
        every.len()
    );

    tracing::info!("--- the audit chain verifies");
    cluster.audit_verify_ok().await?;
    cluster.finish();
    Ok(())
}
