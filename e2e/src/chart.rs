//! Helpers of the chart's tests: render, parse and check what `charts/parapet` produces.

use std::{collections::BTreeSet, path::PathBuf};

use anyhow::{Context as _, Result, anyhow, ensure};
use serde::Deserialize as _;
use serde_json::Value;

use crate::{helm::helm_ok, kubectl_ok, kubectl_stdin, repo_root};

pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/parapet")
}

/// Every non-empty YAML document of a stream.
pub fn documents(yaml: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let value = Value::deserialize(doc)
            .with_context(|| format!("rendered document {} is not valid YAML", i + 1))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

pub fn kind_name(doc: &Value) -> String {
    format!(
        "{}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

pub fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

pub fn one<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .ok_or_else(|| {
            anyhow!(
                "no {kind}/{name} among the rendered objects: {:?}",
                docs.iter().map(kind_name).collect::<Vec<_>>()
            )
        })
}

/// `helm template` of the chart into `ns` with a values file (relative to the chart) and
/// extra `--set`s.
pub async fn template(
    ns: &str,
    values: Option<&str>,
    sets: &[&str],
) -> Result<(String, Vec<Value>)> {
    let chart = chart_dir();
    let chart = chart.to_string_lossy();
    let mut args = vec!["template", "parapet", &chart, "--namespace", ns];
    let values_path;
    if let Some(v) = values {
        values_path = chart_dir().join(v).to_string_lossy().into_owned();
        args.extend(["--values", &values_path]);
    }
    for s in sets {
        args.extend(["--set", s]);
    }
    let yaml = helm_ok(&args).await?;
    let docs = documents(&yaml)?;
    Ok((yaml, docs))
}

/// Validates every document with the real API server (`--dry-run=server`, strict field
/// validation) and checks that kubectl reported each one. Every namespaced object must name
/// its namespace (`ns`, or a watched one): kubectl is given none.
pub async fn server_dry_run(ns: &str, yaml: &str, docs: &[Value]) -> Result<()> {
    const CLUSTER_SCOPED: [&str; 2] = ["ClusterRole", "ClusterRoleBinding"];
    for doc in docs {
        let scoped = CLUSTER_SCOPED.contains(&doc["kind"].as_str().unwrap_or_default());
        let has_ns = doc["metadata"]["namespace"].is_string();
        ensure!(
            scoped != has_ns,
            "{} in {ns}: metadata.namespace is {}",
            kind_name(doc),
            doc["metadata"]["namespace"]
        );
    }
    // The restricted Pod Security Standard, as warnings on the workloads' pod templates (only
    // Pods themselves would be refused; there are none here).
    kubectl_ok(&[
        "label",
        "--overwrite",
        "namespace",
        ns,
        "pod-security.kubernetes.io/warn=restricted",
        "pod-security.kubernetes.io/warn-version=latest",
    ])
    .await?;
    let out = kubectl_stdin(
        &[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-o",
            "name",
            "-f",
            "-",
        ],
        yaml,
    )
    .await?;
    ensure!(
        out.success(),
        "the API server refused rendered objects:\n{}",
        out.stderr.trim()
    );
    ensure!(
        !out.stderr.contains("PodSecurity"),
        "the pod templates break the restricted Pod Security Standard:\n{}",
        out.stderr.trim()
    );
    let accepted = out.stdout.lines().filter(|l| !l.trim().is_empty()).count();
    ensure!(
        accepted == docs.len(),
        "rendered {} documents but the API server accepted {accepted}:\n{}",
        docs.len(),
        out.stdout
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Checks on rendered objects

/// Both Deployments run hardened: non-root, read-only root, no privilege escalation, no
/// capabilities, seccomp RuntimeDefault; the token is mounted read-only in both.
pub fn check_pod_security(deploy: &Value) -> Result<()> {
    let name = kind_name(deploy);
    let pod = &deploy["spec"]["template"]["spec"];
    let psc = &pod["securityContext"];
    ensure!(psc["runAsNonRoot"] == true, "{name}: pod runAsNonRoot");
    ensure!(
        psc["seccompProfile"]["type"] == "RuntimeDefault",
        "{name}: seccomp"
    );
    for c in pod["containers"].as_array().into_iter().flatten() {
        let sc = &c["securityContext"];
        ensure!(
            sc["allowPrivilegeEscalation"] == false,
            "{name}: allowPrivilegeEscalation"
        );
        ensure!(
            sc["readOnlyRootFilesystem"] == true,
            "{name}: readOnlyRootFilesystem"
        );
        ensure!(sc["runAsNonRoot"] == true, "{name}: runAsNonRoot");
        ensure!(
            sc["capabilities"]["drop"] == serde_json::json!(["ALL"]),
            "{name}: capabilities not all dropped: {}",
            sc["capabilities"]
        );
        let mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
        ensure!(
            mounts
                .iter()
                .any(|m| m["mountPath"] == "/etc/parapet/token" && m["readOnly"] == true),
            "{name}: the snapshot token is not mounted read-only at /etc/parapet/token"
        );
        let args: Vec<&str> = c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        ensure!(
            args.contains(&"--snapshot-token-file=/etc/parapet/token/token"),
            "{name}: no --snapshot-token-file: {args:?}"
        );
    }
    Ok(())
}

pub fn args_of(deploy: &Value) -> Vec<String> {
    deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

pub fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{name}=")).map(str::to_string))
}

/// What every values set must render: the wiring between operator and data plane.
pub fn check_common(docs: &[Value], fullname: &str, ns: &str) -> Result<()> {
    let operator = one(docs, "Deployment", &format!("{fullname}-operator"))?;
    let dataplane = one(docs, "Deployment", &format!("{fullname}-dataplane"))?;
    check_pod_security(operator)?;
    check_pod_security(dataplane)?;

    // The operator finds the pods through the headless admin Service.
    let op_args = args_of(operator);
    let admin_name = flag(&op_args, "--dataplane-service")
        .ok_or_else(|| anyhow!("operator without --dataplane-service: {op_args:?}"))?;
    ensure!(flag(&op_args, "--dataplane-namespace").as_deref() == Some(ns));
    ensure!(flag(&op_args, "--metrics-listen").is_some_and(|a| a.starts_with("0.0.0.0:")));
    let admin = one(docs, "Service", &admin_name)?;
    ensure!(
        admin["spec"]["clusterIP"] == "None",
        "admin Service not headless"
    );
    ensure!(admin["spec"]["publishNotReadyAddresses"] == true);
    ensure!(
        admin["spec"]["ports"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "admin")),
        "admin Service has no port named admin"
    );
    ensure!(
        admin["spec"]["selector"] == dataplane["spec"]["selector"]["matchLabels"],
        "admin Service does not select the data-plane pods"
    );
    // Leader election from the downward API.
    let env = &operator["spec"]["template"]["spec"]["containers"][0]["env"];
    for (var, path) in [
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_NAME", "metadata.name"),
    ] {
        ensure!(
            env.as_array().is_some_and(|e| e
                .iter()
                .any(|e| e["name"] == var && e["valueFrom"]["fieldRef"]["fieldPath"] == path)),
            "operator without {var} from {path}"
        );
    }

    // The data plane: listeners, state dir, probes, drain.
    let dp_args = args_of(dataplane);
    for f in ["--listen", "--admin-listen", "--state-dir"] {
        ensure!(flag(&dp_args, f).is_some(), "data plane without {f}");
    }
    let secs = |f: &str| -> Result<i64> {
        let v = flag(&dp_args, f).ok_or_else(|| anyhow!("data plane without {f}"))?;
        v.strip_suffix('s')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow!("{f}={v} is not whole seconds"))
    };
    let drain = secs("--shutdown-delay")? + secs("--drain-timeout")?;
    let pod = &dataplane["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .ok_or_else(|| anyhow!("no terminationGracePeriodSeconds"))?;
    ensure!(
        grace > drain,
        "grace period {grace}s does not exceed shutdown delay + drain timeout {drain}s"
    );
    let c = &pod["containers"][0];
    ensure!(c["readinessProbe"]["httpGet"]["path"] == "/readyz");
    ensure!(c["readinessProbe"]["httpGet"]["port"] == "admin");
    ensure!(c["livenessProbe"]["httpGet"]["path"] == "/healthz");
    ensure!(
        pod["volumes"].as_array().is_some_and(|v| v
            .iter()
            .any(|v| v["name"] == "state" && v["emptyDir"].is_object())),
        "no emptyDir state volume"
    );
    ensure!(pod["automountServiceAccountToken"] == false);

    // The token Secret (generated, or the user's) is what both mount.
    let secret_of = |d: &Value| -> Option<String> {
        d["spec"]["template"]["spec"]["volumes"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == "snapshot-token")
            .and_then(|v| v["secret"]["secretName"].as_str().map(str::to_string))
    };
    ensure!(secret_of(operator).is_some() && secret_of(operator) == secret_of(dataplane));
    Ok(())
}

pub fn topology_keys(deploy: &Value) -> BTreeSet<String> {
    deploy["spec"]["template"]["spec"]["topologySpreadConstraints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["topologyKey"].as_str().map(str::to_string))
        .collect()
}
