//! One request's life, in stages. [`Proxy::handle`] takes the request and finishes it;
//! `Proxy::serve` runs the stages in order, each a function below it that returns what the
//! next one needs, or an early answer that ends the request there:
//!
//! 1. **limits**: URI and declared body size; then the **head** (`head.rs`): one reading of
//!    the authority for the router, the API-key check and the backend, and nothing
//!    ambiguous (`CONNECT`, repeated `Transfer-Encoding`, dot segments).
//! 2. **route**: the table in force and the router's match (with the virtual hosts of the
//!    connection's Gateway listener port, when the table has listeners); direct answers and
//!    redirects (`redirect.rs`: a `Location` from the request's URL) end here. The rule's
//!    `upgrades` decide whether an `Upgrade` is honoured or dropped.
//! 3. **who may call**, cheapest refusal first: the rule's address rules (`iprules`), the
//!    host's client certificate (`tls/`), API keys (`auth/`: missing → 401, wrong → 403),
//!    the bearer token (`jwt/`: 401 with RFC 6750's challenge, 403 for claims).
//! 4. **rate limit** (`ratelimit/`): the rule's buckets; 429 with `Retry-After`, or a wait
//!    in Shape mode. Then **external authorization** (`extauth/`), the one check that costs
//!    a network call, so a flood stops at the rate limit before reaching the service. A
//!    **fresh cache hit** answers right after this, before admission: hits take no lane
//!    slot and cost the upstream side nothing.
//! 5. **admit**: the route's bulkhead and lane (`lanes`); refused requests get 503.
//! 6. **prepare** (`prepare.rs`): the backend pool by weight, the upstream URI (prefix or
//!    full-path rewrites), the deadline (route timeout, or the client's
//!    `x-parapet-timeout-ms` when shorter); then the **body** (buffered when small enough to
//!    replay, or to copy to a mirror).
//! 7. **cache** (`cached.rs`, `cache/`): GET/HEAD of rules with a CachePolicy go through
//!    the response cache (stale entries, coalesced waits); misses and refreshes come back
//!    through the forward stage's attempts.
//! 8. **forward** (`forward.rs`): the upstream head (with the rule's request header edits,
//!    `edits.rs`), the **mirrors** (`mirror.rs`: copies sent from tasks of their own, never
//!    awaited), then endpoint picks, breaker, attempts (each bounded by the backend timeout
//!    and the retry policy's per-try timeout), retries, hedges.
//! 9. **respond** (`respond.rs`): the upstream response, with the rule's response header
//!    edits, streamed back; or the gateway's own problem document (never edited).
//!
//! Then `Proxy::finish`, the one place every request ends, early or not: route metrics,
//! reject counters, the response headers stages left behind, the access log (its record,
//! begun when the request came, goes with the response body and is sent when that ends;
//! see `accesslog`).

pub mod body;
mod cached;
mod conn;
mod edits;
mod forward;
mod head;
pub mod headers;
pub mod interim;
mod mirror;
mod prepare;
pub mod problem;
mod redirect;
mod respond;

pub use self::{
    conn::{ConnInfo, EdgeConfig, TlsSession},
    edits::HeaderEdits,
    headers::X_PARAPET_TIMEOUT_MS,
    prepare::Limits,
};

use std::{pin::Pin, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use parapet_crds::snapshot::{CachePolicy, ForwardAction, PathMatch, RouteAction};
use tokio::time::Instant;

use self::{
    body::{DownstreamBody, ProxyBody},
    forward::{Answer, Exchange, Outcome, RequestBody, idempotent},
    headers::{X_REQUEST_ID, allowed_upgrade, new_request_id, normalise_host},
    problem::problem,
    respond::{outcome_response, overloaded},
};
use crate::{
    accesslog::{self, Logged, Pending, RateLimited, Record, Tally},
    auth::{Refusal, Source},
    cache::CacheStatus,
    extauth::{self, Decision as AuthDecision},
    fields::take_field,
    lanes::{LaneGuard, Lanes},
    metrics::Metrics,
    ratelimit::{self, Decision},
    router::{Matched, RequestInfo},
    snapshot::{RouteRuntime, Runtime, SnapshotStore},
    trace::{RequestSpan, Tracer},
};

pub struct Proxy {
    pub store: Arc<SnapshotStore>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Fast and slow lanes, route bulkheads.
    pub lanes: Arc<Lanes>,
    /// Where each request's access-log record goes; `None`: no access log.
    pub access_log: Option<Arc<accesslog::Sink>>,
    /// Spans for requests and attempts; `None`: no tracing.
    pub tracer: Option<Arc<Tracer>>,
    pub edge: EdgeConfig,
}

/// What every stage may need to know of the request, fixed when it arrived.
struct Arrival {
    conn: ConnInfo,
    /// When the proxy took the request (the clock is read once for all its stages).
    started: Instant,
    /// The client's `x-request-id`, or one made for it.
    request_id: HeaderValue,
    /// The request's span, when tracing.
    trace: Option<RequestSpan>,
}

impl Arrival {
    fn rid(&self) -> Option<&HeaderValue> {
        Some(&self.request_id)
    }
}

/// What the stages leave for the end of the request, besides its answer.
#[derive(Default)]
struct Trail<'t> {
    /// The route the request matched, whose metrics count it.
    route: Option<&'t RouteRuntime>,
    /// The identity of the API key the request presented (never the key).
    key_id: Option<Arc<str>>,
    /// Headers for the response, whatever it is: `RateLimit-*` and `Retry-After`.
    headers: HeaderMap,
    /// What the rule's rate limit decided, when it has one.
    rate_limit: Option<RateLimited>,
    /// What the cache stage did with the request.
    cache: CacheUse,
}

