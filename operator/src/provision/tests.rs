use serde_json::json;

use super::*;

/// The chart's default data-plane Deployment as rendered with snapshot TLS on, a traffic
/// certificate (`dataplane.tls.secretName`) and an extra env var.
fn default_deployment() -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "parapet-dataplane", "namespace": "parapet",
            "labels": {"app.kubernetes.io/component": "dataplane"}},
        "spec": {
            "replicas": 3,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": {"app.kubernetes.io/component": "dataplane"}},
            "strategy": {"type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "50%"}},
            "template": {
                "metadata": {
                    "labels": {"app.kubernetes.io/name": "parapet",
                        "app.kubernetes.io/component": "dataplane", "team": "edge"},
                    "annotations": {"prometheus.io/scrape": "true",
                        "parapet.dev/snapshot-certificate-issued": "2026-01-01T00:00:00Z"}
                },
                "spec": {
                    "serviceAccountName": "parapet-dataplane",
                    "serviceAccount": "parapet-dataplane",
                    "automountServiceAccountToken": false,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                        "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                    "terminationGracePeriodSeconds": 35,
                    "containers": [{
                        "name": "dataplane",
                        "image": "ghcr.io/parapet/dataplane:0.1.0",
                        "args": [
                            "--listen=0.0.0.0:8080",
                            "--admin-listen=0.0.0.0:9901",
                            "--snapshot-token-file=/etc/parapet/token/token",
                            "--state-dir=/var/lib/parapet/tables",
                            "--shutdown-delay=5s",
                            "--drain-timeout=25s",
                            "--log-format=json",
                            "--tls-cert=/etc/parapet/tls/tls.crt",
                            "--tls-key", "/etc/parapet/tls/tls.key",
                            "--admin-tls-cert=/etc/parapet/snapshot-tls/tls.crt",
                            "--admin-tls-key=/etc/parapet/snapshot-tls/tls.key",
                            "--admin-client-ca=/etc/parapet/snapshot-tls/ca.crt",
                            "--access-log"
                        ],
                        "env": [{"name": "PARAPET_LISTEN", "value": "0.0.0.0:8081"},
                            {"name": "RUST_LOG", "value": "info"}],
                        "ports": [
                            {"name": "http", "containerPort": 8080, "protocol": "TCP"},
                            {"name": "admin", "containerPort": 9901, "protocol": "TCP"}
                        ],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin",
                            "scheme": "HTTPS"}, "periodSeconds": 2},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "admin",
                            "scheme": "HTTPS"}, "periodSeconds": 10},
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                        "securityContext": {"readOnlyRootFilesystem": true,
                            "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [
                            {"name": "snapshot-token", "mountPath": "/etc/parapet/token",
                                "readOnly": true},
                            {"name": "state", "mountPath": "/var/lib/parapet"},
                            {"name": "tls", "mountPath": "/etc/parapet/tls", "readOnly": true},
                            {"name": "snapshot-tls", "mountPath": "/etc/parapet/snapshot-tls",
                                "readOnly": true}
                        ]
                    }],
                    "volumes": [
                        {"name": "snapshot-token", "secret": {"secretName": "parapet-snapshot-token"}},
                        {"name": "state", "emptyDir": {"sizeLimit": "64Mi"}},
                        {"name": "tls", "secret": {"secretName": "edge-cert"}},
                        {"name": "snapshot-tls", "secret": {"secretName": "parapet-snapshot-tls"}}
                    ],
                    "topologySpreadConstraints": [{
                        "topologyKey": "topology.kubernetes.io/zone", "maxSkew": 1,
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "dataplane"}}
                    }]
                }
            }
        }
    }))
    .unwrap()
}

fn default_hpa() -> HorizontalPodAutoscaler {
    serde_json::from_value(json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "parapet-dataplane", "namespace": "parapet"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "parapet-dataplane"},
            "minReplicas": 2,
            "maxReplicas": 10,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 70}}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}}
        }
    }))
    .unwrap()
}

