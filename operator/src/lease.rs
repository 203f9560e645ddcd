//! Leader election on a `coordination.k8s.io` Lease. Every replica watches and compiles;
//! only the holder of the Lease pushes and writes status.
//!
//! The lease manager runs as a task of its own. Should it ever end (a panic, an error it
//! gives up on), this replica could never lead again while looking healthy; instead the end
//! is handed back to `run` as an error, the process exits non-zero and Kubernetes restarts it.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

use crate::{Ended, args::Args, metrics::Metrics};

/// This replica's name in the Lease and in Events.
pub fn identity(args: &Args) -> String {
    args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}

/// Starts competing for the Lease; the receiver says whether this replica leads, the
/// future resolves if the lease manager stops.
pub async fn start(
    client: kube::Client,
    args: &Args,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(watch::Receiver<bool>, Ended)> {
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
    let (rx, task) = manager.watch().await;
    let ended = async move {
        match task.await {
            Ok(Ok(_)) => "it returned".to_string(),
            Ok(Err(e)) => format!("it failed: {e}"),
            Err(e) => format!("its task ended: {e}"),
        }
    };
    Ok(follow(rx, ended, identity, metrics))
}

/// Mirrors the lease manager's `leading` into the returned receiver (and the `leader`
/// metric). When `ended` resolves, or the manager's sender goes, leading turns false and
/// the returned future resolves with an error naming why.
pub fn follow(
    mut rx: watch::Receiver<bool>,
    ended: impl Future<Output = String> + Send + 'static,
    identity: String,
    metrics: Arc<Metrics>,
) -> (watch::Receiver<bool>, Ended) {
    let (tx, out) = watch::channel(false);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    tokio::spawn(async move {
        tokio::pin!(ended);
        let reason = loop {
            let leading = *rx.borrow_and_update();
            metrics.leader.set(i64::from(leading));
            if tx.send_replace(leading) != leading {
                tracing::info!(%identity, leading, "leadership changed");
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() {
                    break "it dropped its state channel".to_string();
                },
                reason = &mut ended => break reason,
            }
        };
        tx.send_replace(false);
        metrics.leader.set(0);
        tracing::error!(%identity, %reason, "the lease manager stopped; no longer leading");
        let _ = done_tx.send(anyhow::anyhow!(
            "the lease manager stopped ({reason}): this replica could never lead again"
        ));
    });
    let ended: Ended = Box::pin(async move {
        done_rx
            .await
            .unwrap_or_else(|_| anyhow::anyhow!("the leader-election task ended"))
    });
    (out, ended)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_managers_end_stops_leading_and_resolves_with_an_error() {
        let metrics = Arc::new(Metrics::new());
        let (state_tx, state_rx) = watch::channel(false);
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<String>();
        let ended = async move { end_rx.await.unwrap_or_default() };
        let (mut leading, ended) = follow(state_rx, ended, "me".into(), metrics.clone());

        state_tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), leading.wait_for(|l| *l))
            .await
            .expect("leading within 5s")
            .unwrap();
        assert_eq!(metrics.leader.get(), 1);

        end_tx.send("it failed: boom".into()).unwrap();
        let err = tokio::time::timeout(Duration::from_secs(5), ended)
            .await
            .expect("the end is reported within 5s");
        assert!(err.to_string().contains("it failed: boom"), "{err}");
        assert!(!*leading.borrow());
        assert_eq!(metrics.leader.get(), 0);
        drop(state_tx);
    }

    #[tokio::test]
    async fn a_dropped_state_channel_counts_as_the_end() {
        let (state_tx, state_rx) = watch::channel(true);
        let (_leading, ended) = follow(
            state_rx,
            std::future::pending(),
            "me".into(),
            Arc::new(Metrics::new()),
        );
        drop(state_tx);
        let err = tokio::time::timeout(Duration::from_secs(5), ended)
            .await
            .expect("the end is reported within 5s");
        assert!(err.to_string().contains("state channel"), "{err}");
    }
}
