#!/usr/bin/env bash
# `make bench`, cache part: Parapet's response cache against nginx proxy_cache and HAProxy's
# cache, side by side, in front of the same sample backends on 127.0.0.1, with wrk. See the
# "Cache" section of BENCHMARKS.md. Two scenarios:
#   hit       /cached/1k and /cached/64k, kept 10 minutes; each key is fetched once, then wrk
#             hammers the same URL, so (after a check) every measured request is a cache hit.
#   coalesce  /coalesce, kept BENCH_SHORT_TTL seconds, in front of a backend that waits
#             BENCH_DELAY_MS per answer; the key expires every TTL while all wrk connections
#             ask for it. Reported with the origin requests each proxy made during the runs.
#
# Knobs (environment; the shared ones mean the same as in bench/run.sh):
#   BENCH_WORKERS=1  BENCH_ROUNDS=3  BENCH_DURATION=10s  BENCH_WARMUP=3s
#   BENCH_CONNECTIONS=32  BENCH_THREADS=1  BENCH_SKIP_BUILD=1  BENCH_KEEP=1
#   BENCH_NOISY_PCT=20  BENCH_QUIET_WAIT=300 (wait for a quiet machine before each run)
#   BENCH_CACHE_PORT_BASE=18500  ports BASE+1..+3 backends, +10/+11 Parapet, +20 nginx, +30 HAProxy
#   BENCH_PROXIES="parapet nginx haproxy"
#   BENCH_SCENARIOS="hit coalesce"
#   BENCH_SHORT_TTL=1      TTL (s) of the coalesce key
#   BENCH_DELAY_MS=100     origin delay of the coalesce backend
#   BENCH_CACHE_OUT=bench/results/latest-cache.md
set -euo pipefail
cd "$(dirname "$0")/.."

WORKERS=${BENCH_WORKERS:-1}
ROUNDS=${BENCH_ROUNDS:-3}
DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-3s}
CONNS=${BENCH_CONNECTIONS:-32}
WRK_THREADS=${BENCH_THREADS:-1}
BASE=${BENCH_CACHE_PORT_BASE:-18500}
SHORT_TTL=${BENCH_SHORT_TTL:-1}
DELAY_MS=${BENCH_DELAY_MS:-100}
NOISY_PCT=${BENCH_NOISY_PCT:-20}
QUIET_WAIT=${BENCH_QUIET_WAIT:-300}
read -r -a PROXIES <<<"${BENCH_PROXIES:-parapet nginx haproxy}"
read -r -a SCENARIOS <<<"${BENCH_SCENARIOS:-hit coalesce}"
OUT=${BENCH_CACHE_OUT:-bench/results/latest-cache.md}
BIN="${CARGO_TARGET_DIR:-target}/release"

BODIES=(1k 64k)
declare -A BODY_BYTES=([1k]=1024 [64k]=65536 [slow]=1024)
declare -A BACKEND_PORT=([1k]=$((BASE + 1)) [64k]=$((BASE + 2)) [slow]=$((BASE + 3)))
declare -A PROXY_PORT=([parapet]=$((BASE + 10)) [nginx]=$((BASE + 20)) [haproxy]=$((BASE + 30)))
PARAPET_ADMIN=$((BASE + 11))

source bench/lib.sh

for v in WORKERS ROUNDS CONNS WRK_THREADS BASE SHORT_TTL; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
for v in DELAY_MS NOISY_PCT QUIET_WAIT; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number (got '${!v}')"
done
for p in "${PROXIES[@]}"; do
  [[ -n ${PROXY_PORT[$p]:-} ]] || die "unknown proxy '$p' in BENCH_PROXIES (parapet, nginx, haproxy)"
done
for s in "${SCENARIOS[@]}"; do
  [[ $s == hit || $s == coalesce ]] || die "unknown scenario '$s' in BENCH_SCENARIOS (hit, coalesce)"
