//! Parapet's own HTTP/1.1 client, for plain (no TLS) keep-alive pools.
//!
//! Why not hyper-util's pooled client here: it drives every upstream connection from a
//! task of its own, so each exchange crosses tasks twice (the request goes to the
//! connection's task through a channel, the response comes back through another), takes
//! the pool's mutex and wakes both tasks. This client writes the request and reads the
//! response head from the request's own task, and the response body is read straight from
//! the upstream socket as the downstream connection asks for it: one wake-up per exchange,
//! no channel, no lock. Idle connections are kept per thread (every traffic worker is a
//! single-threaded runtime, so a connection stays on the thread that opened it).
//!
//! Scope: requests whose body is in memory (none, or buffered for replay) and that do not
//! upgrade. TLS and HTTP/2 pools, streamed request bodies and upgrades go through hyper.

use std::{
    cell::RefCell,
    collections::HashMap,
    future::poll_fn,
    io,
    mem::MaybeUninit,
    net::IpAddr,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version, header,
    request::Parts,
    uri::{Authority, PathAndQuery},
};
use http_body::{Body as _, Frame, SizeHint};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{Instant, Sleep},
};

use crate::{fields::has_field, proxy::interim};

/// Response headers accepted at most (as the downstream listener's default).
const MAX_HEADERS: usize = 100;
/// A response head (status line and headers) larger than this is refused.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// A chunk-size line (with extensions) or trailer section larger than this is refused.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILER_BYTES: usize = 64 * 1024;
thread_local! {
    /// Header names and where their values are in the head, from the last parse.
    static SCRATCH: RefCell<Vec<(HeaderName, std::ops::Range<usize>)>> = const { RefCell::new(Vec::new()) };
}

/// A request body up to this size is copied behind its head into the write buffer (one
/// contiguous write); a larger one is written from its own memory beside it.
const COPY_BODY_UP_TO: usize = 16 * 1024;
/// A request body larger than this is written in pieces of this size. Measured on loopback
/// with a 256 KiB body (same binary, alternating rounds), the data plane spent 93–98 µs of
/// CPU per request in 64 KiB writes, 102–105 in one write of the whole body and 103–107 in
/// 16 KiB writes.
const MAX_BODY_WRITE: usize = 64 * 1024;
/// Reads ask for at least this much room, and at most `MAX_READ` when more is expected.
const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 64 * 1024;
/// A head is read with room for the answer the connection's last head announced, up to
/// this (a head and a 64 KiB body): an answer that has arrived whole then takes one read
/// and leaves in one write, where an 8 KiB first read took two of each.
const MAX_HEAD_READ: usize = MAX_READ + MIN_READ;
/// Idle connections are closed after this long unused (as hyper's pool did: 90 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint and thread.
const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// How often a thread's idle connections are checked for age and closed peers (a system
/// call each).
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// A connection unused this long gives its buffers back (up to a head and 64 KiB to read,
/// 16 KiB to write), as nginx and HAProxy keep none for an idle upstream connection: a
/// pool that grew in a burst would otherwise hold them all for as long as it stays idle.
/// Checked this often too, so a buffer goes between one and two periods after its last
/// use. Giving them back at every return instead made each 64 KiB answer fault its buffer
/// in again (11 page faults per request).
const RELEASE_AFTER: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not connect to the upstream {authority}: {source}")]
    Connect {
        authority: Authority,
        source: io::Error,
    },
    #[error("the upstream connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection before the response was complete")]
    Closed,
    #[error("the upstream sent an invalid response: {0}")]
    Protocol(&'static str),
    #[error("the upstream did not answer before the request's deadline")]
    Deadline,
}

impl Error {
    /// The connection could not be made (nothing was sent).
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. })
    }
}

/// Header lines a request gets as it is written (the proxy's forwarding headers), and the
/// request's own fields they replace.
pub trait HeadExtras {
    fn replaces(&self, name: &HeaderName) -> bool;
    /// Writes whole `name: value\r\n` lines; `headers` are the request's own.
    fn write(&self, out: &mut Vec<u8>, headers: &HeaderMap);
}

/// No extra lines.
impl HeadExtras for () {
    fn replaces(&self, _: &HeaderName) -> bool {
        false
    }

    fn write(&self, _: &mut Vec<u8>, _: &HeaderMap) {}
}

/// How one request is sent: when, until when, and whether it may be sent twice.
#[derive(Clone, Copy, Debug)]
pub struct Terms {
    /// A reused connection the upstream had closed while it was idle is replaced by a new
    /// one and the request sent again (nothing of a response was read, so the upstream
    /// most likely never saw it).
    pub retry_stale: bool,
    /// The attempt's start, read once by the caller: the idle pool's clock for this request.
    pub now: Instant,
    /// The response head must have come by then, or the send ends with
    /// [`Error::Deadline`] (the connection, if any, is closed).
    pub until: Instant,
}

