//! Balancer behaviour, by algorithm.

use std::{collections::HashMap, sync::Arc, time::Duration};

use parapet_crds::snapshot::{
    Algorithm, Cluster, Endpoint, HashOn, LoadBalancing, Table, UpstreamProtocol,
};

use super::*;

fn endpoint(address: &str, weight: u32) -> Endpoint {
    Endpoint {
        address: address.into(),
        port: 8080,
        weight,
        zone: None,
        for_zones: Vec::new(),
        ready: true,
        serving: true,
        terminating: false,
    }
}

fn cluster(algorithm: Algorithm, endpoints: Vec<Endpoint>) -> Cluster {
    Cluster {
        name: "bank/accounts".into(),
        endpoints,
        load_balancing: LoadBalancing {
            algorithm,
            hash_on: Some(HashOn::Header("x-user".into())),
        },
        connect_timeout_ms: 1000,
        protocol: UpstreamProtocol::Http1,
        health_check: None,
        outlier_detection: None,
        circuit_breaker: None,
        failover: None,
        tls: None,
    }
}

fn weighted(algorithm: Algorithm, weights: &[u32]) -> Cluster {
    cluster(
        algorithm,
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| endpoint(&format!("10.0.0.{i}"), w))
            .collect(),
    )
}

fn equal(algorithm: Algorithm, n: usize) -> Cluster {
    weighted(algorithm, &vec![1; n])
}

fn balancer(c: &Cluster) -> ClusterBalancer {
    ClusterBalancer::new(c, &EndpointRegistry::default())
}

const ALL: [Algorithm; 5] = [
    Algorithm::RoundRobin,
    Algorithm::LeastRequest,
    Algorithm::RingHash,
    Algorithm::Maglev,
    Algorithm::Random,
];

fn any(_: &EndpointHandle) -> bool {
    true
}

fn key(i: usize) -> u64 {
    stable_hash(format!("user-{i}").as_bytes())
}

/// Picks counted by address.
fn counts(b: &ClusterBalancer, picks: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for i in 0..picks {
        let e = b.pick(Some(key(i)), any).expect("an endpoint");
        *counts.entry(e.address.clone()).or_default() += 1;
    }
    counts
}

/// Owner address of each of `n` keys.
fn owners(b: &ClusterBalancer, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| b.pick(Some(key(i)), any).unwrap().address.clone())
        .collect()
}

// ---- round robin --------------------------------------------------------------------------

#[test]
fn round_robin_weights_are_exact() {
    let b = balancer(&weighted(Algorithm::RoundRobin, &[5, 1, 1]));
    let c = counts(&b, 700);
    assert_eq!(c["10.0.0.0"], 500);
    assert_eq!(c["10.0.0.1"], 100);
    assert_eq!(c["10.0.0.2"], 100);
}

#[test]
fn round_robin_weights_are_exact_across_threads() {
    let b = Arc::new(balancer(&weighted(Algorithm::RoundRobin, &[5, 1, 1])));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || counts(&b, 700))
        })
        .collect();
    let mut total: HashMap<String, usize> = HashMap::new();
    for t in threads {
        for (k, v) in t.join().unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    assert_eq!(total["10.0.0.0"], 2000);
    assert_eq!(total["10.0.0.1"], 400);
    assert_eq!(total["10.0.0.2"], 400);
}

#[test]
fn round_robin_equal_weights_never_repeat_back_to_back() {
    let b = balancer(&equal(Algorithm::RoundRobin, 3));
    let picks: Vec<String> = (0..300)
        .map(|_| b.pick(None, any).unwrap().address.clone())
        .collect();
    assert!(picks.windows(2).all(|w| w[0] != w[1]));
}

#[test]
fn round_robin_stays_within_one_pick_of_the_ideal_share() {
    // Smooth: after any number of picks, each endpoint is less than one pick away from
    // its exact share, so picks of a heavy endpoint are spread out, not bunched.
    for weights in [&[5, 1, 1][..], &[3, 2, 1], &[7, 3, 2, 1], &[1, 1, 1, 1, 9]] {
        let b = balancer(&weighted(Algorithm::RoundRobin, weights));
        let total: u32 = weights.iter().sum();
        let mut picked = vec![0u32; weights.len()];
        for t in 1..=(3 * total) {
            let e = b.pick(None, any).unwrap();
            let i: usize = e.address.trim_start_matches("10.0.0.").parse().unwrap();
            picked[i] += 1;
            for (i, &w) in weights.iter().enumerate() {
                let ideal = f64::from(t * w) / f64::from(total);
                assert!(
                    (f64::from(picked[i]) - ideal).abs() < 1.0,
                    "{weights:?} after {t}: {picked:?}"
                );
            }
        }
    }
}

