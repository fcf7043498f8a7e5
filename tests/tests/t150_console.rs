//! The ops console: an operator with only a browser sees the platform's state, presses the DR
//! button, gets the run approved by a second person and watches it finish; nobody without the
//! right role can do any of it, and a node without quorum says it is read-only.
//!
//! `console_in_a_real_browser` drives Debian's Chromium with Playwright (tests/console) against
//! the full cutover environment and saves a screenshot of each screen under
//! `target/console-screenshots/`. `console_api_refuses_and_degrades` checks the same server
//! with plain HTTP: the page and its assets, refusals by token and role, the read-only status.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use drcut_tests::auth::{TestPrincipal, TestPrincipals};
use drcut_tests::cluster::http_addr;
use drcut_tests::cutover::{Env, EnvOptions};
use drcut_tests::http_server::http_client;
use drcut_tests::{Cluster, bins};

/// (name, roles, token) of the principals the tests sign in as.
const PEOPLE: [(&str, &str, &str); 3] = [
    ("vera", "[viewer]", "vera-token-7f3a9c"),
    ("olga", "[operator, approver]", "olga-token-21b8e4"),
    ("arne", "[approver]", "arne-token-c05d11"),
];

fn token(name: &str) -> &'static str {
    PEOPLE.iter().find(|p| p.0 == name).map(|p| p.2).expect("a known person")
}

/// The principals with the tokens the browser signs in with (the harness adds its own admin).
fn people() -> TestPrincipals {
    let list = PEOPLE
        .iter()
        .map(|(name, roles, token)| TestPrincipal {
            name: name.to_string(),
            roles: roles.trim_matches(['[', ']']).split(", ").map(str::to_string).collect(),
            regions: vec![],
            token: token.to_string(),
            expires: None,
            certificates: vec![],
        })
        .collect();
    TestPrincipals { list }
}

fn console_url(block: u8, id: u64) -> String {
    format!("http://{}/", http_addr(block, id))
}

/// tests/console, with its Playwright install.
fn console_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("console")
}

