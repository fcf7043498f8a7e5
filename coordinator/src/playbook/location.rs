//! Where in the file a problem is: dotted field paths and the line/column of the node they name.

use super::PlaybookError;
use marked_yaml::spanned_serde::{Error as SerdeError, FromNodeError};
use marked_yaml::{LoadError, LoaderOptions, Marker, Node};
use std::fmt;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A dotted field path such as `spec.steps[3].with.database`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Path(Vec<Seg>);

impl Path {
    /// The path of a top-level key.
    pub(crate) fn root(key: &str) -> Path {
        Path(vec![Seg::Key(key.to_string())])
    }

    /// This path extended by a mapping key.
    pub(crate) fn key(&self, key: &str) -> Path {
        let mut p = self.clone();
        p.0.push(Seg::Key(key.to_string()));
        p
    }

    /// This path extended by a sequence index.
    pub(crate) fn idx(&self, i: usize) -> Path {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Builds located errors against one parsed document.
pub(crate) struct Ctx<'a> {
    pub(crate) file: &'a str,
    pub(crate) root: &'a Node,
}

impl Ctx<'_> {
    /// The node at `path`, or the deepest existing node on the way to it (a missing key is
    /// reported at the mapping that lacks it), plus the mapping key node of the last step if
    /// the path exists.
    fn walk(&self, path: &Path) -> (&Node, Option<Marker>) {
        let mut node = self.root;
        let mut key_mark = None;
        for seg in &path.0 {
            let next = match (seg, node) {
                (Seg::Key(k), Node::Mapping(m)) => m.iter().find(|(mk, _)| mk.as_str() == k).map(|(mk, v)| {
                    key_mark = mk.span().start().copied();
                    v
                }),
                (Seg::Index(i), Node::Sequence(s)) => {
                    key_mark = None;
                    s.get(*i)
                }
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => return (node, None),
            }
        }
        (node, key_mark)
    }

    /// The node at `path`, if the document has it.
    pub(crate) fn node(&self, path: &Path) -> Option<&Node> {
        let mut node = self.root;
        for seg in &path.0 {
            node = match (seg, node) {
                (Seg::Key(k), Node::Mapping(m)) => m.iter().find(|(mk, _)| mk.as_str() == k).map(|(_, v)| v)?,
                (Seg::Index(i), Node::Sequence(s)) => s.get(*i)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// An error about the value at `path`.
    pub(crate) fn at(&self, path: &Path, message: impl Into<String>) -> PlaybookError {
        let (node, _) = self.walk(path);
        self.error(path.to_string(), node.span().start().copied(), message.into())
    }

    /// An error about the key of the last step of `path` (an unknown or misspelt name).
    pub(crate) fn at_key(&self, path: &Path, message: impl Into<String>) -> PlaybookError {
        let (node, key) = self.walk(path);
        self.error(path.to_string(), key.or_else(|| node.span().start().copied()), message.into())
    }

    /// An error at an explicit position.
    pub(crate) fn error(&self, field: String, mark: Option<Marker>, message: String) -> PlaybookError {
        let (line, column) =
            mark.map(|m| self.first_key_of_mapping_at(m)).map(|m| (m.line(), m.column())).unwrap_or((0, 0));
        PlaybookError { file: self.file.to_string(), line, column, field, message }
    }

    /// Converts a serde error from deserializing the node at `base` into a located error whose
    /// field names the offending key (for missing and unknown keys too).
    pub(crate) fn serde_error(&self, base: &Path, e: FromNodeError) -> PlaybookError {
        let mut field = base.to_string();
        if let Some(rel) = e.path() {
            if !field.is_empty() && !rel.starts_with('[') {
                field.push('.');
            }
            field.push_str(rel);
        }
        let mark = e.start_mark();
        let scalar_at_mark = mark.and_then(|m| self.scalar_at(m));
        let message = match e.into_inner() {
            SerdeError::UnknownFieldError(name, expected, _) => {
                // serde-path usually ends at the unknown key already; the field is the key.
                if field != name && !field.ends_with(&format!(".{name}")) {
                    push_key(&mut field, &name);
                }
                format!("unknown field `{name}`; expected one of: {}", expected.join(", "))
            }
            SerdeError::Other(msg, _) => {
                if let Some(missing) = msg.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
                    push_key(&mut field, missing);
                    format!("missing (required field `{missing}`)")
                } else {
                    msg
                }
            }
            e @ (SerdeError::IntegerParseFailure(..)
            | SerdeError::FloatParseFailure(..)
            | SerdeError::NotBoolean(..)) => {
                if scalar_at_mark.as_deref().is_some_and(|s| s.contains("${")) {
                    "parameters (`${...}`) can only stand for text settings, not numbers or booleans".into()
                } else {
                    match e {
                        SerdeError::NotBoolean(_) => "expected true or false".into(),
                        other => format!("expected a number: {other}"),
                    }
                }
            }
        };
        self.error(field, mark, message)
    }

    /// yaml-rust2 marks a block mapping at the `:` after its first key, where a reader expects
    /// the key; so such a mark moves back to the key. A flow mapping's mark (its `{`) stays.
    fn first_key_of_mapping_at(&self, mark: Marker) -> Marker {
        fn find(n: &Node, mark: Marker) -> Option<Marker> {
            match n {
                Node::Scalar(_) => None,
                Node::Mapping(m) if m.span().start() == Some(&mark) => {
                    m.keys().next().and_then(|k| k.span().start().copied()).filter(|k| k.character() < mark.character())
                }
                Node::Mapping(m) => m.values().find_map(|v| find(v, mark)),
                Node::Sequence(s) => s.iter().find_map(|v| find(v, mark)),
            }
        }
        find(self.root, mark).unwrap_or(mark)
    }

    /// The text of the scalar starting at `mark`, if there is one (to explain type errors).
    fn scalar_at(&self, mark: Marker) -> Option<String> {
        fn find(n: &Node, mark: Marker) -> Option<String> {
            match n {
                Node::Scalar(s) => (s.span().start().copied() == Some(mark)).then(|| s.as_str().to_string()),
                Node::Mapping(m) => m.values().find_map(|v| find(v, mark)),
                Node::Sequence(s) => s.iter().find_map(|v| find(v, mark)),
            }
        }
        find(self.root, mark)
    }
}

fn push_key(field: &mut String, key: &str) {
    if !field.is_empty() {
        field.push('.');
    }
    field.push_str(key);
}

/// Reads a file for [`load`]: its name as shown in errors, and its text.
pub(crate) fn read(path: &std::path::Path) -> Result<(String, String), PlaybookError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((file, text)),
        Err(e) => Err(PlaybookError {
            file,
            line: 0,
            column: 0,
            field: "(file)".into(),
            message: format!("cannot read: {e}"),
        }),
    }
}

