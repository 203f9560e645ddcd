//! The translation and the status it gives, on small files shaped like the conformance
//! suite's.

use super::{CompiledGateway, Condition, GatewayOutput, compile_gateways};
use crate::{
    compiler::gateway::{KIND_GRPC_ROUTE, KIND_HTTP_ROUTE},
    manifest::Manifest,
    snapshot::{
        ListenerProtocol, PathMatch, PathReplacement, Route, RouteAction, UpstreamProtocol,
        VirtualHost,
    },
};

const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: parapet, generation: 1}
spec: {controllerName: parapet.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: other, generation: 1}
spec: {controllerName: example.com/other}
---
apiVersion: v1
kind: Namespace
metadata: {name: infra, labels: {gateway: shared}}
---
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {team: a}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: infra}
spec: {ports: [{port: 8080, targetPort: 3000}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: infra, labels: {kubernetes.io/service-name: web}}
endpoints: [{addresses: [10.0.0.1]}, {addresses: [10.0.0.2], conditions: {ready: false}}]
ports: [{port: 3000}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: apps}
spec: {ports: [{port: 8080, targetPort: 3000}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: apps, labels: {kubernetes.io/service-name: api}}
endpoints: [{addresses: [10.0.1.1]}]
ports: [{port: 3000}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra, generation: 2}
spec:
  gatewayClassName: parapet
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}}
  - {name: all, port: 8080, protocol: HTTP, hostname: "*.example.com", allowedRoutes: {namespaces: {from: All}}}
"#;

fn compile(extra: &str) -> GatewayOutput {
    let m = Manifest::parse(&format!("{BASE}\n---\n{extra}")).expect("the test file parses");
    compile_gateways(&m.gateway_inputs(), &m.inputs())
}

fn condition<'a>(conditions: &'a [Condition], kind: &str) -> &'a Condition {
    conditions
        .iter()
        .find(|c| c.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {conditions:?}"))
}

fn parent_condition(out: &GatewayOutput, route: &str, kind: &str) -> Condition {
    let r = out
        .route(
            KIND_HTTP_ROUTE,
            route.split('/').next().unwrap(),
            route.split('/').nth(1).unwrap(),
        )
        .unwrap_or_else(|| panic!("no status for {route}"));
    condition(&r.parents[0].conditions, kind).clone()
}

fn gateway<'a>(out: &'a GatewayOutput, name: &str) -> &'a CompiledGateway {
    out.gateway("infra", name)
        .unwrap_or_else(|| panic!("gateway {name} not compiled"))
}

fn host<'a>(g: &'a CompiledGateway, port: u16, domain: &str) -> &'a VirtualHost {
    g.table
        .listeners
        .iter()
        .find(|l| l.port == port)
        .unwrap_or_else(|| panic!("no listener on {port}"))
        .virtual_hosts
        .iter()
        .find(|v| v.domain == domain)
        .unwrap_or_else(|| panic!("no host {domain} on {port}"))
}

fn route_named<'a>(v: &'a VirtualHost, suffix: &str) -> &'a Route {
    v.routes
        .iter()
        .find(|r| r.name.ends_with(suffix))
        .unwrap_or_else(|| {
            panic!(
                "no route *{suffix} in {:?}",
                v.routes.iter().map(|r| &r.name).collect::<Vec<_>>()
            )
        })
}

#[test]
fn classes_of_other_controllers_and_their_gateways_are_left_alone() {
    let out = compile(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: theirs, namespace: infra}
spec: {gatewayClassName: other, listeners: [{name: http, port: 80, protocol: HTTP}]}
"#,
    );
    assert_eq!(out.classes.len(), 1);
    assert_eq!(out.classes[0].name, "parapet");
    assert!(condition(&out.classes[0].conditions, "Accepted").status);
    assert!(
        out.classes[0]
            .supported_features
            .contains(&"HTTPRoute".to_string())
    );
    assert!(out.gateway("infra", "theirs").is_none());
    let g = gateway(&out, "gw");
    assert!(g.accepted());
    assert_eq!(condition(&g.conditions, "Accepted").observed_generation, 2);
}

