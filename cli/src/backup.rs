//! `parapet backup`: every Parapet resource (and the Gateway API resources of Parapet's
//! GatewayClasses) in the chosen namespaces, with the Secrets they reference when asked,
//! into one file whose manifest says what it holds and what the fleet served.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use anyhow::{Context, Result, bail};
use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{Api, Client, api::ListParams};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{
    cluster::{self, Crd},
    file::{self, BackupFile, Key, Manifest, SecretsRecord, TableRecord},
    kinds::{self, Kind},
    objects,
};

pub struct Options {
    /// Empty: every namespace.
    pub namespaces: Vec<String>,
    pub output: PathBuf,
    /// Encrypt the referenced Secrets with this key and include them.
    pub secrets: Option<Key>,
    /// Where the operator writes the fleet view.
    pub operator_namespace: String,
}

pub struct Summary {
    pub counts: BTreeMap<String, usize>,
    pub secrets: usize,
    pub tables: Vec<TableRecord>,
    /// Secrets referenced but not found.
    pub missing_secrets: Vec<String>,
}

pub async fn run(client: &Client, opts: &Options) -> Result<Summary> {
    let mut crds = BTreeMap::new();
    let mut by_kind: Vec<(Kind, Vec<Value>)> = Vec::new();
    for kind in kinds::ALL {
        match cluster::crd(client, &kind).await? {
            Crd::Absent if kind.gateway_api => continue,
            Crd::Absent => bail!(
                "the cluster has no {} CRD ({}): install Parapet's CRDs (the chart, or kubectl apply -f charts/parapet/crds/) first",
                kind.kind,
                kind.crd_name()
            ),
            Crd::Present { version, .. } => {
                crds.insert(kind.crd_name(), version.unwrap_or_default());
            }
        }
        by_kind.push((kind, list(client, &kind, &opts.namespaces).await?));
    }
    let objects = ours(by_kind);
    let mut counts = BTreeMap::new();
    for o in &objects {
        *counts.entry(objects::kind(o).to_string()).or_insert(0) += 1;
    }

    let (mut secrets_out, mut missing_secrets, mut secrets_record) = (None, Vec::new(), None);
    let mut secret_count = 0;
    if let Some(key) = &opts.secrets {
        let mut refs = BTreeSet::new();
        for o in &objects {
            objects::secret_refs(o, &mut refs);
        }
        let mut secrets = Vec::new();
        for (ns, name) in refs {
            match Api::<Secret>::namespaced(client.clone(), &ns)
                .get_opt(&name)
                .await
                .with_context(|| format!("cannot read Secret {ns}/{name}"))?
            {
                Some(s) => {
                    let mut v = serde_json::to_value(&s).expect("a Secret serialises");
                    v["apiVersion"] = "v1".into();
                    v["kind"] = "Secret".into();
                    secrets.push(objects::clean(&v));
                }
                None => missing_secrets.push(format!("{ns}/{name}")),
            }
        }
        let plain = serde_json::to_vec(&secrets).expect("Secrets serialise");
        let (armored, encryption) = key.encrypt(&plain)?;
        secret_count = secrets.len();
        secrets_record = Some(SecretsRecord {
            count: secrets.len(),
            encryption: encryption.to_string(),
            sha256: hex::encode(Sha256::digest(&plain)),
        });
        secrets_out = Some(armored);
    }

    let tables = match cluster::fleet_status(client, &opts.operator_namespace).await {
        Ok(Some(view)) => view
            .fleets
            .iter()
            .filter_map(|f| {
                let d = f.desired.as_ref()?;
                Some(TableRecord {
                    fleet: f.name.clone(),
                    version: d.version,
                    config_hash: d.config_hash.clone(),
                    routes: d.routes,
                    pods_in_sync: f.in_sync(),
                    pods: f.pods.len(),
                })
            })
            .collect(),
        // A backup does not need the fleet: only the wait after a restore does.
        Ok(None) | Err(_) => Vec::new(),
    };

    let file = BackupFile {
        api_version: file::API_VERSION.into(),
        manifest: Manifest {
            created_at: Timestamp::now().to_string(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            namespaces: opts.namespaces.clone(),
            crds,
            counts: counts.clone(),
            tables: tables.clone(),
            objects_sha256: file::sha256_json(&objects),
            secrets: secrets_record,
        },
        objects,
        secrets: secrets_out,
    };
    file.write(&opts.output)?;
    Ok(Summary {
        counts,
        secrets: secret_count,
        tables,
        missing_secrets,
    })
}

/// Prefix and suffix of the files `--output-dir` writes; only these are pruned.
const PREFIX: &str = "parapet-";
const SUFFIX: &str = ".json";

/// `DIR/parapet-20261204T101500Z.json`: names that sort by time.
pub fn timestamped(dir: &std::path::Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let now = Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string();
    Ok(dir.join(format!("{PREFIX}{now}{SUFFIX}")))
}

/// Deletes all but the newest `keep` backups in `dir` (by name, which sorts by time);
/// returns what it deleted. Other files are left alone.
pub fn prune(dir: &std::path::Path, keep: usize) -> Result<Vec<PathBuf>> {
    let mut ours: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        })
        .collect();
    ours.sort();
    let excess = ours.len().saturating_sub(keep);
    let gone: Vec<PathBuf> = ours.into_iter().take(excess).collect();
    for p in &gone {
        std::fs::remove_file(p).with_context(|| format!("cannot remove {}", p.display()))?;
    }
    Ok(gone)
}

