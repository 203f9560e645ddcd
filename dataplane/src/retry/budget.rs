//! A retry budget as in linkerd2 and tower's `TpsBudget`: every request deposits, every
//! retry withdraws, and a retry is allowed while
//!
//! ```text
//! retries in the last 10 s  <  requests in the last 10 s × percent / 100 + min_per_second × 10
//! ```
//!
//! The window is ten one-second slots of atomic counters, reused round-robin: a slot
//! older than the window counts for nothing and is reset by the first writer of its new
//! second. No locks; two racing writers may both see the last token (off by one at worst).

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

use tokio::time::Instant;

/// How far back the budget looks.
pub const WINDOW: Duration = Duration::from_secs(SLOTS as u64);
const SLOTS: usize = 10;

#[derive(Debug, Default)]
struct Slot {
    /// Second (since the budget's epoch) plus one that the counts belong to; 0: never used.
    second: AtomicU64,
    deposits: AtomicU64,
    withdrawals: AtomicU64,
}

#[derive(Debug)]
pub struct Budget {
    percent: AtomicU32,
    min_per_second: AtomicU32,
    epoch: Instant,
    slots: [Slot; SLOTS],
}

impl Budget {
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        Self::new_at(percent, min_per_second, Instant::now())
    }

    pub fn new_at(percent: u32, min_per_second: u32, now: Instant) -> Self {
        Self {
            percent: AtomicU32::new(percent),
            min_per_second: AtomicU32::new(min_per_second),
            epoch: now,
            slots: Default::default(),
        }
    }

    /// Takes new limits (a new table) without forgetting what was spent.
    pub fn configure(&self, percent: u32, min_per_second: u32) {
        self.percent.store(percent, Ordering::Relaxed);
        self.min_per_second.store(min_per_second, Ordering::Relaxed);
    }

    /// Counts one request.
    pub fn deposit(&self, now: Instant) {
        self.slot(now).deposits.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a retry token if the budget has one.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let (deposits, withdrawals) = self.totals(now);
        if withdrawals >= self.allowance(deposits) {
            return false;
        }
        self.slot(now).withdrawals.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// (requests, retries) in the window ending at `now`.
    pub fn totals(&self, now: Instant) -> (u64, u64) {
        let current = self.second(now);
        let oldest = current.saturating_sub(SLOTS as u64 - 1);
        self.slots
            .iter()
            .filter(|s| {
                let tag = s.second.load(Ordering::Acquire);
                tag > 0 && (oldest..=current).contains(&(tag - 1))
            })
            .fold((0, 0), |(d, w), s| {
                (
                    d + s.deposits.load(Ordering::Relaxed),
                    w + s.withdrawals.load(Ordering::Relaxed),
                )
            })
    }

    /// Retries allowed in a window that saw `deposits` requests.
    pub fn allowance(&self, deposits: u64) -> u64 {
        deposits * u64::from(self.percent.load(Ordering::Relaxed)) / 100
            + u64::from(self.min_per_second.load(Ordering::Relaxed)) * SLOTS as u64
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    fn slot(&self, now: Instant) -> &Slot {
        let second = self.second(now);
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        let tag = second + 1;
        let seen = slot.second.load(Ordering::Acquire);
        if seen != tag
            && slot
                .second
                .compare_exchange(seen, tag, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.deposits.store(0, Ordering::Relaxed);
            slot.withdrawals.store(0, Ordering::Relaxed);
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn withdraw_all(b: &Budget, now: Instant) -> u64 {
        let mut n = 0;
        while b.try_withdraw(now) {
            n += 1;
            assert!(n < 100_000, "the budget never ran out");
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_min_per_second_times_the_window() {
        let b = Budget::new(20, 10);
        assert_eq!(withdraw_all(&b, Instant::now()), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_a_share_of_requests_plus_the_floor() {
        let b = Budget::new(20, 1);
        let now = Instant::now();
        for _ in 0..1000 {
            b.deposit(now);
        }
        assert_eq!(withdraw_all(&b, now), 200 + 10);
        // More requests buy more retries.
        for _ in 0..100 {
            b.deposit(now);
        }
        assert_eq!(withdraw_all(&b, now), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn old_requests_and_retries_leave_the_window() {
        let b = Budget::new(50, 0);
        let t0 = Instant::now();
        for _ in 0..100 {
            b.deposit(t0);
        }
        assert_eq!(withdraw_all(&b, t0), 50);
        tokio::time::advance(Duration::from_secs(5)).await;
        let t5 = Instant::now();
        // Still inside the window: deposits and withdrawals both count.
        assert_eq!(b.totals(t5), (100, 50));
        assert!(!b.try_withdraw(t5));
        tokio::time::advance(Duration::from_secs(5)).await;
        // Ten seconds on, second 0 has left the window: nothing deposited, nothing allowed.
        let t10 = Instant::now();
        assert_eq!(b.totals(t10), (0, 0));
        assert!(!b.try_withdraw(t10));
        for _ in 0..10 {
            b.deposit(t10);
        }
        assert_eq!(withdraw_all(&b, t10), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_failure_rate_is_capped_at_the_percentage() {
        // 100 requests per second for 30 s, each wanting a retry: about 20 % get one.
        let b = Budget::new(20, 0);
        let mut granted = 0u64;
        for _ in 0..30 {
            let now = Instant::now();
            for _ in 0..100 {
                b.deposit(now);
                if b.try_withdraw(now) {
                    granted += 1;
                }
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert!((590..=610).contains(&granted), "{granted}");
    }

    #[tokio::test(start_paused = true)]
    async fn reconfiguring_keeps_the_counts() {
        let b = Budget::new(0, 1);
        let now = Instant::now();
        assert_eq!(withdraw_all(&b, now), 10);
        b.configure(0, 2);
        assert_eq!(withdraw_all(&b, now), 10);
    }
}
