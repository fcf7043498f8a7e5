//! The drcut region agent.
//!
//! # Layout
//!
//! - [`slo`]: SLO expressions, parsed at config load and evaluated against window values.
//! - [`checks`]: one probe per check type, each a real client doing one measurement.
pub mod checks;
pub mod slo;
