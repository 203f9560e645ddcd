//! The prepare stage: what goes upstream. The URI's path (with the rule's rewrite), the
//! deadline, the request head (hop-by-hop headers out, forwarding headers in, Host), and the
//! body — buffered when it may have to be sent again.

use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Request, StatusCode, header, request::Parts, uri::PathAndQuery,
};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};
use parapet_crds::snapshot::{ForwardAction, PathMatch};
use std::time::Duration;
use tokio::time::Instant;

use super::{
    ConnInfo, Limits, X_PARAPET_TIMEOUT_MS,
    body::Counted,
    forward::RequestBody,
    headers::{add_forwarding, strip_hop_by_hop},
    rewrite_prefix,
};
use crate::{metrics::Metrics, router::Matched};

/// The upstream path and query, after the rule's prefix rewrite; `None` if the rewrite
/// makes an invalid path.
pub(super) fn upstream_path<B>(
    req: &Request<B>,
    forward: &ForwardAction,
    matched: &Matched<'_>,
) -> Option<PathAndQuery> {
    let new_path: Option<String> = match (&forward.rewrite, &matched.route.matcher.path) {
        (Some(rw), PathMatch::Prefix(_)) => rw
            .path_prefix
            .as_ref()
            .map(|p| rewrite_prefix(req.uri().path(), matched.prefix_len, p)),
        _ => None,
    };
    match (new_path, req.uri().query()) {
        (Some(p), Some(q)) => format!("{p}?{q}").parse().ok(),
        (Some(p), None) => p.parse().ok(),
        (None, _) => Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        ),
    }
}

/// When the whole exchange must be over: the route's timeout from `started`, or the
/// client's `x-parapet-timeout-ms` when shorter (the header is consumed).
pub(super) fn deadline(headers: &mut HeaderMap, timeout_ms: u64, started: Instant) -> Instant {
    let mut timeout = Duration::from_millis(timeout_ms.max(1));
    if let Some(ms) = headers
        .remove(X_PARAPET_TIMEOUT_MS)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
    {
        timeout = timeout.min(Duration::from_millis(ms));
    }
    started + timeout
}

/// The request head as it goes upstream.
pub(super) fn upstream_head(
    parts: &mut Parts,
    conn: ConnInfo,
    authority: Option<&str>,
    forward: &ForwardAction,
    upgrade: bool,
) {
    strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.headers.remove(header::EXPECT);
    let proto = if conn.tls { "https" } else { "http" };
    add_forwarding(&mut parts.headers, conn.peer.ip(), proto, authority);
    if let Some(h) = forward.rewrite.as_ref().and_then(|r| r.hostname.as_deref())
        && let Ok(v) = HeaderValue::from_str(h)
    {
        parts.headers.insert(header::HOST, v);
    } else if !parts.headers.contains_key(header::HOST)
        && let Some(h) = authority.and_then(|h| HeaderValue::from_str(h).ok())
    {
        // HTTP/2 clients send :authority, HTTP/1.1 upstreams need Host.
        parts.headers.insert(header::HOST, h);
    }
    parts.version = http::Version::HTTP_11;
}

/// The body to send. With `replay_length` (the declared length, when a retry or hedge may
/// need the body again) at most `max_replay_bytes`, it is read now, before the deadline;
/// otherwise it streams, once.
pub(super) async fn request_body(
    body: Incoming,
    limits: &Limits,
    metrics: &Metrics,
    replay_length: Option<u64>,
    deadline: Instant,
) -> Result<RequestBody, (StatusCode, &'static str)> {
    let counted = Counted::new(body, metrics.request_bytes.clone());
    let limit = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
    if counted.is_end_stream() {
        return Ok(RequestBody::Replayable(Bytes::new()));
    }
    if replay_length.is_none_or(|n| n > limits.max_replay_bytes) {
        return Ok(RequestBody::Once(Some(
            Limited::new(counted, limit).boxed(),
        )));
    }
    match tokio::time::timeout_at(deadline, Limited::new(counted, limit).collect()).await {
        Ok(Ok(c)) => Ok(RequestBody::Replayable(c.to_bytes())),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than this gateway accepts",
        )),
        Ok(Err(_)) => Err((
            StatusCode::BAD_REQUEST,
            "the request body could not be read",
        )),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive within the route timeout",
        )),
    }
}
