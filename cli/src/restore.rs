//! `parapet restore`: checks a backup against the cluster (its CRDs, then every object by
//! a server-side dry run), applies it only when all of it would be accepted, and waits
//! until the fleet serves the configuration the backup recorded.

use std::{collections::BTreeSet, time::Duration};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{DynamicObject, Patch, PatchParams, ValidationDirective},
};
use serde_json::Value;

use crate::{
    cluster::{self, Crd},
    file::{BackupFile, Key, TableRecord},
    kinds::{self, Kind},
    objects,
};

/// Requests to the API server in flight at once.
const IN_FLIGHT: usize = 16;

/// The field manager a restore applies as.
pub const FIELD_MANAGER: &str = "parapet-restore";

pub struct Options {
    /// Decrypts the backup's Secrets; `None` with `skip_secrets`.
    pub key: Option<Key>,
    pub skip_secrets: bool,
    /// Check only.
    pub dry_run: bool,
    /// How long to wait for the fleet; `None`: do not wait.
    pub wait: Option<Duration>,
    pub operator_namespace: String,
}

pub enum Outcome {
    /// Everything checked; nothing applied.
    Checked { objects: usize },
    Restored {
        objects: usize,
        /// Fleets that serve the recorded configuration (when waited for).
        fleets: Vec<String>,
    },
}

