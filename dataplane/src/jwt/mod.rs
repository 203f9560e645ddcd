//! The **JWT** check (`auth.jwt`): a request passes with a signed token one of the route's
//! identity providers accepts. In order, for each request:
//!
//! 1. **Find the token.** Each provider's `token_sources`, in order; the first present is
//!    its token. A header with a prefix (`Bearer `, compared ASCII-case-insensitively)
//!    holds the token after it; a header with another scheme (`Basic …`) holds none
//!    (RFC 6750). The same header twice, a scheme with no token, or a token over 8 KiB is
//!    `Malformed`; no token anywhere is `Missing`.
//! 2. **Pick the provider.** With one provider, it checks every token (a token from another
//!    issuer fails its `iss` check: `UnknownIssuer`). With several, the token's `iss` is read
//!    *unverified* and the first provider whose own token names its issuer checks it; none
//!    does: `UnknownIssuer`.
//! 3. **Algorithm.** The header's `alg` must be one of the provider's `algorithms`, which
//!    can only be asymmetric: `none` and `HS*` are refused (`Algorithm`) before any key is
//!    looked at.
//! 4. **Key.** With a `kid`, the keys with that `kid` whose type fits the algorithm (RSA for
//!    `RS*`/`PS*`, P-256 for `ES256`, P-384 for `ES384`, Ed25519 for `EdDSA`) and whose own
//!    `alg`, if any, is the token's. A `kid` the set lacks is `UnknownKey`, after a remote
//!    set was fetched again to look for a rotated key (at most once per `min_refresh_s`); a
//!    `kid` whose keys all have the wrong type is `Algorithm`. Without a `kid`, the first
//!    [`MAX_KIDLESS_TRIES`] keys that fit are tried: sets with a single key (common for
//!    inline ones) need no `kid`, and a token cannot make the check try more than a few.
//!    A remote set never fetched yet is awaited (up to its timeout); still none:
//!    `KeysUnavailable`.
//! 5. **Signature and times**, by `jsonwebtoken`: `BadSignature`; `exp` is required (a token
//!    without one, or with one that is not a number, is `Malformed`: a token that never
//!    expires is not accepted) and checked with `clock_skew_s` of leeway (`Expired`), `nbf`
//!    when present (`NotYetValid`), `iss` must be the provider's (`UnknownIssuer`, also when
//!    absent), and with `audiences`, `aud` must hold one (`WrongAudience`, also when absent).
//! 6. **Required claims** (`Claims`, a 403: the token is good but not good enough).
//! 7. **Headers for the upstream**: claims copied per `claim_headers`, every claim header
//!    name of every provider removed first (a client may not forge them), and the header
//!    the token came in removed unless `forward_token`.
//!
//! Tokens may also come from a cookie (the first of that name) or a query parameter (the
//! first, percent-decoded). Remote key sets live in the [`JwksRegistry`], which keeps them
//! across tables and fresh (its module, `jwks.rs`, says how); the caller builds one per
//! process, passes it to every [`JwtAuth::new`], and after installing a table calls
//! [`JwksRegistry::retain`] with the keys the table's routes use ([`JwtAuth::jwks_keys`]).

mod claims;
mod jwks;
mod metrics;
mod refusal;
mod source;
mod token;

#[cfg(test)]
mod tests;

use std::{borrow::Cow, fmt, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Validation, errors::ErrorKind};
use parapet_crds::snapshot::{JwksSource, JwtCheck, JwtProvider};
use serde::Deserialize;
use serde_json::{Map, Value};

pub use jwks::{JwksRegistry, registry_key};
use jwks::{KeySet, RemoteSet};
pub use metrics::JwtMetrics;
pub use refusal::Refusal;
use token::Alg;

/// A token without a `kid` is tried against at most this many keys that fit its algorithm
/// (and one with a `kid` against at most this many keys sharing it): a token cannot make
/// the check run more signature verifications than this.
pub const MAX_KIDLESS_TRIES: usize = 4;
/// `clock_skew_s` is held to a day: more is a mistake, and the leeway is subtracted from
/// the current time.
pub const MAX_LEEWAY_S: u64 = 24 * 3600;
/// With no keys yet, requests ask for a fetch at most this often.
const NO_KEYS_RETRY: Duration = Duration::from_secs(1);

