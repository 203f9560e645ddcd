//! The JWT check against real tokens: signed here with `jsonwebtoken` (RSA with a checked-in
//! 2048-bit key, `testdata/rsa-2048.der`, made once with `openssl genrsa -traditional 2048`
//! and converted to PKCS#1 DER, its modulus in `rsa-2048.n`; EC and Ed25519 keys generated
//! per test with rcgen), and remote key sets served by a small HTTP server on 127.0.0.1.
//! Time jumps use tokio's paused clock only while no I/O is awaited, so a fetch is never
//! timed out by an auto-advance.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Response, StatusCode,
    header::{AUTHORIZATION, CACHE_CONTROL, COOKIE},
};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey};
use parapet_crds::snapshot::{
    ClaimHeader, ClaimRequirement, JwksSource, JwtCheck, JwtProvider, RemoteJwks, TokenSource,
};
use serde_json::{Value, json};
use tokio::{sync::watch, task::JoinHandle, time::Instant};

use super::{
    JwksRegistry, JwtAuth, JwtMetrics, Keys, MAX_KIDLESS_TRIES, Refusal, Verified,
    jwks::{KeySet, MAX_KEYS, RemoteSet, max_age, next_delay},
    token::{b64url_decode, split},
};

const RSA_DER: &[u8] = include_bytes!("testdata/rsa-2048.der");
const RSA_N: &str = include_str!("testdata/rsa-2048.n");
const ISS: &str = "https://idp.example.com/realms/main";
const AUD: &str = "orders-api";

// ---- signing -------------------------------------------------------------------------

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A private key to sign with and its public JWK.
struct Signer {
    kid: Option<String>,
    key: EncodingKey,
    jwk: Value,
}

impl Signer {
    fn rsa(kid: &str) -> Self {
        Self {
            kid: Some(kid.into()),
            key: EncodingKey::from_rsa_der(RSA_DER),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "n": RSA_N.trim(), "e": "AQAB"}),
        }
    }

    fn ec(kid: &str, p384: bool) -> Self {
        let alg = if p384 {
            &rcgen::PKCS_ECDSA_P384_SHA384
        } else {
            &rcgen::PKCS_ECDSA_P256_SHA256
        };
        let kp = rcgen::KeyPair::generate_for(alg).unwrap();
        let raw = kp.public_key_raw();
        let n = (raw.len() - 1) / 2;
        Self {
            kid: Some(kid.into()),
            key: EncodingKey::from_ec_der(&kp.serialize_der()),
            jwk: json!({
                "kty": "EC", "kid": kid, "crv": if p384 { "P-384" } else { "P-256" },
                "x": b64(&raw[1..1 + n]), "y": b64(&raw[1 + n..]),
            }),
        }
    }

    fn ed(kid: &str) -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        Self {
            kid: Some(kid.into()),
            key: EncodingKey::from_ed_der(&kp.serialize_der()),
            jwk: json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(kp.public_key_raw())}),
        }
    }

    fn without_kid(mut self) -> Self {
        self.kid = None;
        if let Some(o) = self.jwk.as_object_mut() {
            o.remove("kid");
        }
        self
    }

    fn sign(&self, alg: Algorithm, claims: &Value) -> String {
        let mut h = jsonwebtoken::Header::new(alg);
        h.kid = self.kid.clone();
        jsonwebtoken::encode(&h, claims, &self.key).unwrap()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Good claims, with `extra` members added or replaced (`null` removes one).
fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISS, "aud": AUD, "sub": "alice", "iat": now(), "exp": now() + 600});
    let o = c.as_object_mut().unwrap();
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            o.remove(k);
        } else {
            o.insert(k.clone(), v.clone());
        }
    }
    c
}

/// A token built by hand: any header, any payload, any signature.
fn raw_token(header: &Value, payload: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    )
}

// ---- configuration -------------------------------------------------------------------

fn inline(signers: &[&Signer]) -> JwksSource {
    let keys: Vec<Value> = signers.iter().map(|s| s.jwk.clone()).collect();
    JwksSource::Inline(json!({ "keys": keys }).to_string())
}

fn provider(jwks: JwksSource) -> JwtProvider {
    JwtProvider {
        name: "shop/orders/idp".into(),
        issuer: ISS.into(),
        audiences: vec![AUD.into()],
        jwks,
        algorithms: [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
        ]
        .map(String::from)
        .to_vec(),
        clock_skew_s: 30,
        token_sources: vec![TokenSource::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        }],
        required_claims: vec![],
        claim_headers: vec![],
        forward_token: false,
    }
}

fn auth_with(registry: &Arc<JwksRegistry>, providers: Vec<JwtProvider>) -> JwtAuth {
    JwtAuth::new(&JwtCheck { providers }, registry)
}

