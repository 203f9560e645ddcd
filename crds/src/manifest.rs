//! Multi-document YAML of Parapet resources, Gateway API resources and the core objects
//! they refer to (Secrets, Services, EndpointSlices, Namespaces), as standalone mode and
//! the examples use them.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Deserializer};

use crate::{
    api::{ApiRouteSpec, AuthPolicySpec, CachePolicySpec, Metadata, Object, UpstreamPoolSpec},
    compiler::{Inputs, ServicePortKey, gateway::GatewayInputs},
    gateway_api::{
        gatewayclasses::GatewayClassSpec, gateways::GatewaySpec, grpcroutes::GrpcRouteSpec,
        httproutes::HttpRouteSpec, referencegrants::ReferenceGrantSpec,
    },
    snapshot::Endpoint,
};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {doc}: not valid YAML: {source}")]
    Yaml {
        doc: usize,
        source: serde_yaml_ng::Error,
    },
    #[error("document {doc} ({kind} {name:?}): {message}")]
    Invalid {
        doc: usize,
        kind: String,
        name: String,
        message: String,
    },
    #[error(
        "document {doc}: kind {kind:?} is not one of ApiRoute, UpstreamPool, CachePolicy, AuthPolicy, GatewayClass, Gateway, HTTPRoute, GRPCRoute, ReferenceGrant, Secret, Service, EndpointSlice or Namespace"
    )]
    UnknownKind { doc: usize, kind: String },
    #[error("document {doc} ({kind}): apiVersion {api_version:?} is not {expected}")]
    WrongVersion {
        doc: usize,
        kind: String,
        api_version: String,
        expected: &'static str,
    },
}

/// The Gateway API resources of one file.
#[derive(Debug, Default, Clone)]
pub struct GatewayManifest {
    pub classes: Vec<Object<GatewayClassSpec>>,
    pub gateways: Vec<Object<GatewaySpec>>,
    pub http_routes: Vec<Object<HttpRouteSpec>>,
    pub grpc_routes: Vec<Object<GrpcRouteSpec>>,
    pub reference_grants: Vec<Object<ReferenceGrantSpec>>,
}

impl GatewayManifest {
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
            && self.gateways.is_empty()
            && self.http_routes.is_empty()
            && self.grpc_routes.is_empty()
    }
}

/// A `v1` Service: its ports, to map a backendRef's port to the EndpointSlices' ports.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Service {
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub spec: ServiceSpec,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct ServiceSpec {
    #[serde(default)]
    pub ports: Vec<ServicePort>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: i32,
    /// A number or a container port's name; absent: `port`.
    #[serde(default)]
    pub target_port: Option<serde_yaml_ng::Value>,
}

/// A `discovery.k8s.io/v1` EndpointSlice: the addresses behind a Service.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct EndpointSlice {
    #[serde(default)]
    pub metadata: LabelledMetadata,
    #[serde(default)]
    pub endpoints: Vec<SliceEndpoint>,
    #[serde(default)]
    pub ports: Vec<SlicePort>,
}

/// A `v1` Namespace: its labels.
#[derive(Debug, Default, Clone, Deserialize)]
struct Namespace {
    #[serde(default)]
    metadata: LabelledMetadata,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct LabelledMetadata {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct SliceEndpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: SliceConditions,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SliceConditions {
    #[serde(default = "yes")]
    pub ready: bool,
}

impl Default for SliceConditions {
    fn default() -> Self {
        Self { ready: true }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Clone, Deserialize)]
pub struct SlicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: Option<i32>,
}

/// The resources of one file.
#[derive(Debug, Default, Clone)]
pub struct Manifest {
    pub routes: Vec<Object<ApiRouteSpec>>,
    pub pools: Vec<Object<UpstreamPoolSpec>>,
    pub cache_policies: Vec<Object<CachePolicySpec>>,
    pub auth_policies: Vec<Object<AuthPolicySpec>>,
    pub secrets: Vec<Secret>,
    pub gateway: GatewayManifest,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
    /// Namespaces and their labels (for Gateway listeners' namespace selectors).
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

/// A `v1` Secret: what the compiler reads of it (API keys, certificates).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    #[serde(default)]
    pub metadata: Metadata,
    /// Values in base64, decoded.
    #[serde(default, deserialize_with = "base64_values")]
    pub data: BTreeMap<String, Vec<u8>>,
    /// Values in plain text; they win over `data` for the same key, as the API server does.
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
}

/// `data`'s values, base64-decoded; a null value is empty.
fn base64_values<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
    let raw: Option<BTreeMap<String, Option<String>>> = Deserialize::deserialize(d)?;
    raw.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let v = v.unwrap_or_default();
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .map(|bytes| (k.clone(), bytes))
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "data.{k} is not base64 ({e}): encode it, or put the plain value under stringData"
                    ))
                })
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Option<NameOnly>,
}

