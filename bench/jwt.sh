#!/usr/bin/env bash
# What a JWT check costs Parapet per request with a warm key set: the h1 shape of paths.sh
# (HTTP/1.1 GET, keep-alive, 1 KiB answers, one worker) with no JWT rule, and with a rule
# requiring a bearer token signed with ES256, RS256 (2048-bit) and EdDSA (Ed25519). The key
# set is inline in a Secret (localJwks), so nothing is fetched during the run; every request
# carries the same valid token (24 h), and Parapet must refuse a request without it (401).
# Keys and tokens come from the jwt-fixture binary (tests/src/bin/jwt-fixture.rs). Reports
# req/s, p99, CPU µs and instructions per request for each, and the difference to no JWT.
# See BENCHMARKS.md.
#
#   BENCH_JWT_ALGS="none ES256 RS256 EdDSA"    BENCH_OUT=bench/results/latest-jwt.md
#   (and the knobs of paths.sh, e.g. BENCH_ROUNDS, BENCH_SKIP_BUILD)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

read -r -a ALGS <<<"${BENCH_JWT_ALGS:-none ES256 RS256 EdDSA}"
OUT=${BENCH_OUT:-bench/results/latest-jwt.md}
BIN="${CARGO_TARGET_DIR:-target}/release"
make_run_dir parapet-jwt

if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
  log "building the release binaries"
  build_dataplane
  cargo build --release -q -p parapet-tests --bin sample-backend --bin jwt-fixture
elif [[ ! -x $BIN/jwt-fixture ]]; then
  # `make bench` builds the others in bench/run.sh; this one only this script needs.
  log "building jwt-fixture"
  cargo build --release -q -p parapet-tests --bin jwt-fixture
fi

# Every key set and token first, so that the runs need nothing more from the build.
for alg in "${ALGS[@]}"; do
  [[ $alg == none ]] && continue
  "$BIN/jwt-fixture" "$alg" >"$RUN/fixture-$alg.txt" 2>"$RUN/fixture-$alg.err" ||
    die "jwt-fixture $alg failed: $(head -1 "$RUN/fixture-$alg.err")"
done

RULE="auth: {jwt: {providers: [{name: bench, issuer: 'https://idp.bench', localJwks: {secretRef: {name: bench-jwks}}}]}}"
ROWS="$RUN/rows.tsv"
: >"$ROWS"
for alg in "${ALGS[@]}"; do
  log "== JWT $alg"
  rule="" extra="" header="" refused=""
  if [[ $alg != none ]]; then
    { read -r jwks && read -r token; } <"$RUN/fixture-$alg.txt" || die "jwt-fixture $alg printed no JWKS and token"
    rule=$RULE
    extra=$(printf 'apiVersion: v1\nkind: Secret\nmetadata: {name: bench-jwks}\nstringData: {jwks.json: '"'"'%s'"'"'}' "$jwks")
    header="Authorization: Bearer $token"
    refused=401
  fi
  BENCH_PATHS=h1 BENCH_PROXIES=parapet BENCH_SKIP_BUILD=1 BENCH_IPR_PATHS=h1 BENCH_OUT="$RUN/h1-$alg.md" \
    BENCH_PARAPET_RULE_YAML="$rule" BENCH_PARAPET_EXTRA_YAML="$extra" BENCH_EXTRA_HEADER="$header" \
    BENCH_EXTRA_HEADER_REFUSED="$refused" ./bench/paths.sh >"$RUN/h1-$alg.log" 2>&1 ||
    die "paths.sh failed for $alg; see $RUN/h1-$alg.log"
  parapet_row "$alg" "$RUN/h1-$alg.md" >>"$ROWS"
  cut -f1 "$ROWS" | grep -qx -- "$alg" || die "no figures for $alg in $RUN/h1-$alg.md"
  [[ ${BENCH_IPR:-1} == 0 || $(awk -F'\t' -v a="$alg" '$1 == a {print $5}' "$ROWS") != "–" ]] ||
    log "no instruction count for $alg (callgrind failed; see $RUN/h1-$alg.log)"
done

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain -- dataplane crds 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
{
  echo "# JWT check: cost per request"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$commit\`$dirty; $(nproc) × $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)."
  echo "The h1 shape of bench/paths.sh (HTTP/1.1 GET, keep-alive, 1 KiB answers, one worker),"
  echo "Parapet alone, with no JWT rule and with a rule requiring a bearer token signed with each"
  echo "algorithm; the key set is inline in a Secret (warm, never fetched), the token the same"
  echo "valid one on every request, and a request without it is refused (401)."
  echo
  echo "| JWT | req/s | p99 ms | CPU µs | CPU µs over none | instructions | instructions over none | errors |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  # Differences are to the row without JWT (none at all when BENCH_JWT_ALGS leaves it out).
  awk -F'\t' '
    FNR == NR { if ($1 == "none") { base = 1; cpu0 = $4; ipr0 = $5 }; next }
    { dc = (!base || $1 == "none" ? "–" : sprintf("%+.1f", $4 - cpu0))
      di = (!base || $1 == "none" || $5 == "–" || ipr0 == "–" ? "–" : sprintf("%+d", $5 - ipr0))
      printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, dc, $5, di, $6 }' "$ROWS" "$ROWS"
} >"$RUN/report.md"
mkdir -p "$(dirname "$OUT")"
mv "$RUN/report.md" "$OUT"
cat "$OUT"
log "written to $OUT"
