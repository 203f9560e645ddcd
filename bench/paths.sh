#!/usr/bin/env bash
# Every path production traffic takes, Parapet against nginx, HAProxy and Caddy side by side:
# HTTP/1.1 with and without TLS, HTTP/2 over TLS with several streams per connection, request
# bodies, new connections (TLS handshakes full and resumed), thousands of mostly idle
# connections, and route tables of 10, 1,000 and 10,000 routes. Each proxy runs with one
# worker in front of the same two sample backends (1 KiB answers), with the configuration
# bench/proxy_config.py writes for the shape. See BENCHMARKS.md.
#
# For each shape and proxy: requests (or connections) per second, p50/p99 latency, the
# proxy's CPU time per request (µs, from /proc: holds on a shared machine where req/s does
# not), and, with BENCH_IPR=1, instructions per request under callgrind (a fixed request
# count twice on fresh processes, differenced: start-up and warm-up cancel out).
#
# Knobs (environment):
#   BENCH_PATHS="h1 h1-tls h2-tls post-4k post-256k conn tls-new tls-resumed idle-10k
#                routes-10 routes-1k routes-10k"
#   BENCH_PROXIES="parapet nginx haproxy caddy relay"
#                              relay: HAProxy in TCP mode, no HTTP work at all; not a peer
#                              but the floor (h1, post-4k and post-256k only): what
#                              the kernel and a lean event loop cost for the same traffic
#   BENCH_ROUNDS=5 BENCH_DURATION=5 (s) BENCH_WARMUP=2 (s)   rounds per shape; each round
#                              starts with the next proxy in turn
#   BENCH_CONNECTIONS=32       client connections (h2-tls: 4 streams on each)
#   BENCH_IDLE=10000           connections held open by idle-10k (1% of them busy)
#   BENCH_IPR=1                also count instructions per request (BENCH_IPR_N1=1000,
#                              BENCH_IPR_N2=6000 requests; BENCH_IPR_PATHS limits the shapes)
#   BENCH_PIN=1                the proxy measured on a core of its own (the last), the
#                              backends and load generators on the others; 0: the
#                              scheduler places everything
#   BENCH_PAIR_ROUNDS=5        rounds of the routes pair: with routes-10 and routes-10k both
#                              in BENCH_PATHS, Parapet with each table is loaded at the same
#                              time, on the same core (their rates compared in the same
#                              seconds, not minutes apart); 0: no pair
#   BENCH_QUOTA=50             each proxy held to this share (%) of its core by a CPU quota
#                              (cgroup cpu.max or cpu.cfs_quota_us, 20 ms periods; root), so
#                              the proxy rather than the client sets the rate: CPU µs per
#                              request at saturation (latencies then include the quota's waits)
#   BENCH_HALT_POLL_NS=200000  on a virtual machine whose idle CPUs use the haltpoll driver: how
#                              long an idle vCPU polls before it halts, set for the run and
#                              restored after (root). The report names the setting either way
#   BENCH_PORT_BASE=18600      +1/+2 backends, +10/+11 Parapet (+12…+15 the routes pair), +20
#                              nginx, +30 HAProxy, +35 the relay, +40 Caddy
#   BENCH_OUT=bench/results/latest-paths.md
#   BENCH_SKIP_BUILD=1         use the release binaries already built
#   BENCH_KEEP=1               keep the run directory
#   BENCH_PARAPET_FLAGS="..."  extra data-plane flags (bench/tracing.sh sets the tracing ones)
#   BENCH_PARAPET_RULE_YAML="auth: {...}"   a field added to every rule of Parapet's config,
#   BENCH_PARAPET_EXTRA_YAML="..."          documents appended to it, and
#   BENCH_EXTRA_HEADER="Name: value"        a header sent with every request to Parapet
#                              (h2load, wrk, curl and conn_client.py; bench/jwt.sh: a JWT
#                              rule, its key set, the token), and
#                              BENCH_EXTRA_HEADER_REFUSED=401 the status Parapet must
#                              answer without that header
#   CADDY=/path/to/caddy       else Caddy v2.11.9 is built with `go install` from the Go
#                              module proxy into ~/.cache/parapet-bench (outside the repository)
set -euo pipefail
cd "$(dirname "$0")/.."

read -r -a SHAPES <<<"${BENCH_PATHS:-h1 h1-tls h2-tls post-4k post-256k conn tls-new tls-resumed idle-10k routes-10 routes-1k routes-10k}"
read -r -a PROXIES <<<"${BENCH_PROXIES:-parapet nginx haproxy caddy relay}"
read -r -a PARAPET_FLAGS <<<"${BENCH_PARAPET_FLAGS:-}"
RULE_YAML=${BENCH_PARAPET_RULE_YAML:-}
EXTRA_YAML=${BENCH_PARAPET_EXTRA_YAML:-}
EXTRA_HEADER=${BENCH_EXTRA_HEADER:-}
REFUSED=${BENCH_EXTRA_HEADER_REFUSED:-}
ROUNDS=${BENCH_ROUNDS:-5}
PAIR_ROUNDS=${BENCH_PAIR_ROUNDS:-5}
QUOTA=${BENCH_QUOTA:-}
HALT_POLL=${BENCH_HALT_POLL_NS:-}
DURATION=${BENCH_DURATION:-5}
WARMUP=${BENCH_WARMUP:-2}
CONNS=${BENCH_CONNECTIONS:-32}
IDLE=${BENCH_IDLE:-10000}
IPR=${BENCH_IPR:-1}
N1=${BENCH_IPR_N1:-1000}
N2=${BENCH_IPR_N2:-6000}
read -r -a IPR_SHAPES <<<"${BENCH_IPR_PATHS:-h1 h1-tls h2-tls post-4k post-256k conn tls-new tls-resumed routes-10 routes-10k}"
BASE=${BENCH_PORT_BASE:-18600}
OUT=${BENCH_OUT:-bench/results/latest-paths.md}
PIN=${BENCH_PIN:-1}
NOISY_PCT=${BENCH_NOISY_PCT:-20}
QUIET_WAIT=${BENCH_QUIET_WAIT:-300}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN="$TARGET_DIR/release"
CADDY_VERSION=v2.11.9

source bench/lib.sh

