//! GameDay drills: drill files, their schedules, the drill engine and the reports.

pub mod spec;

pub use spec::*;
pub mod record;

pub use record::*;
pub mod canary;
mod parse;
pub mod report;
pub mod schedule;
pub mod engine;
pub mod observe;
pub mod ops;

pub use ops::*;
