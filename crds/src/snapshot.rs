//! The compiled routing table: what `PUT /v1/snapshot` carries and the data plane serves.
//!
//! Every reference is resolved and every default applied: the data plane never looks
//! anything up. Durations are plain milliseconds. Collections are ordered deterministically,
//! so the same inputs always give the same bytes and the same [`Snapshot::hash`].
//! See `crds/SNAPSHOT.md` for the format with an example.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub mod delta;
pub mod redact;
pub mod wire;

/// Bumped when the wire format changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// A versioned routing table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Strictly increasing across pushes; the data plane refuses a version below its own.
    pub version: u64,
    /// Hex SHA-256 of the canonical JSON of `table`.
    pub hash: String,
    /// Set by the pusher when an empty table is intended; a table with no routes is refused
    /// otherwise (guards against an operator with empty caches wiping the fleet).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_empty: bool,
    pub table: Table,
}

impl Snapshot {
    /// Wraps a table with its content hash.
    pub fn new(version: u64, table: Table) -> Self {
        let hash = table.content_hash();
        Self {
            version,
            hash,
            allow_empty: false,
            table,
        }
    }

    /// Wraps a table with its content hash; also returns the length of the JSON the hash
    /// covers (one serialisation for both).
    pub fn new_measured(version: u64, table: Table) -> (Self, usize) {
        let (hash, len) = table.hash_and_len();
        let s = Self {
            version,
            hash,
            allow_empty: false,
            table,
        };
        (s, len)
    }

    /// Checks what a receiver must check before serving the table; the reasons read as
    /// sentences for the pusher's logs.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        self.check(true)
    }

    /// [`Snapshot::validate`] for a table whose hash was checked as it was made (a delta
    /// applied with [`delta::Delta::apply`]): hashing a large table twice is not free.
    pub fn validate_rebuilt(&self) -> Result<(), Vec<String>> {
        self.check(false)
    }

    fn check(&self, hash: bool) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if self.table.format != FORMAT_VERSION {
            reasons.push(format!(
                "snapshot format {} is not supported; this data plane reads format {FORMAT_VERSION}",
                self.table.format
            ));
        }
        if hash {
            let actual = self.table.content_hash();
            if actual != self.hash {
                reasons.push(format!(
                    "hash {} does not match the table's content (expected {actual})",
                    self.hash
                ));
            }
        }
        let clusters: std::collections::BTreeSet<&str> = self
            .table
            .clusters
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        if clusters.len() != self.table.clusters.len() {
            reasons.push("cluster names are not unique".to_string());
        }
        let policies: std::collections::BTreeSet<&str> = self
            .table
            .cache_policies
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        for vh in self.table.all_virtual_hosts() {
            for r in &vh.routes {
                if let RouteAction::Forward(f) = &r.action {
                    for m in &f.mirrors {
                        if !clusters.contains(m.cluster.as_str()) {
                            reasons.push(format!(
                                "route {} mirrors to cluster {} which the table does not define",
                                r.name, m.cluster
                            ));
                        }
                    }
                    for b in &f.backends {
                        if !clusters.contains(b.cluster.as_str()) {
                            reasons.push(format!(
                                "route {} names cluster {} which the table does not define",
                                r.name, b.cluster
                            ));
                        }
                    }
                    if let Some(p) = &f.cache_policy
                        && !policies.contains(p.as_str())
                    {
                        reasons.push(format!(
                            "route {} names cache policy {p} which the table does not define",
                            r.name
                        ));
                    }
                    route_settings_reasons(&r.name, f, &mut reasons);
                    header_modifier_reasons(&r.name, "request", &f.request_headers, &mut reasons);
                    header_modifier_reasons(&r.name, "response", &f.response_headers, &mut reasons);
                }
                if let RouteAction::Redirect(rd) = &r.action
                    && !REDIRECT_STATUSES.contains(&rd.status)
                {
                    reasons.push(format!(
                        "route {} redirects with status {}, which is not one of 301, 302, 303, 307 or 308",
                        r.name, rd.status
                    ));
                }
                if let PathMatch::Regex(re) = &r.matcher.path
                    && let Err(e) = regex::Regex::new(re)
                {
                    reasons.push(format!("route {} has an invalid regex: {e}", r.name));
                }
            }
        }
        for c in &self.table.clusters {
            if let Some(f) = &c.failover
                && let Some(b) = &f.backup_cluster
                && !clusters.contains(b.as_str())
            {
                reasons.push(format!(
                    "cluster {} names backup cluster {b} which the table does not define",
                    c.name
                ));
            }
        }
        let mut ports = std::collections::BTreeSet::new();
        for l in &self.table.listeners {
            if !ports.insert(l.port) {
                reasons.push(format!(
                    "listener port {} appears more than once; each port has one listener",
                    l.port
                ));
            }
        }
        if self.table.route_count() == 0 && !self.allow_empty {
            reasons.push(
                "the table has no routes; a pusher that means to empty the fleet must set allowEmpty"
                    .to_string(),
            );
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }
}

