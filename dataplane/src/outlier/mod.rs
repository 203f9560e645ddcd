//! Passive outlier detection: eject endpoints that fail real traffic (Envoy's outlier
//! detection, from the pool's `outlierDetection`).
//!
//! - Every attempt's result is [`record`]ed on its endpoint. `consecutive5xx` 5xx answers
//!   in a row, or `consecutiveGatewayErrors` gateway errors in a row (502, 503, 504, and
//!   failures to connect, resets and timeouts, which are the gateway's own 502/504s), eject
//!   the endpoint.
//! - Every `interval`, [`sweep`] compares success rates: endpoints with at least
//!   `requestVolume` requests in the interval, when there are `minimumHosts` of them, are
//!   ejected if their rate is below `mean − stdevFactor × stdev`.
//! - The n-th ejection lasts `baseEjectionTime × n` (n capped at 10); each interval an
//!   endpoint spends in service takes one off n.
//! - Never more than `maxEjectionPercent` of the pool's routable endpoints are ejected.
//! - When the ejection time is over, the endpoint stays ejected until **one probe request**
//!   decides: the next request that picks it is let through alone ([`admit`]); success
//!   returns it to service, failure ejects it again, for longer.
//!
//! All per-endpoint state is atomics in `endpoint::EndpointOutlier`, inside the endpoint's
//! `EndpointStats`, so it survives table swaps. Ejecting takes the cluster's ejection
//! mutex, which only ejections (rare) contend on.

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, PoisonError};

use parapet_crds::snapshot::{OutlierDetection, SuccessRate};
use tokio::time::Instant;

use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};

use crate::{
    endpoint::{EndpointHandle, EndpointStats},
    metrics::{ClusterReasonLabels, EndpointLabels, Metrics},
};

/// The longest ejection, in multiples of the base time.
pub const MAX_EJECTION_MULTIPLIER: u32 = 10;

/// What an attempt told about its endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// A 5xx other than 502–504.
    ServerError,
    /// 502, 503, 504, or a connect failure, reset or timeout.
    GatewayError,
}

impl Verdict {
    pub fn of_status(status: u16) -> Self {
        match status {
            502..=504 => Self::GatewayError,
            500..=599 => Self::ServerError,
            _ => Self::Success,
        }
    }
}

/// Why an endpoint was ejected (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Consecutive5xx,
    ConsecutiveGatewayErrors,
    SuccessRate,
    ProbeFailed,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Self::Consecutive5xx => "consecutive_5xx",
            Self::ConsecutiveGatewayErrors => "consecutive_gateway_errors",
            Self::SuccessRate => "success_rate",
            Self::ProbeFailed => "probe_failed",
        }
    }
}

/// A cluster's outlier detection for one table: its settings, the endpoints it may eject
/// and the mutex ejections take (shared across tables through the cluster's live state).
pub struct ClusterOutlier {
    cluster: String,
    config: Option<OutlierDetection>,
    eject_lock: Arc<Mutex<()>>,
    ejections: Family<ClusterReasonLabels, Counter>,
    ejected: Family<EndpointLabels, Gauge>,
    refused: Counter,
}

/// May a request go to this endpoint now? Called after a pick.
pub enum Admission {
    /// In service.
    Normal,
    /// Ejected, ejection over: this request alone decides.
    Probe(ProbeGuard),
    /// Ejected (or another request is probing): pick another.
    Refused,
}

pub fn admit(stats: &Arc<EndpointStats>, now: Instant) -> Admission {
    if !stats.is_ejected() {
        return Admission::Normal;
    }
    let o = &stats.outlier;
    if o.until_ms() > stats.ms_at(now) || !o.try_start_probe() {
        return Admission::Refused;
    }
    Admission::Probe(ProbeGuard {
        stats: stats.clone(),
    })
}

/// The right to probe an ejected endpoint. Dropped without a verdict (the request was
/// cancelled), it lets the next request probe.
#[derive(Debug)]
pub struct ProbeGuard {
    stats: Arc<EndpointStats>,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        self.stats.outlier.end_probe();
    }
}

impl ClusterOutlier {
    pub fn new(
        cluster: &str,
        config: Option<OutlierDetection>,
        eject_lock: Arc<Mutex<()>>,
        metrics: &Metrics,
    ) -> Self {
        Self {
            cluster: cluster.to_string(),
            config,
            eject_lock,
            ejections: metrics.ha.ejections.clone(),
            ejected: metrics.ha.endpoint_ejected.clone(),
            refused: metrics
                .ha
                .ejections_refused
                .get_or_create(&crate::metrics::ClusterLabels {
                    cluster: cluster.to_string(),
                })
                .clone(),
        }
    }

    pub fn config(&self) -> Option<&OutlierDetection> {
        self.config.as_ref()
    }

    /// Records one attempt's verdict on `ep`; ejects or returns it to service as the rules
    /// say. `probe` is the guard [`admit`] gave when this attempt was the probe.
    pub fn record(
        &self,
        endpoints: &[Arc<EndpointHandle>],
        ep: &EndpointHandle,
        verdict: Verdict,
        probe: Option<ProbeGuard>,
        now: Instant,
    ) {
        let Some(cfg) = &self.config else {
            return;
        };
        let o = &ep.stats.outlier;
        o.count(verdict == Verdict::Success);
        if let Some(probe) = probe {
            if verdict == Verdict::Success {
                self.return_to_service(ep);
            } else {
                self.eject_locked(ep, cfg, Reason::ProbeFailed, now);
            }
            drop(probe);
            return;
        }
        if ep.stats.is_ejected() {
            // An answer to a request sent before the ejection: it changes nothing.
            return;
        }
        let reason = match verdict {
            Verdict::Success => {
                o.reset_consecutive();
                return;
            }
            Verdict::ServerError => {
                let n = o.server_error();
                (n >= cfg.consecutive_5xx).then_some(Reason::Consecutive5xx)
            }
            Verdict::GatewayError => {
                let (n5, ngw) = o.gateway_error();
                if ngw >= cfg.consecutive_gateway_errors {
                    Some(Reason::ConsecutiveGatewayErrors)
                } else {
                    (n5 >= cfg.consecutive_5xx).then_some(Reason::Consecutive5xx)
                }
            }
        };
        if let Some(reason) = reason {
            self.try_eject(endpoints, ep, cfg, reason, now);
        }
    }

