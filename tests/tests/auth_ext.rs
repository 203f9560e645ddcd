//! External authorization (`auth.extAuth`) through the real proxy, against an authorization
//! service the test runs: allowed requests go on with the headers it adds, its refusals go
//! back to the client as they are, a slow, failing or absent service is answered by the
//! failure mode, decisions are cached by key header, and the rate limit is applied before
//! the service is asked.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parapet_tests::{
    admin,
    backend::Backend,
    client::{Client, Reply},
    dataplane::Dataplane,
    pool_yaml, route_yaml, standalone,
};

/// What the authorization service saw of one check.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    uri: String,
    headers: http::HeaderMap,
}

/// The service: its decision follows the request's `authorization` value.
struct Authz {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Authz {
    async fn start() -> Authz {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (calls.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (c, s) = (c.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (c, s) = (c.clone(), s.clone());
                        async move {
                            c.fetch_add(1, Ordering::SeqCst);
                            s.lock().unwrap().push(Seen {
                                method: req.method().to_string(),
                                uri: req.uri().to_string(),
                                headers: req.headers().clone(),
                            });
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let r = Response::builder();
                            let r = match auth.as_str() {
                                "allow" | "allow-2" => r
                                    .status(200)
                                    .header("x-user-id", format!("user-of-{auth}"))
                                    .header("x-not-listed", "leak"),
                                "redirect" => {
                                    r.status(302).header("location", "https://login.example/")
                                }
                                "slow" => {
                                    tokio::time::sleep(Duration::from_secs(3)).await;
                                    r.status(200)
                                }
                                "error" => r.status(500),
                                _ => r.status(403).header("x-reason", "policy"),
                            };
                            r.body(Full::new(Bytes::from_static(b"decided by authz")))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Authz { addr, calls, seen }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("a check")
    }
}

fn config(backend: u16, authz: u16, dead: u16) -> String {
    let ext = |port: u16, extra: &str| {
        format!(
            "{{extAuth: {{url: 'http://127.0.0.1:{port}/check', headersToAuth: [authorization, x-account], headersToUpstream: [x-user-id], timeout: 500ms{extra}}}}}"
        )
    };
    let rules = format!(
        "    - name: closed
      matches: [{{path: {{type: PathPrefix, value: /closed}}}}]
      backends: [{{pool: p}}]
      auth: {}
    - name: open
      matches: [{{path: {{type: PathPrefix, value: /open}}}}]
      backends: [{{pool: p}}]
      auth: {}
    - name: gone-closed
      matches: [{{path: {{type: PathPrefix, value: /gone-closed}}}}]
      backends: [{{pool: p}}]
      auth: {}
    - name: gone-open
      matches: [{{path: {{type: PathPrefix, value: /gone-open}}}}]
      backends: [{{pool: p}}]
      auth: {}
    - name: cached
      matches: [{{path: {{type: PathPrefix, value: /cached}}}}]
      backends: [{{pool: p}}]
      auth: {}
    - name: limited
      matches: [{{path: {{type: PathPrefix, value: /limited}}}}]
      backends: [{{pool: p}}]
      rateLimit: {{requests: 1, period: 60s, key: Route}}
      auth: {}",
        ext(authz, ""),
        ext(authz, ", failureMode: Open"),
        ext(dead, ""),
        ext(dead, ", failureMode: Open"),
        ext(authz, ", cache: {keyHeaders: [authorization], ttl: 1m}"),
        ext(authz, ""),
    );
    format!(
        "{}{}",
        pool_yaml("p", &[backend], ""),
        route_yaml("r", "[api.example]", &rules)
    )
}

struct World {
    backend: Backend,
    authz: Authz,
    dp: Dataplane,
    _dir: tempfile::TempDir,
    c: Client,
}

async fn world() -> World {
    let backend = Backend::start("b").await;
    let authz = Authz::start().await;
    // A port with nothing behind it: bound, then released.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (dp, dir) = standalone(&config(backend.port(), authz.addr.port(), dead), &[]).await;
    World {
        backend,
        authz,
        dp,
        _dir: dir,
        c: Client::new(),
    }
}

impl World {
    async fn get(&self, path: &str, auth: &str, extra: &[(&str, &str)]) -> Reply {
        let mut headers = vec![("authorization", auth)];
        headers.extend_from_slice(extra);
        self.c
            .send(
                self.dp.proxy,
                Method::GET,
                "api.example",
                path,
                &headers,
                Bytes::new(),
            )
            .await
            .unwrap()
    }

    async fn rejected(&self, reason: &str) -> f64 {
        admin::metric_sum(
            &self.c,
            self.dp.admin,
            "parapet_rejected_requests_total",
            &[&format!("reason=\"{reason}\"")],
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_allows_denies_and_sees_only_what_it_is_sent() {
    let w = world().await;

    let r = w
        .get(
            "/closed/accounts?page=2",
            "allow",
            &[
                ("x-account", "acc-1"),
                ("x-secret", "not for authz"),
                ("x-user-id", "forged"),
            ],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The check: the request's method and path after the prefix, the chosen headers and
    // who the client is; nothing else.
    let seen = w.authz.last();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.uri, "/check/closed/accounts?page=2");
    assert_eq!(seen.headers["authorization"], "allow");
    assert_eq!(seen.headers["x-account"], "acc-1");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert!(!seen.headers.contains_key("x-secret"));
    // Upstream: the listed header from the service, replacing the client's; no other.
    let up = w.backend.last_headers().unwrap();
    assert_eq!(up["x-user-id"], "user-of-allow");
    assert_eq!(up.get_all("x-user-id").iter().count(), 1);
    assert!(!up.contains_key("x-not-listed"));
    let hits = w.backend.hits();

    // Refusals go back as the service wrote them.
    let r = w.get("/closed/accounts", "nobody", &[]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.headers["x-reason"], "policy");
    assert_eq!(r.text(), "decided by authz");
    let r = w.get("/closed/accounts", "redirect", &[]).await;
    assert_eq!(r.status, StatusCode::FOUND);
    assert_eq!(r.headers["location"], "https://login.example/");
    assert_eq!(
        w.backend.hits(),
        hits,
        "refused requests never reach the backend"
    );
    assert_eq!(w.rejected("ext_auth_denied").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_failing_or_absent_service_is_answered_by_the_failure_mode() {
    let w = world().await;
    for (what, path, auth) in [
        ("timeout", "/closed/x", "slow"),
        ("5xx", "/closed/x", "error"),
        ("nothing listening", "/gone-closed/x", "allow"),
    ] {
        let r = w.get(path, auth, &[]).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "fail closed on {what}: {}",
            r.text()
        );
        assert_eq!(r.headers["content-type"], "application/problem+json");
        assert!(!r.text().contains("127.0.0.1"), "no internal address leaks");
    }
    assert_eq!(w.backend.hits(), 0);
    assert_eq!(w.rejected("ext_auth_unavailable").await, 3.0);
    for (what, path, auth) in [
        ("timeout", "/open/x", "slow"),
        ("5xx", "/open/x", "error"),
        ("nothing listening", "/gone-open/x", "allow"),
    ] {
        let r = w.get(path, auth, &[]).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "fail open on {what}: {}",
            r.text()
        );
    }
    assert_eq!(w.backend.hits(), 3);
    // Failing open still refuses what the service does refuse.
    assert_eq!(
        w.get("/open/x", "nobody", &[]).await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_cached_by_key_and_the_rate_limit_comes_first() {
    let w = world().await;
    assert_eq!(
        w.get("/cached/a", "allow", &[]).await.status,
        StatusCode::OK
    );
    let calls = w.authz.calls();
    assert_eq!(
        w.get("/cached/a", "allow", &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        w.backend.last_headers().unwrap()["x-user-id"],
        "user-of-allow",
        "a cached decision adds its headers too"
    );
    assert_eq!(
        w.authz.calls(),
        calls,
        "the second answer came from the cache"
    );
    // Another key is another decision; a cached refusal stays a refusal.
    assert_eq!(
        w.get("/cached/a", "allow-2", &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(w.authz.calls(), calls + 1);
    assert_eq!(
        w.get("/cached/a", "nobody", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        w.get("/cached/a", "nobody", &[]).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(w.authz.calls(), calls + 2);

    // One request a minute: the second is refused by the rate limit without asking the
    // service.
    assert_eq!(w.get("/limited", "allow", &[]).await.status, StatusCode::OK);
    let calls = w.authz.calls();
    assert_eq!(
        w.get("/limited", "allow", &[]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(w.authz.calls(), calls);
}
