//! Certificates for the snapshot channel that the operator issues itself
//! (`--snapshot-ca-secret`, the chart's default). It keeps a CA in one Secret and the data
//! planes' admin certificate in another (`kubernetes.io/tls`: `ca.crt`, `tls.crt`,
//! `tls.key`), which the data-plane pods mount; the kubelet holds a pod until that Secret
//! exists. The operator's own client certificate is issued from the CA at start and lives
//! only in memory, so a data-plane pod holds nothing that lets it pass for the operator.
//!
//! Both Secrets are created only when absent: replicas that start together race to create
//! them, one wins, and the others (told AlreadyExists) read what it wrote, so there is one
//! CA. Leaves are issued again before they expire ([`pki::RENEW_BEFORE`]); the TLS Secret
//! is replaced under its resourceVersion, so two replicas never both rewrite it, and the
//! one that rewrote it rolls the data plane (`--dataplane-deployment`), whose pods read
//! their certificate only at start.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::Context;
use k8s_openapi::{
    ByteString,
    api::{apps::v1::Deployment, core::v1::Secret},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use time::OffsetDateTime;

use crate::{
    Ended,
    pki::{self, Ca},
    tls::{ClientCert, PushTls},
};

/// Where the certificates live and what they name.
#[derive(Clone, Debug)]
pub struct Config {
    pub namespace: String,
    pub ca_secret: String,
    pub tls_secret: String,
    /// The DNS name in the data planes' certificate, which the operator verifies.
    pub server_name: String,
    /// How often the leaves are checked for renewal.
    pub check_every: Duration,
    /// The data plane's Deployment, restarted after its certificate is issued again (it
    /// reads the certificate at start). `None`: restarting is left to the user.
    pub restart: Option<String>,
}

/// The pod-template annotation whose change rolls the data plane (as `kubectl rollout
/// restart` does with its own annotation).
pub const RESTART_ANNOTATION: &str = "parapet.dev/snapshot-certificate-issued";

/// What [`ensure_tls`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum TlsOutcome {
    Created,
    Kept,
    Reissued(String),
}

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/part-of".into(), "parapet".into()),
        (
            "app.kubernetes.io/managed-by".into(),
            "parapet-operator".into(),
        ),
    ])
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

fn field(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
}

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

/// The CA from Secret `name`, created first if absent (create-if-absent: a replica that
/// loses the race reads the winner's CA).
pub async fn ensure_ca(api: &Api<Secret>, ns: &str, name: &str) -> anyhow::Result<Ca> {
    let cannot = || format!("cannot read or create the snapshot CA Secret {ns}/{name}");
    let existing = match api.get_opt(name).await.with_context(cannot)? {
        Some(s) => s,
        None => {
            let ca = Ca::generate(OffsetDateTime::now_utc())?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    labels: Some(labels()),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(data(&[
                    ("ca.crt", &ca.pem().cert),
                    ("ca.key", &ca.pem().key),
                ])),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &secret).await {
                Ok(_) => {
                    tracing::info!(secret = %format!("{ns}/{name}"), "snapshot CA created");
                    return Ok(ca);
                }
                Err(e) if is_status(&e, 409) => {
                    tracing::info!(secret = %format!("{ns}/{name}"), "another replica created the snapshot CA first; using it");
                    api.get(name).await.with_context(cannot)?
                }
                Err(e) => return Err(e).with_context(cannot),
            }
        }
    };
    let (Some(cert), Some(key)) = (field(&existing, "ca.crt"), field(&existing, "ca.key")) else {
        anyhow::bail!(
            "Secret {ns}/{name} holds no ca.crt and ca.key; delete it and the operator makes a new CA (then restart the data-plane pods)"
        );
    };
    Ca::load(&cert, &key).with_context(|| {
        format!(
            "Secret {ns}/{name} holds no usable CA; delete it and the operator makes a new one (then restart the data-plane pods)"
        )
    })
}

fn tls_secret(name: &str, ca: &Ca, leaf: &pki::Pem, resource_version: Option<String>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels()),
            resource_version,
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data(&[
            ("ca.crt", &ca.pem().cert),
            ("tls.crt", &leaf.cert),
            ("tls.key", &leaf.key),
        ])),
        ..Default::default()
    }
}

/// Makes Secret `cfg.tls_secret` hold a current server certificate from `ca`: created if
/// absent, replaced (under its resourceVersion) when due for renewal, for another name or
/// another CA, and left alone otherwise.
pub async fn ensure_tls(
    api: &Api<Secret>,
    cfg: &Config,
    ca: &Ca,
    now: OffsetDateTime,
) -> anyhow::Result<TlsOutcome> {
    let (ns, name) = (&cfg.namespace, &cfg.tls_secret);
    let cannot = || format!("cannot read or write the snapshot TLS Secret {ns}/{name}");
    // A few rounds: each conflict means another replica wrote it meanwhile; look again.
    for _ in 0..5 {
        match api.get_opt(name).await.with_context(cannot)? {
            None => {
                let leaf = ca.issue_server(&cfg.server_name, now)?;
                match api
                    .create(&PostParams::default(), &tls_secret(name, ca, &leaf, None))
                    .await
                {
                    Ok(_) => return Ok(TlsOutcome::Created),
                    Err(e) if is_status(&e, 409) => continue,
                    Err(e) => return Err(e).with_context(cannot),
                }
            }
            Some(existing) => {
                let reason = if field(&existing, "ca.crt").as_deref() != Some(&ca.pem().cert) {
                    Some("its ca.crt is not the current CA".to_string())
                } else if field(&existing, "tls.key").is_none() {
                    Some("it holds no tls.key".to_string())
                } else {
                    ca.reissue_reason(
                        &field(&existing, "tls.crt").unwrap_or_default(),
                        Some(&cfg.server_name),
                        now,
                    )
                };
                let Some(reason) = reason else {
                    return Ok(TlsOutcome::Kept);
                };
                let leaf = ca.issue_server(&cfg.server_name, now)?;
                let secret = tls_secret(name, ca, &leaf, existing.metadata.resource_version);
                match api.replace(name, &PostParams::default(), &secret).await {
                    Ok(_) => return Ok(TlsOutcome::Reissued(reason)),
                    Err(e) if is_status(&e, 409) => continue,
                    Err(e) => return Err(e).with_context(cannot),
                }
            }
        }
    }
    anyhow::bail!("Secret {ns}/{name} kept changing while the operator tried to write it")
}

