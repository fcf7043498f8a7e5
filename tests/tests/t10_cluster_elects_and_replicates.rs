//! A fresh cluster elects one leader, and a region written through any node reaches every node.

use std::collections::BTreeSet;

use anyhow::{Result, ensure};
use drcut_proto::v1::RegionRole;
use drcut_tests::{Cluster, client};

/// Writes through the leader and through a follower (forwarded), then checks every node.
async fn elect_and_replicate(cluster: &Cluster, ids: &[u64]) -> Result<()> {
    tracing::info!("--- wait for a leader");
    let leader = cluster.wait_leader(ids).await?;
    let follower = *ids.iter().find(|&&id| id != leader.node_id).unwrap();

    tracing::info!("--- every node reports its identity and the full voter set");
    for &id in ids {
        let s = cluster.status(id).await?;
        ensure!(s.node_id == id, "node {id} reports node_id {}", s.node_id);
        ensure!(s.cluster_id == format!("test-b{}", cluster.block()), "node {id}: cluster_id {}", s.cluster_id);
        ensure!(s.node_addr == cluster.addr(id).to_string(), "node {id}: node_addr {}", s.node_addr);
        let voters: BTreeSet<u64> = s.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
        ensure!(voters == ids.iter().copied().collect(), "node {id}: voters {voters:?}");
        let stdout = cluster.node(id)?.stdout();
        let line = format!("drcut-coordinator: node {id} serving on {}", cluster.addr(id));
        ensure!(stdout.contains(&line), "node {id} stdout lacks {line:?}:\n{stdout}");
    }
    ensure!(leader.leader_addr == cluster.addr(leader.node_id).to_string(), "leader_addr {}", leader.leader_addr);

    tracing::info!("--- add regions through the leader and through follower {follower}");
    let mut names = BTreeSet::new();
    for (i, via) in [leader.node_id, follower, leader.node_id, follower].into_iter().enumerate() {
        let name = format!("region-{i}");
        let reply = cluster.add_region(via, &name).await?;
        ensure!(reply.log_index > 0, "AddRegion via {via} returned log index 0");
        names.insert(name);
    }
    cluster.wait_regions(ids, &names).await?;

    tracing::info!("--- region details replicate, not just names");
    let regions = client::regions(&mut cluster.client(follower)?).await?;
    let r0 = regions.iter().find(|r| r.name == "region-0").expect("region-0 on the follower");
    ensure!(r0.display_name == "Region region-0", "display_name {:?}", r0.display_name);
    ensure!(
        r0.roles.len() == 1 && r0.roles[0].service == "db" && r0.roles[0].role == RegionRole::Primary as i32,
        "roles {:?}",
        r0.roles
    );

    cluster.wait_converged(ids).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_a_leader_and_replicate_regions() -> Result<()> {
    let cluster = Cluster::builder(10).nodes(3).start().await?;
    elect_and_replicate(&cluster, &[1, 2, 3]).await?;

    tracing::info!("--- a duplicate region name is refused with ALREADY_EXISTS");
    let err = cluster.add_region(2, "region-0").await.expect_err("duplicate region accepted");
    let status = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    ensure!(status.code() == tonic::Code::AlreadyExists, "duplicate gave {status:?}");

    tracing::info!("--- a retried request id returns the first reply and applies once");
    let before = cluster.wait_converged(&[1, 2, 3]).await?;
    let req = client::add_region_request("retried");
    let first = cluster.client(1)?.add_region(req.clone()).await?.into_inner();
    let second = cluster.client(3)?.add_region(req).await?.into_inner();
    ensure!(first == second, "retry replied {second:?}, first reply was {first:?}");
    let after = cluster.wait_converged(&[1, 2, 3]).await?;
    ensure!(
        after.regions.len() == before.regions.len() + 1,
        "regions {} -> {}",
        before.regions.len(),
        after.regions.len()
    );
    ensure!(after.audit_len == before.audit_len + 1, "audit grew {} -> {}", before.audit_len, after.audit_len);

    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_elect_a_leader_and_replicate_regions() -> Result<()> {
    let cluster = Cluster::builder(11).nodes(5).start().await?;
    elect_and_replicate(&cluster, &[1, 2, 3, 4, 5]).await?;
    cluster.finish();
    Ok(())
}
