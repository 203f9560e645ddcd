//! The compiler: diagnostics, ordering, determinism, and never panicking.

use std::collections::BTreeMap;

use parapet_crds::{
    compiler::{ConditionKind, Inputs, Output, Reason, ServicePortKey, Severity, compile},
    manifest::Manifest,
    snapshot::{Endpoint, PathMatch, RouteAction, Snapshot, Table},
};
use proptest::prelude::*;

fn compile_yaml(yaml: &str) -> Output {
    let m = Manifest::parse(yaml).expect("test manifest parses");
    compile(&m.inputs())
}

fn paths(table: &Table, host: &str) -> Vec<String> {
    let vh = table
        .virtual_hosts
        .iter()
        .find(|v| v.domain == host)
        .unwrap_or_else(|| panic!("no virtual host {host}"));
    vh.routes
        .iter()
        .map(|r| match &r.matcher.path {
            PathMatch::Exact(p) => format!("={p}"),
            PathMatch::Prefix(p) => format!("{p}*"),
            PathMatch::Regex(p) => format!("~{p}"),
        })
        .collect()
}

const POOL: &str = r#"
apiVersion: parapet.dev/v1alpha1
kind: UpstreamPool
metadata: {name: web}
spec:
  static: [{address: 127.0.0.1, port: 8080}]
"#;

fn route(name: &str, created: &str, hosts: &str, rules: &str) -> String {
    format!(
        r#"
---
apiVersion: parapet.dev/v1alpha1
kind: ApiRoute
metadata: {{name: {name}, creationTimestamp: "{created}", generation: 1}}
spec:
  hosts: {hosts}
  rules:
{rules}
"#
    )
}

#[test]
fn a_regex_that_compiles_only_inside_the_anchoring_group_is_refused() {
    // Wrapped as `^(?:/a)|(?:/b)$` it would compile, and match any path ending in `/b`.
    let yaml = format!(
        "{POOL}{}",
        route(
            "escape",
            "2026-01-01T00:00:00Z",
            "[a.example]",
            r#"
    - name: path
      matches: [{path: {type: RegularExpression, value: "/a)|(?:/b"}}]
      backends: [{pool: web}]
    - name: header
      matches: [{path: {type: Exact, value: /h}, headers: [{name: x, value: "a)|(?:.*", type: RegularExpression}]}]
      backends: [{pool: web}]
    - name: fine
      matches: [{path: {type: RegularExpression, value: "/(a|b)"}}]
      backends: [{pool: web}]
"#
        )
    );
    let out = compile_yaml(&yaml);
    let reasons: Vec<Reason> = out
        .diagnostics
        .for_object("ApiRoute", "default", "escape")
        .map(|d| d.reason)
        .collect();
    assert_eq!(reasons, vec![Reason::InvalidRegex, Reason::InvalidRegex]);
    assert_eq!(
        paths(&out.table, "a.example"),
        vec!["~^(?:/(a|b))$".to_string()]
    );
}

#[test]
fn orders_exact_then_regex_then_longer_prefixes() {
    let yaml = format!(
        "{POOL}{}",
        route(
            "r",
            "2026-01-01T00:00:00Z",
            "[a.example]",
            r#"
    - matches: [{path: {type: PathPrefix, value: /}}]
      backends: [{pool: web}]
    - matches: [{path: {type: PathPrefix, value: /accounts/}}]
      backends: [{pool: web}]
    - matches: [{path: {type: RegularExpression, value: "/accounts/[0-9]+"}}]
      backends: [{pool: web}]
    - matches: [{path: {type: Exact, value: /accounts/1}}]
      backends: [{pool: web}]
    - matches: [{path: {type: PathPrefix, value: /accounts/1/x}}]
      backends: [{pool: web}]
"#
        )
    );
    let out = compile_yaml(&yaml);
    assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
    assert_eq!(
        paths(&out.table, "a.example"),
        vec![
            "=/accounts/1",
            "~^(?:/accounts/[0-9]+)$",
            "/accounts/1/x*",
            "/accounts*",
            "/*"
        ]
    );
}

