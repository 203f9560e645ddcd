//! Hedging through the real data plane: against backends with occasional slow answers, a
//! hedged route's tail latency is cut, within the route's budget.

use std::time::Duration;

use parapet_tests::{
    admin,
    backend::{Backend, Behaviour},
    client::Client,
    load::{self, Target},
    pool_yaml, route_yaml, standalone,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_cuts_the_tail() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    // One answer in 20 from `a` takes 400 ms; the rest, and all of `b`'s, are immediate.
    // (With both slow every 20th request, round robin keeps their counters in step, so a
    // hedge often met the other backend's slow turn: the test then measured that chance,
    // not hedging.)
    a.set(Behaviour {
        slow_every: Some((20, Duration::from_millis(400))),
        ..Default::default()
    });
    let ports = [a.port(), b.port()];
    // Hedging after the p95 is for tails thinner than 5%: these two are slow one time in 50.
    let (c1, c2) = (Backend::start("c1").await, Backend::start("c2").await);
    for x in [&c1, &c2] {
        x.set(Behaviour {
            slow_every: Some((50, Duration::from_millis(400))),
            ..Default::default()
        });
    }
    let yaml = format!(
        "{}{}{}{}{}{}",
        pool_yaml("plain-pool", &ports, ""),
        pool_yaml("hedged-pool", &ports, ""),
        pool_yaml("auto-pool", &[c1.port(), c2.port()], ""),
        route_yaml(
            "auto",
            "[auto.example]",
            "    - backends: [{pool: auto-pool}]"
        ),
        route_yaml(
            "plain",
            "[plain.example]",
            "    - backends: [{pool: plain-pool}]"
        ),
        route_yaml(
            "hedged",
            "[hedged.example]",
            "    - backends: [{pool: hedged-pool}]"
        )
    );
    let (dp, _dir) = standalone(
        &yaml,
        &[
            "--hedge",
            "default/hedged/0=50ms",
            "--hedge",
            "default/auto/0",
        ],
    )
    .await;
    let c = Client::new();
    let n = 600;
    let plain = load::run(
        &c,
        &Target::get(dp.proxy, "plain.example", "/"),
        4,
        n,
        Duration::from_secs(60),
    )
    .await;
    let hedged = load::run(
        &c,
        &Target::get(dp.proxy, "hedged.example", "/"),
        4,
        n,
        Duration::from_secs(60),
    )
    .await;
    let (p99_plain, p99_hedged) = (load::quantile(&plain, 0.99), load::quantile(&hedged, 0.99));
    let label = ["route=\"default/hedged/0\""];
    let sent = admin::metric_sum(&c, dp.admin, "parapet_hedges_total", &label).await;
    let won = admin::metric_sum(&c, dp.admin, "parapet_hedges_won_total", &label).await;
    eprintln!(
        "hedging: p99 {p99_plain:?} without, {p99_hedged:?} with (p50 {:?} / {:?}); {sent} hedges sent, {won} won",
        load::quantile(&plain, 0.5),
        load::quantile(&hedged, 0.5)
    );
    assert!(plain.iter().chain(&hedged).all(|s| s.ok()));
    assert!(
        p99_plain >= Duration::from_millis(400),
        "the plain route sees the slow answers"
    );
    assert!(
        p99_hedged < Duration::from_millis(250),
        "hedged p99 {p99_hedged:?}"
    );
    assert!(sent > 0.0 && won > 0.0);
    // Within the default budget: 20% of requests plus 10/s over the window.
    assert!(
        sent <= 0.2 * n as f64 + 100.0,
        "{sent} hedges for {n} requests"
    );

    // Without a set delay, the route hedges after its own observed p95.
    let auto = load::run(
        &c,
        &Target::get(dp.proxy, "auto.example", "/"),
        4,
        n,
        Duration::from_secs(60),
    )
    .await;
    let p99_auto = load::quantile(&auto, 0.99);
    let label = ["route=\"default/auto/0\""];
    let sent = admin::metric_sum(&c, dp.admin, "parapet_hedges_total", &label).await;
    eprintln!("hedging after the observed p95: p99 {p99_auto:?}, {sent} hedges sent");
    assert!(auto.iter().all(|s| s.ok()));
    assert!(
        p99_auto < Duration::from_millis(250),
        "p95-hedged p99 {p99_auto:?}"
    );
    assert!(
        sent <= 0.2 * n as f64 + 100.0,
        "{sent} hedges for {n} requests"
    );

    let unhedged = admin::metric_sum(
        &c,
        dp.admin,
        "parapet_hedges_total",
        &["route=\"default/plain/0\""],
    )
    .await;
    assert_eq!(unhedged, 0.0, "routes that did not opt in are not hedged");
}