#[derive(Deserialize)]
struct NameOnly {
    #[serde(default)]
    name: Option<String>,
}

const PARAPET_API: &str = "parapet.dev/v1alpha1";
const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";
const GATEWAY_API_BETA: &str = "gateway.networking.k8s.io/v1beta1";

/// Reads a namespaced object, `default` when the file leaves the namespace out.
fn namespaced<S: serde::de::DeserializeOwned>(
    value: serde_yaml_ng::Value,
) -> Result<Object<S>, serde_yaml_ng::Error> {
    let mut o: Object<S> = serde_yaml_ng::from_value(value)?;
    o.metadata.namespace.get_or_insert_with(|| "default".into());
    Ok(o)
}

impl Manifest {
    /// Parses every document; objects without a namespace go to `default`.
    pub fn parse(yaml: &str) -> Result<Self, ManifestError> {
        let mut m = Manifest::default();
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
            let doc_no = i + 1;
            let value =
                serde_yaml_ng::Value::deserialize(doc).map_err(|source| ManifestError::Yaml {
                    doc: doc_no,
                    source,
                })?;
            if value.is_null() {
                continue;
            }
            let tm: TypeMeta =
                serde_yaml_ng::from_value(value.clone()).map_err(|source| ManifestError::Yaml {
                    doc: doc_no,
                    source,
                })?;
            let name = tm.metadata.and_then(|m| m.name).unwrap_or_default();
            let invalid = |e: serde_yaml_ng::Error| ManifestError::Invalid {
                doc: doc_no,
                kind: tm.kind.clone(),
                name: name.clone(),
                message: e.to_string(),
            };
            let expect = |expected: &'static str| {
                if tm.api_version == expected {
                    Ok(())
                } else {
                    Err(ManifestError::WrongVersion {
                        doc: doc_no,
                        kind: tm.kind.clone(),
                        api_version: tm.api_version.clone(),
                        expected,
                    })
                }
            };
            match tm.kind.as_str() {
                "ApiRoute" => {
                    expect(PARAPET_API)?;
                    let mut o: Object<ApiRouteSpec> =
                        serde_yaml_ng::from_value(value).map_err(invalid)?;
                    o.metadata.namespace.get_or_insert_with(|| "default".into());
                    m.routes.push(o);
                }
                "UpstreamPool" => {
                    expect(PARAPET_API)?;
                    let mut o: Object<UpstreamPoolSpec> =
                        serde_yaml_ng::from_value(value).map_err(invalid)?;
                    o.metadata.namespace.get_or_insert_with(|| "default".into());
                    m.pools.push(o);
                }
                "CachePolicy" => {
                    expect(PARAPET_API)?;
                    let mut o: Object<CachePolicySpec> =
                        serde_yaml_ng::from_value(value).map_err(invalid)?;
                    o.metadata.namespace.get_or_insert_with(|| "default".into());
                    m.cache_policies.push(o);
                }
                "AuthPolicy" => {
                    expect(PARAPET_API)?;
                    let mut o: Object<AuthPolicySpec> =
                        serde_yaml_ng::from_value(value).map_err(invalid)?;
                    o.metadata.namespace.get_or_insert_with(|| "default".into());
                    m.auth_policies.push(o);
                }
                "GatewayClass" => {
                    expect(GATEWAY_API)?;
                    let o: Object<GatewayClassSpec> =
                        serde_yaml_ng::from_value(value).map_err(invalid)?;
                    m.gateway.classes.push(o);
                }
                "Gateway" => {
                    expect(GATEWAY_API)?;
                    m.gateway.gateways.push(namespaced(value).map_err(invalid)?);
                }
                "HTTPRoute" => {
                    expect(GATEWAY_API)?;
                    m.gateway
                        .http_routes
                        .push(namespaced(value).map_err(invalid)?);
                }
                "GRPCRoute" => {
                    expect(GATEWAY_API)?;
                    m.gateway
                        .grpc_routes
                        .push(namespaced(value).map_err(invalid)?);
                }
                "ReferenceGrant" => {
                    if tm.api_version != GATEWAY_API_BETA {
                        expect(GATEWAY_API)?;
                    }
                    m.gateway
                        .reference_grants
                        .push(namespaced(value).map_err(invalid)?);
                }
                "Service" => {
                    expect("v1")?;
                    let mut o: Service = serde_yaml_ng::from_value(value).map_err(invalid)?;
                    o.metadata.namespace.get_or_insert_with(|| "default".into());
                    m.services.push(o);
                }
                "EndpointSlice" => {
                    expect("discovery.k8s.io/v1")?;
                    let mut o: EndpointSlice = serde_yaml_ng::from_value(value).map_err(invalid)?;
                    o.metadata.namespace.get_or_insert_with(|| "default".into());
                    m.endpoint_slices.push(o);
                }
                "Namespace" => {
                    expect("v1")?;
                    let o: Namespace = serde_yaml_ng::from_value(value).map_err(invalid)?;
                    m.namespaces
                        .insert(o.metadata.name.unwrap_or_default(), o.metadata.labels);
                }
                "Secret" => {
                    expect("v1")?;
                    let mut o: Secret = serde_yaml_ng::from_value(value).map_err(invalid)?;
                    o.metadata.namespace.get_or_insert_with(|| "default".into());
                    m.secrets.push(o);
                }
                other => {
                    return Err(ManifestError::UnknownKind {
                        doc: doc_no,
                        kind: other.to_string(),
                    });
                }
            }
        }
        Ok(m)
    }

    /// Gateway API inputs that borrow from this manifest.
    pub fn gateway_inputs(&self) -> GatewayInputs<'_> {
        let g = &self.gateway;
        GatewayInputs {
            classes: g.classes.iter().collect(),
            gateways: g.gateways.iter().collect(),
            http_routes: g.http_routes.iter().collect(),
            grpc_routes: g.grpc_routes.iter().collect(),
            reference_grants: g.reference_grants.iter().collect(),
            namespace_labels: self.namespaces.clone(),
        }
    }

    /// The endpoints of each Service port, from the file's Services and EndpointSlices,
    /// as the operator resolves them from the API server: a Service port's target port
    /// matched by number, or by the port's name in the slice.
    fn service_endpoints(&self) -> BTreeMap<ServicePortKey, Vec<Endpoint>> {
        let mut out = BTreeMap::new();
        for svc in &self.services {
            let namespace = svc.metadata.namespace().to_string();
            let name = svc.metadata.name().to_string();
            for p in &svc.spec.ports {
                let target = p
                    .target_port
                    .as_ref()
                    .and_then(serde_yaml_ng::Value::as_i64)
                    .and_then(|n| i32::try_from(n).ok());
                let mut endpoints = Vec::new();
                for slice in self.endpoint_slices.iter().filter(|s| {
                    s.metadata.namespace.as_deref() == Some(namespace.as_str())
                        && s.metadata.labels.get("kubernetes.io/service-name") == Some(&name)
                }) {
                    let port = slice.ports.iter().find_map(|sp| {
                        let by_name = p.name.is_some() && sp.name == p.name;
                        let by_number = sp.port.is_some() && sp.port == target.or(Some(p.port));
                        (by_name || by_number || slice.ports.len() == 1)
                            .then_some(sp.port)
                            .flatten()
                    });
                    let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
                        continue;
                    };
                    for e in &slice.endpoints {
                        for address in &e.addresses {
                            endpoints.push(Endpoint {
                                address: address.clone(),
                                port,
                                weight: 1,
                                zone: None,
                                for_zones: Vec::new(),
                                ready: e.conditions.ready,
                                serving: e.conditions.ready,
                                terminating: false,
                            });
                        }
                    }
                }
                out.insert(
                    ServicePortKey {
                        namespace: namespace.clone(),
                        service: name.clone(),
                        port: p.port,
                    },
                    endpoints,
                );
            }
        }
        out
    }

    /// Compiler inputs that borrow from this manifest. Pools use `static` endpoints or
    /// the file's Services and EndpointSlices.
    pub fn inputs(&self) -> Inputs<'_> {
        let mut secrets = BTreeMap::new();
        for s in &self.secrets {
            let mut data = s.data.clone();
            for (k, v) in &s.string_data {
                data.insert(k.clone(), v.clone().into_bytes());
            }
            secrets.insert(
                (
                    s.metadata.namespace.clone().unwrap_or_default(),
                    s.metadata.name.clone().unwrap_or_default(),
                ),
                data,
            );
        }
        Inputs {
            routes: self.routes.iter().collect(),
            pools: self.pools.iter().collect(),
            cache_policies: self.cache_policies.iter().collect(),
            auth_policies: self.auth_policies.iter().collect(),
            service_endpoints: self.service_endpoints(),
            secrets,
            ..Inputs::default()
        }
    }
}
