//! The last stage: an upstream response on its way back (hop-by-hop headers stripped, `Via`
//! and `x-request-id` set, bytes counted, the deadline and the breaker slot held until the
//! body ends), or the gateway's own answer when there is none.

use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use super::{
    body::{Bounded, Counted},
    forward::{Answer, Outcome},
    headers::{X_REQUEST_ID, append_via, strip_hop_by_hop},
    problem::{empty, problem},
};
use crate::{
    breaker,
    upstream::{ProxyBody, UpstreamBody},
};

/// Passes an upstream response on. `deadline` bounds the body too (not for upgrades).
pub(super) fn upstream(
    answer: Answer,
    request_id: &HeaderValue,
    downstream_upgrade: Option<hyper::upgrade::OnUpgrade>,
    counter: &Counter,
    deadline: Option<Instant>,
) -> Response<ProxyBody> {
    let Answer { response, permit } = answer;
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching && let Some(down) = downstream_upgrade {
        let mut resp = response;
        let up = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            // The tunnel holds the pool's slot while it lasts.
            let _permit = permit;
            match (down.await, up.await) {
                (Ok(d), Ok(u)) => {
                    let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                    let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                }
                (d, u) => tracing::debug!(down = d.is_ok(), up = u.is_ok(), "upgrade failed"),
            }
        });
        let (mut parts, _) = resp.into_parts();
        append_via(&mut parts.headers);
        parts.headers.insert(X_REQUEST_ID, request_id.clone());
        return Response::from_parts(parts, empty());
    }
    let (mut parts, body): (_, UpstreamBody) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    append_via(&mut parts.headers);
    parts.headers.insert(X_REQUEST_ID, request_id.clone());
    let body = Counted::new(body, counter.clone());
    Response::from_parts(parts, Bounded::new(body, deadline, permit).boxed())
}

/// A 503 with `retry-after`: the gateway refused at once (breaker, lane), try again soon.
pub(super) fn overloaded(detail: &str, rid: Option<&HeaderValue>) -> Response<ProxyBody> {
    let mut r = problem(StatusCode::SERVICE_UNAVAILABLE, detail, rid);
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(breaker::RETRY_AFTER.as_secs()),
    );
    r
}

pub(super) fn outcome_response(outcome: Outcome, rid: Option<&HeaderValue>) -> Response<ProxyBody> {
    match outcome {
        Outcome::NoEndpoint => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream endpoint is available",
            rid,
        ),
        Outcome::ConnectFailed => problem(
            StatusCode::BAD_GATEWAY,
            "the upstream could not be reached",
            rid,
        ),
        Outcome::Timeout => problem(
            StatusCode::GATEWAY_TIMEOUT,
            "the upstream did not answer within the route timeout",
            rid,
        ),
        Outcome::BodyTooLarge => problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than this gateway accepts",
            rid,
        ),
        Outcome::BadRequestBody => {
            let mut r = problem(
                StatusCode::BAD_REQUEST,
                "the request body is malformed",
                rid,
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
        Outcome::UpstreamFailed => problem(
            StatusCode::BAD_GATEWAY,
            "the upstream connection failed before a response",
            rid,
        ),
        Outcome::Overflow(_) => overloaded(
            "the upstream pool is at its circuit breaker limit; retry shortly",
            rid,
        ),
    }
}
