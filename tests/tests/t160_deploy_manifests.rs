//! The deployment artifacts follow the platform's rules: Kubernetes manifests pass schema
//! validation by a real validator (kubernetes-validate from PyPI, installed by scripts/test),
//! and every workload runs non-root with a read-only root filesystem, dropped capabilities,
//! probes and an image pinned by digest; the coordinator has a PDB of one and spreads across
//! zones; the network denies by default; the configs embedded in the manifests are accepted by
//! drcut's own parsers; the Dockerfile ends non-root, distroless and with a health check; the
//! systemd units carry the hardening options.

use anyhow::{Context, Result, bail, ensure};
use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every YAML document of every manifest in the base, with its file name.
fn documents() -> Result<Vec<(String, Value)>> {
    let base = root().join("deploy/kubernetes/base");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&base)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.sort();
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "yaml")) {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if name == "kustomization.yaml" {
            continue;
        }
        let text = std::fs::read_to_string(f)?;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).with_context(|| name.clone())?;
            out.push((name.clone(), v));
        }
    }
    Ok(out)
}

use serde::Deserialize;

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn kind(v: &Value) -> &str {
    v.get("kind").and_then(Value::as_str).unwrap_or("")
}

fn name(v: &Value) -> &str {
    s(v, &["metadata", "name"]).and_then(Value::as_str).unwrap_or("")
}

/// The validator scripts/test installs (or DRCUT_KUBE_VALIDATE).
fn validator() -> Result<PathBuf> {
    let p = std::env::var_os("DRCUT_KUBE_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/tools/kube-validate/bin/kubernetes-validate"));
    ensure!(
        p.exists(),
        "{} is missing: run scripts/test (it installs kubernetes-validate from PyPI), or \
         `source scripts/lib.sh && ensure_manifest_validator`",
        p.display()
    );
    Ok(p)
}

#[test]
fn manifests_pass_schema_validation_and_a_broken_one_does_not() -> Result<()> {
    let v = validator()?;
    let base = root().join("deploy/kubernetes/base");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&base)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "yaml") && !f.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    let out = Command::new(&v).args(["--strict", "--quiet"]).args(&files).output()?;
    ensure!(
        out.status.success(),
        "kubernetes-validate refused the manifests:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The validator is live: a typo in a field and a wrong type are both caught.
    let tmp = tempfile::tempdir()?;
    let sts = std::fs::read_to_string(base.join("coordinator-statefulset.yaml"))?;
    for (what, bad) in [
        ("unknown field", sts.replace("  replicas: 3", "  replica: 3")),
        ("wrong type", sts.replace("  replicas: 3", "  replicas: three")),
    ] {
        let f = tmp.path().join("bad.yaml");
        std::fs::write(&f, bad)?;
        let out = Command::new(&v).args(["--strict", "--quiet"]).arg(&f).output()?;
        ensure!(!out.status.success(), "the validator accepted a manifest with a {what}");
    }
    Ok(())
}

