//! The cache in front of the origin: what a request gets (HIT, MISS, STALE, REVALIDATED,
//! BYPASS), one origin fetch per key, background refreshes, and stale-if-error.

use std::{
    collections::HashMap,
    future::Future,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header, request::Parts};
use http_body_util::{BodyExt, Full};
use parapet_crds::snapshot::{CacheMode, CachePolicy};
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::time::Instant;

use super::{
    Entry, Fill, Freshness, Store, adapt_ttl, cacheable_request,
    conditional::{self, CLIENT_CONDITIONALS, Shape},
    control::Directives,
    entry::fingerprint,
    freshness::{Exchange, Lifetime},
    key, lifetime,
};
use crate::proxy::body::{BoxError, ProxyBody};

pub const X_CACHE: &str = "x-cache";

/// Fetches from the origin through the proxy's normal path (balancing, retries…).
pub trait Origin: Clone + Send + Sync + 'static {
    fn fetch(&self, req: Request<ProxyBody>) -> impl Future<Output = Response<ProxyBody>> + Send;

    /// The origin for a fetch that is no request's own (a refresh in the background).
    fn detached(&self) -> Self {
        self.clone()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PolicyName(pub Arc<str>);

impl EncodeLabelValue for PolicyName {
    fn encode(&self, e: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        e.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub policy: PolicyName,
    pub result: &'static str,
}

/// Cache metrics, registered into the data plane's registry.
#[derive(Clone, Default)]
pub struct CacheMetrics {
    pub lookups: Family<CacheLabels, Counter>,
    pub coalesced: Counter,
    pub refreshes: Counter,
    pub bytes: Gauge,
    pub entries: Gauge,
}

impl CacheMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "cache_lookups",
            "Cache lookups by policy and result (hit, miss, stale, revalidated, bypass)",
            self.lookups.clone(),
        );
        r.register(
            "cache_coalesced_waits",
            "Requests that waited for another request's fetch of the same key",
            self.coalesced.clone(),
        );
        r.register(
            "cache_refreshes",
            "Background refreshes (stale-while-revalidate and refresh-ahead)",
            self.refreshes.clone(),
        );
        r.register(
            "cache_bytes",
            "Bytes the cache holds (its memory bound counts these)",
            self.bytes.clone(),
        );
        r.register(
            "cache_entries",
            "Entries the cache holds",
            self.entries.clone(),
        );
    }
}

pub struct Cache {
    pub store: Arc<Store>,
    pub metrics: CacheMetrics,
    /// Each policy's lookup counters, resolved once: counting a hit takes no lock and makes
    /// no label.
    counters: arc_swap::ArcSwap<HashMap<Arc<str>, Arc<[Counter; 5]>>>,
}

/// What the cache did with a request: the value of the `x-cache` header it answers with,
/// the label of its lookup counters, and what the access log says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    Stale,
    Revalidated,
    /// The route caches, but this request went past the cache (a method or a request the
    /// cache does not serve).
    Bypass,
}

impl CacheStatus {
    const ALL: [CacheStatus; 5] = [
        Self::Hit,
        Self::Miss,
        Self::Stale,
        Self::Revalidated,
        Self::Bypass,
    ];

    /// From an `x-cache` value this cache wrote.
    pub fn from_header(v: &http::HeaderValue) -> Option<CacheStatus> {
        Self::ALL
            .into_iter()
            .find(|s| v.as_bytes() == s.as_str().as_bytes())
    }

    fn as_str(&self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Stale => "STALE",
            Self::Revalidated => "REVALIDATED",
            Self::Bypass => "BYPASS",
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Stale => "stale",
            Self::Revalidated => "revalidated",
            Self::Bypass => "bypass",
        }
    }
}

/// Request headers that describe one exchange and must not be stored or replayed.
const PER_REQUEST: [&str; 2] = ["x-request-id", "via"];

impl Cache {
    pub fn new(max_bytes: u64, metrics: CacheMetrics) -> Self {
        Self {
            store: Store::new(max_bytes),
            metrics,
            counters: Default::default(),
        }
    }

