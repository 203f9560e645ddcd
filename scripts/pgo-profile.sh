#!/usr/bin/env bash
# make pgo: remakes pgo/dataplane.profdata, the profile every release build of the data
# plane is optimised with (scripts/dataplane-rustflags.sh). An instrumented data plane
# (in target/pgo-gen) serves, Parapet alone and briefly, every shape the benchmarks measure:
# bench/paths.sh (all paths), cache.sh, jwt.sh and tracing.sh. The counts are merged
# `--sparse`: a function the training never ran keeps no record and is compiled as without a
# profile, rather than laid out as cold code. Needs llvm-profdata of rustc's LLVM version
# (Debian's llvm-N, installed with apt-get when missing) and the benchmarks' tools.
#
#   PGO_TARGET_DIR=target/pgo-gen   where the instrumented build goes
#   PGO_SECONDS=2                   seconds per shape and round
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh # log, die, ensure_tools

GEN=${PGO_TARGET_DIR:-target/pgo-gen}
SECONDS_PER_SHAPE=${PGO_SECONDS:-2}
TARGET=${CARGO_TARGET_DIR:-target}
[[ $SECONDS_PER_SHAPE =~ ^[1-9][0-9]*$ ]] || die "PGO_SECONDS must be a positive integer (got '$SECONDS_PER_SHAPE')"

llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
[[ -n $llvm ]] || die "rustc -vV names no LLVM version"
PROFDATA=${LLVM_PROFDATA:-llvm-profdata-$llvm}
[[ -n ${LLVM_PROFDATA:-} ]] || ensure_tools "$PROFDATA=llvm-$llvm"

DATA=$(mktemp -d /tmp/parapet-pgo.XXXXXX)
trap 'rm -rf "$DATA"' EXIT
# The path built in is a fixed directory beside the build: it is part of RUSTFLAGS, and a
# new one each run would rebuild every crate instead of only what changed. Only the build's
# own instrumented build scripts and proc macros write there (RUSTFLAGS reach them too):
# the training writes elsewhere (LLVM_PROFILE_FILE below), so their counts never get into
# the data plane's profile.
mkdir -p "$GEN"
BUILT_IN=$(cd "$GEN" && pwd)/profraw
RAW=$DATA/raw

log "building the instrumented data plane into $GEN"
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$BUILT_IN" \
  cargo build --release --locked -q -p parapet-dataplane --bin dataplane --target-dir "$GEN"
cargo build --release --locked -q -p parapet-tests --bin sample-backend --bin jwt-fixture
cp "$TARGET/release/sample-backend" "$TARGET/release/jwt-fixture" "$GEN/release/"

# Parapet alone, one short round each, no callgrind, no waiting for a quiet machine: the
# counts are what matter, not the timings. One raw file per data-plane process.
rm -rf "$BUILT_IN"
export LLVM_PROFILE_FILE="$RAW/dataplane-%p-%m.profraw"
export CARGO_TARGET_DIR=$GEN BENCH_SKIP_BUILD=1 BENCH_PROXIES=parapet BENCH_ROUNDS=1 \
  BENCH_DURATION=$SECONDS_PER_SHAPE BENCH_WARMUP=1 BENCH_IPR=0 BENCH_QUIET_WAIT=0 BENCH_IDLE=2000 \
  BENCH_PAIR_ROUNDS=0
log "training: every path"
BENCH_OUT=$DATA/paths.md ./bench/paths.sh >"$DATA/paths.log" 2>&1 || { cat "$DATA/paths.log" >&2; die "bench/paths.sh failed"; }
log "training: cache hits and coalesced misses"
BENCH_DURATION=${SECONDS_PER_SHAPE}s BENCH_WARMUP=1s BENCH_CACHE_OUT=$DATA/cache.md ./bench/cache.sh >"$DATA/cache.log" 2>&1 ||
  { cat "$DATA/cache.log" >&2; die "bench/cache.sh failed"; }
log "training: tracing"
BENCH_OUT=$DATA/tracing.md ./bench/tracing.sh >"$DATA/tracing.log" 2>&1 || { cat "$DATA/tracing.log" >&2; die "bench/tracing.sh failed"; }
log "training: JWT"
BENCH_OUT=$DATA/jwt.md ./bench/jwt.sh >"$DATA/jwt.log" 2>&1 || { cat "$DATA/jwt.log" >&2; die "bench/jwt.sh failed"; }

shopt -s nullglob
raw=("$RAW"/*.profraw)
((${#raw[@]})) || die "the instrumented data plane wrote no profile (did it exit cleanly?)"
log "merging ${#raw[@]} raw profiles"
"$PROFDATA" merge --sparse -o "$DATA/dataplane.profdata" "${raw[@]}"
mv "$DATA/dataplane.profdata" pgo/dataplane.profdata
{
  echo "# What pgo/dataplane.profdata was made with (scripts/pgo-profile.sh); read by"
  echo "# scripts/dataplane-rustflags.sh, which warns when the building rustc differs, and by"
  echo "# tests/tests/build_profile.rs, which fails when the dependency tree differs."
  echo "rustc: $(rustc --version)"
  echo "dependencies: $(scripts/dataplane-rustflags.sh --dependencies)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- dataplane/src dataplane/Cargo.toml Cargo.lock 2>/dev/null || echo ' (with uncommitted data-plane changes)')"
  echo "made: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "functions: $("$PROFDATA" show pgo/dataplane.profdata | sed -n 's/^Total functions: //p')"
} >pgo/dataplane.profdata.txt
log "wrote pgo/dataplane.profdata ($(du -h pgo/dataplane.profdata | cut -f1)); commit it with pgo/dataplane.profdata.txt"