async fn list(client: &Client, kind: &Kind, namespaces: &[String]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for api in kind.apis(client, namespaces) {
        let list = api
            .list(&ListParams::default())
            .await
            .with_context(|| format!("cannot list {}", kind.plural))?;
        for o in list.items {
            let mut v = serde_json::to_value(&o).expect("objects serialise");
            v["apiVersion"] = kind.api_version().into();
            v["kind"] = kind.kind.into();
            out.push(objects::clean(&v));
        }
    }
    out.sort_by(|a, b| {
        (objects::namespace(a), objects::name(a)).cmp(&(objects::namespace(b), objects::name(b)))
    });
    Ok(out)
}

/// Parapet's objects, and of Gateway API's those Parapet serves: its GatewayClasses, their
/// Gateways, the routes attached to those and the ReferenceGrants beside them.
fn ours(by_kind: Vec<(Kind, Vec<Value>)>) -> Vec<Value> {
    let str_at = |o: &Value, p: &str| o.pointer(p).and_then(Value::as_str).map(str::to_string);
    let mut classes = BTreeSet::new();
    let mut gateways = BTreeSet::new();
    let mut out = Vec::new();
    for (kind, objs) in by_kind {
        for o in objs {
            let keep = match kind.kind {
                "GatewayClass" => {
                    let ours = str_at(&o, "/spec/controllerName").as_deref()
                        == Some(parapet_crds::gateway_api::CONTROLLER_NAME);
                    if ours {
                        classes.insert(objects::name(&o).to_string());
                    }
                    ours
                }
                "Gateway" => {
                    let ours =
                        str_at(&o, "/spec/gatewayClassName").is_some_and(|c| classes.contains(&c));
                    if ours {
                        gateways.insert((
                            objects::namespace(&o).unwrap_or("").to_string(),
                            objects::name(&o).to_string(),
                        ));
                    }
                    ours
                }
                "ReferenceGrant" => !gateways.is_empty(),
                "HTTPRoute" | "GRPCRoute" => attached(&o, &gateways),
                _ => true,
            };
            if keep {
                out.push(o);
            }
        }
    }
    out
}

fn attached(route: &Value, gateways: &BTreeSet<(String, String)>) -> bool {
    let ns = objects::namespace(route).unwrap_or("");
    route
        .pointer("/spec/parentRefs")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter().any(|r| {
                let kind = r.get("kind").and_then(Value::as_str).unwrap_or("Gateway");
                let pns = r.get("namespace").and_then(Value::as_str).unwrap_or(ns);
                let name = r.get("name").and_then(Value::as_str).unwrap_or("");
                kind == "Gateway" && gateways.contains(&(pns.to_string(), name.to_string()))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pruning_keeps_the_newest_and_touches_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "parapet-20261201T020000Z.json",
            "parapet-20261202T020000Z.json",
            "parapet-20261203T020000Z.json",
            "notes.txt",
            "parapet-20261130T020000Z.json.partial",
        ] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let gone = prune(dir.path(), 2).unwrap();
        assert_eq!(gone, [dir.path().join("parapet-20261201T020000Z.json")]);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "notes.txt",
                "parapet-20261130T020000Z.json.partial",
                "parapet-20261202T020000Z.json",
                "parapet-20261203T020000Z.json"
            ]
        );
        let name = timestamped(dir.path()).unwrap();
        let n = name.file_name().unwrap().to_str().unwrap();
        assert!(
            n.starts_with("parapet-20") && n.ends_with("Z.json") && n.len() == 29,
            "{n}"
        );
    }

    #[test]
    fn only_gateway_resources_parapet_serves_are_kept() {
        let k = |kind: &str| kinds::ALL.into_iter().find(|k| k.kind == kind).unwrap();
        let by_kind = vec![
            (
                k("ApiRoute"),
                vec![json!({"metadata": {"name": "r", "namespace": "a"}})],
            ),
            (
                k("GatewayClass"),
                vec![
                    json!({"metadata": {"name": "ours"}, "spec": {"controllerName": parapet_crds::gateway_api::CONTROLLER_NAME}}),
                    json!({"metadata": {"name": "theirs"}, "spec": {"controllerName": "example.com/other"}}),
                ],
            ),
            (
                k("Gateway"),
                vec![
                    json!({"metadata": {"name": "edge", "namespace": "a"}, "spec": {"gatewayClassName": "ours"}}),
                    json!({"metadata": {"name": "other", "namespace": "a"}, "spec": {"gatewayClassName": "theirs"}}),
                ],
            ),
            (
                k("HTTPRoute"),
                vec![
                    json!({"metadata": {"name": "to-edge", "namespace": "b"}, "spec": {"parentRefs": [{"name": "edge", "namespace": "a"}]}}),
                    json!({"metadata": {"name": "to-other", "namespace": "a"}, "spec": {"parentRefs": [{"name": "other"}]}}),
                    json!({"metadata": {"name": "same-ns", "namespace": "a"}, "spec": {"parentRefs": [{"name": "edge"}]}}),
                ],
            ),
        ];
        let kept: Vec<String> = ours(by_kind).iter().map(objects::describe).collect();
        assert_eq!(
            kept,
            [" a/r", " ours", " a/edge", " b/to-edge", " a/same-ns"]
        );
    }
}
