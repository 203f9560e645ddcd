//! Request hedging: when an attempt of an idempotent request has not answered after a
//! delay, another goes to an endpoint not tried yet and the first answer wins (the others
//! are cancelled).
//!
//! A route hedges by its rule's `hedge` field (snapshot `ForwardAction.hedge`): after a fixed
//! `delay`, or after a `percentile` of the route's recent upstream latency, read from its
//! [`LatencyWindow`] once the route has answered [`MIN_SAMPLES`] requests there (before that,
//! no hedge). With `maxExtraAttempts` above 1, a further hedge goes one delay after the
//! previous while no attempt has answered ([`Hedges`]).
//!
//! Routes whose rule says nothing follow the data-plane flag `--hedge ROUTE[=DELAY]`
//! (repeatable; `PARAPET_HEDGE` takes a comma-separated list), where `ROUTE` is a route
//! name (`namespace/apiroute/rule`) or `*`: one hedge, after `DELAY` or the route's p95.
//! The route's own setting always wins over the flag. Both are resolved into a
//! [`HedgePlan`] when a table is installed; per request only a percentile is read (one
//! cached atomic load).
//!
//! Hedges are retries as far as the budget is concerned: each takes a token from the
//! route's retry budget, so hedging adds at most `budgetPercent` to a backend's load.
//! Only requests with a replayable body and an idempotent method (or a route with
//! `nonIdempotent`) are hedged.

mod attempts;
mod latency;

use std::time::Duration;

use parapet_crds::snapshot::{HedgeAfter, HedgePolicy};
use tokio::time::Instant;

pub use attempts::Hedges;
pub use latency::{LatencyWindow, MIN_SAMPLES};

/// The percentile `--hedge ROUTE` (without a delay) hedges after.
pub const FLAG_PERCENTILE: u8 = 95;

/// When to hedge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HedgeDelay {
    /// This percentile (1–99) of the route's recent upstream latency.
    Percentile(u8),
    Fixed(Duration),
}

/// How a route hedges: resolved from its own policy or the flag when a table is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HedgePlan {
    pub delay: HedgeDelay,
    /// Hedges per request at most (at least 1).
    pub max_extra: u32,
}

impl HedgePlan {
    /// The route's own policy when it has one, else what `--hedge` says for it (one hedge).
    pub fn resolve(route: &str, own: Option<&HedgePolicy>, flags: &HedgeConfig) -> Option<Self> {
        match own {
            Some(p) => Some(Self {
                delay: match p.after {
                    HedgeAfter::DelayMs(ms) => HedgeDelay::Fixed(Duration::from_millis(ms)),
                    HedgeAfter::Percentile(q) => {
                        HedgeDelay::Percentile(u8::try_from(q.clamp(1, 99)).unwrap_or(99))
                    }
                },
                max_extra: p.max_extra_attempts.max(1),
            }),
            None => flags.for_route(route).map(|delay| Self {
                delay,
                max_extra: 1,
            }),
        }
    }

    /// Whether the delay follows the route's recent latency (a percentile): only then do the
    /// attempts record it.
    pub fn follows_latency(&self) -> bool {
        matches!(self.delay, HedgeDelay::Percentile(_))
    }

    /// The delay before each hedge now: fixed, or the route's percentile once it has enough
    /// samples (`None` until then: no hedge).
    pub fn delay(&self, latency: &LatencyWindow, now: Instant) -> Option<Duration> {
        match self.delay {
            HedgeDelay::Fixed(d) => Some(d),
            HedgeDelay::Percentile(p) => latency.percentile(p, now),
        }
    }
}

/// The `--hedge` settings: which routes hedge, after what delay, when their rule does not
/// say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HedgeConfig {
    rules: Vec<(String, HedgeDelay)>,
}

