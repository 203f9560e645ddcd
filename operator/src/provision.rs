//! Data-plane fleets for Gateways: every Gateway of a Parapet GatewayClass gets a fleet of
//! its own in its namespace (Secret, ServiceAccount, Deployment, Service, and the
//! HorizontalPodAutoscaler and PodDisruptionBudget when the template has them), to which
//! only that Gateway's table is pushed.
//!
//! [`render`] is pure: a [`FleetGateway`] (what the fleet needs of a Gateway), a
//! [`FleetTemplate`] (the chart's default fleet, read at start, perhaps overridden by the
//! GatewayClass's parameters) and the snapshot channel's credentials give the objects.
//! [`apply`] writes them with server-side apply; [`delete_stale`] removes fleets whose
//! Gateway is gone or left the Parapet classes (ownerReferences cover deletion only).
//!
//! Every object is named after the Gateway (the Secret `<name>-parapet-snapshot`), like
//! Envoy Gateway's namespace mode: a clash with an object of the user's own is the user's
//! to avoid when naming the Gateway.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        autoscaling::v2::{
            CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerBehavior,
            HorizontalPodAutoscalerSpec, MetricSpec,
        },
        core::v1::{
            ConfigMap, Container, ContainerPort, PodSecurityContext, PodTemplateSpec,
            SecretVolumeSource, Service, ServiceAccount, ServicePort, ServiceSpec, Sysctl, Volume,
            VolumeMount,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use parapet_crds::gateway_api::{gatewayclasses::GatewayClass, gateways::Gateway};
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

/// The field manager of every server-side apply here.
pub const FIELD_MANAGER: &str = "parapet-operator";
/// Carried by every object of a Gateway's fleet, valued with the Gateway's name: how
/// [`delete_stale`] finds fleets, and part of the pods' selector.
pub const FLEET_LABEL: &str = "parapet.dev/gateway-fleet";
/// The Gateway API's label for objects made for a Gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Pod-template annotation holding a hash of the fleet's Secret: new credentials (a
/// renewed certificate) change it and so roll the pods, which read them only at start.
pub const SECRET_HASH_ANNOTATION: &str = "parapet.dev/snapshot-secret-hash";
/// Where the pods mount their copy of the snapshot credentials.
pub const SNAPSHOT_DIR: &str = "/etc/parapet/gateway-snapshot";
const SNAPSHOT_VOLUME: &str = "gateway-snapshot";
/// Lets the non-root data plane bind listener ports below 1024; a namespaced, "safe"
/// sysctl, so no node or PodSecurity allowance is needed.
const UNPRIVILEGED_PORT_SYSCTL: &str = "net.ipv4.ip_unprivileged_port_start";
/// Annotations that restarted the default fleet; meaningless on another Deployment.
const RESTART_ANNOTATIONS: [&str; 2] = [
    crate::snapshot_certs::RESTART_ANNOTATION,
    "kubectl.kubernetes.io/restartedAt",
];

/// Flags of the default fleet that a Gateway's fleet sets itself (paths to the copied
/// credentials, one `--listen` per listener port) or must not have: HTTPS listeners get
/// their certificates from the pushed table, so neither a fallback certificate
/// (`--tls-cert/--tls-key`) nor TLS on every listener (`--tls`).
const PATH_FLAGS: [&str; 6] = [
    "--snapshot-token-file",
    "--admin-tls-cert",
    "--admin-tls-key",
    "--admin-client-ca",
    "--tls-cert",
    "--tls-key",
];
const BOOL_FLAGS: [&str; 1] = ["--tls"];
const VALUE_FLAGS: [&str; 1] = ["--listen"];
/// The environment variables behind those flags (set through the chart's extraEnv).
const FLAG_ENV: [&str; 6] = [
    "PARAPET_LISTEN",
    "PARAPET_TLS",
    "PARAPET_SNAPSHOT_TOKEN_FILE",
    "PARAPET_ADMIN_TLS_CERT",
    "PARAPET_ADMIN_TLS_KEY",
    "PARAPET_ADMIN_CLIENT_CA",
];

/// What cannot be provisioned, as a sentence saying what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    /// The GatewayClass's parametersRef or its ConfigMap: for GatewayClass status
    /// `Accepted=False`, reason `InvalidParameters`.
    #[error("{0}")]
    InvalidParameters(String),
    /// The default data-plane Deployment cannot serve as a template.
    #[error("{0}")]
    Template(String),
    /// The Gateway lacks what its fleet needs.
    #[error("{0}")]
    Gateway(String),
}

