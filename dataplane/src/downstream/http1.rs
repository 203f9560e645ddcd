//! Parapet's own HTTP/1.1 server codec, for the requests most traffic is made of: HTTP/1.1
//! without a body or with a small one of known length, no upgrade, no `Expect`.
//!
//! Why not hyper's server for these: its dispatcher moves each request through a state
//! machine built for every case (bodies both ways, upgrades, 100-continue), parses into a
//! fresh 8 KiB buffer per request, and encodes the response through its own buffer. Here the
//! head is parsed in place with httparse (header values are slices of the read buffer, which
//! is reused), the proxy is called from the connection's task, and the response head and its
//! first body frame leave in one `writev`. Counted with callgrind, that is several thousand
//! fewer instructions per request (see BENCHMARKS.md).
//!
//! Anything else, and a connection that starts with the HTTP/2 preface, is handed to hyper
//! with the bytes already read (`Ended::Handoff`); requests are sequential on HTTP/1.1, so
//! the hand-over happens between two requests, never inside one.
//!
//! Framing follows RFC 9112: a request this codec serves has no Transfer-Encoding and at
//! most one Content-Length, of at most `MAX_BODY_BUFFERED` bytes, whose body was read whole
//! behind its head before the proxy sees the request, as nginx and HAProxy buffer request
//! bodies (a body not all here within `BODY_WAIT`, or when `BODIES_WAITING` is spent, goes
//! to hyper with the bytes read so far, to stream); a response is sent with its
//! Content-Length, the body's exact size, or chunked.

use std::{
    cell::RefCell,
    future::{Future, poll_fn},
    io::{self, IoSlice, Write as _},
    mem::MaybeUninit,
    ops::Range,
    pin::Pin,
    sync::atomic::{AtomicUsize, Ordering},
    task::Poll,
    time::{Duration, SystemTime},
};

use bytes::{Bytes, BytesMut};
use futures::future::{Fuse, FusedFuture as _, FutureExt as _};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header,
};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    time::{Instant, Sleep},
};

use super::DrainSignal;
use crate::{
    codec::write_all,
    metrics::Metrics,
    proxy::{
        body::{DownstreamBody, ProxyBody},
        headers::strip_hop_by_hop,
        interim,
        problem::problem,
    },
    upstream::http1::content_length,
};

/// `$future` on the heap, for a large state that only some connections reach or hold. The
/// box is made first and the future built in it (built on the stack and moved in, a future
/// of kilobytes is copied). Bind it with `let` and await it in a later statement: as a
/// temporary of the statement that awaits it, the future would still take its size in the
/// caller's own state.
macro_rules! boxed {
    ($future:expr) => {
        ::std::boxed::Box::into_pin(::std::boxed::Box::write(
            ::std::boxed::Box::new_uninit(),
            $future,
        ))
    };
}
pub(crate) use boxed;

/// Header slots on the stack for one parse; a listener that allows more headers is served
/// by hyper (`Shared::new`).
pub const HEADER_SLOTS: usize = 128;
/// Reads ask for at least this much room in the buffer.
const READ_CHUNK: usize = 8 * 1024;
/// Request bodies of a known length up to this size are read whole and forwarded from
/// memory, in one write with their head and without a task hop; larger ones, slower ones
/// (see `BODY_WAIT`) and chunked ones stream through hyper.
pub const MAX_BODY_BUFFERED: usize = 1024 * 1024;
/// A body not all read this long after the socket first ran dry streams instead, with
/// what was read: a slow upload holds its buffer no longer than this.
const BODY_WAIT: Duration = Duration::from_secs(1);
/// Bytes all connections may hold in buffers for bodies still arriving: beyond it a body
/// that is not all here streams at once, so slow clients cannot make the process hold more.
static BODIES_WAITING: Budget = Budget::new(64 * 1024 * 1024);
/// A keep-alive connection that has sent nothing for this long after an answer gives back
/// its busy state (read buffer, request state: about 22 KB). nginx frees its buffers at
/// once; waiting a little keeps a connection under load from allocating them again between
/// two requests.
const IDLE_RELEASE: Duration = Duration::from_millis(100);
/// The HTTP/2 connection preface starts with this request line.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
/// After an error answer, what the client still sends is read and dropped for at most this
/// long and this much, so closing does not reset the connection before the answer is read
/// (as nginx's lingering close).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

#[derive(Clone, Debug)]
pub struct Settings {
    /// A request head larger than this gets 431.
    pub max_head_bytes: usize,
    /// More headers than this gets 431.
    pub max_headers: usize,
    /// Time a client has to send a complete request head, idle keep-alive time included.
    pub header_read_timeout: Duration,
    /// The connection closes after this many requests (0: no limit).
    pub max_requests: u32,
}

