//! The drcut coordinator: a Raft-replicated state machine holding regions, runs and the audit
//! chain, served over gRPC.
//!
//! # Layout
//!
//! Data flows through the modules in this order:
//! - [`config`]: the node's YAML config, validated before anything touches the disk.
//! - [`command`]: what a client asks for, as it travels through the Raft log.
//! - [`state`]: the pure state machine logic (`apply`), with [`audit`] hashing each change.
//! - [`store`]: redb-backed Raft log and state machine (durability, snapshots).
//! - [`network`]: the Raft transport to peers (tonic, one cached channel per peer).
//! - [`tls`]: mutual TLS under the cluster's CA; identities (node, region agent) in
//!   certificates, the audited TLS accept loop.
//! - [`node`]: wires Raft, stores and services together; bootstrap and shutdown.
//! - [`health`]: the pure health model (hysteresis, vantage quorum); [`hub`] runs it on the
//!   leader, fed by agent sessions.
//! - [`grpc`]: the `Control`, `AgentLink` and `RaftTransport` services; [`http`]: `/metrics`
//!   and the ops [`console`] (a web page over the `Control` service).
//! - [`client`]: the client side used by `drctl` (endpoint failover, leader following).
//! - [`clock`] and [`rt`]: wall-clock time and openraft's runtime, both replaceable so the
//!   deterministic simulation (`tests/sim`) can drive them.

pub mod audit;
pub mod auth;
pub mod client;
pub mod clock;
pub mod command;
pub mod config;
pub mod console;
pub mod drill;
pub mod engine;
pub mod failover;
pub mod grpc;
pub mod health;
pub mod http;
pub mod hub;
pub mod network;
pub mod node;
pub mod playbook;
pub mod recover;
pub mod rt;
pub mod run;
pub mod state;
pub mod store;
pub mod tls;
pub mod types;
