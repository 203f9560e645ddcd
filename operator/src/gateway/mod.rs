//! Gateway API: the second way in. One resource change is followed in this order:
//! 1. [`GatewayIndex`]: watches of GatewayClasses, Gateways, HTTPRoutes, GRPCRoutes,
//!    ReferenceGrants, Namespaces and TLS Secrets (Services, EndpointSlices, pools and
//!    cache policies come from the main [`Index`]).
//! 2. [`compile`]: the compiler's Gateway translation over both, giving one table per
//!    Gateway and every status.
//! 3. [`fleets`]: per Gateway, its data-plane fleet provisioned and its table pushed to
//!    that fleet alone.
//! 4. [`status`]: GatewayClass, Gateway and route status, written by the leader, only
//!    when it changes.
//!
//! All of it runs only when the Gateway API CRDs are installed.

pub mod fleets;
pub mod provisioner;
pub mod status;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, atomic::AtomicBool},
};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client, ResourceExt,
    runtime::{reflector::Store, reflector::store::Writer, watcher},
};
use parapet_crds::{
    api::{AuthPolicySpec, CachePolicySpec, Object, UpstreamPoolSpec},
    compiler::{
        Inputs, ServicePortKey,
        gateway::{GatewayInputs, GatewayOutput, compile_gateways},
    },
    gateway_api::{
        gatewayclasses::{GatewayClass, GatewayClassSpec},
        gateways::{Gateway, GatewaySpec},
        grpcroutes::{GrpcRoute, GrpcRouteSpec},
        httproutes::{HttpRoute, HttpRouteSpec},
        referencegrants::{ReferenceGrant, ReferenceGrantSpec},
    },
};
use tokio::sync::Notify;

use crate::{
    compile::{convert, pool_services, service_endpoints_for},
    index::{Index, Signal, watch},
};

/// Watches of the Gateway API objects and what they refer to beyond the main index.
pub struct GatewayIndex {
    pub classes: Store<GatewayClass>,
    pub gateways: Store<Gateway>,
    pub http_routes: Store<HttpRoute>,
    pub grpc_routes: Store<GrpcRoute>,
    pub grants: Store<ReferenceGrant>,
    pub namespaces: Store<Namespace>,
    /// `kubernetes.io/tls` Secrets, which listeners' certificateRefs name (Gateway API
    /// users do not label them for Parapet, so the main index's selector cannot apply).
    pub tls_secrets: Store<Secret>,
    /// Signalled on any change that can change a table or a status.
    pub changed: Arc<Notify>,
}

impl GatewayIndex {
    pub fn start(client: &Client) -> Self {
        let changed = Arc::new(Notify::new());
        let dirty = Arc::new(AtomicBool::new(false));
        let w = |signal| (changed.clone(), dirty.clone(), signal);
        macro_rules! all {
            ($k:ty, $signal:expr) => {{
                let (c, d, s) = w($signal);
                watch(
                    Api::<$k>::all(client.clone()),
                    watcher::Config::default(),
                    Writer::default(),
                    c,
                    d,
                    s,
                )
            }};
        }
        let (c, d, s) = w(Signal::EveryChange);
        let tls_secrets = watch(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default().fields("type=kubernetes.io/tls"),
            Writer::default(),
            c,
            d,
            s,
        );
        Self {
            classes: all!(GatewayClass, Signal::SpecChanges),
            gateways: all!(Gateway, Signal::SpecChanges),
            http_routes: all!(HttpRoute, Signal::SpecChanges),
            grpc_routes: all!(GrpcRoute, Signal::SpecChanges),
            grants: all!(ReferenceGrant, Signal::EveryChange),
            namespaces: all!(Namespace, Signal::EveryChange),
            tls_secrets,
            changed,
        }
    }

    pub async fn wait_ready(&self) {
        let _ = self.classes.wait_until_ready().await;
        let _ = self.gateways.wait_until_ready().await;
        let _ = self.http_routes.wait_until_ready().await;
        let _ = self.grpc_routes.wait_until_ready().await;
        let _ = self.grants.wait_until_ready().await;
        let _ = self.namespaces.wait_until_ready().await;
        let _ = self.tls_secrets.wait_until_ready().await;
    }
}

/// Whether the Gateway API CRDs are installed (the operator serves Gateway API only then).
pub async fn installed(client: &Client) -> bool {
    Api::<Gateway>::all(client.clone())
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .is_ok()
}

fn object<S: Clone>(meta: &kube::api::ObjectMeta, spec: &S) -> Object<S> {
    Object {
        metadata: meta.into(),
        spec: spec.clone(),
    }
}

/// What the compiler reads, copied out of the stores.
pub struct Snapshot {
    classes: Vec<Object<GatewayClassSpec>>,
    gateways: Vec<Object<GatewaySpec>>,
    http_routes: Vec<Object<HttpRouteSpec>>,
    grpc_routes: Vec<Object<GrpcRouteSpec>>,
    grants: Vec<Object<ReferenceGrantSpec>>,
    namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
    pools: Vec<Object<UpstreamPoolSpec>>,
    policies: Vec<Object<CachePolicySpec>>,
    auth_policies: Vec<Object<AuthPolicySpec>>,
    secrets: BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>,
}