/// How the codec's part of a connection ended.
pub enum Ended<IO> {
    /// Closed: by the client, after an answer that closes, on a timeout or an error.
    Closed,
    /// A request (or protocol) this codec does not serve: hyper serves the connection from
    /// here, starting with `read`.
    /// `http2`: the connection started with the HTTP/2 preface.
    Handoff {
        io: IO,
        read: Bytes,
        served: u32,
        http2: bool,
    },
    /// Idle since `since` with nothing read of a next request ([`serve_until_idle`]
    /// only): the caller waits for its next byte, and resumes it with [`Resume`].
    Idle { io: IO, since: Instant, served: u32 },
}

/// Where a connection's codec part starts: a new connection, or one that went idle.
#[derive(Clone, Copy, Debug)]
pub struct Resume {
    /// Requests already served on it.
    pub served: u32,
    /// Since when it has sent nothing (its header read timeout runs from here).
    pub since: Instant,
    /// The socket is known to be readable: its busy state is made at once, with no 1-byte
    /// read first (a system call saved per new connection and per wake from parking).
    pub ready: bool,
}

impl Resume {
    pub fn fresh() -> Self {
        Self {
            served: 0,
            since: Instant::now(),
            ready: false,
        }
    }
}

/// Serves requests on `io` with `handle` until the connection closes or needs hyper.
/// Refusals (400, 431) are counted in `metrics`.
///
/// A connection alternates between busy and idle. Busy, it holds a read buffer and the
/// state of the request being answered (kilobytes), boxed; once it has sent nothing for
/// `IDLE_RELEASE` after an answer, that box goes and the connection waits for its next
/// byte holding only the socket, so thousands of idle keep-alive connections cost little.
pub async fn serve<IO, H, F>(
    io: IO,
    handle: H,
    metrics: &Metrics,
    settings: &Settings,
    drain: &mut DrainSignal,
) -> Ended<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Box<Request<DownstreamBody>>) -> F,
    F: Future<Output = Response<ProxyBody>>,
{
    serve_with(io, handle, metrics, settings, drain, Resume::fresh(), false).await
}

/// [`serve`], from `resume`; with `park`, until the connection has been idle for
/// `IDLE_RELEASE` after an answer: then it ends [`Ended::Idle`], so the caller can wait for
/// the next byte with less than a task (see `downstream::idle`).
pub async fn serve_until_idle<IO, H, F>(
    io: IO,
    handle: H,
    metrics: &Metrics,
    settings: &Settings,
    drain: &mut DrainSignal,
    resume: Resume,
    park: bool,
) -> Ended<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Box<Request<DownstreamBody>>) -> F,
    F: Future<Output = Response<ProxyBody>>,
{
    serve_with(io, handle, metrics, settings, drain, resume, park).await
}

async fn serve_with<IO, H, F>(
    mut io: IO,
    handle: H,
    metrics: &Metrics,
    settings: &Settings,
    drain: &mut DrainSignal,
    resume: Resume,
    park: bool,
) -> Ended<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Box<Request<DownstreamBody>>) -> F,
    F: Future<Output = Response<ProxyBody>>,
{
    let mut served = resume.served;
    // A new connection starts idle too: one that never sends holds no buffer.
    let mut since = resume.since;
    let mut ready = resume.ready;
    loop {
        let first = if std::mem::take(&mut ready) {
            None
        } else {
            match next_byte(&mut io, since + settings.header_read_timeout, drain).await {
                Some(b) => Some(b),
                None => return Ended::Closed,
            }
        };
        let busy = boxed!(serve_busy(
            &mut io,
            &handle,
            metrics,
            settings,
            drain,
            &mut served,
            first,
        ));
        since = match busy.await {
            Busy::Closed => return Ended::Closed,
            Busy::Handoff { read, http2 } => {
                return Ended::Handoff {
                    io,
                    read,
                    served,
                    http2,
                };
            }
            Busy::Idle { since } if park => {
                return Ended::Idle { io, since, served };
            }
            Busy::Idle { since } => since,
        };
    }
}

/// How a busy period of a connection ended.
enum Busy {
    Closed,
    Handoff {
        read: Bytes,
        http2: bool,
    },
    /// Waiting for a request since `since`, with nothing read of it.
    Idle {
        since: Instant,
    },
}