done
for t in nginx haproxy wrk curl; do
  command -v "$t" >/dev/null 2>&1 || [[ -x /usr/sbin/$t ]] ||
    die "$t is missing; run bench/run.sh first (it installs nginx, haproxy, wrk and curl)"
done
export PATH="$PATH:/usr/sbin:/sbin"

# ---------------------------------------------------------------- processes and cleanup
make_run_dir parapet-bench-cache


# ---------------------------------------------------------------- build, backends, proxies
if [[ -z ${BENCH_SKIP_BUILD:-} ]]; then
  log "building the release binaries"
  build_dataplane
  cargo build --release -q -p parapet-tests --bin sample-backend
fi
for b in dataplane sample-backend; do [[ -x $BIN/$b ]] || die "$BIN/$b is missing"; done

for p in "${BACKEND_PORT[@]}" "${PROXY_PORT[@]}" "$PARAPET_ADMIN"; do
  port_free "$p" || die "port $p on 127.0.0.1 is in use; pick another BENCH_CACHE_PORT_BASE"
done

log "starting the sample backends (1 KiB, 64 KiB, and 1 KiB after ${DELAY_MS} ms)"
start backend-1k "$BIN/sample-backend" b1k "${BACKEND_PORT[1k]}" 1024
start backend-64k "$BIN/sample-backend" b64k "${BACKEND_PORT[64k]}" 65536
start backend-slow "$BIN/sample-backend" bslow "${BACKEND_PORT[slow]}" 1024 "$DELAY_MS"
for k in 1k 64k slow; do
  wait_http "http://127.0.0.1:${BACKEND_PORT[$k]}/healthz" || die "backend $k did not start"
done

# origin_hits KEY: requests the backend has answered so far (health checks not counted).
origin_hits() {
  local f="$RUN/backend-$1.out" n0 n
  n0=$(grep -c '^hits ' "$f" || true)
  kill -USR1 "${PID_OF[backend-$1]}"
  for _ in $(seq 50); do
    n=$(grep -c '^hits ' "$f" || true)
    ((n > n0)) && break
    sleep 0.02
  done
  ((n > n0)) || die "backend $1 did not report its request count"
  awk '/^hits /{v = $2} END {print v}' "$f"
}

render() { # render TEMPLATE OUT PORT
  sed -e "s|@WORKERS@|$WORKERS|g" -e "s|@RUNDIR@|$RUN|g" -e "s|@PORT@|$3|g" \
    -e "s|@SHORT_TTL@|$SHORT_TTL|g" -e "s|@PORT_1K@|${BACKEND_PORT[1k]}|g" \
    -e "s|@PORT_64K@|${BACKEND_PORT[64k]}|g" -e "s|@PORT_SLOW@|${BACKEND_PORT[slow]}|g" "$1" >"$2"
}
nginx_bin=$(command -v nginx)
haproxy_bin=$(command -v haproxy)
for proxy in "${PROXIES[@]}"; do
  port=${PROXY_PORT[$proxy]}
  case $proxy in
  parapet)
    render bench/parapet-cache.yaml.tmpl "$RUN/parapet.yaml" "$port"
    start parapet "$BIN/dataplane" --config "$RUN/parapet.yaml" \
      --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$PARAPET_ADMIN" \
      --workers "$WORKERS" --log-format text
    wait_http "http://127.0.0.1:$PARAPET_ADMIN/readyz" || die "Parapet not ready; see $RUN/parapet.err"
    ;;
  nginx)
    render bench/nginx-cache.conf.tmpl "$RUN/nginx.conf" "$port"
    "$nginx_bin" -t -q -c "$RUN/nginx.conf" -p "$RUN" 2>"$RUN/nginx-t.err" ||
      die "nginx -t failed: $(cat "$RUN/nginx-t.err")"
    start nginx "$nginx_bin" -c "$RUN/nginx.conf" -p "$RUN"
    ;;
  haproxy)
    render bench/haproxy-cache.cfg.tmpl "$RUN/haproxy.cfg" "$port"
    "$haproxy_bin" -c -q -f "$RUN/haproxy.cfg" 2>"$RUN/haproxy-c.err" ||
      die "haproxy -c failed: $(cat "$RUN/haproxy-c.err")"
    start haproxy "$haproxy_bin" -db -f "$RUN/haproxy.cfg"
    ;;
  esac
