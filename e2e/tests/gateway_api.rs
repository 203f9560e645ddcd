//! The operator's Gateway API controller against a real kube-apiserver with the Gateway API
//! CRDs installed: GatewayClass, Gateway and route status, and each Gateway's fleet
//! provisioned. No node runs here, so no fleet pod ever serves: Gateways are never
//! Programmed, and the tests check status and the provisioned objects only.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Secret, Service, ServiceAccount},
};
use kube::{
    Api, Client, Resource,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams},
};
use parapet_crds::gateway_api::{
    CONTROLLER_NAME, gatewayclasses::GatewayClass, gateways::Gateway, grpcroutes::GrpcRoute,
    httproutes::HttpRoute, referencegrants::ReferenceGrant,
};
use parapet_e2e::{
    FIELD_MANAGER, TestNamespace, apply_crds, client, fleet::Operator, gateway_api, wait_for,
};
use serde_json::{Value, json};

const TOKEN: &str = "e2e-snapshot-token-0123456789";
const GROUP: &str = "gateway.networking.k8s.io";
/// How long the operator may take to write a status.
const STATUS_DEADLINE: Duration = Duration::from_secs(30);
/// How long a status must stay unchanged to count as settled: several rounds of the
/// controller's loop, which ticks every second.
const QUIET: Duration = Duration::from_secs(5);
/// How long the operator's count of status writes must stand still before [`QUIET`] starts.
const SETTLE: Duration = Duration::from_secs(2);

/// The Gateway controller serves the Gateways of every namespace, whatever
/// `--watch-namespaces` says, while it resolves Services only in the watched ones: two
/// operators at once would fight over each other's status. So the tests take turns.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Setup {
    client: Client,
    ns: TestNamespace,
    /// More namespaces (routes and backends elsewhere), watched by the operator too.
    others: Vec<TestNamespace>,
    /// The GatewayClass of this test (cluster-scoped: deleted on drop).
    class: String,
    token_file: String,
    _dir: tempfile::TempDir,
    operator: Option<Operator>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        // The operator first, so that it writes nothing more; then the classes, which no
        // namespace deletion removes.
        drop(self.operator.take());
        let other = self.other_class();
        let _ = std::process::Command::new(
            parapet_e2e::cluster()
                .map(|c| c.kubectl_path().to_path_buf())
                .unwrap_or_else(|_| "kubectl".into()),
        )
        .env(
            "KUBECONFIG",
            parapet_e2e::cluster()
                .map(|c| c.kubeconfig().clone())
                .unwrap_or_default(),
        )
        .args([
            "delete",
            "gatewayclass",
            &self.class,
            &other,
            "--wait=false",
            "--ignore-not-found",
            "--request-timeout=10s",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    }
}

/// The CRDs, namespace `test` and `others` more, and a GatewayClass of Parapet's
/// controller; the operator is started by [`Setup::start`].
async fn setup(test: &str, others: usize) -> Result<Setup> {
    let turn = TURN.lock().await;
    let client = client().await?;
    apply_crds(&client).await?;
    gateway_api::apply_crds(&client).await?;
    let ns = TestNamespace::new(&client, test).await?;
    let mut more = Vec::new();
    for i in 0..others {
        more.push(TestNamespace::new(&client, &format!("{test}-{}", i + 1)).await?);
    }
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN)?;
    let class = ns.name().to_string();
    let s = Setup {
        client,
        class,
        ns,
        others: more,
        token_file: token_file.to_string_lossy().into_owned(),
        _dir: dir,
        operator: None,
        _turn: turn,
    };
    s.apply_cluster::<GatewayClass>(
        &s.class,
        json!({"spec": {"controllerName": CONTROLLER_NAME}}),
    )
    .await?;
    Ok(s)
}

fn resource<K: Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

impl Setup {
    fn ns(&self) -> &str {
        self.ns.name()
    }

    /// The name of a GatewayClass of another controller, for this test.
    fn other_class(&self) -> String {
        format!("{}-other", self.class)
    }

    async fn apply_other_class(&self) -> Result<String> {
        let other = self.other_class();
        self.apply_cluster::<GatewayClass>(
            &other,
            json!({"spec": {"controllerName": "example.com/another-controller"}}),
        )
        .await?;
        Ok(other)
    }

    fn other(&self, i: usize) -> &str {
        self.others[i].name()
    }

    /// Starts the operator, watching every namespace of the test, with `extra` flags.
    fn start(&mut self, extra: &[&str]) -> Result<()> {
        let watched: Vec<&str> = self.others.iter().map(TestNamespace::name).collect();
        let watched = watched.join(",");
        let mut args = Vec::new();
        if !watched.is_empty() {
            args.extend(["--watch-namespaces", watched.as_str()]);
        }
        args.extend(extra);
        self.operator = Some(Operator::start_with(
            self.ns.name(),
            "dp-admin",
            &self.token_file,
            self.ns.name(),
            &args,
        )?);
        Ok(())
    }

