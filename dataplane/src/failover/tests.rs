use std::sync::Arc;

use parapet_crds::snapshot::Snapshot;
use tokio::time::Instant;

use super::*;
use crate::{
    endpoint::EndpointRegistry,
    metrics::Metrics,
    snapshot::{BuildOptions, LiveState, Runtime},
    upstream::ClientPool,
};

/// Primary pool `p` (ports 1–4; 1–2 in zone-a, 3–4 in zone-b) preferring the local zone,
/// with backup pool `b` (ports 11–12) below 50% healthy.
fn table(zone: Option<&str>) -> Runtime {
    build(TABLE, zone)
}

const TABLE: &str = r#"
apiVersion: parapet.dev/v1alpha1
kind: UpstreamPool
metadata: {name: p}
spec:
  static:
    - {address: 127.0.0.1, port: 1, zone: zone-a}
    - {address: 127.0.0.1, port: 2, zone: zone-a}
    - {address: 127.0.0.1, port: 3, zone: zone-b}
    - {address: 127.0.0.1, port: 4, zone: zone-b}
  failover: {backupPool: {name: b}, minHealthyPercent: 50, preferLocalZone: true}
---
apiVersion: parapet.dev/v1alpha1
kind: UpstreamPool
metadata: {name: b}
spec:
  static: [{address: 127.0.0.1, port: 11}, {address: 127.0.0.1, port: 12}]
---
apiVersion: parapet.dev/v1alpha1
kind: ApiRoute
metadata: {name: r}
spec:
  hosts: ['*']
  rules: [{backends: [{pool: p}]}]
"#;

fn build(yaml: &str, zone: Option<&str>) -> Runtime {
    let m = parapet_crds::manifest::Manifest::parse(yaml).unwrap();
    let out = parapet_crds::compiler::compile(&m.inputs());
    Runtime::build(
        Snapshot::new(1, out.table),
        &EndpointRegistry::default(),
        &LiveState::default(),
        &ClientPool::default(),
        &Metrics::new(),
        &BuildOptions {
            zone: zone.map(str::to_string),
            ..Default::default()
        },
    )
    .unwrap()
}

fn set_healthy(c: &ClusterRuntime, port: u16, healthy: bool) {
    c.balancer
        .endpoints()
        .iter()
        .find(|e| e.port == port)
        .unwrap()
        .stats
        .set_healthy(healthy);
}

fn names(tiers: [Option<Arc<ClusterRuntime>>; 2]) -> Vec<String> {
    tiers
        .iter()
        .flatten()
        .map(|c| c.spec.name.clone())
        .collect()
}

#[tokio::test]
async fn backups_are_resolved_when_the_table_is_built() {
    let t = table(None);
    let (p, b) = (&t.clusters["default/p"], &t.clusters["default/b"]);
    // The primary holds its backup of this very table; the request path reads no names.
    assert!(Arc::ptr_eq(&p.backup().unwrap(), b));
    assert!(b.backup().is_none());
    // Another table's pool of the same name is another runtime.
    let t2 = table(None);
    assert!(!Arc::ptr_eq(&t2.clusters["default/p"].backup().unwrap(), b));
    assert!(Arc::ptr_eq(
        &t2.clusters["default/p"].backup().unwrap(),
        &t2.clusters["default/b"]
    ));
}

#[tokio::test]
async fn pools_backing_each_other_up_are_freed_with_their_table() {
    let mutual = TABLE.replace(
        "  static: [{address: 127.0.0.1, port: 11}, {address: 127.0.0.1, port: 12}]",
        "  static: [{address: 127.0.0.1, port: 11}, {address: 127.0.0.1, port: 12}]\n  failover: {backupPool: {name: p}}",
    );
    let t = build(&mutual, None);
    let (p, b) = (&t.clusters["default/p"], &t.clusters["default/b"]);
    assert!(Arc::ptr_eq(&p.backup().unwrap(), b));
    assert!(Arc::ptr_eq(&b.backup().unwrap(), p));
    let (p, b) = (Arc::downgrade(p), Arc::downgrade(b));
    drop(t);
    assert!(
        p.upgrade().is_none() && b.upgrade().is_none(),
        "a reference cycle kept them"
    );
}

