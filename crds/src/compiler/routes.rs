//! ApiRoute → virtual hosts with routes in match-priority order.
//!
//! Precedence inside a host (first match wins), as Gateway API orders HTTPRoute rules:
//! Exact paths, then regular expressions, then prefixes; longer paths first within each;
//! then rules that name methods, then more header matches, then more query matches; ties
//! go to the older object, then namespace/name, then rule and match order.

mod auth;
mod filters;

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, btree_map::Entry},
};

use sha2::{Digest, Sha256};

use super::{
    Diagnostics, Inputs, KIND_ROUTE, ObjectKey, Reason,
    clusters::{certificate_pair, secret},
    hedge, lanes, name, ns, qualified,
};
use crate::{
    Duration,
    api::{
        self, ApiRouteSpec, CachePolicySpec, ClientCertificate, ClientCertificateMode, Object,
        PathMatchType, UpstreamPoolSpec, ValueMatchType,
    },
    snapshot::{
        ApiKeyCheck, CertificatePair, ClientAuth, DirectResponse, ForwardAction, HashedApiKey,
        KeySource, PathMatch, RateLimit, RateLimitKey, RateLimitMode, RetryCondition, RetryPolicy,
        Route, RouteAction, RouteMatcher, StringMatch, ValueMatcher, VirtualHost, WeightedCluster,
    },
};
use filters::RuleRef;

pub(super) use auth::{AuthChecks, auth_policy};

pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

pub(super) struct CompiledRoutes {
    pub virtual_hosts: Vec<VirtualHost>,
    pub referenced_pools: BTreeSet<(String, String)>,
    pub referenced_policies: BTreeSet<String>,
}

type Key = (String, String);

/// Orders routes inside a host; see the module docs.
type SortKey = (
    u8,
    Reverse<usize>,
    bool,
    Reverse<usize>,
    Reverse<usize>,
    Option<String>,
    String,
    String,
    usize,
    usize,
);

struct Candidate {
    sort: SortKey,
    owner: ObjectKey,
    route: Route,
}

/// What the rules of every route add up to, before hosts are put in order.
#[derive(Default)]
struct Collected {
    by_host: BTreeMap<String, Vec<Candidate>>,
    certs: BTreeMap<String, (ObjectKey, CertificatePair)>,
    client_auth: BTreeMap<String, (ObjectKey, ClientAuth)>,
    referenced_pools: BTreeSet<(String, String)>,
    referenced_policies: BTreeSet<String>,
}

/// Where a rule's matches go: the route it belongs to and the hosts it serves.
struct RuleSite<'a> {
    route: &'a Object<ApiRouteSpec>,
    me: &'a ObjectKey,
    hosts: &'a [String],
    index: usize,
}

pub(super) fn compile_routes(
    inputs: &Inputs<'_>,
    pools: &BTreeMap<Key, &Object<UpstreamPoolSpec>>,
    policies: &BTreeMap<Key, &Object<CachePolicySpec>>,
    diags: &mut Diagnostics,
) -> CompiledRoutes {
    let mut collected = Collected::default();
    for route in oldest_first(inputs) {
        let me = ObjectKey::new(KIND_ROUTE, ns(&route.metadata), name(&route.metadata));
        let hosts = hosts(&route.spec.hosts, &me, diags);
        certificate(inputs, route, &me, &hosts, &mut collected.certs, diags);
        client_certificate(
            inputs,
            route,
            &me,
            &hosts,
            &mut collected.client_auth,
            diags,
        );
        for (index, rule) in route.spec.rules.iter().enumerate() {
            let site = RuleSite {
                route,
                me: &me,
                hosts: &hosts,
                index,
            };
            compile_rule(inputs, pools, policies, &site, rule, &mut collected, diags);
        }
    }
    CompiledRoutes {
        virtual_hosts: virtual_hosts(
            collected.by_host,
            &collected.certs,
            &collected.client_auth,
            diags,
        ),
        referenced_pools: collected.referenced_pools,
        referenced_policies: collected.referenced_policies,
    }
}

