//! Circuit breaking per pool (the pool's `circuitBreaker`), as in Envoy: limits that keep
//! an overloaded pool from taking the gateway down with it.
//!
//! - `maxRequests`: requests (attempts, retries and hedges included) in flight to the pool.
//! - `maxPendingRequests`: requests allowed to wait for a free slot when the pool is at its
//!   limit; they wait at most until their deadline. With none allowed (or the queue full),
//!   a request overflows at once.
//! - `maxConnections`: over HTTP/1.1 a connection carries one request at a time, so
//!   connections in use never exceed requests in flight: the limit applies as a cap on
//!   requests in flight (the lower of the two wins). Over HTTP/2 the gateway keeps one
//!   connection per endpoint, below any limit that leaves the pool usable.
//!
//! An overflow is answered `503` with `retry-after`, at once, and counted in
//! `parapet_circuit_breaker_overflows_total{cluster, reason}`.
//!
//! Counters live in [`BreakerState`], shared by every table that has the pool, so a table
//! swap neither resets nor doubles them. The fast path is one compare-and-swap; only
//! waiting requests touch the `Notify`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use parapet_crds::snapshot::{CircuitBreaker, UpstreamProtocol};
use tokio::{sync::Notify, time::Instant};

/// A pool's limits in one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_requests: u32,
    pub max_pending: u32,
}

impl Limits {
    pub const UNLIMITED: Limits = Limits {
        max_requests: u32::MAX,
        max_pending: u32::MAX,
    };

    pub fn of(cb: Option<&CircuitBreaker>, protocol: UpstreamProtocol) -> Self {
        let Some(cb) = cb else {
            return Self::UNLIMITED;
        };
        let mut max_requests = cb.max_requests.unwrap_or(u32::MAX);
        if protocol == UpstreamProtocol::Http1
            && let Some(c) = cb.max_connections
        {
            max_requests = max_requests.min(c);
        }
        Self {
            max_requests,
            max_pending: cb.max_pending_requests.unwrap_or(u32::MAX),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.max_requests == u32::MAX
    }
}

/// Which limit a request ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// At `maxRequests` with no room to wait.
    Requests,
    /// Waited as a pending request until its deadline.
    Pending,
}

impl Overflow {
    pub fn label(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Pending => "pending",
        }
    }
}

#[derive(Debug, Default)]
pub struct BreakerState {
    in_flight: AtomicU32,
    pending: AtomicU32,
    freed: Notify,
}

/// A slot in the pool; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    state: Option<Arc<BreakerState>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(s) = self.state.take() {
            s.in_flight.fetch_sub(1, Ordering::AcqRel);
            s.freed.notify_one();
        }
    }
}

impl BreakerState {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    fn try_take(&self, max: u32) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// A slot for one request, waiting (as a pending request) until `deadline` at most.
    pub async fn enter(
        self: &Arc<Self>,
        limits: Limits,
        deadline: Instant,
    ) -> Result<Permit, Overflow> {
        if limits.is_unlimited() {
            return Ok(Permit { state: None });
        }
        if self.try_take(limits.max_requests) {
            return Ok(self.permit());
        }
        let queued = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limits.max_pending).then_some(n + 1)
            })
            .is_ok();
        if !queued {
            return Err(Overflow::Requests);
        }
        let _leave_queue = PendingGuard(self);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_take(limits.max_requests) {
                return Ok(self.permit());
            }
            tokio::select! {
                _ = &mut freed => {}
                _ = tokio::time::sleep_until(deadline) => return Err(Overflow::Pending),
            }
        }
    }

    fn permit(self: &Arc<Self>) -> Permit {
        Permit {
            state: Some(self.clone()),
        }
    }
}

struct PendingGuard<'a>(&'a BreakerState);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
        // Pass a wake-up on: this waiter may have taken one meant for another.
        self.0.freed.notify_one();
    }
}

/// What `retry-after` says on an overflow.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_requests: u32, max_pending: u32) -> Limits {
        Limits {
            max_requests,
            max_pending,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn over_max_requests_overflows_at_once_without_a_queue() {
        let s = Arc::new(BreakerState::default());
        let far = Instant::now() + Duration::from_secs(60);
        let a = s.enter(limits(2, 0), far).await.unwrap();
        let _b = s.enter(limits(2, 0), far).await.unwrap();
        assert_eq!(
            s.enter(limits(2, 0), far).await.unwrap_err(),
            Overflow::Requests
        );
        drop(a);
        assert!(s.enter(limits(2, 0), far).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn pending_requests_wait_for_a_slot_until_their_deadline() {
        let s = Arc::new(BreakerState::default());
        let l = limits(1, 1);
        let far = Instant::now() + Duration::from_secs(60);
        let first = s.enter(l, far).await.unwrap();
        // One may wait; a second waiter overflows at once.
        let s2 = s.clone();
        let waiter = tokio::spawn(async move { s2.enter(l, far).await.map(|_| Instant::now()) });
        tokio::task::yield_now().await;
        assert_eq!(s.pending(), 1);
        assert_eq!(s.enter(l, far).await.unwrap_err(), Overflow::Requests);
        tokio::time::advance(Duration::from_millis(100)).await;
        let freed_at = Instant::now();
        drop(first);
        let got = waiter.await.unwrap().unwrap();
        assert_eq!(
            got, freed_at,
            "the waiter gets the slot as soon as it is freed"
        );
        assert_eq!(s.pending(), 0);

        // A waiter whose deadline passes overflows as pending.
        let _held = s.enter(l, far).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(50);
        assert_eq!(s.enter(l, soon).await.unwrap_err(), Overflow::Pending);
        assert_eq!(s.pending(), 0);
        assert_eq!(s.in_flight(), 1);
    }

    #[test]
    fn connections_cap_http1_requests() {
        let cb = CircuitBreaker {
            max_connections: Some(5),
            max_pending_requests: None,
            max_requests: Some(10),
        };
        assert_eq!(
            Limits::of(Some(&cb), UpstreamProtocol::Http1).max_requests,
            5
        );
        assert_eq!(
            Limits::of(Some(&cb), UpstreamProtocol::Http2).max_requests,
            10
        );
        assert!(Limits::of(None, UpstreamProtocol::Http1).is_unlimited());
    }
}