/// What a fleet needs of its Gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetGateway {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The listeners' distinct ports.
    pub ports: BTreeSet<u16>,
    /// `spec.infrastructure.labels` and `.annotations`, put on every object of the fleet.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl FleetGateway {
    pub fn from_gateway(gw: &Gateway) -> Result<Self, FleetError> {
        let name = gw.name_any();
        let (Some(namespace), Some(uid)) = (gw.namespace(), gw.uid()) else {
            return Err(FleetError::Gateway(format!(
                "Gateway {name} has no namespace or uid: pass a Gateway read from the API server"
            )));
        };
        let mut ports = BTreeSet::new();
        for l in &gw.spec.listeners {
            let port = u16::try_from(l.port).ok().filter(|p| *p != 0).ok_or_else(|| {
                FleetError::Gateway(format!(
                    "listener {} of Gateway {namespace}/{name} has port {}: use a port from 1 to 65535",
                    l.name, l.port
                ))
            })?;
            ports.insert(port);
        }
        let infra = gw.spec.infrastructure.as_ref();
        Ok(Self {
            namespace,
            name,
            uid,
            ports,
            labels: infra.and_then(|i| i.labels.clone()).unwrap_or_default(),
            annotations: infra
                .and_then(|i| i.annotations.clone())
                .unwrap_or_default(),
        })
    }
}

/// The snapshot channel's credentials, copied into each fleet's Secret: pods cannot mount
/// a Secret of another namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotCredentials {
    /// The bearer token pushes carry.
    pub token: String,
    /// With TLS on the snapshot channel.
    pub tls: Option<SnapshotTls>,
}

/// PEM: the data planes' admin certificate and key, and the CA that verifies the
/// operator's client certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotTls {
    pub cert: String,
    pub key: String,
    pub client_ca: String,
}

/// How a fleet is kept available during voluntary disruptions.
#[derive(Clone, Debug, PartialEq)]
pub enum Disruption {
    MaxUnavailable(IntOrString),
    MinAvailable(IntOrString),
}

/// Autoscaling of a fleet, taken from the default fleet's HorizontalPodAutoscaler.
#[derive(Clone, Debug, PartialEq)]
pub struct Autoscaling {
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub metrics: Vec<MetricSpec>,
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
}

/// What every Gateway fleet is made from: the chart's default data-plane fleet
/// ([`FleetTemplate::from_default_fleet`]), optionally overridden per GatewayClass
/// ([`FleetTemplate::with_parameters`]).
#[derive(Clone, Debug, PartialEq)]
pub struct FleetTemplate {
    /// The default fleet's pod template, without what is per fleet: its labels, the
    /// listener and credential flags, the volumes those credentials came from and every
    /// container port but the admin one.
    pub pod: PodTemplateSpec,
    /// The data-plane container in `pod`.
    pub container: String,
    pub admin_port: u16,
    /// The admin port's name, which the pusher looks up in EndpointSlices.
    pub admin_port_name: String,
    /// Fixed replicas; ignored with `autoscaling`.
    pub replicas: i32,
    pub autoscaling: Option<Autoscaling>,
    pub disruption: Option<Disruption>,
    pub unhealthy_pod_eviction_policy: Option<String>,
    pub max_surge: Option<IntOrString>,
    pub revision_history_limit: Option<i32>,
    /// `ClusterIP`, `NodePort` or `LoadBalancer`.
    pub service_type: String,
}

/// The objects of one Gateway's fleet, all in the Gateway's namespace.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetObjects {
    pub secret: k8s_openapi::api::core::v1::Secret,
    pub service_account: ServiceAccount,
    pub deployment: Deployment,
    /// The Gateway's traffic: one port per listener port.
    pub service: Service,
    /// The admin port alone, headless: what the operator pushes tables to.
    pub admin_service: Service,
    pub hpa: Option<HorizontalPodAutoscaler>,
    pub pdb: Option<PodDisruptionBudget>,
}

/// The name of a fleet's admin Service, whose EndpointSlices list the pods to push to.
pub fn admin_service_name(gateway: &str) -> String {
    dns_label(gateway, "-parapet-admin")
}

/// The value of a fleet's labels for its Gateway: the Gateway's name when it fits a label
/// value (63 characters), else cut with a hash, as Service names are.
pub fn fleet_label(gateway: &str) -> String {
    if gateway.len() <= 63 {
        gateway.to_string()
    } else {
        dns_label(gateway, "")
    }
}