#[test]
fn a_route_attaches_forwards_and_counts_on_its_listener() {
    let out = compile(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: infra, generation: 4}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: web, port: 8080}]
  - backendRefs: [{name: web, port: 8080, weight: 3}]
"#,
    );
    let accepted = parent_condition(&out, "infra/r", "Accepted");
    assert!(accepted.status, "{accepted:?}");
    assert_eq!(accepted.observed_generation, 4);
    assert!(parent_condition(&out, "infra/r", "ResolvedRefs").status);
    let g = gateway(&out, "gw");
    assert_eq!(g.listeners[0].attached_routes, 1);
    assert_eq!(g.listeners[1].attached_routes, 0);
    let v = host(g, 80, "*");
    assert_eq!(v.routes.len(), 2);
    assert_eq!(v.routes[0].matcher.path, PathMatch::Exact("/exact".into()));
    let RouteAction::Forward(f) = &v.routes[1].action else {
        panic!("forwards")
    };
    assert_eq!(f.backends[0].weight, 3);
    let cluster = g
        .table
        .clusters
        .iter()
        .find(|c| c.name == f.backends[0].cluster)
        .unwrap();
    assert_eq!(cluster.endpoints.len(), 2);
    assert_eq!(cluster.endpoints[0].port, 3000);
    assert!(!cluster.endpoints[1].ready);
    assert!(
        g.table
            .sources
            .iter()
            .any(|s| s.kind == "HTTPRoute" && s.generation == 4)
    );
    assert_eq!(g.table.listeners[0].protocol, ListenerProtocol::Http);
}

