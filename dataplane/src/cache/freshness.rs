//! RFC 9111 freshness: whether a response may be stored, how long it stays fresh, and how
//! long it may be served stale — for Auto mode from the origin's headers, for Fixed mode
//! from the policy.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, header};
use parapet_crds::snapshot::{CacheMode, CachePolicy};

/// The response's Cache-Control directives that matter to a shared cache.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        for v in headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for d in v.split(',') {
                let d = d.trim();
                let (name, value) = match d.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                    None => (d, None),
                };
                let secs = || value.and_then(|v| v.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    // `no-cache="field"` only restricts those fields; treat it as no-cache.
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "proxy-revalidate" => cc.proxy_revalidate = true,
                    // A duplicate or invalid value makes the directive count as stale (0).
                    "max-age" => {
                        cc.max_age = Some(if cc.max_age.is_some() {
                            0
                        } else {
                            secs().unwrap_or(0)
                        })
                    }
                    "s-maxage" => {
                        cc.s_maxage = Some(if cc.s_maxage.is_some() {
                            0
                        } else {
                            secs().unwrap_or(0)
                        })
                    }
                    "stale-while-revalidate" => cc.stale_while_revalidate = secs(),
                    "stale-if-error" => cc.stale_if_error = secs(),
                    _ => {}
                }
            }
        }
        cc
    }
}

/// How a stored response may be used over time, relative to when it was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Fresh for this long after it was received (already minus its Age).
    pub fresh_for: Duration,
    /// After that, may be served while revalidating for this long.
    pub stale_while_revalidate: Duration,
    /// After freshness, may be served when the origin fails for this long.
    pub stale_if_error: Duration,
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    NoStore,
    Private,
    SetCookie,
    Status,
    Vary,
}

