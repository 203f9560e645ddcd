//! Gateway API status, exactly as the spec shapes it: GatewayClass `Accepted` and
//! `supportedFeatures`; Gateway `Accepted`, `Programmed`, listeners and addresses; route
//! `parents` entries of this controller (other controllers' entries are kept). Each is
//! written by the leader only, and only when it differs from what the object holds
//! (transition times are kept for conditions whose status did not change).

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
};
use parapet_crds::{
    compiler::gateway::{
        ClassStatus, CompiledGateway, Condition, GatewayOutput, KIND_GRPC_ROUTE, KIND_HTTP_ROUTE,
        RouteStatus,
    },
    gateway_api::{
        CONTROLLER_NAME, gatewayclasses::GatewayClass, gateways::Gateway, grpcroutes::GrpcRoute,
        httproutes::HttpRoute,
    },
};
use serde_json::{Value, json};

use super::GatewayIndex;
use crate::metrics::Metrics;

/// What only the operator knows about a Gateway's fleet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetState {
    /// The fleet Service's address (ClusterIP, or the load balancer's).
    pub address: Option<String>,
    /// Some pod serves the Gateway's current table.
    pub serving: bool,
}

fn condition_json(c: &Condition, existing: &[Value], now: &str) -> Value {
    let status = if c.status { "True" } else { "False" };
    let kept = existing.iter().find(|e| {
        e.get("type").and_then(Value::as_str) == Some(c.kind)
            && e.get("status").and_then(Value::as_str) == Some(status)
    });
    let time = kept
        .and_then(|e| e.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| Value::String(now.to_string()));
    json!({
        "type": c.kind,
        "status": status,
        "reason": c.reason,
        "message": c.message,
        "observedGeneration": c.observed_generation,
        "lastTransitionTime": time,
    })
}

fn conditions_json(conds: &[Condition], existing: Option<&Value>, now: &str) -> Value {
    let existing: Vec<Value> = existing
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Value::Array(
        conds
            .iter()
            .map(|c| condition_json(c, &existing, now))
            .collect(),
    )
}

/// The class's status, or `None` when it already holds it.
pub fn class_status(c: &ClassStatus, existing: Option<&Value>, now: &str) -> Option<Value> {
    let want = json!({
        "conditions": conditions_json(&c.conditions, existing.and_then(|s| s.get("conditions")), now),
        "supportedFeatures": c.supported_features.iter().map(|f| json!({"name": f})).collect::<Vec<_>>(),
    });
    changed(want, existing)
}