for v in ROUNDS DURATION WARMUP CONNS IDLE N1 N2 BASE; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
[[ -z $QUOTA || $QUOTA =~ ^[1-9][0-9]?$ ]] || die "BENCH_QUOTA must be a share of one core from 1 to 99 (got '$QUOTA')"
[[ -z $HALT_POLL || $HALT_POLL =~ ^[0-9]+$ ]] || die "BENCH_HALT_POLL_NS must be a whole number of nanoseconds (got '$HALT_POLL')"
[[ $PAIR_ROUNDS =~ ^[0-9]+$ ]] || die "BENCH_PAIR_ROUNDS must be a whole number (got '$PAIR_ROUNDS')"
((N2 > N1)) || die "BENCH_IPR_N2 ($N2) must be larger than BENCH_IPR_N1 ($N1)"
declare -A PROXY_PORT=([parapet]=$((BASE + 10)) [nginx]=$((BASE + 20)) [haproxy]=$((BASE + 30))
  [caddy]=$((BASE + 40)) [relay]=$((BASE + 35)))
BACKENDS=($((BASE + 1)) $((BASE + 2)))
for p in "${PROXIES[@]}"; do
  [[ -n ${PROXY_PORT[$p]:-} ]] || die "unknown proxy '$p' in BENCH_PROXIES (parapet, nginx, haproxy, caddy, relay)"
done
# Every Parapet's admin port is the one after its own.
ADMIN_PORTS=($((BASE + 11)))
# The routes pair: two more Parapets, parapet-routes-10 and parapet-routes-10k.
PAIR=()
if ((PAIR_ROUNDS)) && [[ " ${PROXIES[*]} " == *" parapet "* && " ${SHAPES[*]} " == *" routes-10 "* && " ${SHAPES[*]} " == *" routes-10k "* ]]; then
  PAIR=(routes-10 routes-10k)
  PROXY_PORT[parapet-routes-10]=$((BASE + 12)) PROXY_PORT[parapet-routes-10k]=$((BASE + 14))
  ADMIN_PORTS+=($((BASE + 13)) $((BASE + 15)))
fi
for s in "${SHAPES[@]}"; do
  case $s in
  h1 | h1-tls | h2-tls | post-4k | post-256k | conn | tls-new | tls-resumed | idle-10k | routes-[0-9]*) ;;
  routes-1k) ;;
  *) die "unknown shape '$s' in BENCH_PATHS" ;;
  esac
done

# in_shape SHAPE PROXY : whether the proxy runs in the shape (the relay: plain HTTP, one route)
in_shape() { [[ $2 != relay ]] || [[ $1 =~ ^(h1|post-4k|post-256k)$ ]]; }

make_run_dir parapet-paths
# Placement. A gateway pod has its cores to itself; here the load generators and backends
# would otherwise share the proxy's core, preempting it at every wake-up (half a context
# switch per request on h1) and charging that to whichever proxy is being measured. The
# proxy gets the last core; this shell, and so the backends and load generators it starts,
# the others. Every proxy is placed alike.
CPUS=$(nproc)
PIN_CMD=()
if [[ $PIN == 1 ]] && ((CPUS >= 2)) && command -v taskset >/dev/null; then
  taskset -p -c "0-$((CPUS - 2))" $$ >/dev/null
  PIN_CMD=(taskset -c "$((CPUS - 1))")
fi
# BENCH_QUOTA: one cgroup for the measured proxies (one is loaded at a time), its quota a share
# of one core per 20 ms; removed by the exit trap once they are stopped.
QUOTA_CGROUP=
if [[ -n $QUOTA ]]; then
  period=20000
  if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then # cgroup v2
    QUOTA_CGROUP=/sys/fs/cgroup/parapet-bench-$$
    { grep -qw cpu /sys/fs/cgroup/cgroup.controllers &&
      { grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control || echo +cpu >/sys/fs/cgroup/cgroup.subtree_control; } &&
      mkdir "$QUOTA_CGROUP" && echo "$((QUOTA * period / 100)) $period" >"$QUOTA_CGROUP/cpu.max"; } 2>/dev/null
  else # cgroup v1
    QUOTA_CGROUP=/sys/fs/cgroup/cpu/parapet-bench-$$
    { mkdir "$QUOTA_CGROUP" && echo "$period" >"$QUOTA_CGROUP/cpu.cfs_period_us" &&
      echo "$((QUOTA * period / 100))" >"$QUOTA_CGROUP/cpu.cfs_quota_us"; } 2>/dev/null
  fi || die "BENCH_QUOTA needs root and the cgroup cpu controller: could not set a quota in $QUOTA_CGROUP"
fi
# Idle CPUs. A KVM guest's haltpoll driver lets an idle vCPU poll for up to guest_halt_poll_ns
# before it halts; a halted vCPU's wake-up goes through the host (tens of µs). A proxy that
# finishes its work before the next request arrives sleeps, and on the next request meets
# that wait; one that is always busy rarely does, so the setting moves the leaner proxy's
# latency most. The report names it; BENCH_HALT_POLL_NS sets it for the run (restored by the
# exit trap).
IDLE_DRIVER=$(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo none)
HALT_POLL_FILE=/sys/module/haltpoll/parameters/guest_halt_poll_ns
HALT_POLL_WAS=
if [[ -n $HALT_POLL ]]; then
  [[ $IDLE_DRIVER == haltpoll && -w $HALT_POLL_FILE ]] ||
    die "BENCH_HALT_POLL_NS needs the haltpoll cpuidle driver and root (this machine's idle driver: $IDLE_DRIVER)"
  HALT_POLL_WAS=$(cat "$HALT_POLL_FILE")
  echo "$HALT_POLL" >"$HALT_POLL_FILE"
fi
# held PROXY : the proxy's processes into the quota's cgroup (nothing without BENCH_QUOTA)
held() {
  [[ -n $QUOTA_CGROUP ]] || return 0
  local p
  for p in $(proxy_pids "$1"); do echo "$p" >"$QUOTA_CGROUP/cgroup.procs"; done
}
# idle-10k holds $IDLE connections in this shell's children and in every proxy.
ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) >= 2 * IDLE)) || [[ " ${SHAPES[*]} " != *" idle-"* ]] ||
  die "idle-10k needs $((2 * IDLE)) open files per process (ulimit -n is $(ulimit -n)); run as root or raise the hard limit"

# ---------------------------------------------------------------- tools
ensure_tools nginx=nginx haproxy=haproxy h2load=nghttp2-client wrk=wrk openssl=openssl \
  curl=curl python3=python3 valgrind=valgrind
