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
    api::{ApiRoute, CachePolicy, UpstreamPool},
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
    /// JSON bytes of the snapshot (as pushed, before compression).
    pub bytes: usize,
    /// The pools as read, for the endpoint-only fast path.
    pub pools: Arc<Vec<UpstreamPool>>,
    /// The objects (and generations) this table carries, for per-object `Programmed`.
    pub sources: Arc<Sources>,
}

/// (kind, namespace, name, generation) of every object a table was compiled from.
pub type Sources = HashSet<(String, String, String, i64)>;

fn sources(s: &Snapshot) -> Arc<Sources> {
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

fn convert<T: serde::de::DeserializeOwned>(o: &DynamicObject) -> Result<T, String> {
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
    let mut routes: Vec<ApiRoute> = Vec::new();
    for o in index.routes.all() {
        let key = read(compiler::KIND_ROUTE, &o);
        match convert(&o) {
            Ok(v) => routes.push(v),
            Err(e) => malformed.push((key, e)),
        }
    }
    let mut pools: Vec<UpstreamPool> = Vec::new();
    for o in index.pools.all() {
        let key = read(compiler::KIND_POOL, &o);
        match convert(&o) {
            Ok(v) => pools.push(v),
            Err(e) => malformed.push((key, e)),
        }
    }
    let mut policies: Vec<CachePolicy> = Vec::new();
    for o in index.cache_policies.all() {
        let key = read(compiler::KIND_CACHE_POLICY, &o);
        match convert(&o) {
            Ok(v) => policies.push(v),
            Err(e) => malformed.push((key, e)),
        }
    }
    objects.sort();

    let service_endpoints = service_endpoints(index, &pools);
    let secrets = referenced_secrets(index, &routes, &pools);
    let inputs = Inputs {
        routes: routes.iter().collect(),
        pools: pools.iter().collect(),
        cache_policies: policies.iter().collect(),
        service_endpoints,
        secrets,
        secret_label_selector: index.secret_label_selector.clone(),
        key_salt_seed: Vec::new(),
    };
    let out = compiler::compile(&inputs);
    let pool_endpoints = pool_endpoints(&pools, &inputs.service_endpoints);
    if let Some(prev) = previous
        && prev.snapshot.table == out.table
        && prev.malformed == malformed
    {
        return None;
    }
    let mut snapshot = Snapshot::new(clock.next(), out.table);
    // Compiles run only after every watch has listed its objects, so an empty table here
    // is what the cluster says, not an empty cache: say so to the data planes' wipe guard.
    snapshot.allow_empty = snapshot.table.route_count() == 0;
    let bytes = serde_json::to_vec(&snapshot)
        .map(|v| v.len())
        .unwrap_or_default();
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
    if table == prev.snapshot.table {
        return None;
    }
    let mut snapshot = Snapshot::new(clock.next(), table);
    snapshot.allow_empty = prev.snapshot.allow_empty;
    let bytes = serde_json::to_vec(&snapshot)
        .map(|v| v.len())
        .unwrap_or_default();
    Some(Compiled {
        snapshot: Arc::new(snapshot),
        diagnostics: prev.diagnostics.clone(),
        malformed: prev.malformed.clone(),
        objects: prev.objects.clone(),
        pool_endpoints: pool_endpoints(&prev.pools, &inputs.service_endpoints),
        bytes,
        pools: prev.pools.clone(),
        sources: prev.sources.clone(),
    })
}

fn pool_endpoints(
    pools: &[UpstreamPool],
    service_endpoints: &BTreeMap<ServicePortKey, Vec<Endpoint>>,
) -> BTreeMap<(String, String), (usize, usize)> {
    let mut out = BTreeMap::new();
    for p in pools {
        let ns = p.namespace().unwrap_or_default();
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
        out.insert((ns, p.name_any()), counts);
    }
    out
}

/// Endpoints of each (Service, port) that a pool references, from EndpointSlices, with the
/// Service port mapped to the slice port by name as Kubernetes does.
fn service_endpoints(
    index: &Index,
    pools: &[UpstreamPool],
) -> BTreeMap<ServicePortKey, Vec<Endpoint>> {
    let wanted: BTreeSet<ServicePortKey> = pools
        .iter()
        .filter_map(|p| {
            p.spec.service.as_ref().map(|s| ServicePortKey {
                namespace: p.namespace().unwrap_or_default(),
                service: s.name.clone(),
                port: s.port,
            })
        })
        .collect();
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
    routes: &[ApiRoute],
    pools: &[UpstreamPool],
) -> BTreeMap<(String, String), BTreeMap<String, Vec<u8>>> {
    let mut names: BTreeSet<(String, String)> = BTreeSet::new();
    for r in routes {
        let ns = r.namespace().unwrap_or_default();
        if let Some(t) = &r.spec.tls {
            names.insert((ns.clone(), t.secret_name.clone()));
        }
        for rule in &r.spec.rules {
            for s in rule
                .auth
                .iter()
                .flat_map(|a| a.api_keys.iter())
                .flat_map(|k| k.secret_refs.iter())
            {
                names.insert((ns.clone(), s.name.clone()));
            }
        }
    }
    for p in pools {
        let ns = p.namespace().unwrap_or_default();
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
        if let Some(c) = result {
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
        } else {
            metrics.compiles_unchanged.inc();
        }
    }
}