/// What a request that passed carries on.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The provider's name (`namespace/route/provider`).
    pub provider: Arc<str>,
    /// `sub`, when it is a string.
    pub subject: Option<Box<str>>,
    /// Headers to set on the upstream request (`claim_headers`); a claim that is absent, an
    /// object, or not a valid header value sets none.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Headers to remove before forwarding (before `set_headers` are set): every
    /// `claim_headers` name of every provider of the route, so a client cannot forge one,
    /// and, unless the provider forwards the token, the header the token came in. A token
    /// from a cookie or query parameter is left in place: removing it would mean rewriting
    /// the `Cookie` header or the request target.
    pub remove_headers: Vec<HeaderName>,
}

/// Where a provider's keys are.
enum Keys {
    Inline(Arc<KeySet>),
    Remote(Arc<RemoteSet>),
}

/// One provider, ready to check tokens.
struct Provider {
    name: Arc<str>,
    issuer: Box<str>,
    keys: Keys,
    /// Each accepted algorithm with its validation, built once.
    algorithms: Vec<(Alg, Validation)>,
    /// Indexes into [`JwtAuth::sources`], in order.
    sources: Vec<usize>,
    required: Vec<claims::Requirement>,
    headers: Vec<claims::HeaderFromClaim>,
    forward_token: bool,
    /// `clock_skew_s`, held to [`MAX_LEEWAY_S`].
    leeway: u64,
}

impl Provider {
    /// The generation of the key set in force (0: none yet).
    fn generation(&self) -> u64 {
        match &self.keys {
            Keys::Inline(set) => set.generation,
            Keys::Remote(set) => set.keys().load().as_deref().map_or(0, |k| k.generation),
        }
    }

    fn new(
        p: &JwtProvider,
        registry: &Arc<JwksRegistry>,
        sources: &mut Vec<source::Source>,
    ) -> Self {
        let name = p.name.as_str();
        let keys = match &p.jwks {
            JwksSource::Inline(json) => Keys::Inline(Arc::new(
                KeySet::parse(json.as_bytes(), name).unwrap_or_else(|e| {
                    tracing::warn!(provider = name, error = %e, "jwt provider's JWKS is unusable; it accepts no token");
                    KeySet::default()
                }),
            )),
            JwksSource::Remote(r) => Keys::Remote(registry.set_for(r)),
        };
        let leeway = p.clock_skew_s.min(MAX_LEEWAY_S);
        let mut algorithms: Vec<(Alg, Validation)> = Vec::new();
        for a in &p.algorithms {
            match Alg::parse(a) {
                Some(alg) if !algorithms.iter().any(|(x, _)| *x == alg) => {
                    algorithms.push((alg, validation(alg, p, leeway)))
                }
                Some(_) => {}
                None => {
                    tracing::warn!(provider = name, algorithm = %a, "jwt algorithm is not accepted (only RS*, PS*, ES256, ES384, EdDSA); skipped")
                }
            }
        }
        if algorithms.is_empty() {
            tracing::warn!(
                provider = name,
                "jwt provider has no usable algorithm; it accepts no token"
            );
        }
        let mut mine = Vec::new();
        for s in &p.token_sources {
            let Some(s) = source::Source::new(s, name) else {
                continue;
            };
            let i = match sources.iter().position(|x| *x == s) {
                Some(i) => i,
                None => {
                    sources.push(s);
                    sources.len() - 1
                }
            };
            if !mine.contains(&i) {
                mine.push(i);
            }
        }
        if mine.is_empty() {
            tracing::warn!(
                provider = name,
                "jwt provider has no usable token source; it accepts no token"
            );
        }
        Self {
            name: Arc::from(name),
            issuer: p.issuer.as_str().into(),
            keys,
            algorithms,
            sources: mine,
            required: p
                .required_claims
                .iter()
                .map(claims::Requirement::new)
                .collect(),
            headers: p
                .claim_headers
                .iter()
                .filter_map(|c| claims::HeaderFromClaim::new(c, name))
                .collect(),
            forward_token: p.forward_token,
            leeway,
        }
    }

    /// Whether the claims beyond `sub` are read (a whole JSON object) or skipped.
    fn needs_claims(&self) -> bool {
        !self.required.is_empty() || !self.headers.is_empty()
    }

