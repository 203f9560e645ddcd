use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use parapet_crds::snapshot::{OutlierDetection, SuccessRate};
use tokio::time::Instant;

use super::*;
use crate::{
    endpoint::{EndpointHandle, EndpointStats, EwmaConfig},
    metrics::Metrics,
};

fn endpoints(n: usize) -> Vec<Arc<EndpointHandle>> {
    (0..n)
        .map(|i| {
            Arc::new(EndpointHandle {
                address: format!("10.0.0.{i}"),
                authority: crate::endpoint::endpoint_authority(&format!("10.0.0.{i}"), 80),
                port: 80,
                weight: 1,
                zone: None,
                local: false,
                routable: true,
                stats: Arc::new(EndpointStats::new_at(EwmaConfig::default(), Instant::now())),
            })
        })
        .collect()
}

fn config() -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx: 5,
        consecutive_gateway_errors: 3,
        interval_ms: 10_000,
        base_ejection_time_ms: 30_000,
        max_ejection_percent: 50,
        success_rate: None,
    }
}

fn outlier(cfg: OutlierDetection) -> ClusterOutlier {
    ClusterOutlier::new(
        "ns/pool",
        Some(cfg),
        Arc::new(Mutex::new(())),
        &Metrics::new(),
    )
}

fn record(o: &ClusterOutlier, eps: &[Arc<EndpointHandle>], i: usize, v: Verdict, n: usize) {
    for _ in 0..n {
        o.record(eps, &eps[i], v, None, Instant::now());
    }
}

#[tokio::test(start_paused = true)]
async fn consecutive_5xx_eject_and_a_success_resets_the_count() {
    let eps = endpoints(4);
    let o = outlier(config());
    record(&o, &eps, 0, Verdict::ServerError, 4);
    record(&o, &eps, 0, Verdict::Success, 1);
    record(&o, &eps, 0, Verdict::ServerError, 4);
    assert!(
        !eps[0].stats.is_ejected(),
        "a success in between resets the run"
    );
    record(&o, &eps, 0, Verdict::ServerError, 1);
    assert!(eps[0].stats.is_ejected());
    assert!(!eps[1].stats.is_ejected());
    assert!(!eps[0].stats.is_candidate(Instant::now()));
}

#[tokio::test(start_paused = true)]
async fn gateway_errors_eject_sooner() {
    let eps = endpoints(4);
    let o = outlier(config());
    record(&o, &eps, 1, Verdict::GatewayError, 2);
    assert!(!eps[1].stats.is_ejected());
    record(&o, &eps, 1, Verdict::GatewayError, 1);
    assert!(eps[1].stats.is_ejected());
    // A plain 500 breaks a run of gateway errors but counts toward consecutive 5xx.
    record(&o, &eps, 2, Verdict::GatewayError, 2);
    record(&o, &eps, 2, Verdict::ServerError, 1);
    record(&o, &eps, 2, Verdict::GatewayError, 1);
    assert!(!eps[2].stats.is_ejected());
    record(&o, &eps, 2, Verdict::GatewayError, 1);
    assert!(eps[2].stats.is_ejected(), "five 5xx in a row");
}

#[tokio::test(start_paused = true)]
async fn never_more_than_max_ejection_percent() {
    let eps = endpoints(3);
    let o = outlier(config());
    for i in 0..3 {
        record(&o, &eps, i, Verdict::GatewayError, 3);
    }
    let ejected = eps.iter().filter(|e| e.stats.is_ejected()).count();
    assert_eq!(ejected, 1, "50% of 3 endpoints is one");
    assert!(may_eject(0, 3, 50) && !may_eject(1, 3, 50));
    assert!(may_eject(1, 4, 50) && !may_eject(2, 4, 50));
    assert!(
        !may_eject(0, 1, 50),
        "a single endpoint is never ejected at 50%"
    );
    assert!(may_eject(0, 1, 100));
}

