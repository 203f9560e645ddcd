//! A rule's `hedge` → the table's hedge policy.
//!
//! The schema bounds the numbers and a CEL rule asks for exactly one of `delay` and
//! `percentile`; a standalone file passes neither check, so they are made again here, as
//! errors that leave the hedge out. A hedge that is valid but can never be sent is a
//! warning: the API server cannot see it, since it depends on other fields of the rule.

use super::{Diagnostics, ObjectKey, Reason};
use crate::{
    Duration, api,
    snapshot::{HEDGE_MAX_EXTRA_ATTEMPTS, HEDGE_PERCENTILES, HedgeAfter, HedgePolicy},
};

/// The rule's hedge policy, or `None` when it has none or an invalid one.
pub(super) fn hedge(
    rule: &api::RouteRule,
    timeout_ms: u64,
    rule_name: &str,
    me: &ObjectKey,
    diags: &mut Diagnostics,
) -> Option<HedgePolicy> {
    let h = rule.hedge.as_ref()?;
    let mut error = |message: String| {
        diags.error(
            me,
            Reason::InvalidHedge,
            format!("rule {rule_name}: {message}; the rule is served without hedging"),
        )
    };
    let after = match (h.delay, h.percentile) {
        (Some(d), None) => HedgeAfter::DelayMs(d.as_millis()),
        (None, Some(p)) => match u32::try_from(p)
            .ok()
            .filter(|p| HEDGE_PERCENTILES.contains(p))
        {
            Some(p) => HedgeAfter::Percentile(p),
            None => {
                error(format!(
                    "hedge.percentile {p} is not between {} and {}; pick a percentile in that range",
                    HEDGE_PERCENTILES.start(),
                    HEDGE_PERCENTILES.end()
                ));
                return None;
            }
        },
        _ => {
            error("hedge takes exactly one of delay or percentile; set one of them".to_string());
            return None;
        }
    };
    let extra = h.max_extra_attempts.unwrap_or(1);
    let Some(max_extra_attempts) = u32::try_from(extra)
        .ok()
        .filter(|n| HEDGE_MAX_EXTRA_ATTEMPTS.contains(n))
    else {
        error(format!(
            "hedge.maxExtraAttempts {extra} is not between {} and {}; set it in that range",
            HEDGE_MAX_EXTRA_ATTEMPTS.start(),
            HEDGE_MAX_EXTRA_ATTEMPTS.end()
        ));
        return None;
    };
    never_sent(rule, after, timeout_ms, rule_name, me, diags);
    Some(HedgePolicy {
        after,
        max_extra_attempts,
    })
}

/// Warns about a hedge no request of the rule can ever send.
fn never_sent(
    rule: &api::RouteRule,
    after: HedgeAfter,
    timeout_ms: u64,
    rule_name: &str,
    me: &ObjectKey,
    diags: &mut Diagnostics,
) {
    if let HedgeAfter::DelayMs(ms) = after
        && ms >= timeout_ms
    {
        diags.warning(
            me,
            Reason::InvalidHedge,
            format!(
                "rule {rule_name}: hedge.delay {} is not shorter than the rule's timeout {}, so no hedge is ever sent; shorten hedge.delay or lengthen timeout",
                Duration::from_millis(ms),
                Duration::from_millis(timeout_ms)
            ),
        );
    }
    let non_idempotent_only = !rule.matches.is_empty()
        && rule
            .matches
            .iter()
            .all(|m| !m.methods.is_empty() && m.methods.iter().all(|m| !idempotent(*m)));
    let may_repeat = rule
        .retries
        .as_ref()
        .and_then(|r| r.non_idempotent)
        .unwrap_or(false);
    if non_idempotent_only && !may_repeat {
        diags.warning(
            me,
            Reason::InvalidHedge,
            format!(
                "rule {rule_name}: hedge has no effect, since the rule matches only methods that may not be sent twice (POST, PATCH); set retries.nonIdempotent: true if the backend can take them twice, or remove hedge"
            ),
        );
    }
}

/// Whether a method may be sent twice (RFC 9110), as the data plane decides for hedges.
fn idempotent(m: api::HttpMethod) -> bool {
    use api::HttpMethod::*;
    matches!(m, Get | Head | Options | Trace | Put | Delete)
}
