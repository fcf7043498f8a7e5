//! The step vocabulary (DESIGN §4) and each action's `with:` settings, checked strictly: required
//! keys present, unknown keys refused, values of the right type and shape.
//!
//! Settings are deserialized into one private struct per action, then re-encoded as JSON for the
//! agent; so the JSON a run stores has real numbers and lists, and only keys this file knows.
//! Durations inside `with:` (`max_duration`) stay humantime strings such as `2m`.

use super::location::{Ctx, Path};
use super::{PlaybookError, is_name};
use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A word of the step vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Stop writes in a region (database read-only, sessions ended; optionally the app's flag).
    FreezeWrites,
    /// Wait until the standby has replayed the frozen LSN (or lag ≤ `max_lag_bytes`).
    WaitReplication,
    /// Make sure the old primary can never take writes again.
    Fence,
    /// Promote the standby and verify it accepts writes: the point of no return.
    PromoteDb,
    /// Point every application instance at the new primary (the database endpoint's DNS record).
    RepointClients,
    /// Re-open writes.
    UnfreezeWrites,
    /// Warm the region's caches until latency holds.
    WarmCaches,
    /// Move user traffic in phases through the GSLB.
    ShiftTraffic,
    /// Post-cutover checks of the user journeys.
    Smoke,
    /// Call out: a process or a webhook.
    Hook,
    /// Wait for a human.
    Approval,
    /// Turn a fenced old primary into a standby of the new one (pg_rewind, else pg_basebackup).
    RebuildStandby,
}

impl Action {
    /// Every action, in the planned order of a cutover.
    pub const ALL: [Action; 12] = [
        Action::FreezeWrites,
        Action::WaitReplication,
        Action::Fence,
        Action::PromoteDb,
        Action::RepointClients,
        Action::UnfreezeWrites,
        Action::WarmCaches,
        Action::ShiftTraffic,
        Action::Smoke,
        Action::Hook,
        Action::Approval,
        Action::RebuildStandby,
    ];

