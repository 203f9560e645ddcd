# Helpers shared by the bench scripts and scripts/pgo-profile.sh (sourced, not run): logging, the run
# directory and the processes started in it (all stopped by an exit trap), waits for ports
# and URLs, CPU accounting from /proc, and reading wrk's output.

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

# make_run_dir PREFIX : creates $RUN and installs the trap that stops every process `start`
# started (SIGTERM, then SIGKILL after 5 s) and removes $RUN (kept on failure or BENCH_KEEP).
PIDS=()
declare -A PID_OF=()
make_run_dir() {
  RUN=$(mktemp -d "/tmp/$1.XXXXXX")
  chmod 755 "$RUN" # nginx workers (user nobody when started as root) read below it
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill "${PIDS[i]}" 2>/dev/null || true
  done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    # Bounded wait: anything still alive after 5 s gets SIGKILL.
    for _ in $(seq 50); do kill -0 "${PIDS[i]}" 2>/dev/null || break; sleep 0.1; done
    kill -9 "${PIDS[i]}" 2>/dev/null || true
    wait "${PIDS[i]}" 2>/dev/null || true
  done
  # The CPU quota's cgroup (bench/paths.sh, BENCH_QUOTA), empty once its processes are gone.
  [[ -z ${QUOTA_CGROUP:-} ]] || rmdir "$QUOTA_CGROUP" 2>/dev/null || true
  # The idle vCPUs' halt polling as it was (bench/paths.sh, BENCH_HALT_POLL_NS).
  [[ -z ${HALT_POLL_WAS:-} ]] || echo "$HALT_POLL_WAS" >"$HALT_POLL_FILE" 2>/dev/null || true
  if [[ $rc -ne 0 || -n ${BENCH_KEEP:-} ]]; then
    echo "bench: configs, logs and raw wrk output kept in $RUN" >&2
  else
    rm -rf "$RUN"
  fi
  exit "$rc"
}

# start NAME CMD... : runs CMD in the background, logs to $RUN/NAME.{out,err}
start() {
  local name=$1
  shift
  "$@" >"$RUN/$name.out" 2>"$RUN/$name.err" &
  PIDS+=($!)
  PID_OF[$name]=$!
}

# build_dataplane : the release data plane as it ships: profile-guided with the committed
# profile (scripts/dataplane-rustflags.sh), as make images and the Dockerfile build it.
build_dataplane() {
  local features=() flags=${RUSTFLAGS:-}
  # Older trees gate the binary behind a `proxy` feature and have no profile.
  grep -qE '^proxy *=' dataplane/Cargo.toml && features=(--features proxy)
  [[ -x scripts/dataplane-rustflags.sh ]] && flags=$(scripts/dataplane-rustflags.sh)
  RUSTFLAGS=$flags cargo build --release -q -p parapet-dataplane "${features[@]}" --bin dataplane
}