fn default_pdb() -> PodDisruptionBudget {
    serde_json::from_value(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "parapet-dataplane", "namespace": "parapet"},
        "spec": {"maxUnavailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow",
            "selector": {"matchLabels": {"app.kubernetes.io/component": "dataplane"}}}
    }))
    .unwrap()
}

fn template() -> FleetTemplate {
    FleetTemplate::from_default_fleet(
        &default_deployment(),
        Some(&default_hpa()),
        Some(&default_pdb()),
        "admin",
    )
    .unwrap()
}

fn gateway_json(listeners: serde_json::Value) -> Gateway {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "shop", "uid": "0b7c-uid"},
        "spec": {
            "gatewayClassName": "parapet",
            "listeners": listeners,
            "infrastructure": {"labels": {"cost-center": "42"},
                "annotations": {"example.com/owner": "team-shop"}}
        }
    }))
    .unwrap()
}

fn gateway() -> FleetGateway {
    FleetGateway::from_gateway(&gateway_json(json!([
        {"name": "http", "port": 80, "protocol": "HTTP"},
        {"name": "http-alt", "port": 80, "protocol": "HTTP", "hostname": "alt.example"},
        {"name": "https", "port": 443, "protocol": "HTTPS",
            "tls": {"certificateRefs": [{"name": "shop-cert"}]}}
    ])))
    .unwrap()
}

fn creds(tls: bool) -> SnapshotCredentials {
    SnapshotCredentials {
        token: "s3cret".into(),
        tls: tls.then(|| SnapshotTls {
            cert: "CERT".into(),
            key: "KEY".into(),
            client_ca: "CA".into(),
        }),
    }
}

fn container(d: &Deployment) -> &Container {
    let spec = d.spec.template.spec.as_ref().unwrap();
    assert_eq!(spec.containers.len(), 1);
    &spec.containers[0]
}

fn args(d: &Deployment) -> Vec<String> {
    container(d).args.clone().unwrap()
}

