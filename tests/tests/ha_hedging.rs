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
