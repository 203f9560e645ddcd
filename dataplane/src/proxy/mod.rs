//! One request's life: limits → route → (direct answer | pick cluster → pick endpoint →
//! forward, retrying connect failures on another endpoint) → response.

pub mod body;
pub mod headers;
pub mod problem;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header, uri::PathAndQuery};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use parapet_crds::snapshot::{PathMatch, RetryCondition, RouteAction};

use self::{
    headers::{
        X_REQUEST_ID, add_forwarding, append_via, is_upgrade, new_request_id, strip_hop_by_hop,
    },
    problem::{empty, problem},
};
use crate::{
    metrics::Metrics,
    router::RequestInfo,
    snapshot::{ClusterRuntime, SnapshotStore},
    upstream::{BoxError, ProxyBody},
};

/// Request limits, with defaults in line with Envoy's and nginx's.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
        }
    }
}

pub struct Proxy {
    pub store: Arc<SnapshotStore>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Log one line per request (target `parapet::access`).
    pub access_log: bool,
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
        req: Request<Incoming>,
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
        let resp = self.serve(req, conn).await;
        self.metrics.in_flight.dec();
        if let Some((method, path, started)) = logged {
            tracing::info!(
                target: "parapet::access",
                client = %conn.peer.ip(),
                %method,
                %path,
                status = resp.status().as_u16(),
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                request_id = resp.headers().get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or(""),
            );
        }
        resp
    }

    async fn serve(&self, mut req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
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

        if req.uri().path_and_query().map_or(0, |p| p.as_str().len()) > self.limits.max_uri_bytes {
            self.metrics.reject("uri_too_long");
            return problem(
                StatusCode::URI_TOO_LONG,
                "the request URI is longer than this gateway accepts",
                rid,
            );
        }
        if let Some(len) = content_length(&req)
            && len > self.limits.max_body_bytes
        {
            self.metrics.reject("body_too_large");
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the request body is larger than the {} bytes this gateway accepts",
                    self.limits.max_body_bytes
                ),
                rid,
            );
        }

        let Some(table) = self.store.load() else {
            self.metrics.reject("no_table");
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway has no routing table yet",
                rid,
            );
        };
        // As the client wrote it (for Host upstream), and normalised (for routing).
        let authority = authority_of(&req).map(str::to_owned);
        let host_norm = authority.as_deref().map(normalise_host);
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

        let roll = if route_rt.backends.len() > 1 {
            rand::random_range(0..route_rt.total_weight)
        } else {
            0
        };
        let Some(cluster) = route_rt.pick_cluster(roll).cloned() else {
            route_rt
                .metrics
                .record(503, started.elapsed().as_secs_f64());
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "no backend is available for this route",
                rid,
            );
        };

        // Path rewrite and the upstream URI's path and query.
        let path = req.uri().path();
        let new_path: Option<String> = match (&forward.rewrite, &matched.route.matcher.path) {
            (Some(rw), PathMatch::Prefix(_)) => rw
                .path_prefix
                .as_ref()
                .map(|p| rewrite_prefix(path, matched.prefix_len, p)),
            _ => None,
        };
        let pq = match (new_path, req.uri().query()) {
            (Some(p), Some(q)) => format!("{p}?{q}"),
            (Some(p), None) => p,
            (None, _) => req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
        };
        let path_and_query: PathAndQuery = match pq.parse() {
            Ok(p) => p,
            Err(_) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "the rewritten path is not a valid URI path",
                    rid,
                );
            }
        };

        // Request headers for upstream.
        let upgrade = is_upgrade(req.headers());
        let downstream_upgrade = if upgrade {
            Some(hyper::upgrade::on(&mut req))
        } else {
            None
        };
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, upgrade);
        parts.headers.remove(header::EXPECT);
        let proto = if conn.tls { "https" } else { "http" };
        add_forwarding(
            &mut parts.headers,
            conn.peer.ip(),
            proto,
            authority.as_deref(),
        );
        if let Some(h) = forward.rewrite.as_ref().and_then(|r| r.hostname.as_deref())
            && let Ok(v) = HeaderValue::from_str(h)
        {
            parts.headers.insert(header::HOST, v);
        } else if !parts.headers.contains_key(header::HOST)
            && let Some(h) = authority
                .as_deref()
                .and_then(|h| HeaderValue::from_str(h).ok())
        {
            // HTTP/2 clients send :authority, HTTP/1.1 upstreams need Host.
            parts.headers.insert(header::HOST, h);
        }
        parts.version = http::Version::HTTP_11;

        let hash = cluster
            .balancer
            .request_hash(&parts.headers, conn.peer.ip());

        // A body-less request can be replayed on another endpoint after a connect failure.
        let replayable = body.is_end_stream();
        let limit = usize::try_from(self.limits.max_body_bytes).unwrap_or(usize::MAX);
        let mut body: Option<ProxyBody> = Some(
            Limited::new(
                body::Counted::new(body, self.metrics.request_bytes.clone()),
                limit,
            )
            .boxed(),
        );
        let retry_connect = forward
            .retry
            .as_ref()
            .filter(|r| r.on.contains(&RetryCondition::ConnectFailure))
            .map_or(1, |r| r.attempts.max(1));
        let timeout = Duration::from_millis(forward.timeout_ms.max(1));
        let deadline = tokio::time::Instant::now() + timeout;

        let mut tried: Vec<(String, u16)> = Vec::new();
        let mut attempt = 0u32;
        let result = loop {
            attempt += 1;
            let Some(ep) = cluster.balancer.pick(hash, |e| {
                e.stats.is_available()
                    && !tried.iter().any(|(a, p)| *a == e.address && *p == e.port)
            }) else {
                break Err(Outcome::NoEndpoint);
            };
            let ep = ep.clone();
            tried.push((ep.address.clone(), ep.port));
            let uri = match Uri::builder()
                .scheme("http")
                .authority(format!("{}:{}", bracket(&ep.address), ep.port))
                .path_and_query(path_and_query.clone())
                .build()
            {
                Ok(u) => u,
                Err(_) => break Err(Outcome::NoEndpoint),
            };
            let this_body = match body.take() {
                Some(b) => b,
                None => empty(),
            };
            let mut up = Request::from_parts(parts.clone(), this_body);
            *up.uri_mut() = uri;
            cluster.metrics.requests.inc();
            let guard = ep.stats.start();
            let sent = Instant::now();
            match tokio::time::timeout_at(deadline, cluster.client.request(up)).await {
                Err(_) => break Err(Outcome::Timeout),
                Ok(Ok(resp)) => {
                    guard.finish();
                    cluster
                        .metrics
                        .duration
                        .observe(sent.elapsed().as_secs_f64());
                    break Ok(resp);
                }
                Ok(Err(e)) => {
                    // A fast failure is no latency sample: it would make the endpoint look fast.
                    guard.cancel();
                    if e.is_connect() {
                        cluster.metrics.connect_errors.inc();
                        tracing::debug!(cluster = %cluster.spec.name, endpoint = %ep.address, port = ep.port, error = %e, "connect failed");
                        if replayable && attempt < retry_connect {
                            continue;
                        }
                        break Err(Outcome::ConnectFailed);
                    }
                    if is_body_too_large(&e) {
                        break Err(Outcome::BodyTooLarge);
                    }
                    tracing::debug!(cluster = %cluster.spec.name, error = %e, "upstream request failed");
                    break Err(Outcome::UpstreamFailed);
                }
            }
        };

        let resp = match result {
            Ok(resp) => finish_response(
                resp,
                &request_id,
                downstream_upgrade,
                &self.metrics.response_bytes,
            ),
            Err(outcome) => outcome.response(&cluster, rid),
        };
        route_rt
            .metrics
            .record(resp.status().as_u16(), started.elapsed().as_secs_f64());
        resp
    }
}

