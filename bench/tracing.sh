#!/usr/bin/env bash
# What tracing costs Parapet per request: the h1 shape of paths.sh (HTTP/1.1 GET, keep-alive,
# 1 KiB answers, one worker) with tracing off, and exporting to a collector at sampling
# ratios 0, 1% and 100%. The collector is a sample backend that answers every OTLP post
# with 200, so export happens in full but costs nothing to receive. Reports CPU µs and
# instructions per request for each, and the difference to tracing off. See BENCHMARKS.md.
#
#   BENCH_TRACE_RATIOS="off 0 0.01 1"    BENCH_OUT=bench/results/latest-tracing.md
#   (and the knobs of paths.sh, e.g. BENCH_ROUNDS, BENCH_SKIP_BUILD)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

read -r -a RATIOS <<<"${BENCH_TRACE_RATIOS:-off 0 0.01 1}"
OUT=${BENCH_OUT:-bench/results/latest-tracing.md}
BASE=${BENCH_PORT_BASE:-18600}
COLLECTOR=$((BASE + 50))
BIN="${CARGO_TARGET_DIR:-target}/release"
make_run_dir parapet-tracing

if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
  log "building the release binaries"
  build_dataplane
  cargo build --release -q -p parapet-tests --bin sample-backend
fi
port_free "$COLLECTOR" || die "port $COLLECTOR on 127.0.0.1 is in use; pick another BENCH_PORT_BASE"
start collector "$BIN/sample-backend" collector "$COLLECTOR" 0
wait_http "http://127.0.0.1:$COLLECTOR/healthz" || die "the collector on port $COLLECTOR did not start"

ROWS="$RUN/rows.tsv"
: >"$ROWS"
for ratio in "${RATIOS[@]}"; do
  flags=""
  [[ $ratio == off ]] || flags="--otlp-endpoint http://127.0.0.1:$COLLECTOR/v1/traces --otlp-sampling-ratio $ratio"
  log "== tracing $ratio"
  BENCH_PATHS=h1 BENCH_PROXIES=parapet BENCH_SKIP_BUILD=1 BENCH_PARAPET_FLAGS="$flags" \
    BENCH_OUT="$RUN/h1-$ratio.md" BENCH_IPR_PATHS=h1 ./bench/paths.sh >"$RUN/h1-$ratio.log" 2>&1 ||
    die "paths.sh failed for ratio $ratio; see $RUN/h1-$ratio.log"
  parapet_row "$ratio" "$RUN/h1-$ratio.md" >>"$ROWS"
done

{
  echo "# Tracing: cost per request"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\`; the h1 shape of"
  echo "bench/paths.sh (HTTP/1.1 GET, keep-alive, 1 KiB answers, one worker), Parapet alone, with"
  echo "tracing off and exporting over OTLP/HTTP to a local collector at each sampling ratio."
  echo
  echo "| tracing | req/s | p99 ms | CPU µs | CPU µs over off | instructions | instructions over off | errors |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  awk -F'\t' '
    NR == 1 { cpu0 = $4; ipr0 = $5 }
    { label = ($1 == "off" ? "off" : ($1 * 100) "%")
      dc = (NR == 1 ? "–" : sprintf("%+.1f", $4 - cpu0))
      di = (NR == 1 || $5 == "–" || ipr0 == "–" ? "–" : sprintf("%+d", $5 - ipr0))
      printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", label, $2, $3, $4, dc, $5, di, $6 }' "$ROWS"
} >"$OUT.tmp"
mkdir -p "$(dirname "$OUT")"
mv "$OUT.tmp" "$OUT"
cat "$OUT"
log "written to $OUT"
