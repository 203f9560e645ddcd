//! `parapet explain-route HOST PATH`: which rule of which resource serves a request, and
//! which pool and endpoints it would go to, found by the data plane's own router on the
//! table a data plane holds (or one from a file).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use parapet_crds::snapshot::{Cluster, Route, RouteAction, Table};
use parapet_dataplane::router::{RequestInfo, Router};
use serde::Serialize;

pub struct Request {
    pub host: String,
    /// The path, optionally with `?query`.
    pub path: String,
    pub method: Method,
    pub headers: HeaderMap,
    /// The Gateway listener port it arrives on (tables with listeners).
    pub port: Option<u16>,
}

impl Request {
    /// `K=V` pairs as header fields; a bad name or value is refused with which one.
    pub fn headers_from(pairs: &[String]) -> Result<HeaderMap> {
        let mut headers = HeaderMap::new();
        for p in pairs {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("--header {p:?} is not NAME=VALUE"))?;
            let name = HeaderName::try_from(k.trim())
                .with_context(|| format!("--header {p:?}: {k:?} is not a header name"))?;
            let value = HeaderValue::try_from(v).with_context(|| {
                format!("--header {p:?}: the value is not a valid header value")
            })?;
            headers.append(name, value);
        }
        Ok(headers)
    }
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The route that serves the request (`namespace/resource/rule`), if any.
    pub route: Option<String>,
    /// The resource and rule it came from, in words.
    pub source: Option<String>,
    /// Why no route serves it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unmatched: Option<String>,
    /// The route's whole entry in the table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Route>,
    /// For a forwarding rule: each pool, its share and its endpoints.
    pub backends: Vec<Backend>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    pub pool: String,
    /// Percent of requests the rule sends this pool.
    pub share: f64,
    pub algorithm: String,
    /// The endpoints new requests may go to (weight above 0, ready or serving).
    pub endpoints: Vec<String>,
    /// Endpoints in the table that take no new requests, and why.
    pub excluded: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failover_to: Option<String>,
}

pub fn explain(table: &Table, req: &Request) -> Result<Explanation> {
    let router = Router::new(table).context("the table does not build a router")?;
    let (path, query) = match req.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.path.as_str(), None),
    };
    if !path.starts_with('/') {
        bail!("the path must start with '/': {path:?}");
    }
    let info = RequestInfo {
        host: &req.host,
        path,
        query,
        method: &req.method,
        headers: &req.headers,
    };
    let matched = match req.port {
        Some(port) => router.route_on(port, &info),
        None => router.route(&info),
    };
    let Some(m) = matched else {
        return Ok(Explanation {
            route: None,
            source: None,
            unmatched: Some(unmatched(table, &req.host)),
            rule: None,
            backends: Vec::new(),
        });
    };
    let clusters: BTreeMap<&str, &Cluster> = table
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect();
    let backends = match &m.route.action {
        RouteAction::Forward(f) => {
            let total: u32 = f.backends.iter().map(|b| b.weight).sum();
            f.backends
                .iter()
                .map(|b| {
                    backend(
                        &b.cluster,
                        b.weight,
                        total,
                        clusters.get(b.cluster.as_str()).copied(),
                    )
                })
                .collect()
        }
        _ => Vec::new(),
    };
    Ok(Explanation {
        route: Some(m.route.name.clone()),
        source: Some(source(&m.route.name)),
        unmatched: None,
        rule: Some(m.route.clone()),
        backends,
    })
}

/// `ns/name/rule` in words; Gateway routes are named `Kind/ns/name/rule`.
fn source(name: &str) -> String {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        [ns, res, rule] => format!("ApiRoute {ns}/{res}, rule {rule}"),
        [kind, ns, res, rule] => format!("{kind} {ns}/{res}, rule {rule}"),
        _ => name.to_string(),
    }
}