enum Outcome {
    NoEndpoint,
    ConnectFailed,
    Timeout,
    BodyTooLarge,
    UpstreamFailed,
}

impl Outcome {
    fn response(
        &self,
        _cluster: &ClusterRuntime,
        rid: Option<&HeaderValue>,
    ) -> Response<ProxyBody> {
        match self {
            Self::NoEndpoint => problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream endpoint is available",
                rid,
            ),
            Self::ConnectFailed => problem(
                StatusCode::BAD_GATEWAY,
                "the upstream could not be reached",
                rid,
            ),
            Self::Timeout => problem(
                StatusCode::GATEWAY_TIMEOUT,
                "the upstream did not answer within the route timeout",
                rid,
            ),
            Self::BodyTooLarge => problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is larger than this gateway accepts",
                rid,
            ),
            Self::UpstreamFailed => problem(
                StatusCode::BAD_GATEWAY,
                "the upstream connection failed before a response",
                rid,
            ),
        }
    }
}

fn finish_response(
    resp: Response<Incoming>,
    request_id: &HeaderValue,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
    counter: &prometheus_client::metrics::counter::Counter,
) -> Response<ProxyBody> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching && let Some(down) = downstream_upgrade {
        let mut resp = resp;
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match (down.await, up.await) {
                (Ok(d), Ok(u)) => {
                    let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                    let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                }
                (d, u) => tracing::debug!(down = d.is_ok(), up = u.is_ok(), "upgrade failed"),
            }
        });
        let (mut parts, _) = resp.into_parts();
        append_via(&mut parts.headers);
        parts.headers.insert(X_REQUEST_ID, request_id.clone());
        return Response::from_parts(parts, empty());
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    append_via(&mut parts.headers);
    parts.headers.insert(X_REQUEST_ID, request_id.clone());
    let body = body::Counted::new(body, counter.clone());
    Response::from_parts(parts, body.map_err(|e| -> BoxError { Box::new(e) }).boxed())
}

fn is_body_too_large(e: &hyper_util::client::legacy::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if s.is::<http_body_util::LengthLimitError>() {
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

/// The request's authority as sent: from the URI (HTTP/2 :authority, absolute-form) or the
/// Host header.
fn authority_of<B>(req: &Request<B>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// Lower-case, without port.
fn normalise_host(raw: &str) -> String {
    let without_port = if raw.starts_with('[') {
        raw.split(']')
            .next()
            .map(|s| &raw[..s.len() + 1])
            .unwrap_or(raw)
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                raw
            }
        })
    };
    without_port.to_ascii_lowercase()
}

fn bracket(addr: &str) -> std::borrow::Cow<'_, str> {
    if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]").into()
    } else {
        addr.into()
    }
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

/// A response body of known bytes, for tests and direct answers.
pub fn bytes_body(b: Bytes) -> ProxyBody {
    problem::full(b)
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
        let r = Request::builder()
            .uri("/x")
            .header("host", "API.Example:8080")
            .body(())
            .unwrap();
        assert_eq!(authority_of(&r), Some("API.Example:8080"));
        assert_eq!(normalise_host("API.Example:8080"), "api.example");
        assert_eq!(normalise_host("[::1]:80"), "[::1]");
        let r = Request::builder()
            .uri("http://h2.example/x")
            .body(())
            .unwrap();
        assert_eq!(authority_of(&r), Some("h2.example"));
    }
}