/// The name of a fleet's traffic Service: the Gateway's, when it fits a Service name.
pub fn service_name(gateway: &str) -> String {
    dns_label(gateway, "")
}

/// `base` + `suffix` as a DNS label (what Service names and label values must be: at most
/// 63 characters, starting with a letter). Gateway names may be longer (253): a name that
/// does not fit is cut and keeps a hash of the whole, so two long names never collide.
fn dns_label(base: &str, suffix: &str) -> String {
    let lead = if base.starts_with(|c: char| c.is_ascii_lowercase()) {
        ""
    } else {
        "g"
    };
    // Gateway names may have dots; a label may not.
    let dashed = base.replace('.', "-");
    fit(lead, base, &dashed, suffix, 63)
}

/// `lead` + `name` + `suffix` within `max` bytes: `name` cut, with a hash of `original`, when
/// it does not fit or had to change.
fn fit(lead: &str, original: &str, name: &str, suffix: &str, max: usize) -> String {
    let whole = format!("{lead}{name}{suffix}");
    if whole.len() <= max && name == original {
        return whole;
    }
    // Changed names carry the hash too, so `a.b` and `a-b` never share a name.
    let hash = hex(&Sha256::digest(original.as_bytes())[..4]);
    let room = max - suffix.len() - hash.len() - 1 - lead.len();
    let cut = name[..room.min(name.len())].trim_end_matches(['-', '.']);
    format!("{lead}{cut}-{hash}{suffix}")
}

/// The name of the Secret holding a fleet's copy of the snapshot credentials.
pub fn secret_name(gateway: &str) -> String {
    fit("", gateway, gateway, "-parapet-snapshot", 253)
}

/// The token of one Gateway's fleet, derived from the operator's: a fleet's Secret then
/// opens no other fleet's snapshot API, and the operator's own token never leaves its
/// namespace. Derived, not stored, so every operator replica pushes with the same one.
pub fn fleet_token(token: &str, namespace: &str, name: &str) -> String {
    let mut h = Sha256::new();
    for part in ["parapet gateway fleet token", token, namespace, name] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex(&h.finalize())
}

/// The Service port name of a listener port.
pub fn listener_port_name(port: u16) -> String {
    format!("l-{port}")
}

/// The flag's name when `arg` is `--flag` or `--flag=value`.
fn flag_name(arg: &str) -> &str {
    arg.split_once('=').map_or(arg, |(n, _)| n)
}

/// Removes `PATH_FLAGS`, `BOOL_FLAGS` and `VALUE_FLAGS` (as `--f=v` or `--f v`); returns
/// the remaining args and the paths the removed path flags named.
fn strip_flags(args: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut kept, mut paths) = (Vec::new(), Vec::new());
    let mut it = args.iter().peekable();
    while let Some(arg) = it.next() {
        let name = flag_name(arg);
        let takes_value = PATH_FLAGS.contains(&name) || VALUE_FLAGS.contains(&name);
        if takes_value {
            let value = match arg.split_once('=') {
                Some((_, v)) => Some(v.to_string()),
                None => it.next_if(|v| !v.starts_with("--")).cloned(),
            };
            if PATH_FLAGS.contains(&name) {
                paths.extend(value);
            }
        } else if !BOOL_FLAGS.contains(&name) {
            kept.push(arg.clone());
        }
    }
    (kept, paths)
}

