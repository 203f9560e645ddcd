use std::time::Duration;

use http::HeaderMap;
use parapet_crds::snapshot::{RateLimit, RateLimitKey, RateLimitMode};

use super::{Decision, PodLimit, RateLimiter, client_ip};

const MS: u64 = 1_000_000;

fn limit(requests: u32, period_ms: u64, burst: u32, mode: RateLimitMode) -> PodLimit {
    PodLimit::share(
        &RateLimit {
            requests,
            period_ms,
            burst,
            key: RateLimitKey::Route,
            mode,
            queue_size: 10,
            max_delay_ms: 500,
        },
        1,
    )
}

fn allowed(d: Decision) -> bool {
    matches!(d, Decision::Allow { .. })
}

#[test]
fn burst_then_steady_rate_within_five_percent() {
    // 100 per second, burst 10; a client sending 1000 per second for 10 s.
    let l = RateLimiter::new(limit(100, 1000, 10, RateLimitMode::Reject), 1000);
    let mut ok = 0u32;
    for i in 0..10_000u64 {
        if allowed(l.acquire_at(b"k", i * MS)) {
            ok += 1;
        }
    }
    // Expected: the burst plus 100/s over 10 s.
    let expected = 10.0 + 100.0 * 10.0;
    let err = (f64::from(ok) - expected).abs() / expected;
    println!(
        "allowed {ok} of 10000, expected {expected}, error {:.2}%",
        err * 100.0
    );
    assert!(err <= 0.05, "allowed {ok}, expected {expected}");
}

#[test]
fn burst_is_available_at_once_and_refusal_says_when() {
    let l = RateLimiter::new(limit(10, 1000, 5, RateLimitMode::Reject), 1000);
    for _ in 0..5 {
        assert!(allowed(l.acquire_at(b"k", 0)));
    }
    match l.acquire_at(b"k", 0) {
        Decision::Deny { retry_after } => assert_eq!(retry_after, Duration::from_millis(100)),
        d => panic!("expected a refusal, got {d:?}"),
    }
    // Other keys have their own bucket.
    assert!(allowed(l.acquire_at(b"other", 0)));
    // One token back after 100 ms.
    assert!(allowed(l.acquire_at(b"k", 100 * MS)));
    assert!(!allowed(l.acquire_at(b"k", 100 * MS)));
}

#[test]
fn remaining_counts_down() {
    let l = RateLimiter::new(limit(10, 1000, 3, RateLimitMode::Reject), 1000);
    let rem: Vec<u32> = (0..3)
        .map(|_| match l.acquire_at(b"k", 0) {
            Decision::Allow { remaining, .. } => remaining,
            d => panic!("{d:?}"),
        })
        .collect();
    assert_eq!(rem, [2, 1, 0]);
}

#[test]
fn shape_mode_delays_then_refuses() {
    // 10/s, burst 1, queue 10, max delay 500 ms: 1 at once, 5 queued (100..500 ms), then 429.
    let l = RateLimiter::new(limit(10, 1000, 1, RateLimitMode::Shape), 1000);
    let waits: Vec<Option<Duration>> = (0..8)
        .map(|_| match l.acquire_at(b"k", 0) {
            Decision::Allow { wait, .. } => Some(wait),
            Decision::Deny { .. } => None,
        })
        .collect();
    let ms = |n| Some(Duration::from_millis(n));
    assert_eq!(
        waits,
        [
            ms(0),
            ms(100),
            ms(200),
            ms(300),
            ms(400),
            ms(500),
            None,
            None
        ]
    );
}

#[test]
fn fleet_share_divides_and_rounds_up() {
    let spec = RateLimit {
        requests: 100,
        period_ms: 1000,
        burst: 25,
        key: RateLimitKey::Route,
        mode: RateLimitMode::Reject,
        queue_size: 0,
        max_delay_ms: 0,
    };
    let s = PodLimit::share(&spec, 3);
    assert_eq!((s.requests, s.burst), (34, 9));
    let s = PodLimit::share(&spec, 0);
    assert_eq!((s.requests, s.burst), (100, 25));
    let s = PodLimit::share(&spec, 1000);
    assert_eq!((s.requests, s.burst), (1, 1));
}

