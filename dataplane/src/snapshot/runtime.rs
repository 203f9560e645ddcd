//! A snapshot turned into what the request path needs: a router, balancers, per-route and
//! per-cluster handles. Built off the request path, then swapped in whole.

use std::{collections::HashMap, sync::Arc, time::SystemTime};

use parapet_crds::snapshot::{Cluster, RouteAction, Snapshot};

use crate::{
    balancer::{ClusterBalancer, EndpointRegistry},
    metrics::{ClusterMetrics, Metrics, RouteMetrics},
    router::{Router, RouterError},
    upstream::{ClientPool, UpstreamClient},
};

pub struct ClusterRuntime {
    pub spec: Cluster,
    pub balancer: ClusterBalancer,
    pub client: UpstreamClient,
    pub metrics: ClusterMetrics,
}

/// What a route needs per request, by the router's route index.
pub struct RouteRuntime {
    /// Clusters with cumulative weights, for a weighted pick across pools.
    pub backends: Vec<(Arc<ClusterRuntime>, u64)>,
    pub total_weight: u64,
    pub metrics: RouteMetrics,
}

pub struct Runtime {
    pub snapshot: Snapshot,
    pub applied_at: SystemTime,
    pub router: Router,
    pub routes: Vec<RouteRuntime>,
    pub clusters: HashMap<String, Arc<ClusterRuntime>>,
}

impl Runtime {
    pub fn build(
        snapshot: Snapshot,
        registry: &EndpointRegistry,
        clients: &ClientPool,
        metrics: &Metrics,
    ) -> Result<Self, RouterError> {
        let router = Router::new(&snapshot.table)?;
        let clusters: HashMap<String, Arc<ClusterRuntime>> = snapshot
            .table
            .clusters
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    Arc::new(ClusterRuntime {
                        spec: c.clone(),
                        balancer: ClusterBalancer::new(c, registry),
                        client: clients.client_for(c),
                        metrics: ClusterMetrics::new(metrics, &c.name),
                    }),
                )
            })
            .collect();
        let routes = router
            .routes()
            .map(|(_, route)| {
                let mut backends = Vec::new();
                let mut total = 0u64;
                if let RouteAction::Forward(f) = &route.action {
                    for b in &f.backends {
                        if b.weight == 0 {
                            continue;
                        }
                        if let Some(c) = clusters.get(&b.cluster) {
                            total += u64::from(b.weight);
                            backends.push((c.clone(), total));
                        }
                    }
                }
                RouteRuntime {
                    backends,
                    total_weight: total,
                    metrics: RouteMetrics::new(metrics, &route.name),
                }
            })
            .collect();
        Ok(Self {
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
}

impl RouteRuntime {
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
