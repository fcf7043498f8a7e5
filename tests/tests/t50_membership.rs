//! Membership changes through drctl: a new node joins as a learner, is promoted to voter and
//! removed again, and the removed node (still running) cannot disturb the cluster.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_proto::v1::ClusterStatus;
use drcut_tests::cluster::WAIT;
use drcut_tests::{Cluster, wait};

/// Whether `status` lists node `id`, and as a voter.
fn membership(status: &ClusterStatus, id: u64) -> Option<bool> {
    status.members.iter().find(|m| m.id == id).map(|m| m.voter)
}

/// Runs a drctl command against the bootstrap voters and requires exit 0.
async fn drctl_ok(cluster: &Cluster, args: &[&str]) -> Result<()> {
    let out = cluster.drctl_at(&[1, 2, 3], args).await?;
    ensure!(out.code == Some(0), "drctl {args:?} failed:\n{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_joins_is_promoted_and_removed_without_disturbing_the_cluster() -> Result<()> {
    let mut cluster = Cluster::builder(50).nodes(4).initial_members(&[1, 2, 3]).start().await?;
    let voters = [1, 2, 3];
    let all = [1, 2, 3, 4];
    cluster.wait_leader(&voters).await?;
    cluster.add_region(1, "r1").await?;
    let mut names = BTreeSet::from(["r1".to_string()]);

    tracing::info!("--- start node 4 with no initial members: it waits to be added");
    ensure!(cluster.node(4)?.config.initial_members.is_empty());
    cluster.start_node(4).await?;
    let s4 = cluster.status(4).await?;
    ensure!(s4.leader_id == 0 && s4.state != "Leader", "an unadded node must not join or lead: {s4:?}");

    tracing::info!("--- add node 4 as a learner");
    let addr4 = cluster.addr(4).to_string();
    drctl_ok(&cluster, &["cluster", "add-learner", "--id", "4", "--addr", &addr4]).await?;
    cluster.wait_regions(&[4], &names).await?;
    cluster.add_region(4, "r2").await?;
    names.insert("r2".to_string());
    let s = cluster.wait_converged(&all).await?;
    ensure!(membership(&s, 4) == Some(false), "node 4 should be a learner: {:?}", s.members);
    ensure!(cluster.status(4).await?.state == "Learner", "node 4 state {}", cluster.status(4).await?.state);

    tracing::info!("--- promote node 4 to voter");
    drctl_ok(&cluster, &["cluster", "promote", "--id", "4"]).await?;
    wait::until("node 4 to be a voter everywhere", WAIT, async || {
        for s in cluster.statuses(&all).await? {
            ensure!(membership(&s, 4) == Some(true), "node {} sees {:?}", s.node_id, s.members);
        }
        let state = cluster.status(4).await?.state;
        ensure!(state == "Follower" || state == "Leader", "node 4 state {state}");
        Ok(())
    })
    .await?;
    cluster.wait_leader(&all).await?;
    cluster.add_region(2, "r3").await?;
    names.insert("r3".to_string());
    cluster.wait_regions(&all, &names).await?;

    tracing::info!("--- remove node 4");
    drctl_ok(&cluster, &["cluster", "remove", "--id", "4"]).await?;
    wait::until("node 4 to leave the membership", WAIT, async || {
        for s in cluster.statuses(&voters).await? {
            ensure!(membership(&s, 4).is_none(), "node {} still lists node 4: {:?}", s.node_id, s.members);
        }
        Ok(())
    })
    .await?;

    tracing::info!("--- the removed node, still running, cannot disturb the cluster");
    let leader = cluster.wait_leader(&voters).await?;
    // Several of node 4's election timeouts (1–2 s) fit in this window.
    let mut written = 0u32;
    wait::always("a stable leader and term with node 4 removed", Duration::from_secs(6), async || {
        for s in cluster.statuses(&voters).await? {
            ensure!(
                s.leader_id == leader.node_id && s.term == leader.term,
                "node {} sees leader {} term {} (was {} term {})",
                s.node_id,
                s.leader_id,
                s.term,
                leader.node_id,
                leader.term
            );
        }
        written += 1;
        let name = format!("stable-{written}");
        cluster.add_region(leader.node_id, &name).await.context("write while node 4 is removed")?;
        names.insert(name);
        Ok(())
    })
    .await?;
    cluster.wait_regions(&voters, &names).await?;
    cluster.wait_converged(&voters).await?;

    tracing::info!("--- the audit chain verifies");
    drctl_ok(&cluster, &["audit", "verify"]).await?;
    cluster.finish();
    Ok(())
}
