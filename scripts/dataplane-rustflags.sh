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
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
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