done
for proxy in "${PROXIES[@]}"; do
  wait_port "${PROXY_PORT[$proxy]}" || die "$proxy is not listening; see $RUN/$proxy.err"
done

# ---------------------------------------------------------------- measuring helpers
wrk_run() { # wrk_run PROXY PATH DURATION OUTFILE
  timeout --kill-after=5 120 wrk -t"$WRK_THREADS" -c"$CONNS" -d"$3" --timeout 5s --latency \
    "http://127.0.0.1:${PROXY_PORT[$1]}$2" >"$4"
}
# probe PROXY PATH: "code size cache-status" (x-cache for Parapet, X-Cache-Status for nginx,
# "-" for HAProxy, which says nothing).
probe() {
  local h="$RUN/probe-headers"
  read -r code size < <(curl -sS -o /dev/null -D "$h" -w '%{http_code} %{size_download}\n' \
    --max-time 5 "http://127.0.0.1:${PROXY_PORT[$1]}$2")
  status=$(tr -d '\r' <"$h" | awk -F': ' 'tolower($1) == "x-cache" || tolower($1) == "x-cache-status" {s = $2} END {print s == "" ? "-" : s}')
  echo "$code $size $status"
}

RAW="$RUN/runs.tsv" # scenario body round proxy rps p50 p99 err cpu origin_requests
: >"$RAW"
measure() { # measure SCENARIO BODY ROUND PROXY PATH BACKEND
  local f="$RUN/wrk-$1-$2-$3-$4.txt" t0 t1 s0 s1 o0 o1 rps p50 p99 err cpu
  wait_quiet
  o0=$(origin_hits "$6") t0=$(cpu_ticks "$4") s0=$(date +%s.%N)
  wrk_run "$4" "$5" "$DURATION" "$f"
  s1=$(date +%s.%N) t1=$(cpu_ticks "$4") o1=$(origin_hits "$6")
  read -r rps p50 p99 err < <(parse_wrk "$f")
  cpu=$(pct $((t1 - t0)) "$s0" "$s1")
  log "$1 /$2 round $3 $4: $rps req/s, p50 $p50 ms, p99 $p99 ms, proxy cpu $cpu%, origin requests $((o1 - o0)), errors $err"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$rps" "$p50" "$p99" "$err" "$cpu" "$((o1 - o0))" >>"$RAW"
}

# ---------------------------------------------------------------- scenario 1: cache hits
declare -A HIT_CHECK=()
if [[ " ${SCENARIOS[*]} " == *" hit "* ]]; then
  for body in "${BODIES[@]}"; do
    path=/cached/$body
    for proxy in "${PROXIES[@]}"; do
      # Warm the key once, then check that a probe is a hit and does not reach the origin.
      o0=$(origin_hits "$body")
      read -r code size _ < <(probe "$proxy" "$path")
      [[ $code == 200 && $size == "${BODY_BYTES[$body]}" ]] ||
        die "$proxy $path answered $code with $size bytes (expected 200, ${BODY_BYTES[$body]})"
      read -r code size status < <(probe "$proxy" "$path")
      o1=$(origin_hits "$body")
      [[ $code == 200 && $size == "${BODY_BYTES[$body]}" ]] || die "$proxy $path probe answered $code with $size bytes"
      HIT_CHECK[$body,$proxy]="$((o1 - o0)) origin request(s) for 2 requests, probe cache status $status"
      if ((o1 - o0 != 1)) || [[ $status != - && ${status^^} != HIT ]]; then
        log "warning: $proxy $path is not served from its cache (${HIT_CHECK[$body,$proxy]})"
        HIT_CHECK[$body,$proxy]="**not cached**: ${HIT_CHECK[$body,$proxy]}"
      fi
      log "$proxy $path: ${HIT_CHECK[$body,$proxy]}"
    done
    for proxy in "${PROXIES[@]}"; do
      log "warm-up hit $proxy $path ($WARMUP)"
      wrk_run "$proxy" "$path" "$WARMUP" "$RUN/wrk-warmup-hit-$proxy-$body.txt"
    done
    for round in $(seq "$ROUNDS"); do
      for proxy in "${PROXIES[@]}"; do measure hit "$body" "$round" "$proxy" "$path" "$body"; done
    done
  done
