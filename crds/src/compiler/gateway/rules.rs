//! The attached rules of a Gateway's routes → the routes of each listener port's virtual
//! hosts, in Gateway API precedence, and the clusters and cache policies they use.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet},
};

use super::{
    GatewayInputs,
    attach::{Attachment, wildcard_covers},
    listeners::ListenerModel,
    model::{self, GrpcMethod, MethodMatch, Route},
    refs::{ClusterSource, ResolvedRoute, ResolvedRule},
};
use crate::{
    Duration,
    api::Object,
    compiler::{
        Diagnostics, Inputs, ServicePortKey, cache, clusters, index,
        routes::{DEFAULT_TIMEOUT, anchored, host_order},
    },
    gateway_api::gateways::GatewaySpec,
    snapshot::{
        Algorithm, Cluster, DirectResponse, ForwardAction, HeaderModifier, HeaderPair, Listener,
        ListenerProtocol, LoadBalancing, Mirror, PathMatch, PathReplacement, Redirect, Rewrite,
        Route as TableRoute, RouteAction, RouteMatcher, StringMatch, Table, UNMODIFIABLE_HEADERS,
        UpstreamProtocol, ValueMatcher, VirtualHost, default_upgrades, is_header_name,
        is_header_value,
    },
};

/// "0s" turns a Gateway API timeout off; the table bounds it at a day all the same.
const NO_TIMEOUT_MS: u64 = 24 * 3600 * 1000;

type SortKey = (
    u8,
    Reverse<usize>,
    bool,
    Reverse<usize>,
    Reverse<usize>,
    usize,
    usize,
    usize,
);

struct Candidate {
    sort: SortKey,
    route: TableRoute,
}

#[derive(Default)]
struct Port {
    protocol: Option<ListenerProtocol>,
    hosts: BTreeMap<String, Vec<Candidate>>,
    certs: BTreeMap<String, crate::snapshot::CertificatePair>,
}

pub fn table(
    _gateway: &Object<GatewaySpec>,
    listeners: &[ListenerModel],
    attachments: &[Attachment],
    routes: &[Route],
    resolved: &[ResolvedRoute],
    _gw: &GatewayInputs<'_>,
    inputs: &Inputs<'_>,
) -> Table {
    let mut ports: BTreeMap<u16, Port> = BTreeMap::new();
    for l in listeners.iter().filter(|l| l.programmed()) {
        let port = ports.entry(l.port).or_default();
        port.protocol
            .get_or_insert(l.protocol.unwrap_or(ListenerProtocol::Http));
        // Every listener's names have a host of their own, routes or not: a name that a
        // more specific listener covers is that listener's alone (404 without a route, not
        // a less specific listener's route), and an HTTPS listener completes the handshake
        // for every name it covers.
        let domain = l.hostname.clone().unwrap_or_else(|| "*".to_string());
        port.hosts.entry(domain.clone()).or_default();
        if let Some(c) = &l.certificate {
            port.certs.entry(domain).or_insert_with(|| c.clone());
        }
    }
    let mut used: BTreeSet<ClusterSource> = BTreeSet::new();
    let mut policies: BTreeSet<String> = BTreeSet::new();
    for a in attachments {
        let l = &listeners[a.listener];
        if !l.programmed() {
            continue;
        }
        let route = &routes[a.route];
        let port = ports.entry(l.port).or_default();
        for (ri, rule) in route.rules.iter().enumerate() {
            let res = resolved[a.route].rules.get(ri).cloned().unwrap_or_default();
            let rule_name = rule.name.clone().unwrap_or_else(|| ri.to_string());
            let matches = if rule.matches.is_empty() {
                vec![model::Match::default()]
            } else {
                rule.matches.clone()
            };
            for (mi, m) in matches.iter().enumerate() {
                let Some(matcher) = matcher(route, m) else {
                    continue;
                };
                let action = action(rule, &res, &matcher, l);
                if let RouteAction::Forward(f) = &action {
                    used.extend(
                        res.backends
                            .iter()
                            .filter_map(|(c, w)| c.clone().filter(|_| *w > 0)),
                    );
                    used.extend(res.mirrors.iter().map(|(c, _)| c.clone()));
                    policies.extend(f.cache_policy.clone());
                }
                let table_route = TableRoute {
                    name: format!(
                        "{}/{}/{}/{rule_name}/{mi}",
                        route.kind.to_ascii_lowercase(),
                        route.namespace,
                        route.name
                    ),
                    matcher: matcher.clone(),
                    action,
                };
                let sort = sort_key(&matcher, a.route, ri, mi);
                for h in a
                    .hostnames
                    .iter()
                    .filter(|h| !isolated(listeners, a.listener, h))
                {
                    port.hosts.entry(h.clone()).or_default().push(Candidate {
                        sort,
                        route: table_route.clone(),
                    });
                    if let Some(c) = &l.certificate {
                        port.certs.entry(h.clone()).or_insert_with(|| c.clone());
                    }
                }
            }
        }
    }

    let table_listeners = ports
        .into_iter()
        .map(|(port, p)| Listener {
            port,
            protocol: p.protocol.unwrap_or(ListenerProtocol::Http),
            virtual_hosts: virtual_hosts(p.hosts, &p.certs),
        })
        .collect();

    Table {
        format: crate::snapshot::FORMAT_VERSION,
        virtual_hosts: Vec::new(),
        clusters: clusters_for(&used, inputs),
        cache_policies: cache::compile_policies(&inputs.cache_policies)
            .into_iter()
            .filter(|p| policies.contains(&p.name))
            .collect(),
        sources: Vec::new(),
        fleet_pods: 0,
        listeners: table_listeners,
    }
}

