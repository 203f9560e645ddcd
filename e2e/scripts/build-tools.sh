#!/usr/bin/env bash
# Builds kube-apiserver, etcd, kubectl, kube-controller-manager and kube-scheduler (and, with
# BUILD_TOOLS_EXTRA="kubelet kube-proxy", the node's binaries) from the
# Go module proxy into a cache keyed by version. Only the first run pays; later runs find
# every binary and return at once.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
tools=(kube-apiserver etcd kubectl kube-controller-manager kube-scheduler ${BUILD_TOOLS_EXTRA:-})
missing=()
for t in "${tools[@]}"; do [ -x "$TOOLS_BIN/$t" ] || missing+=("$t"); done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi

command -v go >/dev/null || die "building the test control plane needs Go (>= the go line of e2e/k8s-tools/go.mod); none found on PATH"
minor="${K8S_VERSION#*.}"; minor="${minor%%.*}"
ver="v$K8S_VERSION"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$ver -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
mkdir -p "$TOOLS_BIN"
cd "$E2E_DIR/k8s-tools"
start=$(date +%s)
for t in "${missing[@]}"; do
  case "$t" in
    etcd) pkg=go.etcd.io/etcd/server/v3 ;;
    *) pkg=k8s.io/kubernetes/cmd/$t ;;
  esac
  step "building $t ($pkg, Kubernetes $ver) into $TOOLS_BIN — the first run takes many minutes"
  # Build to a temp name and rename, so an interrupted build never leaves a half binary.
  go build -trimpath -ldflags "$ldflags" -o "$TOOLS_BIN/.$t.tmp" "$pkg" \
    || die "building $t failed (step: go build $pkg); see the Go output above"
  mv "$TOOLS_BIN/.$t.tmp" "$TOOLS_BIN/$t"
done
step "control plane tools ready in $TOOLS_BIN ($(( $(date +%s) - start ))s)"
