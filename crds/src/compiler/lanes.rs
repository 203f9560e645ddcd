//! A rule's `lanes` → the table's per-route bulkhead and slow-lane threshold.
//!
//! The schema asks for `maxInFlight` ≥ 1 and a `slowThreshold` above 0; a standalone file
//! passes neither check, so they are made again here, as errors that leave the setting out
//! (the data plane's flag then applies). A threshold the rule can never reach is a warning.

use super::{Diagnostics, ObjectKey, Reason};
use crate::{Duration, api, snapshot::RouteLanes};

/// The rule's lane settings, or `None` when it sets none (or none valid).
pub(super) fn lanes(
    rule: &api::RouteRule,
    timeout_ms: u64,
    rule_name: &str,
    me: &ObjectKey,
    diags: &mut Diagnostics,
) -> Option<RouteLanes> {
    let l = rule.lanes.as_ref()?;
    let max_in_flight = l.max_in_flight.and_then(|n| match u32::try_from(n) {
        Ok(n) if n >= 1 => Some(n),
        _ => {
            diags.error(
                me,
                Reason::InvalidLanes,
                format!("rule {rule_name}: lanes.maxInFlight {n} would refuse every request; set it to 1 or more (until then --route-max-in-flight applies)"),
            );
            None
        }
    });
    let slow_threshold_ms = l.slow_threshold.and_then(|d| {
        let ms = d.as_millis();
        if ms == 0 {
            diags.error(
                me,
                Reason::InvalidLanes,
                format!("rule {rule_name}: lanes.slowThreshold 0s would keep the rule in the slow lane for good; set it above 0s (until then --slow-lane-threshold applies)"),
            );
            return None;
        }
        if ms >= timeout_ms {
            // A request ends by the timeout, so the average never passes the threshold.
            diags.warning(
                me,
                Reason::InvalidLanes,
                format!(
                    "rule {rule_name}: lanes.slowThreshold {d} is not below the rule's timeout {}, so the rule never moves to the slow lane; lower slowThreshold",
                    Duration::from_millis(timeout_ms)
                ),
            );
        }
        Some(ms)
    });
    (max_in_flight.is_some() || slow_threshold_ms.is_some()).then_some(RouteLanes {
        max_in_flight,
        slow_threshold_ms,
    })
}
