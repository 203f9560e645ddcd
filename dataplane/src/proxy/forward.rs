//! The forwarding stage: from a prepared upstream request to an upstream response, with
//! failover, retries, hedging and the route's deadline.
//!
//! One request's attempts, in order:
//! 1. `failover::pick` chooses an endpoint (tiers, locality, a different endpoint each try,
//!    probes of ejected endpoints, panic mode).
//! 2. The pool's circuit breaker admits the attempt or refuses it (503, not retried).
//! 3. The attempt runs until its per-try timeout (and never past the deadline); its result
//!    goes to outlier detection.
//! 4. A failure the route's policy retries is retried after a jittered backoff if the
//!    method allows it, the body can be replayed, the budget has a token and time is left.
//!    The last failure is what the client sees: the upstream's own 5xx, or the gateway's
//!    502/504.
//! 5. On hedged routes, if the first attempt has not answered after the hedge delay, a
//!    second one goes to another endpoint; the first usable answer wins, the other attempt
//!    is cancelled.
//!
//! Attempts run inside the request's task (no spawn); without hedging no allocation is
//! made per attempt.

use std::{
    pin::{Pin, pin},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use futures::future::OptionFuture;
use http::{
    Request, Response, Uri, header,
    request::Parts,
    uri::{PathAndQuery, Scheme},
};
use http_body_util::BodyExt;
use hyper::body::Body;
use parapet_crds::snapshot::RetryPolicy;
use tokio::time::Instant;

use super::{
    body::{Pace, ProxyBody},
    headers::Forwarding,
    problem::full,
};
use crate::{
    breaker::{Overflow, Permit},
    endpoint::EndpointHandle,
    failover::{self, Picked},
    outlier::Verdict,
    retry::{self, Denied, Failure},
    snapshot::{ClusterRuntime, RouteRuntime, Runtime},
    upstream::{UpstreamBody, http1},
};

/// Everything the attempts of one request share.
pub(super) struct Exchange<'a> {
    pub table: &'a Runtime,
    pub route: &'a RouteRuntime,
    pub primary: &'a Arc<ClusterRuntime>,
    pub policy: Option<&'a RetryPolicy>,
    /// Request head for upstream (the URI and the forwarding headers are set per attempt).
    pub parts: Parts,
    pub forwarding: Forwarding<'a>,
    pub path_and_query: PathAndQuery,
    pub hash: Option<u64>,
    pub deadline: Instant,
    /// When the proxy took the request (the clock is read once for all its stages).
    pub started: Instant,
    /// The method may be sent twice: idempotent, or the route says `nonIdempotent`.
    pub repeatable: bool,
    /// Hedge after this long, when the route hedges and the request may be hedged.
    pub hedge_after: Option<Duration>,
    /// How a streamed request body is coming along: a send held up or broken by the client
    /// is the client's fault, not the endpoint's.
    pub pace: Option<Pace>,
}

impl Exchange<'_> {
    /// Whether the upstream side is waiting for the client's body (a timeout now is the
    /// client's, answered 408).
    fn waiting_on_client(&self) -> bool {
        self.pace.as_ref().is_some_and(Pace::waiting_on_client)
    }
}

/// The request body: replayable bytes, or a stream that can be sent once.
pub(super) enum RequestBody {
    Replayable(Bytes),
    Once(Option<ProxyBody>),
}

impl RequestBody {
    /// No body at all (what a cacheable GET or HEAD has).
    pub fn is_empty_replayable(&self) -> bool {
        matches!(self, Self::Replayable(b) if b.is_empty())
    }

    pub fn replayable(&self) -> bool {
        matches!(self, Self::Replayable(_))
    }

    fn take(&mut self) -> Option<Outgoing> {
        match self {
            Self::Replayable(b) => Some(Outgoing::Bytes(b.clone())),
            Self::Once(b) => b.take().map(Outgoing::Stream),
        }
    }
}

/// What one attempt sends: a body in memory, or a stream that can be sent once.
enum Outgoing {
    Bytes(Bytes),
    Stream(ProxyBody),
}

