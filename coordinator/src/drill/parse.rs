//! STUB (replaced by the drillspec branch).
use super::spec::Drill;
impl Drill {
    /// Stub.
    pub fn parse(file: &str, _text: &str) -> Result<Drill, String> {
        Err(format!("{file}: stub"))
    }
}
