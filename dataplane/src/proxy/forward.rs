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
//! 5. On hedged routes, if no attempt has answered after the hedge delay, another goes to
//!    an endpoint not tried yet (up to the route's `maxExtraAttempts`, one delay apart); the
//!    first usable answer wins, the other attempts are cancelled.
//!
//! Attempts run inside the request's task (no spawn); without hedging no allocation is
//! made per attempt.

use std::{pin::pin, sync::Arc, time::Duration};

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
    interim,
    problem::full,
};
use crate::{
    accesslog::Tally,
    breaker::{Overflow, Permit},
    endpoint::EndpointHandle,
    failover::{self, Picked},
    fields::has_field,
    hedge::Hedges,
    outlier::Verdict,
    retry::{self, Denied, Failure},
    snapshot::{ClusterRuntime, RouteRuntime},
    trace::{Attempt, RequestSpan, Tracer},
    upstream::{UpstreamBody, http1},
};

/// Everything the attempts of one request share.
pub(super) struct Exchange<'a> {
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
    /// Where the attempts are told, for the access log (when it is on).
    pub tally: Option<&'a Tally>,
    /// The tracer and the request's span, when tracing: each attempt gets a span of its own.
    pub trace: Option<(&'a Tracer, &'a RequestSpan)>,
}

impl Exchange<'_> {
    /// Whether the upstream side is waiting for the client's body (a timeout now is the
    /// client's, answered 408).
    fn waiting_on_client(&self) -> bool {
        self.pace.as_ref().is_some_and(Pace::waiting_on_client)
    }
}

/// The request body: replayable bytes, bytes too many to keep for a replay (sent once,
/// still from memory), or a stream that can be sent once.
pub(super) enum RequestBody {
    Replayable(Bytes),
    OnceInMemory(Option<Bytes>),
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
            Self::OnceInMemory(b) => b.take().map(Outgoing::Bytes),
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
    /// The endpoint and path make no URI: nothing was sent.
    Uri,
}

impl SendError {
    fn is_connect(&self) -> bool {
        match self {
            Self::Hyper(e) => e.is_connect(),
            Self::Http1(e) => e.is_connect(),
            Self::Uri => false,
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hyper(e) => e.fmt(f),
            Self::Http1(e) => e.fmt(f),
            Self::Uri => f.write_str("the endpoint and path make no URI"),
        }
    }
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
    /// When its head arrived.
    pub at: Instant,
}

/// The attempt's deadline passed before the response head arrived.
struct TimedOut;

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
    let (max_attempts, per_try, one_attempt) = plan(ex);
    let mut tried: Vec<Arc<EndpointHandle>> = Vec::new();
    let (first, first_body) = first_attempt(ex, one_attempt, &mut body, &mut tried)?;
    let first_head = ex.first_head(one_attempt);
    let ex = &*ex;
    if !one_attempt {
        // Boxed: the race below (hedge slots, deadline timer, retries) would make every
        // request's future larger, and most requests have one attempt.
        let first = (first, first_head, first_body);
        return Box::pin(race(ex, first, body, tried, max_attempts, per_try)).await;
    }
    // Most requests: one attempt, with nothing to race it (no hedge, no retry, its timeout
    // is the deadline).
    let result = attempt(ex, first, first_head, first_body, per_try, Attempt::First).await;
    if let Tried::Answer(a) = result {
        return Ok(a);
    }
    let last = Some(result);
    // Only counts why it is not retried (a policy of one attempt).
    let _ = retry_attempt(ex, &last, 1, max_attempts, &mut body, &mut tried).await;
    settle(ex, last)
}

/// The attempts of a request that may retry or hedge: the current attempt and its hedges
/// race until one answers, the deadline passes, or the policy says stop.
async fn race(
    ex: &Exchange<'_>,
    (first, first_head, first_body): (Picked, Parts, Outgoing),
    mut body: RequestBody,
    mut tried: Vec<Arc<EndpointHandle>>,
    max_attempts: u32,
    per_try: Option<Duration>,
) -> Result<Answer, Outcome> {
    // The current attempt, pinned once and refilled; hedges beside it, boxed when used.
    let mut main = pin!(OptionFuture::from(Some(attempt(
        ex,
        first,
        first_head,
        first_body,
        per_try,
        Attempt::First
    ))));
    let max_hedges = ex.route.hedge.as_ref().map_or(1, |h| h.max_extra);
    let mut hedges = Hedges::new(ex.started, ex.hedge_after, max_hedges);
    let mut main_running = true;
    let mut attempts = 1u32;
    let mut last: Option<Tried> = None;
    let mut out_of_time = pin!(tokio::time::sleep_until(ex.deadline));

    loop {
        let hedge_when = hedges.due(main_running);
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
            r = hedges.next_done(), if hedges.running() => (r, true),
            () = hedge_due => {
                match hedge_attempt(ex, &mut body, &mut tried) {
                    Some((p, b)) => hedges.launch(attempt(ex, p, ex.parts.clone(), b, per_try, Attempt::Hedge)),
                    None => hedges.stop(),
                }
                continue;
            }
            () = &mut out_of_time => return Err(ex.out_of_time()),
        };
        // Matched here, not in a helper: an answer is large, and every move of it costs.
        discard_kept(&mut last);
        match result {
            Tried::Answer(a) => {
                if from_hedge {
                    ex.route.metrics.hedges_won.inc();
                }
                return Ok(a);
            }
            other => last = Some(other),
        }
        if main_running || hedges.running() {
            // Another attempt may still answer.
            continue;
        }
        let Some((next, b)) =
            retry_attempt(ex, &last, attempts, max_attempts, &mut body, &mut tried).await
        else {
            break;
        };
        attempts += 1;
        main.set(
            Some(attempt(
                ex,
                next,
                ex.parts.clone(),
                b,
                per_try,
                Attempt::Retry,
            ))
            .into(),
        );
        main_running = true;
    }
    settle(ex, last)
}

