//! The Helm chart (`charts/parapet`) against a real kube-apiserver.
//!
//! - `helm lint --strict` passes on the defaults and every `ci/*-values.yaml` set;
//! - `helm template` over several values sets renders what each set promises, and every
//!   rendered document is accepted by `kubectl apply --dry-run=server --validate=strict`;
//! - `helm install` creates every object, the operator's ServiceAccount can do what it must
//!   and nothing more, `helm upgrade` keeps the snapshot token, `helm uninstall` removes
//!   everything but the CRDs;
//! - a wrong value is refused by `values.schema.json` with a message naming the value;
//! - the alerts, the recording rules and the dashboard only query metrics the binaries export
//!   (or that the same rule group records); the dashboard has the panels of
//!   `DASHBOARD_PANELS`, the PrometheusRule a p99 alert per route and the 5xx SLO's
//!   burn-rate alerts (`BURN_RATE_ALERTS`).
//!
//! The simulated fleet (kwok nodes) is in `chart_fleet.rs`, the README's values table in
//! `chart_docs.rs`; the helpers they share in `parapet_e2e::chart`.
//!
//! helm is built once from the Go module proxy by `e2e/scripts/build-helm.sh` (or taken from
//! `PARAPET_HELM`), stamped with the test control plane's Kubernetes version, and run with
//! empty config/cache/data homes: it never reaches a repository.
//!
//! The cluster has no Prometheus Operator, so its CRDs are stood in for by minimal ones of
//! our own (`MONITORING_CRDS`): real group, kinds and field names, structural schemas for
//! the fields the chart uses, so the API server's strict field validation still catches a
//! misspelt or misplaced field; the alerts' PromQL is checked here for the metric names only.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use parapet_e2e::{
    TestNamespace, apply_crds,
    chart::*,
    client,
    helm::{helm, helm_ok},
    kubectl, kubectl_ok, kubectl_stdin, repo_root, wait_for,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Stand-ins for the Prometheus Operator CRDs

/// Minimal `monitoring.coreos.com/v1` CRDs with the upstream field names for what the chart
/// uses. Unknown fields are refused by strict validation, as they would be upstream.
const MONITORING_CRDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [selector]
              properties:
                jobLabel: {type: string}
                selector:
                  type: object
                  properties:
                    matchLabels: {type: object, additionalProperties: {type: string}}
                    matchExpressions:
                      type: array
                      items:
                        type: object
                        required: [key, operator]
                        properties:
                          key: {type: string}
                          operator: {type: string}
                          values: {type: array, items: {type: string}}
                namespaceSelector:
                  type: object
                  properties:
                    any: {type: boolean}
                    matchNames: {type: array, items: {type: string}}
                endpoints:
                  type: array
                  items:
                    type: object
                    properties:
                      port: {type: string}
                      targetPort: {x-kubernetes-int-or-string: true}
                      path: {type: string}
                      scheme: {type: string, enum: [http, https, HTTP, HTTPS]}
                      tlsConfig:
                        type: object
                        properties:
                          insecureSkipVerify: {type: boolean}
                          serverName: {type: string}
                      interval: &promduration {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                      scrapeTimeout: *promduration
                      honorLabels: {type: boolean}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: podmonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PodMonitor, listKind: PodMonitorList, plural: podmonitors, singular: podmonitor}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [selector]
              properties:
                jobLabel: {type: string}
                selector:
                  type: object
                  properties:
                    matchLabels: {type: object, additionalProperties: {type: string}}
                    matchExpressions:
                      type: array
                      items:
                        type: object
                        required: [key, operator]
                        properties:
                          key: {type: string}
                          operator: {type: string}
                          values: {type: array, items: {type: string}}
                namespaceSelector:
                  type: object
                  properties:
                    any: {type: boolean}
                    matchNames: {type: array, items: {type: string}}
                podMetricsEndpoints:
                  type: array
                  items:
                    type: object
                    properties:
                      port: {type: string}
                      targetPort: {x-kubernetes-int-or-string: true}
                      path: {type: string}
                      scheme: {type: string, enum: [http, https, HTTP, HTTPS]}
                      tlsConfig:
                        type: object
                        properties:
                          insecureSkipVerify: {type: boolean}
                          serverName: {type: string}
                      interval: &promduration {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                      scrapeTimeout: *promduration
                      honorLabels: {type: boolean}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: prometheusrules.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PrometheusRule, listKind: PrometheusRuleList, plural: prometheusrules, singular: prometheusrule}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                groups:
                  type: array
                  items:
                    type: object
                    required: [name, rules]
                    properties:
                      name: {type: string, minLength: 1}
                      interval: &promduration {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                      rules:
                        type: array
                        items:
                          type: object
                          required: [expr]
                          properties:
                            alert: {type: string}
                            record: {type: string}
                            expr: {x-kubernetes-int-or-string: true}
                            for: *promduration
                            keep_firing_for: *promduration
                            labels: {type: object, additionalProperties: {type: string}}
                            annotations: {type: object, additionalProperties: {type: string}}
"#;

async fn apply_monitoring_crds() -> Result<()> {
    let out = kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=parapet-e2e",
            "--force-conflicts",
            "-f",
            "-",
        ],
        MONITORING_CRDS,
    )
    .await?;
    ensure!(
        out.success(),
        "the stand-in monitoring CRDs were refused: {}",
        out.stderr
    );
    for crd in [
        "servicemonitors.monitoring.coreos.com",
        "podmonitors.monitoring.coreos.com",
        "prometheusrules.monitoring.coreos.com",
    ] {
        kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            &format!("crd/{crd}"),
        ])
        .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn lint_strict_passes_on_every_values_set() -> Result<()> {
    let chart = chart_dir().to_string_lossy().into_owned();
    helm_ok(&["lint", "--strict", &chart]).await?;
    let mut sets = 0;
    for entry in std::fs::read_dir(chart_dir().join("ci"))? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with("-values.yaml") {
            let p = path.to_string_lossy();
            helm_ok(&["lint", "--strict", &chart, "--values", &p]).await?;
            sets += 1;
        }
    }
    ensure!(
        sets >= 5,
        "expected at least 5 ci/*-values.yaml sets, found {sets}"
    );
    Ok(())
}

