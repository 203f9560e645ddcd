//! The compiler: a pure function from resources to a routing table.
//!
//! Reference rules (documented in the README's CRD reference):
//! - Every reference (rule → UpstreamPool, rule → CachePolicy, rule → Secret, pool →
//!   backup pool, pool → Service, pool → Secret) resolves in the referrer's own namespace.
//!   There is no cross-namespace reference, so a namespace's owner cannot route into or read
//!   secrets of another namespace (Gateway API without ReferenceGrant).
//! - A rule whose backends all fail to resolve answers 500 rather than disappearing, so its
//!   traffic never falls through to a less specific rule.
//! - A missing CachePolicy leaves the rule uncached; a missing API-key Secret leaves the rule
//!   closed (every request refused), never open.
//! - Several ApiRoutes may share a host: their rules merge into one virtual host, ordered by
//!   precedence. When two rules have identical matches, the older object (then namespace/name)
//!   wins and the other is reported as `RuleConflict`.

mod cache;
mod clusters;
mod diagnostics;
pub mod gateway;
mod hedge;
mod lanes;
mod routes;

use std::collections::BTreeMap;

pub use diagnostics::{
    ConditionKind, Diagnostic, Diagnostics, MAX_MESSAGE, ObjectKey, Reason, Severity,
};

use crate::{
    api::{ApiRouteSpec, AuthPolicySpec, CachePolicySpec, Metadata, Object, UpstreamPoolSpec},
    snapshot::{Endpoint, FORMAT_VERSION, SourceRef, Table},
};

pub const KIND_ROUTE: &str = "ApiRoute";
pub const KIND_POOL: &str = "UpstreamPool";
pub const KIND_CACHE_POLICY: &str = "CachePolicy";
pub const KIND_AUTH_POLICY: &str = "AuthPolicy";

/// A Service port as a pool references it: namespace, Service name, Service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortKey {
    pub namespace: String,
    pub service: String,
    pub port: i32,
}

/// Secret data by (namespace, name).
pub type SecretData = BTreeMap<String, Vec<u8>>;

/// Everything a table is compiled from. The operator fills it from its caches; standalone
/// mode from a file.
#[derive(Default)]
pub struct Inputs<'a> {
    pub routes: Vec<&'a Object<ApiRouteSpec>>,
    pub pools: Vec<&'a Object<UpstreamPoolSpec>>,
    pub cache_policies: Vec<&'a Object<CachePolicySpec>>,
    /// What Gateway API rules name in `ExtensionRef` filters.
    pub auth_policies: Vec<&'a Object<AuthPolicySpec>>,
    /// Endpoints of each Service port that pools reference, already resolved to the
    /// target port. A key present with no endpoints: the Service exists but has none.
    pub service_endpoints: BTreeMap<ServicePortKey, Vec<Endpoint>>,
    /// Secrets by (namespace, name), for API keys and certificates.
    pub secrets: BTreeMap<(String, String), SecretData>,
    /// The label selector a Secret must match to be in `secrets` (the operator reads no
    /// other Secret), so that a missing one is reported with how to make it visible.
    /// `None`: `secrets` holds every Secret there is.
    pub secret_label_selector: Option<String>,
    /// Mixed into API-key salts so that hashes differ between installations.
    pub key_salt_seed: Vec<u8>,
}

/// A compiled table and what was wrong with the inputs.
#[derive(Debug)]
pub struct Output {
    pub table: Table,
    pub diagnostics: Diagnostics,
}

/// Compiles the inputs. Never panics; the same inputs give a byte-identical table.
pub fn compile(inputs: &Inputs<'_>) -> Output {
    let mut diags = Diagnostics::default();
    let pools = index(&inputs.pools);
    let policies = index(&inputs.cache_policies);

    let compiled_policies = cache::compile_policies(&inputs.cache_policies);
    let routes = routes::compile_routes(inputs, &pools, &policies, &mut diags);
    let clusters = clusters::compile_clusters(inputs, &pools, &routes.referenced_pools, &mut diags);
    let cache_policies = compiled_policies
        .into_iter()
        .filter(|p| routes.referenced_policies.contains(&p.name))
        .collect();

    let mut sources: Vec<SourceRef> = Vec::new();
    sources.extend(
        inputs
            .routes
            .iter()
            .map(|o| source(KIND_ROUTE, &o.metadata)),
    );
    sources.extend(inputs.pools.iter().map(|o| source(KIND_POOL, &o.metadata)));
    sources.extend(
        inputs
            .cache_policies
            .iter()
            .map(|o| source(KIND_CACHE_POLICY, &o.metadata)),
    );
    // Compiled here for their own status; Gateway fleets compile those they use.
    for p in &inputs.auth_policies {
        routes::auth_policy(inputs, p, &mut diags);
        sources.push(source(KIND_AUTH_POLICY, &p.metadata));
    }
    sources.sort();
    sources.dedup();

    diags.finish();
    Output {
        table: Table {
            format: FORMAT_VERSION,
            virtual_hosts: routes.virtual_hosts,
            clusters,
            cache_policies,
            sources,
            fleet_pods: 0,
            listeners: Vec::new(),
        },
        diagnostics: diags,
    }
}

/// The endpoint-only fast path: `previous` with the endpoints of its Service-backed
/// clusters replaced from `inputs`, everything else (routes, policies, settings) kept.
/// Equal to a full [`compile`] when only Service endpoints changed since `previous` was
/// compiled; the caller must fall back to `compile` for any other change.
pub fn refresh_endpoints(previous: &Table, inputs: &Inputs<'_>) -> Table {
    let pools = index(&inputs.pools);
    let mut table = previous.clone();
    for c in &mut table.clusters {
        let Some((namespace, name)) = c.name.split_once('/') else {
            continue;
        };
        let Some(pool) = pools.get(&(namespace.to_string(), name.to_string())) else {
            continue;
        };
        if let Some(eps) = clusters::service_endpoints(inputs, namespace, &pool.spec) {
            c.endpoints = clusters::normalise(eps);
        }
    }
    table
}

fn source(kind: &str, meta: &Metadata) -> SourceRef {
    SourceRef {
        kind: kind.to_string(),
        namespace: ns(meta).to_string(),
        name: name(meta).to_string(),
        generation: meta.generation.unwrap_or(0),
    }
}

pub(crate) fn ns(meta: &Metadata) -> &str {
    meta.namespace()
}

pub(crate) fn name(meta: &Metadata) -> &str {
    meta.name()
}

/// Qualified name used in the table: `namespace/name`.
pub(crate) fn qualified(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Objects by (namespace, name). With duplicates (impossible from an API server, possible
/// from a file), the first wins.
fn index<'a, S>(objs: &[&'a Object<S>]) -> BTreeMap<(String, String), &'a Object<S>> {
    let mut map = BTreeMap::new();
    for o in objs {
        let m = &o.metadata;
        map.entry((ns(m).to_string(), name(m).to_string()))
            .or_insert(*o);
    }
    map
}
