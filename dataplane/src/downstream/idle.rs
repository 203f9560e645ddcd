//! Idle keep-alive connections, parked. A plain HTTP/1.1 connection that has sent nothing
//! for a while after an answer gives up its task and its place in tokio's reactor: one task
//! per worker holds every such connection as a slot (the socket, who it is, when it went
//! quiet) and waits for their next bytes together, on an epoll instance of its own. The
//! first byte gets the connection a task again.
//!
//! A task costs a connection about 1.3 KB (the connection's future, in tokio's cell), and
//! tokio's reactor 256 bytes more for any socket it watches (its readiness record is padded
//! to a cache line pair); a slot here costs 64 bytes (and 24 in the deadline queue), and the kernel's epoll entry
//! is outside the process. That is what makes ten thousand idle connections cheap. Waking
//! a parked connection costs a task spawn and four `epoll_ctl` calls (out of tokio's
//! reactor and into the lot's, and back), once per request that comes after a pause of at
//! least `IDLE_RELEASE`.
//!
//! Parked connections close, as in their tasks, when their header read timeout runs out
//! (counted from their last answer) and when the listener drains.

use std::{collections::VecDeque, io, net::SocketAddr, os::fd::AsRawFd, time::Duration};

use mio::{Events, Interest, Token, unix::SourceFd};
use prometheus_client::metrics::gauge::Gauge;
use slab::Slab;
use tokio::{io::unix::AsyncFd, net::TcpStream, sync::mpsc, time::Instant};

use super::{drain::DrainSignal, http1::Resume};
use crate::proxy::ConnInfo;

/// A connection waiting for its next request.
pub struct Parked {
    pub io: TcpStream,
    pub info: ConnInfo,
    pub resume: Resume,
    /// Held while parked: the listener's drain waits for it like for a task.
    pub drain: DrainSignal,
}

/// Where connections are parked: the sending side of a worker's parking task.
#[derive(Clone)]
pub struct Parking {
    tx: mpsc::UnboundedSender<Parked>,
}

impl Parking {
    /// Parks `conn`; `false` when the parking task has ended (the listener drains): the
    /// connection is dropped, which closes it.
    pub fn park(&self, conn: Parked) -> bool {
        self.tx.send(conn).is_ok()
    }
}

/// The parking task's side: started once per worker, it ends when the listener drains.
pub struct Lot {
    rx: mpsc::UnboundedReceiver<Parked>,
    /// The lot's own epoll instance, itself watched by tokio's reactor.
    poll: AsyncFd<mio::Poll>,
}

/// A new parking lot and the handle connections park through. Fails only when the
/// process can open no more files (an epoll instance is one); inside a tokio runtime.
pub fn lot() -> io::Result<(Parking, Lot)> {
    // Deprecated for descriptors a caller could close while registered (tokio's safe
    // constructors cannot promise I/O safety, its replacement is `unsafe`); the `Poll` is
    // owned by the `AsyncFd` and closes only with it.
    #[allow(deprecated)]
    let poll = AsyncFd::with_interest(mio::Poll::new()?, tokio::io::Interest::READABLE)?;
    let (tx, rx) = mpsc::unbounded_channel();
    Ok((Parking { tx }, Lot { rx, poll }))
}

/// A parked connection, out of tokio's reactor: what it needs to be served again, and no
/// more (64 bytes). Only plain connections park, so of what the listener knows about it
/// only the peer and the port are kept; the lot's own drain signal stands for the
/// connection's while it is parked.
struct Slot {
    io: std::net::TcpStream,
    served: u32,
    peer: SocketAddr,
    port: u16,
    /// Tells this occupant of the slot from a later one with the same key.
    generation: u32,
    since: Instant,
}

/// A lot's share of the parked-connections gauge, taken back when the lot ends.
struct Counted {
    gauge: Gauge,
    n: i64,
}

impl Counted {
    fn set(&mut self, n: usize) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.gauge.inc_by(n - self.n);
        self.n = n;
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.gauge.dec_by(self.n);
    }
}

/// Socket events taken from the lot's epoll instance at a time.
const EVENTS: usize = 256;