/// `target/console-screenshots`, emptied.
fn screenshot_dir() -> Result<PathBuf> {
    let bin = bins::bin_dir()?;
    let target = bin.parent().context("the bin dir has a parent")?;
    let dir = target.join("console-screenshots");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs the browser script in `phase`; returns its output.
async fn browser(phase: &str, url: &str, shots: &Path) -> Result<String> {
    let dir = console_dir();
    ensure!(
        Path::new(CHROMIUM).is_file() && dir.join("node_modules/playwright-core").is_dir(),
        "the browser test needs {CHROMIUM} and tests/console/node_modules: run scripts/test, which installs \
         Debian's chromium and runs `npm ci` in tests/console"
    );
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(dir.join("console-test.mjs"))
        .current_dir(&dir)
        .env("CONSOLE_URL", url)
        .env("SCREENSHOT_DIR", shots)
        .env("PHASE", phase)
        .env("CHROMIUM", CHROMIUM)
        .env("TOKEN_VERA", token("vera"))
        .env("TOKEN_OLGA", token("olga"))
        .env("TOKEN_ARNE", token("arne"))
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .context("the browser script did not finish within 300 s")??;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    tracing::info!("browser ({phase}):\n{text}");
    ensure!(out.status.success(), "browser script, phase {phase}, failed ({}):\n{text}", out.status);
    Ok(text)
}

fn is_png(path: &Path) -> Result<bool> {
    let b = std::fs::read(path).with_context(|| format!("screenshot {}", path.display()))?;
    Ok(b.len() > 1000 && b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() -> Result<()> {
    let opt = EnvOptions { http: true, auth: Some(people()), ..Default::default() };
    let mut env = Env::start_with(150, opt).await?;
    env.apply_playbook("wallet-test-cutover", &env.playbook(1, "1s")).await?;

    tracing::info!("--- a drill on the calendar, run once so it has a report");
    let tomorrow = std::time::SystemTime::now() + Duration::from_secs(86_400);
    let start = humantime::format_rfc3339_seconds(tomorrow).to_string().trim_end_matches('Z').to_string();
    let out = drcut_tests::drill::apply_drill(
        &env.cluster,
        "nightly-exec",
        &drcut_tests::drill::nightly_exec_drill(&start, "[/bin/true]", "[/bin/true]", "2s"),
    )
    .await?;
    ensure!(out.code == Some(0), "{out}");
    let out = env.cluster.drctl(&["--json", "drill", "run", "nightly-exec"]).await?;
    ensure!(out.code == Some(0), "{out}");
    let drill_id = drcut_tests::drill::started_drill_id(&out.stdout)?;
    drcut_tests::drill::wait_drill(&env.cluster, &drill_id, Duration::from_secs(60), "drill end", |r| {
        r["outcome"].is_string()
    })
    .await?;

    tracing::info!("--- the browser works against a follower's console");
    let leader = env.cluster.wait_leader(&[1, 2, 3]).await?.leader_id;
    let follower = [1, 2, 3].into_iter().find(|&i| i != leader).expect("a follower");
    let url = console_url(150, follower);
    let shots = screenshot_dir()?;
    println!("console screenshots: {}", shots.display());
    let out = browser("main", &url, &shots).await?;
    let run_id = out
        .lines()
        .find_map(|l| l.strip_prefix("RUN_ID="))
        .context("the browser script printed no RUN_ID")?
        .trim()
        .to_string();
    for f in ["board.png", "plan.png", "run-awaiting-approval.png", "run-finished.png", "runs.png", "drills.png"] {
        ensure!(is_png(&shots.join(f))?, "{f} is not a PNG screenshot");
    }

    tracing::info!("--- the audit chain: started by olga, approved by arne");
    let run = env.run(&run_id).await?;
    ensure!(run.state == "succeeded" && run.requester == "olga", "{run:?}");
    let audit = env.cluster.audit(leader).await?;
    let for_run = |action: &str| -> Vec<String> {
        audit
            .iter()
            .filter(|e| e.action == action && e.details_json.contains(&run_id))
            .map(|e| e.actor.clone())
            .collect()
    };
    ensure!(for_run("run.create") == ["olga"], "run.create by {:?}", for_run("run.create"));
    ensure!(for_run("run.approve") == ["arne"], "run.approve by {:?}", for_run("run.approve"));
    let denied: Vec<&str> = audit.iter().filter(|e| e.action == "auth.denied").map(|e| e.actor.as_str()).collect();
    ensure!(denied.contains(&"vera"), "vera's refused start is audited: {denied:?}");

    tracing::info!("--- lose the quorum: the survivor's console says read-only");
    for id in [1, 2, 3].into_iter().filter(|&i| i != follower) {
        env.cluster.kill(id).await?;
    }
    browser("degraded", &url, &shots).await?;
    ensure!(is_png(&shots.join("degraded.png"))?, "degraded.png is not a PNG screenshot");
    env.cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_api_refuses_and_degrades() -> Result<()> {
    let mut cluster = Cluster::builder(151).nodes(3).with_http().with_auth(&people(), None).start().await?;
    let leader = cluster.wait_leader(&[1, 2, 3]).await?.leader_id;
    let follower = [1, 2, 3].into_iter().find(|&i| i != leader).expect("a follower");
    let base = console_url(151, follower);
    let http = http_client();

    tracing::info!("--- the page and its assets come from the binary, with nothing external");
    for (path, kind) in [("", "text/html"), ("app.js", "text/javascript"), ("app.css", "text/css")] {
        let r = http.get(format!("{base}{path}")).send().await?;
        ensure!(r.status() == 200, "{path}: {}", r.status());
        let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        ensure!(ct.starts_with(kind), "{path}: content-type {ct}");
        let csp = r.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default();
        ensure!(csp.contains("default-src 'self'"), "{path}: CSP {csp:?}");
        let body = r.text().await?;
        ensure!(!body.contains("http://") && !body.contains("https://"), "{path} names an external URL");
        ensure!(body.len() > 500, "{path} is {} bytes", body.len());
    }

    tracing::info!("--- refusals: no token 401, unknown token 401, viewer 403, bad input 400/404");
    let call = |method: &str, path: &str, who: Option<&str>, body: serde_json::Value| {
        let mut rb = http.request(method.parse().expect("method"), format!("{base}{path}"));
        if let Some(t) = who {
            rb = rb.bearer_auth(t);
        }
        async move {
            let r = rb.header("content-type", "application/json").body(body.to_string()).send().await?;
            let status = r.status().as_u16();
            let v: serde_json::Value = serde_json::from_str(&r.text().await?).unwrap_or_default();
            anyhow::Ok((status, v))
        }
    };
    let start = serde_json::json!({"playbook": "wallet-test-cutover", "reason": "r", "confirm": "wallet"});
    let (s, v) = call("POST", "api/runs", None, start.clone()).await?;
    ensure!(s == 401 && v["error"].as_str().is_some_and(|e| e.contains("no API token")), "{s} {v}");
    let (s, _) = call("POST", "api/runs", Some("not-a-token"), start.clone()).await?;
    ensure!(s == 401, "unknown token: {s}");
    let (s, v) = call("POST", "api/runs", Some(token("vera")), start.clone()).await?;
    ensure!(s == 403 && v["error"].as_str().is_some_and(|e| e.contains("operator")), "{s} {v}");
    let (s, v) = call("POST", "api/runs/some-run/approve", Some(token("vera")), serde_json::json!({})).await?;
    ensure!(s == 403, "viewer approve: {s} {v}");
    let (s, v) = call("POST", "api/runs", Some(token("olga")), serde_json::json!({"playbook": "x"})).await?;
    ensure!(s == 400 && v["error"].as_str().is_some_and(|e| e.contains("reason")), "{s} {v}");
    let (s, v) = call("POST", "api/runs", Some(token("olga")), start.clone()).await?;
    ensure!(s == 404 && v["error"].as_str().is_some_and(|e| e.contains("no playbook")), "{s} {v}");
    let (s, _) = call("GET", "api/status", None, serde_json::Value::Null).await?;
    ensure!(s == 401, "status without a token: {s}");

    tracing::info!("--- who am I, and the status board (healthy: writable)");
    let (s, me) = call("GET", "api/me", Some(token("vera")), serde_json::Value::Null).await?;
    ensure!(s == 200 && me["name"] == "vera" && me["may"]["StartCutover"] == false, "{s} {me}");
    let (_, me) = call("GET", "api/me", Some(token("olga")), serde_json::Value::Null).await?;
    ensure!(me["may"]["StartCutover"] == true && me["may"]["ApproveRun"] == true, "{me}");
    let (s, st) = call("GET", "api/status", Some(token("vera")), serde_json::Value::Null).await?;
    ensure!(s == 200 && st["read_only"].is_null(), "{s} {st}");
    ensure!(st["cluster"]["members"].as_array().map(Vec::len) == Some(3), "{st}");
    ensure!(st["cluster"]["leader"]["id"] == leader, "{st}");

    tracing::info!("--- refusals are in the audit chain");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let audit = cluster.audit(leader).await?;
        // Each refusal is audited in the background, so they commit in any order.
        let denied: Vec<(String, String)> = audit
            .iter()
            .filter(|e| e.action == "auth.denied")
            .map(|e| (e.actor.clone(), e.details_json.clone()))
            .collect();
        let has = |who: &str, call: &str| denied.iter().any(|(a, d)| a == who && d.contains(call));
        if has("vera", "console StartCutover") && has("vera", "console ApproveRun") && has("no token", "console") {
            break;
        }
        ensure!(tokio::time::Instant::now() < deadline, "refusals not audited: {denied:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    tracing::info!("--- two of three nodes gone: the survivor answers fast and says read-only, and why");
    for id in [1, 2, 3].into_iter().filter(|&i| i != follower) {
        cluster.kill(id).await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let t = tokio::time::Instant::now();
        let (s, st) = call("GET", "api/status", Some(token("vera")), serde_json::Value::Null).await?;
        ensure!(s == 200, "status without quorum: {s} {st}");
        ensure!(t.elapsed() < Duration::from_secs(4), "status took {:?} without quorum", t.elapsed());
        if let Some(why) = st["read_only"].as_str() {
            ensure!(why.contains("quorum") || why.contains("leader"), "{why}");
            ensure!(st["health"]["live"] == false, "health not live without a leader: {st}");
            break;
        }
        ensure!(tokio::time::Instant::now() < deadline, "never read-only: {st}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.finish();
    Ok(())
}
