//! One request's life, in stages:
//!
//! 1. **limits**: URI and declared body size; then the **head** (`head.rs`): one reading of
//!    the authority for the router, the API-key check and the backend, and nothing
//!    ambiguous (`CONNECT`, repeated `Transfer-Encoding`, dot segments).
//! 2. **route**: the table in force and the router's match; direct answers end here. The
//!    rule's `upgrades` decide whether an `Upgrade` is honoured or dropped.
//! 3. **auth** (`auth/`): the rule's API keys; missing → 401, wrong → 403.
//! 4. **rate limit** (`ratelimit/`): the rule's buckets; 429 with `Retry-After`, or a wait
//!    in Shape mode. A fresh cache entry answers right after this, before admission: hits
//!    take no lane slot and cost the upstream side nothing.
//! 5. **admit**: the route's bulkhead and lane (`lanes`); refused requests get 503.
//! 6. **prepare** (`prepare.rs`): the backend pool by weight, the upstream URI (rewrites),
//!    headers, the deadline (route timeout, or the client's `x-parapet-timeout-ms` when
//!    shorter) and the body (buffered when small enough to replay).
//! 7. **cache** (`cached.rs`, `cache/`): GET/HEAD of rules with a CachePolicy go through
//!    the response cache (stale entries, coalesced waits); misses and refreshes continue
//!    below.
//! 8. **forward** (`forward.rs`): endpoint picks, breaker, attempts, retries, hedges.
//! 9. **respond** (`respond.rs`): the upstream response streamed back, or the gateway's
//!    own problem document.

pub mod body;
mod cached;
mod forward;
mod head;
pub mod headers;
mod prepare;
pub mod problem;
mod respond;

use std::{net::SocketAddr, sync::Arc};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use parapet_crds::snapshot::RouteAction;
use tokio::time::Instant;

use self::{
    body::{DownstreamBody, ProxyBody},
    forward::Exchange,
    headers::{X_REQUEST_ID, allowed_upgrade, new_request_id, normalise_host},
    problem::problem,
    respond::{outcome_response, overloaded},
};
use crate::{
    auth::{Refusal, Source},
    lanes::Lanes,
    metrics::Metrics,
    ratelimit::{self, Decision},
    router::RequestInfo,
    snapshot::SnapshotStore,
};

/// The client's deadline for the whole exchange, in milliseconds; honoured when shorter
/// than the route's timeout, and not forwarded.
pub const X_PARAPET_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-parapet-timeout-ms");

/// Request limits, with defaults in line with Envoy's and nginx's.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
    /// Request bodies up to this size are buffered so a retry or hedge can send them again;
    /// larger ones stream once and are never retried.
    pub max_replay_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            max_replay_bytes: 64 * 1024,
        }
    }
}

pub struct Proxy {
    pub store: Arc<SnapshotStore>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Fast and slow lanes, route bulkheads.
    pub lanes: Arc<Lanes>,
    /// Log one line per request (target `parapet::access`).
    pub access_log: bool,
    pub edge: EdgeConfig,
}

/// Edge settings: which peers' forwarding headers are trusted, what `Server` says.
#[derive(Clone, Debug, Default)]
pub struct EdgeConfig {
    /// Peers whose `X-Forwarded-*` and `Forwarded` are kept and extended
    /// (`--trusted-proxies`); from any other peer they are replaced.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// For requests from trusted proxies: how many `X-Forwarded-For` entries from the
    /// right are proxies, so the client address for rate limits is the one before them
    /// (`--trusted-hops`); 0: the peer address.
    pub trusted_hops: u32,
    /// `Server` header on every response (`--server-header`); none by default.
    pub server_header: Option<HeaderValue>,
}

impl EdgeConfig {
    /// Whether `peer` is a proxy whose forwarding headers are believed.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        if self.trusted_proxies.is_empty() {
            return false;
        }
        let peer = peer.to_canonical();
        self.trusted_proxies.iter().any(|n| n.contains(&peer))
    }
}

/// What stages learn that the response and the access log need.
#[derive(Default)]
struct Extras {
    /// The identity of the API key the request presented (never the key).
    key_id: Option<Arc<str>>,
    /// `RateLimit-*` and `Retry-After`.
    headers: HeaderMap,
}

/// What the listener knows about the connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

