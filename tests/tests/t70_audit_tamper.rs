//! The audit chain verifies after normal operation, and an entry edited on disk behind a node's
//! back is caught by `drctl audit verify --local`, which names the broken sequence number.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use drcut_proto::v1::{ListAuditRequest, ReadConsistency};
use drcut_tests::Cluster;
use redb::{ReadableTable, TableDefinition};

/// The state machine's audit table, as the storage layer defines it.
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// The entry the test edits.
const TAMPERED_SEQ: u64 = 2;

/// Rewrites the `actor` of audit entry `seq` in a stopped node's `state.redb`, leaving its
/// hash as it was: what an intruder with disk access would do.
fn tamper_actor(state_redb: &Path, seq: u64, actor: &str) -> Result<String> {
    let db = redb::Database::open(state_redb).with_context(|| format!("opening {}", state_redb.display()))?;
    let txn = db.begin_write()?;
    let original;
    {
        let mut table = txn.open_table(AUDIT)?;
        let raw = table.get(seq)?.with_context(|| format!("no audit entry {seq}"))?.value().to_vec();
        let mut entry: serde_json::Value = serde_json::from_slice(&raw)?;
        original = entry["actor"].as_str().context("entry has no actor")?.to_string();
        ensure!(original != actor, "entry {seq} already has actor {actor}");
        entry["actor"] = actor.into();
        table.insert(seq, serde_json::to_vec(&entry)?.as_slice())?;
    }
    txn.commit()?;
    Ok(original)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_audit_entry_is_detected_by_local_verify() -> Result<()> {
    let mut cluster = Cluster::builder(70).nodes(3).start().await?;
    let all = [1, 2, 3];
    let leader = cluster.wait_leader(&all).await?;

    tracing::info!("--- make some history: regions through gRPC and drctl");
    cluster.add_region(leader.node_id, "eu-west").await?;
    let out = cluster
        .drctl(&[
            "--actor",
            "alice",
            "region",
            "add",
            "eu-central",
            "--display-name",
            "Frankfurt",
            "--role",
            "db=standby",
        ])
        .await?;
    ensure!(out.code == Some(0), "drctl region add:\n{out}");
    cluster.add_region(leader.node_id, "us-east").await?;
    let converged = cluster.wait_converged(&all).await?;
    ensure!(converged.audit_len > TAMPERED_SEQ, "only {} audit entries", converged.audit_len);

    tracing::info!("--- the chain verifies, cluster-wide and on every node locally");
    cluster.audit_verify_ok().await?;
    for id in all {
        let out = cluster.drctl_at(&[id], &["audit", "verify", "--local"]).await?;
        ensure!(out.code == Some(0), "local verify on node {id}:\n{out}");
    }

    // A follower, so the cluster keeps its leader while the victim is down.
    let victim = *all.iter().find(|&&id| id != leader.node_id).unwrap();
    tracing::info!("--- stop node {victim} and edit audit entry {TAMPERED_SEQ} in its state.redb");
    cluster.stop(victim).await?;
    let state = cluster.node(victim)?.config.data_dir.join("state.redb");
    let original = tokio::task::spawn_blocking(move || tamper_actor(&state, TAMPERED_SEQ, "mallory")).await??;
    tracing::info!(original, "actor rewritten to mallory");

    tracing::info!("--- restart it: the edited entry is what it now serves");
    cluster.start_node(victim).await?;
    let reply = cluster
        .client(victim)?
        .list_audit(ListAuditRequest { from_seq: TAMPERED_SEQ, limit: 1, consistency: ReadConsistency::Local as i32 })
        .await?
        .into_inner();
    let entry = reply.entries.first().context("no audit entry served")?;
    ensure!(entry.seq == TAMPERED_SEQ && entry.actor == "mallory", "node {victim} serves {entry:?}");

    tracing::info!("--- local verify on the tampered node fails and names the entry");
    let out = cluster.drctl_at(&[victim], &["audit", "verify", "--local"]).await?;
    ensure!(out.code == Some(1), "expected exit 1 from verify on the tampered node:\n{out}");
    let broken = format!("audit chain broken at seq {TAMPERED_SEQ}");
    ensure!(out.combined().contains(&broken), "output does not say {broken:?}:\n{out}");

    tracing::info!("--- the leader's chain is untouched");
    let out = cluster.drctl_at(&[leader.node_id], &["audit", "verify", "--local"]).await?;
    ensure!(out.code == Some(0), "the leader's chain should still verify:\n{out}");
    cluster.finish();
    Ok(())
}