if [[ " ${PROXIES[*]} " == *" caddy "* ]]; then
  CADDY=${CADDY:-$HOME/.cache/parapet-bench/caddy-$CADDY_VERSION/caddy}
  if [[ ! -x $CADDY ]]; then
    command -v go >/dev/null || die "Caddy needs Go to build it (or set CADDY=/path/to/caddy)"
    log "building Caddy $CADDY_VERSION from the Go module proxy into $(dirname "$CADDY")"
    mkdir -p "$(dirname "$CADDY")"
    GOBIN=$(dirname "$CADDY") GOFLAGS=-mod=mod go install "github.com/caddyserver/caddy/v2/cmd/caddy@$CADDY_VERSION" ||
      die "could not build Caddy $CADDY_VERSION"
  fi
fi
if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
  log "building the release binaries"
  build_dataplane
  cargo build --release -q -p parapet-tests --bin sample-backend
fi
for b in dataplane sample-backend; do [[ -x $BIN/$b ]] || die "$BIN/$b is missing"; done
for p in "${BACKENDS[@]}" "${PROXY_PORT[@]}" "${ADMIN_PORTS[@]}"; do
  port_free "$p" || die "port $p on 127.0.0.1 is in use; pick another BENCH_PORT_BASE"
done

# ---------------------------------------------------------------- certificate, bodies, backends
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench.local \
  -addext "subjectAltName=DNS:bench.local,DNS:api.bench,IP:127.0.0.1" \
  -keyout "$RUN/key.pem" -out "$RUN/cert.pem" 2>/dev/null
cat "$RUN/cert.pem" "$RUN/key.pem" >"$RUN/haproxy.pem"
head -c 4096 /dev/zero | tr '\0' 'p' >"$RUN/body-4k"
head -c 262144 /dev/zero | tr '\0' 'p' >"$RUN/body-256k"

start backend-1 "$BIN/sample-backend" b1 "${BACKENDS[0]}" 1024
start backend-2 "$BIN/sample-backend" b2 "${BACKENDS[1]}" 1024
BACKEND_PIDS=("${PID_OF[backend-1]}" "${PID_OF[backend-2]}")
for p in "${BACKENDS[@]}"; do wait_http "http://127.0.0.1:$p/healthz" || die "backend on port $p did not start"; done

# ---------------------------------------------------------------- shapes
tls_of() { [[ $1 == h1-tls || $1 == h2-tls || $1 == tls-* ]]; }
routes_of() { # the table size of a routes-N shape, else 0
  case $1 in routes-1k) echo 1000 ;; routes-10k) echo 10000 ;; routes-*) echo "${1#routes-}" ;; *) echo 0 ;; esac
}
scheme_of() { tls_of "$1" && echo https || echo http; }
# The URIs a shape asks for: /1k, or for route tables the last route of each kind on
# api.bench (the worst case for anything that tries routes in order) and one host route.
uris_of() {
  local shape=$1 port=$2 n
  n=$(routes_of "$shape")
  local base
  base="$(scheme_of "$shape")://127.0.0.1:$port"
  if ((n == 0)); then echo "$base/1k"; return; fi
  local api=$((n - n / 2)) i
  for kind in 0 1 2; do
    i=$(((api - 1) / 3 * 3 + kind)); ((i < api)) || i=$((i - 3))
    case $kind in 0) echo "$base/svc$i/x" ;; 1) echo "$base/exact$i" ;; 2) echo "$base/re$i/12345" ;; esac
  done
}

# start_proxy SHAPE PROXY [NAME [WRAPPER...]] : writes the shape's config and starts the proxy
start_proxy() {
  local shape=$1 proxy=$2 name=${3:-$2}
  shift 3 2>/dev/null || shift $#
  # The rest is a wrapper (valgrind); the proxy runs under it, on its own core (PIN_CMD).
  local wrapped=$#
  set -- "${PIN_CMD[@]}" "$@"
  local port=${PROXY_PORT[$proxy]} conf tls=() routes
  routes=$(routes_of "$shape")
  tls_of "$shape" && tls=(--tls "$RUN/cert.pem,$RUN/key.pem")
  # Each Parapet its own file: the data plane reloads it when it changes.
  case $proxy in parapet*) conf=$RUN/$name.yaml ;; nginx) conf=$RUN/nginx.conf ;;
  haproxy) conf=$RUN/haproxy.cfg ;; relay) conf=$RUN/relay.cfg ;; caddy) conf=$RUN/caddy.json ;; esac
  python3 bench/proxy_config.py "${proxy%%-*}" --out "$conf" --run "$RUN" --port "$port" \
    --backends "${BACKENDS[0]},${BACKENDS[1]}" --routes "$routes" "${tls[@]}"
  case $proxy in
  parapet*)
    if [[ -n $RULE_YAML || -n $EXTRA_YAML ]]; then # every rule ends with its backends line
      awk -v y="$RULE_YAML" '{ print } y != "" && /backends: \[\{pool: body-1k\}\]$/ { print "      " y }' "$conf" >"$conf.tmp"
      [[ -z $EXTRA_YAML ]] || printf -- '---\n%s\n' "$EXTRA_YAML" >>"$conf.tmp"
      mv "$conf.tmp" "$conf"
    fi
    local flags=()
    tls_of "$shape" && flags=(--tls-cert "$RUN/cert.pem" --tls-key "$RUN/key.pem")
    start "$name" "$@" "$BIN/dataplane" --config "$conf" --listen "127.0.0.1:$port" \
      --admin-listen "127.0.0.1:$((port + 1))" --workers 1 --log-format text "${flags[@]}" "${PARAPET_FLAGS[@]}"
    ;;
  nginx)
    nginx -t -q -c "$conf" -p "$RUN" 2>"$RUN/nginx-t.err" || die "nginx -t failed: $(cat "$RUN/nginx-t.err")"
    if ((wrapped)); then start "$name" "$@" "$(command -v nginx)" -c "$conf" -p "$RUN" -g 'master_process off;'
    else start "$name" "$@" "$(command -v nginx)" -c "$conf" -p "$RUN"; fi
    ;;
  haproxy | relay)
    haproxy -c -q -f "$conf" 2>"$RUN/$proxy-c.err" || die "haproxy -c failed for $proxy: $(cat "$RUN/$proxy-c.err")"
    start "$name" "$@" "$(command -v haproxy)" -db -f "$conf"
    ;;
  caddy)
    GOMAXPROCS=1 start "$name" "$@" "$CADDY" run --config "$conf"
    ;;
  esac
}

