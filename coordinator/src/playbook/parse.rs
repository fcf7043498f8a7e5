//! From text to a validated [`Playbook`]: the document's serde shape, then every rule serde
//! cannot express (names, the vocabulary, phases, the order of a cutover, parameter references).

use super::action::{Action, check_with};
use super::location::{Ctx, Path};
use super::resolved::{
    Automatic, Compensation, Failover, Gate, LossBudget, OnFailure, Preconditions, Require, ResolvedPlaybook,
    ResolvedStep, Targets, When,
};
use super::{API_VERSION, ParamKind, Parameter, Playbook, PlaybookError, is_name, subst};
use marked_yaml::Node;
use serde::Deserialize;
use serde::de::IgnoredAny;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

// Built-in step policy where neither the step nor `spec.defaults` says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an `approval` step without its own `timeout` waits for someone to approve.
const APPROVAL_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_RETRIES: u32 = 0;
const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(1);
const DEFAULT_ON_FAILURE: OnFailure = OnFailure::Rollback;

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
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    service: String,
    #[serde(default)]
    parameters: BTreeMap<String, RawParameter>,
    #[serde(default)]
    approvals: RawApprovals,
    #[serde(default)]
    targets: RawTargets,
    #[serde(default)]
    preconditions: RawPreconditions,
    #[serde(default)]
    defaults: RawPolicy,
    steps: Vec<RawStep>,
    #[serde(default)]
    failover: Option<RawFailover>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailover {
    source: String,
    target: String,
    #[serde(default)]
    accept_loss: Option<RawLoss>,
    #[serde(default)]
    automatic: Option<RawAutomatic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLoss {
    #[serde(default)]
    bytes: Option<u64>,
    #[serde(default)]
    seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAutomatic {
    enabled: bool,
    #[serde(default)]
    cooldown: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParameter {
    kind: ParamKind,
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    #[serde(default)]
    required: u32,
}

// Separate from the stored `Targets`: strictness belongs to the file, while stored state must
// stay readable by a binary one version older.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTargets {
    #[serde(default)]
    rpo_seconds: Option<u64>,
    #[serde(default)]
    rto_seconds: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPreconditions {
    #[serde(default)]
    target_region: Option<String>,
    #[serde(default)]
    max_lag_seconds: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    retry_backoff: Option<String>,
    #[serde(default)]
    on_failure: Option<OnFailure>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    id: String,
    action: String,
    #[serde(default)]
    region: Option<String>,
    // Accepted here, checked per action by `check_with` from the node itself.
    #[serde(default, rename = "with")]
    _with: Option<IgnoredAny>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    retry_backoff: Option<String>,
    #[serde(default)]
    on_failure: Option<OnFailure>,
    #[serde(default)]
    compensate: Option<RawCompensate>,
    // Signed so that a negative phase gets the 1..=100 message rather than a parse error.
    #[serde(default)]
    phases: Option<Vec<i64>>,
    #[serde(default)]
    dwell: Option<String>,
    #[serde(default)]
    gate: Option<RawGate>,
    #[serde(default)]
    when: Option<When>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompensate {
    action: String,
    region: String,
    #[serde(default, rename = "with")]
    _with: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGate {
    region: String,
    require: Require,
}

// === parsing ===

/// See [`Playbook::parse`].
pub(crate) fn parse(file: &str, text: &str) -> Result<Playbook, PlaybookError> {
    let hash = hex::encode(Sha256::digest(text.as_bytes()));
    let root = super::location::load(file, text, "a playbook")?;
    let ctx = Ctx { file, root: &root };
    let raw: RawDoc = marked_yaml::from_node(&root).map_err(|e| ctx.serde_error(&Path::default(), e))?;

    if raw.api_version != API_VERSION {
        return Err(ctx.at(
            &Path::root("apiVersion"),
            format!("{:?} is not supported; this coordinator reads {API_VERSION}", raw.api_version),
        ));
    }
    if raw.kind != "Playbook" {
        return Err(ctx.at(&Path::root("kind"), format!("{:?} is not a playbook; expected Playbook", raw.kind)));
    }
    name(&ctx, &Path::root("metadata").key("name"), &raw.metadata.name)?;
    let spec = Path::root("spec");
    name(&ctx, &spec.key("service"), &raw.spec.service)?;

    let mut parameters = BTreeMap::new();
    for (pname, p) in raw.spec.parameters {
        let path = spec.key("parameters").key(&pname);
        if !subst::is_param_name(&pname) {
            return Err(
                ctx.at_key(&path, format!("{pname:?} is not a parameter name (a-z, 0-9, '_', starting with a letter)"))
            );
        }
        if let Some(d) = &p.default {
            if d.contains("${") {
                return Err(ctx.at(&path.key("default"), "a default is a literal value; it cannot refer to parameters"));
            }
            if p.kind == ParamKind::Region && !is_name(d) {
                return Err(ctx.at(&path.key("default"), format!("{d:?} is not a region name (1-63 of a-z, 0-9, '-')")));
            }
        }
        parameters.insert(pname, Parameter { kind: p.kind, default: p.default, description: p.description });
    }

    let pre = spec.key("preconditions");
    if let Some(t) = &raw.spec.preconditions.target_region {
        check_region(&ctx, &pre.key("target_region"), t)?;
    }
    let defaults = policy(&ctx, &spec.key("defaults"), &raw.spec.defaults, &Policy::builtin())?;

    if raw.spec.steps.is_empty() {
        return Err(ctx.at(&spec.key("steps"), "a playbook needs at least one step"));
    }
    let mut steps = Vec::with_capacity(raw.spec.steps.len());
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (i, rs) in raw.spec.steps.into_iter().enumerate() {
        let p = spec.key("steps").idx(i);
        name(&ctx, &p.key("id"), &rs.id)?;
        if let Some(first) = ids.insert(rs.id.clone(), i) {
            let line = ctx.at(&spec.key("steps").idx(first).key("id"), "").line;
            return Err(ctx.at(&p.key("id"), format!("duplicate step id {:?} (first used at line {line})", rs.id)));
        }
        steps.push(step(&ctx, &p, rs, &defaults)?);
    }
    check_order(&ctx, &steps)?;

    let failover = match raw.spec.failover {
        None => None,
        Some(f) => Some(failover(&ctx, &spec.key("failover"), f, raw.spec.targets.rpo_seconds)?),
    };
    if failover.is_none()
        && let Some(i) = steps.iter().position(|s| s.when != When::Always)
    {
        return Err(ctx.at(
            &spec.key("steps").idx(i).key("when"),
            "only a playbook with spec.failover has unplanned runs; remove `when` or add spec.failover",
        ));
    }

    // Every `${x}` where substitution happens must name a declared parameter.
    check_refs(&ctx, &pre, &parameters)?;
    check_refs(&ctx, &spec.key("failover"), &parameters)?;
    for i in 0..steps.len() {
        let p = spec.key("steps").idx(i);
        for key in ["region", "with", "gate", "compensate"] {
            check_refs(&ctx, &p.key(key), &parameters)?;
        }
    }

    let template = ResolvedPlaybook {
        name: raw.metadata.name.clone(),
        hash: hash.clone(),
        service: raw.spec.service.clone(),
        params: BTreeMap::new(),
        approvals_required: raw.spec.approvals.required,
        targets: Targets { rpo_seconds: raw.spec.targets.rpo_seconds, rto_seconds: raw.spec.targets.rto_seconds },
        preconditions: Preconditions {
            target_region: raw.spec.preconditions.target_region,
            max_lag_seconds: raw.spec.preconditions.max_lag_seconds,
        },
        steps,
        failover,
    };
    Ok(Playbook {
        file: file.to_string(),
        hash,
        name: raw.metadata.name,
        description: raw.metadata.description,
        service: raw.spec.service,
        parameters,
        template,
        root,
    })
}

/// Default cooldown between automatic failovers of one service.
const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30 * 60);

fn failover(ctx: &Ctx<'_>, p: &Path, f: RawFailover, rpo_seconds: Option<u64>) -> Result<Failover, PlaybookError> {
    check_region(ctx, &p.key("source"), &f.source)?;
    check_region(ctx, &p.key("target"), &f.target)?;
    if f.source == f.target {
        return Err(ctx.at(&p.key("target"), format!("{:?} is also the source: fail over to another region", f.target)));
    }
    // Without a stated budget, only what the RPO target allows passes without consent.
    let accept_loss = match f.accept_loss {
        Some(l) => LossBudget { bytes: l.bytes.unwrap_or(0), seconds: l.seconds.unwrap_or(0) },
        None => LossBudget { bytes: 0, seconds: rpo_seconds.unwrap_or(0) },
    };
    let automatic = match f.automatic {
        None => None,
        Some(a) => {
            let cooldown = match &a.cooldown {
                Some(c) => duration(ctx, &p.key("automatic").key("cooldown"), c)?,
                None => DEFAULT_COOLDOWN,
            };
            if cooldown.is_zero() {
                return Err(ctx.at(
                    &p.key("automatic").key("cooldown"),
                    "must be longer than 0: without a cooldown a flapping region fails over back and forth",
                ));
            }
            Some(Automatic { enabled: a.enabled, cooldown })
        }
    };
    Ok(Failover { source: f.source, target: f.target, accept_loss, automatic })
}

/// A step's effective policy.
struct Policy {
    timeout: Duration,
    retries: u32,
    retry_backoff: Duration,
    on_failure: OnFailure,
}

impl Policy {
    fn builtin() -> Policy {
        Policy {
            timeout: DEFAULT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
            on_failure: DEFAULT_ON_FAILURE,
        }
    }
}

/// `raw` over `base`: the step's overrides over `spec.defaults` over the built-ins.
fn policy(ctx: &Ctx<'_>, path: &Path, raw: &RawPolicy, base: &Policy) -> Result<Policy, PlaybookError> {
    let timeout = match &raw.timeout {
        Some(t) => duration(ctx, &path.key("timeout"), t)?,
        None => base.timeout,
    };
    if timeout.is_zero() {
        return Err(ctx.at(&path.key("timeout"), "must be longer than 0"));
    }
    Ok(Policy {
        timeout,
        retries: raw.retries.unwrap_or(base.retries),
        retry_backoff: match &raw.retry_backoff {
            Some(t) => duration(ctx, &path.key("retry_backoff"), t)?,
            None => base.retry_backoff,
        },
        on_failure: raw.on_failure.unwrap_or(base.on_failure),
    })
}

fn step(ctx: &Ctx<'_>, p: &Path, rs: RawStep, defaults: &Policy) -> Result<ResolvedStep, PlaybookError> {
    let action = vocabulary(ctx, &p.key("action"), &rs.action)?;
    let step_node = ctx.node(p).expect("the step deserialized from this node");
    let region = match (action.needs_region(), rs.region) {
        (true, None) => {
            return Err(ctx.at(&p.key("region"), format!("missing: the region whose agent executes {action}")));
        }
        (false, Some(_)) => {
            return Err(ctx.at(&p.key("region"), "an approval waits on the coordinator, not an agent: remove region"));
        }
        (true, Some(r)) => {
            check_region(ctx, &p.key("region"), &r)?;
            Some(r)
        }
        (false, None) => None,
    };
    let with = check_with(ctx, action, &p.key("with"), step_node)?;
    let raw_policy = RawPolicy {
        timeout: rs.timeout,
        retries: rs.retries,
        retry_backoff: rs.retry_backoff,
        on_failure: rs.on_failure,
    };
    let mut pol = policy(ctx, p, &raw_policy, defaults)?;
    if action == Action::Approval {
        // A person answers, not an agent: `spec.defaults` (sized for machines) do not apply.
        // Its own `timeout` bounds the wait, else an hour; asking again changes nothing.
        if raw_policy.timeout.is_none() {
            pol.timeout = APPROVAL_TIMEOUT;
        }
        if raw_policy.retries.is_some_and(|r| r > 0) {
            return Err(
                ctx.at(&p.key("retries"), "an approval is not retried: remove retries (its timeout bounds the wait)")
            );
        }
        pol.retries = 0;
    }

    let compensate = match rs.compensate {
        None => None,
        Some(_) if action == Action::PromoteDb || action == Action::Approval => {
            return Err(ctx.at_key(
                &p.key("compensate"),
                format!("{action} has nothing a rollback could undo; remove compensate"),
            ));
        }
        Some(c) => {
            let cp = p.key("compensate");
            let caction = vocabulary(ctx, &cp.key("action"), &c.action)?;
            if matches!(caction, Action::PromoteDb | Action::Approval | Action::RebuildStandby) {
                return Err(ctx.at(&cp.key("action"), format!("{caction} cannot be a compensation")));
            }
            check_region(ctx, &cp.key("region"), &c.region)?;
            let cnode = ctx.node(&cp).expect("the compensation deserialized from this node");
            let with = check_with(ctx, caction, &cp.key("with"), cnode)?;
            Some(Compensation { action: caction, region: c.region, with })
        }
    };

    let (mut phases, mut dwell, mut gate) = (Vec::new(), Duration::ZERO, None);
    if action != Action::ShiftTraffic {
        for (key, present) in
            [("phases", rs.phases.is_some()), ("dwell", rs.dwell.is_some()), ("gate", rs.gate.is_some())]
        {
            if present {
                return Err(ctx.at_key(&p.key(key), format!("{key} applies to shift_traffic steps only, not {action}")));
            }
        }
    } else {
        phases = check_phases(ctx, &p.key("phases"), rs.phases.unwrap_or_else(|| vec![100]))?;
        if let Some(d) = &rs.dwell {
            dwell = duration(ctx, &p.key("dwell"), d)?;
        }
        if let Some(g) = rs.gate {
            check_region(ctx, &p.key("gate").key("region"), &g.region)?;
            gate = Some(Gate { region: g.region, require: g.require });
        }
    }

    Ok(ResolvedStep {
        id: rs.id,
        action,
        region,
        with,
        timeout: pol.timeout,
        retries: pol.retries,
        retry_backoff: pol.retry_backoff,
        on_failure: pol.on_failure,
        compensate,
        phases,
        dwell,
        gate,
        when: rs.when.unwrap_or_default(),
    })
}

/// Percent of traffic on `to` per phase: each in 1..=100, strictly increasing, the last 100
/// (a shift that stops short would leave users split between regions with no step to finish).
fn check_phases(ctx: &Ctx<'_>, path: &Path, phases: Vec<i64>) -> Result<Vec<u8>, PlaybookError> {
    if phases.is_empty() {
        return Err(ctx.at(path, "must list at least one phase (ending at 100)"));
    }
    let mut out = Vec::with_capacity(phases.len());
    for (i, &ph) in phases.iter().enumerate() {
        let Ok(pc @ 1..=100) = u8::try_from(ph) else {
            return Err(ctx.at(&path.idx(i), format!("{ph} is not a percentage in 1..=100")));
        };
        if let Some(&prev) = out.last()
            && pc <= prev
        {
            return Err(ctx.at(&path.idx(i), format!("phases must be strictly increasing: {pc} follows {prev}")));
        }
        out.push(pc);
    }
    if out.last() != Some(&100) {
        return Err(ctx.at(&path.idx(out.len() - 1), "the last phase must be 100 (all traffic on `to`)"));
    }
    Ok(out)
}

/// The cutover order rules: each guards a way to lose data or to have two writable primaries.
fn check_order(ctx: &Ctx<'_>, steps: &[ResolvedStep]) -> Result<(), PlaybookError> {
    let promote = steps.iter().position(|s| s.action == Action::PromoteDb);
    let (mut frozen, mut caught_up) = (false, false);
    for (i, s) in steps.iter().enumerate() {
        let at = Path::root("spec").key("steps").idx(i).key("action");
        let promoted = promote.is_some_and(|p| i > p);
        let promote_later = promote.is_some_and(|p| i < p);
        let refusal = match s.action {
            Action::FreezeWrites => {
                frozen = true;
                None
            }
            Action::WaitReplication if !frozen => Some(
                "wait_replication before any freeze_writes: without a freeze there is no final LSN to wait for, \
                 and writes keep arriving",
            ),
            Action::WaitReplication => {
                caught_up = true;
                None
            }
            Action::PromoteDb if promoted => Some("a playbook promotes once; this is a second promote_db"),
            Action::PromoteDb if !frozen => Some(
                "promote before freeze: promote_db needs an earlier freeze_writes and wait_replication, or writes \
                 acknowledged by the old primary are lost",
            ),
            Action::PromoteDb if !caught_up => Some(
                "promote before wait_replication: the standby may not have the frozen LSN yet, so acknowledged \
                 writes would be lost",
            ),
            Action::Fence if promoted => Some(
                "fence after promote_db: the old primary must be fenced before the new one takes writes, or there \
                 are two writable primaries",
            ),
            Action::UnfreezeWrites if promote_later => {
                Some("unfreeze_writes before promote_db: writes would reopen on the old primary during the cutover")
            }
            Action::ShiftTraffic | Action::RepointClients if promote_later => {
                Some("traffic or clients would move to the target before its database is promoted")
            }
            _ => None,
        };
        if let Some(msg) = refusal {
            return Err(ctx.at(&at, msg));
        }
    }
    Ok(())
}

/// Checks every string value under `path` for well-formed references to declared parameters.
fn check_refs(ctx: &Ctx<'_>, path: &Path, params: &BTreeMap<String, Parameter>) -> Result<(), PlaybookError> {
    fn walk(
        ctx: &Ctx<'_>,
        node: &Node,
        path: &Path,
        params: &BTreeMap<String, Parameter>,
    ) -> Result<(), PlaybookError> {
        match node {
            Node::Scalar(s) => {
                for name in subst::refs(s.as_str()).map_err(|m| ctx.at(path, m))? {
                    if !params.contains_key(name) {
                        let defined = if params.is_empty() {
                            "none".to_string()
                        } else {
                            params.keys().cloned().collect::<Vec<_>>().join(", ")
                        };
                        return Err(ctx.at(
                            path,
                            format!(
                                "`${{{name}}}` refers to an undefined parameter; spec.parameters defines: {defined}"
                            ),
                        ));
                    }
                }
                Ok(())
            }
            Node::Mapping(m) => m.iter().try_for_each(|(k, v)| walk(ctx, v, &path.key(k.as_str()), params)),
            Node::Sequence(s) => s.iter().enumerate().try_for_each(|(i, v)| walk(ctx, v, &path.idx(i), params)),
        }
    }
    match ctx.node(path) {
        Some(n) => walk(ctx, n, path, params),
        None => Ok(()),
    }
}

fn vocabulary(ctx: &Ctx<'_>, path: &Path, s: &str) -> Result<Action, PlaybookError> {
    Action::from_name(s).ok_or_else(|| {
        let words: Vec<_> = Action::ALL.iter().map(|a| a.as_str()).collect();
        ctx.at(path, format!("unknown action {s:?}; the vocabulary is: {}", words.join(", ")))
    })
}

fn name(ctx: &Ctx<'_>, path: &Path, v: &str) -> Result<(), PlaybookError> {
    if is_name(v) {
        Ok(())
    } else {
        Err(ctx.at(path, format!("{v:?} is not a valid name (1-63 of a-z, 0-9, '-'; no leading or trailing '-')")))
    }
}

/// A region field: a literal region name, or text with references checked by `check_refs` and
/// re-checked as a name after substitution.
fn check_region(ctx: &Ctx<'_>, path: &Path, v: &str) -> Result<(), PlaybookError> {
    if v.contains("${") { Ok(()) } else { name(ctx, path, v) }
}

fn duration(ctx: &Ctx<'_>, path: &Path, v: &str) -> Result<Duration, PlaybookError> {
    humantime::parse_duration(v)
        .map_err(|e| ctx.at(path, format!("{v:?} is not a duration such as 500ms, 10s or 2m: {e}")))
}
