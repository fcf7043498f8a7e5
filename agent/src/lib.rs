//! The drcut region agent.
//!
//! # Layout
//!
//! - [`slo`]: SLO expressions, parsed at config load and evaluated against window values.
//! - [`config`]: the agent's YAML config: identity, resources, checks; builds the probes.
//! - [`secrets`]: secrets from env or files, never printed.
//! - [`tls`]: the one rustls crypto provider (ring), installed at start-up.
//! - [`checks`]: one probe per check type, each a real client doing one measurement.
//! - [`window`]: a check's sliding window and its statistics; [`runner`] schedules a check,
//!   judges its SLOs and emits reports.
//! - [`session`]: the AgentLink session that carries reports to the coordinator leader and
//!   step commands from it to the [`executor`], which runs [`steps`] against real systems.
//! - [`pgdata`]: a PostgreSQL data directory on this host: `pg_ctl`, offline fences, rebuilds.
//! - [`lease`]: the lease from the coordinator quorum, and self-fencing when it runs out.
//! - [`faults`]: GameDay faults the executor injects on a drill's behalf (fault proxies,
//!   stopped databases, killed processes), each with a dead-man switch on that lease.
//! - [`metrics`]: Prometheus `/metrics`.
pub mod checks;
pub mod config;
pub mod executor;
pub mod faults;
pub mod lease;
pub mod metrics;
pub mod pgdata;
pub mod runner;
pub mod secrets;
pub mod session;
pub mod slo;
pub mod steps;
pub mod tls;
pub mod window;