/// The client of one pool's settings. Cheap to clone; connections live in the per-thread
/// idle pool, keyed by endpoint.
#[derive(Clone, Debug)]
pub struct Http1Client {
    connect_timeout: Duration,
}

impl Http1Client {
    pub fn new(connect_timeout: Duration) -> Self {
        Self { connect_timeout }
    }

    /// Sends `head` with `body` and the `extras` lines to `authority`, and reads the
    /// response head, on the `terms` of this attempt.
    pub async fn send(
        &self,
        authority: &Authority,
        head: &Parts,
        path: &PathAndQuery,
        body: &Bytes,
        extras: &(dyn HeadExtras + Sync),
        terms: Terms,
    ) -> Result<Response<Http1Body>, Error> {
        let head_only = head.method == Method::HEAD;
        let mut fresh_only = false;
        loop {
            let idle = if fresh_only {
                None
            } else {
                idle::take(authority, terms.now)
            };
            let (mut conn, reused) = match idle {
                Some(c) => (c, true),
                // Boxed: rare, and it would otherwise make every request's future larger.
                None => {
                    match tokio::time::timeout_at(terms.until, Box::pin(self.connect(authority)))
                        .await
                    {
                        Ok(c) => (c?, false),
                        Err(_) => return Err(Error::Deadline),
                    }
                }
            };
            conn.wbuf.clear();
            let rest = encode(&mut conn.wbuf, head, authority, path, body, extras);
            match exchange(conn, rest, head_only, terms.until).await {
                Ok(r) => return Ok(r),
                Err(f) if reused && f.nothing_read && terms.retry_stale => {
                    tracing::debug!(endpoint = %authority, error = %f.error, "idle upstream connection was closed; sending on a new one");
                    fresh_only = true;
                }
                Err(f) => return Err(f.error),
            }
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Box<Conn>, Error> {
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let connect = async {
            if let Ok(ip) = host.parse::<IpAddr>() {
                return TcpStream::connect((ip, port)).await;
            }
            let mut last = None;
            for addr in tokio::net::lookup_host((host, port)).await? {
                match TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "the name resolved to no address")
            }))
        };
        let stream = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(Error::Connect {
                    authority: authority.clone(),
                    source,
                });
            }
            Err(_) => {
                return Err(Error::Connect {
                    authority: authority.clone(),
                    source: io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no connection within the pool's connect timeout ({} ms)",
                            self.connect_timeout.as_millis()
                        ),
                    ),
                });
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(Box::new(Conn {
            stream,
            buf: BytesMut::new(),
            wbuf: Vec::with_capacity(1024),
            authority: authority.clone(),
            idle_since: Instant::now(),
            head_read: MIN_READ,
            deadline: None,
        }))
    }
}

