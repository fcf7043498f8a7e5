//! STUB (replaced by the report branch).
use super::record::{CheckLine, DrillRun};
use crate::command::RunRecord;
/// Inputs.
pub struct ReportInputs<'a> {
    /// Run.
    pub run: &'a DrillRun,
    /// Response.
    pub response: Option<&'a RunRecord>,
    /// Restore.
    pub restore: Option<&'a RunRecord>,
    /// Previous.
    pub previous: &'a [DrillRun],
}
/// Stub.
pub fn grade(_run: &DrillRun, _response: Option<&RunRecord>) -> Vec<CheckLine> {
    vec![]
}
/// Stub.
pub fn build(_i: &ReportInputs<'_>) -> serde_json::Value {
    serde_json::json!({})
}
/// Stub.
pub fn markdown(_r: &serde_json::Value) -> String {
    String::new()
}
