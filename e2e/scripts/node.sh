#!/usr/bin/env bash
# The test cluster's real node: containerd 2 + runc, the CNI bridge, kubelet, kube-proxy
# (nftables), kube-scheduler and metrics-server, beside the control plane cluster.sh starts.
# Sourced by cluster.sh (it shares its helpers: spawn, wait_for, fail, ours, STATE_DIR).
#
# Network: one Linux bridge, parapet0, with 198.18.0.1/24 (the node's InternalIP, and the
# address the API server binds in this mode); pods get 198.18.0.10-250 on it, Services
# 198.19.0.0/24. Both sit in 198.18.0.0/15, the range reserved for benchmark testing. No
# masquerading by the CNI, and an nftables table drops everything forwarded between the
# bridge and any other interface, so no packet from a pod ever leaves the machine.
#
# Everything this changes on the machine is recorded before the change and undone by
# node_down: sysctls (kubelet's and ip_forward), nftables tables, the bridge, mounts under
# the state dir, kubepods cgroups, and the directories kubelet and containerd create outside
# it (/var/lib/kubelet, /var/log/containers, /var/log/pods, /run/containerd).

NODE_NAME="parapet-node"
NODE_BRIDGE="parapet0"
NODE_IP="198.18.0.1"
POD_CIDR="198.18.0.0/24"
SERVICE_CIDR="198.19.0.0/24"
KUBERNETES_SERVICE_IP="198.19.0.1"
# The pod sandbox image: built here from e2e/node-tools/pause and never pulled.
PAUSE_IMAGE="localhost/parapet-test/pause:1"
NODE_DIR="$STATE_DIR/node"
CONTAINERD_SOCK="$NODE_DIR/containerd/containerd.sock"
# Shim sockets: containerd allows a directory of at most 42 characters, so not the state dir.
SHIM_SOCKET_DIR="/run/parapet-shim-$(printf '%s' "$STATE_DIR" | sha256sum | cut -c1-8)"
# Paths outside the state dir that kubelet or containerd write whatever they are told.
NODE_HOST_DIRS=(/var/lib/kubelet /var/log/containers /var/log/pods /run/containerd /var/lib/cni /run/netns)
NODE_SYSCTLS=(net.ipv4.ip_forward vm.overcommit_memory kernel.panic kernel.panic_on_oops)
NODE_COMPONENTS=(containerd kubelet kube-proxy kube-scheduler metrics-server)

crictl_node() { "$NODE_BIN/crictl" --runtime-endpoint "unix://$CONTAINERD_SOCK" --timeout 10s "$@"; }
ctr_node() { "$NODE_BIN/ctr" --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

# What a real node needs from Debian: runc, the CNI plugins, nft (kube-proxy's nftables mode
# and our guard table) and conntrack (kube-proxy clears stale UDP entries with it).
node_deps() {
  local missing=() p
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v nft >/dev/null || missing+=(nftables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v ip >/dev/null || missing+=(iproute2)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "the real node needs root (network, mounts, cgroups) and these Debian packages: ${missing[*]}"
  step "installing ${missing[*]} (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } \
    || die "apt-get install ${missing[*]} failed"
}

# Records the machine's state before the node changes it, once per state dir.
node_record() {
  local f="$NODE_DIR/restore"
  [ -d "$f" ] && return 0
  mkdir -p "$f"
  local s d
  for s in "${NODE_SYSCTLS[@]}"; do sysctl -n "$s" >"$f/sysctl.$s"; done
  nft list tables >"$f/nft-tables" 2>/dev/null || true
  for d in "${NODE_HOST_DIRS[@]}"; do
    [ -e "$d" ] && echo "$d" >>"$f/host-dirs-present"
  done
  touch "$f/host-dirs-present"
}

# One node per machine (one bridge, one address). The state dir of the cluster that owns it
# is recorded here, so a cluster whose processes died with their session (the bridge, mounts
# and tables outlive them) is cleaned up by the next `up` instead of blocking it.
NODE_OWNER_FILE="/run/parapet-node.owner"

node_claim() {
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 || return 0
  local owner
  owner="$(cat "$NODE_OWNER_FILE" 2>/dev/null || true)"
  if [ -n "$owner" ] && [ "$owner" != "$STATE_DIR" ]; then
    if PARAPET_CLUSTER_DIR="$owner" bash "$SCRIPTS_DIR/cluster.sh" status >/dev/null 2>&1; then
      die "another test cluster with a real node runs (state in $owner); one node fits on a machine: PARAPET_CLUSTER_DIR=$owner $SCRIPTS_DIR/cluster.sh down"
    fi
    step "the real node of a cluster that no longer runs is still set up (state in $owner); removing it"
    PARAPET_CLUSTER_DIR="$owner" bash "$SCRIPTS_DIR/cluster.sh" down || die "could not clean up the dead cluster in $owner"
  fi
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    step "removing a leftover $NODE_BRIDGE bridge and its guard table (no cluster owns them)"
    node_net_down
  fi
}

node_net_up() {
  ip link add "$NODE_BRIDGE" type bridge
  echo "$STATE_DIR" >"$NODE_OWNER_FILE"
  ip addr add "$NODE_IP/24" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
  # Service IPs route to the bridge too: an address kube-proxy does not translate stays on
  # the machine instead of following the default route.
  ip route add "$SERVICE_CIDR" dev "$NODE_BRIDGE"
  # The guard: nothing is forwarded between the pod network and any other interface.
  nft -f - <<EOF
table inet parapet_node_guard {
  chain forward {
    type filter hook forward priority -10; policy accept;
    iifname "$NODE_BRIDGE" oifname != "$NODE_BRIDGE" drop
    oifname "$NODE_BRIDGE" iifname != "$NODE_BRIDGE" drop
  }
}
EOF
  mkdir -p "$NODE_DIR/cni/net.d"
  cat >"$NODE_DIR/cni/net.d/10-parapet.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "parapet-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "198.18.0.10", "rangeEnd": "198.18.0.250", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$NODE_DIR/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": false}
  ]
}
EOF
}

