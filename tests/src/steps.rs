//! In-process step execution for the executor tests (`drcut_agent::steps::execute`), with the
//! check every such test makes: nothing a step reports shows a DSN or its password.

use std::time::Duration;

use anyhow::{Result, ensure};
use drcut_agent::config::Resources;
use drcut_agent::steps::{self, StepContext, StepOutcome};
use serde_json::Value;

/// Runs one step against `res` and fails if its detail, data or measurements show `secret` or
/// any other DSN text.
pub async fn run_step(
    res: &Resources,
    action: &str,
    params: Value,
    timeout: Duration,
    secret: &str,
) -> Result<StepOutcome> {
    let ctx = StepContext { resources: res, timeout };
    let o = steps::execute(action, &params, &ctx).await;
    tracing::info!(action, %params, ok = o.ok, detail = %o.detail, measurements = ?o.measurements, data = %o.data, "step");
    let all = format!("{} {} {:?}", o.detail, o.data, o.measurements);
    for leak in [secret, "password", "host=", "port="] {
        ensure!(!all.contains(leak), "{action} reported DSN text {leak:?}: {all}");
    }
    Ok(o)
}
