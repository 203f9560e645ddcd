//! The Gateway API CRDs (standard channel) of the release Parapet is built against, from
//! the Go module cache: `go mod download` fetches the module through the Go module proxy
//! when it is not there yet, so no other download is needed.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::OnceLock,
};

use anyhow::{Context as _, Result, anyhow, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;

use crate::{apply_crd_list, yaml_documents};

/// The Gateway API release whose CRDs the tests install.
pub const VERSION: &str = "v1.6.3";
/// The Go module that ships them.
pub const MODULE: &str = "sigs.k8s.io/gateway-api";
/// Set to a directory holding the module (`config/crd/standard/...`) to skip `go`.
pub const DIR_ENV: &str = "PARAPET_GATEWAY_API_DIR";

/// The standard-channel CRDs the operator serves or reads. The others of the channel
/// (TCPRoute, TLSRoute, UDPRoute, BackendTLSPolicy, ListenerSet) and the
/// ValidatingAdmissionPolicy that guards upgrades are not needed.
pub const CRD_NAMES: [&str; 5] = [
    "gatewayclasses",
    "gateways",
    "httproutes",
    "grpcroutes",
    "referencegrants",
];

static MODULE_DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The module's directory in the Go module cache, downloaded through the Go module proxy
/// the first time (`go mod download`, outside any module so that no go.mod is touched).
pub fn module_dir() -> Result<&'static Path> {
    MODULE_DIR
        .get_or_init(|| find_module_dir().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(|e| anyhow!("the Gateway API module is not available: {e}"))
}

fn find_module_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let scratch = tempfile::tempdir()?;
    let out = std::process::Command::new("go")
        .args(["mod", "download", "-json", &format!("{MODULE}@{VERSION}")])
        .current_dir(scratch.path())
        // No toolchain downloads; module mode without a go.mod of ours.
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GO111MODULE", "on")
        .stdin(Stdio::null())
        .output()
        .context("cannot run `go` (Go is needed to fetch the Gateway API CRDs)")?;
    // `-json` reports a failure in the JSON too, with a non-zero exit.
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if !out.status.success() {
        bail!(
            "`go mod download {MODULE}@{VERSION}` failed ({}): {} {}",
            out.status,
            info.get("Error")
                .and_then(|e| e.as_str())
                .unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    info.get("Dir")
        .and_then(|d| d.as_str())
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("`go mod download -json` printed no Dir"))
}

/// The manifest files of [`CRD_NAMES`].
pub fn crd_files() -> Result<Vec<PathBuf>> {
    let dir = module_dir()?.join("config/crd/standard");
    CRD_NAMES
        .iter()
        .map(|n| {
            let f = dir.join(format!("gateway.networking.k8s.io_{n}.yaml"));
            if f.is_file() {
                Ok(f)
            } else {
                Err(anyhow!("{} is missing", f.display()))
            }
        })
        .collect()
}

/// Applies the Gateway API CRDs server-side (idempotent, so every test may call it) and
/// waits until each is Established.
pub async fn apply_crds(client: &Client) -> Result<Vec<CustomResourceDefinition>> {
    let mut crds = Vec::new();
    for file in crd_files()? {
        for doc in yaml_documents(&file)? {
            let crd: CustomResourceDefinition = serde_json::from_value(doc)
                .with_context(|| format!("{} holds something that is not a CRD", file.display()))?;
            crds.push((file.clone(), crd));
        }
    }
    apply_crd_list(client, crds).await
}
