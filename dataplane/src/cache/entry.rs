//! A stored response and how fresh it is.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use tokio::time::Instant;

use super::freshness::{Lifetime, has_validator};

pub struct Entry {
    pub status: StatusCode,
    /// Response headers as the origin sent them, without hop-by-hop fields, `Age` (computed
    /// per answer) and the fields `private="…"`/`no-cache="…"` name.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When it was received, monotonic: the resident time counts from here.
    pub stored: Instant,
    pub lifetime: Lifetime,
    /// Its corrected initial age (RFC 9111 §4.2.3).
    pub initial_age: Duration,
    /// Adaptive TTL: the cache's own freshness this entry was stored with.
    pub ttl: Duration,
    /// How long it is kept once stale and past its stale windows, when it has a validator.
    pub keep_stale: Duration,
    /// Fingerprint of the body, so a refresh can tell whether the data changed.
    pub fingerprint: u64,
    /// Set while one background refresh of this entry runs.
    refreshing: AtomicBool,
    /// When it arrived, wall clock: If-Modified-Since compares with it when the response
    /// had neither Last-Modified nor Date.
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
    /// Usable only after revalidation.
    Expired,
}

/// Refresh-ahead starts in the last tenth of an entry's freshness.
const REFRESH_AHEAD_FRACTION: u32 = 10;

/// The largest Age sent (RFC 9111 §1.2.2).
const MAX_AGE_SECS: u64 = 1 << 31;

impl Entry {
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        lifetime: Lifetime,
        initial_age: Duration,
    ) -> Self {
        Self {
            status,
            fingerprint: fingerprint(&body),
            headers,
            body,
            stored: Instant::now(),
            lifetime,
            initial_age,
            ttl: lifetime.freshness,
            keep_stale: Duration::ZERO,
            refreshing: AtomicBool::new(false),
            received_at: SystemTime::now(),
        }
    }

    /// Keeps it this long for revalidation once stale (only when it has a validator).
    pub fn keep_stale(mut self, keep: Duration) -> Self {
        if has_validator(&self.headers) {
            self.keep_stale = keep;
        }
        self
    }

    /// It was fresh when it arrived: only such entries may be served stale (a response the
    /// origin sent already stale, or with `no-cache`, never is).
    pub fn was_fresh(&self) -> bool {
        self.lifetime.freshness > self.initial_age
    }

    pub fn freshness(&self, now: Instant, refresh_ahead: bool) -> Freshness {
        let age = self.age(now);
        let fresh = self.lifetime.freshness;
        if age < fresh {
            let remaining = fresh - age;
            let life = fresh.saturating_sub(self.initial_age);
            if refresh_ahead && remaining <= life / REFRESH_AHEAD_FRACTION {
                return Freshness::FreshRefreshAhead;
            }
            return Freshness::Fresh;
        }
        if !self.was_fresh() {
            return Freshness::Expired;
        }
        let stale = age - fresh;
        if stale < self.lifetime.stale_while_revalidate {
            Freshness::StaleWhileRevalidate
        } else if stale < self.lifetime.stale_if_error {
            Freshness::StaleIfError
        } else {
            Freshness::Expired
        }
    }

    /// How long the store keeps it from now on: the rest of its freshness, then the longest
    /// of its stale windows and the time it is kept for revalidation.
    pub fn keep_for(&self) -> Duration {
        let windows = if self.was_fresh() {
            self.lifetime
                .stale_while_revalidate
                .max(self.lifetime.stale_if_error)
        } else {
            Duration::ZERO
        };
        self.lifetime.freshness.saturating_sub(self.initial_age) + windows.max(self.keep_stale)
    }

    /// Its current age (§4.2.3): the corrected initial age plus the time spent here.
    pub fn age(&self, now: Instant) -> Duration {
        self.initial_age + now.saturating_duration_since(self.stored)
    }

    /// The `Age` field value to send.
    pub fn age_secs(&self, now: Instant) -> u64 {
        self.age(now).as_secs().min(MAX_AGE_SECS)
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
                freshness: Duration::from_secs(fresh),
                stale_while_revalidate: Duration::from_secs(swr),
                stale_if_error: Duration::from_secs(sie),
                heuristic: false,
            },
            Duration::ZERO,
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

    #[tokio::test(start_paused = true)]
    async fn age_counts_from_the_corrected_initial_age() {
        let mut e = entry(10, 5, 60);
        e.initial_age = Duration::from_secs(4);
        let at = |s: u64| e.stored + Duration::from_secs(s);
        assert_eq!(e.age_secs(at(2)), 6);
        assert_eq!(e.freshness(at(5), false), Freshness::Fresh);
        assert_eq!(e.freshness(at(6), false), Freshness::StaleWhileRevalidate);
        assert_eq!(e.keep_for(), Duration::from_secs(66));
        // Stale on arrival: never served stale, kept only to be revalidated.
        e.initial_age = Duration::from_secs(20);
        assert!(!e.was_fresh());
        assert_eq!(e.freshness(at(0), false), Freshness::Expired);
        assert_eq!(e.keep_for(), Duration::ZERO);
        let mut headers = HeaderMap::new();
        headers.insert(header::ETAG, HeaderValue::from_static("\"v\""));
        e.headers = headers;
        assert_eq!(
            e.keep_stale(Duration::from_secs(600)).keep_for(),
            Duration::from_secs(600)
        );
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
