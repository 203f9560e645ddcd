//! The one atomic pointer to the table in force, and the rules for replacing it.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwapOption;
use parapet_crds::snapshot::Snapshot;

use super::{Runtime, persist};
use crate::{balancer::EndpointRegistry, metrics::Metrics, upstream::ClientPool};

#[derive(Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    Applied,
    /// Same version and hash as the table in force.
    Unchanged,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("version {offered} is older than version {current} in force; push a newer version")]
    Stale { current: u64, offered: u64 },
    #[error(
        "version {version} is already in force with a different hash; a new table needs a new version"
    )]
    Conflict { version: u64 },
    #[error("the snapshot is invalid: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl ApplyError {
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Self::Stale { .. } | Self::Conflict { .. } => "stale",
            Self::Invalid(_) => "invalid",
        }
    }
}

pub struct SnapshotStore {
    current: ArcSwapOption<Runtime>,
    /// Serialises writers (pushes, reloads) so version checks and swaps are atomic together;
    /// readers never touch it.
    apply_lock: tokio::sync::Mutex<()>,
    registry: EndpointRegistry,
    clients: ClientPool,
    metrics: Arc<Metrics>,
    state_dir: Option<PathBuf>,
}

impl SnapshotStore {
    pub fn new(
        metrics: Arc<Metrics>,
        clients: ClientPool,
        state_dir: Option<PathBuf>,
    ) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwapOption::empty(),
            apply_lock: tokio::sync::Mutex::new(()),
            registry: EndpointRegistry::default(),
            clients,
            metrics,
            state_dir,
        })
    }

    /// The table in force; a request holds on to it from start to end.
    pub fn load(&self) -> Option<Arc<Runtime>> {
        self.current.load_full()
    }

    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    pub fn registry(&self) -> &EndpointRegistry {
        &self.registry
    }

    /// Validates, builds and swaps in a snapshot; persists it when a state directory is set.
    pub async fn apply(self: &Arc<Self>, snapshot: Snapshot) -> Result<ApplyOutcome, ApplyError> {
        let _writer = self.apply_lock.lock().await;
        let started = Instant::now();
        if let Some(cur) = self.current.load().as_ref() {
            if snapshot.version < cur.version() {
                return Err(ApplyError::Stale {
                    current: cur.version(),
                    offered: snapshot.version,
                });
            }
            if snapshot.version == cur.version() {
                return if snapshot.hash == cur.hash() {
                    Ok(ApplyOutcome::Unchanged)
                } else {
                    Err(ApplyError::Conflict {
                        version: snapshot.version,
                    })
                };
            }
        }
        snapshot.validate().map_err(ApplyError::Invalid)?;
        // Building compiles regexes and balancer tables: keep it off the runtime's workers.
        let this = self.clone();
        let runtime = tokio::task::spawn_blocking(move || {
            Runtime::build(snapshot, &this.registry, &this.clients, &this.metrics)
        })
        .await
        .map_err(|e| ApplyError::Invalid(vec![format!("building the table failed: {e}")]))?
        .map_err(|e| ApplyError::Invalid(vec![e.to_string()]))?;
        let runtime = Arc::new(runtime);
        self.current.store(Some(runtime.clone()));
        self.registry.retain_table(&runtime.snapshot.table);

        self.metrics.snapshot_version.set(runtime.version() as i64);
        self.metrics.snapshot_applied_timestamp.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default(),
        );
        self.metrics
            .snapshot_apply_duration
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            version = runtime.version(),
            hash = %runtime.hash(),
            routes = runtime.snapshot.table.route_count(),
            clusters = runtime.snapshot.table.clusters.len(),
            "snapshot applied"
        );
        if let Some(dir) = self.state_dir.clone() {
            let snap = runtime.clone();
            let written = tokio::task::spawn_blocking(move || persist(&dir, &snap.snapshot)).await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not persist the snapshot; serving it anyway")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not persist the snapshot; serving it anyway")
                }
            }
        }
        Ok(ApplyOutcome::Applied)
    }
}
