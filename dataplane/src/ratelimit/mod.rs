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
//! **Bounded memory**: a key whose TAT is in the past has a full bucket, so forgetting it
//! changes nothing. Keys live in shards with a capacity; a full shard first drops every
//! such idle key and, when a flood of distinct keys keeps it full, the key nearest to
//! being idle. So `max_keys` bounds memory whatever the traffic; under such a flood the
//! limit stays exact for the keys that hold state and errs towards letting a request pass
//! for the rest (documented in the README).
//!
//! **Fleet share**: the table's `fleetPods` divides `requests` and `burst` (rounded up), so
//! N pods together enforce the written limit.

#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    hash::BuildHasher,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use http::{HeaderMap, HeaderName, HeaderValue};
use parapet_crds::snapshot::{RateLimit, RateLimitKey, RateLimitMode};
use tokio::time::Instant;

/// Keys kept per route by default (about 80 bytes each with the map's overhead).
pub const DEFAULT_MAX_KEYS: usize = 100_000;
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

struct Shard {
    /// TAT in nanoseconds since the limiter's epoch.
    tats: HashMap<Box<[u8]>, u64>,
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
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    hasher: std::collections::hash_map::RandomState,
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
        let per_shard = max_keys.div_ceil(SHARDS).max(1);
        Self {
            limit,
            interval,
            tolerance,
            max_wait,
            epoch: Instant::now(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        tats: HashMap::new(),
                    })
                })
                .collect(),
            per_shard,
            hasher: Default::default(),
        }
    }

    pub fn limit(&self) -> &PodLimit {
        &self.limit
    }

    /// Keys holding state now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).tats.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the keyed state takes: table slots plus the keys' own bytes.
    pub fn memory_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Box<[u8]>, u64)>() + 1;
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                s.tats.capacity() * slot + s.tats.keys().map(|k| k.len()).sum::<usize>()
            })
            .sum()
    }

    /// The most keys this limiter ever holds.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
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
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let tat = shard.tats.get(key).copied().unwrap_or(now).max(now);
        let new_tat = tat.saturating_add(self.interval);
        let ahead = new_tat - now;
        if ahead > self.tolerance.saturating_add(self.max_wait) {
            return Decision::Deny {
                retry_after: Duration::from_nanos(ahead - self.tolerance),
            };
        }
        match shard.tats.get_mut(key) {
            Some(t) => *t = new_tat,
            None => {
                if shard.tats.len() >= self.per_shard {
                    evict(&mut shard.tats, now, self.per_shard);
                }
                shard.tats.insert(key.into(), new_tat);
            }
        }
        Decision::Allow {
            wait: Duration::from_nanos(ahead.saturating_sub(self.tolerance)),
            remaining: u32::try_from(self.tolerance.saturating_sub(ahead) / self.interval)
                .unwrap_or(u32::MAX),
            reset: Duration::from_nanos(ahead),
        }
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

/// Frees room in a full shard: every idle key (its bucket is full again, so forgetting it
/// is exact), and when that leaves the shard above 7/8 full, the keys closest to idle down
/// to 7/8 — so a flood of distinct keys costs amortised O(1) per new key.
fn evict(tats: &mut HashMap<Box<[u8]>, u64>, now: u64, cap: usize) {
    tats.retain(|_, tat| *tat > now);
    let target = cap - cap / 8;
    if tats.len() > target {
        let mut all: Vec<u64> = tats.values().copied().collect();
        let cut = all.len() - target;
        let (_, threshold, _) = all.select_nth_unstable(cut - 1);
        let threshold = *threshold;
        tats.retain(|_, tat| *tat > threshold);
    }
    if tats.capacity() > 4 * tats.len().max(16) {
        tats.shrink_to_fit();
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
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let n = trusted_hops as usize;
    if hops.len() < n {
        return peer;
    }
    hops[hops.len() - n].parse().unwrap_or(peer)
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
            Some(l)
                if l.limit == limit
                    && l.capacity() == max_keys.div_ceil(SHARDS).max(1) * SHARDS =>
            {
                l.clone()
            }
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
