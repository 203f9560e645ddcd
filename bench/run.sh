#!/usr/bin/env bash
# `make bench`: Parapet's data plane against nginx and HAProxy, side by side, in front of the
# same sample backends on 127.0.0.1, with wrk as the load generator. See BENCHMARKS.md.
#
# Knobs (environment):
#   BENCH_WORKERS=1        worker processes / threads for every proxy (nginx worker_processes,
#                          HAProxy nbthread, Parapet --workers)
#   BENCH_ROUNDS=3         measured runs per proxy and body size (alternating proxies)
#   BENCH_DURATION=10s     length of each measured wrk run
#   BENCH_WARMUP=3s        length of the warm-up run per proxy and body size (not reported)
#   BENCH_CONNECTIONS=32   wrk connections (-c)
#   BENCH_THREADS=1        wrk threads (-t)
#   BENCH_PORT_BASE=18400  ports BASE+1..BASE+4 backends, +10/+11 Parapet, +20 nginx, +30 HAProxy,
#                          +40 HAProxy in TCP mode
#   BENCH_PROXIES="parapet nginx haproxy haproxy-tcp"
#                          haproxy-tcp is the ceiling, not a contender: HAProxy relaying bytes
#                          in TCP mode, with no HTTP work (see bench/haproxy-tcp.cfg.tmpl)
#   BENCH_OUT=bench/results/latest.md
#   BENCH_SKIP_BUILD=1     use the release binaries already built
#   BENCH_KEEP=1           keep the run directory (configs, logs, raw wrk output)
#   BENCH_NOISY_PCT=20     for shared machines: a run during which other work used more than
#                          this % of a core is "noisy" and is run again (at most
#                          BENCH_NOISY_RETRIES=6 repeats in all), and before each measured run
#                          the script waits for the machine to be that quiet (at most
#                          BENCH_QUIET_WAIT=300 s in all); the budgets bound the total time
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=${BENCH_WORKERS:-1}
ROUNDS=${BENCH_ROUNDS:-3}
DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-3s}
CONNS=${BENCH_CONNECTIONS:-32}
WRK_THREADS=${BENCH_THREADS:-1}
BASE=${BENCH_PORT_BASE:-18400}
read -r -a PROXIES <<<"${BENCH_PROXIES:-parapet nginx haproxy haproxy-tcp}"
OUT=${BENCH_OUT:-bench/results/latest.md}
NOISY_PCT=${BENCH_NOISY_PCT:-20}
NOISY_RETRIES=${BENCH_NOISY_RETRIES:-6}
QUIET_WAIT=${BENCH_QUIET_WAIT:-300}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN="$TARGET_DIR/release"

BODIES=(1k 64k)
declare -A BODY_BYTES=([1k]=1024 [64k]=65536)
declare -A BACKEND_PORTS=([1k]="$((BASE + 1)) $((BASE + 2))" [64k]="$((BASE + 3)) $((BASE + 4))")
declare -A PROXY_PORT=([parapet]=$((BASE + 10)) [nginx]=$((BASE + 20)) [haproxy]=$((BASE + 30))
  [haproxy-tcp]=$((BASE + 40)))
PARAPET_ADMIN=$((BASE + 11))

source bench/lib.sh

for v in WORKERS ROUNDS CONNS WRK_THREADS BASE; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
for v in NOISY_PCT NOISY_RETRIES QUIET_WAIT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number (got '${!v}')"
done
for p in "${PROXIES[@]}"; do
  [[ -n ${PROXY_PORT[$p]:-} ]] || die "unknown proxy '$p' in BENCH_PROXIES (parapet, nginx, haproxy, haproxy-tcp)"
done

# ---------------------------------------------------------------- processes and cleanup
make_run_dir parapet-bench




# ---------------------------------------------------------------- 1. Debian packages
ensure_tools nginx=nginx haproxy=haproxy wrk=wrk curl=curl

# ---------------------------------------------------------------- 2. build
if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
  log "building the release binaries"
  build_dataplane
  cargo build --release -q -p parapet-tests --bin sample-backend
fi
for b in dataplane sample-backend; do
  [[ -x $BIN/$b ]] || die "$BIN/$b is missing"
done

