//! GameDay drills: drill files, their schedules, the drill engine and the reports.

pub mod canary;
pub mod engine;
pub mod observe;
pub mod ops;
mod parse;
pub mod record;
pub mod report;
pub mod schedule;
pub mod spec;

pub use ops::*;
pub use parse::{check_refs, hash, plan_text};
pub use record::*;
pub use spec::*;
