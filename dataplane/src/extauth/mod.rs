//! External authorization: a route asks an HTTP service about each request (Envoy's
//! `ext_authz` HTTP contract) and obeys its answer.
//!
//! **The check request.** Same method as the client's request, never a body
//! (`content-length: 0` for POST, PUT, PATCH and extension methods, which anticipate one;
//! nothing for the others). Its target is the configured URL's path prefix followed by the
//! client's path and query as received (`http://authz:8080/check` and `/v1/x?a=1` →
//! `/check/v1/x?a=1`). `host` is the client's authority (the service's own when the client
//! gave none). Headers: every value, in order, of each name in `headers_to_auth` (default
//! `authorization` and `cookie`), plus `x-forwarded-for` (the real client address),
//! `x-forwarded-proto` (`http`/`https`) and `x-forwarded-host` (the client's authority).
//! Nothing else the client sent goes to the service: framing, hop-by-hop and forwarding
//! names in `headers_to_auth` are ignored, so a client cannot forge them.
//!
//! **The answer.** Everything — connecting, sending, the head, the body — within
//! `timeout_ms`.
//! - 2xx allows. The values of the `headers_to_upstream` names in the answer go upstream
//!   ([`ExtAuth::apply`] first removes those names from the client's request, so a client
//!   cannot pass off its own `x-user-id` as the service's). The body is ignored (read when
//!   short, so the connection can be reused).
//! - 5xx, a timeout, a refused or broken connection, an answer that does not parse:
//!   [`Decision::Failed`]; the caller allows when [`ExtAuth::fail_open`], else answers 503.
//! - Any other status (3xx, 4xx) denies: the answer goes to the client as it is, less its
//!   hop-by-hop and framing headers. Its body is read whole, up to [`MAX_BODY`]; a longer
//!   one fails the check (`bad_response`) rather than sending the client a truncated
//!   page that claims to be complete.
//!
//! **The decision cache** (`cache`). A decision is kept for `ttl_ms` under a SHA-256 of a
//! per-instance random salt and the request's method, authority, path and query and the
//! values of `key_headers` (each length-prefixed, so no two requests encode alike), and of
//! everything else the service is sent: the client's address and the other
//! `headers_to_auth`. The path is in the key because a service may allow one path and deny
//! another to the same caller; the rest because a decision made on one caller's
//! credentials must never answer another caller. A request missing a key header is always
//! checked.
//! Allows and denials are kept, failures never; a decision larger than
//! [`MAX_CACHED_BYTES`] (headers and body) is used but not kept, so the cache's memory
//! stays near `max_entries` × that. Concurrent misses for one key wait for a single call.

#[cfg(test)]
mod tests;

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header,
    uri::{Authority, Scheme},
};
use http_body::Body as _;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use parapet_crds::snapshot::{ExtAuthCheck, HashedApiKey, UpstreamTls};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use tokio::time::Instant;

use crate::{
    proxy::headers::strip_hop_by_hop,
    upstream::{NoExtras, connector},
};

/// The longest denial body passed to the client; a longer one fails the check.
pub const MAX_BODY: usize = 64 * 1024;
/// The largest decision (header names, values and body) the cache keeps.
pub const MAX_CACHED_BYTES: usize = 8 * 1024;

/// [`Decision::Failed`] reasons.
pub const TIMEOUT: &str = "timeout";
pub const CONNECT: &str = "connect";
pub const SERVER_ERROR: &str = "server_error";
pub const BAD_RESPONSE: &str = "bad_response";
/// The check request could not be built from the client's (not expected: the client's
/// path and authority were parsed already).
pub const BAD_REQUEST: &str = "bad_request";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Names never copied from the client to the service: the check sets them itself, or they
/// frame the message or belong to one hop.
const NOT_SENT: [&str; 15] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "http2-settings",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];
/// Names never copied from an allowing answer onto the upstream request: they frame the
/// message or belong to one hop.
const NOT_COPIED: [&str; 11] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
];

type AuthClient = Client<NoExtras<HttpsConnector<HttpConnector>>, Empty<Bytes>>;

