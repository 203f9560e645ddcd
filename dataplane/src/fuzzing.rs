//! Entry points for the fuzz targets (`fuzz/`) and the differential tests
//! (`tests/differential.rs`): thin wrappers that run the HTTP/1.1 codecs and the snapshot
//! decoder over bytes in memory, so the codecs' internals stay private. Not an API.
//!
//! The server runs take a runtime with paused time (`start_paused`): a connection that
//! waits for bytes that never come ends at the header read timeout, which the runtime
//! reaches at once instead of after real seconds.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures::FutureExt as _;
use http::{HeaderMap, Request, Response, StatusCode, Version, header};
use http_body::Body;
use http_body_util::BodyExt as _;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

pub use crate::admin::{DecodeError, decode_delta, decode_snapshot};
use crate::{
    downstream::{Drain, http1, rewind::Rewind},
    listener::{ListenerConfig, builder, http1_builder},
    metrics::Metrics,
    proxy::{
        body::{DownstreamBody, ProxyBody},
        problem::full,
    },
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

/// What the handler has seen.
type SeenLog = Arc<Mutex<Vec<Seen>>>;

/// The handler both servers call: it reads the request's body and answers 200 `ok`.
async fn handle<B>(seen: SeenLog, req: Request<B>) -> Result<Response<ProxyBody>, Infallible>
where
    B: Body<Data = Bytes> + Send + 'static,
{
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).map_err(|_| ());
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        target: parts.uri.to_string(),
        version: parts.version,
        headers: parts.headers,
        body,
    });
    Ok(Response::new(full("ok")))
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
/// of the connection to hyper (its HTTP/1 server, or the HTTP/1 and 2 one after the HTTP/2
/// preface).
pub async fn parapet_server(input: &[u8], cfg: &ListenerConfig) -> Served {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let seen = SeenLog::default();
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
        let codec =
            |req: Box<_>| handle(seen.clone(), *req).map(|r| r.unwrap_or_else(|e| match e {}));
        let ended = http1::serve(server_io, codec, &metrics, &settings, &mut signal).await;
        let http1::Ended::Handoff {
            io, read, http2, ..
        } = ended
        else {
            return false;
        };
        let seen = seen.clone();
        let svc = service_fn(move |req: Request<Incoming>| handle(seen.clone(), req));
        let io = TokioIo::new(Rewind::new(io, read));
        let _ = if http2 {
            builder(cfg).serve_connection_with_upgrades(io, svc).await
        } else {
            http1_builder(cfg)
                .serve_connection(io, svc)
                .with_upgrades()
                .await
                .map_err(Into::into)
        };
        true
    };
    let (output, handed_off) = tokio::join!(client(client_io, input), server);
    let requests = std::mem::take(&mut *seen.lock().unwrap());
    Served {
        requests,
        output,
        handed_off,
    }
}

/// Serves `input` as one connection with hyper's HTTP/1 server alone, set up as the data
/// plane sets it up.
pub async fn hyper_server(input: &[u8], cfg: &ListenerConfig) -> Served {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let seen = SeenLog::default();
    let server = async {
        let seen = seen.clone();
        let svc = service_fn(move |req: Request<Incoming>| handle(seen.clone(), req));
        let _ = http1_builder(cfg)
            .serve_connection(TokioIo::new(server_io), svc)
            .with_upgrades()
            .await;
    };
    let (output, ()) = tokio::join!(client(client_io, input), server);
    let requests = std::mem::take(&mut *seen.lock().unwrap());
    Served {
        requests,
        output,
        handed_off: false,
    }
}

/// The statuses of the responses in a server's output, in order.
pub fn statuses(mut out: &[u8]) -> Vec<u16> {
    let mut got = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(n)) = resp.parse(out) else {
            return got;
        };
        got.push(resp.code.unwrap());
        let len = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or(0);
        // The handler's answers, and both servers' refusals, are length-framed; a HEAD's
        // answer has no body, which the next head's status line shows.
        let rest = &out[n..];
        out = if rest.len() >= len && !rest.starts_with(b"HTTP/1.") {
            &rest[len..]
        } else {
            rest
        };
    }
}

