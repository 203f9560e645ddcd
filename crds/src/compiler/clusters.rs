//! UpstreamPool → snapshot clusters with endpoints, defaults applied.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    Diagnostics, Inputs, KIND_POOL, ObjectKey, Reason, ServicePortKey, name, ns, qualified,
};
use crate::{
    Duration,
    api::{self, Object, UpstreamPoolSpec},
    snapshot::{
        Algorithm, CertificatePair, CircuitBreaker, Cluster, Endpoint, Failover, HashOn,
        HealthCheck, LoadBalancing, OutlierDetection, SuccessRate, UpstreamProtocol, UpstreamTls,
    },
};

pub(super) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

type Pools<'a> = BTreeMap<(String, String), &'a Object<UpstreamPoolSpec>>;

/// Compiles every pool (so each gets its diagnostics) but emits only those a route reaches,
/// directly or as a backup, so unreferenced pools cost the data plane nothing.
pub(super) fn compile_clusters(
    inputs: &Inputs<'_>,
    pools: &Pools<'_>,
    referenced: &BTreeSet<(String, String)>,
    diags: &mut Diagnostics,
) -> Vec<Cluster> {
    let mut compiled: BTreeMap<(String, String), Cluster> = BTreeMap::new();
    for (key, pool) in pools {
        compiled.insert(key.clone(), compile_pool(inputs, pools, pool, diags));
    }
    // Close the referenced set over backup pools.
    let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
    let mut stack: Vec<(String, String)> = referenced.iter().cloned().collect();
    while let Some(k) = stack.pop() {
        if !wanted.insert(k.clone()) {
            continue;
        }
        if let Some(pool) = pools.get(&k)
            && let Some(b) = pool
                .spec
                .failover
                .as_ref()
                .and_then(|f| f.backup_pool.as_ref())
        {
            stack.push((k.0.clone(), b.name.clone()));
        }
    }
    compiled
        .into_iter()
        .filter(|(k, _)| wanted.contains(k))
        .map(|(_, c)| c)
        .collect()
}

fn compile_pool(
    inputs: &Inputs<'_>,
    pools: &Pools<'_>,
    pool: &Object<UpstreamPoolSpec>,
    diags: &mut Diagnostics,
) -> Cluster {
    let (namespace, pool_name) = (ns(&pool.metadata), name(&pool.metadata));
    let me = ObjectKey::new(KIND_POOL, namespace, pool_name);
    let s = &pool.spec;

    let endpoints = normalise(endpoints(inputs, namespace, s, &me, diags));

    let algorithm = s
        .load_balancing
        .as_ref()
        .and_then(|l| l.algorithm)
        .unwrap_or_default();
    let hash_on = s
        .load_balancing
        .as_ref()
        .and_then(|l| l.hash_on.as_ref())
        .and_then(|h| {
            if let Some(name) = &h.header {
                Some(HashOn::Header(name.to_ascii_lowercase()))
            } else if let Some(c) = &h.cookie {
                Some(HashOn::Cookie(c.clone()))
            } else if h.source_ip == Some(true) {
                Some(HashOn::SourceIp)
            } else {
                None
            }
        });
    let algorithm = match algorithm {
        api::BalancingAlgorithm::RoundRobin => Algorithm::RoundRobin,
        api::BalancingAlgorithm::LeastRequest => Algorithm::LeastRequest,
        api::BalancingAlgorithm::RingHash => Algorithm::RingHash,
        api::BalancingAlgorithm::Maglev => Algorithm::Maglev,
        api::BalancingAlgorithm::Random => Algorithm::Random,
    };
    // Hashing with nothing to hash on would send everything to one endpoint: the schema
    // forbids it; a file that slips through hashes the client address.
    let hash_on = match algorithm {
        Algorithm::RingHash | Algorithm::Maglev => Some(hash_on.unwrap_or(HashOn::SourceIp)),
        _ => None,
    };

    let failover = s.failover.as_ref().map(|f| {
        let backup_cluster = f.backup_pool.as_ref().and_then(|b| {
            if b.name == pool_name {
                diags.error(
                    &me,
                    Reason::BackupPoolNotFound,
                    format!("failover.backupPool names the pool itself ({pool_name}); name another UpstreamPool"),
                );
                None
            } else if pools.contains_key(&(namespace.to_string(), b.name.clone())) {
                Some(qualified(namespace, &b.name))
            } else {
                diags.error(
                    &me,
                    Reason::BackupPoolNotFound,
                    format!(
                        "failover.backupPool {} does not exist in namespace {namespace}; create it or fix the name",
                        b.name
                    ),
                );
                None
            }
        });
        Failover {
            backup_cluster,
            min_healthy_percent: pct(f.min_healthy_percent, 50),
            prefer_local_zone: f.prefer_local_zone.unwrap_or(false),
        }
    });

    Cluster {
        name: qualified(namespace, pool_name),
        endpoints,
        load_balancing: LoadBalancing { algorithm, hash_on },
        connect_timeout_ms: s
            .connect_timeout
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
            .as_millis(),
        protocol: match s.protocol.unwrap_or_default() {
            api::UpstreamProtocol::HTTP1 => UpstreamProtocol::Http1,
            api::UpstreamProtocol::HTTP2 => UpstreamProtocol::Http2,
        },
        health_check: s.health_check.as_ref().map(health_check),
        outlier_detection: s.outlier_detection.as_ref().map(outlier_detection),
        circuit_breaker: s.circuit_breaker.as_ref().map(|c| CircuitBreaker {
            max_connections: c.max_connections.and_then(|v| u32::try_from(v).ok()),
            max_pending_requests: c.max_pending_requests.and_then(|v| u32::try_from(v).ok()),
            max_requests: c.max_requests.and_then(|v| u32::try_from(v).ok()),
        }),
        failover,
        tls: s
            .tls
            .as_ref()
            .map(|t| upstream_tls(inputs, namespace, t, &me, diags)),
    }
}

