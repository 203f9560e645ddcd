//! Accepts downstream connections (HTTP/1.1, h2c, and TLS with ALPN when a certificate is
//! given) and hands each request to the proxy. Stops accepting on shutdown and lets
//! in-flight requests finish.
//!
//! Each socket serves one Gateway listener port. While the table in force has listeners,
//! that port's listener decides how a connection is served: `Https` terminates TLS with the
//! listener's certificates, `Http` is plain, and a port with no listener has its connections
//! closed at once. A table without listeners serves every socket alike (TLS when `--tls` or
//! `--tls-cert` is given).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;

use parapet_crds::snapshot::ListenerProtocol;

use crate::{
    codec::Http1Codec,
    downstream::{self, Drain, DrainSignal, Protocol, Shared},
    proxy::{ConnInfo, Proxy, TlsSession},
    tls,
};

/// One traffic socket and how its connections are served.
pub struct Socket<L = std::net::TcpListener> {
    pub listener: L,
    /// The Gateway listener port its connections are routed with.
    pub port: u16,
    /// TLS for tables without listeners (`--tls`, `--tls-cert`); `None`: plain.
    pub tls: Option<TlsAcceptor>,
    /// TLS with the certificates of listener `port`, for tables whose listener on it is
    /// `Https`.
    pub listener_tls: TlsAcceptor,
}

#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Largest request head (request line + headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Time a client has to send a complete request head (slowloris guard).
    pub header_read_timeout: Duration,
    /// HTTP/2 keep-alive pings to detect dead peers.
    pub h2_keepalive: Duration,
    pub max_concurrent_streams: u32,
    /// HTTP/1.1 connections close after this many requests (0: no limit): the response to
    /// the last one says `connection: close`.
    pub max_requests_per_connection: u32,
    /// Which codec serves plain HTTP/1.1 requests (`--downstream-http1`).
    pub http1: Http1Codec,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            h2_keepalive: Duration::from_secs(30),
            max_concurrent_streams: 1000,
            max_requests_per_connection: 0,
            http1: Http1Codec::Parapet,
        }
    }
}

/// hyper's HTTP/1 server alone, set as `builder`'s HTTP/1 side (for connections the codec
/// hands over).
pub fn http1_builder(cfg: &ListenerConfig) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .max_headers(cfg.max_headers)
        .keep_alive(true);
    b
}

pub fn builder(cfg: &ListenerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .max_headers(cfg.max_headers)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(cfg.h2_keepalive)
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX));
    b
}

/// One traffic worker: a thread with its own single-threaded runtime and listening sockets.
///
/// Thread-per-core instead of one work-stealing runtime: a connection's tasks (downstream
/// connection, request, upstream connections it opens) stay on one thread, so wake-ups are
/// local and need no cross-thread synchronisation. Measured on the 1-worker benchmark: about
/// 15% less CPU per request and a lower p99 than tokio's multi-threaded scheduler.
pub struct Worker {
    /// This worker's socket for each `--listen` address.
    pub sockets: Vec<Socket>,
    pub proxy: Arc<Proxy>,
    pub cfg: ListenerConfig,
    pub drain: Duration,
    /// Turns true when the worker should stop accepting and drain.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// This worker's heartbeat (`/healthz`).
    pub heartbeat: (std::sync::Arc<crate::liveness::Heartbeats>, usize),
}

impl Worker {
    /// Runs the worker on the calling thread until it has drained after `stop`.
    pub fn run(self) -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let Worker {
            sockets,
            proxy,
            cfg,
            drain,
            mut stop,
            heartbeat,
        } = self;
        rt.block_on(async move {
            let sockets = sockets
                .into_iter()
                .map(|s| {
                    Ok(Socket {
                        listener: Acceptor::from_std(s.listener)?,
                        port: s.port,
                        tls: s.tls,
                        listener_tls: s.listener_tls,
                    })
                })
                .collect::<std::io::Result<Vec<_>>>()?;
            // Ends with the runtime.
            tokio::spawn(crate::upstream::http1::sweep_idle());
            tokio::spawn(heartbeat.0.beat(heartbeat.1));
            let shutdown = async move {
                // An error means the sender is gone: the process is ending anyway.
                let _ = stop.wait_for(|s| *s).await;
            };
            serve(sockets, proxy, cfg, shutdown, drain).await;
            Ok(())
        })
    }
}