#[test]
fn workloads_follow_the_platform_rules() -> Result<()> {
    let docs = documents()?;
    let workloads: Vec<_> = docs.iter().filter(|(_, d)| matches!(kind(d), "StatefulSet" | "Deployment")).collect();
    ensure!(workloads.len() >= 3, "a coordinator StatefulSet and an agent Deployment per region");
    for (file, w) in &workloads {
        let at = format!("{file}: {} {}", kind(w), name(w));
        let pod = s(w, &["spec", "template", "spec"]).with_context(|| format!("{at}: no pod spec"))?;
        ensure!(s(pod, &["securityContext", "runAsNonRoot"]) == Some(&Value::Bool(true)), "{at}: runAsNonRoot");
        ensure!(
            s(pod, &["automountServiceAccountToken"]) == Some(&Value::Bool(false)),
            "{at}: no service account token"
        );
        let containers = s(pod, &["containers"]).and_then(Value::as_sequence).context("containers")?;
        for c in containers {
            let cat = format!("{at} container {}", c.get("name").and_then(Value::as_str).unwrap_or("?"));
            let sc = c.get("securityContext").with_context(|| format!("{cat}: securityContext"))?;
            ensure!(s(sc, &["readOnlyRootFilesystem"]) == Some(&Value::Bool(true)), "{cat}: readOnlyRootFilesystem");
            ensure!(s(sc, &["allowPrivilegeEscalation"]) == Some(&Value::Bool(false)), "{cat}: no escalation");
            let drop = s(sc, &["capabilities", "drop"]).and_then(Value::as_sequence).context("capabilities.drop")?;
            ensure!(drop.iter().any(|d| d.as_str() == Some("ALL")), "{cat}: drops ALL capabilities");
            ensure!(c.get("readinessProbe").is_some() && c.get("livenessProbe").is_some(), "{cat}: both probes");
            let image = c.get("image").and_then(Value::as_str).context("image")?;
            ensure!(image.contains("@sha256:") && !image.contains(":latest"), "{cat}: image by digest: {image}");
        }
    }
    let sts = workloads.iter().find(|(_, w)| kind(w) == "StatefulSet").context("coordinator StatefulSet")?.1.clone();
    ensure!(s(&sts, &["spec", "replicas"]).and_then(Value::as_u64) == Some(3), "3 coordinators");
    ensure!(s(&sts, &["spec", "volumeClaimTemplates"]).is_some(), "persistent volumes for the Raft data");
    let anti = s(
        &sts,
        &["spec", "template", "spec", "affinity", "podAntiAffinity", "requiredDuringSchedulingIgnoredDuringExecution"],
    )
    .and_then(Value::as_sequence)
    .context("anti-affinity")?;
    ensure!(
        anti.iter().any(|t| t.get("topologyKey").and_then(Value::as_str) == Some("topology.kubernetes.io/zone")),
        "coordinators spread across zones"
    );
    let readiness = s(&sts, &["spec", "template", "spec", "containers"])
        .and_then(|c| c.get(0))
        .and_then(|c| s(c, &["readinessProbe", "httpGet", "path"]))
        .and_then(Value::as_str);
    ensure!(readiness == Some("/readyz"), "coordinator readiness reports leader/quorum: {readiness:?}");
    let labels = s(&sts, &["spec", "selector", "matchLabels"]).context("selector")?;
    let pdb = docs.iter().find(|(_, d)| kind(d) == "PodDisruptionBudget").context("a PodDisruptionBudget")?;
    ensure!(s(&pdb.1, &["spec", "maxUnavailable"]).and_then(Value::as_u64) == Some(1), "PDB maxUnavailable: 1");
    ensure!(s(&pdb.1, &["spec", "selector", "matchLabels"]) == Some(labels), "the PDB selects the coordinators");
    let deny = docs.iter().any(|(_, d)| {
        kind(d) == "NetworkPolicy"
            && s(d, &["spec", "podSelector"]).and_then(Value::as_mapping).is_some_and(|m| m.is_empty())
            && s(d, &["spec", "ingress"]).is_none()
            && s(d, &["spec", "egress"]).is_none()
            && s(d, &["spec", "policyTypes"]).and_then(Value::as_sequence).is_some_and(|p| p.len() == 2)
    });
    ensure!(deny, "a NetworkPolicy denying all ingress and egress by default");
    let overlay = std::fs::read_to_string(root().join("deploy/kubernetes/overlays/production/kustomization.yaml"))?;
    ensure!(overlay.contains("digest: sha256:") && !overlay.contains("newTag"), "the overlay pins by digest");
    Ok(())
}

