//! In-memory indexes fed by watches (kube-runtime reflectors). Every replica indexes; only
//! the leader acts on what it sees.
//!
//! The three CRDs are watched as untyped objects and converted one by one when compiling,
//! so one object that no longer fits the types cannot break the watch for all the others.

use std::{
    collections::HashMap,
    fmt::Debug,
    hash::Hash,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use futures::StreamExt;
use k8s_openapi::api::{
    core::v1::{Secret, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource,
    api::{ApiResource, DynamicObject},
    runtime::{
        WatchStreamExt,
        reflector::{Store, store::Writer},
        watcher,
    },
};
use parapet_crds::api::{ApiRoute, AuthPolicy, CachePolicy, UpstreamPool};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::args::Args;

/// Stores for one kind: one per watched namespace, or one for all namespaces.
pub struct Stores<K: Resource + 'static>(pub Vec<Store<K>>)
where
    K::DynamicType: Eq + Hash + Clone;

impl<K: Resource + Clone + 'static> Stores<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    pub fn all(&self) -> impl Iterator<Item = Arc<K>> + '_ {
        self.0.iter().flat_map(|s| s.state())
    }

    async fn wait_ready(&self) {
        for s in &self.0 {
            let _ = s.wait_until_ready().await;
        }
    }
}

pub struct Index {
    pub routes: Stores<DynamicObject>,
    pub pools: Stores<DynamicObject>,
    pub cache_policies: Stores<DynamicObject>,
    pub auth_policies: Stores<DynamicObject>,
    pub services: Stores<Service>,
    pub slices: Stores<EndpointSlice>,
    pub secrets: Stores<Secret>,
    /// The label selector the Secrets in `secrets` match (`None`: all of them).
    pub secret_label_selector: Option<String>,
    /// Mixed into API-key salts, so the same key hashes differently in every installation
    /// (see [`key_salt_seed`]).
    pub key_salt_seed: Vec<u8>,
    /// The data plane's own admin Service's EndpointSlices: where to push.
    pub dataplane: Store<EndpointSlice>,
    /// Signalled on any change that can change the table.
    pub changed: Arc<Notify>,
    /// Signalled when the set of data-plane pods changes.
    pub dataplane_changed: Arc<Notify>,
    /// Set by changes to the CRDs, Services or Secrets: a full compile is needed.
    pub config_dirty: Arc<AtomicBool>,
    /// Set by EndpointSlice changes: the endpoint-only fast path may do.
    pub endpoints_dirty: Arc<AtomicBool>,
}

impl Index {
    pub fn start(client: &Client, args: &Args, key_salt_seed: Vec<u8>) -> Index {
        let changed = Arc::new(Notify::new());
        let config_dirty = Arc::new(AtomicBool::new(true));
        let endpoints_dirty = Arc::new(AtomicBool::new(true));
        let dataplane_changed = Arc::new(Notify::new());
        let namespaces: Vec<Option<&str>> = if args.watch_namespaces.is_empty() {
            vec![None]
        } else {
            args.watch_namespaces
                .iter()
                .map(|n| Some(n.as_str()))
                .collect()
        };
        let cr = |ar: ApiResource| -> Stores<DynamicObject> {
            Stores(
                namespaces
                    .iter()
                    .map(|ns| {
                        let api: Api<DynamicObject> = match ns {
                            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
                            None => Api::all_with(client.clone(), &ar),
                        };
                        watch(
                            api,
                            watcher::Config::default(),
                            Writer::new(ar.clone()),
                            changed.clone(),
                            config_dirty.clone(),
                            Signal::SpecChanges,
                        )
                    })
                    .collect(),
            )
        };
        let routes = cr(ApiResource::erase::<ApiRoute>(&()));
        let pools = cr(ApiResource::erase::<UpstreamPool>(&()));
        let cache_policies = cr(ApiResource::erase::<CachePolicy>(&()));
        let auth_policies = cr(ApiResource::erase::<AuthPolicy>(&()));
        let services = Stores(
            namespaces
                .iter()
                .map(|ns| {
                    watch(
                        api::<Service>(client, *ns),
                        watcher::Config::default(),
                        Writer::default(),
                        changed.clone(),
                        config_dirty.clone(),
                        Signal::EveryChange,
                    )
                })
                .collect(),
        );
        let slices = Stores(
            namespaces
                .iter()
                .map(|ns| {
                    watch(
                        api::<EndpointSlice>(client, *ns),
                        watcher::Config::default().labels("kubernetes.io/service-name"),
                        Writer::default(),
                        changed.clone(),
                        endpoints_dirty.clone(),
                        Signal::EveryChange,
                    )
                })
                .collect(),
        );
        // Only the Secrets that may be referenced (labelled), never service-account tokens.
        let secrets_cfg = crate::secrets::watch_config(crate::secrets::selector(args));
        let secrets = Stores(
            namespaces
                .iter()
                .map(|ns| {
                    watch(
                        api::<Secret>(client, *ns),
                        secrets_cfg.clone(),
                        Writer::default(),
                        changed.clone(),
                        config_dirty.clone(),
                        Signal::EveryChange,
                    )
                })
                .collect(),
        );
        let dataplane = watch(
            Api::<EndpointSlice>::namespaced(client.clone(), &args.dataplane_namespace),
            watcher::Config::default().labels(&format!(
                "kubernetes.io/service-name={}",
                args.dataplane_service
            )),
            Writer::default(),
            dataplane_changed.clone(),
            Arc::new(AtomicBool::new(false)),
            Signal::EveryChange,
        );
        Index {
            routes,
            pools,
            cache_policies,
            auth_policies,
            services,
            slices,
            secrets,
            secret_label_selector: crate::secrets::selector(args).map(str::to_string),
            key_salt_seed,
            dataplane,
            changed,
            dataplane_changed,
            config_dirty,
            endpoints_dirty,
        }
    }

    /// Resolves once every watch has listed its objects: until then a table would be
    /// missing objects, and pushing it could wipe routes from the fleet.
    pub async fn wait_ready(&self) {
        self.routes.wait_ready().await;
        self.pools.wait_ready().await;
        self.cache_policies.wait_ready().await;
        self.auth_policies.wait_ready().await;
        self.services.wait_ready().await;
        self.slices.wait_ready().await;
        self.secrets.wait_ready().await;
        let _ = self.dataplane.wait_until_ready().await;
    }
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Which watch events mean the table may have changed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    EveryChange,
    /// For objects whose status this operator writes: only a new generation (a spec change)
    /// or a deletion, so the operator's own status writes never trigger a recompile.
    SpecChanges,
}

/// Runs a reflector in the background and signals `changed` (and sets `dirty`) on the
/// events `signal` selects.
pub(crate) fn watch<K>(
    api: Api<K>,
    cfg: watcher::Config,
    writer: Writer<K>,
    changed: Arc<Notify>,
    dirty: Arc<AtomicBool>,
    signal: Signal,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    watch_until_aborted(api, cfg, writer, changed, dirty, signal).0
}

/// [`watch`], with the handle that stops it (for watches that live as long as an object).
pub(crate) fn watch_until_aborted<K>(
    api: Api<K>,
    cfg: watcher::Config,
    writer: Writer<K>,
    changed: Arc<Notify>,
    dirty: Arc<AtomicBool>,
    signal: Signal,
) -> (Store<K>, tokio::task::JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    let reader = writer.as_reader();
    let kind = std::any::type_name::<K>()
        .rsplit("::")
        .next()
        .unwrap_or("object")
        .to_string();
    let task = tokio::spawn(async move {
        let mut events = watcher(api, cfg).default_backoff().reflect(writer).boxed();
        // Generation seen per object, for `Signal::SpecChanges`.
        let mut seen: HashMap<(Option<String>, Option<String>), Option<i64>> = HashMap::new();
        let id = |o: &K| (o.meta().namespace.clone(), o.meta().name.clone());
        while let Some(ev) = events.next().await {
            let signal = match &ev {
                Ok(watcher::Event::Init) => false,
                Ok(watcher::Event::InitApply(o)) => {
                    seen.insert(id(o), o.meta().generation);
                    false
                }
                Ok(watcher::Event::Apply(o)) => {
                    let previous = seen.insert(id(o), o.meta().generation);
                    signal == Signal::EveryChange || previous != Some(o.meta().generation)
                }
                Ok(watcher::Event::Delete(o)) => {
                    seen.remove(&id(o));
                    true
                }
                Ok(watcher::Event::InitDone) => true,
                Err(_) => false,
            };
            if signal {
                dirty.store(true, Ordering::SeqCst);
                changed.notify_one();
            }
            match ev {
                Ok(_) => {}
                Err(e) => tracing::warn!(%kind, error = %e, "watch error; retrying with backoff"),
            }
        }
    });
    (reader, task)
}

/// The installation's API-key salt seed, derived from the snapshot token: a secret every
/// installation generates for itself and keeps across restarts and leader changes, so
/// every replica derives the same salts. One-way: the salts in a table reveal nothing about
/// the token. Without a token, no seed (salts then differ only by key).
pub fn key_salt_seed(snapshot_token: Option<&str>) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    snapshot_token.map_or_else(Vec::new, |t| {
        let mut h = Sha256::new();
        h.update(b"parapet api-key salt seed\0");
        h.update(t.as_bytes());
        h.finalize().to_vec()
    })
}

#[cfg(test)]
mod tests {
    use super::key_salt_seed;

    #[test]
    fn the_salt_seed_is_stable_per_token_and_differs_between_tokens() {
        assert_eq!(key_salt_seed(Some("t1")), key_salt_seed(Some("t1")));
        assert_ne!(key_salt_seed(Some("t1")), key_salt_seed(Some("t2")));
        assert_eq!(key_salt_seed(Some("t1")).len(), 32);
        assert!(key_salt_seed(None).is_empty());
        // The token itself never appears in what is derived from it.
        let seed = key_salt_seed(Some("a-secret-token"));
        assert!(!seed.windows(6).any(|w| w == b"secret"));
    }
}
