//! Parapet as users run it: the chart installed with the built images on a real node
//! (kubelet, containerd, runc, the CNI bridge, kube-proxy; `cluster.sh up --node real`),
//! scaled by a real HorizontalPodAutoscaler from metrics-server, and disturbed while a load
//! balancer that follows the Service's EndpointSlices sends traffic.
//!
//! One test, in phases, because every phase needs the installed fleet and installing it is
//! most of the cost:
//!
//! 1. `helm install` (images from `make images`, `pullPolicy: Never`): two operator replicas
//!    with one leader, the data plane Ready; the banking example and its sample backends;
//! 2. requests to every data-plane pod and to the Service's ClusterIP reach the right
//!    backends, and the routes' status says every pod serves them;
//! 3. the containers run as the chart says: non-root, no capabilities, seccomp, read-only root;
//! 4. under load the HPA adds pods, each serves only once it has the table, and after the
//!    load it removes them;
//! 5. chaos under load: a data-plane pod deleted, a data-plane process SIGKILLed, the leading
//!    operator deleted, the data plane rolled by `helm upgrade`, a backend pod deleted.
//!
//! Figures (install time, scale-up time, failed requests per case) are printed as
//! `figure:` lines. Built only with the `node` feature (`make e2e-node`), which also runs it
//! against the cluster it starts; it needs `PARAPET_CLUSTER_DIR` (for crictl) and the images
//! imported under `PARAPET_IMAGE_PREFIX`/…:`PARAPET_IMAGE_TAG`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, ensure};
use k8s_openapi::api::{
    apps::v1::Deployment, autoscaling::v2::HorizontalPodAutoscaler, coordination::v1::Lease,
    core::v1::Pod,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams},
};
use parapet_e2e::{
    TestNamespace, client,
    helm::{cached_tool, helm_ok},
    kubectl_ok, kubectl_stdin, lb, repo_root, wait_for,
};
use parapet_tests::client::Client as HttpClient;
use serde_json::Value;

const RELEASE: &str = "parapet";
const HOST: &str = "api.bank.example";
/// A route of the test's own in front of the accounts pool without a cache, so every
/// request reaches a backend (the example's routes cache).
const DIRECT_HOST: &str = "direct.bank.example";
const DATAPLANE_SELECTOR: &str =
    "app.kubernetes.io/instance=parapet,app.kubernetes.io/component=dataplane";
const OPERATOR_SELECTOR: &str =
    "app.kubernetes.io/instance=parapet,app.kubernetes.io/component=operator";

fn figure(what: &str, value: impl std::fmt::Display) {
    eprintln!("figure: {what}: {value}");
}

fn image_tag() -> String {
    std::env::var("PARAPET_IMAGE_TAG").unwrap_or_else(|_| "0.1.0".into())
}

fn image_prefix() -> String {
    std::env::var("PARAPET_IMAGE_PREFIX").unwrap_or_else(|_| "parapet".into())
}

/// The test values: the built images, never pulled; a small CPU request so a load from
/// this 2-core machine drives the HPA; short scaling windows so it acts within the test.
fn values(roll: &str) -> String {
    format!(
        r#"
image:
  tag: "{tag}"
  pullPolicy: Never
operator:
  replicaCount: 2
  resyncInterval: 5s
  image: {{repository: "{prefix}/operator"}}
dataplane:
  image: {{repository: "{prefix}/dataplane"}}
  workers: 1
  shutdownDelaySeconds: 3
  drainTimeoutSeconds: 10
  podAnnotations: {{parapet.dev/test-roll: "{roll}"}}
  resources:
    requests: {{cpu: 100m, memory: 32Mi}}
    limits: {{memory: 256Mi}}
  autoscaling:
    enabled: true
    minReplicas: 2
    maxReplicas: 4
    targetCPUUtilizationPercentage: 60
    behavior:
      scaleUp:
        stabilizationWindowSeconds: 0
        policies: [{{type: Pods, value: 2, periodSeconds: 10}}]
      scaleDown:
        stabilizationWindowSeconds: 15
        policies: [{{type: Pods, value: 2, periodSeconds: 10}}]
"#,
        tag = image_tag(),
        prefix = image_prefix(),
    )
}