impl Lot {
    /// Holds parked connections until the listener drains, each at most `timeout` from
    /// when it went quiet; `wake` gets back those whose next bytes came.
    /// `parked` counts them (every worker's lot adds its own).
    pub async fn run(
        mut self,
        wake: impl Fn(Parked),
        timeout: Duration,
        mut drain: DrainSignal,
        parked: Gauge,
    ) {
        let mut slots: Slab<Slot> = Slab::new();
        let mut counted = Counted {
            gauge: parked,
            n: 0,
        };
        let mut events = Events::with_capacity(EVENTS);
        // Deadlines in the order connections parked: all share one timeout and park a
        // fixed time after their last answer, so this is (nearly) their order in time.
        let mut deadlines: VecDeque<(Instant, u32, u32)> = VecDeque::new();
        let mut generation = 0u32;
        let sleep = tokio::time::sleep(timeout);
        tokio::pin!(sleep);
        loop {
            let next_deadline = deadlines.front().map(|d| d.0);
            if let Some(at) = next_deadline {
                sleep.as_mut().reset(at);
            }
            tokio::select! {
                biased;
                () = drain.draining() => return,
                conn = self.rx.recv() => {
                    let Some(conn) = conn else { return };
                    generation = generation.wrapping_add(1);
                    let deadline = conn.resume.since + timeout;
                    if let Some(key) = self.park(&mut slots, conn, generation) {
                        deadlines.push_back((deadline, key as u32, generation));
                    }
                }
                ready = self.poll.readable_mut() => {
                    let Ok(mut ready) = ready else {
                        // tokio's reactor is gone: the runtime is ending.
                        return;
                    };
                    loop {
                        match ready.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => {
                                tracing::error!(error = %e, "waiting for parked connections failed; they are closed");
                                return;
                            }
                        }
                        let mut taken = 0;
                        for event in &events {
                            taken += 1;
                            let Some(slot) = slots.try_remove(event.token().0) else {
                                continue;
                            };
                            if let Some(conn) = unpark(ready.get_inner(), slot, &drain) {
                                wake(conn);
                            }
                        }
                        if taken < EVENTS {
                            // All taken: until the kernel has more, tokio says not ready.
                            ready.clear_ready();
                            break;
                        }
                    }
                }
                () = &mut sleep, if next_deadline.is_some() => {
                    let now = Instant::now();
                    while let Some(&(at, key, generation)) = deadlines.front() {
                        if at > now {
                            break;
                        }
                        deadlines.pop_front();
                        let key = key as usize;
                        if slots.get(key).is_some_and(|s| s.generation == generation) {
                            // Closed, as an idle connection in its task would be (closing
                            // the socket takes it out of the epoll instance too).
                            slots.remove(key);
                        }
                    }
                }
            }
            counted.set(slots.len());
            // The deadline queue keeps entries of connections that woke up; shed them when
            // they are most of it, so a busy lot does not grow it without bound.
            if deadlines.len() > 64 && deadlines.len() > 2 * slots.len() {
                deadlines.retain(|&(_, key, generation)| {
                    slots
                        .get(key as usize)
                        .is_some_and(|s| s.generation == generation)
                });
            }
        }
    }

    /// Moves `conn` from tokio's reactor into the lot's; its slot key, or `None` when that
    /// failed and the connection was closed.
    fn park(&self, slots: &mut Slab<Slot>, conn: Parked, generation: u32) -> Option<usize> {
        let Parked {
            io,
            info,
            resume,
            drain: _,
        } = conn;
        debug_assert!(info.tls.is_none() && info.client_cert.is_none());
        let io = io.into_std().ok()?;
        let entry = slots.vacant_entry();
        let key = entry.key();
        // Keys are dense: a slab of 2^32 parked connections is beyond any file limit.
        u32::try_from(key).ok()?;
        // A socket with bytes already waiting is reported at once.
        self.poll
            .get_ref()
            .registry()
            .register(
                &mut SourceFd(&io.as_raw_fd()),
                Token(key),
                Interest::READABLE,
            )
            .ok()?;
        entry.insert(Slot {
            io,
            served: resume.served,
            peer: info.peer,
            port: info.port,
            generation,
            since: resume.since,
        });
        Some(key)
    }
}

