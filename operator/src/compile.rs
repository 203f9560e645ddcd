//! Turning the indexes into a table: debounced, skipped when nothing that matters changed,
//! versioned so versions only ever grow.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::{
    core::v1::{Secret, Service},
    discovery::v1::EndpointSlice,
};
use kube::{ResourceExt, api::DynamicObject};
use parapet_crds::{
    api::{ApiRouteSpec, AuthPolicySpec, CachePolicySpec, Object, UpstreamPoolSpec},
    compiler::{self, Diagnostics, Inputs, ObjectKey, ServicePortKey},
    snapshot::{Endpoint, Snapshot},
};
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

use crate::{index::Index, metrics::Metrics};

/// One compilation's result, shared by the pusher and the status writer.
pub struct Compiled {
    pub snapshot: Arc<Snapshot>,
    pub diagnostics: Diagnostics,
    /// Objects that could not be read as their type at all (reported as not Accepted).
    pub malformed: Vec<(ObjectKey, String)>,
    /// Every object considered, with its generation.
    pub objects: Vec<(ObjectKey, i64)>,
    /// Total and ready endpoints per pool.
    pub pool_endpoints: BTreeMap<(String, String), (usize, usize)>,
    /// JSON bytes of the table (as pushed, before compression, less the few of the
    /// snapshot's version and hash).
    pub bytes: usize,
    /// The pools as read, for the endpoint-only fast path.
    pub pools: Arc<Vec<Object<UpstreamPoolSpec>>>,
    /// The objects (and generations) this table carries, for per-object `Programmed`.
    pub sources: Arc<Sources>,
}

/// (kind, namespace, name, generation) of every object a table was compiled from.
pub type Sources = HashSet<(String, String, String, i64)>;

pub(crate) fn sources(s: &Snapshot) -> Arc<Sources> {
    Arc::new(
        s.table
            .sources
            .iter()
            .map(|s| {
                (
                    s.kind.clone(),
                    s.namespace.clone(),
                    s.name.clone(),
                    s.generation,
                )
            })
            .collect(),
    )
}

/// Versions are milliseconds since the epoch, kept strictly increasing, and raised above
/// any version a pod reports (a new leader whose clock lags never pushes a version the
/// fleet would refuse as stale). No stored counter is needed: time plus what the pods
/// acknowledge is enough, and survives operator restarts and leader changes.
#[derive(Default)]
pub struct VersionClock {
    last: AtomicU64,
}

impl VersionClock {
    pub fn next(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let mut prev = self.last.load(Ordering::SeqCst);
        loop {
            let v = now.max(prev + 1);
            match self
                .last
                .compare_exchange(prev, v, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return v,
                Err(p) => prev = p,
            }
        }
    }

    /// Makes every later version exceed `seen`.
    pub fn observe(&self, seen: u64) {
        self.last.fetch_max(seen, Ordering::SeqCst);
    }
}

pub(crate) fn convert<T: serde::de::DeserializeOwned>(o: &DynamicObject) -> Result<T, String> {
    serde_json::to_value(o)
        .and_then(serde_json::from_value)
        .map_err(|e| e.to_string())
}

