//! Harness for tests against a real Kubernetes control plane.
//!
//! One control plane serves a whole test binary run:
//!
//! - if `KUBECONFIG` is set (what `make e2e` does), the tests use that cluster; it must be on
//!   this machine (loopback, or the real test node's 198.18.x bridge address) unless `PARAPET_E2E_ALLOW_REMOTE_CLUSTER=1`,
//!   because the tests install CRDs and create and delete namespaces;
//! - otherwise the first test to ask starts one with `e2e/scripts/cluster.sh up` in a state
//!   dir of its own, with the test process as `--owner-pid`: the script's watchdog tears the
//!   cluster down once the test binary exits, however it exits.
//!
//! Each test gets its own [`kube::Client`] from [`client`] (a client is tied to the tokio
//! runtime that built it, and every `#[tokio::test]` has its own) and its own
//! [`TestNamespace`], so tests run in parallel. Every wait has a deadline.

pub mod chart;
pub mod fleet;
pub mod gateway_api;
pub mod helm;
pub mod lb;
pub mod receiver;

use std::{
    ffi::OsString,
    future::Future,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::wait::{await_condition, conditions::is_crd_established},
};
use serde::Deserialize as _;
use tokio::io::AsyncWriteExt;

/// Field manager for everything the tests apply.
pub const FIELD_MANAGER: &str = "parapet-e2e";
/// How long the CRDs may take to become Established.
pub const CRD_DEADLINE: Duration = Duration::from_secs(30);
/// How long one kubectl run may take.
pub const KUBECTL_DEADLINE: Duration = Duration::from_secs(60);
/// Set to keep test namespaces after the tests (to look at what a failed test left).
pub const KEEP_NAMESPACES_ENV: &str = "PARAPET_E2E_KEEP_NAMESPACES";
/// Set to `1` to let the tests use a `KUBECONFIG` that points at another machine.
pub const ALLOW_REMOTE_ENV: &str = "PARAPET_E2E_ALLOW_REMOTE_CLUSTER";

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives in a subdirectory of the repository")
        .to_path_buf()
}

/// The control plane the tests talk to.
#[derive(Debug)]
pub struct Cluster {
    /// The value of `KUBECONFIG` for this cluster (a path, or a `:`-separated list of paths
    /// when it came from the environment).
    kubeconfig: OsString,
    /// The state dir, when this process started the cluster.
    owned_state_dir: Option<PathBuf>,
    /// kubectl: `PARAPET_KUBECTL`, else the cached build, else `kubectl` on PATH.
    kubectl: PathBuf,
    /// A kubectl discovery cache that goes away with the cluster, when there is a state dir.
    kubectl_cache_dir: Option<PathBuf>,
}

impl Cluster {
    pub fn kubeconfig(&self) -> &OsString {
        &self.kubeconfig
    }

    /// Whether this test process started the cluster (rather than using `KUBECONFIG`).
    pub fn is_owned(&self) -> bool {
        self.owned_state_dir.is_some()
    }

    pub fn kubectl_path(&self) -> &Path {
        &self.kubectl
    }
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The cluster for this test binary run, started on first use (see the crate docs).
/// Blocks while a cluster starts (a few seconds warm, many minutes on the very first run,
/// which builds the control plane binaries).
pub fn cluster() -> Result<&'static Cluster> {
    CLUSTER
        .get_or_init(|| init_cluster().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("the test cluster is not available: {e}"))
}

fn cluster_script() -> PathBuf {
    repo_root().join("e2e/scripts/cluster.sh")
}

