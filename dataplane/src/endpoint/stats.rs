//! Per-endpoint state read on every pick: requests in flight, a peak-EWMA latency estimate,
//! health. All atomics: readers never wait.
//!
//! Peak-EWMA, as in linkerd2-proxy and Finagle:
//! - Without samples the estimate decays toward zero with time constant τ: `est · e^(−Δ/τ)`,
//!   so an endpoint that was slow once is tried again later.
//! - A sample `rtt` makes the estimate `max(rtt, est·w + rtt·(1−w))` with `w = e^(−Δ/τ)`:
//!   a latency peak shows at once, a recovery shows over about τ.
//! - A new endpoint starts at a default RTT, so it does not look free and get flooded.
//!
//! The estimate and the time it was taken are packed in one `AtomicU64` (an `f32` of
//! nanoseconds and a `u32` of milliseconds since the endpoint was first seen) and updated
//! with one compare-and-swap. The millisecond clock wraps after 49 days; an endpoint with
//! no completed request for that long may look undecayed for up to another τ or so.
//!
//! Health (set by `health`) and ejection (set by `outlier`) live here too. Every change of
//! either bumps a process-wide [`health_epoch`], so views derived from them (a cluster's
//! healthy share, for failover and locality) are recomputed only when something changed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::outlier::EndpointOutlier;

/// Bumped whenever any endpoint's health or ejection changes.
static HEALTH_EPOCH: AtomicU64 = AtomicU64::new(1);

/// A number that changes whenever any endpoint's health or ejection state changes.
pub fn health_epoch() -> u64 {
    HEALTH_EPOCH.load(Ordering::Acquire)
}

/// How the latency estimate behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EwmaConfig {
    /// Time constant τ of the decay.
    pub decay: Duration,
    /// Estimate of an endpoint that has not answered yet.
    pub default_rtt: Duration,
}

impl Default for EwmaConfig {
    /// linkerd2-proxy's defaults: τ = 10 s, 30 ms for a new endpoint.
    fn default() -> Self {
        Self {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
        }
    }
}

/// One endpoint's live state; shared by every table that has the endpoint (see
/// [`EndpointRegistry`](super::EndpointRegistry)).
#[derive(Debug)]
pub struct EndpointStats {
    in_flight: AtomicUsize,
    /// `f32` estimate in nanoseconds (high half), update time in ms since `epoch` (low half).
    rtt: AtomicU64,
    epoch: Instant,
    decay_ns: f64,
    healthy: AtomicBool,
    ejected: AtomicBool,
    /// Passive outlier detection's counters and ejection timer.
    pub outlier: EndpointOutlier,
}

impl Default for EndpointStats {
    fn default() -> Self {
        Self::new(EwmaConfig::default())
    }
}

impl EndpointStats {
    pub fn new(config: EwmaConfig) -> Self {
        Self::new_at(config, Instant::now())
    }

