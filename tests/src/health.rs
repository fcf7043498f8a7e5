//! Helpers for health tests: read the board, wait for a region or check state, agent YAML.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use drcut_proto::v1::{CheckHealth, GetHealthRequest, HealthBoard, RegionHealth};

use crate::cluster::Cluster;
use crate::wait;

/// The health board as node `id` answers it.
pub async fn board(cluster: &Cluster, id: u64) -> Result<HealthBoard> {
    let mut c = cluster.client(id)?;
    Ok(c.get_health(cluster.request(GetHealthRequest {})).await?.into_inner())
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

/// One check of a region's board entry, by check name.
pub fn check<'a>(r: &'a RegionHealth, name: &str) -> Result<&'a CheckHealth> {
    r.checks.iter().find(|c| c.check == name).with_context(|| {
        format!(
            "check {name} not on region {}; it has {:?}",
            r.region,
            r.checks.iter().map(|c| &c.check).collect::<Vec<_>>()
        )
    })
}

/// Everything the board says about one check, for failure messages (values and labels too).
pub fn describe(c: &CheckHealth) -> String {
    format!(
        "{}@{}={}{} values={:?} labels={:?} error={:?}",
        c.check,
        c.vantage_agent,
        c.state,
        if c.stale { "(stale)" } else { "" },
        c.values.iter().collect::<std::collections::BTreeMap<_, _>>(),
        c.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
        c.error
    )
}

/// Waits until check `check_name` on region `name`, as node `id` reports it, passes `accept`;
/// returns that region's board entry (taken in the same read).
pub async fn wait_check(
    cluster: &Cluster,
    id: u64,
    name: &str,
    check_name: &str,
    what: &str,
    timeout: Duration,
    accept: impl Fn(&CheckHealth) -> Result<()>,
) -> Result<RegionHealth> {
    wait::until(&format!("check {check_name} on {name}: {what}"), timeout, async || {
        let b = board(cluster, id).await?;
        let r = region(&b, name)?;
        let c = check(r, check_name)?;
        accept(c).with_context(|| format!("{} (region {} {:?})", describe(c), r.state, r.reason))?;
        Ok(r.clone())
    })
    .await
}

/// `drctl --json audit list` of the whole chain: the raw output (to search for things that
/// must not be there) and the parsed entries.
pub async fn audit_entries(cluster: &Cluster) -> Result<(String, Vec<serde_json::Value>)> {
    let out = cluster.drctl(&["--json", "audit", "list", "--limit", "1000"]).await?;
    ensure!(out.code == Some(0), "drctl audit list failed:\n{out}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).context("parsing drctl --json audit list")?;
    let entries = v["entries"].as_array().context("no entries array in drctl --json audit list")?.clone();
    Ok((out.stdout, entries))
}

/// Polls the audit chain until an entry `pred` accepts appears, and returns it.
pub async fn wait_audit_entry(
    cluster: &Cluster,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(e) = audit_entries(cluster).await?.1.into_iter().find(|e| pred(e)) {
            return Ok(e);
        }
        ensure!(tokio::time::Instant::now() < deadline, "no audit entry for {what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
