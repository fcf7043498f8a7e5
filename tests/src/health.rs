//! Helpers for health tests: read the board, wait for a region or check state, agent YAML.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_proto::v1::{GetHealthRequest, HealthBoard, RegionHealth};

use crate::cluster::Cluster;
use crate::wait;

/// The health board as node `id` answers it.
pub async fn board(cluster: &Cluster, id: u64) -> Result<HealthBoard> {
    let mut c = cluster.client(id)?;
    Ok(c.get_health(GetHealthRequest {}).await?.into_inner())
}

/// One region of the board.
pub fn region<'a>(b: &'a HealthBoard, name: &str) -> Result<&'a RegionHealth> {
    b.regions.iter().find(|r| r.region == name).with_context(|| format!("region {name} not on the board"))
}

/// Waits until node `id` reports `region` in `state`; returns that region's board entry.
pub async fn wait_region(
    cluster: &Cluster,
    id: u64,
    name: &str,
    state: &str,
    timeout: Duration,
) -> Result<RegionHealth> {
    wait::until(&format!("region {name} to be {state}"), timeout, async || {
        let b = board(cluster, id).await?;
        let r = region(&b, name)?;
        ensure!(r.state == state, "region {name} is {} ({}), checks: {:?}", r.state, r.reason, summary(r));
        Ok(r.clone())
    })
    .await
}

/// `check@agent=state` for each check of a region, for failure messages.
pub fn summary(r: &RegionHealth) -> Vec<String> {
    r.checks
        .iter()
        .map(|c| {
            format!(
                "{}@{}={}{} p95={:?} err={:?} {}",
                c.check,
                c.vantage_agent,
                c.state,
                if c.stale { "(stale)" } else { "" },
                c.values.get("p95_ms"),
                c.values.get("error_ratio"),
                c.error
            )
        })
        .collect()
}

/// The YAML of an agent with the given checks (each a YAML mapping body, indented by the
/// caller's text as list items).
pub fn agent_yaml(agent_id: &str, region: &str, coordinators: &[String], extra: &str) -> String {
    let coords: Vec<String> = coordinators.iter().map(|c| format!("{c:?}")).collect();
    format!("agent_id: {agent_id}\nregion: {region}\ncoordinators: [{}]\n{extra}", coords.join(", "))
}

/// A default wait for health outcomes: several evaluations plus commit and a tick.
pub const HEALTH_WAIT: Duration = Duration::from_secs(20);
