//! Serving one downstream connection once it is accepted (and, with a certificate, its TLS
//! handshake done).
//!
//! HTTP/1.1 requests without a body are read and answered by Parapet's own codec
//! (`http1`), which hands the connection to hyper at the first request it does not serve
//! (HTTP/2, upgrades, request bodies, HTTP/1.0). From then on hyper serves the connection
//! to its end, starting with the bytes already read (`Rewind`). `--downstream-http1 hyper`
//! gives every connection to hyper from the start.

pub mod drain;
pub mod http1;
pub(crate) mod rewind;

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::io::{AsyncRead, AsyncWrite};

pub use self::drain::{Drain, DrainSignal};
use self::rewind::Rewind;
use crate::{
    proxy::{ConnInfo, Proxy, body::DownstreamBody},
    upstream::Http1Choice,
};

/// What every connection of a listener shares.
pub struct Shared {
    pub proxy: Arc<Proxy>,
    /// For connections hyper serves from the start, or that begin with the HTTP/2 preface.
    pub hyper: auto::Builder<TokioExecutor>,
    /// For HTTP/1 connections the codec hands over: no protocol sniffing, which could
    /// otherwise be cut short by a drain and lose the request already read.
    pub hyper_http1: hyper::server::conn::http1::Builder,
    pub settings: http1::Settings,
    /// Whether the codec serves HTTP/1.1 (else hyper serves every connection).
    pub own_http1: bool,
}

impl Shared {
    pub fn new(
        proxy: Arc<Proxy>,
        hyper: auto::Builder<TokioExecutor>,
        hyper_http1: hyper::server::conn::http1::Builder,
        choice: Http1Choice,
        settings: http1::Settings,
    ) -> Self {
        // The codec parses into a fixed array of header slots; more allowed than that is
        // hyper's to serve.
        let own_http1 =
            choice == Http1Choice::Parapet && settings.max_headers <= http1::HEADER_SLOTS;
        Self {
            proxy,
            hyper,
            hyper_http1,
            settings,
            own_http1,
        }
    }
}

/// Serves one connection to its end (or until the drain signal and its in-flight request
/// are done).
pub async fn serve<IO>(io: IO, shared: Arc<Shared>, info: ConnInfo, mut drain: DrainSignal)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, served, http1) = if shared.own_http1 {
        let proxy = &shared.proxy;
        // Not boxed: the codec polls the request's future where it is, in the
        // connection's own future (about 1.3k fewer instructions per request than a box
        // per request, for about 3.4 KB more per idle connection, measured: 19.5 against
        // 16.1 KB; hyper's server, 24.2 KB).
        let handle = |req| proxy.clone().handle(req, info);
        match http1::serve(io, handle, &proxy.metrics, &shared.settings, &mut drain).await {
            http1::Ended::Closed => return,
            http1::Ended::Handoff {
                io,
                read,
                served,
                http2,
            } => (Rewind::new(io, read), served, !http2),
        }
    } else {
        (Rewind::new(io, bytes::Bytes::new()), 0, false)
    };
    let limit = shared.settings.max_requests;
    let served = Arc::new(AtomicU32::new(served));
    let proxy = shared.proxy.clone();
    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let proxy = proxy.clone();
        let served = served.clone();
        async move {
            let http1 = req.version() <= http::Version::HTTP_11;
            // Boxed: the request's future is several KiB, and hyper moves the service
            // future more than once before polling it; a pointer is cheaper to move (about
            // 2k fewer instructions per request, counted).
            let mut resp = Box::pin(proxy.handle(req.map(DownstreamBody::Hyper), info)).await;
            let n = served.fetch_add(1, Ordering::Relaxed) + 1;
            if http1 && limit > 0 && n >= limit {
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(resp)
        }
    });
    // `biased`, the connection first: a request already read is served before a drain
    // that started meanwhile closes the connection. (A macro: hyper's two connection types
    // share no trait with `graceful_shutdown`.)
    macro_rules! until_drained {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            tokio::select! {
                biased;
                ended = conn.as_mut() => ended.map_err(Into::into),
                () = drain.draining() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await.map_err(Into::into)
                }
            }
        }};
    }
    let ended: Result<(), Box<dyn std::error::Error + Send + Sync>> = if http1 {
        until_drained!(
            shared
                .hyper_http1
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades()
        )
    } else {
        until_drained!(
            shared
                .hyper
                .serve_connection_with_upgrades(TokioIo::new(io), svc)
        )
    };
    if let Err(e) = ended {
        tracing::trace!(peer = %info.peer, error = %e, "connection ended with an error");
    }
}