/// The routes in the order ties are broken (older first, then namespace/name), each once.
fn oldest_first<'a>(inputs: &Inputs<'a>) -> Vec<&'a Object<ApiRouteSpec>> {
    let mut routes: Vec<&Object<ApiRouteSpec>> = inputs.routes.clone();
    routes.sort_by_key(|r| {
        (
            created(r),
            ns(&r.metadata).to_string(),
            name(&r.metadata).to_string(),
        )
    });
    routes.dedup_by(|a, b| {
        ns(&a.metadata) == ns(&b.metadata) && name(&a.metadata) == name(&b.metadata)
    });
    routes
}

/// Records the route's certificate for each of its hosts; the first route to claim a host
/// keeps it.
fn certificate(
    inputs: &Inputs<'_>,
    route: &Object<ApiRouteSpec>,
    me: &ObjectKey,
    hosts: &[String],
    certs: &mut BTreeMap<String, (ObjectKey, CertificatePair)>,
    diags: &mut Diagnostics,
) {
    let Some(tls) = &route.spec.tls else {
        return;
    };
    let namespace = ns(&route.metadata);
    let Some(pair) = certificate_pair(
        inputs,
        namespace,
        &tls.secret_name,
        "spec.tls.secretName",
        me,
        diags,
    ) else {
        return;
    };
    for h in hosts {
        match certs.entry(h.clone()) {
            Entry::Vacant(v) => {
                v.insert((me.clone(), pair.clone()));
            }
            Entry::Occupied(o) if o.get().0 != *me && o.get().1 != pair => diags.warning(
                me,
                Reason::RuleConflict,
                format!("host {h} already has a certificate from {}; this route's certificate is not used for it", o.get().0),
            ),
            Entry::Occupied(_) => {}
        }
    }
}

/// Records the client certificates the route asks for on each of its hosts; the first route
/// to ask on a host decides for it. Every host of the route gets them, whichever route's
/// certificate it is served with: a route's rules are never served without the check it
/// asks for (other routes' rules on the host are checked too, as TLS is per host).
fn client_certificate(
    inputs: &Inputs<'_>,
    route: &Object<ApiRouteSpec>,
    me: &ObjectKey,
    hosts: &[String],
    asked: &mut BTreeMap<String, (ObjectKey, ClientAuth)>,
    diags: &mut Diagnostics,
) {
    let Some(cc) = route
        .spec
        .tls
        .as_ref()
        .and_then(|t| t.client_certificate.as_ref())
    else {
        return;
    };
    let auth = client_auth(inputs, ns(&route.metadata), cc, hosts, me, diags);
    for h in hosts {
        match asked.entry(h.clone()) {
            Entry::Vacant(v) => {
                v.insert((me.clone(), auth.clone()));
            }
            Entry::Occupied(o) if o.get().1 != auth => diags.warning(
                me,
                Reason::RuleConflict,
                format!("host {h} already asks for client certificates as {} says; this route's clientCertificate is not used for it, so its rules there accept what that route's CA accepts. Use the same CA Secret and mode, or other hosts", o.get().0),
            ),
            Entry::Occupied(_) => {}
        }
    }
}

