//! STUB (replaced by the drillspec branch).
use super::spec::Drill;
impl Drill {
    /// Stub.
    pub fn parse(file: &str, _text: &str) -> Result<Drill, String> {
        Err(format!("{file}: stub"))
    }
}
/// Stub.
pub fn check_refs(
    _d: &Drill,
    _r: &std::collections::BTreeSet<String>,
    _p: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    vec![]
}
/// Stub.
pub fn hash(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}
/// Stub.
pub fn plan_text(_d: &Drill) -> String {
    String::new()
}
