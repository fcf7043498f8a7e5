//! Drill files: the shipped examples, and every refusal pointing at its file, line, column and
//! field.

use super::*;
use std::collections::BTreeSet;

const REGION_LOSS: &str = include_str!("../../../gameday/quarterly-region-loss.yaml");

/// A minimal valid drill; line numbers below refer to it (`spec:` on line 6, faults from 11).
const BASE: &str = "apiVersion: drcut/v1
kind: Drill
metadata:
  name: t
  owner: sre
spec:
  service: wallet
  hypothesis: it holds
  target: { region: eu-west }
  faults:
    - { id: f1, region: eu-west, type: postgres_stop, database: wallet-db }
  response: { observe: 2m }
";

fn parse(text: &str) -> Result<(Drill, String), DrillError> {
    Drill::parse("t.yaml", text)
}

fn refused(text: &str) -> DrillError {
    match parse(text) {
        Ok((d, _)) => panic!("the drill should be refused: {d:?}"),
        Err(e) => e,
    }
}

/// 1-based column of `needle` on 1-based `line` of `text` (the node an error must point at).
fn col(text: &str, line: usize, needle: &str) -> usize {
    let l = text.lines().nth(line - 1).expect("line exists");
    l.find(needle).unwrap_or_else(|| panic!("{needle:?} not on line {line}: {l:?}")) + 1
}

#[track_caller]
fn assert_at(e: &DrillError, line: usize, column: usize, field: &str, message_part: &str) {
    assert_eq!(
        (e.file.as_str(), e.line, e.column, e.field.as_str()),
        ("t.yaml", line, column, field),
        "wrong position or field: {e}"
    );
    assert!(e.message.contains(message_part), "message {:?} lacks {message_part:?}", e.message);
}

/// BASE with `old` replaced by `new` (exactly once).
fn edit(old: &str, new: &str) -> String {
    assert_eq!(BASE.matches(old).count(), 1, "{old:?} must occur once in BASE");
    BASE.replacen(old, new, 1)
}

/// BASE with `lines` appended under `spec:`.
fn with(lines: &str) -> String {
    format!("{BASE}{lines}")
}

// === the shipped examples ===

#[test]
fn every_gameday_example_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../gameday");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let (d, hash) = Drill::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(hash, super::hash(&std::fs::read_to_string(&path).unwrap()));
            assert_eq!(path.file_stem().unwrap().to_str(), Some(d.name.as_str()), "file named after the drill");
            names.push(d.name);
        }
    }
    names.sort();
    assert_eq!(names, ["game-provider-latency", "psp-outage", "quarterly-region-loss"]);
}

#[test]
fn quarterly_region_loss_reads_as_written() {
    let (d, hash) = Drill::parse("quarterly-region-loss.yaml", REGION_LOSS).unwrap();
    assert_eq!(hash.len(), 64);
    assert_eq!(
        (d.name.as_str(), d.owner.as_str(), d.target_region.as_str()),
        ("quarterly-region-loss", "platform-sre", "eu-west")
    );
    let s = d.schedule.as_ref().unwrap();
    assert_eq!(
        (s.timezone.as_str(), s.start_tolerance_ms, s.missed, s.enabled),
        ("Europe/Dublin", 900_000, MissedPolicy::Skip, true)
    );
    assert_eq!(d.deadline_ms, 30 * 60_000);
    assert_eq!(d.lost_coordinator_ms, 30_000);
    assert_eq!(d.faults.len(), 1);
    assert_eq!(d.faults[0].kind, FaultKind::PostgresStop { database: "wallet-db".into() });
    assert_eq!(d.faults[0].duration_ms, None);
    let Response::Playbook { playbook, params, unplanned, start } = &d.response else { panic!("{:?}", d.response) };
    assert_eq!((playbook.as_str(), *unplanned, *start), ("wallet-region-cutover", true, ResponseStart::OnDown));
    // The parameter names of playbooks/wallet-region-cutover.yaml.
    let keys: Vec<_> = params.keys().map(String::as_str).collect();
    assert_eq!(keys, ["source", "source_app", "target", "target_app", "target_db"]);
    assert_eq!(
        (d.expect.detection_ms, d.expect.rto_ms, d.expect.rpo_rows, d.expect.failover),
        (Some(5_000), Some(30_000), Some(0), Some(true))
    );
    assert_eq!(d.expect.integrity[0].expect, "0");
    let c = d.canary.as_ref().unwrap();
    assert_eq!(
        (c.table.as_str(), c.interval_ms, c.password_env.as_deref()),
        ("drcut_canary", 100, Some("DRCUT_CANARY_PASSWORD"))
    );
    assert_eq!(d.restore.playbook.as_deref(), Some("wallet-region-failback"));
    assert_eq!(d.restore.params["source"], "eu-central");
    assert_eq!(d.restore.timeout_ms, 15 * 60_000);
    assert!(d.guardrails.iter().all(|g| g.probe.region == "eu-central"));
    assert_eq!(d.preflight.max_lag_seconds, Some(5.0));
    assert_eq!(d.report.trend_runs, 4);
    // The drill is what a run pins: it survives the replicated state's JSON.
    let back: Drill = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
    assert_eq!(back, d);
}

