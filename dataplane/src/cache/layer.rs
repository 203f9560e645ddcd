//! The cache in front of the origin: what a request gets (HIT, MISS, STALE, REVALIDATED,
//! BYPASS), one origin fetch per key, background refreshes, and stale-if-error.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

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
    Entry, Fill, Freshness, Store, adapt_ttl, cacheable_request, entry::fingerprint, key, lifetime,
};
use crate::proxy::body::{BoxError, ProxyBody};

pub const X_CACHE: &str = "x-cache";

/// Fetches from the origin through the proxy's normal path (balancing, retries…).
pub trait Origin: Clone + Send + Sync + 'static {
    fn fetch(&self, req: Request<ProxyBody>) -> impl Future<Output = Response<ProxyBody>> + Send;
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

#[derive(Clone, Copy)]
enum Result_ {
    Hit,
    Miss,
    Stale,
    Revalidated,
    Bypass,
}

impl Result_ {
    const ALL: [Result_; 5] = [
        Self::Hit,
        Self::Miss,
        Self::Stale,
        Self::Revalidated,
        Self::Bypass,
    ];

    fn as_str(&self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Stale => "STALE",
            Self::Revalidated => "REVALIDATED",
            Self::Bypass => "BYPASS",
        }
    }

    fn label(&self) -> &'static str {
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

    fn count(&self, policy: &CachePolicy, r: &Result_) {
        if let Some(c) = self.counters.load().get(policy.name.as_str()) {
            c[*r as usize].inc();
            return;
        }
        let name: Arc<str> = Arc::from(policy.name.as_str());
        let counters = Arc::new(Result_::ALL.map(|result| {
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
            self.count(policy, &Result_::Bypass);
            let resp = Box::pin(origin.fetch(Request::from_parts(parts, empty()))).await;
            return tag(resp, Result_::Bypass, None);
        }
        let head = parts.method == http::Method::HEAD;
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
        Box::pin(self.lookup_or_fetch(policy, primary, parts, head, origin)).await
    }

    /// The lookup and what follows it: a hit, a stale answer with a background refresh, or
    /// a miss (one fetch per key; the others wait for it, bounded).
    async fn lookup_or_fetch<O: Origin>(
        self: &Arc<Self>,
        policy: &Arc<CachePolicy>,
        primary: String,
        parts: Parts,
        head: bool,
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
                    Freshness::Fresh => return self.hit(policy, e, head, now),
                    Freshness::FreshRefreshAhead | Freshness::StaleWhileRevalidate => {
                        let stale = e.freshness(now, false) == Freshness::StaleWhileRevalidate;
                        self.refresh_in_background(
                            policy,
                            &primary,
                            &skey,
                            e.clone(),
                            &parts,
                            origin.clone(),
                        );
                        if stale {
                            self.count(policy, &Result_::Stale);
                            return from_entry(e, Result_::Stale, head, now);
                        }
                        return self.hit(policy, e, head, now);
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
                        .fetch_and_store(policy, &primary, &skey, found, parts, head, origin)
                        .await;
                }
                Fill::Done => {
                    self.metrics.coalesced.inc();
                    waited = true;
                    continue;
                }
                Fill::TimedOut => {
                    // Waited long enough for someone else: go to the origin alone.
                    self.count(policy, &Result_::Miss);
                    let resp = origin.fetch(Request::from_parts(parts, empty())).await;
                    return tag(resp, Result_::Miss, None);
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
        (e.freshness(now, policy.refresh_ahead) == Freshness::Fresh)
            .then(|| self.hit(policy, &e, method == http::Method::HEAD, now))
    }

    fn hit(
        &self,
        policy: &CachePolicy,
        e: &Entry,
        head: bool,
        now: Instant,
    ) -> Response<ProxyBody> {
        self.count(policy, &Result_::Hit);
        from_entry(e, Result_::Hit, head, now)
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_and_store<O: Origin>(
        self: &Arc<Self>,
        policy: &Arc<CachePolicy>,
        primary: &str,
        skey: &str,
        stale: Option<Arc<Entry>>,
        parts: Parts,
        head: bool,
        origin: O,
    ) -> Response<ProxyBody> {
        let mut up = parts.clone();
        // Always fetch the full representation, even for HEAD, so it can be stored.
        up.method = http::Method::GET;
        if let Some(e) = &stale {
            add_validators(&mut up.headers, e);
        }
        let resp = origin.fetch(Request::from_parts(up, empty())).await;
        let now = Instant::now();
        let status = resp.status();
        if let Some(e) = &stale
            && let Some(answer) =
                self.answer_from_stale(policy, skey, e, resp.headers(), status, head, now)
        {
            return answer;
        }
        self.count(policy, &Result_::Miss);
        let (resp_parts, body) = resp.into_parts();
        let ttl = previous_ttl(policy, stale.as_deref());
        let Ok(life) = lifetime(
            policy,
            resp_parts.status.as_u16(),
            &resp_parts.headers,
            std::time::SystemTime::now(),
            Some(ttl),
        ) else {
            return tag(Response::from_parts(resp_parts, body), Result_::Miss, None);
        };
        // Bodies larger than the entry bound stream through uncached.
        let max = usize::try_from(policy.max_entry_bytes).unwrap_or(usize::MAX);
        if declared_length(&resp_parts.headers).is_some_and(|n| n > policy.max_entry_bytes) {
            return tag(Response::from_parts(resp_parts, body), Result_::Miss, None);
        }
        let bytes = match collect_bounded(body, max).await {
            Some(b) => b,
            None => {
                // Too large without a Content-Length, or the origin failed mid-body: this
                // response cannot be completed from here.
                tracing::debug!(policy = %policy.name, "response not cached: too large or cut off");
                let mut r = Response::new(empty());
                *r.status_mut() = StatusCode::BAD_GATEWAY;
                return tag(r, Result_::Miss, None);
            }
        };
        let changed = stale
            .as_ref()
            .is_none_or(|e| e.fingerprint != fingerprint(&bytes));
        let ttl = adapted(policy, stale.as_deref(), changed, ttl);
        let life = if policy.adaptive_ttl && stale.is_some() {
            lifetime(
                policy,
                resp_parts.status.as_u16(),
                &resp_parts.headers,
                std::time::SystemTime::now(),
                Some(ttl),
            )
            .unwrap_or(life)
        } else {
            life
        };
        let mut headers = resp_parts.headers.clone();
        for h in PER_REQUEST {
            headers.remove(h);
        }
        let vary = key::vary_fields(&headers);
        let entry = Entry::new(resp_parts.status, headers, bytes.clone(), life, ttl);
        let _ = skey;
        self.store.insert(primary, &parts.headers, vary, entry);
        self.update_gauges();
        let mut resp = Response::from_parts(resp_parts, if head { empty() } else { full(bytes) });
        resp.headers_mut()
            .insert(header::AGE, HeaderValue::from_static("0"));
        tag(resp, Result_::Miss, None)
    }

    /// The answer from the stale entry a refresh was asked for: the entry again when the
    /// origin says it has not changed (304), or as it is when the origin failed and the
    /// entry may be served stale-if-error; `None` when the origin's response is the answer.
    #[allow(clippy::too_many_arguments)]
    fn answer_from_stale(
        &self,
        policy: &CachePolicy,
        skey: &str,
        stale: &Arc<Entry>,
        headers: &HeaderMap,
        status: StatusCode,
        head: bool,
        now: Instant,
    ) -> Option<Response<ProxyBody>> {
        if status == StatusCode::NOT_MODIFIED {
            let refreshed = self.revalidated(policy, skey, stale, headers);
            self.count(policy, &Result_::Revalidated);
            return Some(from_entry(&refreshed, Result_::Revalidated, head, now));
        }
        if is_origin_failure(status) && stale.freshness(now, false) == Freshness::StaleIfError {
            self.count(policy, &Result_::Stale);
            tracing::debug!(policy = %policy.name, %status, "origin failed; serving stale-if-error");
            return Some(from_entry(stale, Result_::Stale, head, now));
        }
        None
    }

    fn revalidated(
        &self,
        policy: &CachePolicy,
        skey: &str,
        e: &Arc<Entry>,
        fresh_headers: &HeaderMap,
    ) -> Arc<Entry> {
        // A 304 updates the stored headers it carries (RFC 9111 §4.3.4) and restarts
        // freshness; the body is kept.
        let mut headers = e.headers.clone();
        for (k, v) in fresh_headers {
            if k != header::CONTENT_LENGTH && !PER_REQUEST.contains(&k.as_str()) {
                headers.insert(k.clone(), v.clone());
            }
        }
        let ttl = adapted(policy, Some(e), false, e.ttl);
        let life = lifetime(
            policy,
            e.status.as_u16(),
            &headers,
            std::time::SystemTime::now(),
            Some(ttl),
        )
        .unwrap_or(e.lifetime);
        let entry = Entry::new(e.status, headers, e.body.clone(), life, ttl);
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
    let resp = origin.fetch(Request::from_parts(up, empty())).await;
    if resp.status() == StatusCode::NOT_MODIFIED {
        this.revalidated(&policy, &skey, &e, resp.headers());
    } else if !is_origin_failure(resp.status()) {
        let (rp, body) = resp.into_parts();
        let max = usize::try_from(policy.max_entry_bytes).unwrap_or(usize::MAX);
        if let Some(bytes) = collect_bounded(body, max).await {
            let changed = e.fingerprint != fingerprint(&bytes);
            let ttl = adapted(&policy, Some(&e), changed, e.ttl);
            if let Ok(life) = lifetime(
                &policy,
                rp.status.as_u16(),
                &rp.headers,
                std::time::SystemTime::now(),
                Some(ttl),
            ) {
                let mut headers = rp.headers;
                for h in PER_REQUEST {
                    headers.remove(h);
                }
                let vary = key::vary_fields(&headers);
                this.store.insert(
                    &primary,
                    &request_headers,
                    vary,
                    Entry::new(rp.status, headers, bytes, life, ttl),
                );
                this.update_gauges();
            }
        }
    }
    e.end_refresh();
}

/// The TTL an entry starts from: the previous entry's (adaptive), else the policy's.
fn previous_ttl(policy: &CachePolicy, prev: Option<&Entry>) -> Duration {
    match prev {
        Some(e) if policy.adaptive_ttl => e.ttl,
        _ => Duration::from_millis(policy.ttl_ms),
    }
}

fn adapted(policy: &CachePolicy, prev: Option<&Entry>, changed: bool, ttl: Duration) -> Duration {
    if policy.adaptive_ttl && policy.mode == CacheMode::Auto && prev.is_some() {
        adapt_ttl(
            ttl,
            changed,
            Duration::from_millis(policy.min_ttl_ms),
            Duration::from_millis(policy.max_ttl_ms),
        )
    } else {
        ttl
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

fn from_entry(e: &Entry, result: Result_, head: bool, now: Instant) -> Response<ProxyBody> {
    let mut r = Response::new(if head { empty() } else { full(e.body.clone()) });
    *r.status_mut() = e.status;
    *r.headers_mut() = e.headers.clone();
    r.headers_mut()
        .insert(header::AGE, HeaderValue::from(e.age(now).as_secs()));
    tag(r, result, None)
}

fn tag(mut r: Response<ProxyBody>, result: Result_, _note: Option<&str>) -> Response<ProxyBody> {
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
