//! Probes: one real client per check type. A probe does one measurement and returns a
//! [`Sample`]; scheduling, windows and SLOs live in `runner` and `window`.
//!
//! (Being written: http, tcp, dns, postgres, prometheus.)

use std::collections::BTreeMap;

/// One measurement.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// The target answered at all (an HTTP response of any status, a TCP connect, a DNS reply
    /// of any rcode, a database session). False means unreachable: refused, reset, timed out.
    pub reachable: bool,
    /// The answer was the expected one (status, body, answer set, role, …).
    pub ok: bool,
    /// Wall time of the probe in milliseconds.
    pub latency_ms: f64,
    /// Type-specific numbers (e.g. `lag_seconds`, `value`, `connect_ms`).
    pub values: BTreeMap<String, f64>,
    /// Type-specific facts (e.g. `role=standby`, `status=200`, `answers=192.0.2.1`).
    pub labels: BTreeMap<String, String>,
    /// What went wrong, for operators.
    pub error: Option<String>,
}