#[test]
fn round_robin_skips_unusable_endpoints() {
    let b = balancer(&equal(Algorithm::RoundRobin, 3));
    let not_1 = |e: &EndpointHandle| e.address != "10.0.0.1";
    for _ in 0..300 {
        assert_ne!(b.pick(None, not_1).unwrap().address, "10.0.0.1");
    }
}

// ---- least request ------------------------------------------------------------------------

#[test]
fn least_request_prefers_fewer_requests_in_flight() {
    let b = balancer(&equal(Algorithm::LeastRequest, 2));
    let busy = &b.endpoints()[0];
    let _guards: Vec<_> = (0..10).map(|_| busy.stats.start()).collect();
    let c = counts(&b, 1000);
    assert_eq!(c.get("10.0.0.1"), Some(&1000), "{c:?}");
}

#[test]
fn least_request_prefers_lower_latency() {
    let b = balancer(&equal(Algorithm::LeastRequest, 2));
    b.endpoints()[1].stats.observe(Duration::from_secs(2));
    b.endpoints()[0].stats.observe(Duration::from_millis(5));
    let c = counts(&b, 1000);
    assert_eq!(c.get("10.0.0.0"), Some(&1000), "{c:?}");
}

#[test]
fn least_request_never_picks_the_most_loaded_of_three() {
    let b = balancer(&equal(Algorithm::LeastRequest, 3));
    let _guards: Vec<_> = (0..5).map(|_| b.endpoints()[2].stats.start()).collect();
    let c = counts(&b, 3000);
    assert_eq!(c.get("10.0.0.2"), None, "{c:?}");
    // The other two split the traffic.
    assert!(c["10.0.0.0"] > 1000 && c["10.0.0.1"] > 1000, "{c:?}");
}

#[test]
fn least_request_draws_by_weight() {
    // Equal loads: the first draw wins ties, and draws follow weights.
    let b = balancer(&weighted(Algorithm::LeastRequest, &[1, 1, 8]));
    let c = counts(&b, 10_000);
    assert!(c["10.0.0.2"] > 6000, "{c:?}");
}

#[test]
fn least_request_falls_back_to_least_loaded_usable() {
    let b = balancer(&equal(Algorithm::LeastRequest, 5));
    let _guards: Vec<_> = (0..3).map(|_| b.endpoints()[3].stats.start()).collect();
    let only_3_4 = |e: &EndpointHandle| e.address == "10.0.0.3" || e.address == "10.0.0.4";
    for _ in 0..200 {
        assert_eq!(b.pick(None, only_3_4).unwrap().address, "10.0.0.4");
    }
}

// ---- consistent hashing -------------------------------------------------------------------

const KEYS: usize = 10_000;

/// (keys that moved, keys that moved to somewhere other than `expected_target`).
fn moved(before: &[String], after: &[String], expected_target: Option<&str>) -> (usize, usize) {
    let moved: Vec<_> = before.iter().zip(after).filter(|(a, b)| a != b).collect();
    let elsewhere = moved
        .iter()
        .filter(|(_, b)| expected_target.is_some_and(|t| b.as_str() != t))
        .count();
    (moved.len(), elsewhere)
}

fn add_one_moves(algorithm: Algorithm) -> (usize, usize) {
    let ten = balancer(&equal(algorithm, 10));
    let mut c = equal(algorithm, 10);
    c.endpoints.push(endpoint("10.0.1.99", 1));
    let eleven = balancer(&c);
    moved(
        &owners(&ten, KEYS),
        &owners(&eleven, KEYS),
        Some("10.0.1.99"),
    )
}

/// (keys that moved, keys that moved although their endpoint stayed).
fn remove_one_moves(algorithm: Algorithm) -> (usize, usize) {
    let ten = balancer(&equal(algorithm, 10));
    let mut c = equal(algorithm, 10);
    let gone = c.endpoints.remove(4).address;
    let nine = balancer(&c);
    let before = owners(&ten, KEYS);
    let after = owners(&nine, KEYS);
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    let needless = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a != b && **a != gone)
        .count();
    (moved, needless)
}