fn init_cluster() -> Result<Cluster> {
    let script = cluster_script();
    let tools_dir = std::process::Command::new("bash")
        .arg(&script)
        .arg("tools-dir")
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    let tools_dir = PathBuf::from(String::from_utf8_lossy(&tools_dir.stdout).trim());
    let kubectl = match std::env::var_os("PARAPET_KUBECTL") {
        Some(path) => PathBuf::from(path),
        None if tools_dir.join("kubectl").is_file() => tools_dir.join("kubectl"),
        None => PathBuf::from("kubectl"),
    };

    match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(kubeconfig) => {
            check_local(&kubeconfig)?;
            // A kubeconfig in a cluster.sh state dir (make e2e): keep kubectl's cache there.
            let kubectl_cache_dir = std::env::split_paths(&kubeconfig)
                .next()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .filter(|dir| dir.join(".parapet-cluster").is_file())
                .map(|dir| dir.join("kubectl-cache"));
            Ok(Cluster {
                kubeconfig,
                owned_state_dir: None,
                kubectl,
                kubectl_cache_dir,
            })
        }
        None => start_own_cluster(&script, kubectl),
    }
}

fn start_own_cluster(script: &Path, kubectl: PathBuf) -> Result<Cluster> {
    let state_dir = std::env::temp_dir().join(format!("parapet-e2e-{}", std::process::id()));
    let started = Instant::now();
    let out = std::process::Command::new("bash")
        .arg(script)
        .args(["up", "--owner-pid", &std::process::id().to_string()])
        .env("PARAPET_CLUSTER_DIR", &state_dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "`{} up` failed ({}); its output:\n{}",
            script.display(),
            out.status,
            stderr.trim_end()
        );
    }
    eprintln!(
        "parapet-e2e: started a control plane in {} ({:.1}s); it stops when this test process exits",
        state_dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(Cluster {
        kubeconfig: state_dir.join("kubeconfig").into_os_string(),
        kubectl_cache_dir: Some(state_dir.join("kubectl-cache")),
        owned_state_dir: Some(state_dir),
        kubectl,
    })
}

/// Refuses a `KUBECONFIG` whose current cluster is not on this machine, unless allowed.
fn check_local(kubeconfig: &OsString) -> Result<()> {
    if std::env::var(ALLOW_REMOTE_ENV).is_ok_and(|v| v == "1") {
        return Ok(());
    }
    let kc = Kubeconfig::from_env()
        .context("cannot read the kubeconfig named by KUBECONFIG")?
        .ok_or_else(|| anyhow!("KUBECONFIG is set but names no kubeconfig"))?;
    let server = current_server(&kc).ok_or_else(|| {
        anyhow!(
            "the kubeconfig in KUBECONFIG={} has no current context with a cluster server",
            kubeconfig.to_string_lossy()
        )
    })?;
    if is_local_url(&server) {
        Ok(())
    } else {
        bail!(
            "KUBECONFIG points at {server}, which is not this machine. The e2e tests install \
             CRDs and create and delete namespaces, so they only run against a local test \
             cluster. Unset KUBECONFIG to let them start their own, or set \
             {ALLOW_REMOTE_ENV}=1 if that cluster is meant for tests."
        )
    }
}

fn current_server(kc: &Kubeconfig) -> Option<String> {
    let context = kc.current_context.as_deref()?;
    let cluster = &kc
        .contexts
        .iter()
        .find(|c| c.name == context)?
        .context
        .as_ref()?
        .cluster;
    kc.clusters
        .iter()
        .find(|c| &c.name == cluster)?
        .cluster
        .as_ref()?
        .server
        .clone()
}

fn is_loopback_url(url: &str) -> bool {
    host_of(url) == "localhost"
        || host_of(url)
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Loopback, or the real test node's bridge address: inside 198.18.0.0/15 (where
/// `cluster.sh up --node real` puts the API server) and assigned to this machine, which
/// binding a socket to it proves.
fn is_local_url(url: &str) -> bool {
    is_loopback_url(url)
        || host_of(url).parse::<std::net::Ipv4Addr>().is_ok_and(|ip| {
            (u32::from(ip) >> 17) == (u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) >> 17)
                && std::net::UdpSocket::bind((ip, 0)).is_ok()
        })
}

fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    }
}

