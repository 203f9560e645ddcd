//! Response caching: Fixed and Auto modes, Vary, request coalescing,
//! stale-while-revalidate, stale-if-error, refresh-ahead and adaptive TTLs, in a store
//! bounded by bytes.
//!
//! `control` reads the origin's directives, `freshness` decides what may be stored and for
//! how long (RFC 9111), `key` builds keys, `entry` is a stored response and its states,
//! `store` holds entries and coalesces fetches, `conditional` answers a client's
//! conditionals and ranges from a stored response, `layer` puts them in front of the origin.

pub mod conditional;
pub mod control;
pub mod entry;
pub mod freshness;
pub mod key;
pub mod layer;
pub mod store;

pub use entry::{Entry, Freshness, adapt_ttl};
pub use freshness::{Exchange, Lifetime, NotStorable, lifetime};
pub use layer::{Cache, CacheMetrics, CacheStatus, Origin, X_CACHE};
pub use store::{Fill, FillGuard, Store};

use http::{HeaderMap, Method, header};
use parapet_crds::snapshot::{CacheMode, CachePolicy};

/// Whether a request may use the cache at all. One pass over the request's field names (a
/// request has few) rather than a lookup per field this asks about.
pub fn cacheable_request(policy: &CachePolicy, method: &Method, headers: &HeaderMap) -> bool {
    if !policy.methods.iter().any(|m| m == method.as_str()) {
        return false;
    }
    let mut cache_control = false;
    for name in headers.keys() {
        if *name == header::COOKIE || *name == header::AUTHORIZATION {
            // Cookies are one client's: such requests bypass unless the policy keys on them.
            // Authorization: Auto mode may answer it from, and store, responses the origin
            // marks shareable (RFC 9111 §3.5, checked when storing); Fixed mode overrides the
            // origin, so it never does.
            let bypass = *name == header::COOKIE || policy.mode == CacheMode::Fixed;
            if bypass && !policy.cache_authorized {
                return false;
            }
        } else if *name == header::IF_MATCH || *name == header::IF_UNMODIFIED_SINCE {
            // Preconditions only the origin can evaluate (RFC 9111 §4.3.2) go to it.
            return false;
        } else if *name == header::CACHE_CONTROL {
            cache_control = true;
        }
    }
    // A client that asks for an end-to-end reload gets one.
    !cache_control
        || !headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| control::list_members(v).any(|d| d.eq_ignore_ascii_case("no-store")))
}

#[cfg(test)]
mod tests;

/// Headers from (name, value) pairs, appended in order (tests of the cache's parsers).
#[cfg(test)]
pub(crate) fn test_headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    m
}