#[test]
fn ring_hash_adding_an_endpoint_moves_about_one_in_eleven_keys_to_it() {
    let (moved, elsewhere) = add_one_moves(Algorithm::RingHash);
    assert!(moved < KEYS * 15 / 100, "{moved}");
    assert!(moved > KEYS * 4 / 100, "{moved}");
    assert_eq!(elsewhere, 0);
}

#[test]
fn ring_hash_removing_an_endpoint_moves_only_its_keys() {
    let (moved, needless) = remove_one_moves(Algorithm::RingHash);
    assert!(moved > 0 && moved < KEYS * 15 / 100, "{moved}");
    assert_eq!(needless, 0);
}

#[test]
fn maglev_adding_an_endpoint_moves_about_one_in_eleven_keys() {
    let (moved, elsewhere) = add_one_moves(Algorithm::Maglev);
    assert!(moved < KEYS * 15 / 100, "{moved}");
    assert!(moved > KEYS * 6 / 100, "{moved}");
    assert!(elsewhere < KEYS * 3 / 100, "{elsewhere}");
}

#[test]
fn maglev_removing_an_endpoint_moves_little_besides_its_keys() {
    let (moved, needless) = remove_one_moves(Algorithm::Maglev);
    assert!(moved < KEYS * 15 / 100, "{moved}");
    assert!(needless < KEYS * 3 / 100, "{needless}");
}

#[test]
fn hashing_spreads_keys_evenly() {
    for algorithm in [Algorithm::RingHash, Algorithm::Maglev] {
        let b = balancer(&equal(algorithm, 10));
        let c = counts(&b, KEYS);
        assert_eq!(c.len(), 10);
        for (addr, n) in &c {
            let mean = KEYS / 10;
            assert!(
                n.abs_diff(mean) < mean * 30 / 100,
                "{algorithm:?} {addr}: {c:?}"
            );
        }
    }
}

#[test]
fn hashing_follows_weights() {
    for algorithm in [Algorithm::RingHash, Algorithm::Maglev] {
        let b = balancer(&weighted(algorithm, &[1, 3]));
        let c = counts(&b, KEYS);
        let light = c["10.0.0.0"] as f64 / KEYS as f64;
        assert!((light - 0.25).abs() < 0.05, "{algorithm:?}: {c:?}");
    }
}

#[test]
fn maglev_table_shares_slots_by_weight() {
    let nodes: Vec<_> = [1u32, 2, 1]
        .iter()
        .enumerate()
        .map(|(i, &w)| (hash::StableHasher::new().write(&[i as u8]), w))
        .collect();
    let table = maglev::Maglev::new(&nodes);
    let slots = table.slots();
    assert_eq!(slots.len() as u64, maglev::TABLE_SIZE);
    let share = |p: u32| slots.iter().filter(|&&s| s == p).count() as f64 / slots.len() as f64;
    assert!((share(0) - 0.25).abs() < 0.01, "{}", share(0));
    assert!((share(1) - 0.5).abs() < 0.01, "{}", share(1));
}

#[test]
fn ring_size_is_bounded() {
    let nodes: Vec<_> = (0..2000u32)
        .map(|i| (hash::StableHasher::new().write(&i.to_le_bytes()), 1 + i % 7))
        .collect();
    let ring = ring_hash::Ring::new(&nodes);
    assert!(ring.len() <= (1 << 17) + 2000, "{}", ring.len());
}

#[test]
fn hashing_is_the_same_on_every_build() {
    for algorithm in [Algorithm::RingHash, Algorithm::Maglev] {
        let a = balancer(&equal(algorithm, 7));
        let b = balancer(&equal(algorithm, 7));
        assert_eq!(owners(&a, 1000), owners(&b, 1000), "{algorithm:?}");
    }
}

#[test]
fn hashing_skips_unusable_endpoints_consistently() {
    for algorithm in [Algorithm::RingHash, Algorithm::Maglev] {
        let b = balancer(&equal(algorithm, 5));
        let before = owners(&b, 2000);
        let not_2 = |e: &EndpointHandle| e.address != "10.0.0.2";
        for (i, owner) in before.iter().enumerate() {
            let picked = b.pick(Some(key(i)), not_2).unwrap();
            assert_ne!(picked.address, "10.0.0.2");
            if owner != "10.0.0.2" {
                assert_eq!(&picked.address, owner, "{algorithm:?}: key {i} moved");
            }
            // The same key goes to the same fallback every time.
            assert_eq!(b.pick(Some(key(i)), not_2).unwrap().address, picked.address);
        }
    }
}

