//! Disaster recovery with the `parapet` command against a real API server: back up two
//! namespaces (with an API-key Secret, encrypted), delete them, restore, and get the same
//! configuration on the fleet and the same answers to the same requests. A restore into a
//! cluster whose CRDs are older than the backup's, or of a backup the cluster's schema
//! would refuse, fails with a clear message and changes nothing.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::{
    api::core::v1::{Namespace, Secret},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
};
use parapet_e2e::{
    TestNamespace, apply_crds, client, cluster,
    fleet::{self, Operator, Slice},
    wait_for,
};
use parapet_tests::{backend::Backend, client::Client as Http, dataplane::Dataplane};
use serde_json::{Value, json};

const TOKEN: &str = "e2e-snapshot-token-0123456789";
const API_KEY: &str = "alice-key-0123456789abcdef";
/// Routes in the second namespace: the restore drill is timed at this size.
const ROUTES: usize = 1000;

/// Runs `parapet` with the test cluster's kubeconfig; (success, stdout, stderr).
async fn parapet(args: &[&str]) -> Result<(bool, String, String)> {
    let out = tokio::process::Command::new(parapet_tests::dataplane::binary("parapet"))
        .args(args)
        .env("KUBECONFIG", cluster()?.kubeconfig())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .await
        .context("run parapet")?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("$ parapet {}\n{stdout}{stderr}", args.join(" "));
    Ok((out.status.success(), stdout, stderr))
}

fn resource(kind: &str) -> ApiResource {
    let plural = format!("{}s", kind.to_lowercase());
    ApiResource {
        group: "parapet.dev".into(),
        version: "v1alpha1".into(),
        api_version: "parapet.dev/v1alpha1".into(),
        kind: kind.into(),
        plural,
    }
}

async fn apply(client: &Client, ns: &str, kind: &str, name: &str, spec: Value) -> Result<()> {
    let ar = resource(kind);
    let obj = json!({
        "apiVersion": "parapet.dev/v1alpha1", "kind": kind,
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    });
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(obj))
        .await
        .with_context(|| format!("apply {kind} {ns}/{name}"))?;
    Ok(())
}

/// `parapet status -n NS -o json`.
async fn status(ops: &str, ns: &str) -> Result<Value> {
    let (ok, out, err) = parapet(&[
        "--operator-namespace",
        ops,
        "status",
        "-n",
        ns,
        "-o",
        "json",
    ])
    .await?;
    ensure!(ok, "parapet status failed: {err}");
    Ok(serde_json::from_str(&out)?)
}

/// What the fleet view says of the default fleet.
#[derive(Debug)]
struct Fleet {
    /// The desired table's version and configuration hash.
    version: u64,
    config_hash: String,
    /// Routes in the desired table.
    routes: u64,
    /// Pods serving the desired table.
    synced: usize,
    pods: usize,
}

async fn fleet_view(ops: &str) -> Result<Option<Fleet>> {
    let v = status(ops, ops).await?;
    let Some(f) = v["fleet"]["fleets"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == "default"))
    else {
        return Ok(None);
    };
    let Some(d) = f.get("desired").filter(|d| !d.is_null()) else {
        return Ok(None);
    };
    let pods = f["pods"].as_array().cloned().unwrap_or_default();
    let synced = pods
        .iter()
        .filter(|p| p["version"] == d["version"] && p["hash"] == d["hash"])
        .count();
    Ok(Some(Fleet {
        version: d["version"].as_u64().unwrap_or(0),
        config_hash: d["configHash"].as_str().unwrap_or("").to_string(),
        routes: d["routes"].as_u64().unwrap_or(0),
        synced,
        pods: pods.len(),
    }))
}

/// The table version a data plane says it serves.
async fn served_version(http: &Http, dp: &Dataplane) -> Result<u64> {
    dp.snapshot_status(http)
        .await
        .and_then(|v| v["version"].as_u64())
        .context("a data plane that answers no table version")
}

/// An ApiRoute's line in `parapet status -n NS -o json`.
async fn route_status(ops: &str, ns: &str, name: &str) -> Result<Value> {
    status(ops, ns).await?["resources"]
        .as_array()
        .and_then(|r| {
            r.iter()
                .find(|r| r["kind"] == "ApiRoute" && r["name"] == name)
        })
        .cloned()
        .with_context(|| format!("ApiRoute {ns}/{name} in parapet status"))
}

