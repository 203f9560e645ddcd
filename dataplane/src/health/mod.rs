//! Active health checks (the pool's `healthCheck`): each data-plane process GETs `path` on
//! every routable endpoint every `interval` (±10% jitter, so a fleet does not check in
//! step), off the request path.
//!
//! - A check passes when the answer comes within `timeout` with a status in
//!   `expectedStatuses`. `unhealthyThreshold` failures in a row mark the endpoint unhealthy,
//!   `healthyThreshold` passes in a row healthy again ([`Verdicts`]).
//! - A new endpoint is routed to at once; its first check decides on its own (so a dead
//!   new endpoint leaves after one check, not three).
//! - **One checker per endpoint per process**: checkers are keyed by address, port and
//!   check settings, not by route or pool. Two pools with the same endpoint and the same
//!   check share one checker, which sets the verdict on both.
//! - [`HealthChecks::reconcile`] runs after every table swap, with the new table's pools and
//!   their endpoints: checkers of endpoints still
//!   present with the same settings keep running with their state; new ones start; gone
//!   ones stop, and their endpoints are marked healthy (no check, no verdict).
//!
//! Verdicts land in the endpoint's `EndpointStats` (one atomic, read on every pick) and in
//! `parapet_endpoint_healthy{cluster, endpoint}`; checks are counted in
//! `parapet_health_checks_total{cluster, reason="pass"|"fail"}`; changes are logged.

#[cfg(test)]
mod tests;
mod verdicts;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use parapet_crds::snapshot::{Cluster, HealthCheck, UpstreamProtocol};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use rand::Rng;
use tokio::task::JoinHandle;

pub use self::verdicts::Verdicts;
use crate::{
    endpoint::{EndpointHandle, EndpointKey, EndpointStats},
    metrics::{ClusterReasonLabels, EndpointLabels, Metrics},
    upstream::TlsKey,
};

type CheckClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// What makes two checks the same check.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CheckKey {
    address: String,
    port: u16,
    http2: bool,
    path: String,
    interval_ms: u64,
    timeout_ms: u64,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    expected: Vec<(u16, u16)>,
    /// Pools with `tls` are checked over TLS with the pool's own settings.
    tls: Option<TlsKey>,
}

/// One endpoint of one pool that a checker reports to.
struct Target {
    key: EndpointKey,
    stats: Arc<EndpointStats>,
    healthy: Gauge,
    pass: Counter,
    fail: Counter,
}

impl Target {
    fn apply(&self, healthy: bool) {
        self.stats.set_healthy(healthy);
        self.healthy.set(i64::from(healthy));
    }
}

const UNKNOWN: u8 = 0;
const HEALTHY: u8 = 1;
const UNHEALTHY: u8 = 2;