/// Builds compiler inputs from the indexes and compiles.
pub fn compile_index(
    index: &Index,
    clock: &VersionClock,
    previous: Option<&Compiled>,
) -> Option<Compiled> {
    let mut malformed = Vec::new();
    let mut objects = Vec::new();
    let mut read = |kind: &'static str, o: &Arc<DynamicObject>| {
        let key = ObjectKey::new(kind, &o.namespace().unwrap_or_default(), &o.name_any());
        objects.push((key.clone(), o.metadata.generation.unwrap_or(0)));
        key
    };
    let mut routes: Vec<Object<ApiRouteSpec>> = Vec::new();
    for o in index.routes.all() {
        let key = read(compiler::KIND_ROUTE, &o);
        match convert(&o) {
            Ok(v) => routes.push(v),
            Err(e) => malformed.push((key, e)),
        }
    }
    let mut pools: Vec<Object<UpstreamPoolSpec>> = Vec::new();
    for o in index.pools.all() {
        let key = read(compiler::KIND_POOL, &o);
        match convert(&o) {
            Ok(v) => pools.push(v),
            Err(e) => malformed.push((key, e)),
        }
    }
    let mut policies: Vec<Object<CachePolicySpec>> = Vec::new();
    for o in index.cache_policies.all() {
        let key = read(compiler::KIND_CACHE_POLICY, &o);
        match convert(&o) {
            Ok(v) => policies.push(v),
            Err(e) => malformed.push((key, e)),
        }
    }
    let mut auth_policies: Vec<Object<AuthPolicySpec>> = Vec::new();
    for o in index.auth_policies.all() {
        let key = read(compiler::KIND_AUTH_POLICY, &o);
        match convert(&o) {
            Ok(v) => auth_policies.push(v),
            Err(e) => malformed.push((key, e)),
        }
    }
    objects.sort();

    let service_endpoints = service_endpoints(index, &pools);
    let secrets = referenced_secrets(index, &routes, &pools, &auth_policies);
    let inputs = Inputs {
        routes: routes.iter().collect(),
        pools: pools.iter().collect(),
        cache_policies: policies.iter().collect(),
        auth_policies: auth_policies.iter().collect(),
        service_endpoints,
        secrets,
        secret_label_selector: index.secret_label_selector.clone(),
        key_salt_seed: index.key_salt_seed.clone(),
    };
    let out = compiler::compile(&inputs);
    let pool_endpoints = pool_endpoints(&pools, &inputs.service_endpoints);
    if let Some(prev) = previous
        && prev.snapshot.table == out.table
        && prev.malformed == malformed
    {
        if prev.diagnostics == out.diagnostics
            && prev.objects == objects
            && prev.pool_endpoints == pool_endpoints
        {
            return None;
        }
        // The same table, but what status reports changed (a pool no route uses lost its
        // Service, say): published under the same version, so nothing is pushed again.
        return Some(Compiled {
            snapshot: prev.snapshot.clone(),
            diagnostics: out.diagnostics,
            malformed,
            objects,
            pool_endpoints,
            bytes: prev.bytes,
            pools: Arc::new(pools),
            sources: prev.sources.clone(),
        });
    }
    let (mut snapshot, bytes) = Snapshot::new_measured(clock.next(), out.table);
    // Compiles run only after every watch has listed its objects, so an empty table here
    // is what the cluster says, not an empty cache: say so to the data planes' wipe guard.
    snapshot.allow_empty = snapshot.table.route_count() == 0;
    let sources = sources(&snapshot);
    Some(Compiled {
        snapshot: Arc::new(snapshot),
        diagnostics: out.diagnostics,
        malformed,
        objects,
        pool_endpoints,
        bytes,
        pools: Arc::new(pools),
        sources,
    })
}

/// The endpoint-only fast path: only EndpointSlices changed since `prev`, so routes,
/// policies and pool settings are reused and only endpoints are read again.
pub fn refresh_index(index: &Index, clock: &VersionClock, prev: &Compiled) -> Option<Compiled> {
    let service_endpoints = service_endpoints(index, &prev.pools);
    let inputs = Inputs {
        pools: prev.pools.iter().collect(),
        service_endpoints,
        ..Inputs::default()
    };
    let table = compiler::refresh_endpoints(&prev.snapshot.table, &inputs);
    let counts = pool_endpoints(&prev.pools, &inputs.service_endpoints);
    let (snapshot, bytes) = if table == prev.snapshot.table {
        if counts == prev.pool_endpoints {
            return None;
        }
        // Only the endpoint counts of pools no route uses changed: same version, no push.
        (prev.snapshot.clone(), prev.bytes)
    } else {
        let (mut snapshot, bytes) = Snapshot::new_measured(clock.next(), table);
        snapshot.allow_empty = prev.snapshot.allow_empty;
        (Arc::new(snapshot), bytes)
    };
    Some(Compiled {
        snapshot,
        diagnostics: prev.diagnostics.clone(),
        malformed: prev.malformed.clone(),
        objects: prev.objects.clone(),
        pool_endpoints: counts,
        bytes,
        pools: prev.pools.clone(),
        sources: prev.sources.clone(),
    })
}

