//! STUB (replaced by the drillspec branch).
use super::spec::Schedule;
/// What the scheduler should do now.
pub enum Due {
    /// Nothing.
    Nothing,
    /// Fire.
    Fire {
        /// Occurrence.
        occurrence_ms: i64,
        /// Late.
        late: bool,
    },
    /// Skip.
    Skip {
        /// Occurrence.
        occurrence_ms: i64,
        /// Why.
        reason: String,
    },
}
/// Stub.
pub fn due(_s: &Schedule, _applied_ms: i64, _last: Option<i64>, _now: i64) -> Due {
    Due::Nothing
}
/// Stub.
pub struct Fire {
    /// UTC.
    pub at_ms: i64,
    /// Local.
    pub local: String,
    /// UTC text.
    pub utc: String,
    /// Blackout.
    pub blackout: bool,
}
/// Stub.
pub fn next_fires(_s: &Schedule, _after: i64, _n: usize) -> Vec<Fire> {
    vec![]
}
