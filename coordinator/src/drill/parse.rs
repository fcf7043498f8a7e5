//! From text to a validated [`Drill`]: the document's serde shape, then every rule serde cannot
//! express (names, per-type fault settings, exactly one response, what needs a canary, the
//! schedule). Read like playbooks (see `playbook`'s module doc, "Positions"): `marked-yaml` keeps
//! a line and column on every node, so a refusal names `file:line:column: field: message`.

use super::schedule::{self, ScheduleError};
use super::spec::{
    Canary, DnsAnswer, Drill, Expectations, Fault, FaultKind, Guardrail, IntegrityCheck, MissedPolicy, Preflight,
    Probe, ProxyMode, ReportSettings, Require, Response, ResponseStart, Restore, Schedule,
};
use crate::playbook::location::{Ctx, Path};
use crate::playbook::{API_VERSION, PlaybookError};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// A refused drill file: where, which field, and what is wrong. The same located error as a
/// playbook's (both are read by the same loader and location helpers).
pub type DrillError = PlaybookError;

impl Drill {
    /// Parses and validates drill text; `file` names it in errors. Returns the drill and the
    /// SHA-256 (hex) of the exact text, the version a run pins.
    pub fn parse(file: &str, text: &str) -> Result<(Drill, String), DrillError> {
        parse(file, text)
    }

    /// Reads and validates a drill file (see [`Drill::parse`]).
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<(Drill, String), DrillError> {
        let (file, text) = crate::playbook::location::read(path.as_ref())?;
        Drill::parse(&file, &text)
    }
}

/// SHA-256 (hex) of a drill file's text.
pub fn hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

// Defaults where the file says nothing.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(3600);
const DEFAULT_LOST_COORDINATOR: Duration = Duration::from_secs(30);
const DEFAULT_START_TOLERANCE: Duration = Duration::from_secs(15 * 60);
const DEFAULT_LATE_LIMIT: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_CANARY_TABLE: &str = "drcut_canary";
const DEFAULT_CANARY_INTERVAL: Duration = Duration::from_millis(100);
const DEFAULT_RESTORE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const DEFAULT_TREND_RUNS: usize = 4;

// === the document's shape ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoc {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    metadata: RawMetadata,
    spec: RawSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetadata {
    name: String,
    owner: String,
    // Accepted for readers of the file; the parsed drill does not carry it.
    #[serde(default, rename = "description")]
    _description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    service: String,
    hypothesis: String,
    target: RawTarget,
    #[serde(default)]
    schedule: Option<RawSchedule>,
    #[serde(default)]
    deadline: Option<String>,
    #[serde(default)]
    dead_man: RawDeadMan,
    faults: Vec<RawFault>,
    #[serde(default)]
    steady_state: Vec<RawProbe>,
    #[serde(default)]
    preflight: RawPreflight,
    #[serde(default)]
    guardrails: Vec<RawGuardrail>,
    response: RawResponse,
    #[serde(default)]
    expect: RawExpect,
    #[serde(default)]
    canary: Option<RawCanary>,
    #[serde(default)]
    restore: RawRestore,
    #[serde(default)]
    report: RawReport,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    region: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    rrule: String,
    timezone: String,
    #[serde(default)]
    start: Option<String>,
    #[serde(default)]
    blackout: Vec<String>,
    #[serde(default)]
    start_tolerance: Option<String>,
    #[serde(default)]
    missed: Option<MissedPolicy>,
    #[serde(default)]
    late_limit: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDeadMan {
    #[serde(default)]
    lost_coordinator: Option<String>,
}

/// Every fault type's settings side by side (the file flattens them next to `type`); which of
/// them a type takes is checked per type, so a misplaced one is named rather than ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    id: String,
    region: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    duration: Option<String>,
    #[serde(default)]
    database: Option<String>,
    #[serde(default)]
    process: Option<String>,
    #[serde(default)]
    proxy: Option<String>,
    #[serde(default)]
    mode: Option<ProxyMode>,
    #[serde(default)]
    latency: Option<String>,
    #[serde(default)]
    jitter: Option<String>,
    #[serde(default)]
    bytes_per_second: Option<u64>,
    #[serde(default)]
    failure_rate: Option<f64>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    answer: Option<DnsAnswer>,
    #[serde(default)]
    inject: Option<Vec<String>>,
    #[serde(default)]
    revert: Option<Vec<String>>,
}