struct Checker {
    targets: Arc<Mutex<Vec<Target>>>,
    /// UNKNOWN until the first check, then the verdict.
    state: Arc<AtomicU8>,
    task: JoinHandle<()>,
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every health checker of this process.
pub struct HealthChecks {
    checkers: Mutex<HashMap<CheckKey, Checker>>,
    http1: CheckClient,
    http2: CheckClient,
    metrics: Arc<Metrics>,
}

fn client(http2: bool) -> CheckClient {
    let connector = crate::upstream::connector(Duration::from_secs(30), http2, None)
        .expect("a plain connector always builds");
    client_with(connector, http2)
}

fn client_with(connector: HttpsConnector<HttpConnector>, http2: bool) -> CheckClient {
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new());
    if http2 {
        b.http2_only(true);
    }
    b.build(connector)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HealthChecks {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            checkers: Mutex::default(),
            http1: client(false),
            http2: client(true),
            metrics,
        }
    }

    /// How many checkers run (one per distinct endpoint and check).
    pub fn len(&self) -> usize {
        lock(&self.checkers).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts, keeps and stops checkers to match a table's `pools` (each with its endpoints).
    /// Must run inside a Tokio runtime.
    pub fn reconcile<'a>(
        &self,
        pools: impl IntoIterator<Item = (&'a Cluster, &'a [Arc<EndpointHandle>])>,
    ) {
        let mut wanted: HashMap<CheckKey, Vec<Target>> = HashMap::new();
        let mut tls_of: HashMap<CheckKey, parapet_crds::snapshot::UpstreamTls> = HashMap::new();
        for (spec, endpoints) in pools {
            let Some(hc) = &spec.health_check else {
                continue;
            };
            for e in endpoints.iter().filter(|e| e.routable) {
                let key = CheckKey {
                    address: e.address.clone(),
                    port: e.port,
                    http2: spec.protocol == UpstreamProtocol::Http2,
                    path: hc.path.clone(),
                    interval_ms: hc.interval_ms,
                    timeout_ms: hc.timeout_ms,
                    healthy_threshold: hc.healthy_threshold,
                    unhealthy_threshold: hc.unhealthy_threshold,
                    expected: hc.expected_statuses.clone(),
                    tls: spec.tls.as_ref().map(TlsKey::of),
                };
                if let Some(tls) = &spec.tls {
                    tls_of.entry(key.clone()).or_insert_with(|| tls.clone());
                }
                let endpoint = e.authority().to_string();
                let reason = |reason| {
                    self.metrics
                        .ha
                        .health_checks
                        .get_or_create(&ClusterReasonLabels {
                            cluster: spec.name.clone(),
                            reason,
                        })
                        .clone()
                };
                wanted.entry(key).or_default().push(Target {
                    key: EndpointKey {
                        cluster: spec.name.clone(),
                        address: e.address.clone(),
                        port: e.port,
                    },
                    stats: e.stats.clone(),
                    healthy: self
                        .metrics
                        .ha
                        .endpoint_healthy
                        .get_or_create(&EndpointLabels {
                            cluster: spec.name.clone(),
                            endpoint,
                        })
                        .clone(),
                    pass: reason("pass"),
                    fail: reason("fail"),
                });
            }
        }
        let still_checked: HashSet<EndpointKey> =
            wanted.values().flatten().map(|t| t.key.clone()).collect();

        let mut checkers = lock(&self.checkers);
        let gone: Vec<CheckKey> = checkers
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(checker) = checkers.remove(&key) {
                for t in lock(&checker.targets).iter() {
                    if !still_checked.contains(&t.key) {
                        // No check, no verdict: back to healthy.
                        t.stats.set_healthy(true);
                        self.metrics.ha.endpoint_healthy.remove(&EndpointLabels {
                            cluster: t.key.cluster.clone(),
                            endpoint: format!("{}:{}", bracket(&t.key.address), t.key.port),
                        });
                    }
                }
            }
        }
        let (mut started, mut kept) = (0, 0);
        for (key, targets) in wanted {
            match checkers.get(&key) {
                Some(checker) => {
                    let state = checker.state.load(Ordering::Acquire);
                    if state != UNKNOWN {
                        for t in &targets {
                            t.apply(state == HEALTHY);
                        }
                    }
                    *lock(&checker.targets) = targets;
                    kept += 1;
                }
                None => {
                    for t in &targets {
                        // Healthy until checked; keeps an earlier verdict of another
                        // checker of this endpoint until the first check of this one.
                        t.healthy.set(i64::from(t.stats.is_healthy()));
                    }
                    let targets = Arc::new(Mutex::new(targets));
                    let state = Arc::new(AtomicU8::new(UNKNOWN));
                    let client = match tls_of.get(&key) {
                        // The table was refused before it got here if these were unusable.
                        Some(tls) => match crate::upstream::connector(
                            Duration::from_millis(key.timeout_ms.max(1)),
                            key.http2,
                            Some(tls),
                        ) {
                            Ok(c) => client_with(c, key.http2),
                            Err(e) => {
                                tracing::warn!(endpoint = %key.address, error = %e, "health check TLS settings unusable; not checking");
                                continue;
                            }
                        },
                        None if key.http2 => self.http2.clone(),
                        None => self.http1.clone(),
                    };
                    let task =
                        tokio::spawn(run(key.clone(), client, targets.clone(), state.clone()));
                    checkers.insert(
                        key,
                        Checker {
                            targets,
                            state,
                            task,
                        },
                    );
                    started += 1;
                }
            }
        }
        if started > 0 || kept != checkers.len() {
            tracing::debug!(
                started,
                kept,
                running = checkers.len(),
                "health checkers reconciled"
            );
        }
    }
}