    fn api<K: Resource<DynamicType = ()>>(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, &resource::<K>())
    }

    /// Server-side applies `body` (metadata, spec...) as a `K` named `name` in `ns`.
    async fn apply_in<K: Resource<DynamicType = ()>>(
        &self,
        ns: &str,
        name: &str,
        body: Value,
    ) -> Result<()> {
        let ar = resource::<K>();
        let mut obj = json!({"apiVersion": ar.api_version, "kind": ar.kind, "metadata": {"name": name, "namespace": ns}});
        merge(&mut obj, body);
        self.api::<K>(ns)
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "apply {} {ns}/{name}: {}",
                    ar.kind,
                    parapet_e2e::api_message(&e)
                )
            })?;
        Ok(())
    }

    async fn apply<K: Resource<DynamicType = ()>>(&self, name: &str, body: Value) -> Result<()> {
        self.apply_in::<K>(self.ns(), name, body).await
    }

    async fn apply_cluster<K: Resource<DynamicType = ()>>(
        &self,
        name: &str,
        body: Value,
    ) -> Result<()> {
        let ar = resource::<K>();
        let mut obj =
            json!({"apiVersion": ar.api_version, "kind": ar.kind, "metadata": {"name": name}});
        merge(&mut obj, body);
        Api::<DynamicObject>::all_with(self.client.clone(), &ar)
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .map_err(|e| {
                anyhow::anyhow!("apply {} {name}: {}", ar.kind, parapet_e2e::api_message(&e))
            })?;
        Ok(())
    }

    async fn get<K: Resource<DynamicType = ()>>(
        &self,
        ns: Option<&str>,
        name: &str,
    ) -> Result<DynamicObject> {
        let ar = resource::<K>();
        let api = match ns {
            Some(ns) => Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        };
        api.get(name)
            .await
            .with_context(|| format!("get {} {name}", ar.kind))
    }

    /// Waits until the status of `K` `name` satisfies `check`; returns the object. Fails
    /// with `what` and the last status.
    async fn wait_status<K: Resource<DynamicType = ()>>(
        &self,
        ns: Option<&str>,
        name: &str,
        what: &str,
        check: impl Fn(&DynamicObject, &Value) -> bool,
    ) -> Result<DynamicObject> {
        let last = Mutex::new(Value::Null);
        let kind = resource::<K>().kind;
        wait_for(
            &format!("{kind} {name}: {what}"),
            STATUS_DEADLINE,
            || async {
                let o = self.get::<K>(ns, name).await?;
                let st = o.data.get("status").cloned().unwrap_or(Value::Null);
                let ok = check(&o, &st);
                *last.lock().unwrap() = st;
                Ok(ok.then_some(o))
            },
        )
        .await
        .map_err(|e| e.context(format!("last status: {:#}", last.lock().unwrap())))
    }

    async fn wait_gateway(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let o = self
            .wait_status::<Gateway>(Some(self.ns()), name, what, |_, s| check(s))
            .await?;
        Ok(o.data["status"].clone())
    }

    /// Waits until Parapet's status entry for parent Gateway `parent` of HTTPRoute
    /// `ns/name` satisfies `check`; returns the route's status.
    async fn wait_route(
        &self,
        ns: &str,
        name: &str,
        parent: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let o = self
            .wait_status::<HttpRoute>(
                Some(ns),
                name,
                &format!("parent {parent}: {what}"),
                |_, s| ours(s, parent).is_some_and(&check),
            )
            .await?;
        Ok(o.data["status"].clone())
    }

    /// Fails if any of `objects` (kind, namespace, name) changes within [`QUIET`]: status
    /// is written only when it changes.
    async fn assert_quiet(&self, objects: &[(&str, Option<&str>, &str)]) -> Result<()> {
        // The API server drops a patch that changes nothing without a new resourceVersion,
        // so the operator's own count of its writes shows writes made for nothing. Objects
        // that earlier tests left in namespaces being deleted are written once more by this
        // operator when it starts (their class is gone): the count settles first, and an
        // operator that writes every round never lets it.
        let mut last = (self.status_writes().await?, Instant::now());
        let last = Mutex::new(&mut last);
        wait_for(
            &format!("the operator's status writes to stop for {SETTLE:?}"),
            STATUS_DEADLINE,
            || async {
                let now = self.status_writes().await?;
                let mut last = last.lock().unwrap();
                if now != last.0 {
                    **last = (now, Instant::now());
                }
                Ok((last.1.elapsed() >= SETTLE).then_some(()))
            },
        )
        .await?;
        let writes = self.status_writes().await?;
        let mut before = Vec::new();
        for (kind, ns, name) in objects {
            before.push(self.object(kind, *ns, name).await?);
        }
        let start = Instant::now();
        while start.elapsed() < QUIET {
            tokio::time::sleep(Duration::from_millis(250)).await;
            for ((kind, ns, name), b) in objects.iter().zip(&before) {
                let now = self.object(kind, *ns, name).await?;
                if now.metadata.resource_version != b.metadata.resource_version {
                    bail!(
                        "{kind} {name} was written again after its status settled ({:?} after): before {:#}, after {:#}",
                        start.elapsed(),
                        b.data.get("status").unwrap_or(&Value::Null),
                        now.data.get("status").unwrap_or(&Value::Null)
                    );
                }
            }
        }
        let after = self.status_writes().await?;
        ensure!(
            after == writes,
            "the operator wrote {} statuses in {QUIET:?} after they settled, though none changed",
            after - writes
        );
        Ok(())
    }

    /// The operator's count of status writes (ApiRoute and Gateway API alike).
    async fn status_writes(&self) -> Result<f64> {
        let op = self
            .operator
            .as_ref()
            .context("the operator is not started")?;
        let r = parapet_tests::client::Client::new()
            .get(op.metrics, "operator", "/metrics")
            .await
            .map_err(|e| anyhow::anyhow!("operator /metrics: {e}"))?;
        r.text()
            .lines()
            .find_map(|l| {
                l.strip_prefix("parapet_operator_status_writes_total ")?
                    .trim()
                    .parse()
                    .ok()
            })
            .context("the operator has no parapet_operator_status_writes_total")
    }

    async fn object(&self, kind: &str, ns: Option<&str>, name: &str) -> Result<DynamicObject> {
        match kind {
            "GatewayClass" => self.get::<GatewayClass>(None, name).await,
            "Gateway" => self.get::<Gateway>(ns, name).await,
            "HTTPRoute" => self.get::<HttpRoute>(ns, name).await,
            "GRPCRoute" => self.get::<GrpcRoute>(ns, name).await,
            other => bail!("no such kind in these tests: {other}"),
        }
    }

    /// A Service with one port 80 (no endpoints: routes only need it to exist).
    async fn service(&self, ns: &str, name: &str) -> Result<()> {
        parapet_e2e::fleet::service(&self.client, ns, name, "http", 80).await
    }

    /// A Gateway of this test's class with `listeners`.
    async fn gateway(&self, name: &str, listeners: Value) -> Result<()> {
        self.apply::<Gateway>(
            name,
            json!({"spec": {"gatewayClassName": self.class, "listeners": listeners}}),
        )
        .await
    }
}

