//! API tokens and roles on `Control`: every method × every role allowed or refused as designed
//! (methods read from the proto descriptor, so a new RPC without a role fails here), wrong and
//! expired tokens refused without echoing them and audited, region scope, the two-person rule
//! with identities nobody can fake, rate limits, drctl with tokens, open mode said loudly, and
//! open streams (gRPC and drctl) ended, audited, once their token is revoked or expires.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use drcut_coordinator::auth::{Role, required_role};
use drcut_proto::v1 as pb;
use drcut_tests::auth::{TestPrincipals, with_token};
use drcut_tests::client::stream_end;
use drcut_tests::{Cluster, wait};
use prost::Message;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

/// The design, written out: the role each `Control` method needs. A method missing here (a new
/// RPC) fails the test until someone decides who may call it.
fn designed_role(method: &str) -> Option<Role> {
    use Role::*;
    let table: &[(&str, Role)] = &[
        ("GetStatus", Viewer),
        ("ListRegions", Viewer),
        ("ListAudit", Viewer),
        ("GetHealth", Viewer),
        ("WatchHealth", Viewer),
        ("ListPlaybooks", Viewer),
        ("PlanCutover", Viewer),
        ("GetRun", Viewer),
        ("ListRuns", Viewer),
        ("WatchRun", Viewer),
        ("ListDrills", Viewer),
        ("GetDrillRun", Viewer),
        ("ListDrillRuns", Viewer),
        ("StartCutover", Operator),
        ("PauseRun", Operator),
        ("ResumeRun", Operator),
        ("AbortRun", Operator),
        ("Halt", Operator),
        ("AckFailover", Operator),
        ("RunDrill", Operator),
        ("HaltDrills", Operator),
        ("ApproveRun", Approver),
        ("OverrideFencing", Approver),
        ("AddLearner", Admin),
        ("PromoteVoter", Admin),
        ("RemoveNode", Admin),
        ("AddRegion", Admin),
        ("ApplyPlaybook", Admin),
        ("ApplyDrill", Admin),
    ];
    table.iter().find(|(m, _)| *m == method).map(|(_, r)| *r)
}

/// Every `Control` method in the descriptor set, with whether it streams its answer.
fn control_methods() -> Result<Vec<(String, bool)>> {
    let set = prost_types::FileDescriptorSet::decode(drcut_proto::FILE_DESCRIPTOR_SET)?;
    let svc = set
        .file
        .iter()
        .filter(|f| f.package() == "drcut.v1")
        .flat_map(|f| f.service.iter())
        .find(|s| s.name() == "Control")
        .context("no Control service in the descriptor set")?;
    Ok(svc.method.iter().map(|m| (m.name().to_string(), m.server_streaming())).collect())
}

fn channel(c: &Cluster) -> Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{}", c.addr(1)))?.timeout(Duration::from_secs(10)).connect_lazy())
}

/// Calls `method` with an empty request (every field at its default) and `token`; the answer's
/// body is ignored, only the status matters.
async fn call(ch: &Channel, method: &str, streaming: bool, token: Option<&str>) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = PathAndQuery::from_str(&format!("/drcut.v1.Control/{method}")).expect("valid path");
    let req = match token {
        Some(t) => with_token((), t),
        None => tonic::Request::new(()),
    };
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    if streaming {
        grpc.server_streaming(req, path, codec).await.map(drop)
    } else {
        grpc.unary(req, path, codec).await.map(drop)
    }
}

async fn audit(c: &Cluster) -> Result<Vec<pb::AuditEntry>> {
    c.audit(1).await
}

/// Waits until the audit chain holds an `action` entry by `actor` whose details contain `text`.
async fn wait_audited(c: &Cluster, action: &str, actor: &str, text: &str) -> Result<()> {
    wait::until(&format!("{action} by {actor} with {text:?} audited"), Duration::from_secs(10), async || {
        let entries = audit(c).await?;
        ensure!(
            entries.iter().any(|e| e.action == action && e.actor == actor && e.details_json.contains(text)),
            "not yet"
        );
        Ok(())
    })
    .await
}

const PLAYBOOK: &str = r#"apiVersion: drcut/v1
kind: Playbook
metadata: { name: auth-cutover }
spec:
  service: wallet
  parameters:
    source: { kind: region, default: r-west }
    target: { kind: region, default: r-central }
  approvals: { required: 1 }
  steps:
    - { id: freeze, action: freeze_writes, region: "${source}", with: { database: wallet-db } }
    - { id: catch-up, action: wait_replication, region: "${target}", with: { database: wallet-db } }
    - { id: fence, action: fence, region: "${source}", with: { database: wallet-db } }
    - { id: promote, action: promote_db, region: "${target}", with: { database: wallet-db } }
