//! JSON Web Key Sets: parsing one into verification keys, and keeping remote ones fresh.
//!
//! A remote set lives in the process-wide [`JwksRegistry`], keyed by URL, so a new routing
//! table reuses the keys the previous one fetched. Each set holds its last good keys behind
//! an [`ArcSwapOption`]: requests read them without a lock. One background task per URL,
//! started by the first request that needs the keys, fetches them again after the
//! response's `Cache-Control: max-age` (held within `[min_refresh_s, refresh_s]`), or
//! `refresh_s` without one, and after a failure retries with a backoff from 1 s doubling up
//! to `refresh_s`, keeping the last good keys meanwhile. A request that meets an unknown
//! `kid` asks for a fetch at once (a provider that rotated its keys), unless one started in
//! the last `min_refresh_s`; requests arriving meanwhile await the same fetch.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use http::{
    Request, StatusCode, Uri,
    header::{ACCEPT, CACHE_CONTROL, CONTENT_LENGTH, USER_AGENT},
};
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use jsonwebtoken::DecodingKey;
use parapet_crds::snapshot::{RemoteJwks, UpstreamTls};
use serde::Deserialize;
use serde_json::Value;
use tokio::{sync::watch, time::Instant};

use super::{
    metrics::JwtMetrics,
    token::{Alg, KeyKind, b64url_decode_lenient},
};

/// Keys kept from one set; the rest are dropped with a warning.
pub const MAX_KEYS: usize = 256;
/// A JWKS response larger than this is refused.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// The background task does not fetch again a set fetched less than this ago.
const COALESCE: Duration = Duration::from_secs(1);

/// One verification key.
pub struct Key {
    pub kid: Option<Box<str>>,
    pub kind: KeyKind,
    /// The JWK's `alg`, when it names one: the key then verifies only that algorithm.
    pub alg: Option<Alg>,
    pub decoding: DecodingKey,
}

impl Key {
    /// Whether this key may verify a token signed with `alg`.
    pub fn fits(&self, alg: Alg) -> bool {
        self.kind == alg.key_kind() && self.alg.is_none_or(|a| a == alg)
    }
}

/// The keys of one JWKS document.
#[derive(Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    /// Unique per parsed document (0: the empty default set): a token verified under one
    /// generation is verified again under the next, whose keys may differ.
    pub generation: u64,
}

/// Generations handed out so far.
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("not a JWKS document (JSON with a `keys` array): {0}")]
    Json(#[from] serde_json::Error),
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<Value>,
}

