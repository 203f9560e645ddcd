//! The kinds a backup holds, in the order a restore applies them: what others refer to
//! first (Secrets, cache policies, pools), the routes that refer to them last.

use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject},
    core::GroupVersionKind,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    /// A Gateway API kind (its CRDs may be absent).
    pub gateway_api: bool,
}

impl Kind {
    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Where to list this kind: the whole cluster, or each of `namespaces` (none: all).
    pub fn apis(&self, client: &Client, namespaces: &[String]) -> Vec<Api<DynamicObject>> {
        let ar = self.api_resource();
        if !self.namespaced || namespaces.is_empty() {
            return vec![Api::all_with(client.clone(), &ar)];
        }
        namespaces
            .iter()
            .map(|ns| Api::namespaced_with(client.clone(), ns, &ar))
            .collect()
    }

    /// The CRD's name (`apiroutes.parapet.dev`).
    pub fn crd_name(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }
}

const fn parapet(kind: &'static str, plural: &'static str) -> Kind {
    Kind {
        group: parapet_crds::api::GROUP,
        version: parapet_crds::api::VERSION,
        kind,
        plural,
        namespaced: true,
        gateway_api: false,
    }
}

const fn gateway(kind: &'static str, plural: &'static str, namespaced: bool) -> Kind {
    Kind {
        group: parapet_crds::gateway_api::GROUP,
        version: "v1",
        kind,
        plural,
        namespaced,
        gateway_api: true,
    }
}

pub const SECRET: Kind = Kind {
    group: "",
    version: "v1",
    kind: "Secret",
    plural: "secrets",
    namespaced: true,
    gateway_api: false,
};

/// Every kind but Secrets, in restore order.
pub const ALL: [Kind; 9] = [
    parapet("CachePolicy", "cachepolicies"),
    parapet("AuthPolicy", "authpolicies"),
    parapet("UpstreamPool", "upstreampools"),
    parapet("ApiRoute", "apiroutes"),
    gateway("GatewayClass", "gatewayclasses", false),
    gateway("Gateway", "gateways", true),
    gateway("ReferenceGrant", "referencegrants", true),
    gateway("HTTPRoute", "httproutes", true),
    gateway("GRPCRoute", "grpcroutes", true),
];

/// The kind of an object as a backup stores it (`apiVersion` and `kind`).
pub fn of(api_version: &str, kind: &str) -> Option<Kind> {
    std::iter::once(SECRET)
        .chain(ALL)
        .find(|k| k.kind == kind && k.api_version() == api_version)
}
