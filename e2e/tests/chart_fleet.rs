//! The chart on a simulated fleet: a second control plane with the workload controllers
//! (deployment, replicaset, endpointslice, disruption, HPA), kube-scheduler and kwok nodes in
//! three zones. `helm install --wait` succeeds, the HPA brings the data plane to
//! `minReplicas`, its pods spread over zones and nodes, the namespace enforces the
//! `restricted` Pod Security Standard, and the admin Service's EndpointSlices list every pod.
//! No container runs there; real pods are the `node` tests' job.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Stdio,
    sync::OnceLock,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use parapet_e2e::{
    chart::*,
    helm::{cached_tool, helm_at},
    kubectl_run, repo_root, wait_for,
};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// A simulated fleet: kube-scheduler, the workload controllers and kwok nodes

static KWOK: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// kwok: `PARAPET_KWOK`, else the cached build (built on first use).
fn kwok_bin() -> Result<PathBuf> {
    KWOK.get_or_init(|| cached_tool("PARAPET_KWOK", "e2e/scripts/build-helm.sh", "kwok-path"))
        .clone()
        .map_err(|e| anyhow!("kwok is not available: {e}"))
}

/// kwok's behaviour, ours: nodes turn Ready with room for 110 pods; a pod bound to one is
/// Running and Ready with an address from kwok's --cidr (no container runs, so readiness
/// probes are not evaluated); a deleted pod goes at once.
const KWOK_STAGES: &str = r#"
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: node-ready}
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
      - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
        operator: NotIn
        values: ['True']
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
        - type: Ready
          status: "True"
          reason: KubeletReady
          message: simulated by kwok
          lastHeartbeatTime: {{ $now | Quote }}
          lastTransitionTime: {{ $now | Quote }}
      addresses:
        - type: Hostname
          address: {{ NodeName | Quote }}
      allocatable: {cpu: "8", memory: 32Gi, pods: "110"}
      capacity: {cpu: "8", memory: 32Gi, pods: "110"}
      nodeInfo:
        architecture: amd64
        operatingSystem: linux
        kubeletVersion: kwok
        kubeProxyVersion: kwok
        containerRuntimeVersion: kwok
        kernelVersion: kwok
        osImage: kwok
        machineID: ""
        systemUUID: ""
        bootID: ""
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: pod-running}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
      - key: '.metadata.deletionTimestamp'
        operator: DoesNotExist
      - key: '.status.podIP'
        operator: DoesNotExist
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
        - {type: PodScheduled, status: "True", lastTransitionTime: {{ $now | Quote }}}
        - {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
        - {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
        - {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
      containerStatuses:
      {{ range .spec.containers }}
        - name: {{ .name | Quote }}
          image: {{ .image | Quote }}
          ready: true
          started: true
          restartCount: 0
          state: {running: {startedAt: {{ $now | Quote }}}}
      {{ end }}
      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
      podIP: {{ PodIPWith .spec.nodeName false .metadata.uid .metadata.name .metadata.namespace | Quote }}
      phase: Running
      startTime: {{ $now | Quote }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata: {name: pod-delete}
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
      - key: '.metadata.deletionTimestamp'
        operator: Exists
  next:
    delete: true
"#;

/// The zones of the simulated nodes, two nodes each.
const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

/// A control plane of its own for the fleet test (the shared one runs no workload
/// controllers), with kube-scheduler and kwok; everything stops on drop.
struct SimCluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    children: Vec<tokio::process::Child>,
}

impl SimCluster {
    async fn start() -> Result<Self> {
        let kwok = kwok_bin()?;
        let script = repo_root().join("e2e/scripts/cluster.sh");
        let tools = std::process::Command::new("bash")
            .arg(&script)
            .arg("tools-dir")
            .output()?;
        let tools = PathBuf::from(String::from_utf8_lossy(&tools.stdout).trim());
        let dir = std::env::temp_dir().join(format!("parapet-e2e-fleet-{}", std::process::id()));
        let mut sim = SimCluster {
            kubeconfig: dir.join("kubeconfig"),
            kubectl: tools.join("kubectl"),
            dir: dir.clone(),
            children: Vec::new(),
        };
        let up = tokio::process::Command::new("bash")
            .arg(&script)
            .args(["up", "--owner-pid", &std::process::id().to_string()])
            .env("PARAPET_CLUSTER_DIR", &dir)
            .env(
                "PARAPET_CLUSTER_CONTROLLERS",
                "namespace-controller,garbage-collector-controller,deployment-controller,\
                 replicaset-controller,endpointslice-controller,disruption-controller,\
                 horizontal-pod-autoscaler-controller",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let up = tokio::time::timeout(Duration::from_secs(180), up)
            .await
            .map_err(|_| anyhow!("cluster.sh up did not finish within 180s"))??;
        ensure!(
            up.status.success(),
            "cluster.sh up failed: {}",
            String::from_utf8_lossy(&up.stderr)
        );
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let spawn = |bin: &Path, args: &[String], log: &str| -> Result<tokio::process::Child> {
            let log = std::fs::File::create(logs.join(log))?;
            tokio::process::Command::new(bin)
                .args(args)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start {}", bin.display()))
        };
        let kc = sim.kubeconfig.to_string_lossy().into_owned();
        sim.children.push(spawn(
            &tools.join("kube-scheduler"),
            &[
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=0".into(),
            ],
            "kube-scheduler.log",
        )?);
        let stages = dir.join("kwok-stages.yaml");
        std::fs::write(&stages, KWOK_STAGES)?;
        sim.children.push(spawn(
            &kwok,
            &[
                format!("--kubeconfig={kc}"),
                format!("--config={}", stages.display()),
                "--manage-all-nodes=true".into(),
                "--cidr=10.244.0.0/16".into(),
                "--node-ip=10.245.0.1".into(),
                "--server-address=".into(),
            ],
            "kwok.log",
        )?);
        Ok(sim)
    }

    async fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let mut cmd = tokio::process::Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        let out = kubectl_run(cmd, args, stdin).await?;
        ensure!(
            out.success(),
            "`kubectl {}` failed: {}",
            args.join(" "),
            out.stderr.trim()
        );
        Ok(out.stdout)
    }

    async fn get_json(&self, args: &[&str]) -> Result<Value> {
        let mut all = vec!["get"];
        all.extend(args);
        all.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.kubectl(&all, None).await?)?)
    }

    /// The last lines of a component's log, for failure messages.
    fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join("logs").join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
        let _ = std::process::Command::new("bash")
            .arg(repo_root().join("e2e/scripts/cluster.sh"))
            .arg("down")
            .env("PARAPET_CLUSTER_DIR", &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The chart's Deployments produce Running pods on simulated nodes: the HPA scales the data
/// plane to minReplicas, the pods spread across zones and carry their node's zone label (the
/// source of PARAPET_ZONE), the namespace enforces the restricted Pod Security Standard, the
/// admin Service's EndpointSlices list every data-plane pod on the admin port, and the PDB
/// counts them. No container runs and the pod addresses lead nowhere, so nothing is sent to
/// them: the operator's pushes are covered by the operator's own e2e tests.
#[tokio::test]
async fn chart_fleet_runs_on_simulated_nodes() -> Result<()> {
    let sim = SimCluster::start().await?;
    let kc = sim.kubeconfig.clone().into_os_string();
    for (i, zone) in ZONES.iter().flat_map(|z| [z, z]).enumerate() {
        let name = format!("kwok-{zone}-{}", i % 2);
        let node = format!(
            r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{name}",
            "annotations":{{"kwok.x-k8s.io/node":"fake"}},
            "labels":{{"kubernetes.io/hostname":"{name}","kubernetes.io/os":"linux",
            "type":"kwok","topology.kubernetes.io/zone":"{zone}"}}}}}}"#
        );
        sim.kubectl(&["apply", "-f", "-"], Some(&node)).await?;
    }
    // The API server taints new nodes not-ready; the node lifecycle controller, which would
    // lift the taint once kwok reports them Ready, does not run here (it would also evict
    // pods from nodes whose simulated heartbeats it finds stale).
    wait_for(
        "the kwok nodes to be Ready",
        Duration::from_secs(30),
        || async {
            let nodes = sim.get_json(&["nodes", "-l", "type=kwok"]).await?;
            let ready = nodes["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| {
                    n["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                })
                .count();
            Ok((ready == 2 * ZONES.len()).then_some(()))
        },
    )
    .await?;
    sim.kubectl(
        &[
            "taint",
            "nodes",
            "-l",
            "type=kwok",
            "node.kubernetes.io/not-ready:NoSchedule-",
        ],
        None,
    )
    .await?;
    let ns = "parapet";
    sim.kubectl(&["create", "namespace", ns], None).await?;
    sim.kubectl(
        &[
            "label",
            "namespace",
            ns,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest",
        ],
        None,
    )
    .await?;

    // helm installs the CRDs (a fresh cluster has none) and waits for both Deployments.
    let chart = chart_dir().to_string_lossy().into_owned();
    let out = helm_at(
        &kc,
        &[
            "install",
            "parapet",
            &chart,
            "--namespace",
            ns,
            "--set",
            "dataplane.autoscaling.minReplicas=3",
            "--wait",
            "--timeout",
            "100s",
        ],
    )
    .await?;
    if !out.success {
        let pods = sim
            .kubectl(&["get", "pods", "-A", "-o", "wide"], None)
            .await
            .unwrap_or_default();
        bail!(
            "helm install --wait failed: {}\npods:\n{pods}\nkube-scheduler:\n{}\nkwok:\n{}",
            out.stderr.trim(),
            sim.log_tail("kube-scheduler.log"),
            sim.log_tail("kwok.log")
        );
    }
    sim.kubectl(&["get", "crd", "apiroutes.parapet.dev"], None)
        .await
        .context("helm did not install the CRDs")?;

    // The HPA brings the data plane to minReplicas (no metrics are needed for that).
    let dataplane_selector = "app.kubernetes.io/component=dataplane";
    let pods = wait_for(
        "3 running data-plane pods",
        Duration::from_secs(90),
        || async {
            let pods = sim
                .get_json(&["pods", "-n", ns, "-l", dataplane_selector])
                .await?;
            let items = pods["items"].as_array().cloned().unwrap_or_default();
            let running = items
                .iter()
                .filter(|p| p["status"]["phase"] == "Running" && p["status"]["podIP"].is_string())
                .count();
            Ok((items.len() == 3 && running == 3).then_some(items))
        },
    )
    .await?;
    let operators = sim
        .get_json(&[
            "pods",
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/component=operator",
        ])
        .await?;
    ensure!(
        operators["items"].as_array().map_or(0, Vec::len) == 2,
        "expected 2 operator pods"
    );

    // Zones: each pod runs in a zone and carries that zone as a label.
    let nodes = sim.get_json(&["nodes"]).await?;
    let zone_of_node: BTreeMap<String, String> = nodes["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            Some((
                n["metadata"]["name"].as_str()?.to_string(),
                n["metadata"]["labels"]["topology.kubernetes.io/zone"]
                    .as_str()?
                    .to_string(),
            ))
        })
        .collect();
    let mut zones = BTreeSet::new();
    let mut nodes_used = BTreeSet::new();
    for pod in &pods {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let zone = zone_of_node
            .get(node)
            .ok_or_else(|| anyhow!("{name} runs on unknown node {node:?}"))?;
        let label = &pod["metadata"]["labels"]["topology.kubernetes.io/zone"];
        ensure!(
            label == zone.as_str(),
            "{name} on {node} ({zone}) carries zone label {label}: PARAPET_ZONE would be wrong"
        );
        zones.insert(zone.clone());
        nodes_used.insert(node.to_string());
    }
    ensure!(
        zones.len() == 3 && nodes_used.len() == 3,
        "3 data-plane pods on {nodes_used:?} in {zones:?}: not spread across zones and nodes"
    );

    // The admin Service's EndpointSlices list every pod on the port named admin.
    let pod_ips: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p["status"]["podIP"].as_str().map(str::to_string))
        .collect();
    wait_for(
        "the admin Service's EndpointSlices to list the pods",
        Duration::from_secs(30),
        || async {
            let slices = sim
                .get_json(&[
                    "endpointslices",
                    "-n",
                    ns,
                    "-l",
                    "kubernetes.io/service-name=parapet-dataplane-admin",
                ])
                .await?;
            let mut ips = BTreeSet::new();
            for slice in slices["items"].as_array().into_iter().flatten() {
                if !slice["ports"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p["name"] == "admin" && p["port"] == 9901))
                {
                    continue;
                }
                for e in slice["endpoints"].as_array().into_iter().flatten() {
                    for a in e["addresses"].as_array().into_iter().flatten() {
                        ips.insert(a.as_str().unwrap_or_default().to_string());
                    }
                }
            }
            Ok((ips == pod_ips).then_some(()))
        },
    )
    .await?;

    // The PDB sees the fleet and allows one eviction at a time.
    wait_for(
        "the data-plane PDB to count the pods",
        Duration::from_secs(30),
        || async {
            let pdb = sim
                .get_json(&["pdb", "parapet-dataplane", "-n", ns])
                .await?;
            Ok(
                (pdb["status"]["currentHealthy"] == 3 && pdb["status"]["disruptionsAllowed"] == 1)
                    .then_some(()),
            )
        },
    )
    .await?;
    Ok(())
}