impl Proxy {
    pub async fn handle(
        self: Arc<Self>,
        req: Request<DownstreamBody>,
        conn: ConnInfo,
    ) -> Response<ProxyBody> {
        self.metrics.in_flight.inc();
        let logged = self.access_log.then(|| {
            (
                req.method().clone(),
                req.uri().path().to_owned(),
                Instant::now(),
            )
        });
        let mut extras = Extras::default();
        let mut resp = self.serve(req, conn, &mut extras).await;
        self.metrics.in_flight.dec();
        let h = resp.headers_mut();
        for (k, v) in extras.headers.drain().filter_map(|(k, v)| Some((k?, v))) {
            h.insert(k, v);
        }
        if let Some(server) = &self.edge.server_header {
            h.insert(header::SERVER, server.clone());
        }
        if let Some((method, path, started)) = logged {
            tracing::info!(
                target: "parapet::access",
                client = %conn.peer.ip(),
                %method,
                %path,
                status = resp.status().as_u16(),
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                request_id = resp.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or(""),
                key_id = extras.key_id.as_deref().unwrap_or(""),
            );
        }
        resp
    }

    async fn serve(
        &self,
        mut req: Request<DownstreamBody>,
        conn: ConnInfo,
        extras: &mut Extras,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let request_id = match req.headers().get(&X_REQUEST_ID) {
            Some(v) if !v.is_empty() && v.len() <= 128 => v.clone(),
            _ => {
                let id = new_request_id();
                req.headers_mut().insert(X_REQUEST_ID, id.clone());
                id
            }
        };
        let rid = Some(&request_id);

        // 1. limits
        if req.uri().path_and_query().map_or(0, |p| p.as_str().len()) > self.limits.max_uri_bytes {
            self.metrics.reject("uri_too_long");
            return problem(
                StatusCode::URI_TOO_LONG,
                "the request URI is longer than this gateway accepts",
                rid,
            );
        }
        // Request smuggling: hyper's HTTP/1 parser refuses malformed framing (duplicate
        // differing lengths, obs-fold, bad bytes, codings other than a final chunked,
        // Transfer-Encoding in HTTP/1.0). A request with both Content-Length and
        // Transfer-Encoding is read as chunked with the length dropped, and its connection
        // closes after the answer (RFC 9112 §6.3), so nothing can ride behind it; a body
        // that fails to decode is answered 400 (`is_bad_request_body`).
        let declared_length = content_length(&req);
        if let Some(len) = declared_length
            && len > self.limits.max_body_bytes
        {
            self.metrics.reject("body_too_large");
            let mut r = problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the request body is larger than the {} bytes this gateway accepts",
                    self.limits.max_body_bytes
                ),
                rid,
            );
            // The body is left unread, so the connection cannot be reused.
            r.headers_mut()
                .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
            return r;
        }

        // As the client wrote it (for Host upstream), and normalised (for routing): one
        // reading for the router, the API-key check and the backend.
        let authority = match head::check(&mut req) {
            Ok(a) => a,
            Err(refused) => {
                self.metrics.reject(refused.reason);
                let mut r = problem(refused.status, refused.detail, rid);
                // Whatever the client sends next is not read as another request.
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return r;
            }
        };

        // 2. route
        let Some(table) = self.store.load() else {
            self.metrics.reject("no_table");
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway has no routing table yet",
                rid,
            );
        };
        let authority_str = authority.as_ref().and_then(|a| a.to_str().ok());
        let host_norm = authority_str.map(normalise_host);
        let host = host_norm.as_deref().unwrap_or("");
        let Some(matched) = table.router.route(&RequestInfo {
            host,
            path: req.uri().path(),
            query: req.uri().query(),
            method: req.method(),
            headers: req.headers(),
        }) else {
            self.metrics.no_route.inc();
            return problem(
                StatusCode::NOT_FOUND,
                "no route matches this host and path",
                rid,
            );
        };
        let route_rt = &table.routes[matched.index];
        let forward = match &matched.route.action {
            RouteAction::DirectResponse(d) => {
                let status =
                    StatusCode::from_u16(d.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                route_rt
                    .metrics
                    .record(status.as_u16(), started.elapsed().as_secs_f64());
                return problem(status, &d.body, rid);
            }
            RouteAction::Forward(f) => f,
        };
        // The protocol the client may switch to, if it asks for one the rule allows; any
        // other Upgrade is dropped below and the request served as an ordinary one.
        let upgrade_to = allowed_upgrade(req.headers(), &forward.upgrades).cloned();
        let upgrade = upgrade_to.is_some();
        let trusted = self.edge.trusts(conn.peer.ip());

        // 3. auth
        let key_id = match &route_rt.api_keys {
            None => None,
            Some(keys) => match keys.authenticate(req.headers(), req.uri().query()) {
                Ok(id) => {
                    // The key is a credential for the gateway, not for the backend.
                    if let Source::Header(h) = &keys.source {
                        req.headers_mut().remove(h);
                    }
                    Some(id)
                }
                Err(why) => {
                    self.metrics.reject(why.label());
                    let resp = refused(why, rid);
                    route_rt
                        .metrics
                        .record(resp.status().as_u16(), started.elapsed().as_secs_f64());
                    return resp;
                }
            },
        };
        extras.key_id = key_id.clone();

        // 4. rate limit
        if let Some(limiter) = &route_rt.rate_limit {
            let decision = {
                let key = ratelimit::request_key(
                    &limiter.limit().key,
                    req.headers(),
                    conn.peer.ip(),
                    key_id.as_deref(),
                    if trusted { self.edge.trusted_hops } else { 0 },
                );
                limiter.acquire(&key)
            };
            limiter.headers(&decision, &mut extras.headers);
            match decision {
                Decision::Deny { .. } => {
                    self.metrics.reject("rate_limited");
                    route_rt
                        .metrics
                        .record(429, started.elapsed().as_secs_f64());
                    return problem(
                        StatusCode::TOO_MANY_REQUESTS,
                        "the rate limit of this route is exhausted; retry after the time retry-after gives",
                        rid,
                    );
                }
                Decision::Allow { wait, .. } if !wait.is_zero() => {
                    tracing::debug!(route = %route_rt.name, wait_ms = wait.as_millis() as u64, "rate limit: request shaped");
                    tokio::time::sleep(wait).await;
                }
                Decision::Allow { .. } => {}
            }
        }

        // 4½. a fresh cache entry answers here, before anything is spent on the upstream
        // side (lane, body, upstream head): hits do not load the backends the lanes protect.
        let cache_policy = forward
            .cache_policy
            .as_ref()
            .and_then(|n| table.cache_policies.get(n));
        if let Some(policy) = cache_policy
            && hyper::body::Body::is_end_stream(req.body())
            && !upgrade
            && let Some(mut resp) = self.store.cache().fresh(
                policy,
                req.method(),
                if conn.tls { "https" } else { "http" },
                host,
                req.uri(),
                req.headers(),
            )
        {
            cached::finish(&mut resp, &request_id);
            route_rt
                .metrics
                .record(resp.status().as_u16(), started.elapsed().as_secs_f64());
            return resp;
        }

        // 5. admit
        let lane = match self.lanes.admit_at(&route_rt.live.lane, started) {
            Ok(g) => g,
            Err(why) => {
                self.metrics.reject(why.label());
                tracing::debug!(route = %route_rt.name, reason = why.label(), "request refused by its lane");
                route_rt
                    .metrics
                    .record(503, started.elapsed().as_secs_f64());
                return overloaded(
                    "the gateway is at its limit for this route; retry shortly",
                    rid,
                );
            }
        };

        // 6. prepare
        let roll = if route_rt.backends.len() > 1 {
            rand::random_range(0..route_rt.total_weight)
        } else {
            0
        };
        let Some(cluster) = route_rt.pick_cluster(roll) else {
            route_rt
                .metrics
                .record(503, started.elapsed().as_secs_f64());
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "no backend is available for this route",
                rid,
            );
        };

        let Some(path_and_query) = prepare::upstream_path(&req, forward, &matched) else {
            return problem(
                StatusCode::BAD_REQUEST,
                "the rewritten path is not a valid URI path",
                rid,
            );
        };
        let deadline = prepare::deadline(req.headers_mut(), forward.timeout_ms, started);
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();

        let policy = forward.retry.as_ref();
        let repeatable =
            !upgrade && (idempotent(&parts.method) || policy.is_some_and(|p| p.non_idempotent));
        let hedge_after = repeatable.then(|| route_rt.hedge_after(started)).flatten();
        let hash = cluster
            .balancer
            .request_hash(&parts.headers, conn.peer.ip());
        // Buffered when a retry or hedge might send it again and it is small enough.
        let replay = !upgrade && (policy.is_some() || hedge_after.is_some());
        let (body, pace) = match prepare::request_body(
            body,
            &self.limits,
            &self.metrics,
            replay,
            declared_length,
            deadline,
        )
        .await
        {
            Ok(b) => b,
            Err((status, detail)) => {
                route_rt
                    .metrics
                    .record(status.as_u16(), started.elapsed().as_secs_f64());
                return problem(status, detail, rid);
            }
        };

        // 7. cache: GET/HEAD of rules with a CachePolicy
        if !upgrade
            && body.is_empty_replayable()
            && let Some(cache_policy) = cache_policy
        {
            // The upstream head (forwarding headers…) is made only if the origin is asked:
            // a hit never needs it.
            let origin = cached::RouteOrigin {
                conn,
                trusted,
                authority: authority.clone(),
                table: table.clone(),
                route: matched.index,
                cluster: cluster.clone(),
                path_and_query,
                hash,
                deadline,
                timeout: std::time::Duration::from_millis(forward.timeout_ms.max(1)),
                hedge_after,
                request_id: request_id.clone(),
                metrics: self.metrics.clone(),
            };
            let scheme = if conn.tls { "https" } else { "http" };
            let mut resp = self
                .store
                .cache()
                .serve(cache_policy, parts, scheme, host, origin)
                .await;
            drop(lane);
            cached::finish(&mut resp, &request_id);
            route_rt
                .metrics
                .record(resp.status().as_u16(), started.elapsed().as_secs_f64());
            return resp;
        }

        // 8. forward
        let forwarding =
            prepare::upstream_head(&mut parts, conn, authority_str, forward, upgrade, trusted);
        let mut exchange = Exchange {
            forwarding,
            table: &table,
            route: route_rt,
            primary: cluster,
            policy,
            parts,
            path_and_query,
            hash,
            deadline,
            started,
            repeatable,
            hedge_after,
            pace,
        };
        let result = forward::forward(&mut exchange, body).await;
        let answered = Instant::now();
        lane.finish_at(answered);

        // 9. respond
        let resp = match result {
            Ok(answer) => respond::upstream(
                answer,
                &request_id,
                downstream_upgrade.zip(upgrade_to),
                &self.metrics.response_bytes,
                (!upgrade).then_some(deadline),
            ),
            Err(outcome) => outcome_response(outcome, rid),
        };
        route_rt.metrics.record(
            resp.status().as_u16(),
            answered.saturating_duration_since(started).as_secs_f64(),
        );
        resp
    }
}

