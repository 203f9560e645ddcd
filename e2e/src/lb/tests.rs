//! The load balancer without a cluster: slices built by hand, the endpoint channel fed by
//! hand, backends on 127.0.0.1.

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use kube::api::ObjectMeta;
use parapet_tests::{
    backend::{Backend, Behaviour},
    wait_for,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::*;

const DEADLINE: Duration = Duration::from_secs(10);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn port(name: Option<&str>, port: i32, protocol: &str) -> EndpointPort {
    EndpointPort {
        name: name.map(Into::into),
        port: Some(port),
        protocol: Some(protocol.into()),
        ..Default::default()
    }
}

fn endpoint(addresses: &[&str], ready: Option<bool>, terminating: Option<bool>) -> Endpoint {
    Endpoint {
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        conditions: Some(EndpointConditions {
            ready,
            serving: ready,
            terminating,
        }),
        ..Default::default()
    }
}

fn slice(name: &str, ports: Vec<EndpointPort>, endpoints: Vec<Endpoint>) -> EndpointSlice {
    EndpointSlice {
        address_type: "IPv4".into(),
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ports: Some(ports),
        endpoints: Some(endpoints),
    }
}

/// A load that ends only when told (or after [`DEADLINE`]).
fn open_ended() -> LoadConfig {
    LoadConfig {
        max_requests: u64::MAX,
        max_duration: DEADLINE,
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    }
}

#[test]
fn only_ready_endpoints_on_the_chosen_port_count() {
    let s = slice(
        "web-abc",
        vec![
            port(Some("http"), 8080, "TCP"),
            port(Some("metrics"), 9090, "TCP"),
            port(Some("dns"), 53, "UDP"),
        ],
        vec![
            endpoint(&["198.18.0.1"], Some(true), None),
            endpoint(&["198.18.0.2"], Some(false), Some(true)),
            endpoint(&["198.18.0.3"], None, None),
            // Not what the API server writes, but a terminating pod must never get traffic.
            endpoint(&["198.18.0.4"], Some(true), Some(true)),
            endpoint(&["198.18.0.5", "198.18.0.6"], Some(true), Some(false)),
            endpoint(&["not-an-ip"], Some(true), None),
        ],
    );
    let http = vec![
        addr("198.18.0.1:8080"),
        addr("198.18.0.5:8080"),
        addr("198.18.0.6:8080"),
    ];
    assert_eq!(ready_addresses(&s, &"http".into()), http);
    assert_eq!(
        ready_addresses(&s, &9090.into()),
        vec![
            addr("198.18.0.1:9090"),
            addr("198.18.0.5:9090"),
            addr("198.18.0.6:9090"),
        ]
    );
    assert!(ready_addresses(&s, &"dns".into()).is_empty(), "UDP only");
    assert!(ready_addresses(&s, &"grpc".into()).is_empty());
    assert!(ready_addresses(&s, &8081.into()).is_empty());

    let unnamed = slice(
        "single",
        vec![port(None, 80, "TCP")],
        vec![endpoint(&["2001:db8::1"], Some(true), None)],
    );
    assert_eq!(
        ready_addresses(&unnamed, &"".into()),
        vec![addr("[2001:db8::1]:80")]
    );
}

#[test]
fn a_relist_replaces_the_set_and_slices_merge() {
    use watcher::Event;
    let p: PortRef = "http".into();
    let one = |name: &str, ips: &[&str]| {
        slice(
            name,
            vec![port(Some("http"), 80, "TCP")],
            ips.iter()
                .map(|ip| endpoint(&[ip], Some(true), None))
                .collect(),
        )
    };
    let mut s = Slices::default();
    assert_eq!(s.apply(Event::Init, &p), None);
    assert_eq!(
        s.apply(Event::InitApply(one("a", &["198.18.0.2"])), &p),
        None
    );
    assert_eq!(
        s.apply(Event::InitDone, &p),
        Some(vec![addr("198.18.0.2:80")])
    );
    // The same address in two slices (during a slice handover) counts once.
    assert_eq!(
        s.apply(Event::Apply(one("b", &["198.18.0.1", "198.18.0.2"])), &p),
        Some(vec![addr("198.18.0.1:80"), addr("198.18.0.2:80")])
    );
    assert_eq!(
        s.apply(Event::Delete(one("b", &[])), &p),
        Some(vec![addr("198.18.0.2:80")])
    );
    s.apply(Event::Apply(one("b", &["198.18.0.9"])), &p);
    // A relist forgets slices it does not list again.
    s.apply(Event::Init, &p);
    s.apply(Event::InitApply(one("a", &["198.18.0.3"])), &p);
    assert_eq!(
        s.apply(Event::InitDone, &p),
        Some(vec![addr("198.18.0.3:80")])
    );
}

#[tokio::test]
async fn traffic_goes_round_robin_to_every_listed_endpoint() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut set = vec![a.addr, b.addr];
    set.sort();
    let (_tx, rx) = watch::channel(set);
    let cfg = LoadConfig {
        max_requests: 100,
        ..open_ended()
    }
    .path("/p?q=1")
    .host("api.example")
    .header("x-lb", "1");
    let report = run(cfg, rx).await;

    assert_eq!(report.stopped_by, Some(StopReason::Count), "{report}");
    assert_eq!((report.sent, report.ok, report.failed()), (100, 100, 0));
    assert_eq!((report.ok_on(a.addr), report.ok_on(b.addr)), (50, 50));
    assert_eq!((a.hits(), b.hits()), (50, 50));
    let headers = a.last_headers().unwrap();
    assert_eq!(headers["host"], "api.example");
    assert_eq!(headers["x-lb"], "1");
    assert_eq!(a.last_uri().as_deref(), Some("/p?q=1"));
    let shown = report.to_string();
    assert!(shown.starts_with("100 requests in "), "{shown}");
    assert!(shown.contains("100 ok, 0 failed"), "{shown}");
}

