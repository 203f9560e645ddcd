//! The cache stage (between prepare and forward): GET and HEAD requests of rules with a
//! CachePolicy go through the response cache, whose misses and refreshes come back here
//! to the normal forwarding path (balancing, retries, failover).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header, uri::PathAndQuery,
};
use parapet_crds::snapshot::{CachePolicy, RouteAction};
use tokio::time::Instant;

use super::{
    body::ProxyBody,
    conn::ConnInfo,
    forward::{self, Exchange, Outcome, RequestBody},
    headers::{X_REQUEST_ID, append_via, normalise_host},
    prepare::{forwarding, upstream_head},
    respond::{outcome_response, upstream},
};
use crate::{
    accesslog::Tally,
    cache::{Cache, Origin},
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
    /// The request's attempts, for its access-log record (none when the log is off, and
    /// none for a refresh in the background: it is not the request's).
    pub tally: Option<Arc<Tally>>,
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
                &self.conn,
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
            tally: self.tally.as_deref(),
            // A fetch may serve many requests (coalesced misses, refreshes): it belongs to
            // none of their traces.
            trace: None,
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

    fn detached(&self) -> Self {
        Self {
            tally: None,
            ..self.clone()
        }
    }
}

/// Methods that cannot change the resource (RFC 9110 §9.2.1): the only ones that may be
/// answered from the cache, and the only ones that never invalidate it.
pub(super) fn safe(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// After an unsafe request's non-error answer (the caller checks the method), invalidates the entries of its URL, and of
/// the URLs its `Location` and `Content-Location` name on the same origin (RFC 9111 §4.4).
pub(super) fn invalidate_after(
    cache: &Cache,
    policy: &CachePolicy,
    target: &http::Uri,
    status: StatusCode,
    response: &HeaderMap,
    (scheme, host): (&str, &str),
) {
    if !(status.is_success() || status.is_redirection()) {
        return;
    }
    cache.invalidate(policy, scheme, host, target.path(), target.query());
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(target) = response.get(name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if let Some(uri) = same_origin(target, scheme, host) {
            cache.invalidate(policy, scheme, host, uri.path(), uri.query());
        }
    }
}

/// The target of a `Location`-like field when it is on the request's origin: an absolute
/// path, or an absolute URI with the same scheme and host. Relative paths and other origins
/// give `None` (a cache must not invalidate another origin's entries on its word).
fn same_origin(target: &str, scheme: &str, host: &str) -> Option<http::Uri> {
    let uri: http::Uri = target.trim().parse().ok()?;
    match (uri.scheme_str(), uri.authority()) {
        // An absolute path; `//host/…` is a network-path reference, not a path.
        (None, None) if target.trim().starts_with('/') && !target.trim().starts_with("//") => {
            Some(uri)
        }
        (Some(s), Some(a))
            if s.eq_ignore_ascii_case(scheme) && normalise_host(a.as_str()) == host =>
        {
            Some(uri)
        }
        _ => None,
    }
}

/// Per-exchange headers on an answer that may come from the cache.
pub(super) fn finish(resp: &mut Response<ProxyBody>, request_id: &HeaderValue) {
    resp.headers_mut().insert(X_REQUEST_ID, request_id.clone());
    if !resp.headers().contains_key(header::VIA) {
        append_via(resp.headers_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_same_origin_targets_invalidate() {
        let path =
            |t: &str, scheme: &str| same_origin(t, scheme, "api.test").map(|u| u.to_string());
        assert_eq!(path("/a?b=1", "http").as_deref(), Some("/a?b=1"));
        assert_eq!(
            path("http://API.test:8080/a", "http").as_deref(),
            Some("http://API.test:8080/a")
        );
        assert_eq!(path("https://api.test/a", "http"), None);
        assert_eq!(path("http://other.test/a", "http"), None);
        assert_eq!(path("//api.test/a", "http"), None);
        assert_eq!(path("a/b", "http"), None);
    }
}
