//! Cache keys: method + scheme + host + path + normalised query + configured request
//! headers. Keys are full strings (compared exactly on every hit), so two requests can never
//! share an entry by hash collision.

use std::fmt::Write;

use http::{HeaderMap, Method};
use parapet_crds::snapshot::CachePolicy;

use super::control::list_members;

/// Builds the primary key for a request.
pub fn primary_key(
    policy: &CachePolicy,
    method: &Method,
    scheme: &str,
    host: &str,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> String {
    // HEAD is answered from GET's entry, so they share one.
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    let mut key = url_key(policy, method, scheme, host, path, query);
    for name in &policy.key_headers {
        append_header(&mut key, name, headers);
    }
    key
}

/// The part of a key that names the resource: policy, method and URL, without the request
/// headers the key adds. Unsafe requests invalidate by it.
pub fn url_key(
    policy: &CachePolicy,
    method: &str,
    scheme: &str,
    host: &str,
    path: &str,
    query: Option<&str>,
) -> String {
    let mut key = String::with_capacity(64 + path.len());
    let _ = write!(key, "{}\n{method}\n{scheme}://{host}{path}", policy.name);
    if policy.include_query
        && let Some(q) = query
    {
        let mut pairs: Vec<(&str, &str)> = q
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .filter(|(k, _)| {
                policy.query_params.is_empty() || policy.query_params.iter().any(|w| w == k)
            })
            .filter(|(k, _)| !policy.exclude_query_params.iter().any(|x| x == k))
            .collect();
        pairs.sort_unstable();
        for (i, (k, v)) in pairs.iter().enumerate() {
            key.push(if i == 0 { '?' } else { '&' });
            key.push_str(k);
            if !v.is_empty() {
                key.push('=');
                key.push_str(v);
            }
        }
    }
    key
}

/// The [`url_key`] prefix of a key.
pub fn url_of(key: &str) -> &str {
    let mut newlines = key.match_indices('\n').map(|(i, _)| i);
    match newlines.nth(2) {
        Some(i) => &key[..i],
        None => key,
    }
}

/// The path (with query) of a key built by [`primary_key`].
pub fn path_of(key: &str) -> Option<&str> {
    let url = key.split('\n').nth(2)?;
    let after_scheme = url.split_once("://")?.1;
    after_scheme.find('/').map(|i| &after_scheme[i..])
}

/// Appends `\n name:v1,v2` for a header (or `\n name:` when absent), normalised as RFC 9111
/// §4.1 allows: field lines combined, whitespace around list members dropped, and for the
/// content-negotiation fields whose values are case-insensitive and unordered, lower-cased
/// and sorted. So `gzip, br` and `BR,gzip` select the same variant.
pub fn append_header(key: &mut String, name: &str, headers: &HeaderMap) {
    key.push('\n');
    key.push_str(name);
    key.push(':');
    let mut members: Vec<std::borrow::Cow<'_, str>> = Vec::new();
    for v in headers.get_all(name) {
        match v.to_str() {
            Ok(v) => members.extend(list_members(v).map(normalise_member)),
            // Not visible ASCII: kept byte for byte, behind a control character no visible
            // value can hold, so it never equals another value.
            Err(_) => members.push(format!("\u{1}{:?}", v.as_bytes()).into()),
        }
    }
    if UNORDERED_CASELESS.contains(&name) {
        for m in &mut members {
            if m.bytes().any(|b| b.is_ascii_uppercase()) {
                *m = m.to_ascii_lowercase().into();
            }
        }
        members.sort_unstable();
    }
    for (i, m) in members.iter().enumerate() {
        if i > 0 {
            key.push(',');
        }
        key.push_str(m);
    }
}

/// Request fields whose members are case-insensitive tokens and whose order carries no
/// meaning (preference is by `q` weight).
const UNORDERED_CASELESS: [&str; 3] = ["accept-encoding", "accept-charset", "te"];

/// A list member without optional whitespace around `;` and `=` (outside quoted strings).
fn normalise_member(m: &str) -> std::borrow::Cow<'_, str> {
    if !m.contains([';', '=']) || m.contains('"') {
        return m.into();
    }
    m.split(';')
        .map(|p| match p.split_once('=') {
            Some((k, v)) => format!("{}={}", k.trim(), v.trim()),
            None => p.trim().to_string(),
        })
        .collect::<Vec<_>>()
        .join(";")
        .into()
}

/// The variant key for a response that `Vary`s on `fields`: the primary key plus the
/// request's values of those fields.
pub fn variant_key(primary: &str, fields: &[String], headers: &HeaderMap) -> String {
    let mut key = String::with_capacity(primary.len() + 32);
    key.push_str(primary);
    key.push_str("\nvary");
    for f in fields {
        append_header(&mut key, f, headers);
    }
    key
}

