//! Who may call a rule, beyond API keys: client-address rules, JWT providers and external
//! authorization.
//!
//! Every mistake here fails closed: a deny range that does not parse denies everyone, a
//! provider whose keys cannot be found accepts no token, an authorization service whose URL
//! is unusable refuses every request. A rule is never served with less checking than its
//! resource asks for. The schema refuses most of these; standalone files reach the compiler
//! unchecked.

use std::net::IpAddr;

use super::{
    api_keys,
    filters::{PROXY_HEADERS, RuleRef, valid_header_name},
    secret,
};
use crate::{
    Duration,
    api::{self, AuthPolicySpec, JwtAlgorithm, Object},
    compiler::{Diagnostics, Inputs, ObjectKey, Reason, name, ns},
    snapshot::{
        ApiKeyCheck, ClaimHeader, ClaimRequirement, ExtAuthCache, ExtAuthCheck, IpRules,
        JwksSource, JwtCheck, JwtProvider, RemoteJwks, TokenSource,
    },
};

/// Every check of a rule's `auth` (or an AuthPolicy's), compiled.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthChecks {
    pub api_keys: Option<ApiKeyCheck>,
    pub ip_rules: Option<IpRules>,
    pub jwt: Option<JwtCheck>,
    /// `Err`: unusable, so the rule must answer 500 rather than go unchecked.
    pub ext_auth: Result<Option<ExtAuthCheck>, ()>,
}

/// The checks `auth` asks for; `route_ip_rules` are the route's own, which a rule's
/// replace. `owner`: the ApiRoute or AuthPolicy, naming providers in metrics.
#[allow(clippy::too_many_arguments)]
pub(super) fn checks(
    inputs: &Inputs<'_>,
    namespace: &str,
    owner: &str,
    route_ip_rules: Option<&api::IpRules>,
    auth: Option<&api::RouteAuth>,
    at: &RuleRef<'_>,
    diags: &mut Diagnostics,
) -> AuthChecks {
    AuthChecks {
        api_keys: auth
            .and_then(|a| a.api_keys.as_ref())
            .map(|k| api_keys(inputs, namespace, k, at.name, at.me, diags)),
        ip_rules: ip_rules(
            route_ip_rules,
            auth.and_then(|a| a.ip_rules.as_ref()),
            at,
            diags,
        ),
        jwt: auth
            .and_then(|a| a.jwt.as_ref())
            .map(|j| jwt(inputs, namespace, owner, j, at, diags)),
        ext_auth: match auth.and_then(|a| a.ext_auth.as_ref()) {
            None => Ok(None),
            Some(e) => ext_auth(inputs, namespace, owner, e, at, diags).map(Some),
        },
    }
}

/// An AuthPolicy's checks, its diagnostics reported on the policy.
pub fn auth_policy(
    inputs: &Inputs<'_>,
    policy: &Object<AuthPolicySpec>,
    diags: &mut Diagnostics,
) -> AuthChecks {
    let (namespace, owner) = (ns(&policy.metadata), name(&policy.metadata));
    let me = ObjectKey::new(crate::compiler::KIND_AUTH_POLICY, namespace, owner);
    let at = RuleRef { name: "", me: &me };
    checks(
        inputs,
        namespace,
        owner,
        None,
        Some(&policy.spec.as_route_auth()),
        &at,
        diags,
    )
}

/// The JWKS a provider gets when its own cannot be read: no key, so no token passes.
const NO_KEYS: &str = r#"{"keys":[]}"#;
/// A provider's keys are fetched again at most this often, whatever `max-age` says, and
/// at most this often for tokens naming a key the set lacks (a rotation).
const MIN_JWKS_REFRESH_S: u64 = 5;

