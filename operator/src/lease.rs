//! Leader election on a `coordination.k8s.io` Lease. Every replica watches and compiles;
//! only the holder of the Lease pushes and writes status.

use std::sync::Arc;

use anyhow::Context;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::{args::Args, metrics::Metrics};

/// This replica's name in the Lease and in Events.
pub fn identity(args: &Args) -> String {
    args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

/// Starts competing for the Lease; the receiver says whether this replica leads.
pub async fn start(
    client: kube::Client,
    args: &Args,
    metrics: Arc<Metrics>,
) -> anyhow::Result<watch::Receiver<bool>> {
    let identity = identity(args);
    let duration = args.lease_duration_secs.max(2);
    let manager = LeaseManagerBuilder::new(client, &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(duration)
        .with_grace((duration / 3).max(1))
        .build()
        .await
        .with_context(|| {
            format!(
                "cannot use Lease {}/{}",
                args.lease_namespace, args.lease_name
            )
        })?;
    let (rx, _task) = manager.watch().await;
    let (tx, out) = watch::channel(false);
    let mut rx2 = rx.clone();
    tokio::spawn(async move {
        loop {
            let leading = *rx2.borrow_and_update();
            metrics.leader.set(i64::from(leading));
            if tx.send_replace(leading) != leading {
                tracing::info!(%identity, leading, "leadership changed");
            }
            if rx2.changed().await.is_err() {
                // The lease task ended: stop acting as leader.
                tx.send_replace(false);
                metrics.leader.set(0);
                tracing::error!("the lease manager stopped; no longer leading");
                return;
            }
        }
    });
    drop(rx);
    Ok(out)
}
