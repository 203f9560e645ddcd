//! Overload through the real data plane: a route whose backend hangs cannot take the
//! gateway's capacity from another route (bulkheads and the slow lane), and a pool's
//! circuit breaker refuses excess requests at once with `retry-after`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use http::StatusCode;
use parapet_tests::{
    admin,
    backend::{Backend, Behaviour},
    client::Client,
    load::{self, Target},
    pool_yaml, route_yaml, standalone,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_route_leaves_other_routes_alone() {
    let (hang, fine) = (Backend::start("hang").await, Backend::start("fine").await);
    hang.set(Behaviour {
        delay: Duration::from_secs(60),
        ..Default::default()
    });
    let yaml = format!(
        "{}{}{}{}",
        pool_yaml("stuck", &[hang.port()], ""),
        pool_yaml("healthy", &[fine.port()], ""),
        route_yaml(
            "slow",
            "[slow.example]",
            "    - backends: [{pool: stuck}]\n      timeout: 1s"
        ),
        route_yaml(
            "fast",
            "[fast.example]",
            "    - backends: [{pool: healthy}]"
        )
    );
    // A small proxy: 40 requests in flight at most, 20 per route, a quarter for slow routes.
    let (dp, _dir) = standalone(
        &yaml,
        &[
            "--max-in-flight",
            "40",
            "--route-max-in-flight",
            "20",
            "--slow-lane-percent",
            "25",
            "--slow-lane-threshold",
            "200ms",
        ],
    )
    .await;
    let c = Client::new();
    let fast = Target::get(dp.proxy, "fast.example", "/");
    let baseline = load::run(&c, &fast, 4, 400, Duration::from_secs(30)).await;
    let base_p99 = load::quantile(&baseline, 0.99);
    assert!(baseline.iter().all(|s| s.ok()));

    // 50 clients hammer the hanging route for 4 s (more than the whole proxy may hold).
    let stop = Arc::new(AtomicBool::new(false));
    let (refused, timed_out) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut hammer = Vec::new();
    for _ in 0..50 {
        let (c, stop, refused, timed_out) =
            (c.clone(), stop.clone(), refused.clone(), timed_out.clone());
        let to = dp.proxy;
        hammer.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.get(to, "slow.example", "/").await.map(|r| r.status) {
                    Ok(StatusCode::SERVICE_UNAVAILABLE) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(StatusCode::GATEWAY_TIMEOUT) => {
                        timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("the hanging route answered {other:?}"),
                }
            }
        }));
    }
    // Let the hanging requests pile up, then measure the fast route while they do.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = Instant::now();
    let during = load::run(&c, &fast, 4, 400, Duration::from_secs(30)).await;
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let slow_lane = admin::metric_sum(
        &c,
        dp.admin,
        "parapet_route_slow_lane",
        &["route=\"default/slow/0\""],
    )
    .await;
    for h in hammer {
        h.await.unwrap();
    }
    let ok = during.iter().filter(|s| s.ok()).count();
    let p99 = load::quantile(&during, 0.99);
    let rejected_bulkhead = admin::metric_sum(
        &c,
        dp.admin,
        "parapet_rejected_requests_total",
        &["reason=\"route_bulkhead\""],
    )
    .await;
    let rejected_lane = admin::metric_sum(
        &c,
        dp.admin,
        "parapet_rejected_requests_total",
        &["reason=\"slow_lane_full\""],
    )
    .await;
    eprintln!(
        "lanes: fast route p99 {base_p99:?} alone, {p99:?} while the other hangs ({ok}/{} ok in {took:?}); hanging route: {} refused ({rejected_bulkhead} by its bulkhead, {rejected_lane} by the slow lane), {} timed out, slow lane = {slow_lane}",
        during.len(),
        refused.load(Ordering::Relaxed),
        timed_out.load(Ordering::Relaxed),
    );
    assert_eq!(ok, during.len(), "the fast route lost requests");
    assert!(
        p99 < base_p99 * 3 + Duration::from_millis(50),
        "fast route p99 {p99:?} against {base_p99:?} alone"
    );
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "the bulkhead refused the excess"
    );
    assert!(rejected_bulkhead + rejected_lane > 0.0);
    assert_eq!(slow_lane, 1.0, "the hanging route moved to the slow lane");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_breaker_refuses_at_once_with_retry_after() {
    let b = Backend::start("b").await;
    b.set(Behaviour {
        delay: Duration::from_millis(500),
        ..Default::default()
    });
    let yaml = format!(
        "{}{}{}",
        pool_yaml(
            "tight",
            &[b.port()],
            "  circuitBreaker: {maxRequests: 2, maxPendingRequests: 0}"
        ),
        pool_yaml(
            "queued",
            &[b.port()],
            "  circuitBreaker: {maxRequests: 2, maxPendingRequests: 10}"
        ),
        route_yaml(
            "r",
            "['*']",
            "    - matches: [{path: {value: /tight}}]\n      backends: [{pool: tight}]\n    - matches: [{path: {value: /queued}}]\n      backends: [{pool: queued}]"
        )
    );
    let (dp, _dir) = standalone(&yaml, &[]).await;
    let c = Client::new();
    let burst = |path: &'static str| {
        let c = c.clone();
        async move {
            let mut tasks = Vec::new();
            for _ in 0..6 {
                let c = c.clone();
                tasks.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let r = c.get(dp.proxy, "x", path).await.unwrap();
                    (r.status, r.headers.get("retry-after").cloned(), t.elapsed())
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }
    };
    let tight = burst("/tight").await;
    let ok = tight.iter().filter(|r| r.0 == StatusCode::OK).count();
    let refused: Vec<_> = tight
        .iter()
        .filter(|r| r.0 == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(ok, 2, "{tight:?}");
    assert_eq!(refused.len(), 4, "{tight:?}");
    for r in &refused {
        assert_eq!(r.1.as_ref().map(|v| v.to_str().unwrap()), Some("1"));
        assert!(r.2 < Duration::from_millis(300), "refused fast: {:?}", r.2);
    }
    let overflows = admin::metric_sum(
        &c,
        dp.admin,
        "parapet_circuit_breaker_overflows_total",
        &["cluster=\"default/tight\"", "reason=\"requests\""],
    )
    .await;
    assert_eq!(overflows, 4.0);

    // With room to wait, the same burst is served in turns.
    let queued = burst("/queued").await;
    assert!(queued.iter().all(|r| r.0 == StatusCode::OK), "{queued:?}");
    let slowest = queued.iter().map(|r| r.2).max().unwrap();
    assert!(
        slowest >= Duration::from_millis(1400),
        "three turns of 500 ms: {slowest:?}"
    );
    eprintln!("breaker: 2 served, 4 refused with retry-after; queued burst served in {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_bulkhead_of_its_own_refuses_the_next_request_and_no_other() {
    const HOLD: Duration = Duration::from_secs(4);
    let (held, quick) = (Backend::start("held").await, Backend::start("quick").await);
    held.set(Behaviour {
        delay: HOLD,
        ..Default::default()
    });
    quick.set(Behaviour {
        delay: Duration::from_millis(300),
        ..Default::default()
    });
    let yaml = format!(
        "{}{}{}{}",
        pool_yaml("held-pool", &[held.port()], ""),
        pool_yaml("quick-pool", &[quick.port()], ""),
        route_yaml(
            "limited",
            "[limited.example]",
            "    - backends: [{pool: held-pool}]\n      lanes: {maxInFlight: 3}"
        ),
        route_yaml(
            "other",
            "[other.example]",
            "    - backends: [{pool: quick-pool}]"
        )
    );
    // The flag is the default for rules that set nothing: 8 here, well above 3.
    let (dp, _dir) = standalone(&yaml, &["--route-max-in-flight", "8"]).await;
    let c = Client::new();
    let to = dp.proxy;

    // Three requests fill the rule's bulkhead and stay in flight for HOLD.
    let filling: Vec<_> = (0..3)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get(to, "limited.example", "/").await.unwrap().status })
        })
        .collect();
    parapet_tests::wait_for(
        "three requests in flight at the held backend",
        Duration::from_secs(5),
        || {
            let hits = held.hits();
            async move { (hits == 3).then_some(()) }
        },
    )
    .await;

    // The fourth is refused at once.
    let t = Instant::now();
    let fourth = c.get(to, "limited.example", "/").await.unwrap();
    assert_eq!(
        fourth.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        fourth.text()
    );
    assert!(fourth.headers.contains_key("retry-after"));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "refused at once: {:?}",
        t.elapsed()
    );
    assert_eq!(
        held.hits(),
        3,
        "the refused request never reached the backend"
    );

    // Meanwhile the other rule takes six at once, twice the limited rule's bulkhead.
    let burst: Vec<_> = (0..6)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get(to, "other.example", "/").await.unwrap().status })
        })
        .collect();
    for b in burst {
        assert_eq!(
            b.await.unwrap(),
            StatusCode::OK,
            "the other rule is unaffected"
        );
    }
    assert!(
        filling.iter().all(|f| !f.is_finished()),
        "the limited rule was full throughout"
    );
    let in_flight = admin::metric_sum(
        &c,
        dp.admin,
        "parapet_route_in_flight",
        &["route=\"default/limited/0\""],
    )
    .await;
    assert_eq!(in_flight, 3.0);
    let refused = admin::metric_sum(
        &c,
        dp.admin,
        "parapet_rejected_requests_total",
        &["reason=\"route_bulkhead\""],
    )
    .await;
    assert_eq!(refused, 1.0, "only the fourth request was refused");

    // The three held ones are served; their slots come back.
    for f in filling {
        assert_eq!(f.await.unwrap(), StatusCode::OK);
    }
    let after = c.get(to, "limited.example", "/").await.unwrap();
    assert_eq!(after.status, StatusCode::OK);
    eprintln!("per-rule bulkhead: 3 in flight, the 4th refused, 6 at once on the other rule");
}