/// The rule's address rules: its own when it has them, else the route's.
pub(super) fn ip_rules(
    route: Option<&api::IpRules>,
    rule: Option<&api::IpRules>,
    at: &RuleRef<'_>,
    diags: &mut Diagnostics,
) -> Option<IpRules> {
    let rules = rule.or(route)?;
    let mut out = IpRules::default();
    for (list, field, into) in [
        (&rules.allow, "ipRules.allow", &mut out.allow),
        (&rules.deny, "ipRules.deny", &mut out.deny),
    ] {
        for c in list {
            match cidr(c) {
                Some(c) => into.push(c),
                None if field == "ipRules.deny" => {
                    at.error(
                        diags,
                        Reason::InvalidAuth,
                        format!("{field} entry {c:?} is not a CIDR or an address, so the rule denies every client until it is fixed"),
                    );
                    into.extend(["0.0.0.0/0".to_string(), "::/0".to_string()]);
                }
                None => at.error(
                    diags,
                    Reason::InvalidAuth,
                    format!("{field} entry {c:?} is not a CIDR or an address; it allows nobody until it is fixed"),
                ),
            }
        }
    }
    if rules.allow.is_empty() && rules.deny.is_empty() {
        return None;
    }
    if !rules.allow.is_empty() && out.allow.is_empty() {
        // Every allow entry was bad: allow nobody rather than everybody.
        out.deny
            .extend(["0.0.0.0/0".to_string(), "::/0".to_string()]);
    }
    out.allow.sort();
    out.allow.dedup();
    out.deny.sort();
    out.deny.dedup();
    Some(out)
}

/// `addr/len` or a single address, normalised (`10.1.2.3` → `10.1.2.3/32`).
pub fn cidr(s: &str) -> Option<String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) if !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit()) => {
            l.parse::<u8>().ok().filter(|l| *l <= max)?
        }
        Some(_) => return None,
        None => max,
    };
    Some(format!("{addr}/{len}"))
}

pub(super) fn jwt(
    inputs: &Inputs<'_>,
    namespace: &str,
    route: &str,
    j: &api::JwtAuth,
    at: &RuleRef<'_>,
    diags: &mut Diagnostics,
) -> JwtCheck {
    let providers = j
        .providers
        .iter()
        .map(|p| provider(inputs, namespace, route, p, at, diags))
        .collect();
    JwtCheck { providers }
}

fn provider(
    inputs: &Inputs<'_>,
    namespace: &str,
    route: &str,
    p: &api::JwtProvider,
    at: &RuleRef<'_>,
    diags: &mut Diagnostics,
) -> JwtProvider {
    let field = format!("auth.jwt provider {}", p.name);
    let jwks = match (&p.remote_jwks, &p.local_jwks) {
        (Some(r), None) => remote_jwks(inputs, namespace, r, &field, at, diags),
        (None, Some(l)) => local_jwks(inputs, namespace, l, &field, at, diags),
        _ => {
            at.error(
                diags,
                Reason::InvalidAuth,
                format!("{field} needs exactly one of remoteJwks and localJwks; it accepts no token until then"),
            );
            JwksSource::Inline(NO_KEYS.to_string())
        }
    };
    let algorithms = if p.algorithms.is_empty() {
        JwtAlgorithm::ALL
            .iter()
            .map(|a| a.as_str().to_string())
            .collect()
    } else {
        let mut a: Vec<String> = p
            .algorithms
            .iter()
            .map(|a| a.as_str().to_string())
            .collect();
        a.sort();
        a.dedup();
        a
    };
    let token_sources = if p.extract_from.is_empty() {
        vec![TokenSource::Header {
            name: "authorization".to_string(),
            prefix: "Bearer ".to_string(),
        }]
    } else {
        p.extract_from
            .iter()
            .filter_map(|l| token_source(l, &field, at, diags))
            .collect()
    };
    let claim_headers = p
        .claim_to_headers
        .iter()
        .filter_map(|c| {
            let header = c.header.to_ascii_lowercase();
            if !valid_header_name(&header) || PROXY_HEADERS.contains(&header.as_str()) {
                at.error(
                    diags,
                    Reason::InvalidAuth,
                    format!("{field}: claimToHeaders header {:?} is not a header the gateway lets a rule set; pick another name", c.header),
                );
                return None;
            }
            Some(ClaimHeader {
                claim: c.claim.clone(),
                header,
            })
        })
        .collect();
    JwtProvider {
        name: format!("{namespace}/{route}/{}", p.name),
        issuer: p.issuer.clone(),
        audiences: p.audiences.clone(),
        jwks,
        algorithms,
        clock_skew_s: p
            .clock_skew
            .unwrap_or(Duration::from_secs(30))
            .as_std()
            .as_secs(),
        token_sources,
        required_claims: p
            .required_claims
            .iter()
            .map(|c| ClaimRequirement {
                claim: c.claim.clone(),
                any_of: c.any_of.clone(),
            })
            .collect(),
        claim_headers,
        forward_token: p.forward_token.unwrap_or(false),
    }
}

