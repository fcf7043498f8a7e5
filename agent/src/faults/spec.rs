//! The wire form of fault commands (`StepCommand.params_json`) and the dead-man rule: plain
//! data and pure functions, no I/O.

use super::dns::Answer;
use super::proxy::Mode;
use serde::Deserialize;
use std::time::Duration;
use tokio::time::Instant;

/// A fault's type and settings: the type the coordinator sends (one definition, in drcut-proto).
pub use drcut_proto::fault::FaultKind as Fault;
pub use drcut_proto::fault::{DnsAnswer, ProxyMode};

impl From<DnsAnswer> for Answer {
    fn from(a: DnsAnswer) -> Answer {
        match a {
            DnsAnswer::Nxdomain => Answer::Nxdomain,
            DnsAnswer::Servfail => Answer::Servfail,
        }
    }
}

/// `fault.inject` params.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectParams {
    /// What to break.
    pub fault: Fault,
    /// The agent reverts the fault by itself this long after receiving the command.
    pub deadline_ms: u64,
    /// ... or once it has held no lease from the coordinators for this long.
    pub lost_coordinator_ms: u64,
    /// Outputs of earlier steps, which the coordinator may attach to any command; unused.
    #[serde(default, rename = "inputs")]
    _inputs: serde::de::IgnoredAny,
}

/// `fault.halt` params: one drill run's faults, or (no `run_id`) every drill's.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HaltParams {
    /// The drill run; none: every one.
    #[serde(default)]
    pub run_id: Option<String>,
}

/// `fault.revert` params: none.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RevertParams {}

impl InjectParams {
    /// Refuses what deserializing cannot: zero times, and the fault's own settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.deadline_ms == 0 {
            return Err("deadline_ms: 0: a fault needs a deadline (its dead-man switch)".into());
        }
        if self.lost_coordinator_ms == 0 {
            return Err("lost_coordinator_ms: 0: a fault needs a dead-man switch on the coordinator".into());
        }
        match &self.fault {
            Fault::Proxy { .. } => self.fault.proxy_mode().map(|_| ()),
            Fault::Dns { name, .. } => super::dns::normalize(name).map(|_| ()).map_err(|m| format!("fault.name: {m}")),
            Fault::Exec { inject, revert } => {
                for (field, argv) in [("inject", inject), ("revert", revert)] {
                    if argv.first().is_none_or(|p| p.trim().is_empty()) {
                        return Err(format!("fault.{field}: list the program and its arguments"));
                    }
                }
                Ok(())
            }
            Fault::PostgresStop { .. } | Fault::ProcessKill { .. } => Ok(()),
        }
    }
}

/// The agent's reading of a proxy fault.
pub trait ProxyFault {
    /// The proxy [`Mode`] of a `proxy` fault; settings that do not apply to the mode are
    /// refused rather than ignored (they would make the drill report lie).
    fn proxy_mode(&self) -> Result<Mode, String>;
}

impl ProxyFault for Fault {
    fn proxy_mode(&self) -> Result<Mode, String> {
        let Fault::Proxy { mode, latency_ms, jitter_ms, bytes_per_second, failure_rate, .. } = self else {
            return Err(format!("a {} fault has no proxy mode", self.kind()));
        };
        let set = [
            ("latency_ms", *latency_ms != 0, *mode == ProxyMode::Latency),
            ("jitter_ms", *jitter_ms != 0, *mode == ProxyMode::Latency),
            ("bytes_per_second", *bytes_per_second != 0, *mode == ProxyMode::Bandwidth),
            ("failure_rate", *failure_rate != 0.0, *mode == ProxyMode::Partial),
        ];
        if let Some((field, _, _)) = set.iter().find(|(_, is_set, applies)| *is_set && !applies) {
            return Err(format!("fault.{field}: does not apply to mode {}", mode.as_str()));
        }
        Ok(match mode {
            ProxyMode::Blackhole => Mode::Blackhole,
            ProxyMode::Reset => Mode::Reset,
            ProxyMode::Latency if *latency_ms == 0 && *jitter_ms == 0 => {
                return Err("fault.latency_ms: latency mode needs latency_ms (or jitter_ms) above 0".into());
            }
            ProxyMode::Latency => {
                Mode::Latency { latency: Duration::from_millis(*latency_ms), jitter: Duration::from_millis(*jitter_ms) }
            }
            ProxyMode::Bandwidth if *bytes_per_second == 0 => {
                return Err("fault.bytes_per_second: bandwidth mode needs bytes_per_second above 0".into());
            }
            ProxyMode::Bandwidth => Mode::Bandwidth { bytes_per_second: *bytes_per_second },
            ProxyMode::Partial if !(0.0..=1.0).contains(failure_rate) => {
                return Err(format!("fault.failure_rate: {failure_rate} is not between 0 and 1"));
            }
            ProxyMode::Partial => Mode::Partial { failure_rate: *failure_rate },
        })
    }
}

/// Why the dead-man switch reverts a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Its deadline passed.
    Deadline {
        /// How long ago.
        late: Duration,
    },
    /// The agent held no lease from the coordinators for longer than the fault allows.
    LostCoordinator {
        /// Time since the last lease.
        without_lease: Duration,
        /// The fault's `lost_coordinator_ms`.
        allowed: Duration,
    },
}

impl std::fmt::Display for Expiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expiry::Deadline { late } => write!(f, "its deadline passed {} ms ago", late.as_millis()),
            Expiry::LostCoordinator { without_lease, allowed } => write!(
                f,
                "no lease from the coordinators for {} ms (lost_coordinator_ms {})",
                without_lease.as_millis(),
                allowed.as_millis()
            ),
        }
    }
}

