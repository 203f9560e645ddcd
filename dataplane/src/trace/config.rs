//! What the `--otlp-*` flags set.

use std::time::Duration;

/// How the data plane traces (its `--otlp-*` flags).
#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// `http://collector:4318/v1/traces`.
    pub endpoint: String,
    /// Share of traces started here that are recorded, 0.0 to 1.0.
    pub ratio: f64,
    /// Spans waiting for export; past it, spans are dropped.
    pub queue: usize,
    /// Longest a span waits before its batch goes.
    pub delay: Duration,
    pub timeout: Duration,
    /// The `service.name` of the spans.
    pub service: String,
}
