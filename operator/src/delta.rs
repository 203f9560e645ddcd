//! The delta from a table a pod holds to the current one (see `parapet_crds::snapshot::delta`
//! for what it is and how the pod checks it).
//!
//! Lists are compared element by element with a Myers diff, so an edit to one route sends
//! that route's virtual host and an endpoint change sends that pool's cluster, wherever
//! they sit in the table. Elements are compared as values, not serialised: a diff of a
//! 10,000-route table costs a walk over it, not a copy of it.

// The diff's budget is CPU time, which a paused test clock must not stretch; and the
// diff library takes this Instant.
#[allow(clippy::disallowed_types)]
use std::time::{Duration, Instant};

use parapet_crds::snapshot::{
    Snapshot, Table,
    delta::{Delta, Piece, Script},
};
use similar::{
    DiffOp,
    algorithms::{Capture, myers},
};

/// How long one list's diff may search before it settles for a coarser script (still
/// exact, only larger): a table rewritten whole would otherwise cost the pusher quadratic
/// time for a delta it would not send.
const DIFF_BUDGET: Duration = Duration::from_millis(100);

/// The delta that makes `target` from `base`.
pub fn diff(base: &Snapshot, target: &Snapshot) -> Delta {
    let Table {
        format,
        virtual_hosts,
        clusters,
        cache_policies,
        sources,
        fleet_pods,
        listeners,
    } = &target.table;
    let b = &base.table;
    Delta {
        base_version: base.version,
        base_hash: base.hash.clone(),
        version: target.version,
        hash: target.hash.clone(),
        allow_empty: target.allow_empty,
        format: *format,
        fleet_pods: *fleet_pods,
        virtual_hosts: script(&b.virtual_hosts, virtual_hosts),
        clusters: script(&b.clusters, clusters),
        cache_policies: script(&b.cache_policies, cache_policies),
        sources: script(&b.sources, sources),
        listeners: script(&b.listeners, listeners),
    }
}

/// The script that rebuilds `new` from `old`.
fn script<T: PartialEq + Clone>(old: &[T], new: &[T]) -> Script<T> {
    let mut ops = Capture::new();
    #[allow(clippy::disallowed_types)]
    let deadline = Instant::now() + DIFF_BUDGET;
    // Capture never fails.
    let _ = myers::diff_deadline(
        &mut ops,
        old,
        0..old.len(),
        new,
        0..new.len(),
        Some(deadline),
    );
    let mut out: Script<T> = Vec::new();
    for op in ops.into_ops() {
        match op {
            DiffOp::Equal { old_index, len, .. } => {
                // Adjacent copies merge ([0,3] then [3,2] is [0,5]).
                if let Some(Piece::Copy([start, n])) = out.last_mut()
                    && *start + *n == old_index
                {
                    *n += len;
                } else {
                    out.push(Piece::Copy([old_index, len]));
                }
            }
            DiffOp::Delete { .. } => {}
            DiffOp::Insert {
                new_index, new_len, ..
            }
            | DiffOp::Replace {
                new_index, new_len, ..
            } => {
                let items = &new[new_index..new_index + new_len];
                if let Some(Piece::Insert(v)) = out.last_mut() {
                    v.extend_from_slice(items);
                } else {
                    out.push(Piece::Insert(items.to_vec()));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use parapet_crds::snapshot::{FORMAT_VERSION, SourceRef};
    use proptest::prelude::*;

    use super::*;

    fn source(name: u8, generation: i64) -> SourceRef {
        SourceRef {
            kind: "ApiRoute".into(),
            namespace: "ns".into(),
            name: format!("r{name}"),
            generation,
        }
    }

    fn snapshot(version: u64, sources: Vec<SourceRef>, fleet_pods: u32) -> Snapshot {
        Snapshot::new(
            version,
            Table {
                format: FORMAT_VERSION,
                sources,
                fleet_pods,
                ..Table::default()
            },
        )
    }

    #[test]
    fn one_changed_element_is_all_that_is_sent() {
        let old: Vec<_> = (0..100).map(|i| source(i, 1)).collect();
        let mut new = old.clone();
        new[40] = source(40, 2);
        new.remove(70);
        new.push(source(200, 1));
        let (base, target) = (snapshot(1, old, 0), snapshot(2, new, 3));
        let d = diff(&base, &target);
        assert_eq!(
            d.sources,
            vec![
                Piece::Copy([0, 40]),
                Piece::Insert(vec![source(40, 2)]),
                Piece::Copy([41, 29]),
                Piece::Copy([71, 29]),
                Piece::Insert(vec![source(200, 1)]),
            ]
        );
        assert_eq!(d.inserted(), 2);
        assert_eq!(d.apply(&base).unwrap(), target);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Whatever the two tables, the delta rebuilds the target exactly (the pod's hash
        /// check would refuse it otherwise).
        #[test]
        fn any_delta_rebuilds_its_target(
            old in prop::collection::vec((0u8..20, 0i64..3), 0..40),
            new in prop::collection::vec((0u8..20, 0i64..3), 0..40),
            pods in 0u32..3,
        ) {
            let base = snapshot(1, old.into_iter().map(|(n, g)| source(n, g)).collect(), 0);
            let target = snapshot(2, new.into_iter().map(|(n, g)| source(n, g)).collect(), pods);
            prop_assert_eq!(diff(&base, &target).apply(&base).unwrap(), target);
        }
    }
}