/// Sends `n` requests one after another; their latencies (every answer must be 200).
async fn one_by_one(c: &Client, to: std::net::SocketAddr, host: &str, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = std::time::Instant::now();
        let r = c.get(to, host, "/").await.expect("an answer");
        assert_eq!(r.status, http::StatusCode::OK, "{host}: {}", r.text());
        out.push(t.elapsed());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_hedges_by_its_own_field_without_the_flag() {
    const SLOW: Duration = Duration::from_millis(600);
    let (slow, fast) = (Backend::start("slow").await, Backend::start("fast").await);
    slow.set(Behaviour {
        delay: SLOW,
        ..Default::default()
    });
    // Three endpoints that all answer late: every request sends its two hedges.
    let late = [
        Backend::start("late1").await,
        Backend::start("late2").await,
        Backend::start("late3").await,
    ];
    for b in &late {
        b.set(Behaviour {
            delay: Duration::from_millis(300),
            ..Default::default()
        });
    }
    let pair = [slow.port(), fast.port()];
    let yaml = format!(
        "{}{}{}{}{}{}",
        pool_yaml("hedged-pool", &pair, ""),
        pool_yaml("plain-pool", &pair, ""),
        pool_yaml("late-pool", &late.each_ref().map(|b| b.port()), ""),
        route_yaml(
            "hedged",
            "[hedged.example]",
            "    - backends: [{pool: hedged-pool}]\n      hedge: {delay: 50ms}"
        ),
        route_yaml(
            "plain",
            "[plain.example]",
            "    - backends: [{pool: plain-pool}]"
        ),
        route_yaml(
            "twice",
            "[twice.example]",
            "    - backends: [{pool: late-pool}]\n      hedge: {delay: 50ms, maxExtraAttempts: 2}"
        )
    );
    // No --hedge flag: only the rules' own fields hedge.
    let (dp, _dir) = standalone(&yaml, &[]).await;
    let c = Client::new();
    let n = 10;

    let plain = one_by_one(&c, dp.proxy, "plain.example", n).await;
    let hedged = one_by_one(&c, dp.proxy, "hedged.example", n).await;
    let hedges = |route: &'static str| {
        let c = c.clone();
        async move {
            let label = format!("route=\"default/{route}/0\"");
            let sent = admin::metric_sum(&c, dp.admin, "parapet_hedges_total", &[&label]).await;
            let won = admin::metric_sum(&c, dp.admin, "parapet_hedges_won_total", &[&label]).await;
            (sent, won)
        }
    };
    let (plain_sent, _) = hedges("plain").await;
    let (sent, won) = hedges("hedged").await;
    eprintln!(
        "per-rule hedge: slowest {:?} without, {:?} with; {sent} hedges sent, {won} won",
        plain.iter().max().unwrap(),
        hedged.iter().max().unwrap()
    );
    // Round robin sends every other request of each route to the slow endpoint.
    assert!(
        plain.iter().filter(|d| **d >= SLOW).count() >= n / 2 - 1,
        "the plain route waits for the slow endpoint: {plain:?}"
    );
    assert_eq!(plain_sent, 0.0, "a rule without hedge does not hedge");
    assert!(
        hedged.iter().all(|d| *d < SLOW / 2),
        "the hedged route does not wait for it: {hedged:?}"
    );
    assert!(sent >= (n / 2 - 1) as f64 && won >= (n / 2 - 1) as f64);

    // maxExtraAttempts 2: each request reaches all three endpoints (its first attempt and
    // two hedges, 50 ms apart), the first answer wins.
    let twice = one_by_one(&c, dp.proxy, "twice.example", n).await;
    let (sent, _) = hedges("twice").await;
    assert_eq!(sent, 2.0 * n as f64, "two hedges per request: {twice:?}");
    let hits = || late.iter().map(Backend::hits).sum::<usize>();
    parapet_tests::wait_for(
        "every attempt to reach its backend",
        Duration::from_secs(5),
        || {
            let total = hits();
            async move { (total >= 3 * n).then_some(()) }
        },
    )
    .await;
    assert_eq!(hits(), 3 * n, "three attempts per request, no more");
    eprintln!(
        "two hedges per request: {sent} sent for {n} requests, {} backend hits, slowest {:?}",
        hits(),
        twice.iter().max().unwrap()
    );
}
