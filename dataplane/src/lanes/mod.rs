//! Fast and slow lanes: keep one route's stalled backend from taking the gateway's
//! capacity from every other route.
//!
//! The proxy admits at most `--max-in-flight` requests at once. Inside that:
//! - **Route bulkheads**: one route has at most its rule's `lanes.maxInFlight` requests in
//!   flight, or `--route-max-in-flight` when the rule does not say.
//! - **Lanes**: each route's latency (to response headers, timeouts included) is tracked as
//!   an exponentially weighted average. A route whose average passes its rule's
//!   `lanes.slowThreshold` (or `--slow-lane-threshold`) moves to the **slow lane**, which
//!   may hold only `--slow-lane-percent` of the capacity; it moves back once the average
//!   falls below half the threshold. Fast routes may use all the capacity the slow lane
//!   does not hold.
//!
//! So a backend that hangs fills at most its route's bulkhead, then (as its timeouts
//! arrive) at most the slow lane, and everything else keeps the rest. A refused request is
//! answered `503` with `retry-after` at once, counted in
//! `parapet_rejected_requests_total{reason}` (`route_bulkhead`, `slow_lane_full`,
//! `overloaded`).
//!
//! Everything is atomics; the counters are the exported gauges themselves. A route's own
//! limits live in its [`RouteLane`] (which outlives tables) and are set when a table is
//! installed ([`RouteLane::configure`]), so admission reads them with one relaxed load.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

use crate::metrics::{LaneLabel, Metrics, RouteMetrics};

/// The proxy-wide settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaneConfig {
    /// Requests in flight through the whole proxy.
    pub capacity: u32,
    /// The slow lane's share of `capacity`, in percent.
    pub slow_percent: u32,
}

impl Default for LaneConfig {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            slow_percent: 25,
        }
    }
}

/// One route's settings: its rule's `lanes`, each field defaulting to the flags'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteLaneSettings {
    /// Requests in flight for the route (its bulkhead), at least 1.
    pub max_in_flight: u32,
    /// Average latency above which the route is slow.
    pub slow_threshold: Duration,
}

impl Default for RouteLaneSettings {
    fn default() -> Self {
        Self {
            max_in_flight: 5_000,
            slow_threshold: Duration::from_secs(1),
        }
    }
}

impl RouteLaneSettings {
    /// The rule's own settings where it has them, these (the flags') elsewhere.
    pub fn with_rule(self, own: Option<&parapet_crds::snapshot::RouteLanes>) -> Self {
        let Some(own) = own else { return self };
        Self {
            max_in_flight: own.max_in_flight.unwrap_or(self.max_in_flight).max(1),
            slow_threshold: own
                .slow_threshold_ms
                .filter(|ms| *ms > 0)
                .map_or(self.slow_threshold, Duration::from_millis),
        }
    }
}

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    RouteBulkhead,
    SlowLaneFull,
    Overloaded,
}

impl Rejected {
    pub fn label(self) -> &'static str {
        match self {
            Self::RouteBulkhead => "route_bulkhead",
            Self::SlowLaneFull => "slow_lane_full",
            Self::Overloaded => "overloaded",
        }
    }
}

/// The proxy-wide lanes.
pub struct Lanes {
    config: LaneConfig,
    slow_capacity: i64,
    fast: Gauge,
    slow: Gauge,
}

/// Weight of a new sample in a route's average.
const ALPHA: f64 = 0.1;

/// One route's lane state; outlives tables (see `snapshot::LiveState`).
#[derive(Debug)]
pub struct RouteLane {
    in_flight: Gauge,
    slow_gauge: Gauge,
    /// Average latency in seconds (`f64` bits); starts at 0.
    average: AtomicU64,
    slow: AtomicBool,
    /// The route's bulkhead ([`RouteLaneSettings::max_in_flight`]).
    limit: AtomicU32,
    /// Its slow threshold in seconds (`f64` bits).
    threshold: AtomicU64,
}