/// How many attempts the request may make, how long each may take (`None`: until the
/// deadline; else the smaller of the retry policy's per-try timeout and the route's backend
/// timeout), and whether it is the only one. Most requests have one attempt: they keep no
/// list of endpoints tried, and their head moves instead of being copied.
fn plan(ex: &Exchange<'_>) -> (u32, Option<Duration>, bool) {
    let max_attempts = ex.policy.map_or(1, |p| p.attempts.max(1));
    let per_try = ex
        .policy
        .map(|p| Duration::from_millis(p.per_try_timeout_ms))
        .filter(|d| !d.is_zero());
    // The route's backend timeout bounds each attempt too: the smaller bound wins.
    let per_try = match (per_try, ex.route.backend_timeout) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    (
        max_attempts,
        per_try,
        max_attempts == 1 && ex.hedge_after.is_none(),
    )
}

/// The first attempt's endpoint and body. A request that may retry or hedge pays into the
/// retry budget first.
fn first_attempt(
    ex: &Exchange<'_>,
    one_attempt: bool,
    body: &mut RequestBody,
    tried: &mut Vec<Arc<EndpointHandle>>,
) -> Result<(Picked, Outgoing), Outcome> {
    if ex.policy.is_some() || ex.hedge_after.is_some() {
        ex.route.live.budget.deposit(ex.started);
    }
    let first =
        failover::pick(ex.primary, ex.hash, tried, ex.started).ok_or(Outcome::NoEndpoint)?;
    if !one_attempt {
        tried.push(first.endpoint.clone());
    }
    let first_body = body.take().ok_or(Outcome::UpstreamFailed)?;
    Ok((first, first_body))
}

/// Drops the upstream response a failed attempt kept (a retriable 5xx), if there is one:
/// a later result replaces it.
fn discard_kept(last: &mut Option<Tried>) {
    if let Some(Tried::Failed { answer, .. }) = last
        && let Some(a) = answer.take()
    {
        discard(a.response);
    }
}

