//! Entry points for the fuzz targets (`fuzz/`) and the differential tests
//! (`tests/differential.rs`): thin wrappers that run the HTTP/1.1 codecs and the snapshot
//! decoder over bytes in memory, so the codecs' internals stay private. Not an API.
//!
//! The server runs take a runtime with paused time (`start_paused`): a connection that
//! waits for bytes that never come ends at the header read timeout, which the runtime
//! reaches at once instead of after real seconds.

use std::{cell::RefCell, rc::Rc, time::Duration};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt as _;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

pub use crate::admin::{DecodeError, decode_snapshot};
use crate::{
    downstream::{Drain, http1, rewind::Rewind},
    listener::{ListenerConfig, http1_builder},
    metrics::Metrics,
    proxy::problem::full,
    upstream::ProxyBody,
};

/// Listener settings as the data plane's defaults, with `max_header_bytes` and
/// `max_headers` as given.
pub fn listener_config(max_header_bytes: usize, max_headers: usize) -> ListenerConfig {
    ListenerConfig {
        max_header_bytes,
        max_headers,
        ..ListenerConfig::default()
    }
}

/// A request as the handler saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub version: Version,
    pub headers: HeaderMap,
    /// The body, or `Err` when it could not be read to its end.
    pub body: Result<Bytes, ()>,
}

/// One connection served to its end.
#[derive(Debug, Default)]
pub struct Served {
    /// The requests the handler was called with, in order.
    pub requests: Vec<Seen>,
    /// Everything the server wrote.
    pub output: Vec<u8>,
    /// Parapet's codec handed the connection to hyper (always false for hyper alone).
    pub handed_off: bool,
}

/// The handler both servers call: it reads the request's body and answers 200 `ok`.
fn handler<B>(
    seen: Rc<RefCell<Vec<Seen>>>,
) -> impl Fn(Request<B>) -> std::pin::Pin<Box<dyn Future<Output = Response<ProxyBody>>>>
where
    B: Body<Data = Bytes> + 'static,
{
    move |req: Request<B>| {
        let seen = seen.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).map_err(|_| ());
            seen.borrow_mut().push(Seen {
                method: parts.method.to_string(),
                target: parts.uri.to_string(),
                version: parts.version,
                headers: parts.headers,
                body,
            });
            Response::new(full("ok"))
        })
    }
}

/// Writes `input` as a client would and reads the answers until the server closes. The
/// client's side stays open, so the server ends the connection on its own (an answer that
/// closes, a refusal, or the header read timeout); only when it has not after a minute
/// does the client close its side.
async fn client<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, input: &[u8]) -> Vec<u8> {
    let mut output = Vec::new();
    let exchange = async {
        // A server that refuses may close before it has read everything.
        let _ = io.write_all(input).await;
        let _ = io.flush().await;
        let _ = io.read_to_end(&mut output).await;
    };
    if tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .is_err()
    {
        let _ = io.shutdown().await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(60), io.read_to_end(&mut rest)).await;
        output.extend_from_slice(&rest);
    }
    output
}

/// Serves `input` as one downstream connection the way the data plane does with its own
/// codec in front (`downstream::serve`): the codec serves what it can and hands the rest
/// of the connection to hyper's HTTP/1 server.
pub async fn parapet_server(input: &[u8], cfg: &ListenerConfig) -> Served {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let seen = Rc::new(RefCell::new(Vec::new()));
    let settings = http1::Settings {
        max_head_bytes: cfg.max_header_bytes,
        max_headers: cfg.max_headers.min(http1::HEADER_SLOTS),
        header_read_timeout: cfg.header_read_timeout,
        max_requests: cfg.max_requests_per_connection,
    };
    let metrics = Metrics::new();
    let draining = Drain::default();
    let server = async {
        let mut signal = draining.signal();
        let ended = http1::serve(
            server_io,
            handler(seen.clone()),
            &metrics,
            &settings,
            &mut signal,
        )
        .await;
        let http1::Ended::Handoff { io, read, .. } = ended else {
            return false;
        };
        let svc = service_fn(|req: Request<hyper::body::Incoming>| {
            let answer = handler(seen.clone())(req);
            async move { Ok::<_, std::convert::Infallible>(answer.await) }
        });
        let _ = http1_builder(cfg)
            .serve_connection(TokioIo::new(Rewind::new(io, read)), svc)
            .with_upgrades()
            .await;
        true
    };
    let (output, handed_off) = tokio::join!(client(client_io, input), server);
    let requests = seen.take();
    Served {
        requests,
        output,
        handed_off,
    }
}

/// Serves `input` as one connection with hyper's HTTP/1 server alone, set up as the data
/// plane sets it up (`--downstream-http1 hyper`).
pub async fn hyper_server(input: &[u8], cfg: &ListenerConfig) -> Served {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let seen = Rc::new(RefCell::new(Vec::new()));
    let server = async {
        let svc = service_fn(|req: Request<hyper::body::Incoming>| {
            let answer = handler(seen.clone())(req);
            async move { Ok::<_, std::convert::Infallible>(answer.await) }
        });
        let _ = http1_builder(cfg)
            .serve_connection(TokioIo::new(server_io), svc)
            .with_upgrades()
            .await;
    };
    let (output, ()) = tokio::join!(client(client_io, input), server);
    let requests = seen.take();
    Served {
        requests,
        output,
        handed_off: false,
    }
}

