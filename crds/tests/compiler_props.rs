//! Property tests of the compiler over generated resource sets.
//!
//! Beside each generated set, an oracle says from the resources alone what every reference
//! resolves to, which diagnostics the compiler owes and what each rule and cluster must
//! become; the compiled table and diagnostics are checked against it. Names are unique per
//! namespace and kind, as an API server guarantees (a file with duplicates is another case:
//! the first object wins there, which depends on order by design).

use std::collections::{BTreeMap, BTreeSet};

use parapet_crds::{
    api::{ApiRouteSpec, CachePolicySpec, Metadata, Object, UpstreamPoolSpec},
    compiler::{
        Inputs, MAX_MESSAGE, ObjectKey, Output, Reason, SecretData, ServicePortKey, Severity,
        compile, refresh_endpoints,
    },
    snapshot::{Endpoint, RouteAction, Snapshot, SourceRef},
};
use proptest::prelude::*;
use serde_json::json;

const NAMESPACES: [&str; 2] = ["default", "team-b"];
const SERVICES: usize = 3;
/// A path regex that does not compile.
const BAD_REGEX: &str = "/a([";

/// Hosts as written, and what they normalise to (`None`: invalid).
const VALID_HOSTS: [&str; 5] = [
    "api.example",
    "shop.example",
    "*.example",
    "*.b.example",
    "*",
];
const ODD_HOSTS: [(&str, Option<&str>); 7] = [
    (" API.Example ", Some("api.example")),
    ("Shop.example", Some("shop.example")),
    ("not a host", None),
    ("-bad.example", None),
    ("a..example", None),
    ("*.", None),
    ("", None),
];

fn normalised_host(raw: &str) -> Option<String> {
    if VALID_HOSTS.contains(&raw) {
        return Some(raw.to_string());
    }
    ODD_HOSTS
        .iter()
        .find(|(r, _)| *r == raw)
        .and_then(|(_, n)| n.map(str::to_string))
}

// ---- what is generated ----

/// A reference: to the i-th object of its kind in the referrer's namespace, to the i-th of
/// the other namespace (resolves only if the same name exists locally: references never
/// cross namespaces), to nothing, or (Secrets) to an object that exists but is unusable.
#[derive(Clone, Debug)]
enum Ref {
    Local(usize),
    OtherNamespace(usize),
    Ghost,
    Broken,
}

#[derive(Clone, Debug)]
enum Backup {
    Other(Ref),
    Itself,
}

#[derive(Clone, Debug)]
struct StaticGen {
    host: u8,
    port: i32,
    weight: i32,
    zone: Option<&'static str>,
}

#[derive(Clone, Debug)]
enum BackendGen {
    Static(Vec<StaticGen>),
    Service { svc: usize, port: i32 },
}

#[derive(Clone, Debug)]
struct PoolGen {
    backend: BackendGen,
    backup: Option<Backup>,
    algorithm: &'static str,
    generation: i64,
}

#[derive(Clone, Debug)]
struct PolicyGen {
    fixed: bool,
    ttl_s: u32,
    generation: i64,
}

#[derive(Clone, Debug)]
struct EpGen {
    host: u8,
    port: u16,
    ready: bool,
    serving: bool,
    terminating: bool,
    zone: Option<&'static str>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum PathKind {
    Exact,
    Prefix,
    Regex,
    BadRegex,
}

#[derive(Clone, Debug)]
struct MatchGen {
    kind: PathKind,
    /// Index into a small set of paths (shared paths make rules collide).
    path: usize,
    methods: Vec<&'static str>,
    header: bool,
}

#[derive(Clone, Debug)]
struct RuleGen {
    named: bool,
    matches: Vec<MatchGen>,
    backends: Vec<(Ref, i32)>,
    cache: Option<Ref>,
    keys: Option<Ref>,
    rewrite: bool,
}

#[derive(Clone, Debug)]
struct RouteGen {
    ns: usize,
    hosts: Vec<&'static str>,
    created: Option<&'static str>,
    tls: Option<Ref>,
    rules: Vec<RuleGen>,
    generation: i64,
}

#[derive(Clone, Debug)]
struct World {
    /// Every path unique, so that no two rules can collide.
    unique_paths: bool,
    pools: [Vec<PoolGen>; 2],
    policies: [Vec<PolicyGen>; 2],
    /// Per namespace and Service: its endpoints, or `None` when the Service is missing.
    services: [Vec<Option<Vec<EpGen>>>; 2],
    routes: Vec<RouteGen>,
}

fn arb_ref(valid: bool) -> BoxedStrategy<Ref> {
    if valid {
        (0usize..4).prop_map(Ref::Local).boxed()
    } else {
        prop_oneof![
            6 => (0usize..4).prop_map(Ref::Local),
            1 => (0usize..4).prop_map(Ref::OtherNamespace),
            1 => Just(Ref::Ghost),
            1 => Just(Ref::Broken),
        ]
        .boxed()
    }
}

