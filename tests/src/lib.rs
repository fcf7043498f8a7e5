//! End-to-end test harness: real `drcut-coordinator` processes on 127.0.B.N loopback addresses,
//! fault proxies between them, and helpers to drive them over gRPC and through `drctl`.
//!
//! # Layout
//!
//! A test flows through the modules in this order:
//! - [`bins`]: where the built binaries live (the target dir, or `DRCUT_BIN_DIR`).
//! - [`config`]: a node's YAML config, written by the harness.
//! - [`auth`]: principals files and token-carrying requests for clusters with authentication.
//! - [`proxy`]: [`FaultProxy`], a TCP proxy placed on every node-to-node link that can be cut
//!   and healed.
//! - [`node`]: one coordinator process: start, SIGKILL, SIGTERM, restart, log tails.
//! - [`cluster`]: [`Cluster`], the nodes of one test with their proxies and a temp dir.
//! - [`client`]: gRPC `Control` clients and write helpers.
//! - [`wait`]: polling with a deadline, so tests wait for outcomes instead of sleeping.
//! - [`tls`]: a throwaway CA and node, agent and client certificates for mTLS tests.
//! - [`process`]: run a binary to completion (`drctl`, a coordinator expected to refuse its
//!   config) and capture its output.
//!
//! Health-check tests also run real servers for the agent to watch, each on its own loopback
//! address and temp dir, stopped on drop:
//! - [`pg`]: [`PgPair`], a PostgreSQL primary and a streaming standby.
//! - [`pdns`]: [`Pdns`], a PowerDNS Authoritative server with its HTTP API.
//! - [`http_server`]: [`TestHttp`], an HTTP server (and Prometheus query endpoint) whose
//!   latency, errors and availability the test sets.
//! - [`agent`]: [`AgentProc`], one `drcut-agent` process.
//!
//! PostgreSQL and PowerDNS come from Debian packages that `scripts/test` installs.
//!
//! [`sandbox`] assembles the same pieces into the newcomer's sandbox (`scripts/sandbox`, binary
//! `drcut-sandbox`), with the sample casino app (`drcut-casino`) and a few players.
//!
//! # Addresses
//!
//! Every test owns an address block `B` so tests run in parallel under nextest: node `N`
//! listens on `127.0.B.N:7001`, and the proxy for the link `i → j` on `127.0.B.(100+10i+j)`.
//!
//! # Environment
//!
//! - `DRCUT_BIN_DIR`: where `drcut-coordinator`, `drcut-agent` and `drctl` are (default: the
//!   target dir).
//! - `DRCUT_NODE_LOG`: `RUST_LOG` for the nodes (default `info`).
//! - `DRCUT_AGENT_LOG`: `RUST_LOG` for agents (default: `DRCUT_NODE_LOG`, else `info`).
//! - `DRCUT_PG_BIN`: PostgreSQL's bin dir (default: the newest `/usr/lib/postgresql/*/bin`).
//! - `DRCUT_KEEP_TMP`: keep each test's temp dir (configs, data, full node logs).
//! - `RUST_LOG`: the test's own log filter.

pub mod agent;
pub mod auth;
pub mod bins;
pub mod client;
pub mod cluster;
pub mod config;
pub mod cutover;
pub mod drill;
pub mod health;
pub mod http_server;
pub mod node;
pub mod pdns;
pub mod pg;
pub mod process;
pub mod proxy;
pub mod sandbox;
pub mod steps;
pub mod tls;
pub mod wait;

pub use agent::AgentProc;
pub use cluster::{Cluster, ClusterBuilder};
pub use config::{NodeConfig, RaftOptions};
pub use http_server::TestHttp;
pub use pdns::Pdns;
pub use pg::PgPair;
pub use process::ProcessOutput;
pub use proxy::FaultProxy;

/// Installs a tracing subscriber that writes through the test harness's capture (once per
/// process; later calls do nothing).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().with_ansi(false).try_init();
}
