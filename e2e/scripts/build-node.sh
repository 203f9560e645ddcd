#!/usr/bin/env bash
# Builds what the real test node runs, from the Go module proxy, into a cache keyed by
# version ($NODE_BIN). Only the first run pays; later runs find every binary and return.
#
#   kubelet, kube-proxy       k8s.io/kubernetes at $K8S_VERSION (e2e/k8s-tools, like the
#                             control plane, so every Kubernetes binary is one build)
#   containerd, ctr,          github.com/containerd/containerd/v2 at $CONTAINERD_VERSION
#   containerd-shim-runc-v2   (static; no btrfs/devmapper/zfs snapshotters)
#   crictl                    sigs.k8s.io/cri-tools at $CRICTL_VERSION
#   metrics-server            sigs.k8s.io/metrics-server at $METRICS_SERVER_VERSION
#   crane                     github.com/google/go-containerregistry at $CRANE_VERSION
#   pause                     e2e/node-tools/pause, the pod sandbox image's binary
#
# runc and the CNI plugins come from Debian (runc, containernetworking-plugins): see
# `cluster.sh node-deps`.
#
#   build-node.sh             build what is missing
#   build-node.sh path        the same, then print the directory
#   build-node.sh crane-path  build only crane (for make images), print its path
set -euo pipefail
source "$(dirname "$0")/lib.sh"

command -v go >/dev/null || die "building the test node needs Go; none found on PATH"
mkdir -p "$NODE_BIN"
start=$(date +%s)

# install NAME... PKG@VERSION [TAGS]: `go install` of a module at its own pinned go.mod.
install() {
  local pkg="$1" tags="${2:-}" name
  name="$(basename "${pkg%@*}")"
  [ -x "$NODE_BIN/$name" ] && return 0
  step "building $name ($pkg) into $NODE_BIN"
  local tmp
  tmp="$(mktemp -d "$NODE_BIN/.build.XXXXXX")"
  GOBIN="$tmp" go install -trimpath -ldflags "-s -w" ${tags:+-tags "$tags"} "$pkg" \
    || { rm -rf "$tmp"; die "building $name failed (step: go install $pkg); see the Go output above"; }
  mv "$tmp/$name" "$NODE_BIN/$name"
  rm -rf "$tmp"
}

if [ "${1:-}" = crane-path ]; then
  install "github.com/google/go-containerregistry/cmd/crane@v$CRANE_VERSION" >&2
  echo "$NODE_BIN/crane"
  exit 0
fi

# kubelet and kube-proxy: the control plane's build script, with the node's binaries.
BUILD_TOOLS_EXTRA="kubelet kube-proxy" "$(dirname "$0")/build-tools.sh"

ctr_tags="no_btrfs no_devmapper no_zfs no_aufs"
ctr_mod="github.com/containerd/containerd/v2"
ctr_ver="v$CONTAINERD_VERSION"
ctr_ldflags="-s -w -X $ctr_mod/version.Version=$ctr_ver -X $ctr_mod/version.Revision=go-module-proxy"
for c in containerd ctr containerd-shim-runc-v2; do
  [ -x "$NODE_BIN/$c" ] && continue
  step "building $c ($ctr_mod $ctr_ver) into $NODE_BIN"
  tmp="$(mktemp -d "$NODE_BIN/.build.XXXXXX")"
  GOBIN="$tmp" go install -trimpath -tags "$ctr_tags" -ldflags "$ctr_ldflags" "$ctr_mod/cmd/$c@$ctr_ver" \
    || { rm -rf "$tmp"; die "building $c failed (step: go install $ctr_mod/cmd/$c@$ctr_ver); see the Go output above"; }
  mv "$tmp/$c" "$NODE_BIN/$c"
  rm -rf "$tmp"
done
install "sigs.k8s.io/cri-tools/cmd/crictl@v$CRICTL_VERSION"
install "sigs.k8s.io/metrics-server/cmd/metrics-server@v$METRICS_SERVER_VERSION"
install "github.com/google/go-containerregistry/cmd/crane@v$CRANE_VERSION"

# The pause binary is rebuilt when its source changes (the cache key is its hash).
pause_hash="$(cat "$E2E_DIR/node-tools/pause/"* | sha256sum | cut -c1-12)"
if [ ! -x "$NODE_BIN/pause-$pause_hash" ]; then
  step "building pause into $NODE_BIN"
  (cd "$E2E_DIR/node-tools/pause" && go build -trimpath -ldflags "-s -w" -o "$NODE_BIN/.pause.tmp" .) \
    || die "building pause failed (step: go build in e2e/node-tools/pause)"
  mv "$NODE_BIN/.pause.tmp" "$NODE_BIN/pause-$pause_hash"
fi
ln -sf "pause-$pause_hash" "$NODE_BIN/pause"
step "node tools ready in $NODE_BIN ($(( $(date +%s) - start ))s)"
[ "${1:-}" != path ] || echo "$NODE_BIN"
