//! Failover through the real data plane: a pool that goes down hands its traffic to its
//! backup pool and takes it back when it recovers; a pool that prefers the local zone
//! keeps traffic there and spills over in proportion when the zone runs short.

use std::time::Duration;

use parapet_tests::{
    admin,
    backend::{Backend, Behaviour},
    client::Client,
    load::{self, Target},
    pool_yaml, route_yaml, standalone, wait_for,
};

const CHECKS: &str =
    "  healthCheck: {interval: 100ms, timeout: 500ms, unhealthyThreshold: 1, healthyThreshold: 1}";

/// Answered by the named backends only (all of `samples`, all 200).
fn only(samples: &[load::Sample], names: &[&str]) -> bool {
    samples
        .iter()
        .all(|s| s.ok() && s.backend.as_deref().is_some_and(|b| names.contains(&b)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_goes_down_fails_over_to_its_backup_and_back() {
    let (p1, p2, backup) = (
        Backend::start("p1").await,
        Backend::start("p2").await,
        Backend::start("backup").await,
    );
    let (port1, port2) = (p1.port(), p2.port());
    let yaml = format!(
        "{}{}{}",
        pool_yaml(
            "primary",
            &[port1, port2],
            &format!(
                "{CHECKS}\n  failover: {{backupPool: {{name: standby}}, minHealthyPercent: 50}}"
            )
        ),
        pool_yaml("standby", &[backup.port()], CHECKS),
        route_yaml(
            "r",
            "['*']",
            "    - backends: [{pool: primary}]\n      retries: {attempts: 3, retryOn: [ConnectFailure, Reset, GatewayError], backoffBase: 1ms}"
        )
    );
    let (dp, _dir) = standalone(&yaml, &[]).await;
    let c = Client::new();
    let target = Target::get(dp.proxy, "x", "/");
    let active = |c: Client| async move {
        admin::metric_sum(
            &c,
            dp.admin,
            "parapet_failover_active",
            &["cluster=\"default/primary\""],
        )
        .await
    };

    let before = load::run(&c, &target, 4, 200, Duration::from_secs(20)).await;
    assert!(
        only(&before, &["p1", "p2"]),
        "{:?}",
        load::by_backend(&before)
    );

    // One of two down: 50% healthy is not below 50%, the primary keeps its traffic.
    p1.stop();
    wait_for("p1 marked unhealthy", Duration::from_secs(5), || {
        let c = c.clone();
        async move {
            let g = admin::metric_sum(
                &c,
                dp.admin,
                "parapet_endpoint_healthy",
                &[&format!("127.0.0.1:{port1}")],
            )
            .await;
            (g == 0.0).then_some(())
        }
    })
    .await;
    let half = load::run(&c, &target, 4, 200, Duration::from_secs(20)).await;
    assert!(only(&half, &["p2"]), "{:?}", load::by_backend(&half));
    assert_eq!(active(c.clone()).await, 0.0);

    // Both down: the backup takes everything, and no client sees the switch.
    p2.stop();
    let during = load::run(&c, &target, 4, 400, Duration::from_secs(20)).await;
    assert!(
        during.iter().all(|s| s.ok()),
        "{:?}",
        load::by_backend(&during)
    );
    wait_for("failover", Duration::from_secs(5), || {
        let c = c.clone();
        async move { (active(c).await == 1.0).then_some(()) }
    })
    .await;
    let failed_over = load::run(&c, &target, 4, 200, Duration::from_secs(20)).await;
    assert!(
        only(&failed_over, &["backup"]),
        "{:?}",
        load::by_backend(&failed_over)
    );

    // The primary comes back on the same ports: traffic returns.
    let p1 = Backend::start_on("p1", format!("127.0.0.1:{port1}").parse().unwrap()).await;
    let p2 = Backend::start_on("p2", format!("127.0.0.1:{port2}").parse().unwrap()).await;
    // The switch is made by the requests themselves, as they are routed.
    wait_for(
        "the primary to take its traffic back",
        Duration::from_secs(5),
        || {
            let c = c.clone();
            async move {
                let r = c.get(dp.proxy, "x", "/").await.ok()?;
                r.backend()
                    .is_some_and(|b| b.starts_with('p'))
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(active(c.clone()).await, 0.0);
    let after = load::run(&c, &target, 4, 200, Duration::from_secs(20)).await;
    assert!(
        only(&after, &["p1", "p2"]),
        "{:?}",
        load::by_backend(&after)
    );
    eprintln!(
        "failover: before {:?}, one down {:?}, both down {:?} then {:?}, back {:?}",
        load::by_backend(&before),
        load::by_backend(&half),
        load::by_backend(&during),
        load::by_backend(&failed_over),
        load::by_backend(&after)
    );
    drop((p1, p2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_zone_keeps_traffic_and_spills_over_in_proportion() {
    let names = ["a1", "a2", "a3", "b1", "b2", "b3"];
    let mut bs = Vec::new();
    for n in names {
        bs.push(Backend::start(n).await);
    }
    let endpoints: Vec<String> = bs
        .iter()
        .zip(names)
        .map(|(b, n)| {
            let zone = if n.starts_with('a') {
                "zone-a"
            } else {
                "zone-b"
            };
            format!(
                "    - {{address: 127.0.0.1, port: {}, zone: {zone}}}",
                b.port()
            )
        })
        .collect();
    let yaml = format!(
        "---\napiVersion: parapet.dev/v1alpha1\nkind: UpstreamPool\nmetadata: {{name: p}}\nspec:\n  static:\n{}\n{CHECKS}\n  failover: {{preferLocalZone: true}}\n{}",
        endpoints.join("\n"),
        route_yaml("r", "['*']", "    - backends: [{pool: p}]")
    );
    let (dp, _dir) = standalone(&yaml, &["--zone", "zone-a"]).await;
    let c = Client::new();
    let target = Target::get(dp.proxy, "x", "/");
    let unhealthy = |c: Client, n: usize| async move {
        admin::metric_sum(&c, dp.admin, "parapet_endpoint_healthy", &[]).await == (6 - n) as f64
    };
    wait_for("health checks", Duration::from_secs(5), || {
        let c = c.clone();
        async move { unhealthy(c, 0).await.then_some(()) }
    })
    .await;

    // All healthy: everything stays in zone-a.
    let all = load::run(&c, &target, 4, 600, Duration::from_secs(30)).await;
    assert!(
        only(&all, &["a1", "a2", "a3"]),
        "{:?}",
        load::by_backend(&all)
    );

    // Two of three local endpoints fail their checks: zone-a keeps min(1, 1.4 × 1/3) ≈ 47%.
    for b in &bs[1..3] {
        b.set(Behaviour {
            health_status: Some(500),
            ..Default::default()
        });
    }
    wait_for("a2 and a3 unhealthy", Duration::from_secs(5), || {
        let c = c.clone();
        async move { unhealthy(c, 2).await.then_some(()) }
    })
    .await;
    let n = 1500;
    let short = load::run(&c, &target, 4, n, Duration::from_secs(30)).await;
    let spread = load::by_backend(&short);
    let local = spread.get("a1").copied().unwrap_or(0) as f64 / n as f64;
    let remote: Vec<usize> = ["b1", "b2", "b3"]
        .iter()
        .map(|b| spread.get(*b).copied().unwrap_or(0))
        .collect();
    eprintln!(
        "zones: all healthy {:?}; 1 of 3 local healthy: {spread:?}, local share {local:.3} (expected 0.467)",
        load::by_backend(&all)
    );
    assert!(short.iter().all(|s| s.ok()));
    assert_eq!(spread.get("a2"), None);
    assert_eq!(spread.get("a3"), None);
    // Binomial(1500, 0.467): sd ≈ 0.013; ±5 sd.
    assert!((0.40..=0.535).contains(&local), "local share {local}");
    // The spill-over is spread over the other zone's endpoints.
    let (lo, hi) = (remote.iter().min().unwrap(), remote.iter().max().unwrap());
    assert!(*lo as f64 > *hi as f64 * 0.7, "remote spread {remote:?}");
    let picks = admin::metric_sum(
        &c,
        dp.admin,
        "parapet_zone_picks_total",
        &["locality=\"remote\""],
    )
    .await;
    assert!(picks >= remote.iter().sum::<usize>() as f64);

    // The whole local zone down: everything spills over.
    bs[0].set(Behaviour {
        health_status: Some(500),
        ..Default::default()
    });
    wait_for("zone-a unhealthy", Duration::from_secs(5), || {
        let c = c.clone();
        async move { unhealthy(c, 3).await.then_some(()) }
    })
    .await;
    let gone = load::run(&c, &target, 4, 300, Duration::from_secs(30)).await;
    assert!(
        only(&gone, &["b1", "b2", "b3"]),
        "{:?}",
        load::by_backend(&gone)
    );
}