fn arb_ep(valid: bool) -> impl Strategy<Value = EpGen> {
    (
        0u8..4,
        prop::sample::select(vec![8080u16, 1, 65535]),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec!["zone-a", "zone-b"])),
    )
        .prop_map(
            move |(host, port, ready, serving, terminating, zone)| EpGen {
                host,
                port,
                ready: ready || valid,
                serving,
                terminating: terminating && !valid,
                zone,
            },
        )
}

fn arb_pool(valid: bool) -> impl Strategy<Value = PoolGen> {
    let ports: Vec<i32> = if valid {
        vec![1, 80, 8080, 65535]
    } else {
        vec![1, 80, 8080, 65535, 0, 70000, -1]
    };
    let statics = prop::collection::vec(
        (
            0u8..4,
            prop::sample::select(ports),
            if valid { 1i32..4 } else { 0i32..4 },
            prop::option::of(prop::sample::select(vec!["zone-a", "zone-b"])),
        )
            .prop_map(|(host, port, weight, zone)| StaticGen {
                host,
                port,
                weight,
                zone,
            }),
        if valid { 1..4 } else { 0..4 },
    );
    let backend = prop_oneof![
        statics.prop_map(BackendGen::Static),
        (0..SERVICES, prop::sample::select(vec![80, 8080, 1, 65535]))
            .prop_map(|(svc, port)| BackendGen::Service { svc, port }),
    ];
    let backup = if valid {
        prop::option::of(arb_ref(true).prop_map(Backup::Other)).boxed()
    } else {
        prop::option::of(prop_oneof![
            4 => arb_ref(false).prop_map(Backup::Other),
            1 => Just(Backup::Itself),
        ])
        .boxed()
    };
    (
        backend,
        backup,
        prop::sample::select(vec![
            "RoundRobin",
            "LeastRequest",
            "RingHash",
            "Maglev",
            "Random",
        ]),
        1i64..5,
    )
        .prop_map(|(backend, backup, algorithm, generation)| PoolGen {
            backend,
            backup,
            algorithm,
            generation,
        })
}

fn arb_policy() -> impl Strategy<Value = PolicyGen> {
    (any::<bool>(), 1u32..600, 1i64..5).prop_map(|(fixed, ttl_s, generation)| PolicyGen {
        fixed,
        ttl_s,
        generation,
    })
}

fn arb_match(valid: bool) -> impl Strategy<Value = MatchGen> {
    let kinds = if valid {
        vec![PathKind::Exact, PathKind::Prefix, PathKind::Regex]
    } else {
        vec![
            PathKind::Exact,
            PathKind::Prefix,
            PathKind::Regex,
            PathKind::BadRegex,
        ]
    };
    (
        prop::sample::select(kinds),
        0usize..4,
        prop::collection::vec(prop::sample::select(vec!["GET", "POST", "DELETE"]), 0..3),
        any::<bool>(),
    )
        .prop_map(|(kind, path, methods, header)| MatchGen {
            kind,
            path,
            methods,
            header,
        })
}

fn arb_rule(valid: bool) -> impl Strategy<Value = RuleGen> {
    (
        any::<bool>(),
        prop::collection::vec(arb_match(valid), if valid { 1..3 } else { 0..3 }),
        prop::collection::vec(
            (arb_ref(valid), if valid { 1i32..4 } else { 0i32..4 }),
            1..4,
        ),
        prop::option::of(arb_ref(valid)),
        prop::option::of(arb_ref(valid)),
        any::<bool>(),
    )
        .prop_map(move |(named, matches, backends, cache, keys, rewrite)| {
            // A rewrite of the path prefix is only accepted on prefix matches.
            let rewrite = rewrite && !(valid && matches.iter().any(|m| m.kind != PathKind::Prefix));
            RuleGen {
                named,
                matches,
                backends,
                cache,
                keys,
                rewrite,
            }
        })
}

fn arb_route(valid: bool) -> impl Strategy<Value = RouteGen> {
    let mut hosts: Vec<&'static str> = VALID_HOSTS.to_vec();
    if !valid {
        hosts.extend(ODD_HOSTS.iter().map(|(h, _)| *h));
    }
    (
        0usize..2,
        prop::collection::vec(prop::sample::select(hosts), 1..4),
        prop::sample::select(vec![
            None,
            Some("2026-01-01T00:00:00Z"),
            Some("2026-02-01T00:00:00Z"),
        ]),
        prop::option::of(arb_ref(valid)),
        prop::collection::vec(arb_rule(valid), 1..4),
        1i64..5,
    )
        .prop_map(|(ns, hosts, created, tls, rules, generation)| RouteGen {
            ns,
            hosts,
            created,
            tls,
            rules,
            generation,
        })
}

