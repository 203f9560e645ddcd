//! A request body relayed from the client's socket to the upstream's inside the kernel.
//!
//! A large body of a known length on a plain connection is not read into memory: the proxy
//! gets a [`SocketBody`] (the socket and how many of the body's bytes are still in it), and
//! Parapet's own HTTP/1.1 client moves those bytes with `splice(2)` through a pipe, from
//! one socket to the other, with no copy to user space and back. Measured on a 256 KiB
//! body, that halves the system time a relay costs (see BENCHMARKS.md). Anything else that
//! takes the body (hyper's client for TLS and HTTP/2 pools, a replay buffer) reads it as
//! an ordinary stream.
//!
//! The body holds its own descriptor of the client's socket (a duplicate, registered with
//! the runtime for readiness), so it can travel through the proxy's stages as any body
//! does; the connection's codec does not read the socket until the body has been taken
//! whole ([`Unread`]), and closes the connection after its answer when it was not.

use std::{
    cell::RefCell,
    io,
    os::fd::{AsFd, OwnedFd},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
};

use bytes::{BufMut as _, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::{io::Interest, net::TcpStream, time::Instant};

use crate::{bodies, proxy::pace::Pace};

/// What a pipe is asked to hold: a 256 KiB body moves in one pass of the loop where the
/// default 64 KiB takes four. Needs no privilege up to `/proc/sys/fs/pipe-max-size` (1 MiB
/// by default); if refused, the pipe keeps its default size.
const PIPE_SIZE: usize = 1024 * 1024;
/// Pages are moved, not copied, where the kernel can; a pipe never blocks (the sockets
/// do not either: both are non-blocking).
const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);
/// A stream read (the non-splice path) asks for at most this much at a time.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    /// One empty pipe per worker thread, reused relay after relay (every traffic worker is
    /// a single-threaded runtime). A relay that fails with bytes in its pipe drops it.
    static PIPE: RefCell<Option<Pipe>> = const { RefCell::new(None) };
}

/// A request body still in the client's socket, after the bytes already read with its head.
pub struct SocketBody {
    socket: TcpStream,
    /// The body's bytes read with the head, sent first.
    read: Bytes,
    /// The bytes still in the socket.
    left: u64,
    unread: Unread,
    counted: Option<(Counter, Option<Counter>)>,
    pace: Option<Pace>,
}

/// The codec's view of a [`SocketBody`]: how many of its bytes nobody has taken from the
/// socket yet.
#[derive(Clone, Debug)]
pub struct Unread(Arc<AtomicU64>);

impl Unread {
    /// The whole body has been taken from the socket: what comes next is the client's next
    /// request.
    pub fn done(&self) -> bool {
        self.0.load(Ordering::Acquire) == 0
    }
}

/// Where a relay failed: the client's side (its body broke off) or the upstream's.
#[derive(Debug)]
pub enum Relay {
    Client(io::Error),
    Upstream(io::Error),
}

impl SocketBody {
    /// The body of `left` more bytes in `socket` (a [`duplicate`] of the client's), after
    /// `read`.
    pub fn new(socket: TcpStream, read: Bytes, left: u64) -> (Box<Self>, Unread) {
        let unread = Unread(Arc::new(AtomicU64::new(left)));
        let body = Box::new(Self {
            socket,
            read,
            left,
            unread: unread.clone(),
            counted: None,
            pace: None,
        });
        (body, unread)
    }

    /// Bytes moved are counted in `total` and `own` (the access log's tally), and the
    /// body's progress is kept in `pace`.
    pub fn count(&mut self, total: Counter, own: Option<Counter>, pace: Pace) {
        self.counted = Some((total, own));
        self.pace = Some(pace);
    }