fn config_map(data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some("fleet-params".into()),
            namespace: Some("parapet".into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn refusal(data: &[(&str, &str)]) -> String {
    match template().with_parameters(&config_map(data)) {
        Err(FleetError::InvalidParameters(m)) => m,
        other => panic!("expected InvalidParameters for {data:?}, got {other:?}"),
    }
}

#[test]
fn provision_gateway_ports_are_distinct_and_infrastructure_is_read() {
    let gw = gateway();
    assert_eq!(gw.namespace, "shop");
    assert_eq!(gw.name, "edge");
    assert_eq!(gw.uid, "0b7c-uid");
    assert_eq!(gw.ports, BTreeSet::from([80, 443]));
    assert_eq!(gw.labels["cost-center"], "42");
    assert_eq!(gw.annotations["example.com/owner"], "team-shop");
}

#[test]
fn provision_gateway_without_uid_or_with_port_zero_is_refused() {
    let mut g = gateway_json(json!([{"name": "http", "port": 80, "protocol": "HTTP"}]));
    g.metadata.uid = None;
    assert!(matches!(
        FleetGateway::from_gateway(&g),
        Err(FleetError::Gateway(m)) if m.contains("no namespace or uid")
    ));
    let g = gateway_json(json!([{"name": "zero", "port": 0, "protocol": "HTTP"}]));
    assert!(matches!(
        FleetGateway::from_gateway(&g),
        Err(FleetError::Gateway(m)) if m.contains("listener zero") && m.contains("port 0")
    ));
}

#[test]
fn provision_objects_are_named_labelled_and_owned_by_the_gateway() {
    let f = render(&gateway(), &template(), &creds(true));
    let metas = [
        &f.secret.metadata,
        &f.service_account.metadata,
        &f.deployment.metadata,
        &f.service.metadata,
        &f.hpa.as_ref().unwrap().metadata,
        &f.pdb.as_ref().unwrap().metadata,
    ];
    let names: Vec<&str> = metas.iter().map(|m| m.name.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "edge-parapet-snapshot",
            "edge",
            "edge",
            "edge",
            "edge",
            "edge"
        ]
    );
    for m in metas {
        assert_eq!(m.namespace.as_deref(), Some("shop"));
        let labels = m.labels.as_ref().unwrap();
        assert_eq!(labels[GATEWAY_NAME_LABEL], "edge");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "parapet-operator");
        assert_eq!(labels[FLEET_LABEL], "edge");
        assert_eq!(labels["cost-center"], "42");
        assert_eq!(
            m.annotations.as_ref().unwrap()["example.com/owner"],
            "team-shop"
        );
        assert_eq!(
            m.owner_references.as_deref().unwrap(),
            [OwnerReference {
                api_version: "gateway.networking.k8s.io/v1".into(),
                kind: "Gateway".into(),
                name: "edge".into(),
                uid: "0b7c-uid".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]
        );
    }
}

#[test]
fn provision_infrastructure_labels_cannot_replace_the_selector_labels() {
    let mut gw = gateway();
    gw.labels.insert(FLEET_LABEL.into(), "other".into());
    let f = render(&gw, &template(), &creds(false));
    let spec = f.deployment.spec;
    assert_eq!(
        spec.template.metadata.unwrap().labels.unwrap()[FLEET_LABEL],
        "edge"
    );
    assert_eq!(spec.selector.match_labels.unwrap()[FLEET_LABEL], "edge");
}

#[test]
fn provision_one_listen_flag_and_port_per_listener_port_and_the_admin_port_kept() {
    let f = render(&gateway(), &template(), &creds(true));
    let a = args(&f.deployment);
    let listens: Vec<&String> = a
        .iter()
        .filter(|x| x.starts_with("--listen=") || *x == "--listen")
        .collect();
    assert_eq!(listens, ["--listen=0.0.0.0:80", "--listen=0.0.0.0:443"]);
    assert!(
        a.contains(&"--admin-listen=0.0.0.0:9901".to_string()),
        "{a:?}"
    );
    // Kept from the default fleet: state, drain, log format, access log.
    for kept in [
        "--state-dir=/var/lib/parapet/tables",
        "--shutdown-delay=5s",
        "--drain-timeout=25s",
        "--log-format=json",
        "--access-log",
    ] {
        assert!(a.contains(&kept.to_string()), "{kept} missing from {a:?}");
    }
    let c = container(&f.deployment);
    let ports: Vec<(Option<&str>, i32)> = c
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [
            (Some("l-80"), 80),
            (Some("l-443"), 443),
            (Some("admin"), 9901)
        ]
    );
    let svc = f.service.spec.unwrap();
    assert_eq!(svc.type_.as_deref(), Some("ClusterIP"));
    let sports: Vec<(Option<&str>, i32, Option<IntOrString>)> = svc
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref(), p.port, p.target_port.clone()))
        .collect();
    assert_eq!(
        sports,
        [
            (Some("l-80"), 80, Some(IntOrString::Int(80))),
            (Some("l-443"), 443, Some(IntOrString::Int(443))),
        ]
    );
    let admin = f.admin_service.spec.clone().unwrap();
    assert_eq!(
        f.admin_service.metadata.name.as_deref(),
        Some("edge-parapet-admin")
    );
    assert_eq!(admin.cluster_ip.as_deref(), Some("None"));
    assert_eq!(admin.publish_not_ready_addresses, Some(true));
    let aports: Vec<(Option<&str>, i32)> = admin
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref(), p.port))
        .collect();
    assert_eq!(aports, [(Some("admin"), 9901)]);
    assert_eq!(admin.selector, svc.selector);
    assert_eq!(
        svc.selector.unwrap(),
        f.deployment.spec.selector.match_labels.unwrap()
    );
}

