//! GameDay drills: drill files, their schedules, the drill engine and the reports.

pub mod spec;

pub use spec::*;
pub mod record;

pub use record::*;
mod parse;
mod plan;
pub mod schedule;
#[cfg(test)]
mod tests;

pub use parse::{DrillError, check_refs, hash};
pub use plan::{plan_text, plan_text_at};
pub use schedule::{Due, Fire};