/// Merges JSON object `b` into `a`.
fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn condition<'a>(v: &'a Value, type_: &str) -> Option<&'a Value> {
    v.get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// Whether condition `type_` of `v` has `status` and `reason`.
fn has(v: &Value, type_: &str, status: &str, reason: &str) -> bool {
    condition(v, type_).is_some_and(|c| c["status"] == status && c["reason"] == reason)
}

fn listener<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status
        .get("listeners")?
        .as_array()?
        .iter()
        .find(|l| l["name"] == name)
}

/// Parapet's entry for parent Gateway `parent` in a route's status.
fn ours<'a>(status: &'a Value, parent: &str) -> Option<&'a Value> {
    parents(status)
        .into_iter()
        .find(|p| p["controllerName"] == CONTROLLER_NAME && p["parentRef"]["name"] == parent)
}

fn parents(status: &Value) -> Vec<&Value> {
    status
        .get("parents")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

fn attached(status: &Value, listener_name: &str) -> Option<i64> {
    listener(status, listener_name)?["attachedRoutes"].as_i64()
}

fn http_listener(name: &str, port: u16) -> Value {
    json!({"name": name, "protocol": "HTTP", "port": port})
}

fn route_to(parent: Value, backends: Value) -> Value {
    json!({"spec": {"parentRefs": [parent], "rules": [{"backendRefs": backends}]}})
}

// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn gateway_classes_of_parapet_are_accepted_with_their_features_others_left_alone()
-> Result<()> {
    let mut s = setup("gateway class", 0).await?;
    let other = s.apply_other_class().await?;
    s.start(&[])?;
    {
        let class = s
            .wait_status::<GatewayClass>(None, &s.class, "Accepted=True", |_, st| {
                has(st, "Accepted", "True", "Accepted")
            })
            .await?;
        let st = &class.data["status"];
        let features: Vec<&str> = st["supportedFeatures"]
            .as_array()
            .map(|a| a.iter().filter_map(|f| f["name"].as_str()).collect())
            .unwrap_or_default();
        ensure!(
            features.contains(&"HTTPRoute") && features.contains(&"Gateway"),
            "supportedFeatures: {features:?}"
        );
        let generation = class.metadata.generation.unwrap_or_default();
        ensure!(
            condition(st, "Accepted").unwrap()["observedGeneration"] == generation,
            "observedGeneration of {st:#} is not {generation}"
        );

        // The other class was there before the operator started, so its round above saw
        // it: it keeps the API server's default status, and keeps it.
        s.assert_quiet(&[
            ("GatewayClass", None, &other),
            ("GatewayClass", None, &s.class),
        ])
        .await?;
        let theirs = s.get::<GatewayClass>(None, &other).await?;
        let st = theirs.data.get("status").cloned().unwrap_or(Value::Null);
        ensure!(
            condition(&st, "Accepted").is_none_or(|c| c["status"] == "Unknown")
                && st.get("supportedFeatures").is_none(),
            "a class of another controller got status from Parapet: {st:#}"
        );
        Ok(())
    }
}

#[tokio::test]
async fn gateway_and_listener_status() -> Result<()> {
    let mut s = setup("gateway status", 1).await?;
    let secrets_ns = s.other(0).to_string();
    s.start(&[])?;
    let pki = parapet_tests::pki::Pki::new("e2e");
    let (cert, key) = pki.leaf(&["b.example.com"]);
    let tls_secret = |ns: &str, name: &str| {
        let mut secret = Secret {
            type_: Some("kubernetes.io/tls".into()),
            ..Default::default()
        };
        secret.metadata.name = Some(name.into());
        secret.metadata.namespace = Some(ns.into());
        secret.string_data = Some(
            [
                ("tls.crt".to_string(), cert.clone()),
                ("tls.key".to_string(), key.clone()),
            ]
            .into(),
        );
        secret
    };
    Api::<Secret>::namespaced(s.client.clone(), &secrets_ns)
        .create(&Default::default(), &tls_secret(&secrets_ns, "cert"))
        .await?;
    let listeners = json!([
        http_listener("http", 80),
        {"name": "tcp", "protocol": "TCP", "port": 9000},
        {"name": "missing-cert", "protocol": "HTTPS", "port": 443, "hostname": "a.example.com",
         "tls": {"mode": "Terminate", "certificateRefs": [{"name": "no-such-secret"}]}},
        {"name": "cross-cert", "protocol": "HTTPS", "port": 443, "hostname": "b.example.com",
         "tls": {"mode": "Terminate", "certificateRefs": [{"name": "cert", "namespace": secrets_ns}]}},
    ]);
    s.gateway("gw", listeners.clone()).await?;
    s.apply::<HttpRoute>(
        "web",
        route_to(json!({"name": "gw", "sectionName": "http"}), json!([])),
    )
    .await?;

    let st = s
        .wait_gateway("gw", "listener statuses", |st| {
            listener(st, "cross-cert")
                .is_some_and(|l| has(l, "ResolvedRefs", "False", "RefNotPermitted"))
                && attached(st, "http") == Some(1)
        })
        .await?;
    // One listener is refused: the Gateway is accepted with the others.
    ensure!(
        has(&st, "Accepted", "True", "ListenersNotValid"),
        "Gateway Accepted: {st:#}"
    );
    // No fleet runs (none is provisioned here): no address.
    ensure!(
        has(&st, "Programmed", "False", "AddressNotAssigned"),
        "Gateway Programmed: {st:#}"
    );
    ensure!(st.get("addresses").is_none(), "addresses: {st:#}");
    let http = listener(&st, "http").unwrap();
    ensure!(
        has(http, "Accepted", "True", "Accepted")
            && has(http, "ResolvedRefs", "True", "ResolvedRefs")
            && has(http, "Programmed", "True", "Programmed")
            && has(http, "Conflicted", "False", "NoConflicts"),
        "listener http: {http:#}"
    );
    let kinds: Vec<(&str, &str)> = http["supportedKinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["group"].as_str().unwrap_or(""),
                k["kind"].as_str().unwrap_or(""),
            )
        })
        .collect();
    ensure!(
        kinds.contains(&(GROUP, "HTTPRoute")) && kinds.contains(&(GROUP, "GRPCRoute")),
        "supportedKinds of http: {kinds:?}"
    );
    let tcp = listener(&st, "tcp").unwrap();
    ensure!(
        has(tcp, "Accepted", "False", "UnsupportedProtocol")
            && has(tcp, "Programmed", "False", "Invalid")
            && tcp["attachedRoutes"] == 0,
        "listener tcp: {tcp:#}"
    );
    let missing = listener(&st, "missing-cert").unwrap();
    ensure!(
        has(missing, "ResolvedRefs", "False", "InvalidCertificateRef")
            && has(missing, "Programmed", "False", "Invalid"),
        "listener missing-cert: {missing:#}"
    );
    let gw = s.get::<Gateway>(Some(s.ns()), "gw").await?;
    let generation = gw.metadata.generation.unwrap_or_default();
    check_generation(&st, generation)?;

    // A ReferenceGrant in the Secret's namespace lets the Gateway use it.
    s.apply_in::<ReferenceGrant>(
        &secrets_ns,
        "gateways-to-cert",
        json!({"spec": {
            "from": [{"group": GROUP, "kind": "Gateway", "namespace": s.ns()}],
            "to": [{"group": "", "kind": "Secret", "name": "cert"}],
        }}),
    )
    .await?;
    s.wait_gateway("gw", "cross-cert ResolvedRefs=True", |st| {
        listener(st, "cross-cert").is_some_and(|l| {
            has(l, "ResolvedRefs", "True", "ResolvedRefs")
                && has(l, "Programmed", "True", "Programmed")
        })
    })
    .await?;

    // A new generation without the refused listener: every condition follows it.
    let mut fewer = listeners.as_array().unwrap().clone();
    fewer.retain(|l| l["name"] != "tcp");
    s.gateway("gw", Value::Array(fewer)).await?;
    let st = s
        .wait_gateway("gw", "Accepted=True (Accepted) at generation 2", |st| {
            has(st, "Accepted", "True", "Accepted")
                && condition(st, "Accepted").unwrap()["observedGeneration"] == 2
        })
        .await?;
    ensure!(
        listener(&st, "tcp").is_none(),
        "listener tcp is gone: {st:#}"
    );
    check_generation(&st, 2)?;
    s.assert_quiet(&[
        ("Gateway", Some(s.ns()), "gw"),
        ("HTTPRoute", Some(s.ns()), "web"),
    ])
    .await
}