/// One request, as the proxy received it.
pub struct CheckRequest<'a> {
    pub method: &'a Method,
    /// As received.
    pub path_and_query: &'a str,
    /// The client's `Host`/`:authority`.
    pub authority: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The real client address (past trusted proxies).
    pub client_ip: IpAddr,
    pub tls: bool,
}

/// What the service said about a request.
#[derive(Debug)]
pub enum Decision {
    /// 2xx: let the request through, with these headers set on the upstream request (see
    /// [`ExtAuth::apply`]).
    Allow {
        set_headers: Vec<(HeaderName, HeaderValue)>,
        cached: bool,
    },
    /// Any other status but 5xx: answer the client with this, as it is (hop-by-hop and
    /// framing headers removed; the writer frames the body).
    Deny {
        response: Response<Bytes>,
        cached: bool,
    },
    /// The service could not be asked, or failed to answer: the caller allows when
    /// [`ExtAuth::fail_open`], else answers 503. `reason` is one of [`TIMEOUT`],
    /// [`CONNECT`], [`SERVER_ERROR`], [`BAD_RESPONSE`], [`BAD_REQUEST`].
    Failed { reason: &'static str },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// External authorization metrics, shared by every route (no route label: the series
/// stay fixed whatever the table holds).
#[derive(Clone)]
pub struct ExtAuthMetrics {
    checks: Family<ResultLabel, Counter>,
    duration: Histogram,
    // Resolved once, so counting takes no lock and makes no label.
    allow: Counter,
    deny: Counter,
    error: Counter,
    cache_hit: Counter,
}

impl Default for ExtAuthMetrics {
    fn default() -> Self {
        let checks = Family::<ResultLabel, Counter>::default();
        let counter = |result| checks.get_or_create(&ResultLabel { result }).clone();
        let (allow, deny, error, cache_hit) = (
            counter("allow"),
            counter("deny"),
            counter("error"),
            counter("cache_hit"),
        );
        Self {
            duration: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            checks,
            allow,
            deny,
            error,
            cache_hit,
        }
    }
}

impl ExtAuthMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ext_auth_checks",
            "External authorization decisions by result (allow, deny, error; cache_hit: a kept decision)",
            self.checks.clone(),
        );
        registry.register(
            "ext_auth_duration_seconds",
            "Calls to external authorization services, to the end of the answer (failures included, cache hits not)",
            self.duration.clone(),
        );
    }
}

/// A decision as the service gave it, cheap to clone out of the cache.
#[derive(Clone)]
enum Answer {
    Allow(Arc<[(HeaderName, HeaderValue)]>),
    Deny(Arc<Denial>),
}

struct Denial {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    /// Roughly the memory the answer holds.
    fn size(&self) -> usize {
        let headers = |h: &mut dyn Iterator<Item = (&HeaderName, &HeaderValue)>| {
            h.map(|(n, v)| n.as_str().len() + v.len()).sum::<usize>()
        };
        match self {
            Self::Allow(set) => headers(&mut set.iter().map(|(n, v)| (n, v))),
            Self::Deny(d) => d.body.len() + headers(&mut d.headers.iter()),
        }
    }

    fn decision(&self, cached: bool) -> Decision {
        match self {
            Self::Allow(set) => Decision::Allow {
                set_headers: set.to_vec(),
                cached,
            },
            Self::Deny(d) => {
                let mut response = Response::new(d.body.clone());
                *response.status_mut() = d.status;
                *response.headers_mut() = d.headers.clone();
                Decision::Deny { response, cached }
            }
        }
    }
}

