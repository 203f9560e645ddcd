//! The last stage: an upstream response on its way back (hop-by-hop headers stripped, `Via`
//! and `x-request-id` set, bytes counted, the deadline and the breaker slot held until the
//! body ends), or the gateway's own answer when there is none.

use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use super::{
    body::{Bounded, Counted, ProxyBody},
    forward::{Answer, Outcome},
    headers::{X_REQUEST_ID, append_via, strip_hop_by_hop, upgrade_name},
    problem::{empty, problem},
};
use crate::{breaker, upstream::UpstreamBody};

/// Passes an upstream response on. `deadline` bounds the body too (not for upgrades).
/// `upgrade`: the client's side of a switch the rule allows, and the protocol it asked for;
/// a tunnel opens only when the upstream's 101 names that protocol.
pub(super) fn upstream(
    answer: Answer,
    request_id: &HeaderValue,
    upgrade: Option<(hyper::upgrade::OnUpgrade, HeaderValue)>,
    counter: &Counter,
    deadline: Option<Instant>,
) -> Response<ProxyBody> {
    let Answer {
        response, permit, ..
    } = answer;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let asked = upgrade.as_ref().and_then(|(_, p)| upgrade_name(p));
        let answered = response
            .headers()
            .get(header::UPGRADE)
            .and_then(upgrade_name);
        let same = asked.is_some_and(|a| answered.is_some_and(|b| a.eq_ignore_ascii_case(b)));
        let Some((down, _)) = upgrade.filter(|_| same) else {
            // A switch nobody asked for, or to another protocol, would leave the client
            // speaking it to the backend with no gateway in between.
            tracing::debug!("upstream switched protocols without being asked; 502");
            return problem(
                StatusCode::BAD_GATEWAY,
                "the upstream switched to a protocol the request did not ask for",
                Some(request_id),
            );
        };
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
    if matches!(body, UpstreamBody::Hyper(_))
        && parts.headers.contains_key(header::TRANSFER_ENCODING)
    {
        // The coding framed the body (RFC 9112 §6.3): a length beside it is not the body's
        // and would cut it short downstream. Parapet's own client drops it as it reads.
        parts.headers.remove(header::CONTENT_LENGTH);
    }
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
        Outcome::ClientTimeout => {
            let mut r = problem(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive within the route timeout",
                rid,
            );
            // The rest of the body is not read: the connection cannot carry another request.
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
