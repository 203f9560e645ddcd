//! Health checks, ejection and panic mode through the real data plane: a backend killed
//! under load costs no client request, and a pool whose every endpoint fails its checks
//! still serves.

use std::time::{Duration, Instant};

use parapet_tests::{
    admin,
    backend::{Backend, Behaviour},
    client::Client,
    load::{self, Target},
    pool_yaml, route_yaml, standalone, wait_for,
};

const CHECKS: &str =
    "  healthCheck: {interval: 200ms, timeout: 500ms, unhealthyThreshold: 2, healthyThreshold: 1}";

async fn healthy_gauge(c: &Client, dp_admin: std::net::SocketAddr, port: u16) -> Option<f64> {
    let text = c.get(dp_admin, "admin", "/metrics").await.ok()?.text();
    let want = format!("endpoint=\"127.0.0.1:{port}\"");
    text.lines()
        .find(|l| l.starts_with("parapet_endpoint_healthy{") && l.contains(&want))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_backend_under_load_fails_no_request() {
    let bs = [
        Backend::start("k1").await,
        Backend::start("k2").await,
        Backend::start("k3").await,
    ];
    let ports: [u16; 3] = [bs[0].port(), bs[1].port(), bs[2].port()];
    let yaml = format!(
        "{}{}",
        pool_yaml(
            "p",
            &ports,
            &format!(
                "{CHECKS}\n  outlierDetection: {{consecutiveGatewayErrors: 2, baseEjectionTime: 30s}}"
            )
        ),
        route_yaml(
            "r",
            "['*']",
            "    - backends: [{pool: p}]\n      retries: {attempts: 3, retryOn: [ConnectFailure, Reset, GatewayError], backoffBase: 5ms}"
        )
    );
    let (dp, _dir) = standalone(&yaml, &[]).await;
    let c = Client::new();
    let dead = ports[1];
    wait_for(
        "two health checks of every endpoint",
        Duration::from_secs(5),
        || {
            let n = bs.iter().map(Backend::health_hits).min().unwrap_or(0);
            async move { (n >= 2).then_some(()) }
        },
    )
    .await;
    for p in ports {
        assert_eq!(healthy_gauge(&c, dp.admin, p).await, Some(1.0));
    }

    // Sustained load; one backend is killed after about 1000 requests.
    let target = Target::get(dp.proxy, "x", "/");
    let started = Instant::now();
    let load = {
        let c = c.clone();
        let target = target.clone();
        tokio::spawn(async move { load::run(&c, &target, 8, 6000, Duration::from_secs(40)).await })
    };
    wait_for("1000 requests", Duration::from_secs(20), || {
        let n: usize = bs.iter().map(Backend::hits).sum();
        async move { (n >= 1000).then_some(()) }
    })
    .await;
    bs[1].stop();
    let killed = Instant::now();
    let marked = wait_for(
        "the dead endpoint to be marked unhealthy",
        Duration::from_secs(5),
        || {
            let c = c.clone();
            async move {
                (healthy_gauge(&c, dp.admin, dead).await == Some(0.0)).then(|| killed.elapsed())
            }
        },
    )
    .await;
    let samples = load.await.unwrap();
    let after_kill = samples
        .iter()
        .filter(|s| s.at >= killed.duration_since(started))
        .count();
    let failed: Vec<_> = samples.iter().filter(|s| !s.ok()).collect();
    eprintln!(
        "kill test: {} requests ({} sent after the kill), {} failed, dead endpoint unhealthy after {:?}, answered by {:?}",
        samples.len(),
        after_kill,
        failed.len(),
        marked,
        load::by_backend(&samples)
    );
    assert_eq!(samples.len(), 6000);
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        &failed[..failed.len().min(5)]
    );
    // Health-check window: interval × unhealthyThreshold with jitter, plus a timeout.
    assert!(
        marked < Duration::from_millis(1500),
        "unhealthy only after {marked:?}"
    );

    // From now on the dead endpoint gets no traffic: not even connection attempts.
    let refused = |c: Client| async move {
        admin::metric_sum(&c, dp.admin, "parapet_upstream_connect_errors_total", &[]).await
    };
    let before = refused(c.clone()).await;
    let more = load::run(&c, &target, 4, 500, Duration::from_secs(20)).await;
    assert!(more.iter().all(|s| s.ok()));
    assert_eq!(
        refused(c.clone()).await,
        before,
        "connections were still tried on the dead endpoint"
    );
    let retries = admin::metric_sum(&c, dp.admin, "parapet_retries_total", &[]).await;
    eprintln!("kill test: {retries} retries, {before} connect errors in all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_unhealthy_means_panic_mode_not_503() {
    let bs = [
        Backend::start("u1").await,
        Backend::start("u2").await,
        Backend::start("u3").await,
    ];
    for b in &bs {
        b.set(Behaviour {
            health_status: Some(500),
            ..Default::default()
        });
    }
    // One endpoint passes its checks at first: traffic goes only there.
    bs[0].set(Behaviour::default());
    let ports: [u16; 3] = [bs[0].port(), bs[1].port(), bs[2].port()];
    let yaml = format!(
        "{}{}",
        pool_yaml("p", &ports, CHECKS),
        route_yaml("r", "['*']", "    - backends: [{pool: p}]")
    );
    let (dp, _dir) = standalone(&yaml, &[]).await;
    let c = Client::new();
    let gauges = |c: Client| async move {
        let mut v = Vec::new();
        for p in ports {
            v.push(healthy_gauge(&c, dp.admin, p).await);
        }
        v
    };
    wait_for("two endpoints unhealthy", Duration::from_secs(5), || {
        let c = c.clone();
        async move { (gauges(c).await == [Some(1.0), Some(0.0), Some(0.0)]).then_some(()) }
    })
    .await;
    let target = Target::get(dp.proxy, "x", "/");
    let samples = load::run(&c, &target, 4, 200, Duration::from_secs(20)).await;
    assert!(samples.iter().all(|s| s.ok()));
    assert_eq!(
        load::by_backend(&samples).get("u1"),
        Some(&200),
        "{:?}",
        load::by_backend(&samples)
    );

    // Now every endpoint fails its checks: the gateway fails open.
    bs[0].set(Behaviour {
        health_status: Some(503),
        ..Default::default()
    });
    wait_for("every endpoint unhealthy", Duration::from_secs(5), || {
        let c = c.clone();
        async move { (gauges(c).await == [Some(0.0), Some(0.0), Some(0.0)]).then_some(()) }
    })
    .await;
    let samples = load::run(&c, &target, 4, 300, Duration::from_secs(20)).await;
    let ok = samples.iter().filter(|s| s.ok()).count();
    let spread = load::by_backend(&samples);
    let panics = admin::metric_sum(&c, dp.admin, "parapet_panic_requests_total", &[]).await;
    eprintln!("panic mode: {ok}/300 served, spread {spread:?}, {panics} panic picks");
    assert_eq!(ok, 300, "panic mode serves instead of 503");
    assert_eq!(
        spread.len(),
        3,
        "panic mode spreads over every endpoint: {spread:?}"
    );
    assert!(panics >= 300.0);
}
