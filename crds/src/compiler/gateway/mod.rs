//! Gateway API → one table per Gateway, and the status Gateway API defines for every
//! object read.
//!
//! A resource change is followed in this order:
//! 1. [`classes`]: GatewayClasses whose `controllerName` is Parapet's are accepted; the
//!    Gateways of other classes, and routes attached only to them, are left alone (no
//!    status is written for them).
//! 2. [`listeners`]: each Gateway's listeners are checked (protocol, route kinds,
//!    certificates, conflicts), giving their status and what may attach.
//! 3. [`attach`]: each route's parentRefs are matched to listeners (sectionName, port,
//!    allowed namespaces and kinds, hostname intersection), giving per-parent `Accepted`.
//! 4. [`refs`]: backends, mirrors and certificates are resolved, across namespaces only
//!    where a ReferenceGrant allows, giving `ResolvedRefs` and the clusters.
//! 5. [`rules`]: the attached rules become the routes of each listener port's virtual
//!    hosts, ordered by Gateway API precedence.
//!
//! Like the rest of the compiler this is a pure function: the same inputs give the same
//! tables and statuses.

mod attach;
mod listeners;
mod model;
mod refs;
mod rules;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

/// A parentRef as route status repeats it.
pub use self::model::ParentRef as ParentReference;
pub use self::model::{KIND_GRPC_ROUTE, KIND_HTTP_ROUTE};
use self::{
    listeners::ListenerModel,
    model::{ParentRef, Route},
};
use super::{Inputs, name, ns};
use crate::{
    api::Object,
    gateway_api::{
        CONTROLLER_NAME, GROUP, gatewayclasses::GatewayClassSpec, gateways::GatewaySpec,
        grpcroutes::GrpcRouteSpec, httproutes::HttpRouteSpec, referencegrants::ReferenceGrantSpec,
    },
    snapshot::{FORMAT_VERSION, SourceRef, Table},
};

pub const KIND_GATEWAY: &str = "Gateway";
pub const KIND_GATEWAY_CLASS: &str = "GatewayClass";

/// The Gateway API features Parapet implements, as GatewayClass status lists them (and
/// the conformance suite reads them).
pub const SUPPORTED_FEATURES: &[&str] = &[
    "Gateway",
    "GatewayHTTPListenerIsolation",
    "GatewayInfrastructure",
    "GatewayPort8080",
    "GRPCRoute",
    "GRPCRouteNamedRouteRule",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendTimeout",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
];

/// What Gateway API input there is, besides the [`Inputs`] the Parapet resources use
/// (whose Service endpoints, Secrets, UpstreamPools and CachePolicies routes reach too).
#[derive(Default)]
pub struct GatewayInputs<'a> {
    pub classes: Vec<&'a Object<GatewayClassSpec>>,
    pub gateways: Vec<&'a Object<GatewaySpec>>,
    pub http_routes: Vec<&'a Object<HttpRouteSpec>>,
    pub grpc_routes: Vec<&'a Object<GrpcRouteSpec>>,
    pub reference_grants: Vec<&'a Object<ReferenceGrantSpec>>,
    /// Labels of each namespace, for `allowedRoutes.namespaces.selector`.
    pub namespace_labels: BTreeMap<String, BTreeMap<String, String>>,
}

/// A status condition as Gateway API writes it; the operator adds the transition time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub kind: &'static str,
    pub status: bool,
    pub reason: String,
    pub message: String,
    pub observed_generation: i64,
}