#[test]
fn a_million_distinct_keys_stay_bounded() {
    let max_keys = 100_000;
    let l = RateLimiter::new(limit(10, 1000, 10, RateLimitMode::Reject), max_keys);
    let mut key = [0u8; 16];
    for i in 0u64..1_000_000 {
        key[..8].copy_from_slice(&i.to_le_bytes());
        // All within one second: no key is idle, eviction has to make room.
        assert!(allowed(l.acquire_at(&key, i * 1000)));
    }
    let (len, mem) = (l.len(), l.memory_bytes());
    println!(
        "1M distinct keys: {len} held (cap {}), about {} KiB",
        l.capacity(),
        mem / 1024
    );
    assert!(len <= l.capacity());
    // Slots of 33 bytes plus 16-byte keys, with hash-table slack: well under 16 MiB.
    assert!(mem < 16 << 20, "{mem} bytes");
    // Idle keys expire: a second later every bucket is full again and a new key frees them.
    let later = 1_000_000 * 1000 + 2_000 * MS;
    assert!(allowed(l.acquire_at(b"fresh", later)));
    let mut key = [1u8; 16];
    for i in 0u64..(l.capacity() as u64) {
        key[..8].copy_from_slice(&i.to_le_bytes());
        l.acquire_at(&key, later);
    }
    assert!(l.len() <= l.capacity());
}

#[test]
fn forwarded_for_is_trusted_only_for_configured_hops() {
    let peer = "10.0.0.9".parse().unwrap();
    let mut h = HeaderMap::new();
    h.insert("x-forwarded-for", "6.6.6.6, 1.2.3.4".parse().unwrap());
    assert_eq!(client_ip(&h, peer, 0), peer);
    assert_eq!(
        client_ip(&h, peer, 1),
        "1.2.3.4".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(
        client_ip(&h, peer, 2),
        "6.6.6.6".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(client_ip(&h, peer, 3), peer);
    h.insert("x-forwarded-for", "garbage".parse().unwrap());
    assert_eq!(client_ip(&h, peer, 1), peer);
}

#[test]
fn the_bound_holds_under_concurrent_floods() {
    let l = RateLimiter::new(limit(10, 1000, 10, RateLimitMode::Reject), 10_000);
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for t in 0u8..4 {
            let l = &l;
            s.spawn(move || {
                let mut key = [t; 16];
                for i in 0u64..100_000 {
                    key[..8].copy_from_slice(&i.to_le_bytes());
                    // Distinct keys, none idle: every new key is let through.
                    assert!(allowed(l.acquire_at(&key, i * 1000)));
                    // A known key keeps its bucket: its burst runs out.
                    if i % 1000 == 0 {
                        let hot = [0xff, t];
                        for _ in 0..20 {
                            l.acquire_at(&hot, i * 1000);
                        }
                        assert!(!allowed(l.acquire_at(&hot, i * 1000)));
                    }
                }
            });
        }
    });
    println!(
        "400k distinct keys from 4 threads: {} held (cap {}) in {:?}",
        l.len(),
        l.capacity(),
        started.elapsed()
    );
    assert!(l.len() <= l.capacity());
    // The count kept beside the map is the map's.
    assert_eq!(l.held.load(std::sync::atomic::Ordering::Acquire), l.len());
}

fn remaining(d: Decision) -> Option<u32> {
    match d {
        Decision::Allow { remaining, .. } => Some(remaining),
        Decision::Deny { .. } => None,
    }
}

#[test]
fn a_full_limiter_forgets_idle_keys_first_then_those_nearest_to_idle() {
    // 10/s (a token per 100 ms), burst 10, room for 8 keys.
    let l = RateLimiter::new(limit(10, 1000, 10, RateLimitMode::Reject), 8);
    for k in 0u8..8 {
        assert_eq!(remaining(l.acquire_at(&[k], u64::from(k) * MS)), Some(9));
    }
    // Key 0 spends its burst: its TAT is now the furthest from idle.
    for _ in 0..9 {
        l.acquire_at(&[0], 8 * MS);
    }
    assert_eq!(l.len(), 8);
    // Full, nothing idle: a new key takes the room of key 1, the nearest to idle.
    assert_eq!(remaining(l.acquire_at(&[8], 9 * MS)), Some(9));
    assert_eq!(l.len(), 8);
    assert_eq!(
        remaining(l.acquire_at(&[0], 9 * MS)),
        None,
        "key 0 kept its state"
    );
    assert_eq!(
        remaining(l.acquire_at(&[2], 9 * MS)),
        Some(8),
        "key 2 kept its state"
    );
    assert_eq!(
        remaining(l.acquire_at(&[1], 10 * MS)),
        Some(9),
        "key 1 starts afresh"
    );
    // Seconds later every bucket is full again: a new key clears them all.
    assert_eq!(remaining(l.acquire_at(&[9], 5_000 * MS)), Some(9));
    assert_eq!(l.len(), 1);
}
