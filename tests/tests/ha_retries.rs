//! Retries through the real data plane: a flaky backend is hidden from clients, retries
//! stay within the route's budget, a failing pool never sees a retry storm, non-idempotent
//! requests are not replayed, and deadlines bound the whole exchange.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use parapet_tests::{
    admin,
    backend::{Backend, Behaviour},
    client::Client,
    load::{self, Target},
    pool_yaml, route_yaml, standalone,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_half_the_time_is_hidden_within_the_budget() {
    let (a, b, flaky) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("flaky").await,
    );
    flaky.set(Behaviour {
        fail_every: Some((2, 503)),
        ..Default::default()
    });
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[a.port(), b.port(), flaky.port()], ""),
        route_yaml(
            "r",
            "['*']",
            "    - backends: [{pool: p}]\n      retries: {attempts: 3, retryOn: [GatewayError], backoffBase: 1ms, backoffMax: 10ms, budgetPercent: 20, budgetMinPerSecond: 5}"
        )
    );
    let (dp, _dir) = standalone(&yaml, &[]).await;
    let c = Client::new();
    let started = Instant::now();
    let samples = load::run(
        &c,
        &Target::get(dp.proxy, "x", "/"),
        8,
        3000,
        Duration::from_secs(60),
    )
    .await;
    let took = started.elapsed();
    let ok = samples.iter().filter(|s| s.ok()).count();
    let rate = ok as f64 / samples.len() as f64;
    let retries = admin::metric_sum(&c, dp.admin, "parapet_retries_total", &[]).await;
    let exhausted =
        admin::metric_sum(&c, dp.admin, "parapet_retry_budget_exhausted_total", &[]).await;
    // What the budget allows over the run: 20% of requests plus 5/s over the 10 s window
    // (the whole run fits in a few windows).
    let windows = (took.as_secs_f64() / 10.0).ceil().max(1.0);
    let allowed = 0.2 * samples.len() as f64 + 5.0 * 10.0 * windows;
    eprintln!(
        "flaky backend: {ok}/{} ok ({:.3}%), {retries} retries (budget allows {allowed}), {exhausted} refused by the budget, flaky answered {} times, in {took:?}",
        samples.len(),
        rate * 100.0,
        flaky.hits()
    );
    assert_eq!(samples.len(), 3000);
    assert!(rate >= 0.999, "success rate {rate}");
    assert!(retries > 0.0, "the flaky backend's 503s were retried");
    assert!(
        retries <= allowed,
        "{retries} retries, more than the budget's {allowed}"
    );
    // A third of first tries hit the flaky backend, half of those fail: about 1/6 retried.
    let expected = samples.len() as f64 / 6.0;
    assert!(
        (retries - expected).abs() < expected * 0.5,
        "{retries} retries, expected about {expected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pool_sees_no_retry_storm() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    for x in [&a, &b] {
        x.set(Behaviour {
            status: Some(503),
            ..Default::default()
        });
    }
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[a.port(), b.port()], ""),
        route_yaml(
            "r",
            "['*']",
            "    - backends: [{pool: p}]\n      retries: {attempts: 5, retryOn: [GatewayError], backoffBase: 1ms, backoffMax: 5ms, budgetPercent: 10, budgetMinPerSecond: 2}"
        )
    );
    let (dp, _dir) = standalone(&yaml, &[]).await;
    let c = Client::new();
    let started = Instant::now();
    let samples = load::run(
        &c,
        &Target::get(dp.proxy, "x", "/"),
        8,
        1000,
        Duration::from_secs(60),
    )
    .await;
    let windows = (started.elapsed().as_secs_f64() / 10.0).ceil().max(1.0);
    let sent = (a.hits() + b.hits()) as f64;
    let exhausted =
        admin::metric_sum(&c, dp.admin, "parapet_retry_budget_exhausted_total", &[]).await;
    // Racing withdrawals may each see the last token: at most one extra per worker.
    let allowed = 1000.0 * 1.1 + 2.0 * 10.0 * windows + 8.0;
    eprintln!(
        "failing pool: {} client requests, {sent} reached the backends (5 attempts would be 5000; budget allows {allowed}), {exhausted} retries refused by the budget",
        samples.len()
    );
    assert!(
        samples
            .iter()
            .all(|s| s.status == Some(StatusCode::SERVICE_UNAVAILABLE))
    );
    assert!(
        sent <= allowed,
        "{sent} upstream requests for 1000 client requests"
    );
    assert!(exhausted > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_idempotent_requests_are_replayed_after_sending() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    for x in [&a, &b] {
        x.set(Behaviour {
            fail_every: Some((2, 503)),
            ..Default::default()
        });
    }
    let route = |extra: &str| {
        format!(
            "    - backends: [{{pool: p}}]\n      retries: {{attempts: 3, retryOn: [GatewayError], backoffBase: 1ms{extra}}}"
        )
    };
    let yaml = format!(
        "{}{}{}",
        pool_yaml("p", &[a.port(), b.port()], ""),
        route_yaml("strict", "[strict.example]", &route("")),
        route_yaml(
            "lenient",
            "[lenient.example]",
            &route(", nonIdempotent: true")
        )
    );
    let (dp, _dir) = standalone(&yaml, &[]).await;
    let c = Client::new();
    let post = |host: &'static str| {
        let c = c.clone();
        async move {
            let mut statuses = Vec::new();
            for _ in 0..40 {
                let r = c
                    .send(
                        dp.proxy,
                        Method::POST,
                        host,
                        "/pay",
                        &[],
                        Bytes::from_static(b"{\"amount\":1}"),
                    )
                    .await
                    .unwrap();
                statuses.push(r.status);
            }
            statuses
        }
    };
    let strict = post("strict.example").await;
    let failed = strict.iter().filter(|s| **s != StatusCode::OK).count();
    assert!(
        failed > 0,
        "POSTs that got a 503 were passed on, not replayed"
    );
    assert!(
        strict
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::SERVICE_UNAVAILABLE)
    );
    let denied = admin::metric_sum(
        &c,
        dp.admin,
        "parapet_retries_denied_total",
        &["reason=\"non_idempotent\"", "route=\"default/strict/0\""],
    )
    .await;
    assert_eq!(denied, failed as f64);
    let lenient = post("lenient.example").await;
    assert!(
        lenient.iter().all(|s| *s == StatusCode::OK),
        "nonIdempotent: POSTs are retried with their body"
    );
    assert!(a.body_bytes() + b.body_bytes() >= 80 * 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_bound_the_whole_exchange() {
    let slow = Backend::start("slow").await;
    slow.set(Behaviour {
        delay: Duration::from_secs(5),
        ..Default::default()
    });
    let yaml = format!(
        "{}{}{}",
        pool_yaml("p", &[slow.port()], ""),
        route_yaml(
            "long",
            "[long.example]",
            "    - backends: [{pool: p}]\n      timeout: 10s"
        ),
        route_yaml(
            "retrying",
            "[retrying.example]",
            "    - backends: [{pool: p}]\n      timeout: 600ms\n      retries: {attempts: 10, retryOn: [GatewayError], perTryTimeout: 200ms, backoffBase: 1ms}"
        )
    );
    let (dp, _dir) = standalone(&yaml, &[]).await;
    let c = Client::new();

    // The client's deadline, shorter than the route's.
    let t = Instant::now();
    let r = c
        .send(
            dp.proxy,
            Method::GET,
            "long.example",
            "/",
            &[("x-parapet-timeout-ms", "300")],
            Bytes::new(),
        )
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert!(
        slow.last_headers()
            .is_some_and(|h| !h.contains_key("x-parapet-timeout-ms")),
        "the deadline header is not forwarded"
    );

    // Per-try timeouts and retries, all inside the route's 600 ms.
    let t = Instant::now();
    let r = c.get(dp.proxy, "retrying.example", "/").await.unwrap();
    let took = t.elapsed();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        took >= Duration::from_millis(590) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    let retries = admin::metric_sum(
        &c,
        dp.admin,
        "parapet_retries_total",
        &["reason=\"timeout\""],
    )
    .await;
    assert!(
        (1.0..=3.0).contains(&retries),
        "{retries} retries after per-try timeouts"
    );
    eprintln!(
        "deadlines: client deadline 300 ms and route timeout 600 ms held; {retries} per-try-timeout retries"
    );
}

/// Sends a chunked PUT of `size` bytes over a raw connection; returns the status code.
async fn chunked_put(to: std::net::SocketAddr, size: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(to).await.unwrap();
    let head =
        "PUT /doc HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'z'; 16 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(format!("{n:x}\r\n").as_bytes()).await.unwrap();
        s.write_all(&chunk[..n]).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
        left -= n;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_bodies_are_replayed_and_large_ones_never_are() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    for x in [&a, &b] {
        x.set(Behaviour {
            fail_every: Some((2, 503)),
            ..Default::default()
        });
    }
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[a.port(), b.port()], ""),
        route_yaml(
            "r",
            "['*']",
            "    - backends: [{pool: p}]\n      retries: {attempts: 3, retryOn: [GatewayError], backoffBase: 1ms}"
        )
    );
    let (dp, _dir) = standalone(&yaml, &[]).await;
    let c = Client::new();
    // Small chunked bodies (no Content-Length) are buffered and retried.
    let mut small = Vec::new();
    for _ in 0..20 {
        small.push(chunked_put(dp.proxy, 20 * 1024).await);
    }
    assert!(small.iter().all(|s| *s == 200), "{small:?}");
    let retried = admin::metric_sum(&c, dp.admin, "parapet_retries_total", &[]).await;
    assert!(retried > 0.0);
    // Bodies over 64 KiB stream once: a 503 reaches the client.
    let mut large = Vec::new();
    for _ in 0..20 {
        large.push(chunked_put(dp.proxy, 100 * 1024).await);
    }
    let passed_on = large.iter().filter(|s| **s == 503).count();
    assert!(passed_on > 0, "{large:?}");
    assert!(large.iter().all(|s| *s == 200 || *s == 503), "{large:?}");
    let denied = admin::metric_sum(
        &c,
        dp.admin,
        "parapet_retries_denied_total",
        &["reason=\"body_not_replayable\""],
    )
    .await;
    assert_eq!(denied, passed_on as f64);
    // Every byte of every attempt arrived whole: 20 small bodies plus their retries, and
    // each large body once.
    let got = a.body_bytes() + b.body_bytes();
    let want = (20.0 + retried) as u64 * 20 * 1024 + 20 * 100 * 1024;
    assert_eq!(got, want);
    eprintln!(
        "bodies: 20 small chunked PUTs all 200 with {retried} retries; {passed_on}/20 large ones passed a 503 on"
    );
}