/// Whether the response cache answered the request, for the access log (which reads what it
/// did from the answer's `x-cache`).
#[derive(Clone, Copy, Default)]
enum CacheUse {
    /// The rule does not cache, or the request ended before the cache stage.
    #[default]
    None,
    /// The rule caches, but the request went past the cache (its method, a body, an
    /// upgrade).
    Bypassed,
    Answered,
}

/// An answer that ends the request before the forward stage, and what it counts as.
struct Early {
    response: Response<ProxyBody>,
    count: Count,
}

/// What an early answer counts as besides the route's metrics.
#[derive(Clone, Copy)]
enum Count {
    /// An answer like any other: a direct response, a cache hit, a body that could not be
    /// read.
    Answer,
    /// A refusal: `rejected_requests_total{reason}`.
    Rejected(&'static str),
    /// `no_route_total`.
    NoRoute,
}

impl Early {
    fn answer(response: Response<ProxyBody>) -> Self {
        Self {
            response,
            count: Count::Answer,
        }
    }

    fn rejected(reason: &'static str, response: Response<ProxyBody>) -> Self {
        Self {
            response,
            count: Count::Rejected(reason),
        }
    }
}

/// The forward stage's answer (the upstream's, or the gateway's when none came) and when
/// it came: the route's duration ends there, not after the response head is made.
struct Answered {
    response: Response<ProxyBody>,
    at: Instant,
}

/// The route stage's finding: the rule that matched, in the table in force.
struct Routed<'t> {
    table: &'t Arc<Runtime>,
    matched: Matched<'t>,
    route: &'t RouteRuntime,
    forward: &'t ForwardAction,
    cache_policy: Option<&'t Arc<CachePolicy>>,
    /// The protocol the client may switch to, if it asks for one the rule allows; any
    /// other `Upgrade` is dropped and the request served as an ordinary one.
    upgrade_to: Option<HeaderValue>,
    /// The peer is a trusted proxy: its forwarding headers are kept.
    trusted: bool,
}

impl Routed<'_> {
    fn upgrade(&self) -> bool {
        self.upgrade_to.is_some()
    }
}

/// The prepare stage's product: the exchange the attempts share, and the client's side of
/// an upgrade.
struct Prepared<'a> {
    exchange: Exchange<'a>,
    /// For an `Upgrade` the rule allows; `None` for ordinary requests.
    upgrade: Option<hyper::upgrade::OnUpgrade>,
}

// An early answer is made once per request and handed back by value; boxing it would
// allocate for every refusal and cache hit.
#[allow(clippy::result_large_err)]
impl Proxy {
    pub async fn handle(
        self: Arc<Self>,
        mut req: Box<Request<DownstreamBody>>,
        conn: ConnInfo,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        self.metrics.in_flight.inc();
        let request_id = request_id(&mut req);
        let trace = self
            .tracer
            .as_ref()
            .map(|t| t.request(req.method(), req.uri().path(), req.headers()));
        let log = self.access_log.as_ref().map(|sink| {
            let mut record =
                Record::arrive(&req, conn.peer, conn.tls.as_ref(), started, &request_id);
            // Tracing knows the trace id even when it started the trace itself.
            if let Some(t) = &trace {
                record.trace_id = accesslog::TraceId::parse(&t.trace_id());
            }
            Pending::new(record, sink)
        });
        let mut at = Arrival {
            conn,
            started,
            request_id,
            trace,
        };
        // The table in force, held until the request is counted: its routes hold the
        // metrics.
        let table = self.store.load();
        let mut trail = Trail::default();
        let tally = log.as_ref().and_then(Pending::tally);
        let ended = self
            .serve(req, &at, table.as_ref(), &mut trail, tally)
            .await;
        self.metrics.in_flight.dec();
        let span = at.trace.take();
        self.finish(ended, trail, &at, log, span)
    }

