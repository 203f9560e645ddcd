//! A stand-in for a data-plane pod's snapshot API, for measuring the control plane at fleet
//! sizes this machine cannot run as data planes. It takes pushes as a pod does (the codings
//! it reads, deltas against the table it holds with the rebuilt table's hash checked,
//! versions only forward, the table validated) and records what arrived; it serves no
//! traffic and dials nothing.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::Result;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parapet_crds::snapshot::{
    Snapshot,
    delta::Delta,
    wire::{self, Coding},
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

/// The largest body (and decoded table) a receiver takes, as the data plane's default.
const MAX_BYTES: usize = 64 * 1024 * 1024;

/// What a receiver has taken so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Received {
    /// Push bodies, and their bytes as sent.
    pub bodies: u64,
    pub bytes: u64,
    /// Of those, deltas.
    pub deltas: u64,
    pub delta_bytes: u64,
}

struct State {
    token: String,
    held: watch::Sender<Option<Arc<Snapshot>>>,
    bodies: AtomicU64,
    bytes: AtomicU64,
    deltas: AtomicU64,
    delta_bytes: AtomicU64,
    /// One push at a time, as the data plane's apply lock.
    apply: Mutex<()>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Listens on 127.0.0.1 for pushes bearing `token`.
    pub async fn start(token: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            token: token.to_string(),
            held: watch::channel(None).0,
            bodies: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            deltas: AtomicU64::new(0),
            delta_bytes: AtomicU64::new(0),
            apply: Mutex::new(()),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(handle(&s, req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// The table it holds.
    pub fn held(&self) -> Option<Arc<Snapshot>> {
        self.state.held.borrow().clone()
    }

    /// Follows the table it holds.
    pub fn watch(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.state.held.subscribe()
    }

    pub fn received(&self) -> Received {
        let s = &self.state;
        Received {
            bodies: s.bodies.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            deltas: s.deltas.load(Ordering::Relaxed),
            delta_bytes: s.delta_bytes.load(Ordering::Relaxed),
        }
    }
}

async fn handle(s: &Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/v1/snapshot/status") => {
            let held = s.held.borrow().clone();
            let v = match held {
                Some(t) => serde_json::json!({"version": t.version, "hash": t.hash}),
                None => serde_json::json!({"version": null, "hash": null}),
            };
            answer(StatusCode::OK, v)
        }
        (&Method::PUT, "/v1/snapshot") => push(s, req, false).await,
        (&Method::PATCH, "/v1/snapshot") => push(s, req, true).await,
        _ => answer(StatusCode::NOT_FOUND, serde_json::json!({})),
    }
}

async fn push(s: &Arc<State>, req: Request<Incoming>, delta: bool) -> Response<Full<Bytes>> {
    let auth = req.headers().get(header::AUTHORIZATION);
    if auth.and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")) != Some(s.token.as_bytes()) {
        return answer(StatusCode::UNAUTHORIZED, serde_json::json!({}));
    }
    let Some(coding) = Coding::from_header(
        req.headers()
            .get(header::CONTENT_ENCODING)
            .map(HeaderValue::as_bytes),
    ) else {
        let mut r = answer(StatusCode::UNSUPPORTED_MEDIA_TYPE, serde_json::json!({}));
        r.headers_mut().insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static(wire::ACCEPTED),
        );
        return r;
    };
    let Ok(body) = Limited::new(req.into_body(), MAX_BYTES).collect().await else {
        return answer(StatusCode::PAYLOAD_TOO_LARGE, serde_json::json!({}));
    };
    let body = body.to_bytes();
    s.bodies.fetch_add(1, Ordering::Relaxed);
    s.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    if delta {
        s.deltas.fetch_add(1, Ordering::Relaxed);
        s.delta_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
    }
    let state = s.clone();
    // Decoding, rebuilding and hashing a large table is blocking work, as in the pod.
    let (status, v) = tokio::task::spawn_blocking(move || take(&state, &body, coding, delta))
        .await
        .unwrap_or_else(|e| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"reasons": [e.to_string()]}),
            )
        });
    answer(status, v)
}

/// Decodes and applies one push, as the data plane's admin API does.
fn take(s: &State, body: &[u8], coding: Coding, delta: bool) -> (StatusCode, serde_json::Value) {
    let bad = |status, reason: String| (status, serde_json::json!({"reasons": [reason]}));
    let json = match coding.decode(body, MAX_BYTES) {
        Ok(j) => j,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let _one = s.apply.lock().unwrap_or_else(|p| p.into_inner());
    let held = s.held.borrow().clone();
    let snapshot = if delta {
        let d: Delta = match serde_json::from_slice(&json) {
            Ok(d) => d,
            Err(e) => return bad(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let Some(base) = &held else {
            return bad(StatusCode::PRECONDITION_FAILED, "no table".into());
        };
        match d.apply(base) {
            Ok(s) => s,
            Err(e) => return bad(StatusCode::PRECONDITION_FAILED, e.to_string()),
        }
    } else {
        match serde_json::from_slice::<Snapshot>(&json) {
            Ok(s) => s,
            Err(e) => return bad(StatusCode::BAD_REQUEST, e.to_string()),
        }
    };
    if let Some(cur) = &held
        && (snapshot.version < cur.version
            || (snapshot.version == cur.version && snapshot.hash != cur.hash))
    {
        return (
            StatusCode::CONFLICT,
            serde_json::json!({"currentVersion": cur.version}),
        );
    }
    let valid = if delta {
        snapshot.validate_rebuilt()
    } else {
        snapshot.validate()
    };
    if let Err(reasons) = valid {
        return (
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "reasons": reasons }),
        );
    }
    let (version, hash) = (snapshot.version, snapshot.hash.clone());
    s.held.send_replace(Some(Arc::new(snapshot)));
    (
        StatusCode::OK,
        serde_json::json!({"result": "applied", "version": version, "hash": hash}),
    )
}

fn answer(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
