//! Distributed tracing with OpenTelemetry: the W3C trace context (`traceparent`,
//! `tracestate`) of a request is continued, or a trace started, and recorded under a
//! sampling ratio (parent-based: a sampled caller's trace is always recorded). A request
//! gets a server span; its rate-limit decision, cache lookup and each upstream attempt
//! (marked first, retry, hedge or failover) get child spans, and each attempt carries its
//! own span's context upstream.
//!
//! Spans go to a bounded queue that a thread of the SDK's drains in batches to an OTLP/HTTP
//! (protobuf) collector: a full queue drops spans, a dead collector costs the request path
//! nothing. The batches are posted by this runtime's HTTP client (`export`).

mod config;
mod export;

use std::{
    borrow::Cow,
    sync::atomic::{AtomicU32, Ordering},
};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    Context, KeyValue,
    propagation::{Extractor, TextMapPropagator},
    trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider},
};

pub use self::config::TraceConfig;
use crate::metrics::TraceMetrics;

/// The tracer the proxy starts spans with.
pub struct Tracer {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    propagator: TraceContextPropagator,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer").finish_non_exhaustive()
    }
}

/// Why the proxy sent an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    First,
    Retry,
    Hedge,
}

impl Attempt {
    fn as_str(self) -> &'static str {
        match self {
            Attempt::First => "first",
            Attempt::Retry => "retry",
            Attempt::Hedge => "hedge",
        }
    }
}