impl FleetTemplate {
    /// A template from the chart's default data-plane Deployment and, when installed, its
    /// HorizontalPodAutoscaler and PodDisruptionBudget. The data-plane container is the
    /// one with a port named `admin_port_name`. The Service type defaults to ClusterIP.
    pub fn from_default_fleet(
        deployment: &Deployment,
        hpa: Option<&HorizontalPodAutoscaler>,
        pdb: Option<&PodDisruptionBudget>,
        admin_port_name: &str,
    ) -> Result<Self, FleetError> {
        let what = format!(
            "the default data-plane Deployment {}/{}",
            deployment.namespace().unwrap_or_default(),
            deployment.name_any()
        );
        let spec = &deployment.spec;
        let mut pod = spec.template.clone();
        let pod_spec = pod
            .spec
            .as_mut()
            .ok_or_else(|| FleetError::Template(format!("{what} has no pod spec")))?;
        let admin_of = |c: &Container| {
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(admin_port_name))
                .map(|p| p.container_port)
        };
        let Some(container) = pod_spec
            .containers
            .iter_mut()
            .find(|c| admin_of(c).is_some())
        else {
            return Err(FleetError::Template(format!(
                "{what} has no container port named {admin_port_name}: name the data plane's admin port so, or set --dataplane-port-name to its name"
            )));
        };
        let admin_port = admin_of(container)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                FleetError::Template(format!(
                    "{what}: container port {admin_port_name} is not a port from 1 to 65535"
                ))
            })?;
        let (args, paths) = strip_flags(container.args.as_deref().unwrap_or_default());
        container.args = Some(args);
        if let Some(env) = container.env.as_mut() {
            env.retain(|e| !FLAG_ENV.contains(&e.name.as_str()));
        }
        container
            .ports
            .get_or_insert_default()
            .retain(|p| p.name.as_deref() == Some(admin_port_name));
        // The volumes the credential flags pointed into: their Secrets are of the
        // operator's namespace; the fleet mounts its own copy instead.
        let mounts = container.volume_mounts.get_or_insert_default();
        let mut dropped: BTreeSet<String> = BTreeSet::new();
        mounts.retain(|m| {
            let covers = paths
                .iter()
                .any(|p| std::path::Path::new(p).starts_with(&m.mount_path));
            if covers {
                dropped.insert(m.name.clone());
            }
            !covers
        });
        let container_name = container.name.clone();
        let still_used: BTreeSet<String> = pod_spec
            .containers
            .iter()
            .chain(pod_spec.init_containers.iter().flatten())
            .flat_map(|c| c.volume_mounts.iter().flatten())
            .map(|m| m.name.clone())
            .collect();
        if let Some(volumes) = pod_spec.volumes.as_mut() {
            volumes.retain(|v| !dropped.contains(&v.name) || still_used.contains(&v.name));
        }
        let meta = pod.metadata.get_or_insert_default();
        // The default fleet's labels would put a Gateway's pods behind the default fleet's
        // Services and budget when both share a namespace; the fleet sets its own.
        meta.labels = None;
        if let Some(a) = meta.annotations.as_mut() {
            a.retain(|k, _| !RESTART_ANNOTATIONS.contains(&k.as_str()));
        }
        let autoscaling = hpa.map(|h| &h.spec).map(|s| Autoscaling {
            min_replicas: s.min_replicas.unwrap_or(1),
            max_replicas: s.max_replicas,
            metrics: s.metrics.clone().unwrap_or_default(),
            behavior: s.behavior.clone(),
        });
        let pdb_spec = pdb.and_then(|p| p.spec.as_ref());
        let disruption = pdb_spec.and_then(|s| match (&s.min_available, &s.max_unavailable) {
            (Some(m), _) => Some(Disruption::MinAvailable(m.clone())),
            (None, Some(m)) => Some(Disruption::MaxUnavailable(m.clone())),
            (None, None) => None,
        });
        let disruption = disruption
            .or_else(|| pdb_spec.map(|_| Disruption::MaxUnavailable(IntOrString::Int(1))));
        Ok(Self {
            pod,
            container: container_name,
            admin_port,
            admin_port_name: admin_port_name.to_string(),
            replicas: spec.replicas.unwrap_or(1),
            autoscaling,
            disruption,
            unhealthy_pod_eviction_policy: pdb_spec
                .and_then(|s| s.unhealthy_pod_eviction_policy.clone()),
            max_surge: spec
                .strategy
                .as_ref()
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.max_surge.clone()),
            revision_history_limit: spec.revision_history_limit,
            service_type: "ClusterIP".into(),
        })
    }

    /// This template with a GatewayClass's parameters applied: the ConfigMap that
    /// [`parameters_ref`] named. Its data keys:
    ///
    /// - `replicas`: a fixed number of pods (no autoscaling);
    /// - `minReplicas`, `maxReplicas`: the autoscaler's bounds (the default fleet must be
    ///   autoscaled);
    /// - `serviceType`: `ClusterIP`, `NodePort` or `LoadBalancer`;
    /// - `image`: the data plane's image.
    ///
    /// A ConfigMap rather than a CRD of Parapet's own, for now: it keeps the CRD set small
    /// while the parameters are few, and a typed CRD can replace it later.
    pub fn with_parameters(&self, cm: &ConfigMap) -> Result<Self, FleetError> {
        let at = format!(
            "ConfigMap {}/{}",
            cm.namespace().unwrap_or_default(),
            cm.name_any()
        );
        let bad = |msg: String| FleetError::InvalidParameters(format!("{at}: {msg}"));
        if let Some(key) = cm.binary_data.iter().flatten().map(|(k, _)| k).next() {
            return Err(bad(format!(
                "binaryData key {key} is not read: put parameters under data"
            )));
        }
        let data = cm.data.clone().unwrap_or_default();
        if let Some(key) = data.keys().find(|k| {
            ![
                "replicas",
                "minReplicas",
                "maxReplicas",
                "serviceType",
                "image",
            ]
            .contains(&k.as_str())
        }) {
            return Err(bad(format!(
                "unknown key {key}: remove it (known keys: replicas, minReplicas, maxReplicas, serviceType, image)"
            )));
        }
        let count = |key: &str, min: i32| -> Result<Option<i32>, FleetError> {
            let Some(v) = data.get(key) else {
                return Ok(None);
            };
            match v.trim().parse::<i32>() {
                Ok(n) if n >= min => Ok(Some(n)),
                _ => Err(bad(format!(
                    "{key} is \"{v}\": set it to a whole number of {min} or more"
                ))),
            }
        };
        let mut out = self.clone();
        let replicas = count("replicas", 0)?;
        let (min, max) = (count("minReplicas", 1)?, count("maxReplicas", 1)?);
        if replicas.is_some() && (min.is_some() || max.is_some()) {
            return Err(bad(
                "set either replicas (a fixed number of pods) or minReplicas/maxReplicas (autoscaling), not both".into(),
            ));
        }
        if let Some(n) = replicas {
            out.replicas = n;
            out.autoscaling = None;
        }
        if min.is_some() || max.is_some() {
            let Some(a) = out.autoscaling.as_mut() else {
                return Err(bad(
                    "minReplicas and maxReplicas bound the autoscaler, and the default data-plane fleet has none: set replicas instead, or enable dataplane.autoscaling in the chart".into(),
                ));
            };
            a.min_replicas = min.unwrap_or(a.min_replicas);
            a.max_replicas = max.unwrap_or(a.max_replicas);
            if a.min_replicas > a.max_replicas {
                return Err(bad(format!(
                    "minReplicas ({}) is above maxReplicas ({}): lower minReplicas or raise maxReplicas",
                    a.min_replicas, a.max_replicas
                )));
            }
        }
        if let Some(t) = data.get("serviceType") {
            if !["ClusterIP", "NodePort", "LoadBalancer"].contains(&t.as_str()) {
                return Err(bad(format!(
                    "serviceType is \"{t}\": set it to ClusterIP, NodePort or LoadBalancer"
                )));
            }
            out.service_type = t.clone();
        }
        if let Some(image) = data.get("image") {
            if image.is_empty() || image.chars().any(char::is_whitespace) {
                return Err(bad(format!(
                    "image is \"{image}\": set it to an image reference such as registry.example/parapet/dataplane:1.0"
                )));
            }
            if let Some(c) = out.container_mut() {
                c.image = Some(image.clone());
            }
        }
        Ok(out)
    }

    fn container_mut(&mut self) -> Option<&mut Container> {
        let name = &self.container;
        self.pod
            .spec
            .as_mut()?
            .containers
            .iter_mut()
            .find(|c| &c.name == name)
    }
}