/// Serves requests until the connection closes, needs hyper, or goes idle. `first` is the
/// byte the idle wait read (none when the socket was known to be readable).
async fn serve_busy<IO, H, F>(
    io: &mut IO,
    handle: &H,
    metrics: &Metrics,
    settings: &Settings,
    drain: &mut DrainSignal,
    served: &mut u32,
    first: Option<u8>,
) -> Busy
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Box<Request<DownstreamBody>>) -> F,
    F: Future<Output = Response<ProxyBody>>,
{
    let mut conn = Conn {
        read: BytesMut::with_capacity(READ_CHUNK),
        write: Vec::with_capacity(512),
        names: Vec::new(),
        timer: None,
    };
    conn.read.extend(first);
    // One wait for the drain for the whole busy period, polled only while it is idle.
    let mut watch = drain.clone();
    let mut draining = std::pin::pin!(watch.draining().fuse());
    // Where the upstream's 1xx for the request being answered go (one per connection).
    let interim = interim::Sink::default();
    loop {
        let head = match conn
            .read_head(io, settings, draining.as_mut(), *served == 0)
            .await
        {
            Ok(Read::Head(h)) => h,
            Ok(Read::Handoff { http2 }) => {
                return Busy::Handoff {
                    read: conn.read.freeze(),
                    http2,
                };
            }
            Ok(Read::Idle { since }) => return Busy::Idle { since },
            Ok(Read::Closed) => return Busy::Closed,
            Err(refusal) => {
                refuse(io, &mut conn, metrics, refusal).await;
                return Busy::Closed;
            }
        };
        let Some(req) = conn.request(&head) else {
            refuse(io, &mut conn, metrics, Refusal::Invalid).await;
            return Busy::Closed;
        };
        *served += 1;
        // In a block of its own, so the request's future (kilobytes) and the answer's
        // writing share their place in this state instead of lying side by side.
        let watched = {
            let answer = std::pin::pin!(handle(req));
            // The relay's scope holds the pinned answer by reference: moving the request's
            // future into it would cost a copy per request.
            let answer = std::pin::pin!(interim.relay_for(u64::from(*served), answer));
            answer_watching(io, &mut conn, answer, settings, &interim).await
        };
        interim.close();
        let Some(resp) = watched else {
            return Busy::Closed;
        };
        let close = head.close
            || (settings.max_requests > 0 && *served >= settings.max_requests)
            || drain.is_draining();
        if !send(io, &mut conn.write, resp, &head, close).await {
            return Busy::Closed;
        }
    }
}

/// The first byte of an idle connection's next request, read with no buffer but this one
/// byte's; `None` when the connection closes, the keep-alive time ends at `until`, or the
/// listener drains.
async fn next_byte<IO: AsyncRead + Unpin>(
    io: &mut IO,
    until: Instant,
    drain: &DrainSignal,
) -> Option<u8> {
    let mut byte = 0u8;
    let mut watch = drain.clone();
    tokio::select! {
        biased;
        r = io.read(std::slice::from_mut(&mut byte)) => matches!(r, Ok(1)).then_some(byte),
        () = tokio::time::sleep_until(until) => None,
        () = watch.draining() => None,
    }
}