#[test]
fn each_refusal_has_the_reason_the_spec_names() {
    let out = compile(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: other-ns, namespace: apps}
spec: {parentRefs: [{name: gw, namespace: infra, sectionName: http}], rules: [{backendRefs: [{name: api, port: 8080}]}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: no-section, namespace: infra}
spec: {parentRefs: [{name: gw, sectionName: nope}], rules: [{backendRefs: [{name: web, port: 8080}]}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad-host, namespace: apps}
spec: {parentRefs: [{name: gw, namespace: infra, sectionName: all}], hostnames: [other.org], rules: [{backendRefs: [{name: api, port: 8080}]}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: missing, namespace: infra}
spec: {parentRefs: [{name: gw}], rules: [{matches: [{path: {value: /missing}}], backendRefs: [{name: nothing, port: 80}]}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: kind, namespace: infra}
spec: {parentRefs: [{name: gw}], rules: [{matches: [{path: {value: /kind}}], backendRefs: [{group: example.com, kind: Thing, name: web, port: 80}]}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cross, namespace: infra}
spec: {parentRefs: [{name: gw}], rules: [{matches: [{path: {value: /cross}}], backendRefs: [{name: api, namespace: apps, port: 8080}]}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: wrong-port, namespace: infra}
spec: {parentRefs: [{name: gw, port: 9999}], rules: [{backendRefs: [{name: web, port: 8080}]}]}
"#,
    );
    let reason = |r: &str, k: &str| parent_condition(&out, r, k).reason;
    assert_eq!(reason("apps/other-ns", "Accepted"), "NotAllowedByListeners");
    assert_eq!(reason("infra/no-section", "Accepted"), "NoMatchingParent");
    assert_eq!(reason("infra/wrong-port", "Accepted"), "NoMatchingParent");
    assert_eq!(
        reason("apps/bad-host", "Accepted"),
        "NoMatchingListenerHostname"
    );
    assert_eq!(reason("infra/missing", "ResolvedRefs"), "BackendNotFound");
    assert_eq!(reason("infra/kind", "ResolvedRefs"), "InvalidKind");
    assert_eq!(reason("infra/cross", "ResolvedRefs"), "RefNotPermitted");
    // Refused references stay accepted and answer 500, never falling through.
    assert!(parent_condition(&out, "infra/missing", "Accepted").status);
    let g = gateway(&out, "gw");
    for path in ["/missing", "/kind", "/cross"] {
        let r = host(g, 80, "*")
            .routes
            .iter()
            .find(|r| r.matcher.path == PathMatch::Prefix(path.into()))
            .unwrap_or_else(|| panic!("{path} is in the table"));
        assert!(
            matches!(&r.action, RouteAction::DirectResponse(d) if d.status == 500),
            "{path}"
        );
    }
}

#[test]
fn a_reference_grant_lets_a_route_reach_another_namespace() {
    let out = compile(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cross, namespace: infra}
spec: {parentRefs: [{name: gw}], rules: [{backendRefs: [{name: api, namespace: apps, port: 8080}]}]}
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: allow, namespace: apps}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: infra}]
  to: [{group: "", kind: Service}]
"#,
    );
    assert!(parent_condition(&out, "infra/cross", "ResolvedRefs").status);
    let RouteAction::Forward(f) = &host(gateway(&out, "gw"), 80, "*").routes[0].action else {
        panic!("forwards")
    };
    assert_eq!(f.backends[0].cluster, "service/apps/api:8080");
}

#[test]
fn listeners_say_what_is_wrong_with_them() {
    let out = compile(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: odd, namespace: infra, generation: 1}
spec:
  gatewayClassName: parapet
  listeners:
  - {name: udp, port: 53, protocol: UDP}
  - {name: kinds, port: 80, protocol: HTTP, allowedRoutes: {kinds: [{kind: TCPRoute}, {kind: HTTPRoute}]}}
  - {name: tls, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: nonexistent}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: none, namespace: infra}
spec: {gatewayClassName: parapet, listeners: [{name: tcp, port: 9000, protocol: TCP}]}
"#,
    );
    let g = gateway(&out, "odd");
    let accepted = condition(&g.conditions, "Accepted");
    assert!(accepted.status && accepted.reason == "ListenersNotValid");
    let l = |name: &str| g.listeners.iter().find(|l| l.name == name).unwrap();
    assert_eq!(
        condition(&l("udp").conditions, "Accepted").reason,
        "UnsupportedProtocol"
    );
    assert!(l("udp").supported_kinds.is_empty());
    assert_eq!(
        condition(&l("kinds").conditions, "ResolvedRefs").reason,
        "InvalidRouteKinds"
    );
    assert_eq!(l("kinds").supported_kinds.len(), 1);
    assert_eq!(
        condition(&l("tls").conditions, "ResolvedRefs").reason,
        "InvalidCertificateRef"
    );
    assert!(!condition(&l("tls").conditions, "Programmed").status);
    let none = gateway(&out, "none");
    assert!(!condition(&none.conditions, "Accepted").status);
}

#[test]
fn a_gateway_of_its_own_parameters_is_refused() {
    let out = compile(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: params, namespace: infra}
spec:
  gatewayClassName: parapet
  listeners: [{name: http, port: 80, protocol: HTTP}]
  infrastructure: {parametersRef: {group: invalid.io, kind: InvalidParameters, name: invalid}}
"#,
    );
    let g = gateway(&out, "params");
    let accepted = condition(&g.conditions, "Accepted");
    assert_eq!(
        (accepted.status, accepted.reason.as_str()),
        (false, "InvalidParameters")
    );
    assert!(!g.accepted(), "no fleet is provisioned for it");
}

#[test]
fn filters_become_table_settings() {
    let out = compile(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: f, namespace: infra}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /redirect/}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /port}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]
  - matches: [{path: {type: PathPrefix, value: /rewrite}}]
    filters:
    - {type: URLRewrite, urlRewrite: {hostname: internal.example, path: {type: ReplaceFullPath, replaceFullPath: /full}}}
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Set, value: a}], add: [{name: X-Add, value: b}], remove: [X-Gone, Host]}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: X-Resp, value: c}]}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: web, port: 8080}, percent: 25}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: web, port: 8080}, fraction: {numerator: 1, denominator: 3}}}
    backendRefs: [{name: web, port: 8080}]
    timeouts: {request: 2s, backendRequest: 500ms}
  - matches: [{path: {type: PathPrefix, value: /none}}]
    timeouts: {request: 0s}
    backendRefs: [{name: web, port: 8080}]
