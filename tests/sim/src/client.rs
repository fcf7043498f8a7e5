//! The operator: adds the regions, applies the playbook, then issues random cutover requests
//! (both directions) and pause / resume / abort, through the real `Control` gRPC API.

use crate::agent::Shared;
use crate::net;
use crate::rng::Rng;
use crate::world::{Role, SERVICE};
use drcut_coordinator::clock::now_ms;
use drcut_proto::v1::control_client::ControlClient;
use drcut_proto::v1::{
    AddRegionRequest, ApplyPlaybookRequest, ListRunsRequest, Region, RegionRole, RunActionRequest, ServiceRole,
    StartCutoverRequest, WriteContext,
};
use std::future::Future;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// The cutover playbook under test: the shipped example (or the file `DRCUT_SIM_PLAYBOOK`
/// names, to try a changed playbook), with approvals off and times short enough for a simulated
/// run to finish in seconds.
pub fn playbook_text() -> String {
    let shipped = include_str!("../../../playbooks/wallet-region-cutover.yaml").to_string();
    std::env::var("DRCUT_SIM_PLAYBOOK")
        .ok()
        .map(|p| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("DRCUT_SIM_PLAYBOOK={p}: {e}")))
        .unwrap_or(shipped)
        .replace("approvals: { required: 1 }", "approvals: { required: 0 }")
        .replace("timeout: 30s, retries: 2, retry_backoff: 500ms", "timeout: 1500ms, retries: 2, retry_backoff: 200ms")
        .replace("timeout: 10s", "timeout: 1s")
        .replace("timeout: 60s", "timeout: 1500ms")
        .replace("timeout: 150s", "timeout: 1500ms")
        .replace("max_duration: 2m", "max_duration: 1s")
        .replace("dwell: 30s", "dwell: 400ms")
}

/// Calls the cluster: tries every node, following a named leader first.
async fn call<T, F, Fut>(nodes: &[String], f: F) -> Result<T, Status>
where
    F: Fn(ControlClient<Channel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let mut queue: Vec<String> = nodes.to_vec();
    let mut last = Status::unavailable("no node");
    let mut tries = 0;
    while let Some(addr) = (!queue.is_empty()).then(|| queue.remove(0)) {
        tries += 1;
        if tries > 5 {
            break;
        }
        let ch = match tokio::time::timeout(Duration::from_millis(800), net::dialer().connect(&addr)).await {
            Ok(Ok(ch)) => ch,
            _ => continue,
        };
        match tokio::time::timeout(Duration::from_secs(3), f(ControlClient::new(ch))).await {
            Ok(Ok(r)) => return Ok(r.into_inner()),
            Ok(Err(s)) if s.code() == Code::Unavailable => {
                if let Some(l) = s.metadata().get("x-drcut-leader").and_then(|v| v.to_str().ok()) {
                    queue.insert(0, l.to_string());
                }
                last = s;
            }
            Ok(Err(s)) => return Err(s),
            Err(_) => last = Status::deadline_exceeded(format!("{addr}: no answer")),
        }
    }
    Err(last)
}

fn ctx(id: &str) -> Option<WriteContext> {
    Some(WriteContext { actor: "sim-operator".into(), request_id: id.into() })
}

fn region(name: &str, role: RegionRole) -> Region {
    Region {
        name: name.into(),
        display_name: name.to_uppercase(),
        roles: vec![ServiceRole { service: SERVICE.into(), role: role as i32 }],
        down_quorum: 0,
    }
}

/// Retries `f` (same request id inside) until it answers, or gives up after `tries`.
async fn persist<T, F, Fut>(tries: u32, f: F) -> Result<T, Status>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut last = Status::unavailable("not tried");
    for _ in 0..tries {
        match f().await {
            Ok(v) => return Ok(v),
            Err(s) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown) => last = s,
            Err(s) => return Err(s),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(last)
}

