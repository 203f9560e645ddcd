//! The operator's metrics and its /metrics, /healthz, /readyz server.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabel {
    pub pod: String,
}

/// What a push carried: `full` (the whole table) or `delta`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BodyLabel {
    pub body: &'static str,
}

fn push_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    pub compiles: Counter,
    pub compiles_unchanged: Counter,
    pub fast_path_compiles: Counter,
    pub compile_duration: Histogram,
    pub snapshot_bytes: Gauge,
    pub snapshot_version: Gauge,
    pub pushes_ok: Counter,
    pub pushes_failed: Counter,
    push_bodies: Family<BodyLabel, Counter>,
    push_bytes: Family<BodyLabel, Counter>,
    push_latency: Family<PodLabel, Histogram, fn() -> Histogram>,
    acked: Family<PodLabel, Gauge>,
    pub dataplane_pods: Gauge,
    pub pods_in_sync: Gauge,
    pub leader: Gauge,
    pub status_writes: Counter,
    pub status_errors: Counter,
    pub ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("parapet_operator");
        macro_rules! reg {
            ($name:expr, $help:expr, $m:expr) => {{
                let m = $m;
                r.register($name, $help, m.clone());
                m
            }};
        }
        let compiles = reg!(
            "compiles",
            "Table compilations (reconciles)",
            Counter::default()
        );
        let compiles_unchanged = reg!(
            "compiles_unchanged",
            "Compilations whose table was unchanged (not pushed)",
            Counter::default()
        );
        let fast_path_compiles = reg!(
            "endpoint_refreshes",
            "Compilations that took the endpoint-only fast path",
            Counter::default()
        );
        let compile_duration = reg!(
            "compile_duration_seconds",
            "Time to build inputs and compile the table",
            Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
        );
        let snapshot_bytes = reg!(
            "snapshot_bytes",
            "Size of the current table in JSON bytes",
            Gauge::default()
        );
        let snapshot_version = reg!(
            "snapshot_version",
            "Version of the current table",
            Gauge::default()
        );
        let pushes_ok = reg!(
            "pushes_acknowledged",
            "Pushes a pod acknowledged",
            Counter::default()
        );
        let pushes_failed = reg!(
            "pushes_failed",
            "Pushes that failed (retried with backoff)",
            Counter::default()
        );
        let push_bodies = reg!(
            "push_bodies",
            "Pushes started, by what they carried (full table or delta)",
            Family::<BodyLabel, Counter>::default()
        );
        let push_bytes = reg!(
            "push_bytes",
            "Bytes of push bodies as sent (compressed), by what they carried",
            Family::<BodyLabel, Counter>::default()
        );
        let push_latency: Family<PodLabel, Histogram, fn() -> Histogram> = reg!(
            "push_duration_seconds",
            "Push latency per data-plane pod",
            Family::new_with_constructor(push_histogram as fn() -> Histogram)
        );
        let acked = reg!(
            "pod_acknowledged_version",
            "Table version each data-plane pod acknowledged",
            Family::<PodLabel, Gauge>::default()
        );
        let dataplane_pods = reg!(
            "dataplane_pods",
            "Data-plane pods known (ready or not)",
            Gauge::default()
        );
        let pods_in_sync = reg!(
            "pods_in_sync",
            "Data-plane pods that acknowledged the newest version",
            Gauge::default()
        );
        let leader = reg!(
            "leader",
            "1 when this replica is the leader",
            Gauge::default()
        );
        let status_writes = reg!(
            "status_writes",
            "Status updates written",
            Counter::default()
        );
        let status_errors = reg!(
            "status_errors",
            "Status updates that failed",
            Counter::default()
        );
        Self {
            registry: r,
            compiles,
            compiles_unchanged,
            fast_path_compiles,
            compile_duration,
            snapshot_bytes,
            snapshot_version,
            pushes_ok,
            pushes_failed,
            push_bodies,
            push_bytes,
            push_latency,
            acked,
            dataplane_pods,
            pods_in_sync,
            leader,
            status_writes,
            status_errors,
            ready: AtomicBool::new(false),
        }
    }

    /// A push started with a body of `bytes` (as sent).
    pub fn pushed(&self, delta: bool, bytes: usize) {
        let label = BodyLabel {
            body: if delta { "delta" } else { "full" },
        };
        self.push_bodies.get_or_create(&label).inc();
        self.push_bytes.get_or_create(&label).inc_by(bytes as u64);
    }

    pub fn push_duration(&self, pod: &str) -> Histogram {
        self.push_latency
            .get_or_create(&PodLabel {
                pod: pod.to_string(),
            })
            .clone()
    }

    pub fn acked_version(&self, pod: &str) -> Gauge {
        self.acked
            .get_or_create(&PodLabel {
                pod: pod.to_string(),
            })
            .clone()
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves /metrics, /healthz and /readyz (ready once the caches are synced).
pub async fn serve(metrics: Arc<Metrics>, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    println!(
        "parapet-operator listening metrics={}",
        listener.local_addr()?
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let m = m.clone();
                async move {
                    let (status, body) = match req.uri().path() {
                        "/metrics" => (StatusCode::OK, m.encode()),
                        "/healthz" => (StatusCode::OK, "ok\n".to_string()),
                        "/readyz" if m.ready.load(Ordering::Relaxed) => {
                            (StatusCode::OK, "ready\n".to_string())
                        }
                        "/readyz" => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "caches not synced\n".to_string(),
                        ),
                        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
                    };
                    let mut r = Response::new(Full::new(Bytes::from(body)));
                    *r.status_mut() = status;
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
