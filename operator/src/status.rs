//! Status conditions (`Accepted`, `ResolvedRefs`, `Programmed`), written by the leader only,
//! and only when they change. `lastTransitionTime` is kept when a condition's status does not
//! change, so a new leader rewrites nothing that is already right.

use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder},
};
use parapet_crds::{
    api::{ApiRoute, CachePolicy, UpstreamPool, conditions},
    compiler::{self, ConditionKind, MAX_MESSAGE, ObjectKey},
};
use serde_json::json;
use tokio::sync::watch;

use crate::{compile::Compiled, index::Index, metrics::Metrics, push::Fleet};

/// (type, status, reason, message) of one condition.
type Want = (&'static str, bool, String, String);

fn desired(c: &Compiled, key: &ObjectKey, generation: i64, serving: (usize, usize)) -> Vec<Want> {
    let mut out = Vec::with_capacity(3);
    if let Some((_, err)) = c.malformed.iter().find(|(k, _)| k == key) {
        let mut msg = format!("the object does not match the {} schema: {err}", key.kind);
        msg.truncate(MAX_MESSAGE);
        out.push((conditions::ACCEPTED, false, "Invalid".to_string(), msg));
        return out;
    }
    let (ns, name) = (key.namespace.as_str(), key.name.as_str());
    let accepted = c
        .diagnostics
        .condition(key.kind, ns, name, ConditionKind::Accepted);
    out.push(match accepted {
        Some((r, m)) => (conditions::ACCEPTED, false, r.to_string(), m),
        None => (
            conditions::ACCEPTED,
            true,
            "Accepted".to_string(),
            "the object is valid".to_string(),
        ),
    });
    out.push(
        match c
            .diagnostics
            .condition(key.kind, ns, name, ConditionKind::ResolvedRefs)
        {
            Some((r, m)) => (conditions::RESOLVED_REFS, false, r.to_string(), m),
            None => (
                conditions::RESOLVED_REFS,
                true,
                "ResolvedRefs".to_string(),
                "every reference resolved".to_string(),
            ),
        },
    );
    let (synced, total) = serving;
    let message = format!("{synced}/{total} pods serve generation {generation}");
    out.push(if total == 0 {
        (
            conditions::PROGRAMMED,
            false,
            "NoDataPlane".to_string(),
            "no data-plane pod is known yet".to_string(),
        )
    } else if synced == total {
        (
            conditions::PROGRAMMED,
            true,
            "Programmed".to_string(),
            message,
        )
    } else {
        (
            conditions::PROGRAMMED,
            false,
            "Pending".to_string(),
            message,
        )
    });
    out
}

fn existing(obj: &DynamicObject) -> Vec<Condition> {
    obj.data
        .get("status")
        .and_then(|s| s.get("conditions"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default()
}

fn build(want: &[Want], have: &[Condition], generation: i64) -> Option<Vec<Condition>> {
    let now = Time(Timestamp::now());
    let mut changed = want.len() != have.len();
    let conds: Vec<Condition> = want
        .iter()
        .map(|(t, ok, reason, message)| {
            let status = if *ok { "True" } else { "False" };
            let prev = have.iter().find(|c| c.type_ == *t);
            let same_status = prev.is_some_and(|p| p.status == status);
            if !prev.is_some_and(|p| {
                same_status
                    && p.reason == *reason
                    && p.message == *message
                    && p.observed_generation == Some(generation)
            }) {
                changed = true;
            }
            Condition {
                type_: t.to_string(),
                status: status.to_string(),
                reason: reason.clone(),
                message: message.clone(),
                observed_generation: Some(generation),
                last_transition_time: match prev {
                    Some(p) if same_status => p.last_transition_time.clone(),
                    _ => now.clone(),
                },
            }
        })
        .collect();
    changed.then_some(conds)
}

/// Publishes a Warning Event on an object whose condition just turned False.
fn report(
    recorder: &Option<Recorder>,
    obj: &DynamicObject,
    ar: &ApiResource,
    want: &[Want],
    have: &[Condition],
) {
    let Some(recorder) = recorder else { return };
    for (t, ok, reason, message) in want {
        let was_false = have
            .iter()
            .any(|c| c.type_ == *t && c.status == "False" && c.reason == *reason);
        if *ok || was_false || *t == conditions::PROGRAMMED {
            continue;
        }
        let ev = Event {
            type_: EventType::Warning,
            reason: reason.clone(),
            note: Some(message.chars().take(1000).collect()),
            action: "Compile".into(),
            secondary: None,
        };
        let reference = obj.object_ref(ar);
        let recorder = recorder.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::debug!(error = %e, "could not publish an event");
            }
        });
    }
}