/// What Parapet's codec decides for one request head at the start of `buf`.
#[derive(Debug)]
pub enum HeadDecision {
    /// Not a complete head yet.
    Partial,
    /// Served by the codec: the head's length and the request the proxy gets (its body is
    /// always empty).
    Served(usize, Box<Request<()>>),
    /// Handed to hyper (a body, an upgrade, HTTP/1.0, ...).
    Handoff,
    /// Refused (400 or 431).
    Refused,
}

/// Parses one request head as the downstream codec does.
pub fn parse_request_head(buf: &[u8], max_head_bytes: usize, max_headers: usize) -> HeadDecision {
    let settings = http1::Settings {
        max_head_bytes,
        max_headers: max_headers.min(http1::HEADER_SLOTS),
        header_read_timeout: Duration::from_secs(10),
        max_requests: 0,
    };
    match http1::parse_one(buf, &settings) {
        None => HeadDecision::Partial,
        Some(Ok(Some((len, req)))) => HeadDecision::Served(len, Box::new(req.map(|_| ()))),
        Some(Ok(None)) => HeadDecision::Handoff,
        Some(Err(())) => HeadDecision::Refused,
    }
}

/// A response as a client read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

/// How reading a response failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseError {
    /// The head was refused (or the connection ended before it was complete).
    Head(String),
    /// The head was taken, the body failed: what was read of it until then.
    Body { head: Box<Received>, error: String },
}

/// Reads `input` as the upstream's answer to a request (a `HEAD` when `head_only`) with
/// Parapet's upstream HTTP/1.1 client, the body to its end. The first `split` bytes are
/// already in the connection's buffer, the rest arrives from the socket; then the upstream
/// closes its side.
pub async fn parapet_client(
    input: &[u8],
    split: usize,
    head_only: bool,
) -> Result<Received, ResponseError> {
    let split = split.min(input.len());
    // A Unix socket pair stands in for the TCP connection: the client only reads and
    // writes bytes, and a pair needs no port and no handshake. Everything is written (the
    // inputs are far smaller than the socket's buffer) before the client reads.
    let (ours, theirs) = socket2::Socket::pair(socket2::Domain::UNIX, socket2::Type::STREAM, None)
        .expect("a Unix socket pair");
    let mut theirs = std::net::TcpStream::from(theirs);
    std::io::Write::write_all(&mut theirs, &input[split..]).expect("write to the socket pair");
    theirs
        .shutdown(std::net::Shutdown::Write)
        .expect("shut down the socket pair");
    let ours = std::net::TcpStream::from(ours);
    ours.set_nonblocking(true).expect("a non-blocking socket");
    let stream = tokio::net::TcpStream::from_std(ours).expect("a tokio socket");
    let resp =
        crate::upstream::http1::read_response(stream, BytesMut::from(&input[..split]), head_only)
            .await
            .map_err(|e| ResponseError::Head(e.to_string()))?;
    let result = drain(resp).await;
    drop(theirs);
    result
}

/// Reads `input` as the upstream's answer with hyper's HTTP/1 client (as the data plane
/// sets it up for `--upstream-http1 hyper`), the body to its end; then the upstream closes.
pub async fn hyper_client(input: &[u8], head_only: bool) -> Result<Received, ResponseError> {
    let (client_io, mut server_io) = tokio::io::duplex(1 << 20);
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(
            client_io,
        ))
        .await
        .map_err(|e| ResponseError::Head(e.to_string()))?;
    let upstream = async {
        let mut request = vec![0u8; 0];
        // The request has to be read before the answer goes out, as an upstream does.
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match server_io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let _ = server_io.write_all(input).await;
        let _ = server_io.shutdown().await;
        // Kept open for reading until the client is done, as a socket would be.
        let _ = server_io.read_to_end(&mut request).await;
    };
    let exchange = async {
        let method = if head_only {
            http::Method::HEAD
        } else {
            http::Method::GET
        };
        let req = Request::builder()
            .method(method)
            .uri("/")
            .header(http::header::HOST, "upstream")
            .body(http_body_util::Empty::new())
            .expect("a valid request");
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| ResponseError::Head(e.to_string()))?;
        drain(resp).await
    };
    // The connection ends when the upstream has closed and the answer is read (or failed).
    let conn = async {
        let _ = conn.await;
    };
    match tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(exchange, conn, upstream).0
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(ResponseError::Head("no answer within a minute".into())),
    }
}

/// Reads a response's body to its end.
async fn drain<B>(resp: Response<B>) -> Result<Received, ResponseError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (parts, mut body) = resp.into_parts();
    let mut got = Received {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: Bytes::new(),
        trailers: None,
    };
    let mut data = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        got.trailers.get_or_insert_with(HeaderMap::new).extend(t);
                    }
                }
            },
            Err(e) => {
                got.body = data.freeze();
                return Err(ResponseError::Body {
                    head: Box::new(got),
                    error: e.to_string(),
                });
            }
        }
    }
    got.body = data.freeze();
    Ok(got)
}
