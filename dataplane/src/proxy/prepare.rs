//! The prepare stage: what goes upstream. The URI's path (with the rule's rewrite), the
//! deadline, the request head (hop-by-hop headers out, forwarding headers in, Host, the
//! rule's header edits), and the body — buffered when it may have to be sent again (or
//! copied to a mirror).

use bytes::{Bytes, BytesMut};
use http::{
    HeaderMap, HeaderValue, Request, StatusCode, header, request::Parts, uri::PathAndQuery,
};
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;
use parapet_crds::snapshot::{ForwardAction, PathMatch};
use std::time::Duration;
use tokio::time::Instant;

use super::{
    body::{Counted, Pace, Paced, Prefixed},
    conn::ConnInfo,
    edits::HeaderEdits,
    forward::RequestBody,
    headers::X_PARAPET_TIMEOUT_MS,
    headers::{Forwarding, strip_hop_by_hop},
};
use crate::{
    accesslog::Tally, fields::take_field, metrics::Metrics, proxy::body::BoxError, router::Matched,
};

/// Request limits, with defaults in line with Envoy's and nginx's.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_uri_bytes: usize,
    pub max_body_bytes: u64,
    /// Request bodies up to this size are buffered so a retry or hedge can send them again;
    /// larger ones stream once and are never retried.
    pub max_replay_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            max_replay_bytes: 64 * 1024,
        }
    }
}

/// The upstream path and query, after the rule's rewrite (the whole path, or the matched
/// prefix); `None` if the rewrite makes an invalid path.
pub(super) fn upstream_path<B>(
    req: &Request<B>,
    forward: &ForwardAction,
    matched: &Matched<'_>,
) -> Option<PathAndQuery> {
    let new_path: Option<String> = match (&forward.rewrite, &matched.route.matcher.path) {
        (Some(rw), _) if rw.full_path.is_some() => rw.full_path.clone(),
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

/// Replaces the first `prefix_len` bytes of `path` (the matched prefix) with `new_prefix`,
/// keeping exactly one slash at the seam.
pub(super) fn rewrite_prefix(path: &str, prefix_len: usize, new_prefix: &str) -> String {
    let rest = path.get(prefix_len..).unwrap_or("");
    match (new_prefix.ends_with('/'), rest.starts_with('/')) {
        (true, true) => format!("{new_prefix}{}", &rest[1..]),
        (false, false) if !rest.is_empty() => format!("{new_prefix}/{rest}"),
        _ if rest.is_empty() && new_prefix.is_empty() => "/".to_string(),
        _ => format!("{new_prefix}{rest}"),
    }
}

/// When the whole exchange must be over: the route's timeout from `started`, or the
/// client's `x-parapet-timeout-ms` when shorter (the header is consumed).
pub(super) fn deadline(headers: &mut HeaderMap, timeout_ms: u64, started: Instant) -> Instant {
    let mut timeout = Duration::from_millis(timeout_ms.max(1));
    if let Some(ms) = take_field(headers, &X_PARAPET_TIMEOUT_MS)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
    {
        timeout = timeout.min(Duration::from_millis(ms));
    }
    started + timeout
}

/// The forwarding headers each attempt adds (`forward.rs`: into the head for hyper's
/// client, or as it is encoded by Parapet's own).
pub(super) fn forwarding<'a>(
    conn: &ConnInfo,
    authority: Option<&'a str>,
    trusted: bool,
) -> Forwarding<'a> {
    Forwarding {
        client: conn.peer.ip(),
        proto: if conn.is_tls() { "https" } else { "http" },
        host: authority,
        trusted,
    }
}

/// The request head as it goes upstream: hop-by-hop headers out, `Host` rewritten when the
/// rule says so, then the rule's header edits.
pub(super) fn upstream_head(
    parts: &mut Parts,
    forward: &ForwardAction,
    edits: Option<&HeaderEdits>,
    upgrade: bool,
) {
    strip_hop_by_hop(&mut parts.headers, upgrade);
    take_field(&mut parts.headers, &header::EXPECT);
    // `Host` is already the authority the router read (the head check set it, for HTTP/2
    // from :authority); only a rewrite changes it.
    if let Some(h) = forward.rewrite.as_ref().and_then(|r| r.hostname.as_deref())
        && let Ok(v) = HeaderValue::from_str(h)
    {
        parts.headers.insert(header::HOST, v);
    }
    if let Some(edits) = edits {
        edits.apply(&mut parts.headers);
    }
    parts.version = http::Version::HTTP_11;
}

