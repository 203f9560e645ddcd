//! A table as the changes from one a pod already holds: what `PATCH /v1/snapshot` carries.
//!
//! Each list of the table is sent as a script that rebuilds it from the base's list: runs
//! copied by position and elements sent whole. The script says nothing about what an
//! element means, so the pod rebuilds exactly the list the operator compiled, in its order.
//! The pod then checks the rebuilt table against `hash`, the hash of the whole table: a
//! delta that was computed against another base, or applied wrongly, is refused rather
//! than served, and the operator sends the full table instead.

use serde::{Deserialize, Serialize};

use super::{Snapshot, Table};

/// The wire form of a delta.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Delta {
    /// The table this delta applies to: the pod must hold exactly this version and hash.
    pub base_version: u64,
    pub base_hash: String,
    /// The table it makes.
    pub version: u64,
    pub hash: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_empty: bool,
    pub format: u32,
    #[serde(default)]
    pub fleet_pods: u32,
    pub virtual_hosts: Script<super::VirtualHost>,
    pub clusters: Script<super::Cluster>,
    pub cache_policies: Script<super::CachePolicy>,
    pub sources: Script<super::SourceRef>,
    pub listeners: Script<super::Listener>,
}

/// How to rebuild one list: its pieces in order.
pub type Script<T> = Vec<Piece<T>>;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Piece<T> {
    /// `[start, len]`: that run of the base's list, unchanged.
    Copy([usize; 2]),
    /// Elements the base does not have (new or changed), in order.
    Insert(Vec<T>),
}

/// Why a delta does not make a table.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeltaError {
    #[error("the delta applies to version {want_version} ({want_hash}), but this pod holds {held}")]
    WrongBase {
        want_version: u64,
        want_hash: String,
        held: String,
    },
    #[error(
        "the delta copies {field}[{start}..{start}+{len}], past the {have} elements of the base"
    )]
    OutOfRange {
        field: &'static str,
        start: usize,
        len: usize,
        have: usize,
    },
    #[error("the delta makes a table whose hash is {actual}, not the {claimed} it names")]
    HashMismatch { claimed: String, actual: String },
}

impl Delta {
    /// The snapshot this delta makes from `base`, its hash checked. Not otherwise
    /// validated: applying it does that, as for a full table.
    pub fn apply(self, base: &Snapshot) -> Result<Snapshot, DeltaError> {
        if (base.version, base.hash.as_str()) != (self.base_version, self.base_hash.as_str()) {
            return Err(DeltaError::WrongBase {
                want_version: self.base_version,
                want_hash: self.base_hash,
                held: format!("version {} ({})", base.version, base.hash),
            });
        }
        // Destructured whole, so a field added to `Table` does not compile until the delta
        // carries it too.
        let Table {
            format: _,
            virtual_hosts,
            clusters,
            cache_policies,
            sources,
            fleet_pods: _,
            listeners,
        } = &base.table;
        let table = Table {
            format: self.format,
            virtual_hosts: rebuild("virtualHosts", virtual_hosts, self.virtual_hosts)?,
            clusters: rebuild("clusters", clusters, self.clusters)?,
            cache_policies: rebuild("cachePolicies", cache_policies, self.cache_policies)?,
            sources: rebuild("sources", sources, self.sources)?,
            fleet_pods: self.fleet_pods,
            listeners: rebuild("listeners", listeners, self.listeners)?,
        };
        let actual = table.content_hash();
        if actual != self.hash {
            return Err(DeltaError::HashMismatch {
                claimed: self.hash,
                actual,
            });
        }
        Ok(Snapshot {
            version: self.version,
            hash: self.hash,
            allow_empty: self.allow_empty,
            table,
        })
    }

    /// The elements the delta sends whole (what it costs beyond its copies).
    pub fn inserted(&self) -> usize {
        fn count<T>(s: &Script<T>) -> usize {
            s.iter()
                .map(|p| match p {
                    Piece::Insert(v) => v.len(),
                    Piece::Copy(_) => 0,
                })
                .sum()
        }
        count(&self.virtual_hosts)
            + count(&self.clusters)
            + count(&self.cache_policies)
            + count(&self.sources)
            + count(&self.listeners)
    }
}