/// Whether a fault with this `deadline` and `lost_after` must be reverted at `now`, when the
/// agent's newest lease counts from `lease_since`. The deadline wins when both hold.
pub fn expiry(deadline: Instant, lost_after: Duration, now: Instant, lease_since: Instant) -> Option<Expiry> {
    if now >= deadline {
        return Some(Expiry::Deadline { late: now - deadline });
    }
    let without_lease = now.saturating_duration_since(lease_since);
    (without_lease > lost_after).then_some(Expiry::LostCoordinator { without_lease, allowed: lost_after })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inject(v: serde_json::Value) -> Result<InjectParams, String> {
        let p: InjectParams = crate::steps::parse_params(&v)?;
        p.validate().map(|()| p)
    }

    fn with_fault(f: serde_json::Value) -> serde_json::Value {
        json!({"fault": f, "deadline_ms": 600000, "lost_coordinator_ms": 30000})
    }

    #[test]
    fn the_coordinators_json_parses() {
        let p = inject(with_fault(
            json!({"type": "proxy", "proxy": "psp", "mode": "latency", "latency_ms": 200, "jitter_ms": 50}),
        ))
        .unwrap();
        assert_eq!(
            p.fault.proxy_mode().unwrap(),
            Mode::Latency { latency: Duration::from_millis(200), jitter: Duration::from_millis(50) }
        );
        assert_eq!((p.deadline_ms, p.lost_coordinator_ms), (600_000, 30_000));
        let p = inject(with_fault(
            json!({"type": "dns", "proxy": "resolver", "name": "PSP.example.", "answer": "servfail"}),
        ))
        .unwrap();
        assert_eq!(
            p.fault,
            Fault::Dns { proxy: "resolver".into(), name: "PSP.example.".into(), answer: DnsAnswer::Servfail }
        );
        let p = inject(with_fault(json!({"type": "postgres_stop", "database": "wallet"}))).unwrap();
        assert_eq!(p.fault.target(), Some(("database", "wallet")));
        let p = inject(with_fault(json!({"type": "proxy", "proxy": "psp", "mode": "partial", "failure_rate": 1.0})))
            .unwrap();
        assert_eq!(p.fault.proxy_mode().unwrap(), Mode::Partial { failure_rate: 1.0 });
        let p =
            inject(with_fault(json!({"type": "exec", "inject": ["/bin/true"], "revert": ["/bin/true", "x"]}))).unwrap();
        assert_eq!(p.fault.kind(), "exec");
        let h: HaltParams = crate::steps::parse_params(&json!({})).unwrap();
        assert_eq!(h.run_id, None);
        let h: HaltParams = crate::steps::parse_params(&json!({"run_id": "r1"})).unwrap();
        assert_eq!(h.run_id.as_deref(), Some("r1"));
    }

    #[test]
    fn bad_params_name_the_field() {
        let e = |v| inject(v).unwrap_err();
        assert!(e(with_fault(json!({"type": "flood", "proxy": "psp"}))).contains("unknown variant `flood`"));
        assert!(
            e(with_fault(json!({"type": "proxy", "proxy": "psp", "mode": "drop"}))).contains("unknown variant `drop`")
        );
        let m = e(with_fault(json!({"type": "postgres_stop", "database": "w", "colour": 1})));
        assert!(m.contains("unknown field `colour`"), "{m}");
        assert!(
            e(json!({"fault": {"type": "exec", "inject": ["a"], "revert": ["b"]}, "deadline_ms": 1}))
                .contains("lost_coordinator_ms")
        );
        let m = e(
            json!({"fault": {"type": "exec", "inject": ["a"], "revert": ["b"]}, "deadline_ms": 0, "lost_coordinator_ms": 5}),
        );
        assert!(m.starts_with("deadline_ms: 0"), "{m}");
        let m = e(with_fault(json!({"type": "proxy", "proxy": "p", "mode": "blackhole", "latency_ms": 5})));
        assert_eq!(m, "fault.latency_ms: does not apply to mode blackhole");
        let m = e(with_fault(json!({"type": "proxy", "proxy": "p", "mode": "bandwidth"})));
        assert!(m.starts_with("fault.bytes_per_second:"), "{m}");
        let m = e(with_fault(json!({"type": "proxy", "proxy": "p", "mode": "partial", "failure_rate": 1.5})));
        assert_eq!(m, "fault.failure_rate: 1.5 is not between 0 and 1");
        let m = e(with_fault(json!({"type": "dns", "proxy": "r", "name": "psp.example", "answer": "nxdomain"})));
        assert!(m.starts_with("fault.name: \"psp.example\" is not an absolute name"), "{m}");
        let m = e(with_fault(json!({"type": "exec", "inject": ["/bin/true"], "revert": []})));
        assert_eq!(m, "fault.revert: list the program and its arguments");
    }

    #[test]
    fn the_dead_man_switch_fires_on_the_deadline_or_a_lost_lease() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Fresh lease, deadline ahead: nothing.
        assert_eq!(expiry(t0 + s(600), s(30), t0 + s(10), t0 + s(9)), None);
        // Deadline passed.
        assert_eq!(expiry(t0 + s(600), s(30), t0 + s(601), t0 + s(600)), Some(Expiry::Deadline { late: s(1) }));
        // No lease for longer than allowed.
        assert_eq!(
            expiry(t0 + s(600), s(30), t0 + s(45), t0 + s(14)),
            Some(Expiry::LostCoordinator { without_lease: s(31), allowed: s(30) })
        );
        // Exactly the allowance: not yet.
        assert_eq!(expiry(t0 + s(600), s(30), t0 + s(44), t0 + s(14)), None);
    }
}
