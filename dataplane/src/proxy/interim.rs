//! Interim (1xx) responses from an upstream, relayed to the client before the final one, as
//! a proxy must (RFC 9110 §15.2): 103 Early Hints above all, so a browser starts fetching
//! what the page links while the origin still works on it.
//!
//! The downstream HTTP/1.1 codec opens one [`Sink`] per connection, runs each request's
//! handling inside [`Sink::relay_for`] and looks at the queue after every poll of it; both
//! upstream clients (ours and hyper's) find the relay with [`current`] when a 1xx arrives. A task-local rather than a request extension: a request
//! that never meets a 1xx pays nothing (no extension map, no channel per request), and
//! background work (cache refreshes, mirrors), spawned as tasks of their own, cannot write
//! into a client's answer. A 1xx that arrives after its request's answer has begun is
//! dropped (the request number no longer matches).
//!
//! Not relayed: 100 Continue (each hop answers `Expect` itself), 101 (upgrades have their own
//! path), and anything to HTTP/2 clients: hyper's server has no API to send a 1xx.

use std::{
    collections::VecDeque,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::Poll,
};

use futures::task::AtomicWaker;
use http::{HeaderMap, StatusCode};

/// Interim responses queued for one request at most; more are dropped (they are hints).
const MAX_QUEUED: usize = 8;

tokio::task_local! {
    static CURRENT: Relay;
}

/// One downstream connection's relay: what upstream clients push, the connection writes.
#[derive(Clone, Default)]
pub struct Sink(Arc<Shared>);

#[derive(Default)]
struct Shared {
    /// The request being answered (0: none); pushes for another are dropped.
    request: AtomicU64,
    /// Whether the queue may hold anything: the connection's every poll looks, so the
    /// common case (no 1xx) takes no lock.
    queued: AtomicBool,
    queue: Mutex<VecDeque<Interim>>,
    waker: AtomicWaker,
}

/// A 1xx head as the upstream sent it (the connection that writes it drops the hop-by-hop
/// fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interim {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

/// Where a 1xx for the request being handled goes.
#[derive(Clone)]
pub struct Relay {
    sink: Sink,
    request: u64,
}

impl Relay {
    /// Makes a push from another task (hyper's connection tasks) wake the task handling the
    /// request, so the 1xx is written as soon as it comes. Our own client pushes from the
    /// request's task, which looks at the queue after every poll and needs no wake-up.
    pub async fn arm(&self) {
        std::future::poll_fn(|cx| {
            self.sink.0.waker.register(cx.waker());
            Poll::Ready(())
        })
        .await
    }

    /// Queues a 1xx for the client, if it is one to relay and its request is still waiting.
    pub fn push(&self, status: StatusCode, headers: &HeaderMap) {
        if !relayed(status) {
            return;
        }
        let shared = &self.sink.0;
        if shared.request.load(Ordering::Acquire) != self.request {
            return;
        }
        let headers = headers.clone();
        {
            let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= MAX_QUEUED {
                return;
            }
            q.push_back(Interim { status, headers });
            shared.queued.store(true, Ordering::Release);
        }
        shared.waker.wake();
    }
}

/// The relay of the request this task is handling, if its client can take a 1xx.
pub fn current() -> Option<Relay> {
    CURRENT.try_with(Relay::clone).ok()
}

fn relayed(status: StatusCode) -> bool {
    status.is_informational()
        && status != StatusCode::CONTINUE
        && status != StatusCode::SWITCHING_PROTOCOLS
}

impl Sink {
    /// Runs a request's handling with this sink as the place its 1xx go; `request` numbers
    /// the connection's requests from 1.
    pub fn relay_for<F: Future>(
        &self,
        request: u64,
        handling: F,
    ) -> impl Future<Output = F::Output> {
        self.0.request.store(request, Ordering::Release);
        while self.pop().is_some() {}
        CURRENT.scope(
            Relay {
                sink: self.clone(),
                request,
            },
            handling,
        )
    }

    /// The request's answer has begun: later 1xx are dropped.
    pub fn close(&self) {
        self.0.request.store(0, Ordering::Release);
    }

    /// The next queued 1xx, if any.
    pub fn pop(&self) -> Option<Interim> {
        if !self.0.queued.load(Ordering::Acquire) {
            return None;
        }
        let mut q = self.0.queue.lock().unwrap_or_else(|p| p.into_inner());
        let next = q.pop_front();
        if q.is_empty() {
            self.0.queued.store(false, Ordering::Release);
        }
        next
    }
}

/// The 1xx as it goes on an HTTP/1.1 connection.
pub fn encode(interim: &Interim, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(interim.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        interim
            .status
            .canonical_reason()
            .unwrap_or("Informational")
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    for (name, value) in &interim.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_current_request_gets_its_interim_responses() {
        let sink = Sink::default();
        let mut hints = HeaderMap::new();
        hints.insert("link", "</a.css>; rel=preload".parse().unwrap());
        hints.insert("connection", "x-hop".parse().unwrap());
        hints.insert("x-hop", "1".parse().unwrap());
        let relay = sink
            .relay_for(1, async { current().expect("inside the scope") })
            .await;
        relay.push(StatusCode::CONTINUE, &hints);
        relay.push(StatusCode::from_u16(103).unwrap(), &hints);
        let mut got = sink.pop().expect("the 103 is queued");
        assert!(sink.pop().is_none(), "100 Continue is not relayed");
        assert_eq!(got.status.as_u16(), 103);
        assert!(got.headers.contains_key("link"));
        got.headers.remove("connection");
        got.headers.remove("x-hop");
        let mut out = Vec::new();
        encode(&got, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
        );
        // The next request: the old relay's pushes go nowhere.
        let _ = sink.relay_for(2, async {}).await;
        relay.push(StatusCode::from_u16(103).unwrap(), &hints);
        assert!(sink.pop().is_none());
        sink.close();
        assert!(current().is_none());
    }
}
