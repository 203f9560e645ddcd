use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use parapet_crds::snapshot::{ExtAuthCache, ExtAuthCheck};
use tokio::net::TcpListener;

use super::*;

/// What the service saw of one check request.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    uri: String,
    headers: HeaderMap,
}

/// How the service answers one request: after `delay`, with `response`.
struct Reply {
    delay: Duration,
    response: Response<Full<Bytes>>,
}

fn reply(status: u16, headers: &[(&str, &str)], body: &'static str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    for (n, v) in headers {
        r.headers_mut().append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    Reply {
        delay: Duration::ZERO,
        response: r,
    }
}

type Handler = dyn Fn(usize, &Seen) -> Reply + Send + Sync;

/// A loopback authorization service: `answer` gets the call's number (from 0) and what
/// was asked.
struct Service {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Service {
    fn url(&self, prefix: &str) -> String {
        format!("http://{}{prefix}", self.addr)
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().unwrap()
    }
}

async fn service(answer: impl Fn(usize, &Seen) -> Reply + Send + Sync + 'static) -> Service {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve(listener, Arc::new(answer), None)
}

fn serve(
    listener: TcpListener,
    answer: Arc<Handler>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Service {
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (c, s) = (calls.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (c, s, answer, tls) = (c.clone(), s.clone(), answer.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let n = c.fetch_add(1, Ordering::SeqCst);
                    let seen = Seen {
                        method: req.method().clone(),
                        uri: req.uri().to_string(),
                        headers: req.headers().clone(),
                    };
                    s.lock().unwrap().push(seen.clone());
                    let r = answer(n, &seen);
                    async move {
                        tokio::time::sleep(r.delay).await;
                        Ok::<_, std::convert::Infallible>(r.response)
                    }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    Service { addr, calls, seen }
}

fn check_spec(url: String) -> ExtAuthCheck {
    ExtAuthCheck {
        name: "apps/api".into(),
        url,
        ca_pem: None,
        headers_to_auth: vec!["authorization".into(), "cookie".into()],
        headers_to_upstream: vec!["x-user".into()],
        timeout_ms: 2000,
        fail_open: false,
        cache: None,
    }
}

fn cached_spec(url: String, ttl_ms: u64) -> ExtAuthCheck {
    ExtAuthCheck {
        cache: Some(ExtAuthCache {
            key_headers: vec!["authorization".into()],
            ttl_ms,
            max_entries: 100,
        }),
        ..check_spec(url)
    }
}

fn ext(spec: &ExtAuthCheck) -> ExtAuth {
    ExtAuth::new(spec, ExtAuthMetrics::default()).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

fn request<'a>(method: &'a Method, path: &'a str, h: &'a HeaderMap) -> CheckRequest<'a> {
    CheckRequest {
        method,
        path_and_query: path,
        authority: Some("api.example.com"),
        headers: h,
        client_ip: CLIENT,
        tls: true,
    }
}

async fn check(a: &ExtAuth, path: &str, h: &HeaderMap) -> Decision {
    a.check(&request(&Method::GET, path, h)).await
}

fn count(a: &ExtAuth, which: &str) -> u64 {
    let m = &a.inner.metrics;
    match which {
        "allow" => m.allow.get(),
        "deny" => m.deny.get(),
        "error" => m.error.get(),
        "cache_hit" => m.cache_hit.get(),
        _ => unreachable!(),
    }
}

fn allowed(d: Decision) -> (Vec<(HeaderName, HeaderValue)>, bool) {
    match d {
        Decision::Allow {
            set_headers,
            cached,
        } => (set_headers, cached),
        other => panic!("expected Allow, got {other:?}"),
    }
}

fn denied(d: Decision) -> (Response<Bytes>, bool) {
    match d {
        Decision::Deny { response, cached } => (response, cached),
        other => panic!("expected Deny, got {other:?}"),
    }
}

fn failed(d: Decision) -> &'static str {
    match d {
        Decision::Failed { reason } => reason,
        other => panic!("expected Failed, got {other:?}"),
    }
}

#[tokio::test]
async fn allow_copies_only_the_listed_headers_upstream() {
    let svc = service(|_, _| {
        reply(
            200,
            &[("x-user", "alice"), ("x-user", "admin"), ("x-other", "no")],
            "ok",
        )
    })
    .await;
    let a = ext(&check_spec(svc.url("")));
    let (set, cached) = allowed(check(&a, "/", &headers(&[])).await);
    assert!(!cached);
    let x_user = HeaderName::from_static("x-user");
    assert_eq!(
        set,
        vec![
            (x_user.clone(), HeaderValue::from_static("alice")),
            (x_user.clone(), HeaderValue::from_static("admin")),
        ]
    );
    assert_eq!(count(&a, "allow"), 1);

    // Applying it: the client's own x-user is dropped, the service's set; other headers stay.
    let mut upstream = headers(&[("x-user", "mallory"), ("x-other", "client")]);
    a.apply(&set, &mut upstream);
    let users: Vec<_> = upstream.get_all(&x_user).iter().collect();
    assert_eq!(users, ["alice", "admin"]);
    assert_eq!(upstream["x-other"], "client");
    // A failure let through (fail open) still removes what only the service may set.
    let mut upstream = headers(&[("x-user", "mallory")]);
    a.apply(&[], &mut upstream);
    assert!(!upstream.contains_key(&x_user));
}

#[tokio::test]
async fn deny_returns_the_answer_as_it_is() {
    let svc = service(|_, _| {
        reply(
            403,
            &[
                ("x-reason", "no-scope"),
                ("www-authenticate", "Bearer"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("keep-alive", "timeout=5"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "1"),
            ],
            "forbidden here",
        )
    })
    .await;
    let a = ext(&check_spec(svc.url("")));
    let (r, cached) = denied(check(&a, "/", &headers(&[])).await);
    assert!(!cached);
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.body(), "forbidden here");
    assert_eq!(r.headers()["x-reason"], "no-scope");
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
    for gone in ["keep-alive", "connection", "x-hop", "content-length"] {
        assert!(!r.headers().contains_key(gone), "{gone} passed through");
    }
    assert_eq!(count(&a, "deny"), 1);
}

#[tokio::test]
async fn redirect_passes_through() {
    let svc = service(|_, _| {
        reply(
            302,
            &[("location", "https://login.example.com/?rd=%2Fv1")],
            "",
        )
    })
    .await;
    let a = ext(&check_spec(svc.url("/check")));
    let (r, _) = denied(check(&a, "/v1", &headers(&[])).await);
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(
        r.headers()["location"],
        "https://login.example.com/?rd=%2Fv1"
    );
    assert!(r.body().is_empty());
}

#[tokio::test]
async fn the_service_sees_method_target_and_listed_headers_only() {
    let svc = service(|_, _| reply(200, &[], "")).await;
    let a = ext(&check_spec(svc.url("/check/")));
    let h = headers(&[
        ("authorization", "Bearer t"),
        ("cookie", "a=1"),
        ("cookie", "b=2"),
        ("x-secret", "s3cret"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-host", "evil.example"),
        ("content-length", "12"),
        ("transfer-encoding", "chunked"),
        ("connection", "close"),
    ]);
    allowed(a.check(&request(&Method::POST, "/v1/x?a=1", &h)).await);
    let seen = svc.last();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.uri, "/check/v1/x?a=1");
    let s = &seen.headers;
    assert_eq!(s["authorization"], "Bearer t");
    let cookies: Vec<_> = s.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(s["host"], "api.example.com");
    assert_eq!(s["x-forwarded-for"], "203.0.113.7");
    assert_eq!(s.get_all("x-forwarded-for").iter().count(), 1);
    assert_eq!(s["x-forwarded-proto"], "https");
    assert_eq!(s["x-forwarded-host"], "api.example.com");
    assert_eq!(s["content-length"], "0");
    assert!(!s.contains_key("x-secret"));
    assert!(!s.contains_key("transfer-encoding"));

    // GET: no length. No prefix: the client's path as it is.
    let a = ext(&check_spec(svc.url("")));
    let req = CheckRequest {
        authority: None,
        tls: false,
        ..request(&Method::GET, "/v1/x?a=1&b=%20", &h)
    };
    allowed(a.check(&req).await);
    let seen = svc.last();
    assert_eq!(seen.method, Method::GET);
    assert_eq!(seen.uri, "/v1/x?a=1&b=%20");
    assert!(!seen.headers.contains_key("content-length"));
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    // No client authority: the service's own host, and no x-forwarded-host.
    assert_eq!(seen.headers["host"], svc.addr.to_string());
    assert!(!seen.headers.contains_key("x-forwarded-host"));

    // HEAD carries no length either.
    allowed(a.check(&request(&Method::HEAD, "/", &h)).await);
    assert_eq!(svc.last().method, Method::HEAD);
    assert!(!svc.last().headers.contains_key("content-length"));
}

#[tokio::test]
async fn empty_headers_to_auth_sends_authorization_and_cookie() {
    let svc = service(|_, _| reply(200, &[], "")).await;
    let a = ext(&ExtAuthCheck {
        headers_to_auth: vec![],
        ..check_spec(svc.url(""))
    });
    let h = headers(&[
        ("authorization", "Basic x"),
        ("cookie", "c=1"),
        ("x-api-key", "k"),
    ]);
    allowed(check(&a, "/", &h).await);
    let s = svc.last().headers;
    assert_eq!(s["authorization"], "Basic x");
    assert_eq!(s["cookie"], "c=1");
    assert!(!s.contains_key("x-api-key"));
}

#[tokio::test]
async fn a_slow_service_times_out() {
    let svc = service(|_, _| Reply {
        delay: Duration::from_millis(1500),
        ..reply(200, &[], "")
    })
    .await;
    let a = ext(&ExtAuthCheck {
        timeout_ms: 100,
        ..check_spec(svc.url(""))
    });
    let start = Instant::now();
    assert_eq!(failed(check(&a, "/", &headers(&[])).await), TIMEOUT);
    assert!(start.elapsed() < Duration::from_millis(1000));
    assert_eq!(count(&a, "error"), 1);
}

#[tokio::test]
async fn a_refused_connection_fails_to_connect() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let a = ext(&check_spec(format!("http://{addr}")));
    assert_eq!(failed(check(&a, "/", &headers(&[])).await), CONNECT);
}

#[tokio::test]
async fn a_5xx_is_a_failure_and_fail_open_is_reported() {
    let svc = service(|_, _| reply(500, &[], "oops")).await;
    let a = ext(&check_spec(svc.url("")));
    assert!(!a.fail_open());
    assert_eq!(failed(check(&a, "/", &headers(&[])).await), SERVER_ERROR);
    let a = ext(&ExtAuthCheck {
        fail_open: true,
        ..check_spec(svc.url(""))
    });
    assert!(a.fail_open());
    assert_eq!(failed(check(&a, "/", &headers(&[])).await), SERVER_ERROR);
}

#[tokio::test]
async fn a_denial_body_over_the_cap_fails_an_allow_body_does_not() {
    static BIG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| "x".repeat(MAX_BODY + 1));
    let svc = service(|n, _| {
        let status = if n == 0 { 401 } else { 200 };
        let mut r = reply(status, &[("x-user", "u")], "");
        *r.response.body_mut() = Full::new(Bytes::from_static(BIG.as_bytes()));
        r
    })
    .await;
    let a = ext(&check_spec(svc.url("")));
    assert_eq!(failed(check(&a, "/", &headers(&[])).await), BAD_RESPONSE);
    let (set, _) = allowed(check(&a, "/", &headers(&[])).await);
    assert_eq!(set.len(), 1);
}

