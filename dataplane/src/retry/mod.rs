//! Retries: which failures a route retries, how long to wait between tries, and the budget
//! that keeps retries a small share of traffic.
//!
//! The rules, in the order the forwarder applies them:
//! - A failure is retried only if the rule's `retryOn` covers it ([`retriable`]).
//! - A request that may have reached the endpoint (anything but a connect failure) is
//!   retried only if its method is idempotent, or the rule sets `nonIdempotent`.
//! - Only a request whose body is replayable (none, or buffered because it was small) is
//!   retried; a streamed body went once and is gone.
//! - Each retry takes a token from the route's [`Budget`]: retries stay under
//!   `budgetPercent` of the route's requests over the last 10 s, plus
//!   `budgetMinPerSecond` × 10, so a failing backend never sees a retry storm.
//! - Before retry *n*, the forwarder sleeps a [`backoff`] with full jitter, and every try
//!   must finish before the route's deadline.

mod backoff;
mod budget;

pub use backoff::backoff;
pub use budget::{Budget, WINDOW};

use parapet_crds::snapshot::{RetryCondition, RetryPolicy};

/// Why an attempt failed, in terms the retry policy speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No connection: the request never left the gateway.
    Connect,
    /// The connection broke before a response head arrived.
    Reset,
    /// The per-try timeout passed (counts as a 504).
    Timeout,
    /// The endpoint answered with this status.
    Status(u16),
}

impl Failure {
    /// Whether the endpoint may have seen the request.
    pub fn maybe_sent(self) -> bool {
        !matches!(self, Self::Connect)
    }

    pub fn reason(self) -> RetryReason {
        match self {
            Self::Connect => RetryReason::ConnectFailure,
            Self::Reset => RetryReason::Reset,
            Self::Timeout => RetryReason::Timeout,
            Self::Status(_) => RetryReason::Status,
        }
    }
}

/// The failure a retry was sent for (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryReason {
    ConnectFailure,
    Reset,
    Timeout,
    Status,
}

impl RetryReason {
    pub const ALL: [Self; 4] = [
        Self::ConnectFailure,
        Self::Reset,
        Self::Timeout,
        Self::Status,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::ConnectFailure => "connect_failure",
            Self::Reset => "reset",
            Self::Timeout => "timeout",
            Self::Status => "status",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a retriable failure was not retried (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    Budget,
    NonIdempotent,
    BodyNotReplayable,
    Deadline,
    Attempts,
}

impl Denied {
    pub const ALL: [Self; 5] = [
        Self::Budget,
        Self::NonIdempotent,
        Self::BodyNotReplayable,
        Self::Deadline,
        Self::Attempts,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Budget => "budget",
            Self::NonIdempotent => "non_idempotent",
            Self::BodyNotReplayable => "body_not_replayable",
            Self::Deadline => "deadline",
            Self::Attempts => "attempts",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Whether `policy` retries `failure`. As in Envoy: `ServerError` covers every 5xx, resets,
/// connect failures and timeouts; `GatewayError` covers 502, 503, 504, connect failures and
/// timeouts; `RetriableStatus` the listed statuses (a timeout is a 504).
pub fn retriable(policy: &RetryPolicy, failure: Failure) -> bool {
    let on = |c| policy.on.contains(&c);
    let listed =
        |s: u16| on(RetryCondition::RetriableStatus) && policy.retriable_statuses.contains(&s);
    match failure {
        Failure::Connect => {
            on(RetryCondition::ConnectFailure)
                || on(RetryCondition::ServerError)
                || on(RetryCondition::GatewayError)
        }
        Failure::Reset => on(RetryCondition::Reset) || on(RetryCondition::ServerError),
        Failure::Timeout => {
            on(RetryCondition::ServerError) || on(RetryCondition::GatewayError) || listed(504)
        }
        Failure::Status(s) => {
            (on(RetryCondition::ServerError) && (500..600).contains(&s))
                || (on(RetryCondition::GatewayError) && (502..=504).contains(&s))
                || listed(s)
        }
    }
}

/// Whether a response status is a failure some policy could retry (5xx or listed).
pub fn status_failure(policy: Option<&RetryPolicy>, status: u16) -> Option<Failure> {
    let f = Failure::Status(status);
    match policy {
        Some(p) if retriable(p, f) => Some(f),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &[RetryCondition], statuses: &[u16]) -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            on: on.to_vec(),
            retriable_statuses: statuses.to_vec(),
            per_try_timeout_ms: 1000,
            backoff_base_ms: 25,
            backoff_max_ms: 250,
            budget_percent: 20,
            budget_min_per_second: 10,
            non_idempotent: false,
        }
    }

    #[test]
    fn conditions_cover_what_envoy_covers() {
        use RetryCondition::*;
        let connect = policy(&[ConnectFailure], &[]);
        assert!(retriable(&connect, Failure::Connect));
        assert!(!retriable(&connect, Failure::Reset));
        assert!(!retriable(&connect, Failure::Status(503)));

        let gw = policy(&[GatewayError], &[]);
        for s in [502, 503, 504] {
            assert!(retriable(&gw, Failure::Status(s)));
        }
        assert!(!retriable(&gw, Failure::Status(500)));
        assert!(retriable(&gw, Failure::Timeout));
        assert!(retriable(&gw, Failure::Connect));
        assert!(!retriable(&gw, Failure::Reset));

        let five = policy(&[ServerError], &[]);
        assert!(retriable(&five, Failure::Status(500)));
        assert!(retriable(&five, Failure::Reset));
        assert!(!retriable(&five, Failure::Status(429)));

        let listed = policy(&[RetriableStatus], &[429, 504]);
        assert!(retriable(&listed, Failure::Status(429)));
        assert!(retriable(&listed, Failure::Timeout));
        assert!(!retriable(&listed, Failure::Status(503)));
        // Listed statuses count only with RetriableStatus on.
        assert!(!retriable(&policy(&[Reset], &[429]), Failure::Status(429)));
    }

    #[test]
    fn only_connect_failures_are_known_unsent() {
        assert!(!Failure::Connect.maybe_sent());
        assert!(Failure::Reset.maybe_sent());
        assert!(Failure::Timeout.maybe_sent());
        assert!(Failure::Status(503).maybe_sent());
    }
}
