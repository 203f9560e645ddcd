use std::time::Duration;

use super::*;

fn tracer(ratio: f64) -> Tracer {
    let config = TraceConfig {
        // Nothing listens there: these tests look at contexts, not at exports.
        endpoint: "http://127.0.0.1:9/v1/traces".into(),
        ratio,
        queue: 64,
        delay: Duration::from_secs(60),
        timeout: Duration::from_millis(100),
        service: "test".into(),
    };
    Tracer::start(
        &config,
        tokio::runtime::Handle::current(),
        Default::default(),
    )
    .expect("the tracer starts")
}

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

/// (trace id, span id, flags) of the traceparent an attempt sends upstream.
fn sent(t: &Tracer, req: &RequestSpan, kind: Attempt) -> (String, String, String, Option<String>) {
    let attempt = t.attempt(req, kind, false, "ns/pool", "10.0.0.1:80");
    let mut out = HeaderMap::new();
    t.inject(&attempt, &mut out);
    attempt.end(Ok(200));
    let tp = out
        .get("traceparent")
        .expect("a traceparent goes upstream")
        .to_str()
        .unwrap();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!((parts.len(), parts[0]), (4, "00"), "{tp}");
    (
        parts[1].into(),
        parts[2].into(),
        parts[3].into(),
        out.get("tracestate")
            .map(|v| v.to_str().unwrap().to_string()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_trace_is_continued_with_our_span_as_parent() {
    let t = tracer(0.0);
    let req = t.request(
        &http::Method::GET,
        "/",
        &headers(&[("traceparent", PARENT), ("tracestate", "vendor=abc")]),
    );
    assert_eq!(req.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    // Sampled by the caller: recorded here even at ratio 0.
    assert!(req.recording());
    let (trace, span, flags, state) = sent(&t, &req, Attempt::Retry);
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(
        span, "00f067aa0ba902b7",
        "the upstream's parent is our attempt span"
    );
    assert_eq!(flags, "01");
    assert_eq!(state.as_deref(), Some("vendor=abc"));
    req.end(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_caller_is_not_recorded_but_its_trace_travels_on() {
    let t = tracer(1.0);
    let req = t.request(
        &http::Method::GET,
        "/",
        &headers(&[("traceparent", UNSAMPLED)]),
    );
    assert!(!req.recording());
    let (trace, _, flags, _) = sent(&t, &req, Attempt::First);
    assert_eq!(
        (trace.as_str(), flags.as_str()),
        ("4bf92f3577b34da6a3ce929d0e0e4736", "00")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_caller_the_ratio_decides_and_a_trace_is_started_either_way() {
    let none = tracer(0.0);
    let req = none.request(&http::Method::GET, "/", &HeaderMap::new());
    assert!(!req.recording());
    let (trace, _, flags, _) = sent(&none, &req, Attempt::First);
    assert_eq!(flags, "00");
    assert_eq!(trace.len(), 32);
    assert_ne!(trace, "0".repeat(32));

    let all = tracer(1.0);
    let req = all.request(&http::Method::GET, "/", &HeaderMap::new());
    assert!(req.recording());
    assert_eq!(sent(&all, &req, Attempt::Hedge).2, "01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_trace_context_starts_a_new_trace() {
    let t = tracer(1.0);
    for bad in [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "garbage",
    ] {
        let req = t.request(&http::Method::GET, "/", &headers(&[("traceparent", bad)]));
        assert_ne!(
            req.trace_id(),
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "{bad} was taken as a parent"
        );
        assert_ne!(req.trace_id(), "0".repeat(32), "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_that_are_not_urls_are_refused_with_the_fix() {
    let mut c = TraceConfig {
        endpoint: "collector:4318".into(),
        ratio: 0.5,
        queue: 8,
        delay: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        service: "t".into(),
    };
    let e = Tracer::start(&c, tokio::runtime::Handle::current(), Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("--otlp-endpoint must be an http:// URL"), "{e}");
    c.endpoint = "http://collector:4318/v1/traces".into();
    c.ratio = 1.5;
    let e = Tracer::start(&c, tokio::runtime::Handle::current(), Default::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--otlp-sampling-ratio must be between 0 and 1"),
        "{e}"
    );
}
