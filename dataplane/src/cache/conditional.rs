//! What the client asked of a full stored response: `If-None-Match` / `If-Modified-Since`
//! (a 304, RFC 9111 §4.3.2 and RFC 9110 §13) and `Range` / `If-Range` (a 206, RFC 9110 §14).
//! If-Match and If-Unmodified-Since are not a cache's to answer (§4.3.2): such requests go to
//! the origin (`cacheable_request`).

use std::{ops::Range, time::SystemTime};

use http::{HeaderMap, Method, StatusCode, header};

use super::{control::list_members, freshness::http_date};

/// How to answer from a full response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Full,
    NotModified,
    /// 206 with these bytes.
    Partial(Range<usize>),
    /// 416: no byte of the range exists.
    Unsatisfiable,
}

/// The request headers that ask for a conditional or partial answer; removed from the
/// origin request when the cache fetches the full response for itself.
pub const CLIENT_CONDITIONALS: [header::HeaderName; 4] = [
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::RANGE,
    header::IF_RANGE,
];

/// The shape of the answer to a GET/HEAD for a response with `status` and `headers` whose
/// body is `len` bytes. `received`: when the response was received (stands in for
/// Last-Modified and Date in If-Modified-Since).
pub fn shape(
    method: &Method,
    request: &HeaderMap,
    status: StatusCode,
    headers: &HeaderMap,
    len: usize,
    received: SystemTime,
) -> Shape {
    // Most requests ask for none of this: one pass over their few field names says so.
    if status != StatusCode::OK || !asks(request) {
        return Shape::Full;
    }
    if not_modified(request, headers, received) {
        return Shape::NotModified;
    }
    if method != Method::GET {
        return Shape::Full;
    }
    let Some(range) = request.get(header::RANGE).and_then(|r| r.to_str().ok()) else {
        return Shape::Full;
    };
    if !if_range_holds(request, headers) {
        return Shape::Full;
    }
    match byte_range(range, len) {
        Some(Ok(r)) => Shape::Partial(r),
        Some(Err(())) => Shape::Unsatisfiable,
        None => Shape::Full,
    }
}

/// Whether the request carries any of [`CLIENT_CONDITIONALS`].
pub fn asks(request: &HeaderMap) -> bool {
    request.keys().any(|n| CLIENT_CONDITIONALS.contains(n))
}

/// If-None-Match (weak comparison) first; If-Modified-Since only without it (RFC 9110
/// §13.2.2).
fn not_modified(request: &HeaderMap, headers: &HeaderMap, received: SystemTime) -> bool {
    let inm: Vec<&str> = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(list_members)
        .collect();
    if !inm.is_empty() || request.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = headers.get(header::ETAG).and_then(|e| e.to_str().ok()) else {
            return inm.contains(&"*");
        };
        return inm.iter().any(|t| *t == "*" || weak_eq(t, etag));
    }
    let Some(since) = http_date(request, header::IF_MODIFIED_SINCE) else {
        return false;
    };
    let modified = http_date(headers, header::LAST_MODIFIED)
        .or_else(|| http_date(headers, header::DATE))
        .unwrap_or(received);
    modified <= since
}