/// Decides whether and for how long a response may be stored, per the policy's mode.
/// `now` is the time the response was received.
pub fn lifetime(
    policy: &CachePolicy,
    status: u16,
    headers: &HeaderMap,
    now: SystemTime,
    ttl_override: Option<Duration>,
) -> Result<Lifetime, NotStorable> {
    if !policy.statuses.contains(&status) {
        return Err(NotStorable::Status);
    }
    if headers.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|f| f.trim() == "*"))
    }) {
        return Err(NotStorable::Vary);
    }
    let cc = CacheControl::parse(headers);
    let ignore = policy.mode == CacheMode::Fixed && policy.ignore_origin_no_store;
    if cc.no_store && !ignore {
        return Err(NotStorable::NoStore);
    }
    if cc.private && !ignore && !policy.cache_authorized {
        return Err(NotStorable::Private);
    }
    if headers.contains_key(header::SET_COOKIE) && !policy.cache_authorized {
        return Err(NotStorable::SetCookie);
    }
    let policy_swr = Duration::from_millis(policy.stale_while_revalidate_ms);
    let policy_sie = Duration::from_millis(policy.stale_if_error_ms);
    match policy.mode {
        CacheMode::Fixed => Ok(Lifetime {
            fresh_for: ttl_override.unwrap_or(Duration::from_millis(policy.ttl_ms)),
            stale_while_revalidate: policy_swr,
            stale_if_error: policy_sie,
        }),
        CacheMode::Auto => {
            let age = headers
                .get(header::AGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or_default();
            let lifetime = if cc.no_cache {
                // Stored, but every use needs revalidation.
                Duration::ZERO
            } else if let Some(s) = cc.s_maxage.or(cc.max_age) {
                Duration::from_secs(s)
            } else if let Some(expires) = headers.get(header::EXPIRES) {
                // An invalid Expires (e.g. "0") means already expired.
                let date = headers
                    .get(header::DATE)
                    .and_then(|d| d.to_str().ok())
                    .and_then(|d| httpdate::parse_http_date(d).ok())
                    .unwrap_or(now);
                expires
                    .to_str()
                    .ok()
                    .and_then(|e| httpdate::parse_http_date(e).ok())
                    .and_then(|e| e.duration_since(date).ok())
                    .unwrap_or_default()
            } else {
                // Heuristic freshness: the policy's default, adapted per entry.
                ttl_override.unwrap_or(Duration::from_millis(policy.ttl_ms))
            };
            let no_stale = cc.must_revalidate || cc.proxy_revalidate || cc.no_cache;
            let swr = if no_stale {
                Duration::ZERO
            } else {
                cc.stale_while_revalidate
                    .map(Duration::from_secs)
                    .unwrap_or(policy_swr)
            };
            // stale-if-error is the origin's explicit permission; must-revalidate forbids it.
            let sie = if cc.must_revalidate || cc.proxy_revalidate {
                Duration::ZERO
            } else {
                cc.stale_if_error
                    .map(Duration::from_secs)
                    .unwrap_or(policy_sie)
            };
            Ok(Lifetime {
                fresh_for: lifetime.saturating_sub(age),
                stale_while_revalidate: swr,
                stale_if_error: sie,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: CacheMode) -> CachePolicy {
        CachePolicy {
            name: "ns/p".into(),
            mode,
            ttl_ms: 60_000,
            min_ttl_ms: 1_000,
            max_ttl_ms: 3_600_000,
            adaptive_ttl: false,
            refresh_ahead: false,
            stale_while_revalidate_ms: 0,
            stale_if_error_ms: 0,
            include_query: true,
            query_params: vec![],
            exclude_query_params: vec![],
            key_headers: vec![],
            methods: vec!["GET".into(), "HEAD".into()],
            statuses: vec![200, 203, 204, 300, 301, 404, 410],
            max_entry_bytes: 1 << 20,
            ignore_origin_no_store: false,
            cache_authorized: false,
            coalesce_timeout_ms: 5_000,
        }
    }

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    /// Response headers, status, and the expected freshness or refusal.
    type Case<'a> = (Vec<(&'a str, &'a str)>, u16, Result<Duration, NotStorable>);

    #[test]
    fn rfc9111_auto_cases() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let date = httpdate::fmt_http_date(now);
        let in_90s = httpdate::fmt_http_date(now + Duration::from_secs(90));
        let s = Duration::from_secs;
        // (headers, status, expected fresh_for or the reason it is not stored)
        let cases: Vec<Case> = vec![
            (vec![("cache-control", "max-age=30")], 200, Ok(s(30))),
            (
                vec![("cache-control", "max-age=30, s-maxage=100")],
                200,
                Ok(s(100)),
            ),
            (
                vec![("cache-control", "max-age=30"), ("age", "10")],
                200,
                Ok(s(20)),
            ),
            (
                vec![("cache-control", "max-age=30"), ("age", "50")],
                200,
                Ok(s(0)),
            ),
            (
                vec![("cache-control", "max-age=30, max-age=60")],
                200,
                Ok(s(0)),
            ),
            (vec![("cache-control", "max-age=abc")], 200, Ok(s(0))),
            (
                vec![("expires", in_90s.as_str()), ("date", date.as_str())],
                200,
                Ok(s(90)),
            ),
            (vec![("expires", "0")], 200, Ok(s(0))),
            (
                vec![("cache-control", "max-age=5"), ("expires", in_90s.as_str())],
                200,
                Ok(s(5)),
            ),
            (
                vec![("cache-control", "no-cache, max-age=60")],
                200,
                Ok(s(0)),
            ),
            (vec![], 200, Ok(s(60))),
            (
                vec![("cache-control", "no-store")],
                200,
                Err(NotStorable::NoStore),
            ),
            (
                vec![("cache-control", "private, max-age=60")],
                200,
                Err(NotStorable::Private),
            ),
            (
                vec![("set-cookie", "a=b")],
                200,
                Err(NotStorable::SetCookie),
            ),
            (vec![("vary", "*")], 200, Err(NotStorable::Vary)),
            (vec![], 500, Err(NotStorable::Status)),
            (vec![("cache-control", "max-age=60")], 404, Ok(s(60))),
        ];
        let p = policy(CacheMode::Auto);
        for (headers, status, want) in cases {
            let got = lifetime(&p, status, &h(&headers), now, None).map(|l| l.fresh_for);
            assert_eq!(got, want, "{headers:?} {status}");
        }
    }

    #[test]
    fn stale_windows_follow_origin_then_policy() {
        let now = SystemTime::now();
        let mut p = policy(CacheMode::Auto);
        p.stale_if_error_ms = 300_000;
        p.stale_while_revalidate_ms = 10_000;
        let l = lifetime(
            &p,
            200,
            &h(&[(
                "cache-control",
                "max-age=1, stale-while-revalidate=7, stale-if-error=9",
            )]),
            now,
            None,
        )
        .unwrap();
        assert_eq!(
            (l.stale_while_revalidate, l.stale_if_error),
            (Duration::from_secs(7), Duration::from_secs(9))
        );
        let l = lifetime(&p, 200, &h(&[("cache-control", "max-age=1")]), now, None).unwrap();
        assert_eq!(
            (l.stale_while_revalidate, l.stale_if_error),
            (Duration::from_secs(10), Duration::from_secs(300))
        );
        let l = lifetime(
            &p,
            200,
            &h(&[("cache-control", "max-age=1, must-revalidate")]),
            now,
            None,
        )
        .unwrap();
        assert_eq!(
            (l.stale_while_revalidate, l.stale_if_error),
            (Duration::ZERO, Duration::ZERO)
        );
    }

    #[test]
    fn fixed_mode_ignores_origin_freshness_but_not_privacy() {
        let now = SystemTime::now();
        let mut p = policy(CacheMode::Fixed);
        p.ttl_ms = 5_000;
        let l = lifetime(
            &p,
            200,
            &h(&[("cache-control", "max-age=0, no-cache")]),
            now,
            None,
        )
        .unwrap();
        assert_eq!(l.fresh_for, Duration::from_secs(5));
        assert_eq!(
            lifetime(&p, 200, &h(&[("cache-control", "no-store")]), now, None),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            lifetime(&p, 200, &h(&[("cache-control", "private")]), now, None),
            Err(NotStorable::Private)
        );
        p.ignore_origin_no_store = true;
        assert!(
            lifetime(
                &p,
                200,
                &h(&[("cache-control", "no-store, private")]),
                now,
                None
            )
            .is_ok()
        );
        // Set-Cookie is never shared, whatever the mode, unless the policy keys on it.
        assert_eq!(
            lifetime(&p, 200, &h(&[("set-cookie", "s=1")]), now, None),
            Err(NotStorable::SetCookie)
        );
    }
}