# check_proxy SHAPE PROXY : waits until it answers every URI of the shape with 1 KiB
check_proxy() {
  local shape=$1 proxy=$2 uri host=() tries=${3:-100}
  (($(routes_of "$shape"))) && host=(-H "Host: api.bench")
  local extra=()
  [[ $proxy == parapet* && -n $EXTRA_HEADER ]] && extra=(-H "$EXTRA_HEADER")
  while read -r uri; do
    local ok=
    for _ in $(seq "$tries"); do
      if [[ $(curl -sk --max-time 2 -o /dev/null -w '%{http_code} %{size_download}' "${host[@]}" "${extra[@]}" "$uri" 2>/dev/null) == "200 1024" ]]; then ok=1; break; fi
      kill -0 "${PID_OF[$proxy]}" 2>/dev/null || die "$proxy exited; see $RUN/$proxy.err"
      sleep 0.1
    done
    [[ -n $ok ]] || die "$proxy does not answer $uri with 200 and 1 KiB ($shape); see $RUN/$proxy.err"
    if ((${#extra[@]})) && [[ -n $REFUSED ]]; then
      local refused
      refused=$(curl -sk --max-time 2 -o /dev/null -w '%{http_code}' "${host[@]}" "$uri")
      [[ $refused == "$REFUSED" ]] || die "$proxy answers $refused, not $REFUSED, for $uri without BENCH_EXTRA_HEADER ($shape)"
    fi
  done < <(uris_of "$shape" "${PROXY_PORT[$proxy]}")
  if (($(routes_of "$shape"))); then # a host route, and a miss
    local code
    code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Host: h0.bench" "${extra[@]}" "$(scheme_of "$shape")://127.0.0.1:${PROXY_PORT[$proxy]}/any")
    [[ $code == 200 ]] || die "$proxy answers $code for the host route h0.bench ($shape)"
    code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Host: api.bench" "${extra[@]}" "$(scheme_of "$shape")://127.0.0.1:${PROXY_PORT[$proxy]}/nowhere")
    [[ $code == 404 ]] || die "$proxy answers $code, not 404, for a path no route matches ($shape)"
  fi
}

# stop_proxy NAME [PORT] : stops it, and waits until nothing listens on PORT any more
stop_proxy() {
  local pid=${PID_OF[$1]}
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [[ -z ${2:-} ]] || for _ in $(seq 100); do port_free "$2" && break; sleep 0.1; done
}

# load SHAPE PROXY SECONDS OUTFILE [REQUESTS] : one run; prints "count p50_ms p99_ms errors"
# (count: requests, or connections for the connection shapes)
load() {
  local shape=$1 proxy=$2 secs=$3 out=$4 n=${5:-} port=${PROXY_PORT[$2]}
  local -a uris
  mapfile -t uris < <(uris_of "$shape" "$port")
  local h2=(h2load -t1 --log-file="$out.log")
  if [[ -n $n ]]; then h2+=(-n "$n" -c 8); else h2+=(-D "$secs" -c "$CONNS"); fi
  (($(routes_of "$shape"))) && h2+=(-H ":authority: api.bench")
  local extra=()
  [[ $proxy == parapet* && -n $EXTRA_HEADER ]] && extra=(-H "$EXTRA_HEADER") && h2+=("${extra[@]}")
  case $shape in
  h1 | h1-tls | routes-*) h2+=(--h1) ;;
  h2-tls) h2+=(-m 4) ;;
  post-4k) h2+=(--h1 -d "$RUN/body-4k") ;;
  post-256k) h2+=(--h1 -d "$RUN/body-256k") ;;
  esac
  if [[ -n $n && $shape =~ ^(conn|tls-new|tls-resumed)$ ]]; then
    # A fixed count (instructions): wrk and s_time only run for a time.
    local flags=()
    [[ $shape == conn ]] || flags+=(--tls)
    [[ $shape == tls-resumed ]] && flags+=(--resume)
    [[ $proxy == parapet* && -n $EXTRA_HEADER ]] && flags+=(--header "$EXTRA_HEADER")
    timeout --kill-after=5 1800 python3 bench/conn_client.py --port "$port" --count "$n" \
      --concurrency 8 "${flags[@]}" >"$out" 2>&1 || true
    tail -n 1 "$out"
    return
  fi
  case $shape in
  conn)
    timeout --kill-after=5 $((secs + 60)) wrk -t1 -c"$CONNS" -d"${secs}s" --timeout 5s --latency \
      -H "Connection: close" "${extra[@]}" "http://127.0.0.1:$port/1k" >"$out" 2>&1
    read -r rps p50 p99 err < <(parse_wrk "$out")
    awk -v r="$rps" -v s="$secs" -v a="$p50" -v b="$p99" -v e="$err" \
      'BEGIN{printf "%d %s %s %d\n", r * s, a, b, e}'
    ;;
  tls-new | tls-resumed)
    local mode=-new
    [[ $shape == tls-resumed ]] && mode=-reuse
    timeout --kill-after=5 $((secs + 60)) openssl s_time -connect "127.0.0.1:$port" "$mode" \
      -time "$secs" -www /1k >"$out" 2>&1 || true
    # "N connections in T real seconds"; s_time measures no latency distribution.
    awk '/connections in .* real seconds/ {print $1, "-", "-", 0; found = 1; exit}
         END {if (!found) print 0, "-", "-", 1}' "$out"
    ;;
  *)
    timeout --kill-after=5 $((secs + 120)) "${h2[@]}" "${uris[@]}" >"$out" 2>&1 || true
    # "requests: T total, S started, D done, OK succeeded, F failed, E errored, O timeout"
    # and "status codes: A 2xx, B 3xx, C 4xx, D 5xx" (which counts answers still arriving
    # when the clock ran out, so the count is the succeeded figure).
    local ok errs
    read -r ok errs < <(awk '/^requests:/ {ok = $8; e += $10 + $12 + $14}
      /^status codes:/ {e += $5 + $7 + $9} END {print ok, e}' "$out")
    [[ -n $ok && -s $out.log ]] || { log "h2load failed against $proxy; see $out"; echo "0 - - 1"; return; }
    sort -n -k3 "$out.log" | awk -v ok="$ok" -v e="$errs" '
      { v[NR] = $3 } END {
        printf "%d %.3f %.3f %d\n", ok, v[int(NR * 0.5) + 1] / 1000, v[int(NR * 0.99) + 1] / 1000, e }'
    rm -f "$out.log"
    ;;
  esac
}

REDONE=0
RAW="$RUN/runs.tsv"
: >"$RAW"
# System calls per request, counted by `perf stat` on the syscall tracepoint during the
# warm-up (the measured rounds run without it): fixed by the proxy's design, not by how busy
# the machine is. Left out where perf cannot count them (not installed, not root).
SYSCALL_TSV="$RUN/syscalls.tsv"
: >"$SYSCALL_TSV"
SYSCALLS=
if command -v perf >/dev/null && perf stat -x, -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
  SYSCALLS=1