    /// The stages, in the order a request meets them. `tally`: where the attempts are
    /// counted for the access log, when it is on.
    async fn serve<'t>(
        &self,
        mut req: Box<Request<DownstreamBody>>,
        at: &Arrival,
        table: Option<&'t Arc<Runtime>>,
        trail: &mut Trail<'t>,
        tally: Option<&Tally>,
    ) -> Result<Answered, Early> {
        let declared_length = self.limits(&req, at)?;
        let authority = self.check_head(&mut req, at)?;
        let authority_str = authority.as_ref().and_then(|a| a.to_str().ok());
        let host_norm = authority_str.map(normalise_host);
        let host = host_norm.as_deref().unwrap_or("");
        let routed = self.route(table, &req, (host, authority_str), at, trail)?;
        self.check_address(&req, at, &routed)?;
        let certified = self.client_cert(&mut req, at, &routed, host)?;
        trail.key_id = self.authenticate(&mut req, routed.route, at)?;
        self.verify_token(&mut req, routed.route, at).await?;
        if let Some(wait) = self.rate_limit(req.headers(), at, &routed, trail)? {
            // Shape mode: the request waits for its turn.
            tokio::time::sleep(wait).await;
        }
        self.authorize(&mut req, at, &routed, authority_str).await?;
        // A caller the gateway identified (a token, a client certificate, an authorization
        // service) may be sent answers made for it alone, and the credential that would
        // tell the cache so is gone from the request by now: such requests never use the
        // shared cache.
        let personal = routed.route.jwt.is_some() || routed.route.ext_auth.is_some() || certified;
        if !personal && let Err(hit) = self.fresh_hit(&req, at, &routed, host) {
            trail.cache = CacheUse::Answered;
            return Err(hit);
        }
        let lane = self.admit(routed.route, at)?;
        let (mut prepared, body) = self.prepare(req, at, &routed, authority_str, tally)?;
        let body = self
            .read_body(body, &mut prepared, declared_length, at)
            .await?;
        if !personal
            && let Some(cached) =
                self.cache(&mut prepared, &body, at, &routed, (host, &authority), tally)
        {
            // The cache answered (from an entry, or from the origin on a miss).
            trail.cache = CacheUse::Answered;
            return Err(cached.await);
        }
        if routed.cache_policy.is_some() {
            trail.cache = CacheUse::Bypassed;
        }
        // An unsafe request to a cached rule invalidates what the cache holds for its URL
        // once it succeeds; the attempts take the request head, so its URI is kept first.
        let invalidates = routed
            .cache_policy
            .filter(|_| !cached::safe(&prepared.exchange.parts.method))
            .map(|p| (p, prepared.exchange.parts.uri.clone()));
        let result = self.forward(&mut prepared, body, &routed).await;
        if let (Some((policy, uri)), Ok(answer)) = (invalidates, &result) {
            cached::invalidate_after(
                self.store.cache(),
                policy,
                &uri,
                answer.response.status(),
                answer.response.headers(),
                (if at.conn.is_tls() { "https" } else { "http" }, host),
            );
        }
        Ok(self.respond(result, lane, &mut prepared, routed.upgrade_to, at))
    }

    /// Stage 1, limits: the URI's length and the declared body size. Returns the declared
    /// length, when there is one.
    fn limits(&self, req: &Request<DownstreamBody>, at: &Arrival) -> Result<Option<u64>, Early> {
        if req.uri().path_and_query().map_or(0, |p| p.as_str().len()) > self.limits.max_uri_bytes {
            return Err(Early::rejected(
                "uri_too_long",
                problem(
                    StatusCode::URI_TOO_LONG,
                    "the request URI is longer than this gateway accepts",
                    at.rid(),
                ),
            ));
        }
        // Request smuggling: hyper's HTTP/1 parser refuses malformed framing (duplicate
        // differing lengths, obs-fold, bad bytes, codings other than a final chunked,
        // Transfer-Encoding in HTTP/1.0). A request with both Content-Length and
        // Transfer-Encoding is read as chunked with the length dropped, and its connection
        // closes after the answer (RFC 9112 §6.3), so nothing can ride behind it; a body
        // that fails to decode is answered 400 (`is_bad_request_body`).
        let declared = content_length(req);
        if let Some(len) = declared
            && len > self.limits.max_body_bytes
        {
            let mut r = problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the request body is larger than the {} bytes this gateway accepts",
                    self.limits.max_body_bytes
                ),
                at.rid(),
            );
            // The body is left unread, so the connection cannot be reused.
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err(Early::rejected("body_too_large", r));
        }
        Ok(declared)
    }

    /// Stage 1, the head: the authority as the client wrote it (for Host upstream), and
    /// nothing ambiguous. A refusal closes the connection: whatever the client sends next
    /// is not read as another request.
    fn check_head(
        &self,
        req: &mut Request<DownstreamBody>,
        at: &Arrival,
    ) -> Result<Option<HeaderValue>, Early> {
        head::check(req).map_err(|refused| {
            let mut r = problem(refused.status, refused.detail, at.rid());
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Early::rejected(refused.reason, r)
        })
    }

    /// Stage 2, route: the table in force and the router's match. From here on the route's
    /// metrics count the request (`trail.route`); a direct answer or a redirect ends it here.
    /// `host`: the normalised host, and the authority as the client wrote it.
    fn route<'t>(
        &self,
        table: Option<&'t Arc<Runtime>>,
        req: &Request<DownstreamBody>,
        (host, authority): (&str, Option<&str>),
        at: &Arrival,
        trail: &mut Trail<'t>,
    ) -> Result<Routed<'t>, Early> {
        let Some(table) = table else {
            return Err(Early::rejected(
                "no_table",
                problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the gateway has no routing table yet",
                    at.rid(),
                ),
            ));
        };
        let Some(matched) = table.router.route_on(
            at.conn.port,
            &RequestInfo {
                host,
                path: req.uri().path(),
                query: req.uri().query(),
                method: req.method(),
                headers: req.headers(),
            },
        ) else {
            return Err(Early {
                response: problem(
                    StatusCode::NOT_FOUND,
                    "no route matches this host and path",
                    at.rid(),
                ),
                count: Count::NoRoute,
            });
        };
        let route = &table.routes[matched.index];
        trail.route = Some(route);
        let forward = match &matched.route.action {
            RouteAction::DirectResponse(d) => {
                let status =
                    StatusCode::from_u16(d.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return Err(Early::answer(problem(status, &d.body, at.rid())));
            }
            RouteAction::Redirect(r) => {
                let origin = redirect::Origin {
                    tls: at.conn.is_tls(),
                    authority,
                    host,
                    path: req.uri().path(),
                    query: req.uri().query(),
                    prefix_len: matches!(matched.route.matcher.path, PathMatch::Prefix(_))
                        .then_some(matched.prefix_len),
                };
                return Err(Early::answer(redirect::answer(r, &origin, at.rid())));
            }
            RouteAction::Forward(f) => f,
        };
        Ok(Routed {
            table,
            route,
            forward,
            cache_policy: forward
                .cache_policy
                .as_ref()
                .and_then(|n| table.cache_policies.get(n)),
            upgrade_to: allowed_upgrade(req.headers(), &forward.upgrades).cloned(),
            trusted: self.edge.trusts(at.conn.peer.ip()),
            matched,
        })
    }

    /// Stage 3, who may call, first: the rule's address rules (`iprules`). The address is
    /// the peer's, or behind a trusted proxy the client its `X-Forwarded-For` names.
    fn check_address(
        &self,
        req: &Request<DownstreamBody>,
        at: &Arrival,
        routed: &Routed<'_>,
    ) -> Result<(), Early> {
        let Some(rules) = &routed.route.ip_rules else {
            return Ok(());
        };
        let client = if routed.trusted && self.edge.trusted_hops > 0 {
            ratelimit::forwarded_client(req.headers(), self.edge.trusted_hops)
        } else {
            Some(at.conn.peer.ip())
        };
        rules.check(client).map_err(|why| {
            Early::rejected(
                why.label(),
                problem(StatusCode::FORBIDDEN, why.detail(), at.rid()),
            )
        })
    }

    /// Stage 3, then the client certificate the host asks for (`tls`), checked on every
    /// request: a resumed session, or a revocation list changed since the handshake, is not
    /// taken on trust. Whether the request now carries the certificate to the upstream.
    fn client_cert(
        &self,
        req: &mut Request<DownstreamBody>,
        at: &Arrival,
        routed: &Routed<'_>,
        host: &str,
    ) -> Result<bool, Early> {
        use crate::tls::X_FORWARDED_CLIENT_CERT;
        // Only the gateway says which certificate a client presented, on every host.
        take_field(req.headers_mut(), &X_FORWARDED_CLIENT_CERT);
        // The request's host decides, not the server name its connection was made for.
        let port = routed.table.has_listeners().then_some(at.conn.port);
        let Some(policy) = routed.table.certs.client_policy(port, host) else {
            return Ok(false);
        };
        match policy.check(at.conn.is_tls(), at.conn.client_cert.as_deref()) {
            Ok(Some(xfcc)) => {
                req.headers_mut().insert(X_FORWARDED_CLIENT_CERT, xfcc);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(why) => Err(Early::rejected(
                why.label(),
                problem(why.status(), why.detail(), at.rid()),
            )),
        }
    }

    /// Stage 3, then the rule's API keys; missing → 401, wrong → 403. Returns the
    /// key's identity, when the rule has keys.
    fn authenticate(
        &self,
        req: &mut Request<DownstreamBody>,
        route: &RouteRuntime,
        at: &Arrival,
    ) -> Result<Option<Arc<str>>, Early> {
        let Some(keys) = &route.api_keys else {
            return Ok(None);
        };
        match keys.authenticate(req.headers(), req.uri().query()) {
            Ok(id) => {
                // The key is a credential for the gateway, not for the backend.
                if let Source::Header(h) = &keys.source {
                    req.headers_mut().remove(h);
                }
                Ok(Some(id))
            }
            Err(why) => Err(Early::rejected(why.label(), refused(why, at.rid()))),
        }
    }

    /// Stage 3, then the bearer token (`jwt/`): 401 with RFC 6750's challenge, 403 for
    /// claims the rule requires, 503 while no key set could ever be fetched. On success the
    /// token leaves the request (unless the provider forwards it) and the claims the rule
    /// names replace any headers of those names the client sent.
    async fn verify_token(
        &self,
        req: &mut Request<DownstreamBody>,
        route: &RouteRuntime,
        at: &Arrival,
    ) -> Result<(), Early> {
        let Some(jwt) = &route.jwt else {
            return Ok(());
        };
        match jwt.verify(req.headers(), req.uri().query()).await {
            Ok(verified) => {
                let headers = req.headers_mut();
                for name in &verified.remove_headers {
                    headers.remove(name);
                }
                for (name, value) in verified.set_headers {
                    headers.append(name, value);
                }
                Ok(())
            }
            Err(why) => {
                let mut r = problem(why.status(), why.detail(), at.rid());
                if why.status() == StatusCode::SERVICE_UNAVAILABLE {
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                } else {
                    r.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, why.www_authenticate());
                }
                Err(Early::rejected(why.label(), r))
            }
        }
    }

    /// Stage 4, then the rule's authorization service (`extauth/`), after the rate limit so
    /// that a flood never reaches it: an allowing answer may add headers upstream, any other
    /// is returned to the client as the service wrote it; a service that cannot be asked
    /// lets the request through (fail open) or answers 503.
    async fn authorize(
        &self,
        req: &mut Request<DownstreamBody>,
        at: &Arrival,
        routed: &Routed<'_>,
        authority: Option<&str>,
    ) -> Result<(), Early> {
        let Some(ext) = &routed.route.ext_auth else {
            return Ok(());
        };
        let unavailable = |at: &Arrival| {
            Early::rejected(
                "ext_auth_unavailable",
                problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the authorization service of this route could not be asked; retry shortly",
                    at.rid(),
                ),
            )
        };
        let Ok(ext) = ext else {
            return Err(unavailable(at));
        };
        let hops = if routed.trusted {
            self.edge.trusted_hops
        } else {
            0
        };
        let decision = {
            let check = extauth::CheckRequest {
                method: req.method(),
                path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
                authority,
                headers: req.headers(),
                client_ip: ratelimit::client_ip(req.headers(), at.conn.peer.ip(), hops),
                tls: at.conn.is_tls(),
            };
            ext.check(&check).await
        };
        match decision {
            AuthDecision::Allow { set_headers, .. } => {
                ext.apply(&set_headers, req.headers_mut());
                Ok(())
            }
            AuthDecision::Deny { response, .. } => {
                let (mut parts, body) = response.into_parts();
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                Err(Early::rejected(
                    "ext_auth_denied",
                    Response::from_parts(parts, problem::full(body)),
                ))
            }
            AuthDecision::Failed { reason } if ext.fail_open() => {
                tracing::debug!(route = %routed.route.name, reason, "authorization service failed; letting the request through (failure mode Open)");
                ext.apply(&[], req.headers_mut());
                Ok(())
            }
            AuthDecision::Failed { reason } => {
                tracing::debug!(route = %routed.route.name, reason, "authorization service failed; refusing (failure mode Closed)");
                Err(unavailable(at))
            }
        }
    }

    /// Stage 4, rate limit: the rule's buckets; 429 with `Retry-After`, or how long to wait
    /// in Shape mode.
    fn rate_limit(
        &self,
        headers: &HeaderMap,
        at: &Arrival,
        routed: &Routed<'_>,
        trail: &mut Trail<'_>,
    ) -> Result<Option<Duration>, Early> {
        let Some(limiter) = &routed.route.rate_limit else {
            return Ok(None);
        };
        let decision = {
            let key = ratelimit::request_key(
                &limiter.limit().key,
                headers,
                at.conn.peer.ip(),
                trail.key_id.as_deref(),
                if routed.trusted {
                    self.edge.trusted_hops
                } else {
                    0
                },
            );
            limiter.acquire(&key)
        };
        limiter.headers(&decision, &mut trail.headers);
        let verdict = match decision {
            Decision::Deny { .. } => RateLimited::Limited,
            Decision::Allow { wait, .. } if !wait.is_zero() => RateLimited::Shaped,
            Decision::Allow { .. } => RateLimited::Allowed,
        };
        trail.rate_limit = Some(verdict);
        if let (Some(t), Some(span)) = (&self.tracer, &at.trace) {
            t.step(span, "rate limit", "parapet.rate_limit", verdict.as_str());
        }
        match decision {
            Decision::Deny { .. } => Err(Early::rejected(
                "rate_limited",
                problem(
                    StatusCode::TOO_MANY_REQUESTS,
                    "the rate limit of this route is exhausted; retry after the time retry-after gives",
                    at.rid(),
                ),
            )),
            Decision::Allow { wait, .. } if !wait.is_zero() => {
                tracing::debug!(route = %routed.route.name, wait_ms = wait.as_millis() as u64, "rate limit: request shaped");
                Ok(Some(wait))
            }
            Decision::Allow { .. } => Ok(None),
        }
    }

    /// Stage 4, last: a fresh cache entry answers here, before anything is spent on the
    /// upstream side (lane, body, upstream head): hits do not load the backends the lanes
    /// protect.
    fn fresh_hit(
        &self,
        req: &Request<DownstreamBody>,
        at: &Arrival,
        routed: &Routed<'_>,
        host: &str,
    ) -> Result<(), Early> {
        let Some(policy) = routed.cache_policy else {
            return Ok(());
        };
        if !hyper::body::Body::is_end_stream(req.body()) || routed.upgrade() {
            return Ok(());
        }
        let Some(mut resp) = self.store.cache().fresh(
            policy,
            req.method(),
            if at.conn.is_tls() { "https" } else { "http" },
            host,
            req.uri(),
            req.headers(),
        ) else {
            return Ok(());
        };
        cached::finish(&mut resp, &at.request_id);
        Err(Early::answer(resp))
    }

    /// Stage 5, admit: the route's bulkhead and lane; refused requests get 503.
    fn admit(&self, route: &RouteRuntime, at: &Arrival) -> Result<LaneGuard, Early> {
        self.lanes
            .admit_at(&route.live.lane, at.started)
            .map_err(|why| {
                tracing::debug!(route = %route.name, reason = why.label(), "request refused by its lane");
                Early::rejected(
                    why.label(),
                    overloaded(
                        "the gateway is at its limit for this route; retry shortly",
                        at.rid(),
                    ),
                )
            })
    }

    /// Stage 6, prepare: the backend pool by weight, the upstream path (rewrites), the
    /// deadline, and what the attempts share. The body is returned as it came.
    fn prepare<'a>(
        &'a self,
        mut req: Box<Request<DownstreamBody>>,
        at: &'a Arrival,
        routed: &Routed<'a>,
        authority: Option<&'a str>,
        tally: Option<&'a Tally>,
    ) -> Result<(Prepared<'a>, DownstreamBody), Early> {
        let route = routed.route;
        let roll = if route.backends.len() > 1 {
            rand::random_range(0..route.total_weight)
        } else {
            0
        };
        let Some(cluster) = route.pick_cluster(roll) else {
            return Err(Early::answer(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "no backend is available for this route",
                at.rid(),
            )));
        };
        if let Some(t) = tally {
            t.pool(cluster);
        }
        let Some(path_and_query) = prepare::upstream_path(&req, routed.forward, &routed.matched)
        else {
            return Err(Early::answer(problem(
                StatusCode::BAD_REQUEST,
                "the rewritten path is not a valid URI path",
                at.rid(),
            )));
        };
        let deadline = prepare::deadline(req.headers_mut(), routed.forward.timeout_ms, at.started);
        let upgrade = routed.upgrade().then(|| hyper::upgrade::on(&mut *req));
        let (parts, body) = (*req).into_parts();
        let policy = routed.forward.retry.as_ref();
        let repeatable = upgrade.is_none()
            && (idempotent(&parts.method) || policy.is_some_and(|p| p.non_idempotent));
        let hedge_after = repeatable.then(|| route.hedge_after(at.started)).flatten();
        let exchange = Exchange {
            forwarding: prepare::forwarding(&at.conn, authority, routed.trusted),
            route,
            primary: cluster,
            policy,
            hash: cluster
                .balancer
                .request_hash(&parts.headers, at.conn.peer.ip()),
            parts,
            path_and_query,
            deadline,
            started: at.started,
            repeatable,
            hedge_after,
            pace: None,
            tally,
            trace: self.tracer.as_deref().zip(at.trace.as_ref()),
        };
        Ok((Prepared { exchange, upgrade }, body))
    }

    /// Stage 6, the body: buffered when a retry or hedge might send it again and it
    /// is small enough, else streamed once (with a [`Pace`](body::Pace) the attempts read).
    async fn read_body(
        &self,
        body: DownstreamBody,
        prepared: &mut Prepared<'_>,
        declared_length: Option<u64>,
        at: &Arrival,
    ) -> Result<RequestBody, Early> {
        let ex = &mut prepared.exchange;
        // A mirror gets the body only when it is kept in full.
        let replay = prepared.upgrade.is_none()
            && (ex.policy.is_some() || ex.hedge_after.is_some() || ex.route.mirrors.is_some());
        let (body, pace) = prepare::request_body(
            body,
            &self.limits,
            &self.metrics,
            replay,
            declared_length,
            ex.deadline,
            ex.tally,
        )
        .await
        .map_err(|(status, detail)| Early::answer(problem(status, detail, at.rid())))?;
        ex.pace = pace;
        Ok(body)
    }

    /// Stage 7, cache: GET and HEAD of rules with a CachePolicy go through the response
    /// cache, whose misses and refreshes come back to the attempts (`cached::RouteOrigin`);
    /// unsafe methods go on to forward, and invalidate the URL's entries when they succeed.
    /// The cache's answer, to await, when it serves this request; checked before anything
    /// is awaited, as most requests do not go through the cache.
    /// `tally`: the request's, when the access log is on; the cache's fetches count into one
    /// of their own (they may outlive the request), added to it once the cache has answered.
    fn cache<'a>(
        &'a self,
        prepared: &mut Prepared<'_>,
        body: &RequestBody,
        at: &'a Arrival,
        routed: &Routed<'a>,
        (host, authority): (&'a str, &Option<HeaderValue>),
        tally: Option<&'a Tally>,
    ) -> Option<Pin<Box<impl Future<Output = Early> + use<'a>>>> {
        let policy = routed.cache_policy?;
        if prepared.upgrade.is_some()
            || !body.is_empty_replayable()
            || !cached::safe(&prepared.exchange.parts.method)
        {
            return None;
        }
        let ex = &mut prepared.exchange;
        // The upstream head (forwarding headers…) is made only if the origin is asked: a
        // hit never needs it.
        let origin = cached::RouteOrigin {
            conn: at.conn.clone(),
            trusted: routed.trusted,
            authority: authority.clone(),
            table: routed.table.clone(),
            route: routed.matched.index,
            cluster: ex.primary.clone(),
            path_and_query: ex.path_and_query.clone(),
            hash: ex.hash,
            deadline: ex.deadline,
            timeout: Duration::from_millis(routed.forward.timeout_ms.max(1)),
            hedge_after: ex.hedge_after,
            request_id: at.request_id.clone(),
            metrics: self.metrics.clone(),
            tally: tally.map(|_| Arc::new(Tally::default())),
        };
        let fetched = origin.tally.clone();
        let parts = std::mem::replace(&mut ex.parts, Request::new(()).into_parts().0);
        let scheme = if at.conn.is_tls() { "https" } else { "http" };
        // Boxed: the cache's future is 1.5 KB, and inline it sat twice in every request's
        // state (the `Option` and the awaited value), cached route or not.
        Some(Box::pin(async move {
            let mut resp = self
                .store
                .cache()
                .serve(policy, parts, scheme, host, origin)
                .await;
            if let (Some(mine), Some(fetched)) = (tally, fetched) {
                mine.absorb(&fetched);
            }
            cached::finish(&mut resp, &at.request_id);
            Early::answer(resp)
        }))
    }

    /// Stage 8, forward: the upstream head, the mirrors' copies, then the attempts
    /// (`forward.rs`). Not an `async fn`: the request awaits the attempts themselves, with no
    /// layer around them that would move their answer once more.
    fn forward(
        &self,
        prepared: &mut Prepared<'_>,
        body: RequestBody,
        routed: &Routed<'_>,
    ) -> impl Future<Output = Result<Answer, Outcome>> {
        let ex = &mut prepared.exchange;
        let upgrade = prepared.upgrade.is_some();
        prepare::upstream_head(
            &mut ex.parts,
            routed.forward,
            routed.route.request_edits.as_ref(),
            upgrade,
        );
        if let Some(mirrors) = &routed.route.mirrors {
            mirror::send(ex, &body, mirrors, upgrade);
        }
        forward::forward(ex, body)
    }

    /// Stage 9, respond: the upstream's response on its way back, or the gateway's own
    /// answer when none came. Now is when the answer came, for the lane and the route's
    /// metrics. `upgrade_to`: the protocol the client asked for, when the rule allows it.
    fn respond(
        &self,
        result: Result<Answer, Outcome>,
        lane: LaneGuard,
        prepared: &mut Prepared<'_>,
        upgrade_to: Option<HeaderValue>,
        at: &Arrival,
    ) -> Answered {
        // An answer's head arrived a moment ago, when its attempt read the clock.
        let answered = match &result {
            Ok(answer) => answer.at,
            Err(_) => Instant::now(),
        };
        lane.finish_at(answered);
        let response = match result {
            Ok(mut answer) => {
                if let Some(edits) = &prepared.exchange.route.response_edits {
                    edits.apply(answer.response.headers_mut());
                }
                let upgrade = prepared.upgrade.take().zip(upgrade_to);
                // An upgraded connection outlives the route's deadline.
                let deadline = upgrade.is_none().then_some(prepared.exchange.deadline);
                respond::upstream(
                    answer,
                    &at.request_id,
                    upgrade,
                    &self.metrics.response_bytes,
                    deadline,
                )
            }
            Err(outcome) => outcome_response(outcome, at.rid()),
        };
        Answered {
            response,
            at: answered,
        }
    }

    /// The end of every request, however it ended. The route's metrics count every answer
    /// to a request that matched a route. One that matched none (refused before routing,
    /// no table yet, no route) has no route to count it in: only its reason is counted
    /// (`rejected_requests_total`, `no_route_total`), as refusals after routing are too.
    fn finish(
        &self,
        ended: Result<Answered, Early>,
        trail: Trail<'_>,
        at: &Arrival,
        log: Option<Pending<'_>>,
        span: Option<RequestSpan>,
    ) -> Response<ProxyBody> {
        let (mut resp, answered) = match ended {
            Ok(Answered { response, at }) => (response, Some(at)),
            Err(Early { response, count }) => {
                match count {
                    Count::Answer => {}
                    Count::Rejected(reason) => self.metrics.reject(reason),
                    Count::NoRoute => {
                        self.metrics.no_route.inc();
                    }
                }
                (response, None)
            }
        };
        if let Some(route) = trail.route {
            let answered = answered.unwrap_or_else(Instant::now);
            route.metrics.record(
                resp.status().as_u16(),
                answered.saturating_duration_since(at.started).as_secs_f64(),
            );
        }
        let Trail {
            route,
            key_id,
            mut headers,
            rate_limit,
            cache,
        } = trail;
        let h = resp.headers_mut();
        // Most requests leave none (their route has no rate limit).
        if !headers.is_empty() {
            for (k, v) in headers.drain().filter_map(|(k, v)| Some((k?, v))) {
                h.insert(k, v);
            }
        }
        if let Some(server) = &self.edge.server_header {
            h.insert(header::SERVER, server.clone());
        }
        let cache_status = || match cache {
            CacheUse::None => None,
            CacheUse::Bypassed => Some(CacheStatus::Bypass),
            CacheUse::Answered => resp
                .headers()
                .get(crate::cache::X_CACHE)
                .and_then(CacheStatus::from_header),
        };
        if let (Some(t), Some(span)) = (&self.tracer, span) {
            if let Some(c) = cache_status() {
                t.step(&span, "cache", "parapet.cache", c.label());
            }
            if let Some(r) = route {
                span.set_route(&r.name);
            }
            span.end(resp.status().as_u16());
        }
        if let Some((mut record, sink)) = log.and_then(Pending::take) {
            record.status = resp.status().as_u16();
            record.route = route.map(|r| r.name.clone());
            record.key_id = key_id;
            record.rate_limit = rate_limit;
            record.cache = cache_status();
            // Bytes sent and the total duration are known when the body ends.
            resp = resp.map(|body| Logged::wrap(body, record, sink));
        }
        resp
    }
}

/// The client's `x-request-id` when it is usable, else a new one, set on the request.
///
/// Marked sensitive, so HTTP/2 sends it as a literal never indexed (RFC 7541 §6.2.3): a
/// value that differs on every message gains nothing from an HPACK table, and each one
/// added would push fields that do repeat out of it (and cost the insertion).
fn request_id<B>(req: &mut Request<B>) -> HeaderValue {
    // Through an entry: the name is hashed once whether the id is kept or made.
    let entry = req.headers_mut().entry(X_REQUEST_ID);
    if let header::Entry::Occupied(e) = &entry
        && (1..=128).contains(&e.get().len())
    {
        let mut id = e.get().clone();
        id.set_sensitive(true);
        return id;
    }
    let mut id = new_request_id();
    id.set_sensitive(true);
    match entry {
        header::Entry::Occupied(mut e) => {
            e.insert(id.clone());
        }
        header::Entry::Vacant(e) => {
            e.insert(id.clone());
        }
    }
    id
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

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