# ensure_tools CMD=PACKAGE... : installs (apt-get, as root) the Debian packages of the
# commands that are missing; nginx comes as nginx-light where Debian has it.
ensure_tools() {
  local need=() pair cmd pkg
  for pair in "$@"; do
    cmd=${pair%%=*} pkg=${pair#*=}
    command -v "$cmd" >/dev/null 2>&1 || [[ -x /usr/sbin/$cmd ]] || need+=("$pkg")
  done
  if ((${#need[@]})); then
    [[ $(id -u) -eq 0 ]] || die "missing ${need[*]}; install them (sudo apt-get install ${need[*]/nginx/nginx-light}) or run as root"
    log "installing ${need[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    local pkgs=()
    for pkg in "${need[@]}"; do
      if [[ $pkg == nginx ]] && apt-cache show nginx-light >/dev/null 2>&1; then pkg=nginx-light; fi
      pkgs+=("$pkg")
    done
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
  export PATH="$PATH:/usr/sbin:/sbin"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_http URL : until it answers 2xx, for up to 10 s
wait_http() {
  for _ in $(seq 100); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# wait_port PORT : until something listens on 127.0.0.1:PORT, for up to 10 s
wait_port() {
  for _ in $(seq 100); do port_free "$1" || return 0; sleep 0.1; done
  return 1
}

# The PIDs of a proxy started as NAME (nginx: the master and its workers).
proxy_pids() {
  echo "${PID_OF[$1]}"
  [[ $1 == nginx ]] && pgrep -P "${PID_OF[$1]}" || true
}
# cpu_ticks PROXY [system] : CPU time (user + system, or system alone; clock ticks) of a
# proxy's processes.
cpu_ticks() {
  local sum=0 p field='$14 + $15'
  [[ ${2:-} == system ]] && field='$15'
  for p in $(proxy_pids "$1"); do sum=$((sum + $(awk "{print $field}" "/proc/$p/stat"))); done
  echo "$sum"
}
# parapet_row LABEL MARKDOWN : from a bench/paths.sh report, Parapet's row as
# "LABEL req/s p99 CPU-µs instructions errors" (tab-separated), for the scripts that run it.
# Columns: | proxy | per second | p50 | p99 | p99 over the rounds | CPU µs | kernel µs | vs best |
# instructions | system calls | errors |
parapet_row() {
  awk -F'|' -v l="$1" '$2 ~ /^ parapet / { gsub(/ /, ""); print l "\t" $3 "\t" $5 "\t" $7 "\t" $10 "\t" $12 }' "$2"
}
# Ticks used so far by the backends in BACKEND_PIDS (still running: their own /proc/PID/stat).
backend_ticks() {
  local sum=0 p
  for p in "${BACKEND_PIDS[@]}"; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  echo "$sum"
}
CLK_TCK=$(getconf CLK_TCK)
machine_ticks() { awk '$1 == "cpu" {print $2 + $3 + $4; exit}' /proc/stat; }
# pct TICKS START_S END_S : ticks as % of one core over the interval
pct() { awk -v t="$1" -v hz="$CLK_TCK" -v a="$2" -v b="$3" 'BEGIN{v = 100 * t / hz / (b - a); printf "%.0f", v < 0.5 ? 0 : v}'; }

# On a shared machine, wait until other work uses < NOISY_PCT of a core before a measured
# run (the proxies, backends and wrk are idle at that point), within a total budget of
# QUIET_WAIT seconds for the whole benchmark.
wait_quiet() {
  local first=1 m0 m1 s0 s1 busy
  : "${QUIET_LEFT:=$QUIET_WAIT}"
  while :; do
    m0=$(machine_ticks) s0=$(date +%s.%N)
    sleep 1
    m1=$(machine_ticks) s1=$(date +%s.%N)
    busy=$(pct $((m1 - m0)) "$s0" "$s1")
    ((busy > NOISY_PCT)) || return 0
    if ((QUIET_LEFT <= 0)); then
      ((first)) && log "the machine is busy (${busy}% of a core) and the wait budget is spent; measuring anyway"
      return 0
    fi
    ((first)) && log "waiting for other work to settle (${busy}% of a core busy, ${QUIET_LEFT}s of waiting left)"
    first=0
    QUIET_LEFT=$((QUIET_LEFT - 1))
  done
}

# parse_wrk FILE : "req/s p50_ms p99_ms errors" from wrk --latency output
parse_wrk() {
  awk '
    function ms(v) {
      if (v ~ /us$/) return substr(v, 1, length(v) - 2) / 1000
      if (v ~ /ms$/) return substr(v, 1, length(v) - 2) + 0
      if (v ~ /m$/)  return substr(v, 1, length(v) - 1) * 60000
      if (v ~ /s$/)  return substr(v, 1, length(v) - 1) * 1000
      return v + 0
    }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /^Requests\/sec:/ { rps = $2 }
    /Non-2xx or 3xx responses:/ { err += $NF }
    /Socket errors:/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
    END { printf "%.0f %.3f %.3f %d\n", rps, p50, p99, err }
  ' "$1"
}