/// The handler's answer. The client's side is watched while it is made: a client that goes
/// away cancels its request (as hyper's server does; `None`), and bytes of a pipelined
/// request are kept. Costs no system call: the last read drained the socket, so tokio knows
/// it is not readable until the peer sends. Interim responses from the upstream go to the
/// client as they come.
async fn answer_watching<IO, F>(
    io: &mut IO,
    conn: &mut Conn,
    mut answer: Pin<&mut F>,
    settings: &Settings,
    interim: &interim::Sink,
) -> Option<Response<ProxyBody>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = Response<ProxyBody>>,
{
    enum Event {
        Answer(Response<ProxyBody>),
        Interim(interim::Interim),
        Read(io::Result<usize>),
    }
    loop {
        let watch = conn.read.len() < settings.max_head_bytes;
        // The answer first, then a 1xx it queued (an atomic load when none did), then the
        // client's side.
        let event = poll_fn(|cx| {
            if let Poll::Ready(resp) = answer.as_mut().poll(cx) {
                return Poll::Ready(Event::Answer(resp));
            }
            if let Some(hint) = interim.pop() {
                return Poll::Ready(Event::Interim(hint));
            }
            if watch {
                let read = std::pin::pin!(io.read_buf(&mut conn.read));
                if let Poll::Ready(n) = read.poll(cx) {
                    return Poll::Ready(Event::Read(n));
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Answer(resp) => {
                // 1xx that came with the final head (one read) still go first.
                conn.write.clear();
                while let Some(hint) = interim.pop() {
                    encode_interim(hint, &mut conn.write);
                }
                if !conn.write.is_empty()
                    && write_all(io, &mut [IoSlice::new(&conn.write)])
                        .await
                        .is_err()
                {
                    return None;
                }
                return Some(resp);
            }
            Event::Interim(hint) => {
                conn.write.clear();
                encode_interim(hint, &mut conn.write);
                if write_all(io, &mut [IoSlice::new(&conn.write)])
                    .await
                    .is_err()
                {
                    return None;
                }
            }
            Event::Read(Ok(0) | Err(_)) => {
                tracing::debug!(
                    "the client closed the connection before its answer; request cancelled"
                );
                return None;
            }
            Event::Read(Ok(_)) => {}
        }
    }
}

/// A 1xx from the upstream as it goes to this client: without the upstream hop's fields.
fn encode_interim(mut hint: interim::Interim, out: &mut Vec<u8>) {
    strip_hop_by_hop(&mut hint.headers, false);
    hint.headers.remove(header::CONTENT_LENGTH);
    interim::encode(&hint, out);
}

/// Sends the answer; whether the connection goes on to its next request.
async fn send<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    out: &mut Vec<u8>,
    mut resp: Response<ProxyBody>,
    head: &Head,
    close: bool,
) -> bool {
    if resp.status().is_informational() {
        // A 1xx as the final answer would leave the client waiting for the real one, and
        // take the next answer for it.
        resp = problem(
            StatusCode::BAD_GATEWAY,
            "the upstream sent an informational status as its final answer",
            None,
        );
    }
    match write_response(io, out, resp, head, close).await {
        Ok(false) => true,
        // The client asked to close, so sends nothing more, and the whole request has been
        // read: closing sends the FIN with no `shutdown` before it.
        Ok(true) if head.close => false,
        // Closed by the gateway (a drain, the request limit, an answer that closes): the
        // client may already be sending its next request.
        Ok(true) => {
            linger(io).await;
            false
        }
        Err(e) => {
            tracing::debug!(error = %e, "response not sent in full");
            false
        }
    }
}

/// A byte count shared by all connections, taken in permits that give their share back
/// when dropped.
struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    const fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// `n` bytes of the budget, if that many are left.
    fn take(&self, n: usize) -> Option<Permit<'_>> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&u| u <= self.limit)
            })
            .ok()
            .map(|_| Permit { budget: self, n })
    }
}

struct Permit<'a> {
    budget: &'a Budget,
    n: usize,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

struct Conn {
    read: BytesMut,
    /// The response head (and chunk framing), reused.
    write: Vec<u8>,
    /// Header names and where their values are in the head, from the last parse.
    names: Vec<(HeaderName, Range<usize>)>,
    /// The header read timeout, armed the first time a head has to be waited for and
    /// moved on only when it falls behind (see `read_head`).
    timer: Option<Pin<Box<Sleep>>>,
}

enum Read {
    Head(Head),
    Handoff {
        http2: bool,
    },
    /// Nothing of a next request came within `IDLE_RELEASE` of `since`.
    Idle {
        since: Instant,
    },
    Closed,
}

/// A request head this codec serves, parsed; its bytes are still at the front of the read
/// buffer.
struct Head {
    len: usize,
    /// The body's length (`Content-Length`); it follows the head in the read buffer.
    body: usize,
    method: Method,
    target: Range<usize>,
    /// The client asked to close (`Connection: close`).
    close: bool,
    /// `TE: trailers`: the client takes trailers on a chunked response.
    trailers: bool,
}

/// A request that gets an error answer and a closed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Invalid,
    TooLarge,
    TooManyHeaders,
    /// A head begun but not finished within the header read timeout.
    Timeout,
}

enum Parse {
    Partial,
    Head(Head),
    /// hyper's to serve.
    Other,
}