/// Every condition of the Gateway and its listeners observed `generation`.
fn check_generation(st: &Value, generation: i64) -> Result<()> {
    let mut conds: Vec<&Value> = st["conditions"].as_array().into_iter().flatten().collect();
    for l in st["listeners"].as_array().into_iter().flatten() {
        conds.extend(l["conditions"].as_array().into_iter().flatten());
    }
    ensure!(!conds.is_empty(), "no conditions: {st:#}");
    for c in conds {
        ensure!(
            c["observedGeneration"] == generation,
            "condition {c} does not observe generation {generation}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn route_parent_reasons() -> Result<()> {
    let mut s = setup("route reasons", 2).await?;
    let (routes_ns, backends_ns) = (s.other(0).to_string(), s.other(1).to_string());
    s.start(&[])?;
    let ns = s.ns().to_string();
    s.gateway(
        "gw",
        json!([{"name": "http", "protocol": "HTTP", "port": 80, "hostname": "*.example.com"}]),
    )
    .await?;
    s.service(&ns, "web").await?;
    s.service(&backends_ns, "elsewhere").await?;
    let gw = json!({"name": "gw"});
    let web = json!([{"name": "web", "port": 80}]);

    // Refused by the Gateway.
    s.apply_in::<HttpRoute>(
        &routes_ns,
        "other-namespace",
        route_to(json!({"name": "gw", "namespace": ns}), web.clone()),
    )
    .await?;
    s.apply::<HttpRoute>(
        "no-section",
        route_to(json!({"name": "gw", "sectionName": "nope"}), web.clone()),
    )
    .await?;
    s.apply::<HttpRoute>(
        "no-port",
        route_to(json!({"name": "gw", "port": 8080}), web.clone()),
    )
    .await?;
    let mut other_host = route_to(gw.clone(), web.clone());
    other_host["spec"]["hostnames"] = json!(["www.example.org"]);
    s.apply::<HttpRoute>("other-host", other_host).await?;
    // Attached, with references that do not resolve.
    s.apply::<HttpRoute>(
        "missing-service",
        route_to(gw.clone(), json!([{"name": "later", "port": 80}])),
    )
    .await?;
    s.apply::<HttpRoute>(
        "not-a-service",
        route_to(
            gw.clone(),
            json!([{"group": "example.com", "kind": "Bucket", "name": "b"}]),
        ),
    )
    .await?;
    s.apply::<HttpRoute>(
        "cross-namespace",
        route_to(
            gw.clone(),
            json!([{"name": "elsewhere", "namespace": backends_ns, "port": 80}]),
        ),
    )
    .await?;
    s.apply::<HttpRoute>("fine", route_to(gw.clone(), web.clone()))
        .await?;

    let refused = [
        (
            routes_ns.as_str(),
            "other-namespace",
            "NotAllowedByListeners",
        ),
        (ns.as_str(), "no-section", "NoMatchingParent"),
        (ns.as_str(), "no-port", "NoMatchingParent"),
        (ns.as_str(), "other-host", "NoMatchingListenerHostname"),
    ];
    for (route_ns, name, reason) in refused {
        s.wait_route(
            route_ns,
            name,
            "gw",
            &format!("Accepted=False {reason}"),
            |p| has(p, "Accepted", "False", reason),
        )
        .await?;
    }
    let unresolved = [
        ("missing-service", "BackendNotFound"),
        ("not-a-service", "InvalidKind"),
        ("cross-namespace", "RefNotPermitted"),
    ];
    for (name, reason) in unresolved {
        s.wait_route(
            &ns,
            name,
            "gw",
            &format!("Accepted=True, ResolvedRefs=False {reason}"),
            |p| has(p, "Accepted", "True", "Accepted") && has(p, "ResolvedRefs", "False", reason),
        )
        .await?;
    }
    let st = s
        .wait_route(&ns, "fine", "gw", "Accepted and ResolvedRefs", |p| {
            has(p, "Accepted", "True", "Accepted") && has(p, "ResolvedRefs", "True", "ResolvedRefs")
        })
        .await?;
    let entry = ours(&st, "gw").unwrap();
    ensure!(
        entry["parentRef"] == json!({"group": GROUP, "kind": "Gateway", "name": "gw"}),
        "parentRef is repeated as stored (with the defaults): {entry:#}"
    );
    let route = s.get::<HttpRoute>(Some(&ns), "fine").await?;
    ensure!(
        condition(entry, "Accepted").unwrap()["observedGeneration"]
            == route.metadata.generation.unwrap_or_default(),
        "observedGeneration: {entry:#}"
    );
    // Attached routes count, whether or not their references resolve; refused ones do not.
    s.wait_gateway("gw", "4 routes attached to listener http", |st| {
        attached(st, "http") == Some(4) && has(st, "Accepted", "True", "Accepted")
    })
    .await?;

    // The missing Service appears: its route resolves.
    s.service(&ns, "later").await?;
    s.wait_route(&ns, "missing-service", "gw", "ResolvedRefs=True", |p| {
        has(p, "ResolvedRefs", "True", "ResolvedRefs")
    })
    .await?;
    // A ReferenceGrant in the backend's namespace lets the route use it.
    s.apply_in::<ReferenceGrant>(
        &backends_ns,
        "routes-to-elsewhere",
        json!({"spec": {
            "from": [{"group": GROUP, "kind": "HTTPRoute", "namespace": ns}],
            "to": [{"group": "", "kind": "Service"}],
        }}),
    )
    .await?;
    s.wait_route(&ns, "cross-namespace", "gw", "ResolvedRefs=True", |p| {
        has(p, "ResolvedRefs", "True", "ResolvedRefs")
    })
    .await?;
    // Nothing else changed: still a kind that is not a Service.
    s.wait_route(&ns, "not-a-service", "gw", "still InvalidKind", |p| {
        has(p, "ResolvedRefs", "False", "InvalidKind")
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_route_moves_between_gateways_and_other_controllers_entries_stay() -> Result<()> {
    let mut s = setup("route moves", 0).await?;
    s.start(&[])?;
    let ns = s.ns().to_string();
    s.service(&ns, "web").await?;
    s.gateway("a", json!([http_listener("http", 80)])).await?;
    s.gateway("b", json!([http_listener("http", 80)])).await?;
    let web = json!([{"name": "web", "port": 80}]);
    s.apply::<HttpRoute>("r", route_to(json!({"name": "a"}), web.clone()))
        .await?;
    s.wait_route(&ns, "r", "a", "Accepted", |p| {
        has(p, "Accepted", "True", "Accepted")
    })
    .await?;
    s.wait_gateway("a", "1 route attached", |st| {
        attached(st, "http") == Some(1)
    })
    .await?;
    s.wait_gateway("b", "no route attached", |st| {
        attached(st, "http") == Some(0)
    })
    .await?;

    // Another controller's entry, written as that controller would: read, add, write
    // conditionally on what was read, again if the route changed meanwhile.
    let theirs = |generation: i64| {
        json!({
            "parentRef": {"name": "theirs", "kind": "Gateway", "group": GROUP},
            "controllerName": "example.com/another-controller",
            "conditions": [{
                "type": "Accepted", "status": "True", "reason": "Accepted", "message": "theirs",
                "observedGeneration": generation,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }],
        })
    };
    let mut attempts = 0;
    let (read, theirs) = loop {
        let route = s.get::<HttpRoute>(Some(&ns), "r").await?;
        let theirs = theirs(route.metadata.generation.unwrap_or_default());
        let mut entries: Vec<Value> = parents(&route.data["status"])
            .into_iter()
            .cloned()
            .collect();
        entries.push(theirs.clone());
        let read = route.metadata.resource_version.clone();
        let res = s
            .api::<HttpRoute>(&ns)
            .patch_status(
                "r",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"resourceVersion": read}, "status": {"parents": entries}}),
                ),
            )
            .await;
        attempts += 1;
        match res {
            Err(kube::Error::Api(e)) if e.code == 409 && attempts < 5 => continue,
            res => {
                res?;
                break (read, theirs);
            }
        }
    };
    // Parapet writes route status on the same condition: a patch made from a read older
    // than the other controller's write is refused rather than dropping its entry.
    let stale = s
        .api::<HttpRoute>(&ns)
        .patch_status(
            "r",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"resourceVersion": read}, "status": {"parents": []}}),
            ),
        )
        .await;
    ensure!(
        matches!(&stale, Err(kube::Error::Api(e)) if e.code == 409),
        "a status patch conditional on an old resourceVersion: {stale:?}"
    );

    s.apply::<HttpRoute>("r", route_to(json!({"name": "b"}), web.clone()))
        .await?;
    let st = s
        .wait_route(&ns, "r", "b", "Accepted", |p| {
            has(p, "Accepted", "True", "Accepted")
        })
        .await?;
    let all = parents(&st);
    ensure!(
        ours(&st, "a").is_none(),
        "gateway a's entry is still there: {st:#}"
    );
    ensure!(
        all.iter()
            .filter(|p| p["controllerName"] == CONTROLLER_NAME)
            .count()
            == 1,
        "Parapet's entries: {st:#}"
    );
    ensure!(
        all.contains(&&theirs),
        "another controller's entry was not kept as it was: {st:#}"
    );
    s.wait_gateway("a", "no route attached", |st| {
        attached(st, "http") == Some(0)
    })
    .await?;
    s.wait_gateway("b", "1 route attached", |st| {
        attached(st, "http") == Some(1)
    })
    .await?;
    s.assert_quiet(&[
        ("Gateway", Some(&ns), "a"),
        ("Gateway", Some(&ns), "b"),
        ("HTTPRoute", Some(&ns), "r"),
    ])
    .await?;
    // Still there after the operator's last writes.
    let st = s.get::<HttpRoute>(Some(&ns), "r").await?.data["status"].clone();
    ensure!(
        parents(&st).contains(&&theirs),
        "another controller's entry: {st:#}"
    );

    // To a Gateway of another controller: Parapet's entry goes, theirs stays.
    let other_class = s.apply_other_class().await?;
    s.apply::<Gateway>(
        "c",
        json!({"spec": {"gatewayClassName": other_class, "listeners": [http_listener("http", 80)]}}),
    )
    .await?;
    s.apply::<HttpRoute>("r", route_to(json!({"name": "c"}), web.clone()))
        .await?;
    let st = s
        .wait_status::<HttpRoute>(Some(&ns), "r", "no entry of Parapet's", |_, st| {
            parents(st)
                .iter()
                .all(|p| p["controllerName"] != CONTROLLER_NAME)
        })
        .await?
        .data["status"]
        .clone();
    ensure!(parents(&st) == [&theirs], "parents: {st:#}");
    s.wait_gateway("b", "no route attached", |st| {
        attached(st, "http") == Some(0)
    })
    .await?;
    let c = s.get::<Gateway>(Some(&ns), "c").await?;
    let c_status = c.data.get("status").cloned().unwrap_or(Value::Null);
    ensure!(
        condition(&c_status, "Accepted").is_none_or(|c| c["status"] == "Unknown"),
        "Parapet wrote the status of another controller's Gateway: {c_status:#}"
    );

    // Its Gateway deleted: Parapet's entry goes too.
    s.apply::<HttpRoute>("r", route_to(json!({"name": "b"}), web.clone()))
        .await?;
    s.wait_route(&ns, "r", "b", "Accepted", |p| {
        has(p, "Accepted", "True", "Accepted")
    })
    .await?;
    s.api::<Gateway>(&ns)
        .delete("b", &DeleteParams::default())
        .await?;
    s.wait_status::<HttpRoute>(
        Some(&ns),
        "r",
        "no entry of Parapet's after b is deleted",
        |_, st| {
            parents(st)
                .iter()
                .all(|p| p["controllerName"] != CONTROLLER_NAME)
        },
    )
    .await?;
    s.assert_quiet(&[("HTTPRoute", Some(&ns), "r")]).await
}