    fn count(&self, policy: &CachePolicy, r: &CacheStatus) {
        if let Some(c) = self.counters.load().get(policy.name.as_str()) {
            c[*r as usize].inc();
            return;
        }
        let name: Arc<str> = Arc::from(policy.name.as_str());
        let counters = Arc::new(CacheStatus::ALL.map(|result| {
            self.metrics
                .lookups
                .get_or_create(&CacheLabels {
                    policy: PolicyName(name.clone()),
                    result: result.label(),
                })
                .clone()
        }));
        counters[*r as usize].inc();
        self.counters.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(name.clone(), counters.clone());
            m
        });
    }

    /// Serves a GET/HEAD request through the cache. `parts` must belong to a body-less
    /// request; `scheme`/`host` are those the client used.
    pub async fn serve<O: Origin>(
        self: &Arc<Self>,
        policy: &Arc<CachePolicy>,
        parts: Parts,
        scheme: &str,
        host: &str,
        origin: O,
    ) -> Response<ProxyBody> {
        if !cacheable_request(policy, &parts.method, &parts.headers) {
            self.count(policy, &CacheStatus::Bypass);
            let resp = Box::pin(origin.fetch(Request::from_parts(parts, empty()))).await;
            return tag(resp, CacheStatus::Bypass);
        }
        let primary = key::primary_key(
            policy,
            &parts.method,
            scheme,
            host,
            parts.uri.path(),
            parts.uri.query(),
            &parts.headers,
        );
        // The proxy answers fresh hits before it gets here (`fresh`); the lookup, coalescing
        // and fetches are boxed so the request's future does not carry, and copy, them.
        Box::pin(self.lookup_or_fetch(policy, primary, parts, origin)).await
    }

    /// The lookup and what follows it: a hit, a stale answer with a background refresh, or
    /// a miss (one fetch per key; the others wait for it, bounded).
    async fn lookup_or_fetch<O: Origin>(
        self: &Arc<Self>,
        policy: &Arc<CachePolicy>,
        primary: String,
        parts: Parts,
        origin: O,
    ) -> Response<ProxyBody> {
        let wait = Duration::from_millis(policy.coalesce_timeout_ms);
        let mut waited = false;
        loop {
            let skey = self.store.storage_key(&primary, &parts.headers);
            let found = self.store.get(&skey);
            let now = Instant::now();
            if let Some(e) = &found {
                match e.freshness(now, policy.refresh_ahead) {
                    Freshness::Fresh => return self.hit(policy, e, &parts, now),
                    Freshness::FreshRefreshAhead | Freshness::StaleWhileRevalidate => {
                        let stale = e.freshness(now, false) == Freshness::StaleWhileRevalidate;
                        self.refresh_in_background(
                            policy,
                            &primary,
                            &skey,
                            e.clone(),
                            &parts,
                            origin.detached(),
                        );
                        if stale {
                            self.count(policy, &CacheStatus::Stale);
                            return answer(e, CacheStatus::Stale, &parts, now);
                        }
                        return self.hit(policy, e, &parts, now);
                    }
                    Freshness::StaleIfError | Freshness::Expired => {}
                }
            }
            match self
                .store
                .fill(&skey, if waited { Duration::ZERO } else { wait })
                .await
            {
                Fill::Leader(_guard) => {
                    return self
                        .fetch_and_store(policy, &primary, &skey, found, parts, origin)
                        .await;
                }
                Fill::Done => {
                    self.metrics.coalesced.inc();
                    waited = true;
                    continue;
                }
                Fill::TimedOut => {
                    // Waited long enough for someone else: go to the origin alone.
                    self.count(policy, &CacheStatus::Miss);
                    let resp = origin.fetch(Request::from_parts(parts, empty())).await;
                    return tag(resp, CacheStatus::Miss);
                }
            }
        }
    }

    /// The answer from a fresh entry, if the request may be and is answered from the cache
    /// as it stands: no fetch, no waiting, nothing to refresh. The proxy asks this before it
    /// spends anything on the upstream side (lanes, body, upstream head).
    pub fn fresh(
        &self,
        policy: &CachePolicy,
        method: &http::Method,
        scheme: &str,
        host: &str,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Option<Response<ProxyBody>> {
        if !cacheable_request(policy, method, headers) {
            return None;
        }
        let primary = key::primary_key(
            policy,
            method,
            scheme,
            host,
            uri.path(),
            uri.query(),
            headers,
        );
        let skey = self.store.storage_key(&primary, headers);
        let e = self.store.get(&skey)?;
        let now = Instant::now();
        if e.freshness(now, policy.refresh_ahead) != Freshness::Fresh {
            return None;
        }
        self.count(policy, &CacheStatus::Hit);
        Some(answer_to(&e, CacheStatus::Hit, method, headers, now))
    }

    fn hit(
        &self,
        policy: &CachePolicy,
        e: &Entry,
        parts: &Parts,
        now: Instant,
    ) -> Response<ProxyBody> {
        self.count(policy, &CacheStatus::Hit);
        answer(e, CacheStatus::Hit, parts, now)
    }

    /// A miss, or a stored entry that needs validation: one conditional (when the entry has
    /// validators) request for the full response, which is stored when it may be.
    async fn fetch_and_store<O: Origin>(
        self: &Arc<Self>,
        policy: &Arc<CachePolicy>,
        primary: &str,
        skey: &str,
        found: Option<Arc<Entry>>,
        parts: Parts,
        origin: O,
    ) -> Response<ProxyBody> {
        let mut up = parts.clone();
        // The full representation, even for HEAD or a range, so it can be stored; the
        // client's own conditionals are answered here, from it.
        up.method = http::Method::GET;
        for h in &CLIENT_CONDITIONALS {
            up.headers.remove(h);
        }
        let unconditional = up.clone();
        if let Some(e) = &found {
            add_validators(&mut up.headers, e);
        }
        let mut request_time = SystemTime::now();
        let mut resp = origin.fetch(Request::from_parts(up, empty())).await;
        let now = Instant::now();
        if let Some(e) = &found {
            let status = resp.status();
            if status == StatusCode::NOT_MODIFIED && validates(e, resp.headers()) {
                let exchange = Exchange::answered(
                    request_time,
                    parts.headers.contains_key(header::AUTHORIZATION),
                );
                let refreshed = self.revalidated(policy, skey, e, resp.headers(), exchange);
                self.count(policy, &CacheStatus::Revalidated);
                return answer(&refreshed, CacheStatus::Revalidated, &parts, now);
            }
            if status == StatusCode::NOT_MODIFIED {
                // Not about the stored response (RFC 9111 §4.3.4): ask again, unconditionally.
                request_time = SystemTime::now();
                resp = origin
                    .fetch(Request::from_parts(unconditional, empty()))
                    .await;
            } else if is_origin_failure(status)
                && e.freshness(now, false) == Freshness::StaleIfError
            {
                self.count(policy, &CacheStatus::Stale);
                tracing::debug!(policy = %policy.name, %status, "origin failed; serving stale-if-error");
                return answer(e, CacheStatus::Stale, &parts, now);
            }
        }
        self.count(policy, &CacheStatus::Miss);
        let exchange = Exchange::answered(
            request_time,
            parts.headers.contains_key(header::AUTHORIZATION),
        );
        let (resp_parts, body) = resp.into_parts();
        let Ok(life) = lifetime(
            policy,
            resp_parts.status.as_u16(),
            &resp_parts.headers,
            exchange,
        ) else {
            if found.is_some() && !is_origin_failure(resp_parts.status) {
                // The origin's new answer may not be stored: what was stored no longer
                // stands for this resource. (An origin failure leaves it for next time.)
                self.store.invalidate_key(skey);
            }
            return tag(Response::from_parts(resp_parts, body), CacheStatus::Miss);
        };
        // Bodies larger than the entry bound stream through uncached.
        let max = usize::try_from(policy.max_entry_bytes).unwrap_or(usize::MAX);
        if declared_length(&resp_parts.headers).is_some_and(|n| n > policy.max_entry_bytes) {
            return tag(Response::from_parts(resp_parts, body), CacheStatus::Miss);
        }
        let Some(bytes) = collect_bounded(body, max).await else {
            // Too large without a Content-Length, or the origin failed mid-body: this
            // response cannot be completed from here.
            tracing::debug!(policy = %policy.name, "response not cached: too large or cut off");
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            return tag(r, CacheStatus::Miss);
        };
        let changed = found
            .as_ref()
            .is_none_or(|e| e.fingerprint != fingerprint(&bytes));
        let life = self.adapt(
            policy,
            found.as_deref(),
            changed,
            life,
            &resp_parts,
            exchange,
        );
        let entry = self.entry(policy, &resp_parts, bytes.clone(), life, exchange);
        let stored = self.store.insert(
            primary,
            &parts.headers,
            key::vary_fields(&resp_parts.headers),
            entry,
        );
        self.update_gauges();
        if conditional::asks(&parts.headers) {
            // A conditional or range request: answered from what was just stored.
            return answer(&stored, CacheStatus::Miss, &parts, Instant::now());
        }
        let body = if parts.method == http::Method::HEAD {
            empty()
        } else {
            full(bytes)
        };
        // The origin's answer as it came, its Age included.
        tag(Response::from_parts(resp_parts, body), CacheStatus::Miss)
    }

    /// Adaptive TTL: the cache's own freshness grows while refreshes find the body unchanged
    /// and shrinks when it changed; explicit freshness from the origin is left alone.
    fn adapt(
        &self,
        policy: &CachePolicy,
        prev: Option<&Entry>,
        changed: bool,
        life: Lifetime,
        resp: &http::response::Parts,
        exchange: Exchange,
    ) -> Lifetime {
        let Some(prev) = prev.filter(|p| {
            policy.adaptive_ttl
                && policy.mode == CacheMode::Auto
                && p.lifetime.heuristic
                && life.heuristic
        }) else {
            return life;
        };
        let ttl = adapt_ttl(
            prev.ttl,
            changed,
            Duration::from_millis(policy.min_ttl_ms),
            Duration::from_millis(policy.max_ttl_ms),
        );
        lifetime(
            policy,
            resp.status.as_u16(),
            &resp.headers,
            Exchange {
                adapted_ttl: Some(ttl),
                ..exchange
            },
        )
        .unwrap_or(life)
    }

    /// The entry for a response: headers as stored (no per-exchange fields, no Age, none the
    /// origin marked `private="…"`/`no-cache="…"`), its corrected initial age.
    fn entry(
        &self,
        policy: &CachePolicy,
        resp: &http::response::Parts,
        body: Bytes,
        life: Lifetime,
        exchange: Exchange,
    ) -> Entry {
        let mut headers = resp.headers.clone();
        let initial_age = initial_age(policy, exchange, &headers);
        for h in PER_REQUEST {
            headers.remove(h);
        }
        headers.remove(header::AGE);
        for f in Directives::of_response(&resp.headers).strip_fields {
            headers.remove(f.as_str());
        }
        Entry::new(resp.status, headers, body, life, initial_age)
            .keep_stale(Duration::from_millis(policy.keep_stale_ms))
    }

    /// A stored entry after a 304 (RFC 9111 §4.3.4): the 304's fields replace every value of
    /// the same fields (Content-Length and per-exchange fields excepted), freshness and age
    /// start again from the 304. The body is kept.
    fn revalidated(
        &self,
        policy: &CachePolicy,
        skey: &str,
        e: &Arc<Entry>,
        fresh: &HeaderMap,
        exchange: Exchange,
    ) -> Arc<Entry> {
        let mut headers = e.headers.clone();
        let mut last: Option<&header::HeaderName> = None;
        for (name, value) in fresh {
            if name == header::CONTENT_LENGTH
                || name == header::AGE
                || PER_REQUEST.contains(&name.as_str())
            {
                continue;
            }
            if last != Some(name) {
                headers.remove(name);
                last = Some(name);
            }
            headers.append(name.clone(), value.clone());
        }
        let parts = {
            let mut r = Response::new(());
            *r.status_mut() = e.status;
            *r.headers_mut() = headers;
            r.into_parts().0
        };
        let life = lifetime(policy, e.status.as_u16(), &parts.headers, exchange);
        let Ok(life) = life else {
            // The origin no longer lets it be stored: this answer is its last use.
            self.store.invalidate_key(skey);
            return e.clone();
        };
        let life = self.adapt(policy, Some(e), false, life, &parts, exchange);
        let mut entry = self.entry(policy, &parts, e.body.clone(), life, exchange);
        // The 304's own Age and Date, not the stored response's, tell how old it is now.
        entry.initial_age = initial_age(policy, exchange, fresh);
        let out = self.store.replace(skey, entry);
        self.update_gauges();
        out
    }

    fn refresh_in_background<O: Origin>(
        self: &Arc<Self>,
        policy: &Arc<CachePolicy>,
        primary: &str,
        skey: &str,
        e: Arc<Entry>,
        parts: &Parts,
        origin: O,
    ) {
        if !e.try_start_refresh() {
            return;
        }
        self.metrics.refreshes.inc();
        let (this, policy, primary, skey) = (
            self.clone(),
            policy.clone(),
            primary.to_string(),
            skey.to_string(),
        );
        let mut up = parts.clone();
        up.method = http::Method::GET;
        for h in &CLIENT_CONDITIONALS {
            up.headers.remove(h);
        }
        add_validators(&mut up.headers, &e);
        tokio::spawn(refresh(this, policy, primary, skey, e, up, origin));
    }

    fn update_gauges(&self) {
        self.metrics.bytes.set(self.store.weighted_size() as i64);
        self.metrics.entries.set(self.store.entry_count() as i64);
    }

    /// Drops the entries whose key starts with `prefix` (a policy's name and a newline: the
    /// whole policy) and, when given, whose path starts with `path_prefix`.
    pub fn purge(&self, prefix: &str, path_prefix: Option<&str>) -> usize {
        let n = self.store.purge(|k| {
            k.starts_with(prefix)
                && path_prefix
                    .is_none_or(|p| key::path_of(k).is_some_and(|path| path.starts_with(p)))
        });
        self.update_gauges();
        n
    }

    /// Invalidates what is stored for a URL after an unsafe request to it succeeded (RFC 9111
    /// §4.4): every variant, for GET and HEAD.
    pub fn invalidate(
        &self,
        policy: &CachePolicy,
        scheme: &str,
        host: &str,
        path: &str,
        query: Option<&str>,
    ) {
        self.store.invalidate(
            &key::url_key(policy, "GET", scheme, host, path, query),
            policy.key_headers.is_empty(),
        );
        self.update_gauges();
    }
}

