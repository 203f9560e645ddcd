#!/usr/bin/env bash
# The upstream Gateway API conformance suite against Parapet on a real node.
#
#   conformance.sh tools                 build the suite, echo-basic and coredns (Go module
#                                        proxy) and their image archives, cached by version
#   conformance.sh run IMAGE_ARCHIVE...  start a cluster with a real node, import Parapet's
#                                        images and the suite's, install the Gateway API CRDs
#                                        and the chart, run the suite, write the report,
#                                        tear the cluster down (always)
#
# The suite is the `conformance` package of sigs.k8s.io/gateway-api at $GATEWAY_API_VERSION,
# pinned by e2e/conformance/go.mod, run as `go test` would with its own flags. It reads the
# features to test from the GatewayClass's status.supportedFeatures, so what Parapet claims
# is what is tested. Its backends are echo-basic from the same module; the UDP tests'
# coredns (deployed by the suite's base manifests, never queried here) is built from
# github.com/coredns/coredns at $COREDNS_VERSION. Both become images under exactly the tags
# the suite's manifests name, so nothing is pulled.
#
# Environment:
#   PARAPET_CONFORMANCE_CLUSTER_DIR  the cluster's state dir (default /tmp/parapet-conformance-cluster)
#   CONFORMANCE_REPORT               where the report goes (default target/conformance/report.yaml;
#                                    the published one is e2e/conformance/reports/)
#   CONFORMANCE_ARGS                 extra suite flags, e.g. "--run-test=HTTPRouteSimpleSameNamespace"
#   IMAGE_TAG, IMAGE_PREFIX          Parapet's images, as `make images` built them
set -euo pipefail
source "$(dirname "$0")/lib.sh"
GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-1.6.3}"
COREDNS_VERSION="${COREDNS_VERSION:-1.12.2}"
CONF_BIN="$PARAPET_CACHE/conformance-v$GATEWAY_API_VERSION-coredns-v$COREDNS_VERSION"
MOD_DIR="$E2E_DIR/conformance"
ROOT="$(cd "$E2E_DIR/.." && pwd)"
# Every tag of echo-basic the suite's manifests name.
ECHO_TAGS=(v1.5.1 v1.6.0-dev.2 v1.6.0-dev.3)

pinned() {
  sed -n "s|^\s*sigs.k8s.io/gateway-api \(v[^ ]*\).*|\1|p" "$MOD_DIR/go.mod" | head -1
}

tools() {
  [ "$(pinned)" = "v$GATEWAY_API_VERSION" ] \
    || die "e2e/conformance/go.mod pins sigs.k8s.io/gateway-api $(pinned), not v$GATEWAY_API_VERSION"
  mkdir -p "$CONF_BIN"
  if [ ! -x "$CONF_BIN/conformance.test" ]; then
    step "building the conformance suite v$GATEWAY_API_VERSION"
    (cd "$MOD_DIR" && GOWORK=off go test -c -o "$CONF_BIN/conformance.test" .)
  fi
  if [ ! -x "$CONF_BIN/echo-basic" ]; then
    step "building echo-basic v$GATEWAY_API_VERSION"
    (cd "$MOD_DIR" && GOWORK=off go build -trimpath -ldflags="-s -w" -o "$CONF_BIN/echo-basic" \
      sigs.k8s.io/gateway-api/conformance/echo-basic)
  fi
  if [ ! -x "$CONF_BIN/coredns" ]; then
    step "building coredns v$COREDNS_VERSION"
    GOWORK=off GOBIN="$CONF_BIN" go install -trimpath -ldflags="-s -w" "github.com/coredns/coredns@v$COREDNS_VERSION"
  fi
  for tag in "${ECHO_TAGS[@]}"; do
    [ -f "$CONF_BIN/echo-basic-$tag.tar" ] && continue
    "$ROOT/scripts/oci-image.sh" --binary "$CONF_BIN/echo-basic" --name echo-basic \
      --ref "registry.k8s.io/gateway-api/echo-basic:$tag" --out "$CONF_BIN/echo-basic-$tag.tar"
  done
  # The suite's coredns binds port 53 with NET_BIND_SERVICE and nothing else: root.
  [ -f "$CONF_BIN/coredns.tar" ] || "$ROOT/scripts/oci-image.sh" --binary "$CONF_BIN/coredns" \
    --name coredns --user 0 --ref "registry.k8s.io/coredns/coredns:v$COREDNS_VERSION" --out "$CONF_BIN/coredns.tar"
}

archives() {
  for tag in "${ECHO_TAGS[@]}"; do echo "$CONF_BIN/echo-basic-$tag.tar"; done
  echo "$CONF_BIN/coredns.tar"
}

