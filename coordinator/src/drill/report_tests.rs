//! Report tests: runs built as the engine records them, graded and rendered.

use super::*;
use crate::drill::record::{CanaryRecord, DrillState, Event, GuardrailTrip};
use crate::drill::spec::{
    Canary, Drill, Expectations, Guardrail, IntegrityCheck, MissedPolicy, Preflight, Probe, ReportSettings, Require,
    Restore, Schedule,
};
use crate::run::{Action, Attempt, PlanStep, Run, RunMode, RunPlan, Work};
use std::collections::BTreeMap;

/// 2026-01-06T03:00:00Z: the fault is injected one second after the run is created.
const T0: i64 = 1_767_668_400_000;
const INJECTED: i64 = T0 + 1_000;

fn drill() -> Drill {
    Drill {
        name: "wallet-region-loss".into(),
        owner: "team-wallet".into(),
        hypothesis: "Losing eu-west moves wallet to eu-central within 30 s, losing no acknowledged write".into(),
        service: "wallet".into(),
        target_region: "eu-west".into(),
        schedule: Some(Schedule {
            rrule: "FREQ=MONTHLY;BYMONTH=1,4,7,10;BYDAY=1TU;BYHOUR=3;BYMINUTE=0".into(),
            timezone: "Europe/Dublin".into(),
            start: None,
            blackout: vec![],
            start_tolerance_ms: 600_000,
            missed: MissedPolicy::RunLate,
            late_limit_ms: 3_600_000,
            enabled: true,
        }),
        deadline_ms: 1_800_000,
        lost_coordinator_ms: 120_000,
        faults: vec![Fault {
            id: "db-down".into(),
            region: "eu-west".into(),
            kind: FaultKind::PostgresStop { database: "wallet".into() },
            duration_ms: None,
        }],
        steady_state: vec![Probe { region: "eu-west".into(), check: None, vantage: None, require: Require::Up }],
        preflight: Preflight { max_lag_seconds: Some(5.0) },
        guardrails: vec![Guardrail {
            name: "login-stays-up".into(),
            probe: Probe {
                region: "eu-central".into(),
                check: Some("login-api".into()),
                vantage: None,
                require: Require::NotDown,
            },
            for_ms: 5_000,
        }],
        response: Response::Playbook {
            playbook: "wallet-region-cutover".into(),
            params: BTreeMap::from([("source".into(), "eu-west".into()), ("target".into(), "eu-central".into())]),
            unplanned: true,
            start: ResponseStart::OnDown,
        },
        expect: Expectations {
            detection_ms: Some(5_000),
            rto_ms: Some(30_000),
            rpo_rows: Some(0),
            failover: Some(true),
            integrity: vec![IntegrityCheck {
                name: "no-negative-balances".into(),
                query: "SELECT count(*) FROM accounts WHERE balance < 0".into(),
                expect: "0".into(),
            }],
        },
        canary: Some(Canary {
            dsn: "host=127.0.0.1,127.0.0.2 dbname=wallet target_session_attrs=read-write".into(),
            password_env: None,
            table: "drcut_canary".into(),
            interval_ms: 100,
        }),
        restore: Restore {
            playbook: Some("wallet-region-failback".into()),
            params: BTreeMap::new(),
            timeout_ms: 900_000,
        },
        report: ReportSettings { trend_runs: 4 },
    }
}

fn line(name: &str, ok: bool, detail: &str) -> CheckLine {
    CheckLine { name: name.into(), ok, detail: detail.into() }
}

/// Milestones as offsets from the injection.
fn milestones(offsets: &[(&str, i64)]) -> BTreeMap<String, i64> {
    offsets.iter().map(|(n, o)| (n.to_string(), INJECTED + o)).collect()
}

/// A region-loss drill that met every target: detection 1.21 s, writes back at 10.1 s,
/// traffic at 12.4 s, DNS at 14 s, nothing lost.
fn passed_run(id: &str) -> DrillRun {
    let mut canary = CanaryRecord { failed: 90, first_failure_ms: INJECTED + 100, ..Default::default() };
    canary.add_acked(&[(1, 10), (101, 400)]);
    canary.recovered_ms = INJECTED + 10_100;
    canary.missing = Some(vec![]);
    canary.checked = "at 2026-01-06T03:01:00.000Z against 127.0.0.2:5432".into();
    DrillRun {
        id: id.into(),
        drill: "wallet-region-loss".into(),
        drill_hash: "ab".repeat(32),
        spec: drill(),
        trigger: Trigger::Schedule { occurrence_ms: T0, late: false },
        dry_run: false,
        state: DrillState::Done,
        outcome: Some(DrillOutcome::Passed),
        outcome_detail: "every expectation held".into(),
        created_ms: T0,
        state_since_ms: INJECTED + 60_000,
        ended_ms: INJECTED + 60_000,
        preflight: vec![line("steady state", true, "eu-west up"), line("replication lag", true, "0.2 s ≤ 5 s")],
        faults: BTreeMap::from([(
            "db-down".to_string(),
            FaultStatus {
                dispatched_ms: INJECTED - 50,
                token: 7,
                injected_ms: INJECTED,
                revert_dispatched_ms: INJECTED + 40_000,
                reverted_ms: INJECTED + 40_500,
                detail: "postgres started again".into(),
                failed: false,
            },
        )]),
        milestones: milestones(&[
            (milestone::FAULT_INJECTED, 0),
            (milestone::FIRST_FAILING_CHECK, 1_210),
            (milestone::REGION_DOWN, 3_000),
            (milestone::RUN_STARTED, 3_200),
            (milestone::WRITES_AVAILABLE, 10_100),
            (milestone::TRAFFIC_100, 12_400),
            (milestone::DNS_CONVERGED, 14_000),
            (milestone::RESPONSE_ENDED, 15_000),
            (milestone::RESTORE_STARTED, 40_000),
            (milestone::RESTORED, 59_000),
        ]),
        response_run: Some("run-17".into()),
        restore_run: Some("run-18".into()),
        canary,
        guardrails: vec![],
        integrity: vec![line("no-negative-balances", true, "0 = 0")],
        steady_after: vec![line("eu-west up", true, "up from 3 vantages")],
        deviations: vec![],
        events: vec![
            Event { at_ms: INJECTED - 50, what: "inject db-down dispatched to eu-west".into() },
            Event { at_ms: INJECTED + 3_000, what: "eu-west declared down by 2 of 3 vantages".into() },
        ],
        report: None,
        revision: 42,
        halt: None,
        abort: None,
    }
}

