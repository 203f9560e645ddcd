//! The one atomic pointer to the table in force, and the rules for replacing it.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, Weak},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwapOption;
use parapet_crds::snapshot::Snapshot;
use tokio::task::JoinHandle;

use super::{BuildOptions, LiveState, Runtime, persist};
use crate::{
    cache::Cache, endpoint::EndpointRegistry, health::HealthChecks, metrics::Metrics,
    tls::Certificates, upstream::ClientPool,
};

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
    /// The certificates of `current`, for TLS handshakes.
    certs: Arc<Certificates>,
    /// Serialises writers (pushes, reloads) so version checks and swaps are atomic together;
    /// readers never touch it.
    apply_lock: tokio::sync::Mutex<()>,
    registry: EndpointRegistry,
    live: LiveState,
    options: BuildOptions,
    /// The zone the operator says this pod is in (from its node), used when `--zone` is
    /// not given.
    pushed_zone: ArcSwapOption<String>,
    health: HealthChecks,
    /// One outlier sweeper per pool with outlier detection: (interval, task).
    sweepers: Mutex<HashMap<String, (u64, JoinHandle<()>)>>,
    clients: ClientPool,
    /// The response cache; entries of a policy that a new table changes are dropped.
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    state_dir: Option<PathBuf>,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore").finish_non_exhaustive()
    }
}

impl Drop for SnapshotStore {
    fn drop(&mut self) {
        for (_, (_, task)) in self
            .sweepers
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
        {
            task.abort();
        }
    }
}

impl SnapshotStore {
    pub fn new(
        metrics: Arc<Metrics>,
        clients: ClientPool,
        state_dir: Option<PathBuf>,
    ) -> Arc<Self> {
        Self::with_options(metrics, clients, state_dir, BuildOptions::default())
    }

    /// As [`new`](Self::new), with this data plane's zone and hedging settings.
    pub fn with_options(
        metrics: Arc<Metrics>,
        clients: ClientPool,
        state_dir: Option<PathBuf>,
        options: BuildOptions,
    ) -> Arc<Self> {
        let cache = Arc::new(Cache::new(options.cache_max_bytes, metrics.cache.clone()));
        Arc::new(Self {
            current: ArcSwapOption::empty(),
            certs: Arc::default(),
            apply_lock: tokio::sync::Mutex::new(()),
            registry: EndpointRegistry::default(),
            live: LiveState::new(metrics.jwt.clone()),
            options,
            pushed_zone: ArcSwapOption::empty(),
            health: HealthChecks::new(metrics.clone()),
            sweepers: Mutex::default(),
            clients,
            cache,
            metrics,
            state_dir,
        })
    }

    /// The response cache shared by every table.
    pub fn cache(&self) -> &Arc<Cache> {
        &self.cache
    }

    /// The health checkers (one per endpoint and check).
    pub fn health(&self) -> &HealthChecks {
        &self.health
    }

    /// The certificates of the table in force, which TLS handshakes pick from.
    pub fn certificates(&self) -> &Arc<Certificates> {
        &self.certs
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

    /// Records the zone the operator says this pod is in; the next apply builds for it (and
    /// rebuilds an unchanged table that was built for another zone). `--zone` wins.
    pub fn set_pushed_zone(&self, zone: &str) {
        if self.pushed_zone.load().as_deref().map(String::as_str) != Some(zone) {
            tracing::info!(zone, "the operator says this pod's zone is {zone}");
            self.pushed_zone.store(Some(Arc::new(zone.to_string())));
        }
    }

    /// The settings a table is built with now: `--zone`, else the pushed zone.
    fn build_options(&self) -> BuildOptions {
        let mut o = self.options.clone();
        if o.zone.is_none() {
            o.zone = self.pushed_zone.load().as_deref().cloned();
        }
        o
    }

    /// Validates, builds and swaps in a snapshot; persists it when a state directory is set.
    pub async fn apply(self: &Arc<Self>, snapshot: Snapshot) -> Result<ApplyOutcome, ApplyError> {
        self.apply_checked(snapshot, true).await
    }

    /// [`SnapshotStore::apply`] for a table a delta made, whose hash was checked then.
    pub async fn apply_rebuilt(
        self: &Arc<Self>,
        snapshot: Snapshot,
    ) -> Result<ApplyOutcome, ApplyError> {
        self.apply_checked(snapshot, false).await
    }

    async fn apply_checked(
        self: &Arc<Self>,
        snapshot: Snapshot,
        check_hash: bool,
    ) -> Result<ApplyOutcome, ApplyError> {
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
                if snapshot.hash != cur.hash() {
                    return Err(ApplyError::Conflict {
                        version: snapshot.version,
                    });
                }
                if cur.zone == self.build_options().zone {
                    return Ok(ApplyOutcome::Unchanged);
                }
                // The same table for a zone learnt since (it was restored from the state
                // dir before the operator said where this pod is): built again below.
            }
        }
        // Validating hashes the whole table, and building compiles regexes and balancer
        // tables: both off the runtime's workers.
        let this = self.clone();
        let options = self.build_options();
        let runtime = tokio::task::spawn_blocking(move || {
            if check_hash {
                snapshot.validate()
            } else {
                snapshot.validate_rebuilt()
            }
            .map_err(ApplyError::Invalid)?;
            Runtime::build(
                snapshot,
                &this.registry,
                &this.live,
                &this.clients,
                &this.metrics,
                &options,
            )
            .map_err(|e| ApplyError::Invalid(vec![e.to_string()]))
        })
        .await
        .map_err(|e| ApplyError::Invalid(vec![format!("building the table failed: {e}")]))??;
        let runtime = Arc::new(runtime);
        let previous = self.current.swap(Some(runtime.clone()));
        self.certs.install(runtime.certs.clone());
        // A changed (or removed) cache policy invalidates its own entries, nothing else.
        if let Some(prev) = previous {
            for (name, old) in &prev.cache_policies {
                if runtime.cache_policies.get(name) != Some(old) {
                    let n = self.cache.purge(&format!("{name}\n"), None);
                    tracing::info!(policy = %name, entries = n, "cache policy changed; its entries were dropped");
                }
            }
        }
        for gone in self.registry.retain_table(&runtime.snapshot.table) {
            let endpoint = if gone.address.contains(':') {
                format!("[{}]:{}", gone.address, gone.port)
            } else {
                format!("{}:{}", gone.address, gone.port)
            };
            self.metrics.ha.forget_endpoint(&gone.cluster, &endpoint);
        }
        self.live.retain_table(&runtime.snapshot.table);
        // Clients of settings no pool uses now (e.g. a rotated client certificate) go.
        self.clients.retain_used(&runtime.snapshot.table.clusters);
        self.health.reconcile(
            runtime
                .clusters
                .values()
                .map(|c| (&c.spec, c.balancer.endpoints())),
        );
        self.reconcile_sweepers(&runtime);

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