#[tokio::test]
async fn an_endpoint_removed_from_the_set_gets_no_more_requests() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (tx, rx) = watch::channel(vec![a.addr.min(b.addr), a.addr.max(b.addr)]);
    let cfg = open_ended();
    let concurrency = cfg.concurrency;
    let load = Load::spawn(cfg, rx);
    let (ra, rb) = (&a, &b);
    wait_for(
        "both endpoints to get traffic",
        DEADLINE,
        move || async move { (ra.hits() >= 20 && rb.hits() >= 20).then_some(()) },
    )
    .await;

    tx.send_replace(vec![a.addr]);
    let b_at_removal = b.hits();
    let a_at_removal = a.hits();
    wait_for("a to serve 200 more", DEADLINE, move || async move {
        (ra.hits() >= a_at_removal + 200).then_some(())
    })
    .await;
    let report = load.stop_and_wait().await;

    assert_eq!(report.stopped_by, Some(StopReason::Stopped));
    assert_eq!(report.failed(), 0, "{report}");
    // Only requests already on their way when b left the set: one per worker at most.
    assert!(
        b.hits() <= b_at_removal + concurrency,
        "b got {} requests after it left the set",
        b.hits() - b_at_removal
    );
    assert_eq!(report.ok_on(b.addr), b.hits() as u64);
    assert_eq!(report.ok_on(a.addr), a.hits() as u64);
}

