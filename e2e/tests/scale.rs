//! The control plane at fleet scale, against a real kube-apiserver: 10,000 ApiRoutes and
//! 50,000 endpoints (500 pools of 100) pushed to 20 pods. The pods are stand-ins that take
//! pushes as a data plane does (`parapet_e2e::receiver`): twenty data planes holding this
//! table would not fit this machine beside the API server. Each edit is timed from the API
//! server's answer until every pod holds a table with it, and the bytes pushed are counted.
//!
//! The endpoints are addresses of 198.18.0.0/15 (RFC 2544's benchmarking range): they are
//! table content only. Nothing here proxies or health-checks, so nothing dials them.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use kube::Client;
use parapet_crds::snapshot::{Snapshot, wire::Coding};
use parapet_e2e::{
    TestNamespace, apply_crds, client,
    fleet::{self, Operator, Slice},
    ms, percentile,
    receiver::Receiver,
};
use parapet_tests::client::Client as Http;
use serde_json::{Value, json};
use tokio::{sync::Semaphore, task::JoinSet};

const TOKEN: &str = "e2e-snapshot-token-0123456789";
const ROUTES: usize = 10_000;
const POOLS: usize = 500;
const ENDPOINTS_PER_POOL: usize = 100;
const PODS: usize = 20;
const ROUTE_EDITS: usize = 20;
const ENDPOINT_EDITS: usize = 10;
/// Requests to the API server in flight while the objects are created.
const CREATE_CONCURRENCY: usize = 32;

fn pool_name(p: usize) -> String {
    format!("pool-{p:04}")
}

/// Endpoint `i` of pool `p`: 198.18.0.0/15 has room for all 50,000.
fn endpoint(p: usize, i: usize) -> String {
    let n = p * ENDPOINTS_PER_POOL + i;
    format!("198.{}.{}.{}", 18 + n / 65536, (n / 256) % 256, n % 256)
}

async fn apply(client: &Client, ns: &str, kind: &str, name: &str, spec: Value) -> Result<i64> {
    let o = fleet::apply_parapet(client, ns, kind, name, spec).await?;
    Ok(o.metadata.generation.unwrap_or_default())
}

