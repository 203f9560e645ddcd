#!/usr/bin/env bash
# Instructions per request, for each proxy: a figure that holds on a busy shared machine,
# where requests per second do not. Each proxy runs under valgrind's callgrind with one worker
# (nginx with `master_process off`, so one process does the work) and answers a fixed number
# of requests from h2load, twice: N1 and N2 requests on fresh processes. Start-up, warm-up and
# shutdown cost the same in both runs, so (instructions(N2) − instructions(N1)) / (N2 − N1)
# is what one request costs, user space only (callgrind counts no kernel work).
#
# Environment:
#   BENCH_PROXIES="parapet nginx haproxy"
#   BENCH_IPR_N1=2000 BENCH_IPR_N2=12000   requests in the short and the long run
#   BENCH_IPR_PATH=/1k                     what is asked for (the proxying configs' routes)
#   BENCH_PORT_BASE=18500                  ports BASE+1..+4 backends, +10/+11 Parapet, +20
#                                          nginx, +30 HAProxy
#   BENCH_OUT=bench/results/latest-instructions.md
#   BENCH_SKIP_BUILD=1                     use the release binaries already built
set -euo pipefail
cd "$(dirname "$0")/.."

read -r -a PROXIES <<<"${BENCH_PROXIES:-parapet nginx haproxy}"
N1=${BENCH_IPR_N1:-2000}
N2=${BENCH_IPR_N2:-12000}
URL_PATH=${BENCH_IPR_PATH:-/1k}
BASE=${BENCH_PORT_BASE:-18500}
OUT=${BENCH_OUT:-bench/results/latest-instructions.md}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN="$TARGET_DIR/release"
WORKERS=1

source bench/lib.sh

for v in N1 N2 BASE; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
((N2 > N1)) || die "BENCH_IPR_N2 ($N2) must be larger than BENCH_IPR_N1 ($N1)"
declare -A PROXY_PORT=([parapet]=$((BASE + 10)) [nginx]=$((BASE + 20)) [haproxy]=$((BASE + 30)))
for p in "${PROXIES[@]}"; do
  [[ -n ${PROXY_PORT[$p]:-} ]] || die "unknown proxy '$p' in BENCH_PROXIES (parapet, nginx, haproxy)"
done

make_run_dir parapet-instructions

# ---------------------------------------------------------------- tools (Debian)
ensure_tools valgrind=valgrind h2load=nghttp2-client nginx=nginx haproxy=haproxy curl=curl

if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
  log "building the release binaries"
  cargo build --release -q -p parapet-dataplane --bin dataplane
  cargo build --release -q -p parapet-tests --bin sample-backend
fi

# ---------------------------------------------------------------- backends
BACKENDS=($((BASE + 1)) $((BASE + 2)) $((BASE + 3)) $((BASE + 4)))
for p in "${BACKENDS[@]}" "${PROXY_PORT[@]}" $((BASE + 11)); do
  port_free "$p" || die "port $p on 127.0.0.1 is in use; pick another BENCH_PORT_BASE"
done
start backend-1 "$BIN/sample-backend" b1 "${BACKENDS[0]}" 1024
start backend-2 "$BIN/sample-backend" b2 "${BACKENDS[1]}" 1024
start backend-3 "$BIN/sample-backend" b3 "${BACKENDS[2]}" 65536
start backend-4 "$BIN/sample-backend" b4 "${BACKENDS[3]}" 65536
for p in "${BACKENDS[@]}"; do
  wait_http "http://127.0.0.1:$p/healthz" || die "backend on port $p did not start"
done

render() { # render TEMPLATE OUT PORT
  sed -e "s|@WORKERS@|$WORKERS|g" -e "s|@RUNDIR@|$RUN|g" -e "s|@PORT@|$3|g" \
    -e "s|@PORT_1K_A@|${BACKENDS[0]}|g" -e "s|@PORT_1K_B@|${BACKENDS[1]}|g" \
    -e "s|@PORT_64K_A@|${BACKENDS[2]}|g" -e "s|@PORT_64K_B@|${BACKENDS[3]}|g" "$1" >"$2"
}

