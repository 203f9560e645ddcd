//! Standalone mode: the same resources from a YAML file, compiled with the same compiler,
//! reloaded when the file changes. A broken file is logged and the old table stays; so is
//! a file with no routes (an editor that truncates before it writes can be caught between
//! the two), unless it says `# parapet: allowEmpty` on a line of its own.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use parapet_crds::{compiler::compile, manifest::Manifest, snapshot::Snapshot};

use crate::snapshot::SnapshotStore;

/// Reads and compiles the file into a snapshot. Errors say which document is wrong.
pub fn load(path: &Path, version: u64) -> anyhow::Result<Snapshot> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let manifest =
        Manifest::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let out = compile(&manifest.inputs());
    for d in out.diagnostics.iter() {
        tracing::warn!(file = %path.display(), "{d}");
    }
    let mut snapshot = Snapshot::new(version, out.table);
    // As with pushes, a table without routes must be asked for.
    snapshot.allow_empty = allows_empty(&text);
    Ok(snapshot)
}

/// The marker line that makes a file without routes a deliberate empty table.
pub const ALLOW_EMPTY: &str = "# parapet: allowEmpty";

fn allows_empty(text: &str) -> bool {
    text.lines().any(|l| l.trim() == ALLOW_EMPTY)
}

/// Versions from the wall clock in milliseconds, so they increase across restarts too.
pub fn next_version(last: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    now.max(last + 1)
}

fn fingerprint(path: &Path) -> Option<(SystemTime, u64, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    let content = std::fs::read(path).ok()?;
    // Content too, since editors may keep mtime and size on a quick save.
    Some((
        meta.modified().ok()?,
        meta.len(),
        crate::fnv::fnv1a(&content),
    ))
}

/// Applies the file now, then polls it for changes. Polling (not inotify) survives editors
/// that replace the file and ConfigMap symlink swaps alike.
pub async fn watch(path: PathBuf, store: Arc<SnapshotStore>, every: Duration) {
    let mut version = 0u64;
    let mut last = None;
    loop {
        let fp = fingerprint(&path);
        if fp != last {
            last = fp;
            version = next_version(version);
            match load(&path, version) {
                Ok(s) => match store.apply(s).await {
                    Ok(_) => {
                        tracing::info!(file = %path.display(), version, "configuration loaded")
                    }
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "configuration refused; the previous table stays in force (a file meant to have no routes says `{ALLOW_EMPTY}`)")
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, "configuration not loaded; the previous table stays in force")
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}