/// A JWK's members this check reads.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// Why one key of a set is not kept.
#[derive(Debug, thiserror::Error)]
enum SkipKey {
    /// Published for something else (`use: enc`, an encryption `alg`, a symmetric key):
    /// normal in providers' sets, so not worth a warning.
    #[error("not a signature verification key")]
    NotForSignatures,
    #[error("{0}")]
    Bad(&'static str),
}

impl KeySet {
    /// Parses a JWKS document. Keys that are not usable public signature keys are skipped
    /// (and logged); at most [`MAX_KEYS`] are kept.
    pub fn parse(json: &[u8], origin: &str) -> Result<Self, JwksError> {
        let raw: RawSet = serde_json::from_slice(json)?;
        let mut keys = Vec::new();
        for (i, v) in raw.keys.into_iter().enumerate() {
            let kid = v.get("kid").and_then(Value::as_str).map(str::to_string);
            match serde_json::from_value::<RawJwk>(v)
                .map_err(|_| SkipKey::Bad("not a JWK"))
                .and_then(key)
            {
                Ok(k) if keys.len() < MAX_KEYS => keys.push(k),
                Ok(_) => {
                    tracing::warn!(
                        origin,
                        "the JWKS holds more than {MAX_KEYS} keys; the rest are ignored"
                    );
                    break;
                }
                Err(SkipKey::NotForSignatures) => {
                    tracing::debug!(
                        origin,
                        index = i,
                        ?kid,
                        "JWKS key is not for signatures; skipped"
                    )
                }
                Err(e) => {
                    tracing::warn!(origin, index = i, ?kid, error = %e, "JWKS key skipped")
                }
            }
        }
        Ok(Self {
            keys,
            generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
        })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

fn key(raw: RawJwk) -> Result<Key, SkipKey> {
    if raw.use_.as_deref().is_some_and(|u| u != "sig")
        || raw
            .key_ops
            .as_ref()
            .is_some_and(|ops| !ops.iter().any(|o| o == "verify"))
    {
        return Err(SkipKey::NotForSignatures);
    }
    let alg = match raw.alg.as_deref() {
        None => None,
        Some(a) => Some(Alg::parse(a).ok_or(SkipKey::NotForSignatures)?),
    };
    let b64 = |s: &Option<String>, what: &'static str| {
        s.as_deref()
            .and_then(b64url_decode_lenient)
            .filter(|b| !b.is_empty())
            .ok_or(SkipKey::Bad(what))
    };
    let (kind, decoding) = match (raw.kty.as_str(), raw.crv.as_deref()) {
        ("RSA", _) => {
            let n = b64(&raw.n, "an RSA key needs a base64url modulus (n)")?;
            let e = b64(&raw.e, "an RSA key needs a base64url exponent (e)")?;
            // ring verifies 2048- to 8192-bit moduli only; another could never verify.
            let len = n.len() - n.iter().take_while(|b| **b == 0).count();
            if !(256..=1024).contains(&len) {
                return Err(SkipKey::Bad("RSA keys must be 2048 to 8192 bits"));
            }
            (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        ("EC", Some(crv @ ("P-256" | "P-384"))) => {
            let (kind, len) = if crv == "P-256" {
                (KeyKind::P256, 32)
            } else {
                (KeyKind::P384, 48)
            };
            let x = b64(&raw.x, "an EC key needs a base64url x")?;
            let y = b64(&raw.y, "an EC key needs a base64url y")?;
            if x.len() != len || y.len() != len {
                return Err(SkipKey::Bad("an EC key's x and y do not fit its curve"));
            }
            // The uncompressed point ring expects (what `from_ec_components` builds).
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (kind, DecodingKey::from_ec_der(&point))
        }
        ("EC", _) => return Err(SkipKey::Bad("EC keys must be on P-256 or P-384")),
        ("OKP", Some("Ed25519")) => {
            let x = b64(&raw.x, "an Ed25519 key needs a base64url x")?;
            if x.len() != 32 {
                return Err(SkipKey::Bad("an Ed25519 key is 32 bytes"));
            }
            (KeyKind::Ed25519, DecodingKey::from_ed_der(&x))
        }
        ("OKP", _) => return Err(SkipKey::Bad("OKP keys must be Ed25519")),
        ("oct", _) => return Err(SkipKey::NotForSignatures),
        _ => return Err(SkipKey::Bad("unknown key type (kty)")),
    };
    if alg.is_some_and(|a| a.key_kind() != kind) {
        return Err(SkipKey::Bad("the key's alg does not fit its type"));
    }
    Ok(Key {
        kid: raw.kid.map(Box::from),
        kind,
        alg,
        decoding,
    })
}

/// Process-wide key sets by JWKS URL, kept across routing tables (so a new table does not
/// fetch again what the previous one had).
pub struct JwksRegistry {
    metrics: JwtMetrics,
    /// Taken while a table is built or installed, never on a request.
    sets: Mutex<HashMap<Box<str>, Arc<RemoteSet>>>,
}

impl std::fmt::Debug for JwksRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksRegistry").finish_non_exhaustive()
    }
}

impl JwksRegistry {
    pub fn new(metrics: JwtMetrics) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            sets: Mutex::default(),
        })
    }

    /// The set for these settings, made on first sight. Sets are kept per URL *and*
    /// settings: two routes naming one URL with different CAs or timeouts get a set each,
    /// so one route's settings never decide how another's keys are fetched (a route could
    /// otherwise have another tenant's keys fetched under a CA it controls).
    pub(crate) fn set_for(&self, remote: &RemoteJwks) -> Arc<RemoteSet> {
        let key = registry_key(remote);
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = sets.get(key.as_str()) {
            return set.clone();
        }
        let set = Arc::new(RemoteSet::new(remote.clone(), self.metrics.clone()));
        sets.insert(key.into(), set.clone());
        set
    }

    /// Drops key sets no provider of the table in force uses (call after a table is
    /// installed, with the keys its routes use: [`super::JwtAuth::jwks_keys`]). Their
    /// background tasks stop; routes of an older table still running keep the keys they
    /// hold until they finish.
    pub fn retain(&self, keys: &HashSet<String>) {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        sets.retain(|key, set| {
            let keep = keys.contains(&**key);
            if !keep {
                set.retire();
            }
            keep
        });
    }

    /// URLs of the sets held, for tests and the config dump.
    pub fn urls(&self) -> Vec<String> {
        let sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        let mut urls: Vec<String> = sets
            .keys()
            .map(|k| k.split('\0').next().unwrap_or_default().to_string())
            .collect();
        urls.sort();
        urls
    }
}

type JwksClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// How a set is fetched; replaced whole when a table changes it.
struct Settings {
    remote: RemoteJwks,
    /// Built on the first fetch: table builds stay cheap and need no runtime.
    client: OnceLock<Result<JwksClient, String>>,
}

impl Settings {
    fn new(remote: RemoteJwks) -> Self {
        Self {
            remote,
            client: OnceLock::new(),
        }
    }

    fn client(&self) -> Result<&JwksClient, FetchError> {
        self.client
            .get_or_init(|| {
                let connect = Duration::from_millis(self.remote.timeout_ms.max(1));
                // A plain `http` URL (loopback only: the compiler refuses others) needs no
                // TLS settings; building them could fail on a host without CA certificates.
                let tls = self.remote.url.starts_with("https:").then(|| UpstreamTls {
                    sni: None,
                    ca_pem: self.remote.ca_pem.clone(),
                    client_certificate: None,
                });
                let connector = crate::upstream::connector(connect, false, tls.as_ref())?;
                Ok(Client::builder(TokioExecutor::new()).build(connector))
            })
            .as_ref()
            .map_err(|e| FetchError::Client(e.clone()))
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.remote.timeout_ms.max(1))
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("{0}")]
    Client(String),
    #[error("the URL is not valid")]
    Uri,
    #[error("the request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    #[error("the answer was {0}, not 200")]
    Status(StatusCode),
    #[error("the answer is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("the answer's body could not be read: {0}")]
    Body(String),
    #[error("{0}")]
    Jwks(#[from] JwksError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// What the fetch schedule needs to know.
#[derive(Default)]
struct FetchState {
    /// The fetch under way; everyone who needs fresh keys awaits this one.
    in_flight: Option<Shared<BoxFuture<'static, ()>>>,
    last_started: Option<Instant>,
    /// Fetches started, for tests.
    started: u64,
    /// Failures since the last success (the backoff's exponent).
    failures: u32,
    /// `max-age` of the last good answer.
    max_age: Option<u64>,
    /// Keys this set counts in the `jwks_keys` gauge.
    counted: usize,
    /// Dropped from the registry: the gauge no longer counts it, the task stops.
    retired: bool,
    /// When the background task fetches next (once it sleeps).
    next_at: Option<Instant>,
}

/// A remote JWKS: its last good keys and how it is kept fresh.
pub(crate) struct RemoteSet {
    settings: ArcSwap<Settings>,
    keys: ArcSwapOption<KeySet>,
    /// Never held across an await.
    state: Mutex<FetchState>,
    metrics: JwtMetrics,
    task_started: AtomicBool,
    /// Turns true when the registry drops the set; the background task also stops when
    /// the set itself is dropped (the sender with it).
    stop: watch::Sender<bool>,
}

impl RemoteSet {
    fn new(remote: RemoteJwks, metrics: JwtMetrics) -> Self {
        Self {
            settings: ArcSwap::from_pointee(Settings::new(remote)),
            keys: ArcSwapOption::empty(),
            state: Mutex::default(),
            metrics,
            task_started: AtomicBool::new(false),
            stop: watch::Sender::new(false),
        }
    }

    /// The settings it is kept under ([`registry_key`]).
    pub fn registry_key(&self) -> String {
        registry_key(&self.settings.load().remote)
    }

    /// The last good keys, if a fetch ever succeeded.
    pub fn keys(&self) -> &ArcSwapOption<KeySet> {
        &self.keys
    }

    pub fn min_refresh(&self) -> Duration {
        Duration::from_secs(self.settings.load().remote.min_refresh_s)
    }

    pub fn timeout(&self) -> Duration {
        self.settings.load().timeout()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fetches started so far (tests).
    #[cfg(test)]
    pub fn fetches_started(&self) -> u64 {
        self.state().started
    }

    /// When the background task fetches next; `None` before it first sleeps (tests).
    #[cfg(test)]
    pub fn next_fetch_at(&self) -> Option<Instant> {
        self.state().next_at
    }

    /// Starts the background refresh task, once, on the caller's runtime. Called from
    /// requests, not from table builds, which may run outside a runtime.
    pub fn ensure_task(self: &Arc<Self>) {
        if self.task_started.load(Ordering::Relaxed)
            || self.task_started.swap(true, Ordering::AcqRel)
        {
            return;
        }
        tokio::spawn(refresh_loop(Arc::downgrade(self), self.stop.subscribe()));
    }

    /// The fetch to await for fresh keys: the one under way, or a new one unless one
    /// started less than `min_gap` ago (`None`: use the keys there are).
    pub fn fetch(self: &Arc<Self>, min_gap: Duration) -> Option<Shared<BoxFuture<'static, ()>>> {
        let mut st = self.state();
        // A finished future left behind (its task was cancelled before clearing it, as at
        // runtime shutdown) must not stand in for a fetch forever.
        if let Some(f) = st.in_flight.as_ref().filter(|f| f.peek().is_none()) {
            return Some(f.clone());
        }
        let now = Instant::now();
        if st
            .last_started
            .is_some_and(|last| now.saturating_duration_since(last) < min_gap)
        {
            return None;
        }
        st.last_started = Some(now);
        st.started += 1;
        let me = Arc::clone(self);
        // Spawned, so the fetch completes (and its keys are kept) even when every request
        // awaiting it gives up.
        let task = tokio::spawn(async move { me.fetch_and_keep().await });
        let shared = async move {
            let _ = task.await;
        }
        .boxed()
        .shared();
        st.in_flight = Some(shared.clone());
        Some(shared)
    }

    async fn fetch_and_keep(&self) {
        let settings = self.settings.load_full();
        let timeout = settings.timeout();
        let result = match tokio::time::timeout(timeout, fetch(&settings)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(timeout)),
        };
        let url = settings.remote.url.as_str();
        let mut st = self.state();
        st.in_flight = None;
        match result {
            Ok((set, max_age)) => {
                tracing::debug!(url, keys = set.len(), ?max_age, "JWKS fetched");
                let n = set.len();
                self.keys.store(Some(Arc::new(set)));
                st.failures = 0;
                st.max_age = max_age;
                if !st.retired {
                    self.metrics.keys.inc_by(n as i64 - st.counted as i64);
                    st.counted = n;
                }
                self.metrics.count_fetch("ok");
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                let held = self.keys.load().as_ref().map(|k| k.len());
                tracing::warn!(url, error = %e, keys_kept = ?held, failures = st.failures, "JWKS fetch failed; the last good keys stay in use");
                self.metrics.count_fetch("error");
            }
        }
    }

    /// When the background task fetches next.
    fn next_delay(&self) -> Duration {
        let st = self.state();
        let remote = &self.settings.load().remote;
        next_delay(
            st.failures,
            st.max_age,
            remote.min_refresh_s,
            remote.refresh_s,
        )
    }

    fn retire(&self) {
        let mut st = self.state();
        if !st.retired {
            st.retired = true;
            self.metrics.keys.dec_by(st.counted as i64);
            st.counted = 0;
        }
        drop(st);
        self.stop.send_replace(true);
    }
}