#[test]
fn configs_in_the_manifests_are_accepted_by_drcut() -> Result<()> {
    // The agents' secrets come from the environment in the manifests; parsing resolves them.
    // SAFETY: nextest runs each test in its own process; nothing else reads the environment.
    unsafe {
        std::env::set_var("WALLET_DB_DSN", "host=127.0.0.1 user=drcut dbname=wallet");
        std::env::set_var("PDNS_API_KEY", "k");
    }
    let ca = drcut_tests::tls::TestCa::new("deploy")?;
    let tmp = tempfile::tempdir()?;
    let mut coordinators = 0;
    let mut agents = 0;
    for (file, d) in documents()? {
        if kind(&d) != "ConfigMap" {
            continue;
        }
        let data = d.get("data").and_then(Value::as_mapping).context("data")?;
        for (k, v) in data {
            let (k, text) = (k.as_str().unwrap_or(""), v.as_str().unwrap_or(""));
            let at = format!("{file}: {k}");
            if text.contains("node_id:") {
                drcut_coordinator::config::Config::parse(&at, text).map_err(|e| anyhow::anyhow!("{e}"))?;
                coordinators += 1;
            } else if text.contains("agent_id:") {
                // The agent reads its certificate while loading its config: give it real ones,
                // issued for the region the manifest names, where the Secret would be mounted.
                let region = text
                    .lines()
                    .find_map(|l| l.strip_prefix("region: "))
                    .with_context(|| format!("{at}: no region"))?
                    .trim();
                let files = ca.write(tmp.path(), &format!("agent-{region}"), &ca.agent(region)?)?;
                let text = text
                    .replace("/etc/drcut/tls/ca.pem", &files.ca.display().to_string())
                    .replace("/etc/drcut/tls/tls.crt", &files.cert.display().to_string())
                    .replace("/etc/drcut/tls/tls.key", &files.key.display().to_string());
                drcut_agent::config::parse(&at, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
                agents += 1;
            } else {
                bail!("{at}: neither a coordinator nor an agent config");
            }
        }
    }
    ensure!((coordinators, agents) == (3, 2), "configs found: {coordinators} coordinators, {agents} agents");
    Ok(())
}

#[test]
fn the_image_is_distroless_non_root_and_checks_its_health() -> Result<()> {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile"))?;
    let last_from = text.lines().rfind(|l| l.starts_with("FROM ")).context("FROM")?;
    ensure!(last_from.contains("distroless") && last_from.contains("nonroot"), "final stage: {last_from}");
    let user = text.lines().rfind(|l| l.starts_with("USER ")).context("USER")?;
    ensure!(!user.contains("root") || user.contains("nonroot"), "{user}");
    ensure!(!user.trim_start_matches("USER ").starts_with("0"), "{user}");
    ensure!(text.contains("HEALTHCHECK"), "a health check");
    ensure!(!text.contains(":latest"), "no latest tag");
    Ok(())
}

#[test]
fn systemd_units_are_hardened_and_verify() -> Result<()> {
    for unit in ["drcut-coordinator.service", "drcut-agent.service"] {
        let path = root().join("deploy/systemd").join(unit);
        let text = std::fs::read_to_string(&path)?;
        for opt in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "CapabilityBoundingSet=",
            "RestrictAddressFamilies=",
            "SystemCallFilter=@system-service",
        ] {
            ensure!(text.lines().any(|l| l.starts_with(opt)), "{unit}: {opt}");
        }
        ensure!(!text.lines().any(|l| l == "User=root"), "{unit}: not root");
        // systemd's own checker, where the machine has it (it needs the ExecStart binary to
        // exist: point it at a copy of the unit whose binaries are the ones just built).
        let Ok(sa) = which("systemd-analyze") else { continue };
        let bin = root().join("target/debug");
        let tmp = tempfile::tempdir()?;
        let copy = tmp.path().join(unit);
        std::fs::write(&copy, text.replace("/usr/local/bin/", &format!("{}/", bin.display())))?;
        let out = Command::new(sa).args(["verify", "--man=no"]).arg(&copy).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        // On machines without a running systemd (containers, CI) verify cannot load the
        // manager; only complaints about the unit itself count.
        let own: Vec<&str> = err.lines().filter(|l| l.contains(unit)).collect();
        ensure!(own.is_empty(), "systemd-analyze verify {unit}:\n{err}");
    }
    Ok(())
}

fn which(cmd: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(cmd))
        .find(|p| p.exists())
        .with_context(|| format!("{cmd} not on PATH"))
}
