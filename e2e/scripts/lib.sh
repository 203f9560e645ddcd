# Shared settings for the test control plane scripts. Sourced, not run.
# Versions live here and nowhere else; the cache is keyed by them.
K8S_VERSION="${K8S_VERSION:-1.37.2}"
HELM_VERSION="${HELM_VERSION:-3.22.0}"
E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PARAPET_CACHE="${PARAPET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/parapet-e2e}"
TOOLS_BIN="$PARAPET_CACHE/k8s-v$K8S_VERSION/bin"
HELM_BIN="$PARAPET_CACHE/helm-v$HELM_VERSION-k8s-v$K8S_VERSION/bin"
# Go: never download a toolchain, build static binaries.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--mod=mod}"

step() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
# The real node's runtime and tools (built by build-node.sh, each cached by its version).
CONTAINERD_VERSION="${CONTAINERD_VERSION:-2.4.2}"
CRICTL_VERSION="${CRICTL_VERSION:-1.37.0}"
METRICS_SERVER_VERSION="${METRICS_SERVER_VERSION:-0.8.0}"
CRANE_VERSION="${CRANE_VERSION:-0.22.1}"
NODE_BIN="$PARAPET_CACHE/node-k8s-v$K8S_VERSION-containerd-v$CONTAINERD_VERSION-crictl-v$CRICTL_VERSION-ms-v$METRICS_SERVER_VERSION-crane-v$CRANE_VERSION/bin"