/// Whether requests for `host` on this listener's port are another listener's: one on the
/// same port whose hostname covers `host` and is more specific than this listener's. Its
/// routes alone serve those names (listener isolation), so this listener's routes leave
/// them out.
fn isolated(listeners: &[ListenerModel], me: usize, host: &str) -> bool {
    let mine = &listeners[me];
    listeners.iter().enumerate().any(|(i, l)| {
        i != me
            && l.port == mine.port
            && l.programmed()
            && l.hostname
                .as_deref()
                .is_some_and(|lh| lh == host || wildcard_covers(lh, host))
            && specificity(l.hostname.as_deref()) > specificity(mine.hostname.as_deref())
    })
}

/// How specific a listener hostname is: none, then wildcards by labels, then exact names.
fn specificity(hostname: Option<&str>) -> (u8, usize) {
    match hostname {
        None => (0, 0),
        Some(h) if h.starts_with("*.") => (1, h.split('.').count()),
        Some(h) => (2, h.split('.').count()),
    }
}

fn virtual_hosts(
    hosts: BTreeMap<String, Vec<Candidate>>,
    certs: &BTreeMap<String, crate::snapshot::CertificatePair>,
) -> Vec<VirtualHost> {
    let mut out: Vec<VirtualHost> = hosts
        .into_iter()
        .map(|(domain, mut candidates)| {
            candidates.sort_by_key(|c| c.sort);
            // The first of identical matches wins (the older route, then the earlier rule).
            let mut seen: BTreeSet<RouteMatcher> = BTreeSet::new();
            let routes = candidates
                .into_iter()
                .filter(|c| seen.insert(c.route.matcher.clone()))
                .map(|c| c.route)
                .collect();
            VirtualHost {
                tls: certs.get(&domain).cloned(),
                client_auth: None,
                domain,
                routes,
            }
        })
        .collect();
    out.sort_by(|a, b| host_order(&a.domain).cmp(&host_order(&b.domain)));
    out
}