fn arb_services(valid: bool) -> impl Strategy<Value = Vec<Option<Vec<EpGen>>>> {
    let eps = prop::collection::vec(arb_ep(valid), if valid { 1..4 } else { 0..4 });
    let one = if valid {
        eps.prop_map(Some).boxed()
    } else {
        prop::option::weighted(0.75, eps).boxed()
    };
    prop::collection::vec(one, SERVICES)
}

/// A resource set. `valid`: every reference resolves, every Service has a ready endpoint,
/// every host and regex is well-formed and no two rules collide.
fn arb_world(valid: bool) -> impl Strategy<Value = World> {
    let pools = || prop::collection::vec(arb_pool(valid), if valid { 1..4 } else { 0..4 });
    let policies = || prop::collection::vec(arb_policy(), if valid { 1..3 } else { 0..3 });
    (
        (pools(), pools()),
        (policies(), policies()),
        (arb_services(valid), arb_services(valid)),
        prop::collection::vec(arb_route(valid), 1..5),
    )
        .prop_map(move |(pools, policies, services, routes)| World {
            unique_paths: valid,
            pools: [pools.0, pools.1],
            policies: [policies.0, policies.1],
            services: [services.0, services.1],
            routes,
        })
}

// ---- turning it into resources ----

/// The resources of a world, owned, in the shapes the compiler reads.
#[derive(Clone)]
struct Resources {
    routes: Vec<Object<ApiRouteSpec>>,
    pools: Vec<Object<UpstreamPoolSpec>>,
    policies: Vec<Object<CachePolicySpec>>,
    service_endpoints: BTreeMap<ServicePortKey, Vec<Endpoint>>,
    secrets: BTreeMap<(String, String), SecretData>,
}

impl Resources {
    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            routes: self.routes.iter().collect(),
            pools: self.pools.iter().collect(),
            cache_policies: self.policies.iter().collect(),
            service_endpoints: self.service_endpoints.clone(),
            secrets: self.secrets.clone(),
            ..Inputs::default()
        }
    }
}

fn pool_name(i: usize) -> String {
    format!("p{i}")
}

fn policy_name(i: usize) -> String {
    format!("c{i}")
}

fn endpoint(ns: usize, e: &EpGen) -> Endpoint {
    Endpoint {
        address: format!("10.1.{ns}.{}", e.host),
        port: e.port,
        weight: 1,
        zone: e.zone.map(str::to_string),
        for_zones: Vec::new(),
        ready: e.ready,
        serving: e.serving,
        terminating: e.terminating,
    }
}

/// The name a reference is written with.
fn ref_name(
    r: &Ref,
    ns: usize,
    counts: [usize; 2],
    name: fn(usize) -> String,
    what: &str,
) -> String {
    match r {
        Ref::Local(i) if counts[ns] > 0 => name(i % counts[ns]),
        Ref::OtherNamespace(i) if counts[1 - ns] > 0 => name(i % counts[1 - ns]),
        Ref::Broken => format!("broken-{what}"),
        _ => format!("ghost-{what}"),
    }
}

fn secret_name(r: &Ref, kind: &str) -> String {
    match r {
        Ref::Local(_) | Ref::OtherNamespace(_) => format!("{kind}0"),
        Ref::Broken => format!("{kind}-broken"),
        Ref::Ghost => format!("ghost-{kind}"),
    }
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("generated object fits its type")
}

fn metadata(name: &str, ns: usize, generation: i64, created: Option<&str>) -> serde_json::Value {
    let mut m = json!({"name": name, "namespace": NAMESPACES[ns], "generation": generation});
    if let Some(c) = created {
        m["creationTimestamp"] = json!(c);
    }
    m
}

const PATHS: [&str; 4] = ["/", "/a", "/a/", "/a/b"];

