#[cfg(feature = "kube")]
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[cfg(feature = "kube")]
use super::CommonStatus;
use super::{HttpMethod, LocalObjectReference};
use crate::Duration;

/// What traffic matches and what happens to it: hosts, rules of matches, weighted backends
/// (UpstreamPools in the same namespace), and per-rule timeouts, retries, caching, rate
/// limits and API keys.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[cfg_attr(feature = "kube", derive(CustomResource))]
#[cfg_attr(
    feature = "kube",
    kube(
        group = "parapet.dev",
        version = "v1alpha1",
        kind = "ApiRoute",
        namespaced,
        status = "CommonStatus",
        shortname = "ar",
        category = "parapet",
        printcolumn = r#"{"name":"Hosts","type":"string","jsonPath":".spec.hosts"}"#,
        printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
        printcolumn = r#"{"name":"ResolvedRefs","type":"string","jsonPath":".status.conditions[?(@.type==\"ResolvedRefs\")].status","priority":1}"#,
        printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ApiRouteSpec {
    /// Host names this route serves: exact (`api.bank.example`) or one leading wildcard
    /// label (`*.bank.example`). `*` alone matches every host.
    #[schemars(length(min = 1, max = 16))]
    #[schemars(inner(regex(
        pattern = r"^(\*|(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*)$"
    )))]
    #[schemars(inner(length(max = 253)))]
    pub hosts: Vec<String>,
    /// TLS termination for these hosts, with a `kubernetes.io/tls` Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouteTls>,
    /// Client addresses allowed or denied on every rule (a rule's `auth.ipRules` replaces
    /// these).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_rules: Option<IpRules>,
    #[schemars(length(min = 1, max = 64))]
    pub rules: Vec<RouteRule>,
}

impl ApiRouteSpec {
    /// The names of every Secret the route refers to (in its own namespace): the
    /// certificate, the client CA, API keys, JWKS documents and CA bundles.
    pub fn secret_names(&self) -> impl Iterator<Item = &str> {
        let tls = self.tls.iter().flat_map(|t| {
            std::iter::once(t.secret_name.as_str()).chain(
                t.client_certificate
                    .iter()
                    .map(|c| c.ca_secret_ref.name.as_str()),
            )
        });
        let rules = self
            .rules
            .iter()
            .filter_map(|r| r.auth.as_ref())
            .flat_map(|a| {
                auth_secret_names(a.api_keys.as_ref(), a.jwt.as_ref(), a.ext_auth.as_ref())
            });
        tls.chain(rules)
    }
}

/// The Secrets of API keys, JWT providers (JWKS documents, CA bundles) and an authorization
/// service (its CA bundle).
pub(super) fn auth_secret_names<'a>(
    keys: Option<&'a ApiKeyAuth>,
    jwt: Option<&'a JwtAuth>,
    ext: Option<&'a ExtAuth>,
) -> impl Iterator<Item = &'a str> {
    let keys = keys
        .into_iter()
        .flat_map(|k| k.secret_refs.iter().map(|s| s.name.as_str()));
    let jwks = jwt
        .into_iter()
        .flat_map(|j| j.providers.iter())
        .flat_map(|p| {
            p.local_jwks
                .iter()
                .map(|l| l.secret_ref.name.as_str())
                .chain(
                    p.remote_jwks
                        .iter()
                        .filter_map(|r| r.ca_secret_ref.as_ref())
                        .map(|s| s.name.as_str()),
                )
        });
    let ext = ext
        .and_then(|e| e.ca_secret_ref.as_ref())
        .map(|s| s.name.as_str());
    keys.chain(jwks).chain(ext)
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteTls {
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Client certificates (mutual TLS) for these hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificate>,
}

