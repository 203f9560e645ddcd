//! The data plane does not compile or link the Kubernetes client: `kube` and `k8s-openapi`
//! are behind parapet-crds' `kube` feature, which only the operator side turns on. Without
//! this check one `parapet-crds.workspace = true` (instead of leaving the feature off) would
//! quietly put the whole client stack back into `make run` and the data-plane image.

use std::{path::Path, process::Command};

/// Crates the data plane must not depend on, directly or through any other crate.
const FORBIDDEN: &[&str] = &["kube", "kube-client", "kube-core", "k8s-openapi"];

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in a subdirectory of the repository")
}

/// The normal (not dev, not build) dependencies of `packages` built together, as the
/// names cargo prints: one `name vX.Y.Z` line per crate.
fn normal_dependencies(packages: &[&str]) -> Vec<String> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "tree",
        "--offline",
        "--locked",
        "-e",
        "normal",
        "--prefix",
        "none",
    ]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    let out = cmd.current_dir(repo_root()).output().expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut crates: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    crates.sort();
    crates.dedup();
    crates
}

fn assert_kubernetes_free(packages: &[&str], what: &str) {
    let crates = normal_dependencies(packages);
    assert!(
        crates.iter().any(|c| c == "parapet-crds"),
        "cargo tree of {packages:?} does not list parapet-crds, so this check sees nothing: {crates:?}"
    );
    let found: Vec<&String> = crates
        .iter()
        .filter(|c| FORBIDDEN.contains(&c.as_str()))
        .collect();
    assert!(
        found.is_empty(),
        "{what} depends on {found:?}: depend on parapet-crds without its `kube` feature \
         (see `cargo tree -e normal -p {} -i kube`)",
        packages[0]
    );
}

#[test]
fn the_data_plane_does_not_depend_on_the_kubernetes_client() {
    assert_kubernetes_free(&["parapet-dataplane"], "the data plane");
}

#[test]
fn make_run_builds_no_kubernetes_client() {
    // What `make run` builds: the data plane and the sample backends, together.
    assert_kubernetes_free(&["parapet-dataplane", "parapet-tests"], "`make run`");
}