node_certs() {
  local d="$STATE_DIR/pki" ec=(-algorithm EC -pkeyopt ec_paramgen_curve:P-256)
  {
    # The kubelet's client identity (the Node authorizer scopes it to its own node).
    openssl genpkey "${ec[@]}" -out "$d/kubelet.key" &&
      openssl req -new -key "$d/kubelet.key" -subj "/O=system:nodes/CN=system:node:$NODE_NAME" -out "$d/kubelet.csr" &&
      openssl x509 -req -in "$d/kubelet.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 365 -extfile "$d/admin.ext" -out "$d/kubelet.crt" &&
      # kube-proxy's (system:node-proxier is bound to this user by default).
      openssl genpkey "${ec[@]}" -out "$d/kube-proxy.key" &&
      openssl req -new -key "$d/kube-proxy.key" -subj "/CN=system:kube-proxy" -out "$d/kube-proxy.csr" &&
      openssl x509 -req -in "$d/kube-proxy.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 365 -extfile "$d/admin.ext" -out "$d/kube-proxy.crt" &&
      # The aggregation layer: the API server proxies to metrics-server as front-proxy-client.
      openssl genpkey "${ec[@]}" -out "$d/front-proxy-ca.key" &&
      openssl req -x509 -new -key "$d/front-proxy-ca.key" -subj "/CN=parapet-front-proxy-ca" -days 365 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$d/front-proxy-ca.crt" &&
      openssl genpkey "${ec[@]}" -out "$d/front-proxy-client.key" &&
      openssl req -new -key "$d/front-proxy-client.key" -subj "/CN=front-proxy-client" -out "$d/front-proxy-client.csr" &&
      openssl x509 -req -in "$d/front-proxy-client.csr" -CA "$d/front-proxy-ca.crt" -CAkey "$d/front-proxy-ca.key" \
        -CAcreateserial -days 365 -extfile "$d/admin.ext" -out "$d/front-proxy-client.crt"
  } >>"$LOG_DIR/openssl.log" 2>&1 || fail "generating the node's certificates with openssl failed" "$LOG_DIR/openssl.log"
}