    /// Ejects `ep` unless it already is or the pool's ejection cap is reached.
    fn try_eject(
        &self,
        endpoints: &[Arc<EndpointHandle>],
        ep: &EndpointHandle,
        cfg: &OutlierDetection,
        reason: Reason,
        now: Instant,
    ) -> bool {
        let _one_at_a_time = self
            .eject_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if ep.stats.is_ejected() {
            return false;
        }
        let routable = endpoints.iter().filter(|e| e.routable).count();
        let ejected = endpoints
            .iter()
            .filter(|e| e.routable && e.stats.is_ejected())
            .count();
        if !may_eject(ejected, routable, cfg.max_ejection_percent) {
            ep.stats.outlier.reset_consecutive();
            self.refused.inc();
            tracing::debug!(
                cluster = %self.cluster,
                endpoint = %ep.authority(),
                reason = reason.label(),
                ejected,
                routable,
                "not ejecting: maxEjectionPercent of the pool is already ejected"
            );
            return false;
        }
        self.eject_locked(ep, cfg, reason, now);
        true
    }

    fn eject_locked(
        &self,
        ep: &EndpointHandle,
        cfg: &OutlierDetection,
        reason: Reason,
        now: Instant,
    ) {
        let o = &ep.stats.outlier;
        let n = o.start_ejection();
        let ms = ejection_ms(cfg.base_ejection_time_ms, n);
        o.eject_until(ep.stats.ms_at(now) + ms);
        o.reset_consecutive();
        ep.stats.set_ejected(true);
        self.ejections
            .get_or_create(&ClusterReasonLabels {
                cluster: self.cluster.clone(),
                reason: reason.label(),
            })
            .inc();
        self.ejected.get_or_create(&self.endpoint_labels(ep)).set(1);
        tracing::debug!(
            cluster = %self.cluster,
            endpoint = %ep.authority(),
            reason = reason.label(),
            ejections = n,
            ejection_ms = ms,
            "endpoint ejected"
        );
    }

    fn return_to_service(&self, ep: &EndpointHandle) {
        ep.stats.outlier.reset_consecutive();
        ep.stats.set_ejected(false);
        self.ejected.get_or_create(&self.endpoint_labels(ep)).set(0);
        tracing::debug!(cluster = %self.cluster, endpoint = %ep.authority(), "probe succeeded: endpoint back in service");
    }

    fn endpoint_labels(&self, ep: &EndpointHandle) -> EndpointLabels {
        EndpointLabels {
            cluster: self.cluster.clone(),
            endpoint: ep.authority().to_string(),
        }
    }

    /// The periodic part: success-rate ejection and the decay of ejection multipliers.
    /// Run every `interval` for clusters with outlier detection.
    pub fn sweep(&self, endpoints: &[Arc<EndpointHandle>], now: Instant) {
        let Some(cfg) = &self.config else {
            return;
        };
        let routable: Vec<&Arc<EndpointHandle>> = endpoints.iter().filter(|e| e.routable).collect();
        let counts: Vec<(u32, u32)> = routable
            .iter()
            .map(|e| e.stats.outlier.take_interval())
            .collect();
        for e in &routable {
            if !e.stats.is_ejected() {
                e.stats.outlier.decay_ejections();
            }
        }
        let Some(sr) = &cfg.success_rate else {
            return;
        };
        for i in success_rate_outliers(&counts, sr) {
            let e = routable[i];
            if !e.stats.is_ejected() {
                self.try_eject(endpoints, e, cfg, Reason::SuccessRate, now);
            }
        }
    }
}

/// Whether one more of `routable` may be ejected when `ejected` already are.
pub fn may_eject(ejected: usize, routable: usize, max_percent: u32) -> bool {
    (ejected + 1) * 100 <= routable * max_percent as usize
}

/// How long the n-th ejection lasts.
pub fn ejection_ms(base_ms: u64, n: u32) -> u64 {
    base_ms.saturating_mul(u64::from(n.clamp(1, MAX_EJECTION_MULTIPLIER)))
}

/// Indexes of the endpoints whose success rate is an outlier: among those with at least
/// `request_volume` requests, if there are at least `minimum_hosts`, the ones below
/// `mean − stdev_factor × stdev`.
pub fn success_rate_outliers(counts: &[(u32, u32)], sr: &SuccessRate) -> Vec<usize> {
    let rates: Vec<(usize, f64)> = counts
        .iter()
        .enumerate()
        .filter(|(_, (total, _))| *total >= sr.request_volume.max(1))
        .map(|(i, (total, ok))| (i, f64::from(*ok) / f64::from(*total)))
        .collect();
    if rates.is_empty() || rates.len() < sr.minimum_hosts as usize {
        return Vec::new();
    }
    let n = rates.len() as f64;
    let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / n;
    let var = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
    let threshold = mean - f64::from(sr.stdev_factor_milli) / 1000.0 * var.sqrt();
    rates
        .into_iter()
        .filter(|(_, r)| *r < threshold)
        .map(|(i, _)| i)
        .collect()
}