impl Conn {
    async fn read_head<IO: AsyncRead + Unpin, D: Future<Output = ()>>(
        &mut self,
        io: &mut IO,
        settings: &Settings,
        mut draining: Pin<&mut Fuse<D>>,
        first: bool,
    ) -> Result<Read, Refusal> {
        // When the wait for this head began (the header read timeout counts from there).
        let mut waiting: Option<Instant> = None;
        // A head parsed whose body is not all here yet: more is read while the socket has
        // it (the head is not parsed again for each read).
        let mut parsed: Option<Head> = None;
        // Its body's share of `BODIES_WAITING` while the rest arrives, and until when.
        let mut _permit: Option<Permit<'static>> = None;
        let mut body_until: Option<Instant> = None;
        loop {
            if let Some(h) = parsed.take_if(|h| self.read.len() >= h.len + h.body) {
                return Ok(Read::Head(h));
            }
            let n = self.read.len().min(H2_PREFACE.len());
            let preface = first && n > 0 && self.read[..n] == H2_PREFACE[..n];
            if preface && n == H2_PREFACE.len() {
                return Ok(Read::Handoff { http2: true });
            }
            // (A start of the preface: not enough to tell yet.)
            if parsed.is_none() && !preface && !self.read.is_empty() {
                match self.parse(settings)? {
                    Parse::Head(h) if self.read.len() >= h.len + h.body => {
                        return Ok(Read::Head(h));
                    }
                    Parse::Head(h) => {
                        let Some(p) = BODIES_WAITING.take(h.len + h.body - self.read.len()) else {
                            return Ok(Read::Handoff { http2: false });
                        };
                        _permit = Some(p);
                        parsed = Some(h);
                    }
                    Parse::Other => return Ok(Read::Handoff { http2: false }),
                    Parse::Partial => {}
                }
            }
            if let Some(h) = &parsed {
                // Room for the whole body, so it is read in as few reads as it can.
                self.read.reserve(h.len + h.body - self.read.len());
            } else if self.read.len() > settings.max_head_bytes {
                return Err(Refusal::TooLarge);
            } else if self.read.capacity() - self.read.len() < READ_CHUNK {
                // A whole chunk free for every head read: a request that fits one (a
                // 4 KiB POST) is read in one call, not split where the last one ended.
                // Reuses the buffer in place, from its start, once the last request is
                // dropped, as it is by the time the next is read.
                self.read.reserve(READ_CHUNK);
            }
            // Blank lines between requests are allowed (and skipped by the parser): a
            // connection holding only those is idle.
            let idle = parsed.is_none() && self.read.iter().all(|b| matches!(b, b'\r' | b'\n'));
            let n = {
                let mut read = std::pin::pin!(io.read_buf(&mut self.read));
                // Most reads find bytes waiting: no timer for those.
                match poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
                    Poll::Ready(r) => r,
                    // The rest of a body is waited for a little; one still not all here
                    // then streams through hyper, under the route's timeout (it has every
                    // byte read so far).
                    Poll::Pending if parsed.is_some() => {
                        let until = *body_until.get_or_insert_with(|| Instant::now() + BODY_WAIT);
                        tokio::select! {
                            biased;
                            r = read => r,
                            () = tokio::time::sleep_until(until) => {
                                return Ok(Read::Handoff { http2: false });
                            }
                        }
                    }
                    Poll::Pending => {
                        let since = *waiting.get_or_insert_with(Instant::now);
                        let at = since + settings.header_read_timeout;
                        // With nothing of a request read, the wait is for the release of the
                        // busy state first (the idle wait then goes on until `at`).
                        let release = idle.then(|| since + IDLE_RELEASE);
                        let (target, slack) = match release {
                            Some(r) if r < at => (r, IDLE_RELEASE / 4),
                            _ => (
                                at,
                                (settings.header_read_timeout / 8).min(Duration::from_secs(1)),
                            ),
                        };
                        // Resetting a timer for every request costs more than the rest of
                        // the wait: it is moved on only when it would fire before `target`,
                        // and then to a little after it, so it fires at most `slack` late.
                        let timer = self.timer.get_or_insert_with(|| {
                            Box::pin(tokio::time::sleep_until(target + slack))
                        });
                        if timer.deadline() < target {
                            timer.as_mut().reset(target + slack);
                        }
                        let drainable = idle && !draining.is_terminated();
                        tokio::select! {
                            biased;
                            r = read => r,
                            () = timer.as_mut() => {
                                if release.is_some() && Instant::now() < at {
                                    return Ok(Read::Idle { since });
                                }
                                tracing::debug!("no complete request head within the header read timeout; closing");
                                // A head begun and not finished is the client's slowness
                                // (408); an idle keep-alive connection just closes.
                                return if idle { Ok(Read::Closed) } else { Err(Refusal::Timeout) };
                            }
                            () = draining.as_mut(), if drainable => return Ok(Read::Closed),
                        }
                    }
                }
            };
            match n {
                Ok(0) | Err(_) => return Ok(Read::Closed),
                Ok(_) => {}
            }
        }
    }

    fn parse(&mut self, settings: &Settings) -> Result<Parse, Refusal> {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_SLOTS];
        let mut req = httparse::Request::new(&mut []);
        let buf = &self.read[..];
        let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            buf,
            &mut slots[..settings.max_headers],
        ) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(Parse::Partial),
            Err(httparse::Error::TooManyHeaders) => return Err(Refusal::TooManyHeaders),
            // hyper answers what httparse refuses in the same way; HTTP/2.0 and the like
            // never reach here (the preface is checked first).
            Err(_) => return Err(Refusal::Invalid),
        };
        if len > settings.max_head_bytes {
            return Err(Refusal::TooLarge);
        }
        if req.version != Some(1) {
            return Ok(Parse::Other);
        }
        let Some(method) = req
            .method
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        else {
            return Err(Refusal::Invalid);
        };
        if method == Method::CONNECT {
            return Ok(Parse::Other);
        }
        let base = buf.as_ptr() as usize;
        let offset = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let Some(path) = req.path else {
            return Err(Refusal::Invalid);
        };
        let target = offset(path.as_bytes());
        let (mut close, mut trailers) = (false, false);
        let mut body: Option<usize> = None;
        self.names.clear();
        for h in req.headers.iter() {
            let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
                return Err(Refusal::Invalid);
            };
            if name == header::CONTENT_LENGTH {
                // One valid length that fits the buffer is read here, with the head; any
                // other (repeated, invalid, larger) is hyper's to frame or refuse.
                // (A list, even of equal lengths, is hyper's to refuse.)
                match content_length(h.value).filter(|_| !h.value.contains(&b',')) {
                    Some(n) if body.is_none() && n <= MAX_BODY_BUFFERED as u64 => {
                        body = Some(n as usize);
                    }
                    _ => return Ok(Parse::Other),
                }
            } else if name == header::TRANSFER_ENCODING
                || name == header::EXPECT
                || name == header::UPGRADE
            {
                return Ok(Parse::Other);
            } else if name == header::CONNECTION {
                for t in h.value.split(|b| *b == b',') {
                    let t = t.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        return Ok(Parse::Other);
                    }
                }
            } else if name == header::TE {
                trailers |= h
                    .value
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
            }
            self.names.push((name, offset(h.value)));
        }
        Ok(Parse::Head(Head {
            len,
            body: body.unwrap_or(0),
            method,
            target,
            close,
            trailers,
        }))
    }

    /// The request for a parsed head, whose bytes it takes off the read buffer; `None` when
    /// its target or a header value is not valid.
    /// Boxed: the request passes through several stages by value, and a box moves as a
    /// pointer where the request itself (264 bytes) would be copied at each.
    fn request(&mut self, head: &Head) -> Option<Box<Request<DownstreamBody>>> {
        let bytes = self.read.split_to(head.len).freeze();
        let uri = Uri::from_maybe_shared(bytes.slice(head.target.clone())).ok()?;
        // Room for what the proxy adds (x-request-id, forwarding) without a regrow.
        let mut headers = HeaderMap::with_capacity(self.names.len() + 4);
        for (name, value) in self.names.drain(..) {
            headers.append(
                name,
                HeaderValue::from_maybe_shared(bytes.slice(value)).ok()?,
            );
        }
        let body = match head.body {
            0 => DownstreamBody::Empty,
            n => DownstreamBody::Full(Some(self.read.split_to(n).freeze())),
        };
        let mut req = Box::new(Request::new(body));
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = headers;
        Some(req)
    }
}

