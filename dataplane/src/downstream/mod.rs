//! Serving one downstream connection once it is accepted (and, with a certificate, its TLS
//! handshake done).
//!
//! HTTP/1.1 requests without a body are read and answered by Parapet's own codec
//! (`http1`), which hands the connection to hyper at the first request it does not serve
//! (HTTP/2, upgrades, request bodies, HTTP/1.0). From then on hyper serves the connection
//! to its end, starting with the bytes already read (`Rewind`). `--downstream-http1 hyper`
//! gives every connection to hyper from the start.
//!
//! Over TLS, ALPN decides the protocol: `h2` is served as HTTP/2 only (an HTTP/1 request or
//! a broken preface is a connection error), anything else as HTTP/1 only. Plain-text
//! connections may start HTTP/2 with its preface (h2c with prior knowledge).
//!
//! A connection hyper serves closes, as the codec's do, once it has been idle (no request in
//! flight, no response streaming) for the header read timeout: an HTTP/2 connection that
//! sends nothing after its preface is not kept for the keep-alive pings to find.

/// Serves a hyper connection until it ends, or until a drain or the idle timeout closes
/// it gracefully. `biased`, the connection first: a request already read is served before a
/// drain (or the idle timeout) that started meanwhile closes the connection. (A macro:
/// hyper's connection types share no trait with `graceful_shutdown`.)
macro_rules! until_drained {
    ($conn:expr, $drain:ident, $activity:ident, $idle_timeout:ident, $info:ident) => {{
        let conn = $conn;
        tokio::pin!(conn);
        // Resolves with how long the connection may take to close once told to: a drain is
        // bounded by the listener's drain timeout; an idle connection gets one more header
        // read timeout (an HTTP/2 peer that never answers the GOAWAY's ping would otherwise
        // hold it).
        let stop = async {
            tokio::select! {
                () = $drain.draining() => None,
                () = $activity.idle($idle_timeout) => {
                    tracing::debug!(peer = %$info.peer, "connection idle for the header read timeout; closing");
                    Some($idle_timeout)
                }
            }
        };
        let ended: Result<(), Box<dyn std::error::Error + Send + Sync>> = tokio::select! {
            biased;
            ended = conn.as_mut() => ended.map_err(Into::into),
            grace = stop => {
                conn.as_mut().graceful_shutdown();
                match grace {
                    None => conn.await.map_err(Into::into),
                    Some(grace) => match tokio::time::timeout(grace, conn).await {
                        Ok(ended) => ended.map_err(Into::into),
                        Err(_) => Ok(()),
                    },
                }
            }
        };
        ended
    }};
}

mod batch;
pub mod drain;
pub mod http1;
pub mod idle;
mod nodelay;
pub(crate) mod rewind;

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::time::Instant;

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::io::{AsyncRead, AsyncWrite};

pub use self::drain::{Drain, DrainSignal};
pub(crate) use self::http1::boxed;
use self::rewind::Rewind;
use crate::{
    codec::Http1Codec,
    proxy::{ConnInfo, Proxy, body::DownstreamBody},
};

/// What every connection of a listener shares.
pub struct Shared {
    pub proxy: Arc<Proxy>,
    /// For connections hyper serves from the start, or that begin with the HTTP/2 preface.
    pub hyper: auto::Builder<TokioExecutor>,
    /// For TLS connections whose ALPN chose h2: HTTP/2 only.
    pub hyper_h2: auto::Builder<TokioExecutor>,
    /// For HTTP/1 connections the codec hands over: no protocol sniffing, which could
    /// otherwise be cut short by a drain and lose the request already read.
    pub hyper_http1: hyper::server::conn::http1::Builder,
    pub settings: http1::Settings,
    /// Whether the codec serves HTTP/1.1 (else hyper serves every connection).
    pub own_http1: bool,
    /// Where the codec's plain connections wait while idle (`idle.rs`); without it they
    /// wait in their tasks.
    pub parking: Option<idle::Parking>,
}

impl Shared {
    pub fn new(
        proxy: Arc<Proxy>,
        hyper: auto::Builder<TokioExecutor>,
        hyper_http1: hyper::server::conn::http1::Builder,
        choice: Http1Codec,
        settings: http1::Settings,
    ) -> Self {
        // The codec parses into a fixed array of header slots; more allowed than that is
        // hyper's to serve.
        let own_http1 =
            choice == Http1Codec::Parapet && settings.max_headers <= http1::HEADER_SLOTS;
        Self {
            proxy,
            hyper_h2: hyper.clone().http2_only(),
            hyper,
            hyper_http1,
            settings,
            own_http1,
            parking: None,
        }
    }
}

