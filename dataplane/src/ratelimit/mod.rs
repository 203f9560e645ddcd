//! The **rate limit** stage (after auth, before admit): GCRA, the token bucket written as
//! one timestamp per key.
//!
//! Each key keeps its *theoretical arrival time* (TAT). A request at `now` is allowed when
//! `max(tat, now) + T - now <= T·burst` (`T` = period / requests), and moves the TAT to
//! that value. That is exactly a bucket of `burst` tokens refilled at `requests / period`,
//! in 8 bytes of state and one compare. **Shape** mode lets a request whose slot is up to
//! `min(maxDelay, queueSize·T)` in the future take the slot and wait for it (a leaky
//! bucket with a queue of `queueSize`); beyond that it is refused like Reject mode.
//!
//! **Concurrency**: the keys live in a `DashMap`, whose sharded locks are held for one
//! lookup or update; a request takes one shard's lock, never a lock all requests share.
//!
//! **Bounded memory**: a key whose TAT is in the past has a full bucket, so forgetting it
//! changes nothing. The map holds at most `max_keys` keys, counted beside it. The request
//! that finds it full makes room: it drops every such idle key and, when a flood of
//! distinct keys leaves it still above 7/8 full, the keys nearest to being idle down to 7/8
//! (so room is made once per `max_keys / 8` new keys at most). Requests that bring a new key
//! while it does are answered as a full bucket would be, without keeping state. So
//! `max_keys` bounds memory whatever the traffic; under such a flood the limit stays exact
//! for the keys that hold state and errs towards letting a request pass for the rest
//! (documented in the README).
//!
//! **Fleet share**: the table's `fleetPods` divides `requests` and `burst` (rounded up), so
//! N pods together enforce the written limit.

#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use dashmap::{DashMap, mapref::entry::Entry};
use http::{HeaderMap, HeaderName, HeaderValue};
use parapet_crds::snapshot::{RateLimit, RateLimitKey, RateLimitMode};
use tokio::time::Instant;

/// Keys kept per route by default (about 80 bytes each with the map's overhead).
pub const DEFAULT_MAX_KEYS: usize = 100_000;
/// Shards of the key map: each a lock of its own, so requests of different keys rarely
/// meet, and making room never holds one long.
const SHARDS: usize = 64;

pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// What a route's limit is per pod, after the fleet share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLimit {
    pub requests: u32,
    pub period: Duration,
    pub burst: u32,
    pub mode: RateLimitMode,
    pub queue_size: u32,
    pub max_delay: Duration,
    pub key: RateLimitKey,
}

impl PodLimit {
    /// This pod's share of a fleet-wide limit: `requests` and `burst` divided by
    /// `fleet_pods` (0 and 1: no division), rounded up so the share is never zero.
    pub fn share(spec: &RateLimit, fleet_pods: u32) -> Self {
        let pods = fleet_pods.max(1);
        Self {
            requests: spec.requests.max(1).div_ceil(pods),
            period: Duration::from_millis(spec.period_ms.max(1)),
            burst: spec.burst.max(1).div_ceil(pods),
            mode: spec.mode,
            queue_size: spec.queue_size,
            max_delay: Duration::from_millis(spec.max_delay_ms),
            key: spec.key.clone(),
        }
    }
}

/// The verdict on one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go on; `wait` is zero in Reject mode and the time to the request's slot in Shape mode.
    Allow {
        wait: Duration,
        remaining: u32,
        reset: Duration,
    },
    /// 429; try again after `retry_after`.
    Deny { retry_after: Duration },
}

/// One route's buckets.
pub struct RateLimiter {
    limit: PodLimit,
    /// Nanoseconds per token.
    interval: u64,
    /// Nanoseconds of burst tolerance (`interval · burst`).
    tolerance: u64,
    /// Nanoseconds a Shape request may wait.
    max_wait: u64,
    epoch: Instant,
    /// TAT in nanoseconds since `epoch`, by key.
    tats: DashMap<Box<[u8]>, u64>,
    /// Keys in `tats` plus those being inserted: never more than `max_keys`.
    held: AtomicUsize,
    max_keys: usize,
    /// Set while a request makes room.
    evicting: AtomicBool,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    pub fn new(limit: PodLimit, max_keys: usize) -> Self {
        let period = u64::try_from(limit.period.as_nanos()).unwrap_or(u64::MAX);
        let interval = (period / u64::from(limit.requests.max(1))).max(1);
        let tolerance = interval.saturating_mul(u64::from(limit.burst.max(1)));
        let max_wait = match limit.mode {
            RateLimitMode::Reject => 0,
            RateLimitMode::Shape => u64::try_from(limit.max_delay.as_nanos())
                .unwrap_or(u64::MAX)
                .min(interval.saturating_mul(u64::from(limit.queue_size))),
        };
        Self {
            limit,
            interval,
            tolerance,
            max_wait,
            epoch: Instant::now(),
            tats: DashMap::with_shard_amount(SHARDS),
            held: AtomicUsize::new(0),
            max_keys: max_keys.max(1),
            evicting: AtomicBool::new(false),
        }
    }

