//! One endpoint's outlier-detection state: counters of recent results, the ejection count and
//! timer, and whether a probe is in flight. All atomics; `outlier` decides what they mean.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// One endpoint's outlier state.
#[derive(Debug, Default)]
pub struct EndpointOutlier {
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    interval_total: AtomicU32,
    interval_success: AtomicU32,
    /// Ejections so far, less one per interval spent in service.
    ejections: AtomicU32,
    /// While ejected: when the ejection ends, in ms since the endpoint's stats epoch.
    until_ms: AtomicU64,
    probing: AtomicBool,
}

impl EndpointOutlier {
    /// Ejection over and no probe in flight: the next request may probe.
    pub fn probe_ready(&self, now_ms: u64) -> bool {
        self.until_ms.load(Ordering::Acquire) <= now_ms && !self.probing.load(Ordering::Acquire)
    }

    /// When the current (or last) ejection ends, in ms since the stats epoch.
    pub fn until_ms(&self) -> u64 {
        self.until_ms.load(Ordering::Acquire)
    }

    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Counts one result in the current interval.
    pub fn count(&self, success: bool) {
        self.interval_total.fetch_add(1, Ordering::Relaxed);
        if success {
            self.interval_success.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes the interval's (requests, successes) and starts a new interval.
    pub fn take_interval(&self) -> (u32, u32) {
        (
            self.interval_total.swap(0, Ordering::AcqRel),
            self.interval_success.swap(0, Ordering::AcqRel),
        )
    }

    /// A 5xx other than a gateway error: breaks a run of gateway errors; returns the 5xx in
    /// a row.
    pub fn server_error(&self) -> u32 {
        self.consecutive_gateway.store(0, Ordering::Relaxed);
        self.consecutive_5xx.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// A gateway error, which is a 5xx too: returns (5xx in a row, gateway errors in a row).
    pub fn gateway_error(&self) -> (u32, u32) {
        (
            self.consecutive_5xx.fetch_add(1, Ordering::AcqRel) + 1,
            self.consecutive_gateway.fetch_add(1, Ordering::AcqRel) + 1,
        )
    }

    pub fn reset_consecutive(&self) {
        self.consecutive_5xx.store(0, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
    }

    /// Starts an ejection: returns which one it is (1 for the first), which sets its length.
    pub fn start_ejection(&self) -> u32 {
        self.ejections.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The ejection ends at `until_ms` (ms since the stats epoch).
    pub fn eject_until(&self, until_ms: u64) {
        self.until_ms.store(until_ms, Ordering::Release);
    }

    /// One interval spent in service takes one ejection off the count.
    pub fn decay_ejections(&self) {
        let _ = self
            .ejections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Claims the one probe of an ejected endpoint; false if another request holds it.
    pub fn try_start_probe(&self) -> bool {
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub fn end_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }
}