fn realise(w: &World) -> Resources {
    let pool_counts = [w.pools[0].len(), w.pools[1].len()];
    let policy_counts = [w.policies[0].len(), w.policies[1].len()];

    let mut pools = Vec::new();
    let mut service_endpoints = BTreeMap::new();
    for (ns, list) in w.pools.iter().enumerate() {
        for (i, p) in list.iter().enumerate() {
            let mut spec = json!({"loadBalancing": {"algorithm": p.algorithm}});
            if matches!(p.algorithm, "RingHash" | "Maglev") {
                spec["loadBalancing"]["hashOn"] = json!({"header": "X-User"});
            }
            match &p.backend {
                BackendGen::Static(eps) => {
                    spec["static"] = eps
                        .iter()
                        .map(|e| {
                            let mut v = json!({"address": format!("10.0.{ns}.{}", e.host), "port": e.port, "weight": e.weight});
                            if let Some(z) = e.zone {
                                v["zone"] = json!(z);
                            }
                            v
                        })
                        .collect();
                }
                BackendGen::Service { svc, port } => {
                    spec["service"] = json!({"name": format!("s{svc}"), "port": port});
                    if let Some(eps) = &w.services[ns][*svc] {
                        service_endpoints.insert(
                            ServicePortKey {
                                namespace: NAMESPACES[ns].to_string(),
                                service: format!("s{svc}"),
                                port: *port,
                            },
                            eps.iter().map(|e| endpoint(ns, e)).collect(),
                        );
                    }
                }
            }
            let backup = match &p.backup {
                None => None,
                Some(Backup::Itself) => Some(pool_name(i)),
                // Another pool: the next one when the reference lands on itself.
                Some(Backup::Other(Ref::Local(j))) => {
                    let j = j % pool_counts[ns];
                    let j = if j == i { (j + 1) % pool_counts[ns] } else { j };
                    (j != i).then(|| pool_name(j))
                }
                Some(Backup::Other(r)) => Some(ref_name(r, ns, pool_counts, pool_name, "pool")),
            };
            if let Some(b) = backup {
                spec["failover"] = json!({"backupPool": {"name": b}});
            }
            pools.push(from_json(json!({
                "apiVersion": "parapet.dev/v1alpha1",
                "kind": "UpstreamPool",
                "metadata": metadata(&pool_name(i), ns, p.generation, None),
                "spec": spec,
            })));
        }
    }

    let mut policies = Vec::new();
    for (ns, list) in w.policies.iter().enumerate() {
        for (i, p) in list.iter().enumerate() {
            let spec = if p.fixed {
                json!({"mode": "Fixed", "ttl": format!("{}s", p.ttl_s)})
            } else {
                json!({"mode": "Auto", "defaultTtl": format!("{}s", p.ttl_s)})
            };
            policies.push(from_json(json!({
                "apiVersion": "parapet.dev/v1alpha1",
                "kind": "CachePolicy",
                "metadata": metadata(&policy_name(i), ns, p.generation, None),
                "spec": spec,
            })));
        }
    }

    let mut routes = Vec::new();
    for (ri, r) in w.routes.iter().enumerate() {
        let rules: Vec<serde_json::Value> = r
            .rules
            .iter()
            .enumerate()
            .map(|(ki, rule)| {
                let matches: Vec<serde_json::Value> = rule
                    .matches
                    .iter()
                    .enumerate()
                    .map(|(mi, m)| {
                        let path = if w.unique_paths {
                            format!("/r{ri}/{ki}/{mi}")
                        } else {
                            PATHS[m.path].to_string()
                        };
                        let (kind, value) = match m.kind {
                            PathKind::Exact => ("Exact", path),
                            PathKind::Prefix => ("PathPrefix", path),
                            PathKind::Regex => ("RegularExpression", format!("{path}[0-9]+")),
                            PathKind::BadRegex => ("RegularExpression", BAD_REGEX.to_string()),
                        };
                        let mut v = json!({"path": {"type": kind, "value": value}, "methods": m.methods});
                        if m.header {
                            v["headers"] = json!([{"name": "X-Tenant", "value": "t1"}]);
                        }
                        v
                    })
                    .collect();
                let backends: Vec<serde_json::Value> = rule
                    .backends
                    .iter()
                    .map(|(b, weight)| {
                        json!({"pool": ref_name(b, r.ns, pool_counts, pool_name, "pool"), "weight": weight})
                    })
                    .collect();
                let mut v = json!({"backends": backends});
                if !matches.is_empty() {
                    v["matches"] = json!(matches);
                }
                if rule.named {
                    v["name"] = json!(format!("rule-{ki}"));
                }
                if let Some(c) = &rule.cache {
                    v["cachePolicyRef"] =
                        json!({"name": ref_name(c, r.ns, policy_counts, policy_name, "policy")});
                }
                if let Some(k) = &rule.keys {
                    v["auth"] = json!({"apiKeys": {"secretRefs": [{"name": secret_name(k, "keys")}]}});
                }
                if rule.rewrite {
                    v["rewrite"] = json!({"pathPrefix": "/new"});
                }
                v
            })
            .collect();
        let mut spec = json!({"hosts": r.hosts, "rules": rules});
        if let Some(t) = &r.tls {
            spec["tls"] = json!({"secretName": secret_name(t, "tls")});
        }
        routes.push(from_json(json!({
            "apiVersion": "parapet.dev/v1alpha1",
            "kind": "ApiRoute",
            "metadata": metadata(&format!("r{ri}"), r.ns, r.generation, r.created),
            "spec": spec,
        })));
    }

    // The same Secrets in every namespace, so that equal names mean equal certificates.
    let mut secrets = BTreeMap::new();
    for ns in NAMESPACES {
        let data = |pairs: &[(&str, &str)]| -> SecretData {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect()
        };
        secrets.insert(
            (ns.to_string(), "keys0".to_string()),
            data(&[("alice", "key-alice\n"), ("bob", "key-bob")]),
        );
        secrets.insert(
            (ns.to_string(), "keys-broken".to_string()),
            data(&[("blank", " \n")]),
        );
        secrets.insert(
            (ns.to_string(), "tls0".to_string()),
            data(&[("tls.crt", "CERT"), ("tls.key", "KEY")]),
        );
        secrets.insert(
            (ns.to_string(), "tls-broken".to_string()),
            data(&[("tls.crt", "CERT")]),
        );
    }

    Resources {
        routes,
        pools,
        policies,
        service_endpoints,
        secrets,
    }
}