/// Client certificates: verified against the CA of a Secret (`ca.crt`), with its
/// revocation list (`ca.crl`, optional). The verified subject and names go upstream in
/// `x-forwarded-client-cert`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificate {
    pub ca_secret_ref: LocalObjectReference,
    /// `Require` (default): connections without a valid certificate are refused.
    /// `Request`: a certificate is asked for and checked when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ClientCertificateMode>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ClientCertificateMode {
    #[default]
    Require,
    Request,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!has(self.backends) || size(self.backends) == 0 || self.backends.exists(b, !has(b.weight) || b.weight > 0)").message("at least one backend needs a weight above 0")))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("has(self.redirect) || (has(self.backends) && size(self.backends) > 0)").message("a rule needs backends or a redirect")))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!has(self.redirect) || !has(self.backends) || size(self.backends) == 0").message("a rule takes backends or a redirect, not both")))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!has(self.redirect) || !(has(self.rewrite) || has(self.mirrors) || has(self.requestHeaders) || has(self.responseHeaders) || has(self.backendTimeout))").message("a redirect rule forwards nothing: remove rewrite, mirrors, requestHeaders, responseHeaders and backendTimeout")))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!has(self.backendTimeout) || duration(self.backendTimeout) > duration('0s')").message("backendTimeout must be above 0s")))]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// Optional name, used in metrics and status messages. Default: the rule's index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    #[schemars(length(max = 63))]
    pub name: Option<String>,
    /// Any one match selects the rule. Default: every request (`PathPrefix /`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub matches: Vec<RouteMatch>,
    /// UpstreamPools in this namespace and their share of traffic (canary, blue-green).
    /// A rule has backends or a `redirect`, never both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub backends: Vec<BackendRef>,
    /// Answer with a redirect instead of forwarding; the rule then has no backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RouteRedirect>,
    /// Bound on the whole exchange, retries included. Default 15s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Bound on each attempt at a backend (at most `timeout`, which bounds them all).
    /// Default: only `timeout` and `retries.perTryTimeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_timeout: Option<Duration>,
    /// Edits to the request's headers before it goes upstream (after `rewrite`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderFilter>,
    /// Edits to the backend's response headers before they go to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderFilter>,
    /// A copy of each request (or of a share of them) also goes to each of these
    /// UpstreamPools; their answers are dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub mirrors: Vec<RequestMirror>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    /// Hedging: when an attempt has not answered after a delay, another goes to a different
    /// endpoint and the first answer wins. Default: the data plane's `--hedge` flag, which
    /// hedges no route unless it names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<HedgePolicy>,
    /// This rule's share of the data plane's capacity: its bulkhead and when it counts as
    /// slow. Default: the data plane's `--route-max-in-flight` and `--slow-lane-threshold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lanes: Option<RouteLanes>,
    /// A CachePolicy in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_policy_ref: Option<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RouteAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Protocols a client may switch to on this rule's requests (`Upgrade`, answered 101
    /// by the backend), named as in the Upgrade header. Default: `[websocket]`; `[]`
    /// allows none. `h2c` is never allowed: after an HTTP/2 upgrade the client would talk
    /// to the backend past routing, API keys and rate limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    // A token (RFC 9110) of at most 64 characters that is not `h2c` in any case, written
    // as a pattern: a CEL rule over every rule's list costs more than the API server's
    // budget allows.
    #[schemars(inner(regex(
        pattern = r"^([A-Za-z0-9!#$%&'*+.^_`|~-]{1,2}|[A-Za-z0-9!#$%&'*+.^_`|~-]{4,64}|[A-GI-Za-gi-z0-9!#$%&'*+.^_`|~-][A-Za-z0-9!#$%&'*+.^_`|~-][A-Za-z0-9!#$%&'*+.^_`|~-]|[hH][A-Za-z013-9!#$%&'*+.^_`|~-][A-Za-z0-9!#$%&'*+.^_`|~-]|[hH]2[ABD-Zabd-z0-9!#$%&'*+.^_`|~-])$"
    )))]
    pub upgrades: Option<Vec<String>>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Match only these methods. Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub methods: Vec<HttpMethod>,
    /// All of these must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<ValueMatch>,
    /// All of these must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub query_params: Vec<ValueMatch>,
}

#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    JsonSchema,
)]
pub enum PathMatchType {
    /// The whole path, exactly.
    Exact,
    /// Whole segments: `/accounts` matches `/accounts` and `/accounts/1`, not `/accountsx`.
    #[default]
    PathPrefix,
    /// A regular expression (Rust `regex` syntax) that must match the whole path.
    RegularExpression,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("(has(self.type) && self.type == 'RegularExpression') || self.value.startsWith('/')").message("an Exact or PathPrefix path must start with /")))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("(has(self.type) && self.type == 'RegularExpression') || !self.value.matches('[?#]|//')").message("a path must not contain '?', '#' or '//'")))]
