//! The table in force: built from a pushed (or loaded) [`Snapshot`], swapped atomically,
//! persisted as the last good one.

mod persist;
mod runtime;
mod store;

pub use persist::{load_persisted, persist};
pub use runtime::{ClusterRuntime, RouteRuntime, Runtime};
pub use store::{ApplyError, ApplyOutcome, SnapshotStore};
