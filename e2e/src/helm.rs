//! helm against the test cluster: built once from the Go module proxy by
//! `e2e/scripts/build-helm.sh` (or taken from `PARAPET_HELM`), stamped with the test control
//! plane's Kubernetes version, and run with empty config/cache/data homes, so it never
//! reaches a repository.

use std::{path::PathBuf, process::Stdio, sync::OnceLock, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{cluster, repo_root};

/// How long one helm run may take.
const HELM_DEADLINE: Duration = Duration::from_secs(120);

static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The helm binary: `PARAPET_HELM`, else the cached build (built on first use).
pub fn helm_bin() -> Result<PathBuf> {
    HELM.get_or_init(|| cached_tool("PARAPET_HELM", "e2e/scripts/build-helm.sh", "path"))
        .clone()
        .map_err(|e| anyhow!("helm is not available: {e}"))
}

/// A tool the e2e scripts build once into the cache: the path in `env` if set, else what
/// `script arg` prints (building it on first use; its progress goes to stderr).
pub fn cached_tool(env: &str, script: &str, arg: &str) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let script = repo_root().join(script);
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(arg)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {arg} failed ({}); see its output above",
            script.display(),
            out.status
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

#[derive(Debug)]
pub struct HelmOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs helm against the test cluster with empty homes (no repositories, no plugins), every
/// connection but the API server's sent to a closed proxy, and a deadline. Returns its output
/// whatever the exit status.
pub async fn helm(args: &[&str]) -> Result<HelmOutput> {
    helm_at(cluster()?.kubeconfig().as_ref(), args).await
}

/// [`helm`] against the cluster of another kubeconfig.
pub async fn helm_at(kubeconfig: &std::ffi::OsStr, args: &[&str]) -> Result<HelmOutput> {
    let bin = helm_bin()?;
    let home = tempfile::tempdir()?;
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .env("HELM_NO_PLUGINS", "1")
        // Anything but the (loopback) API server goes to a closed port and fails loudly.
        .env("HTTPS_PROXY", "http://127.0.0.1:9")
        .env("HTTP_PROXY", "http://127.0.0.1:9")
        .env("NO_PROXY", no_proxy(kubeconfig))
        .env_remove("HELM_DRIVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let out = tokio::time::timeout(HELM_DEADLINE, child.wait_with_output())
        .await
        .map_err(|_| {
            anyhow!(
                "`helm {}` did not finish within {HELM_DEADLINE:?}",
                args.join(" ")
            )
        })??;
    Ok(HelmOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs helm and returns its stdout; a failure is an error carrying its stderr.
pub async fn helm_ok(args: &[&str]) -> Result<String> {
    let out = helm(args).await?;
    if !out.success {
        bail!("`helm {}` failed: {}", args.join(" "), out.stderr.trim());
    }
    Ok(out.stdout)
}

/// Loopback, plus the API server's host when the kubeconfig names another one (the real
/// node's cluster listens on its bridge address): only those bypass the closed proxy.
fn no_proxy(kubeconfig: &std::ffi::OsStr) -> String {
    let mut hosts = "127.0.0.1,localhost,::1".to_string();
    let first = kubeconfig.to_string_lossy();
    let path = first.split(':').next().unwrap_or_default();
    if let Ok(text) = std::fs::read_to_string(path) {
        for line in text.lines() {
            let Some(url) = line.trim().strip_prefix("server:") else {
                continue;
            };
            let url = url.trim().trim_matches('"');
            if let Some(host) = url
                .strip_prefix("https://")
                .and_then(|rest| rest.split([':', '/']).next())
                .filter(|h| !h.is_empty())
            {
                hosts.push(',');
                hosts.push_str(host);
            }
        }
    }
    hosts
}