fn step(id: &str, action: &str, region: &str) -> PlanStep {
    PlanStep {
        id: id.into(),
        act: Action { action: action.into(), region: region.into(), with: serde_json::json!({}) },
        timeout_ms: 30_000,
        retries: 1,
        retry_backoff_ms: 1_000,
        on_failure: crate::run::OnFailure::Rollback,
        compensate: None,
        phases: if action == "shift_traffic" { vec![50, 100] } else { vec![] },
        dwell_ms: 0,
        gate_region: None,
        gate_require: String::new(),
    }
}

fn attempt(step: usize, start: i64, end: i64, ok: bool) -> Attempt {
    Attempt {
        work: Work { step, phase: None, compensation: false, attempt: 1 },
        started_ms: INJECTED + start,
        finished_ms: INJECTED + end,
        ok,
        detail: if ok { "ok".into() } else { "promote timed out".into() },
        measurements: BTreeMap::new(),
    }
}

fn response(id: &str, state: RunState) -> RunRecord {
    let steps = vec![
        step("fence", "fence_db", "eu-west"),
        step("promote", "promote_db", "eu-central"),
        step("traffic", "shift_traffic", "eu-central"),
    ];
    let succeeded = state == RunState::Succeeded;
    RunRecord {
        run: Run {
            id: id.into(),
            service: "wallet".into(),
            plan: RunPlan {
                steps,
                point_of_no_return: Some(1),
                approvals_required: 0,
                mode: RunMode::Unplanned,
                failover: None,
                targets: Default::default(),
            },
            requester: "drill".into(),
            approvals: vec![],
            state,
            cursor: 3,
            phase: 0,
            completed: if succeeded { vec![1, 2] } else { vec![] },
            to_compensate: vec![],
            in_flight: None,
            not_before_ms: 0,
            failures: 0,
            dwell_until_ms: None,
            outputs: BTreeMap::new(),
            history: vec![attempt(1, 3_300, 9_900, succeeded), attempt(2, 10_000, 12_400, true)],
            skipped: BTreeMap::from([(0, "source confirmed down".to_string())]),
            hold: None,
            fencing: None,
            loss: None,
            consent: None,
            gates: vec![],
            stuck_rollback: None,
        },
        playbook: "wallet-region-cutover".into(),
        playbook_hash: "cd".repeat(32),
        params: BTreeMap::new(),
        reason: "drill wallet-region-loss".into(),
        created_ms: INJECTED + 3_200,
        ended_ms: INJECTED + 15_000,
        revision: 40,
        idempotency_key: String::new(),
        automatic: false,
    }
}

fn restore() -> RunRecord {
    let mut r = response("run-18", RunState::Succeeded);
    r.playbook = "wallet-region-failback".into();
    r.playbook_hash = "ef".repeat(32);
    r
}

/// Detection 7.2 s against 5 s, and three acknowledged rows gone after the promotion.
fn failed_run() -> DrillRun {
    let mut run = passed_run("drill-wallet-region-loss-20260407T020000");
    run.outcome = Some(DrillOutcome::Failed);
    run.outcome_detail = "2 expectations failed".into();
    run.milestones.insert(milestone::FIRST_FAILING_CHECK.into(), INJECTED + 7_200);
    run.milestones.insert(milestone::REGION_DOWN.into(), INJECTED + 9_000);
    run.canary.missing = Some(vec![398, 399, 400]);
    run
}

fn graded(run: &DrillRun, response: Option<&RunRecord>) -> BTreeMap<String, CheckLine> {
    grade(run, response).into_iter().map(|l| (l.name.clone(), l)).collect()
}

fn report_of(run: &DrillRun, previous: &[DrillRun]) -> Value {
    let resp = response("run-17", RunState::Succeeded);
    let rest = restore();
    build(&ReportInputs { run, response: Some(&resp), restore: Some(&rest), previous })
}

// === phases ===

