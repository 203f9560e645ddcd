//! A plain connection's socket that turns Nagle's algorithm off (`TCP_NODELAY`) just before
//! its second write, instead of when it is accepted.
//!
//! Nagle holds back a small segment only while an earlier small one is unacknowledged
//! (Linux's Minshall variant), so a connection's first write leaves at once either way:
//! one that gets a single answer, as every `Connection: close` client's does, never needs the
//! option, and the system call it costs (one of about eleven per such connection) is saved.
//! From the second write on (a second answer, or the rest of one that did not fit) a small
//! segment could wait for the client's delayed ACK, so the option is set then, once. nginx
//! sets it the same way, when a connection goes keep-alive.

use std::{
    io::IoSlice,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

pub struct Lazy {
    io: TcpStream,
    state: Writes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writes {
    /// Nothing written yet.
    None,
    /// Written once, with Nagle on.
    One,
    /// `TCP_NODELAY` is set.
    NoDelay,
}

impl Lazy {
    /// A connection that has written nothing yet.
    pub fn fresh(io: TcpStream) -> Self {
        Self {
            io,
            state: Writes::None,
        }
    }

    /// A connection whose `TCP_NODELAY` is already set.
    pub fn no_delay(io: TcpStream) -> Self {
        Self {
            io,
            state: Writes::NoDelay,
        }
    }

    /// The socket with `TCP_NODELAY` set, for whoever writes to it next without this
    /// wrapper (hyper, or the connection's next busy period after parking).
    pub fn into_no_delay(self) -> TcpStream {
        if self.state != Writes::NoDelay {
            let _ = self.io.set_nodelay(true);
        }
        self.io
    }

    /// Whether `TCP_NODELAY` has been set on it.
    #[cfg(test)]
    pub fn is_no_delay(&self) -> bool {
        self.state == Writes::NoDelay
    }

    fn before_write(&mut self) {
        if self.state == Writes::One {
            // A failure leaves Nagle on: slower, not wrong.
            let _ = self.io.set_nodelay(true);
            self.state = Writes::NoDelay;
        }
    }

    fn wrote(&mut self, r: &Poll<std::io::Result<usize>>) {
        if self.state == Writes::None && matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            self.state = Writes::One;
        }
    }
}

impl AsyncRead for Lazy {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Lazy {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.before_write();
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.before_write();
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (server, client)
    }

    #[tokio::test]
    async fn the_option_is_set_before_the_second_write_and_not_before_the_first() {
        let (server, mut client) = pair().await;
        let mut conn = Lazy::fresh(server);
        conn.write_all(b"first").await.unwrap();
        assert!(!conn.is_no_delay());
        assert!(
            !conn.io.nodelay().unwrap(),
            "one write needs no TCP_NODELAY"
        );
        conn.write_all(b"second").await.unwrap();
        assert!(conn.is_no_delay());
        assert!(conn.io.nodelay().unwrap(), "set before the second write");
        let mut got = [0; 11];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"firstsecond");
    }

    #[tokio::test]
    async fn a_socket_handed_on_has_the_option_set_whatever_was_written() {
        let (server, _client) = pair().await;
        let io = Lazy::fresh(server).into_no_delay();
        assert!(io.nodelay().unwrap());
        let (server, _client) = pair().await;
        let mut conn = Lazy::fresh(server);
        conn.write_all(b"once").await.unwrap();
        assert!(conn.into_no_delay().nodelay().unwrap());
    }
}