fn pool_endpoints(
    pools: &[Object<UpstreamPoolSpec>],
    service_endpoints: &BTreeMap<ServicePortKey, Vec<Endpoint>>,
) -> BTreeMap<(String, String), (usize, usize)> {
    let mut out = BTreeMap::new();
    for p in pools {
        let ns = p.metadata.namespace().to_string();
        let counts = match (&p.spec.static_endpoints, &p.spec.service) {
            (Some(st), _) => (st.len(), st.len()),
            (None, Some(s)) => {
                let eps = service_endpoints
                    .get(&ServicePortKey {
                        namespace: ns.clone(),
                        service: s.name.clone(),
                        port: s.port,
                    })
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                (eps.len(), eps.iter().filter(|e| e.routable()).count())
            }
            (None, None) => (0, 0),
        };
        out.insert((ns, p.metadata.name().to_string()), counts);
    }
    out
}

/// Endpoints of each (Service, port) that a pool references, from EndpointSlices, with the
/// Service port mapped to the slice port by name as Kubernetes does.
fn service_endpoints(
    index: &Index,
    pools: &[Object<UpstreamPoolSpec>],
) -> BTreeMap<ServicePortKey, Vec<Endpoint>> {
    service_endpoints_for(index, pool_services(pools))
}

/// The Service ports pools target.
pub(crate) fn pool_services(pools: &[Object<UpstreamPoolSpec>]) -> BTreeSet<ServicePortKey> {
    pools
        .iter()
        .filter_map(|p| {
            p.spec.service.as_ref().map(|s| ServicePortKey {
                namespace: p.metadata.namespace().to_string(),
                service: s.name.clone(),
                port: s.port,
            })
        })
        .collect()
}

/// Endpoints of each wanted (Service, port); a key is left out when the Service or the
/// port does not exist, so the compiler can tell "missing" from "no endpoints".
pub(crate) fn service_endpoints_for(
    index: &Index,
    wanted: BTreeSet<ServicePortKey>,
) -> BTreeMap<ServicePortKey, Vec<Endpoint>> {
    if wanted.is_empty() {
        return BTreeMap::new();
    }
    let wanted_services: BTreeSet<(&str, &str)> = wanted
        .iter()
        .map(|k| (k.namespace.as_str(), k.service.as_str()))
        .collect();
    let services: HashMap<(String, String), Arc<Service>> = index
        .services
        .all()
        .filter(|s| {
            wanted_services.contains(&(
                s.namespace().unwrap_or_default().as_str(),
                s.name_any().as_str(),
            ))
        })
        .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), s))
        .collect();
    let mut slices: HashMap<(String, String), Vec<Arc<EndpointSlice>>> = HashMap::new();
    for s in index.slices.all() {
        let Some(svc) = s.labels().get("kubernetes.io/service-name").cloned() else {
            continue;
        };
        let ns = s.namespace().unwrap_or_default();
        if wanted_services.contains(&(ns.as_str(), svc.as_str())) {
            slices.entry((ns, svc)).or_default().push(s);
        }
    }
    let mut out = BTreeMap::new();
    for key in wanted {
        let Some(svc) = services.get(&(key.namespace.clone(), key.service.clone())) else {
            continue;
        };
        let Some(port) = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| ports.iter().find(|p| p.port == key.port))
        else {
            continue;
        };
        let port_name = port.name.clone().unwrap_or_default();
        let mut eps = Vec::new();
        for slice in slices
            .get(&(key.namespace.clone(), key.service.clone()))
            .into_iter()
            .flatten()
        {
            let Some(target) = slice
                .ports
                .as_ref()
                .and_then(|ps| {
                    ps.iter()
                        .find(|p| p.name.clone().unwrap_or_default() == port_name)
                })
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for e in slice.endpoints.iter().flatten() {
                let c = e.conditions.as_ref();
                // EndpointSlice semantics: an unknown ready state is ready.
                let ready = c.and_then(|c| c.ready).unwrap_or(true);
                let serving = c.and_then(|c| c.serving).unwrap_or(ready);
                let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
                for address in &e.addresses {
                    eps.push(Endpoint {
                        address: address.clone(),
                        port: target,
                        weight: 1,
                        zone: e.zone.clone(),
                        for_zones: e
                            .hints
                            .as_ref()
                            .and_then(|h| h.for_zones.as_ref())
                            .map(|z| z.iter().map(|z| z.name.clone()).collect())
                            .unwrap_or_default(),
                        ready,
                        serving,
                        terminating,
                    });
                }
            }
        }
        out.insert(key, eps);
    }
    out
}