fi

# ---------------------------------------------------------------- scenario 2: coalesced misses
if [[ " ${SCENARIOS[*]} " == *" coalesce "* ]]; then
  for proxy in "${PROXIES[@]}"; do
    read -r code size _ < <(probe "$proxy" /coalesce)
    [[ $code == 200 && $size == 1024 ]] || die "$proxy /coalesce answered $code with $size bytes"
    log "warm-up coalesce $proxy ($WARMUP)"
    wrk_run "$proxy" /coalesce "$WARMUP" "$RUN/wrk-warmup-coalesce-$proxy.txt"
  done
  for round in $(seq "$ROUNDS"); do
    for proxy in "${PROXIES[@]}"; do measure coalesce slow "$round" "$proxy" /coalesce slow; done
  done
fi

# ---------------------------------------------------------------- report
SUMMARY="$RUN/summary.tsv" # scenario body proxy rps p50 p99 err cpu origin lo hi us/req
awk -F'\t' '
  { k = $1 SUBSEP $2 SUBSEP $4; n[k]++; m = n[k]
    rps[k, m] = $5; p50[k, m] = $6; p99[k, m] = $7; err[k] += $8; cpu[k, m] = $9; org[k, m] = $10
    us[k, m] = $5 > 0 ? $9 * 10000 / $5 : 0 }
  function median(a, k, m,   i, j, t, v) {
    for (i = 1; i <= m; i++) v[i] = a[k, i]
    for (i = 2; i <= m; i++) for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
    return m % 2 ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
  }
  END {
    for (k in n) { split(k, p, SUBSEP); m = n[k]; lo = hi = rps[k, 1]
      for (i = 2; i <= m; i++) { if (rps[k, i] < lo) lo = rps[k, i]; if (rps[k, i] > hi) hi = rps[k, i] }
      printf "%s\t%s\t%s\t%.0f\t%.3f\t%.3f\t%d\t%.0f\t%.0f\t%s\t%s\t%.1f\n", p[1], p[2], p[3], median(rps, k, m),
        median(p50, k, m), median(p99, k, m), err[k], median(cpu, k, m), median(org, k, m), lo, hi, median(us, k, m) }
  }' "$RAW" >"$SUMMARY"

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain -- dataplane crds 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
cpu_model=$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)
nginx_v=$("$nginx_bin" -v 2>&1 | sed 's|.*/||')
haproxy_v=$("$haproxy_bin" -v | awk 'NR==1{print $3}')
dur_s=${DURATION%s}

table() { # table SCENARIO BODY
  awk -F'\t' -v sc="$1" -v body="$2" -v order="${PROXIES[*]}" -v dur="$dur_s" '
    $1 == sc && $2 == body { rps[$3] = $4; p50[$3] = $5; p99[$3] = $6; err[$3] = $7; cpu[$3] = $8
      org[$3] = $9; lo[$3] = $10; hi[$3] = $11; us[$3] = $12 }
    END {
      m = split(order, o, " ")
      for (i = 1; i <= m; i++) { p = o[i]; if (!(p in rps)) continue
        rr = ("nginx" in rps && rps["nginx"] > 0) ? sprintf("%.2f×", rps[p] / rps["nginx"]) : "–"
        pr = ("nginx" in rps && p99["nginx"] > 0) ? sprintf("%.2f×", p99[p] / p99["nginx"]) : "–"
        ors = (dur + 0 > 0) ? sprintf("%.1f", org[p] / dur) : "–"
        printf "| %s | %d (%d–%d) | %.2f | %.2f | %s | %s | %d%% | %.1f | %d (%s/s) | %d |\n", p, rps[p], lo[p], hi[p],
          p50[p], p99[p], rr, pr, cpu[p], us[p], org[p], ors, err[p]
      }
    }' "$SUMMARY"
}