/// Answers a request that cannot be served, and closes.
async fn refuse<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    conn: &mut Conn,
    metrics: &Metrics,
    refusal: Refusal,
) {
    let (status, reason, detail) = match refusal {
        Refusal::Invalid => (
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request is not valid HTTP/1.1",
        ),
        Refusal::TooLarge => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "the request head is larger than this gateway accepts",
        ),
        Refusal::TooManyHeaders => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "too_many_headers",
            "the request has more headers than this gateway accepts",
        ),
        Refusal::Timeout => (
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request head did not arrive within the header read timeout",
        ),
    };
    metrics.reject(reason);
    let head = Head {
        len: 0,
        body: 0,
        method: Method::GET,
        target: 0..0,
        close: true,
        trailers: false,
    };
    if write_response(
        io,
        &mut conn.write,
        problem(status, detail, None),
        &head,
        true,
    )
    .await
    .is_err()
    {
        return;
    }
    linger(io).await;
}

/// Lingering close: half-closes, then reads what the client still sends (for a bounded
/// time and size), so the kernel does not answer it with a reset that could destroy the
/// response before the client reads it.
async fn linger<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO) {
    let _ = io.shutdown().await;
    let linger = async {
        let mut dropped = 0;
        // On the heap: on the stack it would be in every busy connection's state (8 KB of
        // 14), for the rare connection that is refused.
        let mut sink = vec![0u8; 8192];
        while dropped < LINGER_BYTES {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => dropped += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, linger).await;
}

/// How a response body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Framing {
    /// No body is sent (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
}

/// Writes the response; `Ok(true)` when the connection must close after it.
async fn write_response<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &mut Vec<u8>,
    resp: Response<ProxyBody>,
    req: &Head,
    close: bool,
) -> io::Result<bool> {
    let (parts, body) = resp.into_parts();
    match encode_head(out, &parts, &body, req, close) {
        Ok((framing, close)) => send_body(io, out, &parts.headers, body, framing, req, close).await,
        Err(detail) => {
            // Nothing is written yet: the client gets a 502 instead of a body framed one way
            // and declared another.
            tracing::warn!(status = parts.status.as_u16(), detail, "answer not sent");
            let (parts, body) = problem(StatusCode::BAD_GATEWAY, detail, None).into_parts();
            let (framing, _) = encode_head(out, &parts, &body, req, true)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            send_body(io, out, &parts.headers, body, framing, req, true).await?;
            Ok(true)
        }
    }
}

