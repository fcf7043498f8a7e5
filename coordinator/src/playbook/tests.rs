use super::*;
use std::time::Duration;

const EXAMPLE: &str = include_str!("../../../playbooks/wallet-region-cutover.yaml");

/// Lines 1-10; steps start at line 11.
const HEADER: &str = "apiVersion: drcut/v1
kind: Playbook
metadata:
  name: t
spec:
  service: wallet
  parameters:
    source: { kind: region, default: eu-west }
    target: { kind: region, default: eu-central }
  steps:
";

// One-line steps, so that step k of a test is on line 11 + k.
const FREEZE: &str = "    - { id: freeze, action: freeze_writes, region: eu-west, with: { database: db } }\n";
const WAIT: &str = "    - { id: wait, action: wait_replication, region: eu-central, with: { database: db } }\n";
const FENCE: &str = "    - { id: fence, action: fence, region: eu-west, with: { database: db } }\n";
const PROMOTE: &str = "    - { id: promote, action: promote_db, region: eu-central, with: { database: db } }\n";
const UNFREEZE: &str = "    - { id: unfreeze, action: unfreeze_writes, region: eu-central, with: { database: db } }\n";
const SHIFT: &str = "    - { id: shift, action: shift_traffic, region: eu-central, with: { dns: gslb, zone: z.example., \
                     name: w.z.example., from: [192.0.2.1], to: [198.51.100.1] } }\n";

fn doc(steps: &[&str]) -> String {
    format!("{HEADER}{}", steps.concat())
}

fn parse(text: &str) -> Result<Playbook, PlaybookError> {
    Playbook::parse("t.yaml", text)
}

fn refused(text: &str) -> PlaybookError {
    parse(text).expect_err("the playbook should be refused")
}

/// 1-based column of `needle` on 1-based `line` of `text` (the node an error must point at).
fn col(text: &str, line: usize, needle: &str) -> usize {
    let l = text.lines().nth(line - 1).expect("line exists");
    l.find(needle).unwrap_or_else(|| panic!("{needle:?} not on line {line}: {l:?}")) + 1
}

#[track_caller]
fn assert_at(e: &PlaybookError, line: usize, column: usize, field: &str, message_part: &str) {
    assert_eq!(
        (e.file.as_str(), e.line, e.column, e.field.as_str()),
        ("t.yaml", line, column, field),
        "wrong position or field: {e}"
    );
    assert!(e.message.contains(message_part), "message {:?} lacks {message_part:?}", e.message);
}

fn no_params() -> BTreeMap<String, String> {
    BTreeMap::new()
}

// === the shipped example ===

#[test]
fn example_parses_validates_and_resolves_in_the_design_order() {
    let pb = Playbook::parse("wallet-region-cutover.yaml", EXAMPLE).unwrap();
    assert_eq!((pb.name.as_str(), pb.service.as_str()), ("wallet-region-cutover", "wallet"));
    let known = vec!["eu-west".to_string(), "eu-central".to_string()];
    let r = validate_regions(&pb, &no_params(), &known).unwrap();
    // A planned run leaves out the unplanned-only STONITH step.
    let planned: Vec<&ResolvedStep> = r.steps.iter().filter(|s| s.when != When::Unplanned).collect();
    let order: Vec<_> = planned.iter().map(|s| s.action).collect();
    use Action::*;
    assert_eq!(
        order,
        [
            FreezeWrites,
            WaitReplication,
            Fence,
            PromoteDb,
            RepointClients,
            UnfreezeWrites,
            WarmCaches,
            ShiftTraffic,
            Smoke
        ]
    );
    assert_eq!(planned.iter().position(|s| s.action == PromoteDb), Some(3));
    let stonith: Vec<_> = r.steps.iter().filter(|s| s.when == When::Unplanned).collect();
    assert_eq!(stonith.len(), 1);
    assert_eq!((stonith[0].action, stonith[0].region.as_deref()), (Fence, Some("eu-central")));
    let f = r.failover.as_ref().unwrap();
    assert_eq!((f.source.as_str(), f.target.as_str(), f.automatic.unwrap().enabled), ("eu-west", "eu-central", false));
    assert_eq!(r.approvals_required, 1);
    assert_eq!(r.targets, Targets { rpo_seconds: Some(0), rto_seconds: Some(120) });
    assert_eq!(r.preconditions, Preconditions { target_region: Some("eu-central".into()), max_lag_seconds: Some(5) });
    let region = |i: usize| planned[i].region.as_deref();
    assert_eq!(
        [region(0), region(1), region(2), region(3)],
        [Some("eu-west"), Some("eu-central"), Some("eu-west"), Some("eu-central")]
    );

    let freeze = planned[0];
    assert_eq!(freeze.timeout, Duration::from_secs(10));
    assert_eq!((freeze.retries, freeze.retry_backoff), (2, Duration::from_millis(500)));
    assert_eq!(freeze.on_failure, OnFailure::Rollback);
    let comp = freeze.compensate.as_ref().unwrap();
    assert_eq!((comp.action, comp.region.as_str()), (UnfreezeWrites, "eu-west"));
    assert_eq!(planned[1].with, serde_json::json!({"database": "wallet-db", "max_lag_bytes": 0}));
    assert_eq!(planned[2].with, serde_json::json!({"database": "wallet-db", "mode": "read_only"}));
    assert_eq!(planned[3].on_failure, OnFailure::Pause);
    assert_eq!(planned[4].with["answers"], serde_json::json!(["198.51.100.20"]));

    let shift = planned[7];
    assert_eq!(shift.phases, vec![5, 25, 50, 100]);
    assert_eq!(shift.dwell, Duration::from_secs(30));
    assert_eq!(shift.gate, Some(Gate { region: "eu-central".into(), require: Require::Up }));
    assert_eq!(shift.with["verify"], serde_json::json!({"queries": 200, "tolerance": 0.1}));
    let back = shift.compensate.as_ref().unwrap();
    assert_eq!(
        (back.with["from"].clone(), back.with["to"].clone()),
        (serde_json::json!(["198.51.100.10"]), serde_json::json!(["192.0.2.10"]))
    );
    assert_eq!(
        planned[8].with["paths"],
        serde_json::json!(["/api/login", "/api/spin", "/api/deposit", "/api/withdrawal"])
    );
    // The file says `expect_status: 200`; the agent takes a list.
    assert_eq!(planned[8].with["expect_status"], serde_json::json!([200]));
}

