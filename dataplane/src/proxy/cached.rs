//! The cache stage (between prepare and forward): GET and HEAD requests of rules with a
//! CachePolicy go through the response cache, whose misses and refreshes come back here
//! to the normal forwarding path (balancing, retries, failover).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header, uri::PathAndQuery};
use parapet_crds::snapshot::RouteAction;
use tokio::time::Instant;

use super::{
    body::ProxyBody,
    conn::ConnInfo,
    forward::{self, Exchange, Outcome, RequestBody},
    headers::{X_REQUEST_ID, append_via},
    prepare::{forwarding, upstream_head},
    respond::{outcome_response, upstream},
};
use crate::{
    cache::Origin,
    metrics::Metrics,
    snapshot::{ClusterRuntime, Runtime},
};

/// The origin behind the cache for one request: the route's forwarding path, owned so
/// background refreshes can outlive the request.
#[derive(Clone)]
pub(super) struct RouteOrigin {
    pub conn: ConnInfo,
    /// The peer is a trusted proxy (its forwarding headers are kept).
    pub trusted: bool,
    /// The request's authority as the client sent it.
    pub authority: Option<HeaderValue>,
    pub table: Arc<Runtime>,
    pub route: usize,
    pub cluster: Arc<ClusterRuntime>,
    pub path_and_query: PathAndQuery,
    pub hash: Option<u64>,
    /// The request's deadline; refreshes after it get the route's timeout afresh.
    pub deadline: Instant,
    pub timeout: Duration,
    pub hedge_after: Option<Duration>,
    pub request_id: HeaderValue,
    pub metrics: Arc<Metrics>,
}

impl Origin for RouteOrigin {
    async fn fetch(&self, req: Request<ProxyBody>) -> Response<ProxyBody> {
        let now = Instant::now();
        let deadline = if self.deadline > now {
            self.deadline
        } else {
            now + self.timeout
        };
        let Some(RouteAction::Forward(forward)) =
            self.table.router.get(self.route).map(|r| &r.action)
        else {
            return outcome_response(Outcome::NoEndpoint, Some(&self.request_id));
        };
        let route = &self.table.routes[self.route];
        let mut parts = req.into_parts().0;
        upstream_head(&mut parts, forward, route.request_edits.as_ref(), false);
        let mut exchange = Exchange {
            forwarding: forwarding(
                self.conn,
                self.authority.as_ref().and_then(|a| a.to_str().ok()),
                self.trusted,
            ),
            route,
            primary: &self.cluster,
            policy: forward.retry.as_ref(),
            parts,
            path_and_query: self.path_and_query.clone(),
            hash: self.hash,
            deadline,
            started: now,
            repeatable: true,
            hedge_after: self.hedge_after,
            pace: None,
        };
        // Boxed: a miss can afford an allocation, and a hit's future stays small.
        match Box::pin(forward::forward(
            &mut exchange,
            RequestBody::Replayable(Bytes::new()),
        ))
        .await
        {
            Ok(mut answer) => {
                // Edited before the cache keeps it: hits carry the same edits.
                if let Some(edits) = &route.response_edits {
                    edits.apply(answer.response.headers_mut());
                }
                upstream(
                    answer,
                    &self.request_id,
                    None,
                    &self.metrics.response_bytes,
                    Some(deadline),
                )
            }
            Err(outcome) => outcome_response(outcome, Some(&self.request_id)),
        }
    }
}

/// Per-exchange headers on an answer that may come from the cache.
pub(super) fn finish(resp: &mut Response<ProxyBody>, request_id: &HeaderValue) {
    resp.headers_mut().insert(X_REQUEST_ID, request_id.clone());
    if !resp.headers().contains_key(header::VIA) {
        append_via(resp.headers_mut());
    }
}
