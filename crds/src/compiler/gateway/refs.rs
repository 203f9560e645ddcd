//! References out of Gateway API objects: certificates of listeners, backends and mirrors
//! of routes, CachePolicies of ExtensionRef filters. A reference into another namespace
//! resolves only when a ReferenceGrant there allows it.

use base64::Engine;

use super::{
    Condition, GatewayInputs, KIND_GATEWAY,
    listeners::Problem,
    model::{Filter, ObjectRef, Route},
};
use crate::{
    api::{self, Object},
    compiler::{
        Diagnostics, Inputs, ServicePortKey, name, ns, qualified,
        routes::{AuthChecks, auth_policy},
    },
    gateway_api::{GROUP, gateways::GatewayListenersTlsCertificateRefs, gateways::GatewaySpec},
    snapshot::CertificatePair,
};

/// A backend as the table will name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClusterSource {
    /// An UpstreamPool that targets the Service: its balancing, health checks, outlier
    /// ejection, breakers and failover apply.
    Pool { namespace: String, name: String },
    /// The Service itself, with default settings.
    Service {
        namespace: String,
        name: String,
        port: i32,
        http2: bool,
    },
}

impl ClusterSource {
    pub fn cluster_name(&self) -> String {
        match self {
            Self::Pool { namespace, name } => qualified(namespace, name),
            Self::Service {
                namespace,
                name,
                port,
                http2,
            } => format!(
                "service/{namespace}/{name}:{port}{}",
                if *http2 { "/h2" } else { "" }
            ),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ResolvedRule {
    /// Each backendRef: its cluster (`None`: it does not resolve) and weight.
    pub backends: Vec<(Option<ClusterSource>, u32)>,
    pub mirrors: Vec<(ClusterSource, u32)>,
    pub cache_policy: Option<String>,
    /// The checks of the AuthPolicy an ExtensionRef names.
    pub auth: Option<AuthChecks>,
    /// A filter that does not resolve: the rule answers 500.
    pub broken_filter: bool,
}

#[derive(Clone, Debug, Default)]
pub struct ResolvedRoute {
    pub rules: Vec<ResolvedRule>,
    /// The first reference that did not resolve.
    pub unresolved: Option<Problem>,
    /// A filter Parapet does not implement.
    pub unsupported: Option<Problem>,
}

impl ResolvedRoute {
    pub fn accepted_condition(&self, generation: i64) -> Condition {
        match &self.unsupported {
            Some(p) => Condition::new("Accepted", false, p.reason, p.message.clone(), generation),
            None => Condition::new(
                "Accepted",
                true,
                "Accepted",
                "the route is attached",
                generation,
            ),
        }
    }

    pub fn resolved_refs_condition(&self, generation: i64) -> Condition {
        match &self.unresolved {
            Some(p) => Condition::new(
                "ResolvedRefs",
                false,
                p.reason,
                p.message.clone(),
                generation,
            ),
            None => Condition::new(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "every reference resolved",
                generation,
            ),
        }
    }
}

fn problem(reason: &'static str, message: String) -> Problem {
    Problem { reason, message }
}

/// Whether a ReferenceGrant in `to_namespace` lets objects of `from_kind` in
/// `from_namespace` refer to `to_kind` `to_name`.
pub fn permitted(
    gw: &GatewayInputs<'_>,
    from_kind: &str,
    from_namespace: &str,
    to_group: &str,
    to_kind: &str,
    to_namespace: &str,
    to_name: &str,
) -> bool {
    if from_namespace == to_namespace {
        return true;
    }
    gw.reference_grants
        .iter()
        .filter(|g| ns(&g.metadata) == to_namespace)
        .any(|g| {
            g.spec
                .from
                .iter()
                .any(|f| f.group == GROUP && f.kind == from_kind && f.namespace == from_namespace)
                && g.spec.to.iter().any(|t| {
                    t.group == to_group
                        && t.kind == to_kind
                        && t.name.as_deref().is_none_or(|n| n == to_name)
                })
        })
}

/// The certificate of an HTTPS listener: its first certificateRef, which must be a
/// `kubernetes.io/tls` Secret holding PEM, in the Gateway's namespace or granted.
pub fn listener_certificate(
    g: &Object<GatewaySpec>,
    refs: &[GatewayListenersTlsCertificateRefs],
    gw: &GatewayInputs<'_>,
    inputs: &Inputs<'_>,
) -> Result<CertificatePair, Problem> {
    let Some(r) = refs.first() else {
        return Err(problem(
            "InvalidCertificateRef",
            "an HTTPS listener needs tls.certificateRefs naming a kubernetes.io/tls Secret"
                .to_string(),
        ));
    };
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Secret");
    if !group.is_empty() || kind != "Secret" {
        return Err(problem(
            "InvalidCertificateRef",
            format!(
                "certificateRef {group}/{kind} {} is not a Secret; name a kubernetes.io/tls Secret",
                r.name
            ),
        ));
    }
    let gw_ns = ns(&g.metadata);
    let secret_ns = r.namespace.as_deref().unwrap_or(gw_ns);
    if !permitted(gw, KIND_GATEWAY, gw_ns, "", "Secret", secret_ns, &r.name) {
        return Err(problem(
            "RefNotPermitted",
            format!(
                "Secret {secret_ns}/{} is in another namespace and no ReferenceGrant there allows Gateways of {gw_ns} to use it; add one",
                r.name
            ),
        ));
    }
    let Some(data) = inputs.secrets.get(&(secret_ns.to_string(), r.name.clone())) else {
        return Err(problem(
            "InvalidCertificateRef",
            format!(
                "Secret {secret_ns}/{} does not exist (or the operator cannot read it); create it or fix the name",
                r.name
            ),
        ));
    };
    let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.clone()).ok());
    match (text("tls.crt"), text("tls.key")) {
        (Some(cert_pem), Some(key_pem))
            if pem_holds(&cert_pem, "CERTIFICATE") && pem_holds(&key_pem, "PRIVATE KEY") =>
        {
            Ok(CertificatePair { cert_pem, key_pem })
        }
        _ => Err(problem(
            "InvalidCertificateRef",
            format!(
                "Secret {secret_ns}/{} does not hold a PEM certificate in tls.crt and a PEM private key in tls.key",
                r.name
            ),
        )),
    }
}

/// Whether `pem` has a block whose label ends with `label` and whose body is base64.
fn pem_holds(pem: &str, label: &str) -> bool {
    let mut rest = pem;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let Some(end_label) = after.find("-----") else {
            return false;
        };
        let block_label = &after[..end_label];
        let body_start = &after[end_label + 5..];
        let end_marker = format!("-----END {block_label}-----");
        let Some(body_end) = body_start.find(&end_marker) else {
            return false;
        };
        let body: String = body_start[..body_end].split_whitespace().collect();
        if block_label.ends_with(label)
            && !body.is_empty()
            && base64::engine::general_purpose::STANDARD
                .decode(body)
                .is_ok()
        {
            return true;
        }
        rest = &body_start[body_end + end_marker.len()..];
    }
    false
}

