//! Release builds of the data plane are profile-guided: `scripts/dataplane-rustflags.sh`
//! gives cargo the committed profile, and make images, the Dockerfile and the benchmarks
//! build with what it prints. These tests hold the script to that: the profile by an
//! absolute path after the caller's own flags, an LLVM indexed profile to read there, and a
//! warning when the building rustc is not the one the profile was made with (its records
//! would then mostly not match, and the binary would quietly lose the optimisation), and
//! the profile made for the dependency tree the data plane is built with.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in a subdirectory of the repository")
}

/// Runs the script with `RUSTFLAGS` and, when given, `RUSTC` set, from another directory
/// (cargo and make call it from wherever they are).
fn rustflags(rustflags: &str, rustc: Option<&Path>) -> Output {
    let mut cmd = Command::new(repo_root().join("scripts/dataplane-rustflags.sh"));
    cmd.current_dir(std::env::temp_dir())
        .env("RUSTFLAGS", rustflags);
    match rustc {
        Some(rustc) => cmd.env("RUSTC", rustc),
        None => cmd.env_remove("RUSTC"),
    };
    let out = cmd.output().expect("scripts/dataplane-rustflags.sh runs");
    assert!(
        out.status.success(),
        "the script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The rustc the committed profile was made with, as `pgo/dataplane.profdata.txt` records it.
fn recorded_rustc() -> String {
    let record = std::fs::read_to_string(repo_root().join("pgo/dataplane.profdata.txt"))
        .expect("pgo/dataplane.profdata.txt is committed beside the profile");
    record
        .lines()
        .find_map(|l| l.strip_prefix("rustc: "))
        .expect("the record names the rustc the profile was made with")
        .to_string()
}

/// A stand-in rustc that only says its version.
fn fake_rustc(dir: &Path, version: &str) -> PathBuf {
    let path = dir.join("rustc");
    std::fs::write(&path, format!("#!/bin/sh\necho '{version}'\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

// One test, not two: a test thread that forks while another has just written its stand-in
// rustc could hold the file open for writing across that exec ("text file busy").
#[test]
fn the_profile_is_used_and_another_rustc_is_warned_about() {
    the_profile_is_used_by_absolute_path_after_the_callers_flags();
    another_rustc_is_warned_about_and_still_builds();
    the_profile_was_made_for_this_dependency_tree();
}

/// Cargo hashes a crate's dependencies into its symbol names, which key the profile's
/// records: after a dependency change the data plane's own functions match nothing (measured:
/// one crate added gave back 4,800 of the 6,600 instructions per plain GET the profile saves).
fn the_profile_was_made_for_this_dependency_tree() {
    let record = std::fs::read_to_string(repo_root().join("pgo/dataplane.profdata.txt")).unwrap();
    let recorded = record
        .lines()
        .find_map(|l| l.strip_prefix("dependencies: "))
        .expect("pgo/dataplane.profdata.txt records the dependency tree the profile was made for");
    let out = Command::new(repo_root().join("scripts/dataplane-rustflags.sh"))
        .arg("--dependencies")
        .output()
        .expect("scripts/dataplane-rustflags.sh runs");
    assert!(
        out.status.success(),
        "the script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let now = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        now.trim(),
        recorded,
        "the data plane's dependency tree changed since pgo/dataplane.profdata was made, so the \
         profile no longer applies to the data plane's own code and release builds lose its \
         optimisation: run make pgo and commit pgo/"
    );
}

fn the_profile_is_used_by_absolute_path_after_the_callers_flags() {
    let dir = tempfile::tempdir().unwrap();
    let same = fake_rustc(dir.path(), &recorded_rustc());
    let out = rustflags("-Ctarget-cpu=x86-64 -Cdebuginfo=1", Some(&same));
    let flags = String::from_utf8(out.stdout).unwrap();
    let flags: Vec<&str> = flags.split_whitespace().collect();
    assert_eq!(
        &flags[..2],
        ["-Ctarget-cpu=x86-64", "-Cdebuginfo=1"],
        "the caller's flags come first and are kept: {flags:?}"
    );
    let profile = flags
        .iter()
        .find_map(|f| f.strip_prefix("-Cprofile-use="))
        .unwrap_or_else(|| panic!("no -Cprofile-use in {flags:?}"));
    let profile = Path::new(profile);
    assert!(profile.is_absolute(), "{profile:?} is not absolute");
    assert_eq!(
        profile.canonicalize().unwrap(),
        repo_root()
            .join("pgo/dataplane.profdata")
            .canonicalize()
            .unwrap()
    );
    // LLVM's indexed profile magic, little-endian: what `llvm-profdata merge` writes and
    // rustc reads (a raw .profraw or a text profile would be refused by the build).
    let bytes = std::fs::read(profile).unwrap();
    assert_eq!(
        bytes.get(..8),
        Some(&0x8169_666f_7270_6cff_u64.to_le_bytes()[..]),
        "pgo/dataplane.profdata is not an LLVM indexed profile"
    );
    assert!(
        out.stderr.is_empty(),
        "no warning with the recorded rustc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn another_rustc_is_warned_about_and_still_builds() {
    let dir = tempfile::tempdir().unwrap();
    let other = fake_rustc(dir.path(), "rustc 0.0.1 (000000000 1970-01-01)");
    let out = rustflags("", Some(&other));
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(
        warning.contains("warning")
            && warning.contains("rustc 0.0.1")
            && warning.contains("make pgo"),
        "expected a warning naming the building rustc and the fix, got: {warning:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("-Cprofile-use="),
        "the build still uses the profile (what still matches applies)"
    );
}