/// One upstream connection with its read buffer (which may already hold the start of the
/// next read) and its write buffer (reused from request to request).
///
/// Held boxed everywhere (the idle pool, an answer's body): the answer is moved from stage
/// to stage on its way to the client, and a pointer moves for less than these 144 bytes
/// (4% fewer instructions per proxied request, measured).
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    wbuf: Vec<u8>,
    authority: Authority,
    idle_since: Instant,
    /// Room to read the next head with: the last announced length plus room for its head,
    /// within `MIN_READ..=MAX_HEAD_READ` (so small answers keep small buffers).
    head_read: usize,
    /// The deadline of the exchange under way, kept from one request to the next: moving a
    /// registered timer to a later deadline is a compare-and-swap, where a timer per
    /// request is registered in the runtime's wheel and taken out again (about 500
    /// instructions). Dropped with the buffers when the connection has idled
    /// `RELEASE_AFTER`, so the task it last woke is not held longer.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Conn {
    /// Reads more into the buffer: `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, expect: u64) -> Poll<io::Result<usize>> {
        let want = usize::try_from(expect)
            .unwrap_or(MAX_READ)
            .clamp(MIN_READ, MAX_READ);
        if self.buf.capacity() - self.buf.len() < want.min(MIN_READ) {
            self.buf.reserve(want);
        }
        loop {
            ready!(self.stream.poll_read_ready(cx))?;
            match self.stream.try_read_buf(&mut self.buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Reads more of a body that has not ended: an end of stream is an error.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match ready!(self.poll_fill(cx, 0)) {
            Ok(0) => Poll::Ready(Err(Error::Closed)),
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e.into())),
        }
    }

    /// Up to `rest` bytes of a body: what the buffer holds, or else what one read brings.
    /// An end of stream is an error: the body was promised to be longer.
    fn poll_take(&mut self, cx: &mut Context<'_>, rest: u64) -> Poll<Result<Bytes, Error>> {
        if self.buf.is_empty() {
            match ready!(self.poll_fill(cx, rest)) {
                Ok(0) => return Poll::Ready(Err(Error::Closed)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
        let n = self
            .buf
            .len()
            .min(usize::try_from(rest).unwrap_or(usize::MAX));
        Poll::Ready(Ok(self.buf.split_to(n).freeze()))
    }

    /// Whether an idle connection can still be used: its peer has neither closed it nor
    /// sent anything unasked. Costs no system call unless the socket became readable.
    fn idle_usable(&self) -> bool {
        matches!(self.stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// A failed exchange, and whether any of a response had arrived.
struct Failed {
    error: Error,
    nothing_read: bool,
}

/// Writes the encoded request (and `body`, when not copied into it) and reads the response
/// head; the connection moves into the response's body (or back to the idle pool when
/// there is none).
async fn exchange(
    mut conn: Box<Conn>,
    body: &[u8],
    head_only: bool,
    until: Instant,
) -> Result<Response<Http1Body>, Failed> {
    // The timer is left at an earlier request's deadline when this one's is later (each
    // request's usually is): moving it costs more than letting it fire once a timeout
    // and then moving it on. Moved now only when this deadline is the earlier.
    let mut deadline = match conn.deadline.take() {
        Some(mut d) => {
            if d.deadline() > until {
                d.as_mut().reset(until);
            }
            d
        }
        None => Box::pin(tokio::time::sleep_until(until)),
    };
    let sent = {
        let mut io = std::pin::pin!(write_and_read_head(&mut conn, body, head_only));
        poll_fn(|cx| match io.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending => loop {
                ready!(deadline.as_mut().poll(cx));
                if deadline.deadline() >= until {
                    return Poll::Ready(None);
                }
                // An earlier request's deadline passed, not this one's.
                deadline.as_mut().reset(until);
            },
        })
        .await
    };
    let (head, write_failed) = match sent {
        Some(r) => r?,
        None => {
            return Err(Failed {
                error: Error::Deadline,
                nothing_read: false,
            });
        }
    };
    conn.deadline = Some(deadline);
    let Head {
        status,
        version,
        headers,
        framing,
        reusable,
    } = head;
    if let Framing::Length(n) = framing {
        conn.head_read = usize::try_from(n)
            .map_or(MAX_HEAD_READ, |n| n.saturating_add(MIN_READ))
            .min(MAX_HEAD_READ);
    }
    let mut body = Http1Body {
        conn: Some(conn),
        framing,
        reusable: reusable && !write_failed,
    };
    if body.is_end_stream() {
        body.finish();
    }
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    Ok(resp)
}

/// [`exchange`]'s part on the wire: the request written, its response head read. Also
/// says whether the write failed (the connection is then not kept).
async fn write_and_read_head(
    conn: &mut Conn,
    body: &[u8],
    head_only: bool,
) -> Result<(Head, bool), Failed> {
    // An upstream may answer before it has read the whole request (413, 401) and close;
    // what it sent is still read and passed on, on a connection that is not kept.
    let mut write_error = if body.is_empty() {
        conn.stream.write_all(&conn.wbuf).await.err()
    } else {
        write_request(&mut conn.stream, &conn.wbuf, body)
            .await
            .err()
    };
    let mut read_any = !conn.buf.is_empty();
    let head = loop {
        if !conn.buf.is_empty() {
            match parse_head(&mut conn.buf, head_only) {
                Ok(Some(Parsed::Final(h))) => break h,
                // 1xx (100 Continue, 103 Early Hints): the final response follows.
                Ok(Some(Parsed::Informational)) => continue,
                Ok(None) => {}
                Err(error) => {
                    return Err(Failed {
                        error,
                        nothing_read: false,
                    });
                }
            }
        }
        if conn.buf.len() >= MAX_HEAD_BYTES {
            return Err(Failed {
                error: Error::Protocol("the response head is larger than 64 KiB"),
                nothing_read: false,
            });
        }
        if conn.buf.capacity() - conn.buf.len() < conn.head_read {
            conn.buf.reserve(conn.head_read);
        }
        let read_error = match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) => Error::Closed,
            Ok(_) => {
                read_any = true;
                continue;
            }
            Err(e) => e.into(),
        };
        // Nothing came back: a failed write is the cause to report.
        let error = match write_error.take() {
            Some(e) if !read_any => e.into(),
            _ => read_error,
        };
        return Err(Failed {
            error,
            nothing_read: !read_any,
        });
    };
    Ok((head, write_error.is_some()))
}

/// Writes a request's head and its body beside it: the body's first `MAX_BODY_WRITE` bytes
/// in one write with the head, the rest in writes of `MAX_BODY_WRITE`.
async fn write_request(stream: &mut TcpStream, head: &[u8], body: &[u8]) -> io::Result<()> {
    let (first, rest) = body.split_at(body.len().min(MAX_BODY_WRITE));
    let mut slices = [io::IoSlice::new(head), io::IoSlice::new(first)];
    crate::codec::write_all(stream, &mut slices).await?;
    for piece in rest.chunks(MAX_BODY_WRITE) {
        stream.write_all(piece).await?;
    }
    Ok(())
}

/// Reads the response to a request already sent on `stream`, whose first bytes `buf` holds
/// (for `crate::fuzzing`).
pub(crate) async fn read_response(
    stream: TcpStream,
    buf: BytesMut,
    head_only: bool,
) -> Result<Response<Http1Body>, Error> {
    let conn = Box::new(Conn {
        stream,
        buf,
        wbuf: Vec::new(),
        authority: Authority::from_static("fuzzing.invalid"),
        idle_since: Instant::now(),
        head_read: MIN_READ,
        deadline: None,
    });
    let until = Instant::now() + Duration::from_secs(3600);
    exchange(conn, &[], head_only, until)
        .await
        .map_err(|f| f.error)
}

/// The request line and headers as they go on the wire, framed for `body`; a body up to
/// `COPY_BODY_UP_TO` follows them in `out`. Returns what of the body is left to write
/// beside `out` (a larger body goes from where it is: no copy, and no write buffer kept
/// that large).
fn encode<'b>(
    out: &mut Vec<u8>,
    head: &Parts,
    authority: &Authority,
    path: &PathAndQuery,
    body: &'b [u8],
    extras: &(dyn HeadExtras + Sync),
) -> &'b [u8] {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !has_field(&head.headers, &header::HOST) {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(authority.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut had_length = false;
    for (name, value) in &head.headers {
        // The body is in memory: its length is written below, never a coding.
        if name == header::CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        if name == header::TRANSFER_ENCODING || extras.replaces(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    extras.write(out, &head.headers);
    // A length when there is a body, when the client sent one, or when the method usually
    // carries one (servers may answer 411 to a POST without it).
    if !body.is_empty()
        || had_length
        || matches!(head.method, Method::POST | Method::PUT | Method::PATCH)
    {
        crate::codec::push_content_length(out, body.len() as u64);
    }
    out.extend_from_slice(b"\r\n");
    if body.len() > COPY_BODY_UP_TO {
        return body;
    }
    out.extend_from_slice(body);
    &[]
}

enum Parsed {
    Informational,
    Final(Head),
}

struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    reusable: bool,
}

/// Parses a response head at the start of `buf` and takes it out of the buffer; `None`
/// until the head is complete. Header values share the buffer's memory (no copy).
fn parse_head(buf: &mut BytesMut, head_only: bool) -> Result<Option<Parsed>, Error> {
    // Parsed once; the names are made and the values' places noted, then the head is taken
    // off the buffer (frozen) and the values become slices of it.
    let mut seen = FramingHeaders::default();
    let (len, code, version) = match scan_head(buf, &mut seen)? {
        Scanned::Partial => return Ok(None),
        Scanned::Informational(len) => {
            // Relayed when the client can take it (rare: parsed again only then).
            if let Some(relay) = interim::current()
                && let Some((status, headers)) = interim_head(&buf[..len])
            {
                relay.push(status, &headers);
            }
            buf.advance(len);
            return Ok(Some(Parsed::Informational));
        }
        Scanned::Final { len, code, version } => (len, code, version),
    };
    let status =
        StatusCode::from_u16(code).map_err(|_| Error::Protocol("the status code is invalid"))?;
    let head = buf.split_to(len).freeze();
    // Room for what the proxy adds on the way back (Via, x-request-id) without a regrow.
    let mut headers = SCRATCH.with_borrow_mut(|names| -> Result<HeaderMap, Error> {
        let mut headers = HeaderMap::with_capacity(names.len() + 2);
        for (name, at) in names.drain(..) {
            let value = HeaderValue::from_maybe_shared(head.slice(at))
                .map_err(|_| Error::Protocol("a header value is invalid"))?;
            headers.append(name, value);
        }
        Ok(headers)
    })?;
    if seen.coded {
        // RFC 9112 §6.1: a coding in HTTP/1.0 is faulty framing.
        if version == Version::HTTP_10 {
            return Err(Error::Protocol(
                "an HTTP/1.0 response with Transfer-Encoding",
            ));
        }
        // §6.3: the coding wins, and an intermediary must not pass the length on (the
        // client would frame the re-coded body by it).
        headers.remove(header::CONTENT_LENGTH);
    }
    let framing = seen.framing(head_only, status);
    Ok(Some(Parsed::Final(Head {
        status,
        version,
        headers,
        reusable: seen.reusable(version, &framing),
        framing,
    })))
}

/// A complete 1xx head's status and headers; `None` when a header is not valid.
fn interim_head(head: &[u8]) -> Option<(StatusCode, HeaderMap)> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut slots);
    res.parse(head).ok()?;
    let status = StatusCode::from_u16(res.code?).ok()?;
    let mut headers = HeaderMap::with_capacity(res.headers.len());
    for h in res.headers.iter() {
        headers.append(
            HeaderName::from_bytes(h.name.as_bytes()).ok()?,
            HeaderValue::from_bytes(h.value).ok()?,
        );
    }
    Some((status, headers))
}

