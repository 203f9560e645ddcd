#!/usr/bin/env bash
# `make run`: the data plane in standalone mode (examples/standalone.yaml) in front of four
# sample backends on 127.0.0.1. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/debug"
for b in dataplane sample-backend; do
  [ -x "$bin/$b" ] || { echo "error: $bin/$b is missing; run 'make build' first" >&2; exit 1; }
done
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

for i in 1 2 3 4; do
  name="accounts-$i"; [ "$i" = 4 ] && name="accounts-backup"
  "$bin/sample-backend" "$name" "1808$i" >/dev/null &
  pids+=($!)
done
"$bin/dataplane" --config examples/standalone.yaml --listen 127.0.0.1:8080 --admin-listen 127.0.0.1:9901 &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS -o /dev/null http://127.0.0.1:9901/readyz 2>/dev/null && break
  sleep 0.1
done
cat <<'TXT'

Parapet is serving examples/standalone.yaml on http://127.0.0.1:8080 (admin on :9901).
Try:
  curl -i http://127.0.0.1:8080/accounts/42                # round robin over accounts-1..3
  for i in 1 2 3 4 5 6; do curl -s http://127.0.0.1:8080/x; echo; done
  for i in $(seq 20); do curl -s http://127.0.0.1:8080/canary; echo; done   # 90/10 canary split
  curl -i http://127.0.0.1:8080/accounts/42/balance         # Fixed cache policy
  curl -s http://127.0.0.1:9901/v1/snapshot/status          # the table in force
  curl -s http://127.0.0.1:9901/metrics | grep parapet_requests
Edit examples/standalone.yaml and the table reloads within a second. Ctrl-C stops the demo.
TXT
wait