/// The lower-case field names of a response's Vary header, sorted.
pub fn vary_fields(headers: &HeaderMap) -> Vec<String> {
    let mut fields: Vec<String> = headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|f| f.trim().to_ascii_lowercase())
        .filter(|f| !f.is_empty())
        .collect();
    fields.sort();
    fields.dedup();
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CachePolicy {
        CachePolicy {
            name: "bank/balances".into(),
            mode: parapet_crds::snapshot::CacheMode::Fixed,
            ttl_ms: 5000,
            min_ttl_ms: 0,
            max_ttl_ms: 0,
            adaptive_ttl: false,
            refresh_ahead: false,
            stale_while_revalidate_ms: 0,
            stale_if_error_ms: 0,
            include_query: true,
            query_params: vec![],
            exclude_query_params: vec!["utm_source".into()],
            key_headers: vec!["x-account-id".into()],
            methods: vec!["GET".into()],
            statuses: vec![200],
            max_entry_bytes: 1024,
            ignore_origin_no_store: false,
            cache_authorized: false,
            coalesce_timeout_ms: 100,
            ..CachePolicy::default()
        }
    }

    #[test]
    fn query_is_sorted_and_filtered_and_headers_count() {
        let p = policy();
        let mut h = HeaderMap::new();
        h.insert("x-account-id", "42".parse().unwrap());
        let a = primary_key(
            &p,
            &Method::GET,
            "http",
            "api",
            "/b",
            Some("z=1&a=2&utm_source=x"),
            &h,
        );
        let b = primary_key(&p, &Method::HEAD, "http", "api", "/b", Some("a=2&z=1"), &h);
        assert_eq!(a, b);
        assert!(a.ends_with("/b?a=2&z=1\nx-account-id:42"), "{a}");
        let mut other = HeaderMap::new();
        other.insert("x-account-id", "43".parse().unwrap());
        assert_ne!(
            a,
            primary_key(
                &p,
                &Method::GET,
                "http",
                "api",
                "/b",
                Some("a=2&z=1"),
                &other
            )
        );
        assert_ne!(
            a,
            primary_key(&p, &Method::GET, "https", "api", "/b", Some("a=2&z=1"), &h)
        );
        assert_ne!(
            a,
            primary_key(&p, &Method::GET, "http", "api2", "/b", Some("a=2&z=1"), &h)
        );
        let mut only = p.clone();
        only.query_params = vec!["a".into()];
        assert!(
            primary_key(
                &only,
                &Method::GET,
                "http",
                "api",
                "/b",
                Some("z=1&a=2"),
                &h
            )
            .contains("/b?a=2\n")
        );
        let mut none = p.clone();
        none.include_query = false;
        assert!(
            primary_key(&none, &Method::GET, "http", "api", "/b", Some("z=1"), &h).contains("/b\n")
        );
    }

    #[test]
    fn vary_values_are_normalised() {
        let fields = vec!["accept-encoding".to_string(), "accept-language".to_string()];
        let req = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            variant_key("k", &fields, &m)
        };
        let base = req(&[
            ("accept-encoding", "gzip, br"),
            ("accept-language", "en;q=0.8, fr"),
        ]);
        for same in [
            req(&[
                ("accept-encoding", "br,gzip"),
                ("accept-language", "en ; q=0.8,fr"),
            ]),
            req(&[
                ("accept-encoding", "GZIP,   BR"),
                ("accept-language", "en;q=0.8,fr"),
            ]),
            req(&[
                ("accept-encoding", "gzip"),
                ("accept-encoding", "br"),
                ("accept-language", "en;q=0.8"),
                ("accept-language", "fr"),
            ]),
        ] {
            assert_eq!(base, same);
        }
        for other in [
            req(&[
                ("accept-encoding", "gzip"),
                ("accept-language", "en;q=0.8, fr"),
            ]),
            // Language order is kept: equal weights are not assumed to be unordered.
            req(&[
                ("accept-encoding", "gzip, br"),
                ("accept-language", "fr, en;q=0.8"),
            ]),
            req(&[
                ("accept-encoding", "gzip, br"),
                ("accept-language", "\"en, fr\""),
            ]),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(
            url_of("p\nGET\nhttp://h/a?b\nx-h:1"),
            "p\nGET\nhttp://h/a?b"
        );
    }

    #[test]
    fn vary_variants_differ_by_value() {
        let mut resp = HeaderMap::new();
        resp.append("vary", "Accept-Encoding, accept-language".parse().unwrap());
        let fields = vary_fields(&resp);
        assert_eq!(fields, vec!["accept-encoding", "accept-language"]);
        let mut r1 = HeaderMap::new();
        r1.insert("accept-encoding", "gzip".parse().unwrap());
        let r2 = HeaderMap::new();
        assert_ne!(
            variant_key("k", &fields, &r1),
            variant_key("k", &fields, &r2)
        );
        assert_eq!(
            variant_key("k", &fields, &r1),
            variant_key("k", &fields, &r1.clone())
        );
    }
}