/// Resolves every reference of a route's rules.
pub fn resolve_route(route: &Route, gw: &GatewayInputs<'_>, inputs: &Inputs<'_>) -> ResolvedRoute {
    let mut out = ResolvedRoute::default();
    for rule in &route.rules {
        let mut resolved = ResolvedRule::default();
        for b in &rule.backend_refs {
            let weight = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
            match backend(route, &b.target, gw, inputs) {
                Ok(c) => resolved.backends.push((Some(c), weight)),
                Err(p) => {
                    out.unresolved.get_or_insert(p);
                    resolved.backends.push((None, weight));
                }
            }
            if !b.filters.is_empty() {
                out.unsupported.get_or_insert(problem(
                    "UnsupportedValue",
                    "filters on a backendRef are not supported; put them on the rule".to_string(),
                ));
            }
        }
        for f in &rule.filters {
            filter(route, f, gw, inputs, &mut resolved, &mut out);
        }
        out.rules.push(resolved);
    }
    out
}

fn filter(
    route: &Route,
    f: &Filter,
    gw: &GatewayInputs<'_>,
    inputs: &Inputs<'_>,
    resolved: &mut ResolvedRule,
    out: &mut ResolvedRoute,
) {
    match f.kind.as_str() {
        "RequestHeaderModifier" | "ResponseHeaderModifier" | "RequestRedirect" | "URLRewrite" => {}
        "RequestMirror" => {
            let Some(m) = &f.request_mirror else { return };
            match backend(route, &m.backend_ref, gw, inputs) {
                Ok(c) => {
                    let per_million = match (&m.fraction, m.percent) {
                        (Some(fr), _) => {
                            let den = i64::from(fr.denominator.unwrap_or(100).max(1));
                            (i64::from(fr.numerator.max(0)) * 1_000_000 / den).min(1_000_000) as u32
                        }
                        (None, Some(p)) => (p.clamp(0, 100) as u32) * 10_000,
                        (None, None) => 1_000_000,
                    };
                    resolved.mirrors.push((c, per_million));
                }
                Err(p) => {
                    out.unresolved.get_or_insert(p);
                }
            }
        }
        "ExtensionRef" => {
            let Some(e) = &f.extension_ref else { return };
            let found = match (e.group == api::GROUP, e.kind.as_str()) {
                (true, "CachePolicy") => inputs
                    .cache_policies
                    .iter()
                    .any(|p| ns(&p.metadata) == route.namespace && name(&p.metadata) == e.name)
                    .then(|| resolved.cache_policy = Some(qualified(&route.namespace, &e.name))),
                (true, "AuthPolicy") => inputs
                    .auth_policies
                    .iter()
                    .find(|p| ns(&p.metadata) == route.namespace && name(&p.metadata) == e.name)
                    .map(|p| {
                        // Its diagnostics go on the policy's own status, from the main compile.
                        let checks = auth_policy(inputs, p, &mut Diagnostics::default());
                        if resolved.auth.replace(checks).is_some() {
                            // Two policies: enforcing one would drop the other's checks.
                            resolved.broken_filter = true;
                            out.unresolved.get_or_insert(problem(
                                "InvalidKind",
                                "a rule names at most one AuthPolicy; put every check in one (the rule answers 500 until then)".to_string(),
                            ));
                        }
                    }),
                _ => {
                    resolved.broken_filter = true;
                    out.unresolved.get_or_insert(problem(
                        "InvalidKind",
                        format!(
                            "ExtensionRef {}/{} {} is not something Parapet knows; the extensions are parapet.dev/CachePolicy and parapet.dev/AuthPolicy",
                            e.group, e.kind, e.name
                        ),
                    ));
                    return;
                }
            };
            if found.is_none() {
                resolved.broken_filter = true;
                out.unresolved.get_or_insert(problem(
                    "BackendNotFound",
                    format!(
                        "{} {}/{} does not exist; create it or fix the ExtensionRef (the rule answers 500 until then)",
                        e.kind, route.namespace, e.name
                    ),
                ));
            }
        }
        other => {
            resolved.broken_filter = true;
            out.unsupported.get_or_insert(problem(
                "UnsupportedValue",
                format!("filter {other} is not supported by Parapet; remove it (the rule answers 500 until then)"),
            ));
        }
    }
}