fn token_source(
    l: &api::TokenLocation,
    field: &str,
    at: &RuleRef<'_>,
    diags: &mut Diagnostics,
) -> Option<TokenSource> {
    match (&l.header, &l.cookie, &l.query_param) {
        (Some(h), None, None) if valid_header_name(h) => Some(TokenSource::Header {
            name: h.to_ascii_lowercase(),
            prefix: l.prefix.clone().unwrap_or_default(),
        }),
        (None, Some(c), None) => Some(TokenSource::Cookie(c.clone())),
        (None, None, Some(q)) => Some(TokenSource::QueryParam(q.clone())),
        _ => {
            at.error(
                diags,
                Reason::InvalidAuth,
                format!("{field}: each extractFrom entry names one valid header, cookie or queryParam; this one is skipped"),
            );
            None
        }
    }
}

fn remote_jwks(
    inputs: &Inputs<'_>,
    namespace: &str,
    r: &api::RemoteJwks,
    field: &str,
    at: &RuleRef<'_>,
    diags: &mut Diagnostics,
) -> JwksSource {
    if !fetchable(&r.uri) {
        at.error(
            diags,
            Reason::InvalidAuth,
            format!("{field}: remoteJwks.uri {:?} must be an https:// URL (plain http only to localhost); the provider accepts no token until then", r.uri),
        );
        return JwksSource::Inline(NO_KEYS.to_string());
    }
    let ca_pem = match &r.ca_secret_ref {
        None => None,
        Some(s) => match ca_bundle(
            inputs,
            namespace,
            &s.name,
            &format!("{field}: remoteJwks.caSecretRef"),
            at,
            diags,
        ) {
            Some(pem) => Some(pem),
            None => return JwksSource::Inline(NO_KEYS.to_string()),
        },
    };
    let refresh_s = r
        .refresh_interval
        .unwrap_or(Duration::from_secs(300))
        .as_std()
        .as_secs()
        .max(MIN_JWKS_REFRESH_S);
    JwksSource::Remote(RemoteJwks {
        url: r.uri.clone(),
        ca_pem,
        refresh_s,
        min_refresh_s: MIN_JWKS_REFRESH_S,
        timeout_ms: r
            .timeout
            .unwrap_or(Duration::from_secs(5))
            .as_millis()
            .max(1),
    })
}