# ---------------------------------------------------------------- 3. backends
all_ports=(${BACKEND_PORTS[1k]} ${BACKEND_PORTS[64k]} "${PROXY_PORT[@]}" "$PARAPET_ADMIN")
for p in "${all_ports[@]}"; do
  port_free "$p" || die "port $p on 127.0.0.1 is in use; pick another BENCH_PORT_BASE"
done

log "starting 2 sample backends per body size"
BACKEND_PIDS=()
for body in "${BODIES[@]}"; do
  i=0
  for port in ${BACKEND_PORTS[$body]}; do
    i=$((i + 1))
    start "backend-$body-$i" "$BIN/sample-backend" "b$body-$i" "$port" "${BODY_BYTES[$body]}"
    BACKEND_PIDS+=("${PID_OF[backend-$body-$i]}")
  done
done
for body in "${BODIES[@]}"; do
  for port in ${BACKEND_PORTS[$body]}; do
    wait_http "http://127.0.0.1:$port/healthz" || die "backend on port $port did not start"
  done
done

# ---------------------------------------------------------------- 4. proxies
render() { # render TEMPLATE OUT PORT
  set -- "$1" "$2" "$3" ${BACKEND_PORTS[1k]} ${BACKEND_PORTS[64k]}
  sed -e "s|@WORKERS@|$WORKERS|g" -e "s|@RUNDIR@|$RUN|g" -e "s|@PORT@|$3|g" \
    -e "s|@PORT_1K_A@|$4|g" -e "s|@PORT_1K_B@|$5|g" \
    -e "s|@PORT_64K_A@|$6|g" -e "s|@PORT_64K_B@|$7|g" "$1" >"$2"
}

nginx_bin=$(command -v nginx)
haproxy_bin=$(command -v haproxy)
for proxy in "${PROXIES[@]}"; do
  port=${PROXY_PORT[$proxy]}
  case $proxy in
  parapet)
    render bench/parapet.yaml.tmpl "$RUN/parapet.yaml" "$port"
    start parapet "$BIN/dataplane" --config "$RUN/parapet.yaml" \
      --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$PARAPET_ADMIN" \
      --workers "$WORKERS" --log-format text
    wait_http "http://127.0.0.1:$PARAPET_ADMIN/readyz" || die "Parapet not ready; see $RUN/parapet.err"
    ;;
  nginx)
    render bench/nginx.conf.tmpl "$RUN/nginx.conf" "$port"
    "$nginx_bin" -t -q -c "$RUN/nginx.conf" -p "$RUN" 2>"$RUN/nginx-t.err" ||
      die "nginx -t failed: $(cat "$RUN/nginx-t.err")"
    start nginx "$nginx_bin" -c "$RUN/nginx.conf" -p "$RUN"
    ;;
  haproxy)
    render bench/haproxy.cfg.tmpl "$RUN/haproxy.cfg" "$port"
    "$haproxy_bin" -c -q -f "$RUN/haproxy.cfg" 2>"$RUN/haproxy-c.err" ||
      die "haproxy -c failed: $(cat "$RUN/haproxy-c.err")"
    start haproxy "$haproxy_bin" -db -f "$RUN/haproxy.cfg"
    ;;
  haproxy-tcp)
    render bench/haproxy-tcp.cfg.tmpl "$RUN/haproxy-tcp.cfg" "$port"
    "$haproxy_bin" -c -q -f "$RUN/haproxy-tcp.cfg" 2>"$RUN/haproxy-tcp-c.err" ||
      die "haproxy -c failed: $(cat "$RUN/haproxy-tcp-c.err")"
    start haproxy-tcp "$haproxy_bin" -db -f "$RUN/haproxy-tcp.cfg"
    ;;
  esac
done

# ---------------------------------------------------------------- measuring helpers
rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/{print $2}' "/proc/$1/status"; }
total_rss_kb() {
  local sum=0 p
  for p in $(proxy_pids "$1"); do sum=$((sum + $(rss_kb "$p"))); done
  echo "$sum"
}
# Ticks used by this shell's finished children (wrk), from the `times` builtin (which must
# run in this shell, not in a $(...) subshell).
children_ticks() {
  times >"$RUN/times"
  awk -v hz="$CLK_TCK" 'NR == 2 {
    t = 0
    for (i = 1; i <= 2; i++) { split($i, a, "m"); t += a[1] * 60 + a[2] }
    printf "%.0f", t * hz }' "$RUN/times"
}
mb() { awk -v k="$1" 'BEGIN{printf "%.1f", k / 1024}'; }