else
  log "perf cannot count system calls here (install linux-perf and run as root); that column stays empty"
fi
# per_second COUNT START END : a rate over a wall-clock interval (date +%s.%N)
per_second() { awk -v c="$1" -v a="$2" -v b="$3" 'BEGIN{printf "%.0f", c / (b - a)}'; }
# us_each TICKS COUNT : CPU clock ticks as µs per request (0 without requests)
us_each() { awk -v t="$1" -v hz="$CLK_TCK" -v c="$2" 'BEGIN{printf "%.1f", (c > 0 ? t * 1e6 / hz / c : 0)}'; }
# measure SHAPE : all proxies, warm-up then ROUNDS rounds, the proxies one after another
measure() {
  local shape=$1 proxy round
  for proxy in "${ACTIVE[@]}"; do
    [[ $shape == tls-* ]] && continue
    log "warm-up $proxy $shape (${WARMUP}s)"
    local perf_pid= count
    if [[ -n $SYSCALLS ]]; then
      perf stat -x, -e raw_syscalls:sys_enter -p "$(proxy_pids "$proxy" | paste -sd,)" \
        -o "$RUN/syscalls-$shape-$proxy.txt" 2>/dev/null &
      perf_pid=$!
      sleep 0.2 # attached before the load starts
    fi
    read -r count _ < <(load "$shape" "$proxy" "$WARMUP" "$RUN/warmup-$shape-$proxy.txt")
    if [[ -n $perf_pid ]]; then
      kill -INT "$perf_pid" 2>/dev/null || true
      wait "$perf_pid" 2>/dev/null || true
      awk -F, -v s="$shape" -v p="$proxy" -v c="$count" '$3 == "raw_syscalls:sys_enter" && $1 ~ /^[0-9]+$/ && c > 0 {
        printf "%s\t%s\t%.2f\n", s, p, $1 / c }' "$RUN/syscalls-$shape-$proxy.txt" >>"$SYSCALL_TSV"
    fi
  done
  local order i
  for round in $(seq "$ROUNDS"); do
    # Each round starts with the next proxy, so none is always measured first or last in a
    # round (the host drifts over seconds, and p99 follows it).
    order=()
    for i in "${!ACTIVE[@]}"; do order+=("${ACTIVE[(i + round - 1) % ${#ACTIVE[@]}]}"); done
    for proxy in "${order[@]}"; do
      local tries=0
      while :; do
        wait_quiet
        local f="$RUN/$shape-$round-$proxy.txt"
        local t0 k0 m0 b0 s0 t1 k1 m1 b1 s1 count p50 p99 err
        t0=$(cpu_ticks "$proxy") k0=$(cpu_ticks "$proxy" system) m0=$(machine_ticks) b0=$(backend_ticks) s0=$(date +%s.%N)
        read -r count p50 p99 err < <(load "$shape" "$proxy" "$DURATION" "$f")
        s1=$(date +%s.%N) t1=$(cpu_ticks "$proxy") k1=$(cpu_ticks "$proxy" system) m1=$(machine_ticks) b1=$(backend_ticks)
        local cpu rate us kus
        cpu=$(pct $((t1 - t0)) "$s0" "$s1")
        rate=$(per_second "$count" "$s0" "$s1")
        us=$(us_each $((t1 - t0)) "$count")
        kus=$(us_each $((k1 - k0)) "$count")
        # Machine CPU not used by this proxy or the backends: the client plus other work.
        local rest
        rest=$(pct $(((m1 - m0) - (t1 - t0) - (b1 - b0))) "$s0" "$s1")
        log "$shape round $round $proxy: $rate/s, p50 $p50 ms, p99 $p99 ms, CPU $cpu% ($us µs each), errors $err"
        tries=$((tries + 1))
        if ((count == 0 && tries < 2)); then log "no requests completed; running it again"; continue; fi
        break
      done
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$shape" "$round" "$proxy" "$rate" "$p50" "$p99" \
        "$err" "$cpu" "$us" "$rest" "$kus" >>"$RAW"
    done
  done
}

rss_of() { local sum=0 p; for p in $(proxy_pids "$1"); do sum=$((sum + $(awk '/^VmRSS:/{print $2}' "/proc/$p/status"))); done; echo "$sum"; }

# idle SHAPE : memory per idle connection. The client (bench/idle_clients.py) opens $IDLE
# connections, asks one request on each, then keeps 1% of them busy; the proxy's RSS is read
# before and while they are held.
IDLE_TSV="$RUN/idle.tsv"
: >"$IDLE_TSV"
idle() {
  local proxy
  for proxy in "${ACTIVE[@]}"; do
    local before n=$IDLE
    # HAProxy counts two files per connection against its limit (see proxy_config.py).
    [[ $proxy == haproxy ]] && ((n > 9800)) && n=9800
    before=$(rss_of "$proxy")
    python3 bench/idle_clients.py --port "${PROXY_PORT[$proxy]}" --connections "$n" \
      --busy $((n / 100)) --seconds "$DURATION" --ready "$RUN/idle-ready" >"$RUN/idle-$proxy.txt" 2>&1 &
    local cpid=$!
    local held=
    for _ in $(seq 600); do
      [[ -e $RUN/idle-ready ]] && { held=1; break; }
      kill -0 "$cpid" 2>/dev/null || break
      sleep 0.1
    done
    [[ -n $held ]] || { wait "$cpid" || true; die "$proxy: $IDLE connections could not be opened; see $RUN/idle-$proxy.txt"; }
    # (Parapet gives back an idle connection's buffers half a second after its last answer.)
    sleep 2
    local during
    during=$(rss_of "$proxy")
    wait "$cpid" || die "the idle client failed against $proxy; see $RUN/idle-$proxy.txt"
    rm -f "$RUN/idle-ready"
    local rps
    rps=$(awk '/^busy_rps/ {print $2}' "$RUN/idle-$proxy.txt")
    log "idle-10k $proxy: RSS $before KB before, $during KB with $n connections held; busy ones $rps req/s"
    printf '%s\t%s\t%s\t%s\t%s\n' "$proxy" "$before" "$during" "$rps" "$n" >>"$IDLE_TSV"
  done
}

