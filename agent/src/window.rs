//! The sliding window of a check's recent samples and the statistics SLOs are judged on.

use crate::checks::Sample;
use std::collections::{BTreeMap, VecDeque};

/// The last `capacity` samples of one check.
#[derive(Debug, Clone)]
pub struct Window {
    capacity: usize,
    samples: VecDeque<(bool, f64)>,
}

impl Window {
    /// An empty window of `capacity` samples (at least 1).
    pub fn new(capacity: usize) -> Self {
        Window { capacity: capacity.max(1), samples: VecDeque::new() }
    }

    /// Adds a sample, dropping the oldest when full.
    pub fn push(&mut self, s: &Sample) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        // An unreachable probe is an error whatever it would have said.
        self.samples.push_back((s.reachable && s.ok, s.latency_ms));
    }

    /// `samples`, `error_ratio` and latency percentiles `p50_ms`, `p95_ms`, `p99_ms`
    /// (nearest rank over every sample: a timed-out probe counts with its full wait).
    pub fn stats(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        let n = self.samples.len();
        out.insert("samples".into(), n as f64);
        if n == 0 {
            return out;
        }
        let errors = self.samples.iter().filter(|(ok, _)| !ok).count();
        out.insert("error_ratio".into(), errors as f64 / n as f64);
        let mut lat: Vec<f64> = self.samples.iter().map(|(_, l)| *l).collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        for (name, p) in [("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99)] {
            let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
            out.insert(name.into(), lat[rank - 1]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ok: bool, ms: f64) -> Sample {
        Sample { reachable: true, ok, latency_ms: ms, ..Default::default() }
    }

    #[test]
    fn percentiles_and_error_ratio() {
        let mut w = Window::new(100);
        for i in 1..=100 {
            w.push(&s(i % 10 != 0, i as f64));
        }
        let st = w.stats();
        assert_eq!(st["samples"], 100.0);
        assert_eq!(st["p50_ms"], 50.0);
        assert_eq!(st["p95_ms"], 95.0);
        assert_eq!(st["p99_ms"], 99.0);
        assert!((st["error_ratio"] - 0.1).abs() < 1e-9);
    }

    #[test]
    fn window_slides_and_unreachable_is_an_error() {
        let mut w = Window::new(3);
        for _ in 0..5 {
            w.push(&s(false, 1000.0));
        }
        for _ in 0..3 {
            w.push(&s(true, 5.0));
        }
        assert_eq!(w.stats()["error_ratio"], 0.0);
        assert_eq!(w.stats()["p99_ms"], 5.0);
        w.push(&Sample { reachable: false, ok: true, latency_ms: 400.0, ..Default::default() });
        assert!((w.stats()["error_ratio"] - 1.0 / 3.0).abs() < 1e-9);
    }
}