/// The ConfigMap (namespace, name) a GatewayClass's `spec.parametersRef` names, if any.
/// Only core ConfigMaps with a namespace are understood.
pub fn parameters_ref(class: &GatewayClass) -> Result<Option<(String, String)>, FleetError> {
    let Some(r) = &class.spec.parameters_ref else {
        return Ok(None);
    };
    if !r.group.is_empty() || r.kind != "ConfigMap" {
        let group = if r.group.is_empty() { "core" } else { &r.group };
        return Err(FleetError::InvalidParameters(format!(
            "parametersRef names a {} of group {group}: Parapet reads only ConfigMaps (group \"\", kind ConfigMap)",
            r.kind
        )));
    }
    match r.namespace.as_deref().filter(|n| !n.is_empty()) {
        Some(ns) => Ok(Some((ns.to_string(), r.name.clone()))),
        None => Err(FleetError::InvalidParameters(format!(
            "parametersRef to ConfigMap {} has no namespace: set parametersRef.namespace",
            r.name
        ))),
    }
}

fn fleet_labels(gw: &FleetGateway) -> BTreeMap<String, String> {
    BTreeMap::from([
        (GATEWAY_NAME_LABEL.to_string(), fleet_label(&gw.name)),
        (MANAGED_BY_LABEL.to_string(), FIELD_MANAGER.to_string()),
        (FLEET_LABEL.to_string(), fleet_label(&gw.name)),
    ])
}

/// The infrastructure labels with the fleet's own on top (they select the pods).
fn labels(gw: &FleetGateway) -> BTreeMap<String, String> {
    let mut l = gw.labels.clone();
    l.extend(fleet_labels(gw));
    l
}