"#,
    );
    let v = host(gateway(&out, "gw"), 80, "*");
    let RouteAction::Redirect(r) = &route_named(v, "/0/0").action else {
        panic!("redirects")
    };
    assert_eq!(
        (r.scheme.as_deref(), r.port, r.status),
        (Some("https"), Some(443), 301)
    );
    let RouteAction::Redirect(r) = &route_named(v, "/1/0").action else {
        panic!("redirects")
    };
    assert_eq!((r.scheme.as_deref(), r.port), (Some("http"), Some(80)));
    assert_eq!(r.path, Some(PathReplacement::Prefix("/new".into())));
    let RouteAction::Forward(f) = &route_named(v, "/2/0").action else {
        panic!("forwards")
    };
    let rw = f.rewrite.as_ref().unwrap();
    assert_eq!(
        (rw.hostname.as_deref(), rw.full_path.as_deref()),
        (Some("internal.example"), Some("/full"))
    );
    assert_eq!(f.request_headers.set[0].name, "x-set");
    assert_eq!(f.request_headers.add[0].value, "b");
    assert_eq!(
        f.request_headers.remove,
        vec!["x-gone".to_string()],
        "host is never removed"
    );
    assert_eq!(f.response_headers.add[0].name, "x-resp");
    assert_eq!(
        f.mirrors.iter().map(|m| m.per_million).collect::<Vec<_>>(),
        vec![250_000, 333_333]
    );
    assert_eq!((f.timeout_ms, f.backend_timeout_ms), (2000, Some(500)));
    let RouteAction::Forward(f) = &route_named(v, "/3/0").action else {
        panic!("forwards")
    };
    assert_eq!(f.timeout_ms, 24 * 3600 * 1000, "0s turns the timeout off");
}

#[test]
fn precedence_follows_the_spec_across_routes() {
    let out = compile(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b-newer, namespace: infra, creationTimestamp: "2026-01-02T00:00:00Z"}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /a}}]
    backendRefs: [{name: web, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /a/b}}, {path: {type: PathPrefix, value: /a}, headers: [{name: X-V, value: "1"}]}]
    backendRefs: [{name: web, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a-older, namespace: infra, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /a}}]
    backendRefs: [{name: web, port: 8080}]
  - matches: [{path: {type: Exact, value: /a}}, {path: {type: PathPrefix, value: /a}, method: POST}]
    backendRefs: [{name: web, port: 8080}]
"#,
    );
    let names: Vec<&str> = host(gateway(&out, "gw"), 80, "*")
        .routes
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "httproute/infra/a-older/1/0", // exact
            "httproute/infra/b-newer/1/0", // longest prefix
            "httproute/infra/a-older/1/1", // method
            "httproute/infra/b-newer/1/1", // header
            "httproute/infra/a-older/0/0", // the older route's identical match wins
        ]
    );
}

/// A PEM pair the translation accepts (it checks the PEM shape, never the key).
const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----\nTUlJ\n-----END CERTIFICATE-----\n";
const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nTUlJ\n-----END PRIVATE KEY-----\n";

/// The `kubernetes.io/tls` Secret `infra/cert` holding that pair.
fn cert_secret() -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: cert, namespace: infra}}\nstringData: {{tls.crt: \"{}\", tls.key: \"{}\"}}",
        CERT_PEM.escape_default(),
        KEY_PEM.escape_default()
    )
}