pub struct PathMatch {
    /// Default PathPrefix.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<PathMatchType>,
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    JsonSchema,
)]
pub enum ValueMatchType {
    #[default]
    Exact,
    RegularExpression,
}

/// A header or query parameter that must be present with a value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ValueMatch {
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    #[schemars(length(max = 4096))]
    pub value: String,
    /// Default Exact.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ValueMatchType>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct BackendRef {
    /// An UpstreamPool in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub pool: String,
    /// Relative share of the rule's traffic. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub weight: Option<i32>,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
pub enum RetryOn {
    /// The connection to the endpoint could not be made (always safe to retry).
    ConnectFailure,
    /// The connection was reset before a response arrived.
    Reset,
    /// Any 5xx answer.
    ServerError,
    /// 502, 503 or 504.
    GatewayError,
    /// One of `retriableStatuses`.
    RetriableStatus,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!has(self.retryOn) || !self.retryOn.exists(c, c == 'RetriableStatus') || (has(self.retriableStatuses) && size(self.retriableStatuses) > 0)").message("retry on RetriableStatus needs retriableStatuses")))]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Total tries including the first. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    pub attempts: Option<i32>,
    /// Default [ConnectFailure, Reset, GatewayError].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 5))]
    pub retry_on: Option<Vec<RetryOn>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[schemars(inner(range(min = 100, max = 599)))]
    pub retriable_statuses: Option<Vec<i32>>,
    /// Default: the route timeout split between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// First backoff (doubling, full jitter). Default 25ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_base: Option<Duration>,
    /// Default 250ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_max: Option<Duration>,
    /// Retries stay below this share of requests over a 10s window. Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub budget_percent: Option<i32>,
    /// ...plus this many retries per second regardless. Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub budget_min_per_second: Option<i32>,
    /// Retry non-idempotent methods (POST, PATCH) after the request was sent. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_idempotent: Option<bool>,
}

/// When the rule's attempt has not answered in time, another goes to an endpoint not tried
/// yet; the first answer wins and the others are cancelled. Only requests that may be sent
/// twice (idempotent methods, or `retries.nonIdempotent`) with a replayable body are hedged,
/// and every hedge spends a token of the rule's retry budget.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("has(self.delay) != has(self.percentile)").message("hedge takes exactly one of delay or percentile")))]
#[serde(rename_all = "camelCase")]
pub struct HedgePolicy {
    /// Hedge after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Duration>,
    /// Hedge after this percentile of the rule's recent upstream latency (last 10–20 s, per
    /// data-plane pod); no hedge until the rule has answered 20 requests in that window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 50, max = 99))]
    pub percentile: Option<i32>,
    /// Hedges per request at most, each sent one delay after the previous while no
    /// attempt has answered. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3))]
    pub max_extra_attempts: Option<i32>,
}

/// The rule's bulkhead and slow-lane threshold in each data-plane pod (fast and slow lanes).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!has(self.slowThreshold) || duration(self.slowThreshold) > duration('0s')").message("lanes.slowThreshold must be above 0s")))]
#[serde(rename_all = "camelCase")]
pub struct RouteLanes {
    /// Requests of this rule in flight at once; more are answered 503 with `retry-after`.
    /// Default: `--route-max-in-flight` (5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_in_flight: Option<i32>,
    /// Average latency above which the rule moves to the slow lane (and back below half of
    /// it). Default: `--slow-lane-threshold` (1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_threshold: Option<Duration>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RateLimitKeyType {
    /// The client address (the trusted X-Forwarded-For hop when configured).
    #[default]
    ClientIP,
    /// The identity of the API key that authenticated the request.
    ApiKey,
    /// The value of a request header.
    Header,
    /// One bucket for the whole rule.
    Route,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RateLimitMode {
    /// Answer 429 when the bucket is empty.
    #[default]
    Reject,
    /// Queue (leaky bucket) up to `queueSize` requests for at most `maxDelay`, then 429.
    Shape,
}

/// A token bucket: `requests` per `period`, with bursts up to `burst`. The limit is for the
/// whole fleet; each data-plane pod enforces its share.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!has(self.key) || self.key != 'Header' || has(self.header)").message("rateLimit.key Header needs rateLimit.header")))]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    #[schemars(range(min = 1))]
    pub requests: i32,
    /// Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Duration>,
    /// Default: `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<i32>,
    /// Default ClientIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<RateLimitKeyType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    /// Default Reject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<RateLimitMode>,
    /// Shape mode: most requests waiting per key. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub queue_size: Option<i32>,
    /// Shape mode: longest wait before a 429. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<Duration>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeyAuth>,
    /// Bearer tokens (JWT) checked against one or more identity providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,
    /// An external authorization service asked about every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_auth: Option<ExtAuth>,
    /// Client addresses allowed or denied; replaces the route's `spec.ipRules` for this
    /// rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_rules: Option<IpRules>,
}

