//! Standalone mode reads Gateway API resources from its file as the operator reads them
//! from a cluster: a GatewayClass of Parapet's controller, a Gateway whose listener port a
//! socket is mapped to, HTTPRoutes, and the Service and EndpointSlice they send to.

use std::time::Duration;

use http::StatusCode;
use parapet_tests::{admin, backend::Backend, client::Client, dataplane::Dataplane, wait_for};

const WAIT: Duration = Duration::from_secs(10);

fn gateway_yaml(backend_port: u16, extra: &str) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: parapet}}
spec: {{controllerName: parapet.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: shop}}
spec:
  gatewayClassName: parapet
  listeners:
  - {{name: http, port: 80, protocol: HTTP}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec: {{ports: [{{port: 8080, targetPort: {backend_port}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
endpoints: [{{addresses: [127.0.0.1]}}]
ports: [{{port: {backend_port}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: shop}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [shop.example]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /api}}}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: X-Via, value: gateway-api}}]}}
    - type: URLRewrite
      urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}}
    backendRefs: [{{name: web, port: 8080}}]
  - matches: [{{path: {{type: Exact, value: /old}}}}]
    filters: [{{type: RequestRedirect, requestRedirect: {{path: {{type: ReplaceFullPath, replaceFullPath: /new}}, statusCode: 301}}}}]
  - matches: [{{path: {{type: Exact, value: /missing}}}}]
    backendRefs: [{{name: nothing, port: 80}}]
{extra}"#
    )
}

async fn ready(dp: &Dataplane) {
    let c = Client::new();
    let a = dp.admin;
    wait_for("the data plane to be ready", WAIT, || {
        let c = c.clone();
        async move { admin::ready(&c, a).await.then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_in_the_file_is_served_on_the_socket_mapped_to_its_listener() {
    let backend = Backend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, gateway_yaml(backend.port(), "")).unwrap();
    let dp = Dataplane::start(&[
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0=80",
    ]);
    ready(&dp).await;
    let c = Client::new();
    let to = dp.sockets[0].0;

    let r = c.get(to, "shop.example", "/api/items?x=1").await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(backend.last_uri().as_deref(), Some("/v2/items?x=1"));
    assert_eq!(
        backend.last_headers().unwrap().get("x-via").unwrap(),
        "gateway-api"
    );

    let r = c.get(to, "shop.example", "/old").await.unwrap();
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        r.headers.get("location").unwrap(),
        "http://shop.example/new"
    );

    // A backendRef that does not resolve answers 500; another host is not routed.
    let r = c.get(to, "shop.example", "/missing").await.unwrap();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let r = c.get(to, "other.example", "/api/items").await.unwrap();
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // The refused reference is reported as the operator would write it.
    let logs = dp.logs().join("\n");
    assert!(
        logs.contains("BackendNotFound") && logs.contains("shop/nothing"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_need_a_choice_and_the_chosen_one_is_served() {
    let backend = Backend::start("web").await;
    let second = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: shop}
spec:
  gatewayClassName: parapet
  listeners:
  - {name: http, port: 80, protocol: HTTP}
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, gateway_yaml(backend.port(), second)).unwrap();
    let path = path.to_str().unwrap();

    let ambiguous = Dataplane::start(&["--config", path, "--listen", "127.0.0.1:0=80"]);
    let c = Client::new();
    let logs = {
        let dp = &ambiguous;
        wait_for("the refusal to be logged", WAIT, || {
            let logs = dp.logs().join("\n");
            async move {
                logs.contains("choose the one to serve with --gateway")
                    .then_some(logs)
            }
        })
        .await
    };
    assert!(
        logs.contains("shop/edge") && logs.contains("shop/other"),
        "{logs}"
    );
    drop(ambiguous);

    let dp = Dataplane::start(&[
        "--config",
        path,
        "--gateway",
        "shop/edge",
        "--listen",
        "127.0.0.1:0=80",
    ]);
    ready(&dp).await;
    let r = c
        .get(dp.sockets[0].0, "shop.example", "/api/x")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_with_apiroutes_and_a_gateway_is_refused() {
    let backend = Backend::start("web").await;
    let apiroute = r#"---
apiVersion: parapet.dev/v1alpha1
kind: UpstreamPool
metadata: {name: web, namespace: shop}
spec: {static: [{address: 127.0.0.1, port: 9}]}
---
apiVersion: parapet.dev/v1alpha1
kind: ApiRoute
metadata: {name: api, namespace: shop}
spec: {hosts: [api.example], rules: [{backends: [{pool: web}]}]}
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, gateway_yaml(backend.port(), apiroute)).unwrap();
    let dp = Dataplane::start(&[
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0=80",
    ]);
    let logs = {
        let dp = &dp;
        wait_for("the refusal to be logged", WAIT, || {
            let logs = dp.logs().join("\n");
            async move {
                logs.contains("the file has ApiRoutes and a Gateway")
                    .then_some(logs)
            }
        })
        .await
    };
    assert!(logs.contains("run a data plane for each"), "{logs}");
    let c = Client::new();
    assert!(
        !admin::ready(&c, dp.admin).await,
        "nothing is served from a refused file"
    );
}

/// Who may call, for Gateway API rules: an `ExtensionRef` filter naming an AuthPolicy runs
/// its checks (here a JWT provider with its keys in a Secret, and address rules); a policy
/// that does not exist makes the rule answer 500, never serve unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_policy_guards_the_rules_that_name_it() {
    use parapet_tests::idp::{SigningKey, jwks, now};
    let backend = Backend::start("web").await;
    let key = SigningKey::es256("k1");
    let extra = format!(
        r#"---
apiVersion: v1
kind: Secret
metadata: {{name: idp-keys, namespace: shop}}
stringData: {{jwks.json: '{}'}}
---
apiVersion: parapet.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: staff, namespace: shop}}
spec:
  jwt: {{providers: [{{name: corp, issuer: 'https://login.shop.example', localJwks: {{secretRef: {{name: idp-keys}}}}, claimToHeaders: [{{claim: sub, header: x-user}}]}}]}}
  ipRules: {{deny: [192.0.2.0/24]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: admin, namespace: shop}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [admin.example]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /staff}}}}]
    filters: [{{type: ExtensionRef, extensionRef: {{group: parapet.dev, kind: AuthPolicy, name: staff}}}}]
    backendRefs: [{{name: web, port: 8080}}]
  - matches: [{{path: {{type: PathPrefix, value: /typo}}}}]
    filters: [{{type: ExtensionRef, extensionRef: {{group: parapet.dev, kind: AuthPolicy, name: stafff}}}}]
    backendRefs: [{{name: web, port: 8080}}]
  - matches: [{{path: {{type: PathPrefix, value: /both}}}}]
    filters:
    - {{type: ExtensionRef, extensionRef: {{group: parapet.dev, kind: AuthPolicy, name: staff}}}}
    - {{type: ExtensionRef, extensionRef: {{group: parapet.dev, kind: AuthPolicy, name: lenient}}}}
    backendRefs: [{{name: web, port: 8080}}]
