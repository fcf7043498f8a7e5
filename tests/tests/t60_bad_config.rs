//! A coordinator given a bad config or someone else's data dir refuses to start: exit code 2,
//! a message naming the file and the field, and nothing written to the data dir.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use drcut_tests::cluster::node_addr;
use drcut_tests::{Cluster, NodeConfig, process};

/// Address block of the config-only cases; each case uses its own host number in it, so a
/// config wrongly accepted cannot collide with another case running in parallel.
const BLOCK: u8 = 60;

/// A valid single-member config for host `n` of [`BLOCK`] whose data dir does not exist.
fn valid(dir: &Path, n: u64) -> NodeConfig {
    let addr = node_addr(BLOCK, n);
    let mut c = NodeConfig::new(1, "bad-config", dir.join("data"), addr);
    c.initial_members = vec![(1, addr.to_string())];
    c
}

/// Writes `yaml`, runs the coordinator on it and checks the refusal: exit 2, stderr naming the
/// config file and `field`, and no data dir created.
async fn assert_refused(dir: &Path, yaml: &str, field: &str) -> Result<()> {
    let path = dir.join("node.yaml");
    std::fs::write(&path, yaml)?;
    let out = process::coordinator_to_exit(&path).await?;
    let context = format!("config:\n{yaml}\n{out}");
    ensure!(out.code == Some(2), "expected exit code 2; {context}");
    ensure!(out.stderr.contains(&path.display().to_string()), "stderr does not name {}; {context}", path.display());
    ensure!(out.stderr.contains(field), "stderr does not name field {field:?}; {context}");
    ensure!(!out.stdout.contains("serving on"), "a refused node claims to serve; {context}");
    ensure!(!dir.join("data").exists(), "a refused node created its data dir; {context}");
    Ok(())
}

/// Runs one config-only case on host `n`: `edit` turns the valid YAML into the bad one.
async fn refused_case(n: u64, field: &str, edit: impl FnOnce(NodeConfig) -> String) -> Result<()> {
    drcut_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let yaml = edit(valid(dir.path(), n));
    assert_refused(dir.path(), &yaml, field).await
}

#[tokio::test]
async fn unknown_top_level_field_is_refused() -> Result<()> {
    refused_case(1, "bogus_setting", |c| c.to_yaml() + "bogus_setting: 1\n").await
}

#[tokio::test]
async fn unknown_raft_field_is_refused() -> Result<()> {
    refused_case(2, "heartbeat_millis", |c| c.to_yaml() + "raft:\n  heartbeat_millis: 100\n").await
}

#[tokio::test]
async fn missing_node_id_is_refused() -> Result<()> {
    refused_case(3, "node_id", |c| {
        c.to_yaml().lines().filter(|l| !l.starts_with("node_id:")).map(|l| format!("{l}\n")).collect()
    })
    .await
}

#[tokio::test]
async fn zero_node_id_is_refused() -> Result<()> {
    refused_case(4, "node_id", |c| c.to_yaml().replace("node_id: 1\n", "node_id: 0\n")).await
}

#[tokio::test]
async fn missing_data_dir_is_refused() -> Result<()> {
    refused_case(5, "data_dir", |c| {
        c.to_yaml().lines().filter(|l| !l.starts_with("data_dir:")).map(|l| format!("{l}\n")).collect()
    })
    .await
}

#[tokio::test]
async fn bad_cluster_id_is_refused() -> Result<()> {
    refused_case(6, "cluster_id", |mut c| {
        c.cluster_id = "Bad_Cluster".into();
        c.to_yaml()
    })
    .await
}

#[tokio::test]
async fn bad_listen_address_is_refused() -> Result<()> {
    refused_case(7, "listen", |mut c| {
        c.listen = "127.0.60.7:notaport".into();
        c.to_yaml()
    })
    .await
}

#[tokio::test]
async fn bad_member_address_is_refused() -> Result<()> {
    refused_case(8, "initial_members", |mut c| {
        c.initial_members.push((2, "nowhere".into()));
        c.to_yaml()
    })
    .await
}

#[tokio::test]
async fn duplicate_member_id_is_refused() -> Result<()> {
    refused_case(9, "initial_members", |mut c| {
        c.initial_members.push((1, node_addr(BLOCK, 19).to_string()));
        c.to_yaml()
    })
    .await
}

/// Every file under `dir` with its content, to prove a refused start wrote nothing.
fn snapshot(dir: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path.clone());
                out.insert(path.strip_prefix(dir)?.to_path_buf(), Vec::new());
            } else {
                out.insert(path.strip_prefix(dir)?.to_path_buf(), std::fs::read(&path)?);
            }
        }
    }
    Ok(out)
}

/// Starts node 1 of a one-node cluster in `block`, writes a region, stops it, then runs the
/// coordinator on its data dir with the config `edit` makes and checks the refusal.
async fn foreign_data_dir_is_refused(block: u8, field: &str, edit: impl FnOnce(&mut NodeConfig)) -> Result<()> {
    let mut cluster = Cluster::builder(block).nodes(1).start().await?;
    cluster.wait_leader(&[1]).await?;
    cluster.add_region(1, "eu-west").await?;
    cluster.stop(1).await?;
    let data = cluster.node(1)?.config.data_dir.clone();
    let before = snapshot(&data)?;
    ensure!(
        before.keys().any(|p| p.ends_with("identity.json")),
        "no identity.json in {}: {:?}",
        data.display(),
        before.keys()
    );

    tracing::info!("--- start on node 1's data dir with a config that does not match it");
    let mut bad = cluster.node(1)?.config.clone();
    edit(&mut bad);
    let path = cluster.dir().join("foreign.yaml");
    std::fs::write(&path, bad.to_yaml())?;
    let out = process::coordinator_to_exit(&path).await?;
    ensure!(out.code == Some(2), "expected exit code 2:\n{out}");
    let identity = data.join("identity.json");
    ensure!(
        out.stderr.contains(&path.display().to_string()) || out.stderr.contains(&identity.display().to_string()),
        "stderr names neither {} nor {}:\n{out}",
        path.display(),
        identity.display()
    );
    ensure!(out.stderr.contains(field), "stderr does not name field {field:?}:\n{out}");

    let after = snapshot(&data)?;
    let changed: BTreeSet<&PathBuf> =
        before.keys().chain(after.keys()).filter(|p| before.get(*p) != after.get(*p)).collect();
    ensure!(changed.is_empty(), "the refused start changed {changed:?} in {}", data.display());

    tracing::info!("--- the rightful owner still starts on it");
    cluster.start_node(1).await?;
    cluster.wait_leader(&[1]).await?;
    let regions = drcut_tests::client::regions(&mut cluster.client(1)?).await?;
    ensure!(regions.iter().any(|r| r.name == "eu-west"), "node 1 lost its region: {regions:?}");
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_of_another_node_is_refused() -> Result<()> {
    foreign_data_dir_is_refused(61, "node_id", |c| {
        c.node_id = 2;
        c.listen = node_addr(61, 2).to_string();
        c.initial_members = vec![(1, node_addr(61, 1).to_string()), (2, node_addr(61, 2).to_string())];
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_of_another_cluster_is_refused() -> Result<()> {
    foreign_data_dir_is_refused(62, "cluster_id", |c| c.cluster_id = "another-cluster".into()).await
}