impl RawFault {
    /// The per-type settings present, by key, in the order of the file format.
    fn settings(&self) -> Vec<&'static str> {
        let present = [
            ("database", self.database.is_some()),
            ("process", self.process.is_some()),
            ("proxy", self.proxy.is_some()),
            ("mode", self.mode.is_some()),
            ("latency", self.latency.is_some()),
            ("jitter", self.jitter.is_some()),
            ("bytes_per_second", self.bytes_per_second.is_some()),
            ("failure_rate", self.failure_rate.is_some()),
            ("name", self.name.is_some()),
            ("answer", self.answer.is_some()),
            ("inject", self.inject.is_some()),
            ("revert", self.revert.is_some()),
        ];
        present.iter().filter(|(_, p)| *p).map(|(k, _)| *k).collect()
    }
}

/// The fault types and the settings each takes.
const FAULT_TYPES: &[(&str, &[&str])] = &[
    ("postgres_stop", &["database"]),
    ("process_kill", &["process"]),
    ("proxy", &["proxy", "mode", "latency", "jitter", "bytes_per_second", "failure_rate"]),
    ("dns", &["proxy", "name", "answer"]),
    ("exec", &["inject", "revert"]),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    region: String,
    #[serde(default)]
    check: Option<String>,
    #[serde(default)]
    vantage: Option<String>,
    #[serde(default)]
    require: Option<Require>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPreflight {
    #[serde(default)]
    max_lag: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuardrail {
    name: String,
    region: String,
    #[serde(default)]
    check: Option<String>,
    #[serde(default)]
    vantage: Option<String>,
    #[serde(default)]
    require: Option<Require>,
    #[serde(default, rename = "for")]
    for_: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResponse {
    #[serde(default)]
    playbook: Option<String>,
    #[serde(default)]
    params: Option<BTreeMap<String, String>>,
    #[serde(default)]
    unplanned: Option<bool>,
    #[serde(default)]
    start: Option<ResponseStart>,
    #[serde(default)]
    automatic_failover: Option<bool>,
    #[serde(default)]
    observe: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    #[serde(default)]
    detection: Option<String>,
    #[serde(default)]
    rto: Option<String>,
    #[serde(default)]
    rpo: Option<u64>,
    #[serde(default)]
    failover: Option<bool>,
    #[serde(default)]
    integrity: Vec<RawIntegrity>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntegrity {
    name: String,
    query: String,
    expect: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCanary {
    dsn: String,
    #[serde(default)]
    password_env: Option<String>,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    interval: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRestore {
    #[serde(default)]
    playbook: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, String>,
    #[serde(default)]
    timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReport {
    #[serde(default)]
    trend: Option<usize>,
}

// === parsing ===

/// Located errors against the drill's document tree.
struct Here<'a>(Ctx<'a>);

impl Here<'_> {
    fn at(&self, path: &Path, message: impl Into<String>) -> DrillError {
        self.0.at(path, message)
    }

    fn at_key(&self, path: &Path, message: impl Into<String>) -> DrillError {
        self.0.at_key(path, message)
    }

    /// A name field (drill, service, region, resource, check): the rule of `state::validate_name`.
    fn name(&self, path: &Path, v: &str) -> Result<(), DrillError> {
        let field = path.to_string();
        crate::state::validate_name(&field, v).map_err(|m| {
            let m = m.strip_prefix(&format!("{field}: ")).map(str::to_string).unwrap_or(m);
            self.at(path, m)
        })
    }

    fn opt_name(&self, path: &Path, v: &Option<String>) -> Result<(), DrillError> {
        v.as_deref().map_or(Ok(()), |v| self.name(path, v))
    }

    fn duration(&self, path: &Path, v: &str) -> Result<Duration, DrillError> {
        humantime::parse_duration(v)
            .map_err(|e| self.at(path, format!("{v:?} is not a duration such as 500ms, 30s or 15m: {e}")))
    }

    /// A duration that must be longer than 0, in ms (`default` when absent).
    fn positive_ms(&self, path: &Path, v: &Option<String>, default: Duration) -> Result<u64, DrillError> {
        let d = match v {
            Some(v) => self.duration(path, v)?,
            None => default,
        };
        if d.is_zero() {
            return Err(self.at(path, "must be longer than 0"));
        }
        Ok(ms(d))
    }

    fn opt_ms(&self, path: &Path, v: &Option<String>) -> Result<Option<u64>, DrillError> {
        v.as_deref().map(|v| self.duration(path, v).map(ms)).transpose()
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// See [`Drill::parse`].
fn parse(file: &str, text: &str) -> Result<(Drill, String), DrillError> {
    let hash = hash(text);
    let root = crate::playbook::location::load(file, text, "a drill")?;
    let h = Here(Ctx { file, root: &root });
    let raw: RawDoc = marked_yaml::from_node(&root).map_err(|e| h.0.serde_error(&Path::default(), e))?;

    if raw.api_version != API_VERSION {
        return Err(h.at(
            &Path::root("apiVersion"),
            format!("{:?} is not supported; this coordinator reads {API_VERSION}", raw.api_version),
        ));
    }
    if raw.kind != "Drill" {
        return Err(h.at(&Path::root("kind"), format!("{:?} is not a drill; expected Drill", raw.kind)));
    }
    let meta = Path::root("metadata");
    h.name(&meta.key("name"), &raw.metadata.name)?;
    if raw.metadata.owner.trim().is_empty() {
        return Err(h.at(&meta.key("owner"), "empty: name the team answerable for the drill"));
    }
    let spec = Path::root("spec");
    let s = raw.spec;
    h.name(&spec.key("service"), &s.service)?;
    if s.hypothesis.trim().is_empty() {
        return Err(h.at(&spec.key("hypothesis"), "empty: say what the team believes will happen"));
    }
    h.name(&spec.key("target").key("region"), &s.target.region)?;

    let schedule = match s.schedule {
        None => None,
        Some(rs) => Some(schedule_of(&h, &spec.key("schedule"), rs)?),
    };

    let deadline_ms = h.positive_ms(&spec.key("deadline"), &s.deadline, DEFAULT_DEADLINE)?;
    let lost_coordinator_ms = h.positive_ms(
        &spec.key("dead_man").key("lost_coordinator"),
        &s.dead_man.lost_coordinator,
        DEFAULT_LOST_COORDINATOR,
    )?;

    let fp = spec.key("faults");
    if s.faults.is_empty() {
        return Err(h.at(&fp, "a drill needs at least one fault"));
    }
    let mut faults = Vec::with_capacity(s.faults.len());
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (i, rf) in s.faults.into_iter().enumerate() {
        let p = fp.idx(i);
        h.name(&p.key("id"), &rf.id)?;
        if let Some(first) = ids.insert(rf.id.clone(), i) {
            let line = h.at(&fp.idx(first).key("id"), "").line;
            return Err(h.at(&p.key("id"), format!("duplicate fault id {:?} (first used at line {line})", rf.id)));
        }
        let f = fault(&h, &p, rf)?;
        if let Some(d) = f.duration_ms
            && d > deadline_ms
        {
            return Err(h.at(
                &spec.key("deadline"),
                format!(
                    "{} is shorter than fault {:?}'s duration {}: the dead-man switch would revert it early",
                    human(deadline_ms),
                    f.id,
                    human(d)
                ),
            ));
        }
        faults.push(f);
    }

    let steady_state = s
        .steady_state
        .into_iter()
        .enumerate()
        .map(|(i, rp)| probe(&h, &spec.key("steady_state").idx(i), rp.region, rp.check, rp.vantage, rp.require))
        .collect::<Result<Vec<_>, _>>()?;

    let max_lag_seconds =
        h.opt_ms(&spec.key("preflight").key("max_lag"), &s.preflight.max_lag)?.map(|m| m as f64 / 1000.0);

    let gp = spec.key("guardrails");
    let mut guardrails = Vec::with_capacity(s.guardrails.len());
    let mut names: HashMap<String, usize> = HashMap::new();
    for (i, g) in s.guardrails.into_iter().enumerate() {
        let p = gp.idx(i);
        h.name(&p.key("name"), &g.name)?;
        if let Some(first) = names.insert(g.name.clone(), i) {
            let line = h.at(&gp.idx(first).key("name"), "").line;
            return Err(h.at(&p.key("name"), format!("duplicate guardrail {:?} (first at line {line})", g.name)));
        }
        let probe = probe(&h, &p, g.region, g.check, g.vantage, g.require)?;
        let for_ms = h.opt_ms(&p.key("for"), &g.for_)?.unwrap_or(0);
        guardrails.push(Guardrail { name: g.name, probe, for_ms });
    }

    let response = response(&h, &spec.key("response"), s.response, deadline_ms)?;

    let canary = match s.canary {
        None => None,
        Some(c) => Some(canary(&h, &spec.key("canary"), c)?),
    };
    let expect = expectations(&h, &spec.key("expect"), s.expect, canary.is_some(), &response)?;

    let rp = spec.key("restore");
    h.opt_name(&rp.key("playbook"), &s.restore.playbook)?;
    if s.restore.playbook.is_none() && !s.restore.params.is_empty() {
        return Err(h.at_key(&rp.key("params"), "params are for a restore playbook; name one or remove params"));
    }
    let restore = Restore {
        playbook: s.restore.playbook,
        params: s.restore.params,
        timeout_ms: h.positive_ms(&rp.key("timeout"), &s.restore.timeout, DEFAULT_RESTORE_TIMEOUT)?,
    };
    let report = ReportSettings { trend_runs: s.report.trend.unwrap_or(DEFAULT_TREND_RUNS) };

    let drill = Drill {
        name: raw.metadata.name,
        owner: raw.metadata.owner,
        hypothesis: s.hypothesis,
        service: s.service,
        target_region: s.target.region,
        schedule,
        deadline_ms,
        lost_coordinator_ms,
        faults,
        steady_state,
        preflight: Preflight { max_lag_seconds },
        guardrails,
        response,
        expect,
        canary,
        restore,
        report,
    };
    Ok((drill, hash))
}

fn schedule_of(h: &Here<'_>, p: &Path, rs: RawSchedule) -> Result<Schedule, DrillError> {
    let missed = rs.missed.unwrap_or(MissedPolicy::Skip);
    let start_tolerance_ms = match &rs.start_tolerance {
        Some(v) => ms(h.duration(&p.key("start_tolerance"), v)?),
        None => ms(DEFAULT_START_TOLERANCE),
    };
    if rs.late_limit.is_some() && missed != MissedPolicy::RunLate {
        return Err(h.at_key(&p.key("late_limit"), "late_limit applies with `missed: run_late` only"));
    }
    let late_limit_ms = h.positive_ms(&p.key("late_limit"), &rs.late_limit, DEFAULT_LATE_LIMIT)?;
    if missed == MissedPolicy::RunLate && late_limit_ms < start_tolerance_ms {
        return Err(h.at(
            &p.key("late_limit"),
            format!(
                "{} is shorter than start_tolerance {}: a late start would never be allowed",
                human(late_limit_ms),
                human(start_tolerance_ms)
            ),
        ));
    }
    let s = Schedule {
        rrule: rs.rrule,
        timezone: rs.timezone,
        start: rs.start,
        blackout: rs.blackout,
        start_tolerance_ms,
        missed,
        late_limit_ms,
        enabled: rs.enabled.unwrap_or(true),
    };
    schedule::check(&s).map_err(|ScheduleError { field, index, message }| {
        let mut fp = p.key(field);
        if let Some(i) = index {
            fp = fp.idx(i);
        }
        h.at(&fp, message)
    })?;
    Ok(s)
}

fn fault(h: &Here<'_>, p: &Path, rf: RawFault) -> Result<Fault, DrillError> {
    let Some((_, takes)) = FAULT_TYPES.iter().find(|(t, _)| *t == rf.kind) else {
        let types: Vec<_> = FAULT_TYPES.iter().map(|(t, _)| *t).collect();
        return Err(
            h.at(&p.key("type"), format!("unknown fault type {:?}; the types are: {}", rf.kind, types.join(", ")))
        );
    };
    if let Some(extra) = rf.settings().into_iter().find(|k| !takes.contains(k)) {
        return Err(h.at_key(
            &p.key(extra),
            format!("{extra} does not apply to a {} fault (it takes: {})", rf.kind, takes.join(", ")),
        ));
    }
    h.name(&p.key("region"), &rf.region)?;
    let required = |key: &str, v: Option<String>| -> Result<String, DrillError> {
        let v = v.ok_or_else(|| h.at(&p.key(key), format!("missing: a {} fault needs {key}", rf.kind)))?;
        h.name(&p.key(key), &v)?;
        Ok(v)
    };
    let kind = match rf.kind.as_str() {
        "postgres_stop" => FaultKind::PostgresStop { database: required("database", rf.database)? },
        "process_kill" => FaultKind::ProcessKill { process: required("process", rf.process)? },
        "proxy" => {
            let proxy = required("proxy", rf.proxy)?;
            let Some(mode) = rf.mode else {
                return Err(h.at(
                    &p.key("mode"),
                    "missing: a proxy fault needs mode (blackhole, latency, reset, bandwidth or partial)",
                ));
            };
            // Each setting belongs to one mode; one given to another mode would silently do nothing.
            let owner = [
                ("latency", rf.latency.is_some(), ProxyMode::Latency),
                ("jitter", rf.jitter.is_some(), ProxyMode::Latency),
                ("bytes_per_second", rf.bytes_per_second.is_some(), ProxyMode::Bandwidth),
                ("failure_rate", rf.failure_rate.is_some(), ProxyMode::Partial),
            ];
            if let Some((key, _, m)) = owner.iter().find(|(_, present, m)| *present && *m != mode) {
                return Err(h.at_key(
                    &p.key(key),
                    format!("{key} applies to mode {} only, not {}", mode_name(*m), mode_name(mode)),
                ));
            }
            let latency_ms = h.opt_ms(&p.key("latency"), &rf.latency)?.unwrap_or(0);
            let jitter_ms = h.opt_ms(&p.key("jitter"), &rf.jitter)?.unwrap_or(0);
            let bytes_per_second = rf.bytes_per_second.unwrap_or(0);
            let failure_rate = rf.failure_rate.unwrap_or(0.0);
            match mode {
                ProxyMode::Latency if latency_ms == 0 => {
                    return Err(h.at(&p.key("latency"), "mode latency needs latency longer than 0 (e.g. 800ms)"));
                }
                ProxyMode::Bandwidth if bytes_per_second == 0 => {
                    return Err(h.at(&p.key("bytes_per_second"), "mode bandwidth needs bytes_per_second above 0"));
                }
                ProxyMode::Partial if !(failure_rate > 0.0 && failure_rate <= 1.0) => {
                    return Err(h.at(
                        &p.key("failure_rate"),
                        format!("mode partial needs failure_rate with 0 < failure_rate ≤ 1, got {failure_rate}"),
                    ));
                }
                _ => {}
            }
            FaultKind::Proxy { proxy, mode, latency_ms, jitter_ms, bytes_per_second, failure_rate }
        }
        "dns" => {
            let proxy = required("proxy", rf.proxy)?;
            let Some(name) = rf.name else {
                return Err(
                    h.at(&p.key("name"), "missing: a dns fault needs the name to fail (absolute, e.g. psp.example.)")
                );
            };
            if !is_absolute_dns_name(&name) {
                return Err(h.at(
                    &p.key("name"),
                    format!("{name:?} is not an absolute DNS name: labels of a-z, 0-9, '-', '_' ending with a dot"),
                ));
            }
            let Some(answer) = rf.answer else {
                return Err(h.at(&p.key("answer"), "missing: a dns fault needs answer (nxdomain or servfail)"));
            };
            FaultKind::Dns { proxy, name, answer }
        }
        "exec" => {
            let argv = |key: &str, v: Option<Vec<String>>| -> Result<Vec<String>, DrillError> {
                match v {
                    Some(a) if a.first().is_some_and(|c| !c.trim().is_empty()) => Ok(a),
                    Some(_) => {
                        Err(h.at(&p.key(key), format!("{key} is an empty argv: give the program and its arguments")))
                    }
                    None => Err(h.at(&p.key(key), format!("missing: an exec fault needs {key} (an argv list)"))),
                }
            };
            FaultKind::Exec { inject: argv("inject", rf.inject)?, revert: argv("revert", rf.revert)? }
        }
        _ => unreachable!("checked against FAULT_TYPES above"),
    };
    let duration_ms = match &rf.duration {
        None => None,
        Some(_) => Some(h.positive_ms(&p.key("duration"), &rf.duration, Duration::ZERO)?),
    };
    Ok(Fault { id: rf.id, region: rf.region, kind, duration_ms })
}

fn mode_name(m: ProxyMode) -> &'static str {
    match m {
        ProxyMode::Blackhole => "blackhole",
        ProxyMode::Latency => "latency",
        ProxyMode::Reset => "reset",
        ProxyMode::Bandwidth => "bandwidth",
        ProxyMode::Partial => "partial",
    }
}

/// `psp.example.`: at least one label, each 1-63 of a-z, 0-9, '-', '_', and the trailing dot.
fn is_absolute_dns_name(name: &str) -> bool {
    let Some(body) = name.strip_suffix('.') else {
        return false;
    };
    !body.is_empty()
        && name.len() <= 254
        && body.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn probe(
    h: &Here<'_>,
    p: &Path,
    region: String,
    check: Option<String>,
    vantage: Option<String>,
    require: Option<Require>,
) -> Result<Probe, DrillError> {
    h.name(&p.key("region"), &region)?;
    h.opt_name(&p.key("check"), &check)?;
    h.opt_name(&p.key("vantage"), &vantage)?;
    Ok(Probe { region, check, vantage, require: require.unwrap_or(Require::Up) })
}

fn response(h: &Here<'_>, p: &Path, r: RawResponse, deadline_ms: u64) -> Result<Response, DrillError> {
    let given: Vec<&str> = [
        ("playbook", r.playbook.is_some()),
        ("automatic_failover", r.automatic_failover.is_some()),
        ("observe", r.observe.is_some()),
    ]
    .iter()
    .filter(|(_, g)| *g)
    .map(|(k, _)| *k)
    .collect();
    match given.as_slice() {
        [] => return Err(h.at(p, "give exactly one of playbook, automatic_failover or observe")),
        [_] => {}
        [_, second, ..] => {
            return Err(h.at_key(
                &p.key(second),
                format!("give exactly one of playbook, automatic_failover or observe, not {}", given.join(" and ")),
            ));
        }
    }
    if r.playbook.is_none() {
        for (key, present) in
            [("params", r.params.is_some()), ("unplanned", r.unplanned.is_some()), ("start", r.start.is_some())]
        {
            if present {
                return Err(h.at_key(&p.key(key), format!("{key} applies to a playbook response only")));
            }
        }
    }
    if let Some(pb) = r.playbook {
        h.name(&p.key("playbook"), &pb)?;
        return Ok(Response::Playbook {
            playbook: pb,
            params: r.params.unwrap_or_default(),
            unplanned: r.unplanned.unwrap_or(false),
            start: r.start.unwrap_or(ResponseStart::OnDown),
        });
    }
    if let Some(auto) = r.automatic_failover {
        if !auto {
            return Err(h.at(
                &p.key("automatic_failover"),
                "false says nothing is expected: use `observe: <duration>` for a fault the platform must ride out",
            ));
        }
        return Ok(Response::AutomaticFailover);
    }
    let op = p.key("observe");
    let observe_ms = h.positive_ms(&op, &r.observe, Duration::ZERO)?;
    if observe_ms >= deadline_ms {
        return Err(h.at(
            &op,
            format!(
                "{} is not shorter than the deadline {}: the faults would be reverted before it ends",
                human(observe_ms),
                human(deadline_ms)
            ),
        ));
    }
    Ok(Response::None { observe_ms })
}

fn canary(h: &Here<'_>, p: &Path, c: RawCanary) -> Result<Canary, DrillError> {
    let dp = p.key("dsn");
    if c.dsn.trim().is_empty() {
        return Err(h.at(&dp, "empty: a libpq connection string naming every host the primary may be on"));
    }
    if dsn_has_password(&c.dsn) {
        return Err(h.at(
            &dp,
            "contains a password: drill files are stored and shown; put it in an environment variable of the \
             coordinator and name that in password_env",
        ));
    }
    if let Some(env) = &c.password_env
        && !is_env_name(env)
    {
        return Err(
            h.at(&p.key("password_env"), format!("{env:?} is not an environment variable name (A-Z, 0-9, '_')"))
        );
    }
    let table = c.table.unwrap_or_else(|| DEFAULT_CANARY_TABLE.to_string());
    if !is_sql_identifier(&table) {
        return Err(h.at(
            &p.key("table"),
            format!("{table:?} is not a plain SQL identifier (a-z, 0-9, '_', starting with a letter or '_', ≤ 63)"),
        ));
    }
    let interval_ms = h.positive_ms(&p.key("interval"), &c.interval, DEFAULT_CANARY_INTERVAL)?;
    Ok(Canary { dsn: c.dsn, password_env: c.password_env, table, interval_ms })
}

/// A `password=` keyword (any case, spaces allowed before `=`) or a URI with `user:secret@`.
fn dsn_has_password(dsn: &str) -> bool {
    let lower = dsn.to_ascii_lowercase();
    let keyword = lower.match_indices("password").any(|(i, _)| {
        let before_ok = i == 0 || lower.as_bytes()[i - 1].is_ascii_whitespace();
        let after = lower[i + "password".len()..].trim_start();
        before_ok && after.starts_with('=')
    });
    let uri = ["postgres://", "postgresql://"].iter().any(|scheme| {
        lower.strip_prefix(scheme).is_some_and(|rest| {
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':'))
        })
    });
    keyword || uri || lower.contains("?password=") || lower.contains("&password=")
}

fn is_env_name(v: &str) -> bool {
    !v.is_empty()
        && !v.starts_with(|c: char| c.is_ascii_digit())
        && v.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn is_sql_identifier(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 63
        && v.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn expectations(
    h: &Here<'_>,
    p: &Path,
    e: RawExpect,
    has_canary: bool,
    response: &Response,
) -> Result<Expectations, DrillError> {
    if e.rpo.is_some() && !has_canary {
        return Err(h.at(&p.key("rpo"), "RPO is measured by the write canary: add spec.canary, or remove rpo"));
    }
    if !e.integrity.is_empty() && !has_canary {
        return Err(h.at(
            &p.key("integrity"),
            "integrity checks run through the canary's connection: add spec.canary, or remove integrity",
        ));
    }
    match (e.failover, response) {
        (Some(true), Response::None { .. }) => {
            return Err(h.at(&p.key("failover"), "the response is observe: nothing is meant to fail over"));
        }
        (Some(false), Response::AutomaticFailover) => {
            return Err(h.at(&p.key("failover"), "the response is automatic_failover: a failover is what it expects"));
        }
        _ => {}
    }
    let ip = p.key("integrity");
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, c) in e.integrity.iter().enumerate() {
        h.name(&ip.idx(i).key("name"), &c.name)?;
        if let Some(first) = names.insert(&c.name, i) {
            let line = h.at(&ip.idx(first).key("name"), "").line;
            return Err(
                h.at(&ip.idx(i).key("name"), format!("duplicate integrity check {:?} (first at line {line})", c.name))
            );
        }
        if c.query.trim().is_empty() {
            return Err(h.at(&ip.idx(i).key("query"), "empty: a query returning one row, one column"));
        }
    }
    Ok(Expectations {
        detection_ms: h.opt_ms(&p.key("detection"), &e.detection)?,
        rto_ms: h.opt_ms(&p.key("rto"), &e.rto)?,
        rpo_rows: e.rpo,
        failover: e.failover,
        integrity: e
            .integrity
            .into_iter()
            .map(|c| IntegrityCheck { name: c.name, query: c.query, expect: c.expect })
            .collect(),
    })
}

/// A duration for messages (`30m`, `2m 30s`).
pub(crate) fn human(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// Checks every region and playbook the drill names against what the cluster knows, returning
/// one message per problem (empty: all known), each naming its field, e.g.
/// `spec.response.playbook: no stored playbook "x" (have: a, b)`.
pub fn check_refs(d: &Drill, regions: &BTreeSet<String>, playbooks: &BTreeSet<String>) -> Vec<String> {
    let have = |set: &BTreeSet<String>| {
        if set.is_empty() { "none".to_string() } else { set.iter().cloned().collect::<Vec<_>>().join(", ") }
    };
    let mut out = Vec::new();
    let mut region = |field: String, r: &str| {
        if !regions.contains(r) {
            out.push(format!("{field}: unknown region {r:?} (have: {})", have(regions)));
        }
    };
    region("spec.target.region".into(), &d.target_region);
    for (i, f) in d.faults.iter().enumerate() {
        region(format!("spec.faults[{i}].region"), &f.region);
    }
    let probes = d.steady_state.iter().enumerate().map(|(i, p)| (format!("spec.steady_state[{i}]"), p));
    let guards = d.guardrails.iter().enumerate().map(|(i, g)| (format!("spec.guardrails[{i}]"), &g.probe));
    for (at, p) in probes.chain(guards) {
        region(format!("{at}.region"), &p.region);
        if let Some(v) = &p.vantage {
            region(format!("{at}.vantage"), v);
        }
    }
    let mut playbook = |field: &str, name: &str| {
        if !playbooks.contains(name) {
            out.push(format!("{field}: no stored playbook {name:?} (have: {})", have(playbooks)));
        }
    };
    if let Response::Playbook { playbook: name, .. } = &d.response {
        playbook("spec.response.playbook", name);
    }
    if let Some(name) = &d.restore.playbook {
        playbook("spec.restore.playbook", name);
    }
    out
}