/// What the client gets when no attempt answered: the upstream's last 5xx when there was
/// one, else the gateway's answer to the last failure.
fn settle(ex: &Exchange<'_>, last: Option<Tried>) -> Result<Answer, Outcome> {
    match last {
        Some(Tried::Answer(a)) => Ok(a),
        Some(Tried::Failed {
            answer: Some(a), ..
        }) => Ok(a),
        Some(Tried::Failed { failure, .. }) => Err(match failure {
            Failure::Connect => Outcome::ConnectFailed,
            Failure::Timeout => {
                if Instant::now() >= ex.deadline {
                    ex.route.metrics.deadline_exceeded.inc();
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

    /// The first attempt's head: moved out when no other attempt can need it, else copied.
    fn first_head(&mut self, one_attempt: bool) -> Parts {
        if one_attempt {
            std::mem::replace(&mut self.parts, Request::new(()).into_parts().0)
        } else {
            self.parts.clone()
        }
    }

    /// The deadline passed before any attempt answered: the client's fault when the
    /// upstream side was waiting for its body.
    fn out_of_time(&self) -> Outcome {
        if self.waiting_on_client() {
            return Outcome::ClientTimeout;
        }
        self.route.metrics.deadline_exceeded.inc();
        Outcome::Timeout
    }
}

/// After a failure (`last`): the next attempt's endpoint and body once the backoff has
/// passed, or `None` when the failure is not retried.
async fn retry_attempt(
    ex: &Exchange<'_>,
    last: &Option<Tried>,
    attempts: u32,
    max_attempts: u32,
    body: &mut RequestBody,
    tried: &mut Vec<Arc<EndpointHandle>>,
) -> Option<(Picked, Outgoing)> {
    let metrics = &ex.route.metrics;
    let Some(Tried::Failed { failure, .. }) = *last else {
        return None;
    };
    match may_retry(ex, failure, attempts, max_attempts, body) {
        Ok(()) => {}
        Err(None) => return None,
        Err(Some(denied)) => {
            metrics.retries_denied[denied.index()].inc();
            if denied == Denied::Budget {
                metrics.retry_budget_exhausted.inc();
            }
            tracing::debug!(route = %ex.route_name(), reason = denied.label(), ?failure, "retriable failure not retried");
            return None;
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
        return None;
    }
    tokio::time::sleep_until(resume).await;
    let next = failover::pick(ex.primary, ex.hash, tried, resume)?;
    let b = body.take()?;
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
    Some((next, b))
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

/// A hedge's endpoint and body, if this request may be hedged now.
fn hedge_attempt(
    ex: &Exchange<'_>,
    body: &mut RequestBody,
    tried: &mut Vec<Arc<EndpointHandle>>,
) -> Option<(Picked, Outgoing)> {
    if !body.replayable() || !ex.repeatable {
        return None;
    }
    let now = Instant::now();
    // Only to an endpoint not tried yet: hedging on the same one would not help.
    let p = failover::pick_fresh(ex.primary, ex.hash, tried, now)?;
    if !ex.route.live.budget.try_withdraw(now) {
        ex.route.metrics.retry_budget_exhausted.inc();
        ex.route.metrics.retries_denied[Denied::Budget.index()].inc();
        return None;
    }
    tried.push(p.endpoint.clone());
    let b = body.take()?;
    ex.route.metrics.hedges.inc();
    tracing::debug!(route = %ex.route_name(), endpoint = %p.endpoint.authority(), attempts = tried.len(), "hedging: another attempt sent");
    Some((p, b))
}

/// One attempt: breaker, request, classification, outlier detection; its span when
/// tracing (`kind`: why it was sent).
async fn attempt(
    ex: &Exchange<'_>,
    picked: Picked,
    mut head: Parts,
    body: Outgoing,
    per_try: Option<Duration>,
    kind: Attempt,
) -> Tried {
    let Picked {
        cluster,
        endpoint,
        probe,
    } = picked;
    let span = ex.trace.map(|(tracer, request)| {
        let failover = !Arc::ptr_eq(&cluster, ex.primary);
        let authority = endpoint.authority().as_str();
        let span = tracer.attempt(request, kind, failover, &cluster.spec.name, authority);
        tracer.inject(&span, &mut head.headers);
        span
    });
    let until = per_try.map_or(ex.deadline, |d| (Instant::now() + d).min(ex.deadline));
    let permit = match enter(&cluster, until).await {
        Ok(p) => p,
        Err(o) => return Tried::Fatal(Outcome::Overflow(o)),
    };
    cluster.metrics.requests.inc();
    if let Some(t) = ex.tally {
        t.attempt(&cluster, &endpoint);
    }
    let sent = Instant::now();
    let guard = endpoint
        .stats
        .start_at(sent, cluster.balancer.reads_latency());
    let result = send(ex, &cluster, &endpoint, &mut head, body, sent, until).await;
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
            if let Some(t) = ex.tally {
                t.answered(&cluster, &endpoint, now);
            }
            let took = now.saturating_duration_since(sent);
            cluster.metrics.duration.observe(took.as_secs_f64());
            ex.route.record_latency(took, now);
            let status = response.status().as_u16();
            let answer = Answer {
                response,
                permit,
                at: now,
            };
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
            send_failed(ex, &cluster, &endpoint, e)
        }
    };
    if let Some(v) = verdict {
        cluster
            .outlier
            .record(cluster.balancer.endpoints(), &endpoint, v, probe, now);
    }
    if let Some(span) = span {
        span.end(match &tried {
            Tried::Answer(a) => Ok(a.response.status().as_u16()),
            Tried::Failed {
                answer: Some(a), ..
            } => Ok(a.response.status().as_u16()),
            Tried::Failed { failure, .. } => Err(match failure {
                Failure::Connect => "connect failed",
                Failure::Reset => "connection reset",
                Failure::Timeout => "timeout",
                Failure::Status(_) => "upstream error",
            }),
            Tried::Fatal(o) => Err(match o {
                Outcome::Overflow(_) => "circuit breaker overflow",
                Outcome::ClientTimeout => "client body too slow",
                Outcome::BadRequestBody => "bad request body",
                Outcome::BodyTooLarge => "request body too large",
                Outcome::NoEndpoint => "no endpoint",
                Outcome::ConnectFailed => "connect failed",
                Outcome::Timeout => "timeout",
                Outcome::UpstreamFailed => "upstream failed",
            }),
        });
    }
    tried
}

/// The pool's circuit breaker: a slot for the attempt, or the limit it is at (counted).
async fn enter(cluster: &ClusterRuntime, until: Instant) -> Result<Permit, Overflow> {
    cluster
        .breaker
        .enter(cluster.limits, until)
        .await
        .inspect_err(|o| {
            match o {
                Overflow::Requests => cluster.metrics.overflow_requests.inc(),
                Overflow::Pending => cluster.metrics.overflow_pending.inc(),
            };
            tracing::debug!(cluster = %cluster.spec.name, limit = o.label(), "circuit breaker overflow");
        })
}

/// Sends the attempt's request (at `sent`) and waits for the response head, until `until`.
async fn send(
    ex: &Exchange<'_>,
    cluster: &ClusterRuntime,
    endpoint: &EndpointHandle,
    head: &mut Parts,
    body: Outgoing,
    sent: Instant,
    until: Instant,
) -> Result<Result<Response<UpstreamBody>, SendError>, TimedOut> {
    match (&cluster.http1, body) {
        // Plain HTTP/1.1 with the body in memory: sent from this task (`upstream::http1`).
        (Some(client), Outgoing::Bytes(bytes)) if !has_field(&head.headers, &header::UPGRADE) => {
            let send = client.send(
                endpoint.authority(),
                head,
                &ex.path_and_query,
                &bytes,
                &ex.forwarding,
                http1::Terms {
                    // Sent again on a new connection only when the method may be repeated
                    // whatever the route says: this is outside its retry policy and budget.
                    retry_stale: idempotent(&head.method),
                    now: sent,
                    // The client keeps the deadline's timer with the connection.
                    until,
                },
            );
            match send.await {
                Err(http1::Error::Deadline) => Err(TimedOut),
                r => Ok(r
                    .map(|resp| resp.map(UpstreamBody::Http1))
                    .map_err(SendError::Http1)),
            }
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
                return Ok(Err(SendError::Uri));
            };
            let head = std::mem::replace(head, Request::new(()).into_parts().0);
            let mut req = Request::from_parts(head, body.into_body());
            *req.uri_mut() = uri;
            if let Some(relay) = interim::current() {
                // HTTP/1 upstreams only: hyper's HTTP/2 client does not report 1xx.
                relay.arm().await;
                hyper::ext::on_informational(&mut req, move |r| {
                    relay.push(r.status(), r.headers())
                });
            }
            let sent = tokio::time::timeout_at(until, cluster.client.request(req)).await;
            sent.map_err(|_| TimedOut).map(|r| {
                r.map(|resp| resp.map(UpstreamBody::Hyper))
                    .map_err(SendError::Hyper)
            })
        }
    }
}

/// What a failed send comes to, and the endpoint's verdict (none when the client's body was
/// at fault).
fn send_failed(
    ex: &Exchange<'_>,
    cluster: &ClusterRuntime,
    endpoint: &EndpointHandle,
    e: SendError,
) -> (Tried, Option<Verdict>) {
    match e {
        // The head cannot be addressed to this endpoint.
        SendError::Uri => (Tried::Fatal(Outcome::NoEndpoint), None),
        SendError::Hyper(e) if is_body_too_large(&e) => (Tried::Fatal(Outcome::BodyTooLarge), None),
        SendError::Hyper(e) if is_bad_request_body(&e) => {
            (Tried::Fatal(Outcome::BadRequestBody), None)
        }
        // The client's body broke off (a reset, a truncated body): its fault, not the
        // endpoint's, which gets no verdict.
        _ if ex.pace.as_ref().is_some_and(Pace::client_failed) => {
            (Tried::Fatal(Outcome::BadRequestBody), None)
        }
        e => {
            let failure = if e.is_connect() {
                cluster.metrics.connect_errors.inc();
                tracing::debug!(cluster = %cluster.spec.name, endpoint = %endpoint.authority(), error = %e, "connect failed");
                Failure::Connect
            } else {
                tracing::debug!(cluster = %cluster.spec.name, endpoint = %endpoint.authority(), error = %e, "upstream request failed");
                Failure::Reset
            };
            let tried = Tried::Failed {
                failure,
                answer: None,
            };
            (tried, Some(Verdict::GatewayError))
        }
    }
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

/// Whether the method is idempotent (RFC 9110 §9.2.2): safe to retry after sending.
pub(super) fn idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
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

/// Whether an upstream exchange failed because the client's body could not be decoded
/// (an invalid chunk, a truncated body): the client's fault, answered 400.
fn is_bad_request_body(e: &hyper_util::client::legacy::Error) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    let mut user_body = false;
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            user_body |= h.is_user();
        }
        if user_body
            && let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
            )
        {
            return true;
        }
        src = s.source();
    }
    false
}