impl RouteLane {
    pub fn new(metrics: &RouteMetrics) -> Self {
        let defaults = RouteLaneSettings::default();
        Self {
            in_flight: metrics.in_flight.clone(),
            slow_gauge: metrics.slow.clone(),
            average: AtomicU64::new(0f64.to_bits()),
            slow: AtomicBool::new(false),
            limit: AtomicU32::new(defaults.max_in_flight),
            threshold: AtomicU64::new(defaults.slow_threshold.as_secs_f64().to_bits()),
        }
    }

    /// Takes the route's settings from the table being installed; requests in flight keep
    /// their slots, new ones meet the new limit.
    pub fn configure(&self, settings: RouteLaneSettings) {
        self.limit
            .store(settings.max_in_flight.max(1), Ordering::Relaxed);
        self.threshold.store(
            settings.slow_threshold.as_secs_f64().to_bits(),
            Ordering::Relaxed,
        );
    }

    /// The settings in force.
    pub fn settings(&self) -> RouteLaneSettings {
        RouteLaneSettings {
            max_in_flight: self.limit.load(Ordering::Relaxed),
            slow_threshold: Duration::from_secs_f64(f64::from_bits(
                self.threshold.load(Ordering::Relaxed),
            )),
        }
    }

    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Relaxed)
    }

    pub fn average(&self) -> Duration {
        Duration::from_secs_f64(f64::from_bits(self.average.load(Ordering::Relaxed)))
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// Adds one latency sample; moves the route between lanes (with hysteresis).
    pub fn observe(&self, latency: Duration) {
        let t = f64::from_bits(self.threshold.load(Ordering::Relaxed));
        // One very slow request should not flip a fast route: clamp samples.
        let sample = latency.as_secs_f64().min(t * 2.0);
        let prev = self
            .average
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                let avg = f64::from_bits(bits);
                Some((avg + ALPHA * (sample - avg)).to_bits())
            })
            .unwrap_or_else(|b| b);
        let avg = f64::from_bits(prev) + ALPHA * (sample - f64::from_bits(prev));
        if !self.is_slow() && avg > t {
            self.slow.store(true, Ordering::Relaxed);
            self.slow_gauge.set(1);
            tracing::debug!(average_ms = avg * 1e3, "route moved to the slow lane");
        } else if self.is_slow() && avg < t / 2.0 {
            self.slow.store(false, Ordering::Relaxed);
            self.slow_gauge.set(0);
            tracing::debug!(average_ms = avg * 1e3, "route moved back to the fast lane");
        }
    }
}

impl Lanes {
    pub fn new(config: LaneConfig, metrics: &Metrics) -> Arc<Self> {
        let gauge = |lane| {
            metrics
                .ha
                .lane_in_flight
                .get_or_create(&LaneLabel { lane })
                .clone()
        };
        let slow_capacity =
            (i64::from(config.capacity) * i64::from(config.slow_percent.min(100)) / 100).max(1);
        metrics
            .ha
            .lane_capacity
            .get_or_create(&LaneLabel { lane: "fast" })
            .set(i64::from(config.capacity));
        metrics
            .ha
            .lane_capacity
            .get_or_create(&LaneLabel { lane: "slow" })
            .set(slow_capacity);
        Arc::new(Self {
            config,
            slow_capacity,
            fast: gauge("fast"),
            slow: gauge("slow"),
        })
    }

    pub fn config(&self) -> &LaneConfig {
        &self.config
    }

    /// Admits one request of `route`, or says why not.
    pub fn admit(self: &Arc<Self>, route: &Arc<RouteLane>) -> Result<LaneGuard, Rejected> {
        self.admit_at(route, Instant::now())
    }

