//! What the commands ask the API server, beyond plain lists: the CRDs' versions and the
//! fleet view.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::{
    api::core::v1::ConfigMap,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{Api, Client};
use parapet_crds::fleet::{self, FleetStatus};

use crate::kinds::Kind;

/// The annotation Gateway API's CRDs carry their release in.
pub const GATEWAY_BUNDLE_ANNOTATION: &str = "gateway.networking.k8s.io/bundle-version";

/// What the cluster has of a kind's CRD.
pub enum Crd {
    Absent,
    /// The version annotation (if any), and whether it serves the kind's version.
    Present {
        version: Option<String>,
        serves: bool,
    },
}

pub async fn crd(client: &Client, kind: &Kind) -> Result<Crd> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let Some(crd) = api
        .get_opt(&kind.crd_name())
        .await
        .with_context(|| format!("cannot read the CRD {}", kind.crd_name()))?
    else {
        return Ok(Crd::Absent);
    };
    let annotation = if kind.gateway_api {
        GATEWAY_BUNDLE_ANNOTATION
    } else {
        parapet_crds::api::CRD_VERSION_ANNOTATION
    };
    let version = crd
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotation))
        .cloned();
    let serves = crd
        .spec
        .versions
        .iter()
        .any(|v| v.name == kind.version && v.served);
    Ok(Crd::Present { version, serves })
}

/// `1.2.3` (a leading `v` and any `-suffix` ignored) as numbers, for ordering.
pub fn version_key(v: &str) -> Vec<u64> {
    v.trim_start_matches('v')
        .split(['-', '+'])
        .next()
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// The fleet view the operator writes; `None` when there is none (yet).
pub async fn fleet_status(client: &Client, namespace: &str) -> Result<Option<FleetStatus>> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(fleet::CONFIGMAP)
        .await
        .with_context(|| {
            format!(
                "cannot read the fleet view (ConfigMap {namespace}/{})",
                fleet::CONFIGMAP
            )
        })?;
    let Some(json) = cm
        .and_then(|c| c.data)
        .and_then(|mut d| d.remove(fleet::KEY))
    else {
        return Ok(None);
    };
    serde_json::from_str(&json).map(Some).with_context(|| {
        format!(
            "the fleet view in ConfigMap {namespace}/{} is not one this parapet reads",
            fleet::CONFIGMAP
        )
    })
}

/// How long to wait between looks at the fleet view.
pub const POLL: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::version_key;

    #[test]
    fn versions_order_by_number_not_text() {
        assert!(version_key("0.10.0") > version_key("0.9.3"));
        assert!(version_key("v1.2.0") > version_key("1.1.9"));
        assert_eq!(version_key("0.1.0-rc1"), version_key("0.1.0"));
    }
}