impl Snapshot {
    pub fn read(index: &Index, gw: &GatewayIndex) -> Self {
        let secret_data = |s: &Secret| -> BTreeMap<String, Vec<u8>> {
            s.data
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        };
        let mut secrets = BTreeMap::new();
        for s in gw
            .tls_secrets
            .state()
            .iter()
            .chain(index.secrets.all().collect::<Vec<_>>().iter())
        {
            secrets.insert(
                (s.namespace().unwrap_or_default(), s.name_any()),
                secret_data(s),
            );
        }
        Self {
            classes: gw
                .classes
                .state()
                .iter()
                .map(|o| object(&o.metadata, &o.spec))
                .collect(),
            gateways: gw
                .gateways
                .state()
                .iter()
                .map(|o| object(&o.metadata, &o.spec))
                .collect(),
            http_routes: gw
                .http_routes
                .state()
                .iter()
                .map(|o| object(&o.metadata, &o.spec))
                .collect(),
            grpc_routes: gw
                .grpc_routes
                .state()
                .iter()
                .map(|o| object(&o.metadata, &o.spec))
                .collect(),
            grants: gw
                .grants
                .state()
                .iter()
                .map(|o| object(&o.metadata, &o.spec))
                .collect(),
            namespace_labels: gw
                .namespaces
                .state()
                .iter()
                .map(|n| (n.name_any(), n.labels().clone()))
                .collect(),
            pools: index.pools.all().filter_map(|o| convert(&o).ok()).collect(),
            policies: index
                .cache_policies
                .all()
                .filter_map(|o| convert(&o).ok())
                .collect(),
            auth_policies: index
                .auth_policies
                .all()
                .filter_map(|o| convert(&o).ok())
                .collect(),
            secrets,
        }
    }

    /// The Service ports routes and pools refer to.
    fn wanted_services(&self) -> BTreeSet<ServicePortKey> {
        let mut wanted = pool_services(&self.pools);
        let mut add = |route_ns: &str, v: serde_json::Value| {
            // backendRefs and mirror backendRefs alike: every object with a name and a
            // port under `rules`.
            collect_refs(route_ns, &v, &mut wanted);
        };
        for r in &self.http_routes {
            add(
                r.metadata.namespace(),
                serde_json::to_value(&r.spec.rules).unwrap_or_default(),
            );
        }
        for r in &self.grpc_routes {
            add(
                r.metadata.namespace(),
                serde_json::to_value(&r.spec.rules).unwrap_or_default(),
            );
        }
        wanted
    }
}

/// Every `{name, port[, namespace]}` object below `v` that is a Service reference.
fn collect_refs(route_ns: &str, v: &serde_json::Value, out: &mut BTreeSet<ServicePortKey>) {
    match v {
        serde_json::Value::Array(items) => {
            items.iter().for_each(|i| collect_refs(route_ns, i, out))
        }
        serde_json::Value::Object(map) => {
            let kind = map
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or("Service");
            let group = map.get("group").and_then(|k| k.as_str()).unwrap_or("");
            if let (Some(name), Some(port)) = (
                map.get("name").and_then(|n| n.as_str()),
                map.get("port").and_then(|p| p.as_i64()),
            ) && kind == "Service"
                && group.is_empty()
            {
                out.insert(ServicePortKey {
                    namespace: map
                        .get("namespace")
                        .and_then(|n| n.as_str())
                        .unwrap_or(route_ns)
                        .to_string(),
                    service: name.to_string(),
                    port: i32::try_from(port).unwrap_or_default(),
                });
            }
            map.values().for_each(|x| collect_refs(route_ns, x, out));
        }
        _ => {}
    }
}

/// Compiles every Gateway from what the stores hold.
pub fn compile(index: &Index, snap: &Snapshot) -> GatewayOutput {
    let inputs = Inputs {
        routes: Vec::new(),
        pools: snap.pools.iter().collect(),
        cache_policies: snap.policies.iter().collect(),
        auth_policies: snap.auth_policies.iter().collect(),
        service_endpoints: service_endpoints_for(index, snap.wanted_services()),
        secrets: snap.secrets.clone(),
        secret_label_selector: None,
        key_salt_seed: index.key_salt_seed.clone(),
    };
    let gw = GatewayInputs {
        classes: snap.classes.iter().collect(),
        gateways: snap.gateways.iter().collect(),
        http_routes: snap.http_routes.iter().collect(),
        grpc_routes: snap.grpc_routes.iter().collect(),
        reference_grants: snap.grants.iter().collect(),
        namespace_labels: snap.namespace_labels.clone(),
    };
    compile_gateways(&gw, &inputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_and_mirror_references_are_the_service_ports_wanted() {
        let rules = serde_json::json!([{
            "backendRefs": [
                {"name": "web", "port": 8080},
                {"name": "api", "namespace": "apps", "port": 80, "weight": 2},
                {"group": "example.com", "kind": "Thing", "name": "x", "port": 1},
            ],
            "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "copy", "port": 9000}}}],
        }]);
        let mut out = BTreeSet::new();
        collect_refs("infra", &rules, &mut out);
        let got: Vec<(String, String, i32)> = out
            .into_iter()
            .map(|k| (k.namespace, k.service, k.port))
            .collect();
        assert_eq!(
            got,
            [
                ("apps".into(), "api".into(), 80),
                ("infra".into(), "copy".into(), 9000),
                ("infra".into(), "web".into(), 8080),
            ]
        );
    }
}