/// What a connection speaks, as far as is known before its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Plain text: HTTP/1.1, or HTTP/2 when it starts with the preface.
    Sniff,
    /// TLS whose ALPN chose `http/1.1` (or nothing).
    Http1,
    /// TLS whose ALPN chose `h2`.
    Http2,
}

/// Serves one connection to its end (or until the drain signal and its in-flight request
/// are done): the codec first, when it serves this connection, then hyper.
pub async fn serve<IO>(
    io: IO,
    shared: Arc<Shared>,
    info: ConnInfo,
    mut drain: DrainSignal,
    protocol: Protocol,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(handoff) = serve_own_http1(io, &shared, &info, &mut drain, protocol).await else {
        return;
    };
    // Boxed: hyper's connection state is large, and only the connections hyper serves
    // should hold it.
    let conn = boxed!(serve_hyper(handoff, &shared, info, drain));
    conn.await;
}

/// A plain connection the codec serves, new or back from the parking lot: its task ends
/// when it goes idle, and it waits parked (`idle.rs`) for its next request.
pub async fn serve_plain(conn: idle::Parked, shared: Arc<Shared>) {
    let idle::Parked {
        io,
        info,
        mut resume,
        mut drain,
    } = conn;
    if !resume.ready {
        // A new connection: its first bytes are waited for without reading them, so its
        // busy state reads them whole (a 1-byte read first would cost a system call).
        let until = resume.since + shared.settings.header_read_timeout;
        tokio::select! {
            biased;
            r = io.readable() => if r.is_err() { return },
            () = tokio::time::sleep_until(until) => return,
            () = drain.draining() => return,
        }
        resume.ready = true;
    }
    // A connection back from parking has answered before, and had the option set then.
    let io = if resume.served == 0 {
        nodelay::Lazy::fresh(io)
    } else {
        nodelay::Lazy::no_delay(io)
    };
    let proxy = &shared.proxy;
    let handle = |req| proxy.clone().handle(req, info.clone());
    let ended = http1::serve_until_idle(
        io,
        handle,
        &proxy.metrics,
        &shared.settings,
        &mut drain,
        resume,
        shared.parking.is_some(),
    )
    .await;
    match ended {
        http1::Ended::Closed => {}
        http1::Ended::Idle { io, since, served } => {
            if let Some(parking) = &shared.parking {
                // Refused only once the listener drains: the connection closes then.
                let _ = parking.park(idle::Parked {
                    // Its next answer is a second write.
                    io: io.into_no_delay(),
                    info,
                    resume: http1::Resume {
                        served,
                        since,
                        ready: false,
                    },
                    drain,
                });
            }
        }
        http1::Ended::Handoff {
            io,
            read,
            served,
            http2,
        } => {
            let handoff = Handoff {
                io: Rewind::new(io.into_no_delay(), read),
                served,
                protocol: if http2 {
                    Protocol::Http2
                } else {
                    Protocol::Http1
                },
            };
            let conn = boxed!(serve_hyper(handoff, &shared, info, drain));
            conn.await;
        }
    }
}

/// hyper serves the connection from where the codec handed it over (or from its start).
async fn serve_hyper<IO>(
    handoff: Handoff<IO>,
    shared: &Shared,
    info: ConnInfo,
    mut drain: DrainSignal,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let svc = hyper_service(shared, info.clone(), handoff.served, activity.clone());
    let idle_timeout = shared.settings.header_read_timeout;
    let ended = if handoff.protocol == Protocol::Http1 {
        until_drained!(
            shared
                .hyper_http1
                .serve_connection(TokioIo::new(handoff.io), svc)
                .with_upgrades(),
            drain,
            activity,
            idle_timeout,
            info
        )
    } else if handoff.protocol == Protocol::Http2 {
        // (`http2_only` holds for `serve_connection`, not for the variant with upgrades;
        // HTTP/2 has none to serve.) What it writes in a run of its task leaves together.
        until_drained!(
            batch::batched(handoff.io, |io| {
                shared.hyper_h2.serve_connection(TokioIo::new(io), svc)
            }),
            drain,
            activity,
            idle_timeout,
            info
        )
    } else {
        until_drained!(
            shared
                .hyper
                .serve_connection_with_upgrades(TokioIo::new(handoff.io), svc),
            drain,
            activity,
            idle_timeout,
            info
        )
    };
    if let Err(e) = ended {
        tracing::debug!(peer = %info.peer, error = %e, "connection ended with an error");
    }
}