# instructions SHAPE PROXY REQUESTS : the proxy's instruction count under callgrind
instructions() {
  local shape=$1 proxy=$2 n=$3 name="$2-ipr-$3" out="$RUN/$2-$1-$3.callgrind"
  rm -f "$out"*
  start_proxy "$shape" "$proxy" "$name" valgrind --tool=callgrind --callgrind-out-file="$out"
  PID_OF[$proxy]=${PID_OF[$name]}
  # A peer that does not run under valgrind (Caddy, at times) loses its figure, not the run.
  if ! (check_proxy "$shape" "$proxy" 600); then
    log "$proxy ($shape) did not answer under callgrind; its figure is left out (see $RUN/$name.err)"
    stop_proxy "$name" "${PROXY_PORT[$proxy]}"
    echo
    return
  fi
  load "$shape" "$proxy" 0 "$RUN/ipr-$name.txt" "$n" >"$RUN/ipr-$name.sum"
  read -r count _ _ err <"$RUN/ipr-$name.sum"
  stop_proxy "$name" "${PROXY_PORT[$proxy]}"
  if ((count != n || err != 0)); then
    log "$proxy ($shape) under callgrind answered $count of $n requests; its figure is left out (see $RUN/ipr-$name.txt)"
    echo
    return
  fi
  # Go programs do not always survive valgrind to the end (Caddy's runtime may crash it at
  # exit): a profile without totals leaves the figure out rather than guessing it.
  local total=0 f n
  for f in "$out"*; do
    n=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1; exit}')
    [[ -n $n ]] || { log "$proxy ($shape): callgrind wrote no totals (valgrind failed; see $RUN/$name.err)"; echo; return; }
    total=$((total + n))
  done
  echo "$total"
}
IPR_TSV="$RUN/ipr.tsv"
: >"$IPR_TSV"

# routes_pair : Parapet through 10,000 routes against 10 routes, both loaded at once. Measured
# as shapes of their own they are minutes apart, and over minutes (even seconds) this machine
# drifts by more than the difference; loaded at the same time, on the same core, every stall of
# the host hits both. They share the core (together about 85% of it on this machine, the client
# being the limit), so the rates are partly the client's; CPU µs is each table's own cost.
PAIR_TSV="$RUN/pair.tsv"
: >"$PAIR_TSV"
routes_pair() {
  local shape round
  log "== the routes pair (${PAIR[*]}): $PAIR_ROUNDS rounds, both loaded at once"
  for shape in "${PAIR[@]}"; do start_proxy "$shape" "parapet-$shape"; done
  for shape in "${PAIR[@]}"; do check_proxy "$shape" "parapet-$shape" && held "parapet-$shape"; done
  for shape in "${PAIR[@]}"; do
    load "$shape" "parapet-$shape" "$WARMUP" "$RUN/pair-warmup-$shape.txt" >/dev/null
  done
  for round in $(seq "$PAIR_ROUNDS"); do
    wait_quiet
    local -A t0=() t1=()
    local s0 s1 count p50 p99 err rate us pids=()
    for shape in "${PAIR[@]}"; do t0[$shape]=$(cpu_ticks "parapet-$shape"); done
    s0=$(date +%s.%N)
    for shape in "${PAIR[@]}"; do
      load "$shape" "parapet-$shape" "$DURATION" "$RUN/pair-$shape-$round.txt" >"$RUN/pair-$shape-$round.count" &
      pids+=($!)
    done
    wait "${pids[@]}"
    s1=$(date +%s.%N)
    for shape in "${PAIR[@]}"; do t1[$shape]=$(cpu_ticks "parapet-$shape"); done
    for shape in "${PAIR[@]}"; do
      read -r count p50 p99 err <"$RUN/pair-$shape-$round.count"
      rate=$(per_second "$count" "$s0" "$s1")
      us=$(us_each $((t1[$shape] - t0[$shape])) "$count")
      log "routes pair round $round $shape: $rate/s, p99 $p99 ms, $us µs each, errors $err"
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$shape" "$rate" "$us" "$p99" "$err" >>"$PAIR_TSV"
    done
  done
  for shape in "${PAIR[@]}"; do stop_proxy "parapet-$shape" "${PROXY_PORT[parapet-$shape]}"; done
}

for shape in "${SHAPES[@]}"; do
  log "== $shape"
  ACTIVE=()
  for proxy in "${PROXIES[@]}"; do in_shape "$shape" "$proxy" && ACTIVE+=("$proxy"); done
  for proxy in "${ACTIVE[@]}"; do start_proxy "$shape" "$proxy"; done
  for proxy in "${ACTIVE[@]}"; do check_proxy "$shape" "$proxy" && held "$proxy"; done
  if [[ $shape == idle-* ]]; then idle; else measure "$shape"; fi
  for proxy in "${ACTIVE[@]}"; do stop_proxy "$proxy" "${PROXY_PORT[$proxy]}"; done
  if ((IPR)) && [[ " ${IPR_SHAPES[*]} " == *" $shape "* ]]; then
    # A TLS handshake costs a hundred requests' instructions: a tenth of the count does.
    n1=$N1 n2=$N2
    [[ $shape == tls-* ]] && n1=$(((N1 + 9) / 10)) n2=$(((N2 + 9) / 10))
    ((n2 > n1)) || n2=$((n1 + 1))
    for proxy in "${ACTIVE[@]}"; do
      a=$(instructions "$shape" "$proxy" "$n1")
      [[ -n $a ]] || continue # (the second count would be left out too)
      b=$(instructions "$shape" "$proxy" "$n2")
      [[ -n $b ]] || continue
      ipr=$(((b - a) / (n2 - n1)))
      log "$shape $proxy: $ipr instructions per request (or connection)"
      printf '%s\t%s\t%s\n' "$shape" "$proxy" "$ipr" >>"$IPR_TSV"
    done
  fi
done

