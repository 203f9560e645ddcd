//! The Gateway controller's loop: compile, hand each Gateway's table to its own fleet's
//! pusher, provision the fleets, write status.
//!
//! Each accepted Gateway has a [`GatewayFleet`]: a watch of its fleet's EndpointSlices and
//! a [`Pusher`] of its own, so a Gateway's table reaches only its pods. Fleets of Gateways
//! that disappear are stopped.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, ResourceExt,
    runtime::{reflector::store::Writer, watcher},
};
use parapet_crds::{
    compiler::{Diagnostics, gateway::GatewayOutput},
    snapshot::{Snapshot as TableSnapshot, Table},
};
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};

use super::{GatewayIndex, Snapshot, compile, provisioner::Provisioner, status};
use crate::{
    compile::{Compiled, VersionClock, sources},
    index::{Index, Signal, watch_until_aborted},
    metrics::Metrics,
    push::{Fleet, Pusher},
    tls::PushTls,
};

/// How often the loop looks again without a Gateway API event: Services' and
/// EndpointSlices' changes (backends, fleet addresses) and pods' acknowledgements reach it
/// this way.
const TICK: Duration = Duration::from_secs(1);

/// What every fleet's pusher shares.
#[derive(Clone)]
pub struct PushConfig {
    pub token: Option<String>,
    pub tls: Option<Arc<PushTls>>,
    pub concurrency: usize,
    pub resync: Duration,
    pub timeout: Duration,
    /// The admin port's name in a fleet Service.
    pub admin_port_name: String,
}

