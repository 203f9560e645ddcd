//! Request hedging: for routes that opt in, when the first attempt of an idempotent request
//! has not answered after a delay, a second attempt goes to another endpoint and the first
//! answer wins (the other is cancelled).
//!
//! The snapshot has no field for it yet, so routes opt in with a data-plane flag:
//! `--hedge ROUTE[=DELAY]` (repeatable; `PARAPET_HEDGE` takes a comma-separated list),
//! where `ROUTE` is a route name (`namespace/apiroute/rule`) or `*`. Without a delay the
//! route's observed p95 upstream latency is used, once the route has answered
//! [`MIN_SAMPLES`] requests in the [`LatencyWindow`].
//!
//! Hedges are retries as far as the budget is concerned: each takes a token from the
//! route's retry budget, so hedging adds at most `budgetPercent` to a backend's load.
//! Only requests with a replayable body and an idempotent method (or a route with
//! `nonIdempotent`) are hedged.

mod latency;

use std::time::Duration;

pub use latency::{LatencyWindow, MIN_SAMPLES};

/// When to hedge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HedgeDelay {
    /// The route's observed p95.
    P95,
    Fixed(Duration),
}

/// The `--hedge` settings: which routes hedge, after what delay.
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
                None => (item, HedgeDelay::P95),
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
        assert_eq!(c.for_route("default/b/0"), Some(HedgeDelay::P95));
        assert_eq!(c.for_route("default/c/0"), None);
        let all = HedgeConfig::parse(["*=20ms", "default/a/0"]).unwrap();
        assert_eq!(all.for_route("default/a/0"), Some(HedgeDelay::P95));
        assert_eq!(
            all.for_route("x"),
            Some(HedgeDelay::Fixed(Duration::from_millis(20)))
        );
        assert!(HedgeConfig::parse(["r=fast"]).is_err());
        assert!(HedgeConfig::default().is_empty());
    }
}
