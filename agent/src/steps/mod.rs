//! Step executors: the actions of a cutover, run by the agent of the step's region against
//! real systems. Every executor is idempotent (promoting a promoted database succeeds; freezing
//! a frozen one succeeds) because the coordinator may resend a command after a leader change.
//!
//! The session layer (fencing tokens, recorded results for repeated commands) sits above this
//! module; executors only act and report.

pub mod dns;
pub mod fence;
pub mod http;
pub mod postgres;
pub mod rebuild;

use crate::config::Resources;
use std::collections::BTreeMap;
use std::time::Duration;

/// What an executor may use.
pub struct StepContext<'a> {
    /// The agent's resources (secrets resolved locally; the coordinator never sees them).
    pub resources: &'a Resources,
    /// The step must finish within this.
    pub timeout: Duration,
}

/// The result of one execution.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutcome {
    /// Whether the step achieved its goal (verified, not assumed).
    pub ok: bool,
    /// One line for operators: what was done or what went wrong.
    pub detail: String,
    /// Numbers the run records (durations in ms, LSN distances in bytes, ratios).
    pub measurements: BTreeMap<String, f64>,
    /// Structured output later steps may consume (e.g. the frozen LSN).
    pub data: serde_json::Value,
}

impl StepOutcome {
    /// A failure with a reason.
    pub fn failed(detail: impl Into<String>) -> Self {
        StepOutcome { ok: false, detail: detail.into(), ..Default::default() }
    }
}

/// Deserializes a step's params; the error names the parameter (`param verify.queries: invalid
/// type …`, `missing field `zone``). No params at all count as an empty object.
pub(crate) fn parse_params<T: serde::de::DeserializeOwned>(params: &serde_json::Value) -> Result<T, String> {
    let empty = serde_json::Value::Object(Default::default());
    let value = if params.is_null() { &empty } else { params };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." { format!("bad params: {inner}") } else { format!("param {path}: {inner}") }
    })
}

/// The time a step may spend before reporting: its timeout minus a margin (a tenth, at most
/// 1 s), so the step reports what it saw instead of being cut off by the outer timeout.
pub(crate) fn budget(timeout: Duration) -> Duration {
    timeout.saturating_sub((timeout / 10).min(Duration::from_secs(1)))
}

/// Every action this agent can execute.
pub const ACTIONS: &[&str] = &[
    "freeze_writes",
    "wait_replication",
    "fence",
    "promote_db",
    "unfreeze_writes",
    "repoint_clients",
    "shift_traffic",
    "warm_caches",
    "smoke",
    "hook",
    "rebuild_standby",
];

/// Runs `action` with its `params` (the step's `with:` settings after parameter substitution,
/// plus outputs of earlier steps under `inputs`). Unknown actions and bad params fail cleanly.
pub async fn execute(action: &str, params: &serde_json::Value, ctx: &StepContext<'_>) -> StepOutcome {
    let run = async {
        if let Some(o) = postgres::execute(action, params, ctx).await {
            return o;
        }
        if let Some(o) = fence::execute(action, params, ctx).await {
            return o;
        }
        if let Some(o) = rebuild::execute(action, params, ctx).await {
            return o;
        }
        if let Some(o) = dns::execute(action, params, ctx).await {
            return o;
        }
        if let Some(o) = http::execute(action, params, ctx).await {
            return o;
        }
        StepOutcome::failed(format!("unknown action {action:?}; this agent executes {ACTIONS:?}"))
    };
    match tokio::time::timeout(ctx.timeout, run).await {
        Ok(o) => o,
        Err(_) => StepOutcome::failed(format!("{action}: did not finish within {:?}", ctx.timeout)),
    }
}
