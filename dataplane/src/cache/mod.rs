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
pub use layer::{Cache, CacheMetrics, Origin, X_CACHE};
pub use store::{Fill, FillGuard, Store};

use http::{HeaderMap, Method, header};
use parapet_crds::snapshot::{CacheMode, CachePolicy};

/// Whether a request may use the cache at all.
pub fn cacheable_request(policy: &CachePolicy, method: &Method, headers: &HeaderMap) -> bool {
    if !policy.methods.iter().any(|m| m == method.as_str()) {
        return false;
    }
    if !policy.cache_authorized {
        // Cookies are one client's: such requests bypass unless the policy keys on them.
        if headers.contains_key(header::COOKIE) {
            return false;
        }
        // Authorization: Auto mode may answer it from, and store, responses the origin marks
        // shareable (RFC 9111 §3.5, checked when storing); Fixed mode overrides the origin,
        // so it never does.
        if policy.mode == CacheMode::Fixed && headers.contains_key(header::AUTHORIZATION) {
            return false;
        }
    }
    // Preconditions only the origin can evaluate (RFC 9111 §4.3.2) go to it.
    if headers.contains_key(header::IF_MATCH) || headers.contains_key(header::IF_UNMODIFIED_SINCE) {
        return false;
    }
    // A client that asks for an end-to-end reload gets one.
    !headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| control::list_members(v).any(|d| d.eq_ignore_ascii_case("no-store")))
}

#[cfg(test)]
mod tests;