struct GatewayFleet {
    fleet: Arc<Fleet>,
    tables: watch::Sender<Option<Arc<Compiled>>>,
    table: Option<Table>,
    version: u64,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for GatewayFleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub struct Controller {
    pub client: Client,
    pub index: Arc<Index>,
    pub gateways: Arc<GatewayIndex>,
    pub clock: Arc<VersionClock>,
    pub leader: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
    /// The fleet view each fleet joins.
    pub fleets: Arc<crate::fleetview::Fleets>,
    pub push: PushConfig,
    /// `None`: fleets are not provisioned (no default fleet to copy); Gateways then stay
    /// without an address.
    pub provisioner: Option<Provisioner>,
}

/// What was provisioned last: the Gateways and classes (with generations), and when.
struct Provisioned {
    seen: Vec<(String, String, i64)>,
    at: tokio::time::Instant,
}

/// Fleets are provisioned again when Gateways or classes change, and at least this often.
const PROVISION_EVERY: Duration = Duration::from_secs(30);

impl Controller {
    pub async fn run(mut self) {
        self.gateways.wait_ready().await;
        tracing::info!("Gateway API caches synced");
        let republish = Arc::new(Notify::new());
        let mut fleets: BTreeMap<(String, String), GatewayFleet> = BTreeMap::new();
        let mut provisioned: Option<Provisioned> = None;
        let mut invalid_classes = BTreeMap::new();
        loop {
            let snap = Snapshot::read(&self.index, &self.gateways);
            let mut out = compile(&self.index, &snap);
            self.publish(&out, &mut fleets, &republish);
            if *self.leader.borrow() {
                self.provision(&out, &mut provisioned, &mut invalid_classes)
                    .await;
            }
            for c in &mut out.classes {
                if let Some(why) = invalid_classes.get(&c.name)
                    && let Some(a) = c.conditions.iter_mut().find(|a| a.kind == "Accepted")
                {
                    a.status = false;
                    a.reason = "InvalidParameters".into();
                    a.message = why.clone();
                }
            }
            if *self.leader.borrow() {
                status::write(
                    &self.client,
                    &self.metrics,
                    &out,
                    &self.gateways,
                    |ns, name| self.fleet_state(&fleets, ns, name),
                )
                .await;
            }
            tokio::select! {
                _ = self.gateways.changed.notified() => {}
                _ = republish.notified() => {
                    // A pod holds a newer version than ours (an operator restart): every
                    // table goes out again under a new one.
                    for f in fleets.values_mut() {
                        f.table = None;
                    }
                }
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Provisions the accepted Gateways' fleets when Gateways or classes changed since the
    /// last time, or it is due again; records the classes whose parameters are invalid.
    async fn provision(
        &mut self,
        out: &GatewayOutput,
        last: &mut Option<Provisioned>,
        invalid_classes: &mut BTreeMap<String, String>,
    ) {
        let Some(p) = self.provisioner.as_mut() else {
            return;
        };
        let accepted: Vec<_> = self
            .gateways
            .gateways
            .state()
            .into_iter()
            .filter(|g| {
                out.gateway(&g.namespace().unwrap_or_default(), &g.name_any())
                    .is_some_and(|c| c.accepted())
            })
            .collect();
        let classes: Vec<_> = self
            .gateways
            .classes
            .state()
            .into_iter()
            .filter(|c| out.classes.iter().any(|o| o.name == c.name_any()))
            .collect();
        let mut seen: Vec<(String, String, i64)> = accepted
            .iter()
            .map(|g| {
                (
                    g.namespace().unwrap_or_default(),
                    g.name_any(),
                    g.metadata.generation.unwrap_or(0),
                )
            })
            .chain(classes.iter().map(|c| {
                (
                    String::new(),
                    c.name_any(),
                    c.metadata.generation.unwrap_or(0),
                )
            }))
            .collect();
        seen.sort();
        let due = last
            .as_ref()
            .is_none_or(|l| l.seen != seen || l.at.elapsed() >= PROVISION_EVERY);
        if due {
            let keep = out
                .gateways
                .iter()
                .map(|g| (g.namespace.clone(), g.name.clone()))
                .collect();
            *invalid_classes = p.reconcile(&accepted, &classes, keep).await;
            *last = Some(Provisioned {
                seen,
                at: tokio::time::Instant::now(),
            });
        }
    }

    /// Starts fleets for new Gateways, stops those of Gateways gone, and hands each its
    /// table when it changed.
    fn publish(
        &self,
        out: &GatewayOutput,
        fleets: &mut BTreeMap<(String, String), GatewayFleet>,
        republish: &Arc<Notify>,
    ) {
        fleets.retain(|(ns, name), _| out.gateway(ns, name).is_some_and(|g| g.accepted()));
        for g in out.gateways.iter().filter(|g| g.accepted()) {
            let key = (g.namespace.clone(), g.name.clone());
            let f = fleets
                .entry(key)
                .or_insert_with(|| self.start_fleet(&g.namespace, &g.name, republish));
            if f.table.as_ref() == Some(&g.table) {
                continue;
            }
            let mut snapshot = TableSnapshot::new(self.clock.next(), g.table.clone());
            snapshot.allow_empty = snapshot.table.route_count() == 0;
            f.version = snapshot.version;
            let bytes = serde_json::to_vec(&snapshot)
                .map(|v| v.len())
                .unwrap_or_default();
            let compiled = Compiled {
                sources: sources(&snapshot),
                snapshot: Arc::new(snapshot),
                diagnostics: Diagnostics::default(),
                malformed: Vec::new(),
                objects: Vec::new(),
                pool_endpoints: BTreeMap::new(),
                bytes,
                pools: Arc::new(Vec::new()),
            };
            f.table = Some(g.table.clone());
            let _ = f.tables.send(Some(Arc::new(compiled)));
        }
    }

    fn start_fleet(&self, namespace: &str, name: &str, republish: &Arc<Notify>) -> GatewayFleet {
        let targets_changed = Arc::new(Notify::new());
        // Only slices the EndpointSlice controller keeps for the fleet's own Service: one
        // written by hand could name any address, and the table (listener keys included)
        // and the fleet's token would go there.
        let (store, watch_task) = watch_until_aborted(
            Api::<EndpointSlice>::namespaced(self.client.clone(), namespace),
            watcher::Config::default().labels(&format!(
                "kubernetes.io/service-name={},endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io",
                crate::provision::admin_service_name(name)
            )),
            Writer::default(),
            targets_changed.clone(),
            Arc::new(AtomicBool::new(false)),
            Signal::EveryChange,
        );
        let fleet = Arc::new(Fleet::default());
        self.fleets.register(&format!("{namespace}/{name}"), &fleet);
        let pusher = Arc::new(Pusher {
            fleet: fleet.clone(),
            token: self
                .push
                .token
                .as_deref()
                .map(|t| crate::provision::fleet_token(t, namespace, name)),
            concurrency: self.push.concurrency,
            resync: self.push.resync,
            timeout: self.push.timeout,
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
            republish: republish.clone(),
            events: None,
            tls: self.push.tls.clone(),
        });
        let (tables, tables_rx) = watch::channel(None);
        let push_task = tokio::spawn(pusher.run(
            store,
            self.push.admin_port_name.clone(),
            targets_changed,
            tables_rx,
            self.leader.clone(),
        ));
        tracing::info!(gateway = %format!("{namespace}/{name}"), "fleet started");
        GatewayFleet {
            fleet,
            tables,
            table: None,
            version: 0,
            tasks: vec![watch_task, push_task],
        }
    }

    fn fleet_state(
        &self,
        fleets: &BTreeMap<(String, String), GatewayFleet>,
        namespace: &str,
        name: &str,
    ) -> status::FleetState {
        let address = self
            .index
            .services
            .all()
            .find(|s| {
                s.namespace().as_deref() == Some(namespace)
                    && s.name_any() == crate::provision::service_name(name)
            })
            .and_then(|s| service_address(&s));
        let serving = fleets
            .get(&(namespace.to_string(), name.to_string()))
            .is_some_and(|f| {
                let pods = f.fleet.pods.lock().unwrap_or_else(|p| p.into_inner());
                pods.values().any(|(_, s)| s.acked_version == f.version)
            });
        status::FleetState { address, serving }
    }
}

/// A Service's address for Gateway status: its load balancer's, else its cluster IP.
pub fn service_address(s: &Service) -> Option<String> {
    let lb = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .and_then(|i| i.first())
        .and_then(|i| i.ip.clone().or_else(|| i.hostname.clone()));
    lb.or_else(|| {
        s.spec
            .as_ref()
            .and_then(|sp| sp.cluster_ip.clone())
            .filter(|ip| !ip.is_empty() && ip != "None")
    })
}
