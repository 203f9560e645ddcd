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

/// One endpoint of one cluster: `endpoint` is `address:port`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub cluster: String,
    pub endpoint: String,
}

/// A cluster and why something happened to it (`result`, `reason`, `limit`, `locality`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterReasonLabels {
    pub cluster: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLocalityLabels {
    pub cluster: String,
    pub locality: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteReasonLabels {
    pub route: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteResultLabels {
    pub route: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabel {
    pub lane: &'static str,
}

fn latency_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// Every metric the data plane exports.
pub struct Metrics {
    /// Response cache counters (hits, misses, stale, …).
    pub cache: crate::cache::CacheMetrics,
    registry: Registry,
    pub requests: Family<RouteLabels, Counter>,
    pub request_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub upstream_duration: Family<ClusterLabels, Histogram, fn() -> Histogram>,
    pub upstream_requests: Family<ClusterLabels, Counter>,
    pub upstream_connect_errors: Family<ClusterLabels, Counter>,
    pub no_route: Counter,
    pub in_flight: Gauge,
    pub parked_connections: Gauge,
    pub bytes: Family<DirectionLabel, Counter>,
    pub request_bytes: Counter,
    pub response_bytes: Counter,
    pub snapshot_version: Gauge,
    pub snapshot_applied_timestamp: Gauge<f64, AtomicU64>,
    pub snapshot_apply_duration: Histogram,
    pub snapshot_pushes: Family<ReasonLabel, Counter>,
    pub rejected_requests: Family<ReasonLabel, Counter>,
    /// Mirrored copies by route and result (sent, failed, skipped).
    pub mirror_requests: Family<RouteResultLabels, Counter>,
    pub ha: HaMetrics,
    pub access_log: AccessLogMetrics,
    pub trace: TraceMetrics,
    /// External authorization checks, shared by every route's service.
    pub ext_auth: crate::extauth::ExtAuthMetrics,
    /// JWT key-set fetches.
    pub jwt: crate::jwt::JwtMetrics,
}

/// The span exporter's counters.
#[derive(Clone, Debug, Default)]
pub struct TraceMetrics {
    /// Spans the collector accepted.
    pub spans_exported: Counter,
    /// Spans lost because their batch could not be exported.
    pub spans_failed: Counter,
}

/// The access log's counters.
#[derive(Clone, Default)]
pub struct AccessLogMetrics {
    /// Records written.
    pub written: Counter,
    /// Records dropped because the writer's queue was full.
    pub dropped: Counter,
    /// Records lost to write errors.
    pub write_errors: Counter,
}

/// What the high-availability machinery decides: health, ejections, panic, breakers,
/// failover, locality, retries, hedges, lanes.
pub struct HaMetrics {
    pub endpoint_healthy: Family<EndpointLabels, Gauge>,
    pub endpoint_ejected: Family<EndpointLabels, Gauge>,
    pub health_checks: Family<ClusterReasonLabels, Counter>,
    pub ejections: Family<ClusterReasonLabels, Counter>,
    pub ejections_refused: Family<ClusterLabels, Counter>,
    pub panic: Family<ClusterLabels, Counter>,
    pub breaker_overflows: Family<ClusterReasonLabels, Counter>,
    pub failover_active: Family<ClusterLabels, Gauge>,
    pub zone_picks: Family<ClusterLocalityLabels, Counter>,
    pub retries: Family<RouteReasonLabels, Counter>,
    pub retries_denied: Family<RouteReasonLabels, Counter>,
    pub retry_budget_exhausted: Family<RouteLabel, Counter>,
    pub hedges: Family<RouteLabel, Counter>,
    pub hedges_won: Family<RouteLabel, Counter>,
    pub deadline_exceeded: Family<RouteLabel, Counter>,
    pub lane_in_flight: Family<LaneLabel, Gauge>,
    pub lane_capacity: Family<LaneLabel, Gauge>,
    pub route_in_flight: Family<RouteLabel, Gauge>,
    pub route_slow: Family<RouteLabel, Gauge>,
}

impl HaMetrics {
    fn register(r: &mut Registry) -> Self {
        fn reg<M: prometheus_client::registry::Metric + Clone>(
            r: &mut Registry,
            name: &str,
            help: &str,
            m: M,
        ) -> M {
            r.register(name, help, m.clone());
            m
        }
        Self {
            endpoint_healthy: reg(
                r,
                "endpoint_healthy",
                "Active health check verdict per endpoint (1 healthy, 0 unhealthy); only for pools with healthCheck",
                Family::default(),
            ),
            endpoint_ejected: reg(
                r,
                "endpoint_ejected",
                "Whether outlier detection has ejected the endpoint (1) or not (0)",
                Family::default(),
            ),
            health_checks: reg(
                r,
                "health_checks",
                "Active health checks by cluster and reason (pass, fail)",
                Family::default(),
            ),
            ejections: reg(
                r,
                "outlier_ejections",
                "Outlier ejections by cluster and reason (consecutive_5xx, consecutive_gateway_errors, success_rate, probe_failed)",
                Family::default(),
            ),
            ejections_refused: reg(
                r,
                "outlier_ejections_refused",
                "Ejections not made because maxEjectionPercent of the pool was already ejected",
                Family::default(),
            ),
            panic: reg(
                r,
                "panic_requests",
                "Requests sent to an unhealthy or ejected endpoint because no endpoint of the cluster was usable (panic mode: fail open)",
                Family::default(),
            ),
            breaker_overflows: reg(
                r,
                "circuit_breaker_overflows",
                "Requests refused with 503 by a pool's circuit breaker, by the limit hit (requests, pending)",
                Family::default(),
            ),
            failover_active: reg(
                r,
                "failover_active",
                "1 while a pool's healthy share is below minHealthyPercent and its backup pool takes its traffic",
                Family::default(),
            ),
            zone_picks: reg(
                r,
                "zone_picks",
                "Endpoint picks in pools with preferLocalZone, by locality (local, remote)",
                Family::default(),
            ),
            retries: reg(
                r,
                "retries",
                "Retries sent, by route and the failure retried (connect_failure, reset, timeout, status)",
                Family::default(),
            ),
            retries_denied: reg(
                r,
                "retries_denied",
                "Retriable failures not retried, by route and reason (budget, non_idempotent, body_not_replayable, deadline, attempts)",
                Family::default(),
            ),
            retry_budget_exhausted: reg(
                r,
                "retry_budget_exhausted",
                "Retries and hedges refused because the route's retry budget was spent",
                Family::default(),
            ),
            hedges: reg(
                r,
                "hedges",
                "Hedged attempts sent, by route",
                Family::default(),
            ),
            hedges_won: reg(
                r,
                "hedges_won",
                "Requests answered by the hedged attempt rather than the first",
                Family::default(),
            ),
            deadline_exceeded: reg(
                r,
                "deadline_exceeded",
                "Requests that ran out of time (route timeout or the client's x-parapet-timeout-ms)",
                Family::default(),
            ),
            lane_in_flight: reg(
                r,
                "lane_in_flight",
                "Requests in flight per lane (fast, slow)",
                Family::default(),
            ),
            lane_capacity: reg(
                r,
                "lane_capacity",
                "In-flight capacity per lane (fast: the whole capacity; slow: its share)",
                Family::default(),
            ),
            route_in_flight: reg(
                r,
                "route_in_flight",
                "Requests in flight per route (bounded by the route bulkhead)",
                Family::default(),
            ),
            route_slow: reg(
                r,
                "route_slow_lane",
                "1 while the route's observed latency puts it in the slow lane",
                Family::default(),
            ),
        }
    }

    /// Forgets the per-endpoint series of an endpoint that left the table.
    pub fn forget_endpoint(&self, cluster: &str, endpoint: &str) {
        let l = EndpointLabels {
            cluster: cluster.to_string(),
            endpoint: endpoint.to_string(),
        };
        self.endpoint_healthy.remove(&l);
        self.endpoint_ejected.remove(&l);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("parapet");
        let cache = crate::cache::CacheMetrics::default();
        cache.register(&mut registry);
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
        let parked_connections = Gauge::default();
        registry.register(
            "parked_connections",
            "Idle plain HTTP/1.1 keep-alive connections waiting for their next request without a task of their own",
            parked_connections.clone(),
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
        let mirror_requests = Family::<RouteResultLabels, Counter>::default();
        registry.register(
            "mirror_requests",
            "Copies of requests sent to mirror clusters, by route and result: sent (an answer came), failed (no endpoint, no answer in time, or an error), skipped (the body was streamed, not buffered)",
            mirror_requests.clone(),
        );
        let ha = HaMetrics::register(&mut registry);
        let access_log = AccessLogMetrics::default();
        registry.register(
            "access_log_records",
            "Access-log records written",
            access_log.written.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access-log records dropped because the writer's queue was full (--access-log-buffer); requests are never held up by the access log",
            access_log.dropped.clone(),
        );
        registry.register(
            "access_log_write_errors",
            "Access-log records lost because they could not be written (full disk, closed pipe…)",
            access_log.write_errors.clone(),
        );
        let trace = TraceMetrics::default();
        registry.register(
            "trace_spans_exported",
            "Spans exported to the OTLP collector (--otlp-endpoint)",
            trace.spans_exported.clone(),
        );
        registry.register(
            "trace_spans_failed",
            "Spans lost because their batch could not be exported (collector down, refused or slow); requests never wait for the exporter",
            trace.spans_failed.clone(),
        );
        let ext_auth = crate::extauth::ExtAuthMetrics::default();
        ext_auth.register(&mut registry);
        let jwt = crate::jwt::JwtMetrics::default();
        jwt.register(&mut registry);
        Self {
            jwt,
            ext_auth,
            trace,
            access_log,
            mirror_requests,
            cache,
            registry,
            ha,
            requests,
            request_duration,
            upstream_duration,
            upstream_requests,
            upstream_connect_errors,
            no_route,
            in_flight,
            parked_connections,
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
    /// By [`RetryReason`](crate::retry::RetryReason) order: connect_failure, reset, timeout, status.
    pub retries: [Counter; 4],
    /// By [`Denied`](crate::retry::Denied) order.
    pub retries_denied: [Counter; 5],
    pub retry_budget_exhausted: Counter,
    pub hedges: Counter,
    pub hedges_won: Counter,
    pub deadline_exceeded: Counter,
    pub in_flight: Gauge,
    pub slow: Gauge,
}

impl RouteMetrics {
    pub fn new(m: &Metrics, route: &str) -> Self {
        let label = RouteLabel {
            route: route.to_string(),
        };
        let reason = |family: &Family<RouteReasonLabels, Counter>, reason: &'static str| {
            family
                .get_or_create(&RouteReasonLabels {
                    route: route.to_string(),
                    reason,
                })
                .clone()
        };
        Self {
            by_class: StatusClass::ALL.map(|code| {
                m.requests
                    .get_or_create(&RouteLabels {
                        route: route.to_string(),
                        code,
                    })
                    .clone()
            }),
            duration: m.request_duration.get_or_create(&label).clone(),
            retries: crate::retry::RetryReason::ALL.map(|r| reason(&m.ha.retries, r.label())),
            retries_denied: crate::retry::Denied::ALL
                .map(|r| reason(&m.ha.retries_denied, r.label())),
            retry_budget_exhausted: m.ha.retry_budget_exhausted.get_or_create(&label).clone(),
            hedges: m.ha.hedges.get_or_create(&label).clone(),
            hedges_won: m.ha.hedges_won.get_or_create(&label).clone(),
            deadline_exceeded: m.ha.deadline_exceeded.get_or_create(&label).clone(),
            in_flight: m.ha.route_in_flight.get_or_create(&label).clone(),
            slow: m.ha.route_slow.get_or_create(&label).clone(),
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
    pub panic: Counter,
    pub overflow_requests: Counter,
    pub overflow_pending: Counter,
    pub failover_active: Gauge,
    pub zone_local: Counter,
    pub zone_remote: Counter,
}

impl ClusterMetrics {
    pub fn new(m: &Metrics, cluster: &str) -> Self {
        let l = ClusterLabels {
            cluster: cluster.to_string(),
        };
        let reason = |family: &Family<ClusterReasonLabels, Counter>, reason: &'static str| {
            family
                .get_or_create(&ClusterReasonLabels {
                    cluster: cluster.to_string(),
                    reason,
                })
                .clone()
        };
        let locality = |locality: &'static str| {
            m.ha.zone_picks
                .get_or_create(&ClusterLocalityLabels {
                    cluster: cluster.to_string(),
                    locality,
                })
                .clone()
        };
        Self {
            requests: m.upstream_requests.get_or_create(&l).clone(),
            connect_errors: m.upstream_connect_errors.get_or_create(&l).clone(),
            duration: m.upstream_duration.get_or_create(&l).clone(),
            panic: m.ha.panic.get_or_create(&l).clone(),
            overflow_requests: reason(&m.ha.breaker_overflows, "requests"),
            overflow_pending: reason(&m.ha.breaker_overflows, "pending"),
            failover_active: m.ha.failover_active.get_or_create(&l).clone(),
            zone_local: locality("local"),
            zone_remote: locality("remote"),
        }
    }
}

/// Handles for one route's mirrors, created only for routes that mirror.
pub struct MirrorMetrics {
    pub sent: Counter,
    pub failed: Counter,
    pub skipped: Counter,
}

impl MirrorMetrics {
    pub fn new(m: &Metrics, route: &str) -> Self {
        let result = |result| {
            m.mirror_requests
                .get_or_create(&RouteResultLabels {
                    route: route.to_string(),
                    result,
                })
                .clone()
        };
        Self {
            sent: result("sent"),
            failed: result("failed"),
            skipped: result("skipped"),
        }
    }
}