/// Endpoints in table order: by address and port, each once.
pub(super) fn normalise(mut endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
    endpoints.sort();
    endpoints.dedup_by(|a, b| a.address == b.address && a.port == b.port);
    endpoints
}

/// The endpoints of a Service-backed pool, `None` for static pools.
pub(super) fn service_endpoints(
    inputs: &Inputs<'_>,
    namespace: &str,
    s: &api::UpstreamPoolSpec,
) -> Option<Vec<Endpoint>> {
    let svc = s
        .service
        .as_ref()
        .filter(|_| s.static_endpoints.is_none())?;
    let key = ServicePortKey {
        namespace: namespace.to_string(),
        service: svc.name.clone(),
        port: svc.port,
    };
    Some(
        inputs
            .service_endpoints
            .get(&key)
            .cloned()
            .unwrap_or_default(),
    )
}

fn endpoints(
    inputs: &Inputs<'_>,
    namespace: &str,
    s: &api::UpstreamPoolSpec,
    me: &ObjectKey,
    diags: &mut Diagnostics,
) -> Vec<Endpoint> {
    if let Some(statics) = &s.static_endpoints {
        return statics
            .iter()
            .filter_map(|e| {
                Some(Endpoint {
                    address: e.address.clone(),
                    port: u16::try_from(e.port).ok().filter(|p| *p > 0)?,
                    weight: u32::try_from(e.weight.unwrap_or(1)).unwrap_or(0),
                    zone: e.zone.clone(),
                    for_zones: Vec::new(),
                    ready: true,
                    serving: true,
                    terminating: false,
                })
            })
            .collect();
    }
    let Some(svc) = &s.service else {
        return Vec::new();
    };
    let key = ServicePortKey {
        namespace: namespace.to_string(),
        service: svc.name.clone(),
        port: svc.port,
    };
    match inputs.service_endpoints.get(&key) {
        None => {
            diags.error(
                me,
                Reason::ServiceNotFound,
                format!(
                    "Service {}/{} port {} was not found (or has no such port); create it or fix spec.service",
                    namespace, svc.name, svc.port
                ),
            );
            Vec::new()
        }
        Some(eps) => {
            if !eps.iter().any(Endpoint::routable) {
                diags.warning(
                    me,
                    Reason::NoEndpoints,
                    format!(
                        "Service {}/{} has no ready endpoints; requests to this pool get 503 until it has",
                        namespace, svc.name
                    ),
                );
            }
            eps.clone()
        }
    }
}

fn pct(v: Option<i32>, default: u32) -> u32 {
    v.and_then(|v| u32::try_from(v).ok())
        .unwrap_or(default)
        .min(100)
}

