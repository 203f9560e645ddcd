//! A stored response and how fresh it is.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tokio::time::Instant;

use super::freshness::Lifetime;

pub struct Entry {
    pub status: StatusCode,
    /// Response headers as the origin sent them, hop-by-hop headers removed.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it was received, monotonic (for freshness) and wall clock (for nothing but logs).
    pub stored: Instant,
    pub lifetime: Lifetime,
    /// The Age the origin reported, added to the resident time for the `Age` header.
    pub initial_age: Duration,
    /// Adaptive TTL: the TTL this entry was stored with (Auto heuristic or Fixed).
    pub ttl: Duration,
    /// Fingerprint of the body, so a refresh can tell whether the data changed.
    pub fingerprint: u64,
    /// Set while one background refresh of this entry runs.
    refreshing: AtomicBool,
    pub received_at: SystemTime,
}

/// Where an entry stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Fresh, but within the refresh-ahead window at the end of its life.
    FreshRefreshAhead,
    /// Past freshness, within stale-while-revalidate.
    StaleWhileRevalidate,
    /// Past freshness and stale-while-revalidate; usable only if the origin fails.
    StaleIfError,
    Expired,
}

/// Refresh-ahead starts in the last tenth of an entry's freshness.
const REFRESH_AHEAD_FRACTION: u32 = 10;

impl Entry {
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        lifetime: Lifetime,
        ttl: Duration,
    ) -> Self {
        let initial_age = headers
            .get(header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .map(Duration::from_secs)
            .unwrap_or_default();
        Self {
            status,
            fingerprint: fingerprint(&body),
            headers,
            body,
            stored: Instant::now(),
            lifetime,
            initial_age,
            ttl,
            refreshing: AtomicBool::new(false),
            received_at: SystemTime::now(),
        }
    }

    pub fn freshness(&self, now: Instant, refresh_ahead: bool) -> Freshness {
        let resident = now.saturating_duration_since(self.stored);
        let fresh = self.lifetime.fresh_for;
        if resident < fresh {
            if refresh_ahead && resident >= fresh - fresh / REFRESH_AHEAD_FRACTION {
                return Freshness::FreshRefreshAhead;
            }
            return Freshness::Fresh;
        }
        let stale = resident - fresh;
        if stale < self.lifetime.stale_while_revalidate {
            Freshness::StaleWhileRevalidate
        } else if stale < self.lifetime.stale_if_error {
            Freshness::StaleIfError
        } else {
            Freshness::Expired
        }
    }

    /// How long the store must keep it: freshness plus the longer stale window.
    pub fn keep_for(&self) -> Duration {
        self.lifetime.fresh_for
            + self
                .lifetime
                .stale_while_revalidate
                .max(self.lifetime.stale_if_error)
    }

    /// The `Age` to send: what the origin said plus the time spent here.
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored)
    }

    pub fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(header::ETAG)
    }

    pub fn last_modified(&self) -> Option<&HeaderValue> {
        self.headers.get(header::LAST_MODIFIED)
    }

    /// Claims the right to refresh this entry in the background; false if one runs.
    pub fn try_start_refresh(&self) -> bool {
        !self.refreshing.swap(true, Ordering::AcqRel)
    }

    pub fn end_refresh(&self) {
        self.refreshing.store(false, Ordering::Release);
    }

    /// Bytes the entry costs the memory bound.
    pub fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        u32::try_from(self.body.len() + headers + 256).unwrap_or(u32::MAX)
    }
}

/// FNV-1a over the body: only compares a refresh with what was stored.
pub fn fingerprint(body: &[u8]) -> u64 {
    crate::fnv::fnv1a(body) ^ body.len() as u64
}

/// Adaptive TTL: an unchanged refresh lengthens the TTL by half, a changed one halves it,
/// always within `[min, max]`.
pub fn adapt_ttl(current: Duration, changed: bool, min: Duration, max: Duration) -> Duration {
    let next = if changed {
        current / 2
    } else {
        current + current / 2
    };
    next.clamp(min, max.max(min))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fresh: u64, swr: u64, sie: u64) -> Entry {
        Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(b"x"),
            Lifetime {
                fresh_for: Duration::from_secs(fresh),
                stale_while_revalidate: Duration::from_secs(swr),
                stale_if_error: Duration::from_secs(sie),
            },
            Duration::from_secs(fresh),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_ages_through_its_states() {
        let e = entry(10, 5, 60);
        let at = |s: u64| e.stored + Duration::from_secs(s);
        assert_eq!(e.freshness(at(0), true), Freshness::Fresh);
        assert_eq!(e.freshness(at(8), true), Freshness::Fresh);
        assert_eq!(e.freshness(at(9), true), Freshness::FreshRefreshAhead);
        assert_eq!(e.freshness(at(9), false), Freshness::Fresh);
        assert_eq!(e.freshness(at(12), true), Freshness::StaleWhileRevalidate);
        assert_eq!(e.freshness(at(30), true), Freshness::StaleIfError);
        assert_eq!(e.freshness(at(71), true), Freshness::Expired);
        assert_eq!(e.keep_for(), Duration::from_secs(70));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(e.age(Instant::now()), Duration::from_secs(3));
    }

    #[test]
    fn adaptive_ttl_grows_when_unchanged_and_shrinks_on_change() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let mut ttl = Duration::from_secs(4);
        let mut seen = vec![];
        for _ in 0..10 {
            ttl = adapt_ttl(ttl, false, min, max);
            seen.push(ttl.as_secs());
        }
        assert_eq!(seen, vec![6, 9, 13, 20, 30, 45, 60, 60, 60, 60]);
        for want in [30, 15, 7, 3, 1, 1] {
            ttl = adapt_ttl(ttl, true, min, max);
            assert_eq!(ttl.as_secs(), want);
        }
    }

    #[test]
    fn only_one_refresh_at_a_time() {
        let e = entry(1, 0, 0);
        assert!(e.try_start_refresh());
        assert!(!e.try_start_refresh());
        e.end_refresh();
        assert!(e.try_start_refresh());
    }
}
