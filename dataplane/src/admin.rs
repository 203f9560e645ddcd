//! The admin listener: the snapshot API (`PUT /v1/snapshot`, `GET /v1/snapshot/status`),
//! `/healthz`, `/readyz` and `/metrics`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::UNIX_EPOCH,
};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use parapet_crds::snapshot::{
    Snapshot,
    delta::{Delta, DeltaError},
    wire::{self, Coding, WireError},
};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::{
    metrics::Metrics,
    proxy::{
        body::ProxyBody,
        problem::{full, problem},
    },
    snapshot::{ApplyOutcome, Runtime, SnapshotStore},
};

pub struct Admin {
    pub store: Arc<SnapshotStore>,
    pub metrics: Arc<Metrics>,
    /// Bearer token for pushes; `None` refuses every push.
    pub token: Option<Vec<u8>>,
    pub max_snapshot_bytes: usize,
    pub draining: AtomicBool,
    /// TLS on the admin port (`--admin-tls-cert`), with `client_ca` when client
    /// certificates are verified (`--admin-client-ca`).
    pub tls: Option<AdminTls>,
    /// The event loops' heartbeats: `/healthz` fails while one is stalled.
    pub liveness: Arc<crate::liveness::Heartbeats>,
}

pub struct AdminTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Snapshot, status and purge requests need a verified client certificate. Probes,
    /// and /metrics, do not: a kubelet cannot present one.
    pub require_client_cert: bool,
}

/// What the connection a request came on proves about the client.
#[derive(Clone, Copy, Debug, Default)]
pub struct Peer {
    /// The client presented a certificate that chains to `--admin-client-ca` (rustls
    /// refuses the handshake for one that does not).
    pub verified_cert: bool,
}