struct Fleet {
    client: Client,
    ns: String,
    bank: String,
    http: HttpClient,
}

impl Fleet {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Ready, not terminating data-plane pods: name → IP.
    async fn ready_dataplanes(&self) -> Result<BTreeMap<String, IpAddr>> {
        ready_pods(&self.pods(), DATAPLANE_SELECTOR).await
    }

    /// `helm install` or `upgrade` of the chart with the test values; `roll` is a pod
    /// annotation, so a new value rolls the data plane.
    async fn helm(&self, verb: &str, roll: &str) -> Result<()> {
        let vals = tempfile::NamedTempFile::new()?;
        std::fs::write(vals.path(), values(roll))?;
        helm_ok(&[
            verb,
            RELEASE,
            &repo_root().join("charts/parapet").to_string_lossy(),
            "-n",
            &self.ns,
            "--values",
            &vals.path().to_string_lossy(),
        ])
        .await?;
        Ok(())
    }

    async fn leader(&self) -> Result<Option<String>> {
        let lease = Api::<Lease>::namespaced(self.client.clone(), &self.ns)
            .get_opt("parapet-operator")
            .await?;
        Ok(lease.and_then(|l| l.spec?.holder_identity))
    }

    async fn get(&self, to: SocketAddr, host: &str, path: &str) -> Result<(u16, String)> {
        let reply = tokio::time::timeout(Duration::from_secs(5), self.http.get(to, host, path))
            .await
            .map_err(|_| anyhow!("GET http://{to}{path} (Host {host}) timed out"))??;
        Ok((
            reply.status.as_u16(),
            reply.backend().unwrap_or_default().to_string(),
        ))
    }
}

async fn ready_pods(api: &Api<Pod>, selector: &str) -> Result<BTreeMap<String, IpAddr>> {
    let mut out = BTreeMap::new();
    for p in api.list(&ListParams::default().labels(selector)).await? {
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(status) = &p.status else { continue };
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if let (true, Some(ip)) = (ready, status.pod_ip.as_deref()) {
            out.insert(p.metadata.name.clone().unwrap_or_default(), ip.parse()?);
        }
    }
    Ok(out)
}

async fn deployment_ready(client: &Client, ns: &str, name: &str) -> Result<Option<i32>> {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?;
    let Some(d) = d else { return Ok(None) };
    let want = d.spec.replicas.unwrap_or(1);
    let st = d.status.unwrap_or_default();
    let done = st.observed_generation == d.metadata.generation
        && st.updated_replicas == Some(want)
        && st.ready_replicas == Some(want)
        && st.replicas == Some(want);
    Ok(done.then_some(want))
}