/// Why a call's outcome was not kept; shared with the requests that waited for it.
enum NotKept {
    Failed(&'static str),
    TooLarge(Answer),
}

struct DecisionCache {
    key_headers: Vec<HeaderName>,
    /// The other headers the service is sent: in the key too (present or not), so that a
    /// decision made on one caller's credentials is never another caller's.
    sent: Vec<HeaderName>,
    /// Makes keys unguessable across instances and restarts.
    salt: [u8; 32],
    store: moka::future::Cache<[u8; 32], Answer>,
}

impl DecisionCache {
    /// The request's key; `None` when it lacks a key header.
    fn key(&self, req: &CheckRequest<'_>) -> Option<[u8; 32]> {
        // Each field length-prefixed: no value can end one field and start the next.
        fn field(buf: &mut Vec<u8>, bytes: &[u8]) {
            buf.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            buf.extend_from_slice(bytes);
        }
        let mut buf = Vec::with_capacity(256);
        field(&mut buf, req.method.as_str().as_bytes());
        field(&mut buf, req.authority.unwrap_or("").as_bytes());
        field(&mut buf, req.path_and_query.as_bytes());
        // The service sees the client's address (X-Forwarded-For): it may decide on it.
        field(&mut buf, req.client_ip.to_string().as_bytes());
        for name in &self.sent {
            let values = req.headers.get_all(name);
            field(&mut buf, name.as_str().as_bytes());
            buf.extend_from_slice(&(values.iter().count() as u64).to_le_bytes());
            for v in values {
                field(&mut buf, v.as_bytes());
            }
        }
        for name in &self.key_headers {
            let values = req.headers.get_all(name);
            let count = values.iter().count();
            if count == 0 {
                return None;
            }
            field(&mut buf, name.as_str().as_bytes());
            buf.extend_from_slice(&(count as u64).to_le_bytes());
            for v in values {
                field(&mut buf, v.as_bytes());
            }
        }
        Some(HashedApiKey::hash_key(&self.salt, &buf))
    }
}

/// A route's authorization service, built once per routing table (its client keeps
/// connections open between checks).
#[derive(Clone)]
pub struct ExtAuth {
    inner: Arc<Inner>,
}

struct Inner {
    /// `namespace/route`, for logs.
    name: String,
    url: String,
    client: AuthClient,
    scheme: Scheme,
    authority: Authority,
    /// The URL's path without its trailing `/` (empty for none).
    prefix: String,
    /// `host` when the client named no authority.
    service_host: HeaderValue,
    to_auth: Vec<HeaderName>,
    to_upstream: Vec<HeaderName>,
    timeout: Duration,
    fail_open: bool,
    cache: Option<DecisionCache>,
    metrics: ExtAuthMetrics,
}

impl std::fmt::Debug for ExtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtAuth")
            .field("name", &self.inner.name)
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

fn header_names(list: &[String], skip: &[&str], field: &str) -> Result<Vec<HeaderName>, String> {
    let mut out = Vec::with_capacity(list.len());
    for h in list {
        let name = HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| format!("extAuth {field} entry {h:?} is not a header name"))?;
        if !skip.contains(&name.as_str()) && !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

impl ExtAuth {
    /// Builds the service's client (no task is spawned: connections open on the first
    /// check). `Err` is a sentence: an unusable URL or CA bundle.
    pub fn new(check: &ExtAuthCheck, metrics: ExtAuthMetrics) -> Result<ExtAuth, String> {
        let url = &check.url;
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("extAuth url {url:?} is not a URL: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::HTTP,
            Some("https") => Scheme::HTTPS,
            _ => {
                return Err(format!(
                    "extAuth url {url:?} must start with http:// or https://"
                ));
            }
        };
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| format!("extAuth url {url:?} names no host"))?
            .clone();
        if authority.as_str().contains('@') {
            return Err(format!("extAuth url {url:?} must not carry credentials"));
        }
        if uri.query().is_some() {
            return Err(format!("extAuth url {url:?} must not have a query"));
        }
        let service_host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| format!("extAuth url {url:?} has an unusable host"))?;
        let timeout = Duration::from_millis(check.timeout_ms.max(1));
        let tls = (scheme == Scheme::HTTPS).then(|| UpstreamTls {
            sni: None,
            ca_pem: check.ca_pem.clone(),
            client_certificate: None,
        });
        // The connect timeout is the check's: the whole check is bounded by it anyway.
        let connector = connector(timeout, false, tls.as_ref())
            .map_err(|e| format!("extAuth url {url:?}: {e}"))?;
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        let client = b.build(NoExtras(connector));

        let default_to_auth = ["authorization".to_string(), "cookie".to_string()];
        let to_auth = if check.headers_to_auth.is_empty() {
            &default_to_auth[..]
        } else {
            &check.headers_to_auth[..]
        };
        let cache = match &check.cache {
            Some(c) if c.ttl_ms > 0 && c.max_entries > 0 && !c.key_headers.is_empty() => {
                let key_headers = header_names(&c.key_headers, &[], "cache.keyHeaders")?;
                let sent = header_names(to_auth, &[], "headersToAuth")?
                    .into_iter()
                    .filter(|h| !key_headers.contains(h))
                    .collect();
                Some(DecisionCache {
                    key_headers,
                    sent,
                    salt: rand::random(),
                    store: moka::future::Cache::builder()
                        .max_capacity(c.max_entries)
                        .time_to_live(Duration::from_millis(c.ttl_ms))
                        .build(),
                })
            }
            _ => None,
        };
        Ok(ExtAuth {
            inner: Arc::new(Inner {
                name: check.name.clone(),
                url: url.clone(),
                client,
                scheme,
                prefix: uri.path().trim_end_matches('/').to_string(),
                authority,
                service_host,
                to_auth: header_names(to_auth, &NOT_SENT, "headersToAuth")?,
                to_upstream: header_names(
                    &check.headers_to_upstream,
                    &NOT_COPIED,
                    "headersToUpstream",
                )?,
                timeout,
                fail_open: check.fail_open,
                cache,
                metrics,
            }),
        })
    }

