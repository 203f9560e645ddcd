//! A snapshot turned into what the request path needs: a router, balancers, per-route and
//! per-cluster handles. Built off the request path, then swapped in whole.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock, Weak},
    time::{Duration, SystemTime},
};

use parapet_crds::snapshot::{Cluster, ListenerProtocol, RouteAction, Snapshot};

use super::live::{ClusterLive, LiveState, RouteLive};
use crate::{
    auth::ApiKeys,
    balancer::ClusterBalancer,
    breaker::{self, BreakerState},
    endpoint::{Availability, EndpointRegistry},
    extauth::ExtAuth,
    hedge::{HedgeConfig, HedgePlan},
    iprules::IpFilter,
    jwt::JwtAuth,
    lanes::RouteLaneSettings,
    metrics::{ClusterMetrics, Metrics, MirrorMetrics, RouteMetrics},
    outlier::ClusterOutlier,
    proxy::HeaderEdits,
    ratelimit::{PodLimit, RateLimiter},
    router::{Router, RouterError},
    tls::{TableCerts, table_certs},
    upstream::{ClientPool, UpstreamClient, http1::Http1Client},
};

/// Settings of this data plane that shape how a table is built.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// This pod's zone (`--zone`), for pools that prefer their local zone.
    pub zone: Option<String>,
    /// Which routes hedge (`--hedge`) when their rule does not say.
    pub hedge: HedgeConfig,
    /// Bulkhead and slow threshold of routes whose rule does not say
    /// (`--route-max-in-flight`, `--slow-lane-threshold`).
    pub route_lanes: RouteLaneSettings,
    /// The response cache's memory bound in bytes (`--cache-max-bytes`).
    pub cache_max_bytes: u64,
    /// Keys a route's rate limiter holds at most (`--rate-limit-max-keys`).
    pub rate_limit_max_keys: usize,
}

/// The cache's default memory bound: 256 MiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 256 << 20;

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            zone: None,
            hedge: HedgeConfig::default(),
            route_lanes: RouteLaneSettings::default(),
            cache_max_bytes: DEFAULT_CACHE_MAX_BYTES,
            rate_limit_max_keys: crate::ratelimit::DEFAULT_MAX_KEYS,
        }
    }
}

/// Retry budget of routes without a retry policy (it still bounds their hedges).
pub const DEFAULT_BUDGET_PERCENT: u32 = 20;
pub const DEFAULT_BUDGET_MIN_PER_SECOND: u32 = 10;

pub struct ClusterRuntime {
    pub spec: Cluster,
    pub balancer: ClusterBalancer,
    pub client: UpstreamClient,
    /// Parapet's own client, for plain HTTP/1.1 pools (see `upstream::http1`).
    pub http1: Option<Http1Client>,
    pub metrics: ClusterMetrics,
    pub limits: breaker::Limits,
    pub breaker: Arc<BreakerState>,
    pub outlier: ClusterOutlier,
    /// Healthy endpoints, by zone, cached per health epoch.
    pub availability: Availability,
    /// With `failover.preferLocalZone`, a zone known and local endpoints in the pool: one
    /// balancer for the local zone's endpoints and one for the others, so each keeps its
    /// own rotation (the endpoints share their live state with `balancer`'s).
    pub zones: Option<[ClusterBalancer; 2]>,
    /// `failover.backupCluster`, resolved when the table is built (see [`backup`](Self::backup)).
    /// Weak, as two pools may back each other up; the table owns them both.
    backup: OnceLock<Weak<ClusterRuntime>>,
    /// Below what healthy share the backup takes the traffic.
    pub min_healthy_percent: u32,
}

/// What a route needs per request, by the router's route index.
pub struct RouteRuntime {
    /// `namespace/apiroute/rule` (shared with the access log's records).
    pub name: Arc<str>,
    /// Clusters with cumulative weights, for a weighted pick across pools.
    pub backends: Vec<(Arc<ClusterRuntime>, u64)>,
    pub total_weight: u64,
    pub metrics: RouteMetrics,
    /// Retry budget, lane and latency window, kept across tables.
    pub live: Arc<RouteLive>,
    /// How the route hedges: its rule's `hedge`, else `--hedge`.
    pub hedge: Option<HedgePlan>,
    /// The rule's client-address rules (`auth.ipRules`, or the route's `ipRules`).
    pub ip_rules: Option<IpFilter>,
    /// The rule's API keys (`auth.apiKeys`).
    pub api_keys: Option<ApiKeys>,
    /// The rule's JWT providers (`auth.jwt`).
    pub jwt: Option<JwtAuth>,
    /// The rule's authorization service (`auth.extAuth`); `Err`: unusable, so the rule's
    /// requests are refused.
    pub ext_auth: Option<Result<ExtAuth, String>>,
    /// The rule's buckets (`rateLimit`), this pod's share.
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// Edits to the request before it goes upstream (`requestHeaders`).
    pub request_edits: Option<HeaderEdits>,
    /// Edits to the upstream's response (`responseHeaders`).
    pub response_edits: Option<HeaderEdits>,
    /// Bound on each attempt (`backendTimeoutMs`).
    pub backend_timeout: Option<Duration>,
    /// Where copies of the route's requests go; `None` for routes that do not mirror.
    pub mirrors: Option<Box<RouteMirrors>>,
}

