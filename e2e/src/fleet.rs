//! A Parapet fleet on loopback for operator tests: selector-less Services and
//! EndpointSlices that point at processes on 127.0.0.1, and the operator as a process.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use k8s_openapi::api::{
    core::v1::{Service, ServicePort, ServiceSpec},
    discovery::v1::{
        Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForZone,
    },
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, ObjectMeta, Patch, PatchParams},
};

use crate::cluster;

/// A name for 127.0.0.1 that EndpointSlices accept.
pub const LOCAL_NAME: &str = "parapet-e2e.localhost";

/// Fails with the fix when [`LOCAL_NAME`] does not resolve to this machine.
pub async fn check_local_name() -> Result<()> {
    let ok = tokio::net::lookup_host((LOCAL_NAME, 80))
        .await
        .map(|mut a| a.any(|a| a.ip().is_loopback()))
        .unwrap_or(false);
    anyhow::ensure!(
        ok,
        "{LOCAL_NAME} does not resolve to 127.0.0.1; run `make deps` (as root) or add \"127.0.0.1 {LOCAL_NAME}\" to /etc/hosts"
    );
    Ok(())
}

/// Creates (or updates) a selector-less Service with one named port.
pub async fn service(
    client: &Client,
    ns: &str,
    name: &str,
    port_name: &str,
    port: i32,
) -> Result<()> {
    service_with(client, ns, name, (port_name, port), None).await
}

/// Like [`service`], headless (`clusterIP: None`): for many Services, since a test
/// cluster's Service range has room for a few hundred.
pub async fn headless_service(
    client: &Client,
    ns: &str,
    name: &str,
    port_name: &str,
    port: i32,
) -> Result<()> {
    service_with(client, ns, name, (port_name, port), Some("None")).await
}

async fn service_with(
    client: &Client,
    ns: &str,
    name: &str,
    (port_name, port): (&str, i32),
    cluster_ip: Option<&str>,
) -> Result<()> {
    let svc = Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some(port_name.into()),
                port,
                ..Default::default()
            }]),
            cluster_ip: cluster_ip.map(str::to_string),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<Service>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply("parapet-e2e").force(),
            &Patch::Apply(&svc),
        )
        .await
        .with_context(|| format!("apply Service {ns}/{name}"))?;
    Ok(())
}

/// One EndpointSlice of `service` listing this machine on `port` (one slice per port, since
/// every process here shares the address). The API server refuses loopback IPs (and
/// one-label names like `localhost`) in EndpointSlices, so the slice is of type FQDN with
/// [`LOCAL_NAME`], which `make deps` maps to 127.0.0.1 in /etc/hosts.
/// An EndpointSlice to publish: `service`'s endpoint `name` on `port`.
#[derive(Clone, Copy, Debug)]
pub struct Slice<'a> {
    pub service: &'a str,
    pub name: &'a str,
    pub port_name: &'a str,
    pub port: u16,
    pub ready: bool,
    pub zone: Option<&'a str>,
    /// Topology hints: the zones the endpoint should serve (`hints.forZones`).
    pub for_zones: &'a [&'a str],
}