/// What [`scan_head`] found at the start of the buffer.
enum Scanned {
    Partial,
    /// A 1xx head of `len` bytes, to skip.
    Informational(usize),
    /// A final head of `len` bytes; its header names and values' places are in `SCRATCH`.
    Final {
        len: usize,
        code: u16,
        version: Version,
    },
}

/// Parses the head in place: its status line, and each header's name and the place of its
/// value (into `SCRATCH`), noting the framing headers in `seen`.
fn scan_head(buf: &BytesMut, seen: &mut FramingHeaders) -> Result<Scanned, Error> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Scanned::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::Protocol("the response has more than 100 headers"));
        }
        Err(_) => return Err(Error::Protocol("the response head is not valid HTTP/1.x")),
    };
    let code = res.code.unwrap_or(0);
    let version = if res.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if (100..200).contains(&code) {
        if code == 101 {
            return Err(Error::Protocol(
                "101 Switching Protocols to a request that did not ask to upgrade",
            ));
        }
        return Ok(Scanned::Informational(len));
    }
    let base = buf.as_ptr() as usize;
    SCRATCH.with_borrow_mut(|names| -> Result<(), Error> {
        names.clear();
        for h in res.headers.iter() {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| Error::Protocol("a header name is invalid"))?;
            seen.note(&name, h.value)?;
            let start = h.value.as_ptr() as usize - base;
            names.push((name, start..start + h.value.len()));
        }
        Ok(())
    })?;
    Ok(Scanned::Final { len, code, version })
}