/// The client certificates a route asks for. A Secret that cannot be used fails closed: a
/// policy with no CA, which the data plane refuses every client under.
fn client_auth(
    inputs: &Inputs<'_>,
    namespace: &str,
    cc: &ClientCertificate,
    hosts: &[String],
    me: &ObjectKey,
    diags: &mut Diagnostics,
) -> ClientAuth {
    let required = cc.mode.unwrap_or_default() == ClientCertificateMode::Require;
    let closed = ClientAuth {
        ca_pem: String::new(),
        crl_pem: Vec::new(),
        required: true,
    };
    let name = &cc.ca_secret_ref.name;
    let Some(data) = secret(
        inputs,
        namespace,
        name,
        "spec.tls.clientCertificate.caSecretRef",
        me,
        diags,
    ) else {
        return closed;
    };
    let refused = hosts.join(", ");
    let text = |k: &str| data.get(k).map(|b| String::from_utf8(b.clone()).ok());
    let ca_pem = match text("ca.crt") {
        Some(Some(pem)) if !pem_blocks(&pem, "CERTIFICATE").is_empty() => pem,
        _ => {
            diags.error(
                me,
                Reason::InvalidSecret,
                format!("Secret {namespace}/{name} needs ca.crt holding the PEM certificates of the CA that issues client certificates; until it does, {refused} refuse every client"),
            );
            return closed;
        }
    };
    // An empty ca.crl revokes nothing, as no ca.crl does.
    let crl_pem = match text("ca.crl") {
        None => Vec::new(),
        Some(Some(pem)) if pem.trim().is_empty() => Vec::new(),
        Some(pem) => match pem.and_then(|p| whole_pem_blocks(&p, "X509 CRL")) {
            Some(blocks) => blocks,
            None => {
                diags.error(
                    me,
                    Reason::InvalidSecret,
                    format!("ca.crl of Secret {namespace}/{name} is not one or more PEM X509 CRLs; fix it or remove the key (until then, {refused} refuse every client, since revoked certificates could not be told apart)"),
                );
                return closed;
            }
        },
    };
    ClientAuth {
        ca_pem,
        crl_pem,
        required,
    }
}

/// The complete `-----BEGIN label-----` … `-----END label-----` blocks of `text`, each with
/// a final newline.
fn pem_blocks(text: &str, label: &str) -> Vec<String> {
    let (begin, end) = (
        format!("-----BEGIN {label}-----"),
        format!("-----END {label}-----"),
    );
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let from = &rest[start..];
        let Some(stop) = from.find(&end) else {
            break;
        };
        out.push(format!("{}\n", &from[..stop + end.len()]));
        rest = &from[stop + end.len()..];
    }
    out
}

/// The blocks of `text` when it holds at least one and every block it begins ends.
fn whole_pem_blocks(text: &str, label: &str) -> Option<Vec<String>> {
    let blocks = pem_blocks(text, label);
    let begun = text.matches(&format!("-----BEGIN {label}-----")).count();
    (!blocks.is_empty() && blocks.len() == begun).then_some(blocks)
}

/// One rule: its action, the references it makes, and a candidate route per match and host.
fn compile_rule(
    inputs: &Inputs<'_>,
    pools: &BTreeMap<Key, &Object<UpstreamPoolSpec>>,
    policies: &BTreeMap<Key, &Object<CachePolicySpec>>,
    site: &RuleSite<'_>,
    rule: &api::RouteRule,
    collected: &mut Collected,
    diags: &mut Diagnostics,
) {
    let (namespace, route_name) = (ns(&site.route.metadata), name(&site.route.metadata));
    let rule_name = rule.name.clone().unwrap_or_else(|| site.index.to_string());
    let full_name = format!("{namespace}/{route_name}/{rule_name}");
    let Some(action) = action(
        inputs, pools, policies, site.route, rule, &rule_name, site.me, diags,
    ) else {
        return;
    };
    if let RouteAction::Forward(f) = &action {
        // Mirrored pools are clusters of the table like the backends, or the data plane
        // would have nowhere to send the copies.
        let clusters = f.backends.iter().map(|b| &b.cluster);
        for c in clusters.chain(f.mirrors.iter().map(|m| &m.cluster)) {
            if let Some((n, p)) = c.split_once('/') {
                collected
                    .referenced_pools
                    .insert((n.to_string(), p.to_string()));
            }
        }
        if let Some(p) = &f.cache_policy {
            collected.referenced_policies.insert(p.clone());
        }
    }
    let default_match = [api::RouteMatch::default()];
    let matches: &[api::RouteMatch] = if rule.matches.is_empty() {
        &default_match
    } else {
        &rule.matches
    };
    for (mi, m) in matches.iter().enumerate() {
        let Some(matcher) = matcher(m, rule, &rule_name, site.me, diags) else {
            continue;
        };
        let sort = sort_key(&matcher, site, mi);
        for h in site.hosts {
            collected
                .by_host
                .entry(h.clone())
                .or_default()
                .push(Candidate {
                    sort: sort.clone(),
                    owner: site.me.clone(),
                    route: Route {
                        name: full_name.clone(),
                        matcher: matcher.clone(),
                        action: action.clone(),
                    },
                });
        }
    }
}