    /// Verifies against one key set. `Err(UnknownKey)` only when the token's `kid` (or,
    /// without one, its algorithm) matches no key: the case a fresher set may cure.
    fn check(
        &self,
        set: &KeySet,
        token: &str,
        kid: Option<&str>,
        alg: Alg,
        v: &Validation,
    ) -> Result<Checked, Refusal> {
        let mut tried = 0;
        let mut kid_seen = false;
        for key in &set.keys {
            if let Some(kid) = kid {
                if key.kid.as_deref() != Some(kid) {
                    continue;
                }
                kid_seen = true;
            }
            if !key.fits(alg) {
                continue;
            }
            if tried == MAX_KIDLESS_TRIES {
                break;
            }
            tried += 1;
            match self.decode(token, &key.decoding, v) {
                Err(Refusal::BadSignature) => continue,
                Ok(mut checked) => {
                    checked.generation = set.generation;
                    return Ok(checked);
                }
                other => return other,
            }
        }
        Err(if tried > 0 {
            Refusal::BadSignature
        } else if kid_seen {
            Refusal::Algorithm
        } else {
            Refusal::UnknownKey
        })
    }

    /// What `jsonwebtoken` lets through and this check does not: an `iss` that is an array
    /// holding the issuer (it must be the issuer, a string), and an `nbf` that is not a
    /// number (it would go unchecked).
    fn issued_here(&self, iss: Option<&Value>, nbf: Option<&Value>) -> Result<(), Refusal> {
        match iss {
            Some(Value::String(s)) if *s == *self.issuer => {}
            _ => return Err(Refusal::UnknownIssuer),
        }
        match nbf {
            None | Some(Value::Number(_)) => Ok(()),
            Some(_) => Err(Refusal::Malformed),
        }
    }

    fn decode(
        &self,
        token: &str,
        key: &jsonwebtoken::DecodingKey,
        v: &Validation,
    ) -> Result<Checked, Refusal> {
        if self.needs_claims() {
            let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, v)
                .map_err(|e| refusal(&e))?;
            let subject = match data.claims.get("sub") {
                Some(Value::String(s)) => Some(s.as_str().into()),
                _ => None,
            };
            self.issued_here(data.claims.get("iss"), data.claims.get("nbf"))?;
            let exp = data.claims.get("exp").map_or(0, seconds);
            Ok(Checked {
                subject,
                claims: Some(data.claims),
                exp,
                generation: 0,
            })
        } else {
            /// Only `sub`; the other members are skipped without being built.
            #[derive(Deserialize)]
            struct Lean {
                #[serde(default)]
                sub: Option<Value>,
                #[serde(default)]
                exp: Option<Value>,
                #[serde(default)]
                iss: Option<Value>,
                #[serde(default)]
                nbf: Option<Value>,
            }
            let data = jsonwebtoken::decode::<Lean>(token, key, v).map_err(|e| refusal(&e))?;
            self.issued_here(data.claims.iss.as_ref(), data.claims.nbf.as_ref())?;
            let subject = match data.claims.sub {
                Some(Value::String(s)) => Some(s.into_boxed_str()),
                _ => None,
            };
            Ok(Checked {
                subject,
                claims: None,
                exp: data.claims.exp.as_ref().map_or(0, seconds),
                generation: 0,
            })
        }
    }
}

/// A verified token's claims.
struct Checked {
    subject: Option<Box<str>>,
    /// `None` when the provider reads no claim beyond `sub`.
    claims: Option<Map<String, Value>>,
    /// `exp`, in seconds since the epoch.
    exp: u64,
    /// The key set that verified it ([`KeySet::generation`]).
    generation: u64,
}

/// A token verified before, kept so that the next request carrying it costs a hash and a
/// lookup rather than a signature check.
struct Remembered {
    provider: usize,
    exp: u64,
    generation: u64,
    verified: Verified,
}

/// Verified tokens kept per route at most; each is dropped at its `exp` (or after
/// [`REMEMBER_AT_MOST`]) and never outlives the key set that verified it.
const REMEMBERED: u64 = 10_000;
const REMEMBER_AT_MOST: Duration = Duration::from_secs(600);

/// The validation `jsonwebtoken` runs after the signature: `exp` and `iss` required, `aud`
/// required when the provider names audiences and ignored when it names none, `nbf`
/// checked when present.
fn validation(alg: Alg, p: &JwtProvider, leeway: u64) -> Validation {
    let mut v = Validation::new(alg.jwt());
    v.leeway = leeway;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_issuer(&[p.issuer.as_str()]);
    let mut required = vec!["exp", "iss"];
    if p.audiences.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&p.audiences);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