impl HedgeConfig {
    /// Parses `ROUTE[=DELAY]` items (`*` for every route).
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut rules = Vec::new();
        for item in items {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (route, delay) = match item.split_once('=') {
                None => (item, HedgeDelay::Percentile(FLAG_PERCENTILE)),
                Some((r, d)) => {
                    let d = parapet_crds::Duration::parse(d.trim())
                        .map_err(|e| format!("--hedge {item}: {e}"))?;
                    (r, HedgeDelay::Fixed(d.as_std()))
                }
            };
            rules.push((route.trim().to_string(), delay));
        }
        Ok(Self { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The delay for `route`, if it hedges: an exact name beats `*`.
    pub fn for_route(&self, route: &str) -> Option<HedgeDelay> {
        self.rules
            .iter()
            .find(|(r, _)| r == route)
            .or_else(|| self.rules.iter().find(|(r, _)| r == "*"))
            .map(|(_, d)| *d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_opt_in_by_name_or_star() {
        let c = HedgeConfig::parse(["default/a/0=50ms", " default/b/0 ", ""]).unwrap();
        assert_eq!(
            c.for_route("default/a/0"),
            Some(HedgeDelay::Fixed(Duration::from_millis(50)))
        );
        assert_eq!(c.for_route("default/b/0"), Some(HedgeDelay::Percentile(95)));
        assert_eq!(c.for_route("default/c/0"), None);
        let all = HedgeConfig::parse(["*=20ms", "default/a/0"]).unwrap();
        assert_eq!(
            all.for_route("default/a/0"),
            Some(HedgeDelay::Percentile(95))
        );
        assert_eq!(
            all.for_route("x"),
            Some(HedgeDelay::Fixed(Duration::from_millis(20)))
        );
        assert!(HedgeConfig::parse(["r=fast"]).is_err());
        assert!(HedgeConfig::default().is_empty());
    }

    #[test]
    fn the_route_own_policy_wins_over_the_flag() {
        let flags = HedgeConfig::parse(["*=20ms"]).unwrap();
        let own = HedgePolicy {
            after: HedgeAfter::Percentile(99),
            max_extra_attempts: 3,
        };
        assert_eq!(
            HedgePlan::resolve("default/a/0", Some(&own), &flags),
            Some(HedgePlan {
                delay: HedgeDelay::Percentile(99),
                max_extra: 3
            })
        );
        let fixed = HedgePolicy {
            after: HedgeAfter::DelayMs(70),
            max_extra_attempts: 2,
        };
        assert_eq!(
            HedgePlan::resolve("default/a/0", Some(&fixed), &HedgeConfig::default()),
            Some(HedgePlan {
                delay: HedgeDelay::Fixed(Duration::from_millis(70)),
                max_extra: 2
            })
        );
        // Routes that say nothing take the flag's one hedge, or none.
        assert_eq!(
            HedgePlan::resolve("default/b/0", None, &flags),
            Some(HedgePlan {
                delay: HedgeDelay::Fixed(Duration::from_millis(20)),
                max_extra: 1
            })
        );
        assert_eq!(
            HedgePlan::resolve("default/b/0", None, &HedgeConfig::default()),
            None
        );
    }

    #[test]
    fn only_a_percentile_follows_latency() {
        let plan = |delay| HedgePlan {
            delay,
            max_extra: 1,
        };
        assert!(plan(HedgeDelay::Percentile(95)).follows_latency());
        assert!(!plan(HedgeDelay::Fixed(Duration::from_millis(20))).follows_latency());
    }

    #[tokio::test(start_paused = true)]
    async fn a_percentile_plan_waits_for_samples_then_follows_them() {
        let plan = HedgePlan {
            delay: HedgeDelay::Percentile(50),
            max_extra: 1,
        };
        let w = LatencyWindow::default();
        assert_eq!(plan.delay(&w, Instant::now()), None, "no samples: no hedge");
        for i in 0..100u64 {
            let ms = if i < 60 { 10 } else { 300 };
            w.record(Duration::from_millis(ms), Instant::now());
        }
        // Once the cached answer has aged: the median of 60 × 10 ms and 40 × 300 ms is
        // 10 ms (within a bucket), where the p95 would be 300 ms.
        tokio::time::advance(latency::REFRESH).await;
        let d = plan.delay(&w, Instant::now()).unwrap();
        assert!(
            d >= Duration::from_millis(10) && d < Duration::from_millis(13),
            "{d:?}"
        );
    }
}
