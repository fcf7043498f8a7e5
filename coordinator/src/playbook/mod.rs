//! Cutover playbooks (`apiVersion: drcut/v1`, `kind: Playbook`): parsing with strict
//! validation, parameter substitution, the content hash, and a human-readable plan. Pure: the
//! only I/O is [`Playbook::load`] reading the file.
//!
//! The flow: [`Playbook::parse`] refuses anything malformed or impossible (unknown keys, unknown
//! actions, a promotion before the freeze, ...) with file, line, column and a dotted field path;
//! [`Playbook::resolve`] applies parameters and defaults and yields the [`ResolvedPlaybook`] a
//! run pins; [`validate_regions`] checks its regions against the known set; [`plan_text`] shows
//! an operator what will happen. The format is documented in `playbooks/README.md`.
//!
//! # Positions
//!
//! A refusal must point at the offending node, including for semantic errors found after
//! deserialization (a duplicate step id, an order rule). `serde_yaml_ng` reports positions only
//! for its own errors, so playbooks are read with `marked-yaml` (0.8, feature `serde-path`; pure
//! Rust on `yaml-rust2`, no C): it loads a tree whose every node, mapping keys included, carries
//! its line and column, and deserializes that tree through serde (`deny_unknown_fields`
//! included), reporting the failing path and position. Semantic checks look their node up by
//! path in the same tree (module `location`). Raw `saphyr`/`yaml-rust2` events would have meant
//! rebuilding that tree and its serde glue here; `serde-saphyr` was not evaluated in depth.
//!
//! Its restrictions suit playbooks: no anchors, aliases or tags (each value is written out where
//! it applies); duplicate keys are refused rather than last-wins; quoted scalars are never
//! coerced, so `ttl: "5"` is refused rather than read as a number. As in any YAML, `${x}` must be
//! quoted inside a flow mapping or list (`{ region: "${x}" }`); the syntax error says so.

mod action;
pub(crate) mod location;
mod parse;
mod plan;
mod resolved;
mod subst;
#[cfg(test)]
mod tests;

pub use action::Action;
pub use plan::plan_text;
pub use resolved::{
    Automatic, Compensation, Failover, Gate, LossBudget, OnFailure, Preconditions, Require, ResolvedPlaybook,
    ResolvedStep, Targets, When,
};

use location::{Ctx, Path};
use marked_yaml::Node;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The `apiVersion` this coordinator reads.
pub const API_VERSION: &str = "drcut/v1";

/// A refused playbook: where, which field, and what is wrong. Never worth retrying unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {field}: {message}")]
pub struct PlaybookError {
    /// The playbook file as named by the caller.
    pub file: String,
    /// 1-based line of the offending node (0 when the problem has no position, e.g. unreadable).
    pub line: usize,
    /// 1-based column of the offending node (0 when it has no position).
    pub column: usize,
    /// Dotted path such as `spec.steps[3].with.database`; `(yaml)` or `(file)` for the file itself.
    pub field: String,
    /// What is wrong, and where it helps, what would be right.
    pub message: String,
}

/// What a parameter stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// A region name: must be a valid name, and [`validate_regions`] checks it is known.
    Region,
    /// Free text (a resource name, a URL part).
    String,
}

/// A declared parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameter {
    /// What it stands for.
    pub kind: ParamKind,
    /// Used when a run does not give a value.
    pub default: Option<String>,
    /// For operators.
    pub description: String,
}