/// Ensures both Secrets, issues the operator's client certificate and returns the TLS
/// settings for pushes, with a task that renews the leaves. That task ends (and with it
/// the process, so it restarts with the new trust) only if the CA Secret changes.
pub async fn start(client: &Client, cfg: Config) -> anyhow::Result<(Arc<PushTls>, Ended)> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let ca = ensure_ca(&api, &cfg.namespace, &cfg.ca_secret).await?;
    let outcome = ensure_tls(&api, &cfg, &ca, OffsetDateTime::now_utc()).await?;
    log_outcome(&cfg, &outcome);
    restart_after(client, &cfg, &outcome).await;
    let client_pem = ca.issue_client(OffsetDateTime::now_utc())?;
    let client_cert = Arc::new(ClientCert::new(&client_pem.cert, &client_pem.key)?);
    let tls = Arc::new(PushTls::issued(
        &ca.pem().cert,
        client_cert.clone(),
        &cfg.server_name,
    )?);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let client = client.clone();
    tokio::spawn(async move {
        let mut client_pem = client_pem;
        let mut tick = tokio::time::interval(cfg.check_every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = OffsetDateTime::now_utc();
            match ensure_ca(&api, &cfg.namespace, &cfg.ca_secret).await {
                Ok(current) if current.pem().cert != ca.pem().cert => {
                    let _ = done_tx.send(anyhow::anyhow!(
                        "the snapshot CA in Secret {}/{} was replaced; restarting to trust the new one",
                        cfg.namespace,
                        cfg.ca_secret
                    ));
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "snapshot CA check failed; trying again later"
                    );
                    continue;
                }
            }
            match ensure_tls(&api, &cfg, &ca, now).await {
                Ok(o) => {
                    log_outcome(&cfg, &o);
                    restart_after(&client, &cfg, &o).await;
                }
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "snapshot certificate renewal failed; trying again later"
                ),
            }
            if let Some(reason) = ca.reissue_reason(&client_pem.cert, None, now) {
                match ca
                    .issue_client(now)
                    .map_err(anyhow::Error::from)
                    .and_then(|p| client_cert.replace(&p.cert, &p.key).map(|_| p))
                {
                    Ok(p) => {
                        client_pem = p;
                        tracing::info!(%reason, "operator client certificate issued again");
                    }
                    Err(e) => tracing::warn!(
                        error = format!("{e:#}"),
                        "cannot issue the operator's client certificate again"
                    ),
                }
            }
        }
    });
    let ended: Ended = Box::pin(async move {
        done_rx
            .await
            .unwrap_or_else(|_| anyhow::anyhow!("the snapshot certificate task ended"))
    });
    Ok((tls, ended))
}

/// After a re-issue (only then: a first issue finds the pods waiting for the Secret),
/// rolls the data plane so its pods read the new certificate. The Deployment's rollout
/// settings (surge, no unavailability) and PodDisruptionBudget apply. A failure is logged:
/// the old certificate stays valid for [`pki::RENEW_BEFORE`] after a renewal.
async fn restart_after(client: &Client, cfg: &Config, outcome: &TlsOutcome) {
    let (TlsOutcome::Reissued(_), Some(name)) = (outcome, &cfg.restart) else {
        return;
    };
    let api: Api<Deployment> = Api::namespaced(client.clone(), &cfg.namespace);
    let at = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {
        RESTART_ANNOTATION: at
    }}}}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => tracing::info!(
            deployment = %format!("{}/{name}", cfg.namespace),
            "data plane restarted to load its new snapshot certificate"
        ),
        Err(e) => tracing::error!(
            deployment = %format!("{}/{name}", cfg.namespace),
            error = %e,
            "cannot restart the data plane after issuing its certificate again; run kubectl rollout restart before the old certificate expires"
        ),
    }
}

fn log_outcome(cfg: &Config, outcome: &TlsOutcome) {
    let secret = format!("{}/{}", cfg.namespace, cfg.tls_secret);
    match outcome {
        TlsOutcome::Created => {
            tracing::info!(%secret, name = %cfg.server_name, "snapshot certificate issued")
        }
        TlsOutcome::Kept => tracing::debug!(%secret, "snapshot certificate current"),
        TlsOutcome::Reissued(reason) if cfg.restart.is_some() => tracing::info!(
            %secret,
            %reason,
            "snapshot certificate issued again"
        ),
        TlsOutcome::Reissued(reason) => tracing::warn!(
            %secret,
            %reason,
            "snapshot certificate issued again; data-plane pods read it at start, so restart them (kubectl rollout restart) before the old one expires"
        ),
    }
}