#[test]
fn more_specific_matches_win_ties_then_older_objects() {
    let yaml = format!(
        "{POOL}{}{}",
        route(
            "young",
            "2026-02-01T00:00:00Z",
            "[a.example]",
            r#"
    - name: plain
      matches: [{path: {value: /x}}]
      backends: [{pool: web}]
"#
        ),
        route(
            "old",
            "2026-01-01T00:00:00Z",
            "[a.example]",
            r#"
    - name: plain
      matches: [{path: {value: /x}}]
      backends: [{pool: web}]
    - name: methods
      matches: [{path: {value: /x}, methods: [GET]}]
      backends: [{pool: web}]
    - name: headers
      matches: [{path: {value: /x}, methods: [GET], headers: [{name: X-A, value: "1"}]}]
      backends: [{pool: web}]
"#
        )
    );
    let out = compile_yaml(&yaml);
    let vh = &out.table.virtual_hosts[0];
    let names: Vec<&str> = vh.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "default/old/headers",
            "default/old/methods",
            "default/old/plain"
        ]
    );
    // The younger identical rule is shadowed and says so.
    let d: Vec<_> = out
        .diagnostics
        .for_object("ApiRoute", "default", "young")
        .collect();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].reason, Reason::RuleConflict);
    assert_eq!(d[0].severity, Severity::Warning);
    assert!(
        d[0].message.contains("default/old/plain"),
        "{}",
        d[0].message
    );
}

#[test]
fn hosts_merge_and_order_exact_wildcard_star() {
    let yaml = format!(
        "{POOL}{}{}",
        route(
            "a",
            "2026-01-01T00:00:00Z",
            "['*', '*.example', b.example]",
            "    - backends: [{pool: web}]"
        ),
        route(
            "b",
            "2026-01-02T00:00:00Z",
            "['*.a.example', B.Example]",
            "    - matches: [{path: {type: Exact, value: /b}}]\n      backends: [{pool: web}]"
        )
    );
    let out = compile_yaml(&yaml);
    assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
    let domains: Vec<&str> = out
        .table
        .virtual_hosts
        .iter()
        .map(|v| v.domain.as_str())
        .collect();
    assert_eq!(domains, vec!["b.example", "*.a.example", "*.example", "*"]);
    assert_eq!(paths(&out.table, "b.example"), vec!["=/b", "/*"]);
}

