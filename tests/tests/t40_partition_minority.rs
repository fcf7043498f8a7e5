//! A node cut off from the others (a minority of one) cannot commit, the majority keeps
//! committing, and after the partition heals every node converges on the majority's history.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use drcut_tests::cluster::region_names;
use drcut_tests::{Cluster, client};

/// How long a write on the minority side may take before the test counts it as not committed.
const MINORITY_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends a write directly to node `id` and fails the test if it succeeds.
async fn write_must_not_commit(cluster: &Cluster, id: u64, name: &str) -> Result<()> {
    let mut c = cluster.client(id)?;
    match tokio::time::timeout(MINORITY_WRITE_TIMEOUT, c.add_region(client::add_region_request(name))).await {
        Ok(Ok(reply)) => bail!("isolated node {id} committed {name}: {:?}", reply.into_inner()),
        Ok(Err(status)) => tracing::info!(node = id, code = ?status.code(), "minority write refused"),
        Err(_) => tracing::info!(node = id, "minority write timed out"),
    }
    Ok(())
}

/// Checks that after healing, all nodes agree and hold everything the majority committed.
async fn heal_and_converge(cluster: &Cluster, all: &[u64], committed: &BTreeSet<String>) -> Result<()> {
    tracing::info!("--- heal the partition");
    cluster.heal_all();
    cluster.wait_leader(all).await?;
    cluster.wait_regions(all, committed).await?;
    let converged = cluster.wait_converged(all).await?;
    // A write that timed out has an unknown outcome, so the minority's region may or may
    // not exist; everything the majority acknowledged must.
    ensure!(committed.is_subset(&region_names(&converged)), "lost acknowledged writes");
    cluster.audit_verify_ok().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_follower_cannot_commit_and_rejoins() -> Result<()> {
    let cluster = Cluster::builder(40).nodes(3).with_proxies().start().await?;
    let all = [1, 2, 3];
    let leader = cluster.wait_leader(&all).await?;
    cluster.add_region(leader.node_id, "before").await?;
    let mut committed = BTreeSet::from(["before".to_string()]);
    cluster.wait_regions(&all, &committed).await?;

    let cut = *all.iter().find(|&&id| id != leader.node_id).unwrap();
    let majority: Vec<u64> = all.iter().copied().filter(|&id| id != cut).collect();
    tracing::info!("--- isolate follower {cut}");
    cluster.isolate(cut)?;

    tracing::info!("--- a write sent to the isolated follower does not commit");
    write_must_not_commit(&cluster, cut, "minority").await?;

    tracing::info!("--- the majority keeps committing");
    for i in 0..5 {
        let name = format!("majority-{i}");
        cluster.add_region(majority[i % 2], &name).await?;
        committed.insert(name);
    }
    cluster.wait_regions(&majority, &committed).await?;
    let now = cluster.wait_leader(&majority).await?;
    ensure!(now.node_id == leader.node_id && now.term == leader.term, "majority lost its leader: {now:?}");

    heal_and_converge(&cluster, &all, &committed).await?;
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_cannot_commit_and_majority_elects_another() -> Result<()> {
    let cluster = Cluster::builder(41).nodes(3).with_proxies().start().await?;
    let all = [1, 2, 3];
    let old = cluster.wait_leader(&all).await?;
    cluster.add_region(old.node_id, "before").await?;
    let mut committed = BTreeSet::from(["before".to_string()]);
    cluster.wait_regions(&all, &committed).await?;

    tracing::info!("--- isolate the leader (node {})", old.node_id);
    cluster.isolate(old.node_id)?;
    let majority: Vec<u64> = all.iter().copied().filter(|&id| id != old.node_id).collect();

    tracing::info!("--- the majority elects a new leader and commits");
    let new = cluster.wait_leader_after(&majority, old.term).await?;
    for i in 0..5 {
        let name = format!("majority-{i}");
        cluster.add_region(majority[i % 2], &name).await?;
        committed.insert(name);
    }
    cluster.wait_regions(&majority, &committed).await?;

    tracing::info!("--- a write sent to the deposed leader does not commit");
    write_must_not_commit(&cluster, old.node_id, "minority").await?;

    heal_and_converge(&cluster, &all, &committed).await?;
    let after = cluster.status(old.node_id).await?;
    ensure!(after.term >= new.term, "old leader still in term {} after healing (new term {})", after.term, new.term);
    cluster.finish();
    Ok(())
}