    /// The playbook spelling, e.g. `promote_db`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::FreezeWrites => "freeze_writes",
            Action::WaitReplication => "wait_replication",
            Action::Fence => "fence",
            Action::PromoteDb => "promote_db",
            Action::RepointClients => "repoint_clients",
            Action::UnfreezeWrites => "unfreeze_writes",
            Action::WarmCaches => "warm_caches",
            Action::ShiftTraffic => "shift_traffic",
            Action::Smoke => "smoke",
            Action::Hook => "hook",
            Action::Approval => "approval",
            Action::RebuildStandby => "rebuild_standby",
        }
    }

    /// The action spelled `s`, if it is one.
    pub fn from_name(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Whether an agent executes it (every action but `approval`, which the coordinator holds).
    pub fn needs_region(self) -> bool {
        self != Action::Approval
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === settings, one struct per action ===

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Freeze {
    database: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    maintenance_url: Option<String>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct WaitReplication {
    database: String,
    /// 0: the standby must have replayed the frozen LSN exactly (RPO 0).
    #[serde(default)]
    max_lag_bytes: u64,
}

#[derive(Deserialize, Serialize, Default, PartialEq)]
#[serde(rename_all = "snake_case")]
enum FenceMode {
    /// Persistent `default_transaction_read_only`, writing sessions ended.
    #[default]
    ReadOnly,
    /// Read-only, then the server stopped.
    Stop,
    /// Restarted as a standby with no upstream: read-only until rebuilt.
    Recovery,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Fence {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<FenceMode>,
    /// STONITH: power or network fencing, run by an agent outside the lost region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hook: Option<Hook>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Rebuild {
    database: String,
    /// The new primary: another postgres resource of the same agent.
    upstream: String,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Promote {
    database: String,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Repoint {
    dns: String,
    zone: String,
    name: String,
    answers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl: Option<u32>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Verify {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    queries: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tolerance: Option<f64>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Shift {
    dns: String,
    zone: String,
    name: String,
    from: Vec<String>,
    to: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ttl: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    verify: Option<Verify>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Warm {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    concurrency: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until_p95_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_duration: Option<String>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Smoke {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    paths: Option<Vec<String>>,
    /// `200` or `[200, 204]` in the file; always a list for the agent.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "one_or_many")]
    expect_status: Option<Vec<u16>>,
}

/// One HTTP status or a list of them. A visitor rather than an untagged enum: the YAML reader
/// hands scalars over as text until asked for a type, which an untagged enum never does.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u16>>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<Vec<u16>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an HTTP status or a list of them")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            u16::try_from(v).map(|s| Some(vec![s])).map_err(|_| E::custom(format!("{v} is not an HTTP status")))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u16::try_from(v).map(|s| Some(vec![s])).map_err(|_| E::custom(format!("{v} is not an HTTP status")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            v.trim()
                .parse::<u16>()
                .map(|s| Some(vec![s]))
                .map_err(|_| E::custom(format!("{v:?} is not an HTTP status")))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<u16>()? {
                out.push(s);
            }
            Ok(Some(out))
        }
    }
    d.deserialize_any(V)
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Hook {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exec: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    webhook: Option<String>,
    /// JSON posted to the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<serde_json::Value>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Approval {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

// === checking ===

/// Checks the `with:` mapping at `base` for `action` and returns it as JSON (with `${x}` still
/// unsubstituted). `owner` is the step or compensation mapping, where a missing `with:` is
/// reported.
pub(crate) fn check_with(
    ctx: &Ctx<'_>,
    action: Action,
    base: &Path,
    owner: &Node,
) -> Result<serde_json::Value, PlaybookError> {
    let empty;
    let node = match ctx.node(base) {
        Some(n @ Node::Mapping(_)) => n,
        // `with:` with no value is an empty mapping.
        Some(n @ Node::Scalar(s)) if s.as_str().is_empty() => n,
        Some(_) => return Err(ctx.at(base, format!("expected a mapping of {action} settings"))),
        None => {
            empty = Node::Mapping(MarkedMappingNode::new_empty(*owner.span()));
            &empty
        }
    };
    let c = Check { ctx, base };
    let value = match action {
        Action::FreezeWrites | Action::UnfreezeWrites => {
            let s: Freeze = c.typed(node)?;
            c.resource("database", &s.database)?;
            if let Some(u) = &s.maintenance_url {
                c.url(&base.key("maintenance_url"), u)?;
            }
            c.json(&s)?
        }
        Action::WaitReplication => {
            let s: WaitReplication = c.typed(node)?;
            c.resource("database", &s.database)?;
            c.json(&s)?
        }
        Action::Fence => {
            let s: Fence = c.typed(node)?;
            match (&s.database, &s.hook) {
                (Some(_), Some(_)) => {
                    return Err(ctx.at_key(&base.key("hook"), "give database (fence it) or hook (STONITH), not both"));
                }
                (None, None) => {
                    return Err(ctx.at(base, "missing: give database (the old primary) or hook (STONITH)"));
                }
                (Some(d), None) => c.resource("database", d)?,
                (None, Some(h)) => {
                    if s.mode.is_some() {
                        return Err(ctx.at(&base.key("mode"), "mode applies to a database fence, not a hook"));
                    }
                    c.hook(&base.key("hook"), h)?;
                }
            }
            c.json(&s)?
        }
        Action::RebuildStandby => {
            let s: Rebuild = c.typed(node)?;
            c.resource("database", &s.database)?;
            c.resource("upstream", &s.upstream)?;
            if s.database == s.upstream {
                return Err(ctx.at(&base.key("upstream"), "the upstream is the new primary: another database"));
            }
            c.json(&s)?
        }
        Action::PromoteDb => {
            let s: Promote = c.typed(node)?;
            c.resource("database", &s.database)?;
            c.json(&s)?
        }
        Action::RepointClients => {
            let s: Repoint = c.typed(node)?;
            c.resource("dns", &s.dns)?;
            c.dns_name(&s.zone, &s.name)?;
            c.addresses("answers", &s.answers)?;
            c.json(&s)?
        }
        Action::ShiftTraffic => {
            let s: Shift = c.typed(node)?;
            c.resource("dns", &s.dns)?;
            c.dns_name(&s.zone, &s.name)?;
            c.addresses("from", &s.from)?;
            c.addresses("to", &s.to)?;
            if let Some(v) = &s.verify {
                if v.queries == Some(0) {
                    return Err(ctx.at(&base.key("verify").key("queries"), "must be ≥ 1"));
                }
                if v.tolerance.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
                    return Err(ctx.at(&base.key("verify").key("tolerance"), "must be a ratio between 0 and 1"));
                }
            }
            c.json(&s)?
        }
        Action::WarmCaches => {
            let s: Warm = c.typed(node)?;
            c.http_targets(&s.urls, &s.http, &s.paths)?;
            if s.concurrency == Some(0) {
                return Err(ctx.at(&base.key("concurrency"), "must be ≥ 1"));
            }
            if let Some(d) = &s.max_duration {
                humantime::parse_duration(d)
                    .map_err(|e| ctx.at(&base.key("max_duration"), format!("{d:?} is not a duration: {e}")))?;
            }
            c.json(&s)?
        }
        Action::Smoke => {
            let s: Smoke = c.typed(node)?;
            c.http_targets(&s.urls, &s.http, &s.paths)?;
            if s.expect_status.as_ref().is_some_and(|l| l.is_empty() || l.iter().any(|st| !(100..=599).contains(st))) {
                return Err(
                    ctx.at(&base.key("expect_status"), "must be an HTTP status (100-599) or a non-empty list of them")
                );
            }
            c.json(&s)?
        }
        Action::Hook => {
            let mut s: Hook = c.typed(node)?;
            c.hook(base, &s)?;
            if s.body.is_some()
                && let Some(b) = ctx.node(&base.key("body"))
            {
                s.body = Some(yaml_to_json(b));
            }
            c.json(&s)?
        }
        Action::Approval => {
            let s: Approval = c.typed(node)?;
            c.json(&s)?
        }
    };
    Ok(value)
}

/// A free-form YAML value (a webhook body) as JSON: plain scalars that read as numbers,
/// booleans or null become those; quoted ones stay strings, as the author wrote them.
fn yaml_to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match node {
        Node::Scalar(s) => {
            let t = s.as_str();
            if !s.may_coerce() {
                return Value::String(t.to_string());
            }
            match t {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                "null" | "~" => Value::Null,
                _ => t
                    .parse::<i64>()
                    .map(Value::from)
                    .ok()
                    .or_else(|| t.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number))
                    .unwrap_or_else(|| Value::String(t.to_string())),
            }
        }
        Node::Mapping(m) => Value::Object(m.iter().map(|(k, v)| (k.as_str().to_string(), yaml_to_json(v))).collect()),
        Node::Sequence(q) => Value::Array(q.iter().map(yaml_to_json).collect()),
    }
}

struct Check<'a, 'b> {
    ctx: &'a Ctx<'b>,
    base: &'a Path,
}

impl Check<'_, '_> {
    fn typed<T: DeserializeOwned>(&self, node: &Node) -> Result<T, PlaybookError> {
        marked_yaml::from_node(node).map_err(|e| self.ctx.serde_error(self.base, e))
    }

    fn json<T: Serialize>(&self, s: &T) -> Result<serde_json::Value, PlaybookError> {
        serde_json::to_value(s).map_err(|e| self.ctx.at(self.base, format!("cannot encode settings: {e}")))
    }

    /// A resource name the agent resolves (a database, a DNS server, an HTTP service).
    fn resource(&self, key: &str, v: &str) -> Result<(), PlaybookError> {
        if v.contains("${") || is_name(v) {
            Ok(())
        } else {
            Err(self.ctx.at(
                &self.base.key(key),
                format!("{v:?} is not a resource name (1-63 of a-z, 0-9, '-'; the agent's config maps it)"),
            ))
        }
    }

    /// A fully qualified record name inside a fully qualified zone.
    fn dns_name(&self, zone: &str, name: &str) -> Result<(), PlaybookError> {
        for (key, v) in [("zone", zone), ("name", name)] {
            if !v.contains("${") && (!v.ends_with('.') || v.len() < 2 || v.contains(' ')) {
                return Err(self
                    .ctx
                    .at(&self.base.key(key), format!("{v:?} is not a fully qualified name (end it with '.')")));
            }
        }
        if !zone.contains("${") && !name.contains("${") && name != zone && !name.ends_with(&format!(".{zone}")) {
            return Err(self.ctx.at(&self.base.key("name"), format!("{name:?} is not inside zone {zone:?}")));
        }
        Ok(())
    }

    /// A non-empty list of IP addresses.
    fn addresses(&self, key: &str, list: &[String]) -> Result<(), PlaybookError> {
        let path = self.base.key(key);
        if list.is_empty() {
            return Err(self.ctx.at(&path, "must list at least one address"));
        }
        for (i, a) in list.iter().enumerate() {
            if !a.contains("${") && a.parse::<std::net::IpAddr>().is_err() {
                return Err(self.ctx.at(&path.idx(i), format!("{a:?} is not an IP address")));
            }
        }
        Ok(())
    }

    /// Exactly one of `exec` (a program and its arguments) or `webhook` (a URL).
    fn hook(&self, base: &Path, s: &Hook) -> Result<(), PlaybookError> {
        match (&s.exec, &s.webhook) {
            (Some(_), Some(_)) => Err(self.ctx.at_key(&base.key("webhook"), "give exec or webhook, not both")),
            (None, None) => Err(self.ctx.at(base, "missing: give exec (a command) or webhook (a URL)")),
            (Some(e), None) if e.is_empty() || e[0].is_empty() => {
                Err(self.ctx.at(&base.key("exec"), "must name a program to run"))
            }
            (Some(_), None) if s.body.is_some() => {
                Err(self.ctx.at_key(&base.key("body"), "body goes with webhook, not exec"))
            }
            (None, Some(u)) => self.url(&base.key("webhook"), u),
            _ => Ok(()),
        }
    }

    fn url(&self, path: &Path, u: &str) -> Result<(), PlaybookError> {
        if u.contains("${") || u.starts_with("http://") || u.starts_with("https://") {
            Ok(())
        } else {
            Err(self.ctx.at(path, format!("{u:?} is not an http:// or https:// URL")))
        }
    }

    /// `urls: [..]`, or `http: <service>` with `paths: [..]`.
    fn http_targets(
        &self,
        urls: &Option<Vec<String>>,
        http: &Option<String>,
        paths: &Option<Vec<String>>,
    ) -> Result<(), PlaybookError> {
        let b = self.base;
        match (urls, http, paths) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                Err(self.ctx.at_key(&b.key("urls"), "give urls, or http with paths, not both"))
            }
            (Some(urls), None, None) => {
                if urls.is_empty() {
                    return Err(self.ctx.at(&b.key("urls"), "must list at least one URL"));
                }
                urls.iter().enumerate().try_for_each(|(i, u)| self.url(&b.key("urls").idx(i), u))
            }
            (None, Some(h), Some(paths)) => {
                self.resource("http", h)?;
                if paths.is_empty() {
                    return Err(self.ctx.at(&b.key("paths"), "must list at least one path"));
                }
                match paths.iter().position(|p| !p.starts_with('/')) {
                    Some(i) => Err(self.ctx.at(&b.key("paths").idx(i), format!("{:?} must start with '/'", paths[i]))),
                    None => Ok(()),
                }
            }
            (None, Some(_), None) => {
                Err(self.ctx.at(&b.key("paths"), "missing: the paths to request on the http service"))
            }
            (None, None, Some(_)) => Err(self.ctx.at(&b.key("http"), "missing: the http service the paths belong to")),
            (None, None, None) => Err(self.ctx.at(b, "missing: give urls, or http with paths")),
        }
    }
}
