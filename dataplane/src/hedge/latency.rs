//! A route's recent latency distribution, for "hedge after the p95" (or any percentile):
//! log-spaced buckets of atomic counters over two rotating windows (the current one and the
//! one before), so the quantile follows the last 10–20 s of traffic. Recording is one or two
//! atomic adds; the route's percentile is recomputed at most every [`REFRESH`] and cached in
//! one atomic word with the percentile it is for, so reading it allocates nothing and a
//! route whose percentile changes (a new table) never reads the old one's value.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use tokio::time::Instant;

const BUCKETS: usize = 64;
/// Upper bound of bucket 0.
const FIRST: f64 = 0.000_25;
/// Each bucket's upper bound is this many times the previous one's (~2 minutes at the top).
const GROWTH: f64 = 1.2;
const WINDOW_SECS: u64 = 10;
/// How stale a cached quantile may be.
pub const REFRESH: Duration = Duration::from_millis(250);
/// Samples needed before a quantile is trusted.
pub const MIN_SAMPLES: u64 = 20;

#[derive(Debug)]
struct Window {
    /// Window number plus one; 0: never used.
    tag: AtomicU64,
    buckets: [AtomicU32; BUCKETS],
}

impl Default for Window {
    fn default() -> Self {
        Self {
            tag: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

#[derive(Debug)]
pub struct LatencyWindow {
    epoch: Instant,
    windows: [Window; 2],
    /// The cached percentile: the percentile in the top [`PERCENT_BITS`] bits, its value
    /// in µs below (0: not enough samples); and when it was computed, in ms since the
    /// epoch (`u64::MAX`: never).
    cached: AtomicU64,
    cached_at_ms: AtomicU64,
}

/// Bits of the cached word that say which percentile it holds (1–99 fit in 7).
const PERCENT_BITS: u32 = 7;
const VALUE_BITS: u32 = 64 - PERCENT_BITS;
const VALUE_MASK: u64 = (1 << VALUE_BITS) - 1;

impl Default for LatencyWindow {
    fn default() -> Self {
        Self::new_at(Instant::now())
    }
}

fn bucket_of(secs: f64) -> usize {
    if secs <= FIRST {
        return 0;
    }
    let i = ((secs / FIRST).ln() / GROWTH.ln()).ceil() as usize;
    i.min(BUCKETS - 1)
}

fn upper_bound(i: usize) -> f64 {
    FIRST * GROWTH.powi(i as i32)
}

impl LatencyWindow {
    pub fn new_at(now: Instant) -> Self {
        Self {
            epoch: now,
            windows: Default::default(),
            cached: AtomicU64::new(0),
            cached_at_ms: AtomicU64::new(u64::MAX),
        }
    }

    fn window_no(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs() / WINDOW_SECS
    }

    pub fn record(&self, latency: Duration, now: Instant) {
        let no = self.window_no(now);
        let w = &self.windows[(no % 2) as usize];
        let tag = no + 1;
        let seen = w.tag.load(Ordering::Acquire);
        if seen != tag
            && w.tag
                .compare_exchange(seen, tag, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for b in &w.buckets {
                b.store(0, Ordering::Relaxed);
            }
        }
        w.buckets[bucket_of(latency.as_secs_f64())].fetch_add(1, Ordering::Relaxed);
    }

    /// The `q` quantile over this window and the one before (the bucket's upper bound), or
    /// `None` with fewer than [`MIN_SAMPLES`] samples.
    pub fn quantile(&self, q: f64, now: Instant) -> Option<Duration> {
        let no = self.window_no(now);
        let mut counts = [0u64; BUCKETS];
        for w in &self.windows {
            let tag = w.tag.load(Ordering::Acquire);
            // Never used (0), or older than the previous window.
            if tag == 0 || tag < no {
                continue;
            }
            for (c, b) in counts.iter_mut().zip(&w.buckets) {
                *c += u64::from(b.load(Ordering::Relaxed));
            }
        }
        let total: u64 = counts.iter().sum();
        if total < MIN_SAMPLES {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_secs_f64(upper_bound(i)));
            }
        }
        None
    }

    /// The `percent`th percentile (1–99), cached for [`REFRESH`]; `None` with fewer than
    /// [`MIN_SAMPLES`] samples.
    pub fn percentile(&self, percent: u8, now: Instant) -> Option<Duration> {
        let percent = percent.clamp(1, 99);
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
        let at = self.cached_at_ms.load(Ordering::Acquire);
        if at != u64::MAX && now_ms.saturating_sub(at) < REFRESH.as_millis() as u64 {
            let word = self.cached.load(Ordering::Relaxed);
            if word >> VALUE_BITS == u64::from(percent) {
                let us = word & VALUE_MASK;
                return (us > 0).then(|| Duration::from_micros(us));
            }
        }
        let us = self
            .quantile(f64::from(percent) / 100.0, now)
            .map_or(0, |d| (d.as_micros() as u64).clamp(1, VALUE_MASK));
        self.cached
            .store(u64::from(percent) << VALUE_BITS | us, Ordering::Relaxed);
        self.cached_at_ms.store(now_ms, Ordering::Release);
        (us > 0).then(|| Duration::from_micros(us))
    }

    /// The p95, cached for [`REFRESH`].
    pub fn p95(&self, now: Instant) -> Option<Duration> {
        self.percentile(95, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn buckets_grow_geometrically() {
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(FIRST), 0);
        for ms in [1u64, 7, 50, 300, 2000] {
            let s = ms as f64 / 1000.0;
            let i = bucket_of(s);
            assert!(
                upper_bound(i) >= s && (i == 0 || upper_bound(i - 1) < s),
                "{ms}"
            );
        }
        assert_eq!(bucket_of(1e6), BUCKETS - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn p95_within_a_bucket_of_the_truth() {
        let w = LatencyWindow::default();
        let now = Instant::now();
        assert_eq!(w.p95(now), None, "no samples yet");
        for i in 0..100u64 {
            // 95 fast ones at 10 ms, 5 slow at 400 ms.
            w.record(if i < 95 { 10 * MS } else { 400 * MS }, now);
        }
        let p = w.quantile(0.95, now).unwrap();
        assert!(p >= 10 * MS && p < 13 * MS, "{p:?}");
        let p99 = w.quantile(0.99, now).unwrap();
        assert!(p99 >= 400 * MS && p99 < 480 * MS, "{p99:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn each_percentile_is_read_from_the_same_samples() {
        let w = LatencyWindow::default();
        let now = Instant::now();
        // 1..=100 ms, one sample each: the n-th percentile is about n ms.
        for ms in 1..=100u64 {
            w.record(Duration::from_millis(ms), now);
        }
        for (percent, truth) in [(50u8, 50u32), (90, 90), (95, 95), (99, 99)] {
            let p = w.percentile(percent, now).unwrap();
            // Within one bucket (×1.2) above the truth.
            assert!(
                p >= MS * truth && p <= MS * truth * 6 / 5,
                "p{percent} {p:?}"
            );
        }
        assert!(w.percentile(50, now) < w.percentile(99, now));
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_never_answers_for_another_percentile() {
        let w = LatencyWindow::default();
        for ms in 1..=100u64 {
            w.record(Duration::from_millis(ms), Instant::now());
        }
        let p50 = w.percentile(50, Instant::now()).unwrap();
        // Within REFRESH of the cached p50, a route now asking for its p99 gets the p99.
        let p99 = w.percentile(99, Instant::now()).unwrap();
        assert!(
            p99 >= 99 * MS,
            "{p99:?} is not the p99 (the p50 was {p50:?})"
        );
        // That value is cached for REFRESH, then follows the samples.
        for _ in 0..1000 {
            w.record(500 * MS, Instant::now());
        }
        assert_eq!(w.percentile(99, Instant::now()), Some(p99));
        tokio::time::advance(REFRESH).await;
        assert!(w.percentile(99, Instant::now()).unwrap() >= 500 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn old_samples_leave_after_two_windows_and_the_cache_refreshes() {
        let w = LatencyWindow::default();
        for _ in 0..50 {
            w.record(100 * MS, Instant::now());
        }
        let p = w.p95(Instant::now()).unwrap();
        assert!(p >= 100 * MS && p < 120 * MS);
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..1000 {
            w.record(5 * MS, Instant::now());
        }
        // Cached for REFRESH, then recomputed over both windows.
        tokio::time::advance(REFRESH).await;
        let p = w.p95(Instant::now()).unwrap();
        assert!(p < 7 * MS, "{p:?}");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(w.quantile(0.95, Instant::now()), None);
    }
}
