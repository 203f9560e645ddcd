//! Rate limits (`rateLimit`): 429 accuracy under a sustained burst, Shape mode waiting
//! instead of refusing, and the fleet share a pushed table carries.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use parapet_tests::{admin, backend::Backend, client::Client, pool_yaml, route_yaml, standalone};

fn rules(limit: &str) -> String {
    format!("    - backends: [{{pool: p}}]\n      rateLimit: {limit}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_mode_admits_the_configured_rate_within_five_percent() {
    let b = Backend::start("b").await;
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[b.port()], ""),
        route_yaml(
            "r",
            "['*']",
            &rules("{requests: 50, period: 1s, burst: 20, key: Route}")
        )
    );
    let (dp, _d) = standalone(&yaml, &[]).await;
    let c = Client::new();
    let start = Instant::now();
    // Four clients for 3 s, ~800 requests a second together: far above 50/s, and steady
    // enough on a loaded machine that no pause outlasts the burst (20 tokens = 400 ms).
    let run = Duration::from_secs(3);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (c, to) = (c.clone(), dp.proxy);
        set.spawn(async move {
            let mut replies = Vec::new();
            while start.elapsed() < run {
                replies.push(c.get(to, "x", "/").await.unwrap());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            replies
        });
    }
    let (mut ok, mut limited) = (0u32, 0u32);
    let mut first_429 = None;
    while let Some(replies) = set.join_next().await {
        for r in replies.unwrap() {
            match r.status {
                StatusCode::OK => {
                    ok += 1;
                    assert!(r.headers.contains_key("ratelimit-limit"));
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    limited += 1;
                    first_429.get_or_insert(r);
                }
                s => panic!("unexpected {s}"),
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let expected = 20.0 + 50.0 * elapsed;
    let err = (f64::from(ok) - expected).abs() / expected;
    println!(
        "admitted {ok}, refused {limited} in {elapsed:.2}s; expected {expected:.0}, error {:.1}%",
        err * 100.0
    );
    assert!(err <= 0.05, "admitted {ok}, expected {expected:.0}");
    let r = first_429.expect("some requests were refused");
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.headers["ratelimit-limit"], "20");
    assert_eq!(r.headers["ratelimit-remaining"], "0");
    assert!(r.headers.contains_key("ratelimit-reset"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shape_mode_delays_instead_of_refusing() {
    let b = Backend::start("b").await;
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[b.port()], ""),
        route_yaml(
            "r",
            "['*']",
            &rules(
                "{requests: 10, period: 1s, burst: 1, key: Route, mode: Shape, queueSize: 5, maxDelay: 2s}"
            )
        )
    );
    let (dp, _d) = standalone(&yaml, &[]).await;
    let c = Client::new();
    let start = Instant::now();
    let replies = futures_join(&c, dp.proxy, 6).await;
    let took = start.elapsed();
    assert!(
        replies.iter().all(|s| *s == StatusCode::OK),
        "within the queue every request is served: {replies:?}"
    );
    // Six requests at 10/s with a burst of one: the last waits ~500 ms.
    assert!(
        took >= Duration::from_millis(450),
        "the queue shaped the requests: {took:?}"
    );
    // Past the queue (5 waiting), requests are refused.
    let replies = futures_join(&c, dp.proxy, 12).await;
    let refused = replies
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(refused >= 5, "{replies:?}");
}

async fn futures_join(c: &Client, to: std::net::SocketAddr, n: usize) -> Vec<StatusCode> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let c = c.clone();
        set.spawn(async move { c.get(to, "x", "/").await.unwrap().status });
    }
    let mut out = Vec::new();
    while let Some(s) = set.join_next().await {
        out.push(s.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_fleet_size_divides_the_limit() {
    let b = Backend::start("b").await;
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &[b.port()], ""),
        route_yaml(
            "r",
            "['*']",
            &rules("{requests: 1, period: 60s, burst: 10, key: Route}")
        )
    );
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken").unwrap();
    let dp = parapet_tests::dataplane::Dataplane::start(&[
        "--snapshot-token-file",
        token.to_str().unwrap(),
    ]);
    let c = Client::new();
    let mut snap = parapet_tests::snapshot(&yaml, 1);
    snap.table.fleet_pods = 4;
    let snap = parapet_crds::snapshot::Snapshot::new(1, snap.table);
    let r = admin::push(&c, dp.admin, Some("t0ken"), &snap).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let mut ok = 0;
    for _ in 0..10 {
        let r = c
            .send(dp.proxy, Method::GET, "x", "/", &[], Bytes::new())
            .await
            .unwrap();
        if r.status == StatusCode::OK {
            ok += 1;
        }
    }
    // A burst of 10 across 4 pods: ceil(10 / 4) = 3 here.
    assert_eq!(ok, 3);
}