    /// [`admit`](Self::admit) for a request that arrived at `now` (the clock already read).
    pub fn admit_at(
        self: &Arc<Self>,
        route: &Arc<RouteLane>,
        now: Instant,
    ) -> Result<LaneGuard, Rejected> {
        let capacity = i64::from(self.config.capacity);
        if route.in_flight.inc() >= i64::from(route.limit.load(Ordering::Relaxed)) {
            route.in_flight.dec();
            return Err(Rejected::RouteBulkhead);
        }
        let slow = route.is_slow();
        let verdict = if slow {
            let s = self.slow.inc();
            if s >= self.slow_capacity {
                Err(Rejected::SlowLaneFull)
            } else if s + self.fast.get() >= capacity {
                Err(Rejected::Overloaded)
            } else {
                Ok(())
            }
        } else {
            let f = self.fast.inc();
            if f + self.slow.get() >= capacity {
                Err(Rejected::Overloaded)
            } else {
                Ok(())
            }
        };
        let mut guard = LaneGuard {
            lanes: self.clone(),
            route: route.clone(),
            slow,
            started: now,
            record: false,
        };
        // On refusal the guard is dropped here: it gives the slots back without a sample.
        verdict?;
        guard.record = true;
        Ok(guard)
    }
}

/// A request admitted to a lane. Dropping it frees the slots and records how long the
/// request took (to its response head).
pub struct LaneGuard {
    lanes: Arc<Lanes>,
    route: Arc<RouteLane>,
    slow: bool,
    started: Instant,
    record: bool,
}

impl LaneGuard {
    pub fn is_slow(&self) -> bool {
        self.slow
    }