#[test]
fn provision_credentials_come_from_the_copied_secret_and_traffic_tls_flags_go() {
    let f = render(&gateway(), &template(), &creds(true));
    let a = args(&f.deployment);
    for gone in ["--tls-cert", "--tls-key", "--tls"] {
        assert!(!a.iter().any(|x| flag_name(x) == gone), "{gone} in {a:?}");
    }
    // `--tls-key <path>` was two args: its value went with it.
    assert!(!a.iter().any(|x| x.contains("/etc/parapet/tls")), "{a:?}");
    let creds_flags: Vec<&String> = a
        .iter()
        .filter(|x| {
            [
                "--snapshot-token-file",
                "--admin-tls-cert",
                "--admin-tls-key",
                "--admin-client-ca",
            ]
            .contains(&flag_name(x))
        })
        .collect();
    assert_eq!(
        creds_flags,
        [
            "--snapshot-token-file=/etc/parapet/gateway-snapshot/token",
            "--admin-tls-cert=/etc/parapet/gateway-snapshot/tls.crt",
            "--admin-tls-key=/etc/parapet/gateway-snapshot/tls.key",
            "--admin-client-ca=/etc/parapet/gateway-snapshot/ca.crt",
        ]
    );
    let c = container(&f.deployment);
    let env: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert_eq!(env, ["RUST_LOG"]);
    let mounts: Vec<(&str, &str)> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert_eq!(
        mounts,
        [
            ("state", "/var/lib/parapet"),
            ("gateway-snapshot", "/etc/parapet/gateway-snapshot")
        ]
    );
    let pod = f.deployment.spec.template.spec.clone().unwrap();
    let volumes: Vec<(&str, Option<&str>)> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| {
            (
                v.name.as_str(),
                v.secret.as_ref().and_then(|s| s.secret_name.as_deref()),
            )
        })
        .collect();
    assert_eq!(
        volumes,
        [
            ("state", None),
            ("gateway-snapshot", Some("edge-parapet-snapshot"))
        ]
    );
    let data = f.secret.data.unwrap();
    let got: Vec<(&str, &[u8])> = data.iter().map(|(k, v)| (k.as_str(), &v.0[..])).collect();
    assert_eq!(
        got,
        [
            ("ca.crt", &b"CA"[..]),
            ("tls.crt", b"CERT"),
            ("tls.key", b"KEY"),
            ("token", b"s3cret")
        ]
    );
    assert_eq!(
        c.readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .scheme
            .as_deref(),
        Some("HTTPS")
    );
}

#[test]
fn provision_without_tls_the_secret_holds_the_token_only_and_probes_use_http() {
    let f = render(&gateway(), &template(), &creds(false));
    let a = args(&f.deployment);
    assert!(a.contains(&"--snapshot-token-file=/etc/parapet/gateway-snapshot/token".into()));
    assert!(
        !a.iter()
            .any(|x| x.starts_with("--admin-tls") || x.starts_with("--admin-client-ca"))
    );
    assert_eq!(f.secret.data.unwrap().keys().collect::<Vec<_>>(), ["token"]);
    let c = container(&f.deployment);
    for p in [&c.readiness_probe, &c.liveness_probe] {
        assert_eq!(
            p.as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .scheme
                .as_deref(),
            Some("HTTP")
        );
    }
}

#[test]
fn provision_pod_template_gets_the_sysctl_its_own_account_and_rolls_without_unavailability() {
    let f = render(&gateway(), &template(), &creds(true));
    let spec = f.deployment.spec;
    let pod = spec.template.spec.unwrap();
    let sc = pod.security_context.unwrap();
    assert_eq!(
        sc.sysctls.unwrap(),
        [Sysctl {
            name: "net.ipv4.ip_unprivileged_port_start".into(),
            value: "0".into()
        }]
    );
    // The rest of the default fleet's pod security context is kept.
    assert_eq!(sc.run_as_user, Some(65532));
    assert_eq!(pod.service_account_name.as_deref(), Some("edge"));
    assert_eq!(pod.service_account, None);
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.termination_grace_period_seconds, Some(35));
    assert_eq!(
        f.service_account.automount_service_account_token,
        Some(false)
    );
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("ghcr.io/parapet/dataplane:0.1.0"));
    assert!(c.resources.is_some() && c.security_context.is_some());
    let rolling = spec.strategy.unwrap().rolling_update.unwrap();
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    assert_eq!(rolling.max_surge, Some(IntOrString::String("50%".into())));
    // Autoscaled: the HPA owns the replica count.
    assert_eq!(spec.replicas, None);
    // The default fleet's labels are gone (they would select these pods into its
    // Services), its restart stamp too; its other annotations stay.
    let meta = spec.template.metadata.unwrap();
    let labels = meta.labels.unwrap();
    assert!(
        !labels.contains_key("app.kubernetes.io/component"),
        "{labels:?}"
    );
    let ann = meta.annotations.unwrap();
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["example.com/owner"], "team-shop");
    assert!(!ann.contains_key(crate::snapshot_certs::RESTART_ANNOTATION));
    let spread = pod.topology_spread_constraints.unwrap();
    assert_eq!(
        spread[0]
            .label_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()[FLEET_LABEL],
        "edge"
    );
}