# A kubeconfig for one identity: node_kubeconfig NAME CERT KEY.
node_kubeconfig() {
  local name="$1" d="$STATE_DIR/pki" server
  server="$(sed -n 's/^ *server: //p' "$KUBECONFIG_PATH")"
  umask 077
  cat >"$NODE_DIR/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: parapet-test
  cluster: {server: "$server", certificate-authority-data: $(b64 "$d/ca.crt")}
users:
- name: $name
  user: {client-certificate-data: $(b64 "$d/$2"), client-key-data: $(b64 "$d/$3")}
contexts:
- name: $name
  context: {cluster: parapet-test, user: $name}
current-context: $name
EOF
  umask 022
}

# Extra kube-apiserver flags in node mode.
node_apiserver_flags() {
  local d="$STATE_DIR/pki"
  printf '%s\n' \
    --bind-address="$NODE_IP" \
    --advertise-address="$NODE_IP" \
    --endpoint-reconciler-type=lease \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --kubelet-preferred-address-types=InternalIP \
    --kubelet-client-certificate="$d/admin.crt" \
    --kubelet-client-key="$d/admin.key" \
    --requestheader-client-ca-file="$d/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-username-headers=X-Remote-User \
    --proxy-client-cert-file="$d/front-proxy-client.crt" \
    --proxy-client-key-file="$d/front-proxy-client.key" \
    --enable-aggregator-routing=true
}

write_containerd_config() {
  local c="$NODE_DIR/containerd"
  mkdir -p "$c"
  cat >"$c/config.toml" <<EOF
version = 4
root = '$c/root'
state = '$c/state'
imports = []
# /opt/containerd and NRI's /var/run/nri would be created outside the state dir.
disabled_plugins = ['io.containerd.internal.v1.opt', 'io.containerd.nri.v1.nri', 'io.containerd.tracing.processor.v1.otlp']
[plugins]
  [plugins.'io.containerd.server.v1.grpc']
    address = '$CONTAINERD_SOCK'
  [plugins.'io.containerd.server.v1.ttrpc']
    address = '$c/containerd.sock.ttrpc'
  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = '$SHIM_SOCKET_DIR'
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '$PAUSE_IMAGE'
  [plugins.'io.containerd.cri.v1.runtime']
    # Root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below the
    # parent's, and every sandbox would fail to start.
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    cdi_spec_dirs = []
    enable_criu = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        disable_pause_image_pull = true
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = '$(command -v runc)'
          Root = '$c/runc'
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ['/usr/lib/cni']
      conf_dir = '$NODE_DIR/cni/net.d'
  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
EOF
}

write_kubelet_config() {
  local k="$NODE_DIR/kubelet" d="$STATE_DIR/pki"
  mkdir -p "$k" "$NODE_DIR/pod-logs"
  # Pods get no DNS server (the tests address everything by IP); an empty resolv.conf keeps
  # the host's resolvers out of them.
  : >"$NODE_DIR/resolv.conf"
  cat >"$k/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$d/ca.crt"}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
resolvConf: "$NODE_DIR/resolv.conf"
podLogsDir: "$NODE_DIR/pod-logs"
serializeImagePulls: false
# A shared test machine: never evict for disk or memory pressure mid-test.
evictionHard: {memory.available: "1Mi", nodefs.available: "0%", imagefs.available: "0%", nodefs.inodesFree: "0%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
fileCheckFrequency: 5s
shutdownGracePeriod: 0s
rotateCertificates: false
serverTLSBootstrap: false
registerNode: true
maxPods: 60
EOF
}

