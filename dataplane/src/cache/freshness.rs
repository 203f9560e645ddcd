//! RFC 9111 freshness: whether a response may be stored (§3), its freshness lifetime (§4.2.1,
//! heuristics §4.2.2), its age (§4.2.3), and how long it may be served stale — for Auto mode
//! from the origin's headers, for Fixed mode from the policy.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, header};
use parapet_crds::snapshot::{CacheMode, CachePolicy};

use super::control::{Directives, delta_seconds, list_members};

/// How a stored response may be used over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// The freshness lifetime (§4.2.1): fresh while its age is below this.
    pub freshness: Duration,
    /// Once stale, it may be served while revalidating for this long…
    pub stale_while_revalidate: Duration,
    /// …and when the origin fails for this long.
    pub stale_if_error: Duration,
    /// The freshness is the cache's own (heuristic, `defaultTtl`, Fixed's TTL), which
    /// adaptive TTLs may change; explicit freshness from the origin is never changed.
    pub heuristic: bool,
}

/// Why a response is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    NoStore,
    Private,
    SetCookie,
    Status,
    Vary,
    /// The request carried Authorization and the response does not allow sharing (§3.5).
    Authorization,
    /// Never fresh and nothing to revalidate it with: storing it could serve no one.
    Useless,
}

/// What is known of the exchange a response came from.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    /// When the request was sent and when its response arrived (wall clock: Date
    /// arithmetic).
    pub sent: SystemTime,
    pub received: SystemTime,
    /// The request carried Authorization.
    pub authorized: bool,
    /// Adaptive TTL: the cache's own freshness to use instead of the heuristic.
    pub adapted_ttl: Option<Duration>,
}

impl Exchange {
    /// An exchange whose request went out at `sent` and whose response has just arrived.
    pub fn answered(sent: SystemTime, authorized: bool) -> Self {
        Self {
            sent,
            received: SystemTime::now(),
            authorized,
            adapted_ttl: None,
        }
    }

    /// The corrected initial age (§4.2.3) of a response with these headers.
    pub fn initial_age(&self, headers: &HeaderMap) -> Duration {
        corrected_initial_age(
            age_value(headers),
            http_date(headers, header::DATE),
            self.sent,
            self.received,
        )
    }
}

/// Statuses RFC 9110 §15.1 defines as heuristically cacheable.
const HEURISTIC_STATUSES: [u16; 12] = [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// Whether this cache understands a final status well enough to store it: partial content
/// is not stored whole, and a 304 only updates an entry.
fn understood(status: u16) -> bool {
    (200..=599).contains(&status) && status != 206 && status != 304
}

/// Decides whether and for how long a response may be stored, per the policy's mode.
pub fn lifetime(
    policy: &CachePolicy,
    status: u16,
    headers: &HeaderMap,
    exchange: Exchange,
) -> Result<Lifetime, NotStorable> {
    let allowed = if policy.statuses.is_empty() {
        understood(status)
    } else {
        policy.statuses.contains(&status)
    };
    if !allowed {
        return Err(NotStorable::Status);
    }
    if headers
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| list_members(v).any(|f| f == "*"))
    {
        return Err(NotStorable::Vary);
    }
    let d = Directives::of_response(headers);
    let fixed = policy.mode == CacheMode::Fixed;
    let ignore = fixed && policy.ignore_origin_no_store;
    // must-understand lets a cache that knows the status store despite no-store (§5.2.2.3).
    if d.no_store && !ignore && !(d.must_understand && understood(status)) {
        return Err(NotStorable::NoStore);
    }
    if d.private && !ignore && !policy.cache_authorized {
        return Err(NotStorable::Private);
    }
    if headers.contains_key(header::SET_COOKIE) && !policy.cache_authorized {
        return Err(NotStorable::SetCookie);
    }
    if exchange.authorized
        && !policy.cache_authorized
        && !(d.public || d.s_maxage.is_some() || d.must_revalidate)
    {
        return Err(NotStorable::Authorization);
    }
    let policy_swr = Duration::from_millis(policy.stale_while_revalidate_ms);
    let policy_sie = Duration::from_millis(policy.stale_if_error_ms);
    if fixed {
        return Ok(Lifetime {
            freshness: Duration::from_millis(policy.ttl_ms),
            stale_while_revalidate: policy_swr,
            stale_if_error: policy_sie,
            heuristic: true,
        });
    }
    let (freshness, heuristic) = match explicit_freshness(&d, headers, exchange.received) {
        Some(f) => (f, false),
        None => {
            let may_guess = HEURISTIC_STATUSES.contains(&status) || d.public;
            if !may_guess {
                // Without explicit freshness only these may be stored at all (§3).
                return Err(NotStorable::Status);
            }
            let guess = heuristic_freshness(policy, headers, exchange.received);
            match (guess, exchange.adapted_ttl) {
                (Some(_), Some(adapted)) => (adapted, true),
                (Some(g), None) => (g, true),
                (None, _) => (Duration::ZERO, false),
            }
        }
    };
    if d.no_cache {
        // Stored, but each use needs validation.
        return stored_for_validation(headers, Duration::ZERO);
    }
    let window = |origin: Option<u64>, policy: Duration| {
        if d.forbids_staleness() || status >= 500 {
            // A stored error is never replayed in place of the origin's answer.
            Duration::ZERO
        } else if let Some(s) = origin {
            Duration::from_secs(s)
        } else if d.forbids_default_staleness() {
            Duration::ZERO
        } else {
            policy
        }
    };
    let lifetime = Lifetime {
        freshness,
        stale_while_revalidate: window(d.stale_while_revalidate, policy_swr),
        stale_if_error: window(d.stale_if_error, policy_sie),
        heuristic,
    };
    if freshness.is_zero() {
        return stored_for_validation(headers, Duration::ZERO);
    }
    Ok(lifetime)
}