#[test]
fn example_loads_from_the_playbooks_directory() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../playbooks/wallet-region-cutover.yaml");
    let pb = Playbook::load(path).unwrap();
    assert_eq!(pb.hash, Playbook::parse("x", EXAMPLE).unwrap().hash);
    let e = Playbook::load("/nonexistent/p.yaml").unwrap_err();
    assert_eq!((e.line, e.column, e.field.as_str()), (0, 0, "(file)"));
}

#[test]
fn resolved_playbook_round_trips_through_serde() {
    let r = Playbook::parse("x", EXAMPLE).unwrap().resolve(&no_params()).unwrap();
    let json = serde_json::to_string(&r).unwrap();
    let back: ResolvedPlaybook = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
}

// === hash ===

#[test]
fn hash_is_sha256_of_the_exact_text() {
    let text = "apiVersion: drcut/v1\nkind: Playbook\nmetadata:\n  name: mini\nspec:\n  service: wallet\n  steps:\n    \
                - id: hello\n      action: hook\n      region: eu-west\n      with: { webhook: \"https://chat.example/hook\" }\n";
    // Computed with `sha256sum` over the same bytes.
    let expected = "759aa784e48515fdb5a1c806cf1581f48c343ba4b9a796dd48190ddaa0fba342";
    assert_eq!(parse(text).unwrap().hash, expected);
    assert_eq!(parse(text).unwrap().hash, expected, "stable across parses");
    // Same meaning, different bytes: a different version.
    let reformatted = text.replace("{ webhook:", "{webhook:");
    assert_ne!(parse(&reformatted).unwrap().hash, expected);
    let r = parse(text).unwrap().resolve(&no_params()).unwrap();
    assert_eq!(r.hash, expected);
}

// === substitution ===