/// Gateway API precedence: exact paths, then regular expressions, then the longest
/// prefix; then a method, more headers, more query parameters; then the older route and
/// the earlier rule and match.
fn sort_key(m: &RouteMatcher, route: usize, rule: usize, index: usize) -> SortKey {
    let (class, len) = match &m.path {
        PathMatch::Exact(p) => (0, p.len()),
        PathMatch::Regex(p) => (1, p.len()),
        PathMatch::Prefix(p) => (2, p.len()),
    };
    (
        class,
        Reverse(len),
        m.methods.is_empty(),
        Reverse(m.headers.len()),
        Reverse(m.query_params.len()),
        route,
        rule,
        index,
    )
}

/// A match as the table's matcher; `None` when it cannot match anything as written (a
/// regex that does not compile), so it is left out rather than widened.
fn matcher(route: &Route, m: &model::Match) -> Option<RouteMatcher> {
    let path = match (&m.path, &m.method) {
        (_, Some(MethodMatch::Grpc(g))) => grpc_path(g)?,
        (None, _) => PathMatch::Prefix("/".to_string()),
        (Some(p), _) => {
            let value = p.value.clone().unwrap_or_else(|| "/".to_string());
            match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" => PathMatch::Exact(value),
                "RegularExpression" => PathMatch::Regex(anchored(&value).ok()?),
                _ => {
                    let trimmed = value.trim_end_matches('/');
                    PathMatch::Prefix(if trimmed.is_empty() {
                        "/".to_string()
                    } else {
                        trimmed.to_string()
                    })
                }
            }
        }
    };
    let path = if route.is_grpc() && m.method.is_none() {
        PathMatch::Prefix("/".to_string())
    } else {
        path
    };
    let methods = match &m.method {
        Some(MethodMatch::Http(method)) => vec![method.to_ascii_uppercase()],
        _ => Vec::new(),
    };
    let values = |list: &[model::ValueMatch], lower: bool| -> Option<Vec<ValueMatcher>> {
        list.iter()
            .map(|v| {
                let value = match v.kind.as_deref().unwrap_or("Exact") {
                    "RegularExpression" => StringMatch::Regex(anchored(&v.value).ok()?),
                    _ => StringMatch::Exact(v.value.clone()),
                };
                Some(ValueMatcher {
                    name: if lower {
                        v.name.to_ascii_lowercase()
                    } else {
                        v.name.clone()
                    },
                    value,
                })
            })
            .collect()
    };
    Some(RouteMatcher {
        path,
        methods,
        headers: values(&m.headers, true)?,
        query_params: values(&m.query_params, false)?,
    })
}

/// A gRPC method match as a path: `/service/method`.
fn grpc_path(g: &GrpcMethod) -> Option<PathMatch> {
    let regex = g.kind.as_deref() == Some("RegularExpression");
    let (service, method) = (g.service.as_deref(), g.method.as_deref());
    Some(match (regex, service, method) {
        (false, Some(s), Some(m)) => PathMatch::Exact(format!("/{s}/{m}")),
        (false, Some(s), None) => PathMatch::Prefix(format!("/{s}")),
        (false, None, Some(m)) => {
            PathMatch::Regex(anchored(&format!("/[^/]+/{}", regex::escape(m))).ok()?)
        }
        (false, None, None) => PathMatch::Prefix("/".to_string()),
        (true, s, m) => PathMatch::Regex(
            anchored(&format!(
                "/(?:{})/(?:{})",
                s.unwrap_or("[^/]+"),
                m.unwrap_or("[^/]+")
            ))
            .ok()?,
        ),
    })
}