/// What a response's framing headers say.
#[derive(Default)]
struct FramingHeaders {
    length: Option<u64>,
    /// A Transfer-Encoding is present.
    coded: bool,
    /// Its last coding is chunked.
    chunked: bool,
    close: bool,
    keep_alive: bool,
}

impl FramingHeaders {
    #[inline]
    fn note(&mut self, name: &HeaderName, value: &[u8]) -> Result<(), Error> {
        if name == header::CONTENT_LENGTH {
            let n =
                content_length(value).ok_or(Error::Protocol("the content-length is invalid"))?;
            if self.length.is_some_and(|l| l != n) {
                return Err(Error::Protocol("the response has two different lengths"));
            }
            self.length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            self.coded = true;
            // Chunked only when it is the last coding applied.
            self.chunked = value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            for t in value.split(|b| *b == b',') {
                let t = t.trim_ascii();
                self.close |= t.eq_ignore_ascii_case(b"close");
                self.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        Ok(())
    }

    /// RFC 9112 §6.3, in order.
    fn framing(&self, head_only: bool, status: StatusCode) -> Framing {
        if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::Empty
        } else if self.coded {
            if self.chunked {
                Framing::Chunked(Chunk::Size)
            } else {
                Framing::UntilClose
            }
        } else {
            match self.length {
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            }
        }
    }

    /// Whether the connection may carry another request after this response.
    fn reusable(&self, version: Version, framing: &Framing) -> bool {
        !self.close
            && (version == Version::HTTP_11 || self.keep_alive)
            // Both a coding and a length: a smuggling risk; read it as chunked, then close.
            && !(self.coded && self.length.is_some())
            && !matches!(framing, Framing::UntilClose)
    }
}

/// A Content-Length value: digits, or a list of the same digits repeated.
pub(crate) fn content_length(v: &[u8]) -> Option<u64> {
    // Nearly always digits alone, read in one pass; 19 digits always fit a u64.
    if !v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit) {
        return Some(v.iter().fold(0, |n: u64, d| n * 10 + u64::from(d - b'0')));
    }
    content_length_list(v)
}

