#!/usr/bin/env bash
# Prints the RUSTFLAGS for a release build of the data plane: the caller's own, then
# `-Cprofile-use` with the committed profile (pgo/dataplane.profdata), by absolute path
# because cargo runs rustc from other directories. Every release build of the data plane
# uses it (make images, the Dockerfile, the benchmarks), so what is measured is what ships.
#
#   RUSTFLAGS="$(scripts/dataplane-rustflags.sh)" cargo build --release -p parapet-dataplane
#
# Warns on stderr when the profile was made with another rustc: its records name functions
# with crate hashes that change with the compiler, so little would match and the binary
# would be built mostly as without a profile (correct, only slower). `make pgo` remakes it.
#
# With --dependencies it prints instead a fingerprint of the data plane's dependency tree
# (every crate, version and feature set), which make pgo records beside the profile. Cargo
# hashes a crate's dependencies into its symbol names, which key the profile's records, so
# any change to that tree (a crate added, a version bumped) leaves the data plane's own
# functions without a record: tests/tests/build_profile.rs fails until make pgo is run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ ${1:-} == --dependencies ]]; then
  cd "$root"
  # The tree with its edges (each line's depth first), without the local paths of the
  # workspace's own crates.
  cargo tree -q -p parapet-dataplane -e normal,build --prefix depth -f '{p} {f}' --locked --offline |
    sed -E 's/ \(\/[^)]*\)//' | sha256sum | cut -d' ' -f1
  exit 0
fi
profile=$root/pgo/dataplane.profdata
flags=${RUSTFLAGS:-}
if [[ ! -f $profile ]]; then
  echo "warning: $profile is missing: the data plane is built without profile guidance (make pgo makes it)" >&2
  printf '%s\n' "$flags"
  exit 0
fi
made_with=$(sed -n 's/^rustc: //p' "$root/pgo/dataplane.profdata.txt" 2>/dev/null || true)
building=$("${RUSTC:-rustc}" --version 2>/dev/null || echo "an unknown rustc")
if [[ $made_with != "$building" ]]; then
  echo "warning: pgo/dataplane.profdata was made with ${made_with:-an unrecorded rustc} and this build uses $building: the profile will mostly not apply; run make pgo" >&2
fi
# Functions edited since the profile was made no longer match their records; they are
# compiled as without a profile, which is what the mismatch warnings would say one by one.
printf '%s\n' "${flags:+$flags }-Cprofile-use=$profile -Cllvm-args=-no-pgo-warn-mismatch"