#[test]
fn hash_based_algorithms_pick_at_random_without_a_hash() {
    for algorithm in [Algorithm::RingHash, Algorithm::Maglev] {
        let b = balancer(&equal(algorithm, 4));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..400 {
            seen.insert(b.pick(None, any).unwrap().address.clone());
        }
        assert_eq!(seen.len(), 4, "{algorithm:?}");
    }
}

#[test]
fn request_hash_reads_the_clusters_hash_on() {
    let b = balancer(&equal(Algorithm::Maglev, 3));
    let mut headers = HeaderMap::new();
    let ip = IpAddr::from([10, 1, 2, 3]);
    assert_eq!(b.request_hash(&headers, ip), None);
    headers.insert("x-user", http::HeaderValue::from_static("alice"));
    assert_eq!(b.request_hash(&headers, ip), Some(stable_hash(b"alice")));
    let rr = balancer(&equal(Algorithm::RoundRobin, 3));
    assert_eq!(rr.request_hash(&headers, ip), None);
}

// ---- random -------------------------------------------------------------------------------

#[test]
fn random_follows_weights() {
    let b = balancer(&weighted(Algorithm::Random, &[1, 4]));
    let c = counts(&b, 10_000);
    let heavy = c["10.0.0.1"] as f64 / 10_000.0;
    assert!((heavy - 0.8).abs() < 0.03, "{c:?}");
}

// ---- every algorithm ----------------------------------------------------------------------

#[test]
fn endpoints_that_are_not_routable_are_never_picked() {
    let mut zero = endpoint("10.0.0.90", 0);
    zero.weight = 0;
    let mut not_ready = endpoint("10.0.0.91", 1);
    (not_ready.ready, not_ready.serving) = (false, false);
    let mut terminating = endpoint("10.0.0.92", 1);
    (terminating.ready, terminating.terminating) = (false, true);
    let mut serving = endpoint("10.0.0.93", 1);
    // Not ready but serving and not terminating: routable.
    serving.ready = false;
    for algorithm in ALL {
        let c = cluster(
            algorithm,
            vec![
                zero.clone(),
                not_ready.clone(),
                endpoint("10.0.0.1", 1),
                terminating.clone(),
                serving.clone(),
            ],
        );
        let b = balancer(&c);
        assert_eq!(b.endpoints().len(), 5);
        assert_eq!(b.routable_count(), 2);
        let c = counts(&b, 2000);
        let mut picked: Vec<_> = c.keys().cloned().collect();
        picked.sort();
        assert_eq!(picked, ["10.0.0.1", "10.0.0.93"], "{algorithm:?}");
    }
}

#[test]
fn usable_filter_is_respected_by_every_algorithm() {
    for algorithm in ALL {
        let b = balancer(&equal(algorithm, 6));
        b.endpoints()[1].stats.set_healthy(false);
        b.endpoints()[4].stats.set_ejected(true);
        for i in 0..2000 {
            let e = b.pick(Some(key(i)), |e| e.stats.is_available()).unwrap();
            assert!(
                e.address != "10.0.0.1" && e.address != "10.0.0.4",
                "{algorithm:?}"
            );
        }
        // Retries: everything tried but one.
        let tried = ["10.0.0.0", "10.0.0.2", "10.0.0.3", "10.0.0.5"];
        for i in 0..200 {
            let e = b.pick(Some(key(i)), |e| {
                e.stats.is_available() && !tried.contains(&e.address.as_str())
            });
            assert!(e.is_none(), "{algorithm:?}");
            let e = b.pick(Some(key(i)), |e| !tried.contains(&e.address.as_str()));
            let a = e.unwrap().address.as_str();
            assert!(a == "10.0.0.1" || a == "10.0.0.4", "{algorithm:?}");
        }
    }
}

#[test]
fn no_endpoint_picks_nothing() {
    for algorithm in ALL {
        let b = balancer(&cluster(algorithm, vec![]));
        assert!(b.pick(Some(1), any).is_none(), "{algorithm:?}");
        let b = balancer(&weighted(algorithm, &[0, 0]));
        assert!(b.pick(Some(1), any).is_none(), "{algorithm:?}");
        let b = balancer(&equal(algorithm, 3));
        assert!(b.pick(Some(1), |_| false).is_none(), "{algorithm:?}");
    }
}