#[test]
fn hostnames_make_virtual_hosts_and_https_listeners_carry_their_certificate() {
    let out = compile(&format!(
        r#"{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: tls, namespace: infra}}
spec:
  gatewayClassName: parapet
  listeners:
  - {{name: https, port: 443, protocol: HTTPS, hostname: secure.example.com, tls: {{certificateRefs: [{{name: cert}}]}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: h, namespace: infra}}
spec:
  parentRefs: [{{name: gw, sectionName: all}}, {{name: tls}}]
  hostnames: ["a.example.com", "*.example.com"]
  rules: [{{backendRefs: [{{name: web, port: 8080}}]}}]
"#,
        cert_secret()
    ));
    let g = gateway(&out, "gw");
    let l8080 = g.table.listeners.iter().find(|l| l.port == 8080).unwrap();
    let on_8080: Vec<&str> = l8080
        .virtual_hosts
        .iter()
        .map(|v| v.domain.as_str())
        .collect();
    assert_eq!(on_8080, ["a.example.com", "*.example.com"]);
    let t = gateway(&out, "tls");
    assert_eq!(t.table.listeners[0].protocol, ListenerProtocol::Https);
    let v = host(t, 443, "secure.example.com");
    assert_eq!(v.tls.as_ref().unwrap().cert_pem, CERT_PEM);
    assert_eq!(t.listeners[0].attached_routes, 1);
}

#[test]
fn an_https_listener_answers_names_without_routes_over_tls() {
    let out = compile(&format!(
        r#"{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: tls, namespace: infra}}
spec:
  gatewayClassName: parapet
  listeners:
  - {{name: https, port: 443, protocol: HTTPS, tls: {{certificateRefs: [{{name: cert}}]}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: h, namespace: infra}}
spec:
  parentRefs: [{{name: tls}}]
  hostnames: [example.org]
  rules: [{{backendRefs: [{{name: web, port: 8080}}]}}]
"#,
        cert_secret()
    ));
    let t = gateway(&out, "tls");
    let any = host(t, 443, "*");
    assert!(any.routes.is_empty(), "other names get 404");
    assert!(any.tls.is_some(), "but complete the handshake");
    assert_eq!(host(t, 443, "example.org").routes.len(), 1);
}

#[test]
fn grpc_routes_match_methods_as_paths_and_speak_http2_upstream() {
    let m = Manifest::parse(&format!(
        "{BASE}\n---\n{}",
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: infra}
spec:
  parentRefs: [{name: gw, sectionName: http}]
  rules:
  - matches: [{method: {service: echo.Echo, method: Ping}}]
    backendRefs: [{name: web, port: 8080}]
  - matches: [{method: {service: echo.Echo}, headers: [{name: X-Id, value: "7"}]}]
    backendRefs: [{name: web, port: 8080}]
"#
    ))
    .unwrap();
    let out = compile_gateways(&m.gateway_inputs(), &m.inputs());
    assert!(out.route(KIND_GRPC_ROUTE, "infra", "g").is_some());
    let g = gateway(&out, "gw");
    let v = host(g, 80, "*");
    assert_eq!(
        v.routes[0].matcher.path,
        PathMatch::Exact("/echo.Echo/Ping".into())
    );
    assert_eq!(
        v.routes[1].matcher.path,
        PathMatch::Prefix("/echo.Echo".into())
    );
    assert_eq!(v.routes[1].matcher.headers[0].name, "x-id");
    let c = g
        .table
        .clusters
        .iter()
        .find(|c| c.name.starts_with("service/infra/web"))
        .unwrap();
    assert_eq!(c.protocol, UpstreamProtocol::Http2);
}

#[test]
fn an_upstream_pool_on_the_same_service_lends_its_settings() {
    let out = compile(
        r#"
apiVersion: parapet.dev/v1alpha1
kind: UpstreamPool
metadata: {name: web-pool, namespace: infra}
spec:
  service: {name: web, port: 8080}
  loadBalancing: {algorithm: LeastRequest}
  healthCheck: {path: /healthz}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: infra}
spec: {parentRefs: [{name: gw}], rules: [{backendRefs: [{name: web, port: 8080}]}]}
"#,
    );
    let g = gateway(&out, "gw");
    assert_eq!(g.table.clusters.len(), 1);
    let c = &g.table.clusters[0];
    assert_eq!(c.name, "infra/web-pool");
    assert!(c.health_check.is_some());
    assert_eq!(
        c.load_balancing.algorithm,
        crate::snapshot::Algorithm::LeastRequest
    );
}