/// The answers the drill compares before and after: (status, backend) per request.
async fn answers(http: &Http, dps: &[&Dataplane]) -> Vec<(u16, Option<String>)> {
    let mut out = Vec::new();
    for dp in dps {
        for (host, key) in [
            ("shop.example", Some(API_KEY)),
            ("shop.example", None),
            ("shop.example", Some("wrong-key-0123456789")),
            ("r7.bank.example", None),
            ("r999.bank.example", None),
            ("nowhere.example", None),
        ] {
            let headers: Vec<(&str, &str)> =
                key.map(|k| vec![("x-api-key", k)]).unwrap_or_default();
            let r = http
                .send(
                    dp.proxy,
                    http::Method::GET,
                    host,
                    "/",
                    &headers,
                    bytes::Bytes::new(),
                )
                .await;
            out.push(match r {
                Ok(r) => (r.status.as_u16(), r.backend().map(str::to_string)),
                Err(_) => (0, None),
            });
        }
    }
    out
}

async fn namespace_gone(client: &Client, ns: &str) -> Result<bool> {
    Ok(Api::<Namespace>::all(client.clone())
        .get_opt(ns)
        .await?
        .is_none())
}

async fn set_crd_version(client: &Client, version: &str) -> Result<()> {
    Api::<CustomResourceDefinition>::all(client.clone())
        .patch(
            "apiroutes.parapet.dev",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {parapet_crds::api::CRD_VERSION_ANNOTATION: version}}})),
        )
        .await?;
    Ok(())
}