    /// As [`new`](Self::new), with the endpoint first seen at `now`.
    pub fn new_at(config: EwmaConfig, now: Instant) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            rtt: AtomicU64::new(pack(config.default_rtt.as_nanos() as f32, 0)),
            epoch: now,
            decay_ns: (config.decay.as_nanos() as f64).max(1.0),
            healthy: AtomicBool::new(true),
            ejected: AtomicBool::new(false),
            outlier: EndpointOutlier::default(),
        }
    }

    /// Counts a request in flight until the returned guard is finished or dropped.
    pub fn start(self: &Arc<Self>) -> RequestGuard {
        self.start_at(Instant::now(), true)
    }

    /// [`start`](Self::start) with the clock already read (one read less per request).
    /// `sample`: whether the request's latency goes into the estimate, which only
    /// LeastRequest reads (sampling it costs two clock subtractions and an `exp`).
    pub fn start_at(self: &Arc<Self>, now: Instant, sample: bool) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            stats: Arc::clone(self),
            started: now,
            record: sample,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency estimate now.
    pub fn rtt_estimate(&self) -> Duration {
        self.rtt_estimate_at(Instant::now())
    }

    pub fn rtt_estimate_at(&self, now: Instant) -> Duration {
        Duration::from_nanos(self.estimate_ns(now) as u64)
    }

    /// The cost P2C compares: latency estimate (ns, at least 1) × (requests in flight + 1).
    pub fn load(&self) -> f64 {
        self.load_at(Instant::now())
    }

    pub fn load_at(&self, now: Instant) -> f64 {
        // The floor keeps requests in flight counting once an idle estimate reaches zero.
        self.estimate_ns(now).max(1.0) * (self.in_flight() as f64 + 1.0)
    }

    /// Records one request's latency, taken at `now`.
    pub fn observe_at(&self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        let now_ms = self.ms(now);
        let _ = self
            .rtt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |packed| {
                let (est, at) = unpack(packed);
                // A negative age: another thread stored a later sample meanwhile.
                let age_ms = f64::from(now_ms.wrapping_sub(at) as i32).max(0.0);
                let w = (-age_ms * 1e6 / self.decay_ns).exp();
                let next = rtt.max(f64::from(est) * w + rtt * (1.0 - w));
                let at = if now_ms.wrapping_sub(at) as i32 >= 0 {
                    now_ms
                } else {
                    at
                };
                Some(pack(next as f32, at))
            });
    }

    pub fn observe(&self, rtt: Duration) {
        self.observe_at(rtt, Instant::now());
    }

    /// Set by active health checks; `true` until they say otherwise.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, healthy: bool) {
        if self.healthy.swap(healthy, Ordering::AcqRel) != healthy {
            HEALTH_EPOCH.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Set by outlier detection while the endpoint is ejected.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    pub fn set_ejected(&self, ejected: bool) {
        if self.ejected.swap(ejected, Ordering::AcqRel) != ejected {
            HEALTH_EPOCH.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Healthy and not ejected: what counts toward a cluster's healthy share.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }

    /// Whether a request may be sent here at `now`: available, or healthy and ejected
    /// with the ejection over and no probe in flight (the next request is the probe that
    /// decides; see `outlier`).
    pub fn is_candidate(&self, now: Instant) -> bool {
        self.is_healthy() && (!self.is_ejected() || self.outlier.probe_ready(self.ms_at(now)))
    }

    /// Milliseconds between when the endpoint was first seen and `now` (not wrapping).
    pub fn ms_at(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn estimate_ns(&self, now: Instant) -> f64 {
        let (est, at) = unpack(self.rtt.load(Ordering::Acquire));
        let age_ms = f64::from(self.ms(now).wrapping_sub(at) as i32).max(0.0);
        f64::from(est) * (-age_ms * 1e6 / self.decay_ns).exp()
    }

    /// Milliseconds since `epoch`, wrapping.
    fn ms(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_millis() as u32
    }
}

fn pack(est_ns: f32, at_ms: u32) -> u64 {
    (u64::from(est_ns.to_bits()) << 32) | u64::from(at_ms)
}

fn unpack(packed: u64) -> (f32, u32) {
    (f32::from_bits((packed >> 32) as u32), packed as u32)
}

/// A request in flight to an endpoint. Finishing or dropping it ends the request and
/// records its latency; [`cancel`](Self::cancel) ends it without a sample.
#[derive(Debug)]
#[must_use = "dropping the guard ends the request at once"]
pub struct RequestGuard {
    stats: Arc<EndpointStats>,
    started: Instant,
    record: bool,
}

impl RequestGuard {
    /// Ends the request and records how long it took.
    pub fn finish(self) {}

    /// Ends the request at `now` (the clock already read) and records how long it took,
    /// if it was started to be sampled.
    pub fn finish_at(mut self, now: Instant) {
        if std::mem::take(&mut self.record) {
            self.stats
                .observe_at(now.saturating_duration_since(self.started), now);
        }
    }

    /// Ends the request without a latency sample: for failures that say nothing about the
    /// endpoint's speed (a fast connection refusal must not make it look fast).
    pub fn cancel(mut self) {
        self.record = false;
    }

    pub fn stats(&self) -> &Arc<EndpointStats> {
        &self.stats
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.record {
            let now = Instant::now();
            self.stats
                .observe_at(now.saturating_duration_since(self.started), now);
        }
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn stats(t0: Instant) -> EndpointStats {
        EndpointStats::new_at(EwmaConfig::default(), t0)
    }

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    #[test]
    fn new_endpoint_starts_at_default_rtt() {
        let t0 = Instant::now();
        let s = stats(t0);
        assert_eq!(s.rtt_estimate_at(t0), 30 * MS);
        assert_eq!(s.load_at(t0), 30e6);
        assert!(s.is_healthy() && !s.is_ejected() && s.is_available());
    }

    #[test]
    fn a_peak_shows_at_once() {
        let t0 = Instant::now();
        let s = stats(t0);
        s.observe_at(500 * MS, t0 + 10 * MS);
        assert!((ms(s.rtt_estimate_at(t0 + 10 * MS)) - 500.0).abs() < 0.01);
    }

    #[test]
    fn recovery_shows_over_the_time_constant() {
        let t0 = Instant::now();
        let s = stats(t0);
        s.observe_at(500 * MS, t0);
        // One sample of 10 ms after τ: e^-1 of the way from the peak... toward 10 ms.
        s.observe_at(10 * MS, t0 + Duration::from_secs(10));
        let want = 500.0 * (-1f64).exp() + 10.0 * (1.0 - (-1f64).exp());
        let got = ms(s.rtt_estimate_at(t0 + Duration::from_secs(10)));
        assert!((got - want).abs() < 0.01, "{got} vs {want}");
        // Samples within the same millisecond barely move it.
        s.observe_at(10 * MS, t0 + Duration::from_secs(10));
        assert!((ms(s.rtt_estimate_at(t0 + Duration::from_secs(10))) - want).abs() < 0.01);
    }

    #[test]
    fn idle_estimate_decays_toward_zero() {
        let t0 = Instant::now();
        let s = stats(t0);
        s.observe_at(100 * MS, t0);
        let later = ms(s.rtt_estimate_at(t0 + Duration::from_secs(10)));
        assert!((later - 100.0 * (-1f64).exp()).abs() < 0.01, "{later}");
        assert!(s.rtt_estimate_at(t0 + Duration::from_secs(600)) < Duration::from_micros(1));
        // Requests in flight still count once the estimate is gone.
        let s = Arc::new(s);
        let _g = s.start();
        assert_eq!(s.load_at(t0 + Duration::from_secs(3600)), 2.0);
    }

    #[test]
    fn guard_counts_in_flight_and_records_on_finish_or_drop() {
        let s = Arc::new(EndpointStats::default());
        let a = s.start();
        let b = s.start();
        let c = s.start();
        assert_eq!(s.in_flight(), 3);
        a.finish();
        drop(b);
        c.cancel();
        assert_eq!(s.in_flight(), 0);
        // Two near-instant samples after the 30 ms default: the estimate came down a bit
        // or stayed, never up.
        assert!(s.rtt_estimate() <= 30 * MS);
    }

    #[test]
    fn unsampled_guard_counts_in_flight_but_records_nothing() {
        let t0 = Instant::now();
        let s = Arc::new(stats(t0));
        let before = s.rtt.load(Ordering::Relaxed);
        let a = s.start_at(t0, false);
        let b = s.start_at(t0, false);
        assert_eq!(s.in_flight(), 2);
        a.finish_at(t0 + Duration::from_secs(1));
        drop(b);
        assert_eq!(s.in_flight(), 0);
        assert_eq!(s.rtt.load(Ordering::Relaxed), before);
        // A sampled one does move it.
        s.start_at(t0, true).finish_at(t0 + Duration::from_secs(1));
        assert_ne!(s.rtt.load(Ordering::Relaxed), before);
    }

    #[test]
    fn cancel_records_no_sample() {
        let t0 = Instant::now();
        let s = Arc::new(stats(t0));
        s.start().cancel();
        // Unchanged but for decay since t0.
        let (est, at) = unpack(s.rtt.load(Ordering::Relaxed));
        assert_eq!((est, at), (30e6, 0));
    }

    #[test]
    fn load_grows_with_requests_in_flight() {
        let s = Arc::new(EndpointStats::default());
        let now = Instant::now();
        let idle = s.load_at(now);
        let guards: Vec<_> = (0..3).map(|_| s.start()).collect();
        assert_eq!(s.load_at(now), idle * 4.0);
        drop(guards);
    }

    #[test]
    fn stale_writer_does_not_move_the_clock_back() {
        let t0 = Instant::now();
        let s = stats(t0);
        s.observe_at(10 * MS, t0 + 2000 * MS);
        s.observe_at(10 * MS, t0 + 1000 * MS);
        assert_eq!(unpack(s.rtt.load(Ordering::Relaxed)).1, 2000);
    }
}
