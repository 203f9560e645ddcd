//! Tracing through the real binary: W3C trace context continued (or started) and sent
//! upstream with each attempt's own span as parent, spans for the request and every
//! attempt exported over OTLP/HTTP to a receiver the test starts, nothing recorded below
//! the sampling ratio, and a dead collector costing the requests nothing.

use std::time::Duration;

use bytes::Bytes;
use parapet_tests::{
    admin,
    backend::{Backend, Behaviour},
    client::Client,
    otlp::{Receiver, Span},
    pool_yaml, route_yaml, standalone, wait_for,
};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn table(bad: &Backend, good: &Backend) -> String {
    format!(
        "{}{}",
        pool_yaml("p", &[bad.port(), good.port()], ""),
        route_yaml(
            "r",
            "['*']",
            "    - backends: [{pool: p}]\n      retries: {attempts: 3, retryOn: [GatewayError], backoffBase: 1ms, backoffMax: 5ms, budgetPercent: 100, budgetMinPerSecond: 100}"
        )
    )
}

fn traceparent(trace: &str, span: &str, flags: &str) -> String {
    format!("00-{trace}-{span}-{flags}")
}

async fn get_with(c: &Client, dp: &parapet_tests::dataplane::Dataplane, tp: &str) -> u16 {
    let r = c
        .send(
            dp.proxy,
            http::Method::GET,
            "x",
            "/orders",
            &[("traceparent", tp), ("tracestate", "bank=7")],
            Bytes::new(),
        )
        .await
        .expect("the proxy answers");
    r.status.as_u16()
}

