//! Mirrors (`ForwardAction::mirrors`): a copy of a request goes to one endpoint of another
//! cluster, from a task of its own, and its answer is dropped. The request never waits for
//! a copy, and nothing that happens to one reaches it.

use bytes::Bytes;
use http::{Request, Uri, uri::Scheme};
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::{
    forward::{Exchange, RequestBody},
    problem::{empty, full},
};
use crate::{failover, snapshot::RouteMirrors};

/// Sends the copies `mirrors` select for this request (each with its share), as the
/// request goes upstream: same method, URI and head after rewrites and edits, and the
/// body when it is kept in full. A request whose body streams, or that upgrades, is not
/// copied (counted as skipped).
pub(super) fn send(ex: &Exchange<'_>, body: &RequestBody, mirrors: &RouteMirrors, upgrade: bool) {
    for (cluster, per_million) in &mirrors.targets {
        if *per_million < 1_000_000 && rand::random_range(0..1_000_000u32) >= *per_million {
            continue;
        }
        let bytes = match body {
            RequestBody::Replayable(b) if !upgrade => b.clone(),
            _ => {
                mirrors.metrics.skipped.inc();
                continue;
            }
        };
        // An endpoint of the mirror's pool, not one this request tried: a copy never counts
        // against the endpoints' outlier verdicts.
        let Some(picked) = failover::pick(cluster, ex.hash, &[], Instant::now()) else {
            mirrors.metrics.failed.inc();
            continue;
        };
        let Some(req) = copy(ex, &picked, bytes) else {
            mirrors.metrics.failed.inc();
            continue;
        };
        let client = picked.cluster.client.clone();
        let (sent, failed) = (mirrors.metrics.sent.clone(), mirrors.metrics.failed.clone());
        // Bounded by the request's deadline, as the request itself is.
        let deadline = ex.deadline;
        tokio::spawn(async move {
            let exchange = async {
                let resp = client.request(req).await.ok()?;
                // Read to its end so the connection can serve the next copy.
                resp.into_body().collect().await.ok()
            };
            match tokio::time::timeout_at(deadline, exchange).await {
                Ok(Some(_)) => sent.inc(),
                _ => failed.inc(),
            };
        });
    }
}

/// The copy for `picked`'s endpoint: the upstream head with the forwarding headers.
fn copy(
    ex: &Exchange<'_>,
    picked: &failover::Picked,
    body: Bytes,
) -> Option<Request<super::body::ProxyBody>> {
    let mut head = ex.parts.clone();
    ex.forwarding.apply(&mut head.headers);
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(if picked.cluster.spec.tls.is_some() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    });
    uri.authority = Some(picked.endpoint.authority().clone());
    uri.path_and_query = Some(ex.path_and_query.clone());
    head.uri = Uri::from_parts(uri).ok()?;
    let body = if body.is_empty() { empty() } else { full(body) };
    Some(Request::from_parts(head, body))
}
