//! For unit tests: an [`Index`] whose stores are written directly instead of by watches,
//! and builders for the Kubernetes objects it holds.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use k8s_openapi::api::{
    core::v1::{Secret, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Resource,
    api::{ApiResource, DynamicObject},
    runtime::{
        reflector::{Store, store::Writer},
        watcher,
    },
};
use parapet_crds::api::{ApiRoute, AuthPolicy, CachePolicy, UpstreamPool};
use serde_json::json;
use tokio::sync::Notify;

use crate::index::{Index, Stores};

/// An index and the writers that fill it. Writing signals as the watches do: Services and
/// the CRDs mark a full compile, EndpointSlices the endpoint-only fast path.
pub struct TestIndex {
    pub index: Arc<Index>,
    routes: Writer<DynamicObject>,
    pools: Writer<DynamicObject>,
    services: Writer<Service>,
    slices: Writer<EndpointSlice>,
    dataplane: Writer<EndpointSlice>,
}

fn one<K>(writer: &Writer<K>) -> Stores<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    Stores(vec![writer.as_reader()])
}

impl TestIndex {
    pub fn new() -> Self {
        let routes = Writer::new(ApiResource::erase::<ApiRoute>(&()));
        let pools = Writer::new(ApiResource::erase::<UpstreamPool>(&()));
        // No test writes CachePolicies or Secrets: empty stores.
        let cache_policies = Writer::new(ApiResource::erase::<CachePolicy>(&()));
        let auth_policies = Writer::new(ApiResource::erase::<AuthPolicy>(&()));
        let services = Writer::default();
        let slices = Writer::default();
        let secrets: Writer<Secret> = Writer::default();
        let dataplane: Writer<EndpointSlice> = Writer::default();
        let index = Index {
            routes: one(&routes),
            pools: one(&pools),
            cache_policies: one(&cache_policies),
            auth_policies: one(&auth_policies),
            services: one(&services),
            slices: one(&slices),
            secrets: one(&secrets),
            secret_label_selector: None,
            key_salt_seed: Vec::new(),
            dataplane: dataplane.as_reader(),
            changed: Arc::new(Notify::new()),
            dataplane_changed: Arc::new(Notify::new()),
            config_dirty: Arc::new(AtomicBool::new(false)),
            endpoints_dirty: Arc::new(AtomicBool::new(false)),
        };
        Self {
            index: Arc::new(index),
            routes,
            pools,
            services,
            slices,
            dataplane,
        }
    }

    fn config_changed(&self) {
        self.index.config_dirty.store(true, Ordering::SeqCst);
        self.index.changed.notify_one();
    }

    fn endpoints_changed(&self) {
        self.index.endpoints_dirty.store(true, Ordering::SeqCst);
        self.index.changed.notify_one();
    }

    pub fn apply_route(&mut self, r: &ApiRoute) {
        self.routes.apply_watcher_event(&apply(dynamic(r)));
        self.config_changed();
    }

    pub fn apply_pool(&mut self, p: &UpstreamPool) {
        self.pools.apply_watcher_event(&apply(dynamic(p)));
        self.config_changed();
    }

    /// An ApiRoute as the API server may hold it but the operator cannot read.
    pub fn apply_raw_route(&mut self, o: serde_json::Value) {
        self.routes
            .apply_watcher_event(&apply(serde_json::from_value(o).expect("a DynamicObject")));
        self.config_changed();
    }

    pub fn apply_service(&mut self, s: Service) {
        self.services.apply_watcher_event(&apply(s));
        self.config_changed();
    }

    pub fn delete_service(&mut self, s: Service) {
        self.services
            .apply_watcher_event(&watcher::Event::Delete(s));
        self.config_changed();
    }

    pub fn apply_slice(&mut self, s: EndpointSlice) {
        self.slices.apply_watcher_event(&apply(s));
        self.endpoints_changed();
    }

    pub fn delete_slice(&mut self, s: EndpointSlice) {
        self.slices.apply_watcher_event(&watcher::Event::Delete(s));
        self.endpoints_changed();
    }