fn action(
    rule: &model::Rule,
    res: &ResolvedRule,
    matcher: &RouteMatcher,
    l: &ListenerModel,
) -> RouteAction {
    if let Some(r) = rule
        .filters
        .iter()
        .find_map(|f| f.request_redirect.as_ref())
    {
        return RouteAction::Redirect(redirect(r, matcher, l));
    }
    let backends: Vec<crate::snapshot::WeightedCluster> = res
        .backends
        .iter()
        .filter(|(c, w)| c.is_some() && *w > 0)
        .map(|(c, w)| crate::snapshot::WeightedCluster {
            cluster: c
                .as_ref()
                .map(ClusterSource::cluster_name)
                .unwrap_or_default(),
            weight: *w,
        })
        .collect();
    if backends.is_empty() || res.broken_filter {
        return RouteAction::DirectResponse(DirectResponse {
            status: 500,
            body: "no backend of this route could be resolved".to_string(),
        });
    }
    let mut rewrite = None;
    let mut request_headers = HeaderModifier::default();
    let mut response_headers = HeaderModifier::default();
    for f in &rule.filters {
        if let Some(h) = &f.request_header_modifier {
            merge_headers(&mut request_headers, h);
        }
        if let Some(h) = &f.response_header_modifier {
            merge_headers(&mut response_headers, h);
        }
        if let Some(u) = &f.url_rewrite {
            rewrite = Some(url_rewrite(u, matcher));
        }
    }
    let (api_keys, ip_rules, jwt, ext_auth) = match &res.auth {
        None => (None, None, None, None),
        Some(a) => {
            let Ok(ext_auth) = a.ext_auth.clone() else {
                // Never serve the rule without the check its policy asks for.
                return RouteAction::DirectResponse(DirectResponse {
                    status: 500,
                    body: "the external authorization of this route is misconfigured".to_string(),
                });
            };
            (
                a.api_keys.clone(),
                a.ip_rules.clone(),
                a.jwt.clone(),
                ext_auth,
            )
        }
    };
    let timeouts = rule.timeouts.as_ref();
    let timeout_ms = timeouts
        .and_then(|t| t.request.as_deref())
        .and_then(gateway_duration)
        .unwrap_or(DEFAULT_TIMEOUT.as_millis());
    // No attempt outlives the request.
    let backend_timeout_ms = timeouts
        .and_then(|t| t.backend_request.as_deref())
        .and_then(gateway_duration)
        .map(|b| b.min(timeout_ms));
    RouteAction::Forward(Box::new(ForwardAction {
        backends,
        timeout_ms,
        retry: None,
        hedge: None,
        lanes: None,
        rewrite,
        backend_timeout_ms,
        request_headers,
        response_headers,
        mirrors: res
            .mirrors
            .iter()
            .map(|(c, per_million)| Mirror {
                cluster: c.cluster_name(),
                per_million: *per_million,
            })
            .collect(),
        cache_policy: res.cache_policy.clone(),
        rate_limit: None,
        api_keys,
        ip_rules,
        jwt,
        ext_auth,
        upgrades: default_upgrades(),
    }))
}

/// A Gateway API duration (`10s`, `1h30m`, `500ms`); `0s` means no timeout.
fn gateway_duration(s: &str) -> Option<u64> {
    let d = Duration::parse(s).ok()?;
    Some(match d.as_millis() {
        0 => NO_TIMEOUT_MS,
        ms => ms.min(NO_TIMEOUT_MS),
    })
}

/// Header edits as the table takes them: an entry with a name or value that is not valid
/// HTTP (the upstream CRD puts no pattern on values) is left out, so one route can never
/// make its Gateway's whole table invalid.
fn merge_headers(into: &mut HeaderModifier, h: &model::HeaderModifier) {
    let allowed = |name: &str| is_header_name(name) && !UNMODIFIABLE_HEADERS.contains(&name);
    let pair = |x: &model::Header| HeaderPair {
        name: x.name.to_ascii_lowercase(),
        value: x.value.clone(),
    };
    let valid = |p: &HeaderPair| allowed(&p.name) && is_header_value(&p.value);
    into.set.extend(h.set.iter().map(pair).filter(valid));
    into.add.extend(h.add.iter().map(pair).filter(valid));
    into.remove.extend(
        h.remove
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .filter(|n| allowed(n)),
    );
}

