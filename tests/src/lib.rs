//! Support for tests that run real processes on 127.0.0.1: sample backends, the data-plane
//! binary on port 0, and an HTTP client. Every wait has a deadline.

pub mod admin;
pub mod backend;
pub mod capture;
pub mod client;
pub mod dataplane;
pub mod idp;
pub mod load;
pub mod otlp;
pub mod pki;
pub mod script_origin;

use std::time::{Duration, Instant};

/// `n` bytes that differ from their neighbours (a cycle of 251, prime to every buffer size),
/// so a byte lost, repeated or out of place shows when a body is compared.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Polls `check` until it returns `Some`, or fails the test after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// YAML for an UpstreamPool named `name` over static endpoints on 127.0.0.1.
pub fn pool_yaml(name: &str, ports: &[u16], extra: &str) -> String {
    let eps: Vec<String> = ports
        .iter()
        .map(|p| format!("{{address: 127.0.0.1, port: {p}}}"))
        .collect();
    format!(
        "---\napiVersion: parapet.dev/v1alpha1\nkind: UpstreamPool\nmetadata: {{name: {name}}}\nspec:\n  static: [{}]\n{extra}\n",
        eps.join(", ")
    )
}

/// YAML for an ApiRoute with the given hosts and rules (rules indented as a list under
/// `rules:`).
pub fn route_yaml(name: &str, hosts: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: parapet.dev/v1alpha1\nkind: ApiRoute\nmetadata: {{name: {name}}}\nspec:\n  hosts: {hosts}\n  rules:\n{rules}\n"
    )
}

/// Compiles YAML into a snapshot with the given version, failing the test on diagnostics.
pub fn snapshot(yaml: &str, version: u64) -> parapet_crds::snapshot::Snapshot {
    let m = parapet_crds::manifest::Manifest::parse(yaml).expect("test YAML parses");
    let out = parapet_crds::compiler::compile(&m.inputs());
    let errors: Vec<String> = out.diagnostics.errors().map(|d| d.to_string()).collect();
    assert!(errors.is_empty(), "test YAML compiles cleanly: {errors:?}");
    parapet_crds::snapshot::Snapshot::new(version, out.table)
}

/// Starts the data plane in standalone mode on `yaml` (written to a temporary file) with
/// extra flags, and waits until it serves the table.
pub async fn standalone(yaml: &str, args: &[&str]) -> (dataplane::Dataplane, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).expect("write the config");
    let mut all = vec!["--config", path.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    let dp = dataplane::Dataplane::start(&all);
    let c = client::Client::new();
    let admin = dp.admin;
    wait_for(
        "the data plane to be ready",
        Duration::from_secs(10),
        || {
            let c = c.clone();
            async move { admin::ready(&c, admin).await.then_some(()) }
        },
    )
    .await;
    (dp, dir)
}