/// The status line and headers into `out`, with exactly one framing header of our own
/// (a `Content-Length` or `Transfer-Encoding` from the proxy is never copied); the framing
/// and whether the connection closes after, or why the response cannot be sent as it is.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    body: &ProxyBody,
    req: &Head,
    mut close: bool,
) -> Result<(Framing, bool), &'static str> {
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // `Some(None)`: declared, but not one valid length.
    let mut declared: Option<Option<u64>> = None;
    let mut dated = false;
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING {
            continue;
        } else if name == header::CONNECTION {
            // A `close` from the proxy (a body left unread) is honoured; the header is
            // written below.
            close |= value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            continue;
        } else if name == header::CONTENT_LENGTH {
            let n = content_length(value.as_bytes());
            declared = Some(match declared {
                None => n,
                Some(d) if d == n => d,
                Some(_) => None,
            });
            continue;
        } else if name == header::DATE {
            dated = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = framing(out, status, body.size_hint().exact(), declared, req)?;
    if !dated {
        DATE.with_borrow_mut(|d| out.extend_from_slice(d.now()));
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok((framing, close))
}

/// How the body is framed, with the `content-length` it takes written to `out`. `exact`:
/// the body's size when known; `declared`: the response's `content-length` (`Some(None)`:
/// declared, but not one valid length).
fn framing(
    out: &mut Vec<u8>,
    status: StatusCode,
    exact: Option<u64>,
    declared: Option<Option<u64>>,
    req: &Head,
) -> Result<Framing, &'static str> {
    if status.is_informational() || status == StatusCode::NO_CONTENT {
        return Ok(Framing::None);
    }
    if req.method == Method::HEAD || status == StatusCode::NOT_MODIFIED {
        // The length a GET would get, as declared; or, for the gateway's own answers to a
        // HEAD, the size of the body it would send.
        let n = match declared {
            Some(d) => d,
            None if req.method == Method::HEAD => exact.filter(|n| *n > 0),
            None => None,
        };
        if let Some(n) = n {
            crate::codec::push_content_length(out, n);
        }
        return Ok(Framing::None);
    }
    match (exact, declared) {
        (Some(n), Some(Some(d))) if n != d => {
            Err("the response's content-length does not match its body")
        }
        (None, Some(None)) | (Some(_), Some(None)) => {
            Err("the response's content-length is not valid")
        }
        (Some(n), _) | (None, Some(Some(n))) => {
            crate::codec::push_content_length(out, n);
            Ok(Framing::Length(n))
        }
        (None, None) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Ok(Framing::Chunked)
        }
    }
}

/// Sends the head in `out` and the body after it; `Ok(true)` when the connection must
/// close after.
async fn send_body<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &[u8],
    headers: &HeaderMap,
    mut body: ProxyBody,
    framing: Framing,
    req: &Head,
    close: bool,
) -> io::Result<bool> {
    if framing == Framing::None {
        write_all(io, &mut [IoSlice::new(out)]).await?;
        if body.is_end_stream() {
            // Polled once so it can finish (an upstream connection goes back to its pool).
            let _ = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        }
        return Ok(close);
    }
    let mut head_sent = false;
    let mut remaining = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    // The body's end: `None`, or its trailers.
    let trailers = loop {
        let data = match next_frame(io, out, &mut body, &mut head_sent).await? {
            None => break None,
            Some(Err(e)) => return Err(io::Error::other(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => data,
                Err(frame) => break frame.into_trailers().ok(),
            },
        };
        let head: &[u8] = if head_sent { &[] } else { out };
        head_sent = true;
        if framing == Framing::Chunked {
            let end = body.is_end_stream();
            write_chunk(io, head, &data, end).await?;
            if end {
                return Ok(close);
            }
        } else {
            let len = data.len() as u64;
            if len > remaining {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the response body is longer than its content-length",
                ));
            }
            remaining -= len;
            write_all(io, &mut [IoSlice::new(head), IoSlice::new(&data)]).await?;
            if remaining == 0 {
                // All that was declared is sent; the body is not waited on.
                return Ok(close);
            }
        }
    };
    let head: &[u8] = if head_sent { &[] } else { out };
    if framing != Framing::Chunked {
        // Trailers cannot follow a length-framed body (as hyper, they are dropped).
        write_all(io, &mut [IoSlice::new(head)]).await?;
        if remaining != 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the response body ended before its content-length",
            ));
        }
        return Ok(close);
    }
    let end = last_chunk(headers, trailers.as_ref().filter(|_| req.trailers));
    write_all(io, &mut [IoSlice::new(head), IoSlice::new(&end)]).await?;
    Ok(close)
}