/// Loads a document (`what`: "a playbook", "a drill") into a tree whose every node keeps its
/// position. No anchors, aliases or tags; duplicate keys refused; quoted scalars never coerced.
pub(crate) fn load(file: &str, text: &str, what: &str) -> Result<Node, PlaybookError> {
    let options = LoaderOptions::default().error_on_duplicate_keys(true).prevent_coercion(true);
    marked_yaml::parse_yaml_with_options(0, text, options).map_err(|e| load_error(file, text, what, e))
}

fn load_error(file: &str, text: &str, what: &str, e: LoadError) -> PlaybookError {
    let (mark, message) = match e {
        LoadError::TopLevelMustBeMapping(m) | LoadError::TopLevelMustBeSequence(m) => {
            (m, format!("{what} is a YAML mapping (apiVersion, kind, metadata, spec)"))
        }
        LoadError::UnexpectedAnchor(m) => (m, "anchors and aliases are not supported: write each value out".into()),
        LoadError::MappingKeyMustBeScalar(m) => (m, "mapping keys must be plain names".into()),
        LoadError::UnexpectedTag(m) => (m, "YAML tags are not supported".into()),
        LoadError::ScanError(m, se) => {
            let mut message = se.info().to_string();
            // `{` and `}` end a plain scalar inside `{ }` or `[ ]`: the commonest cause there.
            let line = text.lines().nth(m.line().saturating_sub(1)).unwrap_or("");
            if message.contains("flow") && line.contains("${") {
                message.push_str(r#"; inside { } or [ ], quote parameter references: "${name}""#);
            }
            (m, message)
        }
        LoadError::DuplicateKey(d) => {
            let first = d.prev_key.span().start().map(|m| m.line()).unwrap_or(0);
            let at = d.key.span().start().copied().unwrap_or_else(|| Marker::new(0, 0, 0, 0));
            (at, format!("duplicate key `{}` (first at line {first})", d.key.as_str()))
        }
    };
    PlaybookError { file: file.into(), line: mark.line(), column: mark.column(), field: "(yaml)".into(), message }
}