/// Where a match goes in its host's order; see the module docs.
fn sort_key(matcher: &RouteMatcher, site: &RuleSite<'_>, match_index: usize) -> SortKey {
    (
        match matcher.path {
            PathMatch::Exact(_) => 0,
            PathMatch::Regex(_) => 1,
            PathMatch::Prefix(_) => 2,
        },
        Reverse(match &matcher.path {
            PathMatch::Exact(p) | PathMatch::Prefix(p) | PathMatch::Regex(p) => p.len(),
        }),
        matcher.methods.is_empty(),
        Reverse(matcher.headers.len()),
        Reverse(matcher.query_params.len()),
        created(site.route),
        ns(&site.route.metadata).to_string(),
        name(&site.route.metadata).to_string(),
        site.index,
        match_index,
    )
}

/// Each host's candidates in order, without those an earlier one shadows exactly (reported
/// as conflicts); hosts exact first, then wildcards, then `*`.
fn virtual_hosts(
    by_host: BTreeMap<String, Vec<Candidate>>,
    certs: &BTreeMap<String, (ObjectKey, CertificatePair)>,
    client_auth: &BTreeMap<String, (ObjectKey, ClientAuth)>,
    diags: &mut Diagnostics,
) -> Vec<VirtualHost> {
    let mut virtual_hosts: Vec<VirtualHost> = by_host
        .into_iter()
        .map(|(domain, mut candidates)| {
            candidates.sort_by(|a, b| a.sort.cmp(&b.sort));
            let mut seen: BTreeMap<&RouteMatcher, &str> = BTreeMap::new();
            let mut routes = Vec::with_capacity(candidates.len());
            for c in &candidates {
                match seen.entry(&c.route.matcher) {
                    Entry::Vacant(v) => {
                        v.insert(&c.route.name);
                        routes.push(c.route.clone());
                    }
                    Entry::Occupied(o) => diags.warning(
                        &c.owner,
                        Reason::RuleConflict,
                        format!(
                            "rule {} matches exactly what rule {} (older) matches on host {domain}; it never serves there. Change its matches or remove it",
                            c.route.name,
                            o.get()
                        ),
                    ),
                }
            }
            let tls = certs.get(&domain).map(|(_, p)| p.clone());
            let client_auth = client_auth.get(&domain).map(|(_, a)| a.clone());
            VirtualHost {
                domain,
                tls,
                client_auth,
                routes,
            }
        })
        .collect();
    virtual_hosts.sort_by(|a, b| host_order(&a.domain).cmp(&host_order(&b.domain)));
    virtual_hosts
}

/// Exact names first (alphabetically), then wildcards with more labels first, then `*`.
pub(super) fn host_order(domain: &str) -> (u8, Reverse<usize>, &str) {
    if domain == "*" {
        (2, Reverse(0), domain)
    } else if let Some(rest) = domain.strip_prefix("*.") {
        (1, Reverse(rest.split('.').count()), domain)
    } else {
        (0, Reverse(0), domain)
    }
}

fn created(r: &Object<ApiRouteSpec>) -> Option<String> {
    // RFC 3339 in UTC at second precision sorts correctly as text.
    r.metadata.creation_timestamp.clone()
}

fn hosts(raw: &[String], me: &ObjectKey, diags: &mut Diagnostics) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in raw {
        let h = h.trim().to_ascii_lowercase();
        if valid_host(&h) {
            out.push(h);
        } else {
            diags.error(
                me,
                Reason::InvalidHost,
                format!("host {h:?} is not a DNS name, a *.wildcard name or *; fix spec.hosts"),
            );
        }
    }
    out.sort();
    out.dedup();
    out
}

