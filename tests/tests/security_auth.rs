//! API keys (`auth.apiKeys`): from a header or a query parameter, 401 when missing, 403
//! when wrong, the key's identity logged (never the key) and usable as a rate-limit key.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use parapet_tests::{
    admin, backend::Backend, client::Client, dataplane::Dataplane, pool_yaml, route_yaml, wait_for,
};

const SECRET: &str = "---\napiVersion: v1\nkind: Secret\nmetadata: {name: partner-keys}\nstringData:\n  alice: alice-5f1c0d2e\n  bob: bob-8a7b6c5d\n";

fn config(port: u16) -> String {
    format!(
        "{SECRET}{}{}",
        pool_yaml("p", &[port], ""),
        route_yaml(
            "r",
            "['*']",
            "    - name: header
      matches: [{path: {type: PathPrefix, value: /h}}]
      backends: [{pool: p}]
      auth: {apiKeys: {secretRefs: [{name: partner-keys}]}}
      rateLimit: {requests: 2, period: 60s, key: ApiKey}
    - name: query
      matches: [{path: {type: PathPrefix, value: /q}}]
      backends: [{pool: p}]
      auth: {apiKeys: {secretRefs: [{name: partner-keys}], queryParam: key}}
    - name: open
      backends: [{pool: p}]"
        )
    )
}

async fn start(port: u16) -> (Dataplane, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, config(port)).unwrap();
    // The access log goes to stderr here, where the test reads the process's lines.
    let dp = Dataplane::start(&[
        "--config",
        path.to_str().unwrap(),
        "--access-log",
        "--access-log-path",
        "/dev/stderr",
    ]);
    let c = Client::new();
    wait_for("ready", Duration::from_secs(10), || {
        let c = c.clone();
        async move { admin::ready(&c, dp.admin).await.then_some(()) }
    })
    .await;
    (dp, dir)
}

async fn get(
    c: &Client,
    dp: &Dataplane,
    path: &str,
    headers: &[(&str, &str)],
) -> parapet_tests::client::Reply {
    c.send(
        dp.proxy,
        Method::GET,
        "api.example",
        path,
        headers,
        Bytes::new(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_keys_admit_refuse_and_identify() {
    let b = Backend::start("b").await;
    let (dp, _d) = start(b.port()).await;
    let c = Client::new();

    let r = get(&c, &dp, "/h/x", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert!(r.headers.contains_key("www-authenticate"));
    assert_eq!(b.hits(), 0);

    let r = get(&c, &dp, "/h/x", &[("x-api-key", "alice-5f1c0d2X")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert!(
        !r.text().contains("alice-5f1c0d2X"),
        "the key is not echoed"
    );
    assert_eq!(b.hits(), 0);

    let r = get(&c, &dp, "/h/x", &[("x-api-key", "alice-5f1c0d2e")]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The key is the gateway's credential: not passed to the backend.
    assert!(!b.last_headers().unwrap().contains_key("x-api-key"));

    // Rules without auth stay open.
    assert_eq!(get(&c, &dp, "/other", &[]).await.status, StatusCode::OK);

    // The key's identity is a rate-limit key: alice has 2 per minute, bob his own 2.
    assert_eq!(
        get(&c, &dp, "/h/x", &[("x-api-key", "alice-5f1c0d2e")])
            .await
            .status,
        StatusCode::OK
    );
    let r = get(&c, &dp, "/h/x", &[("x-api-key", "alice-5f1c0d2e")]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(
        get(&c, &dp, "/h/x", &[("x-api-key", "bob-8a7b6c5d")])
            .await
            .status,
        StatusCode::OK
    );

    // The access log names the key by id, never by value.
    let logs = wait_for("access log lines", Duration::from_secs(5), || {
        let l = dp.logs();
        async move {
            l.iter()
                .any(|l| l.contains("partner-keys/bob"))
                .then_some(l)
        }
    })
    .await;
    assert!(
        logs.iter()
            .any(|l| l.contains("key_id") && l.contains("partner-keys/alice"))
    );
    for l in &logs {
        assert!(
            !l.contains("alice-5f1c0d2e") && !l.contains("bob-8a7b6c5d"),
            "a key leaked into the log: {l}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_parameter_keys() {
    let b = Backend::start("b").await;
    let (dp, _d) = start(b.port()).await;
    let c = Client::new();
    assert_eq!(
        get(&c, &dp, "/q/x", &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&c, &dp, "/q/x?key=nope", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    // A header is not where this rule reads the key.
    assert_eq!(
        get(&c, &dp, "/q/x", &[("x-api-key", "bob-8a7b6c5d")])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&c, &dp, "/q/x?a=1&key=bob-8a7b6c5d", &[]).await.status,
        StatusCode::OK
    );
}

#[test]
fn the_snapshot_carries_only_salted_hashes() {
    let snap = parapet_tests::snapshot(&config(1), 1);
    let json = serde_json::to_string(&snap).unwrap();
    assert!(!json.contains("alice-5f1c0d2e") && !json.contains("bob-8a7b6c5d"));
    assert!(json.contains("partner-keys/alice"));
}