impl Outgoing {
    fn into_body(self) -> ProxyBody {
        match self {
            Self::Bytes(b) if b.is_empty() => super::problem::empty(),
            Self::Bytes(b) => full(b),
            Self::Stream(s) => s,
        }
    }
}

/// Why a send failed, by the client that sent it.
enum SendError {
    Hyper(hyper_util::client::legacy::Error),
    Http1(http1::Error),
}

/// What the gateway answers itself when no upstream response is passed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    NoEndpoint,
    ConnectFailed,
    Timeout,
    BodyTooLarge,
    /// The client's body could not be decoded (e.g. an invalid chunk) or broke off.
    BadRequestBody,
    /// The client sent its body too slowly for the route's timeout.
    ClientTimeout,
    UpstreamFailed,
    Overflow(Overflow),
}

/// An upstream response and the breaker slot it holds until its body is done.
pub(super) struct Answer {
    pub response: Response<UpstreamBody>,
    pub permit: Permit,
}

/// What one attempt came to.
enum Tried {
    /// A response to pass on.
    Answer(Answer),
    /// A failure the route's policy might retry; `answer` is the upstream's own response
    /// when there was one (a 5xx), passed on if nothing better comes.
    Failed {
        failure: Failure,
        answer: Option<Answer>,
    },
    /// Not retried whatever the policy says.
    Fatal(Outcome),
}

