#!/usr/bin/env bash
# `make h2spec`: the HTTP/2 conformance suite (h2spec, built once from the Go module proxy
# into the cache the test control plane uses) against the data plane over TLS, where ALPN
# decides the protocol and every case must pass. Over plain text the data plane also serves
# HTTP/1.1 on the same port, so an invalid HTTP/2 preface is answered as HTTP/1.1 (case
# 3.5/2): that run must fail exactly that case.
set -euo pipefail
cd "$(dirname "$0")/.."
version="v2.2.1+incompatible"
cache="${PARAPET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/parapet-e2e}/h2spec-$version"
h2spec="$cache/h2spec"
if [ ! -x "$h2spec" ]; then
  echo "==> building h2spec $version from the Go module proxy into $cache"
  mkdir -p "$cache"
  GOBIN="$cache" go install "github.com/summerwind/h2spec/cmd/h2spec@$version" \
    || { echo "error: building h2spec failed (go install github.com/summerwind/h2spec/cmd/h2spec@$version)" >&2; exit 1; }
fi
bin="${CARGO_TARGET_DIR:-target}/debug/dataplane"
[ -x "$bin" ] || { echo "error: $bin is missing; run 'make build' first" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
# A backend that accepts and never answers: a stream then stays open until the route's
# timeout, so the cases that send frames on an open stream do not race a quick 502.
python3 -c '
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(512)
print(s.getsockname()[1], flush=True)
held = []
while True:
    c, _ = s.accept(); held.append(c)
' >"$work/sink.port" &
pids+=($!)
for _ in $(seq 1 50); do [ -s "$work/sink.port" ] && break; sleep 0.1; done
sink=$(head -n 1 "$work/sink.port")
[ -n "$sink" ] || { echo "error: the sink backend did not start" >&2; exit 1; }
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -keyout "$work/key.pem" -out "$work/cert.pem" \
  -subj /CN=h2spec.example -addext "subjectAltName=DNS:h2spec.example" 2>/dev/null
cat >"$work/config.yaml" <<YAML
apiVersion: parapet.dev/v1alpha1
kind: UpstreamPool
metadata: {name: none}
spec:
  static: [{address: 127.0.0.1, port: $sink}]
---
apiVersion: parapet.dev/v1alpha1
kind: ApiRoute
metadata: {name: all}
spec:
  hosts: ['*']
  rules:
    - backends: [{pool: none}]
      timeout: 300ms
YAML

# Starts the data plane with extra flags; sets $addr to its proxy address once it listens.
# (Not in a subshell: the process must be in $pids for the cleanup.)
start() {
  local log="$work/dataplane.${#pids[@]}.log"
  PARAPET_LOG=warn "$bin" --config "$work/config.yaml" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 "$@" >"$log" 2>&1 &
  pids+=($!)
  addr=""
  for _ in $(seq 1 100); do
    addr=$(sed -n 's/.*listening proxy=\([^ ]*\).*/\1/p' "$log")
    [ -n "$addr" ] && return 0
    sleep 0.1
  done
  echo "error: the data plane did not start; its log:" >&2; cat "$log" >&2; return 1
}

start --tls-cert "$work/cert.pem" --tls-key "$work/key.pem"; tls=$addr
echo "==> h2spec over TLS (ALPN h2) against $tls"
"$h2spec" -h "${tls%:*}" -p "${tls##*:}" -t -k -o 5 >"$work/tls.txt" 2>&1 || true
tail -n 1 "$work/tls.txt"
if ! grep -qE '^[0-9]+ tests, [0-9]+ passed, 0 skipped, 0 failed' "$work/tls.txt"; then
  grep -E '×' -A4 "$work/tls.txt" >&2 || cat "$work/tls.txt" >&2
  echo "error: h2spec over TLS: not every case passed" >&2
  exit 1
fi

start; plain=$addr
echo "==> h2spec over plain text (h2c with prior knowledge) against $plain"
"$h2spec" -h "${plain%:*}" -p "${plain##*:}" -o 5 >"$work/plain.txt" 2>&1 || true
tail -n 1 "$work/plain.txt"
failed=$(grep -cE '^\s+× ' "$work/plain.txt" || true)
if ! grep -qE '^[0-9]+ tests, [0-9]+ passed, 0 skipped, 1 failed' "$work/plain.txt" \
   || ! grep -qE '× 2: Sends invalid connection preface' "$work/plain.txt"; then
  grep -E '×' -A4 "$work/plain.txt" >&2 || cat "$work/plain.txt" >&2
  echo "error: h2spec over plain text: expected only 3.5/2 to fail ($failed failure lines)" >&2
  exit 1
fi
echo "==> h2spec: all cases pass over TLS; over plain text all but 3.5/2 (HTTP/1.1 shares the port)"