/// `jsonwebtoken`'s verdict as a refusal.
fn refusal(e: &jsonwebtoken::errors::Error) -> Refusal {
    match e.kind() {
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidAudience => Refusal::WrongAudience,
        ErrorKind::InvalidIssuer => Refusal::UnknownIssuer,
        ErrorKind::InvalidSignature => Refusal::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => Refusal::Algorithm,
        ErrorKind::MissingRequiredClaim(c) => match c.as_str() {
            "iss" => Refusal::UnknownIssuer,
            "aud" => Refusal::WrongAudience,
            // `exp`: a token that never expires is not a well-formed token here.
            _ => Refusal::Malformed,
        },
        // A published key ring cannot use: no token verifies with it.
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Crypto(_) => Refusal::BadSignature,
        _ => Refusal::Malformed,
    }
}

/// A route's providers, built once per table. Building needs no runtime and never fails:
/// a provider whose configuration is unusable accepts no token (and says so in the log).
/// Remote key sets are fetched on first use.
pub struct JwtAuth {
    providers: Vec<Provider>,
    /// Tokens verified before, by SHA-256 of (source, token).
    remembered: moka::sync::Cache<[u8; 32], Arc<Remembered>>,
    /// Every provider's token sources, each once.
    sources: Vec<source::Source>,
    /// Every provider's claim header names, each once: removed from every request.
    claim_headers: Vec<HeaderName>,
    /// Every header a token may come in: removed once a token passed (but the one it came
    /// in, when its provider forwards it), so an unchecked token in another of them never
    /// reaches the backend.
    token_headers: Vec<HeaderName>,
}

