//! The operator against a real kube-apiserver: data planes and backends are processes on
//! 127.0.0.1, listed in selector-less Services' EndpointSlices.

use std::{
    collections::BTreeSet,
    ops::Range,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams},
};
use parapet_crds::api::{ApiRoute, UpstreamPool};
use parapet_e2e::{
    TestNamespace, apply_crds, client,
    fleet::{self, Operator, Slice},
    ms, percentile, wait_for,
};
use parapet_tests::{admin, backend::Backend, client::Client as Http, dataplane::Dataplane};
use serde_json::{Value, json};
use tokio::{
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard, Semaphore},
    task::JoinSet,
};

const TOKEN: &str = "e2e-snapshot-token-0123456789";

/// The host the standard route serves.
const HOST: &str = "api.bank.example";

/// Timing tests take this exclusively, so that their figures are not taken while other tests
/// of this binary load the two cores; the other tests share it.
static TURN: RwLock<()> = RwLock::const_new(());

enum Turn {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

struct Setup {
    client: Client,
    ns: TestNamespace,
    token_file: String,
    _dir: tempfile::TempDir,
    _turn: Turn,
}

async fn setup(test: &str) -> Result<Setup> {
    setup_with(test, Turn::Shared(TURN.read().await)).await
}

/// A setup that runs while no other test of this binary does.
async fn setup_alone(test: &str) -> Result<Setup> {
    setup_with(test, Turn::Exclusive(TURN.write().await)).await
}

async fn setup_with(test: &str, turn: Turn) -> Result<Setup> {
    fleet::check_local_name().await?;
    let client = client().await?;
    apply_crds(&client).await?;
    let ns = TestNamespace::new(&client, test).await?;
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN)?;
    Ok(Setup {
        client,
        ns,
        token_file: token_file.to_string_lossy().into_owned(),
        _dir: dir,
        _turn: turn,
    })
}

impl Setup {
    fn ns(&self) -> &str {
        self.ns.name()
    }

    /// A data plane that takes pushes, listed in the `dp-admin` Service.
    async fn dataplane(&self, name: &str, ready: bool) -> Result<Dataplane> {
        self.dataplane_on(name, ready, None).await
    }

    /// Like [`Setup::dataplane`], with the admin port chosen (to restart a data plane in
    /// place) or left to the system.
    async fn dataplane_on(
        &self,
        name: &str,
        ready: bool,
        admin_port: Option<u16>,
    ) -> Result<Dataplane> {
        let admin_listen = admin_port.map(|p| format!("127.0.0.1:{p}"));
        let mut args = vec!["--snapshot-token-file", self.token_file.as_str()];
        if let Some(a) = &admin_listen {
            args.extend(["--admin-listen", a.as_str()]);
        }
        let dp = Dataplane::start(&args);
        self.list_dataplane(name, &dp, ready).await?;
        Ok(dp)
    }

    /// Lists `dp`'s admin port as endpoint `name` of the `dp-admin` Service.
    async fn list_dataplane(&self, name: &str, dp: &Dataplane, ready: bool) -> Result<()> {
        fleet::service(&self.client, self.ns(), "dp-admin", "admin", 9901).await?;
        fleet::slice(
            &self.client,
            self.ns(),
            Slice {
                service: "dp-admin",
                name,
                port_name: "admin",
                port: dp.admin.port(),
                ready,
                zone: None,
                for_zones: &[],
            },
        )
        .await
    }

    async fn apply(&self, kind: &str, name: &str, spec: Value) -> Result<()> {
        apply_object(&self.client, self.ns(), kind, name, spec).await
    }

    async fn get(&self, kind: &str, name: &str) -> Result<DynamicObject> {
        Ok(
            Api::<DynamicObject>::namespaced_with(self.client.clone(), self.ns(), &resource(kind))
                .get(name)
                .await?,
        )
    }

    async fn status(&self, kind: &str, name: &str) -> Result<Value> {
        let o = self.get(kind, name).await?;
        Ok(o.data.get("status").cloned().unwrap_or(Value::Null))
    }

    async fn resource_version(&self, kind: &str, name: &str) -> Result<String> {
        Ok(self
            .get(kind, name)
            .await?
            .metadata
            .resource_version
            .unwrap_or_default())
    }