impl Drop for RemoteSet {
    fn drop(&mut self) {
        // A set dropped without being retired (its registry went away) stops counting.
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if !st.retired {
            self.metrics.keys.dec_by(st.counted as i64);
        }
    }
}

/// After a success: the answer's `max-age` within `[min_refresh_s, refresh_s]`, or
/// `refresh_s` without one. After failures: 1 s doubling, at most `refresh_s`. Never less
/// than a second, whatever the settings.
pub(crate) fn next_delay(
    failures: u32,
    max_age: Option<u64>,
    min_refresh_s: u64,
    refresh_s: u64,
) -> Duration {
    let ceiling = refresh_s.max(1);
    let secs = if failures > 0 {
        1u64.checked_shl(failures - 1)
            .unwrap_or(u64::MAX)
            .min(ceiling)
    } else {
        match max_age {
            Some(age) => age.clamp(min_refresh_s.min(ceiling), ceiling),
            None => ceiling,
        }
    };
    Duration::from_secs(secs.max(1))
}

/// Fetches the set again on its schedule until the set is retired or dropped. Holds only
/// a weak reference while it sleeps, so a set no table uses goes away with its last route.
async fn refresh_loop(set: Weak<RemoteSet>, mut stop: watch::Receiver<bool>) {
    loop {
        let Some(strong) = set.upgrade() else { return };
        if *stop.borrow() {
            return;
        }
        // Joins a fetch under way, and skips one a request made in the last second (its
        // outcome sets the next delay as well as a fetch of its own would).
        if let Some(f) = strong.fetch(COALESCE) {
            f.await;
        }
        let delay = strong.next_delay();
        strong.state().next_at = Some(Instant::now() + delay);
        drop(strong);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            // Retired, or the set (with its sender) dropped.
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One GET of the set: status 200 only, at most [`MAX_JWKS_BYTES`], a JWKS document.
/// Returns the keys and the answer's `max-age`.
async fn fetch(settings: &Settings) -> Result<(KeySet, Option<u64>), FetchError> {
    let client = settings.client()?;
    let uri: Uri = settings.remote.url.parse().map_err(|_| FetchError::Uri)?;
    let request = Request::get(uri)
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, "parapet")
        .body(Empty::new())
        .map_err(|_| FetchError::Uri)?;
    let response = client.request(request).await?;
    if response.status() != StatusCode::OK {
        return Err(FetchError::Status(response.status()));
    }
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
        return Err(FetchError::TooLarge);
    }
    let max_age = max_age(response.headers());
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                FetchError::TooLarge
            } else {
                FetchError::Body(e.to_string())
            }
        })?
        .to_bytes();
    let set = KeySet::parse(&body, &settings.remote.url)?;
    Ok((set, max_age))
}

/// `max-age` from `Cache-Control`; `no-cache` and `no-store` count as 0 (fetch again as
/// soon as allowed).
pub(crate) fn max_age(headers: &http::HeaderMap) -> Option<u64> {
    let mut found = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let directive = directive.trim();
            let (name, arg) = directive.split_once('=').unwrap_or((directive, ""));
            let name = name.trim();
            if name.eq_ignore_ascii_case("no-cache") || name.eq_ignore_ascii_case("no-store") {
                return Some(0);
            }
            if name.eq_ignore_ascii_case("max-age") && found.is_none() {
                found = arg.trim().trim_matches('"').parse::<u64>().ok();
            }
        }
    }
    found
}

/// What a remote set is kept under in the registry: its URL and every setting of it.
pub fn registry_key(remote: &RemoteJwks) -> String {
    format!(
        "{}\0{}\0{}\0{}\0{}",
        remote.url,
        remote.ca_pem.as_deref().unwrap_or(""),
        remote.refresh_s,
        remote.min_refresh_s,
        remote.timeout_ms
    )
}