/// 401 with `WWW-Authenticate` for a missing key, 403 for a wrong one.
fn refused(why: Refusal, rid: Option<&HeaderValue>) -> Response<ProxyBody> {
    match why {
        Refusal::Missing => {
            let mut r = problem(StatusCode::UNAUTHORIZED, "this route needs an API key", rid);
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("ApiKey realm=\"parapet\""),
            );
            r
        }
        Refusal::Wrong => problem(
            StatusCode::FORBIDDEN,
            "the API key is not valid for this route",
            rid,
        ),
    }
}

/// Whether an upstream exchange failed because the client's body could not be decoded
/// (an invalid chunk, a truncated body): the client's fault, answered 400.
fn is_bad_request_body(e: &hyper_util::client::legacy::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut user_body = false;
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            user_body |= h.is_user();
        }
        if user_body
            && let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
            )
        {
            return true;
        }
        src = s.source();
    }
    false
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Replaces the first `prefix_len` bytes of `path` (the matched prefix) with `new_prefix`,
/// keeping exactly one slash at the seam.
fn rewrite_prefix(path: &str, prefix_len: usize, new_prefix: &str) -> String {
    let rest = path.get(prefix_len..).unwrap_or("");
    match (new_prefix.ends_with('/'), rest.starts_with('/')) {
        (true, true) => format!("{new_prefix}{}", &rest[1..]),
        (false, false) if !rest.is_empty() => format!("{new_prefix}/{rest}"),
        _ if rest.is_empty() && new_prefix.is_empty() => "/".to_string(),
        _ => format!("{new_prefix}{rest}"),
    }
}

/// Whether the method is idempotent (RFC 9110 §9.2.2): safe to retry after sending.
pub fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrite_keeps_one_slash() {
        assert_eq!(
            rewrite_prefix("/api/v1/x", 4, "/internal"),
            "/internal/v1/x"
        );
        assert_eq!(rewrite_prefix("/api/v1/x", 4, "/"), "/v1/x");
        assert_eq!(rewrite_prefix("/api", 4, "/internal"), "/internal");
        assert_eq!(rewrite_prefix("/api", 4, "/"), "/");
        assert_eq!(rewrite_prefix("/api/", 4, "/new/"), "/new/");
    }

    #[test]
    fn host_without_port_lowercased() {
        assert_eq!(normalise_host("API.Example:8080"), "api.example");
        assert_eq!(normalise_host("[::1]:80"), "[::1]");
        // A Host header is any visible ASCII: an unclosed bracket must not panic.
        assert_eq!(normalise_host("[AbC"), "[abc");
        assert_eq!(normalise_host("["), "[");
    }
}