impl fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuth")
            .field(
                "providers",
                &self.providers.iter().map(|p| &*p.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl JwtAuth {
    pub fn new(check: &JwtCheck, registry: &Arc<JwksRegistry>) -> JwtAuth {
        let mut sources = Vec::new();
        let providers: Vec<Provider> = check
            .providers
            .iter()
            .map(|p| Provider::new(p, registry, &mut sources))
            .collect();
        let mut claim_headers: Vec<HeaderName> = Vec::new();
        for h in providers.iter().flat_map(|p| &p.headers) {
            if !claim_headers.contains(&h.header) {
                claim_headers.push(h.header.clone());
            }
        }
        let token_headers = sources.iter().filter_map(|s| s.header().cloned()).collect();
        JwtAuth {
            providers,
            sources,
            claim_headers,
            token_headers,
            remembered: moka::sync::Cache::builder()
                .max_capacity(REMEMBERED)
                .time_to_live(REMEMBER_AT_MOST)
                .build(),
        }
    }

    /// The registry keys ([`registry_key`]) of the remote key sets this route uses, for
    /// [`JwksRegistry::retain`].
    pub fn jwks_keys(&self) -> impl Iterator<Item = String> + '_ {
        self.providers.iter().filter_map(|p| match &p.keys {
            Keys::Remote(set) => Some(set.registry_key()),
            Keys::Inline(_) => None,
        })
    }

    /// Checks the request's token; see the module documentation for the order.
    pub async fn verify(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<Verified, Refusal> {
        let (pi, source, token) = self.pick(headers, query)?;
        let p = &self.providers[pi];
        let digest: [u8; 32] = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update([u8::try_from(source).unwrap_or(u8::MAX)]);
            h.update(token.as_bytes());
            h.finalize().into()
        };
        if let Some(r) = self.remembered.get(&digest)
            && r.provider == pi
            && r.generation == p.generation()
            && unix_now() <= r.exp.saturating_add(p.leeway)
        {
            return Ok(r.verified.clone());
        }
        let parts = token::split(&token)?;
        let header = token::header(parts.header)?;
        let (alg, v) = header
            .alg
            .and_then(|a| p.algorithms.iter().find(|(x, _)| *x == a))
            .ok_or(Refusal::Algorithm)?;
        let kid = header.kid.as_deref();
        let checked = match &p.keys {
            Keys::Inline(set) => p.check(set, &token, kid, *alg, v)?,
            Keys::Remote(set) => check_remote(p, set, &token, kid, *alg, v).await?,
        };
        if let Some(claims) = &checked.claims
            && !p.required.iter().all(|r| r.holds(claims))
        {
            return Err(Refusal::Claims);
        }
        let mut remove_headers = self.claim_headers.clone();
        let used = self.sources[source].header();
        for h in &self.token_headers {
            let forwarded = p.forward_token && used == Some(h);
            if !forwarded && !remove_headers.contains(h) {
                remove_headers.push(h.clone());
            }
        }
        let set_headers = match &checked.claims {
            Some(claims) => p
                .headers
                .iter()
                .filter_map(|h| Some((h.header.clone(), h.value(claims)?)))
                .collect(),
            None => Vec::new(),
        };
        let verified = Verified {
            provider: p.name.clone(),
            subject: checked.subject,
            set_headers,
            remove_headers,
        };
        if checked.generation != 0 {
            self.remembered.insert(
                digest,
                Arc::new(Remembered {
                    provider: pi,
                    exp: checked.exp,
                    generation: checked.generation,
                    verified: verified.clone(),
                }),
            );
        }
        Ok(verified)
    }

    /// The provider that checks the request, the source its token came from, and the
    /// token.
    fn pick<'a>(
        &self,
        headers: &'a HeaderMap,
        query: Option<&'a str>,
    ) -> Result<(usize, usize, Cow<'a, str>), Refusal> {
        if let [p] = self.providers.as_slice() {
            for &s in &p.sources {
                if let Some(t) = self.sources[s].extract(headers, query)? {
                    return Ok((0, s, t));
                }
            }
            return Err(Refusal::Missing);
        }
        // Several providers: each source is read (and its token's `iss` peeked) at most
        // once, however many providers look there.
        type Peeked<'a> = Result<Option<(Cow<'a, str>, Option<String>)>, Refusal>;
        let mut seen: Vec<Option<Peeked<'a>>> = (0..self.sources.len()).map(|_| None).collect();
        let mut refusal = Refusal::Missing;
        for (pi, p) in self.providers.iter().enumerate() {
            for &s in &p.sources {
                let peeked = seen[s].get_or_insert_with(|| {
                    let Some(t) = self.sources[s].extract(headers, query)? else {
                        return Ok(None);
                    };
                    let iss = token::issuer(token::split(&t)?.payload)?;
                    Ok(Some((t, iss)))
                });
                match peeked {
                    // Absent here: this provider's next source.
                    Ok(None) => continue,
                    Ok(Some((t, iss))) => {
                        if iss.as_deref() == Some(&*p.issuer) {
                            return Ok((pi, s, t.clone()));
                        }
                        refusal = Refusal::UnknownIssuer;
                    }
                    Err(e) => {
                        if refusal == Refusal::Missing {
                            refusal = *e;
                        }
                    }
                }
                // This provider's token is the first present one, and it is not for it.
                break;
            }
        }
        Err(refusal)
    }
}

/// Verifies against a remote set: its current keys, read without a lock; on an unknown
/// `kid`, the set fetched again (unless it was within `min_refresh_s`) and looked up once
/// more; with no keys yet, the first fetch awaited.
async fn check_remote(
    p: &Provider,
    set: &Arc<RemoteSet>,
    token: &str,
    kid: Option<&str>,
    alg: Alg,
    v: &Validation,
) -> Result<Checked, Refusal> {
    set.ensure_task();
    // The guard is dropped at the end of this statement: nothing is held across an await.
    let first = set
        .keys()
        .load()
        .as_deref()
        .map(|keys| p.check(keys, token, kid, alg, v));
    let gap = match first {
        Some(Err(Refusal::UnknownKey)) if kid.is_some() => set.min_refresh(),
        Some(result) => return result,
        None => NO_KEYS_RETRY,
    };
    if let Some(fetch) = set.fetch(gap) {
        // The fetch is bounded by the same timeout; this bounds the wait if it started
        // earlier under other settings.
        let _ = tokio::time::timeout(set.timeout(), fetch).await;
    }
    match set.keys().load().as_deref() {
        Some(keys) => p.check(keys, token, kid, alg, v),
        None => Err(Refusal::KeysUnavailable),
    }
}

/// A NumericDate claim in whole seconds (0 when it is not a number).
fn seconds(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        .unwrap_or(0)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