/// A route's mirrors: each cluster with the share of requests it gets, in parts per
/// million.
pub struct RouteMirrors {
    pub targets: Vec<(Arc<ClusterRuntime>, u32)>,
    pub metrics: MirrorMetrics,
}

pub struct Runtime {
    pub snapshot: Snapshot,
    pub applied_at: SystemTime,
    pub router: Router,
    pub routes: Vec<RouteRuntime>,
    pub clusters: HashMap<String, Arc<ClusterRuntime>>,
    /// Cache policies by name, as routes name them.
    pub cache_policies: HashMap<String, Arc<parapet_crds::snapshot::CachePolicy>>,
    /// TLS certificates by virtual-host domain (per listener, too), for SNI selection
    /// (installed in the store's `Certificates` with the table).
    pub certs: Arc<TableCerts>,
    /// The zone this table's balancers were built for.
    pub zone: Option<String>,
}

impl ClusterRuntime {
    pub fn new(
        c: &Cluster,
        registry: &EndpointRegistry,
        live: &ClusterLive,
        clients: &ClientPool,
        metrics: &Metrics,
        options: &BuildOptions,
    ) -> Result<Self, RouterError> {
        let client = clients
            .client_for(c)
            .map_err(|reason| RouterError::UpstreamTls {
                cluster: c.name.clone(),
                reason,
            })?;
        let zone = options.zone.as_deref();
        let balancer = ClusterBalancer::new_in_zone(c, registry, zone);
        let availability = Availability::new(balancer.endpoints());
        let failover = c.failover.as_ref();
        let zones = (failover.is_some_and(|f| f.prefer_local_zone)
            && availability.local_routable() > 0)
            .then(|| {
                [true, false].map(|local| {
                    let mut part = c.clone();
                    part.endpoints
                        .retain(|e| zone.is_some_and(|z| e.local_to(z)) == local);
                    ClusterBalancer::new_in_zone(&part, registry, zone)
                })
            });
        Ok(Self {
            zones,
            backup: OnceLock::new(),
            min_healthy_percent: failover.map_or(0, |f| f.min_healthy_percent),
            availability,
            limits: breaker::Limits::of(c.circuit_breaker.as_ref(), c.protocol),
            breaker: live.breaker.clone(),
            outlier: ClusterOutlier::new(
                &c.name,
                c.outlier_detection.clone(),
                live.eject_lock.clone(),
                metrics,
            ),
            balancer,
            client,
            http1: clients.http1_for(c),
            metrics: ClusterMetrics::new(metrics, &c.name),
            spec: c.clone(),
        })
    }

    /// The backup pool (`failover.backupCluster`) of the same table, if it has one.
    pub fn backup(&self) -> Option<Arc<ClusterRuntime>> {
        self.backup.get().and_then(Weak::upgrade)
    }
}

