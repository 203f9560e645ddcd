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
    api::{ApiRoute, AuthPolicy, CachePolicy, UpstreamPool, conditions},
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
            (
                compiler::KIND_AUTH_POLICY,
                ApiResource::erase::<AuthPolicy>(&()),
                &index.auth_policies,
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
                    // Deleted since the table was compiled (a namespace going away
                    // takes its objects one by one): nothing to report on.
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        tracing::debug!(object = %key, "object gone before its status was written");
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use parapet_crds::api::conditions::{ACCEPTED, PROGRAMMED, RESOLVED_REFS};
    use serde_json::json;

    use super::*;
    use crate::{
        compile::{VersionClock, compile_index},
        push::{PodState, Target},
        testkit::{TestIndex, route, static_pool},
    };

    fn want(t: &'static str, ok: bool, reason: &str, message: &str) -> Want {
        (t, ok, reason.to_string(), message.to_string())
    }

    fn shop() -> Compiled {
        let mut t = TestIndex::new();
        t.apply_pool(&static_pool("shop", "web", &["10.0.0.1"]));
        t.apply_route(&route("shop", "good", 4, "a.example", &["web"]));
        t.apply_route(&route("shop", "lost", 2, "b.example", &["ghost"]));
        // What the API server may hold but the operator cannot read as an ApiRoute.
        t.apply_raw_route(json!({
            "apiVersion": "parapet.dev/v1alpha1",
            "kind": "ApiRoute",
            "metadata": {"name": "odd", "namespace": "shop", "generation": 1},
            "spec": {"hosts": "c.example", "rules": []},
        }));
        compile_index(&t.index, &VersionClock::default(), None).expect("compiled")
    }

    #[test]
    fn conditions_say_what_is_wrong_and_how_many_pods_serve_the_generation() {
        let c = shop();
        let good = ObjectKey::new(compiler::KIND_ROUTE, "shop", "good");
        assert_eq!(
            desired(&c, &good, 4, (2, 3)),
            [
                want(ACCEPTED, true, "Accepted", "the object is valid"),
                want(
                    RESOLVED_REFS,
                    true,
                    "ResolvedRefs",
                    "every reference resolved"
                ),
                want(PROGRAMMED, false, "Pending", "2/3 pods serve generation 4"),
            ]
        );
        assert_eq!(
            desired(&c, &good, 4, (3, 3))[2],
            want(
                PROGRAMMED,
                true,
                "Programmed",
                "3/3 pods serve generation 4"
            )
        );
        assert_eq!(
            desired(&c, &good, 4, (0, 0))[2],
            want(
                PROGRAMMED,
                false,
                "NoDataPlane",
                "no data-plane pod is known yet"
            )
        );

        let lost = ObjectKey::new(compiler::KIND_ROUTE, "shop", "lost");
        let d = desired(&c, &lost, 2, (1, 1));
        assert_eq!(
            d[0],
            want(ACCEPTED, true, "Accepted", "the object is valid")
        );
        let (t, ok, reason, message) = &d[1];
        assert_eq!(
            (*t, *ok, reason.as_str()),
            (RESOLVED_REFS, false, "PoolNotFound")
        );
        assert!(
            message.contains("UpstreamPool shop/ghost does not exist"),
            "{message}"
        );
        // Programmed says whether pods serve it, even though it answers 500.
        assert!(d[2].1);

        // Unreadable: only Accepted, false, saying why.
        let odd = ObjectKey::new(compiler::KIND_ROUTE, "shop", "odd");
        let d = desired(&c, &odd, 1, (1, 1));
        assert_eq!(d.len(), 1, "{d:?}");
        let (t, ok, reason, message) = &d[0];
        assert_eq!((*t, *ok, reason.as_str()), (ACCEPTED, false, "Invalid"));
        assert!(
            message.starts_with("the object does not match the ApiRoute schema: "),
            "{message}"
        );
    }

    fn time(s: &str) -> Time {
        Time(s.parse().expect("a timestamp"))
    }

    #[test]
    fn conditions_are_written_only_when_they_change_and_keep_their_transition_time() {
        let pending = [
            want(ACCEPTED, true, "Accepted", "the object is valid"),
            want(PROGRAMMED, false, "Pending", "1/3 pods serve generation 3"),
        ];
        let first = build(&pending, &[], 3).expect("new conditions are written");
        assert!(first.iter().all(|c| c.observed_generation == Some(3)));
        assert_eq!(first[1].message, "1/3 pods serve generation 3");
        assert_eq!(first[1].status, "False");
        assert!(build(&pending, &first, 3).is_none(), "nothing changed");

        // As a previous leader wrote them, long ago.
        let long_ago = time("2020-01-01T00:00:00Z");
        let stored: Vec<Condition> = first
            .iter()
            .map(|c| Condition {
                last_transition_time: long_ago.clone(),
                ..c.clone()
            })
            .collect();
        assert!(
            build(&pending, &stored, 3).is_none(),
            "a new leader rewrites nothing"
        );

        // Progress without a change of status: written, transition time kept.
        let progress = [
            pending[0].clone(),
            want(PROGRAMMED, false, "Pending", "2/3 pods serve generation 3"),
        ];
        let next = build(&progress, &stored, 3).expect("the message changed");
        assert_eq!(next[1].message, "2/3 pods serve generation 3");
        assert!(next.iter().all(|c| c.last_transition_time == long_ago));

        // The status turns: a new transition time for that condition only.
        let done = [
            pending[0].clone(),
            want(
                PROGRAMMED,
                true,
                "Programmed",
                "3/3 pods serve generation 3",
            ),
        ];
        let next = build(&done, &stored, 3).expect("the status changed");
        assert_eq!(next[0].last_transition_time, long_ago);
        assert_ne!(next[1].last_transition_time, long_ago);
        assert_eq!(next[1].status, "True");

        // A new generation: observedGeneration moves, transition times stay.
        let next = build(&pending, &stored, 4).expect("the generation changed");
        assert!(next.iter().all(|c| c.observed_generation == Some(4)));
        assert!(next.iter().all(|c| c.last_transition_time == long_ago));

        // A condition no longer wanted is dropped.
        let next = build(&pending[..1], &stored, 3).expect("one condition fewer");
        assert_eq!(next.len(), 1);
    }

    #[test]
    fn a_pod_serves_an_object_when_its_acknowledged_table_carries_that_generation() {
        let fleet = Fleet::default();
        let carries = |g: i64| {
            Some(Arc::new(
                [(
                    "ApiRoute".to_string(),
                    "shop".to_string(),
                    "good".to_string(),
                    g,
                )]
                .into_iter()
                .collect(),
            ))
        };
        let pods: BTreeMap<String, (Target, PodState)> = [
            ("a", carries(4)),
            ("b", carries(4)),
            ("c", carries(3)),
            ("d", None),
        ]
        .into_iter()
        .map(|(n, sources)| {
            let target = Target {
                addr: format!("{n}:9901"),
                name: n.to_string(),
                ready: true,
                zone: None,
            };
            let state = PodState {
                acked_sources: sources,
                ..PodState::default()
            };
            (target.addr.clone(), (target, state))
        })
        .collect();
        *fleet.pods.lock().unwrap() = pods;
        assert_eq!(fleet.serving("ApiRoute", "shop", "good", 4), (2, 4));
        assert_eq!(fleet.serving("ApiRoute", "shop", "good", 3), (1, 4));
        assert_eq!(fleet.serving("ApiRoute", "shop", "other", 4), (0, 4));
    }
}