/// The body's next frame. Until the head is sent, a frame ready now leaves with the head
/// in one write; when none is, the head is sent first (`head_sent`).
async fn next_frame<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &[u8],
    body: &mut ProxyBody,
    head_sent: &mut bool,
) -> io::Result<Option<Result<http_body::Frame<Bytes>, <ProxyBody as http_body::Body>::Error>>> {
    if *head_sent {
        return Ok(body.frame().await);
    }
    match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
        Poll::Ready(f) => Ok(f),
        Poll::Pending => {
            write_all(io, &mut [IoSlice::new(out)]).await?;
            *head_sent = true;
            Ok(body.frame().await)
        }
    }
}

/// One chunk of a chunked body (after `head`, when not sent yet), with the last chunk
/// when the body ends with it.
async fn write_chunk<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    head: &[u8],
    data: &[u8],
    end: bool,
) -> io::Result<()> {
    let mut size = [0u8; 20];
    let n = {
        let mut w = &mut size[..];
        let _ = write!(w, "{:x}\r\n", data.len());
        20 - w.len()
    };
    let tail: &[u8] = if end { b"\r\n0\r\n\r\n" } else { b"\r\n" };
    let mut parts = [
        IoSlice::new(head),
        IoSlice::new(&size[..n]),
        IoSlice::new(data),
        IoSlice::new(tail),
    ];
    write_all(io, &mut parts).await
}

/// The last chunk, with the trailers a client that takes them gets: only the fields the
/// response's `Trailer` announces (as hyper does).
fn last_chunk(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Vec<u8> {
    let mut end = Vec::with_capacity(64);
    end.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        if announced(headers, name) {
            end.extend_from_slice(name.as_str().as_bytes());
            end.extend_from_slice(b": ");
            end.extend_from_slice(value.as_bytes());
            end.extend_from_slice(b"\r\n");
        }
    }
    end.extend_from_slice(b"\r\n");
    end
}

/// Whether a trailer field may be sent: named in the response's `Trailer` header, and not
/// one that must not be a trailer (RFC 9110 §6.5.1; hyper's list).
fn announced(headers: &HeaderMap, name: &HeaderName) -> bool {
    let forbidden = [
        header::AUTHORIZATION,
        header::CACHE_CONTROL,
        header::CONTENT_ENCODING,
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::CONTENT_TYPE,
        header::HOST,
        header::MAX_FORWARDS,
        header::SET_COOKIE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::TE,
    ];
    !forbidden.contains(name)
        && headers.get_all(header::TRAILER).iter().any(|v| {
            v.as_bytes().split(|b| *b == b',').any(|t| {
                t.trim_ascii()
                    .eq_ignore_ascii_case(name.as_str().as_bytes())
            })
        })
}

thread_local! {
    static DATE: RefCell<CachedDate> = RefCell::new(CachedDate::default());
}

/// The `date` header line, formatted once a second.
#[derive(Default)]
struct CachedDate {
    second: u64,
    line: Vec<u8>,
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second || self.line.is_empty() {
            self.second = second;
            self.line.clear();
            self.line.extend_from_slice(b"date: ");
            self.line
                .extend_from_slice(httpdate::fmt_http_date(now).as_bytes());
            self.line.extend_from_slice(b"\r\n");
        }
        &self.line
    }
}

/// What `serve` makes of `buf` as a connection's next bytes (for `crate::fuzzing`): `None`
/// until a head (and its body) is complete, `Some(Ok(Some(..)))` served here (with the
/// length of head and body), `Some(Ok(None))` handed to hyper, `Some(Err(()))` refused.
#[allow(clippy::type_complexity)]
pub(crate) fn parse_one(
    buf: &[u8],
    settings: &Settings,
) -> Option<Result<Option<(usize, Request<DownstreamBody>)>, ()>> {
    let mut conn = Conn {
        read: BytesMut::from(buf),
        write: Vec::new(),
        names: Vec::new(),
        timer: None,
    };
    match conn.parse(settings) {
        Ok(Parse::Partial) => None,
        Ok(Parse::Other) => Some(Ok(None)),
        Ok(Parse::Head(h)) if buf.len() < h.len + h.body => None,
        Ok(Parse::Head(h)) => Some(
            conn.request(&h)
                .map(|r| Some((h.len + h.body, *r)))
                .ok_or(()),
        ),
        Err(_) => Some(Err(())),
    }
}

#[cfg(test)]
mod tests;
