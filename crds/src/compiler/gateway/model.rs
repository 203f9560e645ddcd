//! HTTPRoute and GRPCRoute in one shape. The generated types repeat every filter and
//! reference per place and kind; routes are read once more, through serde, into these
//! plain types, so the translation below is written once for both kinds.

use serde::Deserialize;

use crate::{
    api::Object,
    gateway_api::{grpcroutes::GrpcRouteSpec, httproutes::HttpRouteSpec},
};

pub const KIND_HTTP_ROUTE: &str = "HTTPRoute";
pub const KIND_GRPC_ROUTE: &str = "GRPCRoute";

/// A route of either kind.
#[derive(Clone, Debug)]
pub struct Route {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub generation: i64,
    pub created: Option<String>,
    pub hostnames: Vec<String>,
    pub parent_refs: Vec<ParentRef>,
    pub rules: Vec<Rule>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: String,
    pub section_name: Option<String>,
    pub port: Option<i32>,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<Match>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// Absent and empty alike: the rule answers 500.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    pub timeouts: Option<Timeouts>,
}

/// An HTTPRoute match or a GRPCRoute match (`method` is an object there).
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Match {
    pub path: Option<PathMatch>,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
    pub method: Option<MethodMatch>,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
pub enum MethodMatch {
    /// HTTPRoute: an HTTP method.
    Http(String),
    /// GRPCRoute: service and method.
    Grpc(GrpcMethod),
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct GrpcMethod {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub service: Option<String>,
    pub method: Option<String>,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct PathMatch {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub value: Option<String>,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct ValueMatch {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub name: String,
    pub value: String,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    #[serde(rename = "type")]
    pub kind: String,
    pub request_header_modifier: Option<HeaderModifier>,
    pub response_header_modifier: Option<HeaderModifier>,
    pub request_redirect: Option<Redirect>,
    pub url_rewrite: Option<UrlRewrite>,
    pub request_mirror: Option<Mirror>,
    pub extension_ref: Option<LocalRef>,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    #[serde(default)]
    pub set: Vec<Header>,
    #[serde(default)]
    pub add: Vec<Header>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Deserialize, Clone, Debug, Default)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<i32>,
    pub status_code: Option<i64>,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub replace_full_path: Option<String>,
    pub replace_prefix_match: Option<String>,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    pub backend_ref: ObjectRef,
    pub percent: Option<i32>,
    pub fraction: Option<Fraction>,
}

#[derive(Deserialize, Clone, Debug, Default)]
pub struct Fraction {
    pub numerator: i32,
    pub denominator: Option<i32>,
}

#[derive(Deserialize, Clone, Debug, Default)]
pub struct LocalRef {
    pub group: String,
    pub kind: String,
    pub name: String,
}

/// A reference to a backend (a Service unless group and kind say otherwise).
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: String,
    pub port: Option<i32>,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    #[serde(flatten)]
    pub target: ObjectRef,
    pub weight: Option<i32>,
    #[serde(default)]
    pub filters: Vec<Filter>,
}

#[derive(Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    pub request: Option<String>,
    pub backend_request: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    parent_refs: Vec<ParentRef>,
    #[serde(default)]
    rules: Vec<Rule>,
}

impl Route {
    pub fn from_http(o: &Object<HttpRouteSpec>) -> Self {
        Self::read(KIND_HTTP_ROUTE, &o.metadata, serde_json::to_value(&o.spec))
    }

    pub fn from_grpc(o: &Object<GrpcRouteSpec>) -> Self {
        Self::read(KIND_GRPC_ROUTE, &o.metadata, serde_json::to_value(&o.spec))
    }

    fn read(
        kind: &'static str,
        meta: &crate::api::Metadata,
        spec: Result<serde_json::Value, serde_json::Error>,
    ) -> Self {
        // The generated types serialise to exactly the JSON the API server holds, which
        // these types read; a failure would be a bug, and leaves the route empty.
        let spec: Spec = spec
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        Self {
            kind,
            namespace: meta.namespace().to_string(),
            name: meta.name().to_string(),
            generation: meta.generation.unwrap_or(0),
            created: meta.creation_timestamp.clone(),
            hostnames: spec.hostnames,
            parent_refs: spec.parent_refs,
            rules: spec.rules,
        }
    }

    pub fn is_grpc(&self) -> bool {
        self.kind == KIND_GRPC_ROUTE
    }
}