fn rebuild<T: Clone>(
    field: &'static str,
    base: &[T],
    script: Script<T>,
) -> Result<Vec<T>, DeltaError> {
    let mut out = Vec::with_capacity(base.len());
    for piece in script {
        match piece {
            Piece::Copy([start, len]) => {
                let run = start
                    .checked_add(len)
                    .and_then(|end| base.get(start..end))
                    .ok_or(DeltaError::OutOfRange {
                        field,
                        start,
                        len,
                        have: base.len(),
                    })?;
                out.extend_from_slice(run);
            }
            Piece::Insert(items) => out.extend(items),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{FORMAT_VERSION, SourceRef};

    fn source(name: &str, generation: i64) -> SourceRef {
        SourceRef {
            kind: "ApiRoute".into(),
            namespace: "ns".into(),
            name: name.into(),
            generation,
        }
    }

    fn snapshot(version: u64, sources: Vec<SourceRef>) -> Snapshot {
        Snapshot::new(
            version,
            Table {
                format: FORMAT_VERSION,
                sources,
                ..Table::default()
            },
        )
    }

    fn delta(base: &Snapshot, target: &Snapshot, sources: Script<SourceRef>) -> Delta {
        Delta {
            base_version: base.version,
            base_hash: base.hash.clone(),
            version: target.version,
            hash: target.hash.clone(),
            allow_empty: false,
            format: FORMAT_VERSION,
            fleet_pods: 0,
            virtual_hosts: vec![],
            clusters: vec![],
            cache_policies: vec![],
            sources,
            listeners: vec![],
        }
    }

    #[test]
    fn a_script_rebuilds_the_target_and_its_hash_is_checked() {
        let base = snapshot(1, vec![source("a", 1), source("b", 1), source("c", 1)]);
        let target = snapshot(2, vec![source("a", 1), source("b", 2), source("c", 1)]);
        let script = vec![
            Piece::Copy([0, 1]),
            Piece::Insert(vec![source("b", 2)]),
            Piece::Copy([2, 1]),
        ];
        let made = delta(&base, &target, script.clone()).apply(&base).unwrap();
        assert_eq!(made, target);

        // The same script against a base it was not made for.
        let other = snapshot(1, vec![source("x", 1), source("b", 1), source("c", 1)]);
        assert!(matches!(
            delta(&base, &target, script.clone()).apply(&other),
            Err(DeltaError::WrongBase { .. })
        ));
        // A script that does not make the table it names.
        let wrong = vec![Piece::Copy([0, 3])];
        assert!(matches!(
            delta(&base, &target, wrong).apply(&base),
            Err(DeltaError::HashMismatch { .. })
        ));
    }

    #[test]
    fn copies_past_the_base_are_refused_not_clamped() {
        let base = snapshot(1, vec![source("a", 1)]);
        let target = snapshot(2, vec![source("a", 1)]);
        for run in [[0, 2], [1, 1], [usize::MAX, 2]] {
            let err = delta(&base, &target, vec![Piece::Copy(run)])
                .apply(&base)
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    DeltaError::OutOfRange {
                        field: "sources",
                        ..
                    }
                ),
                "{run:?}: {err}"
            );
        }
    }

    #[test]
    fn the_wire_form_is_pieces_by_name_and_unknown_fields_are_refused() {
        let base = snapshot(1, vec![source("a", 1)]);
        let d = delta(&base, &base, vec![Piece::Copy([0, 1])]);
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["sources"], serde_json::json!([{"copy": [0, 1]}]));
        let mut bad = v.clone();
        bad["routes"] = serde_json::json!([]);
        assert!(serde_json::from_value::<Delta>(bad).is_err());
        let mut bad = v;
        bad["sources"] = serde_json::json!([{"copy": [0, 1], "insert": []}]);
        assert!(serde_json::from_value::<Delta>(bad).is_err());
    }
}
