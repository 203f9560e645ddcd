//! The responses of an HTTP/2 connection leave together when they are ready together. The
//! `h2` crate flushes whenever it has a response body frame to send (it holds one at a
//! time) and at the end of each run of the connection's task: three streams answered in
//! the same turn of the runtime left as three TLS records in three `writev` calls. Here
//! what the connection writes during a run of its task is held, its flushes are taken as
//! done, and all of it is written once the run is over (in one record and one system call,
//! as an event loop like HAProxy's or nginx's writes at the end of its iteration).
//!
//! The connection and the end-of-run writer share the socket through a mutex that is never
//! contended: both only touch it from the connection's task.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes larger than this are not held: the connection has a large response to send,
/// and holding it would only copy it.
const HOLD_MAX: usize = 64 * 1024;

/// The socket and what was written to it during the current run.
struct Held<IO> {
    io: IO,
    /// Written, not yet passed on; `bytes[sent..]` is what `io` has not taken yet.
    bytes: Vec<u8>,
    sent: usize,
    /// The error the end-of-run write met, for the connection's next write or flush.
    failed: Option<io::ErrorKind>,
}

impl<IO: AsyncWrite + Unpin> Held<IO> {
    /// Passes on everything held; `Pending` while `io` takes no more.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(kind) = self.failed {
            return Poll::Ready(Err(kind.into()));
        }
        while self.sent < self.bytes.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.bytes[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        // Given back: an idle connection holds no buffer.
        self.bytes = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `len` more bytes: `Ready(true)` to hold them, `Ready(false)` to write
    /// them through (too large to hold, after what was held has gone).
    fn poll_room(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<bool>> {
        if let Some(kind) = self.failed {
            return Poll::Ready(Err(kind.into()));
        }
        if self.bytes.len() + len <= HOLD_MAX {
            return Poll::Ready(Ok(true));
        }
        ready!(self.poll_send(cx))?;
        Poll::Ready(Ok(len <= HOLD_MAX))
    }
}

type Shared<IO> = Arc<Mutex<Held<IO>>>;

fn lock<IO>(shared: &Shared<IO>) -> MutexGuard<'_, Held<IO>> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// The connection's side of the socket: what it writes is held until its run ends.
pub struct Batched<IO> {
    shared: Shared<IO>,
}

/// The connection's future, writing what it held at the end of each of its runs.
pub struct Flushing<F, IO> {
    pub conn: Pin<Box<F>>,
    shared: Shared<IO>,
}

/// Serves `io` with the connection `conn` makes of it, its writes batched per run.
pub fn batched<IO, F>(io: IO, conn: impl FnOnce(Batched<IO>) -> F) -> Flushing<F, IO> {
    let shared = Arc::new(Mutex::new(Held {
        io,
        bytes: Vec::new(),
        sent: 0,
        failed: None,
    }));
    Flushing {
        conn: Box::pin(conn(Batched {
            shared: shared.clone(),
        })),
        shared,
    }
}

impl<F: Future, IO: AsyncWrite + Unpin> Future for Flushing<F, IO> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let out = self.conn.as_mut().poll(cx);
        let mut held = lock(&self.shared);
        if held.failed.is_none() && !held.bytes.is_empty() {
            // `Pending`: the socket is full; its readiness wakes this task to go on.
            let sent = match held.poll_send(cx) {
                Poll::Ready(Ok(())) => Pin::new(&mut held.io).poll_flush(cx),
                other => other,
            };
            if let Poll::Ready(Err(e)) = sent {
                held.failed = Some(e.kind());
                // The connection learns of it at its next write, in a run asked for now.
                cx.waker().wake_by_ref();
            }
        }
        out
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Batched<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.shared).io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Batched<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut held = lock(&self.shared);
        if !ready!(held.poll_room(cx, buf.len()))? {
            return Pin::new(&mut held.io).poll_write(cx, buf);
        }
        held.bytes.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut held = lock(&self.shared);
        let len = bufs.iter().map(|b| b.len()).sum();
        if !ready!(held.poll_room(cx, len))? {
            return Pin::new(&mut held.io).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            held.bytes.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Done as far as the connection can tell: what is held leaves when the run ends.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match lock(&self.shared).failed {
            Some(kind) => Poll::Ready(Err(kind.into())),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut held = lock(&self.shared);
        ready!(held.poll_send(cx))?;
        Pin::new(&mut held.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        task::{Wake, Waker},
    };

    use super::*;

    /// A sink that counts the writes it gets and can refuse or fail them.
    #[derive(Default)]
    struct Sink {
        got: Vec<u8>,
        writes: usize,
        flushes: usize,
        full: bool,
        broken: bool,
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.broken {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            if self.full {
                return Poll::Pending;
            }
            self.writes += 1;
            // Takes at most 7 bytes at a time: partial writes must be resumed.
            let n = buf.len().min(7);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Woken(AtomicUsize);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A connection whose runs are scripted: each run is handed the writer.
    type Script = Box<dyn FnMut(&mut Batched<Sink>, &mut Context<'_>) -> Poll<()> + Send>;

    struct Conn {
        io: Batched<Sink>,
        run: Script,
    }

    impl Future for Conn {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let this = &mut *self;
            (this.run)(&mut this.io, cx)
        }
    }

    fn conn(run: Script) -> Flushing<Conn, Sink> {
        batched(Sink::default(), |io| Conn { io, run })
    }

    fn write(b: &mut Batched<Sink>, cx: &mut Context<'_>, data: &[u8]) {
        assert!(matches!(
            Pin::new(b).poll_write(cx, data),
            Poll::Ready(Ok(n)) if n == data.len()
        ));
    }

    fn flush(b: &mut Batched<Sink>, cx: &mut Context<'_>) {
        assert!(matches!(Pin::new(b).poll_flush(cx), Poll::Ready(Ok(()))));
    }

    fn sink<T>(c: &Flushing<Conn, Sink>, f: impl FnOnce(&mut Sink) -> T) -> T {
        f(&mut lock(&c.shared).io)
    }

    fn context() -> (Arc<Woken>, Waker) {
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        (woken, waker)
    }

    #[test]
    fn a_runs_writes_and_flushes_leave_together_when_it_ends() {
        let (_, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut first = true;
        let mut c = conn(Box::new(move |io, cx| {
            if !std::mem::take(&mut first) {
                return Poll::Pending;
            }
            // Three responses, each flushed as h2 does when it holds a body frame.
            for stream in [&b"stream 1;"[..], b"stream 2;", b"stream 3;"] {
                write(io, cx, stream);
                flush(io, cx);
                assert!(
                    lock(&io.shared).io.got.is_empty(),
                    "held while the run lasts"
                );
            }
            Poll::Pending
        }));
        assert!(Pin::new(&mut c).poll(&mut cx).is_pending());
        sink(&c, |s| {
            assert_eq!(s.got, b"stream 1;stream 2;stream 3;");
            assert_eq!(s.writes, 4, "one write, resumed in 7-byte pieces");
            assert_eq!(s.flushes, 1);
        });
        assert_eq!(
            lock(&c.shared).bytes.capacity(),
            0,
            "the buffer is given back"
        );
        // A run that writes nothing writes nothing.
        assert!(Pin::new(&mut c).poll(&mut cx).is_pending());
        sink(&c, |s| assert_eq!(s.flushes, 1));
    }

    #[test]
    fn a_full_socket_keeps_what_is_held_and_a_broken_one_fails_the_next_write() {
        let (woken, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut runs = 0;
        let mut c = conn(Box::new(move |io, cx| {
            runs += 1;
            match runs {
                1 => write(io, cx, b"0123456789abcdef"),
                2 => write(io, cx, b"+more"),
                3 => write(io, cx, b"lost"),
                _ => {
                    assert!(matches!(
                        Pin::new(&mut *io).poll_write(cx, b"x"),
                        Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe
                    ));
                    assert!(matches!(
                        Pin::new(&mut *io).poll_flush(cx),
                        Poll::Ready(Err(_))
                    ));
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        }));
        sink(&c, |s| s.full = true);
        assert!(Pin::new(&mut c).poll(&mut cx).is_pending());
        sink(&c, |s| assert!(s.got.is_empty()));
        sink(&c, |s| s.full = false);
        assert!(Pin::new(&mut c).poll(&mut cx).is_pending());
        sink(&c, |s| assert_eq!(s.got, b"0123456789abcdef+more"));
        // The socket breaks under held bytes: the connection hears of it at its next write,
        // in a run asked for at once.
        sink(&c, |s| s.broken = true);
        assert_eq!(woken.0.load(Ordering::Relaxed), 0);
        assert!(Pin::new(&mut c).poll(&mut cx).is_pending());
        assert_eq!(woken.0.load(Ordering::Relaxed), 1);
        assert!(Pin::new(&mut c).poll(&mut cx).is_ready());
    }

    #[test]
    fn large_writes_go_through_after_what_was_held() {
        let (_, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut c = conn(Box::new(|io, cx| {
            write(io, cx, b"small;");
            let large = vec![b'x'; HOLD_MAX + 1];
            // Written through (the sink takes 7 bytes), after the small write, in order.
            assert!(matches!(
                Pin::new(&mut *io).poll_write(cx, &large),
                Poll::Ready(Ok(7))
            ));
            assert_eq!(lock(&io.shared).io.got, b"small;xxxxxxx");
            // Writes up to the limit, in pieces, are held; one byte more sends them first.
            let piece = vec![b'y'; HOLD_MAX / 2];
            write(io, cx, &piece);
            write(io, cx, &piece);
            assert_eq!(lock(&io.shared).io.got.len(), 13);
            write(io, cx, b"z");
            assert_eq!(lock(&io.shared).io.got.len(), 13 + HOLD_MAX);
            assert!(matches!(
                Pin::new(&mut *io).poll_shutdown(cx),
                Poll::Ready(Ok(()))
            ));
            assert_eq!(lock(&io.shared).io.got.last(), Some(&b'z'));
            Poll::Ready(())
        }));
        assert!(Pin::new(&mut c).poll(&mut cx).is_ready());
    }

    #[test]
    fn vectored_writes_are_held_whole() {
        let (_, waker) = context();
        let mut cx = Context::from_waker(&waker);
        let mut c = conn(Box::new(|io, cx| {
            let parts = [io::IoSlice::new(b"head;"), io::IoSlice::new(b"body")];
            assert!(matches!(
                Pin::new(&mut *io).poll_write_vectored(cx, &parts),
                Poll::Ready(Ok(9))
            ));
            Poll::Pending
        }));
        assert!(Pin::new(&mut c).poll(&mut cx).is_pending());
        sink(&c, |s| assert_eq!(s.got, b"head;body"));
    }
}
