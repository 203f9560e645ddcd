//! Keeps every accepted Gateway's fleet provisioned ([`crate::provision`]): the template
//! from the chart's default data-plane Deployment (and its autoscaler and disruption
//! budget), shaped by the GatewayClass's parameters; the snapshot channel's credentials
//! copied in; objects applied only when what they render to changed (and once in a while
//! regardless, to repair hand edits); fleets of Gateways gone or moved to another class
//! deleted.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    autoscaling::v2::HorizontalPodAutoscaler,
    core::v1::{ConfigMap, Secret},
    policy::v1::PodDisruptionBudget,
};
use kube::{Api, Client, ResourceExt};
use parapet_crds::gateway_api::{gatewayclasses::GatewayClass, gateways::Gateway};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::provision::{self, FleetGateway, FleetTemplate, SnapshotCredentials, SnapshotTls};

/// Applied objects are applied again after this long even when unchanged.
const REAPPLY: Duration = Duration::from_secs(300);

pub struct Provisioner {
    pub client: Client,
    /// Where the default fleet and the snapshot channel's Secrets live.
    pub namespace: String,
    /// The default data-plane Deployment (`--dataplane-deployment`), the template.
    pub deployment: String,
    pub admin_port_name: String,
    pub token: String,
    /// The data planes' admin certificate Secret (`--snapshot-tls-secret`), if TLS.
    pub tls_secret: Option<String>,
    applied: BTreeMap<(String, String), ([u8; 32], Instant)>,
    kept: Option<BTreeSet<(String, String)>>,
}

impl Provisioner {
    pub fn new(
        client: Client,
        namespace: String,
        deployment: String,
        admin_port_name: String,
        token: String,
        tls_secret: Option<String>,
    ) -> Self {
        Self {
            client,
            namespace,
            deployment,
            admin_port_name,
            token,
            tls_secret,
            applied: BTreeMap::new(),
            kept: None,
        }
    }

    async fn template(&self) -> anyhow::Result<FleetTemplate> {
        let deployment: Deployment = Api::namespaced(self.client.clone(), &self.namespace)
            .get(&self.deployment)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the default data-plane Deployment {}/{} that Gateway fleets copy: {e}",
                    self.namespace,
                    self.deployment
                )
            })?;
        let hpa: Option<HorizontalPodAutoscaler> =
            Api::namespaced(self.client.clone(), &self.namespace)
                .get_opt(&self.deployment)
                .await?;
        let pdb: Option<PodDisruptionBudget> =
            Api::namespaced(self.client.clone(), &self.namespace)
                .get_opt(&self.deployment)
                .await?;
        Ok(FleetTemplate::from_default_fleet(
            &deployment,
            hpa.as_ref(),
            pdb.as_ref(),
            &self.admin_port_name,
        )?)
    }

    async fn credentials(&self) -> anyhow::Result<SnapshotCredentials> {
        let tls = match &self.tls_secret {
            None => None,
            Some(name) => {
                let s: Secret = Api::namespaced(self.client.clone(), &self.namespace)
                    .get(name)
                    .await?;
                let data = s.data.unwrap_or_default();
                let text = |k: &str| {
                    data.get(k)
                        .and_then(|v| String::from_utf8(v.0.clone()).ok())
                        .ok_or_else(|| {
                            anyhow::anyhow!("Secret {}/{name} has no {k}", self.namespace)
                        })
                };
                Some(SnapshotTls {
                    cert: text("tls.crt")?,
                    key: text("tls.key")?,
                    client_ca: text("ca.crt")?,
                })
            }
        };
        Ok(SnapshotCredentials {
            token: self.token.clone(),
            tls,
        })
    }

    /// Provisions the fleets of `gateways` and deletes the others. Returns the classes
    /// whose parameters are invalid, with why.
    /// `keep`: every Gateway of a Parapet class, accepted or not. A Gateway that is not
    /// accepted for a while (an edit that broke its listeners) keeps its fleet and address;
    /// only Gateways gone or moved to another class lose theirs.
    pub async fn reconcile(
        &mut self,
        gateways: &[std::sync::Arc<Gateway>],
        classes: &[std::sync::Arc<GatewayClass>],
        keep: BTreeSet<(String, String)>,
    ) -> BTreeMap<String, String> {
        let mut invalid = BTreeMap::new();
        if self.kept.as_ref() != Some(&keep) {
            match provision::delete_stale(&self.client, &keep).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(objects = n, "deleted fleets of Gateways that are gone"),
                Err(e) => tracing::warn!(error = %e, "cannot delete stale Gateway fleets"),
            }
            self.applied.retain(|k, _| keep.contains(k));
            self.kept = Some(keep);
        }
        if gateways.is_empty() {
            return invalid;
        }
        let (base, creds) = match (self.template().await, self.credentials().await) {
            (Ok(t), Ok(c)) => (t, c),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "Gateway fleets cannot be provisioned");
                return invalid;
            }
        };
        let mut templates: BTreeMap<String, Option<FleetTemplate>> = BTreeMap::new();
        for c in classes {
            let t = match self.class_template(&base, c).await {
                Ok(t) => Some(t),
                Err(e) => {
                    invalid.insert(c.name_any(), e.to_string());
                    None
                }
            };
            templates.insert(c.name_any(), t);
        }
        for g in gateways {
            let Some(Some(template)) = templates.get(&g.spec.gateway_class_name) else {
                continue;
            };
            let key = (g.namespace().unwrap_or_default(), g.name_any());
            let fleet = match FleetGateway::from_gateway(g) {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(gateway = %format!("{}/{}", key.0, key.1), error = %e, "no fleet");
                    continue;
                }
            };
            let creds = SnapshotCredentials {
                token: provision::fleet_token(&creds.token, &key.0, &key.1),
                tls: creds.tls.clone(),
            };
            let objects = provision::render(&fleet, template, &creds);
            let hash: [u8; 32] = Sha256::digest(format!("{objects:?}").as_bytes()).into();
            if self
                .applied
                .get(&key)
                .is_some_and(|(h, at)| *h == hash && at.elapsed() < REAPPLY)
            {
                continue;
            }
            match provision::apply(&self.client, &objects).await {
                Ok(()) => {
                    tracing::info!(gateway = %format!("{}/{}", key.0, key.1), "fleet applied");
                    self.applied.insert(key, (hash, Instant::now()));
                }
                Err(e) => {
                    tracing::warn!(gateway = %format!("{}/{}", key.0, key.1), error = %format!("{e:#}"), "cannot apply the Gateway's fleet");
                    self.applied.remove(&key);
                }
            }
        }
        invalid
    }

    async fn class_template(
        &self,
        base: &FleetTemplate,
        class: &GatewayClass,
    ) -> anyhow::Result<FleetTemplate> {
        match provision::parameters_ref(class)? {
            None => Ok(base.clone()),
            Some((ns, name)) => {
                let cm: ConfigMap = Api::namespaced(self.client.clone(), &ns)
                    .get(&name)
                    .await
                    .map_err(|e| anyhow::anyhow!("parametersRef names ConfigMap {ns}/{name}, which cannot be read ({e}); create it or fix the reference"))?;
                Ok(base.with_parameters(&cm)?)
            }
        }
    }
}