#[test]
fn provision_new_credentials_roll_the_pods() {
    let hash = |c: &SnapshotCredentials| {
        render(&gateway(), &template(), c)
            .deployment
            .spec
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[SECRET_HASH_ANNOTATION]
            .clone()
    };
    let mut renewed = creds(true);
    renewed.tls.as_mut().unwrap().cert = "CERT2".into();
    assert_eq!(hash(&creds(true)), hash(&creds(true)));
    assert_ne!(hash(&creds(true)), hash(&renewed));
}

#[test]
fn provision_hpa_and_pdb_follow_the_template() {
    let f = render(&gateway(), &template(), &creds(false));
    let hpa = f.hpa.unwrap().spec;
    assert_eq!(hpa.scale_target_ref.name, "edge");
    assert_eq!(hpa.scale_target_ref.kind, "Deployment");
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 10));
    assert_eq!(hpa.metrics.unwrap().len(), 1);
    assert!(hpa.behavior.is_some());
    let pdb = f.pdb.unwrap().spec.unwrap();
    assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(pdb.min_available, None);
    assert_eq!(
        pdb.unhealthy_pod_eviction_policy.as_deref(),
        Some("AlwaysAllow")
    );
    assert_eq!(
        pdb.selector.unwrap().match_labels.unwrap()[FLEET_LABEL],
        "edge"
    );

    // Neither in the default fleet: neither here, and the replica count is fixed.
    let bare =
        FleetTemplate::from_default_fleet(&default_deployment(), None, None, "admin").unwrap();
    let f = render(&gateway(), &bare, &creds(false));
    assert!(f.hpa.is_none() && f.pdb.is_none());
    assert_eq!(f.deployment.spec.replicas, Some(3));

    // A budget by minAvailable keeps it.
    let mut pdb = default_pdb();
    let s = pdb.spec.as_mut().unwrap();
    s.max_unavailable = None;
    s.min_available = Some(IntOrString::String("50%".into()));
    let t = FleetTemplate::from_default_fleet(&default_deployment(), None, Some(&pdb), "admin")
        .unwrap();
    let spec = render(&gateway(), &t, &creds(false))
        .pdb
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(spec.min_available, Some(IntOrString::String("50%".into())));
    assert_eq!(spec.max_unavailable, None);
}

#[test]
fn provision_template_needs_the_admin_port() {
    let err = FleetTemplate::from_default_fleet(&default_deployment(), None, None, "snapshot")
        .unwrap_err();
    assert!(
        matches!(&err, FleetError::Template(m) if m.contains("parapet/parapet-dataplane has no container port named snapshot")),
        "{err}"
    );
}