#[test]
fn single_endpoint_is_always_picked() {
    for algorithm in ALL {
        let b = balancer(&equal(algorithm, 1));
        for i in 0..50 {
            assert_eq!(b.pick(Some(key(i)), any).unwrap().address, "10.0.0.0");
        }
    }
}

// ---- state across tables ------------------------------------------------------------------

#[test]
fn endpoint_state_survives_a_rebuild() {
    let registry = EndpointRegistry::default();
    let first = ClusterBalancer::new(&equal(Algorithm::LeastRequest, 3), &registry);
    let guard = first.endpoints()[1].stats.start();
    first.endpoints()[2].stats.set_ejected(true);

    // Next snapshot: one endpoint left, another arrived, a weight changed.
    let mut c = equal(Algorithm::LeastRequest, 3);
    c.endpoints.remove(0);
    c.endpoints[0].weight = 5;
    c.endpoints.push(endpoint("10.0.0.7", 1));
    let second = ClusterBalancer::new(&c, &registry);
    let by_addr = |b: &ClusterBalancer, a: &str| {
        Arc::clone(&b.endpoints().iter().find(|e| e.address == a).unwrap().stats)
    };
    assert!(Arc::ptr_eq(
        &by_addr(&first, "10.0.0.1"),
        &by_addr(&second, "10.0.0.1")
    ));
    assert_eq!(by_addr(&second, "10.0.0.1").in_flight(), 1);
    assert!(by_addr(&second, "10.0.0.2").is_ejected());
    assert_eq!(registry.len(), 4);

    // The old table's guard still ends the request on the shared state.
    drop(guard);
    assert_eq!(by_addr(&second, "10.0.0.1").in_flight(), 0);

    let table = Table {
        clusters: vec![c],
        ..Table::default()
    };
    registry.retain_table(&table);
    assert_eq!(registry.len(), 3);
    // The same endpoint under another cluster is another endpoint.
    let other = registry.stats("bank/other", "10.0.0.1", 8080);
    assert!(!Arc::ptr_eq(&other, &by_addr(&second, "10.0.0.1")));
}

#[test]
fn authority_brackets_ipv6() {
    let b = balancer(&cluster(
        Algorithm::Random,
        vec![endpoint("10.0.0.1", 1), endpoint("fd00::1", 1)],
    ));
    assert_eq!(b.endpoints()[0].authority(), "10.0.0.1:8080");
    assert_eq!(b.endpoints()[1].authority(), "[fd00::1]:8080");
}

/// Prints how many of 10 000 keys move when a cluster of 10 changes:
/// `cargo test -p parapet-dataplane --lib key_movement_figures -- --ignored --nocapture`.
#[test]
#[ignore = "prints a measurement"]
fn key_movement_figures() {
    for algorithm in [Algorithm::RingHash, Algorithm::Maglev] {
        let (added, added_elsewhere) = add_one_moves(algorithm);
        let (removed, removed_needless) = remove_one_moves(algorithm);
        let c = counts(&balancer(&equal(algorithm, 10)), KEYS);
        let (min, max) = (c.values().min().unwrap(), c.values().max().unwrap());
        println!(
            "{algorithm:?}: add one to 10 moves {added} keys ({added_elsewhere} not to the new one); \
             remove one of 10 moves {removed} ({removed_needless} not from the removed one); \
             keys per endpoint {min}..{max} (mean 1000)"
        );
    }
    let started = std::time::Instant::now();
    let b = balancer(&equal(Algorithm::Maglev, 100));
    println!("Maglev build, 100 endpoints: {:?}", started.elapsed());
    let started = std::time::Instant::now();
    let _ = balancer(&equal(Algorithm::RingHash, 100));
    println!("ring build, 100 endpoints: {:?}", started.elapsed());
    for algorithm in ALL {
        let b2 = balancer(&equal(algorithm, 100));
        let n = 1_000_000u32;
        let started = std::time::Instant::now();
        for i in 0..n {
            std::hint::black_box(b2.pick(Some(u64::from(i).wrapping_mul(0x9e37_79b9)), |e| {
                e.stats.is_available()
            }));
        }
        println!(
            "{algorithm:?} pick, 100 endpoints: {:?}",
            started.elapsed() / n
        );
    }
    drop(b);
}