fn referenced_secrets(
    index: &Index,
    routes: &[Object<ApiRouteSpec>],
    pools: &[Object<UpstreamPoolSpec>],
    auth_policies: &[Object<AuthPolicySpec>],
) -> BTreeMap<(String, String), BTreeMap<String, Vec<u8>>> {
    let mut names: BTreeSet<(String, String)> = BTreeSet::new();
    for r in routes {
        let ns = r.metadata.namespace().to_string();
        for name in r.spec.secret_names() {
            names.insert((ns.clone(), name.to_string()));
        }
    }
    for p in auth_policies {
        let ns = p.metadata.namespace().to_string();
        for name in p.spec.secret_names() {
            names.insert((ns.clone(), name.to_string()));
        }
    }
    for p in pools {
        let ns = p.metadata.namespace().to_string();
        if let Some(t) = &p.spec.tls {
            for s in t
                .ca_secret_ref
                .iter()
                .chain(t.client_certificate_secret_ref.iter())
            {
                names.insert((ns.clone(), s.name.clone()));
            }
        }
    }
    if names.is_empty() {
        return BTreeMap::new();
    }
    index
        .secrets
        .all()
        .filter_map(|s: Arc<Secret>| {
            let key = (s.namespace().unwrap_or_default(), s.name_any());
            names.contains(&key).then(|| {
                let data = s
                    .data
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                (key, data)
            })
        })
        .collect()
}