((${#PAIR[@]})) && routes_pair

# ---------------------------------------------------------------- report
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain -- dataplane crds 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
# median(a, m): the median of a[1..m], a left as it is; shared by the report's awk programs.
AWK_MEDIAN='function median(a, m,   i, j, t, v) {
  for (i = 1; i <= m; i++) v[i] = a[i]
  for (i = 2; i <= m; i++) for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
  return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
}'
SUMMARY="$RUN/summary.tsv"
awk -F'\t' "$AWK_MEDIAN"'
  function median_at(a, k, m,   i, v) { for (i = 1; i <= m; i++) v[i] = a[k, i]; return median(v, m) }
  { k = $1 SUBSEP $3; n[k]++; rate[k, n[k]] = $4; p50[k, n[k]] = $5; p99[k, n[k]] = $6; us[k, n[k]] = $9; err[k] += $7
    kus[k, n[k]] = $11
    if ($6 != "-") { if (!(k in lo) || $6 + 0 < lo[k]) lo[k] = $6 + 0; if (!(k in hi) || $6 + 0 > hi[k]) hi[k] = $6 + 0 } }
  # The p99 range over the rounds goes beside the median: on a shared machine p99s a few
  # percent apart often change order from round to round.
  END { for (k in n) { split(k, p, SUBSEP); m = n[k]
    printf "%s\t%s\t%.0f\t%s\t%s\t%.1f\t%d\t%.1f\t%s\n", p[1], p[2], median_at(rate, k, m),
      (p50[k, 1] == "-" ? "-" : median_at(p50, k, m)), (p99[k, 1] == "-" ? "-" : median_at(p99, k, m)), median_at(us, k, m), err[k],
      median_at(kus, k, m), (m > 1 && (k in lo) ? sprintf("%.3f–%.3f", lo[k], hi[k]) : "-") } }' "$RAW" >"$SUMMARY"

# Parapet over the best peer in the same round, per shape, for p99 and CPU µs (and CPU µs over
# nginx's): "shape median lo hi ..." then the round count. A shape's rounds are seconds apart
# and share the host's state, so these ratios cancel the drift that moves every proxy's figures
# together and that medians taken apart keep.
PAIRED="$RUN/paired.tsv"
awk -F'\t' "$AWK_MEDIAN"'
  function stat(s, name,   m, i, lo, hi, v) {
    m = n[s, name]; if (!m) return "\t-\t-\t-"
    lo = hi = q[s, name, 1]
    for (i = 1; i <= m; i++) { v[i] = q[s, name, i]; if (v[i] < lo) lo = v[i]; if (v[i] > hi) hi = v[i] }
    return sprintf("\t%.2f\t%.2f\t%.2f", median(v, m), lo, hi)
  }
  function add(s, name, x) { n[s, name]++; q[s, name, n[s, name]] = x }
  { if ($6 != "-") p99[$1, $2, $3] = $6 + 0; us[$1, $2, $3] = $9 + 0; seen[$1, $2] = 1; proxies[$3] = 1 }
  END {
    for (sr in seen) { split(sr, a, SUBSEP); s = a[1]; r = a[2]; bp = bu = 0
      if (!((s, r, "parapet") in us)) continue
      for (p in proxies) if (p != "parapet" && p != "relay") {
        if (((s, r, p) in p99) && (bp == 0 || p99[s, r, p] < bp)) bp = p99[s, r, p]
        if (((s, r, p) in us) && us[s, r, p] > 0 && (bu == 0 || us[s, r, p] < bu)) bu = us[s, r, p] }
      rounds[s]++
      if (bp > 0 && ((s, r, "parapet") in p99)) add(s, "p99", p99[s, r, "parapet"] / bp)
      if (bu > 0) add(s, "us", us[s, r, "parapet"] / bu)
      if (us[s, r, "nginx"] > 0) add(s, "nginx", us[s, r, "parapet"] / us[s, r, "nginx"])
      if (us[s, r, "nginx"] > 0 && ((s, r, "relay") in us)) add(s, "relay", us[s, r, "relay"] / us[s, r, "nginx"]) }
    for (s in rounds) print s stat(s, "p99") stat(s, "us") stat(s, "nginx") stat(s, "relay") "\t" rounds[s]
  }' "$RAW" >"$PAIRED"

describe() {
  case $1 in
  h1) echo "HTTP/1.1 GET, keep-alive" ;;
  h1-tls) echo "HTTP/1.1 GET over TLS 1.3" ;;
  h2-tls) echo "HTTP/2 over TLS 1.3, 4 streams per connection" ;;
  post-4k) echo "HTTP/1.1 POST, 4 KiB body" ;;
  post-256k) echo "HTTP/1.1 POST, 256 KiB body" ;;
  conn) echo "a new connection per request (plain HTTP/1.1, Connection: close)" ;;
  tls-new) echo "new TLS connections, full handshake, one request each (openssl s_time -new)" ;;
  tls-resumed) echo "new TLS connections, session resumed, one request each (openssl s_time -reuse)" ;;
  routes-*) echo "HTTP/1.1 GET through a table of $(routes_of "$1") routes" ;;
  esac
}