#[test]
fn every_diagnostic_names_the_object_and_the_fix() {
    let yaml = format!(
        r#"{POOL}
---
apiVersion: parapet.dev/v1alpha1
kind: UpstreamPool
metadata: {{name: svc}}
spec:
  service: {{name: missing-svc, port: 80}}
  failover: {{backupPool: {{name: nope}}}}
---
apiVersion: parapet.dev/v1alpha1
kind: UpstreamPool
metadata: {{name: selfish}}
spec:
  static: [{{address: 127.0.0.1, port: 1}}]
  failover: {{backupPool: {{name: selfish}}}}
{}"#,
        route(
            "bad",
            "2026-01-01T00:00:00Z",
            "[a.example, 'not a host']",
            r#"
    - name: missing-pool
      matches: [{path: {type: Exact, value: /p}}]
      backends: [{pool: ghost}]
    - name: bad-regex
      matches: [{path: {type: RegularExpression, value: "/a(["}}, {path: {type: Exact, value: /ok}}]
      backends: [{pool: web}]
    - name: bad-header-regex
      matches: [{headers: [{name: x, value: "(", type: RegularExpression}]}]
      backends: [{pool: web}]
    - name: bad-rewrite
      matches: [{path: {type: Exact, value: /rw}}]
      backends: [{pool: web}]
      rewrite: {pathPrefix: /new}
    - name: missing-cache
      matches: [{path: {type: Exact, value: /c}}]
      backends: [{pool: web}]
      cachePolicyRef: {name: ghost-cache}
    - name: missing-keys
      matches: [{path: {type: Exact, value: /k}}]
      backends: [{pool: web}]
      auth: {apiKeys: {secretRefs: [{name: ghost-keys}]}}
    - name: svc
      matches: [{path: {type: Exact, value: /svc}}]
      backends: [{pool: svc}, {pool: selfish}]
"#
        )
    );
    let out = compile_yaml(&yaml);
    let reasons = |kind, name| -> Vec<Reason> {
        out.diagnostics
            .for_object(kind, "default", name)
            .map(|d| d.reason)
            .collect()
    };
    let mut route_reasons = reasons("ApiRoute", "bad");
    route_reasons.sort();
    assert_eq!(
        route_reasons,
        vec![
            Reason::InvalidRegex,
            Reason::InvalidRegex,
            Reason::InvalidRewrite,
            Reason::InvalidHost,
            Reason::PoolNotFound,
            Reason::CachePolicyNotFound,
            Reason::SecretNotFound,
        ]
    );
    assert_eq!(
        reasons("UpstreamPool", "svc"),
        vec![Reason::BackupPoolNotFound, Reason::ServiceNotFound]
    );
    assert_eq!(
        reasons("UpstreamPool", "selfish"),
        vec![Reason::BackupPoolNotFound]
    );
    for d in out.diagnostics.iter() {
        assert!(d.message.len() > 20 && !d.message.contains("Error("), "{d}");
    }
    let (reason, msg) = out
        .diagnostics
        .condition("ApiRoute", "default", "bad", ConditionKind::ResolvedRefs)
        .expect("ResolvedRefs is false");
    assert_eq!(reason, Reason::PoolNotFound);
    assert!(
        msg.contains("ghost") && msg.contains("ghost-cache") && msg.contains("ghost-keys"),
        "{msg}"
    );
    assert!(
        out.diagnostics
            .condition("ApiRoute", "default", "bad", ConditionKind::Accepted)
            .is_some()
    );
    assert!(
        out.diagnostics
            .condition("UpstreamPool", "default", "web", ConditionKind::Accepted)
            .is_none()
    );

    // The rest of the table still compiles.
    let p = paths(&out.table, "a.example");
    assert!(p.contains(&"=/ok".to_string()), "{p:?}");
    assert!(
        !p.iter().any(|p| p.contains("/rw")),
        "bad rewrite left out: {p:?}"
    );
    let vh = &out.table.virtual_hosts[0];
    let by_path = |want: &str| {
        vh.routes
            .iter()
            .find(|r| matches!(&r.matcher.path, PathMatch::Exact(p) if p == want))
            .unwrap_or_else(|| panic!("{want} compiled"))
    };
    // No backend resolved: 500, never a fall-through.
    assert!(matches!(&by_path("/p").action, RouteAction::DirectResponse(d) if d.status == 500));
    // Missing cache policy: served uncached.
    assert!(matches!(&by_path("/c").action, RouteAction::Forward(f) if f.cache_policy.is_none()));
    // Missing key Secret: closed, not open.
    assert!(
        matches!(&by_path("/k").action, RouteAction::Forward(f) if f.api_keys.as_ref().is_some_and(|k| k.keys.is_empty()))
    );
    // A missing Service leaves the pool with no endpoints; it is still in the table.
    let svc = out
        .table
        .clusters
        .iter()
        .find(|c| c.name == "default/svc")
        .expect("svc cluster");
    assert!(svc.endpoints.is_empty());
    assert!(
        svc.failover
            .as_ref()
            .is_some_and(|f| f.backup_cluster.is_none())
    );
}

#[test]
fn condition_messages_stay_bounded() {
    let rules: String = (0..60)
        .map(|i| format!("    - matches: [{{path: {{type: Exact, value: /p{i}}}}}]\n      backends: [{{pool: ghost-pool-with-a-rather-long-name-{i}}}]\n"))
        .collect();
    let out = compile_yaml(&format!(
        "{POOL}{}",
        route("r", "2026-01-01T00:00:00Z", "[a.example]", &rules)
    ));
    let (_, msg) = out
        .diagnostics
        .condition("ApiRoute", "default", "r", ConditionKind::ResolvedRefs)
        .unwrap();
    assert!(
        msg.len() <= parapet_crds::compiler::MAX_MESSAGE + 32,
        "{}",
        msg.len()
    );
    assert!(msg.ends_with("more)"), "{msg}");
}

