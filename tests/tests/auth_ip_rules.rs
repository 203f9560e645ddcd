//! Address rules (`ipRules`) through the real proxy: allowed and denied ranges on a rule
//! and on a whole route, and the client behind a trusted proxy judged by the address the
//! proxy names, never by the proxy's own.

use bytes::Bytes;
use http::{Method, StatusCode};
use parapet_tests::{
    admin, backend::Backend, client::Client, dataplane::Dataplane, pool_yaml, route_yaml,
    standalone,
};

fn config(port: u16) -> String {
    let rules = "    - name: denied
      matches: [{path: {type: PathPrefix, value: /denied}}]
      backends: [{pool: p}]
      auth: {ipRules: {deny: [127.0.0.1]}}
    - name: elsewhere
      matches: [{path: {type: PathPrefix, value: /elsewhere}}]
      backends: [{pool: p}]
      auth: {ipRules: {allow: [10.0.0.0/8, '2001:db8::/32']}}
    - name: local
      matches: [{path: {type: PathPrefix, value: /local}}]
      backends: [{pool: p}]
      auth: {ipRules: {allow: [127.0.0.0/8], deny: [127.0.0.2]}}
    - name: office
      matches: [{path: {type: PathPrefix, value: /office}}]
      backends: [{pool: p}]
      auth: {ipRules: {allow: [203.0.113.0/24]}}
    - name: open
      backends: [{pool: p}]";
    // A whole route closed to this client, one of its rules opened again.
    let closed = "---\napiVersion: parapet.dev/v1alpha1\nkind: ApiRoute\nmetadata: {name: closed}\nspec:\n  hosts: [closed.example]\n  ipRules: {deny: [127.0.0.0/8]}\n  rules:\n    - name: health\n      matches: [{path: {type: Exact, value: /health}}]\n      backends: [{pool: p}]\n      auth: {ipRules: {allow: [127.0.0.1]}}\n    - name: rest\n      backends: [{pool: p}]\n";
    format!(
        "{}{}{closed}",
        pool_yaml("p", &[port], ""),
        route_yaml("r", "[api.example]", rules)
    )
}

async fn get(
    c: &Client,
    dp: &Dataplane,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> parapet_tests::client::Reply {
    c.send(dp.proxy, Method::GET, host, path, headers, Bytes::new())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_routes_allow_and_deny_the_peer() {
    let b = Backend::start("b").await;
    let (dp, _d) = standalone(&config(b.port()), &[]).await;
    let c = Client::new();

    let r = get(&c, &dp, "api.example", "/denied", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert!(r.text().contains("client address"), "{}", r.text());
    assert_eq!(
        get(&c, &dp, "api.example", "/elsewhere", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(b.hits(), 0, "refused requests never reach the backend");
    assert_eq!(
        get(&c, &dp, "api.example", "/local", &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&c, &dp, "api.example", "/open", &[]).await.status,
        StatusCode::OK
    );
    // The route's own rule closes every rule of it, unless a rule has rules of its own.
    assert_eq!(
        get(&c, &dp, "closed.example", "/anything", &[])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(&c, &dp, "closed.example", "/health", &[]).await.status,
        StatusCode::OK
    );
    // Without a trusted proxy, X-Forwarded-For is the client's own word: not believed.
    assert_eq!(
        get(
            &c,
            &dp,
            "api.example",
            "/office",
            &[("x-forwarded-for", "203.0.113.9")]
        )
        .await
        .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        admin::metric_sum(
            &c,
            dp.admin,
            "parapet_rejected_requests_total",
            &["reason=\"ip_denied\""]
        )
        .await,
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_client_is_judged() {
    let b = Backend::start("b").await;
    // 127.0.0.1 is the load balancer; it appends the address it saw.
    let (dp, _d) = standalone(
        &config(b.port()),
        &["--trusted-proxies", "127.0.0.1/32", "--trusted-hops", "1"],
    )
    .await;
    let c = Client::new();
    let office = |xff: &'static str| {
        let (c, dp) = (&c, &dp);
        async move {
            get(c, dp, "api.example", "/office", &[("x-forwarded-for", xff)])
                .await
                .status
        }
    };
    assert_eq!(office("203.0.113.9").await, StatusCode::OK);
    assert_eq!(office("198.51.100.4").await, StatusCode::FORBIDDEN);
    // A client that writes the office's address itself is still judged by what the
    // proxy appended after it.
    assert_eq!(
        office("203.0.113.9, 198.51.100.4").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(office("not-an-address").await, StatusCode::FORBIDDEN);
    // No header: the proxy did not say who called. The proxy's own address (127.0.0.1,
    // which /local allows) must not stand in for the client.
    let r = get(&c, &dp, "api.example", "/local", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.text().contains("X-Forwarded-For"), "{}", r.text());
    assert_eq!(
        get(
            &c,
            &dp,
            "api.example",
            "/local",
            &[("x-forwarded-for", "127.0.0.9")]
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        admin::metric_sum(
            &c,
            dp.admin,
            "parapet_rejected_requests_total",
            &["reason=\"ip_unknown\""]
        )
        .await,
        2.0
    );
    assert_eq!(b.hits(), 2);
}