for proxy in "${PROXIES[@]}"; do
  wait_port "${PROXY_PORT[$proxy]}" || die "$proxy is not listening on ${PROXY_PORT[$proxy]}; see $RUN/$proxy.err"
done

# ---------------------------------------------------------------- 6a. memory at start
# Idle RSS before any request has gone through.
sleep 1
declare -A RSS_START
for proxy in "${PROXIES[@]}"; do RSS_START[$proxy]=$(total_rss_kb "$proxy"); done

# Every proxy answers both paths with the right body, round robin over both backends.
for proxy in "${PROXIES[@]}"; do
  port=${PROXY_PORT[$proxy]}
  wait_http "http://127.0.0.1:$port/1k" || die "$proxy does not answer on port $port; see $RUN/$proxy.err"
  for body in "${BODIES[@]}"; do
    seen=""
    for _ in 1 2 3 4; do
      read -r code size backend < <(curl -sS -o /dev/null -D "$RUN/headers" \
        -w '%{http_code} %{size_download} ' "http://127.0.0.1:$port/$body"
        tr -d '\r' <"$RUN/headers" | awk -F': ' 'tolower($1)=="x-backend"{print $2}')
      [[ $code == 200 && $size == "${BODY_BYTES[$body]}" ]] ||
        die "$proxy /$body answered $code with $size bytes (expected 200, ${BODY_BYTES[$body]})"
      seen="$seen $backend"
    done
    n=$(tr ' ' '\n' <<<"$seen" | sort -u | grep -c .)
    [[ $n -eq 2 ]] || die "$proxy /$body did not spread over both backends (saw:$seen)"
  done
done

# wrk_run PROXY BODY DURATION OUTFILE
wrk_run() {
  local url="http://127.0.0.1:${PROXY_PORT[$1]}/$2"
  # wrk's own -d bounds the run; timeout(1) is a backstop in case it hangs.
  timeout --kill-after=5 120 wrk -t"$WRK_THREADS" -c"$CONNS" -d"$3" --timeout 5s --latency "$url" >"$4"
}


