//! Load balancing: which endpoint of a cluster gets a request.
//!
//! A [`ClusterBalancer`] is built per cluster per snapshot and then only read: picks take
//! no lock. Live per-endpoint state (requests in flight, latency, health; see `endpoint`)
//! lives in an [`EndpointRegistry`] shared across snapshots, so an endpoint keeps it when
//! the table is swapped.
//!
//! Endpoints that are not routable in the snapshot (weight 0, not ready, terminating) are
//! never picked. Among the rest, callers exclude what they cannot use (unhealthy, ejected,
//! already tried by this request) with the `usable` filter of [`ClusterBalancer::pick`].
//!
//! Algorithms:
//! - RoundRobin: nginx's smooth weighted round robin, precomputed; exact proportions.
//! - LeastRequest: power of two choices, the two drawn by weight, on peak-EWMA latency ×
//!   (requests in flight + 1).
//! - RingHash: Ketama-style ring; unusable endpoints are skipped clockwise.
//! - Maglev: Maglev lookup table; unusable endpoints are skipped by rehashing.
//! - Random: weighted random.
//!
//! The hash-based algorithms take the request's hash from [`request_hash`]; a request
//! without one (the header or cookie is missing) gets a weighted random endpoint. When
//! an algorithm's own search finds nothing usable, the balancer scans all endpoints.

mod hash;
mod maglev;
mod ring_hash;
mod round_robin;
mod weighted;

#[cfg(test)]
mod tests;

use std::{net::IpAddr, sync::Arc};

use http::HeaderMap;
use parapet_crds::snapshot::{Algorithm, Cluster, HashOn};
use rand::Rng;

pub use self::hash::{request_hash, stable_hash};
use self::{
    hash::StableHasher, maglev::Maglev, ring_hash::Ring, round_robin::RoundRobin,
    weighted::WeightedSampler,
};
use crate::endpoint::{EndpointHandle, EndpointRegistry, endpoint_authority};

/// Picks endpoints of one cluster for one snapshot.
#[derive(Debug)]
pub struct ClusterBalancer {
    name: String,
    algorithm: Algorithm,
    hash_on: Option<HashOn>,
    /// Every endpoint of the cluster, in snapshot order.
    endpoints: Vec<Arc<EndpointHandle>>,
    /// Indexes into `endpoints` of the routable ones; algorithms work on positions here.
    routable: Vec<usize>,
    /// By weight over the routable endpoints: Random, LeastRequest's draws, and hash-based
    /// algorithms for requests without a hash.
    sampler: WeightedSampler,
    picker: Picker,
}

#[derive(Debug)]
enum Picker {
    RoundRobin(RoundRobin),
    LeastRequest,
    RingHash(Ring),
    Maglev(Maglev),
    Random,
}

impl ClusterBalancer {
    pub fn new(cluster: &Cluster, registry: &EndpointRegistry) -> Self {
        Self::new_in_zone(cluster, registry, None)
    }