// ---- the oracle ----

#[derive(Debug, PartialEq)]
enum ActionExpect {
    /// No backend resolved with a weight: the rule answers 500.
    Fail,
    Forward {
        backends: Vec<(String, u32)>,
        cache: Option<String>,
        /// Number of usable API keys, when the rule checks keys.
        keys: Option<usize>,
    },
}

struct RuleExpect {
    owner: ObjectKey,
    /// `namespace/route/rule`.
    name: String,
    hosts: BTreeSet<String>,
    /// Matches that survive validation.
    matches: usize,
    action: ActionExpect,
}

struct ClusterExpect {
    endpoints: Vec<Endpoint>,
    /// `None`: no failover; `Some(None)`: failover without a usable backup.
    backup: Option<Option<String>>,
}

struct Expect {
    /// Errors owed, each with text its message must contain.
    errors: BTreeMap<(ObjectKey, Reason), BTreeSet<String>>,
    /// Pools that must carry a `NoEndpoints` warning.
    no_endpoints: BTreeSet<ObjectKey>,
    rules: Vec<RuleExpect>,
    clusters: BTreeMap<String, ClusterExpect>,
    /// Clusters that must be in the table: referenced, directly or as a backup.
    wanted: BTreeSet<String>,
    sources: BTreeSet<SourceRef>,
}