    /// The body's length, all of it.
    pub fn len(&self) -> u64 {
        self.read.len() as u64 + self.left
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes read with the head, to be written before [`relay`](Self::relay) (with the
    /// request's head, in one write).
    pub fn take_read(&mut self) -> Bytes {
        let read = std::mem::take(&mut self.read);
        self.moved(read.len() as u64);
        read
    }

    fn moved(&self, n: u64) {
        if let Some((total, own)) = &self.counted {
            total.inc_by(n);
            if let Some(own) = own {
                own.inc_by(n);
            }
        }
    }

    fn taken(&mut self, n: u64) {
        self.left -= n;
        self.unread.0.store(self.left, Ordering::Release);
        self.moved(n);
    }

    fn pace(&self, f: fn(&Pace)) {
        if let Some(p) = &self.pace {
            f(p);
        }
    }

    /// Moves the rest of the body from the client's socket to `to`, through a pipe.
    pub async fn relay(&mut self, to: &TcpStream) -> Result<(), Relay> {
        if self.left == 0 {
            return Ok(());
        }
        let pipe = PIPE.with_borrow_mut(Option::take);
        let pipe = match pipe {
            Some(p) => p,
            None => Pipe::new().map_err(Relay::Upstream)?,
        };
        let relayed = self.relay_through(&pipe, to).await;
        // A pipe left holding bytes would hand them to the next relay.
        if relayed.is_ok() {
            PIPE.with_borrow_mut(|slot| *slot = Some(pipe));
        }
        relayed
    }

    /// The body goes into the pipe as the client sends it and on to `to` when it is all in,
    /// when the pipe is full, or when the client's socket runs dry and the pipe may not hold
    /// on: held back whole it leaves in one write and wakes the upstream once, as a buffered
    /// body would, where a write per arrival woke it once per arrival (more CPU for both
    /// sides than the copies saved). A pipe holds on within [`bodies::WAITING`] and for
    /// [`bodies::WAIT`] at most, as the codec's buffers do.
    async fn relay_through(&mut self, pipe: &Pipe, to: &TcpStream) -> Result<(), Relay> {
        let splice_in = |socket: &TcpStream, want: usize| {
            rustix::pipe::splice(socket, None, &pipe.write, None, want, FLAGS)
                .map_err(io::Error::from)
        };
        let mut in_pipe = 0usize;
        // What the pipe may hold while the client is still sending, and until when.
        let mut hold: Option<(bodies::Permit<'static>, Instant)> = None;
        let mut streaming = false;
        let mut first = true;
        while self.left > 0 {
            let want = usize::try_from(self.left)
                .unwrap_or(usize::MAX)
                .min(pipe.size - in_pipe);
            // The first try without asking the runtime (a new registration knows of no
            // readiness yet); after that, through it, so a dry socket clears its readiness.
            let got = if std::mem::take(&mut first) {
                splice_in(&self.socket, want)
            } else {
                self.socket
                    .try_io(Interest::READABLE, || splice_in(&self.socket, want))
            };
            match got {
                Ok(0) => {
                    self.pace(Pace::failed);
                    return Err(Relay::Client(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed the connection before the end of its request body",
                    )));
                }
                Ok(n) => {
                    self.taken(n as u64);
                    in_pipe += n;
                    if in_pipe == pipe.size {
                        flush(pipe, to, &mut in_pipe).await?;
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    self.pace(Pace::failed);
                    return Err(Relay::Client(e));
                }
            }
            // The client's socket is dry: hold what the pipe has, or send it on first.
            if in_pipe > 0 && !streaming && hold.is_none() {
                let share = usize::try_from(self.left)
                    .map_or(pipe.size, |l| l.saturating_add(in_pipe).min(pipe.size));
                match bodies::WAITING.take(share) {
                    Some(p) => hold = Some((p, Instant::now() + bodies::WAIT)),
                    None => streaming = true,
                }
            }
            if streaming {
                flush(pipe, to, &mut in_pipe).await?;
            }
            self.pace(Pace::waiting);
            let readable = match &hold {
                Some((_, until)) if in_pipe > 0 => {
                    match tokio::time::timeout_at(*until, self.socket.readable()).await {
                        Ok(r) => r,
                        // Held long enough: from here on it streams.
                        Err(_) => {
                            streaming = true;
                            hold = None;
                            Ok(())
                        }
                    }
                }
                _ => self.socket.readable().await,
            };
            if let Err(e) = readable {
                self.pace(Pace::failed);
                return Err(Relay::Client(e));
            }
            self.pace(Pace::flowing);
        }
        flush(pipe, to, &mut in_pipe).await
    }
}

/// Sends what is in the pipe on to `to`.
async fn flush(pipe: &Pipe, to: &TcpStream, in_pipe: &mut usize) -> Result<(), Relay> {
    while *in_pipe > 0 {
        let sent = ready_io(to, Interest::WRITABLE, || {
            rustix::pipe::splice(&pipe.read, None, to, None, *in_pipe, FLAGS)
                .map_err(io::Error::from)
        })
        .await;
        match sent {
            Ok(0) => return Err(Relay::Upstream(io::ErrorKind::WriteZero.into())),
            Ok(m) => *in_pipe -= m,
            Err(e) => return Err(Relay::Upstream(e)),
        }
    }
    Ok(())
}

/// A second descriptor of `socket`, registered with the runtime on its own: the body owns
/// what it reads from, while the connection keeps the socket.
pub fn duplicate(socket: &TcpStream) -> io::Result<TcpStream> {
    let fd: OwnedFd = socket.as_fd().try_clone_to_owned()?;
    // The duplicate shares the original's open file, non-blocking already.
    TcpStream::from_std(std::net::TcpStream::from(fd))
}

/// `f` at once (the socket is most likely ready), then again each time the runtime says
/// the socket is ready for `interest`.
async fn ready_io<T>(
    socket: &TcpStream,
    interest: Interest,
    mut f: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    match f() {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        r => return r,
    }
    loop {
        socket.ready(interest).await?;
        match socket.try_io(interest, &mut f) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            r => return r,
        }
    }
}

/// Read as a stream, for whatever does not splice (hyper's client, a replay buffer).
impl Body for SocketBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if !self.read.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(self.take_read()))));
        }
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(self.left).map_or(READ_CHUNK, |l| l.min(READ_CHUNK));
        let mut buf = BytesMut::with_capacity(want);
        loop {
            self.pace(Pace::waiting);
            ready!(self.socket.poll_read_ready(cx))?;
            // Never past the body: what follows it is the client's next request.
            match self.socket.try_read_buf(&mut (&mut buf).limit(want)) {
                Ok(0) => {
                    self.pace(Pace::failed);
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed the connection before the end of its request body",
                    );
                    return Poll::Ready(Some(Err(e.into())));
                }
                Ok(n) => {
                    self.pace(Pace::flowing);
                    self.taken(n as u64);
                    return Poll::Ready(Some(Ok(Frame::data(buf.freeze()))));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    self.pace(Pace::failed);
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len())
    }
}

/// A pipe, both ends non-blocking, and what it holds at most.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // The default (16 pages) when a larger size is refused.
        let size = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE).unwrap_or(64 * 1024);
        Ok(Self { read, write, size })
    }
}

#[cfg(test)]
mod tests;
