//! Routing and balancing through the real data-plane binary in standalone mode.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use http::{Method, StatusCode};
use parapet_tests::{
    admin,
    backend::{Backend, Behaviour},
    client::Client,
    dataplane::Dataplane,
    pool_yaml, route_yaml, wait_for,
};

/// Method, host, path, headers, the backend that must answer (`None`: 404).
type Case<'a> = (
    Method,
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    Option<&'a str>,
);

async fn standalone(yaml: &str) -> (Dataplane, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let dp = Dataplane::start(&["--config", path.to_str().unwrap()]);
    let c = Client::new();
    wait_for(
        "the data plane to be ready",
        Duration::from_secs(10),
        || {
            let c = c.clone();
            async move { admin::ready(&c, dp.admin).await.then_some(()) }
        },
    )
    .await;
    (dp, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_precedence() {
    let names = [
        "exact",
        "regex",
        "long-prefix",
        "prefix",
        "get-only",
        "header",
        "query",
        "wild",
        "star",
        "other-host",
    ];
    let mut backends = HashMap::new();
    let mut yaml = String::new();
    for n in names {
        let b = Backend::start(n).await;
        yaml.push_str(&pool_yaml(n, &[b.port()], ""));
        backends.insert(n, b);
    }
    yaml.push_str(&route_yaml(
        "main",
        "[api.example]",
        r#"
    - matches: [{path: {type: PathPrefix, value: /}}]
      backends: [{pool: prefix}]
    - matches: [{path: {type: PathPrefix, value: /accounts/7}}]
      backends: [{pool: long-prefix}]
    - matches: [{path: {type: RegularExpression, value: "/accounts/[0-9]+"}}]
      backends: [{pool: regex}]
    - matches: [{path: {type: Exact, value: /accounts/1}}]
      backends: [{pool: exact}]
    - matches: [{path: {value: /m}, methods: [GET]}]
      backends: [{pool: get-only}]
    - matches: [{path: {value: /h}, headers: [{name: X-Tier, value: gold}]}]
      backends: [{pool: header}]
    - matches: [{path: {value: /q}, queryParams: [{name: v, value: "2"}]}]
      backends: [{pool: query}]
"#,
    ));
    yaml.push_str(&route_yaml(
        "wild",
        "['*.example']",
        "    - backends: [{pool: wild}]",
    ));
    yaml.push_str(&route_yaml(
        "star",
        "['*']",
        "    - backends: [{pool: star}]",
    ));
    yaml.push_str(&route_yaml("other", "[other.example]", "    - matches: [{path: {type: Exact, value: /only}}]\n      backends: [{pool: other-host}]"));
    let (dp, _dir) = standalone(&yaml).await;
    let c = Client::new();

    let cases: &[Case] = &[
        (
            Method::GET,
            "api.example",
            "/accounts/1",
            &[],
            Some("exact"),
        ),
        (
            Method::GET,
            "API.Example:8080",
            "/accounts/1",
            &[],
            Some("exact"),
        ),
        (
            Method::GET,
            "api.example",
            "/accounts/2",
            &[],
            Some("regex"),
        ),
        (
            Method::GET,
            "api.example",
            "/accounts/7",
            &[],
            Some("regex"),
        ),
        (
            Method::GET,
            "api.example",
            "/accounts/7/x",
            &[],
            Some("long-prefix"),
        ),
        (
            Method::GET,
            "api.example",
            "/accounts/77x",
            &[],
            Some("prefix"),
        ),
        (Method::GET, "api.example", "/m", &[], Some("get-only")),
        (Method::POST, "api.example", "/m", &[], Some("prefix")),
        (
            Method::GET,
            "api.example",
            "/h",
            &[("x-tier", "gold")],
            Some("header"),
        ),
        (
            Method::GET,
            "api.example",
            "/h",
            &[("x-tier", "silver")],
            Some("prefix"),
        ),
        (Method::GET, "api.example", "/q?v=2&w=1", &[], Some("query")),
        (Method::GET, "api.example", "/q?v=3", &[], Some("prefix")),
        (Method::GET, "x.example", "/anything", &[], Some("wild")),
        (Method::GET, "a.b.example", "/anything", &[], Some("wild")),
        (Method::GET, "elsewhere.test", "/", &[], Some("star")),
        (
            Method::GET,
            "other.example",
            "/only",
            &[],
            Some("other-host"),
        ),
        // An exact host that matched has no fall-through to wildcards.
        (Method::GET, "other.example", "/not-there", &[], None),
    ];
    for (method, host, path, headers, want) in cases {
        let r = c
            .send(dp.proxy, method.clone(), host, path, headers, Bytes::new())
            .await
            .unwrap();
        match want {
            Some(w) => {
                assert_eq!(r.status, StatusCode::OK, "{method} {host}{path}");
                assert_eq!(r.backend(), Some(*w), "{method} {host}{path}");
            }
            None => {
                assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {host}{path}");
                assert_eq!(r.headers["content-type"], "application/problem+json");
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(body["status"], 404);
                assert!(body["requestId"].is_string());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_is_exact() {
    let (a, b, d) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let yaml = format!(
        "---\napiVersion: parapet.dev/v1alpha1\nkind: UpstreamPool\nmetadata: {{name: p}}\nspec:\n  static:\n    - {{address: 127.0.0.1, port: {}, weight: 5}}\n    - {{address: 127.0.0.1, port: {}, weight: 1}}\n    - {{address: 127.0.0.1, port: {}, weight: 1}}\n{}",
        a.port(),
        b.port(),
        d.port(),
        route_yaml("r", "['*']", "    - backends: [{pool: p}]")
    );
    let (dp, _dir) = standalone(&yaml).await;
    let c = Client::new();
    let mut seen = HashMap::<String, usize>::new();
    for _ in 0..700 {
        let r = c.get(dp.proxy, "x", "/").await.unwrap();
        *seen.entry(r.backend().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(seen.get("a"), Some(&500), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&100), "{seen:?}");
    assert_eq!(seen.get("c"), Some(&100), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_split_follows_backend_weights() {
    let (stable, canary) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let yaml = format!(
        "{}{}{}",
        pool_yaml("stable", &[stable.port()], ""),
        pool_yaml("canary", &[canary.port()], ""),
        route_yaml(
            "r",
            "['*']",
            "    - backends: [{pool: stable, weight: 80}, {pool: canary, weight: 20}]"
        )
    );
    let (dp, _dir) = standalone(&yaml).await;
    let c = Client::new();
    for _ in 0..1000 {
        assert_eq!(
            c.get(dp.proxy, "x", "/").await.unwrap().status,
            StatusCode::OK
        );
    }
    // Binomial(1000, 0.2): mean 200, sd ~12.6; ±6 sd.
    let n = canary.hits();
    assert!((125..=275).contains(&n), "canary got {n} of 1000");
    assert_eq!(stable.hits() + n, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_prefers_the_faster_endpoint() {
    let (fast, slow) = (Backend::start("fast").await, Backend::start("slow").await);
    slow.set(Behaviour {
        delay: Duration::from_millis(150),
        ..Default::default()
    });
    let yaml = format!(
        "{}{}",
        pool_yaml(
            "p",
            &[fast.port(), slow.port()],
            "  loadBalancing: {algorithm: LeastRequest}"
        ),
        route_yaml("r", "['*']", "    - backends: [{pool: p}]")
    );
    let (dp, _dir) = standalone(&yaml).await;
    let c = Client::new();
    // 10 rounds of 20 concurrent requests: bounded in count, each round bounded by the delay.
    for _ in 0..10 {
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let c = c.clone();
            let to = dp.proxy;
            tasks.push(tokio::spawn(async move {
                c.get(to, "x", "/").await.unwrap().status
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), StatusCode::OK);
        }
    }
    let (f, s) = (fast.hits(), slow.hits());
    assert_eq!(f + s, 200);
    assert!(
        f > 3 * s,
        "fast got {f}, slow got {s}: P2C should avoid the slow endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keeps_a_key_on_one_endpoint() {
    let bs = [
        Backend::start("h1").await,
        Backend::start("h2").await,
        Backend::start("h3").await,
    ];
    for algorithm in ["RingHash", "Maglev"] {
        let ports: Vec<u16> = bs.iter().map(|b| b.port()).collect();
        let yaml = format!(
            "{}{}",
            pool_yaml(
                "p",
                &ports,
                &format!("  loadBalancing: {{algorithm: {algorithm}, hashOn: {{header: x-user}}}}")
            ),
            route_yaml("r", "['*']", "    - backends: [{pool: p}]")
        );
        let (dp, _dir) = standalone(&yaml).await;
        let c = Client::new();
        let mut owners = HashMap::new();
        for user in 0..30 {
            let u = format!("user-{user}");
            let mut first = None;
            for _ in 0..5 {
                let r = c
                    .send(
                        dp.proxy,
                        Method::GET,
                        "x",
                        "/",
                        &[("x-user", u.as_str())],
                        Bytes::new(),
                    )
                    .await
                    .unwrap();
                let b = r.backend().unwrap().to_string();
                assert_eq!(first.get_or_insert(b.clone()), &b, "{algorithm}: {u} moved");
            }
            *owners.entry(first.unwrap()).or_insert(0) += 1;
        }
        assert!(
            owners.len() >= 2,
            "{algorithm}: 30 keys all on one endpoint: {owners:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_are_set_and_hop_by_hop_stripped() {
    let b = Backend::start("b").await;
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[b.port()], ""),
        route_yaml(
            "r",
            "[api.example]",
            "    - matches: [{path: {value: /v1}}]\n      backends: [{pool: p}]\n      rewrite: {pathPrefix: /internal}"
        )
    );
    let (dp, _dir) = standalone(&yaml).await;
    let c = Client::new();
    let r = c
        .send(
            dp.proxy,
            Method::GET,
            "api.example",
            "/v1/accounts?x=1",
            &[
                ("connection", "x-drop"),
                ("x-drop", "1"),
                ("x-request-id", "given-id"),
            ],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-request-id"], "given-id");
    assert!(r.headers["via"].to_str().unwrap().contains("parapet"));
    let h = b.last_headers().unwrap();
    assert_eq!(b.last_uri().unwrap(), "/internal/accounts?x=1");
    assert_eq!(h["host"], "api.example");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "api.example");
    assert_eq!(h["forwarded"], "for=127.0.0.1;proto=http;host=api.example");
    assert_eq!(h["x-request-id"], "given-id");
    assert!(
        !h.contains_key("x-drop"),
        "Connection-named header forwarded"
    );
    // Generated when absent.
    let r = c.get(dp.proxy, "api.example", "/v1").await.unwrap();
    assert_eq!(r.headers["x-request-id"].len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_to_an_invalid_path_is_refused_and_counted_on_its_route() {
    let b = Backend::start("b").await;
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[b.port()], ""),
        route_yaml(
            "r",
            "[api.example]",
            "    - matches: [{path: {value: /v1}}]\n      backends: [{pool: p}]\n      rewrite: {pathPrefix: \"/in valid\"}"
        )
    );
    let (dp, _dir) = standalone(&yaml).await;
    let c = Client::new();
    let route = "route=\"default/r/0\"";
    let counted = |code: &'static str| {
        let c = c.clone();
        async move { admin::metric_sum(&c, dp.admin, "parapet_requests_total", &[route, code]).await }
    };
    assert_eq!(counted("code=\"4xx\"").await, 0.0);
    let r = c.get(dp.proxy, "api.example", "/v1/x").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("rewritten path"), "{}", r.text());
    assert_eq!(b.hits(), 0, "the request went upstream");
    // Every answer to a routed request is in its route's metrics, this one too.
    assert_eq!(counted("code=\"4xx\"").await, 1.0);
    let durations = admin::metric_sum(
        &c,
        dp.admin,
        "parapet_request_duration_seconds_count",
        &[route],
    )
    .await;
    assert_eq!(durations, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_reload_keeps_serving_through_a_broken_file() {
    let (one, two) = (Backend::start("one").await, Backend::start("two").await);
    let yaml = |port| {
        format!(
            "{}{}",
            pool_yaml("p", &[port], ""),
            route_yaml("r", "['*']", "    - backends: [{pool: p}]")
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml(one.port())).unwrap();
    let dp = Dataplane::start(&[
        "--config",
        path.to_str().unwrap(),
        "--reload-interval",
        "100ms",
    ]);
    let c = Client::new();
    let to = dp.proxy;
    let serving = |want: &'static str| {
        let c = c.clone();
        async move {
            c.get(to, "x", "/")
                .await
                .ok()
                .filter(|r| r.backend() == Some(want))
                .map(|_| ())
        }
    };
    wait_for("backend one", Duration::from_secs(10), || serving("one")).await;
    std::fs::write(&path, yaml(two.port())).unwrap();
    wait_for("the reload to backend two", Duration::from_secs(10), || {
        serving("two")
    })
    .await;
    std::fs::write(
        &path,
        "apiVersion: parapet.dev/v1alpha1\nkind: ApiRoute\nspec: [not, a, spec\n",
    )
    .unwrap();
    // Give the watcher several polls at the broken file; the old table must keep serving.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = c.get(dp.proxy, "x", "/").await.unwrap();
        assert_eq!(r.backend(), Some("two"));
    }
    std::fs::write(&path, yaml(one.port())).unwrap();
    wait_for("the fixed file to load", Duration::from_secs(10), || {
        serving("one")
    })
    .await;
}
