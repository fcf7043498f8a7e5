//! `${name}` parameter references: found at parse time (so an undefined name is refused with its
//! position before anyone runs the playbook), substituted at resolve time.

use std::collections::BTreeMap;

/// Whether `s` is a valid parameter name: a lowercase letter, then up to 62 of a-z, 0-9, `_`.
pub(crate) fn is_param_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && s.len() <= 63
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The parameter names `s` refers to, in order; `Err` for a malformed reference. There is no
/// escape: `${` always starts a reference, so a typo cannot silently stay literal text.
pub(crate) fn refs(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unterminated `${{` in {s:?}"));
        };
        let name = &after[..end];
        if !is_param_name(name) {
            return Err(format!(
                "`${{{name}}}` is not a parameter reference (a name of a-z, 0-9, '_', starting with a letter)"
            ));
        }
        out.push(name);
        rest = &after[end + 1..];
    }
    Ok(out)
}

/// `s` with every reference replaced by its value. References were checked at parse time and
/// every parameter has a value at resolve time; an absent one is left as written.
pub(crate) fn substitute(s: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find('}').and_then(|end| values.get(&after[..end]).map(|v| (end, v))) {
            Some((end, v)) => {
                out.push_str(v);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Substitutes in every string of a JSON value (object keys stay as written).
pub(crate) fn substitute_json(v: &mut serde_json::Value, values: &BTreeMap<String, String>) {
    match v {
        serde_json::Value::String(s) if s.contains("${") => *s = substitute(s, values),
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| substitute_json(x, values)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|x| substitute_json(x, values)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals() -> BTreeMap<String, String> {
        BTreeMap::from([("source".into(), "eu-west".into()), ("db".into(), "wallet-db".into())])
    }

    #[test]
    fn finds_and_substitutes_references() {
        assert_eq!(refs("${source}").unwrap(), vec!["source"]);
        assert_eq!(refs("a-${db}-${source}-b").unwrap(), vec!["db", "source"]);
        assert_eq!(refs("plain $text {x}").unwrap(), Vec::<&str>::new());
        assert_eq!(substitute("${source}", &vals()), "eu-west");
        assert_eq!(substitute("pg-${db}.${source}.internal", &vals()), "pg-wallet-db.eu-west.internal");
        assert_eq!(substitute("${nope} and $x", &vals()), "${nope} and $x");
    }

    #[test]
    fn malformed_references_are_refused() {
        assert!(refs("${source").unwrap_err().contains("unterminated"));
        assert!(refs("${Source}").unwrap_err().contains("not a parameter reference"));
        assert!(refs("${}").is_err());
        assert!(!is_param_name("1x") && !is_param_name("a-b") && is_param_name("max_lag2"));
    }

    #[test]
    fn substitutes_inside_json_strings_only() {
        let mut v = serde_json::json!({"database": "${db}", "ttl": 5, "to": ["${source}"], "${db}": "k"});
        substitute_json(&mut v, &vals());
        assert_eq!(v, serde_json::json!({"database": "wallet-db", "ttl": 5, "to": ["eu-west"], "${db}": "k"}));
    }
}
