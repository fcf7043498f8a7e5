//! GameDay drills: drill files, their schedules, the drill engine and the reports.

pub mod spec;

pub use spec::*;
pub mod record;

pub use record::*;
pub mod report;