#[test]
fn service_endpoints_resolve_and_unreferenced_pools_stay_out() {
    let yaml = r#"
apiVersion: parapet.dev/v1alpha1
kind: UpstreamPool
metadata: {name: svc, namespace: bank}
spec:
  service: {name: accounts, port: 80}
---
apiVersion: parapet.dev/v1alpha1
kind: UpstreamPool
metadata: {name: unused, namespace: bank}
spec:
  static: [{address: 10.0.0.1, port: 80}]
---
apiVersion: parapet.dev/v1alpha1
kind: ApiRoute
metadata: {name: r, namespace: bank}
spec:
  hosts: [a.example]
  rules: [{backends: [{pool: svc}]}]
"#;
    let m = Manifest::parse(yaml).unwrap();
    let mut inputs = m.inputs();
    let ep = |addr: &str, ready| Endpoint {
        address: addr.into(),
        port: 8080,
        weight: 1,
        zone: Some("z1".into()),
        for_zones: Vec::new(),
        ready,
        serving: ready,
        terminating: !ready,
    };
    inputs.service_endpoints.insert(
        ServicePortKey {
            namespace: "bank".into(),
            service: "accounts".into(),
            port: 80,
        },
        vec![ep("10.1.0.2", true), ep("10.1.0.1", false)],
    );
    let out = compile(&inputs);
    assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
    let names: Vec<&str> = out.table.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["bank/svc"]);
    let eps = &out.table.clusters[0].endpoints;
    assert_eq!(
        eps.iter().map(|e| e.address.as_str()).collect::<Vec<_>>(),
        vec!["10.1.0.1", "10.1.0.2"]
    );
    assert!(!eps[0].routable() && eps[1].routable());
}

#[test]
fn api_keys_are_hashed_never_plain() {
    let yaml = format!(
        r#"{POOL}
---
apiVersion: v1
kind: Secret
metadata: {{name: keys}}
stringData: {{alice: "s3cret-alice-key\n", bob: s3cret-bob-key}}
{}"#,
        route(
            "r",
            "2026-01-01T00:00:00Z",
            "[a.example]",
            "    - backends: [{pool: web}]\n      auth: {apiKeys: {secretRefs: [{name: keys}], header: X-Key}}"
        )
    );
    let out = compile_yaml(&yaml);
    assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
    let json = serde_json::to_string(&out.table).unwrap();
    assert!(!json.contains("s3cret"), "plain key leaked into the table");
    let RouteAction::Forward(f) = &out.table.virtual_hosts[0].routes[0].action else {
        panic!("forward")
    };
    let keys = f.api_keys.as_ref().unwrap();
    assert_eq!(
        keys.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
        vec!["keys/alice", "keys/bob"]
    );
    let alice = &keys.keys[0];
    let salt = hex::decode(&alice.salt).unwrap();
    // Trailing newline (from files) is not part of the key.
    let want = parapet_crds::snapshot::HashedApiKey::hash_key(&salt, b"s3cret-alice-key");
    assert_eq!(alice.sha256, hex::encode(want));
}

#[test]
fn the_installation_seed_changes_every_salt_and_the_keys_still_verify() {
    let yaml = format!(
        r#"{POOL}
---
apiVersion: v1
kind: Secret
metadata: {{name: keys}}
stringData: {{alice: s3cret-alice-key}}
{}"#,
        route(
            "r",
            "2026-01-01T00:00:00Z",
            "[a.example]",
            "    - backends: [{pool: web}]\n      auth: {apiKeys: {secretRefs: [{name: keys}]}}"
        )
    );
    let m = Manifest::parse(&yaml).unwrap();
    let alice = |seed: &[u8]| {
        let inputs = Inputs {
            key_salt_seed: seed.to_vec(),
            ..m.inputs()
        };
        let out = compile(&inputs);
        let RouteAction::Forward(f) = &out.table.virtual_hosts[0].routes[0].action else {
            panic!("forward")
        };
        f.api_keys.as_ref().unwrap().keys[0].clone()
    };
    let (a, b, a_again) = (
        alice(b"install-a"),
        alice(b"install-b"),
        alice(b"install-a"),
    );
    assert_ne!(a.salt, b.salt, "two installations share a salt");
    assert_ne!(a.sha256, b.sha256, "two installations share a hash");
    assert_eq!(
        a, a_again,
        "the same installation must compile the same salt"
    );
    for k in [&a, &b] {
        let want = parapet_crds::snapshot::HashedApiKey::hash_key(
            &hex::decode(&k.salt).unwrap(),
            b"s3cret-alice-key",
        );
        assert_eq!(k.sha256, hex::encode(want));
    }
}