fn count(v: Option<i32>, default: u32) -> u32 {
    v.and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

fn health_check(h: &api::HealthCheck) -> HealthCheck {
    let mut expected: Vec<(u16, u16)> = h
        .expected_statuses
        .iter()
        .filter_map(|r| Some((u16::try_from(r.start).ok()?, u16::try_from(r.end).ok()?)))
        .filter(|(a, b)| a <= b)
        .collect();
    if expected.is_empty() {
        expected.push((200, 399));
    }
    expected.sort_unstable();
    expected.dedup();
    HealthCheck {
        path: h.path.clone().unwrap_or_else(|| "/healthz".to_string()),
        interval_ms: h
            .interval
            .unwrap_or(Duration::from_secs(5))
            .as_millis()
            .max(1),
        timeout_ms: h
            .timeout
            .unwrap_or(Duration::from_secs(1))
            .as_millis()
            .max(1),
        healthy_threshold: count(h.healthy_threshold, 2),
        unhealthy_threshold: count(h.unhealthy_threshold, 3),
        expected_statuses: expected,
    }
}

fn outlier_detection(o: &api::OutlierDetection) -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx: count(o.consecutive_5xx, 5),
        consecutive_gateway_errors: count(o.consecutive_gateway_errors, 3),
        interval_ms: o
            .interval
            .unwrap_or(Duration::from_secs(10))
            .as_millis()
            .max(1),
        base_ejection_time_ms: o
            .base_ejection_time
            .unwrap_or(Duration::from_secs(30))
            .as_millis(),
        max_ejection_percent: pct(o.max_ejection_percent, 50),
        success_rate: o.success_rate.as_ref().map(|s| SuccessRate {
            request_volume: count(s.request_volume, 100),
            minimum_hosts: count(s.minimum_hosts, 5),
            stdev_factor_milli: count(s.stdev_factor_milli, 1900),
        }),
    }
}

fn upstream_tls(
    inputs: &Inputs<'_>,
    namespace: &str,
    t: &api::UpstreamTls,
    me: &ObjectKey,
    diags: &mut Diagnostics,
) -> UpstreamTls {
    let ca_pem = t.ca_secret_ref.as_ref().and_then(|r| {
        let data = secret(inputs, namespace, &r.name, "tls.caSecretRef", me, diags)?;
        match data
            .get("ca.crt")
            .and_then(|b| String::from_utf8(b.clone()).ok())
        {
            Some(pem) => Some(pem),
            None => {
                diags.error(
                    me,
                    Reason::InvalidSecret,
                    format!(
                        "Secret {namespace}/{} has no ca.crt; add the CA bundle under that key",
                        r.name
                    ),
                );
                None
            }
        }
    });
    let client_certificate = t.client_certificate_secret_ref.as_ref().and_then(|r| {
        certificate_pair(
            inputs,
            namespace,
            &r.name,
            "tls.clientCertificateSecretRef",
            me,
            diags,
        )
    });
    UpstreamTls {
        sni: t.sni.clone(),
        ca_pem,
        client_certificate,
    }
}

pub(super) fn secret<'i>(
    inputs: &'i Inputs<'_>,
    namespace: &str,
    name: &str,
    field: &str,
    me: &ObjectKey,
    diags: &mut Diagnostics,
) -> Option<&'i super::SecretData> {
    let found = inputs
        .secrets
        .get(&(namespace.to_string(), name.to_string()));
    if found.is_none() {
        let message = match inputs.secret_label_selector.as_deref() {
            None => format!(
                "{field} names Secret {namespace}/{name}, which does not exist; create it or fix the name"
            ),
            Some(selector) => not_visible(field, namespace, name, selector),
        };
        diags.error(me, Reason::SecretNotFound, message);
    }
    found
}

/// The message for a Secret that is absent or outside the label selector Secrets are read
/// by: the two look alike to whoever compiles, so it names both fixes.
fn not_visible(field: &str, namespace: &str, name: &str, selector: &str) -> String {
    // `kubectl label` takes key=value pairs; other selectors can only be described.
    let plain = selector.split(',').all(|t| {
        t.split_once('=')
            .is_some_and(|(k, v)| !k.is_empty() && !k.ends_with('!') && !v.starts_with('='))
    });
    let fix = if plain {
        format!(
            "label it (kubectl label secret -n {namespace} {name} {}) so the operator can read it",
            selector.replace(',', " ")
        )
    } else {
        format!("label it to match {selector} so the operator can read it")
    };
    format!(
        "{field} names Secret {namespace}/{name}, which does not exist or is not labelled {selector} (the operator reads only Secrets with that label); {fix}, or create it or fix the name"
    )
}

/// A `kubernetes.io/tls` Secret's `tls.crt` and `tls.key`.
pub(super) fn certificate_pair(
    inputs: &Inputs<'_>,
    namespace: &str,
    name: &str,
    field: &str,
    me: &ObjectKey,
    diags: &mut Diagnostics,
) -> Option<CertificatePair> {
    let data = secret(inputs, namespace, name, field, me, diags)?;
    let get = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.clone()).ok());
    match (get("tls.crt"), get("tls.key")) {
        (Some(cert_pem), Some(key_pem)) if !cert_pem.is_empty() && !key_pem.is_empty() => {
            Some(CertificatePair { cert_pem, key_pem })
        }
        _ => {
            diags.error(
                me,
                Reason::InvalidSecret,
                format!("Secret {namespace}/{name} needs tls.crt and tls.key (a kubernetes.io/tls Secret)"),
            );
            None
        }
    }
}
