//! Parapet's operator, shaped like Linkerd's policy controller: `index` (watches feeding
//! in-memory stores), `compile` (stores → table), `push` (table → every data-plane pod),
//! `status` (conditions, leader only), `lease` (leader election), `metrics`.

#![forbid(unsafe_code)]

pub mod args;
pub mod compile;
pub mod index;
pub mod lease;
pub mod metrics;
pub mod push;
pub mod status;
pub mod tls;

use std::sync::Arc;

use anyhow::Context;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::{Notify, watch};

use crate::{
    args::Args,
    compile::VersionClock,
    index::Index,
    metrics::Metrics,
    push::{Fleet, Pusher},
};

pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARAPET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // Checked first: a bad certificate file is a configuration error, reported at once.
    let push_tls = tls::PushTls::from_files(
        args.dataplane_ca.as_deref(),
        args.client_cert.as_deref(),
        args.client_key.as_deref(),
        args.dataplane_server_name.as_deref(),
    )?
    .map(Arc::new);
    tracing::info!(
        tls = push_tls.is_some(),
        client_cert = args.client_cert.is_some(),
        "snapshot channel"
    );
    let client = kube::Client::try_default().await.context(
        "cannot reach the Kubernetes API: set KUBECONFIG or run in a pod with a service account",
    )?;
    let token = match &args.snapshot_token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the snapshot token file {}", p.display()))?;
            let t = t.trim().to_string();
            anyhow::ensure!(
                !t.is_empty(),
                "the snapshot token file {} is empty",
                p.display()
            );
            Some(t)
        }
        None => {
            tracing::warn!(
                "no --snapshot-token-file: pushes carry no token and data planes will refuse them"
            );
            None
        }
    };
    let metrics = Arc::new(Metrics::new());
    tokio::spawn({
        let (m, addr) = (metrics.clone(), args.metrics_listen);
        async move {
            if let Err(e) = metrics::serve(m, addr).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        }
    });

    let index = Arc::new(Index::start(&client, &args));
    let leader = lease::start(client.clone(), &args, metrics.clone()).await?;

    // Never compile, and so never push, before every watch has listed its objects.
    index.wait_ready().await;
    metrics
        .ready
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!("caches synced");

    let clock = Arc::new(VersionClock::default());
    let republish = Arc::new(Notify::new());
    let (tables_tx, tables_rx) = watch::channel(None);
    let fleet = Arc::new(Fleet::default());
    let identity = lease::identity(&args);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "parapet-operator".into(),
            instance: Some(identity),
        },
    );
    let dataplane_ref = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some(args.dataplane_service.clone()),
        namespace: Some(args.dataplane_namespace.clone()),
        ..Default::default()
    };
    let pusher = Arc::new(Pusher {
        fleet: fleet.clone(),
        token,
        concurrency: args.push_concurrency,
        resync: args.resync_interval,
        timeout: args.push_timeout,
        metrics: metrics.clone(),
        clock: clock.clone(),
        republish: republish.clone(),
        events: Some((recorder.clone(), dataplane_ref)),
        tls: push_tls,
    });
    tokio::spawn(pusher.run(
        index.dataplane.clone(),
        args.dataplane_port_name.clone(),
        index.dataplane_changed.clone(),
        tables_rx.clone(),
        leader.clone(),
    ));
    tokio::spawn(status::run(
        client.clone(),
        index.clone(),
        fleet,
        tables_rx,
        leader,
        metrics.clone(),
        Some(recorder),
    ));
    let compiler = tokio::spawn(compile::run(
        index,
        clock,
        republish,
        args.debounce,
        args.max_wait,
        tables_tx,
        metrics,
    ));

    tokio::select! {
        _ = compiler => anyhow::bail!("the compile loop stopped"),
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