# ---------------------------------------------------------------- 5. load
# On a shared machine, wait until other work uses < NOISY_PCT of a core before a measured
# run (the proxies, backends and wrk are idle at that point), within a total budget of
# QUIET_WAIT seconds for the whole benchmark.
REDONE=0 NOISY=0
RAW="$RUN/runs.tsv"
: >"$RAW"
runs_total=$((${#BODIES[@]} * ROUNDS * ${#PROXIES[@]}))
n=0
for body in "${BODIES[@]}"; do
  for proxy in "${PROXIES[@]}"; do
    log "warm-up $proxy /$body ($WARMUP)"
    wrk_run "$proxy" "$body" "$WARMUP" "$RUN/wrk-warmup-$proxy-$body.txt"
  done
  for round in $(seq "$ROUNDS"); do
    for proxy in "${PROXIES[@]}"; do
      n=$((n + 1))
      while :; do
        wait_quiet
        f="$RUN/wrk-$body-$round-$proxy.txt"
        children_ticks >"$RUN/c0"
        t0=$(cpu_ticks "$proxy") m0=$(machine_ticks) b0=$(backend_ticks) c0=$(<"$RUN/c0")
        s0=$(date +%s.%N)
        wrk_run "$proxy" "$body" "$DURATION" "$f"
        s1=$(date +%s.%N)
        t1=$(cpu_ticks "$proxy") m1=$(machine_ticks) b1=$(backend_ticks)
        children_ticks >"$RUN/c1"
        c1=$(<"$RUN/c1")
        read -r rps p50 p99 err < <(parse_wrk "$f")
        cpu=$(pct $((t1 - t0)) "$s0" "$s1")
        # CPU used by anything but the proxy, the backends and wrk (other work on the
        # machine, plus kernel time not charged to a process): a noise indicator.
        other=$(pct $(((m1 - m0) - (t1 - t0) - (b1 - b0) - (c1 - c0))) "$s0" "$s1")
        ((other >= 0)) || other=0
        wrk_cpu=$(pct $((c1 - c0)) "$s0" "$s1") backend_cpu=$(pct $((b1 - b0)) "$s0" "$s1")
        log "[$n/$runs_total] /$body round $round $proxy: $rps req/s, p50 ${p50} ms, p99 ${p99} ms, proxy cpu ${cpu}%, other cpu ${other}%, errors $err"
        ((other > NOISY_PCT)) || break
        if ((REDONE < NOISY_RETRIES)); then
          log "${other}% of a core went to other work during this run; running it again"
          REDONE=$((REDONE + 1))
        else
          log "warning: ${other}% of a core went to other work during this run; its figures are noisy"
          NOISY=$((NOISY + 1))
          break
        fi
      done
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$body" "$round" "$proxy" "$rps" "$p50" "$p99" \
        "$err" "$cpu" "$other" "$wrk_cpu" "$backend_cpu" >>"$RAW"
    done
  done
done

# ---------------------------------------------------------------- 6b. memory after load
sleep 2
declare -A RSS_AFTER RSS_PEAK
for proxy in "${PROXIES[@]}"; do
  RSS_AFTER[$proxy]=$(total_rss_kb "$proxy")
  peak=0
  for p in $(proxy_pids "$proxy"); do peak=$((peak + $(hwm_kb "$p"))); done
  RSS_PEAK[$proxy]=$peak
done

# ---------------------------------------------------------------- 7. report
# Per proxy and body: median over rounds of req/s, p50, p99, CPU; total errors.
SUMMARY="$RUN/summary.tsv"
awk -F'\t' '
  { k = $1 SUBSEP $3; n[k]++; rps[k, n[k]] = $4; p50[k, n[k]] = $5; p99[k, n[k]] = $6
    cpu[k, n[k]] = $8; err[k] += $7; us[k, n[k]] = $4 > 0 ? $8 * 10000 / $4 : 0 }
  function median(a, k, m,   i, j, t, v) {
    for (i = 1; i <= m; i++) v[i] = a[k, i]
    for (i = 2; i <= m; i++) for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
    return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
  }
  function minmax(a, k, m,   i, lo, hi) {
    lo = hi = a[k, 1]
    for (i = 2; i <= m; i++) { if (a[k, i] < lo) lo = a[k, i]; if (a[k, i] > hi) hi = a[k, i] }
    return lo "\t" hi
  }
  END {
    for (k in n) { split(k, p, SUBSEP); m = n[k]
      printf "%s\t%s\t%.0f\t%.3f\t%.3f\t%d\t%.0f\t%s\t%.1f\n", p[1], p[2], median(rps, k, m),
        median(p50, k, m), median(p99, k, m), err[k], median(cpu, k, m), minmax(rps, k, m), median(us, k, m) }
  }' "$RAW" >"$SUMMARY"

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain -- dataplane crds 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
cpu_model=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
nginx_v=$("$nginx_bin" -v 2>&1 | sed 's|.*/||')
haproxy_v=$("$haproxy_bin" -v | awk 'NR==1{print $3}')
wrk_v=$(wrk -v 2>&1 | awk 'NR==1{print $2}' || true)

report() { # markdown tables, printed and saved
  echo "# Parapet benchmark results"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$commit\`$dirty; $(nproc) × $cpu_model, Linux $(uname -r)."
  echo "nginx $nginx_v, HAProxy $haproxy_v, wrk $wrk_v. Every proxy: $WORKERS worker(s)/thread(s)."
  echo "wrk -t$WRK_THREADS -c$CONNS -d$DURATION --latency, $ROUNDS alternating rounds after a $WARMUP warm-up;"
  echo "figures are the median over rounds (req/s range in brackets). Ratios are to nginx:"
  echo "req/s ratio > 1 is faster, p99 ratio < 1 is better. Proxy CPU is the proxy's own use"
  echo "(100% = one core); CPU µs/req is that divided by the request rate (lower is leaner)."
  if ((REDONE + NOISY)); then
    echo "$REDONE run(s) were repeated because other work on the machine used more than $NOISY_PCT% of a"
    echo "core during them; $NOISY run(s) were noisy once the repeat budget ($NOISY_RETRIES) was spent (see"
    echo "\"other CPU\" under \"Every run\")."
  fi
  for body in "${BODIES[@]}"; do
    echo
    echo "## ${BODY_BYTES[$body]}-byte responses (/$body)"
    echo
    echo "| proxy | req/s | p50 ms | p99 ms | req/s vs nginx | p99 vs nginx | proxy CPU | CPU µs/req | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' -v body="$body" -v order="${PROXIES[*]}" '
      $1 == body { rps[$2] = $3; p50[$2] = $4; p99[$2] = $5; err[$2] = $6; cpu[$2] = $7; lo[$2] = $8; hi[$2] = $9; us[$2] = $10 }
      END {
        m = split(order, o, " ")
        for (i = 1; i <= m; i++) { p = o[i]; if (!(p in rps)) continue
          rr = ("nginx" in rps) ? sprintf("%.2f×", rps[p] / rps["nginx"]) : "–"
          pr = ("nginx" in rps && p99["nginx"] > 0) ? sprintf("%.2f×", p99[p] / p99["nginx"]) : "–"
          printf "| %s | %d (%d–%d) | %.2f | %.2f | %s | %s | %d%% | %.1f | %d |\n", p, rps[p], lo[p], hi[p], p50[p], p99[p], rr, pr, cpu[p], us[p], err[p]
        }
      }' "$SUMMARY"
  done
  if [[ " ${PROXIES[*]} " == *" haproxy-tcp "* ]]; then
    echo
    echo "haproxy-tcp is not a contender but the ceiling: HAProxy in TCP mode relaying bytes between"
    echo "each client connection and a backend connection of its own, with no HTTP work (nothing"
    echo "parsed, no header added). No HTTP proxy can go faster than it with these backends and wrk"
    echo "on this machine."
  fi
  echo
  echo "## Memory (RSS)"
  echo
  echo "| proxy | idle after start | idle after load | peak (VmHWM) |"
  echo "|---|---:|---:|---:|"
  for proxy in "${PROXIES[@]}"; do
    echo "| $proxy | $(mb "${RSS_START[$proxy]}") MB | $(mb "${RSS_AFTER[$proxy]}") MB | $(mb "${RSS_PEAK[$proxy]}") MB |"
  done
  echo
  echo "nginx figures are the master plus its workers."
  if [[ " ${PROXIES[*]} " == *" parapet "* && " ${PROXIES[*]} " == *" nginx "* ]]; then
    echo
    echo "## Targets"
    echo
    echo "| target | result |"
    echo "|---|---|"
    for body in "${BODIES[@]}"; do
      awk -F'\t' -v body="$body" '
        $1 == body { rps[$2] = $3; p99[$2] = $5 }
        END {
          r = rps["parapet"] / rps["nginx"]; q = p99["parapet"] / p99["nginx"]
          printf "| /%s: req/s ≥ 1.2× nginx | %.2f× — %s |\n", body, r, (r >= 1.2 ? "met" : "**not met**")
          printf "| /%s: p99 ≤ nginx | %.2f ms vs %.2f ms — %s |\n", body, p99["parapet"], p99["nginx"], (q <= 1 ? "met" : "**not met**")
          if ("haproxy-tcp" in rps)
            printf "| /%s: ceiling (haproxy-tcp, no HTTP work) | %.2f× nginx |\n", body, rps["haproxy-tcp"] / rps["nginx"]
        }' "$SUMMARY"
    done
    idle=${RSS_AFTER[parapet]}
    ((RSS_START[parapet] > idle)) && idle=${RSS_START[parapet]}
    printf '| Parapet idle RSS < 30 MB | %s MB after start, %s MB after load — %s |\n' \
      "$(mb "${RSS_START[parapet]}")" "$(mb "${RSS_AFTER[parapet]}")" \
      "$( ((idle < 30 * 1024)) && echo met || echo '**not met**')"
  fi
  echo
  echo "<details><summary>Every run</summary>"
  echo
  echo "| body | round | proxy | req/s | p50 ms | p99 ms | proxy CPU | wrk CPU | backends CPU | other CPU | errors |"
  echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  awk -F'\t' '{ printf "| %s | %s | %s | %s | %.2f | %.2f | %s%% | %s%% | %s%% | %s%% | %s |\n", $1, $2, $3, $4, $5, $6, $8, $10, $11, $9, $7 }' "$RAW"
  echo
  echo "CPU figures are % of one core over the run (the machine has $(nproc) cores). Other CPU is"
  echo "machine CPU time used by none of the proxy, the backends and wrk (other processes, and"
  echo "kernel work not charged to a process); high values mean the run was disturbed."
  echo
  echo "</details>"
}

mkdir -p "$(dirname "$OUT")"
report >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo
cat "$OUT"
echo
log "written to $OUT"