/// A parsed and validated playbook, parameters not yet applied.
#[derive(Debug, Clone)]
pub struct Playbook {
    /// The file it was read from (as given, for messages).
    pub file: String,
    /// SHA-256 (hex) of the file text: the version a run pins.
    pub hash: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.description`.
    pub description: String,
    /// `spec.service`: one run per service at a time.
    pub service: String,
    /// `spec.parameters` by name.
    pub parameters: BTreeMap<String, Parameter>,
    /// Steps with `${x}` still in place and defaults applied; `params` empty.
    template: ResolvedPlaybook,
    /// The document tree: positions for errors found after parsing (resolve, regions).
    root: Node,
}

impl Playbook {
    /// Parses and validates playbook text; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Playbook, PlaybookError> {
        parse::parse(file, text)
    }

    /// Reads and validates a playbook file.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Playbook, PlaybookError> {
        let (file, text) = location::read(path.as_ref())?;
        Playbook::parse(&file, &text)
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx { file: &self.file, root: &self.root }
    }

    /// Applies `params` (refusing unknown ones and missing ones without a default), substitutes
    /// every `${x}`, and checks that each region field is a valid region name.
    pub fn resolve(&self, params: &BTreeMap<String, String>) -> Result<ResolvedPlaybook, PlaybookError> {
        let ctx = self.ctx();
        let pp = Path::root("spec").key("parameters");
        if let Some(unknown) = params.keys().find(|k| !self.parameters.contains_key(*k)) {
            let takes = if self.parameters.is_empty() {
                "none".to_string()
            } else {
                self.parameters.keys().cloned().collect::<Vec<_>>().join(", ")
            };
            return Err(ctx.at_key(&pp, format!("unknown parameter `{unknown}` given; this playbook takes: {takes}")));
        }
        let mut values = BTreeMap::new();
        for (name, p) in &self.parameters {
            let Some(v) = params.get(name).or(p.default.as_ref()) else {
                return Err(ctx.at_key(&pp.key(name), format!("parameter `{name}` has no default and was not given")));
            };
            if v.is_empty() {
                return Err(ctx.at_key(&pp.key(name), format!("parameter `{name}` is empty")));
            }
            if p.kind == ParamKind::Region && !is_name(v) {
                return Err(ctx.at_key(
                    &pp.key(name),
                    format!("{v:?} given for region parameter `{name}` is not a region name (1-63 of a-z, 0-9, '-')"),
                ));
            }
            values.insert(name.clone(), v.clone());
        }

        let mut r = self.template.clone();
        let sub = |s: &mut String| *s = subst::substitute(s, &values);
        if let Some(t) = &mut r.preconditions.target_region {
            sub(t);
        }
        if let Some(f) = &mut r.failover {
            sub(&mut f.source);
            sub(&mut f.target);
        }
        for s in &mut r.steps {
            if let Some(region) = &mut s.region {
                sub(region);
            }
            subst::substitute_json(&mut s.with, &values);
            if let Some(c) = &mut s.compensate {
                sub(&mut c.region);
                subst::substitute_json(&mut c.with, &values);
            }
            if let Some(g) = &mut s.gate {
                sub(&mut g.region);
            }
        }
        r.params = values;
        // A `kind: string` parameter may have put anything into a region field.
        for ((path, written), (_, value)) in region_sites(&self.template).iter().zip(region_sites(&r)) {
            if !is_name(value) {
                return Err(ctx.at(path, format!("{written:?} resolves to {value:?}, which is not a region name")));
            }
        }
        Ok(r)
    }
}

/// Resolves `playbook` with `params` and refuses any region (after substitution) that is not in
/// `known_regions`, at the position of the field that named it.
pub fn validate_regions(
    playbook: &Playbook,
    params: &BTreeMap<String, String>,
    known_regions: &[String],
) -> Result<ResolvedPlaybook, PlaybookError> {
    let r = playbook.resolve(params)?;
    let ctx = playbook.ctx();
    let known = || {
        if known_regions.is_empty() { "none registered".to_string() } else { known_regions.join(", ") }
    };
    for ((path, written), (_, value)) in region_sites(&playbook.template).iter().zip(region_sites(&r)) {
        if !known_regions.iter().any(|k| k == value) {
            let from = if *written != value { format!(" (from {written})") } else { String::new() };
            return Err(ctx.at(path, format!("unknown region {value:?}{from}; known regions: {}", known())));
        }
    }
    // Region parameters no field uses are still a typo worth catching.
    for (name, p) in &playbook.parameters {
        let v = &r.params[name];
        if p.kind == ParamKind::Region && !known_regions.contains(v) {
            let path = Path::root("spec").key("parameters").key(name);
            return Err(ctx.at_key(&path, format!("unknown region {v:?} for `{name}`; known regions: {}", known())));
        }
    }
    Ok(r)
}

/// Every field that names a region, with its path, in document order.
fn region_sites(r: &ResolvedPlaybook) -> Vec<(Path, &str)> {
    let mut out = Vec::new();
    if let Some(t) = &r.preconditions.target_region {
        out.push((Path::root("spec").key("preconditions").key("target_region"), t.as_str()));
    }
    if let Some(f) = &r.failover {
        out.push((Path::root("spec").key("failover").key("source"), f.source.as_str()));
        out.push((Path::root("spec").key("failover").key("target"), f.target.as_str()));
    }
    for (i, s) in r.steps.iter().enumerate() {
        let p = Path::root("spec").key("steps").idx(i);
        if let Some(region) = &s.region {
            out.push((p.key("region"), region.as_str()));
        }
        if let Some(c) = &s.compensate {
            out.push((p.key("compensate").key("region"), c.region.as_str()));
        }
        if let Some(g) = &s.gate {
            out.push((p.key("gate").key("region"), g.region.as_str()));
        }
    }
    out
}

/// Whether `v` is a valid name (DNS label: 1-63 of a-z, 0-9, '-'; no leading or trailing '-'),
/// the rule for playbook, service, step, region and resource names.
pub(crate) fn is_name(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-')
}