/// `https://host…`, or `http://` to a loopback name (a local test provider).
fn fetchable(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty()
        || authority.contains('@')
        || uri.bytes().any(|b| b <= 0x20 || b >= 0x7f)
    {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    match scheme {
        "https" => true,
        "http" => matches!(host, "127.0.0.1" | "localhost" | "::1"),
        _ => false,
    }
}

fn local_jwks(
    inputs: &Inputs<'_>,
    namespace: &str,
    l: &api::LocalJwks,
    field: &str,
    at: &RuleRef<'_>,
    diags: &mut Diagnostics,
) -> JwksSource {
    let key = l.key.as_deref().unwrap_or("jwks.json");
    let Some(data) = secret(
        inputs,
        namespace,
        &l.secret_ref.name,
        &at.field(&format!("{field} localJwks.secretRef")),
        at.me,
        diags,
    ) else {
        return JwksSource::Inline(NO_KEYS.to_string());
    };
    let doc = data
        .get(key)
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .filter(|v| v.get("keys").is_some_and(serde_json::Value::is_array));
    match doc {
        Some(v) => JwksSource::Inline(v.to_string()),
        None => {
            at.error(
                diags,
                Reason::InvalidSecret,
                format!(
                    "{field}: Secret {namespace}/{} has no JWKS document under {key:?} (a JSON object with a \"keys\" array); the provider accepts no token until then",
                    l.secret_ref.name
                ),
            );
            JwksSource::Inline(NO_KEYS.to_string())
        }
    }
}

/// The `ca.crt` of a Secret, or `None` with a diagnostic.
fn ca_bundle(
    inputs: &Inputs<'_>,
    namespace: &str,
    name: &str,
    field: &str,
    at: &RuleRef<'_>,
    diags: &mut Diagnostics,
) -> Option<String> {
    let data = secret(inputs, namespace, name, field, at.me, diags)?;
    let pem = data
        .get("ca.crt")
        .and_then(|b| String::from_utf8(b.clone()).ok());
    if pem.is_none() {
        diags.error(
            at.me,
            Reason::InvalidSecret,
            format!("Secret {namespace}/{name} has no ca.crt; add the CA bundle under that key"),
        );
    }
    pem
}

/// The rule's external authorization; `Err` when it cannot be used (the rule then refuses
/// every request rather than skipping the check).
pub(super) fn ext_auth(
    inputs: &Inputs<'_>,
    namespace: &str,
    route: &str,
    e: &api::ExtAuth,
    at: &RuleRef<'_>,
    diags: &mut Diagnostics,
) -> Result<ExtAuthCheck, ()> {
    let usable = e.url.split_once("://").is_some_and(|(scheme, rest)| {
        matches!(scheme, "http" | "https")
            && !rest.is_empty()
            && !rest.starts_with('/')
            && !rest.contains(['@', '?', '#'])
            && rest.bytes().all(|b| b > 0x20 && b < 0x7f)
    });
    if !usable {
        at.error(
            diags,
            Reason::InvalidAuth,
            format!("auth.extAuth.url {:?} must be an http:// or https:// URL with a host and no query, so the rule answers 500 until it is fixed", e.url),
        );
        return Err(());
    }
    let ca_pem = match &e.ca_secret_ref {
        None => None,
        Some(s) => Some(
            ca_bundle(
                inputs,
                namespace,
                &s.name,
                &at.field("auth.extAuth.caSecretRef"),
                at,
                diags,
            )
            .ok_or(())?,
        ),
    };
    let headers = |list: &[String], field: &str, diags: &mut Diagnostics| -> Vec<String> {
        let mut out: Vec<String> = list
            .iter()
            .filter_map(|h| {
                let h = h.to_ascii_lowercase();
                if valid_header_name(&h) {
                    Some(h)
                } else {
                    at.error(
                        diags,
                        Reason::InvalidAuth,
                        format!(
                            "auth.extAuth.{field} entry {h:?} is not a header name; it is skipped"
                        ),
                    );
                    None
                }
            })
            .collect();
        out.sort();
        out.dedup();
        out
    };
    let mut headers_to_auth = headers(&e.headers_to_auth, "headersToAuth", diags);
    if headers_to_auth.is_empty() {
        headers_to_auth = vec!["authorization".to_string(), "cookie".to_string()];
    }
    let headers_to_upstream = headers(&e.headers_to_upstream, "headersToUpstream", diags)
        .into_iter()
        .filter(|h| !PROXY_HEADERS.contains(&h.as_str()))
        .collect();
    let cache = e.cache.as_ref().map(|c| ExtAuthCache {
        key_headers: headers(&c.key_headers, "cache.keyHeaders", diags),
        ttl_ms: c.ttl.unwrap_or(Duration::from_secs(30)).as_millis(),
        max_entries: c
            .max_entries
            .and_then(|m| u64::try_from(m).ok())
            .unwrap_or(10_000),
    });
    Ok(ExtAuthCheck {
        name: format!("{namespace}/{route}"),
        url: e.url.trim_end_matches('/').to_string(),
        ca_pem,
        headers_to_auth,
        headers_to_upstream,
        timeout_ms: e
            .timeout
            .unwrap_or(Duration::from_secs(1))
            .as_millis()
            .max(1),
        fail_open: e.failure_mode == Some(api::FailureMode::Open),
        cache: cache.filter(|c| !c.key_headers.is_empty() && c.ttl_ms > 0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_normalised_and_bad_ones_refused() {
        assert_eq!(cidr("10.0.0.0/8").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(cidr("10.1.2.3").as_deref(), Some("10.1.2.3/32"));
        assert_eq!(cidr("2001:db8::/32").as_deref(), Some("2001:db8::/32"));
        assert_eq!(cidr("::1").as_deref(), Some("::1/128"));
        for bad in [
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0/8",
            "x",
            "10.0.0.0/+8",
            "::/129",
            "",
        ] {
            assert_eq!(cidr(bad), None, "{bad}");
        }
    }

    #[test]
    fn jwks_urls_must_be_https_except_to_loopback() {
        assert!(fetchable("https://idp.example/.well-known/jwks.json"));
        assert!(fetchable("http://127.0.0.1:8080/jwks"));
        assert!(fetchable("http://[::1]:8080/jwks"));
        assert!(!fetchable("http://idp.example/jwks"));
        assert!(!fetchable("http://127.0.0.1.evil.example/jwks"));
        assert!(!fetchable("https://user@idp.example/jwks"));
        assert!(!fetchable("file:///etc/passwd"));
        assert!(!fetchable("https:///jwks"));
    }
}