crd_dir() {
  local dir
  dir=$(cd "$MOD_DIR" && GOWORK=off go mod download -json "sigs.k8s.io/gateway-api@v$GATEWAY_API_VERSION" \
    | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
  [ -d "$dir/config/crd/standard" ] || die "the Gateway API module has no config/crd/standard in '$dir'"
  echo "$dir/config/crd/standard"
}

# The chart as the suite needs it: Parapet's images (never pulled), one operator, a default
# fleet to copy, every Gateway's fleet one pod (the GatewayClass's parameters). CPU requests
# are small: the suite runs a dozen Gateways at once on this 2-core node, and each fleet
# requests what the default fleet does.
values() {
  cat <<EOF
image:
  tag: "${IMAGE_TAG:-0.1.0}"
  pullPolicy: Never
operator:
  replicaCount: 1
  resyncInterval: 5s
  image: {repository: "${IMAGE_PREFIX:-parapet}/operator"}
  resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {memory: 256Mi}}
dataplane:
  image: {repository: "${IMAGE_PREFIX:-parapet}/dataplane"}
  replicaCount: 1
  workers: 1
  shutdownDelaySeconds: 1
  drainTimeoutSeconds: 5
  autoscaling: {enabled: false}
  resources: {requests: {cpu: 5m, memory: 16Mi}, limits: {memory: 128Mi}}
EOF
}

class() {
  cat <<EOF
apiVersion: v1
kind: ConfigMap
metadata: {name: gateway-fleet, namespace: parapet}
data: {replicas: "1"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: parapet}
spec:
  controllerName: parapet.dev/gateway-controller
  parametersRef: {group: "", kind: ConfigMap, name: gateway-fleet, namespace: parapet}
EOF
}

# Everything between cluster up and down; each step's failure ends it (errexit does not
# apply in a function called as `suite || ...`, hence the explicit returns).
suite() {
  local kubectl="$1" helm="$2" report="$3" state="$4"
  shift 4
  local cluster="$E2E_DIR/scripts/cluster.sh"
  step "importing images"
  # shellcheck disable=SC2046
  "$cluster" import "$@" $(archives) || return
  step "installing the Gateway API CRDs v$GATEWAY_API_VERSION (standard channel)"
  "$kubectl" apply --server-side -f "$(crd_dir)" || return
  "$kubectl" wait --for condition=Established --timeout=60s crd --all || return
  step "installing the chart"
  values | "$helm" install parapet "$ROOT/charts/parapet" -n parapet --create-namespace \
    --wait --timeout 180s -f - || return
  class | "$kubectl" apply -f - || return
  "$kubectl" wait --for=condition=Accepted --timeout=60s gatewayclass/parapet || return
  step "running the suite (report: $report)"
  local started=$SECONDS
  # shellcheck disable=SC2086
  "$CONF_BIN/conformance.test" -test.run TestConformance -test.v -test.timeout 80m \
    --gateway-class=parapet \
    --conformance-profiles=GATEWAY-HTTP,GATEWAY-GRPC \
    --organization=parapet --project=parapet --url=https://parapet.dev \
    --version="v${IMAGE_TAG:-0.1.0}" --contact=@parapet/maintainers \
    --report-output="$report" ${CONFORMANCE_ARGS:-} 2>&1 | tee "$state.suite.log"
  local status=${PIPESTATUS[0]}
  echo "conformance suite: exit $status after $((SECONDS - started)) s; log: $state.suite.log" >&2
  return "$status"
}

run() {
  [ $# -gt 0 ] || die "run needs Parapet's image archives (make images)"
  tools
  local state="${PARAPET_CONFORMANCE_CLUSTER_DIR:-${TMPDIR:-/tmp}/parapet-conformance-cluster}"
  local report="${CONFORMANCE_REPORT:-$ROOT/target/conformance/report.yaml}"
  mkdir -p "$(dirname "$report")"
  local cluster="$E2E_DIR/scripts/cluster.sh"
  export PARAPET_CLUSTER_DIR="$state"
  down() { "$cluster" down || echo "warning: cluster.sh down failed; run it again to clean up $state" >&2; }
  trap 'down; exit 130' INT TERM
  "$cluster" up --node real --owner-pid $$ >/dev/null || exit $?
  export KUBECONFIG="$state/kubeconfig"
  local kubectl helm status=0
  kubectl="$("$cluster" tools-dir)/kubectl"
  helm="$("$E2E_DIR/scripts/build-helm.sh" path)"
  suite "$kubectl" "$helm" "$report" "$state" "$@" || status=$?
  if [ "$status" -ne 0 ]; then
    mkdir -p "$state.diag"
    "$kubectl" get gateways,httproutes,grpcroutes -A -o yaml >"$state.diag/gateway-api.yaml" 2>&1 || true
    "$kubectl" get pods -A -o wide >"$state.diag/pods.txt" 2>&1 || true
    "$kubectl" logs -n parapet -l app.kubernetes.io/component=operator --tail=2000 >"$state.diag/operator.log" 2>&1 || true
    echo "diagnostics in $state.diag" >&2
  fi
  trap - INT TERM
  down
  return "$status"
}

case "${1:-}" in
  tools) tools; archives ;;
  run) shift; run "$@" ;;
  *) sed -n '2,/^set /{/^#/p}' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