/// Time a client has to finish the TLS handshake on the admin port.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Admin {
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let builder = crate::listener::builder(&Default::default());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let admin = self.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let Some(tls) = &admin.tls else {
                    let svc = service_fn(move |req| {
                        let admin = admin.clone();
                        async move { Ok::<_, Infallible>(admin.handle(req, Peer::default()).await) }
                    });
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    return;
                };
                let stream = match tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    tls.acceptor.accept(stream),
                )
                .await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "admin TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let peer = Peer {
                    verified_cert: stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty()),
                };
                let svc = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req, peer).await) }
                });
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    }

    pub async fn handle(&self, req: Request<Incoming>, peer: Peer) -> Response<ProxyBody> {
        let path = req.uri().path();
        if path.starts_with("/v1/")
            && self.tls.as_ref().is_some_and(|t| t.require_client_cert)
            && !peer.verified_cert
        {
            if path == "/v1/snapshot" {
                self.metrics.push("unauthorized");
            }
            return problem(
                StatusCode::UNAUTHORIZED,
                "a client certificate signed by the admin client CA is required for the snapshot API",
                None,
            );
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => match self.liveness.stalled() {
                None => text(StatusCode::OK, "ok\n"),
                Some((name, quiet)) => {
                    tracing::error!(
                        event_loop = name,
                        quiet_secs = quiet.as_secs_f64(),
                        "an event loop has stopped making progress; /healthz fails so the pod is restarted"
                    );
                    problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!(
                            "event loop {name} has made no progress for {:.0} s",
                            quiet.as_secs_f64()
                        ),
                        None,
                    )
                }
            },
            (&Method::GET, "/readyz") => {
                if self.draining.load(Ordering::Relaxed) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if self.store.is_ready() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no snapshot in force yet\n",
                    )
                }
            }
            (&Method::GET, "/metrics") => {
                let mut r = Response::new(full(self.metrics.encode()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            (&Method::GET, "/v1/snapshot/status") => self.status(),
            (&Method::GET, "/v1/snapshot") => self.dump(&req).await,
            (&Method::PUT, "/v1/snapshot") => self.push(req, false).await,
            (&Method::PATCH, "/v1/snapshot") => self.push(req, true).await,
            (&Method::POST, "/v1/cache/purge") => self.purge(req).await,
            (_, "/v1/snapshot") => problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET to read the table in force, PUT to push a snapshot, or PATCH to push a delta",
                None,
            ),
            _ => problem(
                StatusCode::NOT_FOUND,
                "unknown admin path; try /v1/snapshot/status, /healthz, /readyz or /metrics",
                None,
            ),
        }
    }

    fn status(&self) -> Response<ProxyBody> {
        let body = match self.store.load() {
            Some(rt) => serde_json::json!({
                "version": rt.version(),
                "hash": rt.hash(),
                "appliedAt": rt.applied_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default(),
                "routes": rt.snapshot.table.route_count(),
                "clusters": rt.snapshot.table.clusters.len(),
                // The pods fleet-wide rate limits are divided among (0: not divided).
                "fleetPods": rt.snapshot.table.fleet_pods,
                // The zone its balancers prefer (--zone, else the one pushes name).
                "zone": rt.zone,
            }),
            None => serde_json::json!({"version": null, "hash": null}),
        };
        json(StatusCode::OK, &body)
    }

    /// `GET /v1/snapshot`: the table in force, with private keys and API-key hashes
    /// redacted; authenticated like pushes, since routes and pools describe the estate.
    async fn dump(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        if !self.authorized(req) {
            let mut r = problem(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token (the snapshot token) is required to read the table",
                None,
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        let Some(rt) = self.store.load() else {
            return problem(
                StatusCode::NOT_FOUND,
                "this data plane has no table in force yet",
                None,
            );
        };
        // A large table takes milliseconds to copy, hash and print: off the workers.
        let body = tokio::task::spawn_blocking(move || {
            let table = rt.snapshot.table.redacted();
            serde_json::json!({
                "version": rt.version(),
                "hash": rt.hash(),
                "configHash": rt.snapshot.table.config_hash(),
                "appliedAt": rt.applied_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default(),
                "zone": rt.zone,
                "table": table,
            })
        })
        .await;
        match body {
            Ok(v) => json(StatusCode::OK, &v),
            Err(_) => problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "printing the table failed",
                None,
            ),
        }
    }

    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or(b"");
        // Constant time in the token's content (length differences are not secret).
        presented.len() == token.len() && bool::from(presented.ct_eq(token))
    }

    /// `POST /v1/cache/purge` with `{"policy": "ns/name", "pathPrefix": "/a/"}` (path
    /// optional) or `{"all": true}`; authenticated like pushes.
    async fn purge(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        if !self.authorized(&req) {
            return problem(
                StatusCode::UNAUTHORIZED,
                "a valid bearer token is required to purge the cache",
                None,
            );
        }
        let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "could not read the purge request",
                    None,
                );
            }
        };
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let cache = self.store.cache();
        let purged = if v.get("all").and_then(|a| a.as_bool()) == Some(true) {
            cache.purge("", None)
        } else if let Some(policy) = v.get("policy").and_then(|p| p.as_str()) {
            cache.purge(
                &format!("{policy}\n"),
                v.get("pathPrefix").and_then(|p| p.as_str()),
            )
        } else {
            return problem(
                StatusCode::BAD_REQUEST,
                "say what to purge: {\"policy\": \"namespace/name\", \"pathPrefix\": \"/optional\"} or {\"all\": true}",
                None,
            );
        };
        tracing::info!(purged, request = %v, "cache purged");
        json(StatusCode::OK, &serde_json::json!({ "purged": purged }))
    }

    /// `PUT` a full table, or `PATCH` one as a delta against the table this pod holds.
    async fn push(&self, req: Request<Incoming>, delta: bool) -> Response<ProxyBody> {
        if !self.authorized(&req) {
            self.metrics.push("unauthorized");
            let detail = if self.token.is_none() {
                "snapshot pushes are disabled: start the data plane with --snapshot-token-file to accept them"
            } else {
                "a valid bearer token is required to push snapshots"
            };
            let mut r = problem(StatusCode::UNAUTHORIZED, detail, None);
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        // An encoding this build does not read is refused with the ones it does (RFC 7694),
        // so the pusher can fall back rather than send bytes that would parse as garbage.
        let Some(coding) = Coding::from_header(
            req.headers()
                .get(header::CONTENT_ENCODING)
                .map(HeaderValue::as_bytes),
        ) else {
            self.metrics.push("invalid");
            let mut r = problem(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the snapshot's Content-Encoding is not one this data plane reads; use zstd, gzip or none",
                None,
            );
            r.headers_mut().insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static(wire::ACCEPTED),
            );
            return r;
        };
        // The operator names the zone of the node this pod runs on.
        let zone = match req.headers().get(ZONE_HEADER) {
            None => None,
            Some(v) => match pushed_zone(v.as_bytes()) {
                Some(z) => Some(z.to_string()),
                None => {
                    self.metrics.push("invalid");
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "the parapet-zone header must be a zone name: 1 to 63 letters, digits, '.', '_' or '-'",
                        None,
                    );
                }
            },
        };
        let body = match Limited::new(req.into_body(), self.max_snapshot_bytes)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                self.metrics.push("too_large");
                let mut r = problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!(
                        "the snapshot is larger than {} bytes; raise --max-snapshot-bytes or compress it",
                        self.max_snapshot_bytes
                    ),
                    None,
                );
                // The rest of the body was not read: this connection cannot carry another
                // request, so say so instead of letting the client reuse it.
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return r;
            }
            Err(e) => {
                self.metrics.push("invalid");
                return problem(
                    StatusCode::BAD_REQUEST,
                    &format!("could not read the snapshot body: {e}"),
                    None,
                );
            }
        };
        // Decompressing, parsing and rebuilding take milliseconds on a large table: off the
        // runtime's workers.
        let (max, held) = (self.max_snapshot_bytes, self.store.load());
        let decoded = tokio::task::spawn_blocking(move || {
            if delta {
                decode_delta(&body, coding, max).map(|d| rebuild(d, held))
            } else {
                decode_snapshot(&body, coding, max).map(Ok)
            }
        })
        .await;
        let Ok(decoded) = decoded else {
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "decoding the snapshot failed",
                None,
            );
        };
        let snapshot = match decoded {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.metrics.push("delta_refused");
                tracing::info!(error = %e, "delta refused; the pusher sends the full table");
                return json(
                    StatusCode::PRECONDITION_FAILED,
                    &serde_json::json!({"result": "delta_refused", "reasons": [e.to_string()]}),
                );
            }
            Err(e) => {
                self.metrics.push(e.metric_reason());
                return match e {
                    DecodeError::Json(_) => json(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({"result": "invalid", "reasons": [e.to_string()]}),
                    ),
                    DecodeError::Wire(WireError::TooLarge { .. }) => {
                        problem(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string(), None)
                    }
                    DecodeError::Wire(WireError::Corrupt(..)) => {
                        problem(StatusCode::BAD_REQUEST, &e.to_string(), None)
                    }
                };
            }
        };
        let (version, hash) = (snapshot.version, snapshot.hash.clone());
        if let Some(zone) = &zone {
            self.store.set_pushed_zone(zone);
        }
        let applied = if delta {
            self.store.apply_rebuilt(snapshot).await
        } else {
            self.store.apply(snapshot).await
        };
        match applied {
            Ok(outcome) => {
                let result = match outcome {
                    ApplyOutcome::Applied => "applied",
                    ApplyOutcome::Unchanged => "unchanged",
                };
                self.metrics.push(result);
                json(
                    StatusCode::OK,
                    &serde_json::json!({"result": result, "version": version, "hash": hash}),
                )
            }
            Err(e) => {
                self.metrics.push(e.metric_reason());
                let (status, reasons) = match &e {
                    crate::snapshot::ApplyError::Invalid(r) => (StatusCode::BAD_REQUEST, r.clone()),
                    _ => (StatusCode::CONFLICT, vec![e.to_string()]),
                };
                let current = self.store.load().map(|r| r.version());
                tracing::warn!(version, error = %e, "snapshot refused");
                json(
                    status,
                    &serde_json::json!({"result": e.metric_reason(), "reasons": reasons, "currentVersion": current}),
                )
            }
        }
    }
}

