#[cfg(feature = "kube")]
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[cfg(feature = "kube")]
use super::CommonStatus;
use crate::Duration;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CacheMode {
    /// Keep a cacheable response for `ttl`, whatever the origin's headers say.
    Fixed,
    /// Follow the origin's freshness (Cache-Control, Expires, ETag / Last-Modified).
    Auto,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum CacheMethod {
    Get,
    Head,
}

/// How responses of the rules that reference this policy are cached.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "kube", derive(CustomResource, KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "parapet.dev",
        version = "v1alpha1",
        kind = "CachePolicy",
        namespaced,
        status = "CommonStatus",
        shortname = "cp",
        category = "parapet",
        printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
        printcolumn = r#"{"name":"TTL","type":"string","jsonPath":".spec.ttl"}"#,
        printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self.mode != 'Fixed' || has(self.ttl)").message("mode Fixed requires ttl")))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!has(self.cacheAuthorized) || !self.cacheAuthorized || (has(self.key) && has(self.key.headers) && self.key.headers.exists(h, h.lowerAscii() == 'authorization' || h.lowerAscii() == 'cookie'))").message("cacheAuthorized needs key.headers to include Authorization or Cookie, so one client's response is never served to another")))]
#[serde(rename_all = "camelCase")]
pub struct CachePolicySpec {
    pub mode: CacheMode,
    /// Fixed: how long an entry is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// Auto: freshness for responses that carry no Cache-Control max-age, no Expires and no
    /// Last-Modified. Unset (the default), such responses are not fresh: RFC 9111 lets a
    /// shared cache invent freshness only from Last-Modified. Setting it is an operator's
    /// override of the RFC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_ttl: Option<Duration>,
    /// Auto: heuristic freshness of a response with Last-Modified (and no explicit
    /// freshness), as a percentage of the time since it was last modified. Default 10;
    /// 0 turns heuristic freshness off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub heuristic_percent: Option<i32>,
    /// Auto: the longest heuristic freshness. Default 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heuristic_max_ttl: Option<Duration>,
    /// Auto: how long a stale entry that has a validator (ETag or Last-Modified) is kept so
    /// the next request revalidates it (If-None-Match / If-Modified-Since) instead of
    /// fetching it whole. The cache's memory bound may drop it sooner. Default 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_stale: Option<Duration>,
    /// Auto: adaptive TTL lower bound. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ttl: Option<Duration>,
    /// Auto: adaptive TTL upper bound. Default 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<Duration>,
    /// Auto: lengthen an entry's TTL each time a refresh finds it unchanged, shorten it when
    /// it changed. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive_ttl: Option<bool>,
    /// Revalidate hot entries in the background shortly before they expire. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_ahead: Option<bool>,
    /// Serve a stale entry this long past expiry while it is refreshed in the background.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_while_revalidate: Option<Duration>,
    /// Serve a stale entry this long past expiry when the origin fails (5xx or unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_if_error: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<CacheKey>,
    /// Default [GET, HEAD].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2))]
    pub methods: Option<Vec<CacheMethod>>,
    /// Statuses that may be stored. Default for Fixed: [200, 203, 204, 300, 301, 404, 410];
    /// for Auto: RFC 9111's rules (any final status with explicit freshness; heuristic
    /// freshness only for the heuristically cacheable ones, RFC 9110 §15.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32))]
    #[schemars(inner(range(min = 100, max = 599)))]
    pub statuses: Option<Vec<i32>>,
    /// Larger responses are passed through uncached. Default 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_entry_bytes: Option<i64>,
    /// Fixed mode: cache even when the origin says `no-store` or `private`. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_origin_no_store: Option<bool>,
    /// Cache requests with Authorization or cookies, keyed on the credential. Needs the
    /// header in `key.headers`. Without it, Auto mode still stores a response to a request
    /// with Authorization when the response allows it (`public`, `s-maxage`,
    /// `must-revalidate`: RFC 9111 §3.5), and requests with cookies bypass the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_authorized: Option<bool>,
    /// Longest a request waits for another's fetch of the same key before going to the
    /// origin itself; "0s" turns coalescing off. Default 5s in Fixed mode, off in Auto
    /// (where Parapet's extras are asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesce_timeout: Option<Duration>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheKey {
    /// Include the (sorted) query string. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_query: Option<bool>,
    /// Only these query parameters count (after sorting). Default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub query_params: Option<Vec<String>>,
    /// These query parameters never count (tracking parameters, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub exclude_query_params: Option<Vec<String>>,
    /// Request headers whose values are part of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[schemars(inner(length(min = 1, max = 256)))]
    pub headers: Option<Vec<String>>,
}
