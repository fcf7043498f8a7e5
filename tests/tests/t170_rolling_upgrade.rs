//! A rolling upgrade of the coordinator keeps the cluster serving: each node in turn (followers
//! first, the leader last) is stopped with SIGTERM and started from a new binary on the same
//! data dir, while a client keeps writing through whichever node answers. Every acknowledged
//! write survives on every node, the cluster never stops taking writes for more than an
//! election, and the audit chain verifies afterwards.

use anyhow::{Result, ensure};
use drcut_tests::Cluster;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

#[derive(Default)]
struct Writes {
    acked: Vec<String>,
    failed: u32,
    longest_gap: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_replaced_one_at_a_time_without_losing_a_write() -> Result<()> {
    let mut cluster = Cluster::builder(170).nodes(3).start().await?;
    let all = [1u64, 2, 3];
    let first = cluster.wait_leader(&all).await?;

    // The "new release": a copy of the binary at another path, as a package upgrade leaves it.
    let next = cluster.dir().join("drcut-coordinator-next");
    std::fs::copy(drcut_tests::bins::bin_path("drcut-coordinator")?, &next)?;

    tracing::info!("--- a client writes continuously through any node that answers");
    let addrs: Vec<_> = all.iter().map(|&id| cluster.addr(id)).collect();
    let writes = Arc::new(Mutex::new(Writes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (writes, stop) = (writes.clone(), stop.clone());
        tokio::spawn(async move {
            let mut clients = Vec::new();
            for a in &addrs {
                clients.push(drcut_tests::client::connect(*a)?);
            }
            let mut last_ok = Instant::now();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("w-{n}");
                let k = n as usize % clients.len();
                let c = &mut clients[k];
                match drcut_tests::client::add_region(c, &name).await {
                    Ok(_) => {
                        let mut w = writes.lock().await;
                        w.longest_gap = w.longest_gap.max(last_ok.elapsed());
                        w.acked.push(name);
                        last_ok = Instant::now();
                    }
                    Err(_) => writes.lock().await.failed += 1,
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(())
        })
    };

    let mut order: Vec<u64> = all.iter().copied().filter(|&id| id != first.node_id).collect();
    order.push(first.node_id);
    for id in order {
        tracing::info!("--- upgrade node {id}: SIGTERM, new binary, same data dir");
        cluster.stop(id).await?;
        cluster.node_mut(id)?.binary = Some(next.clone());
        cluster.start_node(id).await?;
        // Caught up before the next node goes: the cluster never runs on one node's log alone.
        cluster.wait_converged(&all).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await??;

    let w = writes.lock().await;
    tracing::info!(
        acked = w.acked.len(),
        failed = w.failed,
        longest_gap_ms = w.longest_gap.as_millis() as u64,
        "writes"
    );
    println!(
        "rolling upgrade: {} writes acknowledged, {} refused or timed out while a node restarted, longest gap between acknowledged writes {} ms",
        w.acked.len(),
        w.failed,
        w.longest_gap.as_millis()
    );
    ensure!(w.acked.len() > 20, "the cluster kept taking writes: {} acknowledged", w.acked.len());
    ensure!(w.longest_gap < Duration::from_secs(10), "writes stopped for {:?}", w.longest_gap);
    let acked: BTreeSet<String> = w.acked.iter().cloned().collect();
    for id in all {
        let st = cluster.status(id).await?;
        ensure!(st.node_id == id, "node {id} kept its identity");
    }
    cluster.wait_regions(&all, &acked).await?;
    // A leader restarted within the election timeout may resume leadership in its own term
    // (openraft restores a committed vote); either way one leader serves all three.
    let leader = cluster.wait_leader(&all).await?;
    tracing::info!(term_before = first.term, term_after = leader.term, leader = leader.node_id, "leadership");
    cluster.audit_verify_ok().await?;
    cluster.finish();
    Ok(())
}