---
apiVersion: parapet.dev/v1alpha1
kind: AuthPolicy
metadata: {{name: lenient, namespace: shop}}
spec:
  ipRules: {{deny: [192.0.2.0/24]}}
"#,
        jwks(&[&key])
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, gateway_yaml(backend.port(), &extra)).unwrap();
    let dp = Dataplane::start(&[
        "--config",
        path.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0=80",
    ]);
    ready(&dp).await;
    let c = Client::new();
    let to = dp.sockets[0].0;

    let r = c.get(to, "admin.example", "/staff/list").await.unwrap();
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
    assert!(r.headers.contains_key("www-authenticate"));
    assert_eq!(backend.hits(), 0);
    let token = key.sign(
        &serde_json::json!({"iss": "https://login.shop.example", "sub": "ann", "exp": now() + 60}),
    );
    let r = c
        .send(
            to,
            http::Method::GET,
            "admin.example",
            "/staff/list",
            &[("authorization", &format!("Bearer {token}"))],
            bytes::Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(backend.last_headers().unwrap()["x-user"], "ann");
    assert!(
        !backend
            .last_headers()
            .unwrap()
            .contains_key("authorization")
    );

    let r = c.get(to, "admin.example", "/typo/list").await.unwrap();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    // Two policies on one rule: neither is silently dropped; the rule answers 500.
    let r = c.get(to, "admin.example", "/both/list").await.unwrap();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let logs = dp.logs().join("\n");
    assert!(
        logs.contains("AuthPolicy shop/stafff does not exist"),
        "{logs}"
    );
}