    pub fn limit(&self) -> &PodLimit {
        &self.limit
    }

    /// Keys holding state now.
    pub fn len(&self) -> usize {
        self.tats.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the keyed state takes: table slots plus the keys' own bytes.
    pub fn memory_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Box<[u8]>, u64)>() + 1;
        self.tats.capacity() * slot + self.tats.iter().map(|e| e.key().len()).sum::<usize>()
    }

    /// The most keys this limiter ever holds.
    pub fn capacity(&self) -> usize {
        self.max_keys
    }

    fn now(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.epoch)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
    }

    /// Takes a token for `key`, or says how long until one is free.
    pub fn acquire(&self, key: &[u8]) -> Decision {
        self.acquire_at(key, self.now())
    }

    fn acquire_at(&self, key: &[u8], now: u64) -> Decision {
        // A known key: its shard's lock for one update, no allocation.
        if let Some(mut tat) = self.tats.get_mut(key) {
            return self.take(&mut tat, now);
        }
        // A new key has a full bucket: allowed whether or not there is room to remember it.
        if !self.reserve(now) {
            let mut fresh = now;
            return self.take(&mut fresh, now);
        }
        match self.tats.entry(key.into()) {
            // Another request brought the same key meanwhile.
            Entry::Occupied(mut tat) => {
                self.held.fetch_sub(1, Ordering::AcqRel);
                self.take(tat.get_mut(), now)
            }
            Entry::Vacant(slot) => {
                let mut tat = now;
                let d = self.take(&mut tat, now);
                slot.insert(tat);
                d
            }
        }
    }

    /// Takes a token from the bucket whose TAT is `tat`, moving it on when one is free.
    fn take(&self, tat: &mut u64, now: u64) -> Decision {
        let new_tat = (*tat).max(now).saturating_add(self.interval);
        let ahead = new_tat - now;
        if ahead > self.tolerance.saturating_add(self.max_wait) {
            return Decision::Deny {
                retry_after: Duration::from_nanos(ahead - self.tolerance),
            };
        }
        *tat = new_tat;
        Decision::Allow {
            wait: Duration::from_nanos(ahead.saturating_sub(self.tolerance)),
            remaining: u32::try_from(self.tolerance.saturating_sub(ahead) / self.interval)
                .unwrap_or(u32::MAX),
            reset: Duration::from_nanos(ahead),
        }
    }

    /// Claims room for one more key, making room when the limiter is full; false when it is
    /// full and another request is making room.
    fn reserve(&self, now: u64) -> bool {
        let claim = || {
            self.held
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.max_keys).then_some(n + 1)
                })
                .is_ok()
        };
        claim() || (self.make_room(now) && claim())
    }

    /// Frees room in a full limiter: every idle key (its bucket is full again, so forgetting
    /// it is exact), and when that leaves it above 7/8 full, the keys closest to idle down to
    /// 7/8, so a flood of distinct keys costs amortised O(1) per new key. One request at a
    /// time (false if another is at it). Keys are dropped shard by shard, never holding two
    /// shards' locks, and each key dropped is room for another request at once.
    fn make_room(&self, now: u64) -> bool {
        let Some(_evicting) = Flag::raise(&self.evicting) else {
            return false;
        };
        // Another request may have made room since this one found the limiter full.
        if self.held.load(Ordering::Acquire) < self.max_keys {
            return true;
        }
        self.drop_keys(|tat| tat > now);
        // At least one slot, however small the bound.
        let target = (self.max_keys - self.max_keys / 8).min(self.max_keys - 1);
        if self.tats.len() > target {
            let mut tats: Vec<u64> = self.tats.iter().map(|e| *e.value()).collect();
            if tats.len() > target {
                let cut = tats.len() - target;
                let (_, threshold, _) = tats.select_nth_unstable(cut - 1);
                let threshold = *threshold;
                self.drop_keys(|tat| tat > threshold);
            }
        }
        if self.tats.capacity() > 4 * self.tats.len().max(16) {
            self.tats.shrink_to_fit();
        }
        true
    }

    /// Drops the keys whose TAT `keep` refuses, giving their room back as it goes.
    fn drop_keys(&self, keep: impl Fn(u64) -> bool) {
        self.tats.retain(|_, tat| {
            let kept = keep(*tat);
            if !kept {
                self.held.fetch_sub(1, Ordering::AcqRel);
            }
            kept
        });
    }

    /// The `RateLimit-*` headers for a decision (draft-ietf-httpapi-ratelimit-headers),
    /// plus `Retry-After` on a refusal. Seconds round up.
    pub fn headers(&self, d: &Decision, out: &mut HeaderMap) {
        out.insert(RATELIMIT_LIMIT, HeaderValue::from(self.limit.burst));
        match d {
            Decision::Allow {
                remaining, reset, ..
            } => {
                out.insert(RATELIMIT_REMAINING, HeaderValue::from(*remaining));
                out.insert(RATELIMIT_RESET, HeaderValue::from(ceil_secs(*reset)));
            }
            Decision::Deny { retry_after } => {
                let secs = ceil_secs(*retry_after).max(1);
                out.insert(RATELIMIT_REMAINING, HeaderValue::from(0u32));
                out.insert(RATELIMIT_RESET, HeaderValue::from(secs));
                out.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
            }
        }
    }
}

