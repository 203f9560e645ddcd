//! The cache's header parsers on arbitrary field values: Cache-Control and CDN-Cache-Control
//! directives, Age, the HTTP dates, the storage decision and freshness, a client's
//! conditionals and Range against a stored response, and Vary normalisation. Each input
//! line is one field's value, in the order of `FIELDS`; the first byte is the body length.
//! Besides not panicking: a range stays inside the body, Age stays within delta-seconds,
//! and reordering Accept-Encoding members never changes the variant key.
#![no_main]

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use parapet_crds::snapshot::{CacheMode, CachePolicy};
use parapet_dataplane::cache::{
    Exchange,
    conditional::{Shape, shape},
    control::{Directives, MAX_DELTA_SECONDS},
    freshness::{age_value, corrected_initial_age, http_date},
    key::variant_key,
    lifetime,
};

const FIELDS: [&str; 13] = [
    "cache-control",
    "cdn-cache-control",
    "age",
    "date",
    "expires",
    "last-modified",
    "etag",
    "vary",
    "if-none-match",
    "if-modified-since",
    "range",
    "if-range",
    "accept-encoding",
];

fuzz_target!(|data: &[u8]| {
    let [len, rest @ ..] = data else {
        return;
    };
    let len = usize::from(*len);
    let (mut response, mut request) = (HeaderMap::new(), HeaderMap::new());
    for (i, line) in rest.split(|b| *b == b'\n').take(FIELDS.len()).enumerate() {
        let Ok(value) = HeaderValue::from_bytes(line) else {
            continue;
        };
        let name = HeaderName::from_static(FIELDS[i]);
        if i < 8 {
            response.append(name, value);
        } else {
            request.append(name, value);
        }
    }
    let _ = Directives::of_response(&response);
    if let Some(age) = age_value(&response) {
        assert!(age <= MAX_DELTA_SECONDS);
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let corrected = corrected_initial_age(age_value(&response), http_date(&response, http::header::DATE), now, now);
    assert!(corrected >= Duration::from_secs(age_value(&response).unwrap_or(0)));
    for mode in [CacheMode::Auto, CacheMode::Fixed] {
        let policy = CachePolicy {
            mode,
            heuristic_percent: 10,
            heuristic_max_ms: 86_400_000,
            ..CachePolicy::default()
        };
        for status in [200, 404, 500] {
            let exchange = Exchange {
                sent: now,
                received: now,
                authorized: status == 404,
                adapted_ttl: None,
            };
            if let Ok(l) = lifetime(&policy, status, &response, exchange)
                && mode == CacheMode::Auto
                && l.heuristic
            {
                assert!(l.freshness <= Duration::from_secs(86_400));
            }
        }
    }
    for method in [Method::GET, Method::HEAD] {
        match shape(&method, &request, StatusCode::OK, &response, len, now) {
            Shape::Partial(r) => {
                assert!(method == Method::GET && r.start < r.end && r.end <= len, "{r:?} of {len}")
            }
            Shape::Unsatisfiable => assert!(method == Method::GET),
            Shape::Full | Shape::NotModified => {}
        }
    }
    // Accept-Encoding members in reverse order select the same variant.
    let fields = vec!["accept-encoding".to_string()];
    if let Some(Ok(v)) = request.get("accept-encoding").map(|v| v.to_str()) {
        let reversed: Vec<&str> = v.split(',').rev().collect();
        if !v.contains('"')
            && let Ok(rv) = HeaderValue::from_str(&reversed.join(","))
        {
            let mut other = HeaderMap::new();
            other.insert("accept-encoding", rv);
            assert_eq!(
                variant_key("k", &fields, &request),
                variant_key("k", &fields, &other),
                "{v:?}"
            );
        }
    }
});