pub async fn slice(client: &Client, ns: &str, sl: Slice<'_>) -> Result<()> {
    let Slice {
        service,
        name: slice_name,
        port_name,
        port,
        ready,
        zone,
        for_zones,
    } = sl;
    let endpoint = Endpoint {
        addresses: vec![LOCAL_NAME.into()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(ready),
            terminating: Some(false),
        }),
        zone: zone.map(str::to_string),
        hints: (!for_zones.is_empty()).then(|| EndpointHints {
            for_zones: Some(
                for_zones
                    .iter()
                    .map(|z| ForZone {
                        name: (*z).to_string(),
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let s = endpoint_slice(
        service,
        slice_name,
        "FQDN",
        vec![endpoint],
        (port_name, port),
    );
    apply_slice(client, ns, &s).await
}

/// An IPv4 EndpointSlice of `service` listing `addresses` (all ready) on port `port` named
/// `port_name`: for tables with many endpoints. Nothing in the tests that use it dials them.
pub async fn ip_slice(
    client: &Client,
    ns: &str,
    service: &str,
    slice_name: &str,
    (port_name, port): (&str, u16),
    addresses: &[String],
) -> Result<()> {
    let endpoints = addresses
        .iter()
        .map(|a| Endpoint {
            addresses: vec![a.clone()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            ..Default::default()
        })
        .collect();
    let s = endpoint_slice(service, slice_name, "IPv4", endpoints, (port_name, port));
    apply_slice(client, ns, &s).await
}

/// An EndpointSlice of `service` with `endpoints` on one named port.
fn endpoint_slice(
    service: &str,
    slice_name: &str,
    address_type: &str,
    endpoints: Vec<Endpoint>,
    (port_name, port): (&str, u16),
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(slice_name.into()),
            labels: Some(
                [(
                    "kubernetes.io/service-name".to_string(),
                    service.to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        address_type: address_type.into(),
        endpoints: Some(endpoints),
        ports: Some(vec![EndpointPort {
            name: Some(port_name.into()),
            port: Some(i32::from(port)),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

async fn apply_slice(client: &Client, ns: &str, s: &EndpointSlice) -> Result<()> {
    let slice_name = s.metadata.name.as_deref().unwrap_or_default();
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .patch(
            slice_name,
            &PatchParams::apply("parapet-e2e").force(),
            &Patch::Apply(s),
        )
        .await
        .with_context(|| format!("apply EndpointSlice {ns}/{slice_name}"))?;
    Ok(())
}

/// Applies a Parapet object (`ApiRoute` or `UpstreamPool`) with `spec` (server-side, as the
/// e2e field manager); returns it as stored.
pub async fn apply_parapet(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    spec: serde_json::Value,
) -> Result<DynamicObject> {
    let resource = match kind {
        "ApiRoute" => ApiResource::erase::<parapet_crds::api::ApiRoute>(&()),
        "AuthPolicy" => ApiResource::erase::<parapet_crds::api::AuthPolicy>(&()),
        _ => ApiResource::erase::<parapet_crds::api::UpstreamPool>(&()),
    };
    let obj = serde_json::json!({"apiVersion": "parapet.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec});
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &resource)
        .patch(
            name,
            &PatchParams::apply("parapet-e2e").force(),
            &Patch::Apply(&obj),
        )
        .await
        .with_context(|| format!("apply {kind} {ns}/{name}"))
}

pub async fn delete_slice(client: &Client, ns: &str, slice_name: &str) -> Result<()> {
    Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .delete(slice_name, &Default::default())
        .await
        .with_context(|| format!("delete EndpointSlice {ns}/{slice_name}"))?;
    Ok(())
}

/// The `ready` condition of the first endpoint of an EndpointSlice, as the API server has it
/// (`None` when the slice has no endpoint or the condition is unset).
pub async fn slice_ready(client: &Client, ns: &str, slice_name: &str) -> Result<Option<bool>> {
    let s = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .get(slice_name)
        .await
        .with_context(|| format!("get EndpointSlice {ns}/{slice_name}"))?;
    Ok(s.endpoints
        .unwrap_or_default()
        .first()
        .and_then(|e| e.conditions.as_ref())
        .and_then(|c| c.ready))
}

/// The operator binary, killed when dropped.
pub struct Operator {
    child: Child,
    pub metrics: SocketAddr,
}

impl Operator {
    /// Starts the operator for the data-plane Service `dataplane_service` in `ns`, watching
    /// only `ns`, with the Lease in `ns` too.
    pub fn start(
        ns: &str,
        dataplane_service: &str,
        token_file: &str,
        identity: &str,
    ) -> Result<Operator> {
        Self::start_with(ns, dataplane_service, token_file, identity, &[])
    }

    /// As [`Operator::start`], with extra flags.
    pub fn start_with(
        ns: &str,
        dataplane_service: &str,
        token_file: &str,
        identity: &str,
        extra: &[&str],
    ) -> Result<Operator> {
        let kubeconfig = cluster()?.kubeconfig().clone();
        let mut child = Command::new(parapet_tests::dataplane::binary("operator"))
            .args([
                "--watch-namespaces",
                ns,
                "--dataplane-service",
                dataplane_service,
                "--dataplane-namespace",
                ns,
                "--lease-namespace",
                ns,
                "--snapshot-token-file",
                token_file,
                "--metrics-listen",
                "127.0.0.1:0",
                "--identity",
                identity,
                "--debounce",
                "50ms",
                "--max-wait",
                "300ms",
                "--resync-interval",
                "2s",
                "--lease-duration-secs",
                "6",
            ])
            .args(extra)
            .env("KUBECONFIG", kubeconfig)
            .env(
                "PARAPET_LOG",
                std::env::var("PARAPET_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("start the operator binary")?;
        let stderr = child.stderr.take().expect("stderr");
        let id = identity.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{id}] {line}");
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("parapet-operator listening metrics=") {
                    let _ = tx.send(a.to_string());
                }
            }
        });
        let metrics = rx
            .recv_timeout(Duration::from_secs(30))
            .context("the operator printed its metrics address within 30s")?
            .parse()?;
        Ok(Operator { child, metrics })
    }

    /// Waits up to `deadline` for the process to exit by itself; its status, or `None`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let end = std::time::Instant::now() + deadline;
        while std::time::Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}
