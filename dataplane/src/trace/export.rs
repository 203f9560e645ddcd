//! The OTLP/HTTP exporter, posting with a hyper client on the proxy's runtime: the SDK's
//! batch thread has no runtime of its own, so each post is handed to ours and awaited
//! through a oneshot channel.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{SpanData, SpanExporter},
};

use super::config::TraceConfig;
use crate::metrics::TraceMetrics;

pub(super) fn exporter(
    config: &TraceConfig,
    runtime: tokio::runtime::Handle,
    metrics: TraceMetrics,
) -> anyhow::Result<Counting> {
    let client = Post {
        client: Client::builder(TokioExecutor::new()).build_http(),
        runtime,
        timeout: config.timeout,
    };
    let inner = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.endpoint.clone())
        .with_timeout(config.timeout)
        .build()
        .map_err(|e| anyhow::anyhow!("the OTLP exporter cannot start: {e}"))?;
    Ok(Counting { inner, metrics })
}

/// The SDK's OTLP exporter, counting what it exports and what fails.
pub(super) struct Counting {
    inner: opentelemetry_otlp::SpanExporter,
    metrics: TraceMetrics,
}

impl std::fmt::Debug for Counting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counting").finish_non_exhaustive()
    }
}

impl SpanExporter for Counting {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.inner.export(batch).await;
        let counter = match result {
            Ok(()) => &self.metrics.spans_exported,
            Err(_) => &self.metrics.spans_failed,
        };
        counter.inc_by(n);
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[derive(Debug, Clone)]
struct Post {
    client: Client<HttpConnector, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

#[async_trait::async_trait]
impl HttpClient for Post {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (client, timeout) = (self.client.clone(), self.timeout);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.runtime.spawn(async move {
            let answer = tokio::time::timeout(timeout, async {
                let resp = client.request(request.map(Full::new)).await?;
                let (parts, body) = resp.into_parts();
                let body = body.collect().await?.to_bytes();
                Ok::<_, HttpError>(Response::from_parts(parts, body))
            })
            .await
            .unwrap_or_else(|_| Err("the collector did not answer in time".into()));
            let _ = tx.send(answer);
        });
        rx.await
            .unwrap_or_else(|_| Err("the runtime stopped before the post ended".into()))
    }
}