/// A flag one holder at a time raises, lowered when the holder is dropped (panics included).
struct Flag<'a>(&'a AtomicBool);

impl<'a> Flag<'a> {
    fn raise(flag: &'a AtomicBool) -> Option<Self> {
        (!flag.swap(true, Ordering::AcqRel)).then(|| Self(flag))
    }
}

impl Drop for Flag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_nanos().div_ceil(1_000_000_000) as u64
}

/// The bucket key of a request.
pub fn request_key<'a>(
    key: &RateLimitKey,
    headers: &'a HeaderMap,
    client: IpAddr,
    api_key_id: Option<&'a str>,
    trusted_hops: u32,
) -> std::borrow::Cow<'a, [u8]> {
    use std::borrow::Cow;
    match key {
        RateLimitKey::Route => Cow::Borrowed(b""),
        RateLimitKey::ApiKey => Cow::Borrowed(api_key_id.unwrap_or("").as_bytes()),
        RateLimitKey::Header(h) => {
            Cow::Borrowed(headers.get(h.as_str()).map_or(&b""[..], |v| v.as_bytes()))
        }
        RateLimitKey::ClientIp => Cow::Owned(
            client_ip(headers, client, trusted_hops)
                .to_string()
                .into_bytes(),
        ),
    }
}

/// The client's address: the peer's, or with `trusted_hops` N > 0 the Nth address from the
/// right of `X-Forwarded-For` (the one the outermost trusted proxy saw). A header with fewer
/// addresses, or one that does not parse, did not come through the trusted proxies: the
/// peer's address is used.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted_hops: u32) -> IpAddr {
    if trusted_hops == 0 {
        return peer;
    }
    forwarded_client(headers, trusted_hops).unwrap_or(peer)
}

/// The Nth address from the right of `X-Forwarded-For` (N = `trusted_hops` > 0), or `None`
/// when the header has fewer, that one does not parse, or a line is not text (a line the
/// proxies' own entries might be in is never skipped). Walks from the right without
/// collecting the entries.
pub fn forwarded_client(headers: &HeaderMap, trusted_hops: u32) -> Option<IpAddr> {
    let n = trusted_hops as usize;
    if n == 0 {
        return None;
    }
    let lines = headers.get_all("x-forwarded-for");
    if lines.iter().any(|v| v.to_str().is_err()) {
        return None;
    }
    let mut seen = 0;
    for line in lines.iter().rev() {
        for entry in line.to_str().ok()?.rsplit(',') {
            seen += 1;
            if seen == n {
                return entry.trim().parse().ok();
            }
        }
    }
    None
}

/// Limiters by route name, kept across tables while a route's limit stays the same.
#[derive(Debug, Default)]
pub struct Limiters {
    by_route: Mutex<HashMap<String, Arc<RateLimiter>>>,
}

impl Limiters {
    pub fn for_route(&self, route: &str, limit: PodLimit, max_keys: usize) -> Arc<RateLimiter> {
        let mut map = self.by_route.lock().unwrap_or_else(PoisonError::into_inner);
        match map.get(route) {
            Some(l) if l.limit == limit && l.capacity() == max_keys.max(1) => l.clone(),
            _ => {
                let l = Arc::new(RateLimiter::new(limit, max_keys));
                map.insert(route.to_string(), l.clone());
                l
            }
        }
    }

    /// Forgets routes that are gone or no longer limited.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.by_route
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|k, _| keep(k));
    }
}
