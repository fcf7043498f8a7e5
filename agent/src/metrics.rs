//! The agent's Prometheus metrics and the `/metrics` endpoint.

use crate::config::CheckSpec;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use drcut_proto::v1::CheckReport;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use tokio::net::TcpListener;

type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric the agent exports.
pub struct AgentMetrics {
    registry: Registry,
    values: Family<Labels, Gauge<f64, AtomicU64>>,
    reachable: Family<Labels, Gauge>,
    slo_ok: Family<Labels, Gauge>,
    latency: HistogramFamily,
    /// 1 while a session with the coordinator leader is open.
    pub session: Gauge,
    /// Seconds since the heartbeat of the newest lease was sent (or since start).
    pub lease_age_seconds: Gauge<f64, AtomicU64>,
    /// Per database: 1 from a self-fence until the lease is back.
    pub self_fenced: Family<Labels, Gauge>,
    /// Per database: self-fences done.
    pub self_fences: Family<Labels, Counter>,
    /// GameDay faults injected and not reverted yet.
    pub faults_active: Gauge,
}

impl AgentMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let values = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        let reachable = Family::<Labels, Gauge>::default();
        let slo_ok = Family::<Labels, Gauge>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let session = Gauge::default();
        registry.register(
            "drcut_agent_check_value",
            "Latest value of a check's metric (window stats and probe values)",
            values.clone(),
        );
        registry.register(
            "drcut_agent_check_reachable",
            "1 when the newest probe reached its target",
            reachable.clone(),
        );
        registry.register("drcut_agent_check_slo_ok", "1 when every SLO of the check holds", slo_ok.clone());
        registry.register("drcut_agent_check_latency_seconds", "Probe duration", latency.clone());
        registry.register(
            "drcut_agent_session_connected",
            "1 while a session with the coordinator leader is open",
            session.clone(),
        );
        let lease_age_seconds = Gauge::<f64, AtomicU64>::default();
        let self_fenced = Family::<Labels, Gauge>::default();
        let self_fences = Family::<Labels, Counter>::default();
        registry.register(
            "drcut_agent_lease_age_seconds",
            "Seconds since the heartbeat of the newest lease from the coordinator quorum was sent (since start \
             without one); updated only when a resource self-fences",
            lease_age_seconds.clone(),
        );
        registry.register(
            "drcut_agent_self_fenced",
            "1 from a self-fence of the database until the lease is back (it stays fenced after that)",
            self_fenced.clone(),
        );
        registry.register("drcut_agent_self_fences", "Self-fences done, per database", self_fences.clone());
        let faults_active = Gauge::default();
        registry.register(
            "drcut_agent_faults_active",
            "GameDay faults injected by this agent and not reverted yet",
            faults_active.clone(),
        );
        AgentMetrics {
            registry,
            values,
            reachable,
            slo_ok,
            latency,
            session,
            lease_age_seconds,
            self_fenced,
            self_fences,
            faults_active,
        }
    }

    /// Records one evaluation.
    pub fn record(&self, spec: &CheckSpec, r: &CheckReport, latency_ms: f64) {
        let base = vec![
            ("check".to_string(), spec.name.clone()),
            ("type".to_string(), spec.kind.to_string()),
            ("region".to_string(), spec.target_region.clone()),
        ];
        self.reachable.get_or_create(&base).set(r.reachable as i64);
        self.slo_ok.get_or_create(&base).set(r.slo_ok as i64);
        self.latency.get_or_create(&base).observe(latency_ms / 1000.0);
        for (k, v) in &r.values {
            let mut l = base.clone();
            l.push(("metric".to_string(), k.clone()));
            self.values.get_or_create(&l).set(*v);
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::warn!("metrics encoding: {e}");
        }
        out
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `/metrics` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<AgentMetrics>) {
    let router = axum::Router::new().route("/metrics", get(scrape)).with_state(metrics);
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!("metrics server stopped: {e}");
    }
}

async fn scrape(State(m): State<Arc<AgentMetrics>>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.render())
}
