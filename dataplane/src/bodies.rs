//! Request bodies still arriving: how long one is held back whole before it streams, and
//! how many bytes all connections together may hold for such bodies (in the codec's
//! buffers, or in the pipes of bodies being spliced), so slow clients cannot make the
//! process hold more.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

/// A body not all here this long after the socket first ran dry streams instead, with what
/// was read: a slow upload holds its bytes no longer than this.
pub const WAIT: Duration = Duration::from_secs(1);

/// Bytes all connections may hold for bodies still arriving: beyond it a body that is not
/// all here streams at once.
pub static WAITING: Budget = Budget::new(64 * 1024 * 1024);

/// A byte count shared by all connections, taken in permits that give their share back
/// when dropped.
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub const fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// `n` bytes of the budget, if that many are left.
    pub fn take(&self, n: usize) -> Option<Permit<'_>> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&u| u <= self.limit)
            })
            .ok()
            .map(|_| Permit { budget: self, n })
    }
}

pub struct Permit<'a> {
    budget: &'a Budget,
    n: usize,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_budget_refuses_what_would_pass_its_limit_and_gets_permits_back() {
        let budget = Budget::new(100);
        let a = budget.take(60).expect("60 of 100");
        assert!(budget.take(41).is_none(), "101 of 100");
        let b = budget.take(40).expect("100 of 100");
        assert!(budget.take(1).is_none());
        drop(a);
        assert!(budget.take(60).is_some());
        drop(b);
        assert!(budget.take(usize::MAX).is_none(), "an overflow is refused");
        assert!(budget.take(100).is_some());
    }
}