/// If-Range: a strong entity-tag match, or a date equal to Last-Modified (RFC 9110 §13.1.5).
fn if_range_holds(request: &HeaderMap, headers: &HeaderMap) -> bool {
    let Some(cond) = request.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return !request.contains_key(header::IF_RANGE);
    };
    let cond = cond.trim();
    if cond.starts_with('"') || cond.starts_with("W/") {
        return headers
            .get(header::ETAG)
            .and_then(|e| e.to_str().ok())
            .is_some_and(|etag| strong_eq(cond, etag));
    }
    match (
        httpdate::parse_http_date(cond).ok(),
        http_date(headers, header::LAST_MODIFIED),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The entity-tag without its weakness indicator, when it is well-formed.
fn opaque(tag: &str) -> Option<(&str, bool)> {
    let tag = tag.trim();
    let (weak, rest) = match tag.strip_prefix("W/") {
        Some(r) => (true, r),
        None => (false, tag),
    };
    (rest.len() >= 2 && rest.starts_with('"') && rest.ends_with('"')).then_some((rest, weak))
}

pub fn weak_eq(a: &str, b: &str) -> bool {
    matches!((opaque(a), opaque(b)), (Some((x, _)), Some((y, _))) if x == y)
}

pub fn strong_eq(a: &str, b: &str) -> bool {
    matches!((opaque(a), opaque(b)), (Some((x, false)), Some((y, false))) if x == y)
}

/// One byte range of a `len`-byte body: `None` when the header is not a single valid
/// bytes range (then the full response is sent, as RFC 9110 §14.2 allows), `Err` when no
/// byte of it exists.
fn byte_range(value: &str, len: usize) -> Option<Result<Range<usize>, ()>> {
    let (unit, set) = value.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = list_members(set);
    let spec = specs.next()?;
    if specs.next().is_some() {
        // Several ranges would need multipart/byteranges; the whole body is a valid answer.
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let num = |s: &str| -> Option<Option<usize>> {
        let s = s.trim();
        if s.is_empty() {
            return Some(None);
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // Larger than any body: saturate.
        Some(Some(s.parse().unwrap_or(usize::MAX)))
    };
    match (num(first)?, num(last)?) {
        (Some(first), last) => {
            if last.is_some_and(|l| l < first) {
                return None;
            }
            if first >= len {
                return Some(Err(()));
            }
            let end = last.map_or(len, |l| l.saturating_add(1).min(len));
            Some(Ok(first..end))
        }
        (None, Some(suffix)) => {
            if suffix == 0 || len == 0 {
                return Some(Err(()));
            }
            Some(Ok(len.saturating_sub(suffix)..len))
        }
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    use crate::cache::test_headers as h;

    #[test]
    fn conditionals_and_ranges() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let lm = httpdate::fmt_http_date(t0);
        let stored = h(&[("etag", "\"v1\""), ("last-modified", &lm)]);
        let get =
            |req: &[(&str, &str)]| shape(&Method::GET, &h(req), StatusCode::OK, &stored, 10, t0);
        let earlier = httpdate::fmt_http_date(t0 - Duration::from_secs(86_400));
        let cases: Vec<(Vec<(&str, &str)>, Shape)> = vec![
            (vec![], Shape::Full),
            (vec![("if-none-match", "\"v1\"")], Shape::NotModified),
            (vec![("if-none-match", "W/\"v1\"")], Shape::NotModified),
            (vec![("if-none-match", "\"x\", \"v1\"")], Shape::NotModified),
            (vec![("if-none-match", "*")], Shape::NotModified),
            (vec![("if-none-match", "\"v2\"")], Shape::Full),
            // If-None-Match decides alone, even when If-Modified-Since would hold.
            (
                vec![("if-none-match", "\"v2\""), ("if-modified-since", &lm)],
                Shape::Full,
            ),
            (vec![("if-modified-since", &lm)], Shape::NotModified),
            (vec![("if-modified-since", &earlier)], Shape::Full),
            (vec![("if-modified-since", "yesterday")], Shape::Full),
            (vec![("range", "bytes=2-5")], Shape::Partial(2..6)),
            (vec![("range", "bytes=-3")], Shape::Partial(7..10)),
            (vec![("range", "bytes=7-")], Shape::Partial(7..10)),
            (vec![("range", "bytes=7-100")], Shape::Partial(7..10)),
            (vec![("range", "BYTES = 0-0")], Shape::Partial(0..1)),
            (vec![("range", "bytes=20-")], Shape::Unsatisfiable),
            (vec![("range", "bytes=-0")], Shape::Unsatisfiable),
            (vec![("range", "bytes=5-2")], Shape::Full),
            (vec![("range", "bytes=0-1, 4-5")], Shape::Full),
            (vec![("range", "items=0-1")], Shape::Full),
            (vec![("range", "bytes=a-b")], Shape::Full),
            (
                vec![("range", "bytes=2-5"), ("if-range", "\"v1\"")],
                Shape::Partial(2..6),
            ),
            (
                vec![("range", "bytes=2-5"), ("if-range", "W/\"v1\"")],
                Shape::Full,
            ),
            (
                vec![("range", "bytes=2-5"), ("if-range", "\"v0\"")],
                Shape::Full,
            ),
            (
                vec![("range", "bytes=2-5"), ("if-range", &lm)],
                Shape::Partial(2..6),
            ),
            (
                vec![("range", "bytes=2-5"), ("if-range", &earlier)],
                Shape::Full,
            ),
        ];
        for (req, want) in cases {
            assert_eq!(get(&req), want, "{req:?}");
        }
        // HEAD gets 304s but never ranges; other statuses are sent whole.
        assert_eq!(
            shape(
                &Method::HEAD,
                &h(&[("range", "bytes=0-1")]),
                StatusCode::OK,
                &stored,
                10,
                t0
            ),
            Shape::Full
        );
        assert_eq!(
            shape(
                &Method::GET,
                &h(&[("if-none-match", "\"v1\"")]),
                StatusCode::NOT_FOUND,
                &stored,
                10,
                t0
            ),
            Shape::Full
        );
    }

    proptest! {
        /// Any satisfiable range stays inside the body and is never empty.
        #[test]
        fn ranges_stay_inside_the_body(v in "[ -~]{0,24}", len in 0usize..64) {
            if let Some(Ok(r)) = byte_range(&v, len) {
                prop_assert!(r.start < r.end && r.end <= len, "{v:?} {len} {r:?}");
            }
        }

        #[test]
        fn first_last_ranges(first in 0usize..100, span in 0usize..100, len in 1usize..100) {
            let got = byte_range(&format!("bytes={first}-{}", first + span), len);
            if first >= len {
                prop_assert_eq!(got, Some(Err(())));
            } else {
                prop_assert_eq!(got, Some(Ok(first..(first + span + 1).min(len))));
            }
        }
    }
}
