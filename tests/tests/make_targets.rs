//! Every documented make target (a `## ` comment after its name) works by itself from a
//! clean clone: `make -n TARGET` must succeed and show the step that builds what the target
//! runs (a cargo build, test or run, or a script that builds its own tools). A new target
//! must be added to `EXPECTED` with that step, so a target that runs a binary nobody built
//! cannot slip in.

use std::{collections::BTreeMap, path::Path, process::Command};

/// Target → a string its dry run must contain: the step that builds what it runs, or, for a
/// target that runs nothing it would have to build, the command it runs.
const EXPECTED: &[(&str, &str)] = &[
    ("help", "grep -hE"),
    ("deps", "getent hosts"),
    ("build", "cargo build --workspace --all-targets"),
    (
        "crds",
        "cargo run -q -p parapet-crds --features kube --bin crdgen",
    ),
    ("lint", "cargo clippy --workspace --all-targets"),
    ("audit", "cargo deny"),
    ("unit", "cargo test --workspace"),
    ("h2spec", "cargo build --workspace --all-targets"),
    ("test", "cargo build --workspace --all-targets"),
    ("fuzz-tools", "cargo install cargo-fuzz"),
    ("fuzz", "cargo +nightly fuzz run"),
    ("fuzz-smoke", "cargo +nightly fuzz run"),
    (
        "run",
        "cargo build -q -p parapet-dataplane -p parapet-tests --bins",
    ),
    // bench/run.sh builds the release binaries itself (unless BENCH_SKIP_BUILD is set).
    ("bench", "./bench/run.sh"),
    // The script builds the instrumented data plane itself.
    ("pgo", "./scripts/pgo-profile.sh"),
    ("cluster-up", "cluster.sh up"),
    ("cluster-down", "cluster.sh down"),
    ("cluster-env", "cluster.sh env"),
    ("cluster-status", "cluster.sh status"),
    ("cluster-demo", "cargo build --release --locked"),
    ("e2e", "cargo build --workspace --all-targets"),
    ("e2e-node", "cargo build --release --locked"),
    // The script builds the suite, echo-basic and coredns itself (Go module proxy).
    ("conformance", "cargo build --release --locked"),
    ("helm", "build-helm.sh path"),
    ("chart-lint", "build-helm.sh path"),
    ("chart-test", "cargo build --workspace --all-targets"),
    ("images", "cargo build --release --locked"),
    ("images-docker", "build -f operator/Dockerfile"),
    ("images-lint", "hadolint"),
];

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in a subdirectory of the repository")
}

/// `name: ... ## text` lines of the Makefile and the files it includes.
fn documented_targets() -> Vec<String> {
    let mut out = Vec::new();
    for file in ["Makefile", "e2e/cluster.mk", "charts/chart.mk"] {
        let text = std::fs::read_to_string(repo_root().join(file)).expect(file);
        for line in text.lines() {
            let Some((name, rest)) = line.split_once(':') else {
                continue;
            };
            if rest.contains("## ")
                && !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                out.push(name.to_string());
            }
        }
    }
    out
}

#[test]
fn every_documented_target_builds_what_it_runs() {
    let targets = documented_targets();
    assert!(
        targets.len() >= 20,
        "found only {targets:?}: the `## ` convention changed?"
    );
    let expected: BTreeMap<&str, &str> = EXPECTED.iter().copied().collect();
    let mut failures = Vec::new();
    for target in &targets {
        let Some(want) = expected.get(target.as_str()) else {
            failures.push(format!(
                "`make {target}` is documented but not listed in EXPECTED (tests/tests/make_targets.rs): \
                 add it with the step that builds what it runs"
            ));
            continue;
        };
        // A target directory that does not exist: what a clean clone has.
        let out = Command::new("make")
            .args(["-n", "--no-print-directory", target])
            .current_dir(repo_root())
            .env(
                "CARGO_TARGET_DIR",
                "/nonexistent/parapet-clean-clone-target",
            )
            .env_remove("MAKEFLAGS")
            .output()
            .expect("make is installed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            failures.push(format!(
                "`make -n {target}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        } else if !stdout.contains(want) {
            failures.push(format!(
                "`make -n {target}` does not contain {want:?}; it prints:\n{stdout}"
            ));
        }
    }
    for name in expected.keys() {
        if !targets.iter().any(|t| t == name) {
            failures.push(format!(
                "EXPECTED lists `{name}`, which is not a documented target any more"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