/// A backendRef (or mirror backendRef): a Service port, in the route's namespace or granted.
fn backend(
    route: &Route,
    r: &ObjectRef,
    gw: &GatewayInputs<'_>,
    inputs: &Inputs<'_>,
) -> Result<ClusterSource, Problem> {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        return Err(problem(
            "InvalidKind",
            format!(
                "backendRef {group}/{kind} {} is not a Service; Parapet sends to Services",
                r.name
            ),
        ));
    }
    let namespace = r.namespace.as_deref().unwrap_or(&route.namespace);
    if !permitted(
        gw,
        route.kind,
        &route.namespace,
        "",
        "Service",
        namespace,
        &r.name,
    ) {
        return Err(problem(
            "RefNotPermitted",
            format!(
                "Service {namespace}/{} is in another namespace and no ReferenceGrant there allows {}s of {} to use it; add one",
                r.name, route.kind, route.namespace
            ),
        ));
    }
    let Some(port) = r.port else {
        return Err(problem(
            "UnsupportedValue",
            format!("backendRef to Service {namespace}/{} needs a port", r.name),
        ));
    };
    let key = ServicePortKey {
        namespace: namespace.to_string(),
        service: r.name.clone(),
        port,
    };
    if !inputs.service_endpoints.contains_key(&key) {
        return Err(problem(
            "BackendNotFound",
            format!(
                "Service {namespace}/{} port {port} does not exist; create it or fix the backendRef",
                r.name
            ),
        ));
    }
    // An UpstreamPool that targets this Service port lends its settings.
    let pool = inputs.pools.iter().find(|p| {
        ns(&p.metadata) == namespace
            && p.spec.static_endpoints.is_none()
            && p.spec
                .service
                .as_ref()
                .is_some_and(|s| s.name == r.name && s.port == port)
    });
    Ok(match pool {
        Some(p) => ClusterSource::Pool {
            namespace: namespace.to_string(),
            name: name(&p.metadata).to_string(),
        },
        None => ClusterSource::Service {
            namespace: namespace.to_string(),
            name: r.name.clone(),
            port,
            http2: route.is_grpc(),
        },
    })
}