impl Condition {
    fn new(
        kind: &'static str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
        generation: i64,
    ) -> Self {
        Self {
            kind,
            status,
            reason: reason.to_string(),
            message: message.into(),
            observed_generation: generation,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassStatus {
    pub name: String,
    pub conditions: Vec<Condition>,
    pub supported_features: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteGroupKind {
    pub group: String,
    pub kind: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerStatus {
    pub name: String,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub attached_routes: i32,
    pub conditions: Vec<Condition>,
}

/// One Gateway of a Parapet class: its table and its status (without addresses and
/// without whether its fleet is ready, which only the operator knows).
#[derive(Clone, Debug)]
pub struct CompiledGateway {
    pub namespace: String,
    pub name: String,
    pub generation: i64,
    pub class: String,
    /// Gateway `Accepted` (and `Programmed` as far as the configuration goes).
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
    pub table: Table,
}

impl CompiledGateway {
    pub fn accepted(&self) -> bool {
        self.conditions
            .iter()
            .any(|c| c.kind == "Accepted" && c.status)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentStatus {
    pub parent_ref: ParentReference,
    pub conditions: Vec<Condition>,
}

/// The parents of a route that are Parapet's, each with its conditions. A route none of
/// whose parents is Parapet's has none (its status is someone else's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteStatus {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub parents: Vec<ParentStatus>,
}

#[derive(Debug, Default)]
pub struct GatewayOutput {
    pub classes: Vec<ClassStatus>,
    pub gateways: Vec<CompiledGateway>,
    pub routes: Vec<RouteStatus>,
}

impl GatewayOutput {
    pub fn gateway(&self, namespace: &str, name: &str) -> Option<&CompiledGateway> {
        self.gateways
            .iter()
            .find(|g| g.namespace == namespace && g.name == name)
    }

    pub fn route(&self, kind: &str, namespace: &str, name: &str) -> Option<&RouteStatus> {
        self.routes
            .iter()
            .find(|r| r.kind == kind && r.namespace == namespace && r.name == name)
    }
}

/// Compiles every Gateway of a Parapet GatewayClass. Never panics.
pub fn compile_gateways(gw: &GatewayInputs<'_>, inputs: &Inputs<'_>) -> GatewayOutput {
    let classes = classes(gw);
    let ours: BTreeSet<&str> = classes.iter().map(|c| c.name.as_str()).collect();

    let mut gateways: Vec<&Object<GatewaySpec>> = gw
        .gateways
        .iter()
        .copied()
        .filter(|g| ours.contains(g.spec.gateway_class_name.as_str()))
        .collect();
    gateways.sort_by(|a, b| key(a).cmp(&key(b)));
    let mut listener_models: Vec<Vec<ListenerModel>> = gateways
        .iter()
        .map(|g| listeners::validate(g, gw, inputs))
        .collect();

    let mut routes: Vec<Route> = gw
        .http_routes
        .iter()
        .map(|r| Route::from_http(r))
        .chain(gw.grpc_routes.iter().map(|r| Route::from_grpc(r)))
        .collect();
    // Gateway API precedence across routes: oldest first, then namespace/name.
    routes.sort_by(|a, b| {
        (&a.created, &a.namespace, &a.name, a.kind).cmp(&(
            &b.created,
            &b.namespace,
            &b.name,
            b.kind,
        ))
    });

    let resolved: Vec<refs::ResolvedRoute> = routes
        .iter()
        .map(|r| refs::resolve_route(r, gw, inputs))
        .collect();

    // Which listeners each route attaches to, per Gateway.
    let mut attachments: Vec<Vec<attach::Attachment>> = vec![Vec::new(); gateways.len()];
    let mut route_statuses = Vec::new();
    for (ri, route) in routes.iter().enumerate() {
        let mut parents = Vec::new();
        let mut seen: BTreeSet<&ParentRef> = BTreeSet::new();
        for parent in &route.parent_refs {
            if !seen.insert(parent) {
                continue;
            }
            let Some(gi) = parent_gateway(route, parent, &gateways) else {
                continue;
            };
            let gateway = gateways[gi];
            let accepted = match attach::attach(route, parent, gateway, &listener_models[gi], gw) {
                Ok(found) => {
                    for a in &found {
                        listener_models[gi][a.listener].attached_routes += 1;
                    }
                    attachments[gi].extend(found.into_iter().map(|mut a| {
                        a.route = ri;
                        a
                    }));
                    resolved[ri].accepted_condition(route.generation)
                }
                Err(refusal) => Condition::new(
                    "Accepted",
                    false,
                    refusal.reason,
                    refusal.message,
                    route.generation,
                ),
            };
            parents.push(ParentStatus {
                parent_ref: parent.clone(),
                conditions: vec![
                    accepted,
                    resolved[ri].resolved_refs_condition(route.generation),
                ],
            });
        }
        if !parents.is_empty() {
            route_statuses.push(RouteStatus {
                kind: route.kind,
                namespace: route.namespace.clone(),
                name: route.name.clone(),
                parents,
            });
        }
    }

    let compiled = gateways
        .iter()
        .enumerate()
        .map(|(gi, g)| {
            let models = &listener_models[gi];
            let table = rules::table(g, models, &attachments[gi], &routes, &resolved, gw, inputs);
            let table = Table {
                sources: sources(g, &attachments[gi], &routes),
                ..table
            };
            CompiledGateway {
                namespace: ns(&g.metadata).to_string(),
                name: name(&g.metadata).to_string(),
                generation: g.metadata.generation.unwrap_or(0),
                class: g.spec.gateway_class_name.clone(),
                conditions: listeners::gateway_conditions(g, models),
                listeners: models.iter().map(ListenerModel::status).collect(),
                table,
            }
        })
        .collect();

    GatewayOutput {
        classes,
        gateways: compiled,
        routes: route_statuses,
    }
}

fn classes(gw: &GatewayInputs<'_>) -> Vec<ClassStatus> {
    let mut out: Vec<ClassStatus> = gw
        .classes
        .iter()
        .filter(|c| c.spec.controller_name == CONTROLLER_NAME)
        .map(|c| {
            let generation = c.metadata.generation.unwrap_or(0);
            ClassStatus {
                name: name(&c.metadata).to_string(),
                conditions: vec![Condition::new(
                    "Accepted",
                    true,
                    "Accepted",
                    "Parapet serves this class: each Gateway gets a data-plane fleet of its own",
                    generation,
                )],
                supported_features: SUPPORTED_FEATURES.iter().map(|f| f.to_string()).collect(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn key(g: &Object<GatewaySpec>) -> (&str, &str) {
    (ns(&g.metadata), name(&g.metadata))
}

/// The Gateway (index into `gateways`, which holds only Parapet's) a parentRef names.
fn parent_gateway(
    route: &Route,
    parent: &ParentRef,
    gateways: &[&Object<GatewaySpec>],
) -> Option<usize> {
    let group = parent.group.as_deref().unwrap_or(GROUP);
    let kind = parent.kind.as_deref().unwrap_or(KIND_GATEWAY);
    if group != GROUP || kind != KIND_GATEWAY {
        return None;
    }
    let namespace = parent.namespace.as_deref().unwrap_or(&route.namespace);
    gateways
        .iter()
        .position(|g| ns(&g.metadata) == namespace && name(&g.metadata) == parent.name)
}

/// The Gateway and the routes attached to it: what its fleet's table was compiled from.
fn sources(
    g: &Object<GatewaySpec>,
    attachments: &[attach::Attachment],
    routes: &[Route],
) -> Vec<SourceRef> {
    let mut out = vec![SourceRef {
        kind: KIND_GATEWAY.to_string(),
        namespace: ns(&g.metadata).to_string(),
        name: name(&g.metadata).to_string(),
        generation: g.metadata.generation.unwrap_or(0),
    }];
    out.extend(attachments.iter().map(|a| {
        let r = &routes[a.route];
        SourceRef {
            kind: r.kind.to_string(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            generation: r.generation,
        }
    }));
    out.sort();
    out.dedup();
    out
}

/// A Gateway's table and the ApiRoute table in one, for standalone mode, where one
/// process serves both: the Gateway's listeners, everyone's clusters and cache policies.
pub fn merge(api: Table, gateway: Table) -> Table {
    let mut clusters = api.clusters;
    for c in gateway.clusters {
        if !clusters.iter().any(|x| x.name == c.name) {
            clusters.push(c);
        }
    }
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    let mut cache_policies = api.cache_policies;
    for p in gateway.cache_policies {
        if !cache_policies.iter().any(|x| x.name == p.name) {
            cache_policies.push(p);
        }
    }
    cache_policies.sort_by(|a, b| a.name.cmp(&b.name));
    let mut sources = api.sources;
    sources.extend(gateway.sources);
    sources.sort();
    sources.dedup();
    Table {
        format: FORMAT_VERSION,
        virtual_hosts: api.virtual_hosts,
        clusters,
        cache_policies,
        sources,
        fleet_pods: 0,
        listeners: gateway.listeners,
    }
}