#[test]
fn proxy_faults_are_read_into_the_agents_format() {
    let psp = include_str!("../../../gameday/psp-outage.yaml");
    let (d, _) = Drill::parse("psp-outage.yaml", psp).unwrap();
    assert_eq!(d.response, Response::None { observe_ms: 120_000 });
    assert_eq!(d.expect.failover, Some(false));
    assert_eq!(d.faults[0].duration_ms, Some(120_000));
    assert_eq!(
        serde_json::to_value(&d.faults[0].kind).unwrap(),
        serde_json::json!({ "type": "proxy", "proxy": "psp", "mode": "blackhole" })
    );
    let slow = include_str!("../../../gameday/game-provider-latency.yaml");
    let (d, _) = Drill::parse("game-provider-latency.yaml", slow).unwrap();
    assert_eq!(
        serde_json::to_value(&d.faults[0].kind).unwrap(),
        serde_json::json!({ "type": "proxy", "proxy": "game-provider", "mode": "latency", "latency_ms": 800, "jitter_ms": 200 })
    );
    assert!(d.schedule.is_none());
}

#[test]
fn defaults_apply_where_the_file_says_nothing() {
    let (d, _) = parse(BASE).unwrap();
    assert_eq!((d.deadline_ms, d.lost_coordinator_ms), (3_600_000, 30_000));
    assert!(d.schedule.is_none() && d.canary.is_none() && d.steady_state.is_empty() && d.guardrails.is_empty());
    assert_eq!(d.restore, Restore { playbook: None, params: Default::default(), timeout_ms: 15 * 60_000 });
    assert_eq!(d.report.trend_runs, 4);
    assert_eq!(d.preflight.max_lag_seconds, None);
    let (d, _) = parse(&with(
        "  schedule: { rrule: \"FREQ=DAILY;BYHOUR=3;BYMINUTE=0;BYSECOND=0\", timezone: UTC }\n\
         \x20 canary: { dsn: host=127.0.0.1 dbname=wallet }\n\
         \x20 guardrails: [ { name: g, region: eu-central } ]\n",
    ))
    .unwrap();
    let s = d.schedule.unwrap();
    assert_eq!(
        (s.start_tolerance_ms, s.missed, s.late_limit_ms, s.enabled),
        (900_000, MissedPolicy::Skip, 86_400_000, true)
    );
    let c = d.canary.unwrap();
    assert_eq!((c.table.as_str(), c.interval_ms, c.password_env), ("drcut_canary", 100, None));
    assert_eq!((d.guardrails[0].probe.require, d.guardrails[0].for_ms), (Require::Up, 0));
}

#[test]
fn error_display_is_file_line_column_field_message() {
    let e = refused(&edit("type: postgres_stop", "type: postgres_stopp"));
    assert_eq!(
        e.to_string(),
        format!(
            "t.yaml:11:{}: spec.faults[0].type: unknown fault type \"postgres_stopp\"; the types are: postgres_stop, \
             process_kill, proxy, dns, exec",
            col(BASE, 11, "postgres_stop")
        )
    );
}