fn auth(providers: Vec<JwtProvider>) -> JwtAuth {
    auth_with(&JwksRegistry::new(JwtMetrics::default()), providers)
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

async fn refused(auth: &JwtAuth, token: &str) -> Refusal {
    auth.verify(&bearer(token), None).await.unwrap_err()
}

async fn passes(auth: &JwtAuth, token: &str) -> Verified {
    auth.verify(&bearer(token), None).await.unwrap()
}

// ---- tokens, keys and algorithms -----------------------------------------------------

#[tokio::test]
async fn valid_tokens_of_every_key_type_pass() {
    let rsa = Signer::rsa("rsa-1");
    let p256 = Signer::ec("p256-1", false);
    let p384 = Signer::ec("p384-1", true);
    let ed = Signer::ed("ed-1");
    let auth = auth(vec![provider(inline(&[&rsa, &p256, &p384, &ed]))]);
    for (signer, alg) in [
        (&rsa, Algorithm::RS256),
        (&rsa, Algorithm::RS512),
        (&rsa, Algorithm::PS256),
        (&p256, Algorithm::ES256),
        (&p384, Algorithm::ES384),
        (&ed, Algorithm::EdDSA),
    ] {
        let v = passes(&auth, &signer.sign(alg, &claims(json!({})))).await;
        assert_eq!(&*v.provider, "shop/orders/idp", "{alg:?}");
        assert_eq!(v.subject.as_deref(), Some("alice"));
        assert!(v.set_headers.is_empty());
        assert_eq!(
            v.remove_headers,
            vec![AUTHORIZATION],
            "the token is not forwarded"
        );
    }
}

#[tokio::test]
async fn expiry_and_not_before_are_checked_with_the_leeway() {
    let k = Signer::ec("k", false);
    let auth = auth(vec![provider(inline(&[&k]))]);
    let sign = |extra| k.sign(Algorithm::ES256, &claims(extra));
    // clock_skew_s is 30.
    passes(&auth, &sign(json!({"exp": now() - 10}))).await;
    assert_eq!(
        refused(&auth, &sign(json!({"exp": now() - 120}))).await,
        Refusal::Expired
    );
    passes(&auth, &sign(json!({"nbf": now() + 10}))).await;
    assert_eq!(
        refused(&auth, &sign(json!({"nbf": now() + 300}))).await,
        Refusal::NotYetValid
    );
    // A token that never expires is not accepted.
    assert_eq!(
        refused(&auth, &sign(json!({"exp": null}))).await,
        Refusal::Malformed
    );
    assert_eq!(
        refused(&auth, &sign(json!({"exp": "tomorrow"}))).await,
        Refusal::Malformed
    );
}

#[tokio::test]
async fn issuer_and_audience_must_match() {
    let k = Signer::ec("k", false);
    let auth = auth(vec![provider(inline(&[&k]))]);
    let sign = |extra| k.sign(Algorithm::ES256, &claims(extra));
    assert_eq!(
        refused(&auth, &sign(json!({"iss": "https://evil.example"}))).await,
        Refusal::UnknownIssuer
    );
    assert_eq!(
        refused(&auth, &sign(json!({"iss": null}))).await,
        Refusal::UnknownIssuer
    );
    assert_eq!(
        refused(&auth, &sign(json!({"aud": "billing-api"}))).await,
        Refusal::WrongAudience
    );
    assert_eq!(
        refused(&auth, &sign(json!({"aud": null}))).await,
        Refusal::WrongAudience
    );
    passes(&auth, &sign(json!({"aud": ["billing-api", AUD]}))).await;

    // No audiences configured: `aud` is not looked at.
    let mut p = provider(inline(&[&k]));
    p.audiences.clear();
    let open = self::auth(vec![p]);
    passes(&open, &sign(json!({"aud": "anything"}))).await;
    passes(&open, &sign(json!({"aud": null}))).await;
}

#[tokio::test]
async fn a_tampered_token_or_a_foreign_key_fails_the_signature() {
    let k = Signer::ec("k", false);
    let auth = auth(vec![provider(inline(&[&k]))]);
    let good = k.sign(Algorithm::ES256, &claims(json!({})));
    let [h, _, s]: [&str; 3] = good.split('.').collect::<Vec<_>>().try_into().unwrap();
    let forged = format!(
        "{h}.{}.{s}",
        b64(claims(json!({"sub": "mallory"})).to_string().as_bytes())
    );
    assert_eq!(refused(&auth, &forged).await, Refusal::BadSignature);
    // Another key under the same kid.
    let impostor = Signer::ec("k", false);
    assert_eq!(
        refused(&auth, &impostor.sign(Algorithm::ES256, &claims(json!({})))).await,
        Refusal::BadSignature
    );
    // RSA too: a signature from the right key over other bytes.
    let rsa = Signer::rsa("r");
    let auth = self::auth(vec![provider(inline(&[&rsa]))]);
    let good = rsa.sign(Algorithm::RS256, &claims(json!({})));
    let other = rsa.sign(Algorithm::RS256, &claims(json!({"sub": "mallory"})));
    let spliced = format!(
        "{}.{}",
        other.rsplit_once('.').unwrap().0,
        good.rsplit_once('.').unwrap().1
    );
    assert_eq!(refused(&auth, &spliced).await, Refusal::BadSignature);
}

#[tokio::test]
async fn algorithms_outside_the_list_none_and_hmac_are_refused() {
    let rsa = Signer::rsa("rsa-1");
    let ec = Signer::ec("ec-1", false);
    let mut p = provider(inline(&[&rsa, &ec]));
    p.algorithms = vec!["ES256".into()];
    let auth = auth(vec![p]);
    passes(&auth, &ec.sign(Algorithm::ES256, &claims(json!({})))).await;
    assert_eq!(
        refused(&auth, &rsa.sign(Algorithm::RS256, &claims(json!({})))).await,
        Refusal::Algorithm
    );

    let all = self::auth(vec![provider(inline(&[&rsa, &ec]))]);
    // `alg: none`, unsigned, under a kid the set has.
    let none = raw_token(
        &json!({"alg": "none", "kid": "rsa-1"}),
        &claims(json!({})),
        "",
    );
    assert_eq!(refused(&all, &none).await, Refusal::Algorithm);
    // HS256 keyed with the RSA modulus (the classic confusion) and with a plain secret.
    for secret in [RSA_N.trim().as_bytes(), b"secret".as_slice()] {
        let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
        h.kid = Some("rsa-1".into());
        let t = jsonwebtoken::encode(&h, &claims(json!({})), &EncodingKey::from_secret(secret))
            .unwrap();
        assert_eq!(refused(&all, &t).await, Refusal::Algorithm);
    }
    // A configured algorithm this check never accepts is dropped, not honoured.
    let mut p = provider(inline(&[&rsa]));
    p.algorithms = vec!["HS256".into(), "none".into()];
    let hmac_only = self::auth(vec![p]);
    assert_eq!(
        refused(&hmac_only, &rsa.sign(Algorithm::RS256, &claims(json!({})))).await,
        Refusal::Algorithm
    );
}

#[tokio::test]
async fn the_key_a_kid_names_must_fit_the_algorithm() {
    let rsa = Signer::rsa("shared");
    let auth = auth(vec![provider(inline(&[&rsa]))]);
    // An EC signature under the RSA key's kid.
    let ec = Signer::ec("shared", false);
    assert_eq!(
        refused(&auth, &ec.sign(Algorithm::ES256, &claims(json!({})))).await,
        Refusal::Algorithm
    );
    // A P-384 token against a P-256 key of the same kid.
    let p256 = Signer::ec("ec", false);
    let auth = self::auth(vec![provider(inline(&[&p256]))]);
    let p384 = Signer::ec("ec", true);
    assert_eq!(
        refused(&auth, &p384.sign(Algorithm::ES384, &claims(json!({})))).await,
        Refusal::Algorithm
    );
    // A JWK that names its algorithm verifies that one only.
    let mut pinned = Signer::rsa("pinned");
    pinned.jwk["alg"] = json!("RS256");
    let auth = self::auth(vec![provider(inline(&[&pinned]))]);
    passes(&auth, &pinned.sign(Algorithm::RS256, &claims(json!({})))).await;
    assert_eq!(
        refused(&auth, &pinned.sign(Algorithm::PS256, &claims(json!({})))).await,
        Refusal::Algorithm
    );
}

#[tokio::test]
async fn unknown_kid_and_tokens_without_one() {
    let a = Signer::ec("a", false);
    let auth = auth(vec![provider(inline(&[&a]))]);
    let stranger = Signer::ec("b", false);
    assert_eq!(
        refused(&auth, &stranger.sign(Algorithm::ES256, &claims(json!({})))).await,
        Refusal::UnknownKey
    );

    // No kid: the keys that fit are tried, at most MAX_KIDLESS_TRIES of them.
    let keys: Vec<Signer> = (0..=MAX_KIDLESS_TRIES)
        .map(|_| Signer::ec("x", false).without_kid())
        .collect();
    let refs: Vec<&Signer> = keys.iter().collect();
    let auth = self::auth(vec![provider(inline(&refs))]);
    passes(&auth, &keys[1].sign(Algorithm::ES256, &claims(json!({})))).await;
    passes(
        &auth,
        &keys[MAX_KIDLESS_TRIES - 1].sign(Algorithm::ES256, &claims(json!({}))),
    )
    .await;
    assert_eq!(
        refused(
            &auth,
            &keys[MAX_KIDLESS_TRIES].sign(Algorithm::ES256, &claims(json!({})))
        )
        .await,
        Refusal::BadSignature,
        "the key past the bound is never tried"
    );
    // No kid and no key of the token's type.
    let ed = Signer::ed("e").without_kid();
    assert_eq!(
        refused(&auth, &ed.sign(Algorithm::EdDSA, &claims(json!({})))).await,
        Refusal::UnknownKey
    );
}

#[tokio::test]
async fn malformed_tokens() {
    let k = Signer::ec("k", false);
    let auth = auth(vec![provider(inline(&[&k]))]);
    let good = k.sign(Algorithm::ES256, &claims(json!({})));
    let body = claims(json!({}));
    for bad in [
        "abc".to_string(),
        "a.b".to_string(),
        format!("{good}.x.y"),
        format!("{good}="),
        format!("{good}{}", "A".repeat(9000)),
        format!("!{good}"),
        raw_token(&json!("not an object"), &body, "c2ln"),
        raw_token(
            &json!({"alg": "ES256", "kid": "k", "crit": ["exp"]}),
            &body,
            "c2ln",
        ),
        format!(
            "{}.{}.c2ln",
            b64(b"{not json"),
            b64(body.to_string().as_bytes())
        ),
        format!(
            "{}.{}.c2ln",
            b64(br#"{"kid":"k"}"#),
            b64(body.to_string().as_bytes())
        ),
    ] {
        assert_eq!(refused(&auth, &bad).await, Refusal::Malformed, "{bad:.80}");
    }
    // A good signature over a payload that is not JSON.
    let signed_garbage = {
        let h = b64(br#"{"alg":"ES256","kid":"k"}"#);
        let p = b64(b"not json");
        let sig =
            jsonwebtoken::crypto::sign(format!("{h}.{p}").as_bytes(), &k.key, Algorithm::ES256)
                .unwrap();
        format!("{h}.{p}.{sig}")
    };
    assert_eq!(refused(&auth, &signed_garbage).await, Refusal::Malformed);
}

#[tokio::test]
async fn a_bad_inline_jwks_or_config_accepts_no_token() {
    let k = Signer::ec("k", false);
    let t = k.sign(Algorithm::ES256, &claims(json!({})));
    let broken = auth(vec![provider(JwksSource::Inline("{not json".into()))]);
    assert_eq!(refused(&broken, &t).await, Refusal::UnknownKey);
    let mut p = provider(inline(&[&k]));
    p.token_sources = vec![TokenSource::Header {
        name: "bad header\n".into(),
        prefix: String::new(),
    }];
    assert_eq!(refused(&auth(vec![p]), &t).await, Refusal::Missing);
    let mut p = provider(inline(&[&k]));
    p.algorithms.clear();
    assert_eq!(refused(&auth(vec![p]), &t).await, Refusal::Algorithm);
}

// ---- claims --------------------------------------------------------------------------

fn require(claim: &str, any_of: &[&str]) -> ClaimRequirement {
    ClaimRequirement {
        claim: claim.into(),
        any_of: any_of.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test]
async fn required_claims() {
    let k = Signer::ec("k", false);
    let mut p = provider(inline(&[&k]));
    p.required_claims = vec![
        require("scope", &["orders:write", "admin"]),
        require("realm_access.roles", &["buyer"]),
        require("https://example.com/tenant", &["acme"]),
        require("email_verified", &["true"]),
        require("level", &["3"]),
        require("sid", &[]),
    ];
    let auth = auth(vec![p]);
    let all = json!({
        "scope": "openid orders:write profile",
        "realm_access": {"roles": ["viewer", "buyer"]},
        "https://example.com/tenant": "acme",
        "email_verified": true,
        "level": 3,
        "sid": "s-1",
    });
    let sign = |extra: &Value| k.sign(Algorithm::ES256, &claims(extra.clone()));
    passes(&auth, &sign(&all)).await;
    // A scope equal to a wanted value as a whole also counts.
    let mut whole = all.clone();
    whole["scope"] = json!("admin");
    passes(&auth, &sign(&whole)).await;
    for (claim, value) in [
        ("scope", json!("openid orders:read")),
        ("scope", json!("orders:write-ish")),
        ("realm_access", json!({"roles": ["viewer"]})),
        ("realm_access", json!({"roles": "viewer buyer-not"})),
        ("realm_access", json!(["buyer"])),
        ("https://example.com/tenant", json!("globex")),
        ("email_verified", json!(false)),
        ("level", json!(4)),
        ("sid", Value::Null),
    ] {
        let mut c = all.clone();
        match value {
            Value::Null => {
                c.as_object_mut().unwrap().remove(claim);
            }
            v => c[claim] = v,
        }
        assert_eq!(
            refused(&auth, &sign(&c)).await,
            Refusal::Claims,
            "{claim}: {}",
            c[claim]
        );
    }
    // Only `scope` (and `scp`) is a space-separated list: any other string is one value,
    // so a claim a user may edit ("viewer buyer") never passes for one of its words.
    let mut nested = all.clone();
    nested["realm_access"] = json!({"roles": "viewer buyer"});
    assert_eq!(refused(&auth, &sign(&nested)).await, Refusal::Claims);
    assert_eq!(Refusal::Claims.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn claim_headers_are_set_and_every_claim_header_is_removed() {
    let k = Signer::ec("k", false);
    let mut p = provider(inline(&[&k]));
    p.claim_headers = [
        ("sub", "x-user"),
        ("groups", "x-groups"),
        ("level", "x-level"),
        ("realm_access", "x-realm"),
        ("evil", "x-evil"),
        ("accented", "x-accented"),
        ("absent", "x-absent"),
        ("realm_access.roles", "x-roles"),
    ]
    .map(|(claim, header)| ClaimHeader {
        claim: claim.into(),
        header: header.into(),
    })
    .to_vec();
    // A second provider's claim headers are removed too, whichever provider passed.
    let mut other = provider(inline(&[]));
    other.name = "shop/orders/other".into();
    other.issuer = "https://other.example".into();
    other.claim_headers = vec![ClaimHeader {
        claim: "sub".into(),
        header: "x-other-user".into(),
    }];
    let auth = auth(vec![p, other]);
    let t = k.sign(
        Algorithm::ES256,
        &claims(json!({
            "groups": ["a", "b"],
            "level": 3,
            "realm_access": {"roles": ["r1", "r2"]},
            "evil": "x\r\nset-cookie: y",
            "accented": "café",
        })),
    );
    let v = passes(&auth, &t).await;
    let set: Vec<(&str, &str)> = v
        .set_headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
        .collect();
    assert_eq!(
        set,
        [
            ("x-user", "alice"),
            ("x-groups", "a,b"),
            ("x-level", "3"),
            ("x-roles", "r1,r2")
        ]
    );
    let removed: Vec<&str> = v.remove_headers.iter().map(|h| h.as_str()).collect();
    assert_eq!(
        removed,
        [
            "x-user",
            "x-groups",
            "x-level",
            "x-realm",
            "x-evil",
            "x-accented",
            "x-absent",
            "x-roles",
            "x-other-user",
            "authorization"
        ]
    );
}

// ---- where the token is --------------------------------------------------------------

#[tokio::test]
async fn token_sources() {
    let k = Signer::ec("k", false);
    let t = k.sign(Algorithm::ES256, &claims(json!({})));
    let mut p = provider(inline(&[&k]));
    p.token_sources = vec![
        TokenSource::Cookie("session".into()),
        TokenSource::QueryParam("access_token".into()),
        TokenSource::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        },
    ];
    let auth = auth(vec![p]);
    let with = |pairs: &[(http::HeaderName, String)]| {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(n.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    };
    let verify = |h: HeaderMap, q: Option<String>| {
        let auth = &auth;
        async move { auth.verify(&h, q.as_deref()).await }
    };

    // Cookie, among others and across two Cookie headers; it is left in place, and every
    // header a token could have come in is removed (an unchecked one never goes upstream).
    let h = with(&[
        (COOKIE, "theme=dark".into()),
        (COOKIE, format!("a=1; session=\"{t}\"; b=2")),
    ]);
    let v = verify(h, None).await.unwrap();
    assert_eq!(v.remove_headers, vec![AUTHORIZATION]);
    // Query parameter, percent-encoded or not.
    let q = format!("x=1&access%5Ftoken={}", t.replace('-', "%2D"));
    verify(HeaderMap::new(), Some(q)).await.unwrap();
    // The same cookie or parameter twice is ambiguous (servers differ on which they read).
    let q = format!("access_token={t}&access_token=other");
    assert_eq!(
        verify(HeaderMap::new(), Some(q)).await.unwrap_err(),
        Refusal::Malformed
    );
    let h = with(&[(COOKIE, format!("session={t}; session=other"))]);
    assert_eq!(verify(h, None).await.unwrap_err(), Refusal::Malformed);
    // Header: the prefix in any case, more than one space after it.
    for value in [
        format!("Bearer {t}"),
        format!("bearer {t}"),
        format!("BEARER   {t}"),
    ] {
        let v = verify(with(&[(AUTHORIZATION, value)]), None).await.unwrap();
        assert_eq!(v.remove_headers, vec![AUTHORIZATION]);
    }
    // Another scheme is no token; nothing at all is no token.
    let basic = with(&[(AUTHORIZATION, "Basic YWxpY2U6cGFzcw==".into())]);
    assert_eq!(verify(basic, None).await.unwrap_err(), Refusal::Missing);
    assert_eq!(
        verify(HeaderMap::new(), None).await.unwrap_err(),
        Refusal::Missing
    );
    assert_eq!(Refusal::Missing.status(), StatusCode::UNAUTHORIZED);
    // The header twice is ambiguous; the scheme alone or a token with a space is malformed.
    let twice = with(&[
        (AUTHORIZATION, format!("Bearer {t}")),
        (AUTHORIZATION, format!("Bearer {t}")),
    ]);
    assert_eq!(verify(twice, None).await.unwrap_err(), Refusal::Malformed);
    for value in ["Bearer", "Bearer ", "Bearer a b"] {
        let h = with(&[(AUTHORIZATION, value.into())]);
        assert_eq!(
            verify(h, None).await.unwrap_err(),
            Refusal::Malformed,
            "{value}"
        );
    }
    // The first source present wins, even when a later one holds a good token.
    let h = with(&[
        (COOKIE, "session=garbage".into()),
        (AUTHORIZATION, format!("Bearer {t}")),
    ]);
    assert_eq!(verify(h, None).await.unwrap_err(), Refusal::Malformed);

    // forward_token: the header stays.
    let mut p = provider(inline(&[&k]));
    p.forward_token = true;
    let v = self::auth(vec![p]).verify(&bearer(&t), None).await.unwrap();
    assert!(v.remove_headers.is_empty());
}

#[tokio::test]
async fn several_providers_are_picked_by_issuer() {
    let a = Signer::ec("a", false);
    let b = Signer::ed("b");
    let first = provider(inline(&[&a]));
    let mut second = provider(inline(&[&b]));
    second.name = "shop/orders/partner".into();
    second.issuer = "https://partner.example".into();
    second.audiences.clear();
    let mut third = provider(inline(&[&b]));
    third.name = "shop/orders/cookie".into();
    third.issuer = "https://cookie.example".into();
    third.token_sources = vec![TokenSource::Cookie("session".into())];
    let auth = auth(vec![first, second, third]);

    let v = passes(&auth, &a.sign(Algorithm::ES256, &claims(json!({})))).await;
    assert_eq!(&*v.provider, "shop/orders/idp");
    let v = passes(
        &auth,
        &b.sign(
            Algorithm::EdDSA,
            &claims(json!({"iss": "https://partner.example"})),
        ),
    )
    .await;
    assert_eq!(&*v.provider, "shop/orders/partner");
    // The issuer picks the provider, whose own key must have signed it.
    assert_eq!(
        refused(
            &auth,
            &a.sign(
                Algorithm::ES256,
                &claims(json!({"iss": "https://partner.example"}))
            )
        )
        .await,
        Refusal::UnknownKey
    );
    assert_eq!(
        refused(
            &auth,
            &a.sign(
                Algorithm::ES256,
                &claims(json!({"iss": "https://evil.example"}))
            )
        )
        .await,
        Refusal::UnknownIssuer
    );
    assert_eq!(refused(&auth, "not-a-token").await, Refusal::Malformed);
    // A provider reading a cookie.
    let t = b.sign(
        Algorithm::EdDSA,
        &claims(json!({"iss": "https://cookie.example"})),
    );
    let mut h = HeaderMap::new();
    h.insert(
        COOKIE,
        HeaderValue::from_str(&format!("session={t}")).unwrap(),
    );
    let v = auth.verify(&h, None).await.unwrap();
    assert_eq!(&*v.provider, "shop/orders/cookie");
    // The same token in the header is not the cookie provider's.
    assert_eq!(refused(&auth, &t).await, Refusal::UnknownIssuer);
}

// ---- what the caller sends back ------------------------------------------------------

#[test]
fn refusals_answer_with_fixed_text() {
    use Refusal::*;
    let all = [
        Missing,
        Malformed,
        UnknownIssuer,
        UnknownKey,
        BadSignature,
        Algorithm,
        Expired,
        NotYetValid,
        WrongAudience,
        Claims,
        KeysUnavailable,
    ];
    let labels: HashSet<&str> = all.iter().map(|r| r.label()).collect();
    assert_eq!(labels.len(), all.len());
    for r in all {
        assert!(r.label().starts_with("jwt_"));
        assert!(!r.detail().is_empty());
        let challenge = r.www_authenticate();
        let challenge = challenge.to_str().unwrap();
        assert!(
            challenge.starts_with(r#"Bearer realm="parapet""#),
            "{challenge}"
        );
        let expected = match r {
            Missing | KeysUnavailable => None,
            Claims => Some(r#"error="insufficient_scope""#),
            _ => Some(r#"error="invalid_token""#),
        };
        match expected {
            None => assert!(!challenge.contains("error"), "{challenge}"),
            Some(e) => assert!(
                challenge.contains(e) && challenge.contains("error_description="),
                "{challenge}"
            ),
        }
        let status = match r {
            Claims => StatusCode::FORBIDDEN,
            KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        };
        assert_eq!(r.status(), status);
    }
    assert_eq!(Expired.label(), "jwt_expired");
    assert_eq!(
        Expired.www_authenticate(),
        r#"Bearer realm="parapet", error="invalid_token", error_description="the token has expired""#
    );
}

#[test]
fn metrics_are_registered_under_their_names() {
    let metrics = JwtMetrics::default();
    let mut registry = prometheus_client::registry::Registry::with_prefix("parapet");
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"parapet_jwks_fetches_total{result="ok"} 0"#),
        "{text}"
    );
    assert!(
        text.contains(r#"parapet_jwks_fetches_total{result="error"} 0"#),
        "{text}"
    );
    assert!(text.contains("parapet_jwks_keys 0"), "{text}");
}

#[test]
fn verify_is_send() {
    fn send<T: Send>(_: T) {}
    let auth = auth(vec![provider(inline(&[]))]);
    let headers = HeaderMap::new();
    send(auth.verify(&headers, None));
}

// ---- key sets ------------------------------------------------------------------------

#[test]
fn jwks_keeps_usable_signature_keys_only() {
    let ec = Signer::ec("ec", false);
    let rsa = Signer::rsa("rsa");
    let ed = Signer::ed("ed");
    let doc = json!({"keys": [
        ec.jwk,
        rsa.jwk,
        ed.jwk,
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N.trim(), "e": "AQAB"},
        {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": RSA_N.trim(), "e": "AQAB"},
        {"kty": "RSA", "kid": "short", "n": b64(&[0xc5; 128]), "e": "AQAB"},
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
        {"kty": "EC", "kid": "short-ec", "crv": "P-256", "x": b64(&[1; 31]), "y": b64(&[1; 32])},
        {"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": b64(&[1; 32])},
        {"kty": "EC", "kid": "alg-mismatch", "alg": "RS256", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[1; 32])},
        {"kid": "no-kty"},
        "not an object",
    ]});
    let set = KeySet::parse(doc.to_string().as_bytes(), "test").unwrap();
    let kids: Vec<&str> = set.keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
    assert_eq!(kids, ["ec", "rsa", "ed"]);
    assert!(KeySet::parse(b"{}", "test").is_err());
    assert!(KeySet::parse(b"[]", "test").is_err());

    let many: Vec<Value> = (0..MAX_KEYS + 10)
        .map(|i| {
            let mut k = ec.jwk.clone();
            k["kid"] = json!(format!("k{i}"));
            k
        })
        .collect();
    let set = KeySet::parse(json!({ "keys": many }).to_string().as_bytes(), "test").unwrap();
    assert_eq!(set.len(), MAX_KEYS);
}

#[test]
fn base64url_decoding() {
    for len in 0..40 {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        assert_eq!(b64url_decode(&b64(&bytes)).unwrap(), bytes);
    }
    assert!(b64url_decode("A").is_none());
    assert!(b64url_decode("AA==").is_none());
    assert!(b64url_decode("A+/A").is_none());
    assert!(split("a.b.c").is_ok());
    assert!(
        split("a.b.").is_ok(),
        "an empty signature is refused later, for its alg"
    );
    assert!(split(".b.c").is_err());
}

#[test]
fn refresh_schedule() {
    let s = Duration::from_secs;
    // No max-age: refresh_s. A max-age within [min_refresh_s, refresh_s].
    assert_eq!(next_delay(0, None, 30, 300), s(300));
    assert_eq!(next_delay(0, Some(60), 30, 300), s(60));
    assert_eq!(next_delay(0, Some(5), 30, 300), s(30));
    assert_eq!(next_delay(0, Some(86_400), 30, 300), s(300));
    // Failures: 1 s doubling, up to refresh_s.
    let backoff: Vec<Duration> = (1..=10).map(|f| next_delay(f, Some(60), 30, 300)).collect();
    assert_eq!(backoff, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300].map(s));
    assert_eq!(next_delay(u32::MAX, None, 30, 300), s(300));
    // Settings that make no sense still give a period of at least a second.
    assert_eq!(next_delay(0, Some(0), 0, 0), s(1));
    assert_eq!(next_delay(0, Some(10), 600, 300), s(300));

    let cc = |v: &str| {
        let mut h = HeaderMap::new();
        h.insert(CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
        max_age(&h)
    };
    assert_eq!(cc("public, max-age=3600, must-revalidate"), Some(3600));
    assert_eq!(cc("Max-Age=\"60\""), Some(60));
    assert_eq!(cc("max-age=60, no-cache"), Some(0));
    assert_eq!(cc("public"), None);
    assert_eq!(cc("max-age=soon"), None);
}

// ---- remote key sets -----------------------------------------------------------------

/// An identity provider's JWKS endpoint on 127.0.0.1, one connection per request.
struct Idp {
    body: Mutex<String>,
    cache_control: Mutex<Option<String>>,
    hits: watch::Sender<usize>,
}

impl Idp {
    fn new(keys: &[&Signer]) -> Arc<Self> {
        let idp = Arc::new(Self {
            body: Mutex::default(),
            cache_control: Mutex::default(),
            hits: watch::Sender::new(0),
        });
        idp.publish(keys);
        idp
    }

    fn publish(&self, keys: &[&Signer]) {
        let keys: Vec<Value> = keys.iter().map(|s| s.jwk.clone()).collect();
        *self.body.lock().unwrap() = json!({ "keys": keys }).to_string();
    }

    fn cache(&self, v: &str) {
        *self.cache_control.lock().unwrap() = Some(v.into());
    }

    fn hits(&self) -> usize {
        *self.hits.borrow()
    }

    async fn wait_hits(&self, n: usize) {
        let mut rx = self.hits.subscribe();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|h| *h >= n))
            .await
            .expect("the JWKS endpoint is asked in time")
            .unwrap();
    }

    /// Serves until the handle is aborted; returns the JWKS URL.
    async fn serve(self: &Arc<Self>) -> (String, JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/realms/main/jwks", listener.local_addr().unwrap());
        let idp = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let idp = idp.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        let idp = idp.clone();
                        async move {
                            idp.hits.send_modify(|h| *h += 1);
                            let mut r =
                                Response::builder().header("content-type", "application/json");
                            if let Some(cc) = idp.cache_control.lock().unwrap().clone() {
                                r = r.header(CACHE_CONTROL, cc);
                            }
                            let body = idp.body.lock().unwrap().clone();
                            Ok::<_, std::convert::Infallible>(
                                r.body(Full::new(Bytes::from(body))).unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (url, task)
    }
}

fn remote(url: &str, min_refresh_s: u64, refresh_s: u64) -> JwksSource {
    JwksSource::Remote(RemoteJwks {
        url: url.into(),
        ca_pem: None,
        refresh_s,
        min_refresh_s,
        timeout_ms: 3000,
    })
}

fn remote_set(auth: &JwtAuth) -> Arc<RemoteSet> {
    match &auth.providers[0].keys {
        Keys::Remote(set) => set.clone(),
        Keys::Inline(_) => panic!("not a remote provider"),
    }
}

/// Moves tokio's clock forward by `d` (timers due fire), then lets it run with real time
/// again, so the I/O that follows is not raced by an auto-advance.
async fn jump(d: Duration) {
    tokio::time::pause();
    tokio::time::advance(d).await;
    tokio::time::resume();
}

/// Lets spawned tasks run until `done` (no I/O involved: scheduling only).
async fn settle(mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never settled");
}

/// Awaits the fetch under way, if any.
async fn join_fetch(set: &Arc<RemoteSet>) {
    if let Some(f) = set.fetch(Duration::MAX) {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("the fetch ends in time");
    }
}

fn fetches(metrics: &JwtMetrics, result: &'static str) -> u64 {
    metrics
        .fetches
        .get_or_create(&super::metrics::FetchLabels { result })
        .get()
}

#[tokio::test]
async fn remote_keys_are_fetched_on_first_use_and_again_after_max_age() {
    let a = Signer::ec("a", false);
    let idp = Idp::new(&[&a]);
    idp.cache("public, max-age=60");
    let (url, _server) = idp.serve().await;
    let metrics = JwtMetrics::default();
    let registry = JwksRegistry::new(metrics.clone());
    let auth = auth_with(&registry, vec![provider(remote(&url, 10, 300))]);
    assert_eq!(auth.jwks_keys().count(), 1);
    assert!(auth.jwks_keys().all(|k| k.starts_with(url.as_str())));
    assert_eq!(idp.hits(), 0, "building the route fetches nothing");

    let t = a.sign(Algorithm::ES256, &claims(json!({})));
    passes(&auth, &t).await;
    assert_eq!(idp.hits(), 1);
    assert_eq!(fetches(&metrics, "ok"), 1);
    assert_eq!(metrics.keys.get(), 1);
    passes(&auth, &t).await;
    assert_eq!(idp.hits(), 1, "a warm set is not fetched again");

    // A second route on the same URL shares the set.
    let again = auth_with(&registry, vec![provider(remote(&url, 10, 300))]);
    assert!(Arc::ptr_eq(&remote_set(&auth), &remote_set(&again)));
    passes(&again, &t).await;
    assert_eq!(idp.hits(), 1);

    // The next fetch is due max-age after this one.
    let set = remote_set(&auth);
    settle(|| set.next_fetch_at().is_some()).await;
    let due = set.next_fetch_at().unwrap() - Instant::now();
    assert!(
        due > Duration::from_secs(59) && due <= Duration::from_secs(60),
        "{due:?}"
    );
    jump(Duration::from_secs(58)).await;
    run_ready_tasks().await;
    assert_eq!(set.fetches_started(), 1);
    jump(Duration::from_secs(3)).await;
    idp.wait_hits(2).await;
    join_fetch(&set).await;
    assert_eq!(fetches(&metrics, "ok"), 2);
}

/// Lets every task that is ready run (and whatever they wake), with no I/O awaited: a
/// background fetch that were due would have started by the end.
async fn run_ready_tasks() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_provider_that_goes_down_leaves_the_last_good_keys_in_use() {
    let a = Signer::ec("a", false);
    let idp = Idp::new(&[&a]);
    idp.cache("max-age=5");
    let (url, server) = idp.serve().await;
    let metrics = JwtMetrics::default();
    let auth = auth_with(
        &JwksRegistry::new(metrics.clone()),
        vec![provider(remote(&url, 5, 300))],
    );
    let t = a.sign(Algorithm::ES256, &claims(json!({})));
    passes(&auth, &t).await;
    let set = remote_set(&auth);
    settle(|| set.next_fetch_at().is_some()).await;

    server.abort();
    let _ = server.await;
    jump(Duration::from_secs(6)).await;
    settle(|| set.fetches_started() == 2).await;
    join_fetch(&set).await;
    assert_eq!(fetches(&metrics, "error"), 1);
    passes(&auth, &t).await;
    assert_eq!(metrics.keys.get(), 1, "the keys are kept");

    // Retries back off from a second.
    settle(|| set.next_fetch_at().is_some_and(|at| at > Instant::now())).await;
    let due = set.next_fetch_at().unwrap() - Instant::now();
    assert!(due <= Duration::from_secs(1), "{due:?}");
    jump(Duration::from_millis(1100)).await;
    settle(|| set.fetches_started() == 3).await;
    join_fetch(&set).await;
    settle(|| {
        set.next_fetch_at()
            .is_some_and(|at| at - Instant::now() > Duration::from_secs(1))
    })
    .await;
    let due = set.next_fetch_at().unwrap() - Instant::now();
    assert!(due <= Duration::from_secs(2), "{due:?}");
    assert_eq!(fetches(&metrics, "error"), 2);
    passes(&auth, &t).await;
}

#[tokio::test]
async fn an_unknown_kid_fetches_the_set_again_and_finds_a_rotated_key() {
    let a = Signer::ec("a", false);
    let b = Signer::ed("b");
    let idp = Idp::new(&[&a]);
    let (url, _server) = idp.serve().await;
    let auth = auth(vec![provider(remote(&url, 0, 300))]);
    passes(&auth, &a.sign(Algorithm::ES256, &claims(json!({})))).await;
    assert_eq!(idp.hits(), 1);
    idp.publish(&[&a, &b]);
    passes(&auth, &b.sign(Algorithm::EdDSA, &claims(json!({})))).await;
    assert_eq!(idp.hits(), 2);
    // Still unknown after the fetch.
    let c = Signer::ec("c", false);
    assert_eq!(
        refused(&auth, &c.sign(Algorithm::ES256, &claims(json!({})))).await,
        Refusal::UnknownKey
    );
    assert_eq!(idp.hits(), 3);
}

/// A token verified once is remembered (the next request costs a lookup, not a signature
/// check), but never past the key set that verified it: once the provider drops the key, the
/// token is refused.
#[tokio::test]
async fn a_remembered_token_does_not_outlive_its_key() {
    let a = Signer::ec("a", false);
    let b = Signer::ed("b");
    let idp = Idp::new(&[&a]);
    let (url, _server) = idp.serve().await;
    let auth = auth(vec![provider(remote(&url, 0, 300))]);
    let ta = a.sign(Algorithm::ES256, &claims(json!({})));
    passes(&auth, &ta).await;
    passes(&auth, &ta).await;
    assert_eq!(idp.hits(), 1);
    // The provider replaces a with b; a token naming b makes the gateway fetch again.
    idp.publish(&[&b]);
    passes(&auth, &b.sign(Algorithm::EdDSA, &claims(json!({})))).await;
    assert_eq!(idp.hits(), 2);
    assert_eq!(refused(&auth, &ta).await, Refusal::UnknownKey);
}

#[tokio::test]
async fn unknown_kid_fetches_are_limited_by_min_refresh_and_coalesced() {
    let a = Signer::ec("a", false);
    let b = Signer::ec("b", false);
    let idp = Idp::new(&[&a]);
    let (url, _server) = idp.serve().await;
    let auth = auth(vec![provider(remote(&url, 60, 300))]);
    let set = remote_set(&auth);
    passes(&auth, &a.sign(Algorithm::ES256, &claims(json!({})))).await;
    idp.publish(&[&a, &b]);
    let tb = b.sign(Algorithm::ES256, &claims(json!({})));
    // Within min_refresh_s of the last fetch: no fetch, the kid is unknown.
    assert_eq!(refused(&auth, &tb).await, Refusal::UnknownKey);
    assert_eq!(set.fetches_started(), 1);

    jump(Duration::from_secs(61)).await;
    // Two requests at once: one fetch, both pass.
    let headers = bearer(&tb);
    let (one, two) = tokio::join!(auth.verify(&headers, None), auth.verify(&headers, None));
    one.unwrap();
    two.unwrap();
    assert_eq!(set.fetches_started(), 2);
    assert_eq!(idp.hits(), 2);
    // And the window starts again.
    let c = Signer::ec("c", false);
    assert_eq!(
        refused(&auth, &c.sign(Algorithm::ES256, &claims(json!({})))).await,
        Refusal::UnknownKey
    );
    assert_eq!(set.fetches_started(), 2);
}

#[tokio::test]
async fn keys_never_fetched_are_unavailable() {
    // A port nothing listens on.
    let url = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/jwks", l.local_addr().unwrap())
    };
    let metrics = JwtMetrics::default();
    let auth = auth_with(
        &JwksRegistry::new(metrics.clone()),
        vec![provider(remote(&url, 30, 300))],
    );
    let t = Signer::ec("a", false).sign(Algorithm::ES256, &claims(json!({})));
    assert_eq!(refused(&auth, &t).await, Refusal::KeysUnavailable);
    assert_eq!(
        Refusal::KeysUnavailable.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(fetches(&metrics, "error"), 1);
    // Not fetched again for every request.
    assert_eq!(refused(&auth, &t).await, Refusal::KeysUnavailable);
    assert_eq!(remote_set(&auth).fetches_started(), 1);

    // Nor is an oversized or non-JWKS answer taken.
    for body in [
        format!("{{\"keys\":[]{}}}", " ".repeat(1 << 20)),
        "<html>".to_string(),
    ] {
        let idp = Idp::new(&[]);
        *idp.body.lock().unwrap() = body;
        let (url, _server) = idp.serve().await;
        let auth = self::auth(vec![provider(remote(&url, 30, 300))]);
        assert_eq!(refused(&auth, &t).await, Refusal::KeysUnavailable);
        assert_eq!(idp.hits(), 1);
    }
}

#[tokio::test]
async fn retain_drops_sets_no_route_uses() {
    let a = Signer::ec("a", false);
    let idp = Idp::new(&[&a]);
    let (url, _server) = idp.serve().await;
    let metrics = JwtMetrics::default();
    let registry = JwksRegistry::new(metrics.clone());
    let auth = auth_with(&registry, vec![provider(remote(&url, 10, 60))]);
    passes(&auth, &a.sign(Algorithm::ES256, &claims(json!({})))).await;
    let set = remote_set(&auth);
    settle(|| set.next_fetch_at().is_some()).await;
    assert_eq!(metrics.keys.get(), 1);

    registry.retain(&auth.jwks_keys().collect());
    assert_eq!(registry.urls(), [url.as_str()]);
    registry.retain(&HashSet::new());
    assert!(registry.urls().is_empty());
    assert_eq!(metrics.keys.get(), 0);
    // Its task stopped: nothing is fetched when the refresh would have been due.
    jump(Duration::from_secs(120)).await;
    run_ready_tasks().await;
    assert_eq!(set.fetches_started(), 1);
    assert_eq!(idp.hits(), 1);
    // A new table that uses the URL again starts afresh.
    let auth = auth_with(&registry, vec![provider(remote(&url, 10, 60))]);
    assert!(!Arc::ptr_eq(&set, &remote_set(&auth)));
}
