//! Exponential backoff with full jitter (AWS's "Exponential Backoff And Jitter"): retry *n*
//! waits a uniform time in `[0, min(max, base · 2^(n−1))]`, so retries from many requests
//! spread out instead of arriving together.

use std::time::Duration;

use rand::Rng;

/// The wait before retry `n` (1 for the first retry).
pub fn backoff(base: Duration, max: Duration, n: u32, rng: &mut impl Rng) -> Duration {
    let cap = ceiling(base, max, n);
    if cap.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_nanos(rng.random_range(0..=cap.as_nanos().min(u128::from(u64::MAX)) as u64))
}

/// The upper bound of the wait before retry `n`.
pub fn ceiling(base: Duration, max: Duration, n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(Duration::MAX).min(max)
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceiling_doubles_up_to_the_max() {
        assert_eq!(ceiling(25 * MS, 250 * MS, 1), 25 * MS);
        assert_eq!(ceiling(25 * MS, 250 * MS, 2), 50 * MS);
        assert_eq!(ceiling(25 * MS, 250 * MS, 4), 200 * MS);
        assert_eq!(ceiling(25 * MS, 250 * MS, 5), 250 * MS);
        assert_eq!(ceiling(25 * MS, 250 * MS, 64), 250 * MS);
        assert_eq!(ceiling(Duration::ZERO, 250 * MS, 3), Duration::ZERO);
    }

    #[test]
    fn full_jitter_spreads_over_the_whole_range() {
        let mut rng = StdRng::seed_from_u64(7);
        let waits: Vec<Duration> = (0..1000)
            .map(|_| backoff(25 * MS, 250 * MS, 3, &mut rng))
            .collect();
        assert!(waits.iter().all(|w| *w <= 100 * MS));
        let below = waits.iter().filter(|w| **w < 50 * MS).count();
        // Uniform on [0, 100 ms]: about half below 50 ms.
        assert!((400..600).contains(&below), "{below}");
        assert!(waits.iter().any(|w| *w < 5 * MS));
    }
}