#[test]
fn phases_measure_between_milestones() {
    let run = passed_run("r1");
    let ph: BTreeMap<String, Option<i64>> = phases(&run).into_iter().collect();
    assert_eq!(ph["detection"], Some(1_210));
    assert_eq!(ph["declaration"], Some(1_790));
    assert_eq!(ph["decision"], Some(200));
    assert_eq!(ph["recovery"], Some(6_900));
    assert_eq!(ph["traffic"], Some(2_300));
    assert_eq!(ph["convergence"], Some(1_600));
    assert_eq!(ph["rto_writes"], Some(10_100));
    assert_eq!(ph["rto_traffic"], Some(12_400));
    assert_eq!(ph["rto_dns"], Some(14_000));
    let names: Vec<String> = phases(&run).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "detection",
            "declaration",
            "decision",
            "recovery",
            "traffic",
            "convergence",
            "rto_writes",
            "rto_traffic",
            "rto_dns"
        ]
    );
}

#[test]
fn missing_milestones_never_give_negative_or_bogus_phases() {
    let mut run = passed_run("r1");
    run.milestones.clear();
    assert!(phases(&run).iter().all(|(_, v)| v.is_none()), "{:?}", phases(&run));

    // Only injection and traffic: only the total up to traffic is measurable; traffic has no
    // start to count from (neither writes nor run start).
    run.milestones = milestones(&[(milestone::FAULT_INJECTED, 0), (milestone::TRAFFIC_100, 9_000)]);
    let ph: BTreeMap<String, Option<i64>> = phases(&run).into_iter().collect();
    assert_eq!(ph["rto_traffic"], Some(9_000));
    assert_eq!(ph["traffic"], None);
    assert_eq!(ph["detection"], None);
    assert_eq!(ph["rto_writes"], None);

    // A zero stamp ("not yet") and stamps out of order measure nothing.
    run.milestones = milestones(&[(milestone::FAULT_INJECTED, 0), (milestone::FIRST_FAILING_CHECK, -500)]);
    run.milestones.insert(milestone::REGION_DOWN.into(), 0);
    let ph: BTreeMap<String, Option<i64>> = phases(&run).into_iter().collect();
    assert_eq!(ph["detection"], None);
    assert_eq!(ph["declaration"], None);

    // Writes back after the traffic moved: traffic counts from the run's start.
    run.milestones = milestones(&[
        (milestone::FAULT_INJECTED, 0),
        (milestone::RUN_STARTED, 2_000),
        (milestone::TRAFFIC_100, 8_000),
        (milestone::WRITES_AVAILABLE, 9_000),
    ]);
    let ph: BTreeMap<String, Option<i64>> = phases(&run).into_iter().collect();
    assert_eq!(ph["traffic"], Some(6_000));
    assert_eq!(ph["recovery"], Some(7_000));
    for (name, v) in phases(&run) {
        assert!(v.is_none_or(|v| v >= 0), "{name}: {v:?}");
    }

    // The report of a run with no milestones shows nulls, never numbers.
    let mut bare = passed_run("r2");
    bare.milestones.clear();
    let report = build(&ReportInputs { run: &bare, response: None, restore: None, previous: &[] });
    for p in report["phases"].as_array().unwrap() {
        assert!(p["ms"].is_null(), "{p}");
    }
    assert!(report["rto"]["measured_ms"].is_null());
    let md = markdown(&report);
    assert!(md.contains("| Detection | fault injected → first failing check | — |"), "{md}");
    assert!(!md.contains("−0"), "{md}");
}

// === grading ===

#[test]
fn passed_region_loss_run_grades_every_expectation() {
    let run = passed_run("drill-wallet-region-loss-20260106T030000");
    let resp = response("run-17", RunState::Succeeded);
    let lines = grade(&run, Some(&resp));
    let names: Vec<&str> = lines.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "detection ≤ 5s",
            "RTO ≤ 30s",
            "RPO ≤ 0 rows",
            "failover succeeds",
            "integrity: no-negative-balances",
            "steady state after restore",
            "no guardrail tripped"
        ]
    );
    assert!(lines.iter().all(|l| l.ok), "{lines:#?}");
    let g = graded(&run, Some(&resp));
    assert_eq!(g["detection ≤ 5s"].detail, "measured 1.21 s");
    assert_eq!(g["RTO ≤ 30s"].detail, "measured 12.40 s (writes 10.10 s, traffic 12.40 s)");
    assert!(
        g["RPO ≤ 0 rows"].detail.starts_with("0 of 310 acknowledged writes missing"),
        "{}",
        g["RPO ≤ 0 rows"].detail
    );
    assert_eq!(g["failover succeeds"].detail, "run run-17 succeeded");

    let report = report_of(&run, &[]);
    assert_eq!(report["schema"], SCHEMA);
    assert_eq!(report["outcome"], "passed");
    assert_eq!(report["action_items"], serde_json::json!([]));
    assert_eq!(report["rto"]["measured_ms"], 12_400);
    assert_eq!(report["rto"]["ok"], true);
    assert_eq!(report["rpo"]["missing_count"], 0);
    assert_eq!(report["rpo"]["ok"], true);
    assert_eq!(report["pinned"]["drill_sha256"], "ab".repeat(32));
    assert_eq!(report["pinned"]["response"]["playbook_sha256"], "cd".repeat(32));
    assert_eq!(report["pinned"]["restore"]["playbook"], "wallet-region-failback");
    assert_eq!(report["pinned"]["restore"]["run_id"], "run-18");
    assert_eq!(report["faults"][0]["reverted_by"], "engine");
    assert_eq!(report["trigger"]["occurrence_utc"], "2026-01-06T03:00:00.000Z");
    assert_eq!(report["trigger"]["occurrence_local"], "2026-01-06 03:00 +00:00");
    assert_eq!(report["trigger"]["timezone"], "Europe/Dublin");
    // The response run's steps with their timings.
    let steps = report["response"]["steps"].as_array().unwrap();
    assert_eq!(steps[0]["result"], "skipped: source confirmed down");
    assert_eq!(steps[1]["ms"], 6_600);
    assert_eq!(steps[2]["result"], "done");
}

