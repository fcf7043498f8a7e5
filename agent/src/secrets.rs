//! Secrets (database DSNs, API tokens): read from an environment variable or a file, held in a
//! [`Secret`] whose `Debug` prints `***`, so a config dump or an error can never show one.

use std::fmt;
use std::path::Path;

/// A secret value. It has no `Display`, and `Debug` prints `***`: reading it takes a deliberate
/// [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that must send it (a connect call, a request header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Replaces every occurrence of the value in `text` by `***`: a defence for error texts of
    /// third-party parsers, which may quote their input.
    pub fn redact(&self, text: &str) -> String {
        if self.0.is_empty() { text.to_string() } else { text.replace(&self.0, "***") }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Reads a secret from the environment variable `var`. Unset and empty are both errors: an empty
/// token or DSN is always a deployment mistake. The error names the variable, never a value.
pub fn from_env(var: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, String> {
    match env(var) {
        Some(v) if !v.trim().is_empty() => Ok(Secret(v)),
        Some(_) => Err(format!("environment variable {var} is empty")),
        None => Err(format!("environment variable {var} is not set")),
    }
}

/// Reads a secret from a file, trimmed (files written by `echo` end in a newline). The error
/// names the file and the I/O problem, never the content.
pub fn from_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(Secret(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(***)");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(s.redact("bad dsn hunter2 here"), "bad dsn *** here");
    }

    #[test]
    fn env_errors_name_the_variable() {
        let env = |k: &str| match k {
            "SET" => Some("tok".to_string()),
            "EMPTY" => Some("  ".to_string()),
            _ => None,
        };
        assert_eq!(from_env("SET", &env).unwrap().expose(), "tok");
        assert!(from_env("EMPTY", &env).unwrap_err().contains("EMPTY is empty"));
        assert!(from_env("NOPE", &env).unwrap_err().contains("NOPE is not set"));
    }

    #[test]
    fn files_are_trimmed_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dsn");
        std::fs::write(&p, "host=127.0.0.1 password=s3cret\n").unwrap();
        assert_eq!(from_file(&p).unwrap().expose(), "host=127.0.0.1 password=s3cret");
        std::fs::write(&p, "\n").unwrap();
        assert!(from_file(&p).unwrap_err().contains("is empty"));
        let missing = dir.path().join("missing");
        let e = from_file(&missing).unwrap_err();
        assert!(e.contains("cannot read secret file") && e.contains("missing"), "{e}");
    }
}