/// A traffic socket's listener. Its connections are accepted through mio and handed to
/// tokio as any socket is: a stream from tokio's own `accept` counts as readable before
/// anything arrived, so its first read was tried at once and, on a busy listener, mostly
/// found nothing (a failed `recvfrom` for three connections in four, measured); from here
/// a new connection's first read waits for the driver's event, as nginx's does.
pub struct Acceptor(AsyncFd<mio::net::TcpListener>);

impl Acceptor {
    /// `listener` is made non-blocking here.
    pub fn from_std(listener: std::net::TcpListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener = mio::net::TcpListener::from_std(listener);
        // Deprecated for descriptors a caller could close while registered (its
        // replacement is `unsafe`, which this crate forbids); the listener is owned by the
        // `AsyncFd` and closes only with it.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(listener, Interest::READABLE)?;
        Ok(Self(fd))
    }

    pub async fn accept(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
        loop {
            let mut ready = self.0.readable().await?;
            // `Err`: the queue is empty; the readiness is cleared and the wait goes on.
            if let Ok(accepted) = ready.try_io(|l| l.get_ref().accept()) {
                let (stream, peer) = accepted?;
                // mio accepts with `SOCK_NONBLOCK`, as `from_std` requires.
                return Ok((TcpStream::from_std(stream.into())?, peer));
            }
        }
    }
}

/// Serves every socket until `shutdown` resolves, then waits up to `drain` for open
/// connections.
pub async fn serve(
    sockets: Vec<Socket<Acceptor>>,
    proxy: Arc<Proxy>,
    cfg: ListenerConfig,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
) {
    let mut shared = downstream::Shared::new(
        proxy,
        builder(&cfg),
        http1_builder(&cfg),
        cfg.http1,
        downstream::http1::Settings {
            max_head_bytes: cfg.max_header_bytes,
            max_headers: cfg.max_headers,
            header_read_timeout: cfg.header_read_timeout,
            max_requests: cfg.max_requests_per_connection,
        },
    );
    let connections = Drain::default();
    // Idle plain connections wait in one task of this worker's, not each in its own.
    let lot = match downstream::idle::lot() {
        Ok((parking, lot)) => {
            shared.parking = Some(parking);
            Some(lot)
        }
        Err(e) => {
            tracing::warn!(error = %e, "idle connections keep their tasks: no epoll instance for them could be made");
            None
        }
    };
    let shared = Arc::new(shared);
    if let Some(lot) = lot {
        let waking = shared.clone();
        tokio::spawn(lot.run(
            move |conn| {
                // Its next request came: a task again.
                let conn = downstream::boxed!(downstream::serve_plain(conn, waking.clone()));
                tokio::spawn(conn);
            },
            cfg.header_read_timeout,
            connections.signal(),
            shared.proxy.metrics.parked_connections.clone(),
        ));
    }
    {
        // The accept loops never end by themselves; dropping them stops accepting.
        let accepting = futures::future::join_all(
            sockets
                .iter()
                .map(|s| accept(s, &shared, &connections, cfg.header_read_timeout)),
        );
        tokio::select! {
            () = shutdown => {}
            _ = accepting => {}
        }
    }
    drop(sockets);
    tracing::info!(
        drain_secs = drain.as_secs_f64(),
        "listener closed; draining open connections"
    );
    tokio::select! {
        () = connections.drain() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(drain) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
}

/// Accepts on one socket, each connection served by a task of its own.
async fn accept(
    socket: &Socket<Acceptor>,
    shared: &Arc<Shared>,
    connections: &Drain,
    handshake_timeout: Duration,
) {
    loop {
        let (stream, peer) = match socket.listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(tls) = connection_tls(socket, shared) else {
            tracing::debug!(%peer, port = socket.port, "connection closed: the table has no listener on this port");
            continue;
        };
        let shared = shared.clone();
        let signal = connections.signal();
        // A TLS connection's session is set once its handshake is done (`serve_tls`).
        let info = ConnInfo {
            peer,
            tls: None,
            port: socket.port,
            client_cert: None,
        };
        // Boxed, and the box spawned: tokio moves a task's future several times on its way
        // into the task and writes its whole size again when it ends (about 1 KB, eight
        // copies per connection), where a box is one pointer.
        let conn = downstream::boxed!(async move {
            match tls {
                // Nagle's algorithm goes off before its second write (`nodelay.rs`).
                None if shared.own_http1 => {
                    let conn = downstream::idle::Parked {
                        io: stream,
                        info,
                        resume: downstream::http1::Resume::fresh(),
                        drain: signal,
                    };
                    downstream::serve_plain(conn, shared).await;
                }
                None => {
                    let _ = stream.set_nodelay(true);
                    downstream::serve(stream, shared, info, signal, Protocol::Sniff).await;
                }
                // Boxed, so a plain connection's task does not have the size of a TLS one.
                Some(acceptor) => {
                    let _ = stream.set_nodelay(true);
                    let conn = downstream::boxed!(serve_tls(
                        stream,
                        acceptor,
                        handshake_timeout,
                        shared,
                        info,
                        signal,
                    ));
                    conn.await;
                }
            }
        });
        tokio::spawn(conn);
    }
}

/// The TLS handshake (within `handshake_timeout`), then the connection as ALPN chose it.
/// `acceptor`: the handshake's configuration, and the Gateway port whose hosts' certificates
/// (and client-certificate policies) it serves (`None`: the table's own).
async fn serve_tls(
    stream: TcpStream,
    (acceptor, port): (TlsAcceptor, Option<u16>),
    handshake_timeout: Duration,
    shared: Arc<Shared>,
    mut info: ConnInfo,
    signal: DrainSignal,
) {
    let peer = info.peer;
    let certs = shared.proxy.store.certificates();
    let handshake = tls::accept(stream, &acceptor, certs, port);
    let (stream, client_cert) = match tokio::time::timeout(handshake_timeout, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    info.tls = Some(Arc::new(TlsSession::of(stream.get_ref().1)));
    info.client_cert = client_cert.map(Arc::new);
    // ALPN decides: no sniffing for a preface on a connection agreed as HTTP/1.
    let protocol = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    };
    downstream::serve(stream, shared, info, signal, protocol).await;
}

/// How a new connection on `socket` is served under the table in force: `Some(None)`
/// plain, `Some(Some(_))` TLS (with the Gateway port whose hosts it serves, `None` for the
/// table's own), `None` not at all (the table has listeners, none on this port). Read per
/// connection, so a new table applies to the next one.
fn connection_tls(
    socket: &Socket<Acceptor>,
    shared: &Shared,
) -> Option<Option<(TlsAcceptor, Option<u16>)>> {
    match shared.proxy.store.load() {
        Some(table) if table.has_listeners() => match table.listener(socket.port)? {
            ListenerProtocol::Https => Some(Some((socket.listener_tls.clone(), Some(socket.port)))),
            ListenerProtocol::Http => Some(None),
        },
        _ => Some(socket.tls.clone().map(|t| (t, None))),
    }
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| in_use(addr, e))
}