#[test]
fn failed_run_names_slow_detection_and_lost_rows() {
    let run = failed_run();
    let resp = response("run-17", RunState::Succeeded);
    let g = graded(&run, Some(&resp));
    assert!(!g["detection ≤ 5s"].ok);
    assert_eq!(g["detection ≤ 5s"].detail, "measured 7.20 s");
    assert!(!g["RPO ≤ 0 rows"].ok);
    assert!(g["RPO ≤ 0 rows"].detail.starts_with("3 of 310 acknowledged writes missing"));
    assert!(g["RTO ≤ 30s"].ok);

    let report = report_of(&run, &[]);
    assert_eq!(report["rpo"]["missing_count"], 3);
    assert_eq!(report["rpo"]["missing_first"], serde_json::json!([398, 399, 400]));
    assert_eq!(report["rpo"]["ok"], false);
    let items: Vec<&str> = report["action_items"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(items.len(), 2, "{items:#?}");
    assert_eq!(
        items[0],
        "Detection took 7.20 s against a target of 5.00 s: review the health check interval and down quorum of eu-west"
    );
    assert!(items[1].starts_with("3 acknowledged canary writes were lost against a budget of 0"), "{}", items[1]);
}

#[test]
fn missing_sequence_numbers_are_listed_up_to_twenty() {
    let mut run = failed_run();
    run.canary.missing = Some((1000..1050).collect());
    let report = report_of(&run, &[]);
    assert_eq!(report["rpo"]["missing_count"], 50);
    assert_eq!(report["rpo"]["missing_first"].as_array().unwrap().len(), 20);
    assert_eq!(report["rpo"]["missing_first"][19], 1019);
}

#[test]
fn unmeasurable_expectations_fail_and_say_why() {
    let mut run = passed_run("r1");
    run.milestones.remove(milestone::FIRST_FAILING_CHECK);
    run.milestones.remove(milestone::WRITES_AVAILABLE);
    run.canary.missing = None;
    run.canary.error = "connection refused by 127.0.0.2:5432".into();
    run.integrity.clear();
    run.steady_after.clear();
    let g = graded(&run, None);
    assert_eq!(g["detection ≤ 5s"].detail, "no failing check seen");
    assert!(!g["detection ≤ 5s"].ok);
    assert_eq!(g["RTO ≤ 30s"].detail, "not measured: canary: connection refused by 127.0.0.2:5432");
    assert_eq!(g["RPO ≤ 0 rows"].detail, "not checked: connection refused by 127.0.0.2:5432");
    assert!(!g["failover succeeds"].ok);
    assert_eq!(g["failover succeeds"].detail, "run run-17 not available to the report");
    assert_eq!(g["integrity: no-negative-balances"].detail, "not run");
    assert_eq!(g["steady state after restore"].detail, "not checked");
    assert!(g.values().filter(|l| l.name != "no guardrail tripped").all(|l| !l.ok));

    // No fault ever confirmed: nothing is measured from it.
    let mut run = passed_run("r2");
    run.milestones.remove(milestone::FAULT_INJECTED);
    let g = graded(&run, None);
    assert_eq!(g["detection ≤ 5s"].detail, "no fault confirmed injected");
    assert_eq!(g["RTO ≤ 30s"].detail, "not measured: no fault confirmed injected");
}

#[test]
fn rto_without_canary_counts_traffic_and_rpo_is_not_measured() {
    let mut run = passed_run("r1");
    run.spec.canary = None;
    run.canary = CanaryRecord::default();
    run.milestones.remove(milestone::WRITES_AVAILABLE);
    let resp = response("run-17", RunState::Succeeded);
    let g = graded(&run, Some(&resp));
    assert!(g["RTO ≤ 30s"].ok);
    assert_eq!(g["RTO ≤ 30s"].detail, "measured 12.40 s (traffic 12.40 s)");
    assert_eq!(g["RPO ≤ 0 rows"].detail, "not measured: no canary");
    let report = build(&ReportInputs { run: &run, response: Some(&resp), restore: None, previous: &[] });
    assert_eq!(report["rpo"]["measured"], false);
    assert!(markdown(&report).contains("- RPO: not measured (no canary)"));
}

#[test]
fn writes_that_never_failed_count_as_zero_and_failover_false_is_graded() {
    let mut run = passed_run("r1");
    run.spec.response = Response::None { observe_ms: 120_000 };
    run.spec.expect.failover = Some(false);
    run.response_run = None;
    run.canary.first_failure_ms = 0;
    run.milestones = milestones(&[(milestone::FAULT_INJECTED, 0), (milestone::FIRST_FAILING_CHECK, 900)]);
    let g = graded(&run, None);
    assert!(g["RTO ≤ 30s"].ok, "{:?}", g["RTO ≤ 30s"]);
    assert_eq!(g["RTO ≤ 30s"].detail, "measured 0.00 s (writes 0.00 s)");
    assert!(g["no failover"].ok);
    assert_eq!(g["no failover"].detail, "no response run started");

    // An automatic failover that happened anyway fails "no failover".
    let mut resp = response("run-99", RunState::Succeeded);
    resp.automatic = true;
    run.response_run = Some("run-99".into());
    let g = graded(&run, Some(&resp));
    assert!(!g["no failover"].ok);
}

#[test]
fn rto_over_target_names_the_slowest_phase() {
    let mut run = passed_run("r1");
    run.milestones.insert(milestone::WRITES_AVAILABLE.into(), INJECTED + 41_000);
    run.milestones.insert(milestone::TRAFFIC_100.into(), INJECTED + 45_100);
    run.milestones.insert(milestone::DNS_CONVERGED.into(), INJECTED + 46_000);
    let report = report_of(&run, &[]);
    assert_eq!(report["rto"]["measured_ms"], 45_100);
    assert_eq!(report["rto"]["ok"], false);
    assert_eq!(
        report["action_items"][0],
        "RTO was 45.10 s against a target of 30.00 s: shorten the slowest phase, recovery (37.80 s)"
    );
}

#[test]
fn rolled_back_response_fails_the_failover_expectation() {
    let mut run = passed_run("r1");
    run.outcome = Some(DrillOutcome::Failed);
    let resp = response("run-17", RunState::RolledBack { reason: "promote_db failed".into() });
    let g = graded(&run, Some(&resp));
    assert!(!g["failover succeeds"].ok);
    assert_eq!(g["failover succeeds"].detail, "run run-17 rolled_back: promote_db failed");
    let report = build(&ReportInputs { run: &run, response: Some(&resp), restore: None, previous: &[] });
    assert_eq!(report["response"]["steps"][1]["result"], "failed: promote timed out");
    assert!(report["action_items"][0].as_str().unwrap().starts_with("The response did not fail wallet over"));
}

#[test]
fn aborted_run_reports_the_guardrail_trip_and_dead_man_revert() {
    let mut run = passed_run("drill-wallet-region-loss-20260707T020000");
    run.outcome = Some(DrillOutcome::Aborted);
    run.outcome_detail = "guardrail login-stays-up tripped".into();
    run.trigger = Trigger::Manual { by: "alice".into() };
    run.milestones.retain(|k, _| {
        [milestone::FAULT_INJECTED, milestone::FIRST_FAILING_CHECK, milestone::RESTORE_STARTED, milestone::RESTORED]
            .contains(&k.as_str())
    });
    run.guardrails = vec![GuardrailTrip {
        name: "login-stays-up".into(),
        at_ms: INJECTED + 6_500,
        detail: "login-api in eu-central down from eu-north for 5 s".into(),
        action: "aborted and restored".into(),
    }];
    run.deviations = vec!["response run not started: drill aborted before eu-west was declared down".into()];
    run.response_run = None;
    run.canary.missing = Some(vec![]);
    let status = run.faults.get_mut("db-down").unwrap();
    status.revert_dispatched_ms = 0;
    status.detail = "reverted by dead-man switch: no lease for 120 s".into();

    let report = build(&ReportInputs { run: &run, response: None, restore: None, previous: &[] });
    assert_eq!(report["outcome"], "aborted");
    assert_eq!(report["trigger"], serde_json::json!({ "kind": "manual", "by": "alice" }));
    assert_eq!(report["guardrails"][0]["name"], "login-stays-up");
    assert_eq!(report["guardrails"][0]["offset_ms"], 6_500);
    assert_eq!(report["guardrails"][0]["action"], "aborted and restored");
    assert_eq!(report["faults"][0]["reverted_by"], "dead-man switch");
    let g: BTreeMap<&str, &Value> =
        report["expectations"].as_array().unwrap().iter().map(|l| (l["name"].as_str().unwrap(), l)).collect();
    assert_eq!(g["no guardrail tripped"]["ok"], false);
    assert_eq!(g["no guardrail tripped"]["detail"], "tripped: login-stays-up");
    assert_eq!(g["failover succeeds"]["detail"], "no response run started");
    assert!(report["pinned"]["response"].is_null());

    let items: Vec<&str> = report["action_items"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    // RTO (not measured) and failover from the expectations, then the trip, the deviation and
    // the dead-man revert; the guardrail line adds no duplicate of the trip.
    assert_eq!(items.len(), 5, "{items:#?}");
    assert!(items[0].starts_with("RTO could not be measured"));
    assert!(items[1].starts_with("The response did not fail wallet over"));
    assert_eq!(
        items[2],
        "Guardrail login-stays-up tripped at T+6.500 s (login-api in eu-central down from eu-north for 5 s): find \
         out how the fault reached outside the blast radius of eu-west"
    );
    assert!(items[3].starts_with("Explain the deviation from the plan: response run not started"));
    assert!(items[4].contains("dead-man switch, not the engine"));

    let md = markdown(&report);
    assert!(md.contains("**ABORTED** — guardrail login-stays-up tripped"), "{md}");
    assert!(md.contains("| Trigger | manual, by alice |"), "{md}");
    assert!(md.contains("| login-stays-up | T+6.500 s (2026-01-06T03:00:07.500Z) |"), "{md}");
    assert!(md.contains("| no guardrail tripped | **FAIL** | tripped: login-stays-up |"), "{md}");
    assert!(md.contains("| dead-man switch |"), "{md}");
    assert!(md.contains("- Response: none"), "{md}");
}

#[test]
fn faults_that_failed_to_inject_or_revert_become_action_items() {
    let mut run = passed_run("r1");
    run.spec.faults.push(Fault {
        id: "proxy-cut".into(),
        region: "eu-west".into(),
        kind: FaultKind::Proxy {
            proxy: "pg".into(),
            mode: crate::drill::spec::ProxyMode::Latency,
            latency_ms: 200,
            jitter_ms: 50,
            bytes_per_second: 0,
            failure_rate: 0.0,
        },
        duration_ms: Some(30_000),
    });
    run.faults.insert(
        "proxy-cut".into(),
        FaultStatus { dispatched_ms: INJECTED, failed: true, detail: "no proxy named pg".into(), ..Default::default() },
    );
    run.faults.get_mut("db-down").unwrap().reverted_ms = 0;
    let report = report_of(&run, &[]);
    let items: Vec<&str> = report["action_items"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(
        items,
        [
            "Fault db-down in eu-west was never confirmed reverted (postgres started again): check the agent and \
             revert it by hand",
            "Fault proxy-cut could not be injected in eu-west (no proxy named pg): fix the agent's configuration \
             for it",
        ]
    );
    assert_eq!(report["faults"][1]["what"], "inject proxy-cut in eu-west: proxy pg: latency 200 ms ± 50 ms for 30s");
    let md = markdown(&report);
    assert!(md.contains("| **not reverted** |"), "{md}");
    assert!(md.contains("| **failed** |"), "{md}");
}

// === short reports ===

#[test]
fn refused_dry_run_and_skipped_reports_are_short() {
    for (outcome, dry) in [(DrillOutcome::Refused, false), (DrillOutcome::DryRun, true), (DrillOutcome::Skipped, false)]
    {
        let mut run = passed_run("r1");
        run.outcome = Some(outcome);
        run.dry_run = dry;
        run.outcome_detail = "replication lag 12.0 s > 5 s".into();
        run.milestones.clear();
        run.faults.clear();
        run.preflight = vec![line("replication lag", false, "12.0 s > 5 s")];
        let report = build(&ReportInputs { run: &run, response: None, restore: None, previous: &[] });
        assert_eq!(report["short"], true);
        for absent in ["timeline", "phases", "expectations", "action_items", "trend"] {
            assert!(report.get(absent).is_none(), "{absent} in a {outcome:?} report");
        }
        let plan: Vec<&str> = report["plan"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(plan[0], "inject db-down in eu-west: stop PostgreSQL wallet (immediate) until restore");
        assert!(
            plan[1].starts_with("response: run playbook wallet-region-cutover (source=eu-west, target=eu-central)")
        );
        let md = markdown(&report);
        assert!(md.contains("## Reason\n\nreplication lag 12.0 s > 5 s"), "{md}");
        assert!(md.contains("| replication lag | **FAIL** | 12.0 s > 5 s |"), "{md}");
        assert!(md.contains("## Plan\n\n- inject db-down in eu-west"), "{md}");
        assert!(!md.contains("## Timeline"), "{md}");
    }
}

// === trend ===

/// An earlier run with the given detection and RTO (writes = traffic − 2 s).
fn earlier(id: &str, days_before: i64, detection: i64, rto_traffic: i64) -> DrillRun {
    let mut run = passed_run(id);
    let shift = -days_before * 86_400_000;
    run.created_ms += shift;
    run.milestones = milestones(&[
        (milestone::FAULT_INJECTED, shift),
        (milestone::FIRST_FAILING_CHECK, shift + detection),
        (milestone::WRITES_AVAILABLE, shift + rto_traffic - 2_000),
        (milestone::TRAFFIC_100, shift + rto_traffic),
    ]);
    run
}

#[test]
fn trend_compares_with_the_previous_run_and_the_median() {
    let run = passed_run("drill-now");
    // Newest first: 0.90 s, 1.50 s, 2.00 s detection; the oldest kept a report whose numbers
    // win over recomputation.
    let p1 = earlier("drill-q3", 91, 900, 13_000);
    let p2 = earlier("drill-q2", 182, 1_500, 11_000);
    let mut p3 = earlier("drill-q1", 273, 99_999, 99_999);
    let mut p3_report = report_of(&p3, &[]);
    p3_report["summary"]["detection_ms"] = serde_json::json!(2_000);
    p3_report["summary"]["rto_traffic_ms"] = serde_json::json!(20_000);
    p3.report = Some(p3_report);
    let mut dry = earlier("drill-dry", 10, 1, 1);
    dry.dry_run = true;
    dry.outcome = Some(DrillOutcome::DryRun);
    let previous = [dry, p1, p2, p3];

    let report = report_of(&run, &previous);
    let rows = report["trend"]["rows"].as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["run_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["drill-now", "drill-q3", "drill-q2", "drill-q1"]);
    assert_eq!(rows[3]["detection_ms"], 2_000);
    assert_eq!(rows[3]["rto_traffic_ms"], 20_000);
    assert_eq!(rows[1]["rto_writes_ms"], 11_000);
    assert_eq!(rows[0]["rpo_missing"], 0);

    let changes = report["trend"]["changes"].as_array().unwrap();
    let detection = &changes[0];
    assert_eq!(detection["metric"], "detection_ms");
    assert_eq!(detection["current_ms"], 1_210);
    assert_eq!(detection["previous_run"], "drill-q3");
    assert_eq!(detection["delta_ms"], 310);
    assert_eq!(detection["median_ms"], 1_500);
    assert_eq!(detection["delta_median_ms"], -290);
    let traffic = &changes[2];
    assert_eq!(traffic["delta_ms"], -600);
    assert_eq!(traffic["median_ms"], 13_000);

    let md = markdown(&report);
    assert!(
        md.contains(
            "- Detection: 1.21 s; +0.31 s against the previous run (`drill-q3`), −0.29 s against the median of 3 \
             earlier runs (1.50 s)"
        ),
        "{md}"
    );
    assert!(md.contains("- RTO traffic: 12.40 s; −0.60 s against the previous run"), "{md}");
    assert!(
        md.contains("| `drill-now` (this run) | 2026-01-06 03:00 | passed | 1.21 s | 10.10 s | 12.40 s | 0 |"),
        "{md}"
    );
    assert!(md.contains("| `drill-q1` | 2025-04-08 03:00 | passed | 2.00 s |"), "{md}");
}

#[test]
fn trend_keeps_at_most_trend_runs_and_handles_unmeasured_runs() {
    let mut run = passed_run("drill-now");
    run.spec.report.trend_runs = 2;
    let mut refused = earlier("drill-refused", 30, 0, 0);
    refused.outcome = Some(DrillOutcome::Refused);
    refused.milestones.clear();
    refused.canary.missing = None;
    let previous = [refused, earlier("drill-b", 60, 1_000, 10_000), earlier("drill-c", 90, 3_000, 10_000)];
    let report = report_of(&run, &previous);
    let rows = report["trend"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1]["outcome"], "refused");
    assert!(rows[1]["detection_ms"].is_null());
    assert!(rows[1]["rpo_missing"].is_null());
    // The previous measurement is the newest run that has one; the median is of one value.
    let detection = &report["trend"]["changes"][0];
    assert_eq!(detection["previous_run"], "drill-b");
    assert_eq!(detection["delta_ms"], 210);
    assert_eq!(detection["median_ms"], 1_000);
    assert_eq!(detection["median_of"], 1);
    let md = markdown(&report);
    assert!(md.contains("| `drill-refused` | 2025-12-07 03:00 | refused | — | — | — | — |"), "{md}");

    // With no earlier runs the change says so.
    let report = report_of(&run, &[]);
    assert!(markdown(&report).contains("- Detection: 1.21 s; no earlier measurement to compare"));
}

#[test]
fn median_of_even_count_is_the_mean_of_the_middle_two() {
    assert_eq!(median(&mut [4, 1, 3, 2]), Some(2));
    assert_eq!(median(&mut [1_000, 3_000]), Some(2_000));
    assert_eq!(median(&mut [5]), Some(5));
    assert_eq!(median(&mut []), None);
}

// === Markdown and stability ===

#[test]
fn markdown_holds_the_key_lines() {
    let run = passed_run("drill-wallet-region-loss-20260106T030000");
    let md = markdown(&report_of(&run, &[]));
    for expected in [
        "# Drill report: wallet-region-loss",
        "Run `drill-wallet-region-loss-20260106T030000` · **PASSED** — every expectation held",
        "| Trigger | scheduled occurrence 2026-01-06 03:00 +00:00 Europe/Dublin (2026-01-06T03:00:00.000Z); on time |",
        "| Owner | team-wallet |",
        "| Target region | eu-west |",
        "| Hypothesis | Losing eu-west moves wallet to eu-central within 30 s, losing no acknowledged write |",
        "- Drill file sha256: `abababab",
        "- Response: playbook `wallet-region-cutover` sha256 `cdcdcdcd",
        "- Restore: playbook `wallet-region-failback` sha256 `efefefef",
        "Offsets from fault injection.",
        "| T−0.050 s | 2026-01-06T03:00:00.950Z | inject db-down dispatched to eu-west |",
        "| T+0.000 s | 2026-01-06T03:00:01.000Z | **fault injected (first fault confirmed active)** |",
        "| T+1.210 s | 2026-01-06T03:00:02.210Z | **first failing check in the target region** |",
        "| Detection | fault injected → first failing check | 1.21 s |",
        "| RTO (DNS) | fault injected → DNS converged | 14.00 s |",
        "- RTO: 12.40 s against a target of 30.00 s: **met** (writes 10.10 s, traffic 12.40 s, DNS 14.00 s)",
        "- RPO: 0 of 310 acknowledged canary writes missing against a budget of 0 rows: **met**",
        "| db-down | eu-west | inject db-down in eu-west: stop PostgreSQL wallet (immediate) until restore | T+0.000 s \
         | T+40.500 s | engine |",
        "| promote | promote_db | eu-central | 6.60 s | 1 | done |",
        "| detection ≤ 5s | PASS | measured 1.21 s |",
        "| replication lag | PASS | 0.2 s ≤ 5 s |",
        "## Guardrails\n\nNone tripped.",
        "## Deviations\n\nNone.",
        "| eu-west up | PASS | up from 3 vantages |",
        "## Action items\n\nNone.",
    ] {
        assert!(md.contains(expected), "missing {expected:?} in\n{md}");
    }

    let md = markdown(&report_of(&failed_run(), &[]));
    for expected in [
        "**FAILED** — 2 expectations failed",
        "| detection ≤ 5s | **FAIL** | measured 7.20 s |",
        "- RPO: 3 of 310 acknowledged canary writes missing against a budget of 0 rows: **missed**",
        "- Missing sequence numbers (first 20): 398, 399, 400",
        "- [ ] Detection took 7.20 s against a target of 5.00 s: review the health check interval and down quorum \
         of eu-west",
    ] {
        assert!(md.contains(expected), "missing {expected:?} in\n{md}");
    }
}

#[test]
fn markdown_cells_escape_pipes_and_newlines() {
    let mut run = passed_run("r1");
    run.preflight = vec![line("lag | check", true, "line one\nline two")];
    let md = markdown(&report_of(&run, &[]));
    assert!(md.contains("| lag \\| check | PASS | line one line two |"), "{md}");
}

#[test]
fn the_report_is_stable() {
    let run = failed_run();
    let previous = [earlier("drill-q3", 91, 900, 13_000), earlier("drill-q2", 182, 1_500, 11_000)];
    let a = report_of(&run, &previous);
    let b = report_of(&run.clone(), &previous.clone());
    assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
    assert_eq!(markdown(&a), markdown(&b));
    // Through the replicated state and back (the report is stored as JSON), the Markdown is
    // the same.
    let stored: Value = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    assert_eq!(markdown(&stored), markdown(&a));
    // Integer milliseconds only: no float sneaks into the JSON.
    fn no_floats(v: &Value) -> bool {
        match v {
            Value::Number(n) => n.is_i64() || n.is_u64(),
            Value::Array(a) => a.iter().all(no_floats),
            Value::Object(o) => o.values().all(no_floats),
            _ => true,
        }
    }
    assert!(no_floats(&a));
}

#[test]
fn durations_round_to_hundredths() {
    assert_eq!(secs(1_205), "1.21 s");
    assert_eq!(secs(1_204), "1.20 s");
    assert_eq!(secs(999), "1.00 s");
    assert_eq!(secs(0), "0.00 s");
    assert_eq!(secs(-1_200), "−1.20 s");
    assert_eq!(delta(310), "+0.31 s");
    assert_eq!(delta(-1_200), "−1.20 s");
    assert_eq!(offset(1_234), "T+1.234 s");
    assert_eq!(offset(-50), "T−0.050 s");
}

#[test]
fn response_run_shows_fencing_and_loss() {
    let run = passed_run("r1");
    let mut resp = response("run-17", RunState::Succeeded);
    resp.run.fencing =
        Some(crate::run::Fencing { how: "quorum_down".into(), detail: "eu-west down from 2 of 3 vantages".into() });
    resp.run.loss = Some(crate::run::Loss {
        known: true,
        bytes: 0,
        seconds: 0.0,
        synchronous: true,
        evidence: "sample at T+0.4 s".into(),
    });
    let report = build(&ReportInputs { run: &run, response: Some(&resp), restore: None, previous: &[] });
    assert_eq!(report["response"]["fencing"], "quorum_down: eu-west down from 2 of 3 vantages");
    let md = markdown(&report);
    assert!(
        md.contains(
            "Run `run-17` of playbook `wallet-region-cutover`: succeeded\n\n- Loss at promotion: 0 acknowledged"
        ),
        "{md}"
    );
    assert!(md.contains("- Loss at promotion: 0 acknowledged writes (synchronous standby"), "{md}");
    assert!(md.contains("eu-west down from 2 of 3 vantages\n\n| Step |"), "{md}");
    // Without them, the step table follows the heading line directly.
    let md = markdown(&report_of(&run, &[]));
    assert!(md.contains("succeeded\n\n| Step |"), "{md}");
    assert!(md.contains("| steady state after restore | PASS | 1 of 1 probes hold |"), "{md}");
}

#[test]
fn absurd_stamps_render_without_panicking() {
    assert_eq!(utc(0), "");
    assert_eq!(utc(T0), "2026-01-06T03:00:00.000Z");
    assert_eq!(utc(i64::MAX), format!("out of range ({} ms)", i64::MAX));
    let mut run = passed_run("r1");
    run.events.push(Event { at_ms: i64::MAX / 2, what: "clock jumped".into() });
    let md = markdown(&report_of(&run, &[]));
    assert!(md.contains("clock jumped"));
}

#[test]
fn scheduled_occurrences_read_in_the_drill_zone_across_dst() {
    // 03:00 in Dublin is 02:00 UTC in summer (IST, +01:00) and 03:00 UTC in winter (GMT).
    let summer = humantime::parse_rfc3339("2026-07-07T02:00:00Z").unwrap();
    let ms = summer.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    assert_eq!(local(ms, "Europe/Dublin"), "2026-07-07 03:00 +01:00");
    assert_eq!(local(ms, "America/New_York"), "2026-07-06 22:00 -04:00");
    assert_eq!(local(ms, "Mars/Olympus"), "");
    assert_eq!(local(0, "UTC"), "");
}