report() {
  echo "# Every path: Parapet, nginx, HAProxy and Caddy"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$commit\`$dirty; $CPUS × $(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo), Linux $(uname -r)."
  echo "nginx $(nginx -v 2>&1 | sed 's|.*/||'), HAProxy $(haproxy -v | awk 'NR==1{print $3}'), Caddy $CADDY_VERSION (GOMAXPROCS=1), h2load $(h2load --version | awk '{print $2}'), $(openssl version | awk '{print $1, $2}')."
  if ((${#PIN_CMD[@]})); then
    echo "The proxy measured on core $((CPUS - 1)) alone; backends and load generators on the others."
  else
    echo "Placed by the scheduler (BENCH_PIN=0, or one core): backends and load generators share the proxy's cores."
  fi
  if [[ -n $QUOTA ]]; then
    echo "Each proxy held to $QUOTA% of one core by a CPU quota (20 ms periods): the proxy, not the client, sets the"
    echo "rate, and CPU µs are its cost at saturation; latencies include the waits the quota imposes."
  fi
  if [[ $IDLE_DRIVER == haltpoll && -r $HALT_POLL_FILE ]]; then
    local how="as the machine has it"
    [[ -n $HALT_POLL ]] && how="set for this run (BENCH_HALT_POLL_NS; the machine's own: $HALT_POLL_WAS ns)"
    echo "Idle vCPUs (haltpoll driver) poll $(cat "$HALT_POLL_FILE") ns before they halt, $how."
  else
    echo "Idle CPUs: cpuidle driver $IDLE_DRIVER."
  fi
  echo "One worker each; two sample backends, 1 KiB answers; $CONNS client connections; $ROUNDS"
  echo "rounds of ${DURATION}s (each starting with the next proxy) after a ${WARMUP}s warm-up, medians. CPU µs is the proxy's own CPU time"
  echo "(user + system, from /proc) per request, or per connection for the connection shapes:"
  echo "it holds on a shared machine where the rate does not. Kernel µs is the system part of it (system"
  echo "calls, and TCP over loopback: a send also runs the receiver's side of it), much the same work"
  echo "for every proxy. Ratios are to the best peer."
  local shape relay=
  for shape in "${SHAPES[@]}"; do [[ " ${PROXIES[*]} " == *" relay "* ]] && in_shape "$shape" relay && relay=1; done
  if [[ -n $relay ]]; then
    echo
    echo "The relay is HAProxy in TCP mode: it passes bytes between each client connection and a backend"
    echo "connection of its own and does no HTTP work (no parsing, no headers added, no routing). It is"
    echo "not a peer and not in the ratios; it shows the floor, what this machine's kernel and a lean"
    echo "event loop cost for the same traffic, on the plain HTTP/1.1 keep-alive shapes."
  fi
  for shape in "${SHAPES[@]}"; do
    [[ $shape == idle-* ]] && continue
    echo
    echo "## $shape: $(describe "$shape")"
    echo
    echo "| proxy | per second | p50 ms | p99 ms | p99 over the rounds | CPU µs | kernel µs | CPU vs best peer | instructions | system calls | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' -v s="$shape" -v order="${PROXIES[*]}" '
      FILENAME ~ /ipr/ { if ($1 == s) ipr[$2] = $3; next }
      FILENAME ~ /syscalls/ { if ($1 == s) sc[$2] = $3; next }
      $1 == s { rate[$2] = $3; p50[$2] = $4; p99[$2] = $5; us[$2] = $6; err[$2] = $7; kus[$2] = $8; spread[$2] = $9 }
      END {
        m = split(order, o, " "); best = 0
        for (i = 1; i <= m; i++) if (o[i] != "parapet" && o[i] != "relay" && (o[i] in us) && (best == 0 || us[o[i]] < best)) best = us[o[i]]
        for (i = 1; i <= m; i++) { p = o[i]; if (!(p in rate)) continue
          printf "| %s | %d | %s | %s | %s | %.1f | %.1f | %s | %s | %s | %d |\n", p, rate[p], p50[p], p99[p], spread[p], us[p], kus[p],
            (best > 0 ? sprintf("%.2f×", us[p] / best) : "–"), ((p in ipr) ? ipr[p] : "–"), ((p in sc) ? sc[p] : "–"), err[p] }
      }' "$IPR_TSV" "$SYSCALL_TSV" "$SUMMARY"
    awk -F'\t' -v s="$shape" '$1 == s && $14 > 1 {
      line = ""
      if ($2 != "-") line = sprintf("p99 %.2f× (%.2f–%.2f)", $2, $3, $4)
      if ($5 != "-") line = line (line == "" ? "" : ", ") sprintf("CPU µs %.2f× (%.2f–%.2f)", $5, $6, $7)
      if ($8 != "-") line = line sprintf(", CPU µs over nginx'"'"'s %.2f× (%.2f–%.2f)", $8, $9, $10)
      printf "\nRound by round, Parapet over the best peer in the same round (median, and the range over %d rounds): %s.\n", $14, line
      if ($11 != "-") printf "The relay'"'"'s CPU µs over nginx'"'"'s, round by round: %.2f× (%.2f–%.2f).\n", $11, $12, $13 }' "$PAIRED"
  done
  if [[ -s $IDLE_TSV ]]; then
    echo
    echo "## idle-$((IDLE / 1000))k: $IDLE keep-alive connections, 1% of them busy"
    echo
    echo "| proxy | connections | RSS before | RSS with them held | per idle connection | busy req/s |"
    echo "|---|---:|---:|---:|---:|---:|"
    awk -F'\t' '{ printf "| %s | %d | %.1f MB | %.1f MB | %.2f KB | %s |\n", $1, $5, $2 / 1024, $3 / 1024, ($3 - $2) / $5, $4 }' "$IDLE_TSV"
    echo
    echo "nginx figures are its master plus its worker. A process may open at most $(ulimit -n) files"
    echo "here and HAProxy reserves two per connection, so it holds 9,800 at most."
  fi
  if [[ -s $PAIR_TSV ]]; then
    echo
    echo "## ${PAIR[1]} against ${PAIR[0]}: Parapet with each table, loaded at once"
    echo
    echo "Both loaded at once, on the same core, $CONNS client connections each; $PAIR_ROUNDS rounds of ${DURATION}s;"
    echo "medians. Where the two together leave the core idle the rates are partly the client's; CPU µs is each table's own."
    echo
    awk -F'\t' -v small="${PAIR[0]}" -v big="${PAIR[1]}" "$AWK_MEDIAN"'
      { n[$2]++; rate[$2, $1] = $3; us[$2, $1] = $4; p99[$2, $1] = $5; err[$2] += $6; rounds[$1] = 1 }
      END {
        print "| table | per second | CPU µs | p99 ms | errors |"
        print "|---|---:|---:|---:|---:|"
        for (k = 0; k < 2; k++) { s = k ? big : small; m = 0
          for (r in rounds) if ((s, r) in rate) { m++; a[m] = rate[s, r]; b[m] = us[s, r]; c[m] = p99[s, r] }
          mr[s] = median(a, m); mu[s] = median(b, m)
          printf "| %s | %d | %.1f | %.3f | %d |\n", s, mr[s], mu[s], median(c, m), err[s] }
        m = 0; list = ""
        for (r = 1; (r in rounds); r++) if ((small, r) in rate && (big, r) in rate && rate[small, r] > 0) {
          m++; q[m] = rate[big, r] / rate[small, r]; list = list (m > 1 ? ", " : "") sprintf("%+.1f%%", 100 * (q[m] - 1)) }
        printf "\nThroughput through %s against %s: %+.1f%% (the median of the rounds'"'"' ratios: %s); CPU per request %+.1f%%.\n",
          big, small, 100 * (median(q, m) - 1), list, (mu[small] > 0 ? 100 * (mu[big] / mu[small] - 1) : 0)
      }' "$PAIR_TSV"
  fi
  if [[ -s $IPR_TSV ]]; then
    echo
    echo "Instructions: per request under callgrind (user space only), one worker, h2load -c 8 asking"
    echo "$N1 and then $N2 times on fresh processes, differenced over $((N2 - N1)) requests; for the"
    echo "connection shapes per connection, bench/conn_client.py opening $N1 and then $N2 (TLS: a"
    echo "tenth of that) 8 at a time, one request each (tls-resumed: each client resumes the session"
    echo "its previous connection was given)."
  fi
  if [[ -s $SYSCALL_TSV ]]; then
    echo
    echo "System calls: per request (per connection for conn), every system call the proxy's processes"
    echo "made during the warm-up, counted with perf stat on the raw_syscalls:sys_enter tracepoint."
  fi
  echo
  echo "<details><summary>Every run</summary>"
  echo
  echo "| shape | round | proxy | per second | p50 ms | p99 ms | errors | proxy CPU | CPU µs | kernel µs | client + other CPU |"
  echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s%% | %s | %s | %s%% |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $11, $10 }' "$RAW"
  echo
  echo "</details>"
}
mkdir -p "$(dirname "$OUT")"
report >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
cat "$OUT"
log "written to $OUT"
