//! JWT providers (`auth.jwt`) through the real proxy: tokens checked against a provider's
//! JWKS fetched over HTTPS (its CA from a Secret) or held in a Secret; every kind of bad
//! token refused with RFC 6750's `WWW-Authenticate` and counted by reason; verified claims
//! passed on; a rotated key found by fetching again; the last good keys kept while the
//! provider is down.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use parapet_tests::{
    admin,
    backend::Backend,
    client::{Client, Reply},
    dataplane::Dataplane,
    idp::{JwksServer, SigningKey, jwks, now},
    pool_yaml, route_yaml, standalone, wait_for,
};
use serde_json::{Value, json};

const ISSUER: &str = "https://login.bank.example";
const PARTNERS: &str = "https://partners.example";

fn config(port: u16, idp: &JwksServer, partner_jwks: &Value) -> String {
    let ca = idp.pki.ca_pem.replace('\n', "\n    ");
    let secrets = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: idp-ca}}\nstringData:\n  ca.crt: |\n    {ca}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: partner-jwks}}\nstringData:\n  jwks.json: '{partner_jwks}'\n"
    );
    let corp = format!(
        "{{name: corp, issuer: '{ISSUER}', audiences: [payments], remoteJwks: {{uri: '{}', caSecretRef: {{name: idp-ca}}, refreshInterval: 1h}}, claimToHeaders: [{{claim: sub, header: x-user}}, {{claim: realm_access.roles, header: x-roles}}]",
        idp.url()
    );
    let rules = format!(
        "    - name: api
      matches: [{{path: {{type: PathPrefix, value: /api}}}}]
      backends: [{{pool: p}}]
      auth: {{jwt: {{providers: [{corp}}}]}}}}
    - name: pay
      matches: [{{path: {{type: PathPrefix, value: /pay}}}}]
      backends: [{{pool: p}}]
      auth: {{jwt: {{providers: [{corp}, requiredClaims: [{{claim: scope, anyOf: ['payments:write']}}]}}]}}}}
    - name: partners
      matches: [{{path: {{type: PathPrefix, value: /partners}}}}]
      backends: [{{pool: p}}]
      auth: {{jwt: {{providers: [{{name: partners, issuer: '{PARTNERS}', localJwks: {{secretRef: {{name: partner-jwks}}}}, extractFrom: [{{cookie: session}}, {{queryParam: access_token}}]}}]}}}}
    - name: me
      matches: [{{path: {{type: PathPrefix, value: /me}}}}]
      backends: [{{pool: p}}]
      cachePolicyRef: {{name: c}}
      auth: {{jwt: {{providers: [{corp}}}]}}}}
    - name: open
      backends: [{{pool: p}}]"
    );
    let secrets = format!(
        "{secrets}---\napiVersion: parapet.dev/v1alpha1\nkind: CachePolicy\nmetadata: {{name: c}}\nspec: {{mode: Fixed, ttl: 10m}}\n"
    );
    format!(
        "{secrets}{}{}",
        pool_yaml("p", &[port], ""),
        route_yaml("r", "[api.example]", &rules)
    )
}

struct World {
    backend: Backend,
    idp: JwksServer,
    key: SigningKey,
    partner: SigningKey,
    dp: Dataplane,
    _dir: tempfile::TempDir,
    c: Client,
}

async fn world() -> World {
    let backend = Backend::start("b").await;
    let key = SigningKey::es256("k1");
    let partner = SigningKey::ed25519("p1");
    let idp = JwksServer::start(jwks(&[&key])).await;
    let yaml = config(backend.port(), &idp, &jwks(&[&partner]));
    let (dp, dir) = standalone(&yaml, &[]).await;
    World {
        backend,
        idp,
        key,
        partner,
        dp,
        _dir: dir,
        c: Client::new(),
    }
}

fn claims() -> Value {
    json!({"iss": ISSUER, "aud": "payments", "sub": "alice", "exp": now() + 300,
           "iat": now(), "scope": "accounts:read payments:write",
           "realm_access": {"roles": ["teller", "auditor"]}})
}

