#!/usr/bin/env bash
# Builds helm (helm.sh/helm/v3/cmd/helm at $HELM_VERSION) from the Go module proxy into a
# cache keyed by the helm and Kubernetes versions ($HELM_BIN/helm). The versions of helm and
# of everything it links are pinned by e2e/helm-tools/go.mod and go.sum. Only the first run
# pays; later runs find the binary and return at once.
#
# The binary is stamped like helm's own release builds: its version, and the Kubernetes
# version it assumes when no cluster is asked (`helm template`, `helm lint`): the
# `.Capabilities.KubeVersion` of the test control plane, $K8S_VERSION.
#
#   build-helm.sh          build if missing, print nothing else on success
#   build-helm.sh path     also print the binary's path on stdout
set -euo pipefail
source "$(dirname "$0")/lib.sh"
helm="$HELM_BIN/helm"
if [ ! -x "$helm" ]; then
  command -v go >/dev/null || die "building helm needs Go (>= the go line of e2e/helm-tools/go.mod); none found on PATH"
  mod_dir="$E2E_DIR/helm-tools"
  pinned=$(sed -n 's/^\s*helm\.sh\/helm\/v3 \(v[^ ]*\).*/\1/p' "$mod_dir/go.mod")
  [ "$pinned" = "v$HELM_VERSION" ] \
    || die "e2e/helm-tools/go.mod pins helm $pinned but HELM_VERSION is $HELM_VERSION; run: cd e2e/helm-tools && go get -tool helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
  k8s_major="${K8S_VERSION%%.*}"
  k8s_minor="${K8S_VERSION#*.}"; k8s_minor="${k8s_minor%%.*}"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags+=" -X $pkg.k8sVersionMajor=$k8s_major -X $pkg.k8sVersionMinor=$k8s_minor"
  done
  mkdir -p "$HELM_BIN"
  start=$(date +%s)
  step "building helm v$HELM_VERSION (Kubernetes v$K8S_VERSION) into $HELM_BIN — the first run takes a few minutes"
  # Build to a temp name and rename, so an interrupted build never leaves a half binary.
  (cd "$mod_dir" && go build -trimpath -ldflags "$ldflags" -o "$HELM_BIN/.helm.tmp" helm.sh/helm/v3/cmd/helm) \
    || die "building helm failed (step: go build helm.sh/helm/v3/cmd/helm in e2e/helm-tools); see the Go output above"
  mv "$HELM_BIN/.helm.tmp" "$helm"
  step "helm ready: $helm ($(( $(date +%s) - start ))s)"
fi
if [ "${1:-}" = path ]; then printf '%s\n' "$helm"; fi
