//! The operator against a real kube-apiserver: data planes and backends are processes on
//! 127.0.0.1, listed in selector-less Services' EndpointSlices.

use std::time::{Duration, Instant};

use anyhow::Result;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
};
use parapet_crds::api::{ApiRoute, UpstreamPool};
use parapet_e2e::{
    TestNamespace, apply_crds, client,
    fleet::{self, Operator, Slice},
    wait_for,
};
use parapet_tests::{backend::Backend, client::Client as Http, dataplane::Dataplane};
use serde_json::{Value, json};

const TOKEN: &str = "e2e-snapshot-token-0123456789";

struct Setup {
    client: Client,
    ns: TestNamespace,
    token_file: String,
    _dir: tempfile::TempDir,
}

async fn setup(test: &str) -> Result<Setup> {
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
    })
}

impl Setup {
    fn ns(&self) -> &str {
        self.ns.name()
    }

    /// A data plane that takes pushes, listed in the `dp-admin` Service.
    async fn dataplane(&self, name: &str, ready: bool) -> Result<Dataplane> {
        let dp = Dataplane::start(&["--snapshot-token-file", &self.token_file]);
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
            },
        )
        .await?;
        Ok(dp)
    }

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
            },
        )
        .await?;
        Ok(b)
    }

    async fn apply(&self, kind: &str, name: &str, spec: Value) -> Result<()> {
        let ar = match kind {
            "ApiRoute" => ApiResource::erase::<ApiRoute>(&()),
            _ => ApiResource::erase::<UpstreamPool>(&()),
        };
        let obj = json!({"apiVersion": "parapet.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec});
        Api::<DynamicObject>::namespaced_with(self.client.clone(), self.ns(), &ar)
            .patch(
                name,
                &PatchParams::apply("parapet-e2e").force(),
                &Patch::Apply(&obj),
            )
            .await?;
        Ok(())
    }

    async fn status(&self, kind: &str, name: &str) -> Result<Value> {
        let ar = match kind {
            "ApiRoute" => ApiResource::erase::<ApiRoute>(&()),
            _ => ApiResource::erase::<UpstreamPool>(&()),
        };
        let o = Api::<DynamicObject>::namespaced_with(self.client.clone(), self.ns(), &ar)
            .get(name)
            .await?;
        Ok(o.data.get("status").cloned().unwrap_or(Value::Null))
    }
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
    let _ = Instant::now();
    Ok(())
}