// === refusals ===

#[test]
fn unknown_keys_point_at_the_key() {
    let e = refused(&edit("  hypothesis: it holds\n", "  hypothesis: it holds\n  hypothesys: typo\n"));
    assert_at(&e, 9, 3, "spec.hypothesys", "unknown field `hypothesys`");
    let t = edit("database: wallet-db }", "database: wallet-db, colour: red }");
    assert_at(&refused(&t), 11, col(&t, 11, "colour"), "spec.faults[0].colour", "unknown field `colour`");
    let t = with("  schedule:\n    rrule: FREQ=DAILY;BYHOUR=3\n    timezone: UTC\n    every: day\n");
    assert_at(&refused(&t), 16, 5, "spec.schedule.every", "unknown field `every`");
}

#[test]
fn yaml_errors_have_their_position() {
    let e = refused(&edit("  service: wallet\n", "  service: wallet\n  service: casino\n"));
    assert_at(&e, 8, 3, "(yaml)", "duplicate key `service` (first at line 7)");
    let e = refused("- a\n- b\n");
    assert_eq!(e.field, "(yaml)");
    assert!(e.message.contains("a drill is a YAML mapping"), "{e}");
}

#[test]
fn missing_required_fields_are_named() {
    let e = refused(&edit("  owner: sre\n", ""));
    assert_eq!(e.field, "metadata.owner");
    assert!(e.message.contains("missing"), "{e}");
    let e = refused(&edit("  response: { observe: 2m }\n", ""));
    assert_eq!(e.field, "spec.response");
    let e = refused(&edit("  owner: sre\n", "  owner: \" \"\n"));
    assert_at(&e, 5, 10, "metadata.owner", "empty");
}

#[test]
fn api_version_kind_and_names_are_checked() {
    let e = refused(&edit("drcut/v1", "drcut/v2"));
    assert_at(&e, 1, 13, "apiVersion", "\"drcut/v2\" is not supported; this coordinator reads drcut/v1");
    let e = refused(&edit("kind: Drill", "kind: Playbook"));
    assert_at(&e, 2, 7, "kind", "\"Playbook\" is not a drill; expected Drill");
    let e = refused(&edit("name: t", "name: Quarterly_Drill"));
    assert_at(&e, 4, 9, "metadata.name", "\"Quarterly_Drill\" is not a valid name");
    assert!(!e.message.starts_with("metadata.name"), "the field is not repeated: {e}");
    let e = refused(&edit("service: wallet", "service: -wallet"));
    assert_at(&e, 7, 12, "spec.service", "is not a valid name");
    let e = refused(&edit("region: eu-west, type", "region: EU-West, type"));
    assert_at(&e, 11, col(BASE, 11, "eu-west"), "spec.faults[0].region", "\"EU-West\" is not a valid name");
    let e = refused(&with("  steady_state: [ { region: eu_central } ]\n"));
    assert_at(&e, 13, 29, "spec.steady_state[0].region", "is not a valid name");
    let e = refused(&with("  guardrails: [ { name: g, region: eu-central, vantage: \"eu north\" } ]\n"));
    assert_eq!(e.field, "spec.guardrails[0].vantage");
    let e = refused(&with("  steady_state: [ { region: eu-central, vantage: \"\" } ]\n"));
    assert_eq!(e.field, "spec.steady_state[0].vantage");
}