#[tokio::test]
async fn an_endpoint_that_dies_while_listed_has_the_failures_counted_against_it() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (_tx, rx) = watch::channel(vec![a.addr.min(b.addr), a.addr.max(b.addr)]);
    let load = Load::spawn(open_ended(), rx);
    let (ra, rb, l) = (&a, &b, &load);
    wait_for(
        "both endpoints to get traffic",
        DEADLINE,
        move || async move { (ra.hits() >= 10 && rb.hits() >= 10).then_some(()) },
    )
    .await;

    b.stop();
    let dead = b.addr;
    wait_for("failures on b", DEADLINE, move || async move {
        (l.snapshot().failed_on(dead) >= 10).then_some(())
    })
    .await;
    let report = load.stop_and_wait().await;

    assert!(report.failed_on(b.addr) >= 10, "{report}");
    assert_eq!(report.failed_on(a.addr), 0, "{report}");
    assert!(report.ok_on(a.addr) > 0, "{report}");
    assert_eq!(report.sent, report.ok + report.failed(), "{report}");
    for (kind, endpoint) in report.errors.keys() {
        assert_eq!(*endpoint, b.addr, "{report}");
        assert!(
            matches!(kind, ErrorKind::ConnectRefused | ErrorKind::Closed),
            "{report}"
        );
    }
    assert!(
        report
            .errors
            .contains_key(&(ErrorKind::ConnectRefused, b.addr)),
        "once its listener is gone, b refuses: {report}"
    );
}

#[tokio::test]
async fn it_stops_at_the_request_count() {
    let a = Backend::start("a").await;
    let (_tx, rx) = watch::channel(vec![a.addr]);
    let report = run(
        LoadConfig {
            max_requests: 50,
            ..open_ended()
        },
        rx,
    )
    .await;
    assert_eq!(report.stopped_by, Some(StopReason::Count));
    assert_eq!((report.sent, report.ok), (50, 50), "{report}");
    assert_eq!(a.hits(), 50);
}

#[tokio::test]
async fn it_stops_at_the_duration() {
    let a = Backend::start("a").await;
    let (_tx, rx) = watch::channel(vec![a.addr]);
    let max_duration = Duration::from_millis(300);
    let report = run(
        LoadConfig {
            max_duration,
            ..open_ended()
        },
        rx,
    )
    .await;
    assert_eq!(report.stopped_by, Some(StopReason::Duration), "{report}");
    assert!(report.elapsed >= max_duration, "{report}");
    assert!(report.elapsed < max_duration + DEADLINE, "{report}");
    assert!(report.ok > 0 && report.failed() == 0, "{report}");
}

#[tokio::test]
async fn a_rate_spaces_the_requests() {
    let a = Backend::start("a").await;
    let (_tx, rx) = watch::channel(vec![a.addr]);
    let rate = 40.0;
    let report = run(
        LoadConfig {
            max_duration: Duration::from_millis(500),
            rate: Some(rate),
            ..open_ended()
        },
        rx,
    )
    .await;
    assert_eq!(report.stopped_by, Some(StopReason::Duration), "{report}");
    // Slot i goes at i / rate: 20 slots fit in 500 ms, and the last one sent set the pace.
    assert!((1..=20).contains(&report.sent), "{report}");
    let paced = Duration::from_secs_f64((report.sent - 1) as f64 / rate);
    assert!(report.elapsed >= paced, "{report}");
}

#[tokio::test]
async fn stop_ends_it_early() {
    let a = Backend::start("a").await;
    let (_tx, rx) = watch::channel(vec![a.addr]);
    let load = Load::spawn(open_ended(), rx);
    let l = &load;
    wait_for("some requests", DEADLINE, move || async move {
        (l.snapshot().ok >= 10).then_some(())
    })
    .await;
    let report = load.stop_and_wait().await;
    assert_eq!(report.stopped_by, Some(StopReason::Stopped), "{report}");
    assert!(report.elapsed < DEADLINE, "{report}");
    assert_eq!(report.failed(), 0, "{report}");
}