# instructions PROXY REQUESTS : runs the proxy under callgrind for REQUESTS requests and
# prints the program's total instruction count.
instructions() {
  local proxy=$1 n=$2 port=${PROXY_PORT[$1]} out="$RUN/$1-$2.callgrind" name="$1-$2"
  local vg=(valgrind --tool=callgrind --callgrind-out-file="$out")
  case $proxy in
  parapet)
    render bench/parapet.yaml.tmpl "$RUN/parapet.yaml" "$port"
    start "$name" "${vg[@]}" "$BIN/dataplane" --config "$RUN/parapet.yaml" \
      --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$((BASE + 11))" --workers 1 \
      --log-format text
    ;;
  nginx)
    render bench/nginx.conf.tmpl "$RUN/nginx.conf" "$port"
    start "$name" "${vg[@]}" "$(command -v nginx)" -c "$RUN/nginx.conf" -p "$RUN" \
      -g 'master_process off;'
    ;;
  haproxy)
    render bench/haproxy.cfg.tmpl "$RUN/haproxy.cfg" "$port"
    start "$name" "${vg[@]}" "$(command -v haproxy)" -db -f "$RUN/haproxy.cfg"
    ;;
  esac
  local pid=${PID_OF[$name]} url="http://127.0.0.1:$port$URL_PATH"
  # Under valgrind start-up takes seconds; readiness is the route answering.
  for _ in $(seq 300); do
    curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || die "$proxy exited under valgrind; see $RUN/$name.err"
    sleep 0.2
  done
  curl -fsS -o /dev/null --max-time 2 "$url" || die "$proxy does not answer $url; see $RUN/$name.err"
  h2load --h1 -n "$n" -c 8 -t 1 "$url" >"$RUN/$name.h2load" 2>&1 ||
    die "h2load failed against $proxy; see $RUN/$name.h2load"
  grep -q "$n succeeded" "$RUN/$name.h2load" || die "not every request to $proxy succeeded; see $RUN/$name.h2load"
  kill "$pid"
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  wait "$pid" 2>/dev/null || true
  # nginx without a master writes its profile on exit as well; callgrind names extra
  # threads' files out.N, summed here.
  local total=0 f
  for f in "$out"*; do
    total=$((total + $(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1; exit}')))
  done
  echo "$total"
}

declare -A IPR=()
for proxy in "${PROXIES[@]}"; do
  log "$proxy: $N1 then $N2 requests to $URL_PATH under callgrind"
  a=$(instructions "$proxy" "$N1")
  b=$(instructions "$proxy" "$N2")
  IPR[$proxy]=$(((b - a) / (N2 - N1)))
  log "$proxy: ${IPR[$proxy]} instructions per request"
done

{
  echo "# Instructions per request"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$(git rev-parse --short HEAD)\`$(git diff --quiet || echo ' (with uncommitted changes)'); $(nproc) × $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)."
  echo "Each proxy with one worker under callgrind; h2load --h1 -c 8 asks for \`$URL_PATH\` $N1 and"
  echo "then $N2 times on fresh processes; the figure is the difference over $((N2 - N1)) requests"
  echo "(user space only)."
  echo
  echo "| proxy | instructions per request | vs nginx |"
  echo "|---|---:|---:|"
  for proxy in "${PROXIES[@]}"; do
    ratio=-
    [[ -n ${IPR[nginx]:-} && ${IPR[nginx]} -gt 0 ]] && ratio=$(awk -v a="${IPR[$proxy]}" -v b="${IPR[nginx]}" 'BEGIN{printf "%.2f×", a / b}')
    echo "| $proxy | ${IPR[$proxy]} | $ratio |"
  done
} >"$OUT"
log "written to $OUT"
cat "$OUT"