#[tokio::test]
async fn an_unparsable_answer_is_a_bad_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
        }
    });
    let a = ext(&check_spec(format!("http://{addr}")));
    assert_eq!(failed(check(&a, "/", &headers(&[])).await), BAD_RESPONSE);
}

#[tokio::test]
async fn a_decision_is_kept_for_the_same_key() {
    let svc = service(|_, seen| {
        let user = seen.headers["authorization"].to_str().unwrap().to_string();
        let mut r = reply(200, &[], "");
        r.response
            .headers_mut()
            .insert("x-user", HeaderValue::from_str(&user).unwrap());
        r
    })
    .await;
    let a = ext(&cached_spec(svc.url(""), 60_000));
    let alice = headers(&[("authorization", "alice")]);
    let (set, cached) = allowed(check(&a, "/v1", &alice).await);
    assert!(!cached);
    let (again, cached) = allowed(check(&a, "/v1", &alice).await);
    assert!(cached);
    assert_eq!(set, again);
    assert_eq!(svc.calls(), 1);
    assert_eq!((count(&a, "allow"), count(&a, "cache_hit")), (1, 1));

    // Another key value is another call, with its own answer.
    let bob = headers(&[("authorization", "bob")]);
    let (set, cached) = allowed(check(&a, "/v1", &bob).await);
    assert!(!cached);
    assert_eq!(set[0].1, "bob");
    assert_eq!(svc.calls(), 2);
    // Another path, or another method, is another call.
    allowed(check(&a, "/v2", &alice).await);
    assert_eq!(svc.calls(), 3);
    allowed(a.check(&request(&Method::POST, "/v1", &alice)).await);
    assert_eq!(svc.calls(), 4);
    // Every header the service is sent is in the key too (cookie, by default): a decision
    // made on other credentials is not reused.
    let alice_cookie = headers(&[("authorization", "alice"), ("cookie", "z=1")]);
    assert!(!allowed(check(&a, "/v1", &alice_cookie).await).1);
    assert_eq!(svc.calls(), 5);
    // Headers the service is not sent stay out of it.
    let alice_other = headers(&[("authorization", "alice"), ("x-other", "1")]);
    assert!(allowed(check(&a, "/v1", &alice_other).await).1);
    assert_eq!(svc.calls(), 5);
}