fn bracket(address: &str) -> String {
    if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_string()
    }
}

/// The interval with ±10% jitter.
fn jittered(interval: Duration, rng: &mut impl Rng) -> Duration {
    interval.mul_f64(rng.random_range(0.9..=1.1))
}

async fn run(
    key: CheckKey,
    client: CheckClient,
    targets: Arc<Mutex<Vec<Target>>>,
    state: Arc<AtomicU8>,
) {
    let interval = Duration::from_millis(key.interval_ms.max(1));
    let timeout = Duration::from_millis(key.timeout_ms.max(1));
    let endpoint = format!("{}:{}", bracket(&key.address), key.port);
    let scheme = if key.tls.is_some() { "https" } else { "http" };
    let uri: http::Uri = match format!("{scheme}://{endpoint}{}", key.path).parse() {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(%endpoint, path = %key.path, error = %e, "health check path is not a valid URI; not checking");
            return;
        }
    };
    let mut verdicts = Verdicts::new(key.healthy_threshold, key.unhealthy_threshold);
    // Spread the first checks of a fresh table over a short while.
    let first = interval.min(Duration::from_millis(500));
    let wait = first.mul_f64(rand::rng().random_range(0.0..1.0));
    tokio::time::sleep(wait).await;
    loop {
        let passed = check(&client, &uri, &endpoint, timeout, &key.expected).await;
        let changed = verdicts.record(passed);
        let healthy = verdicts.healthy();
        state.store(if healthy { HEALTHY } else { UNHEALTHY }, Ordering::Release);
        {
            let targets = lock(&targets);
            for t in targets.iter() {
                if passed { &t.pass } else { &t.fail }.inc();
                t.apply(healthy);
            }
        }
        if changed {
            tracing::info!(%endpoint, path = %key.path, healthy, "health check verdict changed");
        }
        let next = jittered(interval, &mut rand::rng());
        tokio::time::sleep(next).await;
    }
}

async fn check(
    client: &CheckClient,
    uri: &http::Uri,
    endpoint: &str,
    timeout: Duration,
    expected: &[(u16, u16)],
) -> bool {
    let req = Request::get(uri.clone())
        .header(header::HOST, endpoint)
        .header(header::USER_AGENT, "parapet-health-check")
        .body(Empty::new());
    let Ok(req) = req else {
        return false;
    };
    let exchange = async {
        let resp = client.request(req).await?;
        let status = resp.status().as_u16();
        // Read the (small) body so the connection can be reused.
        let _ = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await;
        Ok::<u16, hyper_util::client::legacy::Error>(status)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(status)) => {
            let ok = expected
                .iter()
                .any(|(lo, hi)| (*lo..=*hi).contains(&status));
            if !ok {
                tracing::debug!(%endpoint, status, "health check failed: unexpected status");
            }
            ok
        }
        Ok(Err(e)) => {
            tracing::debug!(%endpoint, error = %e, "health check failed");
            false
        }
        Err(_) => {
            tracing::debug!(%endpoint, timeout_ms = timeout.as_millis() as u64, "health check timed out");
            false
        }
    }
}

/// Whether `hc` would pass `status` (for tests and tools).
pub fn expected(hc: &HealthCheck, status: u16) -> bool {
    hc.expected_statuses
        .iter()
        .any(|(lo, hi)| (*lo..=*hi).contains(&status))
}