/// The body to send. When `replay` (a retry or hedge may need it again), a body declared at
/// most `max_replay_bytes` long, or without a declared length, is read now (before the
/// deadline): if it ends within the bound it is kept for replay; if not, what was read is
/// sent first and the rest streams after it, once. Otherwise the body streams, once, with a
/// [`Pace`] that follows it.
/// `tally`: where the body's bytes are counted for the access log, when it is on.
pub(super) async fn request_body(
    body: super::body::DownstreamBody,
    limits: &Limits,
    metrics: &Metrics,
    replay: bool,
    declared: Option<u64>,
    deadline: Instant,
    tally: Option<&Tally>,
) -> Result<(RequestBody, Option<Pace>), (StatusCode, &'static str)> {
    let stream = |read: Vec<Frame<Bytes>>, rest| {
        let pace = Pace::default();
        let body = Prefixed::new(read, Paced::new(rest, pace.clone())).boxed();
        Ok((RequestBody::Once(Some(body)), Some(pace)))
    };
    let limit = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
    let body = match body {
        super::body::DownstreamBody::Full(full) => {
            return from_memory(full, limits, metrics, tally);
        }
        other => other,
    };
    if body.is_end_stream() {
        return Ok((RequestBody::Replayable(Bytes::new()), None));
    }
    let counted =
        Counted::new(body, metrics.request_bytes.clone()).also(tally.map(Tally::streamed));
    let mut body = Limited::new(counted, limit);
    if !replay || declared.is_some_and(|n| n > limits.max_replay_bytes) {
        return stream(Vec::new(), body);
    }
    let bound = usize::try_from(limits.max_replay_bytes).unwrap_or(usize::MAX);
    let mut read: Vec<Frame<Bytes>> = Vec::new();
    let mut bytes = 0usize;
    let fail = |e: BoxError| {
        if e.is::<http_body_util::LengthLimitError>() {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is larger than this gateway accepts",
            )
        } else {
            (
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            )
        }
    };
    let timeout = (
        StatusCode::REQUEST_TIMEOUT,
        "the request body did not arrive within the route timeout",
    );
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(timeout),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(fail(e)),
            Ok(Some(Ok(f))) => f,
        };
        match frame.data_ref() {
            Some(d) => bytes += d.len(),
            // Trailers: keep them with the body, which then streams.
            None => {
                read.push(frame);
                return stream(read, body);
            }
        }
        read.push(frame);
        if bytes > bound {
            // Too big to keep: what was read goes first, the rest follows.
            return stream(read, body);
        }
    }
    if read.len() == 1
        && let Some(Ok(d)) = read.pop().map(Frame::into_data)
    {
        return Ok((RequestBody::Replayable(d), None));
    }
    let mut all = BytesMut::with_capacity(bytes);
    for f in read {
        if let Ok(d) = f.into_data() {
            all.extend_from_slice(&d);
        }
    }
    Ok((RequestBody::Replayable(all.freeze()), None))
}

/// A body read whole with its head: sent from memory without a copy; one longer than
/// `max_replay_bytes` is sent once only, as if it had streamed.
fn from_memory(
    full: Option<Bytes>,
    limits: &Limits,
    metrics: &Metrics,
    tally: Option<&Tally>,
) -> Result<(RequestBody, Option<Pace>), (StatusCode, &'static str)> {
    let full = full.unwrap_or_default();
    if full.len() as u64 > limits.max_body_bytes {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than this gateway accepts",
        ));
    }
    metrics.request_bytes.inc_by(full.len() as u64);
    if let Some(t) = tally {
        t.add_received(full.len() as u64);
    }
    if full.len() as u64 > limits.max_replay_bytes {
        return Ok((RequestBody::OnceInMemory(Some(full)), None));
    }
    Ok((RequestBody::Replayable(full), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrites_match_gateway_api_conformance() {
        // httproute-rewrite-path: `/prefix/one` → `/one`, `/strip-prefix` → `/`.
        assert_eq!(rewrite_prefix("/prefix/one/two", 11, "/one"), "/one/two");
        assert_eq!(rewrite_prefix("/strip-prefix/three", 13, "/"), "/three");
        assert_eq!(rewrite_prefix("/strip-prefix", 13, "/"), "/");
        assert_eq!(
            rewrite_prefix("/prefix/rewrite-path-and-modify-headers/one", 39, "/prefix"),
            "/prefix/one"
        );
    }

    fn forward(rewrite: serde_json::Value) -> ForwardAction {
        serde_json::from_value(serde_json::json!({
            "backends": [], "timeoutMs": 1000, "rewrite": rewrite
        }))
        .unwrap()
    }

    fn route(path: PathMatch) -> parapet_crds::snapshot::Route {
        parapet_crds::snapshot::Route {
            name: "r".into(),
            matcher: parapet_crds::snapshot::RouteMatcher {
                path,
                methods: Vec::new(),
                headers: Vec::new(),
                query_params: Vec::new(),
            },
            action: parapet_crds::snapshot::RouteAction::DirectResponse(
                parapet_crds::snapshot::DirectResponse {
                    status: 200,
                    body: String::new(),
                },
            ),
        }
    }

    #[test]
    fn a_full_path_rewrite_replaces_the_path_and_keeps_the_query() {
        let prefix = route(PathMatch::Prefix("/full/one".into()));
        let matched = Matched {
            route: &prefix,
            index: 0,
            prefix_len: 9,
        };
        let req = |uri: &str| Request::get(uri).body(()).unwrap();
        let full = forward(serde_json::json!({"fullPath": "/one"}));
        assert_eq!(
            upstream_path(&req("/full/one/two?x=1&y"), &full, &matched).unwrap(),
            "/one?x=1&y"
        );
        assert_eq!(
            upstream_path(&req("/full/one"), &full, &matched).unwrap(),
            "/one"
        );
        // Any route kind: an exact or regex route has no prefix, but a whole path to replace.
        let exact = route(PathMatch::Exact("/a".into()));
        let matched = Matched {
            route: &exact,
            index: 0,
            prefix_len: 0,
        };
        assert_eq!(upstream_path(&req("/a"), &full, &matched).unwrap(), "/one");
        // No rewrite: the path as it came.
        let none = forward(serde_json::Value::Null);
        assert_eq!(
            upstream_path(&req("/a?q"), &none, &matched).unwrap(),
            "/a?q"
        );
    }

    #[test]
    fn prefix_rewrite_keeps_one_slash() {
        assert_eq!(
            rewrite_prefix("/api/v1/x", 4, "/internal"),
            "/internal/v1/x"
        );
        assert_eq!(rewrite_prefix("/api/v1/x", 4, "/"), "/v1/x");
        assert_eq!(rewrite_prefix("/api", 4, "/internal"), "/internal");
        assert_eq!(rewrite_prefix("/api", 4, "/"), "/");
        assert_eq!(rewrite_prefix("/api/", 4, "/new/"), "/new/");
    }
}