#[test]
fn compiling_twice_gives_identical_bytes_whatever_the_input_order() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/banking.yaml"
    ))
    .unwrap();
    let m = Manifest::parse(&text).unwrap();
    let a = compile(&with_services(m.inputs()));
    let mut reversed = m.inputs();
    reversed.routes.reverse();
    reversed.pools.reverse();
    reversed.cache_policies.reverse();
    let b = compile(&with_services(reversed));
    let (sa, sb) = (Snapshot::new(1, a.table), Snapshot::new(1, b.table));
    assert_eq!(
        serde_json::to_vec(&sa).unwrap(),
        serde_json::to_vec(&sb).unwrap()
    );
    assert_eq!(sa.hash, sb.hash);
    assert_eq!(sa.hash.len(), 64);
    sa.validate().expect("compiled snapshot validates");
}

fn with_services(mut inputs: Inputs<'_>) -> Inputs<'_> {
    for (svc, n) in [
        ("accounts", 3),
        ("accounts-dr", 1),
        ("auth", 2),
        ("statements", 2),
        ("statements-next", 1),
    ] {
        inputs.service_endpoints.insert(
            ServicePortKey {
                namespace: "default".into(),
                service: svc.into(),
                port: 80,
            },
            (0..n)
                .map(|i| Endpoint {
                    address: format!("10.0.{i}.1"),
                    port: 8080,
                    weight: 1,
                    zone: None,
                    for_zones: Vec::new(),
                    ready: true,
                    serving: true,
                    terminating: false,
                })
                .collect(),
        );
    }
    inputs
}

#[test]
fn examples_compile_without_diagnostics() {
    for file in ["banking.yaml", "standalone.yaml", "filters.yaml"] {
        let text =
            std::fs::read_to_string(format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
        let m = Manifest::parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let out = compile(&with_services(m.inputs()));
        assert!(out.diagnostics.is_empty(), "{file}: {:?}", out.diagnostics);
        assert!(out.table.route_count() >= 3, "{file}");
        Snapshot::new(1, out.table)
            .validate()
            .unwrap_or_else(|e| panic!("{file}: {e:?}"));
    }
}

#[test]
fn the_gateway_api_example_is_accepted_with_every_reference_resolved() {
    let text = std::fs::read_to_string(format!(
        "{}/../examples/gateway-api.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let m = Manifest::parse(&text).unwrap();
    let out = parapet_crds::compiler::gateway::compile_gateways(&m.gateway_inputs(), &m.inputs());
    let g = out.gateway("shop", "edge").expect("the Gateway compiles");
    assert!(g.conditions.iter().all(|c| c.status), "{:?}", g.conditions);
    for r in &out.routes {
        for p in &r.parents {
            assert!(p.conditions.iter().all(|c| c.status), "{:?}", p.conditions);
        }
    }
    assert_eq!(g.table.route_count(), 2);
    Snapshot::new(1, g.table.clone()).validate().unwrap();
}

#[test]
fn manifest_errors_say_which_document_and_what_is_wrong() {
    let e = Manifest::parse("kind: Ingress\napiVersion: networking.k8s.io/v1\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("document 1") && e.contains("Ingress"), "{e}");
    let e = Manifest::parse("kind: Gateway\napiVersion: x/v1\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("document 1 (Gateway)") && e.contains("gateway.networking.k8s.io/v1"),
        "{e}"
    );
    let e = Manifest::parse(&format!("{POOL}---\napiVersion: parapet.dev/v1alpha1\nkind: CachePolicy\nmetadata: {{name: c}}\nspec: {{mode: Sometimes}}\n"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("document 2") && e.contains("CachePolicy") && e.contains("Sometimes"),
        "{e}"
    );
    let e = Manifest::parse("apiVersion: parapet.dev/v1alpha1\nkind: CachePolicy\nmetadata: {name: c}\nspec: {mode: Fixed, ttl: 5 minutes}\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid duration") && e.contains("e.g."), "{e}");
}

#[test]
fn a_secret_reads_base64_data_and_plain_string_data() {
    // base64 of "alice-key" and "bob-old"; stringData wins for the same key, as on a cluster.
    let m = Manifest::parse(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: bank}\n\
         data: {alice: YWxpY2Uta2V5, bob: Ym9iLW9sZA==}\nstringData: {bob: bob-new}\n",
    )
    .unwrap();
    let inputs = m.inputs();
    let data = &inputs.secrets[&("bank".to_string(), "keys".to_string())];
    assert_eq!(data["alice"], b"alice-key");
    assert_eq!(data["bob"], b"bob-new");
}

#[test]
fn a_secret_whose_data_is_not_base64_says_where_plain_text_goes() {
    let e = Manifest::parse(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: keys}\ndata: {alice: not base64!}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("document 1")
            && e.contains("data.alice is not base64")
            && e.contains("stringData"),
        "{e}"
    );
}

/// What `kubectl get -o yaml` prints (server-set metadata, status) is a valid file: the
/// compiler reads the name, namespace and generation and ignores the rest.
#[test]
fn an_object_as_the_api_server_returns_it_compiles() {
    let yaml = format!(
        r#"{POOL}
---
apiVersion: parapet.dev/v1alpha1
kind: ApiRoute
metadata:
  name: r
  namespace: default
  generation: 4
  creationTimestamp: "2026-01-01T00:00:00Z"
  resourceVersion: "123"
  uid: 0b7c1f2e-5d1a-4c8e-9f3b-2a6d8e4c1b7a
  labels: {{team: payments}}
  annotations: {{kubectl.kubernetes.io/last-applied-configuration: "{{}}"}}
  managedFields: [{{manager: kubectl, operation: Apply}}]
spec:
  hosts: [a.example]
  rules: [{{backends: [{{pool: web}}]}}]
status:
  conditions:
    - {{type: Accepted, status: "True", reason: Accepted, message: ok, lastTransitionTime: "2026-01-01T00:00:01Z", observedGeneration: 4}}
"#
    );
    let out = compile_yaml(&yaml);
    assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
    let route = out
        .table
        .sources
        .iter()
        .find(|s| s.kind == "ApiRoute")
        .expect("the route is a source");
    assert_eq!((route.name.as_str(), route.generation), ("r", 4));
    assert_eq!(paths(&out.table, "a.example"), ["/*"]);
}

#[test]
fn an_empty_table_needs_allow_empty() {
    let out = compile(&Inputs::default());
    let mut s = Snapshot::new(3, out.table);
    assert!(s.validate().unwrap_err()[0].contains("allowEmpty"));
    s.allow_empty = true;
    s.validate().unwrap();
    s.hash = "0".repeat(64);
    assert!(s.validate().unwrap_err()[0].contains("does not match"));
}

// ---- property test: arbitrary specs never panic the compiler ----

fn arb_path() -> impl Strategy<Value = serde_json::Value> {
    (
        prop_oneof!["Exact", "PathPrefix", "RegularExpression", "Bogus"],
        prop_oneof![
            Just("/".to_string()),
            "/[a-z]{0,5}(/[a-z0-9]{0,3}){0,3}/?",
            "[(\\[a-z*+?/]{0,8}",
            ".{0,12}"
        ],
    )
        .prop_map(|(t, v)| serde_json::json!({"type": t, "value": v}))
}

fn arb_rule() -> impl Strategy<Value = serde_json::Value> {
    (
        prop::collection::vec(arb_path(), 0..3),
        prop::collection::vec(("p[0-3]", -2i32..5), 0..3),
        prop::option::of("c[0-2]"),
        prop::option::of(("[a-z-]{1,5}", ".{0,6}", any::<bool>())),
        any::<bool>(),
        prop::option::of("k[0-1]"),
        (
            prop::option::of(prop_oneof!["0s", "50ms", "20s"]),
            prop::option::of(0i32..120),
            prop::option::of(-1i32..5),
            prop::option::of(-1i32..3),
            prop::option::of(prop_oneof!["0s", "1ms", "30s"]),
        ),
    )
        .prop_map(|(paths, backends, cache, header, rewrite, keys, (delay, pct, extra, max, slow))| {
            let mut rule = serde_json::json!({
                "matches": paths.into_iter().map(|p| {
                    let mut m = serde_json::json!({"path": p, "methods": ["GET"]});
                    if let Some((n, v, re)) = &header {
                        m["headers"] = serde_json::json!([{"name": n, "value": v, "type": if *re {"RegularExpression"} else {"Exact"}}]);
                    }
                    m
                }).collect::<Vec<_>>(),
                "backends": backends.into_iter().map(|(p, w)| serde_json::json!({"pool": p, "weight": w})).collect::<Vec<_>>(),
                "retries": {"attempts": 3, "retryOn": ["RetriableStatus"], "retriableStatuses": [503]},
                "rateLimit": {"requests": 5, "key": "Header"},
            });
            if let Some(c) = cache {
                rule["cachePolicyRef"] = serde_json::json!({"name": c});
            }
            if rewrite {
                rule["rewrite"] = serde_json::json!({"pathPrefix": "/r", "hostname": "h"});
            }
            if let Some(k) = keys {
                rule["auth"] = serde_json::json!({"apiKeys": {"secretRefs": [{"name": k}]}});
            }
            // Hedge and lane settings in and out of the schema's bounds.
            if delay.is_some() || pct.is_some() || extra.is_some() {
                rule["hedge"] = serde_json::json!({"delay": delay, "percentile": pct, "maxExtraAttempts": extra});
            }
            if max.is_some() || slow.is_some() {
                rule["lanes"] = serde_json::json!({"maxInFlight": max, "slowThreshold": slow});
            }
            rule
        })
}

fn arb_pool(i: usize) -> impl Strategy<Value = serde_json::Value> {
    (
        any::<bool>(),
        prop::collection::vec((0u16..3, -1i32..3), 0..4),
        prop_oneof!["RoundRobin", "LeastRequest", "RingHash", "Maglev", "Random"],
        prop::option::of("p[0-4]"),
        prop::option::of(-5i32..200),
    )
        .prop_map(move |(svc, eps, alg, backup, pct)| {
            let mut spec = serde_json::json!({"loadBalancing": {"algorithm": alg}});
            if svc {
                spec["service"] = serde_json::json!({"name": format!("s{i}"), "port": 80});
            } else {
                spec["static"] = serde_json::json!(eps.iter().map(|(p, w)| serde_json::json!({"address": "127.0.0.1", "port": p, "weight": w})).collect::<Vec<_>>());
            }
            if let Some(b) = backup {
                spec["failover"] = serde_json::json!({"backupPool": {"name": b}, "minHealthyPercent": pct});
            }
            serde_json::json!({"apiVersion": "parapet.dev/v1alpha1", "kind": "UpstreamPool", "metadata": {"name": format!("p{i}"), "namespace": "n"}, "spec": spec})
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn compiler_never_panics_and_is_deterministic(
        hosts in prop::collection::vec(prop_oneof!["[a-c]\\.example", "\\*\\.example", Just("*".to_string()), ".{0,10}"], 1..4),
        rules in prop::collection::vec(arb_rule(), 1..5),
        pools in (arb_pool(0), arb_pool(1), arb_pool(2)),
        cache_fixed in any::<bool>(),
    ) {
        let route = serde_json::json!({"apiVersion": "parapet.dev/v1alpha1", "kind": "ApiRoute", "metadata": {"name": "r", "namespace": "n"}, "spec": {"hosts": hosts, "rules": rules}});
        let cache = serde_json::json!({"apiVersion": "parapet.dev/v1alpha1", "kind": "CachePolicy", "metadata": {"name": "c0", "namespace": "n"}, "spec": {"mode": if cache_fixed {"Fixed"} else {"Auto"}}});
        let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "k0", "namespace": "n"}, "stringData": {"a": "key"}});
        let docs = [route, pools.0, pools.1, pools.2, cache, secret];
        let yaml: String = docs.iter().map(|d| format!("---\n{}\n", serde_json::to_string(d).unwrap())).collect();
        // Some generated values (negative ports, say) are rejected by parsing: that is fine,
        // the API server's schema rejects them too. What parses must compile.
        // (About half the generated cases parse; checked when this test was written.)
        if let Ok(m) = Manifest::parse(&yaml) {
            let mut inputs = m.inputs();
            inputs.service_endpoints = BTreeMap::new();
            let a = compile(&inputs);
            let b = compile(&inputs);
            prop_assert_eq!(serde_json::to_vec(&a.table).unwrap(), serde_json::to_vec(&b.table).unwrap());
            // Whatever compiled must be a table the data plane accepts.
            let mut s = Snapshot::new(1, a.table);
            s.allow_empty = true;
            prop_assert!(s.validate().is_ok(), "{:?}", s.validate());
        }
    }
}

#[test]
fn a_secret_outside_the_label_selector_is_reported_with_how_to_label_it() {
    let yaml = format!(
        "{POOL}{}",
        route(
            "keys",
            "2024-01-01T00:00:00Z",
            "[a.example]",
            r#"
    - name: r
      matches: [{path: {type: Exact, value: /k}}]
      backends: [{pool: web}]
      auth: {apiKeys: {secretRefs: [{name: keys}]}}
"#
        )
    );
    let m = Manifest::parse(&yaml).expect("test manifest parses");
    let message = |selector: Option<&str>| {
        let mut inputs = m.inputs();
        inputs.secret_label_selector = selector.map(str::to_string);
        let out = compile(&inputs);
        let (reason, msg) = out
            .diagnostics
            .condition("ApiRoute", "default", "keys", ConditionKind::ResolvedRefs)
            .expect("ResolvedRefs is false");
        assert_eq!(reason, Reason::SecretNotFound);
        msg
    };
    let msg = message(Some("parapet.dev/secret=true"));
    assert!(
        msg.contains(
            "Secret default/keys, which does not exist or is not labelled parapet.dev/secret=true"
        ) && msg.contains("kubectl label secret -n default keys parapet.dev/secret=true"),
        "{msg}"
    );
    let msg = message(Some("team in (a,b)"));
    assert!(
        msg.contains("label it to match team in (a,b)") && !msg.contains("kubectl label"),
        "{msg}"
    );
    let msg = message(None);
    assert!(
        msg.contains("which does not exist; create it") && !msg.contains("label"),
        "{msg}"
    );
}

#[test]
fn a_rule_with_no_backend_still_reports_its_other_missing_references() {
    let yaml = format!(
        "{POOL}{}",
        route(
            "r",
            "2026-01-01T00:00:00Z",
            "[a.example]",
            r#"
    - name: lost
      backends: [{pool: ghost}]
      cachePolicyRef: {name: ghost-cache}
      auth: {apiKeys: {secretRefs: [{name: ghost-keys}]}}
"#
        )
    );
    let out = compile_yaml(&yaml);
    let RouteAction::DirectResponse(d) = &out.table.virtual_hosts[0].routes[0].action else {
        panic!("a rule with no backend answers directly")
    };
    assert_eq!(d.status, 500);
    let (reason, msg) = out
        .diagnostics
        .condition("ApiRoute", "default", "r", ConditionKind::ResolvedRefs)
        .expect("ResolvedRefs is false");
    assert_eq!(reason, Reason::PoolNotFound);
    assert!(
        msg.contains("default/ghost ") && msg.contains("ghost-cache") && msg.contains("ghost-keys"),
        "{msg}"
    );
}