    /// A slice of the data plane's own admin Service: where the pusher pushes.
    pub fn apply_dataplane_slice(&mut self, s: EndpointSlice) {
        self.dataplane.apply_watcher_event(&apply(s));
        self.index.dataplane_changed.notify_one();
    }

    pub fn dataplane_store(&self) -> Store<EndpointSlice> {
        self.index.dataplane.clone()
    }
}

fn apply<K>(o: K) -> watcher::Event<K> {
    watcher::Event::Apply(o)
}

fn dynamic<K: serde::Serialize>(o: &K) -> DynamicObject {
    serde_json::from_value(serde_json::to_value(o).expect("serialises")).expect("a DynamicObject")
}

pub fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("test object fits its type")
}

/// A Service with (name, port) ports.
pub fn service(ns: &str, name: &str, ports: &[(Option<&str>, i32)]) -> Service {
    let ports: Vec<serde_json::Value> = ports
        .iter()
        .map(|(n, p)| match n {
            Some(n) => json!({"name": n, "port": p}),
            None => json!({"port": p}),
        })
        .collect();
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"ports": ports},
    }))
}

/// One endpoint of a slice; `None` conditions are left out (unknown).
#[derive(Clone, Debug)]
pub struct Ep {
    pub addr: String,
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    pub pod: Option<String>,
}

impl Ep {
    pub fn ready(addr: &str) -> Self {
        Self {
            addr: addr.to_string(),
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
            pod: None,
        }
    }
}

/// An EndpointSlice of `service` with (name, port) ports.
pub fn slice(
    ns: &str,
    name: &str,
    service: &str,
    address_type: &str,
    ports: &[(Option<&str>, i32)],
    endpoints: &[Ep],
) -> EndpointSlice {
    let ports: Vec<serde_json::Value> = ports
        .iter()
        .map(|(n, p)| match n {
            Some(n) => json!({"name": n, "port": p}),
            None => json!({"port": p}),
        })
        .collect();
    let endpoints: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|e| {
            let mut c = serde_json::Map::new();
            for (k, v) in [
                ("ready", e.ready),
                ("serving", e.serving),
                ("terminating", e.terminating),
            ] {
                if let Some(v) = v {
                    c.insert(k.into(), json!(v));
                }
            }
            let mut v = json!({"addresses": [e.addr], "conditions": c});
            if let Some(p) = &e.pod {
                v["targetRef"] = json!({"kind": "Pod", "name": p, "namespace": ns});
            }
            v
        })
        .collect();
    from_json(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    }))
}

/// An UpstreamPool on a Service port.
pub fn service_pool(ns: &str, name: &str, service: &str, port: i32) -> UpstreamPool {
    from_json(json!({
        "apiVersion": "parapet.dev/v1alpha1",
        "kind": "UpstreamPool",
        "metadata": {"name": name, "namespace": ns, "generation": 1},
        "spec": {"service": {"name": service, "port": port}},
    }))
}

/// An UpstreamPool with static endpoints.
pub fn static_pool(ns: &str, name: &str, addrs: &[&str]) -> UpstreamPool {
    let eps: Vec<serde_json::Value> = addrs
        .iter()
        .map(|a| json!({"address": a, "port": 8080}))
        .collect();
    from_json(json!({
        "apiVersion": "parapet.dev/v1alpha1",
        "kind": "UpstreamPool",
        "metadata": {"name": name, "namespace": ns, "generation": 1},
        "spec": {"static": eps},
    }))
}

/// An ApiRoute on `host` with one rule per pool, `/{pool}` to it.
pub fn route(ns: &str, name: &str, generation: i64, host: &str, pools: &[&str]) -> ApiRoute {
    let rules: Vec<serde_json::Value> = pools
        .iter()
        .map(|p| json!({"matches": [{"path": {"value": format!("/{p}")}}], "backends": [{"pool": p}]}))
        .collect();
    from_json(json!({
        "apiVersion": "parapet.dev/v1alpha1",
        "kind": "ApiRoute",
        "metadata": {"name": name, "namespace": ns, "generation": generation},
        "spec": {"hosts": [host], "rules": rules},
    }))
}