/// The node's crictl, for what only the runtime can tell (a container's process).
fn crictl(args: &[&str]) -> Result<String> {
    let dir = PathBuf::from(std::env::var_os("PARAPET_CLUSTER_DIR").ok_or_else(|| {
        anyhow!("PARAPET_CLUSTER_DIR is not set: run these tests with `make e2e-node`")
    })?);
    let bin = cached_tool("PARAPET_NODE_BIN", "e2e/scripts/build-node.sh", "path")
        .map_err(|e| anyhow!("the node's tools are not available: {e}"))?
        .join("crictl");
    let sock = dir.join("node/containerd/containerd.sock");
    let out = std::process::Command::new(&bin)
        .arg("--runtime-endpoint")
        .arg(format!("unix://{}", sock.display()))
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    ensure!(
        out.status.success(),
        "crictl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The host pid of a pod's container.
fn container_pid(pod: &str, container: &str) -> Result<u32> {
    let id = crictl(&[
        "ps",
        "-q",
        "--pod",
        &pod_sandbox(pod)?,
        "--name",
        container,
        "--state",
        "running",
    ])?;
    let id = id
        .lines()
        .next()
        .ok_or_else(|| anyhow!("no running {container} container in pod {pod}"))?;
    let info: Value = serde_json::from_str(&crictl(&["inspect", "-o", "json", id])?)?;
    info["info"]["pid"]
        .as_u64()
        .map(|p| p as u32)
        .ok_or_else(|| anyhow!("crictl inspect {id} gave no pid"))
}

fn pod_sandbox(pod: &str) -> Result<String> {
    let id = crictl(&["pods", "-q", "--name", pod, "--state", "ready"])?;
    id.lines()
        .next()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no ready sandbox for pod {pod}"))
}

#[tokio::test]
async fn chart_on_a_real_node() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::new(&client, "node-parapet").await?;
    let bank = TestNamespace::new(&client, "node-bank").await?;
    let fleet = Fleet {
        client: client.clone(),
        ns: ns.name().to_string(),
        bank: bank.name().to_string(),
        http: HttpClient::new(),
    };
    install(&fleet).await?;
    requests_reach_the_right_backends(&fleet).await?;
    security_settings_hold(&fleet).await?;
    autoscaling(&fleet).await?;
    chaos(&fleet).await?;
    helm_ok(&[
        "uninstall",
        RELEASE,
        "-n",
        &fleet.ns,
        "--wait",
        "--timeout",
        "120s",
    ])
    .await?;
    Ok(())
}

async fn install(f: &Fleet) -> Result<()> {
    // The backends and the example first: the operator finds them when it starts.
    let backends = std::fs::read_to_string(repo_root().join("examples/banking-backends.yaml"))?
        .replace(
            "image: parapet/sample-backend:0.1.0",
            &format!("image: {}/sample-backend:{}", image_prefix(), image_tag()),
        );
    kubectl_stdin(&["apply", "-n", &f.bank, "-f", "-"], &backends).await?;
    let direct = format!(
        r#"
apiVersion: parapet.dev/v1alpha1
kind: ApiRoute
metadata: {{name: direct}}
spec:
  hosts: [{DIRECT_HOST}]
  rules:
    - name: all
      matches: [{{path: {{type: PathPrefix, value: /}}}}]
      backends: [{{pool: accounts}}]
      retries: {{attempts: 2, retryOn: [ConnectFailure, Reset]}}
"#
    );
    let t0 = Instant::now();
    f.helm("install", "0").await?;
    // The CRDs come with the chart: the example can be applied once they are established.
    wait_for(
        "the chart's CRDs established",
        Duration::from_secs(60),
        || async {
            Ok(kubectl_ok(&[
                "wait",
                "--for=condition=Established",
                "crd/apiroutes.parapet.dev",
                "--timeout=5s",
            ])
            .await
            .ok())
        },
    )
    .await?;
    let example = std::fs::read_to_string(repo_root().join("examples/banking.yaml"))?;
    kubectl_stdin(
        &["apply", "-n", &f.bank, "-f", "-"],
        &format!("{example}\n---\n{direct}"),
    )
    .await?;
    for (ns, d) in [
        (&f.ns, "parapet-operator"),
        (&f.ns, "parapet-dataplane"),
        (&f.bank, "accounts"),
        (&f.bank, "accounts-dr"),
        (&f.bank, "auth"),
    ] {
        wait_for(
            &format!("Deployment {ns}/{d} Ready"),
            Duration::from_secs(180),
            || deployment_ready(&f.client, ns, d),
        )
        .await?;
    }
    figure(
        "helm install to every pod Ready",
        format!("{:.1} s", t0.elapsed().as_secs_f64()),
    );
    // One leader among the two operator pods.
    let operators = ready_pods(&f.pods(), OPERATOR_SELECTOR).await?;
    ensure!(
        operators.len() == 2,
        "want 2 ready operator pods, have {operators:?}"
    );
    let leader = wait_for("an operator leader", Duration::from_secs(60), || async {
        Ok(f.leader().await?.filter(|l| operators.contains_key(l)))
    })
    .await?;
    eprintln!("operator leader: {leader}");
    Ok(())
}

async fn requests_reach_the_right_backends(f: &Fleet) -> Result<()> {
    let pods = f.ready_dataplanes().await?;
    ensure!(
        pods.len() == 2,
        "want the HPA's 2 data-plane pods, have {pods:?}"
    );
    // The table may still be on its way to a pod that turned ready from its state dir; every
    // pod must answer within the deadline.
    for (name, ip) in &pods {
        let to = SocketAddr::new(*ip, 8080);
        wait_for(
            &format!("{name} routes the banking example"),
            Duration::from_secs(30),
            || async {
                let (status, backend) = f.get(to, HOST, "/accounts/7/activity").await?;
                Ok((status == 200
                    && backend.starts_with("accounts-")
                    && !backend.starts_with("accounts-dr-"))
                .then_some(()))
            },
        )
        .await?;
        let (status, backend) = f.get(to, HOST, "/accounts/7/balance").await?;
        ensure!(
            status == 200 && backend.starts_with("accounts-"),
            "{name}: balance answered {status} by {backend:?}"
        );
        let (status, _) = f.get(to, "unknown.example", "/accounts/7/balance").await?;
        ensure!(
            status == 404,
            "{name}: an unknown host answered {status}, want 404"
        );
        let login = tokio::time::timeout(
            Duration::from_secs(5),
            f.http.send(
                to,
                http::Method::POST,
                HOST,
                "/login",
                &[],
                bytes::Bytes::new(),
            ),
        )
        .await
        .map_err(|_| anyhow!("{name}: POST /login timed out"))??;
        let backend = login.backend().unwrap_or_default();
        ensure!(
            login.status == 200 && backend.starts_with("auth-"),
            "{name}: POST /login answered {} by {backend:?}, want 200 from an auth pod",
            login.status
        );
    }
    // Through the Service's ClusterIP (kube-proxy's nftables rules on this machine).
    let svc = kubectl_ok(&[
        "get",
        "service",
        "parapet-dataplane",
        "-n",
        &f.ns,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])
    .await?;
    let vip: IpAddr = svc
        .trim()
        .parse()
        .with_context(|| format!("ClusterIP {svc:?}"))?;
    // kube-proxy programs the Service's rules once its EndpointSlice lists the pods as ready,
    // which can come after the pods themselves answer (until then the VIP refuses).
    wait_for(
        &format!("ClusterIP {vip} answers"),
        Duration::from_secs(30),
        || async {
            f.get(SocketAddr::new(vip, 80), HOST, "/accounts/9/activity")
                .await
                .map(Some)
        },
    )
    .await?;
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        let (status, backend) = f
            .get(SocketAddr::new(vip, 80), HOST, "/accounts/9/activity")
            .await?;
        ensure!(
            status == 200 && backend.starts_with("accounts-"),
            "ClusterIP {vip}: {status} from {backend:?}"
        );
        seen.insert(backend);
    }
    eprintln!("ClusterIP {vip} answered by {seen:?}");
    // Every route is programmed on every pod.
    let objects = [
        ("apiroute", "accounts"),
        ("apiroute", "login"),
        ("apiroute", "direct"),
        ("upstreampool", "accounts"),
        ("upstreampool", "accounts-backup"),
        ("upstreampool", "auth"),
    ];
    for (kind, route) in objects {
        let want = format!("{n}/{n} pods serve", n = pods.len());
        wait_for(&format!("{kind} {route} Programmed on every pod"), Duration::from_secs(30), || async {
            let cond = kubectl_ok(&[
                "get", kind, route, "-n", &f.bank, "-o",
                "jsonpath={.status.conditions[?(@.type==\"Programmed\")].status} {.status.conditions[?(@.type==\"Programmed\")].message}",
            ])
            .await?;
            Ok((cond.starts_with("True ") && cond.contains(&want)).then_some(()))
        })
        .await?;
    }
    Ok(())
}