/// What is out of range in a route's hedge and lane settings (the compiler never writes
/// such values; a hand-written table might).
fn route_settings_reasons(route: &str, f: &ForwardAction, reasons: &mut Vec<String>) {
    if let Some(h) = &f.hedge {
        if let HedgeAfter::Percentile(p) = h.after
            && !HEDGE_PERCENTILES.contains(&p)
        {
            reasons.push(format!(
                "route {route} hedges after percentile {p}, which is not between {} and {}",
                HEDGE_PERCENTILES.start(),
                HEDGE_PERCENTILES.end()
            ));
        }
        if !HEDGE_MAX_EXTRA_ATTEMPTS.contains(&h.max_extra_attempts) {
            reasons.push(format!(
                "route {route} allows {} hedges per request, which is not between {} and {}",
                h.max_extra_attempts,
                HEDGE_MAX_EXTRA_ATTEMPTS.start(),
                HEDGE_MAX_EXTRA_ATTEMPTS.end()
            ));
        }
    }
    if let Some(l) = &f.lanes {
        if l.max_in_flight == Some(0) {
            reasons.push(format!(
                "route {route} has maxInFlight 0, which would refuse every request"
            ));
        }
        if l.slow_threshold_ms == Some(0) {
            reasons.push(format!(
                "route {route} has slowThresholdMs 0, which would put it in the slow lane for good"
            ));
        }
    }
}

/// The statuses a redirect may answer with.
pub const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

/// Headers that frame the message or belong to one hop: header modifiers never set, add or
/// remove them (the data plane skips them too).
pub const UNMODIFIABLE_HEADERS: [&str; 8] = [
    "connection",
    "transfer-encoding",
    "content-length",
    "host",
    "te",
    "upgrade",
    "keep-alive",
    "proxy-connection",
];

/// What is wrong in a route's header modifier (`which`: request or response).
fn header_modifier_reasons(
    route: &str,
    which: &str,
    m: &HeaderModifier,
    reasons: &mut Vec<String>,
) {
    let names = m
        .set
        .iter()
        .chain(&m.add)
        .map(|p| p.name.as_str())
        .chain(m.remove.iter().map(String::as_str));
    for name in names {
        if !is_header_name(name) {
            reasons.push(format!(
                "route {route} modifies {which} header {name:?}, which is not a valid header name"
            ));
        } else if UNMODIFIABLE_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            reasons.push(format!(
                "route {route} modifies {which} header {name}, which frames the message or belongs to one hop and cannot be modified"
            ));
        }
    }
    for p in m.set.iter().chain(&m.add) {
        if !is_header_value(&p.value) {
            reasons.push(format!(
                "route {route} gives {which} header {} the value {:?}, which is not a valid header value",
                p.name, p.value
            ));
        }
    }
}

/// An HTTP field name: one or more token characters (RFC 9110 §5.1).
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A field value as the data plane can send it: no control characters but tab (so no CR,
/// LF or NUL).
pub fn is_header_value(value: &str) -> bool {
    value.bytes().all(|b| (b >= 32 && b != 127) || b == b'\t')
}

/// The content of a snapshot: everything but its version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Table {
    pub format: u32,
    /// Ordered by domain: exact names first, then wildcards by decreasing specificity, then `*`.
    pub virtual_hosts: Vec<VirtualHost>,
    /// Ordered by name.
    pub clusters: Vec<Cluster>,
    /// Ordered by name.
    pub cache_policies: Vec<CachePolicy>,
    /// The source objects and generations this table was compiled from, ordered; the
    /// operator marks exactly these `Programmed` once the fleet acknowledges the table.
    pub sources: Vec<SourceRef>,
    /// Data-plane pods the pusher sends this table to; each enforces `1/fleetPods` of every
    /// rate limit (requests and burst, rounded up). 0 or 1: no division. Set by the operator
    /// after compiling (the compiler leaves it 0, so its output stays deterministic).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fleet_pods: u32,
    /// A Gateway's listeners, for a fleet that serves one Gateway: each traffic port has
    /// its own protocol and virtual hosts. Empty: every traffic port serves
    /// `virtual_hosts`. Ordered by port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Listener>,
}