#[tokio::test]
async fn the_backup_takes_over_below_the_threshold_and_hands_back() {
    let t = table(None);
    let p = &t.clusters["default/p"];
    assert_eq!(names(tiers(p)), ["default/p", "default/b"]);
    set_healthy(p, 1, false);
    set_healthy(p, 2, false);
    // 2 of 4 healthy is 50%: not below.
    assert_eq!(names(tiers(p)), ["default/p", "default/b"]);
    set_healthy(p, 3, false);
    assert_eq!(names(tiers(p)), ["default/b", "default/p"]);
    assert_eq!(p.metrics.failover_active.get(), 1);
    let picked = pick(p, None, &[], Instant::now()).unwrap();
    assert_eq!(picked.cluster.spec.name, "default/b");
    // A backup with nothing healthy takes nothing.
    let b = &t.clusters["default/b"];
    set_healthy(b, 11, false);
    set_healthy(b, 12, false);
    assert_eq!(names(tiers(p)), ["default/p", "default/b"]);
    set_healthy(b, 11, true);
    set_healthy(p, 3, true);
    assert_eq!(names(tiers(p)), ["default/p", "default/b"]);
    assert_eq!(p.metrics.failover_active.get(), 0);
}

#[tokio::test]
async fn the_local_share_follows_local_health_with_overprovisioning() {
    let t = table(Some("zone-a"));
    let p = &t.clusters["default/p"];
    assert!(p.zones.is_some());
    let eps = p.balancer.endpoints();
    assert_eq!(local_share(&p.availability, eps), 1.0);
    set_healthy(p, 2, false);
    // 1 of 2 local healthy: 1.4 × 0.5 = 0.7.
    assert!((local_share(&p.availability, eps) - 0.7).abs() < 1e-9);
    let mut local = 0;
    for _ in 0..2000 {
        let picked = pick(p, None, &[], Instant::now()).unwrap();
        assert_ne!(picked.endpoint.port, 2);
        local += usize::from(picked.endpoint.local);
    }
    // Binomial(2000, 0.7): sd ≈ 20.
    assert!((1300..=1500).contains(&local), "{local}");
    set_healthy(p, 1, false);
    assert_eq!(local_share(&p.availability, eps), 0.0);
    // Without a zone, no preference.
    let t = table(None);
    assert!(t.clusters["default/p"].zones.is_none());
}

#[tokio::test]
async fn counts_are_recomputed_only_after_a_change() {
    let t = table(Some("zone-a"));
    let p = &t.clusters["default/p"];
    let eps = p.balancer.endpoints();
    assert_eq!(p.availability.counts(eps), (4, 2));
    set_healthy(p, 1, false);
    assert_eq!(p.availability.counts(eps), (3, 1));
    p.balancer.endpoints()[3].stats.set_ejected(true);
    assert_eq!(p.availability.counts(eps), (2, 1));
}

#[tokio::test]
async fn each_try_prefers_an_endpoint_not_tried_and_panics_last() {
    let t = table(None);
    let b = &t.clusters["default/b"];
    let now = Instant::now();
    let first = pick(b, None, &[], now).unwrap().endpoint;
    let second = pick(b, None, std::slice::from_ref(&first), now)
        .unwrap()
        .endpoint;
    assert_ne!(first.port, second.port);
    // Both tried: tried ones are used again rather than failing.
    let tried = [first.clone(), second.clone()];
    assert!(pick(b, None, &tried, now).is_some());
    // Hedges only go to untried endpoints.
    assert!(pick_fresh(b, None, &tried, now).is_none());
    // Nothing healthy: panic mode still answers, and counts it.
    set_healthy(b, 11, false);
    set_healthy(b, 12, false);
    assert!(pick(b, None, &[], now).is_some());
    assert_eq!(b.metrics.panic.get(), 1);
    assert!(pick_fresh(b, None, &[], now).is_none());
}

#[tokio::test]
async fn panic_tries_the_other_tier_before_repeating_an_endpoint() {
    let t = table(None);
    let (p, b) = (&t.clusters["default/p"], &t.clusters["default/b"]);
    for port in 1..=4 {
        set_healthy(p, port, false);
    }
    set_healthy(b, 11, false);
    set_healthy(b, 12, false);
    let now = Instant::now();
    // Nothing healthy anywhere: the primary first.
    let first = pick(p, None, &[], now).unwrap();
    assert_eq!(first.cluster.spec.name, "default/p");
    // Every primary endpoint tried: the backup's, not a primary one again.
    let tried: Vec<_> = p.balancer.endpoints().to_vec();
    let next = pick(p, None, &tried, now).unwrap();
    assert_eq!(next.cluster.spec.name, "default/b");
}