#[test]
fn provision_parameters_override_the_template() {
    let t = template()
        .with_parameters(&config_map(&[
            ("minReplicas", "3"),
            ("maxReplicas", "20"),
            ("serviceType", "LoadBalancer"),
            ("image", "registry.example/parapet/dataplane:1.2"),
        ]))
        .unwrap();
    let f = render(&gateway(), &t, &creds(false));
    assert_eq!(
        f.service.spec.unwrap().type_.as_deref(),
        Some("LoadBalancer")
    );
    let hpa = f.hpa.unwrap().spec;
    assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(3), 20));
    assert_eq!(
        container(&f.deployment).image.as_deref(),
        Some("registry.example/parapet/dataplane:1.2")
    );

    // A fixed count turns autoscaling off.
    let t = template()
        .with_parameters(&config_map(&[("replicas", "4")]))
        .unwrap();
    let f = render(&gateway(), &t, &creds(false));
    assert!(f.hpa.is_none());
    assert_eq!(f.deployment.spec.replicas, Some(4));

    // An empty ConfigMap changes nothing.
    assert_eq!(
        template().with_parameters(&config_map(&[])).unwrap(),
        template()
    );
}

#[test]
fn provision_bad_parameters_say_which_key_to_fix() {
    let m = refusal(&[("replica", "2")]);
    assert!(
        m.starts_with("ConfigMap parapet/fleet-params: unknown key replica"),
        "{m}"
    );
    let m = refusal(&[("replicas", "two")]);
    assert!(
        m.contains("replicas is \"two\": set it to a whole number of 0 or more"),
        "{m}"
    );
    let m = refusal(&[("replicas", "-1")]);
    assert!(m.contains("replicas is \"-1\""), "{m}");
    let m = refusal(&[("minReplicas", "0")]);
    assert!(
        m.contains("minReplicas is \"0\": set it to a whole number of 1 or more"),
        "{m}"
    );
    let m = refusal(&[("maxReplicas", "1.5")]);
    assert!(m.contains("maxReplicas is \"1.5\""), "{m}");
    let m = refusal(&[("minReplicas", "8"), ("maxReplicas", "4")]);
    assert!(
        m.contains("minReplicas (8) is above maxReplicas (4)"),
        "{m}"
    );
    // Against the template's bounds too (2..10).
    let m = refusal(&[("maxReplicas", "1")]);
    assert!(
        m.contains("minReplicas (2) is above maxReplicas (1)"),
        "{m}"
    );
    let m = refusal(&[("replicas", "2"), ("maxReplicas", "4")]);
    assert!(m.contains("set either replicas"), "{m}");
    let m = refusal(&[("serviceType", "ExternalName")]);
    assert!(
        m.contains(
            "serviceType is \"ExternalName\": set it to ClusterIP, NodePort or LoadBalancer"
        ),
        "{m}"
    );
    let m = refusal(&[("image", "")]);
    assert!(m.contains("image is \"\""), "{m}");
    let m = refusal(&[("image", "a b")]);
    assert!(m.contains("image is \"a b\""), "{m}");

    let mut cm = config_map(&[]);
    cm.binary_data = Some(BTreeMap::from([("image".into(), ByteString(vec![1]))]));
    let m = template().with_parameters(&cm).unwrap_err().to_string();
    assert!(m.contains("binaryData key image is not read"), "{m}");

    // Autoscaler bounds without an autoscaler.
    let bare =
        FleetTemplate::from_default_fleet(&default_deployment(), None, None, "admin").unwrap();
    let m = bare
        .with_parameters(&config_map(&[("minReplicas", "2")]))
        .unwrap_err()
        .to_string();
    assert!(
        m.contains("the default data-plane fleet has none: set replicas instead"),
        "{m}"
    );
}

fn class(parameters_ref: serde_json::Value) -> GatewayClass {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": "parapet"},
        "spec": {"controllerName": "parapet.dev/gateway-controller",
            "parametersRef": parameters_ref}
    }))
    .unwrap()
}