    /// As [`new`](Self::new), marking the endpoints in `zone` (the data plane's own) local.
    pub fn new_in_zone(cluster: &Cluster, registry: &EndpointRegistry, zone: Option<&str>) -> Self {
        let endpoints: Vec<Arc<EndpointHandle>> = cluster
            .endpoints
            .iter()
            .map(|e| {
                Arc::new(EndpointHandle {
                    address: e.address.clone(),
                    authority: endpoint_authority(&e.address, e.port),
                    port: e.port,
                    weight: e.weight,
                    zone: e.zone.clone(),
                    local: zone.is_some_and(|z| e.local_to(z)),
                    routable: e.routable(),
                    stats: registry.stats(&cluster.name, &e.address, e.port),
                })
            })
            .collect();
        let routable: Vec<usize> = (0..endpoints.len())
            .filter(|&i| endpoints[i].routable)
            .collect();
        let weights: Vec<u32> = routable.iter().map(|&i| endpoints[i].weight).collect();
        let nodes = || -> Vec<(StableHasher, u32)> {
            routable
                .iter()
                .map(|&i| {
                    let e = &endpoints[i];
                    let id = StableHasher::new()
                        .write(e.address.as_bytes())
                        .write(&[0])
                        .write(&e.port.to_be_bytes());
                    (id, e.weight)
                })
                .collect()
        };
        let algorithm = cluster.load_balancing.algorithm;
        let picker = match algorithm {
            Algorithm::RoundRobin => Picker::RoundRobin(RoundRobin::new(&weights)),
            Algorithm::LeastRequest => Picker::LeastRequest,
            Algorithm::RingHash => Picker::RingHash(Ring::new(&nodes())),
            Algorithm::Maglev => Picker::Maglev(Maglev::new(&nodes())),
            Algorithm::Random => Picker::Random,
        };
        Self {
            name: cluster.name.clone(),
            algorithm,
            hash_on: cluster.load_balancing.hash_on.clone(),
            sampler: WeightedSampler::new(&weights),
            endpoints,
            routable,
            picker,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether picking reads the endpoints' latency estimates (LeastRequest alone does):
    /// the attempts sample latency into them only then.
    pub fn reads_latency(&self) -> bool {
        self.algorithm == Algorithm::LeastRequest
    }

    pub fn hash_on(&self) -> Option<&HashOn> {
        self.hash_on.as_ref()
    }

    /// Every endpoint, routable or not, in snapshot order (for health checks, metrics).
    pub fn endpoints(&self) -> &[Arc<EndpointHandle>] {
        &self.endpoints
    }

    /// How many endpoints the snapshot lets requests go to.
    pub fn routable_count(&self) -> usize {
        self.routable.len()
    }

    /// The hash this cluster balances `headers`/`client_ip` on, if it hashes and the
    /// request has what it hashes.
    pub fn request_hash(&self, headers: &HeaderMap, client_ip: IpAddr) -> Option<u64> {
        match self.algorithm {
            Algorithm::RingHash | Algorithm::Maglev => self
                .hash_on
                .as_ref()
                .and_then(|on| request_hash(on, headers, client_ip)),
            _ => None,
        }
    }

    /// An endpoint for a request: routable and `usable`, or `None` when there is none.
    ///
    /// `hash` is used by RingHash and Maglev (see [`request_hash`](Self::request_hash));
    /// other algorithms ignore it.
    pub fn pick(
        &self,
        hash: Option<u64>,
        usable: impl Fn(&EndpointHandle) -> bool,
    ) -> Option<&Arc<EndpointHandle>> {
        if self.routable.is_empty() {
            return None;
        }
        let ok = |pos: usize| usable(self.at(pos));
        // The thread's generator is fetched only by the algorithms that draw (a
        // thread-local lookup and a reference count, per request, otherwise).
        let picked = match (&self.picker, hash) {
            (Picker::RoundRobin(rr), _) => rr.pick(ok),
            (Picker::LeastRequest, _) => return self.least_request(&mut rand::rng(), &usable),
            (Picker::RingHash(ring), Some(h)) => ring.pick(h, ok),
            (Picker::Maglev(table), Some(h)) => table.pick(h, ok),
            (Picker::Random | Picker::RingHash(_) | Picker::Maglev(_), _) => {
                self.random(&mut rand::rng(), ok)
            }
        };
        let pos = match picked {
            Some(pos) => pos,
            None => {
                // Scan from a point that depends on the hash, so hashed requests still
                // spread the same way on every replica.
                let n = self.routable.len();
                let start = match hash {
                    Some(h) => (h % n as u64) as usize,
                    None => rand::rng().random_range(0..n),
                };
                (0..n).map(|k| (start + k) % n).find(|&p| ok(p))?
            }
        };
        Some(&self.endpoints[self.routable[pos]])
    }

    /// A weighted random endpoint among the routable and `usable` ones, whatever the
    /// algorithm: for picks that should not move the algorithm's state (panic mode).
    pub fn pick_random(
        &self,
        usable: impl Fn(&EndpointHandle) -> bool,
    ) -> Option<&Arc<EndpointHandle>> {
        let n = self.routable.len();
        if n == 0 {
            return None;
        }
        let mut rng = rand::rng();
        let ok = |pos: usize| usable(self.at(pos));
        let pos = match self.random(&mut rng, ok) {
            Some(p) => p,
            None => {
                let start = rng.random_range(0..n);
                (0..n).map(|k| (start + k) % n).find(|&p| ok(p))?
            }
        };
        Some(&self.endpoints[self.routable[pos]])
    }

    fn at(&self, pos: usize) -> &EndpointHandle {
        &self.endpoints[self.routable[pos]]
    }

    /// A few weighted draws, as an unusable endpoint is usually one of few.
    fn random(&self, rng: &mut impl Rng, ok: impl Fn(usize) -> bool) -> Option<usize> {
        (0..4)
            .filter_map(|_| self.sampler.sample(rng))
            .find(|&p| ok(p))
    }

    /// Power of two choices on load: two distinct usable endpoints drawn by weight, the
    /// less loaded wins (ties go to the first drawn). Unusable draws are drawn again a few
    /// times; failing that, the least loaded usable endpoint.
    fn least_request(
        &self,
        rng: &mut impl Rng,
        usable: &impl Fn(&EndpointHandle) -> bool,
    ) -> Option<&Arc<EndpointHandle>> {
        const MAX_DRAWS: usize = 8;
        let now = tokio::time::Instant::now();
        let load = |pos: usize| self.at(pos).stats.load_at(now);
        let ok = |pos: usize| usable(self.at(pos));
        let mut first = None;
        let mut pos = None;
        for _ in 0..MAX_DRAWS {
            let Some(p) = self.sampler.sample(rng).filter(|&p| ok(p)) else {
                continue;
            };
            match first {
                None => first = Some(p),
                Some(a) if a != p => {
                    pos = Some(if load(p) < load(a) { p } else { a });
                    break;
                }
                Some(_) => {}
            }
        }
        let pos = pos.or_else(|| {
            (0..self.routable.len())
                .filter(|&p| ok(p))
                .map(|p| (p, load(p)))
                .min_by(|x, y| x.1.total_cmp(&y.1))
                .map(|(p, _)| p)
        })?;
        Some(&self.endpoints[self.routable[pos]])
    }
}