fn in_use(addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!("cannot listen on {addr}: {e}; is another process using the port?")
}

/// Binds one listening socket per worker on `addr`. With more than one worker the sockets
/// share the address with SO_REUSEPORT, so the kernel spreads new connections over the
/// workers' accept queues (as nginx's `reuseport` does) instead of waking every worker for
/// each one.
///
/// The sockets are returned unregistered (std) so each worker thread registers its own with
/// its own runtime.
pub fn bind_workers(
    addr: SocketAddr,
    workers: usize,
) -> anyhow::Result<Vec<std::net::TcpListener>> {
    // A plain bind first: SO_REUSEPORT would let us join another process's group on the
    // same port silently, and it resolves port 0 for the group.
    let probe = std::net::TcpListener::bind(addr).map_err(|e| in_use(addr, e))?;
    if workers <= 1 {
        probe.set_nonblocking(true)?;
        return Ok(vec![probe]);
    }
    let addr = probe.local_addr()?;
    drop(probe);
    (0..workers)
        .map(|_| {
            use socket2::{Domain, Protocol, Socket, Type};
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into()).map_err(|e| in_use(addr, e))?;
            socket.listen(1024)?;
            Ok(socket.into())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A new connection is not taken as readable before its first bytes arrive (tokio's own
    /// `accept` marks it so, and its first read then fails with nothing to read).
    #[tokio::test]
    async fn an_accepted_connection_waits_for_its_first_bytes() {
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std.local_addr().unwrap();
        let acceptor = Acceptor::from_std(std).unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (server, peer) = acceptor.accept().await.unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let early = tokio::time::timeout(Duration::from_millis(50), server.readable()).await;
        assert!(early.is_err(), "readable before the client sent anything");
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), server.readable())
            .await
            .expect("readable once the client has sent")
            .unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(server.try_read(&mut buf).unwrap(), 16);
    }
}