    /// Whether a [`Decision::Failed`] lets the request through.
    pub fn fail_open(&self) -> bool {
        self.inner.fail_open
    }

    /// The names an allowing answer may set upstream.
    pub fn headers_to_upstream(&self) -> &[HeaderName] {
        &self.inner.to_upstream
    }

    /// Puts an allowing decision's headers on the upstream request: every
    /// `headers_to_upstream` name is removed first, whether or not the service set it, so
    /// only the service speaks for those names. Call with an empty `set_headers` when a
    /// failure is let through (`fail_open`).
    pub fn apply(&self, set_headers: &[(HeaderName, HeaderValue)], headers: &mut HeaderMap) {
        for name in &self.inner.to_upstream {
            headers.remove(name);
        }
        for (name, value) in set_headers {
            headers.append(name.clone(), value.clone());
        }
    }

    /// Asks the service about one request (or the cache, when the route keeps decisions).
    pub async fn check(&self, req: &CheckRequest<'_>) -> Decision {
        let inner = &*self.inner;
        let key = inner
            .cache
            .as_ref()
            .and_then(|c| c.key(req).map(|k| (c, k)));
        let (answer, cached) = match key {
            None => match inner.ask(req).await {
                Ok(a) => (a, false),
                Err(reason) => return inner.failed(reason),
            },
            Some((cache, key)) => {
                // Set when this request's own call ran (not a kept decision, nor another
                // request's call it waited for).
                let ran = AtomicBool::new(false);
                let init = async {
                    ran.store(true, Ordering::Relaxed);
                    match inner.ask(req).await {
                        Ok(a) if a.size() <= MAX_CACHED_BYTES => Ok(a),
                        Ok(a) => Err(NotKept::TooLarge(a)),
                        Err(reason) => Err(NotKept::Failed(reason)),
                    }
                };
                let got = cache.store.try_get_with(key, init).await;
                let cached = !ran.load(Ordering::Relaxed);
                match got {
                    Ok(a) => (a, cached),
                    Err(e) => match &*e {
                        NotKept::TooLarge(a) => (a.clone(), cached),
                        NotKept::Failed(reason) => return inner.failed(reason),
                    },
                }
            }
        };
        let m = &inner.metrics;
        match (&answer, cached) {
            (_, true) => m.cache_hit.inc(),
            (Answer::Allow(_), false) => m.allow.inc(),
            (Answer::Deny(_), false) => m.deny.inc(),
        };
        answer.decision(cached)
    }
}

impl Inner {
    fn failed(&self, reason: &'static str) -> Decision {
        self.metrics.error.inc();
        tracing::debug!(ext_auth = %self.name, reason, "external authorization failed");
        Decision::Failed { reason }
    }