#[tokio::test]
async fn status_is_written_only_when_it_changes() -> Result<()> {
    let mut s = setup("status quiet", 0).await?;
    s.start(&[])?;
    let ns = s.ns().to_string();
    s.service(&ns, "web").await?;
    s.gateway(
        "gw",
        json!([http_listener("http", 80), http_listener("alt", 8080)]),
    )
    .await?;
    s.apply::<HttpRoute>(
        "r",
        route_to(json!({"name": "gw"}), json!([{"name": "web", "port": 80}])),
    )
    .await?;
    s.apply::<HttpRoute>(
        "broken",
        route_to(
            json!({"name": "gw"}),
            json!([{"name": "nothing", "port": 80}]),
        ),
    )
    .await?;
    s.apply::<GrpcRoute>(
        "grpc",
        route_to(json!({"name": "gw"}), json!([{"name": "web", "port": 80}])),
    )
    .await?;
    s.wait_route(&ns, "r", "gw", "Accepted and ResolvedRefs", |p| {
        has(p, "Accepted", "True", "Accepted") && has(p, "ResolvedRefs", "True", "ResolvedRefs")
    })
    .await?;
    s.wait_status::<GrpcRoute>(Some(&ns), "grpc", "Accepted and ResolvedRefs", |_, st| {
        ours(st, "gw").is_some_and(|p| {
            has(p, "Accepted", "True", "Accepted") && has(p, "ResolvedRefs", "True", "ResolvedRefs")
        })
    })
    .await?;
    s.wait_route(&ns, "broken", "gw", "BackendNotFound", |p| {
        has(p, "ResolvedRefs", "False", "BackendNotFound")
    })
    .await?;
    s.wait_gateway("gw", "3 routes on each listener", |st| {
        attached(st, "http") == Some(3) && attached(st, "alt") == Some(3)
    })
    .await?;
    // The writes so far are counted (the check below would prove nothing otherwise).
    let writes = s.status_writes().await?;
    ensure!(
        writes >= 5.0,
        "{writes} status writes counted for a class, a Gateway and 3 routes"
    );
    s.assert_quiet(&[
        ("GatewayClass", None, &s.class),
        ("Gateway", Some(&ns), "gw"),
        ("HTTPRoute", Some(&ns), "r"),
        ("HTTPRoute", Some(&ns), "broken"),
        ("GRPCRoute", Some(&ns), "grpc"),
    ])
    .await
}