/// Runs the request's attempts until one answers or the rules say stop.
pub(super) async fn forward(
    ex: &mut Exchange<'_>,
    mut body: RequestBody,
) -> Result<Answer, Outcome> {
    let live = &ex.route.live;
    let metrics = &ex.route.metrics;
    let max_attempts = ex.policy.map_or(1, |p| p.attempts.max(1));
    let per_try = ex
        .policy
        .map(|p| Duration::from_millis(p.per_try_timeout_ms))
        .filter(|d| !d.is_zero());
    let started = ex.started;
    if ex.policy.is_some() || ex.hedge_after.is_some() {
        live.budget.deposit(started);
    }

    // Most requests have one attempt: they keep no list of endpoints tried, and their head
    // moves instead of being copied.
    let one_attempt = max_attempts == 1 && ex.hedge_after.is_none();
    let mut tried: Vec<Arc<EndpointHandle>> = Vec::new();
    let first = failover::pick(ex.table, ex.primary, ex.hash, &tried, started)
        .ok_or(Outcome::NoEndpoint)?;
    if !one_attempt {
        tried.push(first.endpoint.clone());
    }
    let first_body = body.take().ok_or(Outcome::UpstreamFailed)?;
    let first_head = if one_attempt {
        std::mem::replace(&mut ex.parts, Request::new(()).into_parts().0)
    } else {
        ex.parts.clone()
    };
    let ex = &*ex;

    // Two slots: the current attempt, and a hedge. Each is pinned once and refilled.
    let mut main = pin!(OptionFuture::from(Some(attempt(
        ex, first, first_head, first_body, per_try
    ))));
    // Boxed when used: most requests never hedge, and an attempt is a large future to carry.
    let mut hedge: OptionFuture<Pin<Box<_>>> = None.into();
    let (mut main_running, mut hedge_running) = (true, false);
    let mut hedged = false;
    let mut attempts = 1u32;
    let mut last: Option<Tried> = None;
    let hedge_at = ex.hedge_after.map(|d| started + d);
    // A single attempt is bounded by the deadline itself (its timeout never runs past it),
    // so only requests that may retry or hedge need a timer of their own for it.
    let mut out_of_time = pin!(OptionFuture::from(
        (!one_attempt).then(|| tokio::time::sleep_until(ex.deadline))
    ));

    loop {
        let hedge_when = hedge_at.filter(|_| !hedged && main_running && !hedge_running);
        let hedge_due = async move {
            match hedge_when {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let (result, from_hedge) = tokio::select! {
            Some(r) = &mut main, if main_running => {
                main_running = false;
                main.set(None.into());
                (r, false)
            }
            Some(r) = &mut hedge, if hedge_running => {
                hedge_running = false;
                hedge = None.into();
                (r, true)
            }
            () = hedge_due => {
                hedged = true;
                if let Some(p) = may_hedge(ex, &body, &tried) {
                    tried.push(p.endpoint.clone());
                    if let Some(b) = body.take() {
                        metrics.hedges.inc();
                        tracing::debug!(route = %ex.route_name(), endpoint = %p.endpoint.authority(), "hedging: second attempt sent");
                        hedge = Some(Box::pin(attempt(ex, p, ex.parts.clone(), b, per_try))).into();
                        hedge_running = true;
                    }
                }
                continue;
            }
            Some(()) = &mut out_of_time, if !one_attempt => {
                if ex.waiting_on_client() {
                    return Err(Outcome::ClientTimeout);
                }
                metrics.deadline_exceeded.inc();
                return Err(Outcome::Timeout);
            }
        };
        match result {
            Tried::Answer(a) => {
                if from_hedge {
                    metrics.hedges_won.inc();
                }
                if let Some(Tried::Failed {
                    answer: Some(a), ..
                }) = last
                {
                    discard(a.response);
                }
                return Ok(a);
            }
            other => {
                if let Some(Tried::Failed {
                    answer: Some(a), ..
                }) = last.replace(other)
                {
                    discard(a.response);
                }
            }
        }
        if main_running || hedge_running {
            // The other attempt may still answer.
            continue;
        }
        let Some(Tried::Failed { failure, .. }) = &last else {
            break;
        };
        let failure = *failure;
        match may_retry(ex, failure, attempts, max_attempts, &body) {
            Ok(()) => {}
            Err(None) => break,
            Err(Some(denied)) => {
                metrics.retries_denied[denied.index()].inc();
                if denied == Denied::Budget {
                    metrics.retry_budget_exhausted.inc();
                }
                tracing::debug!(route = %ex.route_name(), reason = denied.label(), ?failure, "retriable failure not retried");
                break;
            }
        }
        // Back off, never past the deadline.
        let policy = ex.policy.expect("may_retry checked");
        let wait = retry::backoff(
            Duration::from_millis(policy.backoff_base_ms),
            Duration::from_millis(policy.backoff_max_ms),
            attempts,
            &mut rand::rng(),
        );
        let resume = Instant::now() + wait;
        if resume >= ex.deadline {
            metrics.retries_denied[Denied::Deadline.index()].inc();
            break;
        }
        tokio::time::sleep_until(resume).await;
        let Some(next) = failover::pick(ex.table, ex.primary, ex.hash, &tried, resume) else {
            break;
        };
        let Some(b) = body.take() else {
            break;
        };
        metrics.retries[failure.reason().index()].inc();
        tracing::debug!(
            route = %ex.route_name(),
            attempt = attempts + 1,
            ?failure,
            endpoint = %next.endpoint.authority(),
            backoff_ms = wait.as_secs_f64() * 1e3,
            "retrying"
        );
        tried.push(next.endpoint.clone());
        attempts += 1;
        main.set(Some(attempt(ex, next, ex.parts.clone(), b, per_try)).into());
        main_running = true;
    }

    match last {
        Some(Tried::Answer(a)) => Ok(a),
        Some(Tried::Failed {
            answer: Some(a), ..
        }) => Ok(a),
        Some(Tried::Failed { failure, .. }) => Err(match failure {
            Failure::Connect => Outcome::ConnectFailed,
            Failure::Timeout => {
                if Instant::now() >= ex.deadline {
                    metrics.deadline_exceeded.inc();
                }
                Outcome::Timeout
            }
            Failure::Reset | Failure::Status(_) => Outcome::UpstreamFailed,
        }),
        Some(Tried::Fatal(o)) => Err(o),
        None => Err(Outcome::NoEndpoint),
    }
}

impl Exchange<'_> {
    fn route_name(&self) -> &str {
        &self.route.name
    }
}

/// `Ok` to retry; `Err(None)` when the failure is not retriable at all; `Err(Some(why))`
/// when it is but may not be.
fn may_retry(
    ex: &Exchange<'_>,
    failure: Failure,
    attempts: u32,
    max_attempts: u32,
    body: &RequestBody,
) -> Result<(), Option<Denied>> {
    let Some(policy) = ex.policy else {
        return Err(None);
    };
    if !retry::retriable(policy, failure) {
        return Err(None);
    }
    if attempts >= max_attempts {
        return Err(Some(Denied::Attempts));
    }
    if !body.replayable() {
        return Err(Some(Denied::BodyNotReplayable));
    }
    if failure.maybe_sent() && !ex.repeatable {
        return Err(Some(Denied::NonIdempotent));
    }
    let now = Instant::now();
    if now >= ex.deadline {
        return Err(Some(Denied::Deadline));
    }
    if !ex.route.live.budget.try_withdraw(now) {
        return Err(Some(Denied::Budget));
    }
    Ok(())
}

/// An endpoint for a hedge, if this request may be hedged now.
fn may_hedge(
    ex: &Exchange<'_>,
    body: &RequestBody,
    tried: &[Arc<EndpointHandle>],
) -> Option<Picked> {
    if !body.replayable() || !ex.repeatable {
        return None;
    }
    let now = Instant::now();
    // Only to an endpoint not tried yet: hedging on the same one would not help.
    let p = failover::pick_fresh(ex.table, ex.primary, ex.hash, tried, now)?;
    if !ex.route.live.budget.try_withdraw(now) {
        ex.route.metrics.retry_budget_exhausted.inc();
        ex.route.metrics.retries_denied[Denied::Budget.index()].inc();
        return None;
    }
    Some(p)
}

/// One attempt: breaker, request, classification, outlier detection.
async fn attempt(
    ex: &Exchange<'_>,
    picked: Picked,
    mut head: Parts,
    body: Outgoing,
    per_try: Option<Duration>,
) -> Tried {
    let Picked {
        cluster,
        endpoint,
        probe,
    } = picked;
    let until = per_try.map_or(ex.deadline, |d| (Instant::now() + d).min(ex.deadline));
    let permit = match cluster.breaker.enter(cluster.limits, until).await {
        Ok(p) => p,
        Err(o) => {
            match o {
                Overflow::Requests => cluster.metrics.overflow_requests.inc(),
                Overflow::Pending => cluster.metrics.overflow_pending.inc(),
            };
            tracing::debug!(cluster = %cluster.spec.name, limit = o.label(), "circuit breaker overflow");
            return Tried::Fatal(Outcome::Overflow(o));
        }
    };
    cluster.metrics.requests.inc();
    let sent = Instant::now();
    let guard = endpoint.stats.start_at(sent);
    let result = match (&cluster.http1, body) {
        // Plain HTTP/1.1 with the body in memory: sent from this task (`upstream::http1`).
        (Some(client), Outgoing::Bytes(bytes)) if !head.headers.contains_key(header::UPGRADE) => {
            let send = client.send(
                endpoint.authority(),
                &head,
                &ex.path_and_query,
                &bytes,
                &ex.forwarding,
                // Sent again on a new connection only when the method may be repeated
                // whatever the route says: this is outside its retry policy and budget.
                super::idempotent(&head.method),
            );
            tokio::time::timeout_at(until, send).await.map(|r| {
                r.map(|resp| resp.map(UpstreamBody::Http1))
                    .map_err(SendError::Http1)
            })
        }
        (_, body) => {
            ex.forwarding.apply(&mut head.headers);
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(if cluster.spec.tls.is_some() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            });
            uri.authority = Some(endpoint.authority().clone());
            uri.path_and_query = Some(ex.path_and_query.clone());
            let Ok(uri) = Uri::from_parts(uri) else {
                guard.cancel();
                return Tried::Fatal(Outcome::NoEndpoint);
            };
            let mut req = Request::from_parts(head, body.into_body());
            *req.uri_mut() = uri;
            tokio::time::timeout_at(until, cluster.client.request(req))
                .await
                .map(|r| {
                    r.map(|resp| resp.map(UpstreamBody::Hyper))
                        .map_err(SendError::Hyper)
                })
        }
    };
    let now = Instant::now();
    let (tried, verdict) = match result {
        // Held up by the client, not the endpoint: no latency sample, no verdict.
        Err(_) if ex.waiting_on_client() => {
            guard.cancel();
            tracing::debug!(cluster = %cluster.spec.name, endpoint = %endpoint.authority(), "the client's body did not arrive in time");
            (Tried::Fatal(Outcome::ClientTimeout), None)
        }
        Err(_) => {
            // The wait itself is the latency sample: the endpoint was this slow.
            guard.finish_at(now);
            tracing::debug!(cluster = %cluster.spec.name, endpoint = %endpoint.authority(), "attempt timed out");
            (
                Tried::Failed {
                    failure: Failure::Timeout,
                    answer: None,
                },
                Some(Verdict::GatewayError),
            )
        }
        Ok(Ok(response)) => {
            guard.finish_at(now);
            let took = now.saturating_duration_since(sent);
            cluster.metrics.duration.observe(took.as_secs_f64());
            ex.route.live.latency.record(took, now);
            let status = response.status().as_u16();
            let answer = Answer { response, permit };
            let tried = match retry::status_failure(ex.policy, status) {
                Some(failure) => Tried::Failed {
                    failure,
                    answer: Some(answer),
                },
                None => Tried::Answer(answer),
            };
            (tried, Some(Verdict::of_status(status)))
        }
        Ok(Err(e)) => {
            // A fast failure is no latency sample: it would make the endpoint look fast.
            guard.cancel();
            match e {
                SendError::Hyper(e) if is_body_too_large(&e) => {
                    (Tried::Fatal(Outcome::BodyTooLarge), None)
                }
                SendError::Hyper(e) if super::is_bad_request_body(&e) => {
                    (Tried::Fatal(Outcome::BadRequestBody), None)
                }
                // The client's body broke off (a reset, a truncated body): its fault, not
                // the endpoint's, which gets no verdict.
                _ if ex.pace.as_ref().is_some_and(Pace::client_failed) => {
                    (Tried::Fatal(Outcome::BadRequestBody), None)
                }
                e => {
                    let (connect, error): (bool, &dyn std::fmt::Display) = match &e {
                        SendError::Hyper(e) => (e.is_connect(), e),
                        SendError::Http1(e) => (e.is_connect(), e),
                    };
                    let failure = if connect {
                        cluster.metrics.connect_errors.inc();
                        tracing::debug!(cluster = %cluster.spec.name, endpoint = %endpoint.authority(), %error, "connect failed");
                        Failure::Connect
                    } else {
                        tracing::debug!(cluster = %cluster.spec.name, endpoint = %endpoint.authority(), %error, "upstream request failed");
                        Failure::Reset
                    };
                    (
                        Tried::Failed {
                            failure,
                            answer: None,
                        },
                        Some(Verdict::GatewayError),
                    )
                }
            }
        }
    };
    if let Some(v) = verdict {
        cluster
            .outlier
            .record(cluster.balancer.endpoints(), &endpoint, v, probe, now);
    }
    tried
}

/// Drops a response that will not be passed on; a small body is read to the end first (in
/// the background) so its connection can be reused.
fn discard(response: Response<UpstreamBody>) {
    const SMALL: u64 = 16 * 1024;
    let body = response.into_body();
    if body.is_end_stream() || body.size_hint().upper().is_none_or(|n| n > SMALL) {
        return;
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), body.collect()).await;
    });
}

/// Whether an upstream send failed because the request body outgrew its limit.
fn is_body_too_large(e: &hyper_util::client::legacy::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        src = s.source();
    }
    false
}