impl Runtime {
    pub fn build(
        snapshot: Snapshot,
        registry: &EndpointRegistry,
        live: &LiveState,
        clients: &ClientPool,
        metrics: &Metrics,
        options: &BuildOptions,
    ) -> Result<Self, RouterError> {
        let router = Router::new(&snapshot.table)?;
        let clusters: HashMap<String, Arc<ClusterRuntime>> = snapshot
            .table
            .clusters
            .iter()
            .map(|c| {
                let state = live.cluster(&c.name);
                Ok((
                    c.name.clone(),
                    Arc::new(ClusterRuntime::new(
                        c, registry, &state, clients, metrics, options,
                    )?),
                ))
            })
            .collect::<Result<_, RouterError>>()?;
        // Backups by reference, so a request follows one instead of looking a name up. A
        // name the table lacks (validation refuses such tables) leaves the pool without one.
        for c in clusters.values() {
            let named = c
                .spec
                .failover
                .as_ref()
                .and_then(|f| f.backup_cluster.as_ref());
            if let Some(backup) = named.and_then(|b| clusters.get(b)) {
                let _ = c.backup.set(Arc::downgrade(backup));
            }
        }
        let routes = router
            .routes()
            .map(|(_, route)| {
                let mut backends = Vec::new();
                let mut total = 0u64;
                let mut budget = (DEFAULT_BUDGET_PERCENT, DEFAULT_BUDGET_MIN_PER_SECOND);
                let (mut api_keys, mut rate_limit, mut ip_rules) = (None, None, None);
                let (mut ext_auth, mut jwt) = (None, None);
                let (mut own_hedge, mut own_lanes) = (None, None);
                let (mut request_edits, mut response_edits) = (None, None);
                let (mut backend_timeout, mut mirrors) = (None, None);
                if let RouteAction::Forward(f) = &route.action {
                    (own_hedge, own_lanes) = (f.hedge.as_ref(), f.lanes.as_ref());
                    request_edits = HeaderEdits::new(&f.request_headers);
                    response_edits = HeaderEdits::new(&f.response_headers);
                    backend_timeout = f
                        .backend_timeout_ms
                        .map(|ms| Duration::from_millis(ms.max(1)));
                    let targets: Vec<_> = f
                        .mirrors
                        .iter()
                        .filter(|m| m.per_million > 0)
                        .filter_map(|m| Some((clusters.get(&m.cluster)?.clone(), m.per_million)))
                        .collect();
                    if !targets.is_empty() {
                        mirrors = Some(Box::new(RouteMirrors {
                            targets,
                            metrics: MirrorMetrics::new(metrics, &route.name),
                        }));
                    }
                    ip_rules = f.ip_rules.as_ref().map(IpFilter::new);
                    jwt = f.jwt.as_ref().map(|j| JwtAuth::new(j, &live.jwks));
                    ext_auth = f.ext_auth.as_ref().map(|e| {
                        ExtAuth::new(e, metrics.ext_auth.clone()).inspect_err(|err| {
                            tracing::warn!(route = %route.name, error = %err, "external authorization unusable; refusing the route's requests");
                        })
                    });
                    if let Some(check) = &f.api_keys {
                        // An unusable header name leaves a checker with no keys: every
                        // request is refused rather than let through.
                        api_keys = Some(ApiKeys::new(check).unwrap_or_else(|e| {
                            tracing::warn!(route = %route.name, error = %e, "API keys unusable; refusing the route's requests");
                            ApiKeys::new(&parapet_crds::snapshot::ApiKeyCheck {
                                source: parapet_crds::snapshot::KeySource::Header("x-api-key".into()),
                                keys: Vec::new(),
                            })
                            .expect("a valid header name")
                        }));
                    }
                    if let Some(rl) = &f.rate_limit {
                        rate_limit = Some(live.limiters.for_route(
                            &route.name,
                            PodLimit::share(rl, snapshot.table.fleet_pods),
                            options.rate_limit_max_keys,
                        ));
                    }
                    for b in &f.backends {
                        if b.weight == 0 {
                            continue;
                        }
                        if let Some(c) = clusters.get(&b.cluster) {
                            total += u64::from(b.weight);
                            backends.push((c.clone(), total));
                        }
                    }
                    if let Some(r) = &f.retry {
                        budget = (r.budget_percent, r.budget_min_per_second);
                    }
                }
                let route_metrics = RouteMetrics::new(metrics, &route.name);
                let live = live.route(&route.name, &route_metrics, budget.0, budget.1);
                // Set after every step that can fail, so a refused table changes no route.
                live.lane
                    .configure(options.route_lanes.with_rule(own_lanes));
                RouteRuntime {
                    name: route.name.as_str().into(),
                    backends,
                    total_weight: total,
                    live,
                    metrics: route_metrics,
                    hedge: HedgePlan::resolve(&route.name, own_hedge, &options.hedge),
                    ip_rules,
                    api_keys,
                    jwt,
                    ext_auth,
                    rate_limit,
                    request_edits,
                    response_edits,
                    backend_timeout,
                    mirrors,
                }
            })
            .collect();
        let cache_policies = snapshot
            .table
            .cache_policies
            .iter()
            .map(|p| (p.name.clone(), Arc::new(p.clone())))
            .collect();
        Ok(Self {
            certs: Arc::new(table_certs(&snapshot.table)),
            zone: options.zone.clone(),
            cache_policies,
            snapshot,
            applied_at: SystemTime::now(),
            router,
            routes,
            clusters,
        })
    }

    pub fn version(&self) -> u64 {
        self.snapshot.version
    }

    pub fn hash(&self) -> &str {
        &self.snapshot.hash
    }

    /// Whether the table serves a Gateway's listeners (routes and TLS per port).
    pub fn has_listeners(&self) -> bool {
        !self.snapshot.table.listeners.is_empty()
    }

