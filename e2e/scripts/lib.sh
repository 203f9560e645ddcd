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