#[tokio::test]
async fn defaults_render_an_autoscaled_fleet_the_api_server_accepts() -> Result<()> {
    let client = client().await?;
    apply_crds(&client).await?;
    let ns = TestNamespace::new(&client, "chart-defaults").await?;
    let (yaml, docs) = template(ns.name(), None, &[]).await?;
    server_dry_run(ns.name(), &yaml, &docs).await?;
    check_common(&docs, "parapet", ns.name())?;

    let dataplane = one(&docs, "Deployment", "parapet-dataplane")?;
    ensure!(
        dataplane["spec"]["replicas"].is_null(),
        "with an HPA the Deployment must not set replicas (an upgrade would reset the scale)"
    );
    ensure!(
        topology_keys(dataplane)
            == BTreeSet::from([
                "kubernetes.io/hostname".to_string(),
                "topology.kubernetes.io/zone".to_string()
            ])
    );
    let env = &dataplane["spec"]["template"]["spec"]["containers"][0]["env"];
    ensure!(
        env.as_array()
            .is_some_and(|e| e.iter().any(|e| e["name"] == "PARAPET_ZONE"
                && e["valueFrom"]["fieldRef"]["fieldPath"]
                    == "metadata.labels['topology.kubernetes.io/zone']")),
        "PARAPET_ZONE is not taken from the pod's zone label: {env}"
    );
    let hpa = one(&docs, "HorizontalPodAutoscaler", "parapet-dataplane")?;
    ensure!(hpa["apiVersion"] == "autoscaling/v2");
    ensure!(hpa["spec"]["scaleTargetRef"]["name"] == "parapet-dataplane");
    ensure!(hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu");
    ensure!(
        hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
            .as_i64()
            .is_some_and(|s| s >= 300),
        "scale-down is not calm: {}",
        hpa["spec"]["behavior"]
    );
    one(&docs, "PodDisruptionBudget", "parapet-dataplane")?;
    one(&docs, "PodDisruptionBudget", "parapet-operator")?;
    let operator = one(&docs, "Deployment", "parapet-operator")?;
    ensure!(operator["spec"]["replicas"] == 2);
    ensure!(find(&docs, "ClusterRole").len() == 1 && find(&docs, "Role").len() == 1);
    let secret = one(&docs, "Secret", "parapet-snapshot-token")?;
    ensure!(
        secret["data"]["token"]
            .as_str()
            .is_some_and(|t| t.len() >= 48)
    );
    for kind in [
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
    ] {
        ensure!(find(&docs, kind).is_empty(), "{kind} rendered by default");
    }
    check_safe_defaults(&docs, ns.name())
}

/// What the defaults must be: mTLS on the snapshot channel with certificates the operator
/// issues, a NetworkPolicy closing the admin port to all but the operator, only labelled
/// Secrets read, and Secret RBAC in the release namespace for exactly the two it keeps.
fn check_safe_defaults(docs: &[Value], ns: &str) -> Result<()> {
    let dir = "/etc/parapet/snapshot-tls";
    let operator = one(docs, "Deployment", "parapet-operator")?;
    let dataplane = one(docs, "Deployment", "parapet-dataplane")?;
    let op_args = args_of(operator);
    for (f, v) in [
        ("--snapshot-ca-secret", "parapet-snapshot-ca".to_string()),
        ("--snapshot-tls-secret", "parapet-snapshot-tls".to_string()),
        (
            "--dataplane-server-name",
            format!("parapet-dataplane-admin.{ns}.svc"),
        ),
        (
            "--secret-label-selector",
            "parapet.dev/secret=true".to_string(),
        ),
        ("--dataplane-deployment", "parapet-dataplane".to_string()),
    ] {
        ensure!(
            flag(&op_args, f).as_deref() == Some(v.as_str()),
            "operator without {f}={v}: {op_args:?}"
        );
    }
    // The operator's client certificate lives in its memory: it mounts no TLS Secret.
    ensure!(flag(&op_args, "--dataplane-ca").is_none() && flag(&op_args, "--client-key").is_none());
    let mounts = |d: &Value| -> Vec<String> {
        d["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["secret"]["secretName"].as_str().map(str::to_string))
            .collect()
    };
    ensure!(
        !mounts(operator).contains(&"parapet-snapshot-tls".to_string()),
        "the operator mounts the snapshot TLS Secret"
    );
    ensure!(
        mounts(dataplane).contains(&"parapet-snapshot-tls".to_string()),
        "the data plane does not mount the snapshot TLS Secret: {:?}",
        mounts(dataplane)
    );
    let dp_args = args_of(dataplane);
    for f in [
        format!("--admin-tls-cert={dir}/tls.crt"),
        format!("--admin-tls-key={dir}/tls.key"),
        format!("--admin-client-ca={dir}/ca.crt"),
    ] {
        ensure!(dp_args.contains(&f), "data plane lacks {f}: {dp_args:?}");
    }
    let c = &dataplane["spec"]["template"]["spec"]["containers"][0];
    ensure!(c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS");
    ensure!(c["livenessProbe"]["httpGet"]["scheme"] == "HTTPS");

    // The NetworkPolicy: traffic open, the admin port only from the operator's pods.
    let np = one(docs, "NetworkPolicy", "parapet-dataplane")?;
    ensure!(
        np["spec"]["podSelector"]["matchLabels"] == dataplane["spec"]["selector"]["matchLabels"]
    );
    let ingress = np["spec"]["ingress"]
        .as_array()
        .ok_or_else(|| anyhow!("NetworkPolicy without ingress rules"))?;
    let port_of = |r: &Value| {
        r["ports"][0]["port"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let http = ingress
        .iter()
        .find(|r| port_of(r) == "http")
        .ok_or_else(|| anyhow!("no rule for the traffic port: {ingress:?}"))?;
    ensure!(http["from"].is_null(), "traffic is not open to all: {http}");
    let admin = ingress
        .iter()
        .find(|r| port_of(r) == "admin")
        .ok_or_else(|| anyhow!("no rule for the admin port: {ingress:?}"))?;
    ensure!(
        admin["from"]
            == json!([{"podSelector": {"matchLabels": operator["spec"]["selector"]["matchLabels"]}}]),
        "the admin port admits more than the operator: {}",
        admin["from"]
    );
    ensure!(ingress.len() == 2, "{ingress:?}");

    // Secret RBAC: list/watch cluster-wide (labels cannot be granted), write access for
    // the Gateway fleets' copies of the snapshot credentials, and in the release namespace
    // create (unnamed, as Kubernetes requires) plus get/update of the two Secrets.
    let cluster_role = one(docs, "ClusterRole", &format!("{ns}-parapet-operator"))?;
    let secret_rules = |role: &Value| -> Vec<Value> {
        role["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["resources"]
                    .as_array()
                    .is_some_and(|x| x.contains(&json!("secrets")))
            })
            .cloned()
            .collect()
    };
    ensure!(
        secret_rules(cluster_role)
            == [
                json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}),
                json!({"apiGroups": [""], "resources": ["services", "serviceaccounts", "secrets"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}),
            ],
        "{:?}",
        secret_rules(cluster_role)
    );
    let role = one(docs, "Role", "parapet-operator")?;
    ensure!(
        secret_rules(role)
            == [
                json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}),
                json!({"apiGroups": [""], "resources": ["secrets"],
                    "resourceNames": ["parapet-snapshot-ca", "parapet-snapshot-tls"],
                    "verbs": ["get", "update"]}),
            ],
        "{:?}",
        secret_rules(role)
    );
    // Gateway API status, written by update or patch; ReferenceGrants have none.
    ensure!(
        cluster_role["rules"]
            .as_array()
            .is_some_and(|rules| rules.contains(&json!({
            "apiGroups": ["gateway.networking.k8s.io"],
            "resources": ["gatewayclasses/status", "gateways/status", "httproutes/status",
                "grpcroutes/status"],
            "verbs": ["update", "patch"]}))),
        "{}",
        cluster_role["rules"]
    );
    // And a rolling restart of the data plane (after a renewal), of that Deployment only.
    ensure!(
        role["rules"]
            .as_array()
            .is_some_and(|rules| rules.contains(&json!({
            "apiGroups": ["apps"], "resources": ["deployments"],
            "resourceNames": ["parapet-dataplane"], "verbs": ["patch"]}))),
        "{}",
        role["rules"]
    );
    Ok(())
}

/// Scheduled backups: a CronJob running `parapet backup` onto a claim that outlives the
/// release, under a ServiceAccount that reads and never writes (Secrets only with a
/// recipient to encrypt them to).
#[tokio::test]
async fn backups_render_a_cronjob_that_only_reads() -> Result<()> {
    let client = client().await?;
    apply_crds(&client).await?;
    let ns = TestNamespace::new(&client, "chart-backup").await?;
    let (_, defaults) = template(ns.name(), None, &[]).await?;
    ensure!(
        find(&defaults, "CronJob").is_empty(),
        "backups are on by default"
    );

    let (yaml, docs) = template(ns.name(), Some("ci/backup-values.yaml"), &[]).await?;
    server_dry_run(ns.name(), &yaml, &docs).await?;
    check_common(&docs, "parapet", ns.name())?;
    let cron = one(&docs, "CronJob", "parapet-backup")?;
    ensure!(
        cron["spec"]["schedule"] == "30 1 * * *" && cron["spec"]["timeZone"] == "Europe/Zurich"
    );
    ensure!(cron["spec"]["concurrencyPolicy"] == "Forbid");
    let template_ = &cron["spec"]["jobTemplate"]["spec"]["template"];
    let pod = &template_["spec"];
    ensure!(pod["serviceAccountName"] == "parapet-backup");
    ensure!(pod["securityContext"]["runAsNonRoot"] == true);
    ensure!(pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault");
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    ensure!(sc["allowPrivilegeEscalation"] == false && sc["readOnlyRootFilesystem"] == true);
    ensure!(sc["capabilities"]["drop"] == json!(["ALL"]));
    // A backup reads the API; it has no business with the snapshot token.
    ensure!(
        !pod.to_string().contains("snapshot-token"),
        "the backup pod mounts the snapshot token"
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let want = [
        format!("--operator-namespace={}", ns.name()),
        "backup".into(),
        "--output-dir=/backups".into(),
        "--keep=7".into(),
        "--namespace=shop,bank".into(),
        "--recipient=age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p".into(),
    ];
    ensure!(args == want, "backup args {args:?}");
    ensure!(
        c["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("parapet/cli:")),
        "backup image {}",
        c["image"]
    );
    ensure!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "parapet-backups");
    let pvc = one(&docs, "PersistentVolumeClaim", "parapet-backups")?;
    ensure!(pvc["spec"]["resources"]["requests"]["storage"] == "2Gi");
    ensure!(pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep");

    let verbs = |docs: &[Value]| -> Result<BTreeMap<String, BTreeSet<String>>> {
        let role = one(docs, "ClusterRole", "parapet-backup")?;
        let mut out = BTreeMap::<String, BTreeSet<String>>::new();
        for rule in role["rules"].as_array().into_iter().flatten() {
            for r in rule["resources"].as_array().into_iter().flatten() {
                for v in rule["verbs"].as_array().into_iter().flatten() {
                    out.entry(r.as_str().unwrap_or("").into())
                        .or_default()
                        .insert(v.as_str().unwrap_or("").into());
                }
            }
        }
        Ok(out)
    };
    let with_secrets = verbs(&docs)?;
    ensure!(
        with_secrets
            .values()
            .flatten()
            .all(|v| v == "get" || v == "list"),
        "the backup role writes: {with_secrets:?}"
    );
    ensure!(
        with_secrets
            .get("secrets")
            .is_some_and(|v| v.len() == 1 && v.contains("get"))
    );
    ensure!(
        with_secrets
            .get("apiroutes")
            .is_some_and(|v| v.contains("list"))
    );

    // No recipient, no Secrets: neither in the backups nor in the role; an existing claim
    // is used as it is.
    let (_, docs) = template(
        ns.name(),
        Some("ci/backup-values.yaml"),
        &[
            "backup.recipient=",
            "backup.persistence.existingClaim=vault",
        ],
    )
    .await?;
    ensure!(
        !verbs(&docs)?.contains_key("secrets"),
        "the role reads Secrets without a recipient"
    );
    let cron = one(&docs, "CronJob", "parapet-backup")?;
    let pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    ensure!(
        !pod["containers"][0]["args"]
            .to_string()
            .contains("--recipient")
    );
    ensure!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "vault");
    ensure!(find(&docs, "PersistentVolumeClaim").is_empty());
    Ok(())
}

#[tokio::test]
async fn autoscaling_off_renders_fixed_replicas() -> Result<()> {
    let client = client().await?;
    apply_crds(&client).await?;
    let ns = TestNamespace::new(&client, "chart-fixed").await?;
    let (yaml, docs) = template(ns.name(), Some("ci/autoscaling-off-values.yaml"), &[]).await?;
    server_dry_run(ns.name(), &yaml, &docs).await?;
    check_common(&docs, "parapet", ns.name())?;
    ensure!(find(&docs, "HorizontalPodAutoscaler").is_empty());
    ensure!(one(&docs, "Deployment", "parapet-dataplane")?["spec"]["replicas"] == 3);
    Ok(())
}

#[tokio::test]
async fn edge_values_render_a_load_balancer_with_tls_and_two_metrics() -> Result<()> {
    let client = client().await?;
    apply_crds(&client).await?;
    let ns = TestNamespace::new(&client, "chart-edge").await?;
    let (yaml, docs) = template(ns.name(), Some("ci/edge-values.yaml"), &[]).await?;
    server_dry_run(ns.name(), &yaml, &docs).await?;
    check_common(&docs, "edge", ns.name())?;
    // The user's token Secret: none generated.
    ensure!(find(&docs, "Secret").is_empty());
    let svc = one(&docs, "Service", "edge-dataplane")?;
    ensure!(svc["spec"]["type"] == "LoadBalancer");
    ensure!(svc["spec"]["externalTrafficPolicy"] == "Local");
    ensure!(svc["spec"]["ports"][0]["name"] == "https");
    let dp = one(&docs, "Deployment", "edge-dataplane")?;
    let args = args_of(dp);
    ensure!(flag(&args, "--tls-cert").is_some() && args.contains(&"--access-log".into()));
    ensure!(dp["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 90);
    let image = dp["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        image == "registry.example.com/platform/parapet/dataplane:0.1.0",
        "{image}"
    );
    let op = one(&docs, "Deployment", "edge-operator")?;
    let op_image = op["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default();
    ensure!(op_image.contains("@sha256:"), "{op_image}");
    let hpa = one(&docs, "HorizontalPodAutoscaler", "edge-dataplane")?;
    let types: Vec<&str> = hpa["spec"]["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["type"].as_str())
        .collect();
    ensure!(types == ["Resource", "Pods"], "{types:?}");
    Ok(())
}

#[tokio::test]
async fn watch_namespaces_render_namespaced_roles_only() -> Result<()> {
    let client = client().await?;
    apply_crds(&client).await?;
    let ns = TestNamespace::new(&client, "chart-scoped").await?;
    let team_a = TestNamespace::new(&client, "chart-team-a").await?;
    let team_b = TestNamespace::new(&client, "chart-team-b").await?;
    let set = format!("watchNamespaces={{{},{}}}", team_a.name(), team_b.name());
    let (yaml, docs) =
        template(ns.name(), Some("ci/watch-namespaces-values.yaml"), &[&set]).await?;
    server_dry_run(ns.name(), &yaml, &docs).await?;
    check_common(&docs, "parapet", ns.name())?;
    ensure!(find(&docs, "ClusterRole").is_empty() && find(&docs, "ClusterRoleBinding").is_empty());
    let role_namespaces: BTreeSet<&str> = find(&docs, "Role")
        .iter()
        .filter_map(|r| r["metadata"]["namespace"].as_str())
        .collect();
    ensure!(
        role_namespaces == BTreeSet::from([ns.name(), team_a.name(), team_b.name()]),
        "{role_namespaces:?}"
    );
    let op_args = args_of(one(&docs, "Deployment", "parapet-operator")?);
    ensure!(
        flag(&op_args, "--watch-namespaces")
            == Some(format!("{},{}", team_a.name(), team_b.name()))
    );
    Ok(())
}

#[tokio::test]
async fn snapshot_tls_mounts_the_secret_and_switches_to_https() -> Result<()> {
    let client = client().await?;
    apply_crds(&client).await?;
    apply_monitoring_crds().await?;
    let ns = TestNamespace::new(&client, "chart-snapshot-tls").await?;
    let (yaml, docs) = template(ns.name(), Some("ci/snapshot-tls-values.yaml"), &[]).await?;
    server_dry_run(ns.name(), &yaml, &docs).await?;
    check_common(&docs, "parapet", ns.name())?;

    let dir = "/etc/parapet/snapshot-tls";
    let mounts_secret = |d: &Value| -> bool {
        let pod = &d["spec"]["template"]["spec"];
        pod["volumes"].as_array().is_some_and(|v| {
            v.iter().any(|v| {
                v["name"] == "snapshot-tls" && v["secret"]["secretName"] == "parapet-snapshot-tls"
            })
        }) && pod["containers"][0]["volumeMounts"]
            .as_array()
            .is_some_and(|m| {
                m.iter().any(|m| {
                    m["name"] == "snapshot-tls" && m["mountPath"] == dir && m["readOnly"] == true
                })
            })
    };
    let args_of = |d: &Value| -> Vec<String> {
        d["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect()
    };
    let dataplane = one(&docs, "Deployment", "parapet-dataplane")?;
    let operator = one(&docs, "Deployment", "parapet-operator")?;
    ensure!(
        mounts_secret(dataplane),
        "the data plane does not mount the TLS Secret"
    );
    ensure!(
        mounts_secret(operator),
        "the operator does not mount the TLS Secret"
    );
    let dp_args = args_of(dataplane);
    for flag in [
        format!("--admin-tls-cert={dir}/tls.crt"),
        format!("--admin-tls-key={dir}/tls.key"),
        format!("--admin-client-ca={dir}/ca.crt"),
    ] {
        ensure!(
            dp_args.contains(&flag),
            "data plane lacks {flag}: {dp_args:?}"
        );
    }
    let op_args = args_of(operator);
    for flag in [
        format!("--dataplane-ca={dir}/ca.crt"),
        format!("--client-cert={dir}/tls.crt"),
        format!("--client-key={dir}/tls.key"),
        format!(
            "--dataplane-server-name=parapet-dataplane-admin.{}.svc",
            ns.name()
        ),
    ] {
        ensure!(
            op_args.contains(&flag),
            "operator lacks {flag}: {op_args:?}"
        );
    }
    ensure!(
        !op_args
            .iter()
            .any(|a| a.starts_with("--snapshot-ca-secret")),
        "the operator issues certificates although the user gave a Secret: {op_args:?}"
    );
    let c = &dataplane["spec"]["template"]["spec"]["containers"][0];
    ensure!(c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS");
    ensure!(c["livenessProbe"]["httpGet"]["scheme"] == "HTTPS");
    // Nothing to create: no Secret RBAC in the release namespace.
    ensure!(
        !one(&docs, "Role", "parapet-operator")?["rules"]
            .to_string()
            .contains("secrets"),
        "the operator may create Secrets although it issues none"
    );

    let sm = one(&docs, "ServiceMonitor", "parapet-dataplane")?;
    ensure!(sm["spec"]["endpoints"][0]["scheme"] == "https");
    let pm = one(&docs, "PodMonitor", "parapet")?;
    for e in pm["spec"]["podMetricsEndpoints"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let https = e["scheme"] == "https";
        ensure!(https == (e["port"] == "admin"), "PodMonitor endpoint {e}");
    }

    // Turned off: plain HTTP, no extra mounts or flags, no NetworkPolicy, every Secret.
    let (yaml, docs) = template(ns.name(), Some("ci/plain-values.yaml"), &[]).await?;
    server_dry_run(ns.name(), &yaml, &docs).await?;
    check_common(&docs, "parapet", ns.name())?;
    ensure!(find(&docs, "NetworkPolicy").is_empty());
    let op_args = args_of(one(&docs, "Deployment", "parapet-operator")?);
    ensure!(
        !op_args.iter().any(|a| a.starts_with("--snapshot-ca-secret")
            || a.starts_with("--snapshot-tls-secret")
            || a.starts_with("--dataplane-ca")
            || a.starts_with("--dataplane-server-name")),
        "{op_args:?}"
    );
    ensure!(flag(&op_args, "--secret-label-selector").as_deref() == Some(""));
    let dataplane = one(&docs, "Deployment", "parapet-dataplane")?;
    ensure!(!mounts_secret(dataplane));
    ensure!(
        !args_of(dataplane)
            .iter()
            .any(|a| a.starts_with("--admin-tls"))
    );
    ensure!(
        dataplane["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
            ["scheme"]
            .is_null()
    );
    Ok(())
}

/// A stand-in for cert-manager's Certificate CRD (the real one is large; the test only
/// needs the API server to know the kind).
const CERT_MANAGER_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: certificates.cert-manager.io}
spec:
  group: cert-manager.io
  names: {kind: Certificate, listKind: CertificateList, plural: certificates, singular: certificate}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [secretName, issuerRef]
              properties:
                secretName: {type: string}
                commonName: {type: string}
                dnsNames: {type: array, items: {type: string}}
                usages: {type: array, items: {type: string}}
                duration: {type: string}
                renewBefore: {type: string}
                privateKey: {type: object, x-kubernetes-preserve-unknown-fields: true}
                issuerRef:
                  type: object
                  required: [name]
                  properties:
                    name: {type: string}
                    kind: {type: string}
                    group: {type: string}
"#;

#[tokio::test]
async fn cert_manager_issues_the_snapshot_certificate_when_asked() -> Result<()> {
    let client = client().await?;
    apply_crds(&client).await?;
    let out = kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=parapet-e2e",
            "--force-conflicts",
            "-f",
            "-",
        ],
        CERT_MANAGER_CRD,
    )
    .await?;
    ensure!(
        out.success(),
        "the stand-in Certificate CRD was refused: {}",
        out.stderr
    );
    kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/certificates.cert-manager.io",
    ])
    .await?;
    let ns = TestNamespace::new(&client, "chart-cert-manager").await?;
    let (yaml, docs) = template(
        ns.name(),
        Some("ci/snapshot-tls-cert-manager-values.yaml"),
        &[],
    )
    .await?;
    server_dry_run(ns.name(), &yaml, &docs).await?;
    check_common(&docs, "parapet", ns.name())?;
    let name = format!("parapet-dataplane-admin.{}.svc", ns.name());
    let cert = one(&docs, "Certificate", "parapet-snapshot-tls")?;
    ensure!(cert["spec"]["secretName"] == "parapet-snapshot-tls");
    ensure!(cert["spec"]["dnsNames"] == json!([name]));
    let usages = cert["spec"]["usages"].to_string();
    ensure!(
        usages.contains("server auth") && usages.contains("client auth"),
        "{usages}"
    );
    ensure!(cert["spec"]["issuerRef"] == json!({"name": "platform-ca", "kind": "ClusterIssuer"}));
    // Both components mount what cert-manager writes; the operator issues nothing.
    let op_args = args_of(one(&docs, "Deployment", "parapet-operator")?);
    ensure!(
        flag(&op_args, "--client-cert").as_deref() == Some("/etc/parapet/snapshot-tls/tls.crt")
            && flag(&op_args, "--snapshot-ca-secret").is_none(),
        "{op_args:?}"
    );
    ensure!(
        !one(&docs, "Role", "parapet-operator")?["rules"]
            .to_string()
            .contains("secrets")
    );
    Ok(())
}

/// Panels the dashboard must have, each with a metric (or matcher) one of its queries reads.
const DASHBOARD_PANELS: [(&str, &str); 10] = [
    (
        "p99 latency by route",
        "parapet_request_duration_seconds_bucket",
    ),
    ("Retries by route", "parapet_retries_total"),
    ("Retries not sent", "parapet_retries_denied_total"),
    ("Hedges", "parapet_hedges_won_total"),
    ("Failovers to backup pools", "parapet_failover_active"),
    ("Outlier ejections", "parapet_outlier_ejections_total"),
    (
        "Circuit breaker overflows",
        "parapet_circuit_breaker_overflows_total",
    ),
    ("Rate-limit refusals", "reason=\"rate_limited\""),
    (
        "Cache hit ratio by CachePolicy",
        "parapet_cache_lookups_total",
    ),
    ("Cache lookups by result", "parapet_cache_lookups_total"),
];

/// The windows the 5xx ratio is recorded over, and the burn-rate alerts that read them
/// (Google SRE workbook, multiwindow multi-burn-rate): long window, short window, burn
/// factor, severity.
const SLO_WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];
const BURN_RATE_ALERTS: [(&str, &str, &str, &str); 4] = [
    ("1h", "5m", "14.4", "critical"),
    ("6h", "30m", "6", "critical"),
    ("1d", "2h", "3", "warning"),
    ("3d", "6h", "1", "warning"),
];

#[tokio::test]
async fn observability_renders_monitors_rules_and_a_dashboard() -> Result<()> {
    let client = client().await?;
    apply_crds(&client).await?;
    apply_monitoring_crds().await?;
    let ns = TestNamespace::new(&client, "chart-observability").await?;
    let (yaml, docs) = template(ns.name(), Some("ci/observability-values.yaml"), &[]).await?;
    server_dry_run(ns.name(), &yaml, &docs).await?;
    check_common(&docs, "parapet", ns.name())?;

    ensure!(find(&docs, "ServiceMonitor").len() == 2);
    ensure!(find(&docs, "PodMonitor").len() == 1);
    ensure!(find(&docs, "NetworkPolicy").len() == 2);
    let dashboard = one(&docs, "ConfigMap", "parapet-dashboard")?;
    ensure!(dashboard["metadata"]["labels"]["grafana_dashboard"] == "1");
    let json: Value = serde_json::from_str(
        dashboard["data"]["parapet.json"]
            .as_str()
            .ok_or_else(|| anyhow!("the dashboard ConfigMap has no parapet.json"))?,
    )
    .context("the dashboard is not valid JSON")?;
    check_dashboard(&json)?;

    let rule = one(&docs, "PrometheusRule", "parapet")?;
    let scope = format!("namespace=\"{}\"", ns.name());
    let mut alerts: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    let mut records: BTreeMap<String, &Value> = BTreeMap::new();
    for group in rule["spec"]["groups"].as_array().into_iter().flatten() {
        let group_name = group["name"].as_str().unwrap_or_default();
        let rules = group["rules"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        // A group's rules run in order, so its alerts may read what it records; another
        // group's records could be one evaluation behind.
        let recorded: BTreeSet<String> = rules
            .iter()
            .filter_map(|r| r["record"].as_str().map(String::from))
            .collect();
        let mut exprs = Vec::new();
        for r in rules {
            let expr = r["expr"].as_str().unwrap_or_default();
            let name = r["record"]
                .as_str()
                .or_else(|| r["alert"].as_str())
                .ok_or_else(|| anyhow!("a rule of {group_name} neither records nor alerts"))?;
            ensure!(
                expr.contains(&scope),
                "{name} is not scoped to the release namespace: {expr}"
            );
            exprs.push(expr.to_string());
            if r["record"].is_string() {
                ensure!(r["alert"].is_null(), "{name} both records and alerts");
                ensure!(
                    records.insert(name.to_string(), r).is_none(),
                    "{name} is recorded twice"
                );
                ensure!(
                    rules.iter().any(|a| a["alert"].is_string()
                        && metric_references(a["expr"].as_str().unwrap_or_default())
                            .contains(&name.to_string())),
                    "{name} is recorded but no alert of {group_name} reads it"
                );
                continue;
            }
            ensure!(
                r["labels"]["team"] == "platform",
                "{name}: no additional label"
            );
            ensure!(
                ["critical", "warning", "info"]
                    .contains(&r["labels"]["severity"].as_str().unwrap_or_default()),
                "{name}: severity {}",
                r["labels"]["severity"]
            );
            ensure!(
                r["annotations"]["summary"].is_string(),
                "{name}: no summary"
            );
            alerts.entry(name.to_string()).or_default().push(r);
        }
        check_metric_names(&exprs, &recorded)
            .with_context(|| format!("rule group {group_name}"))?;
    }
    for (alert, needle) in [
        ("ParapetDataplaneWithoutTable", "parapet_snapshot_version"),
        ("ParapetDataplaneOutOfSync", "parapet_operator_pods_in_sync"),
        (
            "ParapetRouteP99LatencyHigh",
            "parapet_request_duration_seconds_bucket",
        ),
        (
            "ParapetPoolAllEndpointsEjected",
            "parapet_panic_requests_total",
        ),
        ("ParapetCacheHitRatioLow", "parapet_cache_lookups_total"),
        ("ParapetOperatorNotLeading", "parapet_operator_leader"),
    ] {
        let expr = match alerts.get(alert).map(Vec::as_slice) {
            Some([r]) => r["expr"].as_str().unwrap_or_default(),
            other => bail!("expected one alert {alert}, found {other:?}"),
        };
        ensure!(expr.contains(needle), "{alert}: {expr}");
    }
    // Only the leader's view of the fleet counts (standbys report no pods in sync).
    ensure!(
        alerts["ParapetDataplaneOutOfSync"][0]["expr"]
            .as_str()
            .is_some_and(|e| e.contains("parapet_operator_leader"))
    );

    // The p99 of each route, with the threshold, duration and minimum rate of the values.
    let p99 = alerts["ParapetRouteP99LatencyHigh"][0];
    let expr = p99["expr"].as_str().unwrap_or_default();
    for needle in [
        "histogram_quantile(0.99,",
        "sum by (namespace, route, le) (rate(parapet_request_duration_seconds_bucket{",
        ") > 0.5\n",
        "and on (namespace, route)",
        "sum by (namespace, route) (rate(parapet_request_duration_seconds_count{",
    ] {
        ensure!(
            expr.contains(needle),
            "ParapetRouteP99LatencyHigh lacks {needle:?}: {expr}"
        );
    }
    ensure!(
        expr.trim_end().ends_with(") > 2"),
        "ParapetRouteP99LatencyHigh has no minimum request rate: {expr}"
    );
    ensure!(
        p99["for"] == "15m",
        "ParapetRouteP99LatencyHigh: for {}",
        p99["for"]
    );

    // The 5xx SLO: the ratio over every window, and each burn-rate pair on the objective of
    // the values (0.995), both windows above the factor.
    for w in SLO_WINDOWS {
        let name = format!("namespace:parapet_requests_5xx:ratio_rate{w}");
        let expr = records
            .get(&name)
            .ok_or_else(|| anyhow!("no recording rule {name}: {:?}", records.keys()))?["expr"]
            .as_str()
            .unwrap_or_default();
        ensure!(
            expr.contains(",code=\"5xx\"}")
                && expr.contains("parapet_requests_total")
                && expr.matches(&format!("[{w}]")).count() == 2,
            "{name} is not the 5xx ratio over {w}: {expr}"
        );
    }
    ensure!(records.len() == SLO_WINDOWS.len(), "{:?}", records.keys());
    let burns = alerts
        .get("ParapetErrorBudgetBurn")
        .ok_or_else(|| anyhow!("no ParapetErrorBudgetBurn: {:?}", alerts.keys()))?;
    ensure!(burns.len() == BURN_RATE_ALERTS.len(), "{burns:?}");
    for (long, short, factor, severity) in BURN_RATE_ALERTS {
        let r = burns
            .iter()
            .find(|r| r["labels"]["long_window"] == long && r["labels"]["short_window"] == short)
            .ok_or_else(|| anyhow!("no burn-rate alert over {long} and {short}"))?;
        ensure!(r["labels"]["severity"] == severity, "{long}/{short}: {r}");
        let expr = r["expr"].as_str().unwrap_or_default();
        let over = |w: &str| {
            format!(
                "namespace:parapet_requests_5xx:ratio_rate{w}{{{scope}}} > ({factor} * (1 - 0.995))"
            )
        };
        let [first, second] = expr.split("\nand\n").collect::<Vec<_>>()[..] else {
            bail!("the {long}/{short} burn-rate alert is not two conditions joined by and: {expr}");
        };
        ensure!(
            first.trim() == over(long) && second.trim() == over(short),
            "the {long}/{short} burn-rate alert is not {} and {}: {expr}",
            over(long),
            over(short)
        );
    }
    Ok(())
}

/// Panel ids are unique, every query is scoped to the chosen namespace and reads only
/// exported metrics, and the panels of `DASHBOARD_PANELS` are there.
fn check_dashboard(json: &Value) -> Result<()> {
    let mut ids = BTreeSet::new();
    let mut queries: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for panel in json["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or_default();
        ensure!(
            ids.insert(panel["id"].as_i64()),
            "panel id {} is used twice ({title})",
            panel["id"]
        );
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            ensure!(
                expr.contains("namespace=\"$namespace\""),
                "{title}: a query not scoped to the chosen namespace: {expr}"
            );
            queries
                .entry(title.to_string())
                .or_default()
                .push(expr.to_string());
        }
    }
    for (title, needle) in DASHBOARD_PANELS {
        let exprs = queries
            .get(title)
            .ok_or_else(|| anyhow!("no panel {title:?} with queries: {:?}", queries.keys()))?;
        ensure!(
            exprs.iter().any(|e| e.contains(needle)),
            "no query of {title:?} reads {needle}: {exprs:?}"
        );
    }
    // The refusals panel filters on a reason: it must be the one the data plane counts.
    let mut sources = Vec::new();
    rust_sources(&repo_root().join("dataplane/src"), &mut sources)?;
    ensure!(
        sources
            .iter()
            .any(|f| std::fs::read_to_string(f).is_ok_and(|s| s.contains("\"rate_limited\""))),
        "the data plane no longer counts rate-limit refusals as reason=\"rate_limited\""
    );
    let exprs: Vec<String> = queries.into_values().flatten().collect();
    ensure!(exprs.len() >= 25, "only {} dashboard queries", exprs.len());
    check_metric_names(&exprs, &BTreeSet::new())
}

/// The metric names registered in Rust sources: the first string literal after each
/// `register(`, `reg!(` or `reg(<registry>,`.
fn registered_names(src: &str, prefix: &str, names: &mut BTreeSet<String>) {
    for marker in ["register(", "reg!(", "reg("] {
        for (at, _) in src.match_indices(marker) {
            // Not the tail of a longer name (`register(` contains no `reg(`, but `xreg(` does).
            if src[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                continue;
            }
            let mut rest = src[at + marker.len()..].trim_start();
            if !rest.starts_with('"') {
                // `reg(r, "name", ...)`: skip the registry argument.
                let ident: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = rest[ident.len()..].trim_start();
                match rest.strip_prefix(',') {
                    Some(r) if !ident.is_empty() => rest = r.trim_start(),
                    _ => continue,
                }
            }
            if let Some(lit) = rest.strip_prefix('"')
                && let Some(end) = lit.find('"')
            {
                names.insert(format!("{prefix}_{}", &lit[..end]));
            }
        }
    }
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rust_sources(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Every metric name the data plane (`parapet_`) and the operator (`parapet_operator_`)
/// register.
fn exported_metrics() -> Result<BTreeSet<String>> {
    let root = repo_root();
    let mut names = BTreeSet::new();
    for (dir, prefix) in [
        ("dataplane/src", "parapet"),
        ("operator/src", "parapet_operator"),
    ] {
        let mut files = Vec::new();
        rust_sources(&root.join(dir), &mut files)?;
        for file in files {
            let src = std::fs::read_to_string(&file)?;
            registered_names(&src, prefix, &mut names);
        }
    }
    for expected in ["parapet_requests", "parapet_operator_leader"] {
        ensure!(
            names.contains(expected),
            "the metric scan missed {expected}: {names:?}"
        );
    }
    Ok(names)
}

/// The metric names a PromQL expression reads: the identifiers outside strings, label
/// matchers and ranges that start with `parapet_` or hold a `:` (a recording rule's
/// `level:metric:operations`).
fn metric_references(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut escaped = false;
    let mut depth = 0usize;
    for c in expr.chars().chain([' ']) {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        if depth == 0 && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("parapet_") || word.contains(':') {
            out.push(std::mem::take(&mut word));
        }
        word.clear();
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    out
}

/// Every metric a query reads is one the binaries export (with the suffixes Prometheus
/// adds: `_total` for counters, `_bucket`/`_sum`/`_count` for histograms) or one `recorded`
/// by the same rule group.
fn check_metric_names(exprs: &[String], recorded: &BTreeSet<String>) -> Result<()> {
    let known = exported_metrics()?;
    let mut unknown = BTreeSet::new();
    for expr in exprs {
        for word in metric_references(expr) {
            let base = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .unwrap_or(&word);
            let ok = if word.contains(':') {
                recorded.contains(&word)
            } else {
                known.contains(base) || known.contains(&word)
            };
            if !ok {
                unknown.insert(word);
            }
        }
    }
    ensure!(
        unknown.is_empty(),
        "queries use metrics no binary exports and no rule of theirs records: {unknown:?} \
         (exported: {known:?}, recorded: {recorded:?})"
    );
    Ok(())
}

/// The name check itself: it reads names outside strings and selectors, and refuses a
/// misspelt metric and a recorded name its group does not record.
#[test]
fn metric_name_check_refuses_what_no_binary_exports() -> Result<()> {
    let refs = metric_references(
        r#"sum by (route) (rate(parapet_retries_total{namespace="parapet_x:y",code=~"5.."}[1h:5m])) / ns:parapet_requests:ratio_rate5m"#,
    );
    ensure!(
        refs == ["parapet_retries_total", "ns:parapet_requests:ratio_rate5m"],
        "{refs:?}"
    );
    let recorded = BTreeSet::from(["ns:parapet_requests:ratio_rate5m".to_string()]);
    for good in [
        "rate(parapet_retries_total[5m])",
        "histogram_quantile(0.99, sum by (le) (rate(parapet_request_duration_seconds_bucket[5m])))",
        "parapet_operator_leader == 1",
        "ns:parapet_requests:ratio_rate5m > 0.01",
    ] {
        check_metric_names(&[good.to_string()], &recorded).with_context(|| good.to_string())?;
    }
    for bad in [
        "rate(parapet_retrys_total[5m])",
        "parapet_operator_leaders == 1",
        "ns:parapet_requests:ratio_rate1h > 0.01",
    ] {
        ensure!(
            check_metric_names(&[bad.to_string()], &recorded).is_err(),
            "{bad} passed the check"
        );
    }
    Ok(())
}

/// The objects of a release, from `helm get manifest`.
async fn release_manifest(ns: &str, release: &str) -> Result<String> {
    helm_ok(&["get", "manifest", release, "--namespace", ns]).await
}

/// `kubectl get -o name` of every object of a manifest that exists.
async fn existing(ns: &str, manifest: &str) -> Result<Vec<String>> {
    let out = kubectl_stdin(
        &[
            "get",
            "--namespace",
            ns,
            "--ignore-not-found",
            "-o",
            "name",
            "-f",
            "-",
        ],
        manifest,
    )
    .await?;
    ensure!(out.success(), "kubectl get -f - failed: {}", out.stderr);
    Ok(out
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}

async fn can_i(sa: &str, verb: &str, resource: &str, ns: Option<&str>) -> Result<bool> {
    let (resource, sub) = match resource.strip_suffix("/status") {
        Some(r) => (r, Some("--subresource=status")),
        None => (resource, None),
    };
    let mut args = vec!["auth", "can-i", verb, resource, "--as", sa];
    args.extend(sub);
    match ns {
        Some(ns) => args.extend(["--namespace", ns]),
        None => args.push("--all-namespaces"),
    }
    let out = kubectl(&args).await?;
    match out.stdout.trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => bail!(
            "kubectl auth can-i {verb} {resource}: {other} {}",
            out.stderr.trim()
        ),
    }
}

async fn token_of(ns: &str) -> Result<String> {
    kubectl_ok(&[
        "get",
        "secret",
        "parapet-snapshot-token",
        "--namespace",
        ns,
        "-o",
        "jsonpath={.data.token}",
    ])
    .await
}

#[tokio::test]
async fn install_upgrade_uninstall_on_the_api_server() -> Result<()> {
    let client = client().await?;
    apply_crds(&client).await?;
    // kubectl resolves the Gateway API kinds the RBAC checks below name through discovery.
    parapet_e2e::gateway_api::apply_crds(&client).await?;
    let ns = TestNamespace::new(&client, "chart-install").await?;
    let n = ns.name();
    let chart = chart_dir().to_string_lossy().into_owned();

    let out = helm_ok(&["install", "parapet", &chart, "--namespace", n]).await?;
    ensure!(out.contains("STATUS: deployed"), "{out}");
    ensure!(out.contains("port-forward"), "NOTES.txt not shown: {out}");
    // The example NOTES.txt tells the user to apply is valid as printed.
    let example = out
        .split_once("<<'YAML'\n")
        .and_then(|(_, rest)| rest.split_once("\n     YAML"))
        .map(|(yaml, _)| {
            yaml.lines()
                .map(|l| l.strip_prefix("     ").unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .ok_or_else(|| anyhow!("no example between <<'YAML' and YAML in NOTES: {out}"))?;
    let applied = kubectl_stdin(
        &[
            "apply",
            "--dry-run=server",
            "--namespace",
            n,
            "-o",
            "name",
            "-f",
            "-",
        ],
        &example,
    )
    .await?;
    ensure!(
        applied.success() && applied.stdout.lines().count() == 2,
        "the NOTES example is refused: {}{}",
        applied.stdout,
        applied.stderr
    );

    // Every object of the release exists.
    let manifest = release_manifest(n, "parapet").await?;
    let rendered = documents(&manifest)?;
    let created = existing(n, &manifest).await?;
    ensure!(
        created.len() == rendered.len() && rendered.len() >= 15,
        "the release renders {} objects, {} exist: {created:?}",
        rendered.len(),
        created.len()
    );

    // The operator may do what it needs and nothing more.
    let sa = format!("system:serviceaccount:{n}:parapet-operator");
    for (verb, resource, namespace, expected) in [
        ("list", "apiroutes.parapet.dev", None, true),
        ("watch", "upstreampools.parapet.dev", None, true),
        ("patch", "cachepolicies.parapet.dev/status", None, true),
        ("watch", "authpolicies.parapet.dev", None, true),
        ("patch", "authpolicies.parapet.dev/status", None, true),
        ("update", "apiroutes.parapet.dev", None, false),
        ("delete", "apiroutes.parapet.dev", None, false),
        ("watch", "endpointslices.discovery.k8s.io", None, true),
        ("list", "secrets", None, true),
        // Gateway API: read the kinds (their status is checked in the rendered rules),
        // Namespaces and the GatewayClass parameters (ConfigMaps); never write Gateways.
        (
            "watch",
            "gatewayclasses.gateway.networking.k8s.io",
            None,
            true,
        ),
        ("list", "gateways.gateway.networking.k8s.io", None, true),
        (
            "list",
            "referencegrants.gateway.networking.k8s.io",
            None,
            true,
        ),
        ("update", "gateways.gateway.networking.k8s.io", None, false),
        (
            "delete",
            "httproutes.gateway.networking.k8s.io",
            None,
            false,
        ),
        ("list", "namespaces", None, true),
        ("update", "namespaces", None, false),
        ("get", "configmaps", None, true),
        ("create", "configmaps", None, false),
        // The fleet view: one ConfigMap in the release namespace, patched by name.
        ("create", "configmaps", Some(n), true),
        ("patch", "configmaps/parapet-fleet-status", Some(n), true),
        ("patch", "configmaps/someone-else", Some(n), false),
        (
            "patch",
            "configmaps/parapet-fleet-status",
            Some("default"),
            false,
        ),
        // Each Gateway's data-plane fleet, in the Gateway's namespace (any namespace): its
        // Deployment, Service, ServiceAccount, autoscaler, budget and the Secret with its
        // copy of the snapshot credentials.
        ("create", "deployments.apps", None, true),
        ("delete", "services", None, true),
        ("patch", "serviceaccounts", None, true),
        ("update", "horizontalpodautoscalers.autoscaling", None, true),
        ("delete", "poddisruptionbudgets.policy", None, true),
        ("create", "secrets", Some("default"), true),
        ("get", "secrets", None, true),
        ("delete", "secrets", None, true),
        // Granted by name in the release namespace (and by the ClusterRole as well).
        ("patch", "deployments.apps/parapet-dataplane", Some(n), true),
        ("create", "events.events.k8s.io", None, true),
        ("create", "pods", None, false),
        ("delete", "pods", None, false),
        ("update", "statefulsets.apps", None, false),
        ("create", "leases.coordination.k8s.io", Some(n), true),
        (
            "update",
            "leases.coordination.k8s.io/parapet-operator",
            Some(n),
            true,
        ),
        (
            "update",
            "leases.coordination.k8s.io/someone-else",
            Some(n),
            false,
        ),
        (
            "create",
            "leases.coordination.k8s.io",
            Some("default"),
            false,
        ),
    ] {
        let got = can_i(&sa, verb, resource, namespace).await?;
        ensure!(
            got == expected,
            "operator can-i {verb} {resource} in {namespace:?}: {got}, expected {expected}"
        );
    }
    ensure!(
        !can_i(
            &format!("system:serviceaccount:{n}:parapet-dataplane"),
            "list",
            "secrets",
            Some(n)
        )
        .await?,
        "the data plane's ServiceAccount may read Secrets"
    );

    // An upgrade changes the release but not the token.
    let token = token_of(n).await?;
    ensure!(!token.is_empty());
    let out = helm_ok(&[
        "upgrade",
        "parapet",
        &chart,
        "--namespace",
        n,
        "--set",
        "operator.replicaCount=3",
    ])
    .await?;
    ensure!(out.contains("REVISION: 2"), "{out}");
    ensure!(
        token_of(n).await? == token,
        "helm upgrade replaced the token"
    );
    let replicas = kubectl_ok(&[
        "get",
        "deployment",
        "parapet-operator",
        "--namespace",
        n,
        "-o",
        "jsonpath={.spec.replicas}",
    ])
    .await?;
    ensure!(
        replicas == "3",
        "the upgrade was not applied: replicas {replicas}"
    );

    // Uninstall removes everything of the release, cluster-scoped objects included, and
    // leaves the CRDs (helm never deletes them).
    let manifest = release_manifest(n, "parapet").await?;
    helm_ok(&["uninstall", "parapet", "--namespace", n, "--timeout", "60s"]).await?;
    let left = wait_for(
        "the release's objects to go",
        Duration::from_secs(30),
        || {
            let manifest = manifest.clone();
            async move {
                let left = existing(n, &manifest).await?;
                Ok(left.is_empty().then_some(()))
            }
        },
    )
    .await;
    if left.is_err() {
        bail!(
            "objects left after helm uninstall: {:?}",
            existing(n, &manifest).await?
        );
    }
    for crd in [
        "apiroutes.parapet.dev",
        "upstreampools.parapet.dev",
        "cachepolicies.parapet.dev",
        "authpolicies.parapet.dev",
    ] {
        kubectl_ok(&["get", "crd", crd, "-o", "name"]).await?;
    }
    Ok(())
}

#[tokio::test]
async fn namespaced_install_grants_only_the_watched_namespaces() -> Result<()> {
    let client = client().await?;
    apply_crds(&client).await?;
    let ns = TestNamespace::new(&client, "chart-scoped-install").await?;
    let team = TestNamespace::new(&client, "chart-scoped-team").await?;
    let other = TestNamespace::new(&client, "chart-scoped-other").await?;
    let chart = chart_dir().to_string_lossy().into_owned();
    let set = format!("watchNamespaces={{{}}}", team.name());
    helm_ok(&[
        "install",
        "gw",
        &chart,
        "--namespace",
        ns.name(),
        "--set",
        &set,
    ])
    .await?;
    let sa = format!("system:serviceaccount:{}:gw-parapet-operator", ns.name());
    for (verb, resource, namespace, expected) in [
        ("list", "apiroutes.parapet.dev", team.name(), true),
        ("patch", "apiroutes.parapet.dev/status", team.name(), true),
        ("list", "secrets", team.name(), true),
        ("list", "apiroutes.parapet.dev", other.name(), false),
        ("list", "secrets", other.name(), false),
        ("list", "secrets", ns.name(), false),
        ("get", "secrets/gw-parapet-snapshot-ca", ns.name(), true),
        ("get", "secrets/gw-parapet-snapshot-token", ns.name(), false),
        ("get", "secrets/gw-parapet-snapshot-ca", team.name(), false),
        // The data plane's admin EndpointSlices, and Events about pushes.
        ("watch", "endpointslices.discovery.k8s.io", ns.name(), true),
        ("create", "events.events.k8s.io", ns.name(), true),
        (
            "get",
            "leases.coordination.k8s.io/gw-parapet-operator",
            ns.name(),
            true,
        ),
    ] {
        let got = can_i(&sa, verb, resource, Some(namespace)).await?;
        ensure!(
            got == expected,
            "operator can-i {verb} {resource} in {namespace}: {got}, expected {expected}"
        );
    }
    ensure!(
        !can_i(&sa, "list", "secrets", None).await?,
        "a namespaced operator can list Secrets cluster-wide"
    );
    helm_ok(&["uninstall", "gw", "--namespace", ns.name()]).await?;
    Ok(())
}

#[tokio::test]
async fn bad_values_are_refused_with_a_readable_message() -> Result<()> {
    let client = client().await?;
    apply_crds(&client).await?;
    let ns = TestNamespace::new(&client, "chart-bad-values").await?;
    let chart = chart_dir().to_string_lossy().into_owned();
    for (set, expected) in [
        (
            "dataplane.service.type=Loadbalancer",
            "at '/dataplane/service/type': value must be one of 'ClusterIP', 'NodePort', 'LoadBalancer'",
        ),
        (
            "operator.debounce=soon",
            "at '/operator/debounce': 'soon' does not match pattern",
        ),
        (
            "dataplane.autoscaling.maxReplicas=0",
            "at '/dataplane/autoscaling/maxReplicas': minimum: got 0, want 1",
        ),
        (
            "dataplanee.replicaCount=3",
            "additional properties 'dataplanee' not allowed",
        ),
        (
            "snapshotTLS.certManager.enabled=true",
            "snapshotTLS.certManager.enabled needs snapshotTLS.certManager.issuerRef.name",
        ),
        (
            "snapshotTLS.secretName=Not_A_Name",
            "at '/snapshotTLS/secretName': 'Not_A_Name' does not match pattern",
        ),
        (
            "logFormat=xml",
            "at '/logFormat': value must be one of 'text', 'json'",
        ),
        (
            "backup.recipient=age1short",
            "at '/backup/recipient': 'age1short' does not match pattern",
        ),
        (
            "watchNamespaces={Team_A}",
            "at '/watchNamespaces/0': 'Team_A' does not match pattern",
        ),
        // Rules the schema cannot express, checked by the templates.
        (
            "dataplane.terminationGracePeriodSeconds=20",
            "dataplane.terminationGracePeriodSeconds (20) must exceed dataplane.shutdownDelaySeconds + dataplane.drainTimeoutSeconds (30)",
        ),
        (
            "dataplane.autoscaling.minReplicas=20",
            "dataplane.autoscaling.minReplicas (20) is above maxReplicas (10)",
        ),
    ] {
        let out = helm(&[
            "install",
            "bad",
            &chart,
            "--namespace",
            ns.name(),
            "--set",
            set,
        ])
        .await?;
        ensure!(!out.success, "helm install --set {set} succeeded");
        let message = out.stderr.trim();
        ensure!(
            message.contains(expected),
            "helm install --set {set}: expected a message with {expected:?}, got:\n{message}"
        );
    }
    let releases = helm_ok(&["list", "--all", "--namespace", ns.name(), "-q"]).await?;
    ensure!(
        releases.trim().is_empty(),
        "refused installs left releases: {releases}"
    );
    let objects = kubectl_ok(&[
        "get",
        "deployments,services,secrets,serviceaccounts",
        "--namespace",
        ns.name(),
        "-o",
        "name",
    ])
    .await?;
    ensure!(
        !objects.contains("parapet"),
        "refused installs left objects: {objects}"
    );
    Ok(())
}
