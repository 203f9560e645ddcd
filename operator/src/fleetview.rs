//! The fleet view: every few seconds the leader writes what it knows of each data-plane
//! pod (the table it acknowledged, the last push and its result) to a ConfigMap, which
//! `parapet status` and `parapet restore` read. Written only when something changed.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, Weak},
    time::{Duration, SystemTime},
};

use k8s_openapi::{api::core::v1::ConfigMap, jiff::Timestamp};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use parapet_crds::fleet::{self, FleetReport, FleetStatus, PodReport, PushReport, TableRef};
use parapet_crds::snapshot::Snapshot;
use tokio::sync::watch;

use crate::push::Fleet;

/// How often the view is gathered (and written, when it changed).
const EVERY: Duration = Duration::from_secs(2);

/// The fleets the operator pushes to, by name: `default` and each Gateway's.
#[derive(Default)]
pub struct Fleets {
    fleets: Mutex<BTreeMap<String, Weak<Fleet>>>,
}

impl Fleets {
    /// Adds a fleet to the view; it leaves it when its pusher is dropped.
    pub fn register(&self, name: &str, fleet: &Arc<Fleet>) {
        self.lock().insert(name.to_string(), Arc::downgrade(fleet));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Weak<Fleet>>> {
        self.fleets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Each live fleet's report, and its desired table (whose configuration hash is
    /// computed off this thread).
    fn gather(&self) -> Vec<(FleetReport, Option<Arc<Snapshot>>)> {
        let mut fleets = self.lock();
        fleets.retain(|_, f| f.strong_count() > 0);
        fleets
            .iter()
            .filter_map(|(name, f)| Some((name.clone(), f.upgrade()?)))
            .map(|(name, f)| {
                let desired = f.desired.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let mut pods: Vec<PodReport> = f
                    .pods
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .map(|(t, st)| PodReport {
                        name: t.name.clone(),
                        address: t.addr.clone(),
                        ready: t.ready,
                        zone: t.zone.clone(),
                        version: st.acked_version,
                        hash: st.acked_hash.clone(),
                        last_push: st.last_push.map(|(at, ok)| PushReport {
                            at: rfc3339(at),
                            ok,
                            error: if ok { None } else { st.last_error.clone() },
                            failures: st.failures,
                        }),
                    })
                    .collect();
                pods.sort_by(|a, b| a.name.cmp(&b.name).then(a.address.cmp(&b.address)));
                let report = FleetReport {
                    name,
                    desired: None,
                    pods,
                };
                (report, desired)
            })
            .collect()
    }
}

fn rfc3339(t: SystemTime) -> String {
    Timestamp::try_from(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Writes the view while this replica leads.
pub async fn run(
    client: Client,
    namespace: String,
    identity: String,
    fleets: Arc<Fleets>,
    mut leader: watch::Receiver<bool>,
) {
    let api = Api::<ConfigMap>::namespaced(client, &namespace);
    let pp = PatchParams::apply("parapet-operator").force();
    // Configuration hashes by table hash: a table is hashed once, not every round.
    let mut config_hashes: HashMap<String, String> = HashMap::new();
    let mut written: Option<Vec<FleetReport>> = None;
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            r = leader.changed() => if r.is_err() { return },
        }
        if !*leader.borrow() {
            // A new leader writes its own view; this one writes again if it leads again.
            written = None;
            continue;
        }
        let mut reports = Vec::new();
        for (mut report, desired) in fleets.gather() {
            if let Some(d) = desired {
                let config_hash = match config_hashes.get(&d.hash) {
                    Some(h) => h.clone(),
                    None => {
                        let table = d.clone();
                        let Ok(h) =
                            tokio::task::spawn_blocking(move || table.table.config_hash()).await
                        else {
                            continue;
                        };
                        if config_hashes.len() > 64 {
                            config_hashes.clear();
                        }
                        config_hashes.insert(d.hash.clone(), h.clone());
                        h
                    }
                };
                report.desired = Some(TableRef {
                    version: d.version,
                    hash: d.hash.clone(),
                    config_hash,
                    routes: d.table.route_count(),
                });
            }
            reports.push(report);
        }
        if written.as_ref() == Some(&reports) {
            continue;
        }
        let status = FleetStatus {
            updated_at: rfc3339(SystemTime::now()),
            operator: identity.clone(),
            fleets: reports.clone(),
        };
        let cm = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": fleet::CONFIGMAP,
                "labels": {"app.kubernetes.io/managed-by": "parapet-operator"},
            },
            "data": {
                fleet::KEY: serde_json::to_string_pretty(&status).expect("the view serialises"),
            },
        });
        match api.patch(fleet::CONFIGMAP, &pp, &Patch::Apply(cm)).await {
            Ok(_) => {
                written = Some(reports);
                warned = false;
            }
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(error = %e, configmap = %format!("{namespace}/{}", fleet::CONFIGMAP), "could not write the fleet view; `parapet status` shows an old one until this clears");
            }
            Err(e) => tracing::debug!(error = %e, "could not write the fleet view"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::{PodState, Target};

    fn pod(name: &str, version: u64, last: Option<bool>) -> (Target, PodState) {
        let target = Target {
            addr: format!("{name}.local:9901"),
            name: name.into(),
            ready: true,
            zone: Some("z1".into()),
        };
        let st = PodState {
            acked_version: version,
            acked_hash: format!("hash-{version}"),
            last_push: last.map(|ok| (SystemTime::UNIX_EPOCH + Duration::from_secs(60), ok)),
            last_error: last.filter(|ok| !ok).map(|_| "connection refused".into()),
            failures: u32::from(last == Some(false)),
            ..Default::default()
        };
        (target, st)
    }

    #[test]
    fn each_live_fleet_reports_its_pods_in_name_order_and_leaves_when_dropped() {
        let fleets = Fleets::default();
        let fleet = Arc::new(Fleet::default());
        fleets.register("default", &fleet);
        {
            let mut pods = fleet.pods.lock().unwrap();
            for (t, st) in [
                pod("dp-b", 6, Some(false)),
                pod("dp-a", 7, Some(true)),
                pod("dp-c", 0, None),
            ] {
                pods.insert(t.addr.clone(), (t, st));
            }
        }
        let reports = fleets.gather();
        assert_eq!(reports.len(), 1);
        let (r, desired) = &reports[0];
        assert!(desired.is_none());
        assert_eq!(r.name, "default");
        let names: Vec<&str> = r.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["dp-a", "dp-b", "dp-c"]);
        let a = &r.pods[0];
        assert_eq!(
            (a.version, a.hash.as_str(), a.zone.as_deref()),
            (7, "hash-7", Some("z1"))
        );
        let last = a.last_push.as_ref().unwrap();
        assert_eq!(
            (last.ok, last.at.as_str(), last.error.as_deref()),
            (true, "1970-01-01T00:01:00Z", None)
        );
        let b = r.pods[1].last_push.as_ref().unwrap();
        assert_eq!(
            (b.ok, b.error.as_deref(), b.failures),
            (false, Some("connection refused"), 1)
        );
        assert!(r.pods[2].last_push.is_none());

        drop(fleet);
        assert!(
            fleets.gather().is_empty(),
            "a dropped fleet leaves the view"
        );
    }
}