/// A request with the differences by design taken out (see `compare_servers`).
fn normalised_request(mut r: Seen) -> Seen {
    // Exception: repeated `Content-Length: 0` fields (a head Parapet's codec serves).
    // hyper's server passes one on and Parapet's codec all of them; both read no body, and
    // the request sent upstream gets a single length of its own either way.
    let lengths: Vec<_> = r
        .headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .cloned()
        .collect();
    if lengths.len() > 1 && lengths.iter().all(|v| v == lengths[0]) {
        r.headers.insert(header::CONTENT_LENGTH, lengths[0].clone());
    }
    r
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether both servers called the handler with the same requests and answered with the
/// same statuses, but for the differences by design (each commented), for the
/// differential tests and fuzz target. `max_head_bytes` is the limit both were given.
pub fn compare_servers(
    input: &[u8],
    parapet: &Served,
    hyper: &Served,
    max_head_bytes: usize,
) -> Result<(), String> {
    let (ps, hs) = (statuses(&parapet.output), statuses(&hyper.output));
    let requests =
        |s: &Served| -> Vec<Seen> { s.requests.iter().cloned().map(normalised_request).collect() };
    if requests(parapet) == requests(hyper) && ps == hs {
        return Ok(());
    }
    // Exception: a head both too large and malformed gets 400 or 431 depending on how much
    // each server reads before it parses (hyper stops at its buffer's limit, Parapet's
    // codec parses what its reads brought); either refusal closes the connection.
    let refusals = [400, 431];
    if requests(parapet) == requests(hyper)
        && input.len() > max_head_bytes
        && ps.len() == hs.len()
        && ps
            .split_last()
            .zip(hs.split_last())
            .is_some_and(|((p, pr), (h, hr))| {
                pr == hr && refusals.contains(p) && refusals.contains(h)
            })
    {
        return Ok(());
    }
    // Exception: the HTTP/2 preface's request line where a request is due (not at the
    // connection's start, where both hand the connection to HTTP/2). Parapet's codec answers
    // 400 as for any request that is not HTTP/1.x; hyper's HTTP/1 server takes it for a
    // switch to HTTP/2 it is not set up for and closes without an answer.
    if requests(parapet) == requests(hyper)
        && ps.split_last() == Some((&400, &hs[..]))
        && input.windows(14).any(|w| w == b"PRI * HTTP/2.0")
    {
        return Ok(());
    }
    // Exception: a head begun and not finished when the input ends. At the header read
    // timeout Parapet's codec says 408 (the client was too slow); hyper's server closes
    // without an answer.
    if requests(parapet) == requests(hyper) && ps.split_last() == Some((&408, &hs[..])) {
        return Ok(());
    }
    // Exception: the start of the HTTP/2 preface, and nothing after it. Parapet's codec
    // waits to tell whether it is the preface (HTTP/2 with prior knowledge) until the header
    // read timeout (then 408, as for any head begun and not finished); hyper's HTTP/1 server
    // refuses it at once (400).
    if parapet.requests.is_empty()
        && (ps.is_empty() || ps == [408])
        && hs == [400]
        && input.len() < H2_PREFACE.len()
        && H2_PREFACE.starts_with(input)
    {
        return Ok(());
    }
    Err(format!(
        "input {:?}\nParapet (handed off: {}): {:?} answers {ps:?}\nhyper: {:?} answers {hs:?}",
        String::from_utf8_lossy(input),
        parapet.handed_off,
        parapet.requests,
        hyper.requests,
    ))
}

/// What Parapet's codec decides for one request head at the start of `buf`.
#[derive(Debug)]
pub enum HeadDecision {
    /// Not a complete head yet.
    Partial,
    /// Served by the codec: the length of the head and its body, and the request the
    /// proxy gets with its body.
    Served(usize, Box<Request<Bytes>>),
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
        Some(Ok(Some((len, req)))) => HeadDecision::Served(
            len,
            Box::new(req.map(|b| match b {
                DownstreamBody::Full(b) => b.unwrap_or_default(),
                _ => Bytes::new(),
            })),
        ),
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

/// The runtime a fuzz target drives its connections on; `paused`: time jumps ahead when
/// nothing is ready, so a connection waiting for more bytes reaches its timeout at once.
/// Behind the `fuzzing` feature: paused time needs tokio's `test-util`, which release
/// builds must not carry.
#[cfg(feature = "fuzzing")]
pub fn runtime(paused: bool) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(paused)
        .build()
        .expect("a current-thread runtime")
}
