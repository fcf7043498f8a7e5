//! What the sandbox shows once the platform is up: a planned cutover of the wallet service with
//! the shipped playbook, under the players' load, then a short GameDay drill; each followed live
//! through `drctl` and reported.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use super::load::{APP_NAME, Load};
use super::world::{CASINO_PORT, World};
use crate::bins;

/// The shipped playbook, as a newcomer finds it in `playbooks/`.
const PLAYBOOK: &str = include_str!("../../../playbooks/wallet-region-cutover.yaml");
/// Its name.
pub const PLAYBOOK_NAME: &str = "wallet-region-cutover";
/// The sandbox's drill.
pub const DRILL_NAME: &str = "casino-latency";

/// How the show went.
#[derive(Debug, Default)]
pub struct Shown {
    /// The cutover run.
    pub run_id: String,
    /// The run's final state.
    pub run_state: String,
    /// Acknowledged writes during the cutover, and how many of them the new primary lacks.
    pub acked: usize,
    /// See [`Shown::acked`].
    pub lost: usize,
    /// The drill run.
    pub drill_id: String,
    /// Its outcome (`passed`, `failed`, `aborted`).
    pub drill_outcome: String,
}

impl Shown {
    /// A cutover that succeeded without losing a write, and a drill that passed.
    pub fn ok(&self) -> bool {
        self.run_state == "succeeded" && self.lost == 0 && self.drill_outcome == "passed"
    }
}

/// Heading of a stage.
pub fn say(text: &str) {
    println!("\n==> {text}");
}

/// Runs `drctl ARGS` against the sandbox with its output going to ours; whether it exited 0.
async fn drctl(w: &World, args: &[&str]) -> Result<bool> {
    let status = tokio::process::Command::new(bins::bin_path(bins::DRCTL)?)
        .args(["--endpoint", &w.endpoints()])
        .args(args)
        .env_remove("DRCUT_ENDPOINT")
        .env_remove("DRCUT_TOKEN")
        .env_remove("DRCUT_TOKEN_FILE")
        .stdin(std::process::Stdio::null())
        .status()
        .await?;
    Ok(status.success())
}

