//! In-process HTTP backends on 127.0.0.1:0 that say who they are and count what they get.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::watch};

/// What a backend does with each request; changeable while it runs.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Answer with this status (default 200).
    pub status: Option<u16>,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Answer with this body instead of the backend's name.
    pub body: Option<Bytes>,
    /// Every n-th request (n, status) answers this status instead: `(2, 503)` fails every
    /// other request.
    pub fail_every: Option<(usize, u16)>,
    /// Every n-th request (n, delay) waits this long before answering (on top of `delay`).
    pub slow_every: Option<(usize, Duration)>,
    /// Status of health checks (requests to [`HEALTH_PATH`]); default 200.
    pub health_status: Option<u16>,
    /// Extra response headers (e.g. `cache-control`).
    pub headers: Vec<(&'static str, String)>,
    /// Answer with the request count in the body (`name#n`), so a test can tell answers
    /// apart.
    pub count_in_body: bool,
}

/// Where a backend is in its life; connections watch it to know when to finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Not accepting; open connections finish their current request, then close.
    Draining,
    /// Open connections are closed at once.
    Stopped,
}

/// The path health checks use in tests (the CRD default). Requests to it are counted in
/// [`Backend::health_hits`], not [`Backend::hits`].
pub const HEALTH_PATH: &str = "/healthz";

pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    health_hits: Arc<AtomicUsize>,
    behaviour: Arc<Mutex<Behaviour>>,
    last_headers: Arc<Mutex<Option<http::HeaderMap>>>,
    last_uri: Arc<Mutex<Option<String>>>,
    body_bytes: Arc<AtomicU64>,
    last_body: Arc<Mutex<Option<Bytes>>>,
    phase: watch::Sender<Phase>,
    /// Held by the accept loop and every open connection: closed once all are gone.
    open: watch::Sender<()>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        Self::start_on(name, "127.0.0.1:0".parse().expect("address")).await
    }

    /// Starts on a given address (to bring a stopped backend back on its port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Backend {
        Self::try_start_on(name, addr)
            .await
            .expect("bind a backend on 127.0.0.1")
    }

    /// As [`start_on`](Self::start_on), returning the error when the address cannot be
    /// bound.
    pub async fn try_start_on(name: &str, addr: SocketAddr) -> std::io::Result<Backend> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicUsize::new(0));
        let health_hits = Arc::new(AtomicUsize::new(0));
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let last_headers = Arc::new(Mutex::new(None));
        let last_uri = Arc::new(Mutex::new(None));
        let body_bytes = Arc::new(AtomicU64::new(0));
        let last_body = Arc::new(Mutex::new(None));
        let (phase, mut stopped) = watch::channel(Phase::Serving);
        let (open, open_guard) = watch::channel(());
        let (hh, lb) = (health_hits.clone(), last_body.clone());
        let (n, h, b, lh, lu, bb) = (
            name.to_string(),
            hits.clone(),
            behaviour.clone(),
            last_headers.clone(),
            last_uri.clone(),
            body_bytes.clone(),
        );
        tokio::spawn(async move {
            loop {
                // Draining or stopped: returning drops the listener, so new connections
                // are refused.
                let (stream, _) = tokio::select! {
                    _ = stopped.changed() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let (n, h, b, lh, lu, bb) = (
                    n.clone(),
                    h.clone(),
                    b.clone(),
                    lh.clone(),
                    lu.clone(),
                    bb.clone(),
                );
                let (hh, lb) = (hh.clone(), lb.clone());
                let mut conn_stop = stopped.clone();
                let conn_guard = open_guard.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (n, h, b, lh, lu, bb) = (
                            n.clone(),
                            h.clone(),
                            b.clone(),
                            lh.clone(),
                            lu.clone(),
                            bb.clone(),
                        );
                        let (hh, lb) = (hh.clone(), lb.clone());
                        async move {
                            if req.uri().path() == HEALTH_PATH {
                                hh.fetch_add(1, Ordering::SeqCst);
                                let status = b.lock().unwrap().health_status.unwrap_or(200);
                                let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
                                *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                                return Ok::<_, Infallible>(resp);
                            }
                            let nth = h.fetch_add(1, Ordering::SeqCst) + 1;
                            *lh.lock().unwrap() = Some(req.headers().clone());
                            *lu.lock().unwrap() = Some(req.uri().to_string());
                            let beh = b.lock().unwrap().clone();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            bb.fetch_add(body.len() as u64, Ordering::SeqCst);
                            *lb.lock().unwrap() = Some(body.clone());
                            let mut delay = beh.delay;
                            if let Some((every, extra)) = beh.slow_every
                                && every > 0
                                && nth % every == 0
                            {
                                delay += extra;
                            }
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let mut status = beh.status.unwrap_or(200);
                            if let Some((every, s)) = beh.fail_every
                                && every > 0
                                && nth % every == 0
                            {
                                status = s;
                            }
                            let body = match (&beh.body, beh.count_in_body) {
                                (Some(b), _) => b.clone(),
                                (None, true) => {
                                    Bytes::from(format!("{n}#{}", h.load(Ordering::SeqCst)))
                                }
                                (None, false) => Bytes::from(n.clone()),
                            };
                            let mut resp = Response::new(Full::new(body));
                            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                            resp.headers_mut().insert("x-backend", n.parse().unwrap());
                            for (k, v) in &beh.headers {
                                resp.headers_mut().insert(*k, v.parse().unwrap());
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    // The phase changes at most twice (draining, stopped): at most three turns.
                    loop {
                        tokio::select! {
                            _ = conn.as_mut() => break,
                            changed = conn_stop.changed() => {
                                if changed.is_ok() && *conn_stop.borrow_and_update() == Phase::Draining {
                                    conn.as_mut().graceful_shutdown();
                                } else {
                                    break;
                                }
                            }
                        }
                    }
                    drop(conn_guard);
                });
            }
        });
        Ok(Backend {
            name: name.to_string(),
            addr,
            hits,
            health_hits,
            behaviour,
            last_headers,
            last_uri,
            body_bytes,
            last_body,
            phase,
            open,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Health checks received (requests to [`HEALTH_PATH`]).
    pub fn health_hits(&self) -> usize {
        self.health_hits.load(Ordering::SeqCst)
    }

    pub fn body_bytes(&self) -> u64 {
        self.body_bytes.load(Ordering::SeqCst)
    }

    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    pub fn last_headers(&self) -> Option<http::HeaderMap> {
        self.last_headers.lock().unwrap().clone()
    }

    pub fn last_uri(&self) -> Option<String> {
        self.last_uri.lock().unwrap().clone()
    }

    /// The body of the last request (health checks aside).
    pub fn last_body(&self) -> Option<Bytes> {
        self.last_body.lock().unwrap().clone()
    }

    /// Stops accepting and closes open connections.
    pub fn stop(&self) {
        self.phase.send_replace(Phase::Stopped);
    }

    /// Stops accepting, lets open connections finish the request they are serving (idle
    /// keep-alive connections close at once, HTTP/1.1 answers in flight carry
    /// `Connection: close`, HTTP/2 gets a GOAWAY), and waits up to `deadline` for them;
    /// whatever is still open then is closed. Returns how many connections that cut (0: a
    /// clean drain).
    pub async fn graceful_stop(&self, deadline: Duration) -> usize {
        self.phase.send_replace(Phase::Draining);
        let drained = tokio::time::timeout(deadline, self.open.closed()).await;
        let cut = if drained.is_ok() {
            0
        } else {
            self.open.receiver_count()
        };
        self.stop();
        cut
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}