#[test]
fn an_omitted_or_empty_backend_list_answers_500() {
    let out = compile(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: infra}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: Exact, value: /omitted}}]
  - matches: [{path: {type: Exact, value: /empty}}]
    backendRefs: []
"#,
    );
    assert!(parent_condition(&out, "infra/r", "ResolvedRefs").status);
    for r in &host(gateway(&out, "gw"), 80, "*").routes {
        assert!(matches!(&r.action, RouteAction::DirectResponse(d) if d.status == 500));
    }
}

#[test]
fn the_table_passes_the_receivers_checks() {
    let out = compile(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: infra}
spec:
  parentRefs: [{name: gw}]
  rules:
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: api, namespace: apps, port: 8080}}}]
    backendRefs: [{name: web, port: 8080}]
"#,
    );
    let s = crate::snapshot::Snapshot::new(1, gateway(&out, "gw").table.clone());
    assert_eq!(s.validate(), Ok(()));
    // A mirror into another namespace without a grant is left out and reported.
    assert_eq!(
        parent_condition(&out, "infra/r", "ResolvedRefs").reason,
        "RefNotPermitted"
    );
}

#[test]
fn a_more_specific_listener_isolates_its_names_from_the_others_routes() {
    let out = compile(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: iso, namespace: infra}
spec:
  gatewayClassName: parapet
  listeners:
  - {name: empty, port: 80, protocol: HTTP}
  - {name: wild, port: 80, protocol: HTTP, hostname: "*.example.com"}
  - {name: foo, port: 80, protocol: HTTP, hostname: "*.foo.example.com"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: on-empty, namespace: infra}
spec:
  parentRefs: [{name: iso, sectionName: empty}]
  hostnames: [bar.com, "*.example.com", "*.foo.example.com"]
  rules: [{matches: [{path: {value: /empty}}], backendRefs: [{name: web, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: on-wild, namespace: infra}
spec:
  parentRefs: [{name: iso, sectionName: wild}]
  hostnames: ["*.example.com", "*.foo.example.com"]
  rules: [{matches: [{path: {value: /wild}}], backendRefs: [{name: web, port: 8080}]}]
"#,
    );
    let g = gateway(&out, "iso");
    let names = |domain: &str| -> Vec<String> {
        host(g, 80, domain)
            .routes
            .iter()
            .map(|r| r.name.clone())
            .collect()
    };
    assert_eq!(names("bar.com"), ["httproute/infra/on-empty/0/0"]);
    assert_eq!(
        names("*.example.com"),
        ["httproute/infra/on-wild/0/0"],
        "the wildcard listener's names"
    );
    assert!(
        names("*.foo.example.com").is_empty(),
        "the *.foo.example.com listener has no routes, and the others' stay out of its names"
    );
}

#[test]
fn header_edits_that_are_not_valid_http_are_left_out_and_timeouts_are_bounded() {
    let out = compile(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: infra}
spec:
  parentRefs: [{name: gw}]
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Ok, value: fine}, {name: X-Bad, value: "a\u0001b"}, {name: "Bad Name", value: v}]
        add: [{name: X-Split, value: "a\nb"}]
    backendRefs: [{name: web, port: 8080}]
    timeouts: {request: 99999h, backendRequest: 99999h}
"#,
    );
    let g = gateway(&out, "gw");
    let RouteAction::Forward(f) = &host(g, 80, "*").routes[0].action else {
        panic!("forwards")
    };
    let set: Vec<&str> = f
        .request_headers
        .set
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(set, ["x-ok"], "{:?}", f.request_headers.set);
    assert!(f.request_headers.add.is_empty());
    assert_eq!(f.timeout_ms, 24 * 3600 * 1000, "bounded at a day");
    assert_eq!(
        f.backend_timeout_ms,
        Some(f.timeout_ms),
        "an attempt never outlives its request"
    );
    assert_eq!(
        crate::snapshot::Snapshot::new(1, g.table.clone()).validate(),
        Ok(())
    );
}