report() {
  echo "# Parapet cache benchmark results"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit \`$commit\`$dirty; $(nproc) × $cpu_model, Linux $(uname -r)."
  echo "nginx $nginx_v (proxy_cache), HAProxy $haproxy_v (cache section). Every proxy: $WORKERS worker(s)/thread(s)."
  echo "wrk -t$WRK_THREADS -c$CONNS -d$DURATION --latency on one URL, $ROUNDS alternating rounds after a $WARMUP"
  echo "warm-up; figures are the median over rounds (req/s range in brackets). Ratios are to nginx:"
  echo "req/s ratio > 1 is faster, p99 ratio < 1 is better. Origin requests are counted by the"
  echo "backend itself, per measured run (median), and per second of run."
  if [[ " ${SCENARIOS[*]} " == *" hit "* ]]; then
    for body in "${BODIES[@]}"; do
      echo
      echo "## Cache hit, ${BODY_BYTES[$body]}-byte responses (/cached/$body, TTL 10 min)"
      echo
      echo "| proxy | req/s | p50 ms | p99 ms | req/s vs nginx | p99 vs nginx | proxy CPU | CPU µs/req | origin requests per run | errors |"
      echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
      table hit "$body"
      echo
      echo "Hit check (key fetched once, then probed):"
      for proxy in "${PROXIES[@]}"; do echo "$proxy: ${HIT_CHECK[$body,$proxy]};"; done | sed '$ s/;$/./'
    done
  fi
  if [[ " ${SCENARIOS[*]} " == *" coalesce "* ]]; then
    echo
    echo "## Coalesced miss (/coalesce, TTL ${SHORT_TTL} s, origin answers 1 KiB after ${DELAY_MS} ms)"
    echo
    echo "All $CONNS connections ask for the same key, which expires every ${SHORT_TTL} s. The ideal is one"
    echo "origin request per expiry (about $(awk -v d="$dur_s" -v t="$SHORT_TTL" -v ms="$DELAY_MS" 'BEGIN{printf "%.0f", d / (t + ms / 1000)}') per run)."
    echo
    echo "| proxy | req/s | p50 ms | p99 ms | req/s vs nginx | p99 vs nginx | proxy CPU | CPU µs/req | origin requests per run | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    table coalesce slow
  fi
  if [[ " ${PROXIES[*]} " == *" parapet "* && " ${PROXIES[*]} " == *" nginx "* && " ${SCENARIOS[*]} " == *" hit "* ]]; then
    echo
    echo "## Targets"
    echo
    echo "| target | result |"
    echo "|---|---|"
    for body in "${BODIES[@]}"; do
      awk -F'\t' -v body="$body" '
        $1 == "hit" && $2 == body { rps[$3] = $4 }
        END { r = rps["parapet"] / rps["nginx"]
          printf "| /cached/%s: cache-hit req/s ≥ 1.5× nginx proxy_cache | %.2f× (%d vs %d) — %s |\n", body, r,
            rps["parapet"], rps["nginx"], (r >= 1.5 ? "met" : "**not met**") }' "$SUMMARY"
    done
  fi
  echo
  echo "<details><summary>Every run</summary>"
  echo
  echo "| scenario | body | round | proxy | req/s | p50 ms | p99 ms | proxy CPU | origin requests | errors |"
  echo "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"
  awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %.2f | %.2f | %s%% | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $9, $10, $8 }' "$RAW"
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