# node_up: after the API server is ready; starts the runtime and the node's components and
# waits until the node is Ready.
node_up() {
  local t0=$SECONDS deadline
  mkdir -p "$NODE_DIR"
  node_kubeconfig kubelet kubelet.crt kubelet.key
  node_kubeconfig kube-proxy kube-proxy.crt kube-proxy.key

  step "starting containerd ($CONTAINERD_VERSION, runc $(runc --version | sed -n '1s/runc version //p'))"
  write_containerd_config
  PATH="$NODE_BIN:$PATH" spawn containerd "$NODE_BIN/containerd" --config "$NODE_DIR/containerd/config.toml"
  deadline=$((SECONDS + READY_TIMEOUT))
  wait_for "serve CRI" containerd "$deadline" containerd_ready || fail "containerd did not start" "$(log_of containerd)"
  node_import_pause

  step "starting kube-scheduler and metrics-server"
  spawn kube-scheduler "$TOOLS_BIN/kube-scheduler" \
    --kubeconfig="$KUBECONFIG_PATH" --leader-elect=false \
    --bind-address=127.0.0.1 --secure-port=0
  node_metrics_server

  step "starting kubelet ($NODE_NAME, $NODE_IP) and kube-proxy (nftables)"
  write_kubelet_config
  local proxy_ports
  proxy_ports="$(free_ports 2)"
  spawn kubelet "$TOOLS_BIN/kubelet" \
    --config="$NODE_DIR/kubelet/config.yaml" \
    --kubeconfig="$NODE_DIR/kubelet.kubeconfig" \
    --root-dir="$NODE_DIR/kubelet/root" \
    --cert-dir="$NODE_DIR/kubelet/pki" \
    --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" \
    --node-labels="topology.kubernetes.io/zone=test-a"
  spawn kube-proxy "$TOOLS_BIN/kube-proxy" \
    --kubeconfig="$NODE_DIR/kube-proxy.kubeconfig" \
    --proxy-mode=nftables \
    --hostname-override="$NODE_NAME" \
    --cluster-cidr="$POD_CIDR" \
    --nodeport-addresses="$NODE_IP/32" \
    --metrics-bind-address="127.0.0.1:${proxy_ports% *}" \
    --healthz-bind-address="127.0.0.1:${proxy_ports#* }" \
    --conntrack-max-per-core=0 \
    --conntrack-tcp-timeout-established=0 \
    --conntrack-tcp-timeout-close-wait=0

  deadline=$((SECONDS + READY_TIMEOUT))
  wait_for "register a Ready node" kubelet "$deadline" node_ready
  wait_for "program Services (nftables table ip kube-proxy)" kube-proxy "$deadline" kube_proxy_ready
  wait_for "serve the metrics API (APIService Available)" metrics-server "$deadline" metrics_api_ready
  # The label the API server copies to pods (topology.kubernetes.io/zone) is the zone the
  # data plane reports; the taints a fresh node carries are gone once it is Ready.
  step "node $NODE_NAME Ready after $((SECONDS - t0))s"
}