    /// One call to the service, timed.
    async fn ask(&self, req: &CheckRequest<'_>) -> Result<Answer, &'static str> {
        let start = Instant::now();
        let answer = self.ask_by(req, start + self.timeout).await;
        self.metrics.duration.observe(start.elapsed().as_secs_f64());
        answer
    }

    async fn ask_by(
        &self,
        req: &CheckRequest<'_>,
        deadline: Instant,
    ) -> Result<Answer, &'static str> {
        let request = self.request(req).ok_or(BAD_REQUEST)?;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Err(_) => return Err(TIMEOUT),
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(r)) => r,
        };
        let (parts, body) = response.into_parts();
        let status = parts.status;
        if status.is_success() {
            let set: Vec<(HeaderName, HeaderValue)> = self
                .to_upstream
                .iter()
                .flat_map(|n| {
                    parts
                        .headers
                        .get_all(n)
                        .iter()
                        .map(|v| (n.clone(), v.clone()))
                })
                .collect();
            // The decision is made; a short body is read only so the connection can be
            // reused (a failure reading it changes nothing).
            if !body.is_end_stream() && body.size_hint().lower() <= MAX_BODY as u64 {
                let _ =
                    tokio::time::timeout_at(deadline, Limited::new(body, MAX_BODY).collect()).await;
            }
            return Ok(Answer::Allow(set.into()));
        }
        if status.is_server_error() {
            return Err(SERVER_ERROR);
        }
        if status.is_informational() {
            // Not a final answer the client could be given.
            return Err(BAD_RESPONSE);
        }
        if body.size_hint().lower() > MAX_BODY as u64 {
            return Err(BAD_RESPONSE);
        }
        let body =
            match tokio::time::timeout_at(deadline, Limited::new(body, MAX_BODY).collect()).await {
                Err(_) => return Err(TIMEOUT),
                Ok(Err(e)) if e.is::<LengthLimitError>() => return Err(BAD_RESPONSE),
                Ok(Err(_)) => return Err(CONNECT),
                Ok(Ok(c)) => c.to_bytes(),
            };
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers, false);
        // The body is whole now: whoever writes the response frames it.
        headers.remove(header::CONTENT_LENGTH);
        Ok(Answer::Deny(Arc::new(Denial {
            status,
            headers,
            body,
        })))
    }

    /// The check request for a client request; `None` when its target does not make a URI.
    fn request(&self, req: &CheckRequest<'_>) -> Option<Request<Empty<Bytes>>> {
        let original = req.path_and_query;
        let mut target = String::with_capacity(self.prefix.len() + original.len() + 1);
        target.push_str(&self.prefix);
        if !original.starts_with('/') {
            target.push('/');
        }
        target.push_str(original);
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(target)
            .build()
            .ok()?;
        let mut headers = HeaderMap::with_capacity(self.to_auth.len() + 5);
        for name in &self.to_auth {
            for v in req.headers.get_all(name) {
                headers.append(name.clone(), v.clone());
            }
        }
        let client_host = req.authority.and_then(|a| HeaderValue::from_str(a).ok());
        headers.insert(
            header::HOST,
            client_host
                .clone()
                .unwrap_or_else(|| self.service_host.clone()),
        );
        if let Some(h) = client_host {
            headers.insert(X_FORWARDED_HOST, h);
        }
        headers.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_str(&req.client_ip.to_string()).ok()?,
        );
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if req.tls { "https" } else { "http" }),
        );
        // RFC 9110 §8.6: a length only where the method anticipates content (some servers
        // answer 411 to a POST without one).
        let anticipates_body = !matches!(
            *req.method,
            Method::GET
                | Method::HEAD
                | Method::DELETE
                | Method::OPTIONS
                | Method::TRACE
                | Method::CONNECT
        );
        if anticipates_body {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        let mut request = Request::new(Empty::new());
        *request.method_mut() = req.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        Some(request)
    }
}

/// The [`Decision::Failed`] reason of a client error: an answer that does not parse is
/// `bad_response`; anything else on the way (refused, reset, closed early) is `connect`.
fn classify(e: &hyper_util::client::legacy::Error) -> &'static str {
    if e.is_connect() {
        return CONNECT;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            return if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
                BAD_RESPONSE
            } else {
                CONNECT
            };
        }
        source = s.source();
    }
    CONNECT
}
