//! Prometheus metrics. Per-route and per-cluster handles are created when a table is
//! installed, so the request path only bumps atomics (no label allocation per request).

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub code: StatusClass,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum StatusClass {
    C1xx,
    C2xx,
    C3xx,
    C4xx,
    C5xx,
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Self::C1xx => "1xx",
            Self::C2xx => "2xx",
            Self::C3xx => "3xx",
            Self::C4xx => "4xx",
            Self::C5xx => "5xx",
        })
    }
}

impl StatusClass {
    pub const ALL: [StatusClass; 5] = [Self::C1xx, Self::C2xx, Self::C3xx, Self::C4xx, Self::C5xx];

    pub fn of(status: u16) -> usize {
        usize::from(status / 100).clamp(1, 5) - 1
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

fn latency_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// Every metric the data plane exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteLabels, Counter>,
    pub request_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub upstream_duration: Family<ClusterLabels, Histogram, fn() -> Histogram>,
    pub upstream_requests: Family<ClusterLabels, Counter>,
    pub upstream_connect_errors: Family<ClusterLabels, Counter>,
    pub no_route: Counter,
    pub in_flight: Gauge,
    pub bytes: Family<DirectionLabel, Counter>,
    pub request_bytes: Counter,
    pub response_bytes: Counter,
    pub snapshot_version: Gauge,
    pub snapshot_applied_timestamp: Gauge<f64, AtomicU64>,
    pub snapshot_apply_duration: Histogram,
    pub snapshot_pushes: Family<ReasonLabel, Counter>,
    pub rejected_requests: Family<ReasonLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("parapet");
        let requests = Family::<RouteLabels, Counter>::default();
        registry.register(
            "requests",
            "Downstream requests by route and status class",
            requests.clone(),
        );
        let request_duration: Family<RouteLabel, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_buckets);
        registry.register(
            "request_duration_seconds",
            "Downstream request latency (to response headers) by route",
            request_duration.clone(),
        );
        let upstream_duration: Family<ClusterLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_buckets);
        registry.register(
            "upstream_duration_seconds",
            "Upstream latency (to response headers) by cluster",
            upstream_duration.clone(),
        );
        let upstream_requests = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "upstream_requests",
            "Requests sent upstream by cluster (retries included)",
            upstream_requests.clone(),
        );
        let upstream_connect_errors = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "upstream_connect_errors",
            "Failed connection attempts to endpoints by cluster",
            upstream_connect_errors.clone(),
        );
        let no_route = Counter::default();
        registry.register(
            "no_route",
            "Requests that matched no route (404)",
            no_route.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Downstream requests in flight",
            in_flight.clone(),
        );
        let bytes = Family::<DirectionLabel, Counter>::default();
        registry.register(
            "body_bytes",
            "Body bytes proxied, by direction",
            bytes.clone(),
        );
        let request_bytes = bytes
            .get_or_create(&DirectionLabel {
                direction: "request",
            })
            .clone();
        let response_bytes = bytes
            .get_or_create(&DirectionLabel {
                direction: "response",
            })
            .clone();
        let snapshot_version = Gauge::default();
        registry.register(
            "snapshot_version",
            "Version of the snapshot in force (0: none)",
            snapshot_version.clone(),
        );
        let snapshot_applied_timestamp = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "snapshot_applied_timestamp_seconds",
            "Unix time the snapshot in force was applied; age = time() - this",
            snapshot_applied_timestamp.clone(),
        );
        let snapshot_apply_duration =
            Histogram::new([0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]);
        registry.register(
            "snapshot_apply_duration_seconds",
            "Time to validate, build and swap in a snapshot",
            snapshot_apply_duration.clone(),
        );
        let snapshot_pushes = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "snapshot_pushes",
            "Snapshot pushes by result (applied, unchanged, stale, invalid, unauthorized, too_large)",
            snapshot_pushes.clone(),
        );
        let rejected_requests = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "rejected_requests",
            "Downstream requests refused before routing, by reason",
            rejected_requests.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            upstream_duration,
            upstream_requests,
            upstream_connect_errors,
            no_route,
            in_flight,
            bytes,
            request_bytes,
            response_bytes,
            snapshot_version,
            snapshot_applied_timestamp,
            snapshot_apply_duration,
            snapshot_pushes,
            rejected_requests,
        }
    }

    pub fn push(&self, reason: &'static str) {
        self.snapshot_pushes
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn reject(&self, reason: &'static str) {
        self.rejected_requests
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Handles for one route, created at table install.
pub struct RouteMetrics {
    pub by_class: [Counter; 5],
    pub duration: Histogram,
}

impl RouteMetrics {
    pub fn new(m: &Metrics, route: &str) -> Self {
        Self {
            by_class: StatusClass::ALL.map(|code| {
                m.requests
                    .get_or_create(&RouteLabels {
                        route: route.to_string(),
                        code,
                    })
                    .clone()
            }),
            duration: m
                .request_duration
                .get_or_create(&RouteLabel {
                    route: route.to_string(),
                })
                .clone(),
        }
    }

    pub fn record(&self, status: u16, seconds: f64) {
        self.by_class[StatusClass::of(status)].inc();
        self.duration.observe(seconds);
    }
}

/// Handles for one cluster, created at table install.
pub struct ClusterMetrics {
    pub requests: Counter,
    pub connect_errors: Counter,
    pub duration: Histogram,
}

impl ClusterMetrics {
    pub fn new(m: &Metrics, cluster: &str) -> Self {
        let l = ClusterLabels {
            cluster: cluster.to_string(),
        };
        Self {
            requests: m.upstream_requests.get_or_create(&l).clone(),
            connect_errors: m.upstream_connect_errors.get_or_create(&l).clone(),
            duration: m.upstream_duration.get_or_create(&l).clone(),
        }
    }
}
