//! Parapet's operator, shaped like Linkerd's policy controller: `index` (watches feeding
//! in-memory stores; `secrets` says which Secrets), `compile` (stores → table), `push`
//! (table → every data-plane pod, over `tls`), `status` (conditions, leader only), `lease`
//! (leader election), `pki` and `snapshot_certs` (the snapshot channel's certificates),
//! `metrics`.

#![forbid(unsafe_code)]
// std's clock and sleeps are refused (operator/clippy.toml): timing follows tokio's clock.
#![deny(clippy::disallowed_types, clippy::disallowed_methods)]

pub mod args;
pub mod compile;
pub mod delta;
pub mod fleetview;
pub mod gateway;
pub mod index;
pub mod lease;
pub mod metrics;
pub mod pki;
pub mod provision;
pub mod push;
pub mod secrets;
pub mod snapshot_certs;
pub mod status;
pub mod tls;

#[cfg(test)]
mod testkit;

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

/// Resolves, with the reason, once a task the operator cannot work without has ended
/// (leader election, certificate renewal); `run` then returns the error.
pub type Ended = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Error> + Send>>;

pub use parapet_process::init_logging;

pub async fn run(args: Args) -> anyhow::Result<()> {
    // Checked first: a bad certificate file is a configuration error, reported at once.
    // With --snapshot-ca-secret the operator issues the certificates itself (below).
    let issuing = args.snapshot_ca_secret.is_some();
    let push_tls = tls::PushTls::from_files(
        args.dataplane_ca.as_deref(),
        args.client_cert.as_deref(),
        args.client_key.as_deref(),
        args.dataplane_server_name.as_deref().filter(|_| !issuing),
    )?
    .map(Arc::new);
    let issued_name = match (issuing, &args.dataplane_server_name) {
        (true, None) => anyhow::bail!(
            "--snapshot-ca-secret needs --dataplane-server-name: the name to issue the data planes' certificate to"
        ),
        (true, Some(n)) => Some(n.clone()),
        (false, _) => None,
    };
    if !issuing {
        tracing::info!(
            tls = push_tls.is_some(),
            client_cert = args.client_cert.is_some(),
            "snapshot channel"
        );
    }
    let client = kube::Client::try_default().await.context(
        "cannot reach the Kubernetes API: set KUBECONFIG or run in a pod with a service account",
    )?;
    // Certificates the operator issues itself: ensured before anything is pushed.
    let (push_tls, certs_ended): (_, Ended) = match (
        &args.snapshot_ca_secret,
        &args.snapshot_tls_secret,
        issued_name,
    ) {
        (Some(ca_secret), Some(tls_secret), Some(server_name)) => {
            let (tls, ended) = snapshot_certs::start(
                &client,
                snapshot_certs::Config {
                    namespace: args.dataplane_namespace.clone(),
                    ca_secret: ca_secret.clone(),
                    tls_secret: tls_secret.clone(),
                    server_name,
                    check_every: args.snapshot_cert_check_interval,
                    restart: args.dataplane_deployment.clone(),
                },
            )
            .await?;
            tracing::info!(
                ca = %ca_secret,
                tls = %tls_secret,
                "snapshot channel: mTLS with certificates this operator issues"
            );
            (Some(tls), ended)
        }
        _ => (push_tls, Box::pin(std::future::pending())),
    };
    let token = match &args.snapshot_token_file {
        Some(p) => Some(parapet_process::read_secret_file("snapshot token", p)?),
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

    secrets::check(&client, &args).await?;
    let index = Arc::new(Index::start(
        &client,
        &args,
        index::key_salt_seed(token.as_deref()),
    ));
    let (leader, lease_ended) = lease::start(client.clone(), &args, metrics.clone()).await?;

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
    let fleets = Arc::new(fleetview::Fleets::default());
    fleets.register("default", &fleet);
    tokio::spawn(fleetview::run(
        client.clone(),
        args.lease_namespace.clone(),
        identity.clone(),
        fleets.clone(),
        leader.clone(),
    ));
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
        token: token.clone(),
        concurrency: args.push_concurrency,
        resync: args.resync_interval,
        timeout: args.push_timeout,
        metrics: metrics.clone(),
        clock: clock.clone(),
        republish: republish.clone(),
        events: Some((recorder.clone(), dataplane_ref)),
        tls: push_tls.clone(),
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
        leader.clone(),
        metrics.clone(),
        Some(recorder),
    ));
    if gateway::installed(&client).await {
        let controller = gateway::fleets::Controller {
            client: client.clone(),
            gateways: Arc::new(gateway::GatewayIndex::start(&client)),
            index: index.clone(),
            clock: clock.clone(),
            leader: leader.clone(),
            metrics: metrics.clone(),
            fleets,
            push: gateway::fleets::PushConfig {
                token: token.clone(),
                tls: push_tls.clone(),
                concurrency: args.push_concurrency,
                resync: args.resync_interval,
                timeout: args.push_timeout,
                admin_port_name: args.dataplane_port_name.clone(),
            },
            provisioner: match fleet_template(&args, token.as_deref()) {
                Ok((deployment, token)) => Some(gateway::provisioner::Provisioner::new(
                    client.clone(),
                    args.dataplane_namespace.clone(),
                    deployment.to_string(),
                    args.dataplane_port_name.clone(),
                    token.to_string(),
                    args.snapshot_tls_secret.clone(),
                )),
                Err(why) => {
                    tracing::warn!("Gateway fleets are not provisioned: {why}");
                    None
                }
            },
        };
        tokio::spawn(controller.run());
        tracing::info!(
            "Gateway API installed: serving GatewayClasses of {}",
            parapet_crds::gateway_api::CONTROLLER_NAME
        );
    } else {
        tracing::info!("Gateway API CRDs not installed: serving ApiRoutes only");
    }
    let compiler = tokio::spawn(compile::run(
        index,
        clock,
        republish,
        args.debounce,
        args.max_wait,
        tables_tx,
        metrics,
    ));

    supervise(
        compiler,
        Box::pin(async move {
            tokio::select! {
                e = lease_ended => e.context("leader election stopped"),
                e = certs_ended => e,
            }
        }),
        parapet_process::stop_signal(),
    )
    .await
}

