#!/usr/bin/env bash
# Regenerates crds/src/gateway_api/*.rs from the standard-channel CRDs of
# sigs.k8s.io/gateway-api (the Go module proxy serves it) with kopium, then makes the
# kube derive and the status types depend on the crate's `kube` feature, so the data plane
# (built without kube) reads the same specs.
#
#   KOPIUM=/path/to/kopium scripts/gateway-api-types.sh
#
# kopium: `cargo install kopium@0.24.1 --locked`.
set -euo pipefail
VERSION=v1.6.3
KOPIUM=${KOPIUM:-kopium}
here=$(cd "$(dirname "$0")/.." && pwd)
out=$here/crds/src/gateway_api
moddir=$(cd "$here" && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/gateway-api@$VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
for kind in gatewayclasses gateways httproutes grpcroutes referencegrants; do
  "$KOPIUM" --schema=derived --derive=JsonSchema --derive=Default --smart-derive-elision \
    --derive=PartialEq --docs --api-version v1 \
    -f "$moddir/config/crd/standard/gateway.networking.k8s.io_$kind.yaml" \
    | python3 "$here/scripts/gateway-api-types.py" > "$out/$kind.rs"
done
echo "generated from sigs.k8s.io/gateway-api@$VERSION into $out"
