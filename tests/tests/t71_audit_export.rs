//! An auditor's copy of the chain: `drctl audit export` writes JSON Lines with every hash,
//! `drctl audit verify FILE` checks it with no cluster at all (the cluster is gone by then), a
//! later range verifies anchored at the previous export's head, and an edited line is caught
//! with its line number.

use anyhow::{Result, ensure};
use drcut_tests::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_chain_verifies_offline_and_edits_are_caught() -> Result<()> {
    let cluster = Cluster::builder(71).nodes(3).start().await?;
    let leader = cluster.wait_leader(&[1, 2, 3]).await?.leader_id;
    for r in ["eu-west", "eu-central", "eu-north"] {
        cluster.add_region(leader, r).await?;
    }
    let dir = tempfile::tempdir()?;
    let whole = dir.path().join("audit.jsonl");
    let first = dir.path().join("audit-1-3.jsonl");
    let rest = dir.path().join("audit-4-.jsonl");
    let p = |x: &std::path::Path| x.display().to_string();
    for (args, file) in [
        (vec!["audit", "export"], &whole),
        (vec!["audit", "export", "--to", "3"], &first),
        (vec!["audit", "export", "--from", "4"], &rest),
    ] {
        let mut a = args.clone();
        let out_path = p(file);
        a.extend(["--out", &out_path]);
        let out = cluster.drctl(&a).await?;
        ensure!(out.code == Some(0), "{a:?}: {out}");
    }
    let again = cluster.drctl(&["audit", "export", "--out", &p(&whole)]).await?;
    ensure!(again.code != Some(0) && again.stderr.contains("exists"), "an export is never overwritten: {again}");
    let lines = std::fs::read_to_string(&whole)?;
    ensure!(lines.lines().count() >= 4, "the whole chain: {lines}");
    ensure!(lines.contains("\"hash\"") && lines.contains("\"prev_hash\""), "hashes exported: {lines}");
    cluster.finish();

    tracing::info!("--- offline: no coordinator is running");
    let ok = drcut_tests::process::drctl(&["audit", "verify", &p(&whole)]).await?;
    ensure!(ok.code == Some(0) && ok.stdout.contains("anchored at the genesis"), "{ok}");
    let head_of_first = drcut_tests::process::drctl(&["--json", "audit", "verify", &p(&first)]).await?;
    ensure!(head_of_first.code == Some(0), "{head_of_first}");
    let head: serde_json::Value = serde_json::from_str(head_of_first.stdout.trim())?;
    let later = drcut_tests::process::drctl(&["--json", "audit", "verify", &p(&rest)]).await?;
    ensure!(later.code == Some(0), "{later}");
    let later: serde_json::Value = serde_json::from_str(later.stdout.trim())?;
    ensure!(later["anchor"] == head["head"], "the later range continues the first: {later} after {head}");

    let edited = lines.replacen("\"actor\":\"", "\"actor\":\"mallory-", 1);
    let bad = dir.path().join("edited.jsonl");
    std::fs::write(&bad, edited)?;
    let out = drcut_tests::process::drctl(&["audit", "verify", &p(&bad)]).await?;
    ensure!(out.code == Some(1) && out.stderr.contains("edited.jsonl:1"), "an edit is caught with its line: {out}");
    Ok(())
}