#[tokio::test]
async fn each_gateway_gets_a_fleet_of_its_own() -> Result<()> {
    gateway_fleet(true).await
}

#[tokio::test]
async fn gateway_fleets_without_snapshot_tls() -> Result<()> {
    gateway_fleet(false).await
}

/// A Gateway's fleet copied from the default fleet, with the certificates the operator
/// issues (`tls`, the chart's default) or with the token only (`snapshotTLS.enabled=false`).
async fn gateway_fleet(tls: bool) -> Result<()> {
    let mut s = setup(
        if tls {
            "gateway fleet"
        } else {
            "gateway fleet plain"
        },
        0,
    )
    .await?;
    let ns = s.ns().to_string();
    // The default fleet, which Gateway fleets copy. No pod of it ever runs here.
    let default_fleet: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "parapet-dataplane", "namespace": ns},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "parapet-dataplane"}},
            "template": {
                "metadata": {"labels": {"app": "parapet-dataplane"}},
                "spec": {"containers": [{
                    "name": "dataplane",
                    "image": "parapet-dataplane:e2e",
                    "args": ["--admin-listen", "0.0.0.0:9901",
                             "--snapshot-token-file", "/etc/parapet/token/token"],
                    "ports": [{"name": "admin", "containerPort": 9901},
                              {"name": "http", "containerPort": 8080}],
                }]},
            },
        },
    }))?;
    Api::<Deployment>::namespaced(s.client.clone(), &ns)
        .create(&Default::default(), &default_fleet)
        .await?;
    // As the chart runs the operator in either mode.
    let mut flags = vec!["--dataplane-deployment", "parapet-dataplane"];
    if tls {
        flags.extend([
            "--snapshot-ca-secret",
            "snapshot-ca",
            "--snapshot-tls-secret",
            "snapshot-tls",
            "--dataplane-server-name",
            "parapet-dataplane-admin",
        ]);
    }
    s.start(&flags)?;
    s.gateway(
        "edge",
        json!([http_listener("http", 80), http_listener("alt", 8080)]),
    )
    .await?;
    let gw = s.get::<Gateway>(Some(&ns), "edge").await?;
    let uid = gw.metadata.uid.clone().unwrap_or_default();

    let owned = |meta: &kube::api::ObjectMeta| -> Result<()> {
        let refs = meta.owner_references.clone().unwrap_or_default();
        ensure!(
            refs.iter().any(|r| r.kind == "Gateway"
                && r.api_version == format!("{GROUP}/v1")
                && r.name == "edge"
                && r.uid == uid
                && r.controller == Some(true)),
            "{} is not owned by Gateway edge ({uid}): {refs:?}",
            meta.name.clone().unwrap_or_default()
        );
        let labels = meta.labels.clone().unwrap_or_default();
        ensure!(
            labels
                .get("gateway.networking.k8s.io/gateway-name")
                .map(String::as_str)
                == Some("edge"),
            "labels of {}: {labels:?}",
            meta.name.clone().unwrap_or_default()
        );
        Ok(())
    };
    let deployment = wait_for(
        "Gateway edge's fleet Deployment",
        STATUS_DEADLINE,
        || async {
            Ok(Api::<Deployment>::namespaced(s.client.clone(), &ns)
                .get_opt("edge")
                .await?)
        },
    )
    .await?;
    owned(&deployment.metadata)?;
    let pod = deployment.spec.template.spec.clone().unwrap_or_default();
    let container = &pod.containers[0];
    ensure!(
        container.image.as_deref() == Some("parapet-dataplane:e2e"),
        "the fleet runs the default fleet's image: {container:?}"
    );
    let service = Api::<Service>::namespaced(s.client.clone(), &ns)
        .get("edge")
        .await?;
    owned(&service.metadata)?;
    let ports: Vec<i32> = service
        .spec
        .as_ref()
        .and_then(|sp| sp.ports.clone())
        .unwrap_or_default()
        .iter()
        .map(|p| p.port)
        .collect();
    ensure!(
        ports.contains(&80) && ports.contains(&8080) && !ports.contains(&9901),
        "the fleet Service serves both listener ports, and not the admin port: {ports:?}"
    );
    // The admin port is on a headless Service of its own, the one the operator pushes to.
    let admin = Api::<Service>::namespaced(s.client.clone(), &ns)
        .get("edge-parapet-admin")
        .await?;
    owned(&admin.metadata)?;
    let spec = admin.spec.clone().unwrap_or_default();
    ensure!(
        spec.cluster_ip.as_deref() == Some("None")
            && spec
                .ports
                .unwrap_or_default()
                .iter()
                .map(|p| p.port)
                .collect::<Vec<_>>()
                == [9901],
        "the admin Service is headless with the admin port alone: {admin:?}"
    );
    owned(
        &Api::<ServiceAccount>::namespaced(s.client.clone(), &ns)
            .get("edge")
            .await?
            .metadata,
    )?;
    let secret = Api::<Secret>::namespaced(s.client.clone(), &ns)
        .get("edge-parapet-snapshot")
        .await?;
    owned(&secret.metadata)?;
    let data = secret.data.clone().unwrap_or_default();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    let want: &[&str] = if tls {
        &["ca.crt", "tls.crt", "tls.key", "token"]
    } else {
        &["token"]
    };
    // The fleet's own token, derived from the operator's, never the operator's itself.
    let fleet_token = parapet_operator::provision::fleet_token(TOKEN, &ns, "edge");
    ensure!(
        data.get("token").map(|t| t.0.as_slice()) == Some(fleet_token.as_bytes())
            && fleet_token != TOKEN
            && keys == want,
        "the fleet's Secret holds the snapshot credentials: keys {keys:?}, want {want:?}"
    );

    // The fleet Service has a cluster IP, but no pod serves: Pending, with the address.
    let ip = service
        .spec
        .as_ref()
        .and_then(|sp| sp.cluster_ip.clone())
        .unwrap_or_default();
    ensure!(!ip.is_empty(), "the fleet Service has no cluster IP");
    let st = s
        .wait_gateway("edge", "Programmed=False Pending with the address", |st| {
            has(st, "Programmed", "False", "Pending")
                && st["addresses"] == json!([{"type": "IPAddress", "value": ip}])
        })
        .await?;
    ensure!(has(&st, "Accepted", "True", "Accepted"), "{st:#}");
    s.assert_quiet(&[("Gateway", Some(&ns), "edge")]).await?;

    // The Gateway goes: so does its fleet.
    s.api::<Gateway>(&ns)
        .delete("edge", &DeleteParams::default())
        .await?;
    wait_for("Gateway edge's fleet to go", STATUS_DEADLINE, || async {
        let d = Api::<Deployment>::namespaced(s.client.clone(), &ns)
            .get_opt("edge")
            .await?;
        let sv = Api::<Service>::namespaced(s.client.clone(), &ns)
            .get_opt("edge")
            .await?;
        Ok((d.is_none() && sv.is_none()).then_some(()))
    })
    .await?;
    // The default fleet is the template, never touched beyond the restart annotation.
    ensure!(
        Api::<Deployment>::namespaced(s.client.clone(), &ns)
            .get_opt("parapet-dataplane")
            .await?
            .is_some(),
        "the default fleet is gone"
    );
    Ok(())
}