#[test]
fn parameters_substitute_everywhere_and_defaults_apply() {
    let text = format!(
        "{HEADER}    - id: shift
      action: shift_traffic
      region: ${{target}}
      with: {{ dns: \"gslb-${{source}}\", zone: z.example., name: w.z.example., from: [192.0.2.1], to: [198.51.100.1] }}
      gate: {{ region: \"${{target}}\", require: not_down }}
      compensate: {{ action: shift_traffic, region: \"${{source}}\", with: {{ dns: gslb, zone: z.example., name: w.z.example., from: [198.51.100.1], to: [192.0.2.1] }} }}
"
    );
    let pb = parse(&text).unwrap();
    let r = pb.resolve(&BTreeMap::from([("target".to_string(), "us-east".to_string())])).unwrap();
    assert_eq!(r.params, BTreeMap::from([("source".into(), "eu-west".into()), ("target".into(), "us-east".into())]));
    let s = &r.steps[0];
    assert_eq!(s.region.as_deref(), Some("us-east"));
    assert_eq!(s.with["dns"], "gslb-eu-west");
    assert_eq!(s.gate, Some(Gate { region: "us-east".into(), require: Require::NotDown }));
    assert_eq!(s.compensate.as_ref().unwrap().region, "eu-west");
    assert_eq!(s.phases, vec![100], "a shift without phases moves everything at once");
    // Built-in policy where neither step nor defaults say otherwise.
    assert_eq!((s.timeout, s.retries, s.on_failure), (Duration::from_secs(30), 0, OnFailure::Rollback));
}

#[test]
fn resolve_refuses_unknown_missing_and_bad_parameters() {
    let text = HEADER.replace("target: { kind: region, default: eu-central }", "target: { kind: region }") + FREEZE;
    let pb = parse(&text).unwrap();
    let e = pb
        .resolve(&BTreeMap::from([("target".into(), "eu-central".into()), ("tagret".into(), "x".into())]))
        .unwrap_err();
    assert_at(&e, 7, 3, "spec.parameters", "unknown parameter `tagret`");
    let e = pb.resolve(&no_params()).unwrap_err();
    assert_at(&e, 9, 5, "spec.parameters.target", "no default and was not given");
    let e = pb.resolve(&BTreeMap::from([("target".into(), "EU Central".into())])).unwrap_err();
    assert_at(&e, 9, 5, "spec.parameters.target", "not a region name");
    // A refused resolve changes nothing: the same playbook resolves once given good values.
    assert!(pb.resolve(&BTreeMap::from([("target".into(), "eu-central".into())])).is_ok());
}

#[test]
fn a_string_parameter_in_a_region_field_is_rechecked_after_substitution() {
    let text = HEADER.replace(
        "    target: { kind: region, default: eu-central }\n",
        "    where: { kind: string, default: \"Not A Region\" }\n",
    ) + "    - { id: hook, action: hook, region: \"${where}\", with: { exec: [true] } }\n";
    let e = parse(&text).unwrap().resolve(&no_params()).unwrap_err();
    assert_at(&e, 11, col(&text, 11, "\"${where}\""), "spec.steps[0].region", "not a region name");
}

// === validation errors: position and field ===

#[test]
fn error_display_is_file_line_column_field_message() {
    let text = doc(&["    - { id: a, action: teleport, region: eu-west }\n"]);
    let e = refused(&text);
    assert_eq!(e.to_string(), format!("t.yaml:11:{}: spec.steps[0].action: {}", col(&text, 11, "teleport"), e.message));
    assert!(e.message.contains("unknown action \"teleport\"") && e.message.contains("promote_db"));
}

#[test]
fn yaml_syntax_errors_have_their_position() {
    let text = doc(&["    - id: a\n      action: hook: x\n"]);
    let e = refused(&text);
    assert_eq!((e.line, e.field.as_str()), (12, "(yaml)"), "{e}");
    assert!(e.column >= col(&text, 12, "hook"), "{e}");

    let text = doc(&["    - id: a\n      action: hook\n      action: smoke\n"]);
    assert_at(&refused(&text), 13, 7, "(yaml)", "duplicate key `action` (first at line 12)");

    let e = refused("- just\n- a list\n");
    assert_eq!((e.line, e.column, e.field.as_str()), (1, 1, "(yaml)"));
}

#[test]
fn wrong_types_point_at_the_value() {
    let text = doc(&[
        "    - id: a\n      action: hook\n      region: eu-west\n      with: { exec: [true] }\n      retries: two\n",
    ]);
    assert_at(&refused(&text), 15, 16, "spec.steps[0].retries", "expected a number");

    let text = HEADER.replace("  steps:\n", "  approvals: { required: \"1\" }\n  steps:\n") + FREEZE;
    assert_at(&refused(&text), 10, col(&text, 10, "\"1\""), "spec.approvals.required", "invalid type");

    let text = doc(&["    - id: a\n      action: hook\n      region: eu-west\n      with: [exec]\n"]);
    assert_at(&refused(&text), 14, 13, "spec.steps[0].with", "expected a mapping of hook settings");

    let text = doc(&[
        "    - { id: s, action: repoint_clients, region: eu-west, with: { dns: d, zone: z., name: z., answers: [192.0.2.1], ttl: \"${x}\" } }\n",
    ]);
    let e = refused(&text);
    assert_at(&e, 11, col(&text, 11, "\"${x}\""), "spec.steps[0].with.ttl", "invalid type");
    // Unquoted, a reference in a flow mapping is a YAML error; the message says what to do.
    let text = text.replace("ttl: \"${x}\"", "ttl: ${x}");
    let e = refused(&text);
    assert_eq!((e.line, e.field.as_str()), (11, "(yaml)"), "{e}");
    assert!(e.message.contains(r#"quote parameter references: "${name}""#), "{e}");
    let text = doc(&[
        "    - id: s\n      action: repoint_clients\n      region: eu-west\n      with:\n        dns: d\n        zone: z.\n        name: z.\n        answers: [192.0.2.1]\n        ttl: ${x}\n",
    ]);
    assert_at(&refused(&text), 19, 14, "spec.steps[0].with.ttl", "only stand for text settings");
}

#[test]
fn unknown_fields_point_at_the_key() {
    let text = doc(&["    - id: a\n      action: hook\n      region: eu-west\n      timout: 10s\n"]);
    assert_at(&refused(&text), 14, 7, "spec.steps[0].timout", "unknown field `timout`");

    let text = HEADER.replace("  name: t\n", "  name: t\n  labels: x\n") + FREEZE;
    assert_at(&refused(&text), 5, 3, "metadata.labels", "unknown field `labels`");

    let text = format!("{}status: done\n", doc(&[FREEZE]));
    assert_at(&refused(&text), 12, 1, "status", "unknown field `status`");

    let text = HEADER.replace("  steps:\n", "  targets: { rpo: 0 }\n  steps:\n") + FREEZE;
    assert_at(
        &refused(&text),
        10,
        col(&text, 10, "rpo"),
        "spec.targets.rpo",
        "expected one of: rpo_seconds, rto_seconds",
    );

    let text = doc(&["    - { id: f, action: freeze_writes, region: eu-west, with: { database: db, table: t } }\n"]);
    assert_at(&refused(&text), 11, col(&text, 11, "table"), "spec.steps[0].with.table", "unknown field `table`");

    let text = doc(&[
        "    - id: s\n      action: shift_traffic\n      region: eu-west\n      with:\n        dns: d\n        zone: z.\n        name: z.\n        from: [192.0.2.1]\n        to: [192.0.2.2]\n        verify: { queries: 5, tolrance: 0.1 }\n",
    ]);
    assert_at(&refused(&text), 20, col(&text, 20, "tolrance"), "spec.steps[0].with.verify.tolrance", "unknown field");
}

#[test]
fn missing_fields_name_the_field_and_point_at_its_mapping() {
    let text =
        doc(&["    - { id: f, action: freeze_writes, region: eu-west, with: { maintenance_url: \"https://m\" } }\n"]);
    let with_col = col(&text, 11, "{ maintenance_url");
    assert_at(&refused(&text), 11, with_col, "spec.steps[0].with.database", "missing");

    let text = doc(&["    - id: p\n      action: promote_db\n      region: eu-west\n"]);
    assert_at(&refused(&text), 11, 7, "spec.steps[0].with.database", "missing");

    let text = doc(&["    - id: p\n      action: promote_db\n      with: { database: db }\n"]);
    assert_at(&refused(&text), 11, 7, "spec.steps[0].region", "missing: the region");

    let text = "apiVersion: drcut/v1\nkind: Playbook\nmetadata: { name: t }\nspec:\n  service: wallet\n";
    assert_at(&refused(text), 5, 3, "spec.steps", "missing");
}

#[test]
fn api_version_kind_and_names_are_checked() {
    let text = doc(&[FREEZE]).replace("drcut/v1", "drcut/v2");
    assert_at(&refused(&text), 1, 13, "apiVersion", "not supported");
    let text = doc(&[FREEZE]).replace("kind: Playbook", "kind: Drill");
    assert_at(&refused(&text), 2, 7, "kind", "expected Playbook");
    let text = doc(&[FREEZE]).replace("name: t", "name: Wallet_Cutover");
    assert_at(&refused(&text), 4, 9, "metadata.name", "not a valid name");
    let text = doc(&[FREEZE]).replace("service: wallet", "service: -wallet");
    assert_at(&refused(&text), 6, 12, "spec.service", "not a valid name");
    let text = doc(&[&FREEZE.replace("id: freeze", "id: Freeze")]);
    assert_at(&refused(&text), 11, col(&text, 11, "Freeze"), "spec.steps[0].id", "not a valid name");
    let text = doc(&[&FREEZE.replace("with: { database: db }", "with: { database: \"wallet db\" }")]);
    assert_at(
        &refused(&text),
        11,
        col(&text, 11, "\"wallet db\""),
        "spec.steps[0].with.database",
        "not a resource name",
    );
}

#[test]
fn duplicate_step_ids_point_at_the_second() {
    let text = doc(&[FREEZE, WAIT, &FREEZE.replace("freeze_writes", "hook").replace("database: db", "exec: [x]")]);
    assert_at(
        &refused(&text),
        13,
        col(&text, 13, "freeze"),
        "spec.steps[2].id",
        "duplicate step id \"freeze\" (first used at line 11)",
    );
}

#[test]
fn undefined_and_malformed_parameter_references() {
    let text = doc(&["    - id: a\n      action: hook\n      region: ${nope}\n      with: { exec: [x] }\n"]);
    assert_at(
        &refused(&text),
        13,
        15,
        "spec.steps[0].region",
        "`${nope}` refers to an undefined parameter; spec.parameters defines: source, target",
    );

    let text = doc(&["    - { id: a, action: freeze_writes, region: eu-west, with: { database: \"${db\" } }\n"]);
    assert_at(&refused(&text), 11, col(&text, 11, "\"${db\""), "spec.steps[0].with.database", "unterminated");

    let text = HEADER.replace("  steps:\n", "  preconditions: { target_region: \"${targte}\" }\n  steps:\n") + FREEZE;
    assert_at(
        &refused(&text),
        10,
        col(&text, 10, "\"${targte}\""),
        "spec.preconditions.target_region",
        "undefined parameter",
    );

    let text = doc(&[
        FREEZE,
        WAIT,
        PROMOTE,
        "    - id: s\n      action: shift_traffic\n      region: eu-central\n      with: { dns: d, zone: z., name: z., from: [192.0.2.1], to: [192.0.2.2] }\n      gate: { region: \"${x}\", require: up }\n",
    ]);
    assert_at(
        &refused(&text),
        18,
        col(&text, 18, "\"${x}\""),
        "spec.steps[3].gate.region",
        "`${x}` refers to an undefined",
    );
}

#[test]
fn unknown_actions_are_refused_in_steps_and_compensations() {
    let text = doc(&["    - { id: a, action: promote, region: eu-west, with: { database: db } }\n"]);
    assert_at(&refused(&text), 11, col(&text, 11, "promote,"), "spec.steps[0].action", "unknown action \"promote\"");
    let text = doc(&[
        "    - id: f\n      action: freeze_writes\n      region: eu-west\n      with: { database: db }\n      compensate: { action: thaw, region: eu-west }\n",
    ]);
    assert_at(
        &refused(&text),
        15,
        col(&text, 15, "thaw"),
        "spec.steps[0].compensate.action",
        "unknown action \"thaw\"",
    );
    let text = doc(&[
        FREEZE,
        WAIT,
        "    - id: p\n      action: promote_db\n      region: eu-central\n      with: { database: db }\n      compensate: { action: hook, region: eu-west, with: { exec: [x] } }\n",
    ]);
    assert_at(&refused(&text), 17, 7, "spec.steps[2].compensate", "nothing a rollback could undo");
}

#[test]
fn phases_must_increase_strictly_and_end_at_100() {
    let shift =
        |phases: &str| doc(&[FREEZE, WAIT, PROMOTE, &SHIFT.replace(" } }\n", &format!(" }}, phases: {phases} }}\n"))]);
    let text = shift("[5, 50, 25, 100]");
    assert_at(
        &refused(&text),
        14,
        col(&text, 14, "25, 100"),
        "spec.steps[3].phases[2]",
        "strictly increasing: 25 follows 50",
    );
    let text = shift("[5, 50]");
    assert_at(&refused(&text), 14, col(&text, 14, "50]"), "spec.steps[3].phases[1]", "last phase must be 100");
    let text = shift("[0, 100]");
    assert_at(&refused(&text), 14, col(&text, 14, "0, 100"), "spec.steps[3].phases[0]", "not a percentage in 1..=100");
    let text = shift("[50, 150]");
    assert_at(&refused(&text), 14, col(&text, 14, "150"), "spec.steps[3].phases[1]", "not a percentage");
    let text = shift("[]");
    assert_at(&refused(&text), 14, col(&text, 14, "[]"), "spec.steps[3].phases", "at least one phase");
    assert!(parse(&shift("[5, 25, 50, 100]")).is_ok());
}

#[test]
fn phases_dwell_and_gate_belong_to_shift_traffic_only() {
    for (key, value) in [("phases", "[50, 100]"), ("dwell", "30s"), ("gate", "{ region: eu-west, require: up }")] {
        let text = doc(&[&FREEZE.replace(" } }\n", &format!(" }}, {key}: {value} }}\n"))]);
        assert_at(
            &refused(&text),
            11,
            col(&text, 11, &format!("{key}:")),
            &format!("spec.steps[0].{key}"),
            "shift_traffic steps only",
        );
    }
}

#[test]
fn impossible_orders_are_refused_at_the_offending_step() {
    let action_col = |text: &str, line: usize| col(text, line, "action:") + "action: ".len();

    let text = doc(&[PROMOTE]);
    assert_at(&refused(&text), 11, action_col(&text, 11), "spec.steps[0].action", "promote before freeze");
    let text = doc(&[FREEZE, PROMOTE]);
    assert_at(&refused(&text), 12, action_col(&text, 12), "spec.steps[1].action", "promote before wait_replication");
    let text = doc(&[WAIT, FREEZE, PROMOTE]);
    assert_at(
        &refused(&text),
        11,
        action_col(&text, 11),
        "spec.steps[0].action",
        "wait_replication before any freeze_writes",
    );
    let text = doc(&[FREEZE, WAIT, PROMOTE, FENCE]);
    assert_at(&refused(&text), 14, action_col(&text, 14), "spec.steps[3].action", "fence after promote_db");
    let text = doc(&[FREEZE, UNFREEZE, WAIT, PROMOTE]);
    assert_at(&refused(&text), 12, action_col(&text, 12), "spec.steps[1].action", "unfreeze_writes before promote_db");
    let text = doc(&[FREEZE, WAIT, SHIFT, PROMOTE]);
    assert_at(&refused(&text), 13, action_col(&text, 13), "spec.steps[2].action", "before its database is promoted");
    let repoint = "    - { id: repoint, action: repoint_clients, region: eu-central, with: { dns: d, zone: z., name: db.z., answers: [198.51.100.2] } }\n";
    let text = doc(&[FREEZE, repoint, WAIT, PROMOTE]);
    assert_at(&refused(&text), 12, action_col(&text, 12), "spec.steps[1].action", "before its database is promoted");
    let text = doc(&[FREEZE, WAIT, PROMOTE, &PROMOTE.replace("id: promote", "id: again")]);
    assert_at(&refused(&text), 14, action_col(&text, 14), "spec.steps[3].action", "promotes once");

    // Without a promotion, freeze/unfreeze and traffic moves are free (e.g. a maintenance drill).
    assert!(parse(&doc(&[FREEZE, UNFREEZE, SHIFT])).is_ok());
    // The design's order is accepted.
    assert!(parse(&doc(&[FREEZE, WAIT, FENCE, PROMOTE, UNFREEZE, SHIFT])).is_ok());
}

#[test]
fn with_settings_are_checked_per_action() {
    let one = |step: &str| doc(&[step]);
    let text = one("    - { id: h, action: hook, region: eu-west, with: { exec: [x], webhook: \"https://h\" } }\n");
    assert_at(&refused(&text), 11, col(&text, 11, "webhook"), "spec.steps[0].with.webhook", "not both");
    let text = one("    - { id: h, action: hook, region: eu-west, with: {} }\n");
    assert_at(&refused(&text), 11, col(&text, 11, "{}"), "spec.steps[0].with", "give exec");
    let text = one("    - { id: w, action: smoke, region: eu-west, with: { http: api, paths: [/a, b] } }\n");
    assert_at(&refused(&text), 11, col(&text, 11, "b]"), "spec.steps[0].with.paths[1]", "must start with '/'");
    let text = one("    - { id: w, action: warm_caches, region: eu-west, with: { http: api } }\n");
    assert_at(&refused(&text), 11, col(&text, 11, "{ http"), "spec.steps[0].with.paths", "missing");
    let text = one("    - { id: w, action: fence, region: eu-west, with: { database: db, mode: halt } }\n");
    assert_at(&refused(&text), 11, col(&text, 11, "halt"), "spec.steps[0].with.mode", "unknown variant `halt`");
    let text = one("    - { id: w, action: fence, region: eu-west, with: { database: db, hook: { exec: [x] } } }\n");
    assert_at(&refused(&text), 11, col(&text, 11, "hook"), "spec.steps[0].with.hook", "not both");
    let text = one("    - { id: w, action: fence, region: eu-west, with: { mode: stop } }\n");
    assert_at(&refused(&text), 11, col(&text, 11, "{ mode"), "spec.steps[0].with", "give database");
    let text = one("    - { id: w, action: fence, region: eu-west, with: { hook: { exec: [] } } }\n");
    assert_at(&refused(&text), 11, col(&text, 11, "[]"), "spec.steps[0].with.hook.exec", "program");
    let r = parse(&one("    - { id: h, action: hook, region: eu-west, with: { webhook: \"https://x.example/p\", body: { page: sre, n: 2 } } }\n"))
        .unwrap()
        .resolve(&no_params())
        .unwrap();
    assert_eq!(r.steps[0].with["body"], serde_json::json!({"page": "sre", "n": 2}));
    let text = one("    - { id: h, action: hook, region: eu-west, with: { exec: [x], body: {} } }\n");
    assert_at(&refused(&text), 11, col(&text, 11, "body"), "spec.steps[0].with.body", "goes with webhook");
    let text = one("    - { id: w, action: rebuild_standby, region: eu-west, with: { database: db, upstream: db } }\n");
    assert_at(&refused(&text), 11, col(&text, 11, "db }"), "spec.steps[0].with.upstream", "another database");
    let text = doc(&[FREEZE, WAIT, PROMOTE, &SHIFT.replace("198.51.100.1", "198.51.100.256")]);
    assert_at(&refused(&text), 14, col(&text, 14, "198.51.100.256"), "spec.steps[3].with.to[0]", "not an IP address");
    let text = doc(&[FREEZE, WAIT, PROMOTE, &SHIFT.replace("name: w.z.example.", "name: w.other.example.")]);
    assert_at(&refused(&text), 14, col(&text, 14, "w.other"), "spec.steps[3].with.name", "not inside zone");
    let text = one("    - { id: a, action: approval, region: eu-west }\n");
    assert_at(&refused(&text), 11, col(&text, 11, "eu-west"), "spec.steps[0].region", "remove region");
    let r = parse(&one("    - { id: a, action: approval, with: { message: go? }, timeout: 1h }\n"))
        .unwrap()
        .resolve(&no_params())
        .unwrap();
    assert_eq!((r.steps[0].region.as_ref(), r.steps[0].timeout), (None, Duration::from_secs(3600)));
    // A person answers: the defaults sized for agents do not apply, and nothing is retried.
    let text = HEADER.replace(
        "  steps:
",
        "  defaults: { timeout: 30s, retries: 3 }
  steps:
",
    ) + "    - { id: a, action: approval }\n    - { id: b, action: approval, timeout: 10m }\n";
    let r = parse(&text).unwrap().resolve(&no_params()).unwrap();
    let got: Vec<_> = r.steps.iter().map(|s| (s.timeout, s.retries)).collect();
    assert_eq!(got, vec![(Duration::from_secs(3600), 0), (Duration::from_secs(600), 0)]);
    let text = one("    - { id: a, action: approval, retries: 2 }\n");
    assert_at(&refused(&text), 11, col(&text, 11, "2 }"), "spec.steps[0].retries", "not retried");
}

#[test]
fn durations_and_policies_are_checked() {
    let text = doc(&[&FREEZE.replace(" } }\n", " }, timeout: 10 }\n")]);
    assert_at(&refused(&text), 11, col(&text, 11, "10 }"), "spec.steps[0].timeout", "not a duration");
    let text = doc(&[&FREEZE.replace(" } }\n", " }, timeout: 0s }\n")]);
    assert_at(&refused(&text), 11, col(&text, 11, "0s"), "spec.steps[0].timeout", "longer than 0");
    let text = doc(&[&FREEZE.replace(" } }\n", " }, on_failure: retry }\n")]);
    assert_at(&refused(&text), 11, col(&text, 11, "retry"), "spec.steps[0].on_failure", "unknown variant `retry`");
    let text = HEADER.replace("  steps:\n", "  defaults: { retry_backoff: soon }\n  steps:\n") + FREEZE;
    assert_at(&refused(&text), 10, col(&text, 10, "soon"), "spec.defaults.retry_backoff", "not a duration");
}

#[test]
fn unknown_regions_are_refused_where_they_are_named() {
    let text = doc(&[FREEZE, "    - { id: h, action: hook, region: \"${target}\", with: { exec: [x] } }\n"]);
    let pb = parse(&text).unwrap();
    let known = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let e = validate_regions(&pb, &no_params(), &known(&["eu-west"])).unwrap_err();
    assert_at(
        &e,
        12,
        col(&text, 12, "\"${target}\""),
        "spec.steps[1].region",
        "unknown region \"eu-central\" (from ${target})",
    );
    let e = validate_regions(&pb, &no_params(), &known(&["eu-central"])).unwrap_err();
    assert_at(&e, 11, col(&text, 11, "eu-west"), "spec.steps[0].region", "known regions: eu-central");
    // An unused region parameter with a typo is caught at its declaration.
    let params = BTreeMap::from([("source".to_string(), "eu-wset".to_string())]);
    let e = validate_regions(
        &parse(&doc(&[&FREEZE.replace("eu-west", "eu-central")])).unwrap(),
        &params,
        &known(&["eu-west", "eu-central"]),
    )
    .unwrap_err();
    assert_at(&e, 8, 5, "spec.parameters.source", "unknown region \"eu-wset\"");
    assert!(validate_regions(&pb, &no_params(), &known(&["eu-west", "eu-central"])).is_ok());
}

// === plan ===

#[test]
fn plan_mentions_every_step_and_the_point_of_no_return() {
    let r = Playbook::parse("x", EXAMPLE).unwrap().resolve(&no_params()).unwrap();
    let plan = plan_text(&r);
    for s in &r.steps {
        let line = plan.lines().find(|l| l.contains(&format!(" {} [{}", s.id, s.action))).unwrap_or_else(|| {
            panic!("plan lacks step {}:\n{plan}", s.id);
        });
        assert!(line.contains(s.region.as_deref().unwrap()), "{line}");
    }
    let ponr = plan.find("POINT OF NO RETURN").expect("marked");
    assert!(plan.find("promote [promote_db").unwrap() > ponr);
    assert!(plan.find("fence-source [fence").unwrap() < ponr);
    for expected in [
        "1 approver(s) other than the requester",
        "eu-central is up",
        "replication lag ≤ 5s",
        "RPO 0s, RTO 120s",
        "phases 5% → 25% → 50% → 100%; after each: dwell 30s, then gate: eu-central must be up",
        "compensation: unfreeze_writes @ eu-west database=wallet-db",
        "timeout 10s, retries 2 (backoff 500ms), on failure: rollback",
        "on failure: pause",
        "paths=/api/login,/api/spin,/api/deposit,/api/withdrawal",
    ] {
        assert!(plan.contains(expected), "plan lacks {expected:?}:\n{plan}");
    }
}

// === unplanned failover ===

const FAILOVER: &str = "  failover:\n    source: ${source}\n    target: ${target}\n";

fn with_failover(extra: &str, steps: &[&str]) -> String {
    doc(steps).replace("  steps:\n", &format!("{FAILOVER}{extra}  steps:\n"))
}

#[test]
fn failover_block_resolves_with_defaults_and_automatic_policy() {
    let stonith = "    - { id: stonith, action: fence, region: eu-central, when: unplanned, with: { hook: { exec: [/bin/true] } } }\n";
    let text = with_failover(
        "    automatic: { enabled: true, cooldown: 10m }\n    accept_loss: { bytes: 1024 }\n",
        &[FREEZE, WAIT, stonith, FENCE, PROMOTE],
    );
    let r = parse(&text).unwrap().resolve(&no_params()).unwrap();
    let f = r.failover.clone().unwrap();
    assert_eq!((f.source.as_str(), f.target.as_str()), ("eu-west", "eu-central"));
    assert_eq!(f.accept_loss, LossBudget { bytes: 1024, seconds: 0 });
    assert_eq!(f.automatic, Some(Automatic { enabled: true, cooldown: Duration::from_secs(600) }));
    assert_eq!(r.steps[2].when, When::Unplanned);
    // Without accept_loss the RPO target is the budget.
    let text =
        with_failover("", &[FREEZE, WAIT, PROMOTE]).replace("  steps:\n", "  targets: { rpo_seconds: 5 }\n  steps:\n");
    let r = parse(&text).unwrap().resolve(&no_params()).unwrap();
    assert_eq!(r.failover.unwrap().accept_loss, LossBudget { bytes: 0, seconds: 5 });
}

#[test]
fn failover_block_errors_name_the_field() {
    let text = with_failover("    automatic: { enabled: true, cooldown: 0s }\n", &[FREEZE, WAIT, PROMOTE]);
    let e = refused(&text);
    assert_eq!(e.field, "spec.failover.automatic.cooldown", "{e}");
    assert!(e.message.contains("flapping"), "{e}");
    let text = doc(&[FREEZE, WAIT, PROMOTE])
        .replace("  steps:\n", "  failover: { source: eu-west, target: eu-west }\n  steps:\n");
    assert_eq!(refused(&text).field, "spec.failover.target");
    let text = with_failover("    automatic: { enabled: true, colldown: 1m }\n", &[FREEZE, WAIT, PROMOTE]);
    assert!(refused(&text).message.contains("colldown"));
    let text = doc(&["    - { id: s, action: smoke, region: eu-west, when: unplanned, with: { urls: [http://x] } }\n"]);
    assert_at(&refused(&text), 11, col(&text, 11, "unplanned"), "spec.steps[0].when", "spec.failover");
    let text = doc(&[FREEZE, WAIT, PROMOTE])
        .replace("  steps:\n", "  failover: { source: eu-west, target: \"${nope}\" }\n  steps:\n");
    assert!(refused(&text).message.contains("undefined parameter"));
}

#[test]
fn smoke_expect_status_is_one_status_or_a_list_and_always_a_list_for_the_agent() {
    let statuses = |text: &str| {
        let pb = Playbook::parse("p.yaml", text).unwrap();
        let known = vec!["eu-west".to_string(), "eu-central".to_string()];
        let r = validate_regions(&pb, &no_params(), &known).unwrap();
        r.steps.iter().find(|s| s.action == Action::Smoke).unwrap().with["expect_status"].clone()
    };
    assert_eq!(statuses(EXAMPLE), serde_json::json!([200]));
    assert_eq!(
        statuses(&EXAMPLE.replace("expect_status: 200", "expect_status: [200, 204]")),
        serde_json::json!([200, 204])
    );
    for bad in ["expect_status: 99", "expect_status: []", "expect_status: [200, 700]", "expect_status: ok"] {
        let e = Playbook::parse("p.yaml", &EXAMPLE.replace("expect_status: 200", bad)).unwrap_err();
        assert_eq!(e.field, "spec.steps[9].with.expect_status", "{bad}: {e}");
    }
}
