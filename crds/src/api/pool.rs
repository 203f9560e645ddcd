#[cfg(feature = "kube")]
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[cfg(feature = "kube")]
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::LocalObjectReference;
use crate::Duration;

/// Where traffic can go: the endpoints of a Service, or a static list of addresses, and how
/// to spread, check and protect them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "kube", derive(CustomResource, KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "parapet.dev",
        version = "v1alpha1",
        kind = "UpstreamPool",
        namespaced,
        status = "UpstreamPoolStatus",
        shortname = "up",
        category = "parapet",
        printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service.name"}"#,
        printcolumn = r#"{"name":"Algorithm","type":"string","jsonPath":".spec.loadBalancing.algorithm"}"#,
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.readyEndpoints"}"#,
        printcolumn = r#"{"name":"Endpoints","type":"string","jsonPath":".status.endpoints"}"#,
        printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
        printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("has(self.service) != has(self.static)").message("set exactly one of spec.service or spec.static")))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!has(self.static) || self.static.exists(e, !has(e.weight) || e.weight > 0)").message("at least one static endpoint needs a weight above 0")))]
#[serde(rename_all = "camelCase")]
pub struct UpstreamPoolSpec {
    /// Take endpoints from this Service's EndpointSlices (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceBackend>,
    /// Fixed endpoints, for backends outside the cluster or standalone mode.
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    pub static_endpoints: Option<Vec<StaticEndpoint>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// How long to wait for a TCP (and TLS) connection to an endpoint. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// Protocol spoken to the endpoints. Default HTTP1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<UpstreamProtocol>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBackend {
    /// Service name, in the pool's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The Service port (not the target port).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticEndpoint {
    /// IP address or DNS name.
    #[schemars(length(min = 1, max = 253))]
    pub address: String,
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Relative share of traffic. Default 1; 0 takes the endpoint out of rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub weight: Option<i32>,
    /// Topology zone, for zone-aware routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub zone: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BalancingAlgorithm {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two choices over in-flight requests, peak-EWMA latency as tie-breaker.
    LeastRequest,
    /// Consistent hashing on a ring (Ketama).
    RingHash,
    /// Consistent hashing with Google's Maglev table.
    Maglev,
    Random,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!has(self.algorithm) || (self.algorithm != 'RingHash' && self.algorithm != 'Maglev') || has(self.hashOn)").message("RingHash and Maglev need hashOn: say which header, cookie or sourceIP to hash")))]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancing {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<BalancingAlgorithm>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
}

/// What consistent hashing hashes: exactly one of header, cookie or sourceIP.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("(has(self.header) ? 1 : 0) + (has(self.cookie) ? 1 : 0) + (has(self.sourceIP) && self.sourceIP ? 1 : 0) == 1").message("hashOn takes exactly one of header, cookie or sourceIP: true")))]
#[serde(rename_all = "camelCase")]
pub struct HashOn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub cookie: Option<String>,
    #[serde(default, rename = "sourceIP", skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<bool>,
}

/// Active HTTP health checking, run by every data-plane pod, once per endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!has(self.path) || self.path.startsWith('/')").message("healthCheck.path must start with /")))]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Path to GET. Default /healthz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub path: Option<String>,
    /// Time between checks (jittered by up to 10%). Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Consecutive passes to mark an endpoint healthy. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub healthy_threshold: Option<i32>,
    /// Consecutive failures to mark it unhealthy. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub unhealthy_threshold: Option<i32>,
    /// Statuses that count as healthy. Default 200-399.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub expected_statuses: Vec<StatusRange>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self.start <= self.end").message("a status range needs start <= end")))]
pub struct StatusRange {
    #[schemars(range(min = 100, max = 599))]
    pub start: i32,
    #[schemars(range(min = 100, max = 599))]
    pub end: i32,
}

/// Passive outlier detection: eject endpoints that fail real traffic.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive 5xx answers that eject an endpoint. Default 5.
    #[serde(
        default,
        rename = "consecutive5xx",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_5xx: Option<i32>,
    /// Consecutive connect failures / 502 / 503 / 504 that eject an endpoint. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_gateway_errors: Option<i32>,
    /// How often success rates are evaluated. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// First ejection lasts this long, the n-th n times as long (capped at 10x). Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// Never eject more than this share of the pool. Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: Option<i32>,
    /// Eject endpoints whose success rate falls this many standard deviations below the pool's
    /// mean (Envoy's success-rate ejection), given enough traffic. Off when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRateEjection>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SuccessRateEjection {
    /// Endpoints with at least this many requests in an interval are evaluated. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub request_volume: Option<i32>,
    /// Evaluation needs this many such endpoints. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub minimum_hosts: Option<i32>,
    /// In thousandths: 1900 means 1.9 standard deviations. Default 1900.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub stdev_factor_milli: Option<i32>,
}

/// Limits that keep an overloaded pool from taking the gateway down with it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_pending_requests: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_requests: Option<i32>,
}

/// What happens when this pool runs short of healthy endpoints.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    /// Another UpstreamPool in this namespace that takes traffic (active-passive) while this
    /// pool's healthy share is below `minHealthyPercent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_pool: Option<LocalObjectReference>,
    /// Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub min_healthy_percent: Option<i32>,
    /// Prefer endpoints in the data-plane pod's own zone, spilling over to other zones in
    /// proportion when the local zone is short of healthy endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer_local_zone: Option<bool>,
}

/// TLS from the data plane to the endpoints.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTls {
    /// Server name to send and verify. Default: the endpoint's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub sni: Option<String>,
    /// Secret with `ca.crt` to verify the endpoints against. Default: the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<LocalObjectReference>,
    /// `kubernetes.io/tls` Secret presented to endpoints that require client certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_secret_ref: Option<LocalObjectReference>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum UpstreamProtocol {
    #[default]
    HTTP1,
    HTTP2,
}

#[cfg(feature = "kube")]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamPoolStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    #[schemars(length(max = 8))]
    pub conditions: Vec<Condition>,
    /// Endpoints known for this pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<i32>,
    /// Of those, the ones ready for traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_endpoints: Option<i32>,
}
