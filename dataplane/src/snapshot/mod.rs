//! The table in force: built from a pushed (or loaded) [`Snapshot`], swapped atomically,
//! persisted as the last good one.

mod live;
mod persist;
mod runtime;
mod store;

pub use live::{ClusterLive, LiveState, RouteLive};
pub use persist::{load_persisted, persist};
pub use runtime::{
    BuildOptions, ClusterRuntime, DEFAULT_BUDGET_MIN_PER_SECOND, DEFAULT_BUDGET_PERCENT,
    DEFAULT_CACHE_MAX_BYTES, RouteMirrors, RouteRuntime, Runtime,
};
pub use store::{ApplyError, ApplyOutcome, SnapshotStore};
