#!/usr/bin/env bash
# Builds the chart tests' tools from the Go module proxy into caches keyed by version. Only
# the first run pays; later runs find the binary and return at once.
#
#   helm ($HELM_BIN/helm): helm.sh/helm/v3/cmd/helm at $HELM_VERSION, pinned with everything
#     it links by e2e/helm-tools/go.mod and go.sum. Stamped like helm's release builds: its
#     version, and the Kubernetes version it assumes when no cluster is asked (`helm
#     template`, `helm lint`): the test control plane's, $K8S_VERSION.
#   kwok ($KWOK_BIN/kwok): sigs.k8s.io/kwok/cmd/kwok at $KWOK_VERSION, pinned by
#     e2e/helm-tools/kwok/go.mod; simulated nodes and pods for the chart's fleet test.
#
#   build-helm.sh [helm]     build helm if missing
#   build-helm.sh path       the same, then print helm's path on stdout
#   build-helm.sh kwok       build kwok if missing
#   build-helm.sh kwok-path  the same, then print kwok's path on stdout
set -euo pipefail
source "$(dirname "$0")/lib.sh"
KWOK_VERSION="${KWOK_VERSION:-0.8.0}"
KWOK_BIN="$PARAPET_CACHE/kwok-v$KWOK_VERSION/bin"

# build NAME PACKAGE MODULE_DIR PINNED_MODULE VERSION OUT_DIR LDFLAGS
build() {
  local name="$1" pkg="$2" mod_dir="$3" module="$4" version="$5" out="$6" ldflags="$7"
  [ -x "$out/$name" ] && return 0
  command -v go >/dev/null || die "building $name needs Go (>= the go line of e2e/${mod_dir#"$E2E_DIR/"}/go.mod); none found on PATH"
  local pinned
  pinned=$(sed -n "s|^\s*$module \(v[^ ]*\).*|\1|p" "$mod_dir/go.mod")
  [ "$pinned" = "v$version" ] \
    || die "e2e/${mod_dir#"$E2E_DIR/"}/go.mod pins $module $pinned but the wanted version is v$version; run: (cd e2e/${mod_dir#"$E2E_DIR/"} && go get -tool $pkg@v$version)"
  mkdir -p "$out"
  local start
  start=$(date +%s)
  step "building $name v$version into $out — the first run takes a few minutes"
  # Build to a temp name and rename, so an interrupted build never leaves a half binary.
  (cd "$mod_dir" && go build -trimpath -ldflags "$ldflags" -o "$out/.$name.tmp" "$pkg") \
    || die "building $name failed (step: go build $pkg in e2e/${mod_dir#"$E2E_DIR/"}); see the Go output above"
  mv "$out/.$name.tmp" "$out/$name"
  step "$name ready: $out/$name ($(( $(date +%s) - start ))s)"
}

build_helm() {
  local major="${K8S_VERSION%%.*}" minor="${K8S_VERSION#*.}"
  minor="${minor%%.*}"
  local ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags+=" -X $pkg.k8sVersionMajor=$major -X $pkg.k8sVersionMinor=$minor"
  done
  build helm helm.sh/helm/v3/cmd/helm "$E2E_DIR/helm-tools" helm.sh/helm/v3 "$HELM_VERSION" \
    "$HELM_BIN" "$ldflags"
}

build_kwok() {
  build kwok sigs.k8s.io/kwok/cmd/kwok "$E2E_DIR/helm-tools/kwok" sigs.k8s.io/kwok \
    "$KWOK_VERSION" "$KWOK_BIN" "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
}

case "${1:-helm}" in
  helm) build_helm ;;
  path) build_helm; printf '%s\n' "$HELM_BIN/helm" ;;
  kwok) build_kwok ;;
  kwok-path) build_kwok; printf '%s\n' "$KWOK_BIN/kwok" ;;
  *) die "usage: $0 [helm|path|kwok|kwok-path]" ;;
esac