/// A response that is stale as soon as it is stored: kept only when it has a validator, so
/// the next request revalidates it instead of fetching it whole.
fn stored_for_validation(
    headers: &HeaderMap,
    freshness: Duration,
) -> Result<Lifetime, NotStorable> {
    if has_validator(headers) {
        Ok(Lifetime {
            freshness,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            heuristic: false,
        })
    } else {
        Err(NotStorable::Useless)
    }
}

pub fn has_validator(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ETAG) || headers.contains_key(header::LAST_MODIFIED)
}

/// s-maxage, max-age, then Expires − Date (§4.2.1); `None` when the origin gave none.
fn explicit_freshness(
    d: &Directives,
    headers: &HeaderMap,
    received: SystemTime,
) -> Option<Duration> {
    if let Some(s) = d.s_maxage.or(d.max_age) {
        return Some(Duration::from_secs(s));
    }
    if d.targeted {
        return None;
    }
    let mut expires = headers.get_all(header::EXPIRES).iter();
    let first = expires.next()?;
    if expires.next().is_some() {
        // Two Expires lines: treated as stale (§4.2.1).
        return Some(Duration::ZERO);
    }
    let date = http_date(headers, header::DATE).unwrap_or(received);
    // An invalid Expires (e.g. "0") means already expired (§5.3).
    Some(
        first
            .to_str()
            .ok()
            .and_then(|e| httpdate::parse_http_date(e.trim()).ok())
            .and_then(|e| e.duration_since(date).ok())
            .unwrap_or_default(),
    )
}

/// A fraction of the time since Last-Modified, capped (§4.2.2); else the operator's default.
fn heuristic_freshness(
    policy: &CachePolicy,
    headers: &HeaderMap,
    received: SystemTime,
) -> Option<Duration> {
    let date = http_date(headers, header::DATE).unwrap_or(received);
    if let Some(modified) = http_date(headers, header::LAST_MODIFIED) {
        let since = date.duration_since(modified).unwrap_or_default();
        let guess = since.mul_f64(f64::from(policy.heuristic_percent.min(100)) / 100.0);
        let guess = guess.min(Duration::from_millis(policy.heuristic_max_ms));
        return (!guess.is_zero()).then_some(guess);
    }
    (policy.ttl_ms > 0).then(|| Duration::from_millis(policy.ttl_ms))
}

/// A header's HTTP-date in any of the three formats (RFC 9110 §5.6.7).
pub fn http_date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    let v = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(v.trim()).ok()
}

/// The Age field's value (§5.1): the first member of a list, `None` when invalid.
pub fn age_value(headers: &HeaderMap) -> Option<u64> {
    let first = headers.get(header::AGE)?.to_str().ok()?;
    delta_seconds(first.split(',').next()?.trim())
}