/// The (trace, parent span, flags) of the `traceparent` a backend last received.
fn received(b: &Backend) -> (String, String, String) {
    let h = b.last_headers().expect("the backend was called");
    let tp = h
        .get("traceparent")
        .expect("a traceparent went upstream")
        .to_str()
        .unwrap()
        .to_string();
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    (p[1].into(), p[2].into(), p[3].into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_is_one_trace_with_a_span_per_attempt() {
    let otlp = Receiver::start().await;
    let (bad, good) = (Backend::start("bad").await, Backend::start("good").await);
    bad.set(Behaviour {
        status: Some(503),
        ..Default::default()
    });
    let endpoint = otlp.endpoint();
    let (dp, _dir) = standalone(
        &table(&bad, &good),
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-sampling-ratio",
            "1",
            "--otlp-batch-delay",
            "50ms",
        ],
    )
    .await;
    let c = Client::new();
    // Round robin: within two requests one starts on the failing backend and is retried.
    let mut retried = None;
    for i in 0..2u32 {
        let trace = format!("{TRACE:.24}{i:08x}");
        let before = bad.hits();
        assert_eq!(
            get_with(&c, &dp, &traceparent(&trace, CALLER_SPAN, "01")).await,
            200
        );
        if bad.hits() > before {
            retried = Some(trace);
            break;
        }
    }
    let trace = retried.expect("one request met the failing backend first");

    let spans: Vec<Span> = wait_for(
        "the request's spans at the collector",
        Duration::from_secs(10),
        || {
            let spans: Vec<Span> = otlp
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace)
                .collect();
            let done = spans.iter().filter(|s| s.kind == 3).count() == 2
                && spans.iter().any(|s| s.kind == 2);
            async move { done.then_some(spans) }
        },
    )
    .await;
    let server: Vec<&Span> = spans.iter().filter(|s| s.kind == 2).collect();
    assert_eq!(server.len(), 1, "{spans:#?}");
    let server = server[0];
    assert_eq!(
        server.parent_span_id, CALLER_SPAN,
        "the caller's span is the parent"
    );
    assert_eq!(server.service, "parapet-dataplane");
    assert_eq!(
        server.attributes.get("http.route").map(String::as_str),
        Some("default/r/0")
    );
    assert_eq!(
        server
            .attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("200")
    );
    let mut attempts: Vec<&Span> = spans.iter().filter(|s| s.kind == 3).collect();
    attempts.sort_by_key(|s| s.attributes.get("parapet.attempt").cloned());
    let kinds: Vec<&str> = attempts
        .iter()
        .map(|s| s.attributes["parapet.attempt.kind"].as_str())
        .collect();
    assert_eq!(kinds, ["first", "retry"], "{attempts:#?}");
    for a in &attempts {
        assert_eq!(a.parent_span_id, server.span_id);
        assert_eq!(
            a.attributes.get("parapet.cluster").map(String::as_str),
            Some("default/p")
        );
    }
    assert_eq!(attempts[0].attributes["http.response.status_code"], "503");
    assert_eq!(
        attempts[0].attributes["server.address"],
        format!("127.0.0.1:{}", bad.port())
    );
    assert_eq!(attempts[0].status_code, 2, "a 503 attempt is an error");
    assert_eq!(
        attempts[1].attributes["server.address"],
        format!("127.0.0.1:{}", good.port())
    );
    // Each backend saw the trace with its own attempt's span as parent.
    assert_eq!(
        received(&bad),
        (trace.clone(), attempts[0].span_id.clone(), "01".into())
    );
    assert_eq!(
        received(&good),
        (trace.clone(), attempts[1].span_id.clone(), "01".into())
    );
    let state = good
        .last_headers()
        .unwrap()
        .get("tracestate")
        .map(|v| v.to_str().unwrap().to_string());
    assert_eq!(state.as_deref(), Some("bank=7"), "tracestate travels on");
    println!("trace {trace}:");
    for s in std::iter::once(server).chain(attempts.iter().copied()) {
        println!(
            "  {} {} parent {} {:?}",
            s.span_id, s.name, s.parent_span_id, s.attributes
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_ratio_nothing_is_recorded_but_the_trace_travels() {
    let otlp = Receiver::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let endpoint = otlp.endpoint();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("access.log");
    let (dp, _dir) = standalone(
        &table(&a, &b),
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-sampling-ratio",
            "0",
            "--otlp-batch-delay",
            "50ms",
            "--access-log",
            "--access-log-format",
            "json",
            "--access-log-path",
            log.to_str().unwrap(),
        ],
    )
    .await;
    let c = Client::new();
    // No caller context: a trace is started, not recorded, and still sent upstream.
    for _ in 0..20 {
        assert_eq!(c.get(dp.proxy, "x", "/").await.unwrap().status, 200);
    }
    let (trace, _, flags) = received(&b);
    assert_eq!(flags, "00");
    assert_eq!(trace.len(), 32);
    // The access log names the trace the data plane started.
    let logged = wait_for(
        "the access log to name the started trace",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let found = text
                .lines()
                .any(|l| l.contains(&format!("\"trace_id\":\"{trace}\"")));
            async move { found.then_some(()) }
        },
    )
    .await;
    let () = logged;
    // An unsampled caller: its trace id goes on, unrecorded.
    assert_eq!(
        get_with(&c, &dp, &traceparent(TRACE, CALLER_SPAN, "00")).await,
        200
    );
    let last = if a.last_headers().is_some_and(|h| {
        h.get("traceparent")
            .is_some_and(|v| v.to_str().unwrap().contains(TRACE))
    }) {
        &a
    } else {
        &b
    };
    assert_eq!(received(last).0, TRACE);
    assert_eq!(received(last).2, "00");
    // A sampled caller is recorded whatever the ratio; once its spans are in, nothing else
    // was sent before them (spans are exported in the order they end).
    let sampled = "0af7651916cd43dd8448eb211c80319c";
    assert_eq!(
        get_with(&c, &dp, &traceparent(sampled, CALLER_SPAN, "01")).await,
        200
    );
    wait_for(
        "the sampled request's spans",
        Duration::from_secs(10),
        || {
            let n = otlp
                .spans()
                .iter()
                .filter(|s| s.trace_id == sampled)
                .count();
            async move { (n >= 2).then_some(()) }
        },
    )
    .await;
    let others: Vec<String> = otlp
        .spans()
        .into_iter()
        .filter(|s| s.trace_id != sampled)
        .map(|s| s.trace_id)
        .collect();
    assert!(
        others.is_empty(),
        "unsampled requests were recorded: {others:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_the_requests_nothing() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}/v1/traces", closed.local_addr().unwrap());
    drop(closed);
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (dp, _dir) = standalone(
        &table(&a, &b),
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-sampling-ratio",
            "1",
            "--otlp-batch-delay",
            "20ms",
            "--otlp-queue",
            "64",
        ],
    )
    .await;
    let c = Client::new();
    let started = tokio::time::Instant::now();
    for _ in 0..500 {
        assert_eq!(c.get(dp.proxy, "x", "/").await.unwrap().status, 200);
    }
    let took = started.elapsed();
    let admin = dp.admin;
    let failed = wait_for(
        "failed exports to be counted",
        Duration::from_secs(10),
        || {
            let c = c.clone();
            async move {
                let n = admin::metric(&c, admin, "parapet_trace_spans_failed_total").await;
                (n > 0.0).then_some(n)
            }
        },
    )
    .await;
    println!("500 requests with a dead collector in {took:?}; {failed} spans failed to export");
}