async fn security_settings_hold(f: &Fleet) -> Result<()> {
    let mut checked = 0;
    for (selector, container) in [
        (DATAPLANE_SELECTOR, "dataplane"),
        (OPERATOR_SELECTOR, "operator"),
    ] {
        for name in ready_pods(&f.pods(), selector).await?.keys() {
            let pid = container_pid(name, container)?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| v.split_whitespace().collect::<Vec<_>>())
                    .unwrap_or_default()
            };
            ensure!(
                field("Uid:").iter().all(|u| *u == "65532"),
                "{name}: Uid {:?}",
                field("Uid:")
            );
            ensure!(
                field("CapEff:") == ["0000000000000000"],
                "{name}: CapEff {:?}",
                field("CapEff:")
            );
            ensure!(
                field("CapBnd:") == ["0000000000000000"],
                "{name}: CapBnd {:?}",
                field("CapBnd:")
            );
            ensure!(
                field("NoNewPrivs:") == ["1"],
                "{name}: NoNewPrivs {:?}",
                field("NoNewPrivs:")
            );
            ensure!(
                field("Seccomp:") == ["2"],
                "{name}: Seccomp {:?} (2 = filter)",
                field("Seccomp:")
            );
            let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
            let root = mounts
                .lines()
                .find(|l| l.split_whitespace().nth(4) == Some("/"))
                .ok_or_else(|| anyhow!("{name}: no root mount"))?;
            ensure!(
                root.split_whitespace()
                    .nth(5)
                    .is_some_and(|o| o.split(',').any(|x| x == "ro")),
                "{name}: the root filesystem is not read-only: {root}"
            );
            checked += 1;
        }
    }
    ensure!(
        checked >= 4,
        "checked {checked} containers, want every operator and data-plane pod"
    );
    Ok(())
}

