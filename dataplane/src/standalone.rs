//! Standalone mode: the same resources from a YAML file, compiled with the same compiler,
//! reloaded when the file changes. Gateway API resources in the file (a GatewayClass of
//! Parapet's controller, a Gateway, routes, and the Services and EndpointSlices they send
//! to) are compiled as the operator compiles them, and the Gateway's listeners are served
//! (with the UpstreamPools and CachePolicies its routes use; a file with both ApiRoutes and
//! a Gateway is refused, since sockets then route by the Gateway's listeners alone). A broken file is logged and the old table stays; so is
//! a file with no routes (an editor that truncates before it writes can be caught between
//! the two), unless it says `# parapet: allowEmpty` on a line of its own.

use std::{
    hash::BuildHasher,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use parapet_crds::{
    compiler::{
        compile,
        gateway::{self, GatewayOutput},
    },
    manifest::Manifest,
    snapshot::{Snapshot, Table},
};

use crate::snapshot::SnapshotStore;

/// Reads and compiles the file into a snapshot. Errors say which document is wrong.
/// `gateway` (`namespace/name`) picks the Gateway to serve when the file has several.
pub fn load(path: &Path, version: u64, gateway: Option<&str>) -> anyhow::Result<Snapshot> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let manifest =
        Manifest::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let inputs = manifest.inputs();
    let out = compile(&inputs);
    for d in out.diagnostics.iter() {
        tracing::warn!(file = %path.display(), "{d}");
    }
    let mut table = out.table;
    if !manifest.gateway.is_empty() {
        let gw = gateway::compile_gateways(&manifest.gateway_inputs(), &inputs);
        report(path, &gw);
        let picked = pick(&gw, gateway)?;
        // With a Gateway's listeners in force, sockets route by them alone: ApiRoutes in
        // the same file would silently not be served.
        if !picked.listeners.is_empty() && !manifest.routes.is_empty() {
            anyhow::bail!(
                "{}: the file has ApiRoutes and a Gateway; a data plane that serves a Gateway's listeners routes by them alone, so the ApiRoutes would not be served. Put them in two files and run a data plane for each",
                path.display()
            );
        }
        table = gateway::merge(table, picked);
    }
    let mut snapshot = Snapshot::new(version, table);
    // As with pushes, a table without routes must be asked for.
    snapshot.allow_empty = allows_empty(&text);
    Ok(snapshot)
}

/// The table of the Gateway to serve: the one named, or the only one of a Parapet class.
fn pick(out: &GatewayOutput, wanted: Option<&str>) -> anyhow::Result<Table> {
    let accepted: Vec<_> = out.gateways.iter().filter(|g| g.accepted()).collect();
    match wanted {
        Some(w) => {
            let (ns, name) = w.split_once('/').unwrap_or(("default", w));
            let g = out.gateway(ns, name).ok_or_else(|| {
                anyhow::anyhow!("--gateway {w}: the file has no Gateway {ns}/{name} of a GatewayClass whose controllerName is {}", parapet_crds::gateway_api::CONTROLLER_NAME)
            })?;
            if !g.accepted() {
                anyhow::bail!("--gateway {w}: the Gateway is not accepted; see the warnings above");
            }
            Ok(g.table.clone())
        }
        None => match accepted.as_slice() {
            [] => {
                tracing::warn!(
                    "the file has Gateway API resources but no accepted Gateway of a GatewayClass whose controllerName is {}; only ApiRoutes are served",
                    parapet_crds::gateway_api::CONTROLLER_NAME
                );
                Ok(Table::default())
            }
            [g] => Ok(g.table.clone()),
            many => anyhow::bail!(
                "the file has {} accepted Gateways ({}); choose the one to serve with --gateway NAMESPACE/NAME",
                many.len(),
                many.iter()
                    .map(|g| format!("{}/{}", g.namespace, g.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    }
}

/// Logs every condition that is not as it should be, as the operator would write it.
fn report(path: &Path, out: &GatewayOutput) {
    let file = path.display();
    for g in &out.gateways {
        for c in g.conditions.iter().filter(|c| !c.status) {
            tracing::warn!(%file, gateway = %format!("{}/{}", g.namespace, g.name), condition = c.kind, reason = %c.reason, "{}", c.message);
        }
        for l in &g.listeners {
            for c in &l.conditions {
                let bad = if c.kind == "Conflicted" {
                    c.status
                } else {
                    !c.status
                };
                if bad {
                    tracing::warn!(%file, gateway = %format!("{}/{}", g.namespace, g.name), listener = %l.name, condition = c.kind, reason = %c.reason, "{}", c.message);
                }
            }
        }
    }
    for r in &out.routes {
        for p in &r.parents {
            for c in p.conditions.iter().filter(|c| !c.status) {
                tracing::warn!(%file, route = %format!("{} {}/{}", r.kind, r.namespace, r.name), parent = %p.parent_ref.name, condition = c.kind, reason = %c.reason, "{}", c.message);
            }
        }
    }
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
    // Content too, since editors may keep mtime and size on a quick save. Hashed with
    // foldhash, not FNV: the file is read every poll, and FNV's byte-at-a-time loop took
    // about 2 ms a second for a table of 10,000 routes (1.3 MB); the hash is only compared
    // within this process.
    Some((
        meta.modified().ok()?,
        meta.len(),
        foldhash::fast::FixedState::default().hash_one(&content[..]),
    ))
}

/// Applies the file now, then polls it for changes. Polling (not inotify) survives editors
/// that replace the file and ConfigMap symlink swaps alike.
pub async fn watch(
    path: PathBuf,
    gateway: Option<String>,
    store: Arc<SnapshotStore>,
    every: Duration,
) {
    let mut version = 0u64;
    let mut last = None;
    loop {
        let fp = fingerprint(&path);
        if fp != last {
            last = fp;
            version = next_version(version);
            match load(&path, version, gateway.as_deref()) {
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