fn valid_host(h: &str) -> bool {
    if h == "*" {
        return true;
    }
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Anchors a user's regex so it must match the whole value, and checks that it compiles.
/// The regex must compile on its own too: one that compiles only inside the group, such as
/// `/a)|(?:/b`, would close it early and leave its alternatives unanchored.
pub(super) fn anchored(re: &str) -> Result<String, regex::Error> {
    let compile = |p: &str| regex::RegexBuilder::new(p).size_limit(1 << 20).build();
    compile(re)?;
    let anchored = format!("^(?:{re})$");
    compile(&anchored).map(|_| anchored)
}

fn matcher(
    m: &api::RouteMatch,
    rule: &api::RouteRule,
    rule_name: &str,
    me: &ObjectKey,
    diags: &mut Diagnostics,
) -> Option<RouteMatcher> {
    let (kind, value) = m
        .path
        .as_ref()
        .map(|p| (p.kind.unwrap_or_default(), p.value.as_str()))
        .unwrap_or((PathMatchType::PathPrefix, "/"));
    let path = match kind {
        PathMatchType::Exact => PathMatch::Exact(value.to_string()),
        PathMatchType::PathPrefix => {
            let trimmed = value.trim_end_matches('/');
            PathMatch::Prefix(if trimmed.is_empty() {
                "/".to_string()
            } else {
                trimmed.to_string()
            })
        }
        PathMatchType::RegularExpression => match anchored(value) {
            Ok(re) => PathMatch::Regex(re),
            Err(e) => {
                diags.error(
                    me,
                    Reason::InvalidRegex,
                    format!("rule {rule_name}: path regex {value:?} does not compile ({}); the match is left out", first_line(&e)),
                );
                return None;
            }
        },
    };
    if rule
        .rewrite
        .as_ref()
        .is_some_and(|r| r.path_prefix.is_some())
        && !matches!(path, PathMatch::Prefix(_))
    {
        diags.error(
            me,
            Reason::InvalidRewrite,
            format!("rule {rule_name}: rewrite.pathPrefix only works with PathPrefix matches; the match is left out"),
        );
        return None;
    }
    let mut methods: Vec<String> = m.methods.iter().map(|m| m.as_str().to_string()).collect();
    methods.sort();
    methods.dedup();
    let values = |list: &[api::ValueMatch],
                  lower: bool,
                  what: &str,
                  diags: &mut Diagnostics|
     -> Option<Vec<ValueMatcher>> {
        let mut out = Vec::with_capacity(list.len());
        for v in list {
            let value = match v.kind.unwrap_or_default() {
                ValueMatchType::Exact => StringMatch::Exact(v.value.clone()),
                ValueMatchType::RegularExpression => match anchored(&v.value) {
                    Ok(re) => StringMatch::Regex(re),
                    Err(e) => {
                        diags.error(
                            me,
                            Reason::InvalidRegex,
                            format!("rule {rule_name}: {what} {} regex {:?} does not compile ({}); the match is left out", v.name, v.value, first_line(&e)),
                        );
                        return None;
                    }
                },
            };
            let name = if lower {
                v.name.to_ascii_lowercase()
            } else {
                v.name.clone()
            };
            out.push(ValueMatcher { name, value });
        }
        out.sort();
        out.dedup();
        Some(out)
    };
    let headers = values(&m.headers, true, "header", diags)?;
    let query_params = values(&m.query_params, false, "query parameter", diags)?;
    Some(RouteMatcher {
        path,
        methods,
        headers,
        query_params,
    })
}

fn first_line(e: &regex::Error) -> String {
    e.to_string()
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// What the rule does with its requests; `None` (with a diagnostic) when the rule is left
/// out of the table.
#[allow(clippy::too_many_arguments)]
fn action(
    inputs: &Inputs<'_>,
    pools: &BTreeMap<Key, &Object<UpstreamPoolSpec>>,
    policies: &BTreeMap<Key, &Object<CachePolicySpec>>,
    route: &Object<ApiRouteSpec>,
    rule: &api::RouteRule,
    rule_name: &str,
    me: &ObjectKey,
    diags: &mut Diagnostics,
) -> Option<RouteAction> {
    let (namespace, route_name) = (ns(&route.metadata), name(&route.metadata));
    let route_ip_rules = route.spec.ip_rules.as_ref();
    let at = RuleRef {
        name: rule_name,
        me,
    };
    if let Some(r) = &rule.redirect {
        return redirect_action(r, rule, &at, diags);
    }
    if rule.backends.is_empty() {
        diags.error(
            me,
            Reason::InvalidRule,
            format!("rule {rule_name} has neither backends nor a redirect, so it answers 500; add backends or a redirect"),
        );
    }
    let rewrite = filters::rewrite(rule.rewrite.as_ref(), &at, diags).ok()?;
    let backends = backends(pools, namespace, rule, rule_name, me, diags);
    // Every other reference is resolved even when no backend was: its diagnostics belong
    // in the same status, not one fix later.
    let cache_policy = rule.cache_policy_ref.as_ref().and_then(|r| {
        if policies.contains_key(&(namespace.to_string(), r.name.clone())) {
            Some(qualified(namespace, &r.name))
        } else {
            diags.error(
                me,
                Reason::CachePolicyNotFound,
                format!(
                    "rule {rule_name}: CachePolicy {namespace}/{} does not exist, so the rule is served uncached; create it or fix cachePolicyRef",
                    r.name
                ),
            );
            None
        }
    });
    let auth::AuthChecks {
        api_keys,
        ip_rules,
        jwt,
        ext_auth,
    } = auth::checks(
        inputs,
        namespace,
        route_name,
        route_ip_rules,
        rule.auth.as_ref(),
        &at,
        diags,
    );
    let Ok(ext_auth) = ext_auth else {
        // Never serve the rule without the check it asks for.
        return Some(RouteAction::DirectResponse(DirectResponse {
            status: 500,
            body: "the external authorization of this route is misconfigured".to_string(),
        }));
    };
    let upgrades = upgrades(rule, rule_name, me, diags);
    let timeout_ms = rule.timeout.unwrap_or(DEFAULT_TIMEOUT).as_millis();
    let hedge = hedge::hedge(rule, timeout_ms, rule_name, me, diags);
    let lanes = lanes::lanes(rule, timeout_ms, rule_name, me, diags);
    let backend_timeout_ms = filters::backend_timeout(rule.backend_timeout, timeout_ms, &at, diags);
    let request_headers =
        filters::header_modifier(rule.request_headers.as_ref(), "requestHeaders", &at, diags);
    let response_headers = filters::header_modifier(
        rule.response_headers.as_ref(),
        "responseHeaders",
        &at,
        diags,
    );
    let mirrors = filters::mirrors(pools, namespace, &rule.mirrors, &at, diags);
    if !backends.iter().any(|b| b.weight > 0) {
        return Some(RouteAction::DirectResponse(DirectResponse {
            status: 500,
            body: "no backend of this route could be resolved".to_string(),
        }));
    }

    Some(RouteAction::Forward(Box::new(ForwardAction {
        backends,
        timeout_ms,
        retry: rule.retries.as_ref().map(|r| retry(r, timeout_ms)),
        hedge,
        lanes,
        rewrite,
        backend_timeout_ms,
        request_headers,
        response_headers,
        mirrors,
        cache_policy,
        rate_limit: rule.rate_limit.as_ref().map(rate_limit),
        api_keys,
        ip_rules,
        jwt,
        ext_auth,
        upgrades,
    })))
}

/// A redirect rule: the redirect, or `None` when the rule is left out (it also has
/// backends, or its redirect is invalid). Forwarding fields are reported, not applied.
fn redirect_action(
    r: &api::RouteRedirect,
    rule: &api::RouteRule,
    at: &RuleRef<'_>,
    diags: &mut Diagnostics,
) -> Option<RouteAction> {
    if !rule.backends.is_empty() {
        diags.error(
            at.me,
            Reason::InvalidRule,
            format!(
                "rule {} has both backends and a redirect; keep one of them (the rule is left out)",
                at.name
            ),
        );
        return None;
    }
    let (refused, ignored) = filters::forward_only_fields(rule);
    if !refused.is_empty() {
        diags.error(
            at.me,
            Reason::InvalidRedirect,
            format!(
                "rule {} redirects, so {} cannot apply; remove them (the redirect works without them)",
                at.name,
                refused.join(", ")
            ),
        );
    }
    if !ignored.is_empty() {
        diags.warning(
            at.me,
            Reason::InvalidRedirect,
            format!(
                "rule {} redirects, so {} have no effect on it; remove them",
                at.name,
                ignored.join(", ")
            ),
        );
    }
    filters::redirect(r, &rule.matches, at, diags).map(RouteAction::Redirect)
}

/// The rule's pools that exist, each once (repeated pools merged, so weights stay what the
/// user meant).
fn backends(
    pools: &BTreeMap<Key, &Object<UpstreamPoolSpec>>,
    namespace: &str,
    rule: &api::RouteRule,
    rule_name: &str,
    me: &ObjectKey,
    diags: &mut Diagnostics,
) -> Vec<WeightedCluster> {
    let mut backends = Vec::new();
    for b in &rule.backends {
        if pools.contains_key(&(namespace.to_string(), b.pool.clone())) {
            backends.push(WeightedCluster {
                cluster: qualified(namespace, &b.pool),
                weight: u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0),
            });
        } else {
            diags.error(
                me,
                Reason::PoolNotFound,
                format!(
                    "rule {rule_name}: UpstreamPool {namespace}/{} does not exist; create it or fix backends[].pool",
                    b.pool
                ),
            );
        }
    }
    backends.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    backends.dedup_by(|a, b| {
        if a.cluster == b.cluster {
            b.weight = b.weight.saturating_add(a.weight);
            true
        } else {
            false
        }
    });
    backends
}

/// The protocols a rule allows to upgrade to, lower-case; `h2c` never (the CRD's CEL rule
/// refuses it; a standalone file is told here).
fn upgrades(
    rule: &api::RouteRule,
    rule_name: &str,
    me: &ObjectKey,
    diags: &mut Diagnostics,
) -> Vec<String> {
    let Some(listed) = &rule.upgrades else {
        return crate::snapshot::default_upgrades();
    };
    let mut out: Vec<String> = Vec::with_capacity(listed.len());
    for u in listed {
        let u = u.to_ascii_lowercase();
        if u == "h2c" {
            diags.error(
                me,
                Reason::InvalidUpgrade,
                format!("rule {rule_name}: h2c cannot be allowed (an HTTP/2 upgrade would bypass routing); remove it from upgrades"),
            );
        } else if !out.contains(&u) {
            out.push(u);
        }
    }
    out
}

fn retry(r: &api::RetryPolicy, timeout_ms: u64) -> RetryPolicy {
    let mut on: Vec<RetryCondition> = r
        .retry_on
        .clone()
        .unwrap_or_else(|| {
            vec![
                api::RetryOn::ConnectFailure,
                api::RetryOn::Reset,
                api::RetryOn::GatewayError,
            ]
        })
        .into_iter()
        .map(|c| match c {
            api::RetryOn::ConnectFailure => RetryCondition::ConnectFailure,
            api::RetryOn::Reset => RetryCondition::Reset,
            api::RetryOn::ServerError => RetryCondition::ServerError,
            api::RetryOn::GatewayError => RetryCondition::GatewayError,
            api::RetryOn::RetriableStatus => RetryCondition::RetriableStatus,
        })
        .collect();
    on.sort();
    on.dedup();
    let mut statuses: Vec<u16> = r
        .retriable_statuses
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| u16::try_from(s).ok())
        .collect();
    statuses.sort_unstable();
    statuses.dedup();
    let base = r
        .backoff_base
        .unwrap_or(Duration::from_millis(25))
        .as_millis();
    RetryPolicy {
        attempts: u32::try_from(r.attempts.unwrap_or(2))
            .unwrap_or(2)
            .clamp(1, 10),
        on,
        retriable_statuses: statuses,
        per_try_timeout_ms: r
            .per_try_timeout
            .map(|d| d.as_millis())
            .unwrap_or(timeout_ms)
            .min(timeout_ms),
        backoff_base_ms: base,
        backoff_max_ms: r
            .backoff_max
            .unwrap_or(Duration::from_millis(250))
            .as_millis()
            .max(base),
        budget_percent: u32::try_from(r.budget_percent.unwrap_or(20)).unwrap_or(20),
        budget_min_per_second: u32::try_from(r.budget_min_per_second.unwrap_or(10)).unwrap_or(10),
        non_idempotent: r.non_idempotent.unwrap_or(false),
    }
}