async fn autoscaling(f: &Fleet) -> Result<()> {
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(f.client.clone(), &f.ns);
    let before = f.ready_dataplanes().await?;
    let endpoints = lb::EndpointWatch::start(f.client.clone(), &f.ns, "parapet-dataplane", "http");
    endpoints
        .wait_until(
            "the data plane's ready endpoints",
            Duration::from_secs(30),
            |e| e.len() == before.len(),
        )
        .await?;
    let cfg = lb::LoadConfig {
        concurrency: 32,
        max_requests: 5_000_000,
        max_duration: Duration::from_secs(150),
        ..lb::LoadConfig::default()
    }
    .host(DIRECT_HOST)
    .path("/accounts/1/activity");
    let t0 = Instant::now();
    let load = lb::Load::spawn(cfg, endpoints.receiver());
    // The first pod the HPA adds, serving: in the ready set (it has the table: readiness
    // needs it) and answering.
    let added = wait_for(
        "the HPA to add a serving data-plane pod",
        Duration::from_secs(150),
        || async {
            for (name, ip) in f.ready_dataplanes().await? {
                if !before.contains_key(&name)
                    && f.get(SocketAddr::new(ip, 8080), DIRECT_HOST, "/x")
                        .await
                        .is_ok_and(|(s, _)| s == 200)
                {
                    return Ok(Some(name));
                }
            }
            Ok(None)
        },
    )
    .await;
    let scale_up = t0.elapsed();
    // Keep the load on until the HPA has settled at more pods, then stop it.
    let grown = wait_for("more data-plane pods", Duration::from_secs(60), || async {
        let n = f.ready_dataplanes().await?.len();
        Ok((n > before.len()).then_some(n))
    })
    .await;
    let report = load.stop_and_wait().await;
    let added = added?;
    let grown = grown?;
    figure(
        "load start to the first added data-plane pod serving",
        format!("{:.1} s ({added})", scale_up.as_secs_f64()),
    );
    figure(
        "data-plane pods under load",
        format!("{} -> {grown}", before.len()),
    );
    figure("scale-up load", &report);
    ensure!(
        report.failed() == 0,
        "requests failed while the HPA scaled up: {report}"
    );
    let hpa = hpas.get("parapet-dataplane").await?;
    eprintln!(
        "HPA status: {:?}",
        hpa.status.map(|s| (s.current_replicas, s.desired_replicas))
    );
    // After the load: back to the minimum.
    let t1 = Instant::now();
    wait_for(
        "the HPA to scale back to 2 pods",
        Duration::from_secs(240),
        || async {
            let ready = f.ready_dataplanes().await?.len();
            let d = deployment_ready(&f.client, &f.ns, "parapet-dataplane").await?;
            Ok((d == Some(2) && ready == 2).then_some(()))
        },
    )
    .await?;
    figure(
        "load end to the HPA's scale-down to 2 pods",
        format!("{:.1} s", t1.elapsed().as_secs_f64()),
    );
    Ok(())
}