/// The routes one port of a Gateway serves.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// The Gateway listener port (what clients dial; the data plane maps its sockets to it).
    pub port: u16,
    pub protocol: ListenerProtocol,
    /// Ordered as `Table::virtual_hosts`; with `Https`, each carries its certificate.
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ListenerProtocol {
    Http,
    Https,
}

fn is_zero<N: Default + PartialEq>(n: &N) -> bool {
    *n == N::default()
}

impl Table {
    pub fn content_hash(&self) -> String {
        self.hash_and_len().0
    }

    /// The content hash and the length of the JSON it covers.
    pub fn hash_and_len(&self) -> (String, usize) {
        hash_json(self)
    }

    /// The hash of what the table configures, apart from where its parts came from: it
    /// leaves out `sources` (the API server starts generations again at 1 when objects are
    /// created anew, as a restore does), `fleetPods` (the fleet's size) and the clusters'
    /// endpoints (the cluster's Services decide them, not the resources). A backup records
    /// it, and a restore is done when the fleet serves a table with the same one.
    pub fn config_hash(&self) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Configuration<'a> {
            format: u32,
            virtual_hosts: &'a [VirtualHost],
            clusters: Vec<ClusterSettings<'a>>,
            cache_policies: &'a [CachePolicy],
            listeners: &'a [Listener],
        }
        /// A cluster without its endpoints.
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct ClusterSettings<'a> {
            name: &'a str,
            load_balancing: &'a LoadBalancing,
            connect_timeout_ms: u64,
            protocol: &'a UpstreamProtocol,
            health_check: &'a Option<HealthCheck>,
            outlier_detection: &'a Option<OutlierDetection>,
            circuit_breaker: &'a Option<CircuitBreaker>,
            failover: &'a Option<Failover>,
            tls: &'a Option<UpstreamTls>,
        }
        let clusters = self
            .clusters
            .iter()
            .map(|c| ClusterSettings {
                name: &c.name,
                load_balancing: &c.load_balancing,
                connect_timeout_ms: c.connect_timeout_ms,
                protocol: &c.protocol,
                health_check: &c.health_check,
                outlier_detection: &c.outlier_detection,
                circuit_breaker: &c.circuit_breaker,
                failover: &c.failover,
                tls: &c.tls,
            })
            .collect();
        hash_json(&Configuration {
            format: self.format,
            virtual_hosts: &self.virtual_hosts,
            clusters,
            cache_policies: &self.cache_policies,
            listeners: &self.listeners,
        })
        .0
    }

    pub fn route_count(&self) -> usize {
        self.all_virtual_hosts().map(|v| v.routes.len()).sum()
    }

    /// The virtual hosts of the table and of every listener.
    pub fn all_virtual_hosts(&self) -> impl Iterator<Item = &VirtualHost> {
        self.virtual_hosts
            .iter()
            .chain(self.listeners.iter().flat_map(|l| l.virtual_hosts.iter()))
    }
}

/// Hex SHA-256 of a value's JSON and the JSON's length, hashed as it is written: no copy of
/// a table that may be megabytes.
fn hash_json(v: &impl Serialize) -> (String, usize) {
    struct Hashing(Sha256, usize);
    impl std::io::Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            self.1 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Hashing(Sha256::new(), 0);
    // Serialising our own plain types to JSON cannot fail.
    serde_json::to_writer(std::io::BufWriter::with_capacity(64 * 1024, &mut h), v)
        .expect("table serialises");
    (hex::encode(h.0.finalize()), h.1)
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub struct SourceRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub generation: i64,
}