#[test]
fn schedule_errors_point_at_their_field() {
    let sched = |body: &str| with(&format!("  schedule:\n{body}"));
    let t = sched("    rrule: FREQ=FORTNIGHTLY;BYHOUR=3\n    timezone: UTC\n");
    assert_at(&refused(&t), 14, 12, "spec.schedule.rrule", "FREQ=FORTNIGHTLY");
    let t = sched("    rrule: FREQ=DAILY;BYHOUR=3\n    timezone: Europe/Dubllin\n");
    assert_at(&refused(&t), 15, 15, "spec.schedule.timezone", "\"Europe/Dubllin\" is not an IANA time zone name");
    let t = sched("    rrule: FREQ=DAILY;BYHOUR=3\n    timezone: UTC\n    blackout: [2027-12-28, 2027-13-01]\n");
    assert_at(&refused(&t), 16, col(&t, 16, "2027-13"), "spec.schedule.blackout[1]", "\"2027-13-01\" is not a date");
    let t = sched("    rrule: FREQ=DAILY;BYHOUR=3\n    timezone: UTC\n    start: 2027-01-01\n");
    assert_at(&refused(&t), 16, 12, "spec.schedule.start", "is not a local date-time");
    let t = sched(
        "    rrule: FREQ=DAILY;BYHOUR=1;BYMINUTE=30\n    timezone: Europe/Dublin\n    start: 2027-03-28T01:30:00\n",
    );
    assert_at(&refused(&t), 16, 12, "spec.schedule.start", "does not exist in Europe/Dublin");
    let t = sched("    rrule: FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30\n    timezone: UTC\n");
    assert_at(&refused(&t), 14, 12, "spec.schedule.rrule", "never yields an occurrence");
    let t = sched("    rrule: FREQ=DAILY;BYHOUR=3\n    timezone: UTC\n    late_limit: 2h\n");
    assert_at(&refused(&t), 16, 5, "spec.schedule.late_limit", "with `missed: run_late` only");
    let t = sched("    rrule: FREQ=DAILY;BYHOUR=3\n    timezone: UTC\n    missed: run_late\n    late_limit: 5m\n");
    assert_at(&refused(&t), 17, 17, "spec.schedule.late_limit", "shorter than start_tolerance 15m");
    let t = sched("    rrule: FREQ=DAILY;BYHOUR=3\n    timezone: UTC\n    missed: sometimes\n");
    assert_eq!(refused(&t).field, "spec.schedule.missed");
}

#[test]
fn duplicate_fault_ids_point_at_the_second() {
    let t = edit(
        "    - { id: f1, region: eu-west, type: postgres_stop, database: wallet-db }\n",
        "    - { id: f1, region: eu-west, type: postgres_stop, database: wallet-db }\n    - { id: f1, region: eu-west, type: process_kill, process: app }\n",
    );
    assert_at(&refused(&t), 12, 13, "spec.faults[1].id", "duplicate fault id \"f1\" (first used at line 11)");
}