fn meta(gw: &FleetGateway, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(gw.namespace.clone()),
        labels: Some(labels(gw)),
        annotations: (!gw.annotations.is_empty()).then(|| gw.annotations.clone()),
        owner_references: Some(vec![OwnerReference {
            api_version: "gateway.networking.k8s.io/v1".into(),
            kind: "Gateway".into(),
            name: gw.name.clone(),
            uid: gw.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]),
        ..Default::default()
    }
}

fn selector(gw: &FleetGateway) -> LabelSelector {
    LabelSelector {
        match_labels: Some(fleet_labels(gw)),
        ..Default::default()
    }
}

fn secret_data(creds: &SnapshotCredentials) -> BTreeMap<String, ByteString> {
    let mut data = BTreeMap::from([("token".to_string(), creds.token.as_bytes())]);
    if let Some(t) = &creds.tls {
        data.insert("tls.crt".into(), t.cert.as_bytes());
        data.insert("tls.key".into(), t.key.as_bytes());
        data.insert("ca.crt".into(), t.client_ca.as_bytes());
    }
    data.into_iter()
        .map(|(k, v)| (k, ByteString(v.to_vec())))
        .collect()
}

/// The objects of `gw`'s fleet.
pub fn render(
    gw: &FleetGateway,
    template: &FleetTemplate,
    creds: &SnapshotCredentials,
) -> FleetObjects {
    let data = secret_data(creds);
    let secret_hash = {
        let mut h = Sha256::new();
        for (k, v) in &data {
            h.update((k.len() as u64).to_be_bytes());
            h.update(k.as_bytes());
            h.update((v.0.len() as u64).to_be_bytes());
            h.update(&v.0);
        }
        hex(&h.finalize()[..16])
    };
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: meta(gw, secret_name(&gw.name)),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    };
    let service_account = ServiceAccount {
        metadata: meta(gw, gw.name.clone()),
        automount_service_account_token: Some(false),
        ..Default::default()
    };
    let deployment = Deployment {
        metadata: meta(gw, gw.name.clone()),
        spec: DeploymentSpec {
            replicas: template.autoscaling.is_none().then_some(template.replicas),
            revision_history_limit: template.revision_history_limit,
            selector: selector(gw),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                // Never below the current capacity while rolling, as the default fleet.
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(
                        template
                            .max_surge
                            .clone()
                            .unwrap_or_else(|| IntOrString::String("25%".into())),
                    ),
                }),
            }),
            template: pod_template(gw, template, creds, secret_hash),
            ..Default::default()
        },
        ..Default::default()
    };
    let ports: Vec<ServicePort> = gw
        .ports
        .iter()
        .map(|&p| ServicePort {
            name: Some(listener_port_name(p)),
            port: i32::from(p),
            target_port: Some(IntOrString::Int(i32::from(p))),
            protocol: Some("TCP".into()),
            ..Default::default()
        })
        .collect();
    let service = Service {
        metadata: meta(gw, service_name(&gw.name)),
        spec: Some(ServiceSpec {
            type_: Some(template.service_type.clone()),
            selector: Some(fleet_labels(gw)),
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    };
    // The admin port in a headless Service of its own: the traffic Service may be a load
    // balancer, and the snapshot API is never published through one.
    let admin_service = Service {
        metadata: meta(gw, admin_service_name(&gw.name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(fleet_labels(gw)),
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some(template.admin_port_name.clone()),
                port: i32::from(template.admin_port),
                target_port: Some(IntOrString::Int(i32::from(template.admin_port))),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let hpa = template
        .autoscaling
        .as_ref()
        .map(|a| HorizontalPodAutoscaler {
            metadata: meta(gw, gw.name.clone()),
            spec: HorizontalPodAutoscalerSpec {
                scale_target_ref: CrossVersionObjectReference {
                    api_version: Some("apps/v1".into()),
                    kind: "Deployment".into(),
                    name: gw.name.clone(),
                },
                min_replicas: Some(a.min_replicas),
                max_replicas: a.max_replicas,
                metrics: (!a.metrics.is_empty()).then(|| a.metrics.clone()),
                behavior: a.behavior.clone(),
            },
            ..Default::default()
        });
    let pdb = template.disruption.as_ref().map(|d| PodDisruptionBudget {
        metadata: meta(gw, gw.name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(selector(gw)),
            max_unavailable: match d {
                Disruption::MaxUnavailable(v) => Some(v.clone()),
                Disruption::MinAvailable(_) => None,
            },
            min_available: match d {
                Disruption::MinAvailable(v) => Some(v.clone()),
                Disruption::MaxUnavailable(_) => None,
            },
            unhealthy_pod_eviction_policy: template.unhealthy_pod_eviction_policy.clone(),
        }),
        ..Default::default()
    });
    FleetObjects {
        secret,
        service_account,
        deployment,
        service,
        admin_service,
        hpa,
        pdb,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pod_template(
    gw: &FleetGateway,
    template: &FleetTemplate,
    creds: &SnapshotCredentials,
    secret_hash: String,
) -> PodTemplateSpec {
    let mut pod = template.pod.clone();
    let meta = pod.metadata.get_or_insert_default();
    meta.labels = Some(labels(gw));
    let annotations = meta.annotations.get_or_insert_default();
    annotations.extend(gw.annotations.clone());
    annotations.insert(SECRET_HASH_ANNOTATION.into(), secret_hash);
    let spec = pod.spec.get_or_insert_default();
    spec.service_account_name = Some(gw.name.clone());
    // The deprecated alias, which the API server fills in on read: left to it, or it
    // would name the default fleet's account.
    spec.service_account = None;
    spec.automount_service_account_token = Some(false);
    let sc = spec
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    let sysctls = sc.sysctls.get_or_insert_default();
    sysctls.retain(|s| s.name != UNPRIVILEGED_PORT_SYSCTL);
    sysctls.push(Sysctl {
        name: UNPRIVILEGED_PORT_SYSCTL.into(),
        value: "0".into(),
    });
    spec.volumes.get_or_insert_default().push(Volume {
        name: SNAPSHOT_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret_name(&gw.name)),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    });
    // Spread over this fleet's own pods, not the default fleet's.
    for t in spec.topology_spread_constraints.iter_mut().flatten() {
        if t.label_selector.is_some() {
            t.label_selector = Some(selector(gw));
        }
    }
    if let Some(c) = spec
        .containers
        .iter_mut()
        .find(|c| c.name == template.container)
    {
        let args = c.args.get_or_insert_default();
        args.extend(gw.ports.iter().map(|p| format!("--listen=0.0.0.0:{p}")));
        args.push(format!("--snapshot-token-file={SNAPSHOT_DIR}/token"));
        if creds.tls.is_some() {
            args.push(format!("--admin-tls-cert={SNAPSHOT_DIR}/tls.crt"));
            args.push(format!("--admin-tls-key={SNAPSHOT_DIR}/tls.key"));
            args.push(format!("--admin-client-ca={SNAPSHOT_DIR}/ca.crt"));
        }
        let mut ports: Vec<ContainerPort> = gw
            .ports
            .iter()
            .map(|&p| ContainerPort {
                name: Some(listener_port_name(p)),
                container_port: i32::from(p),
                protocol: Some("TCP".into()),
                ..Default::default()
            })
            .collect();
        ports.extend(c.ports.take().into_iter().flatten());
        c.ports = Some(ports);
        c.volume_mounts.get_or_insert_default().push(VolumeMount {
            name: SNAPSHOT_VOLUME.into(),
            mount_path: SNAPSHOT_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        // Probes on the admin port follow its scheme, which the credentials decide.
        let scheme = if creds.tls.is_some() { "HTTPS" } else { "HTTP" };
        let admin = (
            IntOrString::String(template.admin_port_name.clone()),
            IntOrString::Int(i32::from(template.admin_port)),
        );
        for probe in [
            &mut c.readiness_probe,
            &mut c.liveness_probe,
            &mut c.startup_probe,
        ]
        .into_iter()
        .flatten()
        {
            if let Some(get) = probe.http_get.as_mut()
                && (get.port == admin.0 || get.port == admin.1)
            {
                get.scheme = Some(scheme.into());
            }
        }
    }
    pod
}

async fn apply_one<K>(client: &Client, namespace: &str, obj: &K) -> anyhow::Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = obj.meta().name.clone().unwrap_or_default();
    let kind = K::kind(&K::DynamicType::default()).to_string();
    // An object of that name that is not this fleet's is someone else's: never taken over
    // (a forced apply and an ownerReference would rewrite it, then delete it with the
    // Gateway).
    let existing = api
        .get_opt(&name)
        .await
        .with_context(|| format!("cannot read {kind} {namespace}/{name}"))?;
    if let Some(e) = existing
        && e.labels().get(FLEET_LABEL)
            != obj.meta().labels.as_ref().and_then(|l| l.get(FLEET_LABEL))
    {
        anyhow::bail!(
            "{kind} {namespace}/{name} exists and is not this Gateway's fleet; Parapet does not take it over: rename the Gateway or remove the {kind}"
        );
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .with_context(|| {
        format!(
            "cannot apply {} {namespace}/{name}",
            K::kind(&K::DynamicType::default())
        )
    })?;
    Ok(())
}

/// Deletes `name` of kind `K` if it is a fleet's (the template no longer has one).
async fn delete_if_fleet<K>(client: &Client, namespace: &str, name: &str) -> anyhow::Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let cannot = || format!("cannot remove {kind} {namespace}/{name}");
    let Some(existing) = api.get_opt(name).await.with_context(cannot)? else {
        return Ok(());
    };
    if existing.labels().get(FLEET_LABEL) != Some(&fleet_label(name)) {
        return Ok(());
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(cannot),
    }
}

/// Creates or updates a fleet's objects (server-side apply, field manager
/// [`FIELD_MANAGER`], forced: the operator owns these objects). An autoscaler or
/// disruption budget the fleet no longer has is deleted. The Secret goes first, so new
/// pods find it.
pub async fn apply(client: &Client, objects: &FleetObjects) -> anyhow::Result<()> {
    let ns = objects.deployment.namespace().unwrap_or_default();
    let name = objects.deployment.name_any();
    apply_one(client, &ns, &objects.secret).await?;
    apply_one(client, &ns, &objects.service_account).await?;
    apply_one(client, &ns, &objects.service).await?;
    apply_one(client, &ns, &objects.admin_service).await?;
    apply_one(client, &ns, &objects.deployment).await?;
    match &objects.hpa {
        Some(h) => apply_one(client, &ns, h).await?,
        None => delete_if_fleet::<HorizontalPodAutoscaler>(client, &ns, &name).await?,
    }
    match &objects.pdb {
        Some(p) => apply_one(client, &ns, p).await?,
        None => delete_if_fleet::<PodDisruptionBudget>(client, &ns, &name).await?,
    }
    Ok(())
}

/// (namespace, name) of the objects whose fleet is not in `keep` (fleets are keyed by
/// their Gateway's namespace and name, from [`FLEET_LABEL`]).
pub fn stale<'a>(
    objects: impl IntoIterator<Item = &'a ObjectMeta>,
    keep: &BTreeSet<(String, String)>,
) -> Vec<(String, String)> {
    objects
        .into_iter()
        .filter_map(|m| {
            let ns = m.namespace.clone()?;
            let fleet = m.labels.as_ref()?.get(FLEET_LABEL)?;
            let name = m.name.clone()?;
            let kept = keep
                .iter()
                .any(|(n, g)| *n == ns && fleet_label(g) == *fleet);
            (!kept).then_some((ns, name))
        })
        .collect()
}

async fn delete_stale_of<K>(
    client: &Client,
    keep: &BTreeSet<(String, String)>,
) -> anyhow::Result<usize>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let all: Api<K> = Api::all(client.clone());
    let list = all
        .list(&ListParams::default().labels(FLEET_LABEL))
        .await
        .with_context(|| format!("cannot list the Gateway fleets' {kind}s"))?;
    let gone = stale(list.items.iter().map(|o| o.meta()), keep);
    for (ns, name) in &gone {
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(%kind, object = %format!("{ns}/{name}"), "stale Gateway fleet object deleted")
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot delete {kind} {ns}/{name}"));
            }
        }
    }
    Ok(gone.len())
}

/// Deletes the fleets whose Gateway is not in `keep` (namespace, name): the Gateways
/// that exist and are of a Parapet GatewayClass. Garbage collection follows a deleted
/// Gateway already; this is for a Gateway moved to another class (and for fleets left
/// behind while the operator was down). Returns how many objects were deleted.
pub async fn delete_stale(
    client: &Client,
    keep: &BTreeSet<(String, String)>,
) -> anyhow::Result<usize> {
    // The Deployment first: its pods stop before their Secret and Service go.
    Ok(delete_stale_of::<Deployment>(client, keep).await?
        + delete_stale_of::<HorizontalPodAutoscaler>(client, keep).await?
        + delete_stale_of::<PodDisruptionBudget>(client, keep).await?
        + delete_stale_of::<Service>(client, keep).await?
        + delete_stale_of::<ServiceAccount>(client, keep).await?
        + delete_stale_of::<k8s_openapi::api::core::v1::Secret>(client, keep).await?)
}

#[cfg(test)]
mod tests;