fn rate_limit(r: &api::RateLimit) -> RateLimit {
    let requests = u32::try_from(r.requests).unwrap_or(1).max(1);
    RateLimit {
        requests,
        period_ms: r
            .period
            .unwrap_or(Duration::from_secs(1))
            .as_millis()
            .max(1),
        burst: r
            .burst
            .and_then(|b| u32::try_from(b).ok())
            .filter(|b| *b > 0)
            .unwrap_or(requests),
        key: match r.key.unwrap_or_default() {
            api::RateLimitKeyType::ClientIP => RateLimitKey::ClientIp,
            api::RateLimitKeyType::ApiKey => RateLimitKey::ApiKey,
            api::RateLimitKeyType::Route => RateLimitKey::Route,
            api::RateLimitKeyType::Header => match &r.header {
                Some(h) => RateLimitKey::Header(h.to_ascii_lowercase()),
                None => RateLimitKey::Route,
            },
        },
        mode: match r.mode.unwrap_or_default() {
            api::RateLimitMode::Reject => RateLimitMode::Reject,
            api::RateLimitMode::Shape => RateLimitMode::Shape,
        },
        queue_size: r
            .queue_size
            .and_then(|q| u32::try_from(q).ok())
            .unwrap_or(100),
        max_delay_ms: r.max_delay.unwrap_or(Duration::from_secs(1)).as_millis(),
    }
}