#[test]
fn fault_settings_are_checked_per_type() {
    let fault = |f: &str| edit("{ id: f1, region: eu-west, type: postgres_stop, database: wallet-db }", f);
    // A setting of another type.
    let t = fault("{ id: f1, region: eu-west, type: postgres_stop, database: wallet-db, latency: 5s }");
    assert_at(
        &refused(&t),
        11,
        col(&t, 11, "latency"),
        "spec.faults[0].latency",
        "does not apply to a postgres_stop fault",
    );
    // Missing per-type settings.
    let t = fault("{ id: f1, region: eu-west, type: process_kill }");
    assert_eq!(refused(&t).field, "spec.faults[0].process");
    let t = fault("{ id: f1, region: eu-west, type: proxy, proxy: psp }");
    assert!(refused(&t).message.contains("needs mode"));
    // latency mode without latency; a latency setting in another mode.
    let t = fault("{ id: f1, region: eu-west, type: proxy, proxy: psp, mode: latency }");
    assert_at(&refused(&t), 11, 7, "spec.faults[0].latency", "mode latency needs latency");
    let t = fault("{ id: f1, region: eu-west, type: proxy, proxy: psp, mode: latency, latency: 0ms }");
    assert_at(&refused(&t), 11, col(&t, 11, "0ms"), "spec.faults[0].latency", "needs latency longer than 0");
    let t = fault("{ id: f1, region: eu-west, type: proxy, proxy: psp, mode: blackhole, jitter: 10ms }");
    assert_at(
        &refused(&t),
        11,
        col(&t, 11, "jitter"),
        "spec.faults[0].jitter",
        "applies to mode latency only, not blackhole",
    );
    // partial without 0 < failure_rate ≤ 1.
    let t = fault("{ id: f1, region: eu-west, type: proxy, proxy: psp, mode: partial }");
    assert_eq!(refused(&t).field, "spec.faults[0].failure_rate");
    let t = fault("{ id: f1, region: eu-west, type: proxy, proxy: psp, mode: partial, failure_rate: 1.5 }");
    assert_at(&refused(&t), 11, col(&t, 11, "1.5"), "spec.faults[0].failure_rate", "0 < failure_rate ≤ 1, got 1.5");
    let t = fault("{ id: f1, region: eu-west, type: proxy, proxy: psp, mode: partial, failure_rate: 0 }");
    assert!(refused(&t).message.contains("got 0"));
    let t = fault("{ id: f1, region: eu-west, type: proxy, proxy: psp, mode: partial, failure_rate: 1 }");
    parse(&t).unwrap();
    let t = fault("{ id: f1, region: eu-west, type: proxy, proxy: psp, mode: bandwidth }");
    assert_eq!(refused(&t).field, "spec.faults[0].bytes_per_second");
    let t = fault("{ id: f1, region: eu-west, type: proxy, proxy: psp, mode: bandwidth, bytes_per_second: 65536 }");
    assert_eq!(
        serde_json::to_value(&parse(&t).unwrap().0.faults[0].kind).unwrap(),
        serde_json::json!({ "type": "proxy", "proxy": "psp", "mode": "bandwidth", "bytes_per_second": 65536 })
    );
    let t = fault("{ id: f1, region: eu-west, type: proxy, proxy: psp, mode: slow }");
    let e = refused(&t);
    assert_eq!(e.field, "spec.faults[0].mode");
    assert!(e.message.contains("blackhole"), "{e}");
    // dns name not absolute.
    let t = fault("{ id: f1, region: eu-west, type: dns, proxy: resolver, name: psp.example, answer: servfail }");
    assert_at(&refused(&t), 11, col(&t, 11, "psp.example"), "spec.faults[0].name", "is not an absolute DNS name");
    let t = fault("{ id: f1, region: eu-west, type: dns, proxy: resolver, name: psp.example., answer: refused }");
    assert_eq!(refused(&t).field, "spec.faults[0].answer");
    let t = fault("{ id: f1, region: eu-west, type: dns, proxy: resolver, name: psp.example., answer: nxdomain }");
    let (d, _) = parse(&t).unwrap();
    assert_eq!(
        d.faults[0].kind,
        FaultKind::Dns { proxy: "resolver".into(), name: "psp.example.".into(), answer: DnsAnswer::Nxdomain }
    );
    // exec with an empty argv, or none.
    let t = fault("{ id: f1, region: eu-west, type: exec, inject: [], revert: [/usr/bin/true] }");
    assert_at(&refused(&t), 11, col(&t, 11, "[]"), "spec.faults[0].inject", "empty argv");
    let t = fault("{ id: f1, region: eu-west, type: exec, inject: [\"\"], revert: [/usr/bin/true] }");
    assert_eq!(refused(&t).field, "spec.faults[0].inject");
    let t = fault("{ id: f1, region: eu-west, type: exec, inject: [/usr/bin/true] }");
    assert_eq!(refused(&t).field, "spec.faults[0].revert");
    // Durations.
    let t = fault("{ id: f1, region: eu-west, type: postgres_stop, database: wallet-db, duration: soon }");
    assert_at(&refused(&t), 11, col(&t, 11, "soon"), "spec.faults[0].duration", "is not a duration");
    let t = fault("{ id: f1, region: eu-west, type: postgres_stop, database: wallet-db, duration: 0s }");
    assert!(refused(&t).message.contains("longer than 0"));
}

#[test]
fn the_deadline_must_outlast_every_fault_and_the_observation() {
    let t = edit("database: wallet-db }", "database: wallet-db, duration: 45m }")
        .replace("  faults:", "  deadline: 30m\n  faults:");
    let e = refused(&t);
    assert_at(&e, 10, 13, "spec.deadline", "30m is shorter than fault \"f1\"'s duration 45m");
    let t = edit("observe: 2m", "observe: 2h");
    assert_at(&refused(&t), 12, col(&t, 12, "2h"), "spec.response.observe", "not shorter than the deadline 1h");
    let t = edit("observe: 2m", "observe: 0s");
    assert_at(&refused(&t), 12, col(&t, 12, "0s"), "spec.response.observe", "must be longer than 0");
    let t = edit("  faults:", "  deadline: 0s\n  faults:");
    assert_eq!(refused(&t).field, "spec.deadline");
}

