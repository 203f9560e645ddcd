//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size
//! filled by letting endpoints take turns claiming slots in their own permutation of the
//! table. Lookup is `table[hash % M]`. Balance is near perfect and a change of endpoints
//! moves few keys besides those that must move.
//!
//! Weights follow Envoy: an endpoint of weight `w` takes a turn in `w / max weight` of the
//! rounds.

use super::hash::{StableHasher, mix};

/// The table size: prime, so every skip yields a full permutation. 65 537 as Envoy's
/// default; at 100 endpoints each owns ~655 slots, close to an even share.
pub(super) const TABLE_SIZE: u64 = 65_537;
/// Lookups of rehashed keys tried when the first owner is unusable.
const MAX_REHASH: u64 = 8;
const EMPTY: u32 = u32::MAX;

#[derive(Debug)]
pub(super) struct Maglev {
    /// Position in the routable list, per slot.
    table: Box<[u32]>,
}

impl Maglev {
    /// `nodes`: per routable endpoint, a hasher that has absorbed its identity, and its
    /// weight (above zero).
    pub(super) fn new(nodes: &[(StableHasher, u32)]) -> Self {
        let m = TABLE_SIZE;
        if nodes.is_empty() {
            return Self {
                table: Box::new([]),
            };
        }
        let perm: Vec<(u64, u64)> = nodes
            .iter()
            .map(|(id, _)| {
                let offset = id.write(b"maglev offset").finish() % m;
                let skip = id.write(b"maglev skip").finish() % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max_weight = nodes.iter().map(|&(_, w)| u64::from(w)).max().unwrap_or(1);
        let mut next = vec![0u64; nodes.len()];
        let mut target = vec![0u64; nodes.len()];
        let mut table = vec![EMPTY; m as usize];
        let mut filled = 0u64;
        let mut round = 1u64;
        'fill: loop {
            for (i, &(_, w)) in nodes.iter().enumerate() {
                if round * u64::from(w) < target[i] {
                    continue;
                }
                target[i] += max_weight;
                let (offset, skip) = perm[i];
                // A full permutation of the table: a free slot is always found.
                loop {
                    let slot = ((offset + next[i] * skip) % m) as usize;
                    next[i] += 1;
                    if table[slot] == EMPTY {
                        table[slot] = i as u32;
                        break;
                    }
                }
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
            round += 1;
        }
        Self {
            table: table.into_boxed_slice(),
        }
    }

    /// The owner of `hash`; when unusable, the owners of a few rehashes of it.
    pub(super) fn pick(&self, hash: u64, usable: impl Fn(usize) -> bool) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        (0..=MAX_REHASH)
            .map(|k| {
                let h = if k == 0 {
                    hash
                } else {
                    mix(hash ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                };
                self.table[(h % TABLE_SIZE) as usize] as usize
            })
            .find(|&p| usable(p))
    }

    #[cfg(test)]
    pub(super) fn slots(&self) -> &[u32] {
        &self.table
    }
}