"#;

const WEST_PLAYBOOK: &str = r#"apiVersion: drcut/v1
kind: Playbook
metadata: { name: west-only }
spec:
  service: ledger
  steps:
    - { id: freeze, action: freeze_writes, region: r-west, with: { database: ledger-db } }
"#;

fn start_request(playbook: &str, fake_actor: &str) -> pb::StartCutoverRequest {
    pb::StartCutoverRequest {
        ctx: Some(pb::WriteContext { actor: fake_actor.into(), request_id: String::new() }),
        playbook: playbook.into(),
        reason: "auth test".into(),
        ..Default::default()
    }
}

fn approve_request(run: &str, fake_actor: &str) -> pb::RunActionRequest {
    pb::RunActionRequest {
        ctx: Some(pb::WriteContext { actor: fake_actor.into(), request_id: String::new() }),
        run_id: run.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_scope_and_limits() -> Result<()> {
    let p = TestPrincipals::new()
        .add("viewer", &["viewer"], &[])
        .add("operator", &["operator"], &[])
        .add("approver", &["approver"], &[])
        .add("admin", &["admin"], &[])
        .add("lead", &["operator", "approver"], &[])
        .add("westop", &["operator"], &["r-west"])
        .add("flood", &["viewer"], &[])
        .add_expired("retired", &["operator"]);
    let c = Cluster::builder(140).nodes(1).with_auth(&p, Some((20, 40))).start().await?;
    c.wait_leader(&[1]).await?;
    c.add_region(1, "r-west").await?;
    c.add_region(1, "r-central").await?;
    let ch = channel(&c)?;
    let mut client = c.client(1)?;

    tracing::info!("--- GetStatus says auth is on and who the caller is");
    let st = client.get_status(with_token(pb::GetStatusRequest::default(), p.token("westop"))).await?.into_inner();
    ensure!(st.auth_enabled && st.principal == "westop", "{st:?}");
    ensure!(st.roles == ["operator"] && st.principal_regions == ["r-west"], "{st:?}");

    tracing::info!("--- no, wrong and expired tokens: Unauthenticated, never echoed, audited");
    let wrong = drcut_tests::auth::random_token();
    for (token, who, needle) in [
        (None, "no token", "no API token"),
        (Some(wrong.as_str()), "unknown token", "not known"),
        (Some(p.token("retired")), "retired", "expired at 2001-01-01T00:00:00Z"),
    ] {
        let e = call(&ch, "ListRuns", false, token).await.expect_err("refused");
        ensure!(e.code() == Code::Unauthenticated, "{who}: {e:?}");
        ensure!(e.message().contains(needle), "{who}: {e:?}");
        if let Some(t) = token {
            ensure!(!e.message().contains(t) && !format!("{e:?}").contains(t), "token echoed: {e:?}");
        }
        wait_audited(&c, "auth.denied", who, "\"call\":\"ListRuns\"").await?;
    }
    // A refused call changes nothing and its record holds no secret.
    for e in audit(&c).await? {
        ensure!(!e.details_json.contains(&wrong) && !e.details_json.contains(p.token("retired")), "{e:?}");
    }

    tracing::info!("--- the role matrix: every Control method x every role");
    let methods = control_methods()?;
    ensure!(methods.len() >= 29, "only {} methods found", methods.len());
    let roles = ["viewer", "operator", "approver", "admin"];
    let mut table: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (method, streaming) in &methods {
        let designed = designed_role(method).with_context(|| format!("{method}: no role designed for it"))?;
        ensure!(
            required_role(method) == Some(designed),
            "{method}: the coordinator's table says {:?}",
            required_role(method)
        );
        for role in roles {
            let allowed = role == designed.as_str() || designed == Role::Viewer;
            let r = tokio::time::timeout(Duration::from_secs(15), call(&ch, method, *streaming, Some(p.token(role))))
                .await
                .with_context(|| format!("{method} as {role}: no answer"))?;
            match (&r, allowed) {
                (Err(e), true)
                    if matches!(e.code(), Code::PermissionDenied | Code::Unauthenticated | Code::ResourceExhausted) =>
                {
                    bail!("{method} as {role}: refused but designed to be allowed: {e:?}")
                }
                (Err(e), false) if e.code() == Code::PermissionDenied => {
                    ensure!(e.message().contains(&format!("needs the {} role", designed.as_str())), "{e:?}")
                }
                (_, false) => bail!("{method} as {role}: designed to be refused, got {r:?}"),
                _ => {}
            }
            table.entry(method.clone()).or_default().push(format!("{role}:{}", if allowed { "ok" } else { "denied" }));
        }
    }
    tracing::info!(?table, "role matrix held");
    // Dozens of denials within a second: recorded up to the throttle, the rest as one summary.
    wait_audited(&c, "auth.denied.suppressed", "auth", "\"count\"").await?;
    let entries = audit(&c).await?;
    let denied = entries.iter().filter(|e| e.action == "auth.denied" && e.details_json.contains("PermissionDenied"));
    ensure!(denied.count() >= 5, "role refusals audited");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    tracing::info!("--- region scope: westop plans in r-west, not across r-central");
    for (name, text) in [("auth.yaml", PLAYBOOK), ("west.yaml", WEST_PLAYBOOK)] {
        let req = c.request(pb::ApplyPlaybookRequest { ctx: None, file: name.into(), text: text.into() });
        client.apply_playbook(req).await.with_context(|| format!("applying {name}"))?;
    }
    let plan = |pbk: &str| pb::StartCutoverRequest { playbook: pbk.into(), ..Default::default() };
    client.plan_cutover(with_token(plan("west-only"), p.token("westop"))).await.context("west-only plan")?;
    let e = client.plan_cutover(with_token(plan("auth-cutover"), p.token("westop"))).await.expect_err("scoped");
    ensure!(e.code() == Code::PermissionDenied && e.message().contains("not on region r-central"), "{e:?}");
    let e = client.start_cutover(with_token(start_request("auth-cutover", "westop"), p.token("westop"))).await;
    let e = e.expect_err("scoped");
    ensure!(e.code() == Code::PermissionDenied, "{e:?}");
    wait_audited(&c, "auth.denied", "westop", "\"call\":\"PlanCutover\"").await?;
    wait_audited(&c, "auth.denied", "westop", "\"call\":\"StartCutover\"").await?;

    tracing::info!("--- two-person rule: lead starts (claiming to be someone else), cannot approve");
    let run = client
        .start_cutover(with_token(start_request("auth-cutover", "approver"), p.token("lead")))
        .await
        .context("lead starts")?
        .into_inner();
    ensure!(run.requester == "lead" && run.state == "awaiting_approval", "{run:?}");
    for fake in ["", "approver"] {
        let e = client.approve_run(with_token(approve_request(&run.run_id, fake), p.token("lead"))).await;
        let e = e.expect_err("requester cannot approve");
        ensure!(e.code() == Code::FailedPrecondition, "as {fake:?}: {e:?}");
    }
    let e = client.approve_run(with_token(approve_request(&run.run_id, "approver"), p.token("operator"))).await;
    ensure!(e.expect_err("operator is no approver").code() == Code::PermissionDenied);
    let ok = client
        .approve_run(with_token(approve_request(&run.run_id, "lead"), p.token("approver")))
        .await
        .context("approver approves")?
        .into_inner();
    ensure!(ok.state != "awaiting_approval", "{ok:?}");
    wait_audited(&c, "run.create", "lead", &run.run_id).await?;
    wait_audited(&c, "run.approve", "approver", "").await?;
    let abort = pb::RunActionRequest { run_id: run.run_id.clone(), reason: "test over".into(), ..Default::default() };
    client.abort_run(with_token(abort, p.token("operator"))).await.context("abort")?;

    tracing::info!("--- drctl: --token, DRCUT_TOKEN, --token-file; none is a clear refusal");
    let ep = c.endpoints(&[1]);
    let base = ["--endpoint", ep.as_str()];
    let run_drctl = |args: Vec<&str>, env: Vec<(&'static str, String)>| {
        let all: Vec<String> = base.iter().chain(args.iter()).map(|s| s.to_string()).collect();
        async move {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            drcut_tests::process::drctl_env(all, &env).await
        }
    };
    let out = run_drctl(vec!["--token", p.token("viewer"), "status"], vec![]).await?;
    ensure!(out.code == Some(0) && out.stdout.contains("authentication: enabled; you are viewer"), "{out}");
    let out = run_drctl(vec!["--json", "run", "list"], vec![("DRCUT_TOKEN", p.token("operator").into())]).await?;
    ensure!(out.code == Some(0) && out.stdout.contains(&run.run_id), "{out}");
    let file = c.dir().join("approver.token");
    std::fs::write(&file, format!("{}\n", p.token("approver")))?;
    let out = run_drctl(vec!["--token-file", file.to_str().unwrap(), "status"], vec![]).await?;
    ensure!(out.code == Some(0) && out.stdout.contains("you are approver"), "{out}");
    let out = run_drctl(vec!["status"], vec![]).await?;
    ensure!(out.code == Some(1) && out.stderr.contains("Unauthenticated: no API token"), "{out}");
    let out = run_drctl(vec!["--token", &wrong, "run", "list"], vec![]).await?;
    ensure!(out.code == Some(1) && !out.combined().contains(&wrong), "{out}");
    let out = run_drctl(vec!["--token", p.token("viewer"), "halt"], vec![]).await?;
    ensure!(out.code == Some(1) && out.stderr.contains("PermissionDenied: Halt needs the operator role"), "{out}");
    let out = run_drctl(
        vec!["--json", "token", "new", "--name", "carol", "--role", "operator", "--region", "r-west"],
        vec![],
    )
    .await?;
    ensure!(out.code == Some(0), "{out}");
    let j: serde_json::Value = serde_json::from_str(&out.stdout)?;
    let token = j["token"].as_str().context("token")?;
    ensure!(token.starts_with("drcut_") && token.len() == 70, "{out}");
    ensure!(j["sha256"] == drcut_coordinator::auth::token_hash(token), "{out}");
    ensure!(j["entry"].as_str().unwrap_or_default().contains("regions: [r-west]"), "{out}");
    let out = run_drctl(vec!["token", "new", "--name", "carol", "--role", "god"], vec![]).await?;
    ensure!(out.code == Some(2) && out.stderr.contains("--role \"god\""), "{out}");

    tracing::info!("--- rate limit: a burst beyond 40 is refused, others are not slowed");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..80 {
        let mut cl = client.clone();
        let t = p.token("flood").to_string();
        set.spawn(async move { cl.get_status(with_token(pb::GetStatusRequest::default(), &t)).await });
    }
    let results = set.join_all().await;
    let limited: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    ensure!(!limited.is_empty(), "no call of 80 was limited");
    for e in &limited {
        ensure!(e.code() == Code::ResourceExhausted && e.message().contains("20 calls per second"), "{e:?}");
    }
    ensure!(results.iter().filter(|r| r.is_ok()).count() >= 40, "the burst passes");
    client.get_status(with_token(pb::GetStatusRequest::default(), p.token("viewer"))).await.context("viewer")?;
    wait_audited(&c, "auth.denied", "flood", "ResourceExhausted").await?;

    c.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_is_said_loudly() -> Result<()> {
    let c = Cluster::builder(141).nodes(1).start().await?;
    c.wait_leader(&[1]).await?;
    let out = c.drctl(&["status"]).await?;
    ensure!(out.code == Some(0) && out.stdout.contains("authentication: DISABLED (open mode)"), "{out}");
    let out = c.drctl(&["--json", "status"]).await?;
    ensure!(out.stdout.contains("\"enabled\":false"), "{out}");
    // The declared actor is recorded, as before.
    let out = c.drctl(&["--actor", "mallory", "drill", "halt"]).await?;
    ensure!(out.code == Some(0), "{out}");
    let entries = c.client(1)?.list_audit(pb::ListAuditRequest::default()).await?.into_inner().entries;
    ensure!(entries.iter().any(|e| e.actor == "mallory"), "{entries:?}");
    c.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_when_their_token_is_revoked_or_expires() -> Result<()> {
    let p = TestPrincipals::new()
        .add("alice", &["viewer"], &[])
        .add("bob", &["viewer"], &[])
        .add("carol", &["viewer"], &[])
        .add("dave", &["viewer"], &[])
        .add("erin", &["viewer"], &[])
        .add("lead", &["operator", "approver"], &[]);
    let c = Cluster::builder(142).nodes(1).with_auth(&p, None).start().await?;
    c.wait_leader(&[1]).await?;
    c.add_region(1, "r-west").await?;
    c.add_region(1, "r-central").await?;
    let mut client = c.client(1)?;
    let req = c.request(pb::ApplyPlaybookRequest { ctx: None, file: "auth.yaml".into(), text: PLAYBOOK.into() });
    client.apply_playbook(req).await.context("apply")?;
    let run = client.start_cutover(with_token(start_request("auth-cutover", ""), p.token("lead"))).await?.into_inner();
    ensure!(run.state == "awaiting_approval", "{run:?}");

    let health = |who: &str| with_token(pb::WatchHealthRequest::default(), p.token(who));
    let mut alice = client.watch_health(health("alice")).await?.into_inner();
    let mut carol = client.watch_health(health("carol")).await?.into_inner();
    let mut dave = client.watch_health(health("dave")).await?.into_inner();
    let watch = pb::GetRunRequest { run_id: run.run_id.clone() };
    let mut bob = client.watch_run(with_token(watch, p.token("bob"))).await?.into_inner();
    ensure!(bob.message().await?.is_some_and(|r| r.run_id == run.run_id), "bob sees the run first");

    // erin watches health with drctl, which must stop (not reconnect forever) once refused.
    let ep = c.endpoints(&[1]);
    let erin = p.token("erin").to_string();
    let drctl = tokio::spawn(async move {
        drcut_tests::process::drctl_env(["--endpoint", ep.as_str(), "health", "watch"], &[("DRCUT_TOKEN", &erin)]).await
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    tracing::info!("--- one edit of the file: alice's, bob's and erin's tokens revoked, dave's expires soon");
    let expires = std::time::SystemTime::now() + Duration::from_secs(3);
    let expires = humantime::format_rfc3339_seconds(expires).to_string();
    let dave_hash = drcut_coordinator::auth::token_hash(p.token("dave"));
    let file = c.dir().join("principals.yaml");
    let text = std::fs::read_to_string(&file)?;
    let alice_hash = drcut_coordinator::auth::token_hash(p.token("alice"));
    let bob_hash = drcut_coordinator::auth::token_hash(p.token("bob"));
    let erin_hash = drcut_coordinator::auth::token_hash(p.token("erin"));
    let other = |n: usize| drcut_coordinator::auth::token_hash(&format!("replacement-{n}"));
    let edited = text
        .replace(&alice_hash, &other(1))
        .replace(&bob_hash, &other(2))
        .replace(&erin_hash, &other(3))
        .replace(&format!("sha256: {dave_hash}\n"), &format!("sha256: {dave_hash}\n        expires: {expires}\n"));
    ensure!(edited.contains(&other(1)) && edited.contains(&other(2)), "edit applied:\n{edited}");
    ensure!(edited.contains(&format!("expires: {expires}")), "edit applied:\n{edited}");
    std::fs::write(&file, edited)?;

    let e = stream_end("alice", &mut alice, Duration::from_secs(5)).await?;
    ensure!(e.code() == Code::Unauthenticated && e.message().contains("of alice was revoked"), "{e:?}");
    ensure!(e.message().starts_with("WatchHealth: stream ended"), "{e:?}");
    let e = stream_end("bob", &mut bob, Duration::from_secs(5)).await?;
    ensure!(e.code() == Code::Unauthenticated && e.message().contains("WatchRun: stream ended"), "{e:?}");
    wait_audited(&c, "auth.denied", "alice", "\"call\":\"WatchHealth\"").await?;
    wait_audited(&c, "auth.denied", "bob", "\"call\":\"WatchRun\"").await?;
    let out = drctl.await??;
    ensure!(
        out.code == Some(1) && out.stderr.contains("stream ended") && out.stderr.contains("of erin was revoked"),
        "{out}"
    );

    tracing::info!("--- dave's token expires at {expires}: his stream ends then, carol's goes on");
    let e = stream_end("dave", &mut dave, Duration::from_secs(10)).await?;
    ensure!(e.code() == Code::Unauthenticated && e.message().contains(&format!("expired at {expires}")), "{e:?}");
    ensure!(std::time::SystemTime::now() >= humantime::parse_rfc3339(&expires)?, "ended before the expiry");
    ensure!(stream_end("carol", &mut carol, Duration::from_secs(2)).await.is_err(), "carol's stream ended");
    wait_audited(&c, "auth.denied", "dave", "\"call\":\"WatchHealth\"").await?;

    tracing::info!("--- a revoked token cannot open a new stream either");
    let e = client.watch_health(health("alice")).await.expect_err("revoked");
    ensure!(e.code() == Code::Unauthenticated, "{e:?}");
    c.finish();
    Ok(())
}
