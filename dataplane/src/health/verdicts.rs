//! The threshold logic of health checks, apart from the I/O so it can be tested alone.

/// Turns a stream of check results into a verdict: `unhealthy` failures in a row mark an
/// endpoint unhealthy, `healthy` passes in a row healthy. The very first result decides on
/// its own.
#[derive(Clone, Debug)]
pub struct Verdicts {
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    healthy: bool,
    checked: bool,
    passes: u32,
    failures: u32,
}

impl Verdicts {
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        Self {
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
            healthy: true,
            checked: false,
            passes: 0,
            failures: 0,
        }
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Records one check; returns whether the verdict changed.
    pub fn record(&mut self, passed: bool) -> bool {
        let before = self.healthy;
        if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
        }
        if !self.checked {
            self.checked = true;
            self.healthy = passed;
        } else if passed && self.passes >= self.healthy_threshold {
            self.healthy = true;
        } else if !passed && self.failures >= self.unhealthy_threshold {
            self.healthy = false;
        }
        self.healthy != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_need_runs_in_a_row() {
        let mut v = Verdicts::new(2, 3);
        assert!(!v.record(true), "first pass: still healthy");
        assert!(!v.record(false) && !v.record(false));
        assert!(v.healthy());
        assert!(!v.record(true), "a pass breaks the run of failures");
        assert!(!v.record(false) && !v.record(false));
        assert!(v.record(false), "third failure in a row");
        assert!(!v.healthy());
        assert!(!v.record(true));
        assert!(!v.record(false), "a failure breaks the run of passes");
        assert!(!v.record(true));
        assert!(v.record(true), "second pass in a row");
        assert!(v.healthy());
    }

    #[test]
    fn the_first_check_decides_alone() {
        let mut v = Verdicts::new(2, 3);
        assert!(v.record(false));
        assert!(!v.healthy());
        let mut v = Verdicts::new(5, 5);
        assert!(!v.record(true));
        assert!(v.healthy());
    }
}