/// The planned cutover, then the drill. `dir` receives the files applied.
pub async fn run(w: &World, load: &Load, dir: &Path) -> Result<Shown> {
    let mut shown = Shown::default();
    say(&format!(
        "the players: 4 of them log in, deposit, spin and withdraw at http://{}:{CASINO_PORT}, resolving it through PowerDNS for every request",
        APP_NAME.trim_end_matches('.')
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    say("drctl status: the coordinator cluster, its leader, the regions");
    drctl(w, &["status"]).await?;

    let file = dir.join(format!("{PLAYBOOK_NAME}.yaml"));
    ensure!(PLAYBOOK.contains("dwell: 30s"), "the shipped playbook no longer has `dwell: 30s`; update the sandbox");
    std::fs::write(&file, PLAYBOOK.replace("dwell: 30s", "dwell: 3s"))?;
    say(&format!(
        "drctl playbook apply: playbooks/{PLAYBOOK_NAME}.yaml as shipped, except 3 s (not 30 s) of load per traffic phase (copy in {})",
        file.display()
    ));
    drctl(w, &["playbook", "apply", &file.display().to_string()]).await?;
    let (west, central) = (w.region_ip(0).to_string(), w.region_ip(1).to_string());
    let params = [
        "--param".to_string(),
        format!("source_app={west}"),
        "--param".into(),
        format!("target_app={central}"),
        "--param".into(),
        format!("target_db={central}"),
    ];
    let params: Vec<&str> = params.iter().map(String::as_str).collect();
    say("drctl plan: what the cutover will do, step by step, and whether it could start now");
    let mut plan = vec!["plan", PLAYBOOK_NAME];
    plan.extend(&params);
    drctl(w, &plan).await?;

    let t0 = load.now();
    let mut start = vec!["--actor", "alice", "--json", "cutover", "start", PLAYBOOK_NAME];
    start.extend(&params);
    start.extend(["--reason", "sandbox: planned move of wallet to eu-central"]);
    let out = w.cluster.drctl(&start).await?;
    ensure!(out.code == Some(0), "drctl cutover start failed:\n{out}");
    shown.run_id = crate::cutover::started_run_id(&out.stdout)?;
    let run = shown.run_id.as_str();
    say(&format!("alice started run {run} (drctl cutover start); the playbook needs one approval from someone else"));
    say(&format!("bob approves it: drctl --actor bob approve {run}"));
    drctl(w, &["--actor", "bob", "approve", run]).await?;
    say(&format!("the run, live (drctl run watch {run}), then its record"));
    drctl(w, &["run", "watch", run]).await?;
    // A second of the players on the far side of the cutover.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t1 = load.now();
    shown.run_state = run_state(w, run).await?;

    // Which database holds the truth now: eu-central's if the cutover went through.
    let moved = shown.run_state == "succeeded";
    let log = load.snapshot();
    let acked = log.acked(t0, t1);
    let primary = if moved { w.pg.standby_client().await? } else { w.pg.primary_client().await? };
    let found: i64 = primary
        .query_one("SELECT count(*) FROM casino_ledger WHERE id = ANY($1)", &[&acked])
        .await
        .context("counting acknowledged entries in the ledger")?
        .get(0);
    shown.acked = acked.len();
    shown.lost = acked.len().saturating_sub(usize::try_from(found)?);
    say(&format!("what the players saw during the cutover ({:.1} s)", (t1 - t0).as_secs_f64()));
    let regions: Vec<String> = log.by_region(t0, t1).iter().map(|(r, n)| format!("{r} {n}")).collect();
    println!("    acknowledged writes:  {} ({})", acked.len(), regions.join(", "));
    println!(
        "    lost:                 {} (every acknowledged ledger entry looked up in the {} primary)",
        shown.lost,
        if moved { "new" } else { "old" }
    );
    println!("    longest wait for a write: {} ms", log.longest_gap(t0, t1).as_millis());
    for (why, n) in log.failures(t0, t1).iter().take(4) {
        println!("    refused or failed:    {n} × {why}");
    }
    let share: Vec<String> = log
        .share("eu-central", t0, t1, Duration::from_secs(1))
        .iter()
        .map(|s| s.map_or("-".into(), |p| format!("{p}%")))
        .collect();
    println!("    eu-central's share of writes, second by second: {}", share.join(" "));
    println!("    {APP_NAME} now answers {:?}", w.dns.query_a(APP_NAME).await?);
    println!("    wallet-db.gslb.example. now answers {:?}", w.dns.query_a("wallet-db.gslb.example.").await?);
    if moved {
        let fenced = w.pg.try_write_primary().await?;
        println!(
            "    eu-west's old primary: {}",
            match fenced {
                Err(why) => format!("refuses writes ({why})"),
                Ok(()) => "STILL TAKES WRITES".into(),
            }
        );
    }
    if !moved {
        return Ok(shown);
    }

    let file = dir.join(format!("{DRILL_NAME}.yaml"));
    std::fs::write(&file, drill_yaml(w))?;
    say(&format!(
        "a short GameDay drill ({}): eu-central's casino app answers 500 ms slower for a while",
        file.display()
    ));
    drctl(w, &["drill", "apply", &file.display().to_string()]).await?;
    say(&format!("drctl drill run {DRILL_NAME} --wait: the timeline, then the report"));
    drctl(w, &["drill", "run", DRILL_NAME, "--wait"]).await?;
    let runs = crate::drill::drill_runs(&w.cluster).await?;
    let drill = runs.iter().rev().find(|r| r.drill == DRILL_NAME).context("the drill run is not listed")?;
    shown.drill_id = drill.id.clone();
    shown.drill_outcome = drill.outcome.clone();
    Ok(shown)
}

/// A run's state as the first node that answers has it.
async fn run_state(w: &World, run: &str) -> Result<String> {
    let mut last = None;
    for id in [1, 2, 3] {
        match crate::cutover::run_record(&w.cluster, id, run).await {
            Ok((info, _)) => return Ok(info.state),
            Err(e) => last = Some(e),
        }
    }
    Err(last.context("no node")?)
}

/// The drill: 500 ms more on every answer of eu-central's casino app (the active region now),
/// through its agent's fault proxy. Detected within 5 s, no acknowledged write lost, no
/// failover, the region healthy again after restore.
fn drill_yaml(w: &World) -> String {
    let (pw, pc) = (w.pg.primary_addr(), w.pg.standby_addr());
    format!(
        r#"apiVersion: drcut/v1
kind: Drill
metadata:
  name: {DRILL_NAME}
  owner: sandbox
  description: eu-central's casino app answers 500 ms slower for 8 seconds.
spec:
  service: wallet
  hypothesis: >-
    When the active region's app turns slow, drcut sees it within 5 s, no acknowledged write is
    lost, nothing fails over on its own, and the region is healthy again once the fault is gone.
  target: {{ region: eu-central }}
  deadline: 3m
  faults:
    - {{ id: slow-app, region: eu-central, type: proxy, proxy: casino, mode: latency, latency: 500ms }}
  steady_state:
    - {{ region: eu-central, check: app }}
  guardrails:
    - {{ name: database-stays-up, region: eu-central, check: db, require: not_down, for: 2s }}
  response: {{ observe: 8s }}
  expect:
    detection: 5s
    rpo: 0
    failover: false
  canary:
    dsn: "host={},{} port={},{} user=postgres dbname=postgres"
    interval: 100ms
"#,
        pw.ip(),
        pc.ip(),
        pw.port(),
        pc.port()
    )
}