/// A client for the test cluster, with request deadlines. Build one per test.
/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `d` in milliseconds, for reports.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub async fn client() -> Result<Client> {
    let cluster = cluster()?;
    let kc = if cluster.is_owned() {
        Kubeconfig::read_from(Path::new(&cluster.kubeconfig))?
    } else {
        Kubeconfig::from_env()?.ok_or_else(|| anyhow!("KUBECONFIG names no kubeconfig"))?
    };
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("cannot build a client configuration from the test kubeconfig")?;
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(30));
    config.write_timeout = Some(Duration::from_secs(30));
    Client::try_from(config).context("cannot build a Kubernetes client")
}

/// Polls `check` every 100 ms until it returns `Some`, failing after `deadline` with
/// `what` and the last error, if any.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        let last_error = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if start.elapsed() >= deadline {
            return Err(match last_error {
                Some(e) => e.context(format!("{what}: not reached within {deadline:?}")),
                None => anyhow!("{what}: not reached within {deadline:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// CRDs

/// The CRD manifests shipped in `crds/*.yaml`, sorted by file name.
pub fn crd_files() -> Result<Vec<PathBuf>> {
    let dir = repo_root().join("crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "no CRD manifests in {}; generate them with `make crds`",
            dir.display()
        );
    }
    Ok(files)
}

/// Every YAML document of a file, skipping empty ones.
pub fn yaml_documents(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
        let value = serde_json::Value::deserialize(doc)
            .with_context(|| format!("{}: document {} is not valid YAML", path.display(), i + 1))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The CRDs of `crds/*.yaml`, parsed.
pub fn load_crds() -> Result<Vec<(PathBuf, CustomResourceDefinition)>> {
    let mut crds = Vec::new();
    for file in crd_files()? {
        for doc in yaml_documents(&file)? {
            let crd: CustomResourceDefinition = serde_json::from_value(doc)
                .with_context(|| format!("{} holds something that is not a CRD", file.display()))?;
            crds.push((file.clone(), crd));
        }
    }
    Ok(crds)
}

/// Applies every CRD of `crds/*.yaml` (server-side apply, so it is idempotent and tests can
/// call it concurrently) and waits until each is Established. Returns them as the API server
/// has them. Fails with the API server's own message if it rejects a CRD.
///
/// The files are read as YAML 1.2 (serde_yaml_ng). kubectl and Helm read YAML 1.1, where an
/// unquoted `on:` key is the boolean `true`; the acceptance tests apply the files with kubectl
/// as well, to catch that.
pub async fn apply_crds(client: &Client) -> Result<Vec<CustomResourceDefinition>> {
    apply_crd_list(client, load_crds()?).await
}

/// Applies CRDs (each with the file it came from, for messages) server-side and waits until
/// each is Established; returns them as the API server has them.
pub async fn apply_crd_list(
    client: &Client,
    crds: Vec<(PathBuf, CustomResourceDefinition)>,
) -> Result<Vec<CustomResourceDefinition>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for (file, crd) in crds {
        let name = crd
            .metadata
            .name
            .clone()
            .ok_or_else(|| anyhow!("{}: the CRD has no metadata.name", file.display()))?;
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .map_err(|e| {
                anyhow!(
                    "the API server rejected {}: {}",
                    file.display(),
                    api_message(&e)
                )
            })?;
        names.push(name);
    }
    let mut established = Vec::new();
    for name in names {
        let waited = tokio::time::timeout(
            CRD_DEADLINE,
            await_condition(api.clone(), &name, is_crd_established()),
        )
        .await;
        match waited {
            Ok(Ok(Some(crd))) => established.push(crd),
            Ok(Ok(None)) => bail!("CRD {name} was deleted while waiting for it to be Established"),
            Ok(Err(e)) => bail!("watching CRD {name} failed: {e}"),
            Err(_) => {
                let conditions = api
                    .get(&name)
                    .await
                    .ok()
                    .and_then(|c| c.status)
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| {
                        format!(
                            "{}={} ({}: {})",
                            c.type_,
                            c.status,
                            c.reason.unwrap_or_default(),
                            c.message.unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                bail!(
                    "CRD {name} did not become Established within {CRD_DEADLINE:?}; its conditions: {conditions}"
                )
            }
        }
    }
    Ok(established)
}

/// The message of an API error (what kubectl would print), or the error itself.
pub fn api_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Namespaces

static NAMESPACE_SEQ: AtomicU32 = AtomicU32::new(0);

/// A namespace of its own for one test, deleted when dropped (without waiting for the
/// deletion to finish; set `PARAPET_E2E_KEEP_NAMESPACES=1` to keep it).
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
}

impl TestNamespace {
    /// Creates `e2e-<test>-<unique suffix>`; `test` is reduced to a DNS label.
    pub async fn new(client: &Client, test: &str) -> Result<Self> {
        let name = unique_namespace_name(test);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [
                        (
                            "app.kubernetes.io/managed-by".to_string(),
                            FIELD_MANAGER.to_string(),
                        ),
                        ("parapet.dev/e2e-test".to_string(), dns_label(test, 63)),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .map_err(|e| anyhow!("cannot create test namespace {name}: {}", api_message(&e)))?;
        Ok(Self { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_NAMESPACES_ENV).is_some() {
            eprintln!("parapet-e2e: keeping namespace {}", self.name);
            return;
        }
        // Drop cannot await, and the test's runtime may be shutting down: a short, blocking
        // kubectl run that does not wait for the namespace to be finalised.
        let Ok(cluster) = cluster() else { return };
        let mut cmd = cluster.kubectl_command();
        cmd.args([
            "delete",
            "namespace",
            &self.name,
            "--wait=false",
            "--ignore-not-found",
        ])
        .args(["--request-timeout", "10s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        match cmd.output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "parapet-e2e: could not delete namespace {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!(
                "parapet-e2e: could not run kubectl to delete namespace {}: {e}",
                self.name
            ),
        }
    }
}

/// Lowercase alphanumerics and dashes, no leading or trailing dash, at most `max` long.
fn dns_label(s: &str, max: usize) -> String {
    let mapped: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let mut label = String::new();
    for part in mapped.split('-').filter(|p| !p.is_empty()) {
        if !label.is_empty() {
            label.push('-');
        }
        label.push_str(part);
    }
    label.truncate(max);
    label.trim_end_matches('-').to_string()
}

fn unique_namespace_name(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let seq = NAMESPACE_SEQ.fetch_add(1, Ordering::Relaxed);
    // pid and a counter make it unique within a cluster run; the clock guards against pid
    // reuse on a long-lived dev cluster.
    let suffix = format!("{:x}{seq:x}{:x}", std::process::id(), nanos & 0xffff);
    let prefix = dns_label(test, 63 - "e2e-".len() - 1 - suffix.len());
    if prefix.is_empty() {
        format!("e2e-{suffix}")
    } else {
        format!("e2e-{prefix}-{suffix}")
    }
}

// ---------------------------------------------------------------------------------------
// kubectl

/// What a kubectl run printed.
#[derive(Debug)]
pub struct KubectlOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl KubectlOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

impl Cluster {
    fn kubectl_command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        if let Some(dir) = &self.kubectl_cache_dir {
            cmd.arg("--cache-dir").arg(dir);
        }
        cmd
    }
}

/// Runs the cached kubectl against the test cluster (with a deadline), returning its output
/// whatever the exit status.
pub async fn kubectl(args: &[&str]) -> Result<KubectlOutput> {
    run_kubectl(args, None).await
}

/// Like [`kubectl`], feeding `stdin` to it (`kubectl apply -f -`).
pub async fn kubectl_stdin(args: &[&str], stdin: &str) -> Result<KubectlOutput> {
    run_kubectl(args, Some(stdin)).await
}

/// Runs kubectl and returns its stdout; a non-zero exit is an error carrying its stderr.
pub async fn kubectl_ok(args: &[&str]) -> Result<String> {
    let out = kubectl(args).await?;
    if !out.success() {
        bail!(
            "`kubectl {}` failed ({}): {}",
            args.join(" "),
            out.status,
            out.stderr.trim()
        );
    }
    Ok(out.stdout)
}

async fn run_kubectl(args: &[&str], stdin: Option<&str>) -> Result<KubectlOutput> {
    let cluster = cluster()?;
    kubectl_run(
        tokio::process::Command::from(cluster.kubectl_command()),
        args,
        stdin,
    )
    .await
}

/// Runs `kubectl` (`cmd`, set up with its binary and cluster) with `args`, feeding `stdin`,
/// within the kubectl deadline; returns its output whatever the exit status.
pub async fn kubectl_run(
    mut cmd: tokio::process::Command,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<KubectlOutput> {
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {:?}", cmd.as_std().get_program()))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes()).await?;
        drop(pipe);
    }
    let out = tokio::time::timeout(KUBECTL_DEADLINE, child.wait_with_output())
        .await
        .map_err(|_| {
            anyhow!(
                "`kubectl {}` did not finish within {KUBECTL_DEADLINE:?}",
                args.join(" ")
            )
        })??;
    Ok(KubectlOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Reads a `kubectl get` table into rows of (column header, cell) pairs, using the header's
/// column positions (cells may contain spaces, headers do not).
pub fn parse_table(output: &str) -> Vec<Vec<(String, String)>> {
    let mut lines = output.lines().filter(|l| !l.trim().is_empty());
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let mut columns: Vec<(usize, &str)> = Vec::new();
    let mut in_word = false;
    for (i, c) in header.char_indices() {
        if c != ' ' && !in_word {
            columns.push((i, &header[i..]));
        }
        in_word = c != ' ';
    }
    let columns: Vec<(usize, String)> = columns
        .into_iter()
        .map(|(i, rest)| (i, rest.split(' ').next().unwrap_or_default().to_string()))
        .collect();
    lines
        .map(|line| {
            columns
                .iter()
                .enumerate()
                .map(|(n, (start, name))| {
                    let end = columns.get(n + 1).map_or(line.len(), |(s, _)| *s);
                    let cell = line.get(*start..end.min(line.len())).unwrap_or_default();
                    (name.clone(), cell.trim().to_string())
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls() {
        assert!(is_loopback_url("https://127.0.0.1:6443"));
        assert!(is_loopback_url("https://localhost:6443/"));
        assert!(is_loopback_url("https://[::1]:6443"));
        assert!(is_loopback_url("https://127.0.0.2"));
        assert!(!is_loopback_url("https://10.0.0.1:6443"));
        assert!(!is_loopback_url("https://prod.example.com"));
        assert!(!is_loopback_url("https://localhost.example.com:443"));
        // In the test node's range but not on this machine (no bridge holds it).
        assert!(!is_local_url("https://198.19.255.254:6443"));
        assert!(!is_local_url("https://192.0.2.10:6443"));
        assert!(is_local_url("https://127.0.0.1:6443"));
    }

    #[test]
    fn namespace_names_are_dns_labels() {
        let name = unique_namespace_name("Status_Subresource::spec update IGNORES status");
        assert!(name.len() <= 63, "{name}");
        assert!(
            name.starts_with("e2e-status-subresource-spec-update-"),
            "{name}"
        );
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
        let long = unique_namespace_name(&"x".repeat(200));
        assert!(long.len() <= 63 && !long.contains("--"), "{long}");
        assert_ne!(unique_namespace_name("a"), unique_namespace_name("a"));
    }

    #[test]
    fn tables_are_read_by_header_position() {
        let out = [
            "NAME       HOSTS                  ACCEPTED   AGE",
            "accounts   [\"a.example\", \"b\"]     True       5s",
            "login      [\"*\"]                             1s",
        ]
        .join("\n");
        let rows = parse_table(&out);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0][1],
            ("HOSTS".into(), "[\"a.example\", \"b\"]".into())
        );
        assert_eq!(rows[0][2], ("ACCEPTED".into(), "True".into()));
        assert_eq!(rows[1][2], ("ACCEPTED".into(), String::new()));
        assert_eq!(rows[1][3], ("AGE".into(), "1s".into()));
    }
}