fn with(extra: Value) -> Value {
    let mut c = claims();
    for (k, v) in extra.as_object().expect("an object") {
        if v.is_null() {
            c.as_object_mut().expect("an object").remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

impl World {
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.c
            .send(
                self.dp.proxy,
                Method::GET,
                "api.example",
                path,
                headers,
                Bytes::new(),
            )
            .await
            .unwrap()
    }

    async fn bearer(&self, path: &str, token: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.get(path, &[("authorization", &auth)]).await
    }

    async fn rejected(&self, reason: &str) -> f64 {
        admin::metric_sum(
            &self.c,
            self.dp.admin,
            "parapet_rejected_requests_total",
            &[&format!("reason=\"{reason}\"")],
        )
        .await
    }
}

fn www_authenticate(r: &Reply) -> String {
    r.headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_tokens_pass_with_their_claims_and_bad_ones_are_refused() {
    let w = world().await;

    // A valid token: through, with its claims as headers, without the token.
    let r = w
        .get(
            "/api/x",
            &[
                (
                    "authorization",
                    &format!("Bearer {}", w.key.sign(&claims())),
                ),
                ("x-user", "mallory"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = w.backend.last_headers().unwrap();
    assert_eq!(
        seen["x-user"], "alice",
        "the claim replaces what the client sent"
    );
    assert_eq!(seen.get_all("x-user").iter().count(), 1);
    assert_eq!(seen["x-roles"], "teller,auditor");
    assert!(
        !seen.contains_key("authorization"),
        "the token is the gateway's credential"
    );
    let hits = w.backend.hits();

    // No token: 401 with a bare challenge (RFC 6750 §3.1: no error code).
    let r = w.get("/api/x", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let challenge = www_authenticate(&r);
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert!(!challenge.contains("error="), "{challenge}");
    // Another scheme is no bearer token either.
    let r = w
        .get("/api/x", &[("authorization", "Basic YWxpY2U6cHc=")])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Each bad token: 401, invalid_token, counted under its own reason.
    let other = SigningKey::es256("k1");
    let good = w.key.sign(&claims());
    let (head, rest) = good.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let forged_payload = base64_url(&with(json!({"sub": "admin"})).to_string());
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            w.key.sign(&with(json!({"exp": now() - 120}))),
            "jwt_expired",
        ),
        (
            "not yet valid",
            w.key.sign(&with(json!({"nbf": now() + 600}))),
            "jwt_not_yet_valid",
        ),
        (
            "wrong issuer",
            w.key.sign(&with(json!({"iss": "https://evil.example"}))),
            "jwt_unknown_issuer",
        ),
        (
            "wrong audience",
            w.key.sign(&with(json!({"aud": "marketing"}))),
            "jwt_wrong_audience",
        ),
        (
            "signed by another key with the same kid",
            other.sign(&claims()),
            "jwt_bad_signature",
        ),
        (
            "payload changed after signing",
            format!("{head}.{forged_payload}.{sig}"),
            "jwt_bad_signature",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                base64_url(r#"{"alg":"none","typ":"JWT"}"#),
                base64_url(&claims().to_string())
            ),
            "jwt_algorithm",
        ),
        ("not a JWT", "abc.def".to_string(), "jwt_malformed"),
    ];
    for (what, token, reason) in &cases {
        let before = w.rejected(reason).await;
        let r = w.bearer("/api/x", token).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.text());
        let challenge = www_authenticate(&r);
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{what}: {challenge}"
        );
        assert_eq!(
            w.rejected(reason).await,
            before + 1.0,
            "{what} is counted as {reason}"
        );
    }

    // Claims the rule requires: 403 insufficient_scope.
    let r = w
        .bearer(
            "/pay/1",
            &w.key.sign(&with(json!({"scope": "accounts:read"}))),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(www_authenticate(&r).contains("insufficient_scope"));
    assert_eq!(
        w.bearer("/pay/1", &w.key.sign(&claims())).await.status,
        StatusCode::OK
    );

    // A Secret's keys; tokens from a cookie or the query.
    let t = w
        .partner
        .sign(&json!({"iss": PARTNERS, "sub": "p-7", "exp": now() + 60}));
    assert_eq!(
        w.get(
            "/partners/a",
            &[("cookie", &format!("theme=dark; session={t}"))]
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        w.get(&format!("/partners/a?access_token={t}"), &[])
            .await
            .status,
        StatusCode::OK
    );
    // The corporate key is not a partner key.
    let r = w
        .get(
            "/partners/a",
            &[("cookie", &format!("session={}", w.key.sign(&claims())))],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    assert_eq!(
        w.backend.hits(),
        hits + 3,
        "only the valid requests reached the backend"
    );
    assert_eq!(
        w.get("/open", &[]).await.status,
        StatusCode::OK,
        "rules without jwt stay open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_fetched_and_the_last_good_keys_outlive_the_provider() {
    let w = world().await;
    let t1 = w.key.sign(&claims());
    assert_eq!(w.bearer("/api/x", &t1).await.status, StatusCode::OK);
    assert_eq!(w.idp.fetches(), 1, "one fetch serves every request");
    assert_eq!(w.bearer("/api/x", &t1).await.status, StatusCode::OK);
    assert_eq!(w.idp.fetches(), 1);

    // The provider rotates: k2 is published, and tokens signed with it arrive. The gateway
    // fetches again for the unknown kid (at most once per 5 s, so a flood of made-up kids
    // cannot make it hammer the provider) and then accepts them.
    let k2 = SigningKey::es256("k2");
    w.idp.publish(jwks(&[&w.key, &k2]));
    let t2 = k2.sign(&claims());
    wait_for(
        "the rotated key to be accepted",
        Duration::from_secs(15),
        || async { (w.bearer("/api/x", &t2).await.status == StatusCode::OK).then_some(()) },
    )
    .await;
    assert_eq!(
        w.idp.fetches(),
        2,
        "the refused tries before the refetch window did not each fetch"
    );
    // A kid nobody published: refused without another fetch inside the window.
    let r = w
        .bearer("/api/x", &SigningKey::es256("k9").sign(&claims()))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(w.idp.fetches(), 2);
    assert!(w.rejected("jwt_unknown_key").await >= 1.0);

    // The provider goes down: the keys fetched last still verify tokens, and a token
    // naming an unknown key is refused, not let through.
    w.idp.set_up(false);
    let k3 = SigningKey::es256("k3");
    let tried = w.idp.attempts();
    wait_for(
        "a fetch attempt while the provider is down",
        Duration::from_secs(15),
        || async {
            let r = w.bearer("/api/x", &k3.sign(&claims())).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
            (w.idp.attempts() > tried).then_some(())
        },
    )
    .await;
    for _ in 0..10 {
        assert_eq!(w.bearer("/api/x", &t1).await.status, StatusCode::OK);
        assert_eq!(w.bearer("/api/x", &t2).await.status, StatusCode::OK);
    }
    assert_eq!(w.idp.fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_fetched_again_when_the_provider_says_they_go_stale() {
    let w = world().await;
    // Fresh for 5 s, the shortest the gateway follows; the route's refreshInterval is 1h,
    // so a fetch within seconds can only come from this header.
    w.idp.set_cache_control(Some("public, max-age=5"));
    assert_eq!(
        w.bearer("/api/x", &w.key.sign(&claims())).await.status,
        StatusCode::OK
    );
    assert_eq!(w.idp.fetches(), 1);
    let k2 = SigningKey::es256("k2");
    w.idp.publish(jwks(&[&w.key, &k2]));
    w.idp.set_cache_control(Some("max-age=3600"));
    wait_for(
        "the background refresh after max-age",
        Duration::from_secs(20),
        || async { (w.idp.fetches() == 2).then_some(()) },
    )
    .await;
    // The refreshed set already has k2: no fetch on its first token.
    assert_eq!(
        w.bearer("/api/x", &k2.sign(&claims())).await.status,
        StatusCode::OK
    );
    assert_eq!(w.idp.fetches(), 2);
}

/// The gateway took the token off the request and put the caller's claims on: a cached
/// answer could be another caller's. Such requests are never answered from the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_for_one_caller_are_never_served_to_another_from_the_cache() {
    let w = world().await;
    let alice = w.key.sign(&claims());
    let bob = w.key.sign(&with(json!({"sub": "bob"})));
    for token in [&alice, &bob, &alice] {
        assert_eq!(w.bearer("/me", token).await.status, StatusCode::OK);
    }
    assert_eq!(
        w.backend.hits(),
        3,
        "each caller's request reached the backend"
    );
    assert_eq!(w.backend.last_headers().unwrap()["x-user"], "alice");
}

fn base64_url(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}