/// One host name (`api.example.com`, `*.example.com` or `*`) and its routes in match order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualHost {
    pub domain: String,
    /// TLS certificate for this host, when it terminates TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<CertificatePair>,
    /// Client certificates asked for on TLS connections to this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    /// First match wins.
    pub routes: Vec<Route>,
}

/// Client certificates for a host: verified against `ca_pem` and the CRLs at every
/// handshake, and again on every request (a resumed session, or a CRL that changed since,
/// is never taken on trust).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClientAuth {
    /// PEM CA bundle client certificates must chain to.
    pub ca_pem: String,
    /// PEM certificate revocation lists issued by those CAs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crl_pem: Vec<String>,
    /// Refuse connections without a certificate (`true`), or only ask for one.
    pub required: bool,
}

/// PEM-encoded certificate chain and private key.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CertificatePair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertificatePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print private keys into logs.
        f.debug_struct("CertificatePair").finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// `namespace/apiroute/rule`, unique in the table; the label in metrics.
    pub name: String,
    pub matcher: RouteMatcher,
    pub action: RouteAction,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatcher {
    pub path: PathMatch,
    /// Empty: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatcher>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatcher>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub enum PathMatch {
    Exact(String),
    /// Segment-wise prefix, stored without a trailing slash (`/` stays `/`).
    Prefix(String),
    /// Anchored: must match the whole path.
    Regex(String),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ValueMatcher {
    /// Lower-case for headers.
    pub name: String,
    pub value: StringMatch,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    Exact(String),
    /// Anchored.
    Regex(String),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum RouteAction {
    Forward(Box<ForwardAction>),
    /// Answer directly, e.g. 500 for a rule none of whose backends could be resolved
    /// (as Gateway API prescribes), so its traffic never falls through to another rule.
    DirectResponse(DirectResponse),
    /// Answer with a redirect to a URL built from the request's.
    Redirect(Redirect),
}

/// A redirect: each part left `None` is the request's own.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    /// `http` or `https`; `None`: the scheme the request came with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// `None`: the request's host, without its port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `None`: with `scheme` set, that scheme's default port; without, the port the
    /// request's Host names, if any (as Gateway API derives it). The Location leaves out a
    /// port that is the scheme's default (80 for http, 443 for https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `None`: the request's path. The query is kept either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathReplacement>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// A new path for a redirect or a rewrite.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum PathReplacement {
    /// The whole path.
    Full(String),
    /// The part the route's `Prefix` match matched (segment-wise, as `Rewrite::path_prefix`).
    Prefix(String),
}

/// Header edits, applied in the order remove, set, add. Names are lower-case.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Replace every field line of the name with this one (or add it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderPair>,
    /// Append a field line, keeping those already there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderPair>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderModifier {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeaderPair {
    pub name: String,
    pub value: String,
}