kube_proxy_ready() { nft list chain ip kube-proxy services >/dev/null 2>&1; }
metrics_api_ready() {
  [ "$(kubectl_admin get apiservice v1beta1.metrics.k8s.io -o jsonpath='{.status.conditions[?(@.type=="Available")].status}' 2>/dev/null)" = True ]
}
containerd_ready() { [ -S "$CONTAINERD_SOCK" ] && crictl_node info >/dev/null 2>&1; }
node_ready() {
  [ "$(kubectl_admin get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# The sandbox image: an OCI archive of the pause binary made with crane (no registry).
node_import_pause() {
  local out="$NODE_DIR/pause.tar"
  "$E2E_DIR/../scripts/oci-image.sh" --crane "$NODE_BIN/crane" --binary "$NODE_BIN/pause" --name pause \
    --ref "$PAUSE_IMAGE" --user 65535 --out "$out" >>"$(log_of images)" 2>&1 \
    || fail "building the pause image failed" "$(log_of images)"
  node_import "$out" >>"$(log_of images)" 2>&1 || fail "importing the pause image into containerd failed" "$(log_of images)"
}

# node_import ARCHIVE...: OCI or docker archives into containerd's k8s.io namespace, under
# the references they carry.
node_import() {
  local a
  for a in "$@"; do
    [ -f "$a" ] || die "no image archive $a (make images builds them)"
    ctr_node images import "$a" || return 1
  done
}

node_metrics_server() {
  local port
  port="$(free_ports 1)"
  mkdir -p "$NODE_DIR/metrics-server"
  spawn metrics-server "$NODE_BIN/metrics-server" \
    --kubeconfig="$KUBECONFIG_PATH" \
    --authentication-kubeconfig="$KUBECONFIG_PATH" \
    --authorization-kubeconfig="$KUBECONFIG_PATH" \
    --bind-address="$NODE_IP" \
    --secure-port="$port" \
    --cert-dir="$NODE_DIR/metrics-server" \
    --kubelet-insecure-tls \
    --kubelet-preferred-address-types=InternalIP \
    --kubelet-use-node-status-port \
    --metric-resolution=10s \
    --kubelet-request-timeout=5s
  # The API server reaches it through the aggregation layer: a Service without selector,
  # an EndpointSlice with its host address, and the APIService.
  kubectl_admin apply -f - >>"$(log_of metrics-server)" 2>&1 <<EOF || fail "registering metrics-server with the API server failed" "$(log_of metrics-server)"
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system}
spec:
  ports: [{name: https, port: 443, targetPort: $port}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: metrics-server
  namespace: kube-system
  labels: {kubernetes.io/service-name: metrics-server}
addressType: IPv4
ports: [{name: https, port: $port, protocol: TCP}]
endpoints: [{addresses: ["$NODE_IP"], conditions: {ready: true}}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io}
spec:
  service: {name: metrics-server, namespace: kube-system, port: 443}
  group: metrics.k8s.io
  version: v1beta1
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
EOF
}

# Stops the node and undoes its changes to the machine. Safe to run twice, and on a node
# that never finished starting.
node_down() {
  [ -d "$NODE_DIR" ] || return 0
  local pid c
  # kubelet first, so it does not restart what is being removed; then every pod through
  # the CRI (their network namespaces, mounts and cgroups go with them); then the rest.
  for c in kubelet metrics-server kube-scheduler kube-proxy; do
    pid="$(pid_of "$c")"
    if ours "$pid"; then stop_wave "$pid"; fi
  done
  pid="$(pid_of containerd)"
  if ours "$pid"; then
    crictl_node rmp --all --force >/dev/null 2>&1 || true
    stop_wave "$pid"
  fi
  # Shims outlive containerd by design; ours carry the state dir's socket path.
  local shim
  for shim in $(pgrep -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" || true); do
    kill -KILL "$shim" 2>/dev/null || true
  done
  # Containers a shim left (runc's state is under containerd's state dir).
  local rroot="$NODE_DIR/containerd/runc/k8s.io"
  if command -v runc >/dev/null && [ -d "$rroot" ]; then
    for c in $(runc --root "$rroot" list -q 2>/dev/null || true); do
      runc --root "$rroot" delete --force "$c" 2>/dev/null || true
    done
  fi
  node_unmount
  rm -rf -- "$SHIM_SOCKET_DIR"
  node_cgroups_remove
  node_net_down
  node_restore
}

# Unmounts everything mounted under the state dir (deepest first).
node_unmount() {
  local m tries
  for tries in 1 2 3; do
    local mounts=()
    while read -r m; do mounts+=("$m"); done < <(awk -v p="$STATE_DIR/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r)
    [ ${#mounts[@]} -eq 0 ] && return 0
    for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null || true; done
  done
}

# Removes the kubepods cgroups (children first) from every hierarchy.
node_cgroups_remove() {
  local h
  for h in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice /sys/fs/cgroup/kubepods; do
    [ -d "$h" ] || continue
    find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

node_net_down() {
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  if [ "$(cat "$NODE_OWNER_FILE" 2>/dev/null)" = "$STATE_DIR" ]; then rm -f "$NODE_OWNER_FILE"; fi
  # Interfaces left by pods whose sandbox was not torn down (their veth peers die with the
  # namespaces, but a leftover one is removed here).
  local l
  for l in $(ip -o link show master "$NODE_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$l" 2>/dev/null || true
  done
  nft delete table inet parapet_node_guard 2>/dev/null || true
}

node_restore() {
  local f="$NODE_DIR/restore" s t d
  [ -d "$f" ] || return 0
  for s in "${NODE_SYSCTLS[@]}"; do
    [ -f "$f/sysctl.$s" ] && sysctl -q -w "$s=$(cat "$f/sysctl.$s")" >/dev/null 2>&1 || true
  done
  # nftables tables that kubelet and kube-proxy added.
  while read -r t; do
    grep -qxF "$t" "$f/nft-tables" 2>/dev/null || nft "delete $t" 2>/dev/null || true
  done < <(nft list tables 2>/dev/null)
  for d in "${NODE_HOST_DIRS[@]}"; do
    if [ -e "$d" ] && ! grep -qxF "$d" "$f/host-dirs-present"; then
      # Only if nothing is mounted below it any more.
      if ! awk -v p="$d/" 'index($5, p) == 1 {found=1} END {exit !found}' /proc/self/mountinfo; then
        rm -rf -- "$d"
      fi
    fi
  done
}