/// The default fleet's Deployment and the snapshot token, which Gateway fleets copy, or
/// why fleets cannot be provisioned. Certificates from files (`--dataplane-ca`) cannot be
/// copied into the fleets' namespaces, and fleets without them would never take a push.
fn fleet_template<'a>(
    args: &'a Args,
    token: Option<&'a str>,
) -> Result<(&'a str, &'a str), &'static str> {
    match (&args.dataplane_deployment, token) {
        (Some(_), Some(_)) if args.dataplane_ca.is_some() => Err(
            "the snapshot channel's certificates come from files (--dataplane-ca), which cannot be copied into the fleets; let the operator issue them (--snapshot-ca-secret) or turn TLS off",
        ),
        (Some(d), Some(t)) => Ok((d.as_str(), t)),
        _ => {
            Err("they need --dataplane-deployment (the fleet they copy) and --snapshot-token-file")
        }
    }
}

/// Runs until `shutdown` (Ok), or until a part the operator cannot work without stops
/// (Err): the process then exits non-zero and Kubernetes restarts it, rather than leaving a
/// replica that looks healthy but can never compile or lead again.
async fn supervise(
    compiler: impl std::future::Future,
    critical: Ended,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::select! {
        _ = compiler => anyhow::bail!("the compile loop stopped"),
        e = critical => Err(e.context("exiting so that the operator is restarted")),
        _ = shutdown => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use tokio::sync::watch;

    use super::*;

    #[tokio::test]
    async fn the_end_of_leader_election_ends_run_with_an_error() {
        let (state_tx, state_rx) = watch::channel(true);
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<String>();
        let (_leading, ended) = lease::follow(
            state_rx,
            async move { end_rx.await.unwrap_or_default() },
            "me".into(),
            Arc::new(Metrics::new()),
        );
        let run = tokio::spawn(supervise(
            std::future::pending::<()>(),
            ended,
            std::future::pending(),
        ));
        end_tx.send("its task ended: panicked".into()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("supervise returns within 5s")
            .unwrap();
        let err = format!("{:#}", result.unwrap_err());
        assert!(
            err.contains("exiting so that the operator is restarted"),
            "{err}"
        );
        assert!(err.contains("the lease manager stopped"), "{err}");
        assert!(err.contains("panicked"), "{err}");
        drop(state_tx);
    }

    #[tokio::test]
    async fn shutdown_ends_run_cleanly() {
        let (_state_tx, state_rx) = watch::channel(false);
        let (_leading, ended) = lease::follow(
            state_rx,
            std::future::pending(),
            "me".into(),
            Arc::new(Metrics::new()),
        );
        let result = tokio::time::timeout(
            Duration::from_secs(5),
            supervise(std::future::pending::<()>(), ended, async {}),
        )
        .await
        .expect("supervise returns within 5s");
        assert!(result.is_ok());
    }
    #[test]
    fn gateway_fleets_copy_the_default_fleet_with_a_token_and_without_certificate_files() {
        use clap::Parser as _;
        let parse = |extra: &[&str]| {
            Args::try_parse_from(["operator"].iter().chain(extra)).expect("valid flags")
        };
        // Without TLS, or with certificates the operator issues: provisioned.
        let off = parse(&["--dataplane-deployment", "dp"]);
        assert_eq!(fleet_template(&off, Some("t")), Ok(("dp", "t")));
        let issued = parse(&[
            "--dataplane-deployment",
            "dp",
            "--snapshot-ca-secret",
            "ca",
            "--snapshot-tls-secret",
            "tls",
            "--dataplane-server-name",
            "dp.parapet.svc",
        ]);
        assert_eq!(fleet_template(&issued, Some("t")), Ok(("dp", "t")));
        // Certificates from files cannot be copied; no token or template: nothing to copy.
        let files = parse(&["--dataplane-deployment", "dp", "--dataplane-ca", "/ca.crt"]);
        assert!(fleet_template(&files, Some("t")).is_err());
        assert!(fleet_template(&off, None).is_err());
        assert!(fleet_template(&parse(&[]), Some("t")).is_err());
    }
}