/// The corrected initial age of a response (§4.2.3): the larger of what its Date implies and
/// what its Age says plus the time the request took.
pub fn corrected_initial_age(
    age_value: Option<u64>,
    date: Option<SystemTime>,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let apparent_age = date
        .and_then(|d| response_time.duration_since(d).ok())
        .unwrap_or_default();
    let response_delay = response_time
        .duration_since(request_time)
        .unwrap_or_default();
    let corrected_age_value = Duration::from_secs(age_value.unwrap_or(0)) + response_delay;
    apparent_age.max(corrected_age_value)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn policy(mode: CacheMode) -> CachePolicy {
        CachePolicy {
            name: "ns/p".into(),
            mode,
            ttl_ms: if mode == CacheMode::Fixed { 60_000 } else { 0 },
            heuristic_percent: 10,
            heuristic_max_ms: 24 * 3_600_000,
            keep_stale_ms: 3_600_000,
            min_ttl_ms: 1_000,
            max_ttl_ms: 3_600_000,
            methods: vec!["GET".into(), "HEAD".into()],
            statuses: if mode == CacheMode::Fixed {
                vec![200, 203, 204, 300, 301, 404, 410]
            } else {
                vec![]
            },
            max_entry_bytes: 1 << 20,
            coalesce_timeout_ms: 5_000,
            ..CachePolicy::default()
        }
    }

    use crate::cache::test_headers as h;

    fn at(received: SystemTime) -> Exchange {
        Exchange {
            sent: received,
            received,
            authorized: false,
            adapted_ttl: None,
        }
    }

    /// Response headers, status, and the expected freshness lifetime or refusal.
    type Case<'a> = (Vec<(&'a str, String)>, u16, Result<Duration, NotStorable>);

    #[test]
    fn rfc9111_auto_cases() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let fmt = |d: SystemTime| httpdate::fmt_http_date(d);
        let date = fmt(now);
        let s = Duration::from_secs;
        let cc = |v: &str| ("cache-control", v.to_string());
        let etag = ("etag", "\"v1\"".to_string());
        let cases: Vec<Case> = vec![
            (vec![cc("max-age=30")], 200, Ok(s(30))),
            (vec![cc("max-age=30, s-maxage=100")], 200, Ok(s(100))),
            (
                vec![cc("max-age=30, max-age=60"), etag.clone()],
                200,
                Ok(s(0)),
            ),
            (vec![cc("max-age=abc"), etag.clone()], 200, Ok(s(0))),
            (vec![cc("max-age=abc")], 200, Err(NotStorable::Useless)),
            (
                vec![("expires", fmt(now + s(90))), ("date", date.clone())],
                200,
                Ok(s(90)),
            ),
            // The other two HTTP-date formats (1994-11-06 was a Sunday).
            (
                vec![
                    ("expires", "Sunday, 06-Nov-94 08:50:37 GMT".into()),
                    ("date", "Sun, 06 Nov 1994 08:49:37 GMT".into()),
                ],
                200,
                Ok(s(60)),
            ),
            (
                vec![
                    ("expires", "Sun Nov  6 08:51:37 1994".into()),
                    ("date", "Sun, 06 Nov 1994 08:49:37 GMT".into()),
                ],
                200,
                Ok(s(120)),
            ),
            (vec![("expires", "0".into()), etag.clone()], 200, Ok(s(0))),
            (
                vec![cc("max-age=5"), ("expires", fmt(now + s(90)))],
                200,
                Ok(s(5)),
            ),
            (
                vec![cc("no-cache, max-age=60"), etag.clone()],
                200,
                Ok(s(0)),
            ),
            (
                vec![cc("no-cache, max-age=60")],
                200,
                Err(NotStorable::Useless),
            ),
            // No explicit freshness and no Last-Modified: nothing invented.
            (vec![], 200, Err(NotStorable::Useless)),
            (vec![etag.clone()], 200, Ok(s(0))),
            // Heuristic: 10% of the time since Last-Modified, capped at a day.
            (
                vec![
                    ("last-modified", fmt(now - s(1000))),
                    ("date", date.clone()),
                ],
                200,
                Ok(s(100)),
            ),
            (
                vec![
                    ("last-modified", fmt(now - s(100 * 86_400))),
                    ("date", date.clone()),
                ],
                200,
                Ok(s(86_400)),
            ),
            (
                vec![("last-modified", fmt(now - s(1000)))],
                500,
                Err(NotStorable::Status),
            ),
            (
                vec![("last-modified", fmt(now - s(1000))), cc("public")],
                500,
                Ok(s(100)),
            ),
            (vec![cc("no-store")], 200, Err(NotStorable::NoStore)),
            (
                vec![cc("no-store, must-understand, max-age=9")],
                200,
                Ok(s(9)),
            ),
            (
                vec![cc("private, max-age=60")],
                200,
                Err(NotStorable::Private),
            ),
            (vec![cc("private=\"x-a\", max-age=60")], 200, Ok(s(60))),
            (
                vec![("set-cookie", "a=b".into()), cc("max-age=60")],
                200,
                Err(NotStorable::SetCookie),
            ),
            (
                vec![("vary", "accept, *".into())],
                200,
                Err(NotStorable::Vary),
            ),
            (vec![cc("max-age=60")], 206, Err(NotStorable::Status)),
            (vec![cc("max-age=60")], 404, Ok(s(60))),
            (vec![cc("max-age=60")], 307, Ok(s(60))),
            (vec![cc("max-age=60")], 500, Ok(s(60))),
            (
                vec![("cdn-cache-control", "max-age=7".into()), cc("no-store")],
                200,
                Ok(s(7)),
            ),
            (
                vec![
                    ("cdn-cache-control", "public".into()),
                    ("expires", fmt(now + s(90))),
                ],
                200,
                Err(NotStorable::Useless),
            ),
        ];
        let p = policy(CacheMode::Auto);
        for (headers, status, want) in cases {
            let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let got = lifetime(&p, status, &h(&pairs), at(now)).map(|l| l.freshness);
            assert_eq!(got, want, "{headers:?} {status}");
        }
    }

    #[test]
    fn authorization_needs_the_response_to_allow_sharing() {
        let p = policy(CacheMode::Auto);
        let ex = Exchange {
            authorized: true,
            ..at(SystemTime::now())
        };
        for (cc, ok) in [
            ("max-age=60", false),
            ("public, max-age=60", true),
            ("s-maxage=60", true),
            ("must-revalidate, max-age=60", true),
        ] {
            let got = lifetime(&p, 200, &h(&[("cache-control", cc)]), ex);
            assert_eq!(got.is_ok(), ok, "{cc}: {got:?}");
        }
    }

    #[test]
    fn stale_windows() {
        let now = SystemTime::now();
        let mut p = policy(CacheMode::Auto);
        p.stale_if_error_ms = 300_000;
        p.stale_while_revalidate_ms = 10_000;
        let windows = |status: u16, cc: &str| {
            let l = lifetime(
                &p,
                status,
                &h(&[("cache-control", cc), ("etag", "\"e\"")]),
                at(now),
            )
            .unwrap();
            (
                l.stale_while_revalidate.as_secs(),
                l.stale_if_error.as_secs(),
            )
        };
        assert_eq!(
            windows(200, "max-age=1, stale-while-revalidate=7, stale-if-error=9"),
            (7, 9)
        );
        assert_eq!(windows(200, "max-age=1"), (10, 300));
        assert_eq!(windows(200, "max-age=1, must-revalidate"), (0, 0));
        assert_eq!(
            windows(200, "max-age=1, proxy-revalidate, stale-if-error=9"),
            (0, 0)
        );
        // s-maxage implies proxy-revalidate: the operator's defaults do not apply…
        assert_eq!(windows(200, "s-maxage=1"), (0, 0));
        // …but the origin's own permission does.
        assert_eq!(windows(200, "s-maxage=1, stale-if-error=9"), (0, 9));
        assert_eq!(windows(200, "no-cache"), (0, 0));
        assert_eq!(windows(500, "max-age=1"), (0, 0));
    }

    #[test]
    fn fixed_mode_ignores_origin_freshness_but_not_privacy() {
        let now = at(SystemTime::now());
        let mut p = policy(CacheMode::Fixed);
        p.ttl_ms = 5_000;
        let l = lifetime(
            &p,
            200,
            &h(&[("cache-control", "max-age=0, no-cache")]),
            now,
        )
        .unwrap();
        assert_eq!(l.freshness, Duration::from_secs(5));
        assert_eq!(
            lifetime(&p, 200, &h(&[("cache-control", "no-store")]), now),
            Err(NotStorable::NoStore)
        );
        assert_eq!(
            lifetime(&p, 200, &h(&[("cache-control", "private")]), now),
            Err(NotStorable::Private)
        );
        p.ignore_origin_no_store = true;
        assert!(lifetime(&p, 200, &h(&[("cache-control", "no-store, private")]), now).is_ok());
        // Set-Cookie is never shared, whatever the mode, unless the policy keys on it.
        assert_eq!(
            lifetime(&p, 200, &h(&[("set-cookie", "s=1")]), now),
            Err(NotStorable::SetCookie)
        );
    }

    #[test]
    fn age_field_values() {
        let age = |v: &str| age_value(&h(&[("age", v)]));
        assert_eq!(age("100"), Some(100));
        assert_eq!(age("5, 100"), Some(5));
        assert_eq!(age(" 7 "), Some(7));
        assert_eq!(age("abc"), None);
        assert_eq!(age("-1"), None);
        assert_eq!(age("1.5"), None);
        assert_eq!(age("99999999999999999999999"), Some(1 << 31));
        let mut two = h(&[("age", "3")]);
        two.append(header::AGE, "50".parse().unwrap());
        assert_eq!(age_value(&two), Some(3));
    }

    proptest! {
        /// §4.2.3: the corrected initial age is at least what Age and Date each imply, and
        /// grows with the time the request took.
        #[test]
        fn corrected_age_bounds(
            age in proptest::option::of(0u64..1_000_000),
            date_skew in -100_000i64..100_000,
            delay in 0u64..10_000,
            extra in 0u64..10_000,
        ) {
            let request = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            let response = request + Duration::from_secs(delay);
            let date = if date_skew >= 0 {
                response - Duration::from_secs(date_skew as u64)
            } else {
                response + Duration::from_secs((-date_skew) as u64)
            };
            let c = corrected_initial_age(age, Some(date), request, response);
            prop_assert!(c >= Duration::from_secs(age.unwrap_or(0) + delay));
            prop_assert!(c >= Duration::from_secs(date_skew.max(0) as u64));
            prop_assert_eq!(
                c,
                Duration::from_secs((age.unwrap_or(0) + delay).max(date_skew.max(0) as u64))
            );
            let slower = corrected_initial_age(age, Some(date), request - Duration::from_secs(extra), response);
            prop_assert!(slower >= c);
            // No Date: only Age and the delay count.
            prop_assert_eq!(
                corrected_initial_age(age, None, request, response),
                Duration::from_secs(age.unwrap_or(0) + delay)
            );
        }

        /// Explicit freshness: max-age minus nothing, never negative, s-maxage first.
        #[test]
        fn explicit_freshness_follows_the_directives(max_age in 0u64..10_000_000, s_maxage in proptest::option::of(0u64..10_000_000)) {
            let p = policy(CacheMode::Auto);
            let cc = match s_maxage {
                Some(s) => format!("max-age={max_age}, s-maxage={s}"),
                None => format!("max-age={max_age}"),
            };
            let got = lifetime(&p, 200, &h(&[("cache-control", &cc), ("etag", "\"x\"")]), at(SystemTime::now()));
            prop_assert_eq!(got.map(|l| l.freshness), Ok(Duration::from_secs(s_maxage.unwrap_or(max_age))));
        }

        /// Heuristic freshness is the configured share of the time since Last-Modified, and
        /// never above the cap.
        #[test]
        fn heuristic_is_a_capped_fraction(since in 1u64..100_000_000, percent in 1u8..=100, cap in 1u64..1_000_000) {
            let mut p = policy(CacheMode::Auto);
            p.heuristic_percent = percent;
            p.heuristic_max_ms = cap * 1000;
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            let headers = h(&[
                ("date", &httpdate::fmt_http_date(now)),
                ("last-modified", &httpdate::fmt_http_date(now - Duration::from_secs(since))),
            ]);
            let f = lifetime(&p, 200, &headers, at(now)).map(|l| l.freshness).unwrap();
            let want = Duration::from_secs(since).mul_f64(f64::from(percent) / 100.0).min(Duration::from_secs(cap));
            prop_assert_eq!(f, want);
        }
    }
}
