//! GameDay drills: drill files, their schedules, the drill engine and the reports.

pub mod canary;
pub mod engine;
pub mod observe;
pub mod ops;
mod parse;
mod plan;
pub mod record;
pub mod report;
pub mod schedule;
pub mod spec;
#[cfg(test)]
mod tests;

pub use ops::*;
pub use parse::{DrillError, check_refs, hash};
pub use plan::{plan_text, plan_text_at};
pub use record::*;
pub use schedule::{Due, Fire};
pub use spec::*;