fn backend(name: &str, weight: u32, total: u32, c: Option<&Cluster>) -> Backend {
    let share = if total == 0 {
        0.0
    } else {
        100.0 * f64::from(weight) / f64::from(total)
    };
    let Some(c) = c else {
        return Backend {
            pool: name.to_string(),
            share,
            algorithm: "-".into(),
            endpoints: Vec::new(),
            excluded: vec!["the pool is not in the table".into()],
            failover_to: None,
        };
    };
    let (mut endpoints, mut excluded) = (Vec::new(), Vec::new());
    for e in &c.endpoints {
        let mut at = format!("{}:{} weight {}", e.address, e.port, e.weight);
        if let Some(z) = &e.zone {
            at.push_str(&format!(" zone {z}"));
        }
        if e.routable() {
            endpoints.push(at);
        } else {
            let why = if e.weight == 0 {
                "out of rotation"
            } else if e.terminating {
                "terminating"
            } else {
                "not ready"
            };
            excluded.push(format!("{at} ({why})"));
        }
    }
    Backend {
        pool: c.name.clone(),
        share,
        algorithm: serde_json::to_value(c.load_balancing.algorithm)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        endpoints,
        excluded,
        failover_to: c.failover.as_ref().and_then(|f| f.backup_cluster.clone()),
    }
}

/// Whether a virtual host serves the name, and the fix.
fn unmatched(table: &Table, host: &str) -> String {
    let host = host.to_ascii_lowercase();
    let host = host.trim_end_matches('.');
    let serving: Vec<&str> = table
        .all_virtual_hosts()
        .map(|v| v.domain.as_str())
        .filter(|d| {
            *d == "*" || *d == host || d.strip_prefix('*').is_some_and(|s| host.ends_with(s))
        })
        .collect();
    if serving.is_empty() {
        let some: Vec<&str> = table
            .all_virtual_hosts()
            .map(|v| v.domain.as_str())
            .take(8)
            .collect();
        format!(
            "no virtual host serves {host}; the table's hosts include {}",
            some.join(", ")
        )
    } else {
        format!(
            "{host} is served by virtual host {}, but none of its rules matches this method, path, headers and query",
            serving[0]
        )
    }
}

pub fn render(req: &Request, e: &Explanation) -> String {
    let mut out = format!("{} {}{}\n", req.method, req.host, req.path);
    let (Some(route), Some(rule)) = (&e.route, &e.rule) else {
        out.push_str(&format!(
            "no route: {}\n",
            e.unmatched.as_deref().unwrap_or("")
        ));
        return out;
    };
    out.push_str(&format!(
        "route    {route} ({})\n",
        e.source.as_deref().unwrap_or("")
    ));
    out.push_str(&format!(
        "matches  {}\n",
        serde_json::to_string(&rule.matcher).expect("a matcher serialises")
    ));
    match &rule.action {
        RouteAction::Forward(f) => {
            out.push_str(&format!("forward  timeout {} ms", f.timeout_ms));
            if let Some(r) = &f.retry {
                out.push_str(&format!(", {} attempts", r.attempts));
            }
            if let Some(p) = &f.cache_policy {
                out.push_str(&format!(", cache {p}"));
            }
            if f.rate_limit.is_some() {
                out.push_str(", rate limited");
            }
            if f.api_keys.is_some() {
                out.push_str(", API keys required");
            }
            out.push('\n');
            for b in &e.backends {
                out.push_str(&format!(
                    "pool     {} ({:.0}%, {})",
                    b.pool, b.share, b.algorithm
                ));
                if let Some(f) = &b.failover_to {
                    out.push_str(&format!(", fails over to {f}"));
                }
                out.push('\n');
                if b.endpoints.is_empty() {
                    out.push_str("         no endpoint takes requests: the pool answers 503\n");
                }
                for ep in &b.endpoints {
                    out.push_str(&format!("         -> {ep}\n"));
                }
                for ep in &b.excluded {
                    out.push_str(&format!("         x  {ep}\n"));
                }
            }
        }
        RouteAction::DirectResponse(d) => {
            out.push_str(&format!("answers  {} directly\n", d.status));
        }
        RouteAction::Redirect(_) => out.push_str("redirects (see the rule with -o json)\n"),
    }
    out
}