/// One chaos case: a light load through the EndpointSlice-following client while `act`
/// disturbs the fleet and `settled` waits for it to recover.
async fn chaos_case<A, S>(f: &Fleet, name: &str, act: A, settled: S) -> Result<lb::Report>
where
    A: std::future::Future<Output = Result<()>>,
    S: std::future::Future<Output = Result<()>>,
{
    let endpoints = lb::EndpointWatch::start(f.client.clone(), &f.ns, "parapet-dataplane", "http");
    endpoints
        .wait_until(
            "the data plane's ready endpoints",
            Duration::from_secs(30),
            |e| !e.is_empty(),
        )
        .await?;
    let cfg = lb::LoadConfig {
        concurrency: 4,
        rate: Some(100.0),
        max_requests: 100_000,
        max_duration: Duration::from_secs(300),
        ..lb::LoadConfig::default()
    }
    .host(DIRECT_HOST)
    .path("/accounts/3/activity");
    let load = lb::Load::spawn(cfg, endpoints.receiver());
    // Answers flow before the disturbance, and go on after the fleet has settled, so a
    // request that would fail on a stale endpoint gets its chance to.
    let answered = |n: u64| {
        let load = &load;
        async move {
            let base = load.snapshot().ok;
            wait_for(
                &format!("{n} more answers"),
                Duration::from_secs(30),
                || async { Ok((load.snapshot().ok >= base + n).then_some(())) },
            )
            .await
        }
    };
    let outcome = async {
        answered(200).await?;
        act.await?;
        settled.await?;
        answered(300).await
    }
    .await;
    let report = load.stop_and_wait().await;
    outcome.with_context(|| format!("chaos case {name}: {report}"))?;
    figure(&format!("chaos {name}"), &report);
    Ok(report)
}