#[test]
fn a_response_is_exactly_one_kind() {
    let t = edit("{ observe: 2m }", "{ playbook: wallet-region-cutover, observe: 2m }");
    assert_at(
        &refused(&t),
        12,
        col(&t, 12, "observe"),
        "spec.response.observe",
        "exactly one of playbook, automatic_failover or observe, not playbook and observe",
    );
    let t = edit("{ observe: 2m }", "{}");
    assert_at(&refused(&t), 12, 13, "spec.response", "give exactly one of");
    let t = edit("{ observe: 2m }", "{ observe: 2m, unplanned: true }");
    assert_at(&refused(&t), 12, col(&t, 12, "unplanned"), "spec.response.unplanned", "playbook response only");
    let t = edit("{ observe: 2m }", "{ automatic_failover: false }");
    assert_eq!(refused(&t).field, "spec.response.automatic_failover");
    let t = edit("{ observe: 2m }", "{ automatic_failover: true }");
    assert_eq!(parse(&t).unwrap().0.response, Response::AutomaticFailover);
    let t = edit("{ observe: 2m }", "{ playbook: wallet-region-cutover, start: soon }");
    assert_eq!(refused(&t).field, "spec.response.start");
    let t = edit("{ observe: 2m }", "{ playbook: wallet-region-cutover }");
    assert_eq!(
        parse(&t).unwrap().0.response,
        Response::Playbook {
            playbook: "wallet-region-cutover".into(),
            params: Default::default(),
            unplanned: false,
            start: ResponseStart::OnDown
        }
    );
}

#[test]
fn canary_secrets_and_identifiers_are_refused() {
    let t = with("  canary: { dsn: host=127.0.0.1 dbname=wallet user=drcut password=hunter2 }\n");
    assert_at(&refused(&t), 13, col(&t, 13, "host"), "spec.canary.dsn", "contains a password");
    let t = with("  canary: { dsn: \"host=127.0.0.1 PASSWORD = hunter2\" }\n");
    assert_eq!(refused(&t).field, "spec.canary.dsn");
    let t = with("  canary: { dsn: \"postgresql://drcut:hunter2@127.0.0.1/wallet\" }\n");
    assert_eq!(refused(&t).field, "spec.canary.dsn");
    let t = with("  canary: { dsn: \"postgresql://drcut@127.0.0.1/wallet?target_session_attrs=read-write\" }\n");
    parse(&t).unwrap();
    let t = with("  canary: { dsn: host=127.0.0.1 passwordless=1 }\n");
    parse(&t).unwrap();
    let t = with("  canary: { dsn: host=127.0.0.1, table: \"canary; DROP TABLE accounts\" }\n");
    assert_eq!(refused(&t).field, "spec.canary.table");
    let t = with("  canary: { dsn: host=127.0.0.1, password_env: canary-pw }\n");
    assert_eq!(refused(&t).field, "spec.canary.password_env");
}

#[test]
fn rpo_and_integrity_need_a_canary() {
    let t = with("  expect: { rpo: 0 }\n");
    assert_at(&refused(&t), 13, col(&t, 13, "0"), "spec.expect.rpo", "RPO is measured by the write canary");
    let t = with("  expect:\n    integrity: [ { name: x, query: SELECT 1, expect: \"1\" } ]\n");
    assert_at(&refused(&t), 14, 16, "spec.expect.integrity", "run through the canary's connection");
    let t = with("  expect: { rpo: 0 }\n  canary: { dsn: host=127.0.0.1 }\n");
    assert_eq!(parse(&t).unwrap().0.expect.rpo_rows, Some(0));
    let t = with("  expect: { failover: true }\n");
    assert_eq!(refused(&t).field, "spec.expect.failover");
}

#[test]
fn restore_params_need_a_playbook() {
    let t = with("  restore: { params: { source: eu-central } }\n");
    assert_eq!(refused(&t).field, "spec.restore.params");
}

// === references ===

