//! Compile time and memory at 1 000 and 10 000 routes with 50 000 endpoints:
//! `cargo run --release -p parapet-crds --example compile_bench`.

use std::{collections::BTreeMap, time::Instant};

use parapet_crds::{
    api::{ApiRouteSpec, Object, UpstreamPoolSpec},
    compiler::{Inputs, ServicePortKey, compile, refresh_endpoints},
    snapshot::{Endpoint, Snapshot},
};

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn main() {
    for routes_n in [1_000usize, 10_000] {
        let pools_n = 500;
        let endpoints_total = 50_000;
        let pools: Vec<Object<UpstreamPoolSpec>> = (0..pools_n)
            .map(|i| {
                serde_json::from_value(serde_json::json!({
                    "apiVersion": "parapet.dev/v1alpha1", "kind": "UpstreamPool",
                    "metadata": {"name": format!("pool-{i}"), "namespace": "bench", "generation": 1},
                    "spec": {"service": {"name": format!("svc-{i}"), "port": 80}, "loadBalancing": {"algorithm": "LeastRequest"}}
                }))
                .unwrap()
            })
            .collect();
        // 10 rules per ApiRoute, each with an exact path, a prefix and a regex route spread.
        let routes: Vec<Object<ApiRouteSpec>> = (0..routes_n / 10)
            .map(|i| {
                let rules: Vec<serde_json::Value> = (0..10)
                    .map(|j| {
                        let n = i * 10 + j;
                        let path = match n % 3 {
                            0 => serde_json::json!({"type": "Exact", "value": format!("/svc{n}/items")}),
                            1 => serde_json::json!({"type": "PathPrefix", "value": format!("/svc{n}")}),
                            _ => serde_json::json!({"type": "RegularExpression", "value": format!("/svc{n}/[0-9]+")}),
                        };
                        serde_json::json!({"matches": [{"path": path}], "backends": [{"pool": format!("pool-{}", n % pools_n)}], "timeout": "5s"})
                    })
                    .collect();
                serde_json::from_value(serde_json::json!({
                    "apiVersion": "parapet.dev/v1alpha1", "kind": "ApiRoute",
                    "metadata": {"name": format!("route-{i}"), "namespace": "bench", "generation": 1},
                    "spec": {"hosts": [format!("api{}.bank.example", i % 50)], "rules": rules}
                }))
                .unwrap()
            })
            .collect();
        let mut service_endpoints = BTreeMap::new();
        for i in 0..pools_n {
            let eps: Vec<Endpoint> = (0..endpoints_total / pools_n)
                .map(|k| Endpoint {
                    address: format!("10.{}.{}.{}", i / 250, i % 250, k),
                    port: 8080,
                    weight: 1,
                    zone: Some(format!("zone-{}", k % 3)),
                    for_zones: Vec::new(),
                    ready: true,
                    serving: true,
                    terminating: false,
                })
                .collect();
            service_endpoints.insert(
                ServicePortKey {
                    namespace: "bench".into(),
                    service: format!("svc-{i}"),
                    port: 80,
                },
                eps,
            );
        }
        let before = rss_mb();
        let mut inputs = Inputs {
            routes: routes.iter().collect(),
            pools: pools.iter().collect(),
            service_endpoints,
            ..Inputs::default()
        };
        let t = Instant::now();
        let out = compile(&inputs);
        let full = t.elapsed();
        assert!(out.diagnostics.errors().next().is_none());
        let t = Instant::now();
        let snapshot = Snapshot::new(1, out.table.clone());
        let json = serde_json::to_vec(&snapshot).unwrap();
        let hash_ser = t.elapsed();
        // Endpoint-only change: one endpoint of one pool goes away.
        let key = ServicePortKey {
            namespace: "bench".into(),
            service: "svc-7".into(),
            port: 80,
        };
        inputs.service_endpoints.get_mut(&key).unwrap().pop();
        let t = Instant::now();
        let refreshed = refresh_endpoints(&out.table, &inputs);
        let fast = t.elapsed();
        assert_ne!(refreshed.content_hash(), out.table.content_hash());
        assert_eq!(
            refreshed,
            compile(&inputs).table,
            "the fast path equals a full compile"
        );
        println!(
            "routes={routes_n} endpoints={endpoints_total} compile_ms={:.1} endpoint_refresh_ms={:.1} serialise_and_hash_ms={:.1} snapshot_bytes={} rss_growth_mb={:.1}",
            full.as_secs_f64() * 1000.0,
            fast.as_secs_f64() * 1000.0,
            hash_ser.as_secs_f64() * 1000.0,
            json.len(),
            rss_mb() - before
        );
    }
}
