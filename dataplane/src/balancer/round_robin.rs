//! Smooth weighted round robin (nginx's), precomputed: the pick path is one atomic
//! increment and an index.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest sequence kept; longer ones are scaled down proportionally (then exact only up
/// to rounding).
const MAX_LEN: u64 = 1 << 16;
/// Build work allowed (sequence length × endpoints); bounds the build for big clusters.
const MAX_WORK: u64 = 1 << 24;
/// How far a pick walks the sequence past endpoints the caller cannot use.
const MAX_WALK: usize = 64;

#[derive(Debug)]
pub(super) struct RoundRobin {
    /// Positions in the balancer's routable list.
    sequence: Box<[u32]>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// `weights`: of the routable endpoints, each above zero.
    pub(super) fn new(weights: &[u32]) -> Self {
        Self {
            sequence: sequence(weights),
            next: AtomicUsize::new(0),
        }
    }

    /// The next position in the sequence that is `usable`, walking a bounded distance.
    ///
    /// Each step past an unusable endpoint takes a new ticket rather than the next slot, so
    /// the unusable endpoint's share is spread over the others in proportion instead of
    /// going to whichever follows it in the sequence.
    pub(super) fn pick(&self, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.sequence.len();
        if len == 0 {
            return None;
        }
        (0..len.min(MAX_WALK))
            .map(|_| self.sequence[self.next.fetch_add(1, Ordering::Relaxed) % len] as usize)
            .find(|&p| usable(p))
    }
}

/// One period of the smooth weighted round robin over `weights`: each step, every
/// endpoint's current value grows by its weight, the largest (first on ties) is picked and
/// lowered by the total. Weights are divided by their gcd first, so the period is as short
/// as the proportions allow.
fn sequence(weights: &[u32]) -> Box<[u32]> {
    if weights.is_empty() {
        return Box::new([]);
    }
    let g = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w))).max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x) / g).collect();
    let n = w.len() as u64;
    let cap = (MAX_WORK / n).min(MAX_LEN).max(n);
    let total: u64 = w.iter().sum();
    if total > cap {
        for x in &mut w {
            *x = (*x * cap / total).max(1);
        }
    }
    let total: i64 = w.iter().sum::<u64>() as i64;
    let w: Vec<i64> = w.into_iter().map(|x| x as i64).collect();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out.into_boxed_slice()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_is_nginx_smooth_order() {
        // nginx's documented example: weights 5, 1, 1 give a a b a c a a.
        assert_eq!(&*sequence(&[5, 1, 1]), &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(&*sequence(&[1, 1, 1]), &[0, 1, 2]);
        assert_eq!(&*sequence(&[4, 2]), &[0, 1, 0]);
        assert!(sequence(&[]).is_empty());
    }

    #[test]
    fn long_sequences_are_scaled_proportionally() {
        let s = sequence(&[1_000_000, 999_999, 1]);
        assert!(s.len() as u64 <= MAX_LEN + 3, "{}", s.len());
        let count = |i| s.iter().filter(|&&p| p == i).count();
        assert!(count(2) >= 1);
        assert!(count(0).abs_diff(count(1)) <= 2);
    }

    #[test]
    fn big_clusters_keep_every_endpoint_in_the_sequence() {
        let weights: Vec<u32> = (1..=5000).collect();
        let s = sequence(&weights);
        let mut seen = vec![false; weights.len()];
        for &p in &*s {
            seen[p as usize] = true;
        }
        assert!(seen.iter().all(|&b| b));
    }
}