/// One background refresh: a conditional fetch, then the entry is revalidated or replaced.
async fn refresh<O: Origin>(
    this: Arc<Cache>,
    policy: Arc<CachePolicy>,
    primary: String,
    skey: String,
    e: Arc<Entry>,
    up: Parts,
    origin: O,
) {
    let request_headers = up.headers.clone();
    let authorized = up.headers.contains_key(header::AUTHORIZATION);
    let request_time = SystemTime::now();
    let resp = origin.fetch(Request::from_parts(up, empty())).await;
    let exchange = Exchange::answered(request_time, authorized);
    if resp.status() == StatusCode::NOT_MODIFIED {
        if validates(&e, resp.headers()) {
            this.revalidated(&policy, &skey, &e, resp.headers(), exchange);
        } else {
            // The next request fetches it whole.
            this.store.invalidate_key(&skey);
        }
    } else if !is_origin_failure(resp.status()) {
        let (rp, body) = resp.into_parts();
        let max = usize::try_from(policy.max_entry_bytes).unwrap_or(usize::MAX);
        if let Some(bytes) = collect_bounded(body, max).await {
            match lifetime(&policy, rp.status.as_u16(), &rp.headers, exchange) {
                Ok(life) => {
                    let changed = e.fingerprint != fingerprint(&bytes);
                    let life = this.adapt(&policy, Some(&e), changed, life, &rp, exchange);
                    let entry = this.entry(&policy, &rp, bytes, life, exchange);
                    let vary = key::vary_fields(&rp.headers);
                    this.store.insert(&primary, &request_headers, vary, entry);
                }
                Err(_) => this.store.invalidate_key(&skey),
            }
            this.update_gauges();
        }
    }
    e.end_refresh();
}

