//! gRPC `Control` clients and the small request builders tests share.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use drcut_proto::v1::control_client::ControlClient;
use drcut_proto::v1::{
    AddRegionReply, AddRegionRequest, ClusterStatus, GetStatusRequest, ListRegionsRequest, ReadConsistency, Region,
    RegionRole, ServiceRole, WriteContext,
};
use tonic::transport::{Channel, Endpoint};

/// The actor the harness writes as; shows up in audit entries.
pub const ACTOR: &str = "drcut-tests";

/// Per-call deadline: longer than a failover, so a call that outlives it reveals a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for the node at `addr`. The channel connects lazily and reconnects on its own, so
/// one client survives the node being killed and restarted.
pub fn connect(addr: SocketAddr) -> Result<ControlClient<Channel>> {
    lazy_client(Endpoint::from_shared(format!("http://{addr}")).context("endpoint")?)
}

/// [`connect`] over TLS with `tls` (CA, and the client certificate if it has one).
pub fn connect_tls(addr: SocketAddr, tls: tonic::transport::ClientTlsConfig) -> Result<ControlClient<Channel>> {
    lazy_client(
        Endpoint::from_shared(format!("https://{addr}")).context("endpoint")?.tls_config(tls).context("tls config")?,
    )
}

fn lazy_client(e: Endpoint) -> Result<ControlClient<Channel>> {
    let channel = e.connect_timeout(Duration::from_secs(1)).tcp_nodelay(true).timeout(CALL_TIMEOUT).connect_lazy();
    Ok(ControlClient::new(channel))
}

/// A write context with a request id no other write in this process uses.
pub fn write_ctx() -> WriteContext {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    WriteContext {
        actor: ACTOR.to_string(),
        request_id: format!("t-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)),
    }
}

/// A region named `name` that is primary for service `db`.
pub fn region(name: &str) -> Region {
    Region {
        name: name.to_string(),
        display_name: format!("Region {name}"),
        roles: vec![ServiceRole { service: "db".to_string(), role: RegionRole::Primary as i32 }],
        down_quorum: 0,
    }
}

/// An AddRegion request for [`region`]`(name)` with a fresh request id.
pub fn add_region_request(name: &str) -> AddRegionRequest {
    AddRegionRequest { ctx: Some(write_ctx()), region: Some(region(name)) }
}

/// GetStatus with local consistency (works without a quorum).
pub async fn status(client: &mut ControlClient<Channel>) -> Result<ClusterStatus> {
    Ok(client.get_status(GetStatusRequest { consistency: ReadConsistency::Local as i32 }).await?.into_inner())
}

/// AddRegion for `name` through `client` (a follower forwards it to the leader).
pub async fn add_region(client: &mut ControlClient<Channel>, name: &str) -> Result<AddRegionReply> {
    Ok(client.add_region(add_region_request(name)).await.with_context(|| format!("adding region {name}"))?.into_inner())
}

/// The regions this node has applied, in full.
pub async fn regions(client: &mut ControlClient<Channel>) -> Result<Vec<Region>> {
    Ok(client
        .list_regions(ListRegionsRequest { consistency: ReadConsistency::Local as i32 })
        .await?
        .into_inner()
        .regions)
}

/// Waits for the end of a server stream (skipping what it sends) and returns the status it
/// ended with; an error when it is still open after `within` or ended without a status.
pub async fn stream_end<T>(who: &str, s: &mut tonic::Streaming<T>, within: Duration) -> Result<tonic::Status> {
    let end = async {
        loop {
            match s.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(e) => return Some(e),
            }
        }
    };
    tokio::time::timeout(within, end)
        .await
        .with_context(|| format!("{who}'s stream still open after {within:?}"))?
        .with_context(|| format!("{who}'s stream ended without a status"))
}