/// Recompiles after changes, debounced, and publishes tables whose content changed.
pub async fn run(
    index: Arc<Index>,
    clock: Arc<VersionClock>,
    republish: Arc<Notify>,
    debounce: Duration,
    max_wait: Duration,
    tx: watch::Sender<Option<Arc<Compiled>>>,
    metrics: Arc<Metrics>,
) {
    let mut force = true;
    loop {
        if !force {
            tokio::select! {
                _ = index.changed.notified() => {}
                _ = republish.notified() => force = true,
            }
            // Debounce: wait for a quiet period, but never longer than max_wait in total.
            let first = Instant::now();
            loop {
                let left = max_wait.saturating_sub(first.elapsed());
                if left.is_zero() {
                    break;
                }
                tokio::select! {
                    _ = index.changed.notified() => continue,
                    _ = tokio::time::sleep(debounce.min(left)) => break,
                }
            }
        }
        let started = Instant::now();
        let previous = tx.borrow().clone();
        let config = index.config_dirty.swap(false, Ordering::SeqCst);
        let endpoints = index.endpoints_dirty.swap(false, Ordering::SeqCst);
        let result = match previous.as_deref() {
            Some(prev) if !force && !config && endpoints => {
                metrics.fast_path_compiles.inc();
                refresh_index(&index, &clock, prev)
            }
            Some(_) if !force && !config && !endpoints => None,
            prev => compile_index(&index, &clock, if force { None } else { prev }),
        };
        force = false;
        metrics.compiles.inc();
        metrics
            .compile_duration
            .observe(started.elapsed().as_secs_f64());
        let same_table = |c: &Compiled| {
            previous
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(&p.snapshot, &c.snapshot))
        };
        match result {
            Some(c) if same_table(&c) => {
                // Published for the status writer alone; the pusher sees nothing new.
                tracing::debug!(
                    version = c.snapshot.version,
                    "status inputs changed; table unchanged"
                );
                metrics.compiles_unchanged.inc();
                tx.send_replace(Some(Arc::new(c)));
            }
            Some(c) => {
                metrics.snapshot_bytes.set(c.bytes as i64);
                metrics.snapshot_version.set(c.snapshot.version as i64);
                tracing::info!(
                    version = c.snapshot.version,
                    hash = %c.snapshot.hash,
                    routes = c.snapshot.table.route_count(),
                    clusters = c.snapshot.table.clusters.len(),
                    diagnostics = c.diagnostics.len(),
                    compile_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "table compiled"
                );
                for d in c.diagnostics.iter() {
                    tracing::debug!("{d}");
                }
                tx.send_replace(Some(Arc::new(c)));
            }
            None => {
                metrics.compiles_unchanged.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::FutureExt;
    use parapet_crds::compiler::{Reason, Severity};
    use proptest::prelude::*;
    use tokio::time::{sleep, timeout};

    use super::*;
    use crate::testkit::{Ep, TestIndex, route, service, service_pool, slice, static_pool};

    fn key(ns: &str, service: &str, port: i32) -> ServicePortKey {
        ServicePortKey {
            namespace: ns.into(),
            service: service.into(),
            port,
        }
    }

    #[test]
    fn service_ports_map_to_slice_ports_by_name() {
        let mut t = TestIndex::new();
        t.apply_service(service(
            "shop",
            "web",
            &[(Some("http"), 80), (Some("metrics"), 9090)],
        ));
        t.apply_service(service("shop", "single", &[(None, 80)]));
        // Two slices of one Service may give a port different numbers (a rollout).
        t.apply_slice(slice(
            "shop",
            "web-a",
            "web",
            "IPv4",
            &[(Some("metrics"), 9100), (Some("http"), 8080)],
            &[Ep::ready("10.0.0.1")],
        ));
        let unknown = Ep {
            ready: None,
            serving: None,
            terminating: None,
            ..Ep::ready("10.0.0.2")
        };
        let draining = Ep {
            ready: Some(false),
            serving: Some(true),
            terminating: Some(true),
            ..Ep::ready("10.0.0.3")
        };
        t.apply_slice(slice(
            "shop",
            "web-b",
            "web",
            "IPv4",
            &[(Some("http"), 8081)],
            &[unknown, draining],
        ));
        t.apply_slice(slice(
            "shop",
            "other-a",
            "other",
            "IPv4",
            &[(Some("http"), 7000)],
            &[Ep::ready("10.9.9.9")],
        ));
        t.apply_slice(slice(
            "shop",
            "single-a",
            "single",
            "IPv4",
            &[(None, 3000)],
            &[Ep::ready("10.0.1.1")],
        ));
        let pools = [
            service_pool("shop", "http", "web", 80),
            service_pool("shop", "metrics", "web", 9090),
            service_pool("shop", "unnamed", "single", 80),
            service_pool("shop", "no-port", "web", 81),
            service_pool("shop", "no-service", "ghost", 80),
        ];
        let eps = service_endpoints(&t.index, &pools.clone().map(Object::from));
        let got = |k: ServicePortKey| {
            let mut v: Vec<(String, u16, bool, bool, bool)> = eps[&k]
                .iter()
                .map(|e| (e.address.clone(), e.port, e.ready, e.serving, e.terminating))
                .collect();
            v.sort();
            v
        };
        let e = |a: &str, p, r, s, t| (a.to_string(), p, r, s, t);
        assert_eq!(
            got(key("shop", "web", 80)),
            [
                e("10.0.0.1", 8080, true, true, false),
                // Unknown conditions: ready, and serving as ready is.
                e("10.0.0.2", 8081, true, true, false),
                e("10.0.0.3", 8081, false, true, true),
            ]
        );
        // web-b has no metrics port: it contributes nothing to that port.
        assert_eq!(
            got(key("shop", "web", 9090)),
            [e("10.0.0.1", 9100, true, true, false)]
        );
        assert_eq!(
            got(key("shop", "single", 80)),
            [e("10.0.1.1", 3000, true, true, false)]
        );
        // No such Service port, no such Service: absent, which the compiler reports.
        assert!(!eps.contains_key(&key("shop", "web", 81)));
        assert!(!eps.contains_key(&key("shop", "ghost", 80)));

        for p in &pools {
            t.apply_pool(p);
        }
        let names: Vec<&str> = pools
            .iter()
            .map(|p| p.metadata.name.as_deref().unwrap())
            .collect();
        t.apply_route(&route("shop", "r", 1, "shop.example", &names));
        let c = compile_index(&t.index, &VersionClock::default(), None).expect("compiled");
        assert_eq!(c.pool_endpoints[&("shop".into(), "http".into())], (3, 2));
        assert_eq!(c.pool_endpoints[&("shop".into(), "no-port".into())], (0, 0));
        let d: Vec<_> = c
            .diagnostics
            .for_object(compiler::KIND_POOL, "shop", "no-port")
            .collect();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].reason, Reason::ServiceNotFound);
        assert!(
            d[0].message.contains("shop/web port 81"),
            "{}",
            d[0].message
        );
    }

    #[test]
    fn what_only_status_shows_is_published_under_the_same_version() {
        let mut t = TestIndex::new();
        t.apply_pool(&static_pool("shop", "web", &["10.0.0.1"]));
        t.apply_route(&route("shop", "r", 1, "shop.example", &["web"]));
        // A pool no route uses yet: not in the table, but its status is written.
        t.apply_pool(&service_pool("shop", "idle", "idle", 80));
        let idle = service("shop", "idle", &[(Some("http"), 80)]);
        t.apply_service(idle.clone());
        let clock = VersionClock::default();
        let first = compile_index(&t.index, &clock, None).expect("compiled");
        let counts = |c: &Compiled| c.pool_endpoints[&("shop".into(), "idle".into())];
        assert_eq!(counts(&first), (0, 0));

        // Its Service gets an endpoint: the table is the same, the pool's counts are not.
        t.apply_slice(slice(
            "shop",
            "idle-a",
            "idle",
            "IPv4",
            &[(Some("http"), 8080)],
            &[Ep::ready("10.0.0.9")],
        ));
        let second = refresh_index(&t.index, &clock, &first).expect("the counts changed");
        assert!(
            Arc::ptr_eq(&second.snapshot, &first.snapshot),
            "nothing new to push"
        );
        assert_eq!(counts(&second), (1, 1));
        assert!(refresh_index(&t.index, &clock, &second).is_none());

        // Its Service goes: the table is the same, the pool's ResolvedRefs is not.
        t.delete_service(idle);
        let third = compile_index(&t.index, &clock, Some(&second)).expect("a diagnostic changed");
        assert!(
            Arc::ptr_eq(&third.snapshot, &first.snapshot),
            "nothing new to push"
        );
        assert!(
            third
                .diagnostics
                .for_object(compiler::KIND_POOL, "shop", "idle")
                .any(|d| d.reason == Reason::ServiceNotFound)
        );
        assert_eq!(counts(&third), (0, 0));
        assert!(compile_index(&t.index, &clock, Some(&third)).is_none());
    }

    // ---- the endpoint-only fast path against a full compile ----

    /// Services s0 (ports http 80 and grpc 81) and s1 (one unnamed port 80) may exist;
    /// pools on s0:80, s0:81, s1:80, s2:80 (never a Service) and a static one.
    const POOLS: [(&str, &str, i32); 4] = [
        ("on-http", "s0", 80),
        ("on-grpc", "s0", 81),
        ("on-unnamed", "s1", 80),
        ("on-nothing", "s2", 80),
    ];

    /// An endpoint's address byte and its ready, serving and terminating conditions.
    type EpGen = (u8, Option<bool>, Option<bool>, Option<bool>);

    #[derive(Clone, Debug)]
    struct SliceGen {
        service: usize,
        ports: Vec<(Option<&'static str>, i32)>,
        endpoints: Vec<EpGen>,
    }

    fn arb_slices() -> impl Strategy<Value = Vec<SliceGen>> {
        let port = (
            prop::sample::select(vec![Some("http"), Some("grpc"), None]),
            prop::sample::select(vec![8080, 8081, 9090]),
        );
        let ep = (
            0u8..6,
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
            prop::option::of(any::<bool>()),
        );
        prop::collection::vec(
            (
                0usize..3,
                prop::collection::vec(port, 0..3),
                prop::collection::vec(ep, 0..4),
            )
                .prop_map(|(service, ports, endpoints)| SliceGen {
                    service,
                    ports,
                    endpoints,
                }),
            0..4,
        )
    }

    fn real_slice(i: usize, g: &SliceGen) -> EndpointSlice {
        let eps: Vec<Ep> = g
            .endpoints
            .iter()
            .map(|(a, ready, serving, terminating)| Ep {
                ready: *ready,
                serving: *serving,
                terminating: *terminating,
                ..Ep::ready(&format!("10.0.{}.{a}", g.service))
            })
            .collect();
        slice(
            "shop",
            &format!("slice-{i}"),
            &format!("s{}", g.service),
            "IPv4",
            &g.ports,
            &eps,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Whatever the resources and whatever changes in the EndpointSlices, the fast path
        /// gives the table (and endpoint counts) a full compile of the final state gives.
        #[test]
        fn the_endpoint_fast_path_equals_a_full_compile(
            services in (any::<bool>(), any::<bool>()),
            pools in prop::collection::vec(any::<bool>(), POOLS.len() + 1),
            referenced in prop::collection::vec(any::<bool>(), POOLS.len() + 1),
            before in arb_slices(),
            after in arb_slices(),
        ) {
            let mut t = TestIndex::new();
            if services.0 {
                t.apply_service(service("shop", "s0", &[(Some("http"), 80), (Some("grpc"), 81)]));
            }
            if services.1 {
                t.apply_service(service("shop", "s1", &[(None, 80)]));
            }
            let mut names: Vec<&str> = POOLS.iter().map(|p| p.0).collect();
            names.push("static");
            for (i, name) in names.iter().enumerate() {
                if !pools[i] {
                    continue;
                }
                match POOLS.get(i) {
                    Some((n, s, port)) => t.apply_pool(&service_pool("shop", n, s, *port)),
                    None => t.apply_pool(&static_pool("shop", name, &["10.9.0.1"])),
                }
            }
            let wanted: Vec<&str> = names.iter().zip(&referenced).filter(|(_, r)| **r).map(|(n, _)| *n).collect();
            if !wanted.is_empty() {
                t.apply_route(&route("shop", "r", 1, "shop.example", &wanted));
            }
            for (i, s) in before.iter().enumerate() {
                t.apply_slice(real_slice(i, s));
            }
            let clock = VersionClock::default();
            let previous = compile_index(&t.index, &clock, None).expect("a first compile publishes");

            // The change: slices replaced, added and deleted.
            for (i, s) in after.iter().enumerate() {
                t.apply_slice(real_slice(i, s));
            }
            for (i, s) in before.iter().enumerate().skip(after.len()) {
                t.delete_slice(real_slice(i, s));
            }

            let fast = refresh_index(&t.index, &clock, &previous);
            let full = compile_index(&t.index, &clock, None).expect("a full compile publishes");
            let fast_table = fast.as_ref().map_or(&previous.snapshot.table, |c| &c.snapshot.table);
            prop_assert_eq!(fast_table, &full.snapshot.table);
            if let Some(fast) = &fast {
                // A new version exactly when there is a new table to push.
                prop_assert_eq!(
                    fast.snapshot.version > previous.snapshot.version,
                    fast.snapshot.table != previous.snapshot.table
                );
                prop_assert_eq!(&fast.snapshot.hash, &full.snapshot.hash);
                prop_assert_eq!(&fast.pool_endpoints, &full.pool_endpoints);
                prop_assert_eq!(&fast.objects, &full.objects);
                prop_assert_eq!(&fast.sources, &full.sources);
            }
            let counts = fast.as_ref().map_or(&previous.pool_endpoints, |c| &c.pool_endpoints);
            prop_assert_eq!(counts, &full.pool_endpoints);
            // Errors never depend on endpoints, so the ones kept are still right.
            let errors = |c: &Compiled| c.diagnostics.errors().cloned().collect::<Vec<_>>();
            prop_assert_eq!(errors(&previous), errors(&full));
        }
    }

    // ---- the compile loop, on a paused clock ----

    const DEBOUNCE: Duration = Duration::from_millis(200);
    const MAX_WAIT: Duration = Duration::from_secs(1);

    /// A Service with one slice whose single endpoint is `10.0.0.{n}`.
    fn web_slice(n: u32) -> EndpointSlice {
        slice(
            "shop",
            "web-a",
            "web",
            "IPv4",
            &[(Some("http"), 8080)],
            &[Ep::ready(&format!("10.0.{}.{}", n / 250, n % 250))],
        )
    }

    fn shop() -> TestIndex {
        let mut t = TestIndex::new();
        t.apply_service(service("shop", "web", &[(Some("http"), 80)]));
        t.apply_pool(&service_pool("shop", "web", "web", 80));
        t.apply_route(&route("shop", "r", 1, "shop.example", &["web"]));
        t.apply_slice(web_slice(0));
        t
    }

    fn endpoint_of(c: &Compiled) -> String {
        c.snapshot.table.clusters[0].endpoints[0].address.clone()
    }

    /// Starts the loop on `t` and waits for its first (forced) compile, which covers what
    /// `t` holds, so the change signals from building `t` are dropped.
    async fn start(t: &TestIndex) -> (watch::Receiver<Option<Arc<Compiled>>>, Arc<Metrics>) {
        let _ = t.index.changed.notified().now_or_never();
        let (tx, mut rx) = watch::channel(None);
        let metrics = Arc::new(Metrics::new());
        tokio::spawn(run(
            t.index.clone(),
            Arc::new(VersionClock::default()),
            Arc::new(Notify::new()),
            DEBOUNCE,
            MAX_WAIT,
            tx,
            metrics.clone(),
        ));
        let started = Instant::now();
        published(&mut rx).await;
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "the first compile is at once"
        );
        (rx, metrics)
    }

    /// Waits for the next published table; a minute of virtual time without one fails the
    /// test instead of hanging it.
    async fn published(rx: &mut watch::Receiver<Option<Arc<Compiled>>>) {
        timeout(Duration::from_secs(60), rx.changed())
            .await
            .expect("a table within a minute")
            .expect("the loop runs");
    }

    fn latest(rx: &watch::Receiver<Option<Arc<Compiled>>>) -> Arc<Compiled> {
        rx.borrow().clone().expect("a table")
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_compiles_once_after_the_quiet_time() {
        let mut t = shop();
        let (mut rx, metrics) = start(&t).await;
        let t0 = Instant::now();
        for n in 1..=5 {
            t.apply_slice(web_slice(n));
            sleep(Duration::from_millis(50)).await;
        }
        // The last change came at 200 ms: one compile, a quiet time later.
        published(&mut rx).await;
        assert_eq!(t0.elapsed(), Duration::from_millis(400));
        assert_eq!(metrics.compiles.get(), 2);
        assert_eq!(metrics.fast_path_compiles.get(), 1);
        assert_eq!(endpoint_of(&latest(&rx)), "10.0.0.5");
        // And nothing more without a change.
        assert!(
            timeout(Duration::from_secs(60), rx.changed())
                .await
                .is_err()
        );
        assert_eq!(metrics.compiles.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn constant_churn_compiles_at_max_wait() {
        let mut t = shop();
        let (mut rx, metrics) = start(&t).await;
        let t0 = Instant::now();
        // A change every 70 ms (never quiet for the 200 ms debounce) until 2.8 s.
        tokio::spawn(async move {
            for n in 1..=41 {
                t.apply_slice(web_slice(n));
                sleep(Duration::from_millis(70)).await;
            }
        });
        let mut at = Vec::new();
        for _ in 0..3 {
            published(&mut rx).await;
            at.push((t0.elapsed().as_millis(), endpoint_of(&latest(&rx))));
        }
        // max_wait after the first change of each round (0 ms, 1050 ms); the last round
        // ends a quiet time after the churn stops (2800 ms + 200 ms).
        assert_eq!(
            at,
            [
                (1000, "10.0.0.15".to_string()),
                (2050, "10.0.0.30".to_string()),
                (3000, "10.0.0.41".to_string()),
            ]
        );
        assert!(
            timeout(Duration::from_secs(60), rx.changed())
                .await
                .is_err()
        );
        assert_eq!(metrics.compiles.get(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_takes_the_fast_path_only_when_only_endpoints_changed() {
        let mut t = shop();
        let (mut rx, metrics) = start(&t).await;
        let full = |t: &TestIndex| {
            compile_index(&t.index, &VersionClock::default(), None)
                .unwrap()
                .snapshot
                .table
                .clone()
        };

        t.apply_slice(web_slice(7));
        published(&mut rx).await;
        assert_eq!(metrics.fast_path_compiles.get(), 1);
        assert_eq!(latest(&rx).snapshot.table, full(&t));

        // A Service change can remap ports: a full compile.
        t.apply_service(service("shop", "web", &[(Some("alt"), 80)]));
        t.apply_slice(slice(
            "shop",
            "web-a",
            "web",
            "IPv4",
            &[(Some("http"), 8080), (Some("alt"), 9000)],
            &[Ep::ready("10.0.0.7")],
        ));
        published(&mut rx).await;
        assert_eq!(metrics.fast_path_compiles.get(), 1);
        assert_eq!(metrics.compiles.get(), 3);
        let c = latest(&rx);
        assert_eq!(c.snapshot.table, full(&t));
        assert_eq!(c.snapshot.table.clusters[0].endpoints[0].port, 9000);
        assert!(c.diagnostics.iter().all(|d| d.severity != Severity::Error));
    }
}