pub async fn run(client: &Client, backup: &BackupFile, opts: &Options) -> Result<Outcome> {
    let secrets = match (&backup.manifest.secrets, &opts.key, opts.skip_secrets) {
        (None, _, _) | (Some(_), _, true) => Vec::new(),
        (Some(_), Some(key), false) => backup.open_secrets(key)?,
        (Some(s), None, false) => bail!(
            "the backup holds {} Secrets encrypted with {}; pass {} to decrypt them, or --skip-secrets to restore without them",
            s.count,
            s.encryption,
            if s.encryption == "passphrase" {
                "--passphrase-file"
            } else {
                "--identity"
            }
        ),
    };
    let all: Vec<(Kind, &Value)> = secrets
        .iter()
        .chain(&backup.objects)
        .map(|o| {
            let api_version = o.get("apiVersion").and_then(Value::as_str).unwrap_or("");
            kinds::of(api_version, objects::kind(o))
                .map(|k| (k, o))
                .with_context(|| {
                    format!(
                        "the backup holds {} of {api_version}, which this parapet does not restore",
                        objects::describe(o)
                    )
                })
        })
        .collect::<Result<_>>()?;

    check_crds(client, backup, &all).await?;
    check_objects(client, &all).await?;
    if opts.dry_run {
        return Ok(Outcome::Checked { objects: all.len() });
    }

    let namespaces: BTreeSet<&str> = all
        .iter()
        .filter_map(|(_, o)| objects::namespace(o))
        .collect();
    let ns_api = Api::<Namespace>::all(client.clone());
    for ns in namespaces {
        if ns_api.get_opt(ns).await?.is_none() {
            let body = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            ns_api
                .patch(ns, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(body))
                .await
                .with_context(|| format!("cannot create namespace {ns}"))?;
        }
    }
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    // Kind by kind, in order (what others refer to first); within a kind, several at once.
    let mut start = 0;
    while start < all.len() {
        let end = start
            + all[start..]
                .iter()
                .take_while(|(k, _)| *k == all[start].0)
                .count();
        futures::stream::iter(&all[start..end])
            .map(|(kind, o)| {
                let pp = &pp;
                async move {
                    api(client, kind, objects::namespace(o))
                        .patch(objects::name(o), pp, &Patch::Apply(*o))
                        .await
                        .with_context(|| format!("applying {} failed", objects::describe(o)))
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<_>>()
            .await?;
        start = end;
    }
    let fleets = match opts.wait {
        Some(limit) => {
            wait(
                client,
                &backup.manifest.tables,
                &opts.operator_namespace,
                limit,
            )
            .await?
        }
        None => Vec::new(),
    };
    Ok(Outcome::Restored {
        objects: all.len(),
        fleets,
    })
}

fn api(client: &Client, kind: &Kind, ns: Option<&str>) -> Api<DynamicObject> {
    let ar = kind.api_resource();
    match ns {
        Some(ns) if kind.namespaced => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    }
}

/// Every kind the backup holds has a CRD here, serving its version, no older than the
/// backup's.
async fn check_crds(client: &Client, backup: &BackupFile, all: &[(Kind, &Value)]) -> Result<()> {
    let kinds: BTreeSet<&str> = all.iter().map(|(k, _)| k.kind).collect();
    let mut problems = Vec::new();
    for kind in kinds::ALL.iter().filter(|k| kinds.contains(k.kind)) {
        let name = kind.crd_name();
        match cluster::crd(client, kind).await? {
            Crd::Absent => problems.push(format!(
                "the cluster has no {} CRD ({name}); install it first",
                kind.kind
            )),
            Crd::Present { serves: false, .. } => problems.push(format!(
                "the cluster's {} CRD does not serve {}; install CRDs that do",
                kind.kind,
                kind.api_version()
            )),
            Crd::Present { version, .. } => {
                let ours = backup.manifest.crds.get(&name).filter(|v| !v.is_empty());
                let theirs = version.unwrap_or_default();
                if let Some(ours) = ours
                    && cluster::version_key(&theirs) < cluster::version_key(ours)
                {
                    problems.push(format!(
                        "the cluster's {} CRD is version {}, older than the backup's {ours}",
                        kind.kind,
                        if theirs.is_empty() {
                            "unknown"
                        } else {
                            theirs.as_str()
                        }
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "nothing was restored: {}. Upgrade the CRDs (helm upgrade, or kubectl apply -f charts/parapet/crds/ for Parapet's) and restore again",
            problems.join("; ")
        );
    }
    Ok(())
}

/// A server-side dry run of every object, strict about fields the cluster's schema does
/// not know: all of the backup is accepted, or nothing is applied. An object whose
/// namespace does not exist yet is checked in `default` (a dry run cannot create it).
async fn check_objects(client: &Client, all: &[(Kind, &Value)]) -> Result<()> {
    let ns_api = Api::<Namespace>::all(client.clone());
    let mut existing = std::collections::BTreeMap::new();
    let mut pp = PatchParams::apply(FIELD_MANAGER).force();
    pp.dry_run = true;
    pp.field_validation = Some(ValidationDirective::Strict);
    let mut checks = Vec::new();
    for (kind, o) in all {
        let ns = match objects::namespace(o) {
            Some(ns) if kind.namespaced => {
                let exists = match existing.get(ns) {
                    Some(e) => *e,
                    None => {
                        let e = ns_api.get_opt(ns).await?.is_some();
                        existing.insert(ns.to_string(), e);
                        e
                    }
                };
                Some(if exists { ns } else { "default" })
            }
            _ => None,
        };
        let mut body = (*o).clone();
        if let Some(ns) = ns {
            body["metadata"]["namespace"] = ns.into();
        }
        checks.push((api(client, kind, ns), *o, body));
    }
    let problems: Vec<String> = futures::stream::iter(&checks)
        .map(|(api, o, body)| {
            let pp = &pp;
            async move {
                api.patch(objects::name(o), pp, &Patch::Apply(body))
                    .await
                    .err()
                    .map(|e| format!("{}: {}", objects::describe(o), api_message(&e)))
            }
        })
        .buffered(IN_FLIGHT)
        .filter_map(std::future::ready)
        .collect()
        .await;
    if !problems.is_empty() {
        bail!(
            "nothing was restored: the cluster would refuse {} of the backup's objects (are its CRDs older than the backup's?):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    Ok(())
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        e => e.to_string(),
    }
}

/// Until every fleet the backup recorded serves the recorded configuration on all its pods.
async fn wait(
    client: &Client,
    tables: &[TableRecord],
    namespace: &str,
    limit: Duration,
) -> Result<Vec<String>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let view = cluster::fleet_status(client, namespace)
            .await
            .ok()
            .flatten();
        let mut waiting = Vec::new();
        for t in tables {
            let fleet = view
                .as_ref()
                .and_then(|v| v.fleets.iter().find(|f| f.name == t.fleet));
            match fleet {
                None => waiting.push(format!("fleet {} is not in the fleet view", t.fleet)),
                Some(f) => match &f.desired {
                    Some(d) if d.config_hash == t.config_hash => {
                        let synced = f.in_sync();
                        if synced < f.pods.len() || f.pods.is_empty() {
                            waiting.push(format!(
                                "fleet {}: {synced}/{} pods serve the restored configuration",
                                t.fleet,
                                f.pods.len()
                            ));
                        }
                    }
                    Some(d) => waiting.push(format!(
                        "fleet {} is pushing configuration {} (version {}), not the backup's {}",
                        t.fleet,
                        short(&d.config_hash),
                        d.version,
                        short(&t.config_hash)
                    )),
                    None => waiting.push(format!("fleet {} has no table yet", t.fleet)),
                },
            }
        }
        if waiting.is_empty() {
            return Ok(tables.iter().map(|t| t.fleet.clone()).collect());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the objects were restored, but after {:?} the fleet does not serve the backed-up configuration: {}. Objects outside the backup's namespaces, missing Secrets (--skip-secrets, or referenced but absent when backed up) or a different operator configuration make a different table; `parapet status` shows where each pod is",
                limit,
                waiting.join("; ")
            );
        }
        tokio::time::sleep(cluster::POLL).await;
    }
}

pub fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