/// How old a response is on arrival (RFC 9111 §4.2.3). Fixed mode's TTL is the operator's
/// and counts from arrival, whatever the origin's Date and Age say.
fn initial_age(policy: &CachePolicy, exchange: Exchange, headers: &HeaderMap) -> Duration {
    match policy.mode {
        CacheMode::Fixed => Duration::ZERO,
        CacheMode::Auto => exchange.initial_age(headers),
    }
}

/// Whether a 304 is about this stored response (RFC 9111 §4.3.4): its entity-tag, when it
/// has one, matches (strongly when it is strong); else its Last-Modified, when it has one.
fn validates(e: &Entry, not_modified: &HeaderMap) -> bool {
    let text = |h: &HeaderMap, n: header::HeaderName| {
        h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned)
    };
    if let Some(tag) = text(not_modified, header::ETAG) {
        let Some(stored) = text(&e.headers, header::ETAG) else {
            return false;
        };
        return if tag.trim_start().starts_with("W/") {
            conditional::weak_eq(&tag, &stored)
        } else {
            conditional::strong_eq(&tag, &stored)
        };
    }
    match (
        not_modified.get(header::LAST_MODIFIED),
        e.headers.get(header::LAST_MODIFIED),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// Reads a body whole, up to `max` bytes; `None` when larger or when it fails.
async fn collect_bounded(mut body: ProxyBody, max: usize) -> Option<Bytes> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if let Some(d) = frame.data_ref() {
            if buf.len() + d.len() > max {
                return None;
            }
            buf.extend_from_slice(d);
        }
    }
    Some(buf.freeze())
}