/// Client-address rules: a denied range always refuses; with any allowed range, an
/// address outside all of them is refused (403). The address is the peer's, or behind a
/// trusted proxy the client its `X-Forwarded-For` names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("size(self.allow) + size(self.deny) > 0").message("ipRules needs at least one allow or deny range")))]
#[serde(rename_all = "camelCase")]
pub struct IpRules {
    /// CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or single addresses.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[schemars(inner(length(max = 43)))]
    #[cfg_attr(feature = "kube", schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(c, isCIDR(c) || isIP(c))", "message": "ipRules.allow holds CIDRs (10.0.0.0/8) or addresses only"}])))]
    pub allow: Vec<String>,
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[schemars(inner(length(max = 43)))]
    #[cfg_attr(feature = "kube", schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(c, isCIDR(c) || isIP(c))", "message": "ipRules.deny holds CIDRs (10.0.0.0/8) or addresses only"}])))]
    pub deny: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self.providers.all(p, self.providers.exists_one(q, q.name == p.name))").message("jwt provider names must be unique")))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self.providers.all(p, self.providers.exists_one(q, q.issuer == p.issuer))").message("jwt provider issuers must be unique")))]
#[serde(rename_all = "camelCase")]
pub struct JwtAuth {
    /// A token passes when the provider whose `issuer` it names accepts it.
    #[schemars(length(min = 1, max = 8))]
    pub providers: Vec<JwtProvider>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl JwtAlgorithm {
    pub const ALL: [Self; 9] = [
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::EdDSA,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
            Self::EdDSA => "EdDSA",
        }
    }
}

/// One identity provider: who issues tokens, for whom, and where its keys are.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("has(self.remoteJwks) != has(self.localJwks)").message("a jwt provider takes its keys from remoteJwks or localJwks: exactly one")))]
#[serde(rename_all = "camelCase")]
pub struct JwtProvider {
    /// Names the provider in metrics and logs.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    #[schemars(length(max = 63))]
    pub name: String,
    /// The `iss` claim tokens must carry.
    #[schemars(length(min = 1, max = 512))]
    pub issuer: String,
    /// The token's `aud` must hold one of these. Empty: the audience is not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(inner(length(min = 1, max = 512)))]
    pub audiences: Vec<String>,
    /// Keys fetched from the provider's JWKS URL and kept fresh by the data plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_jwks: Option<RemoteJwks>,
    /// Keys from a Secret holding a JWKS document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_jwks: Option<LocalJwks>,
    /// Signature algorithms accepted. Default: all of them (RS*, PS*, ES256/384, EdDSA);
    /// `none` and HMAC are never accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub algorithms: Vec<JwtAlgorithm>,
    /// Leeway on `exp` and `nbf`. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<Duration>,
    /// Where the token is, in order. Default: `Authorization: Bearer …`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub extract_from: Vec<TokenLocation>,
    /// Claims the token must have, optionally with one of the values given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub required_claims: Vec<RequiredClaim>,
    /// Verified claims copied into request headers for the backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub claim_to_headers: Vec<ClaimToHeader>,
    /// Pass the token on to the backend. Default false: it is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_token: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self.uri.startsWith('https://') || self.uri.matches('^http://(127\\\\.0\\\\.0\\\\.1|localhost|\\\\[::1\\\\])(:[0-9]+)?(/.*)?$')").message("remoteJwks.uri must be https:// (plain http only to localhost)")))]
#[serde(rename_all = "camelCase")]
pub struct RemoteJwks {
    /// The provider's JWKS document (`jwks_uri` of its discovery document).
    #[schemars(length(min = 1, max = 2048))]
    pub uri: String,
    /// A Secret whose `ca.crt` verifies the provider's certificate. Default: the
    /// platform's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<LocalObjectReference>,
    /// How often keys are fetched again when the provider's `Cache-Control` gives no
    /// `max-age`, and the longest any `max-age` is followed. Default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<Duration>,
    /// Bound on each fetch. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalJwks {
    pub secret_ref: LocalObjectReference,
    /// The Secret's data key holding the JWKS. Default `jwks.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// One place a token may be: a header (with an optional prefix), a cookie or a query
/// parameter.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("[has(self.header), has(self.cookie), has(self.queryParam)].filter(x, x).size() == 1").message("extractFrom entries name exactly one of header, cookie, queryParam")))]
#[serde(rename_all = "camelCase")]
pub struct TokenLocation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"))]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    /// With `header`: the text before the token (`Bearer `), compared case-insensitively.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"))]
    #[schemars(length(min = 1, max = 256))]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub query_param: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequiredClaim {
    /// A claim, or a dotted path into nested claims (`realm_access.roles`).
    #[schemars(length(min = 1, max = 256))]
    pub claim: String,
    /// The claim (a string, a space-separated list such as `scope`, or an array) must hold
    /// one of these. Empty: present is enough.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub any_of: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimToHeader {
    #[schemars(length(min = 1, max = 256))]
    pub claim: String,
    #[schemars(regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"))]
    #[schemars(length(min = 1, max = 256))]
    pub header: String,
}