/// The backup with one object given a field no schema has, its hash made to match.
fn with_unknown_field(backup: &Path, out: &Path) -> Result<()> {
    let mut v: Value = serde_json::from_slice(&std::fs::read(backup)?)?;
    let objects = v["objects"].as_array_mut().context("objects")?;
    let route = objects
        .iter_mut()
        .find(|o| o["kind"] == "ApiRoute")
        .context("an ApiRoute in the backup")?;
    route["spec"]["fromANewerParapet"] = json!(true);
    let objects = v["objects"].clone();
    v["manifest"]["objectsSha256"] = parapet_cli::file::sha256_json(&objects).into();
    std::fs::write(out, serde_json::to_vec(&v)?)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_the_same_configuration_after_its_namespaces_are_deleted() -> Result<()> {
    fleet::check_local_name().await?;
    let client = client().await?;
    apply_crds(&client).await?;
    let ops = TestNamespace::new(&client, "dr-ops").await?;
    let shop = TestNamespace::new(&client, "dr-shop").await?;
    let bank = TestNamespace::new(&client, "dr-bank").await?;
    let (ops, shop, bank) = (
        ops.name().to_string(),
        shop.name().to_string(),
        bank.name().to_string(),
    );
    let dir = tempfile::tempdir()?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN)?;
    let passphrase = dir.path().join("passphrase");
    std::fs::write(&passphrase, "correct horse battery staple\n")?;

    let (shop_backend, bank_backend) = (Backend::start("shop").await, Backend::start("bank").await);
    let token = token_file.to_str().unwrap();
    let (dp1, dp2) = (
        Dataplane::start(&["--snapshot-token-file", token]),
        Dataplane::start(&["--snapshot-token-file", token]),
    );
    fleet::service(&client, &ops, "dp-admin", "admin", 9901).await?;
    for (name, dp) in [("dp-1", &dp1), ("dp-2", &dp2)] {
        let sl = Slice {
            service: "dp-admin",
            name,
            port_name: "admin",
            port: dp.admin.port(),
            ready: true,
            zone: None,
            for_zones: &[],
        };
        fleet::slice(&client, &ops, sl).await?;
    }
    let watch = format!("{shop},{bank}");
    let _op = Operator::start_with(
        &ops,
        "dp-admin",
        token,
        "op-dr",
        &["--watch-namespaces", &watch],
    )?;

    // The shop: an API-key route (its Secret labelled for the operator); the bank: ROUTES
    // routes, one edited so that its generation is 2 (a restore starts it at 1 again).
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "shop-keys", "namespace": shop, "labels": {"parapet.dev/secret": "true"}},
        "stringData": {"alice": API_KEY},
    }))?;
    Api::<Secret>::namespaced(client.clone(), &shop)
        .patch(
            "shop-keys",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&secret),
        )
        .await?;
    apply(
        &client,
        &shop,
        "UpstreamPool",
        "shop",
        json!({"static": [{"address": "127.0.0.1", "port": shop_backend.port()}]}),
    )
    .await?;
    apply(&client, &shop, "ApiRoute", "shop", json!({
        "hosts": ["shop.example"],
        "rules": [{"backends": [{"pool": "shop"}], "auth": {"apiKeys": {"secretRefs": [{"name": "shop-keys"}]}}}]
    })).await?;
    apply(
        &client,
        &bank,
        "UpstreamPool",
        "bank",
        json!({"static": [{"address": "127.0.0.1", "port": bank_backend.port()}]}),
    )
    .await?;
    let routes = (0..ROUTES).map(|i| {
        let client = client.clone();
        let bank = bank.clone();
        async move {
            apply(&client, &bank, "ApiRoute", &format!("r{i}"), json!({
                "hosts": [format!("r{i}.bank.example")], "rules": [{"backends": [{"pool": "bank"}]}]
            })).await
        }
    });
    futures::future::try_join_all(routes).await?;
    apply(&client, &bank, "ApiRoute", "r7", json!({
        "hosts": ["r7.bank.example"], "rules": [{"backends": [{"pool": "bank"}], "timeout": "9s"}]
    })).await?;

    let http = Http::new();
    let want = wait_for(
        "both data planes to serve every route",
        Duration::from_secs(90),
        || async {
            let a = answers(&http, &[&dp1, &dp2]).await;
            let expect = |i: usize| a[i].clone();
            Ok((expect(0) == (200, Some("shop".into()))
                && expect(1).0 == 401
                && expect(2).0 == 403
                && expect(3) == (200, Some("bank".into()))
                && expect(4) == (200, Some("bank".into()))
                && expect(5).0 == 404
                && a[..6] == a[6..])
                .then_some(a.clone())
                .ok_or_else(|| anyhow::anyhow!("the answers are {a:?}"))?
                .into())
        },
    )
    .await?;
    // The final table: the answers above can come from one compiled while the routes were
    // still arriving. r7's second generation was applied last, so pods serving it serve
    // every route. The fleet view is written after the pushes and can still describe an
    // earlier table with as many routes (one compiled before the bank's pool arrived), so it
    // must describe the table the data planes answered from, or a later one.
    let answered_from = served_version(&http, &dp1)
        .await?
        .min(served_version(&http, &dp2).await?);
    let config_hash = wait_for(
        "both pods to serve r7's second generation, in sync in the fleet view",
        Duration::from_secs(60),
        || async {
            let r7 = route_status(&ops, &bank, "r7").await?;
            if r7["message"] != "2/2 pods serve generation 2" {
                return Ok(None);
            }
            Ok(fleet_view(&ops)
                .await?
                .filter(|f| {
                    f.version >= answered_from
                        && f.synced == 2
                        && f.pods == 2
                        && f.routes == ROUTES as u64 + 1
                })
                .map(|f| f.config_hash))
        },
    )
    .await?;

    // Back up (timed), with the Secret encrypted under a passphrase.
    let file = dir.path().join("backup.json");
    let file_s = file.to_str().unwrap();
    let started = std::time::Instant::now();
    let (ok, out, err) = parapet(&[
        "--operator-namespace",
        &ops,
        "backup",
        "-n",
        &watch,
        "-o",
        file_s,
        "--passphrase-file",
        passphrase.to_str().unwrap(),
    ])
    .await?;
    let backup_took = started.elapsed();
    ensure!(ok, "backup failed: {err}");
    ensure!(
        out.contains(&format!("{} ApiRoute", ROUTES + 1))
            && out.contains("2 UpstreamPool")
            && out.contains("1 Secrets"),
        "{out}"
    );
    let text = std::fs::read_to_string(&file)?;
    ensure!(
        !text.contains(API_KEY) && !text.contains("YWxpY2Uta2V5"),
        "the API key is in the backup in the clear"
    );
    let manifest: Value = serde_json::from_str::<Value>(&text)?["manifest"].clone();
    ensure!(
        manifest["tables"][0]["configHash"] == config_hash.as_str(),
        "{manifest}"
    );
    ensure!(
        manifest["crds"]["apiroutes.parapet.dev"] == parapet_crds::api::CRD_VERSION,
        "{manifest}"
    );

    // The disaster: both namespaces go, and the fleet serves an empty table.
    for ns in [&shop, &bank] {
        Api::<Namespace>::all(client.clone())
            .delete(ns, &Default::default())
            .await?;
    }
    wait_for(
        "the namespaces to be deleted",
        Duration::from_secs(120),
        || async {
            Ok(
                (namespace_gone(&client, &shop).await? && namespace_gone(&client, &bank).await?)
                    .then_some(()),
            )
        },
    )
    .await?;
    wait_for(
        "the fleet to drop the deleted routes",
        Duration::from_secs(60),
        || async {
            let r = http.get(dp1.proxy, "shop.example", "/").await.ok();
            let view = fleet_view(&ops).await?;
            Ok((r.is_some_and(|r| r.status == 404)
                && view.is_some_and(|f| f.config_hash != config_hash && f.synced == f.pods))
            .then_some(()))
        },
    )
    .await?;

    // CRDs older than the backup's: refused, and nothing is created.
    set_crd_version(&client, "0.0.1").await?;
    let (ok, _, err) = parapet(&[
        "--operator-namespace",
        &ops,
        "restore",
        file_s,
        "--passphrase-file",
        passphrase.to_str().unwrap(),
    ])
    .await?;
    set_crd_version(&client, parapet_crds::api::CRD_VERSION).await?;
    ensure!(!ok, "a restore onto older CRDs succeeded");
    ensure!(
        err.contains("older than the backup's") && err.contains("nothing was restored"),
        "{err}"
    );
    ensure!(
        namespace_gone(&client, &shop).await? && namespace_gone(&client, &bank).await?,
        "a refused restore created namespaces"
    );

    // A backup with a field the cluster's schema does not know: the dry run refuses it
    // whole, naming the object and the field.
    let newer = dir.path().join("newer.json");
    with_unknown_field(&file, &newer)?;
    let (ok, _, err) = parapet(&[
        "--operator-namespace",
        &ops,
        "restore",
        newer.to_str().unwrap(),
        "--skip-secrets",
    ])
    .await?;
    ensure!(!ok, "a backup with an unknown field was restored");
    ensure!(
        err.contains("nothing was restored") && err.contains("fromANewerParapet"),
        "{err}"
    );
    ensure!(
        namespace_gone(&client, &shop).await? && namespace_gone(&client, &bank).await?,
        "a refused restore created namespaces"
    );

    // Without the passphrase the Secrets cannot come back: said so, nothing changed.
    let (ok, _, err) = parapet(&["--operator-namespace", &ops, "restore", file_s]).await?;
    ensure!(!ok && err.contains("--passphrase-file"), "{err}");

    // The restore (timed): applied, and done when the fleet serves the same configuration.
    let started = std::time::Instant::now();
    let (ok, out, err) = parapet(&[
        "--operator-namespace",
        &ops,
        "restore",
        file_s,
        "--passphrase-file",
        passphrase.to_str().unwrap(),
        "--timeout",
        "120s",
    ])
    .await?;
    let restore_took = started.elapsed();
    ensure!(ok, "restore failed: {err}");
    ensure!(
        out.contains("fleet default serves the backed-up configuration"),
        "{out}"
    );
    let view = fleet_view(&ops).await?;
    ensure!(
        view.as_ref()
            .is_some_and(|f| f.config_hash == config_hash && f.synced == 2 && f.pods == 2),
        "after the restore the fleet view says {view:?}"
    );
    // The fleet view's resource lines: the restored route is programmed on both pods.
    wait_for(
        "parapet status to show the restored route programmed",
        Duration::from_secs(30),
        || async {
            let route = route_status(&ops, &shop, "shop").await?;
            Ok((route["accepted"] == "True"
                && route["programmed"] == "True"
                && route["message"] == "2/2 pods serve generation 1")
                .then_some(()))
        },
    )
    .await?;
    let got = answers(&http, &[&dp1, &dp2]).await;
    if got != want {
        bail!(
            "the same requests get other answers after the restore:\nbefore {want:?}\nafter  {got:?}"
        );
    }
    eprintln!(
        "restore drill with {} routes: backup {:.1} s, restore until the fleet serves it {:.1} s",
        ROUTES + 1,
        backup_took.as_secs_f64(),
        restore_took.as_secs_f64()
    );
    Ok(())
}
