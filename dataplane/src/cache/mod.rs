//! Response caching: Fixed and Auto modes, Vary, request coalescing,
//! stale-while-revalidate, stale-if-error, refresh-ahead and adaptive TTLs, in a store
//! bounded by bytes.
//!
//! `freshness` decides what may be stored and for how long (RFC 9111), `key` builds keys,
//! `entry` is a stored response and its states, `store` holds entries and coalesces fetches.

pub mod entry;
pub mod freshness;
pub mod key;
pub mod layer;
pub mod store;

pub use entry::{Entry, Freshness, adapt_ttl};
pub use freshness::{Lifetime, NotStorable, lifetime};
pub use layer::{Cache, CacheMetrics, Origin, X_CACHE};
pub use store::{Fill, FillGuard, Store};

use http::{HeaderMap, Method, header};
use parapet_crds::snapshot::CachePolicy;

/// Whether a request may use the cache at all.
pub fn cacheable_request(policy: &CachePolicy, method: &Method, headers: &HeaderMap) -> bool {
    if !policy.methods.iter().any(|m| m == method.as_str()) {
        return false;
    }
    // One client's private answer is never another's: requests that carry credentials
    // bypass the cache unless the policy opts in (and then keys on the credential).
    if !policy.cache_authorized
        && (headers.contains_key(header::AUTHORIZATION) || headers.contains_key(header::COOKIE))
    {
        return false;
    }
    // A client that asks for an end-to-end reload gets one.
    !headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-store"))
        })
}

#[cfg(test)]
mod tests;
