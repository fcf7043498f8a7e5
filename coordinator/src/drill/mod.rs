//! GameDay drills: drill files, their schedules, the drill engine and the reports.

pub mod spec;

pub use spec::*;
pub mod record;

pub use record::*;
pub mod canary;
mod parse;
pub use parse::{check_refs, hash, plan_text};
pub mod engine;
pub mod observe;
pub mod ops;
pub mod report;
pub mod schedule;

pub use ops::*;