#[test]
fn provision_parameters_ref_names_a_namespaced_config_map() {
    let c = class(
        json!({"group": "", "kind": "ConfigMap", "name": "fleet-params",
        "namespace": "parapet"}),
    );
    assert_eq!(
        parameters_ref(&c).unwrap(),
        Some(("parapet".to_string(), "fleet-params".to_string()))
    );
    let mut none = c.clone();
    none.spec.parameters_ref = None;
    assert_eq!(parameters_ref(&none).unwrap(), None);

    let c = class(json!({"group": "", "kind": "ConfigMap", "name": "fleet-params"}));
    let m = parameters_ref(&c).unwrap_err().to_string();
    assert!(
        m.contains("has no namespace: set parametersRef.namespace"),
        "{m}"
    );
    let c = class(
        json!({"group": "example.com", "kind": "FleetParams", "name": "x",
        "namespace": "parapet"}),
    );
    assert!(matches!(
        parameters_ref(&c),
        Err(FleetError::InvalidParameters(m)) if m.contains("FleetParams of group example.com")
    ));
    let c = class(json!({"group": "", "kind": "Secret", "name": "x", "namespace": "parapet"}));
    assert!(parameters_ref(&c).is_err());
}

#[test]
fn provision_stale_fleets_are_those_not_kept() {
    let meta = |ns: &str, name: &str, fleet: Option<&str>| ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        labels: fleet.map(|f| BTreeMap::from([(FLEET_LABEL.to_string(), f.to_string())])),
        ..Default::default()
    };
    let objects = [
        meta("shop", "edge", Some("edge")),
        meta("shop", "edge-parapet-snapshot", Some("edge")),
        meta("shop", "old", Some("old")),
        meta("bank", "edge", Some("edge")),
        meta("bank", "mine", None),
    ];
    let keep = BTreeSet::from([("shop".to_string(), "edge".to_string())]);
    assert_eq!(
        stale(&objects, &keep),
        [
            ("shop".to_string(), "old".to_string()),
            ("bank".to_string(), "edge".to_string())
        ]
    );
}

#[test]
fn provision_strip_flags_handles_both_forms() {
    let a: Vec<String> = [
        "--listen",
        "0.0.0.0:8080",
        "--tls",
        "--admin-listen=0.0.0.0:9901",
        "--snapshot-token-file",
        "/t/token",
        "--workers=2",
    ]
    .map(String::from)
    .to_vec();
    let (kept, paths) = strip_flags(&a);
    assert_eq!(kept, ["--admin-listen=0.0.0.0:9901", "--workers=2"]);
    assert_eq!(paths, ["/t/token"]);
}

#[test]
fn long_gateway_names_give_service_names_that_fit_and_differ() {
    let long = "http-listener-isolation-with-hostname-intersection";
    let admin = admin_service_name(long);
    assert!(admin.len() <= 63, "{admin}");
    assert!(admin.ends_with("-parapet-admin") && admin.starts_with("http-listener-isolation"));
    let other = admin_service_name("http-listener-isolation-with-hostname-intersection-2");
    assert_ne!(admin, other);
    assert!(other.len() <= 63);
    assert_eq!(admin_service_name("edge"), "edge-parapet-admin");
    assert_eq!(service_name("edge"), "edge");
    let very_long = "a".repeat(200);
    assert_eq!(service_name(&very_long).len(), 63);
    assert_eq!(
        service_name("1st"),
        "g1st",
        "a Service name starts with a letter"
    );
    let dotted = service_name("api.example");
    assert!(
        dotted.starts_with("api-example-") && !dotted.contains('.'),
        "{dotted}"
    );
    assert_ne!(dotted, service_name("api-example"));
    assert!(secret_name(&"s".repeat(253)).len() <= 253);
    assert_eq!(secret_name("edge"), "edge-parapet-snapshot");
}

#[test]
fn each_fleet_has_a_token_of_its_own() {
    let a = fleet_token("operator-token", "shop", "edge");
    assert_eq!(
        a,
        fleet_token("operator-token", "shop", "edge"),
        "every replica derives the same"
    );
    assert_ne!(a, fleet_token("operator-token", "shop", "other"));
    assert_ne!(a, fleet_token("operator-token", "bank", "edge"));
    assert_ne!(a, fleet_token("another-token", "shop", "edge"));
    assert!(!a.contains("operator-token") && a.len() == 64);
}