    /// Starts and stops the periodic part of outlier detection (success rates, decay) to
    /// match the pools of `table`. Each sweeper reads the table in force at every tick.
    fn reconcile_sweepers(self: &Arc<Self>, table: &Runtime) {
        let wanted: HashMap<&str, u64> = table
            .clusters
            .values()
            .filter_map(|c| {
                let o = c.spec.outlier_detection.as_ref()?;
                Some((c.spec.name.as_str(), o.interval_ms.max(1)))
            })
            .collect();
        let mut sweepers = self.sweepers.lock().unwrap_or_else(PoisonError::into_inner);
        sweepers.retain(|name, (interval, task)| {
            let keep = wanted.get(name.as_str()) == Some(interval);
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, interval) in wanted {
            if sweepers.contains_key(name) {
                continue;
            }
            let task = tokio::spawn(sweep(
                Arc::downgrade(self),
                name.to_string(),
                Duration::from_millis(interval),
            ));
            sweepers.insert(name.to_string(), (interval, task));
        }
    }
}

async fn sweep(store: Weak<SnapshotStore>, cluster: String, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else {
            return;
        };
        let Some(table) = store.load() else {
            continue;
        };
        if let Some(c) = table.clusters.get(&cluster) {
            c.outlier
                .sweep(c.balancer.endpoints(), tokio::time::Instant::now());
        }
    }
}

#[cfg(test)]
mod zone_tests {
    use std::sync::Arc;

    use parapet_crds::snapshot::Snapshot;

    use super::{ApplyOutcome, SnapshotStore};
    use crate::{metrics::Metrics, snapshot::BuildOptions, upstream::ClientPool};

    fn snapshot() -> Snapshot {
        let yaml = r#"
apiVersion: parapet.dev/v1alpha1
kind: UpstreamPool
metadata: {name: p}
spec:
  static:
    - {address: 127.0.0.1, port: 1, zone: zone-a}
    - {address: 127.0.0.1, port: 2, zone: zone-b}
  failover: {preferLocalZone: true}
---
apiVersion: parapet.dev/v1alpha1
kind: ApiRoute
metadata: {name: r}
spec:
  hosts: ['*']
  rules: [{backends: [{pool: p}]}]
"#;
        let m = parapet_crds::manifest::Manifest::parse(yaml).unwrap();
        Snapshot::new(7, parapet_crds::compiler::compile(&m.inputs()).table)
    }

    fn store(zone: Option<&str>) -> Arc<SnapshotStore> {
        SnapshotStore::with_options(
            Arc::new(Metrics::new()),
            ClientPool::default(),
            None,
            BuildOptions {
                zone: zone.map(str::to_string),
                ..Default::default()
            },
        )
    }

    #[tokio::test]
    async fn a_pushed_zone_rebuilds_the_same_table_for_that_zone() {
        let s = store(None);
        assert!(matches!(
            s.apply(snapshot()).await,
            Ok(ApplyOutcome::Applied)
        ));
        assert_eq!(s.load().unwrap().zone, None);
        // The same table again, now with the zone the operator names: built for it.
        s.set_pushed_zone("zone-b");
        assert!(matches!(
            s.apply(snapshot()).await,
            Ok(ApplyOutcome::Applied)
        ));
        let rt = s.load().unwrap();
        assert_eq!(rt.zone.as_deref(), Some("zone-b"));
        assert_eq!(rt.clusters.len(), 1);
        let local: Vec<u16> = rt
            .clusters
            .values()
            .next()
            .unwrap()
            .balancer
            .endpoints()
            .iter()
            .filter(|e| e.local)
            .map(|e| e.port)
            .collect();
        assert_eq!(local, vec![2]);
        // Nothing new: unchanged.
        assert!(matches!(
            s.apply(snapshot()).await,
            Ok(ApplyOutcome::Unchanged)
        ));
    }

    #[tokio::test]
    async fn the_zone_flag_wins_over_pushes() {
        let s = store(Some("zone-a"));
        s.set_pushed_zone("zone-b");
        assert!(matches!(
            s.apply(snapshot()).await,
            Ok(ApplyOutcome::Applied)
        ));
        assert_eq!(s.load().unwrap().zone.as_deref(), Some("zone-a"));
    }
}