#[tokio::test]
async fn denials_are_kept_too() {
    let svc = service(|_, _| reply(401, &[("www-authenticate", "Bearer")], "who?")).await;
    let a = ext(&cached_spec(svc.url(""), 60_000));
    let h = headers(&[("authorization", "expired")]);
    let (first, cached) = denied(check(&a, "/", &h).await);
    assert!(!cached);
    let (second, cached) = denied(check(&a, "/", &h).await);
    assert!(cached);
    assert_eq!(svc.calls(), 1);
    assert_eq!(second.status(), first.status());
    assert_eq!(second.headers(), first.headers());
    assert_eq!(second.body(), "who?");
}

#[tokio::test]
async fn a_request_without_a_key_header_is_never_kept() {
    let svc = service(|_, _| reply(200, &[], "")).await;
    let a = ext(&cached_spec(svc.url(""), 60_000));
    let h = headers(&[("cookie", "a=1")]);
    for _ in 0..3 {
        assert!(!allowed(check(&a, "/", &h).await).1);
    }
    assert_eq!(svc.calls(), 3);
}

#[tokio::test]
async fn multiple_key_values_are_all_in_the_key() {
    let svc = service(|_, _| reply(200, &[], "")).await;
    let a = ext(&cached_spec(svc.url(""), 60_000));
    allowed(check(&a, "/", &headers(&[("authorization", "a")])).await);
    let two = headers(&[("authorization", "a"), ("authorization", "b")]);
    assert!(!allowed(check(&a, "/", &two).await).1);
    assert_eq!(svc.calls(), 2);
    // Values are not simply concatenated: "a" + "b" is not "ab".
    assert!(!allowed(check(&a, "/", &headers(&[("authorization", "ab")])).await).1);
    assert_eq!(svc.calls(), 3);
}