/// The operator host. `until_ms`: no new requests after this simulated time.
pub async fn run(seed: u64, world: Shared, nodes: Vec<String>, until_ms: i64) -> turmoil::Result {
    let mut rng = Rng::new(seed, 3);
    for (name, role) in [("eu-west", RegionRole::Primary), ("eu-central", RegionRole::Standby)] {
        let id = format!("add-{name}");
        let r = persist(1000, || {
            let req = AddRegionRequest { ctx: ctx(&id), region: Some(region(name, role)) };
            call(&nodes, move |mut c| {
                let req = req.clone();
                async move { c.add_region(req).await }
            })
        })
        .await;
        log(&world, format!("client add region {name}: {:?}", r.as_ref().map(|_| ()).map_err(|s| s.code())));
    }
    let text = playbook_text();
    let r = persist(1000, || {
        let req = ApplyPlaybookRequest { ctx: ctx("apply-playbook"), file: "wallet.yaml".into(), text: text.clone() };
        call(&nodes, move |mut c| {
            let req = req.clone();
            async move { c.apply_playbook(req).await }
        })
    })
    .await;
    log(&world, format!("client apply playbook: {:?}", r.as_ref().map(|_| ()).map_err(|s| s.to_string())));
    let mut n = 0u64;
    while now_ms() < until_ms {
        tokio::time::sleep(Duration::from_millis(rng.range(300, 2500))).await;
        n += 1;
        let roll = rng.range(0, 100);
        if roll < 55 {
            start(&world, &nodes, &mut rng, n).await;
        } else {
            let Ok(runs) =
                call(&nodes, |mut c| async move { c.list_runs(ListRunsRequest { active_only: true }).await }).await
            else {
                continue;
            };
            let Some(run) = runs.runs.first() else { continue };
            let req = RunActionRequest {
                ctx: ctx(&format!("op-{seed}-{n}")),
                run_id: run.run_id.clone(),
                reason: "sim".into(),
                ..Default::default()
            };
            let (what, r) = match roll {
                55..62 => {
                    // Consent to whatever loss an unplanned run names (a measured 0, or unknown).
                    let mut q = req.clone();
                    q.accept_loss = if rng.chance(0.5) { "unknown".into() } else { "0".into() };
                    let r = persist(3, || {
                        call(&nodes, |mut c| {
                            let q = q.clone();
                            async move { c.approve_run(q).await }
                        })
                    })
                    .await;
                    ("consent", r)
                }
                62..75 => (
                    "pause",
                    persist(3, || {
                        call(&nodes, |mut c| {
                            let q = req.clone();
                            async move { c.pause_run(q).await }
                        })
                    })
                    .await,
                ),
                75..92 => (
                    "resume",
                    persist(3, || {
                        call(&nodes, |mut c| {
                            let q = req.clone();
                            async move { c.resume_run(q).await }
                        })
                    })
                    .await,
                ),
                _ => (
                    "abort",
                    persist(3, || {
                        call(&nodes, |mut c| {
                            let q = req.clone();
                            async move { c.abort_run(q).await }
                        })
                    })
                    .await,
                ),
            };
            log(&world, format!("client {what} {}: {}", run.run_id, outcome(&r)));
        }
    }
    log(&world, "client done".to_string());
    std::future::pending::<()>().await;
    Ok(())
}

fn outcome<T>(r: &Result<T, Status>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(s) => format!("{:?}", s.code()),
    }
}

fn log(world: &Shared, what: String) {
    let mut w = world.lock().unwrap_or_else(|p| p.into_inner());
    w.log(now_ms(), what);
}

/// The GSLB answer for a region's app (the playbook's documentation addresses).
fn app_ip(region: &str) -> &'static str {
    if region == "eu-west" { "192.0.2.10" } else { "198.51.100.10" }
}

/// A region's database address.
fn db_ip(region: &str) -> &'static str {
    if region == "eu-west" { "192.0.2.20" } else { "198.51.100.20" }
}

async fn start(world: &Shared, nodes: &[String], rng: &mut Rng, n: u64) {
    let (source, target, unplanned) = {
        let mut w = world.lock().unwrap_or_else(|p| p.into_inner());
        // An operator rebuilds a fenced old primary as a standby before failing back to it.
        let primaries = w.dbs.values().filter(|d| d.role == Role::Primary).count();
        if primaries > 1 {
            for db in w.dbs.values_mut() {
                if db.role == Role::Primary && db.read_only {
                    db.role = Role::Standby;
                    db.read_only = false;
                }
            }
        }
        let primary = w.dbs.iter().find(|(_, d)| d.writable()).map(|(r, _)| r.clone());
        let towards = match primary {
            Some(p) if !rng.chance(0.2) => p,
            _ => rng.pick(&crate::world::REGIONS).to_string(),
        };
        let other = crate::world::REGIONS.iter().find(|r| **r != towards).expect("two regions").to_string();
        // The primary's region is lost: the DR button, unplanned.
        let lost = !w.up.get(&towards).copied().unwrap_or(true);
        let unplanned = lost && rng.chance(0.8);
        (towards, other, unplanned)
    };
    let req = StartCutoverRequest {
        ctx: ctx(&format!("start-{n}")),
        playbook: "wallet-region-cutover".into(),
        params: [
            ("source".to_string(), source.clone()),
            ("target".to_string(), target.clone()),
            ("source_app".to_string(), app_ip(&source).to_string()),
            ("target_app".to_string(), app_ip(&target).to_string()),
            ("target_db".to_string(), db_ip(&target).to_string()),
        ]
        .into(),
        reason: "sim".into(),
        unplanned,
    };
    let r = persist(3, || {
        call(nodes, |mut c| {
            let q = req.clone();
            async move { c.start_cutover(q).await }
        })
    })
    .await;
    let shown = match &r {
        Ok(info) => format!("run {}", info.run_id),
        Err(s) => format!("{:?} {}", s.code(), s.message().chars().take(80).collect::<String>()),
    };
    let how = if unplanned { "unplanned" } else { "planned" };
    log(world, format!("client start {how} {source} -> {target}: {shown}"));
}
