//! Where a request may go when a pool is short of healthy endpoints: priority tiers
//! (a backup pool), locality (the data plane's own zone first), and panic mode.
//!
//! [`pick`] chooses an endpoint for one attempt:
//! 1. **Tiers.** A pool with `failover.backupCluster` (resolved to the backup's runtime when
//!    the table is built) sends its traffic to the backup only
//!    while its healthy share (healthy and not ejected, over routable endpoints) is below
//!    `minHealthyPercent` and the backup has a healthy endpoint; traffic returns as soon as
//!    the share recovers. The other tier is the fallback when every endpoint of the first
//!    has been tried by this request or is unusable.
//! 2. **Locality.** With `preferLocalZone` and `--zone` set, a pick goes to the local zone
//!    with probability `min(1, 1.4 × local healthy share)` and to the other zones otherwise
//!    — Envoy's locality spill-over with its overprovisioning factor of 1.4: a local zone
//!    at 72% health or more keeps all its traffic; below, the shortfall spills over in
//!    proportion.
//! 3. **A different endpoint each try**: endpoints this request already tried are skipped
//!    while others are usable; then tried ones are used again.
//! 4. **Panic.** When no endpoint of either tier is usable (all unhealthy or ejected), the
//!    request goes to a routable endpoint anyway rather than failing — one it has not tried,
//!    first tier first, then any: fail open, as Envoy's panic threshold does. Counted in
//!    `parapet_panic_requests_total`.
//!
//! Ejected endpoints whose ejection is over are usable by exactly one probe request at a
//! time (`outlier::admit`).

#[cfg(test)]
mod tests;

use std::sync::Arc;

use rand::Rng;
use tokio::time::Instant;

use crate::{
    endpoint::{Availability, EndpointHandle},
    outlier::{self, Admission, ProbeGuard},
    snapshot::ClusterRuntime,
};

/// Envoy's overprovisioning factor: a tier or zone at 1/1.4 ≈ 72% health keeps its traffic.
pub const OVERPROVISIONING: f64 = 1.4;

/// Share of traffic the local zone keeps: `min(1, 1.4 × local healthy share)`.
pub fn local_share(availability: &Availability, endpoints: &[Arc<EndpointHandle>]) -> f64 {
    if availability.local_routable() == 0 {
        return 0.0;
    }
    let (_, local) = availability.counts(endpoints);
    (OVERPROVISIONING * f64::from(local) / f64::from(availability.local_routable())).min(1.0)
}

/// An endpoint chosen for one attempt.
pub struct Picked {
    pub cluster: Arc<ClusterRuntime>,
    pub endpoint: Arc<EndpointHandle>,
    /// Set when this attempt probes an endpoint whose ejection is over.
    pub probe: Option<ProbeGuard>,
}