#[tokio::test]
async fn a_kept_decision_expires_after_its_ttl() {
    let svc = service(|_, _| reply(200, &[], "")).await;
    let a = ext(&cached_spec(svc.url(""), 200));
    let h = headers(&[("authorization", "alice")]);
    allowed(check(&a, "/", &h).await);
    assert!(allowed(check(&a, "/", &h).await).1);
    assert_eq!(svc.calls(), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !allowed(check(&a, "/", &h).await).1 {
            break;
        }
        assert!(Instant::now() < deadline, "the decision never expired");
    }
    assert_eq!(svc.calls(), 2);
}

#[tokio::test]
async fn failures_are_not_kept() {
    let svc = service(|n, _| {
        if n == 0 {
            reply(503, &[], "")
        } else {
            reply(200, &[], "")
        }
    })
    .await;
    let a = ext(&cached_spec(svc.url(""), 60_000));
    let h = headers(&[("authorization", "alice")]);
    assert_eq!(failed(check(&a, "/", &h).await), SERVER_ERROR);
    assert!(!allowed(check(&a, "/", &h).await).1);
    assert!(allowed(check(&a, "/", &h).await).1);
    assert_eq!(svc.calls(), 2);
}

#[tokio::test]
async fn a_large_decision_is_used_but_not_kept() {
    static BIG: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| "x".repeat(MAX_CACHED_BYTES + 1));
    let svc = service(|_, _| {
        let mut r = reply(403, &[], "");
        *r.response.body_mut() = Full::new(Bytes::from_static(BIG.as_bytes()));
        r
    })
    .await;
    let a = ext(&cached_spec(svc.url(""), 60_000));
    let h = headers(&[("authorization", "alice")]);
    for _ in 0..2 {
        let (r, cached) = denied(check(&a, "/", &h).await);
        assert!(!cached);
        assert_eq!(r.body().len(), MAX_CACHED_BYTES + 1);
    }
    assert_eq!(svc.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_call() {
    let svc = service(|_, _| Reply {
        delay: Duration::from_millis(200),
        ..reply(200, &[], "")
    })
    .await;
    let a = ext(&cached_spec(svc.url(""), 60_000));
    let h = headers(&[("authorization", "alice")]);
    let decisions = futures::future::join_all((0..8).map(|_| check(&a, "/", &h))).await;
    let fresh = decisions.into_iter().filter(|d| !allowed_ref(d)).count();
    assert_eq!(svc.calls(), 1);
    assert_eq!(fresh, 1, "exactly one request made the call");
}

/// Whether an Allow came from the cache (or another request's call).
fn allowed_ref(d: &Decision) -> bool {
    match d {
        Decision::Allow { cached, .. } => *cached,
        other => panic!("expected Allow, got {other:?}"),
    }
}

#[tokio::test]
async fn https_with_the_given_ca() {
    let pki = parapet_tests::pki::Pki::new("authz-ca");
    let (cert, key) = pki.leaf(&["127.0.0.1"]);
    let certs = rustls_pemfile::certs(&mut cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut key.as_bytes())
        .unwrap()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let svc = serve(
        listener,
        Arc::new(|_, _: &Seen| reply(200, &[("x-user", "tls")], "")),
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
    );
    let url = format!("https://{}/authz", svc.addr);
    let a = ext(&ExtAuthCheck {
        ca_pem: Some(pki.ca_pem.clone()),
        ..check_spec(url.clone())
    });
    let (set, _) = allowed(check(&a, "/x", &headers(&[])).await);
    assert_eq!(set[0].1, "tls");
    assert_eq!(svc.last().uri, "/authz/x");

    // Another CA: the service is not trusted, so the check fails to connect.
    let other = parapet_tests::pki::Pki::new("other-ca");
    let a = ext(&ExtAuthCheck {
        ca_pem: Some(other.ca_pem.clone()),
        ..check_spec(url)
    });
    assert_eq!(failed(check(&a, "/x", &headers(&[])).await), CONNECT);
}

#[test]
fn unusable_settings_are_refused_with_a_sentence() {
    for url in [
        "authz:8080",
        "ftp://authz/check",
        "http:///check",
        "http://authz/check?x=1",
        "http://user:pw@authz/check",
        "not a url",
    ] {
        let e = ExtAuth::new(&check_spec(url.into()), ExtAuthMetrics::default()).unwrap_err();
        assert!(e.contains("extAuth url"), "{url}: {e}");
    }
    let e = ExtAuth::new(
        &ExtAuthCheck {
            ca_pem: Some(
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into(),
            ),
            ..check_spec("https://authz/check".into())
        },
        ExtAuthMetrics::default(),
    )
    .unwrap_err();
    assert!(e.contains("CA"), "{e}");
    let e = ExtAuth::new(
        &ExtAuthCheck {
            headers_to_auth: vec!["bad header".into()],
            ..check_spec("http://authz".into())
        },
        ExtAuthMetrics::default(),
    )
    .unwrap_err();
    assert!(e.contains("headersToAuth"), "{e}");
}

#[test]
fn new_needs_no_runtime_and_check_is_send() {
    // Built from synchronous code (a table build), outside any runtime.
    let a = ext(&cached_spec(
        "http://authz.security.svc:8080/check".into(),
        1000,
    ));
    assert_eq!(a.inner.prefix, "/check");
    fn send<T: Send>(_: &T) {}
    let h = HeaderMap::new();
    let req = request(&Method::GET, "/", &h);
    let fut = a.check(&req);
    send(&fut);
}

#[test]
fn metrics_are_named_as_documented() {
    let m = ExtAuthMetrics::default();
    let mut r = prometheus_client::registry::Registry::with_prefix("parapet");
    m.register(&mut r);
    m.duration.observe(0.01);
    // The resolved counters are the family's series.
    m.clone().deny.inc();
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
    assert!(
        out.contains("parapet_ext_auth_checks_total{result=\"deny\"} 1"),
        "{out}"
    );
    for result in ["allow", "error", "cache_hit"] {
        assert!(
            out.contains(&format!(
                "parapet_ext_auth_checks_total{{result=\"{result}\"}} 0"
            )),
            "{out}"
        );
    }
    assert!(
        out.contains("parapet_ext_auth_duration_seconds_count 1"),
        "{out}"
    );
}