/// What hyper takes over: the connection with the bytes the codec read but did not serve.
struct Handoff<IO> {
    io: Rewind<IO>,
    /// Requests the codec already served on it.
    served: u32,
    /// What hyper serves it as: HTTP/1 only, HTTP/2 (ALPN chose it, or its preface came),
    /// or either (`Sniff`).
    protocol: Protocol,
}

/// The codec's part of the connection, when it serves HTTP/1.1 here: `None` when the
/// connection ended in the codec, else what hyper takes over.
async fn serve_own_http1<IO>(
    io: IO,
    shared: &Shared,
    info: &ConnInfo,
    drain: &mut DrainSignal,
    protocol: Protocol,
) -> Option<Handoff<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if protocol == Protocol::Http2 || !shared.own_http1 {
        return Some(Handoff {
            io: Rewind::new(io, Bytes::new()),
            served: 0,
            protocol,
        });
    }
    let proxy = &shared.proxy;
    // Not boxed per request: the codec polls the request's future where it is, in the state
    // it boxes for a connection's busy period (a box per request cost about 1.3k more
    // instructions per request), and an idle connection holds none of it.
    let handle = |req| proxy.clone().handle(req, info.clone());
    match http1::serve(io, handle, &proxy.metrics, &shared.settings, drain).await {
        http1::Ended::Closed | http1::Ended::Idle { .. } => None,
        http1::Ended::Handoff {
            io,
            read,
            served,
            http2,
        } => Some(Handoff {
            io: Rewind::new(io, read),
            served,
            // A preface on a connection ALPN made HTTP/1 is HTTP/1's to refuse.
            protocol: if http2 && protocol != Protocol::Http1 {
                Protocol::Http2
            } else {
                Protocol::Http1
            },
        }),
    }
}

/// The service hyper calls for each request of a connection: the proxy, with the
/// connection's request count (for `--max-requests-per-connection`) and its activity (for
/// the idle timeout).
fn hyper_service(
    shared: &Shared,
    info: ConnInfo,
    served: u32,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<crate::proxy::body::ProxyBody>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    let limit = shared.settings.max_requests;
    let served = Arc::new(AtomicU32::new(served));
    let proxy = shared.proxy.clone();
    service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let proxy = proxy.clone();
        let served = served.clone();
        let busy = Busy::new(activity.clone());
        let info = info.clone();
        async move {
            let http1 = req.version() <= http::Version::HTTP_11;
            // Boxed: the request's future is several KiB, and hyper moves the service
            // future more than once before polling it; a pointer is cheaper to move (about
            // 2k fewer instructions per request, counted).
            let handle = boxed!(proxy.handle(Box::new(req.map(DownstreamBody::Hyper)), info));
            let mut resp = handle.await;
            let n = served.fetch_add(1, Ordering::Relaxed) + 1;
            if http1 && limit > 0 && n >= limit {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            // The connection is busy until the response body is done, not just its head.
            Ok::<_, Infallible>(resp.map(|b| Busy::hold(busy, b)))
        }
    })
}

/// When a connection hyper serves was last busy, and how many of its requests are.
struct Activity {
    start: Instant,
    /// Requests whose response (head or body) is not done.
    busy: AtomicU32,
    /// Milliseconds after `start` that the last request began or ended.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            busy: AtomicU32::new(0),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.start.elapsed().as_millis();
        self.last
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Resolves once the connection has had no busy request for `timeout`.
    async fn idle(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            tokio::time::sleep_until(last + timeout).await;
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            if self.busy.load(Ordering::Relaxed) == 0 && Instant::now() >= last + timeout {
                return;
            }
            if self.busy.load(Ordering::Relaxed) > 0 {
                // Looked at again a timeout later (a busy connection is not idle).
                self.touch();
            }
        }
    }
}

impl<I, S, E, B, IO> batch::Flushing<auto::Connection<'_, I, S, E>, IO>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: auto::HttpServerConnExec<S::Future, B>,
{
    /// The connection's own graceful shutdown (`until_drained!` calls it by that name).
    fn graceful_shutdown(self: Pin<&mut Self>) {
        self.get_mut().conn.as_mut().graceful_shutdown();
    }
}

/// One busy request of a connection, until its response body is done or dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Self {
        activity.busy.fetch_add(1, Ordering::Relaxed);
        activity.touch();
        Self(activity)
    }

    fn hold(self, body: crate::proxy::body::ProxyBody) -> crate::proxy::body::ProxyBody {
        BusyBody { body, _busy: self }.boxed()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its connection counted as busy.
struct BusyBody {
    body: crate::proxy::body::ProxyBody,
    _busy: Busy,
}

impl Body for BusyBody {
    type Data = Bytes;
    type Error = crate::proxy::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
