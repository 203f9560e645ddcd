#!/usr/bin/env bash
# `make cluster-demo`: the test cluster with its real node (e2e/scripts/cluster.sh up --node
# real), the images from `make images` imported into the node, the chart installed from them
# into namespace parapet-system, and the banking example with its sample backends in
# namespace bank. The cluster stays up; `make cluster-down` removes it.
#
#   cluster-demo.sh ARCHIVE...    (the image archives; make passes them)
#
# Environment: PARAPET_CLUSTER_DIR (the cluster's state dir), IMAGE_TAG, IMAGE_PREFIX.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: $0 IMAGE_ARCHIVE... (make cluster-demo builds and passes them)" >&2; exit 2; }
tag="${IMAGE_TAG:?IMAGE_TAG is not set (make cluster-demo sets it)}"
prefix="${IMAGE_PREFIX:-parapet}"
cluster=e2e/scripts/cluster.sh

"$cluster" up --node real >/dev/null
import_log="$(mktemp)"
"$cluster" import "$@" >"$import_log" 2>&1 || { cat "$import_log" >&2; rm -f "$import_log"; exit 1; }
rm -f "$import_log"
eval "$("$cluster" env --export)"
kubectl="$("$cluster" tools-dir)/kubectl"
helm="$(e2e/scripts/build-helm.sh path)"
api_host="$(sed -n 's|^ *server: https://\([^:]*\):.*|\1|p' "$KUBECONFIG")"

echo "==> installing the chart into parapet-system (images $prefix/*:$tag, never pulled)"
NO_PROXY="$api_host" "$helm" upgrade --install parapet charts/parapet -n parapet-system --create-namespace \
  --set image.tag="$tag" --set image.pullPolicy=Never \
  --set operator.image.repository="$prefix/operator" --set dataplane.image.repository="$prefix/dataplane" \
  --set dataplane.workers=1 --set dataplane.resources.requests.cpu=100m \
  --wait --timeout 180s >/dev/null
echo "==> the banking example and its backends in namespace bank"
"$kubectl" create namespace bank --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
sed "s|image: parapet/sample-backend:0.1.0|image: $prefix/sample-backend:$tag|" examples/banking-backends.yaml \
  | "$kubectl" apply -n bank -f - >/dev/null
"$kubectl" apply -n bank -f examples/banking.yaml >/dev/null
"$kubectl" rollout status -n bank deployment/accounts deployment/accounts-dr deployment/auth --timeout=120s >/dev/null
vip="$("$kubectl" get service parapet-dataplane -n parapet-system -o jsonpath='{.spec.clusterIP}')"
for _ in $(seq 1 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -m 2 -H 'Host: api.bank.example' "http://$vip/accounts/1/activity")" = 200 ] && break
  sleep 0.2
done

cat <<TXT

Parapet runs on the test cluster's real node: the operator and the data plane in
parapet-system, the banking example's backends in bank. The data plane's Service is
$vip:80 (reachable from this machine only).

  export KUBECONFIG=$KUBECONFIG
  alias kubectl=$kubectl

  curl -i -H 'Host: api.bank.example' http://$vip/accounts/42/balance     # cached 5 s (x-cache)
  curl -i -H 'Host: api.bank.example' http://$vip/accounts/42/activity
  curl -i -X POST -H 'Host: api.bank.example' http://$vip/login           # rate limited

  kubectl get ar,up,cp -A                   # Accepted / ResolvedRefs / Programmed
  kubectl get pods -A -o wide               # pods on 198.18.0.x
  kubectl get hpa -n parapet-system         # the data plane's autoscaler (metrics-server)
  kubectl top pods -n parapet-system
  kubectl logs -n parapet-system deploy/parapet-operator

make cluster-down removes the cluster, the node and everything they changed on this machine.
TXT
