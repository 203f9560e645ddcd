use std::{sync::Arc, time::Duration};

use parapet_crds::snapshot::Snapshot;

use super::*;
use crate::{
    endpoint::EndpointRegistry,
    snapshot::{BuildOptions, LiveState, Runtime},
    upstream::ClientPool,
};

struct Env {
    registry: EndpointRegistry,
    live: LiveState,
    metrics: Arc<Metrics>,
}

impl Env {
    fn new() -> Self {
        Self {
            registry: EndpointRegistry::default(),
            live: LiveState::default(),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// A table whose pools are `(name, ports, with a health check)`; nothing listens on
    /// these ports, so every check fails.
    fn table(&self, pools: &[(&str, &[u16], bool)]) -> Runtime {
        let mut yaml = String::new();
        for (name, ports, checked) in pools {
            let eps: Vec<String> = ports
                .iter()
                .map(|p| format!("{{address: 127.0.0.1, port: {p}}}"))
                .collect();
            yaml.push_str(&format!(
                "---\napiVersion: parapet.dev/v1alpha1\nkind: UpstreamPool\nmetadata: {{name: {name}}}\nspec:\n  static: [{}]\n",
                eps.join(", ")
            ));
            if *checked {
                yaml.push_str(
                    "  healthCheck: {interval: 50ms, timeout: 50ms, unhealthyThreshold: 1}\n",
                );
            }
        }
        let backends: Vec<String> = pools
            .iter()
            .map(|(n, _, _)| format!("{{pool: {n}}}"))
            .collect();
        yaml.push_str(&format!(
            "---\napiVersion: parapet.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: r}}\nspec:\n  hosts: ['*']\n  rules:\n    - backends: [{}]\n",
            backends.join(", ")
        ));
        let m = parapet_crds::manifest::Manifest::parse(&yaml).unwrap();
        let out = parapet_crds::compiler::compile(&m.inputs());
        Runtime::build(
            Snapshot::new(1, out.table),
            &self.registry,
            &self.live,
            &ClientPool::default(),
            &self.metrics,
            &BuildOptions::default(),
        )
        .unwrap()
    }
}

fn pools(rt: &Runtime) -> impl Iterator<Item = (&Cluster, &[Arc<EndpointHandle>])> {
    rt.clusters
        .values()
        .map(|c| (&c.spec, c.balancer.endpoints()))
}

fn stats(rt: &Runtime, pool: &str, port: u16) -> Arc<EndpointStats> {
    rt.clusters[&format!("default/{pool}")]
        .balancer
        .endpoints()
        .iter()
        .find(|e| e.port == port)
        .unwrap()
        .stats
        .clone()
}

fn state_of(h: &HealthChecks, port: u16) -> Arc<AtomicU8> {
    lock(&h.checkers)
        .iter()
        .find(|(k, _)| k.port == port)
        .map(|(_, c)| c.state.clone())
        .unwrap()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn checkers_follow_tables_and_keep_their_state() {
    let env = Env::new();
    let h = HealthChecks::new(env.metrics.clone());
    let a = env.table(&[("p", &[1, 2], true)]);
    h.reconcile(pools(&a));
    assert_eq!(h.len(), 2);
    let s2 = stats(&a, "p", 2);
    until("both endpoints unhealthy", || {
        !stats(&a, "p", 1).is_healthy() && !s2.is_healthy()
    })
    .await;
    let checker2 = state_of(&h, 2);

    // Endpoint 2 stays, 1 leaves, 3 arrives: 2 keeps its checker and its verdict.
    let b = env.table(&[("p", &[2, 3], true)]);
    h.reconcile(pools(&b));
    assert_eq!(h.len(), 2);
    assert!(
        Arc::ptr_eq(&checker2, &state_of(&h, 2)),
        "a new checker for an unchanged endpoint"
    );
    assert!(Arc::ptr_eq(&s2, &stats(&b, "p", 2)));
    assert!(!s2.is_healthy(), "the verdict survives the swap");

    // Another pool with the same endpoint and check: still one checker for it.
    let c = env.table(&[("p", &[2, 3], true), ("q", &[2], true)]);
    h.reconcile(pools(&c));
    assert_eq!(h.len(), 2);
    assert!(Arc::ptr_eq(&checker2, &state_of(&h, 2)));
    let q2 = stats(&c, "q", 2);
    assert!(
        !Arc::ptr_eq(&q2, &s2),
        "each pool has its own endpoint state"
    );
    assert!(
        !q2.is_healthy(),
        "a new target gets the checker's verdict at once"
    );

    // Checks removed: no checker, no verdict, healthy again.
    let d = env.table(&[("p", &[2, 3], false)]);
    h.reconcile(pools(&d));
    assert!(h.is_empty());
    assert!(stats(&d, "p", 2).is_healthy());
    assert!(stats(&d, "p", 3).is_healthy());
}