/// The Gateway's status with what its fleet says: `Programmed` needs an address and a
/// pod serving the table.
pub fn gateway_status(
    g: &CompiledGateway,
    fleet: &FleetState,
    existing: Option<&Value>,
    now: &str,
) -> Option<Value> {
    let mut conds = g.conditions.clone();
    if let Some(p) = conds
        .iter_mut()
        .find(|c| c.kind == "Programmed" && c.status)
    {
        if fleet.address.is_none() {
            *p = Condition {
                status: false,
                reason: "AddressNotAssigned".into(),
                message: "the Gateway's fleet Service has no address yet".into(),
                ..p.clone()
            };
        } else if !fleet.serving {
            *p = Condition {
                status: false,
                reason: "Pending".into(),
                message: "no pod of the Gateway's fleet serves its current table yet".into(),
                ..p.clone()
            };
        }
    }
    let existing_listeners: Vec<Value> = existing
        .and_then(|s| s.get("listeners"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let listeners: Vec<Value> = g
        .listeners
        .iter()
        .map(|l| {
            let before = existing_listeners
                .iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some(l.name.as_str()))
                .and_then(|e| e.get("conditions"));
            json!({
                "name": l.name,
                "supportedKinds": l.supported_kinds.iter().map(|k| json!({"group": k.group, "kind": k.kind})).collect::<Vec<_>>(),
                "attachedRoutes": l.attached_routes,
                "conditions": conditions_json(&l.conditions, before, now),
            })
        })
        .collect();
    let mut want = json!({
        "conditions": conditions_json(&conds, existing.and_then(|s| s.get("conditions")), now),
        "listeners": listeners,
    });
    if let Some(a) = &fleet.address {
        let kind = if a.parse::<std::net::IpAddr>().is_ok() {
            "IPAddress"
        } else {
            "Hostname"
        };
        want["addresses"] = json!([{"type": kind, "value": a}]);
    }
    changed(want, existing)
}

/// A route's `parents`: this controller's entries as compiled, others' as they are.
pub fn route_status(r: &RouteStatus, existing: Option<&Value>, now: &str) -> Option<Value> {
    let before: Vec<Value> = existing
        .and_then(|s| s.get("parents"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut parents: Vec<Value> = before
        .iter()
        .filter(|p| p.get("controllerName").and_then(Value::as_str) != Some(CONTROLLER_NAME))
        .cloned()
        .collect();
    for p in &r.parents {
        let mut parent_ref = json!({"name": p.parent_ref.name});
        let pr = &p.parent_ref;
        for (k, v) in [
            ("group", &pr.group),
            ("kind", &pr.kind),
            ("namespace", &pr.namespace),
            ("sectionName", &pr.section_name),
        ] {
            if let Some(v) = v {
                parent_ref[k] = json!(v);
            }
        }
        if let Some(port) = pr.port {
            parent_ref["port"] = json!(port);
        }
        let prior = before
            .iter()
            .find(|b| {
                b.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME)
                    && b.get("parentRef") == Some(&parent_ref)
            })
            .and_then(|b| b.get("conditions"));
        parents.push(json!({
            "parentRef": parent_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": conditions_json(&p.conditions, prior, now),
        }));
    }
    changed(json!({ "parents": parents }), existing)
}

/// Routes (kind, namespace, name, status) that hold an entry of this controller but have
/// no Parapet parent any more: each with no parents, so that [`route_status`] removes the
/// entries and keeps other controllers'.
pub fn orphaned(
    out: &GatewayOutput,
    held: &[(&'static str, String, String, Value)],
) -> Vec<RouteStatus> {
    held.iter()
        .filter(|(kind, ns, name, status)| {
            out.route(kind, ns, name).is_none()
                && status
                    .get("parents")
                    .and_then(Value::as_array)
                    .is_some_and(|ps| {
                        ps.iter().any(|p| {
                            p.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME)
                        })
                    })
        })
        .map(|(kind, ns, name, _)| RouteStatus {
            kind,
            namespace: ns.clone(),
            name: name.clone(),
            parents: Vec::new(),
        })
        .collect()
}

/// `want`, unless `existing` holds the same (fields `want` does not set are ignored).
fn changed(want: Value, existing: Option<&Value>) -> Option<Value> {
    let same = existing.is_some_and(|e| {
        want.as_object()
            .is_some_and(|w| w.iter().all(|(k, v)| e.get(k) == Some(v)))
    });
    (!same).then_some(want)
}

fn now() -> String {
    // Seconds precision, as the API server writes it.
    let t = Timestamp::now();
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

/// Counts a status write in the operator's status metrics (the ApiRoute status writer's
/// too), so that writes made for nothing show.
fn count<T>(metrics: &Metrics, res: &Result<T, kube::Error>, what: &dyn std::fmt::Display) {
    match res {
        Ok(_) => {
            metrics.status_writes.inc();
            tracing::debug!(object = %what, "status written");
        }
        Err(_) => {
            metrics.status_errors.inc();
        }
    };
}

/// Writes every status that changed. Errors are logged; the next round retries.
pub async fn write(
    client: &Client,
    metrics: &Metrics,
    out: &GatewayOutput,
    index: &GatewayIndex,
    fleet: impl Fn(&str, &str) -> FleetState,
) {
    let now = now();
    let pp = PatchParams::default();
    for c in &out.classes {
        let existing = index
            .classes
            .state()
            .into_iter()
            .find(|o| o.name_any() == c.name)
            .and_then(|o| serde_json::to_value(&o.status).ok());
        if let Some(s) = class_status(c, existing.as_ref().filter(|v| !v.is_null()), &now) {
            let api: Api<GatewayClass> = Api::all(client.clone());
            let res = api
                .patch_status(&c.name, &pp, &Patch::Merge(json!({ "status": s })))
                .await;
            count(metrics, &res, &format!("GatewayClass {}", c.name));
            if let Err(e) = res {
                tracing::warn!(class = %c.name, error = %e, "cannot write GatewayClass status");
            }
        }
    }
    for g in &out.gateways {
        let existing = index
            .gateways
            .state()
            .into_iter()
            .find(|o| {
                o.namespace().as_deref() == Some(g.namespace.as_str()) && o.name_any() == g.name
            })
            .and_then(|o| serde_json::to_value(&o.status).ok());
        let state = fleet(&g.namespace, &g.name);
        if let Some(s) = gateway_status(g, &state, existing.as_ref().filter(|v| !v.is_null()), &now)
        {
            let api: Api<Gateway> = Api::namespaced(client.clone(), &g.namespace);
            let res = api
                .patch_status(&g.name, &pp, &Patch::Merge(json!({ "status": s })))
                .await;
            count(
                metrics,
                &res,
                &format!("Gateway {}/{}", g.namespace, g.name),
            );
            if let Err(e) = res {
                tracing::warn!(gateway = %format!("{}/{}", g.namespace, g.name), error = %e, "cannot write Gateway status");
            }
        }
    }
    // Routes that lost every Parapet parent (moved to another controller's Gateway, or
    // their Gateway is gone) are not in `out.routes`, but still hold Parapet's entries.
    let held_entries: Vec<(&'static str, String, String, Value)> = index
        .http_routes
        .state()
        .iter()
        .map(|o| {
            (
                KIND_HTTP_ROUTE,
                o.namespace().unwrap_or_default(),
                o.name_any(),
                serde_json::to_value(&o.status).unwrap_or_default(),
            )
        })
        .chain(index.grpc_routes.state().iter().map(|o| {
            (
                KIND_GRPC_ROUTE,
                o.namespace().unwrap_or_default(),
                o.name_any(),
                serde_json::to_value(&o.status).unwrap_or_default(),
            )
        }))
        .collect();
    let orphans = orphaned(out, &held_entries);
    for r in out.routes.iter().chain(&orphans) {
        let cached = |ns: Option<String>, name: String, status: Value, rv: Option<String>| {
            (ns.as_deref() == Some(r.namespace.as_str()) && name == r.name)
                .then(|| (Some(status).filter(|s| !s.is_null()), rv))
        };
        let (existing, rv) = if r.kind == KIND_GRPC_ROUTE {
            index.grpc_routes.state().into_iter().find_map(|o| {
                cached(
                    o.namespace(),
                    o.name_any(),
                    serde_json::to_value(&o.status).unwrap_or_default(),
                    o.resource_version(),
                )
            })
        } else {
            index.http_routes.state().into_iter().find_map(|o| {
                cached(
                    o.namespace(),
                    o.name_any(),
                    serde_json::to_value(&o.status).unwrap_or_default(),
                    o.resource_version(),
                )
            })
        }
        .unwrap_or_default();
        let Some(s) = route_status(r, existing.as_ref(), &now) else {
            continue;
        };
        let patch = Patch::Merge(route_patch(s, rv.as_deref()));
        let res = if r.kind == KIND_GRPC_ROUTE {
            Api::<GrpcRoute>::namespaced(client.clone(), &r.namespace)
                .patch_status(&r.name, &pp, &patch)
                .await
                .map(|_| ())
        } else {
            Api::<HttpRoute>::namespaced(client.clone(), &r.namespace)
                .patch_status(&r.name, &pp, &patch)
                .await
                .map(|_| ())
        };
        let what = format!("{} {}/{}", r.kind, r.namespace, r.name);
        match res {
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::debug!(route = %what, "route changed since it was read; its status is written next round");
            }
            res => {
                count(metrics, &res, &what);
                if let Err(e) = res {
                    tracing::warn!(route = %what, error = %e, "cannot write route status");
                }
            }
        }
    }
}

/// A route's status patch, conditional on the version its `parents` were computed from:
/// other controllers write their entries into the same list, and a patch from a stale read
/// would drop an entry written since (the API server answers 409 instead).
fn route_patch(status: Value, resource_version: Option<&str>) -> Value {
    match resource_version {
        Some(rv) => json!({"metadata": {"resourceVersion": rv}, "status": status}),
        None => json!({ "status": status }),
    }
}

#[cfg(test)]
mod tests {
    use parapet_crds::compiler::gateway::{
        ListenerStatus, ParentReference, ParentStatus, RouteGroupKind,
    };

    use super::*;

    fn cond(kind: &'static str, status: bool, reason: &str) -> Condition {
        Condition {
            kind,
            status,
            reason: reason.into(),
            message: "m".into(),
            observed_generation: 3,
        }
    }

    fn gateway() -> CompiledGateway {
        CompiledGateway {
            namespace: "infra".into(),
            name: "gw".into(),
            generation: 3,
            class: "parapet".into(),
            conditions: vec![
                cond("Accepted", true, "Accepted"),
                cond("Programmed", true, "Programmed"),
            ],
            listeners: vec![ListenerStatus {
                name: "http".into(),
                supported_kinds: vec![RouteGroupKind {
                    group: "gateway.networking.k8s.io".into(),
                    kind: "HTTPRoute".into(),
                }],
                attached_routes: 2,
                conditions: vec![cond("Accepted", true, "Accepted")],
            }],
            table: Default::default(),
        }
    }

    fn programmed(s: &Value) -> (&str, &str) {
        let c = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Programmed")
            .unwrap();
        (c["status"].as_str().unwrap(), c["reason"].as_str().unwrap())
    }

    #[test]
    fn a_gateway_is_programmed_only_with_an_address_and_a_serving_pod() {
        let g = gateway();
        let none = gateway_status(&g, &FleetState::default(), None, "t0").unwrap();
        assert_eq!(programmed(&none), ("False", "AddressNotAssigned"));
        assert!(none.get("addresses").is_none());
        let pending = FleetState {
            address: Some("198.19.0.7".into()),
            serving: false,
        };
        let s = gateway_status(&g, &pending, None, "t0").unwrap();
        assert_eq!(programmed(&s), ("False", "Pending"));
        assert_eq!(
            s["addresses"],
            json!([{"type": "IPAddress", "value": "198.19.0.7"}])
        );
        let ready = FleetState {
            address: Some("lb.example.com".into()),
            serving: true,
        };
        let s = gateway_status(&g, &ready, None, "t0").unwrap();
        assert_eq!(programmed(&s), ("True", "Programmed"));
        assert_eq!(s["addresses"][0]["type"], "Hostname");
        assert_eq!(s["listeners"][0]["attachedRoutes"], 2);
        assert_eq!(s["listeners"][0]["conditions"][0]["observedGeneration"], 3);
    }

    #[test]
    fn status_is_written_only_when_it_changes_and_keeps_transition_times() {
        let g = gateway();
        let ready = FleetState {
            address: Some("198.19.0.7".into()),
            serving: true,
        };
        let first = gateway_status(&g, &ready, None, "t0").unwrap();
        assert!(
            gateway_status(&g, &ready, Some(&first), "t1").is_none(),
            "unchanged: no write"
        );
        let mut newer = gateway();
        newer.conditions[0].message = "another".into();
        let second = gateway_status(&newer, &ready, Some(&first), "t1").unwrap();
        assert_eq!(
            second["conditions"][0]["lastTransitionTime"], "t0",
            "same status keeps its time"
        );
        newer.conditions[0].status = false;
        let third = gateway_status(&newer, &ready, Some(&second), "t2").unwrap();
        assert_eq!(third["conditions"][0]["lastTransitionTime"], "t2");
    }

    #[test]
    fn route_status_keeps_other_controllers_parents_and_replaces_its_own() {
        let existing = json!({"parents": [
            {"parentRef": {"name": "theirs"}, "controllerName": "example.com/other", "conditions": []},
            {"parentRef": {"name": "old"}, "controllerName": CONTROLLER_NAME, "conditions": []},
        ]});
        let r = RouteStatus {
            kind: "HTTPRoute",
            namespace: "infra".into(),
            name: "r".into(),
            parents: vec![ParentStatus {
                parent_ref: ParentReference {
                    group: None,
                    kind: None,
                    namespace: Some("infra".into()),
                    name: "new".into(),
                    section_name: Some("http".into()),
                    port: None,
                },
                conditions: vec![cond("Accepted", false, "NotAllowedByListeners")],
            }],
        };
        let s = route_status(&r, Some(&existing), "t0").unwrap();
        let names: Vec<&str> = s["parents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["parentRef"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["theirs", "new"], "the route moved from old to new");
        assert_eq!(
            s["parents"][1]["parentRef"],
            json!({"name": "new", "namespace": "infra", "sectionName": "http"})
        );
        assert_eq!(
            s["parents"][1]["conditions"][0]["reason"],
            "NotAllowedByListeners"
        );
        assert!(route_status(&r, Some(&s), "t1").is_none());
    }

    #[test]
    fn routes_that_lost_every_parapet_parent_lose_parapets_entries_only() {
        let held = vec![
            (
                KIND_HTTP_ROUTE,
                "infra".to_string(),
                "moved".to_string(),
                json!({"parents": [
                    {"parentRef": {"name": "theirs"}, "controllerName": "example.com/other", "conditions": []},
                    {"parentRef": {"name": "gone"}, "controllerName": CONTROLLER_NAME, "conditions": []},
                ]}),
            ),
            (
                KIND_HTTP_ROUTE,
                "infra".to_string(),
                "never-ours".to_string(),
                json!({"parents": [
                    {"parentRef": {"name": "theirs"}, "controllerName": "example.com/other", "conditions": []},
                ]}),
            ),
            (
                KIND_GRPC_ROUTE,
                "infra".to_string(),
                "no-status".to_string(),
                Value::Null,
            ),
        ];
        let orphans = orphaned(&GatewayOutput::default(), &held);
        assert_eq!(orphans.len(), 1, "{orphans:?}");
        assert_eq!(orphans[0].name, "moved");
        let s = route_status(&orphans[0], Some(&held[0].3), "t0").unwrap();
        assert_eq!(
            s["parents"],
            json!([{"parentRef": {"name": "theirs"}, "controllerName": "example.com/other", "conditions": []}])
        );
        assert!(route_status(&orphans[0], Some(&s), "t1").is_none());
        // A route still compiled is not an orphan, whatever it holds.
        let out = GatewayOutput {
            routes: vec![RouteStatus {
                kind: KIND_HTTP_ROUTE,
                namespace: "infra".into(),
                name: "moved".into(),
                parents: Vec::new(),
            }],
            ..Default::default()
        };
        assert!(orphaned(&out, &held).is_empty());
    }

    #[test]
    fn route_status_patches_are_conditional_on_the_version_read() {
        let s = json!({"parents": []});
        assert_eq!(
            route_patch(s.clone(), Some("42")),
            json!({"metadata": {"resourceVersion": "42"}, "status": {"parents": []}})
        );
        assert_eq!(route_patch(s, None), json!({"status": {"parents": []}}));
    }

    #[test]
    fn a_class_lists_its_features() {
        let c = ClassStatus {
            name: "parapet".into(),
            conditions: vec![cond("Accepted", true, "Accepted")],
            supported_features: vec!["HTTPRoute".into(), "Gateway".into()],
        };
        let s = class_status(&c, None, "t0").unwrap();
        assert_eq!(
            s["supportedFeatures"],
            json!([{"name": "HTTPRoute"}, {"name": "Gateway"}])
        );
        assert!(class_status(&c, Some(&s), "t1").is_none());
    }
}