fn meta_of(m: &Metadata) -> (String, String) {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// Endpoints in table order: by address and port, each once.
fn table_order(mut eps: Vec<Endpoint>) -> Vec<Endpoint> {
    eps.sort();
    eps.dedup_by(|a, b| (&a.address, a.port) == (&b.address, b.port));
    eps
}

#[derive(Default)]
struct Owed(BTreeMap<(ObjectKey, Reason), BTreeSet<String>>);

impl Owed {
    fn add(&mut self, o: &ObjectKey, r: Reason, needle: String) {
        self.0.entry((o.clone(), r)).or_default().insert(needle);
    }
}

/// How many usable entries a referenced Secret has (`needed`: keys it must all have, then
/// 1 or 0; empty: every non-blank entry counts), owing the diagnostic when it is missing or
/// unusable.
fn secret(
    owed: &mut Owed,
    res: &Resources,
    o: &ObjectKey,
    ns: &str,
    name: &str,
    needed: &[&str],
) -> Option<usize> {
    let Some(data) = res.secrets.get(&(ns.to_string(), name.to_string())) else {
        owed.add(o, Reason::SecretNotFound, format!("Secret {ns}/{name}"));
        return None;
    };
    let usable = if needed.is_empty() {
        data.values().filter(|v| !v.trim_ascii().is_empty()).count()
    } else {
        usize::from(
            needed
                .iter()
                .all(|k| data.get(*k).is_some_and(|v| !v.is_empty())),
        )
    };
    if usable == 0 {
        owed.add(o, Reason::InvalidSecret, format!("Secret {ns}/{name}"));
    }
    Some(usable)
}

fn expect(res: &Resources) -> Expect {
    let pools: BTreeSet<(String, String)> =
        res.pools.iter().map(|p| meta_of(&p.metadata)).collect();
    let policies: BTreeSet<(String, String)> =
        res.policies.iter().map(|p| meta_of(&p.metadata)).collect();
    let mut owed = Owed::default();
    let mut rules = Vec::new();
    let mut referenced = BTreeSet::new();
    let mut sources = BTreeSet::new();
    for r in &res.routes {
        let (ns, name) = meta_of(&r.metadata);
        sources.insert(SourceRef {
            kind: "ApiRoute".into(),
            namespace: ns.clone(),
            name: name.clone(),
            generation: r.metadata.generation.unwrap_or(0),
        });
        let me = ObjectKey::new("ApiRoute", &ns, &name);
        let mut hosts = BTreeSet::new();
        for h in &r.spec.hosts {
            match normalised_host(h) {
                Some(h) => {
                    hosts.insert(h);
                }
                None => owed.add(&me, Reason::InvalidHost, "is not a DNS name".into()),
            }
        }
        if let Some(t) = &r.spec.tls {
            secret(
                &mut owed,
                res,
                &me,
                &ns,
                &t.secret_name,
                &["tls.crt", "tls.key"],
            );
        }
        for (ki, rule) in r.spec.rules.iter().enumerate() {
            let rule_name = rule.name.clone().unwrap_or_else(|| ki.to_string());
            let mut resolved: BTreeMap<String, u32> = BTreeMap::new();
            for b in &rule.backends {
                if pools.contains(&(ns.clone(), b.pool.clone())) {
                    let w = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
                    *resolved.entry(format!("{ns}/{}", b.pool)).or_default() += w;
                } else {
                    owed.add(
                        &me,
                        Reason::PoolNotFound,
                        format!("UpstreamPool {ns}/{}", b.pool),
                    );
                }
            }
            // Every unresolved reference is reported, whether or not the rule can forward.
            let cache = rule.cache_policy_ref.as_ref().and_then(|c| {
                if policies.contains(&(ns.clone(), c.name.clone())) {
                    Some(format!("{ns}/{}", c.name))
                } else {
                    owed.add(
                        &me,
                        Reason::CachePolicyNotFound,
                        format!("CachePolicy {ns}/{}", c.name),
                    );
                    None
                }
            });
            let keys = rule
                .auth
                .as_ref()
                .and_then(|a| a.api_keys.as_ref())
                .map(|k| {
                    k.secret_refs
                        .iter()
                        .filter_map(|s| secret(&mut owed, res, &me, &ns, &s.name, &[]))
                        .sum()
                });
            let action = if resolved.values().any(|w| *w > 0) {
                referenced.extend(resolved.keys().cloned());
                ActionExpect::Forward {
                    backends: resolved.into_iter().collect(),
                    cache,
                    keys,
                }
            } else {
                ActionExpect::Fail
            };
            let rewrites_prefix = rule
                .rewrite
                .as_ref()
                .is_some_and(|r| r.path_prefix.is_some());
            let mut matches = 0;
            if rule.matches.is_empty() {
                matches = 1;
            }
            for m in &rule.matches {
                let p = m.path.as_ref().expect("generated matches have a path");
                let kind = p.kind.unwrap_or_default();
                if kind == parapet_crds::api::PathMatchType::RegularExpression
                    && p.value == BAD_REGEX
                {
                    owed.add(
                        &me,
                        Reason::InvalidRegex,
                        format!("rule {rule_name}: path regex"),
                    );
                } else if rewrites_prefix && kind != parapet_crds::api::PathMatchType::PathPrefix {
                    owed.add(
                        &me,
                        Reason::InvalidRewrite,
                        format!("rule {rule_name}: rewrite.pathPrefix"),
                    );
                } else {
                    matches += 1;
                }
            }
            rules.push(RuleExpect {
                owner: me.clone(),
                name: format!("{ns}/{name}/{rule_name}"),
                hosts: hosts.clone(),
                matches,
                action,
            });
        }
    }

    let mut clusters = BTreeMap::new();
    let mut no_endpoints = BTreeSet::new();
    for p in &res.pools {
        let (ns, name) = meta_of(&p.metadata);
        sources.insert(SourceRef {
            kind: "UpstreamPool".into(),
            namespace: ns.clone(),
            name: name.clone(),
            generation: p.metadata.generation.unwrap_or(0),
        });
        let me = ObjectKey::new("UpstreamPool", &ns, &name);
        let endpoints = match (&p.spec.static_endpoints, &p.spec.service) {
            (Some(st), _) => st
                .iter()
                .filter(|e| (1..=65535).contains(&e.port))
                .map(|e| Endpoint {
                    address: e.address.clone(),
                    port: e.port as u16,
                    weight: u32::try_from(e.weight.unwrap_or(1)).unwrap_or(0),
                    zone: e.zone.clone(),
                    for_zones: Vec::new(),
                    ready: true,
                    serving: true,
                    terminating: false,
                })
                .collect(),
            (None, Some(s)) => {
                let key = ServicePortKey {
                    namespace: ns.clone(),
                    service: s.name.clone(),
                    port: s.port,
                };
                match res.service_endpoints.get(&key) {
                    None => {
                        owed.add(
                            &me,
                            Reason::ServiceNotFound,
                            format!("Service {ns}/{} port {}", s.name, s.port),
                        );
                        Vec::new()
                    }
                    Some(eps) => {
                        if !eps.iter().any(Endpoint::routable) {
                            no_endpoints.insert(me.clone());
                        }
                        eps.clone()
                    }
                }
            }
            (None, None) => Vec::new(),
        };
        let backup = p.spec.failover.as_ref().map(|f| {
            f.backup_pool.as_ref().and_then(|b| {
                if b.name != name && pools.contains(&(ns.clone(), b.name.clone())) {
                    Some(format!("{ns}/{}", b.name))
                } else {
                    owed.add(&me, Reason::BackupPoolNotFound, b.name.clone());
                    None
                }
            })
        });
        clusters.insert(
            format!("{ns}/{name}"),
            ClusterExpect {
                endpoints: table_order(endpoints),
                backup,
            },
        );
    }
    for c in &res.policies {
        let (ns, name) = meta_of(&c.metadata);
        sources.insert(SourceRef {
            kind: "CachePolicy".into(),
            namespace: ns,
            name,
            generation: c.metadata.generation.unwrap_or(0),
        });
    }

    let mut wanted = BTreeSet::new();
    let mut stack: Vec<String> = referenced.into_iter().collect();
    while let Some(c) = stack.pop() {
        if wanted.insert(c.clone())
            && let Some(Some(b)) = clusters.get(&c).and_then(|c| c.backup.clone())
        {
            stack.push(b);
        }
    }

    Expect {
        errors: owed.0,
        no_endpoints,
        rules,
        clusters,
        wanted,
        sources,
    }
}

/// Checks a compiled output against the oracle.
fn check(out: &Output, exp: &Expect) -> Result<(), TestCaseError> {
    let table = &out.table;

    // A table the data plane accepts: every name it uses is defined in it.
    let mut s = Snapshot::new(1, table.clone());
    s.allow_empty = true;
    prop_assert!(s.validate().is_ok(), "{:?}", s.validate());

    // Exactly the errors owed, on the right objects, saying what is missing.
    let got: BTreeSet<(ObjectKey, Reason)> = out
        .diagnostics
        .errors()
        .map(|d| (d.object.clone(), d.reason))
        .collect();
    let owed: BTreeSet<(ObjectKey, Reason)> = exp.errors.keys().cloned().collect();
    prop_assert_eq!(&got, &owed);
    for ((object, reason), needles) in &exp.errors {
        for needle in needles {
            prop_assert!(
                out.diagnostics.errors().any(|d| d.object == *object
                    && d.reason == *reason
                    && d.message.contains(needle.as_str())),
                "no {reason} on {object} mentions {needle:?}: {:?}",
                out.diagnostics
            );
        }
    }
    // Warnings: rule and certificate conflicts on routes, empty Services on pools.
    for d in out
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
    {
        match d.reason {
            Reason::RuleConflict => prop_assert_eq!(d.object.kind, "ApiRoute", "{}", d),
            Reason::NoEndpoints => prop_assert!(exp.no_endpoints.contains(&d.object), "{}", d),
            _ => prop_assert!(false, "unexpected warning {}", d),
        }
    }
    for o in &exp.no_endpoints {
        prop_assert!(
            out.diagnostics
                .iter()
                .any(|d| d.object == *o && d.reason == Reason::NoEndpoints),
            "no NoEndpoints warning on {o}"
        );
    }
    // Readable: a sentence, bounded, no debug output.
    for d in out.diagnostics.iter() {
        prop_assert!(
            d.message.len() >= 20
                && d.message.len() <= MAX_MESSAGE
                && d.message.trim() == d.message
                && !d.message.contains("Error(")
                && !d.message.contains("Some("),
            "{}",
            d
        );
    }

    // Every rule: on each of its valid hosts with each surviving match, unless an older
    // rule with identical matches took the place (and the conflict was reported); its
    // action is what its references resolve to, never a forward to nothing.
    for rule in &exp.rules {
        for host in &rule.hosts {
            let vh = table.virtual_hosts.iter().find(|v| v.domain == *host);
            let present: Vec<_> = vh
                .into_iter()
                .flat_map(|v| &v.routes)
                .filter(|r| r.name == rule.name)
                .collect();
            prop_assert!(present.len() <= rule.matches, "{} on {host}", rule.name);
            if present.len() < rule.matches {
                let conflict = format!("rule {} matches exactly what", rule.name);
                prop_assert!(
                    out.diagnostics.iter().any(|d| d.object == rule.owner
                        && d.reason == Reason::RuleConflict
                        && d.message.contains(&conflict)
                        && d.message.contains(&format!("on host {host}"))),
                    "{} lost a match on {host} without a RuleConflict: {:?}",
                    rule.name,
                    out.diagnostics
                );
            }
            for r in present {
                let got = match &r.action {
                    RouteAction::DirectResponse(d) => {
                        prop_assert_eq!(d.status, 500);
                        ActionExpect::Fail
                    }
                    RouteAction::Forward(f) => ActionExpect::Forward {
                        backends: f
                            .backends
                            .iter()
                            .map(|b| (b.cluster.clone(), b.weight))
                            .collect(),
                        cache: f.cache_policy.clone(),
                        keys: f.api_keys.as_ref().map(|k| k.keys.len()),
                    },
                    RouteAction::Redirect(_) => {
                        prop_assert!(false, "{}: an ApiRoute rule never redirects", rule.name);
                        ActionExpect::Fail
                    }
                };
                prop_assert_eq!(&got, &rule.action, "{}", rule.name);
            }
        }
    }
    // No virtual host that no rule asked for, and no route that is not a rule's.
    let names: BTreeSet<&str> = exp.rules.iter().map(|r| r.name.as_str()).collect();
    for vh in &table.virtual_hosts {
        prop_assert!(
            exp.rules.iter().any(|r| r.hosts.contains(&vh.domain)),
            "{}",
            vh.domain
        );
        for r in &vh.routes {
            prop_assert!(names.contains(r.name.as_str()), "{}", r.name);
        }
    }

    // Exactly the reachable clusters, with the endpoints and backups of their pools.
    let got: BTreeSet<&str> = table.clusters.iter().map(|c| c.name.as_str()).collect();
    let wanted: BTreeSet<&str> = exp.wanted.iter().map(String::as_str).collect();
    prop_assert_eq!(got, wanted);
    for c in &table.clusters {
        let e = &exp.clusters[&c.name];
        prop_assert_eq!(&c.endpoints, &e.endpoints, "{}", c.name);
        prop_assert_eq!(
            c.failover.as_ref().map(|f| f.backup_cluster.clone()),
            e.backup.clone(),
            "{}",
            c.name
        );
    }

    let sources: BTreeSet<SourceRef> = table.sources.iter().cloned().collect();
    prop_assert_eq!(&sources, &exp.sources);
    prop_assert_eq!(sources.len(), table.sources.len(), "sources listed once");
    Ok(())
}

// ---- shuffling ----

/// Fisher-Yates with xorshift: proptest gives the seed, so a failure names it.
fn shuffle<T>(v: &mut [T], seed: &mut u64) {
    for i in (1..v.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        v.swap(i, (*seed % (i as u64 + 1)) as usize);
    }
}

/// The same resources with every list whose order carries no meaning shuffled: objects,
/// hosts, backends, methods, endpoints. (Rules and matches keep their order: it breaks ties.)
fn shuffled(res: &Resources, seed: u64) -> Resources {
    let mut seed = seed | 1;
    let mut res = res.clone();
    shuffle(&mut res.routes, &mut seed);
    shuffle(&mut res.pools, &mut seed);
    shuffle(&mut res.policies, &mut seed);
    for r in &mut res.routes {
        shuffle(&mut r.spec.hosts, &mut seed);
        for rule in &mut r.spec.rules {
            shuffle(&mut rule.backends, &mut seed);
            for m in &mut rule.matches {
                shuffle(&mut m.methods, &mut seed);
            }
        }
    }
    for p in &mut res.pools {
        if let Some(st) = &mut p.spec.static_endpoints {
            shuffle(st, &mut seed);
        }
    }
    for eps in res.service_endpoints.values_mut() {
        shuffle(eps, &mut seed);
    }
    res
}

fn snapshot_bytes(out: &Output) -> (Vec<u8>, String) {
    let s = Snapshot::new(1, out.table.clone());
    (serde_json::to_vec(&s).expect("serialises"), s.hash)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any resource set compiles, without panicking, to a table the data plane accepts, with
    /// exactly the diagnostics its broken references owe, on the objects that hold them.
    #[test]
    fn every_resource_set_compiles_to_what_its_references_resolve_to(w in arb_world(false)) {
        let res = realise(&w);
        let out = compile(&res.inputs());
        check(&out, &expect(&res))?;
    }

    /// A valid resource set: no diagnostic at all, and every rule serves every match on every
    /// host it names.
    #[test]
    fn valid_resource_sets_compile_without_diagnostics(w in arb_world(true)) {
        let res = realise(&w);
        let out = compile(&res.inputs());
        prop_assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
        let exp = expect(&res);
        check(&out, &exp)?;
        for rule in &exp.rules {
            prop_assert!(matches!(rule.action, ActionExpect::Forward { .. }), "{}", rule.name);
            for host in &rule.hosts {
                let n = out.table.virtual_hosts.iter().filter(|v| v.domain == *host)
                    .flat_map(|v| &v.routes).filter(|r| r.name == rule.name).count();
                prop_assert_eq!(n, rule.matches, "{} on {}", rule.name, host);
            }
        }
        Snapshot::new(1, out.table).validate().map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
    }

    /// The order objects and lists arrive in changes nothing: same bytes, same hash, same
    /// diagnostics.
    #[test]
    fn input_order_changes_nothing(w in arb_world(false), seed in any::<u64>()) {
        let res = realise(&w);
        let a = compile(&res.inputs());
        let b = compile(&shuffled(&res, seed).inputs());
        prop_assert_eq!(snapshot_bytes(&a), snapshot_bytes(&b));
        prop_assert_eq!(&a.diagnostics, &b.diagnostics);
    }

    /// The endpoint-only fast path gives the table a full compile gives, when only the
    /// endpoints of existing Services changed.
    #[test]
    fn refreshing_endpoints_equals_a_full_compile(
        w in arb_world(false),
        fresh in prop::collection::vec(prop::collection::vec(arb_ep(false), 0..4), 2 * SERVICES),
    ) {
        let before = realise(&w);
        let previous = compile(&before.inputs()).table;
        let mut after = w.clone();
        for (ns, services) in after.services.iter_mut().enumerate() {
            for (svc, eps) in services.iter_mut().enumerate() {
                if let Some(eps) = eps {
                    *eps = fresh[ns * SERVICES + svc].clone();
                }
            }
        }
        let after = realise(&after);
        let inputs = after.inputs();
        prop_assert_eq!(refresh_endpoints(&previous, &inputs), compile(&inputs).table);
    }
}