fn path_replacement(p: &model::PathModifier, matcher: &RouteMatcher) -> Option<PathReplacement> {
    match p.kind.as_str() {
        "ReplaceFullPath" => p.replace_full_path.clone().map(PathReplacement::Full),
        "ReplacePrefixMatch" => {
            let value = p.replace_prefix_match.clone()?;
            // Only a prefix match has a prefix to replace; otherwise the whole path is it.
            Some(match matcher.path {
                PathMatch::Prefix(_) => PathReplacement::Prefix(value),
                _ => PathReplacement::Full(value),
            })
        }
        _ => None,
    }
}

fn url_rewrite(u: &model::UrlRewrite, matcher: &RouteMatcher) -> Rewrite {
    let path = u.path.as_ref().and_then(|p| path_replacement(p, matcher));
    Rewrite {
        path_prefix: match &path {
            Some(PathReplacement::Prefix(p)) => Some(p.clone()),
            _ => None,
        },
        full_path: match path {
            Some(PathReplacement::Full(p)) => Some(p),
            _ => None,
        },
        hostname: u.hostname.clone(),
    }
}

/// A redirect with scheme and port settled as Gateway API says: the filter's, else the
/// scheme's well-known port when it names a scheme, else the listener's.
fn redirect(r: &model::Redirect, matcher: &RouteMatcher, l: &ListenerModel) -> Redirect {
    let listener_scheme = match l.protocol {
        Some(ListenerProtocol::Https) => "https",
        _ => "http",
    };
    let scheme = r
        .scheme
        .clone()
        .unwrap_or_else(|| listener_scheme.to_string());
    let port = match (r.port, r.scheme.as_deref()) {
        (Some(p), _) => u16::try_from(p).ok(),
        (None, Some("https")) => Some(443),
        (None, Some(_)) => Some(80),
        (None, None) => Some(l.port),
    };
    Redirect {
        scheme: Some(scheme),
        hostname: r.hostname.clone(),
        port,
        path: r.path.as_ref().and_then(|p| path_replacement(p, matcher)),
        // The CRD allows only 301 and 302; a file might say anything.
        status: u16::try_from(r.status_code.unwrap_or(302))
            .ok()
            .filter(|c| crate::snapshot::REDIRECT_STATUSES.contains(c))
            .unwrap_or(302),
    }
}

/// The table's clusters for the backends a Gateway uses: pools compiled as for ApiRoutes,
/// Services with default settings.
fn clusters_for(used: &BTreeSet<ClusterSource>, inputs: &Inputs<'_>) -> Vec<Cluster> {
    let pools = index(&inputs.pools);
    let referenced: BTreeSet<(String, String)> = used
        .iter()
        .filter_map(|c| match c {
            ClusterSource::Pool { namespace, name } => Some((namespace.clone(), name.clone())),
            ClusterSource::Service { .. } => None,
        })
        .collect();
    // The pools' own problems are reported where ApiRoutes are compiled.
    let mut scratch = Diagnostics::default();
    let mut out = clusters::compile_clusters(inputs, &pools, &referenced, &mut scratch);
    for c in used {
        if let ClusterSource::Service {
            namespace,
            name,
            port,
            http2,
        } = c
        {
            let key = ServicePortKey {
                namespace: namespace.clone(),
                service: name.clone(),
                port: *port,
            };
            out.push(Cluster {
                name: c.cluster_name(),
                endpoints: clusters::normalise(
                    inputs
                        .service_endpoints
                        .get(&key)
                        .cloned()
                        .unwrap_or_default(),
                ),
                load_balancing: LoadBalancing {
                    algorithm: Algorithm::RoundRobin,
                    hash_on: None,
                },
                connect_timeout_ms: clusters::DEFAULT_CONNECT_TIMEOUT.as_millis(),
                protocol: if *http2 {
                    UpstreamProtocol::Http2
                } else {
                    UpstreamProtocol::Http1
                },
                health_check: None,
                outlier_detection: None,
                circuit_breaker: None,
                failover: None,
                tls: None,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}
