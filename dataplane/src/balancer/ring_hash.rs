//! Ketama-style consistent hashing: each endpoint owns points on a 64-bit ring, a request
//! goes to the first point at or after its hash. Adding one endpoint to N moves about
//! 1/(N+1) of the keys, all to the new endpoint; removing one moves only its keys.

use super::hash::StableHasher;

/// Points per unit of weight (after dividing weights by their gcd), as Ketama.
const POINTS_PER_WEIGHT: u64 = 160;
/// Most points on one ring; more weight is scaled down proportionally.
const MAX_POINTS: u64 = 1 << 17;
/// How many points a pick walks past unusable endpoints before giving up.
const MAX_WALK: usize = 4096;

#[derive(Debug)]
pub(super) struct Ring {
    /// (hash, position in the routable list), sorted.
    points: Box<[(u64, u32)]>,
}

impl Ring {
    /// `nodes`: per routable endpoint, a hasher that has absorbed its identity, and its
    /// weight (above zero). A point's place depends only on its endpoint's identity and
    /// number, so other endpoints coming and going leave it where it is.
    pub(super) fn new(nodes: &[(StableHasher, u32)]) -> Self {
        if nodes.is_empty() {
            return Self {
                points: Box::new([]),
            };
        }
        let g = nodes
            .iter()
            .fold(0, |g, &(_, w)| gcd(g, u64::from(w)))
            .max(1);
        let units: u64 = nodes.iter().map(|&(_, w)| u64::from(w) / g).sum();
        let per_unit = (MAX_POINTS as f64 / units as f64).min(POINTS_PER_WEIGHT as f64);
        let mut points = Vec::new();
        for (pos, &(identity, w)) in nodes.iter().enumerate() {
            let count = ((u64::from(w) / g) as f64 * per_unit).round().max(1.0) as u64;
            points.extend(
                (0..count).map(|i| (identity.write(&i.to_le_bytes()).finish(), pos as u32)),
            );
        }
        points.sort_unstable();
        Self {
            points: points.into_boxed_slice(),
        }
    }

    /// The owner of `hash`, or the next usable endpoint clockwise.
    pub(super) fn pick(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.points.len();
        if len == 0 {
            return None;
        }
        let start = self.points.partition_point(|&(h, _)| h < hash);
        (0..len.min(MAX_WALK))
            .map(|step| self.points[(start + step) % len].1 as usize)
            .find(|&p| usable(p))
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.points.len()
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