/// Why a pushed body is not a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the body is not a snapshot: {0}")]
    Json(serde_json::Error),
}

impl DecodeError {
    /// The `reason` label of `snapshot_pushes_total`.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Self::Wire(WireError::TooLarge { .. }) => "too_large",
            Self::Wire(WireError::Corrupt(..)) | Self::Json(_) => "invalid",
        }
    }
}

/// The snapshot in a pushed body: at most `max` bytes as sent and once decoded. Not
/// validated: applying it does that.
pub fn decode_snapshot(body: &[u8], coding: Coding, max: usize) -> Result<Snapshot, DecodeError> {
    serde_json::from_slice(&coding.decode(body, max)?).map_err(DecodeError::Json)
}

/// The delta in a pushed body, bounded as [`decode_snapshot`].
pub fn decode_delta(body: &[u8], coding: Coding, max: usize) -> Result<Delta, DecodeError> {
    serde_json::from_slice(&coding.decode(body, max)?).map_err(DecodeError::Json)
}

/// The table a delta makes from the one in force (its hash checked).
fn rebuild(delta: Delta, held: Option<Arc<Runtime>>) -> Result<Snapshot, DeltaError> {
    match held {
        Some(rt) => delta.apply(&rt.snapshot),
        None => Err(DeltaError::WrongBase {
            want_version: delta.base_version,
            want_hash: delta.base_hash,
            held: "no table".into(),
        }),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    crate::listener::bind(addr).await
}

/// The header a push names the pod's zone in (the operator reads it from the EndpointSlice
/// of the data plane's own admin Service, which carries the node's zone).
pub const ZONE_HEADER: &str = "parapet-zone";

/// A zone name from a push: a label value's characters, 1 to 63 bytes.
fn pushed_zone(v: &[u8]) -> Option<&str> {
    let ok = (1..=63).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then(|| std::str::from_utf8(v).ok()).flatten()
}

#[cfg(test)]
mod zone_tests {
    use super::pushed_zone;

    #[test]
    fn pushed_zones_are_label_values() {
        assert_eq!(pushed_zone(b"eu-west-1a"), Some("eu-west-1a"));
        assert_eq!(pushed_zone(b"zone_b.2"), Some("zone_b.2"));
        assert_eq!(pushed_zone(b""), None);
        assert_eq!(pushed_zone(&[b'a'; 64]), None);
        assert_eq!(pushed_zone(b"a b"), None);
        assert_eq!(pushed_zone(b"a\nb"), None);
        assert_eq!(pushed_zone("z\u{e9}".as_bytes()), None);
    }
}