/// Moves a connection whose next bytes came back into tokio's reactor, to be served; `None`
/// when that failed (it is closed).
fn unpark(poll: &mio::Poll, slot: Slot, drain: &DrainSignal) -> Option<Parked> {
    let Slot {
        io,
        served,
        peer,
        port,
        generation: _,
        since,
    } = slot;
    // Out of the lot's epoll first, or its events would still come here.
    poll.registry()
        .deregister(&mut SourceFd(&io.as_raw_fd()))
        .ok()?;
    let io = TcpStream::from_std(io).ok()?;
    Some(Parked {
        io,
        info: ConnInfo {
            peer,
            tls: None,
            port,
            client_cert: None,
        },
        resume: Resume {
            served,
            since,
            ready: true,
        },
        drain: drain.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
        sync::mpsc::UnboundedReceiver,
    };

    use super::*;
    use crate::downstream::drain::Drain;

    const DEADLINE: Duration = Duration::from_secs(10);

    struct World {
        listener: TcpListener,
        parking: Parking,
        woken: UnboundedReceiver<Parked>,
        drain: Drain,
        parked: Gauge,
    }

    /// A lot whose woken connections arrive on `woken`, parking for `timeout`.
    async fn world(timeout: Duration) -> World {
        let (parking, lot) = lot().unwrap();
        let (tx, woken) = mpsc::unbounded_channel();
        let drain = Drain::default();
        let parked = Gauge::default();
        tokio::spawn(lot.run(
            move |conn| {
                let _ = tx.send(conn);
            },
            timeout,
            drain.signal(),
            parked.clone(),
        ));
        World {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            parking,
            woken,
            drain,
            parked,
        }
    }

    impl World {
        /// A client connection, and its server side parked having served `served`.
        async fn park(&self, served: u32) -> tokio::net::TcpStream {
            let client = tokio::net::TcpStream::connect(self.listener.local_addr().unwrap())
                .await
                .unwrap();
            let (io, peer) = self.listener.accept().await.unwrap();
            assert!(self.parking.park(Parked {
                io,
                info: info(peer),
                resume: Resume {
                    served,
                    since: Instant::now(),
                    ready: false,
                },
                drain: self.drain.signal(),
            }));
            client
        }

        /// Waits until the gauge says `n` are parked.
        async fn parked(&self, n: i64) {
            tokio::time::timeout(DEADLINE, async {
                while self.parked.get() != n {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{n} parked, not {}", self.parked.get()));
        }

        async fn next_woken(&mut self) -> Parked {
            tokio::time::timeout(DEADLINE, self.woken.recv())
                .await
                .expect("a parked connection was woken in time")
                .expect("the lot is running")
        }
    }

    fn info(peer: SocketAddr) -> ConnInfo {
        ConnInfo {
            peer,
            tls: None,
            port: 80,
            client_cert: None,
        }
    }

    async fn closed_by_server(client: &mut tokio::net::TcpStream) {
        let mut rest = Vec::new();
        tokio::time::timeout(DEADLINE, client.read_to_end(&mut rest))
            .await
            .expect("the server closed the connection in time")
            .unwrap();
        assert!(rest.is_empty(), "nothing is written on close: {rest:?}");
    }

    #[tokio::test]
    async fn a_parked_connection_comes_back_with_its_bytes_and_state() {
        let mut w = world(Duration::from_secs(60)).await;
        let mut client = w.park(7).await;
        w.parked(1).await;
        // Parked and quiet: not woken.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), w.woken.recv())
                .await
                .is_err()
        );
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut conn = w.next_woken().await;
        w.parked(0).await;
        assert_eq!(conn.resume.served, 7);
        assert!(conn.resume.ready);
        assert_eq!(conn.info.peer, client.local_addr().unwrap());
        // Back in tokio's reactor: it reads and writes as any socket.
        let mut got = [0u8; 16];
        conn.io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\n");
        conn.io.write_all(b"ok").await.unwrap();
        let mut answer = [0u8; 2];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"ok");
    }

    #[tokio::test]
    async fn bytes_sent_before_parking_wake_it_at_once() {
        let mut w = world(Duration::from_secs(60)).await;
        let client = tokio::net::TcpStream::connect(w.listener.local_addr().unwrap())
            .await
            .unwrap();
        let (io, peer) = w.listener.accept().await.unwrap();
        let mut client = client;
        client.write_all(b"x").await.unwrap();
        // Wait until the byte is in the server's socket, then park it.
        tokio::time::timeout(DEADLINE, io.readable())
            .await
            .unwrap()
            .unwrap();
        assert!(w.parking.park(Parked {
            io,
            info: info(peer),
            resume: Resume::fresh(),
            drain: w.drain.signal(),
        }));
        let mut conn = w.next_woken().await;
        let mut got = [0u8; 1];
        conn.io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"x");
    }

    #[tokio::test]
    async fn more_connections_than_one_batch_of_events_all_wake() {
        let mut w = world(Duration::from_secs(60)).await;
        let n = EVENTS * 2 + 17;
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(w.park(0).await);
        }
        for c in &mut clients {
            c.write_all(b"G").await.unwrap();
        }
        let mut peers = std::collections::HashSet::new();
        for _ in 0..n {
            peers.insert(w.next_woken().await.info.peer);
        }
        let expected: std::collections::HashSet<_> =
            clients.iter().map(|c| c.local_addr().unwrap()).collect();
        assert_eq!(peers, expected);
    }

    #[tokio::test]
    async fn a_client_that_closes_is_handed_back_to_read_its_end() {
        let mut w = world(Duration::from_secs(60)).await;
        let client = w.park(1).await;
        drop(client);
        let mut conn = w.next_woken().await;
        let mut rest = Vec::new();
        conn.io.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn parked_connections_close_at_their_timeout_and_on_drain() {
        let w = world(Duration::from_millis(300)).await;
        let parked_at = Instant::now();
        let mut quiet = w.park(0).await;
        closed_by_server(&mut quiet).await;
        assert!(parked_at.elapsed() >= Duration::from_millis(300));
        w.parked(0).await;

        let w = world(Duration::from_secs(60)).await;
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(w.park(0).await);
        }
        w.parked(3).await;
        let World { drain, parked, .. } = w;
        // The drain waits for the parked connections' signals: they go with the lot.
        tokio::time::timeout(DEADLINE, drain.drain())
            .await
            .expect("the drain ended with the lot");
        for c in &mut clients {
            closed_by_server(c).await;
        }
        assert_eq!(parked.get(), 0, "the lot took its count back");
    }
}