/// The pools in the order they are tried: the backup first while failover is active.
pub fn tiers(primary: &Arc<ClusterRuntime>) -> [Option<Arc<ClusterRuntime>>; 2] {
    let Some(backup) = primary.backup() else {
        return [Some(primary.clone()), None];
    };
    let endpoints = primary.balancer.endpoints();
    let (avail, _) = primary.availability.counts(endpoints);
    let total = primary.availability.routable();
    let short = u64::from(avail) * 100 < u64::from(primary.min_healthy_percent) * u64::from(total)
        || total == 0;
    let active = short && backup.availability.counts(backup.balancer.endpoints()).0 > 0;
    let gauge = &primary.metrics.failover_active;
    if gauge.get() != i64::from(active) {
        gauge.set(i64::from(active));
        tracing::info!(
            cluster = %primary.spec.name,
            backup = %backup.spec.name,
            healthy = avail,
            routable = total,
            min_healthy_percent = primary.min_healthy_percent,
            active,
            "failover to the backup pool {}",
            if active { "started" } else { "ended" }
        );
    }
    if active {
        [Some(backup), Some(primary.clone())]
    } else {
        [Some(primary.clone()), Some(backup)]
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Usable and not yet tried by this request.
    Fresh,
    /// Usable, tried or not.
    Again,
    /// Anything routable (panic): untried first.
    PanicFresh,
    PanicAny,
}

/// An endpoint for the next attempt of a request that has tried `tried`, or `None` when
/// the pools have no routable endpoint at all. `_table` is the table `primary` belongs to;
/// it is not read, as `primary` carries its backup.
pub fn pick(
    primary: &Arc<ClusterRuntime>,
    hash: Option<u64>,
    tried: &[Arc<EndpointHandle>],
    now: Instant,
) -> Option<Picked> {
    let tiers = tiers(primary);
    if let Some(p) = pick_from(&tiers, hash, tried, &[Pass::Fresh, Pass::Again], now) {
        return Some(p);
    }
    for pass in [Pass::PanicFresh, Pass::PanicAny] {
        for c in tiers.iter().flatten() {
            if let Some((endpoint, _)) = pick_in(c, hash, tried, pass, now) {
                c.metrics.panic.inc();
                tracing::debug!(
                    cluster = %c.spec.name,
                    endpoint = %endpoint.authority(),
                    "no usable endpoint: panic mode sends to an unhealthy or ejected one"
                );
                return Some(Picked {
                    cluster: c.clone(),
                    endpoint,
                    probe: None,
                });
            }
        }
    }
    None
}

/// A usable endpoint this request has not tried yet (for hedges), or `None`. `_table` as for
/// [`pick`].
pub fn pick_fresh(
    primary: &Arc<ClusterRuntime>,
    hash: Option<u64>,
    tried: &[Arc<EndpointHandle>],
    now: Instant,
) -> Option<Picked> {
    pick_from(&tiers(primary), hash, tried, &[Pass::Fresh], now)
}

fn pick_from(
    tiers: &[Option<Arc<ClusterRuntime>>; 2],
    hash: Option<u64>,
    tried: &[Arc<EndpointHandle>],
    passes: &[Pass],
    now: Instant,
) -> Option<Picked> {
    for &pass in passes {
        for c in tiers.iter().flatten() {
            if let Some((endpoint, probe)) = pick_in(c, hash, tried, pass, now) {
                return Some(Picked {
                    cluster: c.clone(),
                    endpoint,
                    probe,
                });
            }
        }
    }
    None
}

fn pick_in(
    c: &ClusterRuntime,
    hash: Option<u64>,
    tried: &[Arc<EndpointHandle>],
    pass: Pass,
    now: Instant,
) -> Option<(Arc<EndpointHandle>, Option<ProbeGuard>)> {
    // The same endpoint has one `EndpointStats` whichever balancer hands it out.
    let untried = |e: &EndpointHandle| !tried.iter().any(|t| Arc::ptr_eq(&t.stats, &e.stats));
    // Which zones, in order: local/remote by the spill-over roll, or any.
    let order: [Option<bool>; 2] = if c.zones.is_some() {
        let share = local_share(&c.availability, c.balancer.endpoints());
        let local_first = share >= 1.0 || (share > 0.0 && rand::rng().random_bool(share));
        [Some(local_first), Some(!local_first)]
    } else {
        [None, None]
    };
    let zones = if order[0].is_none() {
        &order[..1]
    } else {
        &order[..]
    };
    for &zone in zones {
        let balancer = match (zone, &c.zones) {
            (Some(local), Some([l, r])) => {
                if local {
                    l
                } else {
                    r
                }
            }
            _ => &c.balancer,
        };
        let mut refused: Vec<*const EndpointHandle> = Vec::new();
        // A few tries: an ejected endpoint whose probe someone else holds is skipped.
        for _ in 0..4 {
            let usable = |e: &EndpointHandle| {
                !refused.contains(&(e as *const EndpointHandle))
                    && match pass {
                        Pass::Fresh => e.stats.is_candidate(now) && untried(e),
                        Pass::Again => e.stats.is_candidate(now),
                        Pass::PanicFresh => untried(e),
                        Pass::PanicAny => true,
                    }
            };
            let picked = match pass {
                Pass::Fresh | Pass::Again => balancer.pick(hash, usable),
                // Panic spreads at random: the algorithm's own state was just walked by
                // the passes that found nothing.
                Pass::PanicFresh | Pass::PanicAny => balancer.pick_random(usable),
            };
            let Some(picked) = picked.cloned() else {
                break;
            };
            let probe = match pass {
                Pass::PanicFresh | Pass::PanicAny => None,
                Pass::Fresh | Pass::Again => match outlier::admit(&picked.stats, now) {
                    Admission::Normal => None,
                    Admission::Probe(g) => Some(g),
                    Admission::Refused => {
                        refused.push(Arc::as_ptr(&picked));
                        continue;
                    }
                },
            };
            match zone {
                Some(true) => {
                    c.metrics.zone_local.inc();
                }
                Some(false) => {
                    c.metrics.zone_remote.inc();
                }
                None => {}
            }
            return Some((picked, probe));
        }
    }
    None
}