pub(super) fn api_keys(
    inputs: &Inputs<'_>,
    namespace: &str,
    k: &api::ApiKeyAuth,
    rule_name: &str,
    me: &ObjectKey,
    diags: &mut Diagnostics,
) -> ApiKeyCheck {
    let source = match (&k.query_param, &k.header) {
        (Some(q), _) => KeySource::QueryParam(q.clone()),
        (None, Some(h)) => KeySource::Header(h.to_ascii_lowercase()),
        (None, None) => KeySource::Header("x-api-key".to_string()),
    };
    let mut keys = Vec::new();
    for r in &k.secret_refs {
        let field = if rule_name.is_empty() {
            "apiKeys.secretRefs".to_string()
        } else {
            format!("rule {rule_name}: auth.apiKeys.secretRefs")
        };
        let Some(data) = secret(inputs, namespace, &r.name, &field, me, diags) else {
            continue;
        };
        let before = keys.len();
        for (data_key, value) in data {
            let key = value.trim_ascii();
            if key.is_empty() {
                continue;
            }
            let id = format!("{}/{data_key}", r.name);
            let mut salt_hash = Sha256::new();
            salt_hash.update(&inputs.key_salt_seed);
            salt_hash.update(format!("{namespace}/{id}").as_bytes());
            let salt = &salt_hash.finalize()[..16];
            keys.push(HashedApiKey {
                id,
                salt: hex::encode(salt),
                sha256: hex::encode(HashedApiKey::hash_key(salt, key)),
            });
        }
        if keys.len() == before {
            diags.error(
                me,
                Reason::InvalidSecret,
                format!(
                    "Secret {namespace}/{} holds no API keys; add one key per data entry",
                    r.name
                ),
            );
        }
    }
    keys.sort_by(|a, b| a.id.cmp(&b.id));
    ApiKeyCheck { source, keys }
}
