//! The sandbox demo: a real planned cutover on this machine. Starts 3 coordinator nodes, an
//! agent per region (eu-west, eu-central), a PostgreSQL primary and streaming standby, a
//! PowerDNS serving the GSLB name and the database endpoint, an app per region and a writer
//! that records every acknowledged write; then plans and runs the cutover, printing progress,
//! and reports what happened. With a terminal it stays up until Ctrl-C. Run via `scripts/demo`.

use anyhow::{Context, Result};
use drcut_tests::cutover::{Env, canary};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const BLOCK: u8 = 100;

fn drctl(env: &Env, args: &[&str]) -> Result<std::process::ExitStatus> {
    let bin = drcut_tests::bins::bin_path(drcut_tests::bins::DRCTL)?;
    let eps = env.cluster.endpoints(&[1, 2, 3]);
    Ok(std::process::Command::new(bin).args(["--endpoint", &eps, "--actor", "demo"]).args(args).status()?)
}

#[tokio::main]
async fn main() -> Result<()> {
    println!(
        "==> starting: 3 coordinators on 127.0.{BLOCK}.1-3, PostgreSQL primary (eu-west, 127.0.{BLOCK}.10) + standby (eu-central, .11), PowerDNS (.20), apps, 2 agents"
    );
    let env = Env::start(BLOCK)
        .await
        .context("starting the sandbox (run scripts/demo, which installs PostgreSQL and PowerDNS)")?;
    let eps = env.cluster.endpoints(&[1, 2, 3]);
    println!("==> both regions healthy; the coordinators see:");
    drctl(&env, &["status"])?;

    let file = env.cluster.dir().join("wallet-cutover.yaml");
    std::fs::write(&file, env.playbook_with(0, "2s", "[5, 25, 50, 100]"))?;
    println!("\n==> apply and plan the playbook ({})", file.display());
    drctl(&env, &["playbook", "apply", &file.display().to_string()])?;
    drctl(&env, &["plan", "wallet-test-cutover"])?;

    println!("\n==> a canary writer inserts numbered rows through the GSLB name wallet-db.gslb.example.");
    let ports = env.db_ports();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = canary(env.dns.dns_addr(), ports, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    println!("\n==> drctl cutover start wallet-test-cutover --wait   (eu-west -> eu-central)");
    let ok = drctl(&env, &["cutover", "start", "wallet-test-cutover", "--reason", "sandbox demo", "--wait"])?.success();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let log = writer.await??;
    let present = env.canary_ids_in_central().await?;
    let lost = log.acked.iter().filter(|id| !present.contains(id)).count();
    println!("\n==> result: run {}", if ok { "succeeded" } else { "did NOT succeed" });
    println!("    acknowledged writes: {}, lost: {lost} (RPO)", log.acked.len());
    println!("    longest write gap seen by the client: {} ms", log.longest_gap().as_millis());
    println!("    wallet.gslb.example.    -> {:?}", env.dns.query_a("wallet.gslb.example.").await?);
    println!("    wallet-db.gslb.example. -> {:?}", env.dns.query_a("wallet-db.gslb.example.").await?);
    println!(
        "    old primary refuses writes: {}",
        env.pg.exec_primary("INSERT INTO canary (id) VALUES (-1)").await.is_err()
    );

    if std::io::stdin().is_terminal() {
        let bin = drcut_tests::bins::bin_path(drcut_tests::bins::DRCTL)?;
        println!("\nThe sandbox stays up until Ctrl-C. Try:");
        println!("  {} -e {eps} status", bin.display());
        println!("  {} -e {eps} run list", bin.display());
        println!("  {} -e {eps} audit verify", bin.display());
        tokio::signal::ctrl_c().await?;
    }
    println!("==> stopping everything");
    env.cluster.finish();
    if ok && lost == 0 { Ok(()) } else { anyhow::bail!("the cutover did not succeed cleanly") }
}