pub async fn run(
    client: Client,
    index: Arc<Index>,
    fleet: Arc<Fleet>,
    mut tables: watch::Receiver<Option<Arc<Compiled>>>,
    mut leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    recorder: Option<Recorder>,
) {
    let pp = PatchParams::default();
    loop {
        tokio::select! {
            r = tables.changed() => if r.is_err() { return },
            _ = fleet.acked.notified() => {}
            r = leader.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        // Let a burst of acknowledgements settle into one round of writes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !*leader.borrow() {
            continue;
        }
        let Some(c) = tables.borrow().clone() else {
            continue;
        };
        for (kind, ar, stores) in [
            (
                compiler::KIND_ROUTE,
                ApiResource::erase::<ApiRoute>(&()),
                &index.routes,
            ),
            (
                compiler::KIND_POOL,
                ApiResource::erase::<UpstreamPool>(&()),
                &index.pools,
            ),
            (
                compiler::KIND_CACHE_POLICY,
                ApiResource::erase::<CachePolicy>(&()),
                &index.cache_policies,
            ),
        ] {
            for obj in stores.all() {
                let key =
                    ObjectKey::new(kind, &obj.namespace().unwrap_or_default(), &obj.name_any());
                let generation = obj.metadata.generation.unwrap_or(0);
                // Only objects this table was compiled from (a newer generation waits for
                // the next compile).
                if !c.objects.iter().any(|(k, g)| *k == key && *g == generation) {
                    continue;
                }
                let want = desired(
                    &c,
                    &key,
                    generation,
                    fleet.serving(key.kind, &key.namespace, &key.name, generation),
                );
                let mut extra = serde_json::Map::new();
                if kind == compiler::KIND_POOL
                    && let Some((total, ready)) = c
                        .pool_endpoints
                        .get(&(key.namespace.clone(), key.name.clone()))
                {
                    let status = obj.data.get("status");
                    let same = status
                        .and_then(|s| s.get("endpoints"))
                        .and_then(|v| v.as_u64())
                        == Some(*total as u64)
                        && status
                            .and_then(|s| s.get("readyEndpoints"))
                            .and_then(|v| v.as_u64())
                            == Some(*ready as u64);
                    if !same {
                        extra.insert("endpoints".into(), json!(total));
                        extra.insert("readyEndpoints".into(), json!(ready));
                    }
                }
                let have = existing(&obj);
                let conds = build(&want, &have, generation);
                if conds.is_some() {
                    report(&recorder, &obj, &ar, &want, &have);
                }
                if conds.is_none() && extra.is_empty() {
                    continue;
                }
                let mut status = extra;
                let conds = conds.unwrap_or_else(|| existing(&obj));
                status.insert(
                    "conditions".into(),
                    serde_json::to_value(conds).unwrap_or_default(),
                );
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), &key.namespace, &ar);
                match api
                    .patch_status(&key.name, &pp, &Patch::Merge(json!({ "status": status })))
                    .await
                {
                    Ok(_) => {
                        metrics.status_writes.inc();
                    }
                    Err(e) => {
                        metrics.status_errors.inc();
                        tracing::warn!(object = %key, error = %e, "status update failed");
                    }
                }
            }
        }
    }
}