/// `content_length` for any value: a list, blanks, more than 19 digits.
fn content_length_list(v: &[u8]) -> Option<u64> {
    let mut found: Option<u64> = None;
    for part in v.split(|b| *b == b',') {
        let part = part.trim_ascii();
        // Leading zeros are valid (any number of them); 19 significant digits always fit.
        let significant = part.iter().skip_while(|b| **b == b'0').count();
        if part.is_empty() || significant > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n: u64 = std::str::from_utf8(part).ok()?.parse().ok()?;
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

/// The size of a chunk from its size line (extensions after `;` are ignored).
///
/// Strict, as hyper's decoder is: hex digits first, then only blanks before an extension,
/// and no control bytes anywhere (a bare LF inside the line would make another parser end
/// the line early and read the rest as data).
fn chunk_size(line: &[u8]) -> Option<u64> {
    if line
        .iter()
        .any(|b| (b.is_ascii_control() && *b != b'\t') || *b >= 0x80)
    {
        return None;
    }
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    // Any number of leading zeros is a valid size (RFC 9112 §7.1); more significant
    // digits than a u64 holds is not one this client takes.
    let significant = line[..digits].iter().skip_while(|b| **b == b'0').count();
    if digits == 0 || significant > 16 {
        return None;
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}

/// How the response body ends.
enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    UntilClose,
    /// Read to the end (or broken).
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Clone, Copy)]
enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// A response body read from the upstream connection as it is polled. The connection goes
/// back to its thread's idle pool when the body has been read to its end; dropped early,
/// it is closed.
pub struct Http1Body {
    conn: Option<Box<Conn>>,
    framing: Framing,
    reusable: bool,
}

impl Http1Body {
    /// Done: the connection is kept for the next request if it can be.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(conn) = self.conn.take()
            && self.reusable
            && conn.buf.is_empty()
        {
            idle::put(conn);
        }
    }

    /// Failed: the connection is closed, the error is the body's last frame.
    fn fail(&mut self, e: Error) -> Option<Result<Frame<Bytes>, Error>> {
        self.framing = Framing::Done;
        self.conn = None;
        Some(Err(e))
    }

    /// Reads more of a chunked body whose framing is not complete in the buffer.
    fn read_more(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Step::Done(None));
        };
        match ready!(conn.poll_more(cx)) {
            Ok(()) => Poll::Ready(Step::Again),
            Err(e) => Poll::Ready(Step::Done(self.fail(e))),
        }
    }

    /// One step of a chunked body: `Again` when a size line or a chunk's CRLF was
    /// consumed, else the frame (or end) to return.
    fn poll_chunked(&mut self, cx: &mut Context<'_>, state: Chunk) -> Poll<Step> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Step::Done(None));
        };
        match state {
            Chunk::Size => {
                let Some(end) = conn.buf.windows(2).position(|w| w == b"\r\n") else {
                    if conn.buf.len() > MAX_CHUNK_LINE {
                        return Poll::Ready(Step::Done(
                            self.fail(Error::Protocol("a chunk-size line is too long")),
                        ));
                    }
                    return self.read_more(cx);
                };
                let Some(size) = chunk_size(&conn.buf[..end]) else {
                    return Poll::Ready(Step::Done(
                        self.fail(Error::Protocol("a chunk size is invalid")),
                    ));
                };
                conn.buf.advance(end + 2);
                self.framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
            }
            Chunk::Data(rest) => {
                let data = match ready!(conn.poll_take(cx, rest)) {
                    Ok(d) => d,
                    Err(e) => return Poll::Ready(Step::Done(self.fail(e))),
                };
                let n = data.len() as u64;
                self.framing = Framing::Chunked(if rest == n {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(rest - n)
                });
                return Poll::Ready(Step::Done(Some(Ok(Frame::data(data)))));
            }
            Chunk::DataEnd => {
                if conn.buf.len() < 2 {
                    return self.read_more(cx);
                }
                if &conn.buf[..2] != b"\r\n" {
                    return Poll::Ready(Step::Done(
                        self.fail(Error::Protocol("a chunk does not end with CRLF")),
                    ));
                }
                conn.buf.advance(2);
                self.framing = Framing::Chunked(Chunk::Size);
            }
            Chunk::Trailers => match parse_trailers(&conn.buf) {
                Ok(Some((n, trailers))) => {
                    conn.buf.advance(n);
                    self.finish();
                    let trailers = (!trailers.is_empty()).then(|| Ok(Frame::trailers(trailers)));
                    return Poll::Ready(Step::Done(trailers));
                }
                Ok(None) => {
                    if conn.buf.len() > MAX_TRAILER_BYTES {
                        return Poll::Ready(Step::Done(
                            self.fail(Error::Protocol("the trailers are too large")),
                        ));
                    }
                    return self.read_more(cx);
                }
                Err(e) => return Poll::Ready(Step::Done(self.fail(e))),
            },
        }
        Poll::Ready(Step::Again)
    }
}