    /// The protocol of the listener on Gateway port `port`, if the table has one.
    pub fn listener(&self, port: u16) -> Option<ListenerProtocol> {
        self.snapshot
            .table
            .listeners
            .iter()
            .find(|l| l.port == port)
            .map(|l| l.protocol)
    }
}

impl RouteRuntime {
    /// When a request's first hedge is due, if the route hedges now: read per request
    /// because a percentile follows the traffic (a cached atomic load, nothing allocated).
    pub fn hedge_after(&self, now: tokio::time::Instant) -> Option<std::time::Duration> {
        self.hedge.as_ref()?.delay(&self.live.latency, now)
    }

    /// Records an answer's latency for the hedge delay, when it is a percentile (nothing
    /// else reads the route's latency window).
    pub fn record_latency(&self, took: std::time::Duration, now: tokio::time::Instant) {
        if self.hedge.as_ref().is_some_and(HedgePlan::follows_latency) {
            self.live.latency.record(took, now);
        }
    }

    /// Picks a backend cluster by weight; `roll` is uniform in `0..total_weight`.
    pub fn pick_cluster(&self, roll: u64) -> Option<&Arc<ClusterRuntime>> {
        if self.backends.len() == 1 {
            return Some(&self.backends[0].0);
        }
        self.backends
            .iter()
            .find(|(_, cumulative)| roll < *cumulative)
            .map(|(c, _)| c)
    }
}

#[cfg(test)]
mod route_settings_tests {
    use std::time::Duration;

    use parapet_crds::snapshot::Snapshot;

    use super::*;
    use crate::hedge::HedgeDelay;

    fn table(rules: &str) -> Snapshot {
        let yaml = format!(
            "apiVersion: parapet.dev/v1alpha1\nkind: UpstreamPool\nmetadata: {{name: p}}\nspec:\n  static: [{{address: 127.0.0.1, port: 1}}]\n---\napiVersion: parapet.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: r}}\nspec:\n  hosts: ['*']\n  rules:\n{rules}"
        );
        let m = parapet_crds::manifest::Manifest::parse(&yaml).unwrap();
        Snapshot::new(1, parapet_crds::compiler::compile(&m.inputs()).table)
    }

    fn route<'a>(rt: &'a Runtime, name: &str) -> &'a RouteRuntime {
        rt.routes.iter().find(|r| &*r.name == name).unwrap()
    }

    #[test]
    fn a_rule_own_settings_win_and_the_flags_fill_in_the_rest() {
        let options = BuildOptions {
            hedge: HedgeConfig::parse(["*=20ms"]).unwrap(),
            route_lanes: RouteLaneSettings {
                max_in_flight: 7,
                slow_threshold: Duration::from_millis(300),
            },
            ..Default::default()
        };
        let live = LiveState::default();
        let build = |snapshot| {
            Runtime::build(
                snapshot,
                &EndpointRegistry::default(),
                &live,
                &ClientPool::default(),
                &Metrics::new(),
                &options,
            )
            .unwrap()
        };
        let rt = build(table(
            "    - {name: own, matches: [{path: {value: /own}}], backends: [{pool: p}], hedge: {percentile: 99, maxExtraAttempts: 2}, lanes: {maxInFlight: 3}}\n    - {name: flags, backends: [{pool: p}]}\n",
        ));
        let own = route(&rt, "default/r/own");
        assert_eq!(
            own.hedge,
            Some(HedgePlan {
                delay: HedgeDelay::Percentile(99),
                max_extra: 2
            })
        );
        assert_eq!(
            own.live.lane.settings(),
            RouteLaneSettings {
                max_in_flight: 3,
                slow_threshold: Duration::from_millis(300)
            }
        );
        let flags = route(&rt, "default/r/flags");
        assert_eq!(
            flags.hedge,
            Some(HedgePlan {
                delay: HedgeDelay::Fixed(Duration::from_millis(20)),
                max_extra: 1
            })
        );
        assert_eq!(flags.live.lane.settings(), options.route_lanes);
        // A fixed delay needs no samples.
        assert_eq!(
            flags.hedge_after(tokio::time::Instant::now()),
            Some(Duration::from_millis(20))
        );

        // The next table drops the rule's lanes: the same live lane takes the flags again.
        let lane = own.live.lane.clone();
        let rt = build(table(
            "    - {name: own, matches: [{path: {value: /own}}], backends: [{pool: p}]}\n",
        ));
        assert!(Arc::ptr_eq(&route(&rt, "default/r/own").live.lane, &lane));
        assert_eq!(lane.settings(), options.route_lanes);
    }
}
