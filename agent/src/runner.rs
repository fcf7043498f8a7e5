//! Runs one check forever: probe on its cadence, slide the window, judge the SLOs, hand the
//! report to the session (latest wins: a report that cannot be sent now is stale later).

use crate::checks::Sample;
use crate::config::CheckSpec;
use crate::metrics::AgentMetrics;
use crate::window::Window;
use drcut_proto::v1::{CheckReport, SloResult};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Builds the report for one evaluation. Pure: the window already holds `sample`.
pub fn evaluate(
    spec_name: &str,
    target_region: &str,
    slo: &[crate::slo::Slo],
    window: &Window,
    sample: &Sample,
    seq: u64,
    at_ms: i64,
) -> CheckReport {
    let mut values = window.stats();
    values.insert("latency_ms".into(), sample.latency_ms);
    for (k, v) in &sample.values {
        values.insert(k.clone(), *v);
    }
    let results: Vec<_> = slo.iter().map(|s| s.eval(&values)).collect();
    // A wrong answer (status, role, answer set) is never healthy, whatever the window's
    // statistics say: a promoted standby with zero lag must not pass as a good standby.
    let slo_ok = sample.reachable && sample.ok && results.iter().all(|r| r.ok);
    CheckReport {
        check: spec_name.to_string(),
        target_region: target_region.to_string(),
        seq,
        reachable: sample.reachable,
        ok: sample.ok,
        slo_ok,
        slo: results
            .into_iter()
            .map(|r| SloResult { expr: r.expr, has_value: r.value.is_some(), value: r.value.unwrap_or(0.0), ok: r.ok })
            .collect(),
        values: values.into_iter().collect(),
        labels: sample.labels.clone().into_iter().collect(),
        error: sample.error.clone().unwrap_or_default(),
        at_unix_ms: at_ms,
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Runs `spec` until the process ends.
pub async fn run(mut spec: CheckSpec, out: mpsc::Sender<CheckReport>, metrics: Arc<AgentMetrics>) {
    let mut window = Window::new(spec.window);
    let mut seq = 0;
    loop {
        let started = Instant::now();
        let sample = spec.probe.run(spec.timeout).await;
        window.push(&sample);
        seq += 1;
        let report = evaluate(&spec.name, &spec.target_region, &spec.slo, &window, &sample, seq, now_ms());
        metrics.record(&spec, &report, sample.latency_ms);
        if !report.slo_ok {
            tracing::debug!(check = %spec.name, reachable = report.reachable, error = %report.error, "check bad");
        }
        // Full channel = no session right now; the next evaluation carries newer news.
        let _ = out.try_send(report);
        tokio::time::sleep_until(started + spec.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slo::Slo;

    #[test]
    fn wrong_answers_and_broken_slos_are_both_bad() {
        let mut w = Window::new(10);
        let bad = Sample { reachable: true, ok: false, latency_ms: 10.0, ..Default::default() };
        w.push(&bad);
        let r = evaluate("c", "eu-west", &[], &w, &bad, 1, 0);
        assert!(!r.slo_ok && r.reachable);
        let slo = vec![Slo::parse("p95_ms <= 300").unwrap()];
        let r = evaluate("c", "eu-west", &slo, &w, &bad, 2, 0);
        assert!(!r.slo_ok, "a wrong answer is bad even when the latency SLO holds");
        assert_eq!(r.values["error_ratio"], 1.0);
        let good = Sample { reachable: true, ok: true, latency_ms: 10.0, ..Default::default() };
        w.push(&good);
        assert!(evaluate("c", "eu-west", &slo, &w, &good, 3, 0).slo_ok);
        let strict = vec![Slo::parse("error_ratio <= 0.1").unwrap()];
        assert!(!evaluate("c", "eu-west", &strict, &w, &good, 4, 0).slo_ok, "the window still holds the error");
        let gone = Sample { reachable: false, latency_ms: 400.0, ..Default::default() };
        w.push(&gone);
        assert!(!evaluate("c", "eu-west", &slo, &w, &gone, 3, 0).slo_ok, "unreachable is never ok");
    }
}
