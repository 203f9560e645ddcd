//! Live state of pools and routes that outlives a table, as `EndpointRegistry` does for
//! endpoints: breaker counters and the ejection lock per pool; the retry budget, lane and
//! latency window per route; JWT key sets by URL. Looked up by name when a table is built,
//! never per request.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
};

use parapet_crds::snapshot::{JwksSource, RouteAction, Table};

use crate::{
    breaker::BreakerState,
    hedge::LatencyWindow,
    jwt::{JwksRegistry, JwtMetrics},
    lanes::RouteLane,
    metrics::RouteMetrics,
    ratelimit::Limiters,
    retry::Budget,
};

/// A pool's state across tables.
#[derive(Debug, Default)]
pub struct ClusterLive {
    pub breaker: Arc<BreakerState>,
    pub eject_lock: Arc<Mutex<()>>,
}

/// A route's state across tables.
#[derive(Debug)]
pub struct RouteLive {
    pub budget: Budget,
    pub lane: Arc<RouteLane>,
    pub latency: LatencyWindow,
}

#[derive(Debug)]
pub struct LiveState {
    clusters: Mutex<HashMap<String, Arc<ClusterLive>>>,
    routes: Mutex<HashMap<String, Arc<RouteLive>>>,
    /// Rate-limit buckets by route, kept while a route's limit is unchanged.
    pub limiters: Limiters,
    /// JWT providers' key sets by JWKS URL: a new table does not fetch them again.
    pub jwks: Arc<JwksRegistry>,
}

impl Default for LiveState {
    fn default() -> Self {
        Self::new(JwtMetrics::default())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LiveState {
    /// Key-set fetches counted in `jwt`.
    pub fn new(jwt: JwtMetrics) -> Self {
        Self {
            clusters: Mutex::default(),
            routes: Mutex::default(),
            limiters: Limiters::default(),
            jwks: JwksRegistry::new(jwt),
        }
    }

    pub fn cluster(&self, name: &str) -> Arc<ClusterLive> {
        lock(&self.clusters)
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The route's state, created with `metrics`' gauges on first sight; the budget takes
    /// the route's current limits.
    pub fn route(
        &self,
        name: &str,
        metrics: &RouteMetrics,
        budget_percent: u32,
        budget_min_per_second: u32,
    ) -> Arc<RouteLive> {
        let live = lock(&self.routes)
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(RouteLive {
                    budget: Budget::new(budget_percent, budget_min_per_second),
                    lane: Arc::new(RouteLane::new(metrics)),
                    latency: LatencyWindow::default(),
                })
            })
            .clone();
        live.budget.configure(budget_percent, budget_min_per_second);
        live
    }

    /// Forgets pools and routes `table` no longer has.
    pub fn retain_table(&self, table: &Table) {
        let clusters: HashSet<&str> = table.clusters.iter().map(|c| c.name.as_str()).collect();
        lock(&self.clusters).retain(|k, _| clusters.contains(k.as_str()));
        let routes: HashSet<&str> = table
            .all_virtual_hosts()
            .flat_map(|v| v.routes.iter().map(|r| r.name.as_str()))
            .collect();
        lock(&self.routes).retain(|k, _| routes.contains(k.as_str()));
        let limited: HashSet<&str> = table
            .all_virtual_hosts()
            .flat_map(|v| v.routes.iter())
            .filter(|r| matches!(&r.action, RouteAction::Forward(f) if f.rate_limit.is_some()))
            .map(|r| r.name.as_str())
            .collect();
        self.limiters.retain(|k| limited.contains(k));
        let jwks: HashSet<String> = table
            .all_virtual_hosts()
            .flat_map(|v| v.routes.iter())
            .filter_map(|r| match &r.action {
                RouteAction::Forward(f) => f.jwt.as_ref(),
                _ => None,
            })
            .flat_map(|j| j.providers.iter())
            .filter_map(|p| match &p.jwks {
                JwksSource::Remote(r) => Some(crate::jwt::registry_key(r)),
                JwksSource::Inline(_) => None,
            })
            .collect();
        self.jwks.retain(&jwks);
    }
}