fn is_origin_failure(status: StatusCode) -> bool {
    status.is_server_error()
}

fn add_validators(headers: &mut HeaderMap, e: &Entry) {
    if let Some(etag) = e.etag() {
        headers.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(lm) = e.last_modified() {
        headers.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
}

fn answer(e: &Entry, result: CacheStatus, parts: &Parts, now: Instant) -> Response<ProxyBody> {
    answer_to(e, result, &parts.method, &parts.headers, now)
}

/// Fields a 304 carries from the stored response (RFC 9110 §15.4.5), with what guides caches.
const NOT_MODIFIED_FIELDS: [header::HeaderName; 8] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
    header::LAST_MODIFIED,
    header::CDN_CACHE_CONTROL,
];

/// The answer from an entry, shaped by the request's conditionals and range, with its Age.
fn answer_to(
    e: &Entry,
    result: CacheStatus,
    method: &http::Method,
    request: &HeaderMap,
    now: Instant,
) -> Response<ProxyBody> {
    let head = method == http::Method::HEAD;
    let len = e.body.len();
    let mut r = match conditional::shape(method, request, e.status, &e.headers, len, e.received_at)
    {
        Shape::Full => {
            let mut r = Response::new(if head { empty() } else { full(e.body.clone()) });
            *r.status_mut() = e.status;
            *r.headers_mut() = e.headers.clone();
            r
        }
        Shape::NotModified => {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            for name in &NOT_MODIFIED_FIELDS {
                for v in e.headers.get_all(name) {
                    r.headers_mut().append(name.clone(), v.clone());
                }
            }
            r
        }
        Shape::Partial(range) => {
            let mut r = Response::new(full(e.body.slice(range.clone())));
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            *r.headers_mut() = e.headers.clone();
            r.headers_mut().remove(header::CONTENT_LENGTH);
            let value = format!("bytes {}-{}/{len}", range.start, range.end - 1);
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&value).expect("digits are a valid header value"),
            );
            r
        }
        Shape::Unsatisfiable => {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}"))
                    .expect("digits are a valid header value"),
            );
            r
        }
    };
    r.headers_mut()
        .insert(header::AGE, HeaderValue::from(e.age_secs(now)));
    tag(r, result)
}

fn tag(mut r: Response<ProxyBody>, result: CacheStatus) -> Response<ProxyBody> {
    r.headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(result.as_str()));
    r
}

fn full(b: Bytes) -> ProxyBody {
    Full::new(b)
        .map_err(|never| -> BoxError { match never {} })
        .boxed()
}

fn empty() -> ProxyBody {
    full(Bytes::new())
}

/// The response's `content-length`, when it declares one valid length.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