/// External authorization (Envoy's ext_authz HTTP contract): the service receives the
/// request's method, path and chosen headers, without the body. A 2xx answer lets the
/// request through (with the headers named in `headersToUpstream` copied onto it); any
/// other answer is returned to the client as it is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self.url.startsWith('http://') || self.url.startsWith('https://')").message("extAuth.url must be an http:// or https:// URL")))]
#[serde(rename_all = "camelCase")]
pub struct ExtAuth {
    /// The service, with an optional path prefix the request's path is appended to
    /// (`http://authz.security.svc:8080/check`).
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// A Secret whose `ca.crt` verifies an `https` service. Default: the platform's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<LocalObjectReference>,
    /// Request headers sent to the service. Default: `authorization` and `cookie`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(inner(regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")))]
    #[schemars(inner(length(min = 1, max = 256)))]
    pub headers_to_auth: Vec<String>,
    /// Headers of an allowing answer set on the request to the backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(inner(regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")))]
    #[schemars(inner(length(min = 1, max = 256)))]
    pub headers_to_upstream: Vec<String>,
    /// Bound on each check. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// When the service cannot be asked (timeout, refused connection, a 5xx answer):
    /// `Closed` (default) answers 503, `Open` lets the request through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_mode: Option<FailureMode>,
    /// Keep decisions for requests with the same values of these headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<ExtAuthCache>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FailureMode {
    #[default]
    Closed,
    Open,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuthCache {
    /// The request headers a decision is kept for (`authorization`); a request without
    /// one of them is always checked.
    #[schemars(length(min = 1, max = 8))]
    #[schemars(inner(regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")))]
    #[schemars(inner(length(min = 1, max = 256)))]
    pub key_headers: Vec<String>,
    /// How long a decision is kept. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// Decisions kept at most. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_entries: Option<i32>,
}

/// API keys: each key of each Secret's data is one key; the data key is its identity.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!(has(self.header) && has(self.queryParam))").message("apiKeys reads the key from a header or a queryParam, not both")))]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyAuth {
    #[schemars(length(min = 1, max = 16))]
    pub secret_refs: Vec<LocalObjectReference>,
    /// Header carrying the key. Default `x-api-key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    /// Query parameter carrying the key, instead of a header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub query_param: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!has(self.pathPrefix) || self.pathPrefix.startsWith('/')").message("rewrite.pathPrefix must start with /")))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!(has(self.pathPrefix) && has(self.fullPath))").message("rewrite takes pathPrefix or fullPath, not both")))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new(r#"!has(self.fullPath) || self.fullPath.matches("^(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*/?$")"#).message(r"rewrite.fullPath must start with / and hold only URL path characters: no '?', '#', '//', '\', spaces or control characters")))]
#[serde(rename_all = "camelCase")]
pub struct Rewrite {
    /// Replace the matched PathPrefix with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub path_prefix: Option<String>,
    /// Replace the whole path with this (the query stays). Not with `pathPrefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub full_path: Option<String>,
    /// Send this Host upstream instead of the client's: a DNS name (no port, user or path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[schemars(regex(
        pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
    ))]
    pub hostname: Option<String>,
}