/// Runs `make(i)` for every `i` of `0..n`, at most [`CREATE_CONCURRENCY`] at a time.
async fn all<F, Fut>(n: usize, make: F) -> Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(CREATE_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let fut = make(i);
        tasks.spawn(async move {
            let _permit = permit;
            fut.await
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// Waits until every pod holds a table for which `has` holds; returns when the last did.
async fn all_hold(
    pods: &[Receiver],
    deadline: Duration,
    what: &str,
    has: impl Fn(&Snapshot) -> bool,
) -> Result<Instant> {
    for (k, pod) in pods.iter().enumerate() {
        let mut rx = pod.watch();
        tokio::time::timeout(
            deadline,
            rx.wait_for(|t| t.as_ref().is_some_and(|t| has(t))),
        )
        .await
        .with_context(|| format!("pod {k} to hold {what} within {deadline:?}"))??;
    }
    Ok(Instant::now())
}

/// A counter or gauge of the operator's /metrics (label sets summed).
async fn metric(http: &Http, op: &Operator, name: &str) -> f64 {
    let Ok(r) = http.get(op.metrics, "operator", "/metrics").await else {
        return 0.0;
    };
    r.text()
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_reach_twenty_pods_at_ten_thousand_routes() -> Result<()> {
    fleet::check_local_name().await?;
    let client = client().await?;
    apply_crds(&client).await?;
    let ns = TestNamespace::new(&client, "scale").await?;
    let ns = ns.name().to_string();
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN)?;
    let http = Http::new();

    // The pods, listed in the admin Service as data planes are.
    let mut pods = Vec::new();
    fleet::service(&client, &ns, "dp-admin", "admin", 9901).await?;
    for k in 0..PODS {
        let pod = Receiver::start(TOKEN).await?;
        fleet::slice(
            &client,
            &ns,
            Slice {
                service: "dp-admin",
                name: &format!("dp-{k:02}"),
                port_name: "admin",
                port: pod.addr.port(),
                ready: true,
                zone: None,
                for_zones: &[],
            },
        )
        .await?;
        pods.push(pod);
    }

    let created = Instant::now();
    all(POOLS, |p| {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            let name = pool_name(p);
            fleet::headless_service(&client, &ns, &name, "http", 80).await?;
            let addresses: Vec<String> = (0..ENDPOINTS_PER_POOL).map(|i| endpoint(p, i)).collect();
            fleet::ip_slice(&client, &ns, &name, &name, ("http", 8080), &addresses).await?;
            apply(
                &client,
                &ns,
                "UpstreamPool",
                &name,
                json!({"service": {"name": name, "port": 80}}),
            )
            .await?;
            Ok(())
        }
    })
    .await?;
    all(ROUTES - 1, |i| {
        let (client, ns) = (client.clone(), ns.clone());
        async move {
            apply(
                &client,
                &ns,
                "ApiRoute",
                &format!("bulk-{i:05}"),
                json!({"hosts": [format!("r{i:05}.scale.example")], "rules": [{"backends": [{"pool": pool_name(i % POOLS)}]}]}),
            )
            .await?;
            Ok(())
        }
    })
    .await?;
    let edited_spec = |i: usize| {
        json!({"hosts": ["edit.scale.example"], "rules": [{
            "matches": [{"path": {"type": "Exact", "value": format!("/edit/{i:03}")}}],
            "backends": [{"pool": pool_name(0)}],
        }]})
    };
    apply(&client, &ns, "ApiRoute", "edited", edited_spec(0)).await?;
    let create_time = created.elapsed();

    // The operator starts with everything in place, as a new leader does.
    let started = Instant::now();
    let op = Operator::start(&ns, "dp-admin", &token_file.to_string_lossy(), "op-scale")?;
    let endpoints = POOLS * ENDPOINTS_PER_POOL;
    all_hold(&pods, Duration::from_secs(300), "the whole table", |t| {
        t.table.route_count() >= ROUTES
            && t.table
                .clusters
                .iter()
                .map(|c| c.endpoints.len())
                .sum::<usize>()
                >= endpoints
    })
    .await?;
    let first_table = started.elapsed();
    let table = pods[0].held().context("pod 0 holds a table")?;
    let json_bytes = serde_json::to_vec(&*table)?.len();
    let zstd_bytes = Coding::Zstd.encode(&serde_json::to_vec(&*table)?).len();
    eprintln!(
        "SCALE routes={} endpoints={} pods={PODS} create_s={:.1} first_table_on_all_pods_s={:.1} table_json_bytes={json_bytes} table_zstd_bytes={zstd_bytes}",
        table.table.route_count(),
        table
            .table
            .clusters
            .iter()
            .map(|c| c.endpoints.len())
            .sum::<usize>(),
        create_time.as_secs_f64(),
        first_table.as_secs_f64(),
    );

    // Route edits: one route's path changes.
    let bytes_before: u64 = pods.iter().map(|p| p.received().bytes).sum();
    let deltas_before: u64 = pods.iter().map(|p| p.received().deltas).sum();
    let mut samples = Vec::new();
    for i in 1..=ROUTE_EDITS {
        let generation = apply(&client, &ns, "ApiRoute", "edited", edited_spec(i)).await?;
        let accepted = Instant::now();
        let done = all_hold(&pods, Duration::from_secs(30), "the edited route", |t| {
            t.table.sources.iter().any(|s| {
                s.kind == "ApiRoute"
                    && s.namespace == ns
                    && s.name == "edited"
                    && s.generation == generation
            })
        })
        .await?;
        samples.push(done - accepted);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let route_bytes: u64 = pods.iter().map(|p| p.received().bytes).sum::<u64>() - bytes_before;
    let route_deltas: u64 = pods.iter().map(|p| p.received().deltas).sum::<u64>() - deltas_before;
    samples.sort();
    let (route_p50, route_p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    let route_per_edit = route_bytes / ROUTE_EDITS as u64;
    eprintln!(
        "SCALE route_edits={ROUTE_EDITS} p50_ms={:.0} p99_ms={:.0} max_ms={:.0} bytes_per_edit_all_pods={route_per_edit} delta_pushes={route_deltas} full_table_to_all_pods_bytes={}",
        ms(route_p50),
        ms(route_p99),
        ms(samples[samples.len() - 1]),
        zstd_bytes * PODS,
    );

    // Endpoint edits: one pod of one pool is replaced by another.
    let bytes_before: u64 = pods.iter().map(|p| p.received().bytes).sum();
    let mut samples = Vec::new();
    let (pool, cluster) = (pool_name(7), format!("{ns}/{}", pool_name(7)));
    for i in 1..=ENDPOINT_EDITS {
        let mut addresses: Vec<String> = (0..ENDPOINTS_PER_POOL).map(|k| endpoint(7, k)).collect();
        let fresh = format!("198.19.200.{i}");
        addresses[0] = fresh.clone();
        fleet::ip_slice(&client, &ns, &pool, &pool, ("http", 8080), &addresses).await?;
        let accepted = Instant::now();
        let done = all_hold(&pods, Duration::from_secs(30), "the new endpoint", |t| {
            t.table
                .clusters
                .iter()
                .any(|c| c.name == cluster && c.endpoints.iter().any(|e| e.address == fresh))
        })
        .await?;
        samples.push(done - accepted);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let endpoint_bytes: u64 = pods.iter().map(|p| p.received().bytes).sum::<u64>() - bytes_before;
    samples.sort();
    let (ep_p50, ep_p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    let endpoint_per_edit = endpoint_bytes / ENDPOINT_EDITS as u64;
    eprintln!(
        "SCALE endpoint_edits={ENDPOINT_EDITS} p50_ms={:.0} p99_ms={:.0} max_ms={:.0} bytes_per_edit_all_pods={endpoint_per_edit}",
        ms(ep_p50),
        ms(ep_p99),
        ms(samples[samples.len() - 1]),
    );
    eprintln!(
        "SCALE operator push_bytes_total={} push_bodies_total={} compile_seconds_sum={:.2} compiles={}",
        metric(&http, &op, "parapet_operator_push_bytes_total").await,
        metric(&http, &op, "parapet_operator_push_bodies_total").await,
        metric(&http, &op, "parapet_operator_compile_duration_seconds_sum").await,
        metric(
            &http,
            &op,
            "parapet_operator_compile_duration_seconds_count"
        )
        .await,
    );

    // Every edit reached every pod (within `all_hold`'s 30 s). The times are figures to
    // report, not to assert on a shared machine, unless a bound is asked for.
    if let Some(bound) = std::env::var("PARAPET_SCALE_P99_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
    {
        for (what, p99) in [("route", route_p99), ("endpoint", ep_p99)] {
            ensure!(
                p99 < bound,
                "{what} edits reached all {PODS} pods in p99 {p99:?}, over the {bound:?} asked for"
            );
        }
    }
    // Every edit travelled as a delta: each pod got under a twentieth of the whole table.
    for (what, per_edit) in [("route", route_per_edit), ("endpoint", endpoint_per_edit)] {
        ensure!(
            per_edit / PODS as u64 * 20 < zstd_bytes as u64,
            "a {what} edit sent {per_edit} bytes to {PODS} pods; the whole table is {zstd_bytes} bytes compressed"
        );
    }
    ensure!(
        route_deltas >= (ROUTE_EDITS * PODS) as u64,
        "only {route_deltas} deltas for {ROUTE_EDITS} edits to {PODS} pods"
    );
    Ok(())
}