#[test]
fn check_refs_names_every_unknown_region_and_playbook() {
    let (d, _) = Drill::parse("quarterly-region-loss.yaml", REGION_LOSS).unwrap();
    let set = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let regions = set(&["eu-west", "eu-central", "eu-north"]);
    let playbooks = set(&["wallet-region-cutover", "wallet-region-failback"]);
    assert_eq!(check_refs(&d, &regions, &playbooks), Vec::<String>::new());
    let problems = check_refs(&d, &set(&["eu-west", "eu-central"]), &set(&["wallet-region-cutover"]));
    assert_eq!(
        problems,
        [
            "spec.guardrails[1].vantage: unknown region \"eu-north\" (have: eu-central, eu-west)",
            "spec.restore.playbook: no stored playbook \"wallet-region-failback\" (have: wallet-region-cutover)",
        ]
    );
    let problems = check_refs(&d, &set(&[]), &set(&[]));
    assert!(
        problems.contains(&"spec.target.region: unknown region \"eu-west\" (have: none)".to_string()),
        "{problems:?}"
    );
    assert!(problems.contains(&"spec.faults[0].region: unknown region \"eu-west\" (have: none)".to_string()));
    assert!(
        problems
            .contains(&"spec.response.playbook: no stored playbook \"wallet-region-cutover\" (have: none)".to_string())
    );
}

// === the plan ===

#[test]
fn plan_shows_schedule_faults_guardrails_response_and_safety() {
    let (d, _) = Drill::parse("quarterly-region-loss.yaml", REGION_LOSS).unwrap();
    // 2027-02-01T00:00:00Z
    let plan = plan_text_at(&d, 1_801_440_000_000);
    for needle in [
        "Drill: quarterly-region-loss for service wallet (owner platform-sre), blast radius: eu-west",
        "Schedule: FREQ=MONTHLY;BYMONTH=1,4,7,10;BYDAY=1TU;BYHOUR=3;BYMINUTE=0;BYSECOND=0 in Europe/Dublin",
        "  next: 2027-04-06T03:00:00+01:00 (2027-04-06T02:00:00Z)",
        "  next: 2027-07-06T03:00:00+01:00 (2027-07-06T02:00:00Z)",
        "  next: 2027-10-05T03:00:00+01:00 (2027-10-05T02:00:00Z)",
        "Deadline: 30m",
        "an agent reverts after 30s without the coordinator",
        "replication lag ≤ 5s",
        "  1. kill-primary-db @ eu-west: stop PostgreSQL wallet-db hard",
        "  - login-stays-up: check login-api in eu-central is not down (breach must last 5s)",
        "  - central-wallet-api: check wallet-api in eu-central as seen from eu-north is not down",
        "run playbook wallet-region-cutover with source=eu-west",
        "as an unplanned failover, once eu-west is declared down",
        "detection ≤ 5s; RTO ≤ 30s; RPO 0 (no acknowledged canary row lost); a successful failover",
        "Canary: a row into drcut_canary every 100ms",
        "password from $DRCUT_CANARY_PASSWORD",
        "run failback playbook wallet-region-failback with source=eu-central",
        "within 15m",
    ] {
        assert!(plan.contains(needle), "plan lacks {needle:?}:\n{plan}");
    }
    // From December, the next January occurrence... and 2028-01-04 is a blackout date.
    let plan = plan_text_at(&d, 1_827_000_000_000);
    assert!(plan.contains("(2028-01-04T03:00:00Z)  [blackout: skipped]"), "{plan}");
}

#[test]
fn plan_of_a_proxy_drill_shows_its_settings() {
    let (d, _) = Drill::parse("g.yaml", include_str!("../../../gameday/game-provider-latency.yaml")).unwrap();
    let plan = plan_text_at(&d, 0);
    assert!(plan.contains("Schedule: on demand only"), "{plan}");
    assert!(
        plan.contains("1. slow-provider @ eu-west: proxy game-provider: latency 800ms ± 200ms; reverted after 5m"),
        "{plan}"
    );
    assert!(plan.contains("Response: none: observe the platform riding it out for 5m"), "{plan}");
    assert!(plan.contains("Expect: no failover"), "{plan}");
}