/// A copy of each selected request, sent to another cluster; its answer is dropped.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    pub cluster: String,
    /// Share of requests mirrored, in parts per million (1,000,000: all).
    pub per_million: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DirectResponse {
    pub status: u16,
    pub body: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ForwardAction {
    /// Weighted clusters; weights are relative, at least one is above zero.
    pub backends: Vec<WeightedCluster>,
    pub timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// Absent: the data plane's `--hedge` flag decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<HedgePolicy>,
    /// Absent (or a field absent): the data plane's lane flags decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lanes: Option<RouteLanes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Bound on each attempt (the backend's part); `timeout_ms` bounds them all. Absent:
    /// only `timeout_ms` (and the retry policy's per-try timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_timeout_ms: Option<u64>,
    /// Edits to the request before it goes upstream (after `rewrite`).
    #[serde(default, skip_serializing_if = "HeaderModifier::is_empty")]
    pub request_headers: HeaderModifier,
    /// Edits to the upstream's response before it goes to the client.
    #[serde(default, skip_serializing_if = "HeaderModifier::is_empty")]
    pub response_headers: HeaderModifier,
    /// Copies of the request to other clusters, answers dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    /// Name of a [`CachePolicy`] in the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys: Option<ApiKeyCheck>,
    /// Client addresses allowed or denied (checked first: the cheapest refusal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_rules: Option<IpRules>,
    /// Bearer tokens: a request passes with a token one of the providers accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtCheck>,
    /// An authorization service asked about each request (after the rate limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_auth: Option<ExtAuthCheck>,
    /// Protocols a request may switch to (`Upgrade`), lower-case. Tables written before
    /// the field existed allow WebSocket, as every table did then.
    #[serde(default = "default_upgrades")]
    pub upgrades: Vec<String>,
}

/// What a rule allows to upgrade to when it does not say.
pub fn default_upgrades() -> Vec<String> {
    vec!["websocket".to_string()]
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WeightedCluster {
    pub cluster: String,
    pub weight: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Total tries including the first.
    pub attempts: u32,
    pub on: Vec<RetryCondition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retriable_statuses: Vec<u16>,
    pub per_try_timeout_ms: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub budget_percent: u32,
    pub budget_min_per_second: u32,
    pub non_idempotent: bool,
}

/// Percentiles a route may hedge after.
pub const HEDGE_PERCENTILES: std::ops::RangeInclusive<u32> = 50..=99;
/// Hedges one request may send.
pub const HEDGE_MAX_EXTRA_ATTEMPTS: std::ops::RangeInclusive<u32> = 1..=3;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HedgePolicy {
    /// When the first hedge goes, and each further one after the previous.
    pub after: HedgeAfter,
    /// Hedges per request at most, in [`HEDGE_MAX_EXTRA_ATTEMPTS`].
    pub max_extra_attempts: u32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum HedgeAfter {
    DelayMs(u64),
    /// A percentile of the route's recent upstream latency, in [`HEDGE_PERCENTILES`].
    Percentile(u32),
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteLanes {
    /// The route's bulkhead: requests in flight at once, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Average latency above which the route is in the slow lane, above 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_threshold_ms: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub enum RetryCondition {
    ConnectFailure,
    Reset,
    ServerError,
    GatewayError,
    RetriableStatus,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Rewrite {
    /// Replaces the matched prefix (Prefix routes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Replaces the whole path (the query stays). At most one of the two is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Tokens per `period_ms` for the whole fleet.
    pub requests: u32,
    pub period_ms: u64,
    pub burst: u32,
    pub key: RateLimitKey,
    pub mode: RateLimitMode,
    pub queue_size: u32,
    pub max_delay_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitKey {
    ClientIp,
    ApiKey,
    Header(String),
    Route,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitMode {
    Reject,
    Shape,
}

/// API keys as salted SHA-256 hashes: the table never carries a key in plain text.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum KeySource {
    Header(String),
    QueryParam(String),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyCheck {
    pub source: KeySource,
    /// Ordered by id.
    pub keys: Vec<HashedApiKey>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HashedApiKey {
    /// `secret/dataKey`: logged and used as a rate-limit key, never the key itself.
    pub id: String,
    /// Hex salt.
    pub salt: String,
    /// Hex SHA-256 of salt bytes followed by the key bytes.
    pub sha256: String,
}

impl HashedApiKey {
    pub fn hash_key(salt: &[u8], key: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(salt);
        h.update(key);
        h.finalize().into()
    }
}

/// Client-address rules. Denied ranges win; with any allowed range, an address outside all
/// of them is refused. The address is the peer's, or for a trusted proxy the one its
/// `X-Forwarded-For` names (the data plane's `--trusted-proxies`/`--trusted-hops`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IpRules {
    /// CIDRs (`10.0.0.0/8`, `2001:db8::/32`, or one address), normalised.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// JWT validation: the first provider whose issuer the token names checks it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JwtCheck {
    /// Ordered as written; issuers are unique.
    pub providers: Vec<JwtProvider>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JwtProvider {
    /// `namespace/route/provider`, for metrics and logs.
    pub name: String,
    /// The `iss` a token must carry.
    pub issuer: String,
    /// `aud` must hold one of these; empty: not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    pub jwks: JwksSource,
    /// Signature algorithms accepted (`RS256`, `PS256`, `ES256`, `EdDSA`, …), never
    /// `none` or an HMAC.
    pub algorithms: Vec<String>,
    /// Leeway on `exp` and `nbf`.
    pub clock_skew_s: u64,
    /// Where the token is read from, in order; the first present is the one checked.
    pub token_sources: Vec<TokenSource>,
    /// Claims that must be present, and when values are given hold one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_claims: Vec<ClaimRequirement>,
    /// Verified claims copied into request headers (any header of the same name the client
    /// sent is removed first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claim_headers: Vec<ClaimHeader>,
    /// Pass the token upstream; by default it is removed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub forward_token: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum JwksSource {
    /// A JSON Web Key Set document, from a Secret.
    Inline(String),
    Remote(RemoteJwks),
}

/// A JWKS the data plane fetches and keeps fresh.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RemoteJwks {
    /// `https://…` (plain `http` only to a loopback address).
    pub url: String,
    /// PEM bundle for the provider's certificate; `None`: the platform's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Refresh period when the response gives no `Cache-Control: max-age` (and the bounds
    /// any `max-age` is held within: at least `min_refresh_s`, at most `refresh_s`).
    pub refresh_s: u64,
    pub min_refresh_s: u64,
    pub timeout_ms: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum TokenSource {
    /// A header; with a prefix (`Bearer `, matched case-insensitively), the token follows it.
    Header {
        name: String,
        prefix: String,
    },
    Cookie(String),
    QueryParam(String),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRequirement {
    /// A claim name, or a dotted path into nested objects (`realm_access.roles`).
    pub claim: String,
    /// The claim (a string, a space-separated string such as `scope`, or an array) holds
    /// one of these; empty: present is enough.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any_of: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimHeader {
    pub claim: String,
    /// Lower-case header name.
    pub header: String,
}

/// External authorization, Envoy's HTTP contract: the service gets the request's method,
/// path (after `path_prefix`) and chosen headers, no body; a 2xx allows (and may add
/// headers upstream), any other answer goes back to the client as it is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuthCheck {
    /// `namespace/route`, for metrics and logs.
    pub name: String,
    /// `http://` or `https://` authority and optional path prefix.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Lower-case request headers sent to the service (besides `host`, `method` and path,
    /// which always are). Empty: `authorization` and `cookie`.
    pub headers_to_auth: Vec<String>,
    /// Lower-case headers of an allowing answer copied onto the upstream request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers_to_upstream: Vec<String>,
    pub timeout_ms: u64,
    /// On a timeout, a refused connection or a 5xx from the service: allow (`true`) or
    /// answer 503 (`false`, the default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_open: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<ExtAuthCache>,
}

/// Decisions kept for requests with the same values of `key_headers`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuthCache {
    /// Lower-case; a request missing one of them is not cached.
    pub key_headers: Vec<String>,
    pub ttl_ms: u64,
    pub max_entries: u64,
}

/// An upstream pool, resolved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// `namespace/pool`.
    pub name: String,
    /// Ordered by (address, port).
    pub endpoints: Vec<Endpoint>,
    pub load_balancing: LoadBalancing,
    pub connect_timeout_ms: u64,
    pub protocol: UpstreamProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub address: String,
    pub port: u16,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Topology hints (EndpointSlice `hints.forZones`): the zones this endpoint should
    /// serve. When set, they decide which data planes count it as local, not `zone`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub for_zones: Vec<String>,
    /// EndpointSlice conditions; static endpoints are always ready and serving.
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Endpoint {
    /// Whether a data plane in `zone` counts this endpoint as local: one of its hinted
    /// zones when the slice gives hints, else its own zone.
    pub fn local_to(&self, zone: &str) -> bool {
        if self.for_zones.is_empty() {
            self.zone.as_deref() == Some(zone)
        } else {
            self.for_zones.iter().any(|z| z == zone)
        }
    }

    /// Whether new requests may go to this endpoint.
    pub fn routable(&self) -> bool {
        self.weight > 0 && (self.ready || (self.serving && !self.terminating))
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancing {
    pub algorithm: Algorithm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Algorithm {
    RoundRobin,
    LeastRequest,
    RingHash,
    Maglev,
    Random,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum HashOn {
    /// Lower-case header name.
    Header(String),
    Cookie(String),
    SourceIp,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum UpstreamProtocol {
    Http1,
    Http2,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Inclusive ranges.
    pub expected_statuses: Vec<(u16, u16)>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    pub interval_ms: u64,
    pub base_ejection_time_ms: u64,
    pub max_ejection_percent: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRate>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SuccessRate {
    pub request_volume: u32,
    pub minimum_hosts: u32,
    pub stdev_factor_milli: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_cluster: Option<String>,
    pub min_healthy_percent: u32,
    pub prefer_local_zone: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM bundle; `None`: the platform's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<CertificatePair>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum CacheMode {
    Fixed,
    #[default]
    Auto,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CachePolicy {
    /// `namespace/policy`.
    pub name: String,
    pub mode: CacheMode,
    /// Fixed: the TTL. Auto: freshness for responses that give neither explicit freshness
    /// nor Last-Modified; 0 (the default) invents none, as RFC 9111 §4.2.2 asks.
    pub ttl_ms: u64,
    /// Auto: heuristic freshness is this percentage of the time since Last-Modified…
    #[serde(default, skip_serializing_if = "is_zero")]
    pub heuristic_percent: u8,
    /// …and never longer than this.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub heuristic_max_ms: u64,
    /// Auto: how long a stale entry with a validator is kept to be revalidated (the memory
    /// bound may drop it sooner).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub keep_stale_ms: u64,
    pub min_ttl_ms: u64,
    pub max_ttl_ms: u64,
    pub adaptive_ttl: bool,
    pub refresh_ahead: bool,
    pub stale_while_revalidate_ms: u64,
    pub stale_if_error_ms: u64,
    pub include_query: bool,
    /// Empty: every parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_query_params: Vec<String>,
    /// Lower-case request header names that are part of the key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_headers: Vec<String>,
    pub methods: Vec<String>,
    /// Statuses that may be stored; empty: RFC 9111's rules (Auto only).
    pub statuses: Vec<u16>,
    pub max_entry_bytes: u64,
    pub ignore_origin_no_store: bool,
    pub cache_authorized: bool,
    pub coalesce_timeout_ms: u64,
}

#[cfg(test)]
mod endpoint_tests {
    use super::Endpoint;

    fn ep(zone: Option<&str>, for_zones: &[&str]) -> Endpoint {
        Endpoint {
            address: "10.0.0.1".into(),
            port: 80,
            weight: 1,
            zone: zone.map(str::to_string),
            for_zones: for_zones.iter().map(|z| z.to_string()).collect(),
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    #[test]
    fn hints_decide_locality_over_the_endpoint_zone() {
        assert!(ep(Some("a"), &[]).local_to("a"));
        assert!(!ep(Some("a"), &[]).local_to("b"));
        assert!(!ep(None, &[]).local_to("a"));
        assert!(ep(Some("a"), &["b"]).local_to("b"));
        assert!(!ep(Some("a"), &["b"]).local_to("a"));
        assert!(ep(None, &["a", "c"]).local_to("c"));
    }
}

#[cfg(test)]
mod config_hash_tests {
    use super::{Endpoint, SourceRef, Table};

    fn table() -> Table {
        serde_json::from_value(serde_json::json!({
            "format": 1,
            "virtualHosts": [{"domain": "*", "routes": [{
                "name": "shop/api/0",
                "matcher": {"path": {"prefix": "/"}},
                "action": {"forward": {"backends": [{"cluster": "shop/pool", "weight": 1}], "timeoutMs": 1000}}
            }]}],
            "clusters": [{
                "name": "shop/pool", "endpoints": [], "loadBalancing": {"algorithm": "roundRobin"},
                "connectTimeoutMs": 1000, "protocol": "http1"
            }],
            "cachePolicies": [],
            "sources": [{"kind": "ApiRoute", "namespace": "shop", "name": "api", "generation": 7}]
        }))
        .expect("table parses")
    }

    #[test]
    fn generations_fleet_size_and_endpoints_do_not_change_the_configuration() {
        let a = table();
        let mut b = table();
        b.sources = vec![SourceRef {
            kind: "ApiRoute".into(),
            namespace: "shop".into(),
            name: "api".into(),
            generation: 1,
        }];
        b.fleet_pods = 3;
        b.clusters[0].endpoints.push(Endpoint {
            address: "10.0.0.1".into(),
            port: 80,
            weight: 1,
            zone: None,
            for_zones: vec![],
            ready: true,
            serving: true,
            terminating: false,
        });
        assert_ne!(a.content_hash(), b.content_hash());
        assert_eq!(a.config_hash(), b.config_hash());

        let mut c = table();
        c.clusters[0].connect_timeout_ms = 2000;
        assert_ne!(a.config_hash(), c.config_hash());
        let mut d = table();
        d.virtual_hosts[0].domain = "api.example.com".into();
        assert_ne!(a.config_hash(), d.config_hash());
    }
}
