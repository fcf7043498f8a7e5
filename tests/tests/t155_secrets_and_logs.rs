//! Secrets stay secret, and the logs say what happened in fields a log pipeline can index.
//!
//! A planned cutover runs on a cluster with authentication, started and approved by two people
//! with their API tokens, while the agents update PowerDNS with its API key. Somebody also
//! tries a wrong token on gRPC, drctl and the console. Afterwards none of those secrets (the
//! valid tokens, the wrong one, the API key) appears in any file the coordinators and agents
//! wrote (logs, configs, the Raft log and state on disk), in the exported audit chain, or in
//! any error message; and the coordinators' JSON logs carry `run_id`, `step`, `region` and
//! `fencing_token` as fields of the step events.

use anyhow::{Context, Result, ensure};
use drcut_tests::auth::{TestPrincipals, random_token};
use drcut_tests::cluster::http_addr;
use drcut_tests::cutover::{Env, EnvOptions, started_run_id};
use drcut_tests::process::drctl_env;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_leak_and_logs_are_structured() -> Result<()> {
    let people = TestPrincipals::new().add("olga", &["operator"], &[]).add("arne", &["approver"], &[]);
    let opt = EnvOptions { auth: Some(people.clone()), http: true, json_logs: true, ..Default::default() };
    let env = Env::start_with(155, opt).await?;
    env.apply_playbook("wallet-test-cutover", &env.playbook(1, "1s")).await?;
    let endpoints = env.cluster.endpoints(&[1, 2, 3]);
    let drctl = async |who: &str, args: &[&str]| {
        let mut all = vec!["--endpoint", endpoints.as_str()];
        all.extend_from_slice(args);
        drctl_env(all, &[("DRCUT_TOKEN", people.token(who))]).await
    };

    tracing::info!("--- olga starts the cutover, arne approves it");
    let out = drctl("olga", &["--json", "cutover", "start", "wallet-test-cutover", "--reason", "secrets test"]).await?;
    ensure!(out.code == Some(0), "{out}");
    let run = started_run_id(&out.stdout)?;
    let out = drctl("arne", &["approve", &run]).await?;
    ensure!(out.code == Some(0), "{out}");
    let done = env.poll_run(&run, Duration::from_secs(60), "the run ends", |r| r.ended_unix_ms > 0).await?;
    ensure!(done.state == "succeeded", "{done:?}");

    tracing::info!("--- a wrong token on drctl, gRPC and the console");
    let wrong = random_token();
    let mut all = vec!["--endpoint", endpoints.as_str(), "status"];
    let out = drctl_env(all.drain(..), &[("DRCUT_TOKEN", &wrong)]).await?;
    ensure!(out.code != Some(0), "a wrong token is refused: {out}");
    let mut errors = vec![out.combined()];
    let mut c = env.cluster.client(1)?;
    let st = c
        .list_runs(drcut_tests::auth::with_token(drcut_proto::v1::ListRunsRequest { active_only: false }, &wrong))
        .await
        .expect_err("a wrong token is refused");
    errors.push(format!("{st:?}"));
    let http = drcut_tests::http_server::http_client();
    for (method, path) in [("GET", "api/runs"), ("POST", "api/runs")] {
        let url = format!("http://{}/{path}", http_addr(155, 2));
        let rb = if method == "GET" { http.get(&url) } else { http.post(&url).body("{}") };
        let r = rb.bearer_auth(&wrong).send().await?;
        ensure!(r.status() == 401, "{method} /{path} with a wrong token: {}", r.status());
        errors.push(r.text().await?);
    }
    for e in &errors {
        ensure!(!e.contains(&wrong), "an error message echoes the token: {e}");
    }

    tracing::info!("--- the audit chain, exported");
    let export = env.cluster.dir().join("audit-export.jsonl");
    // A refusal is answered at once and audited after (the record goes through Raft on its
    // own), so the export waits for it.
    let chain = drcut_tests::wait::until("the wrong tokens audited", Duration::from_secs(10), async || {
        // drctl never overwrites an export: a retry starts from no file.
        let _ = std::fs::remove_file(&export);
        let out = env.cluster.drctl(&["audit", "export", "--out", &export.display().to_string()]).await?;
        ensure!(out.code == Some(0), "{out}");
        let chain = std::fs::read_to_string(&export)?;
        ensure!(chain.contains("\"auth.denied\""), "no auth.denied record in the exported chain yet");
        Ok(chain)
    })
    .await?;
    ensure!(chain.contains("run.approve") && chain.contains("arne"), "the approval is in the chain");

    tracing::info!("--- no secret in any file the cluster and agents wrote, nor in the export");
    let mut secrets: Vec<(String, String)> =
        people.list.iter().map(|p| (format!("{}'s token", p.name), p.token.clone())).collect();
    secrets.push(("the harness's token".into(), env.cluster.token().context("harness token")?.to_string()));
    secrets.push(("the wrong token".into(), wrong.clone()));
    secrets.push(("the PowerDNS API key".into(), env.dns.api_key().to_string()));
    // Let the nodes write their last log lines and flush state.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let scanned = files(env.cluster.dir());
    ensure!(scanned.len() > 10, "scanned {} files", scanned.len());
    let mut bytes_scanned = 0;
    for f in &scanned {
        let Ok(data) = std::fs::read(f) else { continue };
        bytes_scanned += data.len();
        for (what, s) in &secrets {
            ensure!(!contains(&data, s), "{what} appears in {}", f.display());
        }
    }
    // The scan does see what is there: the principals file holds olga's token's hash.
    let hash = drcut_coordinator::auth::token_hash(people.token("olga"));
    ensure!(
        scanned.iter().any(|f| std::fs::read(f).is_ok_and(|d| contains(&d, &hash))),
        "the scan found the stored hash of a token"
    );
    println!("secrets: {} files, {} bytes scanned; no secret found", scanned.len(), bytes_scanned);

    tracing::info!("--- JSON logs: step events carry run_id, step, region and fencing_token");
    let mut step_events = 0;
    for id in [1, 2, 3] {
        for line in env.cluster.node(id)?.stderr().lines().filter(|l| l.starts_with('{')) {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("node {id} wrote a line that is not JSON: {line}"))?;
            let f = &v["fields"];
            if f["run_id"] == run.as_str() && f["fencing_token"].is_u64() {
                ensure!(f["step"].is_string() && f["region"].is_string(), "fields of a step event: {f}");
                step_events += 1;
            }
        }
    }
    ensure!(step_events >= 9, "one JSON step event per dispatched step at least: {step_events}");
    env.cluster.audit_verify_ok().await?;
    Ok(())
}