#[tokio::test(start_paused = true)]
async fn one_probe_decides_after_the_ejection_and_ejections_grow() {
    let eps = endpoints(2);
    let o = outlier(config());
    let ep = &eps[0];
    record(&o, &eps, 0, Verdict::GatewayError, 3);
    assert!(ep.stats.is_ejected());
    assert!(matches!(
        admit(&ep.stats, Instant::now()),
        Admission::Refused
    ));

    tokio::time::advance(Duration::from_millis(29_999)).await;
    assert!(!ep.stats.is_candidate(Instant::now()));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(ep.stats.is_candidate(Instant::now()));
    let Admission::Probe(probe) = admit(&ep.stats, Instant::now()) else {
        panic!("the first request after the ejection probes");
    };
    // Only one probe at a time.
    assert!(!ep.stats.is_candidate(Instant::now()));
    assert!(matches!(
        admit(&ep.stats, Instant::now()),
        Admission::Refused
    ));
    o.record(&eps, ep, Verdict::GatewayError, Some(probe), Instant::now());
    assert!(ep.stats.is_ejected(), "a failed probe ejects again");
    assert_eq!(ep.stats.outlier.ejections(), 2);

    // The second ejection lasts twice as long.
    tokio::time::advance(Duration::from_millis(59_999)).await;
    assert!(matches!(
        admit(&ep.stats, Instant::now()),
        Admission::Refused
    ));
    tokio::time::advance(Duration::from_millis(1)).await;
    let Admission::Probe(probe) = admit(&ep.stats, Instant::now()) else {
        panic!("probe after the second ejection");
    };
    o.record(&eps, ep, Verdict::Success, Some(probe), Instant::now());
    assert!(
        !ep.stats.is_ejected(),
        "a successful probe returns it to service"
    );
    assert!(matches!(
        admit(&ep.stats, Instant::now()),
        Admission::Normal
    ));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_lets_the_next_request_probe() {
    let eps = endpoints(2);
    let o = outlier(config());
    record(&o, &eps, 0, Verdict::GatewayError, 3);
    tokio::time::advance(Duration::from_secs(30)).await;
    let Admission::Probe(probe) = admit(&eps[0].stats, Instant::now()) else {
        panic!("probe");
    };
    drop(probe);
    assert!(matches!(
        admit(&eps[0].stats, Instant::now()),
        Admission::Probe(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn ejections_decay_while_in_service_and_cap_at_ten() {
    let eps = endpoints(2);
    let o = outlier(config());
    for _ in 0..3 {
        record(&o, &eps, 0, Verdict::GatewayError, 3);
        tokio::time::advance(Duration::from_secs(300)).await;
        let Admission::Probe(p) = admit(&eps[0].stats, Instant::now()) else {
            panic!("probe");
        };
        o.record(&eps, &eps[0], Verdict::Success, Some(p), Instant::now());
    }
    assert_eq!(eps[0].stats.outlier.ejections(), 3);
    o.sweep(&eps, Instant::now());
    assert_eq!(eps[0].stats.outlier.ejections(), 2);
    o.sweep(&eps, Instant::now());
    o.sweep(&eps, Instant::now());
    o.sweep(&eps, Instant::now());
    assert_eq!(eps[0].stats.outlier.ejections(), 0);
    assert_eq!(ejection_ms(30_000, 1), 30_000);
    assert_eq!(ejection_ms(30_000, 4), 120_000);
    assert_eq!(ejection_ms(30_000, 50), 300_000);
}

#[tokio::test(start_paused = true)]
async fn success_rate_ejects_the_outlier_in_a_sweep() {
    let eps = endpoints(5);
    let mut cfg = config();
    cfg.success_rate = Some(SuccessRate {
        request_volume: 50,
        minimum_hosts: 5,
        stdev_factor_milli: 1900,
    });
    // Consecutive thresholds out of reach: only the success rate can eject.
    cfg.consecutive_5xx = 1000;
    cfg.consecutive_gateway_errors = 1000;
    let o = outlier(cfg);
    for i in 0..5 {
        for k in 0..100 {
            let bad = if i == 3 { k % 2 == 0 } else { k % 50 == 0 };
            let v = if bad {
                Verdict::ServerError
            } else {
                Verdict::Success
            };
            record(&o, &eps, i, v, 1);
        }
    }
    o.sweep(&eps, Instant::now());
    let ejected: Vec<usize> = (0..5).filter(|&i| eps[i].stats.is_ejected()).collect();
    assert_eq!(ejected, vec![3]);
}

#[test]
fn success_rate_needs_volume_and_hosts() {
    let sr = SuccessRate {
        request_volume: 100,
        minimum_hosts: 3,
        stdev_factor_milli: 1000,
    };
    // Two endpoints with enough volume: not enough hosts to judge.
    assert!(success_rate_outliers(&[(100, 100), (100, 10), (99, 0)], &sr).is_empty());
    let out = success_rate_outliers(&[(100, 100), (100, 99), (100, 98), (100, 10)], &sr);
    assert_eq!(out, vec![3]);
    // All equal: no outlier.
    assert!(success_rate_outliers(&[(100, 90); 4], &sr).is_empty());
}