impl Tracer {
    /// Starts the exporter (posting on `runtime`, counting in `metrics`). Errors say which
    /// flag is wrong.
    pub fn start(
        config: &TraceConfig,
        runtime: tokio::runtime::Handle,
        metrics: TraceMetrics,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&config.ratio),
            "--otlp-sampling-ratio must be between 0 and 1, not {}",
            config.ratio
        );
        let uri: http::Uri = config.endpoint.parse().map_err(|e| {
            anyhow::anyhow!("--otlp-endpoint {:?} is not a URL: {e}", config.endpoint)
        })?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http") && uri.host().is_some(),
            "--otlp-endpoint must be an http:// URL with a host (e.g. http://collector:4318/v1/traces), not {:?}",
            config.endpoint
        );
        let exporter = export::exporter(config, runtime, metrics)?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(config.queue.max(1))
            .with_max_export_batch_size(config.queue.clamp(1, 512))
            .with_scheduled_delay(config.delay)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch)
                    .build(),
            )
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service.clone())
                    .build(),
            )
            .build();
        Ok(Self {
            tracer: provider.tracer("parapet"),
            provider,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// The server span of a request: a child of the caller's context when the request
    /// carries a valid `traceparent`, else the root of a new trace.
    pub fn request(&self, method: &http::Method, path: &str, headers: &HeaderMap) -> RequestSpan {
        let parent = self.propagator.extract(&Headers(headers));
        // Named and described only once sampled: an unrecorded span costs no copies.
        let mut span = self
            .tracer
            .span_builder(span_name(method))
            .with_kind(SpanKind::Server)
            .start_with_context(&self.tracer, &parent);
        if span.is_recording() {
            span.set_attribute(KeyValue::new(
                "http.request.method",
                method.as_str().to_owned(),
            ));
            span.set_attribute(KeyValue::new("url.path", path.to_owned()));
        }
        RequestSpan {
            cx: parent.with_span(span),
            attempts: AtomicU32::new(0),
        }
    }

    /// A child of `parent` for one decision of the request (`rate limit`, `cache`), ended
    /// at once with its outcome as attribute `key`.
    pub fn step(
        &self,
        parent: &RequestSpan,
        name: &'static str,
        key: &'static str,
        outcome: &'static str,
    ) {
        if !parent.recording() {
            return;
        }
        let mut span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_attributes([KeyValue::new(key, outcome)])
            .start_with_context(&self.tracer, &parent.cx);
        span.end();
    }

    /// A client span for an upstream attempt (numbered from 1 in the order they are sent;
    /// `failover`: to the backup pool); its context goes upstream with the request.
    pub fn attempt(
        &self,
        parent: &RequestSpan,
        kind: Attempt,
        failover: bool,
        cluster: &str,
        endpoint: &str,
    ) -> AttemptSpan {
        let n = parent.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        let span = if parent.recording() {
            self.tracer
                .span_builder("upstream attempt")
                .with_kind(SpanKind::Client)
                .with_attributes([
                    KeyValue::new("parapet.attempt", i64::from(n)),
                    KeyValue::new("parapet.attempt.kind", kind.as_str()),
                    KeyValue::new("parapet.failover", failover),
                    KeyValue::new("parapet.cluster", cluster.to_owned()),
                    KeyValue::new("server.address", endpoint.to_owned()),
                ])
                .start_with_context(&self.tracer, &parent.cx)
        } else {
            // Not recorded: the request's own (non-recording) context goes upstream, so the
            // trace id and the caller's sampling decision still travel on.
            return AttemptSpan {
                cx: parent.cx.clone(),
                recording: false,
            };
        };
        AttemptSpan {
            cx: parent.cx.with_span(span),
            recording: true,
        }
    }

    /// Puts `cx`'s trace context on an upstream request, replacing the caller's.
    pub fn inject(&self, attempt: &AttemptSpan, headers: &mut HeaderMap) {
        let span = attempt.cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        // `00-<trace>-<span>-<flags>`, written into one buffer (the propagator formats a
        // string, then the header copies it).
        let mut tp = [0u8; 55];
        tp[..3].copy_from_slice(b"00-");
        hex_into(&mut tp[3..35], &sc.trace_id().to_bytes());
        tp[35] = b'-';
        hex_into(&mut tp[36..52], &sc.span_id().to_bytes());
        tp[52] = b'-';
        hex_into(&mut tp[53..55], &[sc.trace_flags().to_u8() & 1]);
        if let Ok(v) = HeaderValue::from_bytes(&tp) {
            headers.insert(TRACEPARENT, v);
        }
        let state = sc.trace_state().header();
        if !state.is_empty()
            && let Ok(v) = HeaderValue::from_str(&state)
        {
            headers.insert(TRACESTATE, v);
        } else {
            headers.remove(TRACESTATE);
        }
    }

    /// Exports what is queued; at shutdown.
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

/// A request's server span and its trace context.
pub struct RequestSpan {
    cx: Context,
    /// Attempts started, for their numbers.
    attempts: AtomicU32,
}

impl RequestSpan {
    fn recording(&self) -> bool {
        self.cx.span().is_recording()
    }

    /// The trace id (32 lower-case hex digits), for access logs.
    pub fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    pub fn set_route(&self, route: &str) {
        if self.recording() {
            self.cx
                .span()
                .set_attribute(KeyValue::new("http.route", route.to_owned()));
        }
    }

    /// Ends the span with the answer's status (5xx marks it as an error).
    pub fn end(self, status: u16) {
        let span = self.cx.span();
        if span.is_recording() {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                span.set_status(Status::error(Cow::Borrowed("server error")));
            }
        }
        span.end();
    }
}

/// One upstream attempt's span.
pub struct AttemptSpan {
    cx: Context,
    recording: bool,
}

impl AttemptSpan {
    /// Ends the span with the upstream status, or the reason the attempt failed.
    pub fn end(self, outcome: Result<u16, &str>) {
        if !self.recording {
            return;
        }
        let span = self.cx.span();
        match outcome {
            Ok(status) => {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                if status >= 500 {
                    span.set_status(Status::error(Cow::Borrowed("upstream error")));
                }
            }
            Err(why) => {
                span.set_attribute(KeyValue::new("error.type", why.to_owned()));
                span.set_status(Status::error(Cow::Owned(why.to_owned())));
            }
        }
        span.end();
    }
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A span name for the method that needs no copy: the standard ones, else `HTTP`
/// (OpenTelemetry's convention for other methods).
fn span_name(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        _ => "HTTP",
    }
}

/// Lower-case hex of `bytes` into `out` (twice as long).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests;
