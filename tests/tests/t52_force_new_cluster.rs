//! The majority of the coordinator cluster lost for good: `drcut-coordinator
//! --force-new-cluster` on the survivor refuses while another member still answers, then makes
//! the survivor a one-node cluster with everything it held (regions, playbooks, the audit
//! chain, which records the recovery), and new nodes join it under new ids.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_tests::Cluster;
use drcut_tests::cluster::WAIT;
use drcut_tests::process::run;

const BLOCK: u8 = 52;

async fn recover(cluster: &Cluster, id: u64) -> Result<drcut_tests::ProcessOutput> {
    let bin = drcut_tests::bins::bin_path(drcut_tests::bins::COORDINATOR)?;
    let config = cluster.node(id)?.config_path.display().to_string();
    run(&bin, ["--config", &config, "--force-new-cluster", "--actor", "sre-on-call"], Duration::from_secs(30)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_survivor_becomes_the_cluster_and_new_nodes_join_it() -> Result<()> {
    let mut cluster = Cluster::builder(BLOCK).nodes(5).initial_members(&[1, 2, 3]).start().await?;
    cluster.wait_leader(&[1, 2, 3]).await?;
    for r in ["eu-west", "eu-central"] {
        cluster.add_region(1, r).await?;
    }
    let before = cluster.drctl_at(&[1, 2, 3], &["--json", "audit", "list", "--limit", "1000"]).await?;
    ensure!(before.code == Some(0), "{before}");

    tracing::info!("--- node 1 stopped, node 2 still up: the majority is not lost, recovery refused");
    cluster.kill(3).await?;
    cluster.stop(1).await?;
    let out = recover(&cluster, 1).await?;
    ensure!(out.code == Some(2) && out.stderr.contains("node 2") && out.stderr.contains("not lost"), "{out}");

    tracing::info!("--- nodes 2 and 3 gone for good: node 1 recovers");
    cluster.kill(2).await?;
    let out = recover(&cluster, 1).await?;
    ensure!(out.code == Some(0), "{out}");
    ensure!(out.stdout.contains("one-node cluster") && out.stdout.contains("never start node(s) 2, 3"), "{out}");
    let data = cluster.dir().join("node1");
    let backups = std::fs::read_dir(&data)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("data.before-recovery-"))
        .count();
    ensure!(backups == 1, "the data dir was copied aside once under {}", data.display());

    tracing::info!("--- node 1 starts and leads alone, with everything it held");
    cluster.start_node(1).await?;
    let st = cluster.wait_leader(&[1]).await?;
    ensure!(st.leader_id == 1 && st.members.len() == 1, "{st:?}");
    let regions = cluster.drctl_at(&[1], &["--json", "region", "list"]).await?;
    ensure!(regions.stdout.contains("eu-west") && regions.stdout.contains("eu-central"), "{regions}");
    cluster.add_region(1, "eu-north").await?;
    let audit = cluster.drctl_at(&[1], &["--json", "audit", "list", "--limit", "1000"]).await?;
    ensure!(audit.stdout.contains("cluster.recovered") && audit.stdout.contains("sre-on-call"), "{audit}");
    ensure!(audit.stdout.len() > before.stdout.len(), "the chain goes on from where it was");
    let verify = cluster.drctl_at(&[1], &["audit", "verify"]).await?;
    ensure!(verify.code == Some(0), "the chain verifies across the recovery: {verify}");

    tracing::info!("--- new nodes 4 and 5 join under new ids and take the state");
    for id in [4, 5] {
        cluster.start_node(id).await?;
        let addr = cluster.addr(id).to_string();
        let out = cluster.drctl_at(&[1], &["cluster", "add-learner", "--id", &id.to_string(), "--addr", &addr]).await?;
        ensure!(out.code == Some(0), "{out}");
        let out = cluster.drctl_at(&[1], &["cluster", "promote", "--id", &id.to_string()]).await?;
        ensure!(out.code == Some(0), "{out}");
    }
    let st = cluster.status(1).await?;
    let voters: Vec<u64> = st.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
    ensure!(voters == vec![1, 4, 5], "{st:?}");
    drcut_tests::wait::until("node 5 holds every region", WAIT, async || {
        let names: Vec<String> =
            drcut_tests::client::regions(&mut cluster.client(5)?).await?.into_iter().map(|r| r.name).collect();
        ensure!(names.contains(&"eu-north".to_string()) && names.contains(&"eu-west".to_string()), "{names:?}");
        Ok(())
    })
    .await
    .context("a new node catches up from the survivor")?;

    tracing::info!("--- the new cluster survives losing its old survivor");
    cluster.kill(1).await?;
    let st = cluster.wait_leader(&[4, 5]).await?;
    ensure!([4, 5].contains(&st.leader_id), "{st:?}");
    cluster.add_region(st.leader_id, "us-east").await?;
    cluster.finish();
    Ok(())
}
