//! Weighted random choice: Random, the two samples of LeastRequest, and the hash-based
//! algorithms when a request has nothing to hash.

use rand::Rng;

#[derive(Debug)]
pub(super) enum WeightedSampler {
    /// All weights equal: a uniform draw.
    Uniform(usize),
    /// `cumulative[i]`: sum of the weights up to and including `i`.
    Cumulative(Box<[u64]>),
}

impl WeightedSampler {
    /// `weights`: of the routable endpoints, each above zero.
    pub(super) fn new(weights: &[u32]) -> Self {
        if weights.windows(2).all(|w| w[0] == w[1]) {
            return Self::Uniform(weights.len());
        }
        let mut total = 0u64;
        Self::Cumulative(
            weights
                .iter()
                .map(|&w| {
                    total += u64::from(w);
                    total
                })
                .collect(),
        )
    }

    /// A position drawn with probability proportional to its weight; `None` when empty.
    pub(super) fn sample(&self, rng: &mut impl Rng) -> Option<usize> {
        match self {
            Self::Uniform(0) => None,
            Self::Uniform(n) => Some(rng.random_range(0..*n)),
            Self::Cumulative(c) => {
                let total = *c.last()?;
                let x = rng.random_range(0..total);
                Some(c.partition_point(|&sum| sum <= x))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    #[test]
    fn samples_follow_weights() {
        let s = WeightedSampler::new(&[1, 3, 6]);
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0u32; 3];
        for _ in 0..100_000 {
            counts[s.sample(&mut rng).unwrap()] += 1;
        }
        for (got, want) in counts.iter().zip([10_000.0, 30_000.0, 60_000.0]) {
            assert!((f64::from(*got) - want).abs() < want * 0.05, "{counts:?}");
        }
    }

    #[test]
    fn equal_weights_draw_uniformly_and_empty_draws_nothing() {
        let mut rng = StdRng::seed_from_u64(7);
        assert!(matches!(
            WeightedSampler::new(&[2, 2]),
            WeightedSampler::Uniform(2)
        ));
        assert_eq!(WeightedSampler::new(&[]).sample(&mut rng), None);
        assert_eq!(WeightedSampler::new(&[5]).sample(&mut rng), Some(0));
    }
}