    /// Ends the request at `now` (the clock already read): frees the slots and records how
    /// long it took, as dropping the guard does.
    pub fn finish_at(mut self, now: Instant) {
        if self.record {
            self.record = false;
            self.route
                .observe(now.saturating_duration_since(self.started));
        }
    }
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        if self.slow {
            self.lanes.slow.dec();
        } else {
            self.lanes.fast.dec();
        }
        self.route.in_flight.dec();
        if self.record {
            self.route.observe(self.started.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(config: LaneConfig) -> (Arc<Lanes>, Arc<RouteLane>, Arc<RouteLane>) {
        let m = Metrics::new();
        let lanes = Lanes::new(config, &m);
        let route = |name| {
            let r = Arc::new(RouteLane::new(&RouteMetrics::new(&m, name)));
            r.configure(route_defaults());
            r
        };
        (lanes, route("a"), route("b"))
    }

    fn config() -> LaneConfig {
        LaneConfig {
            capacity: 10,
            slow_percent: 20,
        }
    }

    /// What the flags give routes whose rule says nothing, in these tests.
    fn route_defaults() -> RouteLaneSettings {
        RouteLaneSettings {
            max_in_flight: 6,
            slow_threshold: Duration::from_millis(100),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_fills_only_its_bulkhead() {
        let (lanes, a, b) = setup(config());
        let held: Vec<LaneGuard> = (0..6).map(|_| lanes.admit(&a).unwrap()).collect();
        assert_eq!(lanes.admit(&a).err(), Some(Rejected::RouteBulkhead));
        // The other route still has the rest of the capacity.
        let others: Vec<LaneGuard> = (0..4).map(|_| lanes.admit(&b).unwrap()).collect();
        assert_eq!(lanes.admit(&b).err(), Some(Rejected::Overloaded));
        drop(held);
        drop(others);
        assert_eq!(a.in_flight(), 0);
        assert_eq!(lanes.fast.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_route_moves_to_the_slow_lane_and_back() {
        let (lanes, a, b) = setup(config());
        for _ in 0..30 {
            let g = lanes.admit(&a).unwrap();
            tokio::time::advance(Duration::from_millis(500)).await;
            drop(g);
        }
        assert!(a.is_slow(), "average {:?}", a.average());
        // The slow lane holds 20% of 10: two requests.
        let held: Vec<LaneGuard> = (0..2).map(|_| lanes.admit(&a).unwrap()).collect();
        assert!(held.iter().all(LaneGuard::is_slow));
        assert_eq!(lanes.admit(&a).err(), Some(Rejected::SlowLaneFull));
        // Fast routes keep the other eight.
        let fast: Vec<LaneGuard> = (0..6).map(|_| lanes.admit(&b).unwrap()).collect();
        assert!(fast.iter().all(|g| !g.is_slow()));
        drop(fast);
        drop(held);
        // Quick answers bring it back below half the threshold.
        for _ in 0..40 {
            let g = lanes.admit(&a).unwrap();
            tokio::time::advance(Duration::from_millis(5)).await;
            drop(g);
        }
        assert!(!a.is_slow(), "average {:?}", a.average());
    }

    #[tokio::test(start_paused = true)]
    async fn one_outlier_does_not_make_a_fast_route_slow() {
        let (lanes, a, _) = setup(config());
        let g = lanes.admit(&a).unwrap();
        tokio::time::advance(Duration::from_secs(30)).await;
        drop(g);
        assert!(!a.is_slow());
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_limit_of_its_own_holds_while_another_keeps_the_default() {
        let (lanes, a, b) = setup(config());
        let own = parapet_crds::snapshot::RouteLanes {
            max_in_flight: Some(2),
            slow_threshold_ms: None,
        };
        a.configure(route_defaults().with_rule(Some(&own)));
        let held: Vec<LaneGuard> = (0..2).map(|_| lanes.admit(&a).unwrap()).collect();
        assert_eq!(lanes.admit(&a).err(), Some(Rejected::RouteBulkhead));
        // The other route still has the default bulkhead of 6.
        let others: Vec<LaneGuard> = (0..6).map(|_| lanes.admit(&b).unwrap()).collect();
        assert_eq!(lanes.admit(&b).err(), Some(Rejected::RouteBulkhead));
        drop(others);
        // A new table raises the limit: the route takes more at once.
        a.configure(route_defaults());
        let more: Vec<LaneGuard> = (0..4).map(|_| lanes.admit(&a).unwrap()).collect();
        assert_eq!(lanes.admit(&a).err(), Some(Rejected::RouteBulkhead));
        drop((held, more));
        assert_eq!(a.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_slow_threshold_of_its_own_decides_its_lane() {
        let (lanes, a, b) = setup(config());
        let own = parapet_crds::snapshot::RouteLanes {
            max_in_flight: None,
            slow_threshold_ms: Some(1000),
        };
        a.configure(route_defaults().with_rule(Some(&own)));
        assert_eq!(
            a.settings().max_in_flight,
            6,
            "unset fields keep the default"
        );
        // Both answer in 300 ms: above the default 100 ms, below a's own 1 s.
        for _ in 0..30 {
            let (ga, gb) = (lanes.admit(&a).unwrap(), lanes.admit(&b).unwrap());
            tokio::time::advance(Duration::from_millis(300)).await;
            drop((ga, gb));
        }
        assert!(!a.is_slow(), "a: average {:?}", a.average());
        assert!(b.is_slow(), "b: average {:?}", b.average());
    }

    #[test]
    fn rule_settings_fall_back_field_by_field() {
        let flags = RouteLaneSettings {
            max_in_flight: 50,
            slow_threshold: Duration::from_millis(700),
        };
        assert_eq!(flags.with_rule(None), flags);
        let own = |max, ms| parapet_crds::snapshot::RouteLanes {
            max_in_flight: max,
            slow_threshold_ms: ms,
        };
        assert_eq!(
            flags.with_rule(Some(&own(Some(3), None))),
            RouteLaneSettings {
                max_in_flight: 3,
                slow_threshold: Duration::from_millis(700)
            }
        );
        assert_eq!(
            flags.with_rule(Some(&own(None, Some(200)))),
            RouteLaneSettings {
                max_in_flight: 50,
                slow_threshold: Duration::from_millis(200)
            }
        );
        // Values a valid table never holds still leave a usable lane.
        assert_eq!(
            flags.with_rule(Some(&own(Some(0), Some(0)))).max_in_flight,
            1
        );
    }
}
