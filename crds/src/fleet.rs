//! The fleet view: what the leading operator knows of every data-plane pod, written to a
//! ConfigMap so anyone who may read it (`parapet status`, a restore waiting for the fleet)
//! sees which pods serve which table without reaching the pods.

use serde::{Deserialize, Serialize};

/// The ConfigMap, in the operator's namespace.
pub const CONFIGMAP: &str = "parapet-fleet-status";
/// Its data key, holding a [`FleetStatus`] as JSON.
pub const KEY: &str = "fleet.json";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    /// RFC 3339; when the operator wrote this.
    pub updated_at: String,
    /// The operator replica (leader) that wrote it.
    pub operator: String,
    /// The default fleet (`default`, serving ApiRoutes) and one per Gateway
    /// (`namespace/name`), ordered by name.
    pub fleets: Vec<FleetReport>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FleetReport {
    pub name: String,
    /// The table the operator pushes now; `None` before the first compile.
    pub desired: Option<TableRef>,
    /// Ordered by pod name.
    pub pods: Vec<PodReport>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TableRef {
    pub version: u64,
    pub hash: String,
    /// [`crate::snapshot::Table::config_hash`]: what a backup records.
    pub config_hash: String,
    pub routes: usize,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    pub name: String,
    /// The admin address pushes go to.
    pub address: String,
    /// Ready, as its EndpointSlice says.
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The table it acknowledged (0 and empty: none yet).
    pub version: u64,
    pub hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_push: Option<PushReport>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PushReport {
    /// RFC 3339.
    pub at: String,
    pub ok: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Failures in a row.
    #[serde(default)]
    pub failures: u32,
}

impl FleetReport {
    /// Pods that serve the desired table.
    pub fn in_sync(&self) -> usize {
        match &self.desired {
            Some(d) => self
                .pods
                .iter()
                .filter(|p| p.version == d.version && p.hash == d.hash)
                .count(),
            None => 0,
        }
    }
}
