//! Request size limits on the public API: a playbook or drill above 256 KiB is refused naming
//! its size, a request above 1 MiB is refused by the transport, and neither changes anything
//! or hurts the node.

use anyhow::{Result, ensure};
use drcut_proto::v1 as pb;
use drcut_tests::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_and_change_nothing() -> Result<()> {
    let cluster = Cluster::builder(16).nodes(1).start().await?;
    cluster.wait_leader(&[1]).await?;
    let mut c = cluster.client(1)?;
    let big = format!("# {}\n", "x".repeat(300 * 1024));
    let r = c.apply_playbook(pb::ApplyPlaybookRequest { ctx: None, file: "big.yaml".into(), text: big.clone() }).await;
    let e = r.err().ok_or_else(|| anyhow::anyhow!("a 300 KiB playbook was accepted"))?;
    ensure!(e.code() == tonic::Code::InvalidArgument, "{e:?}");
    ensure!(e.message().contains("big.yaml") && e.message().contains("limit is 262144"), "{}", e.message());
    let r = c.apply_drill(pb::ApplyDrillRequest { ctx: None, file_name: "big-drill.yaml".into(), text: big }).await;
    let e = r.err().ok_or_else(|| anyhow::anyhow!("a 300 KiB drill was accepted"))?;
    ensure!(e.code() == tonic::Code::InvalidArgument && e.message().contains("big-drill.yaml"), "{e:?}");

    let huge = "x".repeat(2 * 1024 * 1024);
    let r = c.apply_playbook(pb::ApplyPlaybookRequest { ctx: None, file: "huge.yaml".into(), text: huge }).await;
    let e = r.err().ok_or_else(|| anyhow::anyhow!("a 2 MiB request was accepted"))?;
    ensure!(e.code() != tonic::Code::Ok && e.code() != tonic::Code::Unavailable, "refused as too large: {e:?}");

    let playbooks = c.list_playbooks(pb::ListPlaybooksRequest {}).await?.into_inner().playbooks;
    let drills = c.list_drills(pb::ListDrillsRequest {}).await?.into_inner().drills;
    ensure!(playbooks.is_empty() && drills.is_empty(), "nothing stored");
    cluster.status(1).await?;
    cluster.finish();
    Ok(())
}