async fn chaos(f: &Fleet) -> Result<()> {
    // Steady state: the HPA's minimum.
    let steady = || async {
        wait_for(
            "the data plane at 2 ready pods",
            Duration::from_secs(180),
            || async {
                let d = deployment_ready(&f.client, &f.ns, "parapet-dataplane").await?;
                Ok((d == Some(2) && f.ready_dataplanes().await?.len() == 2).then_some(()))
            },
        )
        .await
    };

    // (a) A data-plane pod deleted: it turns unready at once, keeps accepting for its
    // shutdown delay, drains, and the Deployment replaces it.
    let victim = f
        .ready_dataplanes()
        .await?
        .into_keys()
        .next()
        .ok_or_else(|| anyhow!("no data-plane pod"))?;
    let a = chaos_case(
        f,
        "(a) delete a data-plane pod",
        async {
            f.pods().delete(&victim, &DeleteParams::default()).await?;
            Ok(())
        },
        async {
            wait_for("the deleted pod gone", Duration::from_secs(60), || async {
                Ok(f.pods().get_opt(&victim).await?.is_none().then_some(()))
            })
            .await?;
            steady().await
        },
    )
    .await?;
    ensure!(
        a.failed() == 0,
        "(a) deleting a data-plane pod failed requests: {a}"
    );

    // (b) SIGKILL of a data-plane process: the requests in flight on it fail, then the
    // EndpointSlice drops it until the restarted container is ready again. Reported.
    let (victim, _) = f
        .ready_dataplanes()
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no data-plane pod"))?;
    let restarts = |pod: Pod| {
        pod.status
            .and_then(|s| s.container_statuses)
            .and_then(|c| c.first().map(|c| c.restart_count))
            .unwrap_or(0)
    };
    let before = restarts(f.pods().get(&victim).await?);
    let b = chaos_case(
        f,
        "(b) SIGKILL a data-plane process",
        async {
            let pid = container_pid(&victim, "dataplane")?;
            let status = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()?;
            ensure!(status.success(), "kill -KILL {pid} failed");
            Ok(())
        },
        async {
            wait_for(
                "the killed container restarted",
                Duration::from_secs(60),
                || async { Ok((restarts(f.pods().get(&victim).await?) > before).then_some(())) },
            )
            .await?;
            steady().await
        },
    )
    .await?;
    eprintln!("(b) SIGKILL: {} of {} requests failed", b.failed(), b.sent);

    // (c) The leading operator deleted: the standby takes the lease; the data plane keeps
    // its table and never notices.
    let leader = f
        .leader()
        .await?
        .ok_or_else(|| anyhow!("no operator leader"))?;
    let c = chaos_case(
        f,
        "(c) delete the leading operator pod",
        async {
            f.pods().delete(&leader, &DeleteParams::default()).await?;
            Ok(())
        },
        async {
            let new = wait_for("a new operator leader", Duration::from_secs(60), || async {
                Ok(f.leader().await?.filter(|l| *l != leader))
            })
            .await?;
            eprintln!("(c) leadership moved from {leader} to {new}");
            wait_for(
                "the operator back to 2 ready pods",
                Duration::from_secs(120),
                || async { deployment_ready(&f.client, &f.ns, "parapet-operator").await },
            )
            .await?;
            Ok(())
        },
    )
    .await?;
    ensure!(
        c.failed() == 0,
        "(c) deleting the leading operator failed requests: {c}"
    );

    // (d) helm upgrade with a changed pod annotation rolls the data plane: surge first
    // (maxUnavailable 0), new pods ready only with the table.
    let d = chaos_case(
        f,
        "(d) helm upgrade rolls the data plane",
        f.helm("upgrade", "1"),
        async {
            wait_for(
                "the rolled data plane",
                Duration::from_secs(180),
                || async {
                    let pods = f
                        .pods()
                        .list(&ListParams::default().labels(DATAPLANE_SELECTOR))
                        .await?;
                    let all_new = pods.items.iter().all(|p| {
                        p.metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get("parapet.dev/test-roll"))
                            .map(String::as_str)
                            == Some("1")
                    });
                    Ok(all_new.then_some(()))
                },
            )
            .await?;
            steady().await
        },
    )
    .await?;
    ensure!(
        d.failed() == 0,
        "(d) rolling the data plane failed requests: {d}"
    );

    // (e) A backend pod deleted: it keeps serving for its shutdown delay while the operator
    // takes it out of the table.
    let backends: Api<Pod> = Api::namespaced(f.client.clone(), &f.bank);
    let victim = ready_pods(&backends, "app=accounts")
        .await?
        .into_keys()
        .next()
        .ok_or_else(|| anyhow!("no accounts pod"))?;
    let e =
        chaos_case(
            f,
            "(e) delete a backend pod",
            async {
                backends.delete(&victim, &DeleteParams::default()).await?;
                Ok(())
            },
            async {
                wait_for(
                    "the deleted backend gone and replaced",
                    Duration::from_secs(90),
                    || async {
                        let gone = backends.get_opt(&victim).await?.is_none();
                        Ok((gone
                            && deployment_ready(&f.client, &f.bank, "accounts").await? == Some(2))
                        .then_some(()))
                    },
                )
                .await?;
                Ok(())
            },
        )
        .await?;
    ensure!(
        e.failed() == 0,
        "(e) deleting a backend pod failed requests: {e}"
    );
    Ok(())
}