/// Header edits, applied in the order remove, set, add; names match in any case. The
/// hop-by-hop and framing headers (`connection`, `transfer-encoding`, `content-length`,
/// `host`, `te`, `upgrade`, `keep-alive`, `proxy-connection`) cannot be edited: the proxy
/// owns them, and editing them would let one request smuggle another.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct HeaderFilter {
    /// Replace every line of each header with this one (added when absent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub set: Vec<HeaderEntry>,
    /// Append a line to each header, keeping those already there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub add: Vec<HeaderEntry>,
    /// Remove every line of these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(inner(length(min = 1, max = 256)))]
    #[schemars(inner(regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[cfg_attr(feature = "kube", x_kube(validation = Rule::new("self.all(n, !(n.lowerAscii() in ['connection', 'transfer-encoding', 'content-length', 'host', 'te', 'upgrade', 'keep-alive', 'proxy-connection']))").message("connection, transfer-encoding, content-length, host, te, upgrade, keep-alive and proxy-connection belong to the proxy and cannot be removed")))]
    pub remove: Vec<String>,
}

/// One header line: a name (an HTTP token) and a value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!(self.name.lowerAscii() in ['connection', 'transfer-encoding', 'content-length', 'host', 'te', 'upgrade', 'keep-alive', 'proxy-connection'])").message("connection, transfer-encoding, content-length, host, te, upgrade, keep-alive and proxy-connection belong to the proxy and cannot be set or added")))]
pub struct HeaderEntry {
    #[schemars(length(min = 1, max = 256))]
    #[schemars(regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"))]
    pub name: String,
    /// Visible ASCII, spaces and tabs; no CR, LF or other control characters.
    #[schemars(length(max = 4096))]
    #[schemars(regex(pattern = r"^[\t\x20-\x7E]*$"))]
    pub value: String,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RedirectScheme {
    Http,
    Https,
}

impl RedirectScheme {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// A redirect built from the request's URL: each part left out stays the request's own,
/// and the query is always kept.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("!has(self.statusCode) || self.statusCode in [301, 302, 303, 307, 308]").message("redirect.statusCode must be 301, 302, 303, 307 or 308")))]
#[serde(rename_all = "camelCase")]
pub struct RouteRedirect {
    /// `http` or `https`. Default: the scheme the request came with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<RedirectScheme>,
    /// A DNS name (no port, user or path). Default: the request's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[schemars(regex(
        pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
    ))]
    pub hostname: Option<String>,
    /// Default: the port the request's Host names, if any. The Location leaves out the
    /// scheme's default port (80 for http, 443 for https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Default: the request's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<RedirectPath>,
    /// 301, 302, 303, 307 or 308. Default 302.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i32>,
}

/// The redirect's new path: exactly one of the two.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "kube", derive(KubeSchema))]
#[cfg_attr(not(feature = "kube"), derive(JsonSchema))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new("has(self.replaceFullPath) != has(self.replacePrefixMatch)").message("redirect.path takes exactly one of replaceFullPath or replacePrefixMatch")))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new(r#"!has(self.replaceFullPath) || self.replaceFullPath.matches("^(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*/?$")"#).message(r"redirect.path.replaceFullPath must start with / and hold only URL path characters: no '?', '#', '//', '\', spaces or control characters")))]
#[cfg_attr(feature = "kube", x_kube(validation = Rule::new(r#"!has(self.replacePrefixMatch) || self.replacePrefixMatch.matches("^(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*/?$")"#).message(r"redirect.path.replacePrefixMatch must start with / and hold only URL path characters: no '?', '#', '//', '\', spaces or control characters")))]
#[serde(rename_all = "camelCase")]
pub struct RedirectPath {
    /// The whole new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub replace_full_path: Option<String>,
    /// Replaces the part the rule's PathPrefix match matched (segment-wise); every match of
    /// the rule must then be a PathPrefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub replace_prefix_match: Option<String>,
}

/// A copy of requests sent to another UpstreamPool; its answers are dropped.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct RequestMirror {
    /// An UpstreamPool in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub backend: String,
    /// Share of requests mirrored. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<i32>,
}