/// What one step of reading a body gives [`Http1Body::poll_frame`].
enum Step {
    /// Framing was consumed; read on.
    Again,
    /// The frame to return (or the end of the body).
    Done(Option<Result<Frame<Bytes>, Error>>),
}

impl http_body::Body for Http1Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing {
                Framing::Empty | Framing::Length(0) | Framing::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(rest) => {
                    let data = match ready!(conn.poll_take(cx, rest)) {
                        Ok(d) => d,
                        Err(e) => return Poll::Ready(this.fail(e)),
                    };
                    let n = data.len() as u64;
                    this.framing = Framing::Length(rest - n);
                    if rest == n {
                        // Back to the pool before the last bytes are even sent on.
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::UntilClose => {
                    if conn.buf.is_empty() {
                        match ready!(conn.poll_fill(cx, MAX_READ as u64)) {
                            Ok(0) => {
                                this.framing = Framing::Done;
                                this.conn = None;
                                return Poll::Ready(None);
                            }
                            Ok(_) => {}
                            Err(e) => return Poll::Ready(this.fail(e.into())),
                        }
                    }
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(state) => match ready!(this.poll_chunked(cx, state)) {
                    Step::Again => {}
                    Step::Done(frame) => return Poll::Ready(frame),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(
            self.framing,
            Framing::Empty | Framing::Length(0) | Framing::Done
        )
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty | Framing::Done => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// The trailer section after the last chunk (up to and with its empty line): its length
/// and the fields, or `None` until it is complete.
fn parse_trailers(buf: &[u8]) -> Result<Option<(usize, HeaderMap)>, Error> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((n, fields))) => {
            // httparse takes a bare LF as a line end; on the wire every line ends in CRLF.
            if buf[..n]
                .iter()
                .enumerate()
                .any(|(i, b)| *b == b'\n' && (i == 0 || buf[i - 1] != b'\r'))
            {
                return Err(Error::Protocol("a trailer line does not end with CRLF"));
            }
            let mut map = HeaderMap::new();
            for f in fields {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| Error::Protocol("a trailer name is invalid"))?;
                let value = HeaderValue::from_bytes(f.value)
                    .map_err(|_| Error::Protocol("a trailer value is invalid"))?;
                map.append(name, value);
            }
            Ok(Some((n, map)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(Error::Protocol("the trailers are not valid")),
    }
}

/// Takes the buffers of this thread's connections idle for `RELEASE_AFTER`, and closes
/// those too old or that their peer closed every `SWEEP_EVERY`, for as long as the runtime
/// runs. Each traffic worker runs one, so a worker without traffic neither keeps buffers
/// nor sockets to endpoints that have left the table.
pub async fn sweep_idle() {
    let mut tick = tokio::time::interval(RELEASE_AFTER);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        idle::sweep_due();
    }
}

/// Idle connections of this thread, by endpoint, most recently used last.
mod idle {
    use std::{
        borrow::Borrow,
        hash::{Hash, Hasher},
    };

    use foldhash::fast::FixedState;

    use super::*;

    /// An endpoint's authority as the pool's key: its bytes, hashed and compared as one
    /// slice. `Authority`'s own hash lower-cases and hashes byte by byte (180 instructions
    /// for `127.0.0.1:8080` with FNV-1a, twice per request), and its equality ignores case;
    /// the table spells each endpoint's authority one way, so bytes are enough.
    #[derive(Debug)]
    struct Key(Authority);

    impl Borrow<[u8]> for Key {
        fn borrow(&self) -> &[u8] {
            self.0.as_str().as_bytes()
        }
    }

    // As the bytes hash and compare, so a `[u8]` finds its `Key`.
    impl Hash for Key {
        fn hash<H: Hasher>(&self, state: &mut H) {
            Borrow::<[u8]>::borrow(self).hash(state);
        }
    }

    impl PartialEq for Key {
        fn eq(&self, other: &Self) -> bool {
            Borrow::<[u8]>::borrow(self) == Borrow::<[u8]>::borrow(other)
        }
    }

    impl Eq for Key {}

    #[derive(Default)]
    struct Pool {
        /// By foldhash with a fixed seed. The keys are endpoint addresses from the table in
        /// force, not attacker input, so a keyed hash buys nothing; SipHash over an
        /// `Authority` cost about 900 instructions per lookup, two lookups per request.
        /// Boxed, as a connection is everywhere else: taken and given back as a pointer.
        #[allow(clippy::vec_box)]
        by_endpoint: HashMap<Key, Vec<Box<Conn>>, FixedState>,
        /// When buffers are next taken back, and connections next checked (none: at the
        /// next call). Kept as instants to compare with, not to subtract from: this is read
        /// twice per request.
        release_at: Option<Instant>,
        sweep_at: Option<Instant>,
    }

    impl Pool {
        /// At most every `RELEASE_AFTER`, takes the buffers of connections idle that long;
        /// at most every `SWEEP_EVERY`, also closes those idle too long or closed by their
        /// peer, so endpoints that left the table do not keep sockets open.
        fn sweep(&mut self, now: Instant) {
            if self.release_at.is_some_and(|at| now < at) {
                return;
            }
            self.release_at = Some(now + RELEASE_AFTER);
            let close = self.sweep_at.is_none_or(|at| now >= at);
            if close {
                self.sweep_at = Some(now + SWEEP_EVERY);
            }
            self.by_endpoint.retain(|_, list| {
                list.retain_mut(|c| {
                    let idle = now.duration_since(c.idle_since);
                    if idle >= RELEASE_AFTER {
                        // What was read ahead (nothing, unless the peer sent unasked) stays.
                        if c.buf.is_empty() {
                            c.buf = BytesMut::new();
                        }
                        c.wbuf = Vec::new();
                        c.deadline = None;
                    }
                    !close || (idle < IDLE_TIMEOUT && c.idle_usable())
                });
                !list.is_empty()
            });
        }
    }

    thread_local! {
        static IDLE: RefCell<Pool> = RefCell::new(Pool::default());
    }

    /// An idle connection to `authority` that is still usable; `now` is the caller's clock.
    pub(super) fn take(authority: &Authority, now: Instant) -> Option<Box<Conn>> {
        IDLE.with_borrow_mut(|pool| {
            pool.sweep(now);
            let list = pool.by_endpoint.get_mut(authority.as_str().as_bytes())?;
            while let Some(c) = list.pop() {
                if now.duration_since(c.idle_since) < IDLE_TIMEOUT && c.idle_usable() {
                    return Some(c);
                }
            }
            None
        })
    }

    /// Gives back buffers and closes connections as far as each is due.
    pub(super) fn sweep_due() {
        let _ = IDLE.try_with(|pool| pool.borrow_mut().sweep(Instant::now()));
    }

    /// Both, now (for tests).
    #[cfg(test)]
    pub(super) fn sweep_now() {
        IDLE.with_borrow_mut(|pool| {
            pool.release_at = None;
            pool.sweep_at = None;
            pool.sweep(Instant::now());
        });
    }

    pub(super) fn put(mut conn: Box<Conn>) {
        let now = Instant::now();
        conn.idle_since = now;
        // A large body's buffer is not kept for every later request.
        if conn.wbuf.capacity() > 16 * 1024 {
            conn.wbuf = Vec::new();
        }
        // A thread that is ending has no pool any more: the connection just closes.
        let _ = IDLE.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            pool.sweep(now);
            // Looked up by bytes: a key is made (the authority cloned) only for a new endpoint.
            match pool.by_endpoint.get_mut(conn.authority.as_str().as_bytes()) {
                Some(list) if list.len() >= MAX_IDLE_PER_ENDPOINT => {}
                Some(list) => list.push(conn),
                None => {
                    pool.by_endpoint
                        .insert(Key(conn.authority.clone()), vec![conn]);
                }
            }
        });
    }

    /// Idle connections this thread holds to `authority` (for tests).
    #[cfg(test)]
    pub(super) fn count(authority: &Authority) -> usize {
        IDLE.with_borrow(|p| {
            p.by_endpoint
                .get(authority.as_str().as_bytes())
                .map_or(0, Vec::len)
        })
    }

    /// What `f` says of the most recently pooled connection to `authority` (for tests).
    #[cfg(test)]
    pub(super) fn last<T>(authority: &Authority, f: impl Fn(&Conn) -> T) -> Option<T> {
        IDLE.with_borrow(|p| {
            p.by_endpoint
                .get(authority.as_str().as_bytes())?
                .last()
                .map(|c| f(c))
        })
    }
}

#[cfg(test)]
mod tests;