    /// Waits until condition `type_` of the object has `status` and `reason`; returns it.
    async fn wait_condition(
        &self,
        kind: &str,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> Result<Value> {
        let last = Mutex::new(Value::Null);
        let found = wait_for(
            &format!("{kind} {name}: {type_}={status} reason {reason}"),
            Duration::from_secs(30),
            || async {
                let st = self.status(kind, name).await?;
                let c = condition(&st, type_).cloned();
                *last.lock().unwrap() = st;
                Ok(c.filter(|c| c["status"] == status && c["reason"] == reason))
            },
        )
        .await;
        found.map_err(|e| e.context(format!("last status: {}", last.lock().unwrap())))
    }

    /// Backend `name` listed in Service `service` (created if need be).
    async fn backend(&self, service: &str, name: &str) -> Result<Backend> {
        let b = Backend::start(name).await;
        fleet::service(&self.client, self.ns(), service, "http", 80).await?;
        fleet::slice(
            &self.client,
            self.ns(),
            Slice {
                service,
                name,
                port_name: "http",
                port: b.port(),
                ready: true,
                zone: None,
                for_zones: &[],
            },
        )
        .await?;
        Ok(b)
    }

    /// The standard fleet: pools `accounts` (backend `accounts-a`) and `ledger` (backend
    /// `ledger-a`), route `accounts` sending [`HOST`] to `accounts`, data planes `dp-1` and
    /// `dp-2`, and one operator per identity (same Lease). Returns once both data planes
    /// serve the route.
    async fn running(&self, identities: &[&str]) -> Result<Running> {
        let accounts = self.backend("accounts", "accounts-a").await?;
        let ledger = self.backend("ledger", "ledger-a").await?;
        let dp1 = self.dataplane("dp-1", true).await?;
        let dp2 = self.dataplane("dp-2", true).await?;
        let mut ops = Vec::new();
        for id in identities {
            ops.push(Operator::start(
                self.ns(),
                "dp-admin",
                &self.token_file,
                id,
            )?);
        }
        for pool in ["accounts", "ledger"] {
            self.apply(
                "UpstreamPool",
                pool,
                json!({"service": {"name": pool, "port": 80}}),
            )
            .await?;
        }
        self.apply("ApiRoute", "accounts", route_to(HOST, "accounts"))
            .await?;
        let http = Http::new();
        wait_serving(&http, &[&dp1, &dp2], HOST, "/", "accounts-a").await?;
        Ok(Running {
            http,
            accounts,
            ledger,
            dp1,
            dp2,
            ops,
        })
    }
}

impl Setup {
    /// Waits until the route `accounts` is Programmed on every pod (so no table is still on
    /// its way), then returns the table the data planes agree on.
    async fn settled(&self, http: &Http, dps: &[&Dataplane]) -> Result<(u64, String)> {
        self.wait_condition("ApiRoute", "accounts", "Programmed", "True", "Programmed")
            .await?;
        same_table(http, dps).await
    }
}

/// Waits (15 s at most) until every data plane holds one and the same table; returns it.
async fn same_table(http: &Http, dps: &[&Dataplane]) -> Result<(u64, String)> {
    wait_for(
        &format!("{} data planes to hold the same table", dps.len()),
        Duration::from_secs(15),
        || async {
            let mut tables = Vec::new();
            for dp in dps {
                tables.push(snapshot_of(http, dp).await);
            }
            Ok(tables[0]
                .clone()
                .filter(|t| tables.iter().all(|o| o.as_ref() == Some(t))))
        },
    )
    .await
}

/// What [`Setup::running`] starts.
struct Running {
    http: Http,
    accounts: Backend,
    ledger: Backend,
    dp1: Dataplane,
    dp2: Dataplane,
    ops: Vec<Operator>,
}

fn resource(kind: &str) -> ApiResource {
    match kind {
        "ApiRoute" => ApiResource::erase::<ApiRoute>(&()),
        "AuthPolicy" => ApiResource::erase::<parapet_crds::api::AuthPolicy>(&()),
        _ => ApiResource::erase::<UpstreamPool>(&()),
    }
}

async fn apply_object(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    spec: Value,
) -> Result<()> {
    fleet::apply_parapet(client, ns, kind, name, spec).await?;
    Ok(())
}

/// An ApiRoute spec sending every request for `host` to `pool`.
fn route_to(host: &str, pool: &str) -> Value {
    json!({"hosts": [host], "rules": [{"backends": [{"pool": pool}]}]})
}

/// Applies ApiRoutes `bulk-NNNN` for `range` (host `rNNNN.bulk.example` → pool `accounts`),
/// at most `concurrency` requests in flight.
async fn create_bulk_routes(
    client: &Client,
    ns: &str,
    range: Range<usize>,
    concurrency: usize,
) -> Result<()> {
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut tasks = JoinSet::new();
    for i in range {
        let permit = sem.clone().acquire_owned().await?;
        let (client, ns) = (client.clone(), ns.to_string());
        tasks.spawn(async move {
            let _permit = permit;
            apply_object(
                &client,
                &ns,
                "ApiRoute",
                &format!("bulk-{i:04}"),
                route_to(&bulk_host(i), "accounts"),
            )
            .await
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

fn bulk_host(i: usize) -> String {
    format!("r{i:04}.bulk.example")
}

fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

async fn serves(http: &Http, dp: &Dataplane, host: &str, path: &str, backend: &str) -> bool {
    http.get(dp.proxy, host, path)
        .await
        .ok()
        .is_some_and(|r| r.backend() == Some(backend))
}

/// Waits (30 s at most) until every data plane answers `host` `path` from `backend`.
async fn wait_serving(
    http: &Http,
    dps: &[&Dataplane],
    host: &str,
    path: &str,
    backend: &str,
) -> Result<()> {
    for (i, dp) in dps.iter().enumerate() {
        wait_for(
            &format!(
                "data plane #{} to answer {host}{path} from {backend}",
                i + 1
            ),
            Duration::from_secs(30),
            || async { Ok(serves(http, dp, host, path, backend).await.then_some(())) },
        )
        .await?;
    }
    Ok(())
}

/// The (version, hash) a data plane says it serves.
async fn snapshot_of(http: &Http, dp: &Dataplane) -> Option<(u64, String)> {
    let v = dp.snapshot_status(http).await?;
    Some((v["version"].as_u64()?, v["hash"].as_str()?.to_string()))
}

/// One sample of an operator metric (`None` when the operator does not answer or lacks it).
async fn operator_metric(http: &Http, op: &Operator, name: &str) -> Option<f64> {
    let r = http.get(op.metrics, "operator", "/metrics").await.ok()?;
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_reach_every_dataplane_and_status_says_so() -> Result<()> {
    let s = setup("operator-basic").await?;
    let (a, b) = (
        s.backend("accounts", "accounts-a").await?,
        s.backend("accounts", "accounts-b").await?,
    );
    let dp1 = s.dataplane("dp-1", true).await?;
    let dp2 = s.dataplane("dp-2", true).await?;
    let _op = Operator::start(s.ns(), "dp-admin", &s.token_file, "op-basic")?;
    s.apply(
        "UpstreamPool",
        "accounts",
        json!({"service": {"name": "accounts", "port": 80}}),
    )
    .await?;
    s.apply(
        "ApiRoute",
        "accounts",
        json!({"hosts": ["api.bank.example"], "rules": [{"backends": [{"pool": "accounts"}]}]}),
    )
    .await?;

    let http = Http::new();
    for dp in [&dp1, &dp2] {
        wait_for(
            "the data plane to serve the route",
            Duration::from_secs(30),
            || async {
                Ok(http
                    .get(dp.proxy, "api.bank.example", "/")
                    .await
                    .ok()
                    .filter(|r| r.status == 200))
            },
        )
        .await?;
    }
    // Round robin over both backends, through both data planes.
    for dp in [&dp1, &dp2] {
        for _ in 0..10 {
            assert_eq!(
                http.get(dp.proxy, "api.bank.example", "/").await?.status,
                200
            );
        }
    }
    assert!(
        a.hits() >= 8 && b.hits() >= 8,
        "a={} b={}",
        a.hits(),
        b.hits()
    );

    let st = wait_for(
        "Programmed=True on the route",
        Duration::from_secs(30),
        || async {
            let st = s.status("ApiRoute", "accounts").await?;
            Ok(condition(&st, "Programmed")
                .filter(|c| c["status"] == "True")
                .map(|_| st.clone()))
        },
    )
    .await?;
    assert_eq!(condition(&st, "Accepted").unwrap()["status"], "True");
    assert_eq!(condition(&st, "ResolvedRefs").unwrap()["status"], "True");
    let programmed = condition(&st, "Programmed").unwrap();
    assert!(
        programmed["message"]
            .as_str()
            .unwrap()
            .starts_with("2/2 pods"),
        "{programmed}"
    );
    assert_eq!(programmed["observedGeneration"], 1);
    let pool = wait_for("pool endpoint counts", Duration::from_secs(30), || async {
        let st = s.status("UpstreamPool", "accounts").await?;
        Ok((st["readyEndpoints"] == 2).then_some(st))
    })
    .await?;
    assert_eq!(pool["endpoints"], 2);

    // Removing a backend from its slice stops traffic to it.
    fleet::delete_slice(&s.client, s.ns(), "accounts-b").await?;
    wait_for(
        "accounts-b to leave the table",
        Duration::from_secs(30),
        || async {
            let before = b.hits();
            for _ in 0..6 {
                let _ = http.get(dp1.proxy, "api.bank.example", "/").await;
            }
            Ok((b.hits() == before).then_some(()))
        },
    )
    .await?;
    let before = b.hits();
    for dp in [&dp1, &dp2] {
        for _ in 0..20 {
            assert!(serves(&http, dp, "api.bank.example", "/", "accounts-a").await);
        }
    }
    assert_eq!(b.hits(), before);
    Ok(())
}

/// The zone a data plane's balancers prefer, as its status says.
async fn zone_of(http: &Http, dp: &Dataplane) -> Option<String> {
    dp.snapshot_status(http).await?["zone"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_from_slices_and_hints_decide_where_a_pod_sends() -> Result<()> {
    let s = setup("operator-zones").await?;
    let r = s.running(&["op-zones"]).await?;
    let http = &r.http;
    s.settled(http, &[&r.dp1, &r.dp2]).await?;
    // dp-1's own EndpointSlice says its node is in zone-b (the EndpointSlice controller
    // copies the node's zone there); the operator tells dp-1 in its pushes.
    fleet::slice(
        &s.client,
        s.ns(),
        Slice {
            service: "dp-admin",
            name: "dp-1",
            port_name: "admin",
            port: r.dp1.admin.port(),
            ready: true,
            zone: Some("zone-b"),
            for_zones: &[],
        },
    )
    .await?;
    wait_for(
        "dp-1 to learn its zone",
        Duration::from_secs(20),
        || async { Ok((zone_of(http, &r.dp1).await.as_deref() == Some("zone-b")).then_some(())) },
    )
    .await?;
    assert_eq!(
        zone_of(http, &r.dp2).await,
        None,
        "dp-2's slice names no zone"
    );

    // One backend per zone behind one Service, and a pool that prefers the local zone.
    let a = Backend::start("zoned-a").await;
    let b = Backend::start("zoned-b").await;
    fleet::service(&s.client, s.ns(), "zoned", "http", 80).await?;
    let (client, ns) = (s.client.clone(), s.ns().to_string());
    let list = |name: &'static str,
                backend: &Backend,
                zone: &'static str,
                for_zones: &'static [&'static str]| {
        let (port, client, ns) = (backend.port(), client.clone(), ns.clone());
        async move {
            fleet::slice(
                &client,
                &ns,
                Slice {
                    service: "zoned",
                    name,
                    port_name: "http",
                    port,
                    ready: true,
                    zone: Some(zone),
                    for_zones,
                },
            )
            .await
        }
    };
    list("zoned-a", &a, "zone-a", &[]).await?;
    list("zoned-b", &b, "zone-b", &[]).await?;
    s.apply(
        "UpstreamPool",
        "zoned",
        json!({"service": {"name": "zoned", "port": 80}, "failover": {"preferLocalZone": true}}),
    )
    .await?;
    s.apply(
        "ApiRoute",
        "zoned",
        json!({"hosts": ["zoned.example"], "rules": [{"backends": [{"pool": "zoned"}]}]}),
    )
    .await?;
    // dp-1 (zone-b) keeps to zone-b's backend; dp-2, with no zone, uses both.
    wait_serving(http, &[&r.dp1], "zoned.example", "/", "zoned-b").await?;
    for _ in 0..40 {
        assert!(
            serves(http, &r.dp1, "zoned.example", "/", "zoned-b").await,
            "dp-1 left its zone"
        );
    }
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        if let Ok(reply) = http.get(r.dp2.proxy, "zoned.example", "/").await {
            seen.insert(reply.backend().unwrap_or_default().to_string());
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from(["zoned-a".to_string(), "zoned-b".to_string()]),
        "dp-2 has no zone"
    );

    // Topology hints decide over the zones: zone-a's backend is now meant for zone-b.
    list("zoned-a", &a, "zone-a", &["zone-b"]).await?;
    list("zoned-b", &b, "zone-b", &["zone-a"]).await?;
    wait_serving(http, &[&r.dp1], "zoned.example", "/", "zoned-a").await?;
    for _ in 0..40 {
        assert!(
            serves(http, &r.dp1, "zoned.example", "/", "zoned-a").await,
            "dp-1 ignored the hints"
        );
    }
    Ok(())
}

/// The pods a data plane divides fleet-wide rate limits among, as its status says.
async fn fleet_pods_of(http: &Http, dp: &Dataplane) -> Option<u64> {
    dp.snapshot_status(http).await?["fleetPods"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_shares_count_the_ready_dataplanes() -> Result<()> {
    let s = setup("operator-fleet-share").await?;
    let r = s.running(&["op-share"]).await?;
    let http = &r.http;
    s.settled(http, &[&r.dp1, &r.dp2]).await?;
    s.apply(
        "ApiRoute",
        "limited",
        json!({"hosts": ["limited.example"], "rules": [{"backends": [{"pool": "accounts"}],
            "rateLimit": {"requests": 90, "period": "1s"}}]}),
    )
    .await?;
    let shares = |dps: Vec<&'static str>, want: u64| {
        let all: Vec<(&str, &Dataplane)> = dps
            .into_iter()
            .map(|n| match n {
                "dp-1" => (n, &r.dp1),
                "dp-2" => (n, &r.dp2),
                _ => unreachable!(),
            })
            .collect();
        async move {
            wait_for(
                &format!("every data plane to divide rate limits among {want} pods"),
                Duration::from_secs(20),
                || async {
                    for (_, dp) in &all {
                        if fleet_pods_of(http, dp).await != Some(want) {
                            return Ok(None);
                        }
                    }
                    Ok(Some(()))
                },
            )
            .await
        }
    };
    shares(vec!["dp-1", "dp-2"], 2).await?;

    // A third pod, not ready: it gets the table but no traffic, so it does not count.
    let dp3 = Dataplane::start(&["--snapshot-token-file", &s.token_file]);
    s.list_dataplane("dp-3", &dp3, false).await?;
    wait_for(
        "dp-3 to receive a table",
        Duration::from_secs(15),
        || async { Ok((fleet_pods_of(http, &dp3).await == Some(2)).then_some(())) },
    )
    .await?;
    shares(vec!["dp-1", "dp-2"], 2).await?;

    // Ready: three ways.
    s.list_dataplane("dp-3", &dp3, true).await?;
    shares(vec!["dp-1", "dp-2"], 3).await?;
    wait_for("dp-3 to count 3", Duration::from_secs(15), || async {
        Ok((fleet_pods_of(http, &dp3).await == Some(3)).then_some(()))
    })
    .await?;

    // dp-1 turns unready (as when its readiness probe fails): two ways again, and dp-1,
    // still a target, is told so too.
    s.list_dataplane("dp-1", &r.dp1, false).await?;
    shares(vec!["dp-1", "dp-2"], 2).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_dataplane_gets_the_table_before_it_is_ready() -> Result<()> {
    let s = setup("operator-new-dataplane").await?;
    let r = s.running(&["op-new-dp"]).await?;
    let http = &r.http;
    let serving = s.settled(http, &[&r.dp1, &r.dp2]).await?;

    // A third pod appears, not ready (as a fresh pod is until it has a table).
    let dp3 = Dataplane::start(&["--snapshot-token-file", &s.token_file]);
    assert!(
        !admin::ready(http, dp3.admin).await,
        "dp-3 is ready with no table"
    );
    let started = Instant::now();
    s.list_dataplane("dp-3", &dp3, false).await?;
    wait_for(
        "dp-3 to receive a table",
        Duration::from_secs(15),
        || async { Ok(snapshot_of(http, &dp3).await) },
    )
    .await?;
    let took = started.elapsed();
    let all = same_table(http, &[&r.dp1, &r.dp2, &dp3]).await?;
    assert_eq!(all, serving, "the fleet's table changed while dp-3 joined");
    // It serves while its slice still says it is not ready: the operator pushed to a pod
    // that no one routes to yet, which is what lets it become ready at all.
    assert!(serves(http, &dp3, HOST, "/", "accounts-a").await);
    assert!(
        admin::ready(http, dp3.admin).await,
        "dp-3 has a table but /readyz fails"
    );
    assert_eq!(
        fleet::slice_ready(&s.client, s.ns(), "dp-3").await?,
        Some(false),
        "the test relies on dp-3 being listed as not ready"
    );
    eprintln!("NEW_DATAPLANE table_after_ms={:.0}", ms(took));
    // Status counts the not-ready pod too.
    wait_for(
        "Programmed to count 3/3 pods",
        Duration::from_secs(30),
        || async {
            let st = s.status("ApiRoute", "accounts").await?;
            Ok(condition(&st, "Programmed")
                .filter(|c| {
                    c["status"] == "True"
                        && c["message"]
                            .as_str()
                            .is_some_and(|m| m.starts_with("3/3 pods"))
                })
                .map(|_| ()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_continues_when_the_operator_dies() -> Result<()> {
    let s = setup("operator-dies").await?;
    let mut r = s.running(&["op-dies"]).await?;
    let before = (
        snapshot_of(&r.http, &r.dp1).await,
        snapshot_of(&r.http, &r.dp2).await,
    );
    r.ops[0].kill();
    // 200 requests over about 3 s, alternating between the data planes.
    let mut failures = Vec::new();
    for i in 0..200 {
        let dp = if i % 2 == 0 { &r.dp1 } else { &r.dp2 };
        match r.http.get(dp.proxy, HOST, "/").await {
            Ok(reply) if reply.status == 200 && reply.backend() == Some("accounts-a") => {}
            Ok(reply) => {
                failures.push(format!("#{i}: {} from {:?}", reply.status, reply.backend()))
            }
            Err(e) => failures.push(format!("#{i}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    assert!(
        failures.is_empty(),
        "{} of 200 failed: {failures:?}",
        failures.len()
    );
    assert!(r.accounts.hits() >= 200);
    // The data planes keep the table they had.
    let after = (
        snapshot_of(&r.http, &r.dp1).await,
        snapshot_of(&r.http, &r.dp2).await,
    );
    assert_eq!(before, after);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_fails_over() -> Result<()> {
    let s = setup("operator-failover").await?;
    let mut r = s.running(&["op-a", "op-b"]).await?;
    let http = r.http.clone();
    let leaders = |ops: &[Operator]| {
        let http = http.clone();
        let addrs: Vec<_> = ops.iter().map(|o| o.metrics).collect();
        async move {
            let mut v = Vec::new();
            for a in addrs {
                let r = http.get(a, "operator", "/metrics").await.ok();
                v.push(r.and_then(|r| {
                    r.text().lines().find_map(|l| {
                        l.strip_prefix("parapet_operator_leader ")
                            .and_then(|x| x.trim().parse::<f64>().ok())
                    })
                }));
            }
            v
        }
    };
    // Exactly one leads, and that stays so.
    let leader = wait_for("exactly one leader", Duration::from_secs(30), || async {
        let v = leaders(&r.ops).await;
        ensure!(v != [Some(1.0), Some(1.0)], "both operators lead: {v:?}");
        Ok(match v.as_slice() {
            [Some(1.0), Some(0.0)] => Some(0),
            [Some(0.0), Some(1.0)] => Some(1),
            _ => None,
        })
    })
    .await?;
    for _ in 0..10 {
        let v = leaders(&r.ops).await;
        let mut want = [Some(0.0), Some(0.0)];
        want[leader] = Some(1.0);
        assert_eq!(v, want, "leadership is not stable with two replicas");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names = ["op-a", "op-b"];
    let (old, new) = (leader, 1 - leader);
    eprintln!("{} leads; killing it", names[old]);

    r.ops[old].kill();
    let killed = Instant::now();
    // An edit while no one leads: the next leader must push it.
    s.apply("ApiRoute", "accounts", route_to(HOST, "ledger"))
        .await?;
    loop {
        if operator_metric(&http, &r.ops[new], "parapet_operator_leader").await == Some(1.0) {
            break;
        }
        ensure!(
            killed.elapsed() < Duration::from_secs(20),
            "{} did not take over within 20 s of {} dying",
            names[new],
            names[old]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let takeover = killed.elapsed();
    let leading = Instant::now();
    wait_serving(&http, &[&r.dp1, &r.dp2], HOST, "/", "ledger-a").await?;
    let gap_edit = leading.elapsed();
    for dp in [&r.dp1, &r.dp2] {
        for _ in 0..10 {
            assert!(serves(&http, dp, HOST, "/", "ledger-a").await);
        }
    }
    assert!(r.ledger.hits() >= 20);

    // An edit under the new leader.
    s.apply(
        "ApiRoute",
        "accounts",
        json!({"hosts": [HOST], "rules": [
            {"backends": [{"pool": "ledger"}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/accounts"}}],
             "backends": [{"pool": "accounts"}]},
        ]}),
    )
    .await?;
    let edited = Instant::now();
    wait_serving(&http, &[&r.dp1, &r.dp2], HOST, "/accounts", "accounts-a").await?;
    let pushed = edited.elapsed();
    wait_serving(&http, &[&r.dp1, &r.dp2], HOST, "/", "ledger-a").await?;
    // ...and writes status.
    wait_for(
        "Programmed=True for generation 3 from the new leader",
        Duration::from_secs(30),
        || async {
            let st = s.status("ApiRoute", "accounts").await?;
            Ok(condition(&st, "Programmed")
                .filter(|c| c["status"] == "True" && c["observedGeneration"] == 3)
                .map(|_| ()))
        },
    )
    .await?;
    eprintln!(
        "LEADER_TAKEOVER takeover_ms={:.0} gap_edit_served_after_takeover_ms={:.0} edit_served_after_ms={:.0} lease_duration_s=6",
        ms(takeover),
        ms(gap_edit),
        ms(pushed)
    );
    Ok(())
}

/// Applies edit `i` of route `edited` (host `edit.example`, one Exact path `/edit/NNN`) and
/// returns the time from the API server accepting it to every data plane serving it.
async fn timed_edit(s: &Setup, http: &Http, dps: &[&Dataplane], i: usize) -> Result<Duration> {
    let path = format!("/edit/{i:03}");
    s.apply(
        "ApiRoute",
        "edited",
        json!({"hosts": ["edit.example"], "rules": [{
            "matches": [{"path": {"type": "Exact", "value": path}}],
            "backends": [{"pool": "accounts"}],
        }]}),
    )
    .await?;
    let accepted = Instant::now();
    let mut pending: Vec<usize> = (0..dps.len()).collect();
    loop {
        let mut still = Vec::new();
        for k in pending {
            let ok = http
                .get(dps[k].proxy, "edit.example", &path)
                .await
                .is_ok_and(|r| r.status == 200);
            if !ok {
                still.push(k);
            }
        }
        pending = still;
        if pending.is_empty() {
            return Ok(accepted.elapsed());
        }
        if accepted.elapsed() > Duration::from_secs(30) {
            bail!("edit {i} ({path}) not served by data planes {pending:?} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until the operator has stopped writing status (the counter holds for 2 s).
async fn status_settled(http: &Http, op: &Operator) -> Result<f64> {
    status_settled_for(http, op, Duration::from_secs(2)).await
}

/// Waits until the status-write counter holds for `quiet`; returns it.
async fn status_settled_for(http: &Http, op: &Operator, quiet: Duration) -> Result<f64> {
    let mut last = None;
    let mut since = Instant::now();
    let start = Instant::now();
    loop {
        let now = operator_metric(http, op, "parapet_operator_status_writes_total").await;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return Ok(now.unwrap_or(0.0));
        }
        ensure!(
            start.elapsed() < Duration::from_secs(90),
            "the operator kept writing status for 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every data plane serves every bulk route of `range`.
async fn wait_bulk_served(http: &Http, dps: &[&Dataplane], range: Range<usize>) -> Result<()> {
    for (k, dp) in dps.iter().enumerate() {
        // Routes below `next` were seen served already.
        let next = AtomicUsize::new(range.start);
        wait_for(
            &format!("data plane #{} to serve bulk routes {range:?}", k + 1),
            Duration::from_secs(60),
            || async {
                while next.load(Ordering::Relaxed) < range.end {
                    let i = next.load(Ordering::Relaxed);
                    if !serves(http, dp, &bulk_host(i), "/", "accounts-a").await {
                        return Ok(None);
                    }
                    next.store(i + 1, Ordering::Relaxed);
                }
                Ok(Some(()))
            },
        )
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_time() -> Result<()> {
    const EDITS: usize = 20;
    let s = setup_alone("operator-propagation").await?;
    let r = s.running(&["op-propagation"]).await?;
    let http = &r.http;
    let dps = [&r.dp1, &r.dp2];
    let op = &r.ops[0];
    // `accounts` (made by `running`) and `edited` count among the routes.
    let mut edit = 0;
    timed_edit(&s, http, &dps, edit).await?;
    let mut bulk = 0;
    for total in [10, 1000] {
        let created = Instant::now();
        create_bulk_routes(&s.client, s.ns(), bulk..total - 2, 32).await?;
        let create_time = created.elapsed();
        wait_bulk_served(http, &dps, bulk..total - 2).await?;
        let served_time = created.elapsed();
        bulk = total - 2;
        let writes_before = status_settled(http, op).await?;
        let settled_time = created.elapsed();

        let programmed_since =
            |st: Value| condition(&st, "Programmed").map(|c| c["lastTransitionTime"].clone());
        let unrelated_before = programmed_since(s.status("ApiRoute", "accounts").await?);
        let mut samples = Vec::with_capacity(EDITS);
        for _ in 0..EDITS {
            edit += 1;
            samples.push(timed_edit(&s, http, &dps, edit).await?);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let last_edit = Instant::now();
        let generation = s.get("ApiRoute", "edited").await?.metadata.generation;
        wait_for(
            "the last edit to be Programmed",
            Duration::from_secs(60),
            || async {
                let st = s.status("ApiRoute", "edited").await?;
                Ok(condition(&st, "Programmed")
                    .filter(|c| {
                        c["status"] == "True" && c["observedGeneration"] == json!(generation)
                    })
                    .map(|_| ()))
            },
        )
        .await?;
        let programmed = last_edit.elapsed();
        let unrelated_after = programmed_since(s.status("ApiRoute", "accounts").await?);
        eprintln!(
            "PROGRAMMED routes={total} last_edit_programmed_after_ms={:.0} unrelated_route_programmed_since before={unrelated_before:?} after={unrelated_after:?}",
            ms(programmed)
        );
        let writes = operator_metric(http, op, "parapet_operator_status_writes_total")
            .await
            .unwrap_or(0.0)
            - writes_before;
        samples.sort();
        let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
        eprintln!(
            "PROPAGATION routes={total} edits={EDITS} p50_ms={:.0} p99_ms={:.0} min_ms={:.0} max_ms={:.0} create_ms={:.0} all_served_ms={:.0} status_settled_ms={:.0} status_writes_during_edits={writes}",
            ms(p50),
            ms(p99),
            ms(samples[0]),
            ms(samples[samples.len() - 1]),
            ms(create_time),
            ms(served_time),
            ms(settled_time),
        );
        let routes = operator_metric(http, op, "parapet_operator_snapshot_bytes").await;
        eprintln!("PROPAGATION routes={total} snapshot_bytes={routes:?}");
        assert!(
            p99 < Duration::from_secs(5),
            "p99 propagation {p99:?} at {total} routes"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_objects_are_reported_and_the_rest_still_updates() -> Result<()> {
    let s = setup("operator-bad-objects").await?;
    let r = s.running(&["op-bad"]).await?;
    let (http, dps) = (&r.http, [&r.dp1, &r.dp2]);

    // A route with one good rule and one whose regex does not compile.
    s.apply(
        "ApiRoute",
        "bad-regex",
        json!({"hosts": ["regex.example"], "rules": [
            {"name": "fine", "matches": [{"path": {"type": "PathPrefix", "value": "/ok"}}],
             "backends": [{"pool": "accounts"}]},
            {"name": "broken", "matches": [{"path": {"type": "RegularExpression", "value": "/a(["}}],
             "backends": [{"pool": "accounts"}]},
        ]}),
    )
    .await?;
    // A rule on the standard host whose pool does not exist: more specific than the
    // catch-all `accounts` route, so falling through would answer 200 from accounts-a.
    s.apply(
        "ApiRoute",
        "missing-pool",
        json!({"hosts": [HOST], "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/missing"}}],
             "backends": [{"pool": "nope"}]},
        ]}),
    )
    .await?;
    // A pool whose Service does not exist.
    s.apply(
        "UpstreamPool",
        "ghost",
        json!({"service": {"name": "ghost-svc", "port": 80}}),
    )
    .await?;

    let c = s
        .wait_condition("ApiRoute", "bad-regex", "Accepted", "False", "InvalidRegex")
        .await?;
    let m = c["message"].as_str().unwrap_or_default();
    assert!(m.contains("/a([") && m.contains("broken"), "{c}");
    let c = s
        .wait_condition(
            "ApiRoute",
            "missing-pool",
            "ResolvedRefs",
            "False",
            "PoolNotFound",
        )
        .await?;
    assert!(
        c["message"].as_str().unwrap_or_default().contains("nope"),
        "{c}"
    );
    let c = s
        .wait_condition(
            "UpstreamPool",
            "ghost",
            "ResolvedRefs",
            "False",
            "ServiceNotFound",
        )
        .await?;
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .contains("ghost-svc"),
        "{c}"
    );

    // The missing pool answers 500 on its own paths, and nothing falls through.
    let hits = r.accounts.hits();
    for (k, dp) in dps.iter().enumerate() {
        wait_for(
            &format!("data plane #{} to answer 500 on {HOST}/missing", k + 1),
            Duration::from_secs(30),
            || async {
                Ok(http
                    .get(dp.proxy, HOST, "/missing/x")
                    .await
                    .ok()
                    .filter(|r| r.status == 500)
                    .map(|_| ()))
            },
        )
        .await?;
        for _ in 0..5 {
            let reply = http.get(dp.proxy, HOST, "/missing").await?;
            assert_eq!(reply.status, 500, "{}", reply.text());
            assert_eq!(reply.backend(), None);
        }
    }
    assert_eq!(
        r.accounts.hits(),
        hits,
        "a request fell through to accounts"
    );
    // The rest of the bad objects, and the fleet's own route, still serve.
    wait_serving(http, &dps, "regex.example", "/ok", "accounts-a").await?;
    wait_serving(http, &dps, HOST, "/", "accounts-a").await?;

    // A valid route applied afterwards is served and Programmed.
    s.apply("ApiRoute", "good", route_to("good.example", "ledger"))
        .await?;
    wait_serving(http, &dps, "good.example", "/", "ledger-a").await?;
    let c = s
        .wait_condition("ApiRoute", "good", "Programmed", "True", "Programmed")
        .await?;
    assert!(
        c["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("2/2 pods"),
        "{c}"
    );
    assert_eq!(c["observedGeneration"], 1);
    let st = s.status("ApiRoute", "good").await?;
    assert_eq!(condition(&st, "Accepted").unwrap()["status"], "True");
    assert_eq!(condition(&st, "ResolvedRefs").unwrap()["status"], "True");
    // ...while the bad ones keep saying what is wrong.
    let st = s.status("ApiRoute", "bad-regex").await?;
    assert_eq!(
        condition(&st, "Accepted").unwrap()["reason"],
        "InvalidRegex"
    );
    let st = s.status("ApiRoute", "missing-pool").await?;
    assert_eq!(
        condition(&st, "ResolvedRefs").unwrap()["reason"],
        "PoolNotFound"
    );

    // Fixing the regex clears the condition and serves the rule.
    s.apply(
        "ApiRoute",
        "bad-regex",
        json!({"hosts": ["regex.example"], "rules": [
            {"name": "fine", "matches": [{"path": {"type": "PathPrefix", "value": "/ok"}}],
             "backends": [{"pool": "accounts"}]},
            {"name": "broken", "matches": [{"path": {"type": "RegularExpression", "value": "/a(b)+"}}],
             "backends": [{"pool": "ledger"}]},
        ]}),
    )
    .await?;
    wait_serving(http, &dps, "regex.example", "/abb", "ledger-a").await?;
    let c = s
        .wait_condition("ApiRoute", "bad-regex", "Accepted", "True", "Accepted")
        .await?;
    assert_eq!(c["observedGeneration"], 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_not_rewritten_when_nothing_changed() -> Result<()> {
    let s = setup("operator-status-churn").await?;
    let r = s.running(&["op-churn"]).await?;
    let op = &r.ops[0];
    s.wait_condition("ApiRoute", "accounts", "Programmed", "True", "Programmed")
        .await?;
    for pool in ["accounts", "ledger"] {
        s.wait_condition("UpstreamPool", pool, "Programmed", "True", "Programmed")
            .await?;
        wait_for(
            &format!("{pool} endpoint counts"),
            Duration::from_secs(30),
            || async {
                let st = s.status("UpstreamPool", pool).await?;
                Ok((st["endpoints"] == 1 && st["readyEndpoints"] == 1).then_some(()))
            },
        )
        .await?;
    }
    let objects = [
        ("ApiRoute", "accounts"),
        ("UpstreamPool", "accounts"),
        ("UpstreamPool", "ledger"),
    ];
    let mut versions = Vec::new();
    for (kind, name) in objects {
        versions.push(s.resource_version(kind, name).await?);
    }
    let counters = [
        "parapet_operator_status_writes_total",
        "parapet_operator_pushes_acknowledged_total",
    ];
    let mut before = Vec::new();
    for c in counters {
        before.push(operator_metric(&r.http, op, c).await);
    }
    // 6 s covers one idle round of the status writer (it wakes every 5 s with nothing to
    // do, then waits 200 ms) and two or three pusher resyncs (every 2 s), each of which
    // could cause a re-push and so a status write if the operator misread the fleet.
    let window = Instant::now();
    while window.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        for ((kind, name), rv) in objects.iter().zip(&versions) {
            let now = s.resource_version(kind, name).await?;
            assert_eq!(
                &now,
                rv,
                "{kind} {name} was rewritten {:.1} s into a quiet period; status now: {}",
                window.elapsed().as_secs_f64(),
                s.status(kind, name).await?
            );
        }
    }
    for (c, b) in counters.iter().zip(&before) {
        assert_eq!(
            &operator_metric(&r.http, op, c).await,
            b,
            "{c} moved while nothing changed"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_status_writes_do_not_cause_recompiles() -> Result<()> {
    let s = setup("operator-status-recompile").await?;
    let r = s.running(&["op-recompile"]).await?;
    let (http, op) = (&r.http, &r.ops[0]);
    s.settled(http, &[&r.dp1, &r.dp2]).await?;
    status_settled_for(http, op, Duration::from_secs(1)).await?;
    let counter = |name: &'static str| async move {
        operator_metric(http, op, name).await.unwrap_or(f64::NAN)
    };
    let compiles = "parapet_operator_compiles_total";
    let unchanged = "parapet_operator_compiles_unchanged_total";
    let writes = "parapet_operator_status_writes_total";
    let before = (
        counter(compiles).await,
        counter(unchanged).await,
        counter(writes).await,
    );

    // One edit: one compile; then the status writer rewrites Programmed (the version in its
    // message changed) on the route and both pools.
    s.apply("ApiRoute", "accounts", route_to(HOST, "ledger"))
        .await?;
    wait_serving(http, &[&r.dp1, &r.dp2], HOST, "/", "ledger-a").await?;
    wait_for(
        "Programmed=True at generation 2",
        Duration::from_secs(30),
        || async {
            let st = s.status("ApiRoute", "accounts").await?;
            Ok(condition(&st, "Programmed")
                .filter(|c| c["status"] == "True" && c["observedGeneration"] == 2)
                .map(|_| ()))
        },
    )
    .await?;
    status_settled_for(http, op, Duration::from_secs(1)).await?;
    let after = (
        counter(compiles).await,
        counter(unchanged).await,
        counter(writes).await,
    );
    let (c, u, w) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    eprintln!("OWN_STATUS_WRITES compiles={c} unchanged_compiles={u} status_writes={w}");
    assert!(
        w >= 1.0,
        "the test needs the operator to write status ({w} writes)"
    );
    // Status writes change no spec (no generation), so they cannot change the table. Each
    // one that comes back through the watches and wakes the compiler costs a full compile
    // and, when a real edit is being debounced at that moment, delays it up to --max-wait.
    assert_eq!(
        u, 0.0,
        "{w} status writes of the operator's own led to {u} recompiles that changed nothing ({c} compiles for one edit)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_dataplane_gets_the_table_again() -> Result<()> {
    let s = setup("operator-restarted-dp").await?;
    let Running {
        http,
        dp1,
        dp2,
        ops: _ops,
        accounts: _accounts,
        ledger: _ledger,
    } = s.running(&["op-restart"]).await?;
    let want = s.settled(&http, &[&dp1, &dp2]).await?;

    // In place, on the same admin port: the slice does not change (applying it again is a
    // no-op), so only the resync (every 2 s) can notice that the pod lost its table.
    let port = dp2.admin.port();
    drop(dp2);
    let restarted = Instant::now();
    let dp2 = s.dataplane_on("dp-2", true, Some(port)).await?;
    let got = wait_for(
        "the data plane restarted in place to get the table again",
        Duration::from_secs(15),
        || async { Ok(snapshot_of(&http, &dp2).await) },
    )
    .await?;
    let in_place = restarted.elapsed();
    assert_eq!(got, want);
    assert_eq!(same_table(&http, &[&dp1, &dp2]).await?, want);
    wait_serving(&http, &[&dp2], HOST, "/", "accounts-a").await?;

    // Elsewhere: a new process on a new port, its slice pointed there.
    drop(dp2);
    let restarted = Instant::now();
    let dp2 = s.dataplane_on("dp-2", true, None).await?;
    assert_ne!(dp2.admin.port(), port);
    let got = wait_for(
        "the data plane restarted on a new port to get the table",
        Duration::from_secs(15),
        || async { Ok(snapshot_of(&http, &dp2).await) },
    )
    .await?;
    let moved = restarted.elapsed();
    assert_eq!(got, want);
    assert_eq!(same_table(&http, &[&dp1, &dp2]).await?, want);
    wait_serving(&http, &[&dp1, &dp2], HOST, "/", "accounts-a").await?;
    // The old address left the fleet: status counts two pods again, all in sync.
    wait_for(
        "Programmed to say 2/2 pods",
        Duration::from_secs(30),
        || async {
            let st = s.status("ApiRoute", "accounts").await?;
            Ok(condition(&st, "Programmed")
                .filter(|c| {
                    c["status"] == "True"
                        && c["message"]
                            .as_str()
                            .is_some_and(|m| m.starts_with("2/2 pods"))
                })
                .map(|_| ()))
        },
    )
    .await?;
    eprintln!(
        "RESTARTED_DATAPLANE same_port_table_after_ms={:.0} new_port_table_after_ms={:.0} resync_interval_ms=2000",
        ms(in_place),
        ms(moved)
    );
    Ok(())
}

/// Sends `signal` (e.g. `STOP`, `CONT`) to a data plane (through `kill`: no unsafe code).
fn signal(dp: &Dataplane, signal: &str) -> Result<()> {
    let st = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &dp.pid().to_string()])
        .status()?;
    ensure!(st.success(), "kill -{signal} {} failed", dp.pid());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_leaves_other_routes_programmed() -> Result<()> {
    let s = setup("operator-programmed-per-object").await?;
    let r = s.running(&["op-programmed"]).await?;
    let http = &r.http;
    s.apply("ApiRoute", "other", route_to("other.example", "accounts"))
        .await?;
    wait_serving(http, &[&r.dp1, &r.dp2], "other.example", "/", "accounts-a").await?;
    let before = s
        .wait_condition("ApiRoute", "other", "Programmed", "True", "Programmed")
        .await?;
    s.wait_condition("ApiRoute", "accounts", "Programmed", "True", "Programmed")
        .await?;

    // dp-2 freezes (a pod that is slow to take a push), then `accounts` is edited.
    signal(&r.dp2, "STOP")?;
    let edit = s
        .apply("ApiRoute", "accounts", route_to(HOST, "ledger"))
        .await;
    let result = async {
        edit?;
        wait_serving(http, &[&r.dp1], HOST, "/", "ledger-a").await?;
        // Right: the edited route is not programmed while a pod lacks it.
        let pending = s
            .wait_condition("ApiRoute", "accounts", "Programmed", "False", "Pending")
            .await?;
        assert_eq!(pending["observedGeneration"], 2);
        assert!(
            pending["message"]
                .as_str()
                .unwrap_or_default()
                .starts_with("1/2 pods"),
            "{pending}"
        );
        // Let the status writer finish its round (it writes every object in one pass).
        let op = &r.ops[0];
        status_settled_for(http, op, Duration::from_secs(1)).await?;
        s.status("ApiRoute", "other").await
    }
    .await;
    signal(&r.dp2, "CONT")?;
    let other_during = result?;

    wait_serving(http, &[&r.dp2], HOST, "/", "ledger-a").await?;
    let done = wait_for(
        "accounts to be Programmed at generation 2",
        Duration::from_secs(30),
        || async {
            let st = s.status("ApiRoute", "accounts").await?;
            Ok(condition(&st, "Programmed")
                .filter(|c| c["status"] == "True" && c["observedGeneration"] == 2)
                .cloned())
        },
    )
    .await?;
    assert!(
        done["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("2/2 pods"),
        "{done}"
    );
    // `other` did not change, and both pods served it all along (dp-2 from the table it
    // already had, which lists `other` at the same generation): it stays Programmed.
    let during = condition(&other_during, "Programmed").cloned();
    assert_eq!(
        during.as_ref().map(|c| &c["status"]),
        Some(&json!("True")),
        "an unrelated route went Programmed=False while another route rolled out: {during:?}"
    );
    let after = s.status("ApiRoute", "other").await?;
    let after = condition(&after, "Programmed").cloned().unwrap_or_default();
    assert_eq!(
        after["lastTransitionTime"], before["lastTransitionTime"],
        "Programmed of an unrelated route flapped: before {before}, after {after}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Secrets: only labelled ones are read; the snapshot channel's certificates

/// Secret `name` in `ns` with `data`, labelled or not.
async fn put_secret(
    client: &Client,
    ns: &str,
    name: &str,
    labels: Value,
    data: Value,
) -> Result<()> {
    let obj = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "labels": labels}, "stringData": data});
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("parapet-e2e").force(),
            &Patch::Apply(&obj),
        )
        .await?;
    Ok(())
}

/// The operator's watch never sees an unlabelled Secret: a route naming one says how to
/// fix it, and resolves once the Secret is labelled; the key is then enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlabelled_secret_is_reported_until_it_is_labelled() -> Result<()> {
    let s = setup("secret-label").await?;
    let _backend = s.backend("accounts", "accounts-a").await?;
    let dp = s.dataplane("dp-1", true).await?;
    let _op = Operator::start(s.ns(), "dp-admin", &s.token_file, "op-a")?;
    s.apply(
        "UpstreamPool",
        "accounts",
        json!({"service": {"name": "accounts", "port": 80}}),
    )
    .await?;
    put_secret(
        &s.client,
        s.ns(),
        "keys",
        json!({}),
        json!({"client-a": "key-0123456789abcdef"}),
    )
    .await?;
    s.apply(
        "ApiRoute",
        "keys",
        json!({"hosts": [HOST], "rules": [{"backends": [{"pool": "accounts"}],
            "auth": {"apiKeys": {"secretRefs": [{"name": "keys"}]}}}]}),
    )
    .await?;
    let c = s
        .wait_condition(
            "ApiRoute",
            "keys",
            "ResolvedRefs",
            "False",
            "SecretNotFound",
        )
        .await?;
    let message = c["message"].as_str().unwrap_or_default();
    for part in [
        format!(
            "Secret {}/keys, which does not exist or is not labelled parapet.dev/secret=true",
            s.ns()
        ),
        format!(
            "kubectl label secret -n {} keys parapet.dev/secret=true",
            s.ns()
        ),
    ] {
        ensure!(message.contains(&part), "{part:?} not in {message:?}");
    }

    put_secret(
        &s.client,
        s.ns(),
        "keys",
        json!({"parapet.dev/secret": "true"}),
        json!({"client-a": "key-0123456789abcdef"}),
    )
    .await?;
    s.wait_condition("ApiRoute", "keys", "ResolvedRefs", "True", "ResolvedRefs")
        .await?;
    // The key is in force: served with it, refused without it.
    let http = Http::new();
    wait_for(
        "the data plane to serve a request with the API key",
        Duration::from_secs(30),
        || async {
            let r = http
                .send(
                    dp.proxy,
                    http::Method::GET,
                    HOST,
                    "/",
                    &[("x-api-key", "key-0123456789abcdef")],
                    bytes::Bytes::new(),
                )
                .await
                .ok();
            Ok(r.filter(|r| r.backend() == Some("accounts-a")).map(|_| ()))
        },
    )
    .await?;
    let r = http.get(dp.proxy, HOST, "/").await?;
    ensure!(r.status == 401, "without the key: {}", r.status);
    Ok(())
}

/// Who may call, from the resources to the data plane: a JWT provider whose keys are in a
/// Secret, address rules on the route and on one rule; a route whose JWKS Secret is missing
/// is reported and refuses every token rather than letting requests through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_and_address_rules_are_compiled_and_enforced() -> Result<()> {
    use parapet_tests::idp::{SigningKey, jwks, now};
    let s = setup("who-may-call").await?;
    let _backend = s.backend("accounts", "accounts-a").await?;
    let dp = s.dataplane("dp-1", true).await?;
    let _op = Operator::start(s.ns(), "dp-admin", &s.token_file, "op-a")?;
    s.apply(
        "UpstreamPool",
        "accounts",
        json!({"service": {"name": "accounts", "port": 80}}),
    )
    .await?;
    let key = SigningKey::es256("k1");
    put_secret(
        &s.client,
        s.ns(),
        "idp-keys",
        json!({"parapet.dev/secret": "true"}),
        json!({"jwks.json": jwks(&[&key]).to_string()}),
    )
    .await?;
    let provider = |secret: &str| {
        json!({"providers": [{"name": "corp", "issuer": "https://login.bank.example",
            "audiences": ["payments"], "localJwks": {"secretRef": {"name": secret}},
            "claimToHeaders": [{"claim": "sub", "header": "x-user"}]}]})
    };
    s.apply(
        "ApiRoute",
        "guarded",
        json!({"hosts": [HOST], "ipRules": {"deny": ["10.0.0.0/8"]}, "rules": [
            {"name": "internal", "matches": [{"path": {"type": "PathPrefix", "value": "/internal"}}],
             "backends": [{"pool": "accounts"}], "auth": {"ipRules": {"allow": ["10.0.0.0/8"]}}},
            {"backends": [{"pool": "accounts"}], "auth": {"jwt": provider("idp-keys")}}]}),
    )
    .await?;
    s.apply(
        "ApiRoute",
        "keyless",
        json!({"hosts": ["keyless.bank.example"], "rules": [
            {"backends": [{"pool": "accounts"}], "auth": {"jwt": provider("no-such-secret")}}]}),
    )
    .await?;
    s.wait_condition(
        "ApiRoute",
        "guarded",
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    )
    .await?;
    let c = s
        .wait_condition(
            "ApiRoute",
            "keyless",
            "ResolvedRefs",
            "False",
            "SecretNotFound",
        )
        .await?;
    let message = c["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains("localJwks.secretRef") && message.contains("no-such-secret"),
        "the message names the field and the Secret: {message:?}"
    );

    let http = Http::new();
    let token = key.sign(
        &json!({"iss": "https://login.bank.example", "aud": "payments",
        "sub": "alice", "exp": now() + 300}),
    );
    let bearer = format!("Bearer {token}");
    let send = |host: &'static str, path: &'static str, auth: Option<String>| {
        let http = http.clone();
        async move {
            let headers: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| vec![("authorization", a)])
                .unwrap_or_default();
            http.send(
                dp.proxy,
                http::Method::GET,
                host,
                path,
                &headers,
                bytes::Bytes::new(),
            )
            .await
        }
    };
    wait_for(
        "the data plane to serve the token",
        Duration::from_secs(30),
        || async {
            let r = send(HOST, "/accounts", Some(bearer.clone())).await.ok();
            Ok(r.filter(|r| r.backend() == Some("accounts-a")).map(|_| ()))
        },
    )
    .await?;
    let r = send(HOST, "/accounts", None).await?;
    ensure!(r.status == 401, "without a token: {}", r.status);
    ensure!(
        r.headers
            .get("www-authenticate")
            .is_some_and(|v| v.as_bytes().starts_with(b"Bearer")),
        "a Bearer challenge: {:?}",
        r.headers
    );
    let r = send(HOST, "/internal/x", Some(bearer.clone())).await?;
    ensure!(r.status == 403, "/internal allows only 10/8: {}", r.status);
    let r = send("keyless.bank.example", "/", Some(bearer.clone())).await?;
    ensure!(
        r.status == 401,
        "a provider without its keys accepts no token: {}",
        r.status
    );

    // An AuthPolicy (for Gateway API rules) gets a status of its own: a missing Secret is
    // reported on it until the Secret exists.
    s.apply(
        "AuthPolicy",
        "staff",
        json!({"jwt": provider("staff-keys")}),
    )
    .await?;
    let c = s
        .wait_condition(
            "AuthPolicy",
            "staff",
            "ResolvedRefs",
            "False",
            "SecretNotFound",
        )
        .await?;
    let message = c["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains("localJwks.secretRef") && message.contains("staff-keys"),
        "{message:?}"
    );
    put_secret(
        &s.client,
        s.ns(),
        "staff-keys",
        json!({"parapet.dev/secret": "true"}),
        json!({"jwks.json": jwks(&[&key]).to_string()}),
    )
    .await?;
    s.wait_condition(
        "AuthPolicy",
        "staff",
        "ResolvedRefs",
        "True",
        "ResolvedRefs",
    )
    .await?;
    Ok(())
}

fn secret_text(s: &Secret, key: &str) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .unwrap_or_default()
}

/// Two replicas ensuring the snapshot CA and certificate at the same moment end up with
/// one CA and one certificate; renewal under the same race rewrites the Secret once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_certificates_are_created_once_when_replicas_race() -> Result<()> {
    use parapet_operator::{
        pki,
        snapshot_certs::{self, Config, TlsOutcome},
    };
    let s = setup("snapshot-certs").await?;
    let ns = s.ns().to_string();
    let cfg = Config {
        namespace: ns.clone(),
        ca_secret: "snap-ca".into(),
        tls_secret: "snap-tls".into(),
        server_name: format!("dp-admin.{ns}.svc"),
        check_every: Duration::from_secs(3600),
        restart: None,
    };
    // Two clients, as two replicas have.
    let a1: Api<Secret> = Api::namespaced(client().await?, &ns);
    let a2: Api<Secret> = Api::namespaced(client().await?, &ns);
    let (ca1, ca2) = tokio::join!(
        snapshot_certs::ensure_ca(&a1, &ns, "snap-ca"),
        snapshot_certs::ensure_ca(&a2, &ns, "snap-ca")
    );
    let (ca1, ca2) = (ca1?, ca2?);
    ensure!(
        ca1.pem().cert == ca2.pem().cert,
        "two replicas hold different CAs"
    );
    let now = time::OffsetDateTime::now_utc();
    let (t1, t2) = tokio::join!(
        snapshot_certs::ensure_tls(&a1, &cfg, &ca1, now),
        snapshot_certs::ensure_tls(&a2, &cfg, &ca2, now)
    );
    let mut outcomes = [t1?, t2?];
    outcomes.sort_by_key(|o| format!("{o:?}"));
    ensure!(
        outcomes == [TlsOutcome::Created, TlsOutcome::Kept],
        "{outcomes:?}"
    );
    let ours = ListParams::default().labels("app.kubernetes.io/managed-by=parapet-operator");
    let names: Vec<String> = a1
        .list(&ours)
        .await?
        .items
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    ensure!(names == ["snap-ca", "snap-tls"], "{names:?}");
    let tls = a1.get("snap-tls").await?;
    ensure!(tls.type_.as_deref() == Some("kubernetes.io/tls"));
    ensure!(secret_text(&tls, "ca.crt") == ca1.pem().cert);
    ensure!(
        ca1.reissue_reason(&secret_text(&tls, "tls.crt"), Some(&cfg.server_name), now)
            .is_none(),
        "the issued certificate is not current"
    );
    // Nothing to do: the Secret is not rewritten.
    let rv = tls.metadata.resource_version.clone();
    ensure!(snapshot_certs::ensure_tls(&a1, &cfg, &ca1, now).await? == TlsOutcome::Kept);
    ensure!(a1.get("snap-tls").await?.metadata.resource_version == rv);
    // A restarted replica reads the same CA.
    let again = snapshot_certs::ensure_ca(&a2, &ns, "snap-ca").await?;
    ensure!(again.pem().cert == ca1.pem().cert);

    // Renewal before expiry, raced: one replica rewrites, the other finds it current.
    let due = now
        + time::Duration::try_from(pki::LEAF_VALIDITY - pki::RENEW_BEFORE)?
        + time::Duration::DAY;
    let (t1, t2) = tokio::join!(
        snapshot_certs::ensure_tls(&a1, &cfg, &ca1, due),
        snapshot_certs::ensure_tls(&a2, &cfg, &ca2, due)
    );
    let outcomes = [t1?, t2?];
    let reissued: Vec<&TlsOutcome> = outcomes
        .iter()
        .filter(|o| matches!(o, TlsOutcome::Reissued(r) if r.contains("expires")))
        .collect();
    ensure!(
        reissued.len() == 1 && outcomes.contains(&TlsOutcome::Kept),
        "{outcomes:?}"
    );
    let renewed = a1.get("snap-tls").await?;
    ensure!(secret_text(&renewed, "tls.crt") != secret_text(&tls, "tls.crt"));
    ensure!(
        ca1.reissue_reason(
            &secret_text(&renewed, "tls.crt"),
            Some(&cfg.server_name),
            due
        )
        .is_none()
    );
    // Another server name: issued again for it.
    let other = Config {
        server_name: format!("other.{ns}.svc"),
        ..cfg.clone()
    };
    let o = snapshot_certs::ensure_tls(&a1, &other, &ca1, due).await?;
    ensure!(
        matches!(&o, TlsOutcome::Reissued(r) if r.contains("other.")),
        "{o:?}"
    );
    Ok(())
}

/// The default of the chart: two operators issue the certificates themselves (one CA), the
/// data planes start from the Secret as the kubelet would start them, and tables reach them
/// over mTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_issue_the_snapshot_certificates_and_push_over_mtls() -> Result<()> {
    let s = setup("snapshot-mtls").await?;
    let server_name = format!("dp-admin.{}.svc", s.ns());
    let flags = [
        "--snapshot-ca-secret",
        "snap-ca",
        "--snapshot-tls-secret",
        "snap-tls",
        "--dataplane-server-name",
        server_name.as_str(),
    ];
    let (op_a, op_b) = (
        std::thread::spawn({
            let (ns, token) = (s.ns().to_string(), s.token_file.clone());
            let flags = flags.map(str::to_string);
            move || {
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                Operator::start_with(&ns, "dp-admin", &token, "op-a", &flags)
            }
        }),
        std::thread::spawn({
            let (ns, token) = (s.ns().to_string(), s.token_file.clone());
            let flags = flags.map(str::to_string);
            move || {
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                Operator::start_with(&ns, "dp-admin", &token, "op-b", &flags)
            }
        }),
    );
    let _ops = [
        op_a.join()
            .map_err(|_| anyhow::anyhow!("op-a start panicked"))??,
        op_b.join()
            .map_err(|_| anyhow::anyhow!("op-b start panicked"))??,
    ];
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), s.ns());
    let tls = wait_for(
        "the operators to create Secret snap-tls",
        Duration::from_secs(30),
        || async { Ok(secrets.get_opt("snap-tls").await?) },
    )
    .await?;
    let ours = ListParams::default().labels("app.kubernetes.io/managed-by=parapet-operator");
    ensure!(secrets.list(&ours).await?.items.len() == 2);

    // The data planes mount the Secret: its files, as the kubelet writes them.
    let dir = tempfile::tempdir()?;
    for key in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::write(dir.path().join(key), secret_text(&tls, key))?;
    }
    let file = |k: &str| dir.path().join(k).to_string_lossy().into_owned();
    let (ca, cert, key) = (file("ca.crt"), file("tls.crt"), file("tls.key"));
    let args = [
        "--snapshot-token-file",
        s.token_file.as_str(),
        "--admin-tls-cert",
        cert.as_str(),
        "--admin-tls-key",
        key.as_str(),
        "--admin-client-ca",
        ca.as_str(),
    ];
    let _backend = s.backend("accounts", "accounts-a").await?;
    let dp1 = Dataplane::start(&args);
    s.list_dataplane("dp-1", &dp1, true).await?;
    let dp2 = Dataplane::start(&args);
    s.list_dataplane("dp-2", &dp2, true).await?;
    s.apply(
        "UpstreamPool",
        "accounts",
        json!({"service": {"name": "accounts", "port": 80}}),
    )
    .await?;
    s.apply("ApiRoute", "accounts", route_to(HOST, "accounts"))
        .await?;
    let http = Http::new();
    wait_serving(&http, &[&dp1, &dp2], HOST, "/", "accounts-a").await?;
    s.wait_condition("ApiRoute", "accounts", "Programmed", "True", "Programmed")
        .await?;
    // Still one CA after both started.
    ensure!(secrets.list(&ours).await?.items.len() == 2);
    Ok(())
}

/// A task the operator cannot work without ends: the process exits non-zero, so that
/// Kubernetes restarts it. Here the certificate task ends because the CA it trusts was
/// replaced (the CA Secret deleted and made again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_exits_non_zero_when_its_ca_is_replaced() -> Result<()> {
    let s = setup("snapshot-ca-replaced").await?;
    let server_name = format!("dp-admin.{}.svc", s.ns());
    let mut op = Operator::start_with(
        s.ns(),
        "dp-admin",
        &s.token_file,
        "op-a",
        &[
            "--snapshot-ca-secret",
            "snap-ca",
            "--snapshot-tls-secret",
            "snap-tls",
            "--dataplane-server-name",
            &server_name,
            "--snapshot-cert-check-interval",
            "200ms",
        ],
    )?;
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), s.ns());
    let first = wait_for(
        "the operator to create Secret snap-ca",
        Duration::from_secs(30),
        || async { Ok(secrets.get_opt("snap-ca").await?) },
    )
    .await?;
    // Still running after several checks of an unchanged CA.
    ensure!(
        op.wait_exit(Duration::from_secs(1)).await.is_none(),
        "the operator exited although nothing changed"
    );
    secrets.delete("snap-ca", &Default::default()).await?;
    let status = op
        .wait_exit(Duration::from_secs(30))
        .await
        .ok_or_else(|| anyhow::anyhow!("the operator still runs 30s after its CA was replaced"))?;
    ensure!(!status.success(), "the operator exited with {status}");
    let second = secrets.get("snap-ca").await?;
    ensure!(
        secret_text(&second, "ca.crt") != secret_text(&first, "ca.crt"),
        "the CA was not made again"
    );
    Ok(())
}

/// The data plane reads its certificate at start, so when the operator issues it again it
/// rolls the data plane's Deployment (a pod-template annotation, as `kubectl rollout
/// restart` does); a first issue, which the pods wait for anyway, does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reissued_certificate_rolls_the_dataplane() -> Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use parapet_operator::snapshot_certs::RESTART_ANNOTATION;
    let s = setup("snapshot-restart").await?;
    let deployments: Api<Deployment> = Api::namespaced(s.client.clone(), s.ns());
    // No workload controller runs here: only the Deployment's template is looked at.
    let dp: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "dp"},
        "spec": {"selector": {"matchLabels": {"app": "dp"}},
            "template": {"metadata": {"labels": {"app": "dp"}},
                "spec": {"containers": [{"name": "dataplane", "image": "parapet/dataplane"}]}}}
    }))?;
    deployments.create(&Default::default(), &dp).await?;
    let restarted = || async {
        let d = deployments.get("dp").await?;
        Ok::<_, anyhow::Error>(
            d.spec
                .template
                .metadata
                .and_then(|m| m.annotations)
                .and_then(|a| a.get(RESTART_ANNOTATION).cloned()),
        )
    };
    let start = |name: String| {
        let (ns, token) = (s.ns().to_string(), s.token_file.clone());
        Operator::start_with(
            &ns,
            "dp-admin",
            &token,
            "op-a",
            &[
                "--snapshot-ca-secret",
                "snap-ca",
                "--snapshot-tls-secret",
                "snap-tls",
                "--dataplane-server-name",
                &name,
                "--dataplane-deployment",
                "dp",
            ],
        )
    };
    // The operator prints its metrics address only after ensuring the certificates.
    let mut op = start(format!("dp-admin.{}.svc", s.ns()))?;
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), s.ns());
    let first = secrets.get("snap-tls").await?;
    ensure!(
        restarted().await?.is_none(),
        "the first issue restarted the data plane"
    );
    op.kill();
    // Another server name: the certificate is issued again, and the data plane rolled.
    let _op = start(format!("renamed.{}.svc", s.ns()))?;
    let second = secrets.get("snap-tls").await?;
    ensure!(secret_text(&second, "tls.crt") != secret_text(&first, "tls.crt"));
    let at = wait_for(
        "the data plane's pod template to be annotated",
        Duration::from_secs(10),
        || async { restarted().await },
    )
    .await?;
    ensure!(!at.is_empty());
    Ok(())
}