#[tokio::test]
async fn no_endpoint_means_waiting_not_failing() {
    let a = Backend::start("a").await;
    let (tx, rx) = watch::channel(Vec::new());
    let load = Load::spawn(
        LoadConfig {
            concurrency: 2,
            max_requests: 20,
            ..open_ended()
        },
        rx,
    );
    let l = &load;
    wait_for("both workers to wait", DEADLINE, move || async move {
        (l.snapshot().endpoint_waits >= 2).then_some(())
    })
    .await;
    tx.send_replace(vec![a.addr]);
    let report = load.wait().await;
    assert_eq!((report.sent, report.ok, report.failed()), (20, 20, 0));
    assert_eq!(report.endpoint_waits, 2, "{report}");
    assert!(report.longest_endpoint_wait > Duration::ZERO, "{report}");
    assert!(report.to_string().contains("waited for endpoints 2 times"));
}

#[tokio::test]
async fn waiting_too_long_for_an_endpoint_is_a_failure() {
    let (_tx, rx) = watch::channel(Vec::new());
    let report = run(
        LoadConfig {
            concurrency: 1,
            max_requests: 3,
            max_endpoint_wait: Duration::from_millis(50),
            ..open_ended()
        },
        rx,
    )
    .await;
    assert_eq!(report.stopped_by, Some(StopReason::Count));
    assert_eq!(
        (report.sent, report.no_endpoint, report.failed()),
        (3, 3, 3)
    );
    assert!(report.to_string().contains("no-endpoint x3"), "{report}");
}

#[tokio::test]
async fn a_closed_endpoint_channel_with_nothing_in_it_ends_the_load() {
    let (tx, rx) = watch::channel(Vec::new());
    drop(tx);
    let report = run(open_ended(), rx).await;
    assert_eq!(report.stopped_by, Some(StopReason::EndpointsClosed));
    assert_eq!(report.sent, 0);
}

#[tokio::test]
async fn a_slow_answer_is_a_timeout() {
    let a = Backend::start("a").await;
    a.set(Behaviour {
        delay: Duration::from_secs(5),
        ..Default::default()
    });
    let (_tx, rx) = watch::channel(vec![a.addr]);
    let report = run(
        LoadConfig {
            concurrency: 1,
            max_requests: 2,
            request_timeout: Duration::from_millis(200),
            ..open_ended()
        },
        rx,
    )
    .await;
    assert_eq!(report.errors.get(&(ErrorKind::Timeout, a.addr)), Some(&2));
    assert_eq!(report.failed_on(a.addr), 2, "{report}");
}

/// A server on 127.0.0.1 that answers the first request on each connection and keeps the
/// connection open, then closes it unanswered when the next request arrives: a server
/// closing an idle keep-alive connection just as a request goes out on it.
async fn closes_reused_connections() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        // A test makes a handful of connections; the task is aborted at its end.
        for _ in 0..64 {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                // Each turn reads more of the buffer: bounded by its size.
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
                    }
                    if n == buf.len() {
                        return;
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if conn.write_all(answer).await.is_err() {
                    return;
                }
                let _ = conn.read(&mut buf).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_reused_connection_closed_under_a_request_is_retried_once_and_counted() {
    let (server, task) = closes_reused_connections().await;
    let (_tx, rx) = watch::channel(vec![server]);
    let cfg = LoadConfig {
        concurrency: 1,
        max_requests: 3,
        ..open_ended()
    };
    let report = run(cfg.clone(), rx.clone()).await;
    // Requests 2 and 3 each meet the close on the connection request 1 (then 2) left open.
    assert_eq!((report.ok, report.failed()), (3, 0), "{report}");
    assert_eq!(report.retries(), 2, "{report}");
    assert_eq!(report.first_retries.len(), 2);
    assert!(
        report.first_retries[0].contains("closed on a reused connection"),
        "{:?}",
        report.first_retries
    );
    assert!(report.to_string().contains("2 idle-close retries"));

    let report = run(
        LoadConfig {
            retry_idle_close: false,
            ..cfg
        },
        rx,
    )
    .await;
    // Without retries, request 2 fails; request 3 goes on a new connection.
    assert_eq!((report.ok, report.failed(), report.retries()), (2, 1, 0));
    assert_eq!(report.errors.get(&(ErrorKind::Closed, server)), Some(&1));
    task.abort();
}
