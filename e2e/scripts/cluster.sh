#!/usr/bin/env bash
# A throwaway Kubernetes control plane for tests: etcd and kube-apiserver (plus, by default,
# kube-controller-manager running the namespace and garbage-collector controllers) on
# 127.0.0.1, with certificates made here and an admin kubeconfig. No nodes, no pods.
# With --node real, also one real node (containerd, runc, the CNI bridge, kubelet,
# kube-proxy, kube-scheduler, metrics-server and every controller; see node.sh): the API
# server then listens on the node's bridge address, 198.18.0.1, which pods can reach.
#
#   cluster.sh up [--owner-pid PID] [--node real]
#                                     start (or reuse a healthy cluster); prints KUBECONFIG=...
#   cluster.sh down                   stop every process, undo the node's changes to the
#                                     machine and remove the state dir
#   cluster.sh import ARCHIVE...      import image archives into the node's containerd
#   cluster.sh env [--export]         print KUBECONFIG=<path> (or `export KUBECONFIG=<path>`)
#   cluster.sh status                 say whether the cluster runs (exit 0 if it does)
#   cluster.sh tools-dir              print the directory of the cached kubectl, etcd, ...
#
# --owner-pid PID starts a watchdog that brings the cluster down once PID exits, so a test
# process can start a cluster and never leak it.
#
# Environment:
#   PARAPET_CLUSTER_DIR          state dir (pids, certs, logs, kubeconfig, etcd data);
#                                default ${TMPDIR:-/tmp}/parapet-cluster
#   PARAPET_CLUSTER_TIMEOUT      seconds to wait for readiness (default 90)
#   PARAPET_CLUSTER_STOP_TIMEOUT seconds between SIGTERM and SIGKILL on `down` (default 15)
#   PARAPET_CLUSTER_CONTROLLERS  kube-controller-manager --controllers value
#                                (default namespace-controller,garbage-collector-controller;
#                                "none" runs no controller manager)
set -euo pipefail
SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$SCRIPTS_DIR/lib.sh"

STATE_DIR="${PARAPET_CLUSTER_DIR:-${TMPDIR:-/tmp}/parapet-cluster}"
READY_TIMEOUT="${PARAPET_CLUSTER_TIMEOUT:-90}"
STOP_TIMEOUT="${PARAPET_CLUSTER_STOP_TIMEOUT:-15}"
CONTROLLERS="${PARAPET_CLUSTER_CONTROLLERS:-namespace-controller,garbage-collector-controller}"
MARKER=".parapet-cluster"
# In start order.
COMPONENTS=(etcd kube-apiserver kube-controller-manager)
# "real" when the cluster has a real node; recorded in the state dir as `mode`.
NODE_MODE=""

usage() {
  sed -n '2,/^set /{/^#/p}' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# The state dir must be absolute (the processes and the kubeconfig refer to it) and must not
# be something we would be sorry to `rm -rf`.
case "$STATE_DIR" in
  /*) ;;
  *) STATE_DIR="$PWD/$STATE_DIR" ;;
esac
STATE_DIR="${STATE_DIR%/}"
case "$STATE_DIR" in
  "" | / | "$HOME" | /tmp | /var/tmp) die "PARAPET_CLUSTER_DIR=$STATE_DIR is not a safe state dir; point it at a dedicated directory" ;;
esac
KUBECONFIG_PATH="$STATE_DIR/kubeconfig"
LOG_DIR="$STATE_DIR/logs"
LOCK_FILE="$STATE_DIR.lock"

log_of() { printf '%s/%s.log' "$LOG_DIR" "$1"; }
# shellcheck source=node.sh
source "$SCRIPTS_DIR/node.sh"
mode_of_state() { cat "$STATE_DIR/mode" 2>/dev/null || true; }
pid_of() { cat "$STATE_DIR/$1.pid" 2>/dev/null || true; }

# True if PID is alive and is one of ours: its command line mentions the state dir, so a
# recycled pid of an unrelated process is never signalled.
ours() {
  local pid="$1"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -e "$STATE_DIR/" -e "$STATE_DIR "
}

kubectl_admin() {
  "$TOOLS_BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" --request-timeout=3s "$@"
}

healthy() {
  [ -f "$STATE_DIR/$MARKER" ] && [ -f "$KUBECONFIG_PATH" ] || return 1
  [ "$(mode_of_state)" = "$NODE_MODE" ] || return 1
  ours "$(pid_of etcd)" && ours "$(pid_of kube-apiserver)" || return 1
  if [ "$NODE_MODE" = real ]; then
    local c
    for c in "${NODE_COMPONENTS[@]}"; do ours "$(pid_of "$c")" || return 1; done
  fi
  [ "$(kubectl_admin get --raw /readyz 2>/dev/null)" = "ok" ]
}

with_lock() {
  # Serialise up/down on one state dir. The lock file sits next to the dir (which `down`
  # deletes) and is removed by `down`.
  if command -v flock >/dev/null; then
    mkdir -p "$(dirname "$STATE_DIR")"
    exec 9>>"$LOCK_FILE"
    flock -w "$((READY_TIMEOUT + 30))" 9 || die "another cluster.sh holds $LOCK_FILE for longer than $((READY_TIMEOUT + 30))s"
  fi
}

# ---------------------------------------------------------------------------------------
# Stopping

# stop_wave PID...: SIGTERM, wait up to STOP_TIMEOUT seconds, then SIGKILL what is left.
stop_wave() {
  [ $# -gt 0 ] || return 0
  local pids=("$@") pid alive deadline=$((SECONDS + STOP_TIMEOUT))
  kill -TERM "${pids[@]}" 2>/dev/null || true
  while :; do
    alive=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    [ ${#alive[@]} -gt 0 ] || return 0
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.1
  done
  step "processes ${alive[*]} ($(ps -o comm= -p "$(IFS=,; echo "${alive[*]}")" | tr '\n' ' ')) ignored SIGTERM for ${STOP_TIMEOUT}s; sending SIGKILL"
  kill -KILL "${alive[@]}" 2>/dev/null || true
  deadline=$((SECONDS + 5))
  while [ "$SECONDS" -lt "$deadline" ]; do
    alive=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    [ ${#alive[@]} -gt 0 ] || return 0
    sleep 0.1
  done
  die "processes ${alive[*]} survived SIGKILL"
}

# Stops in two waves: first everything that talks to the API server, together with it (the
# API server waits for its clients' connections if they outlive it), then etcd (stopping it
# first makes the API server retry it until its own deadline).
stop_processes() {
  local first=() pid c
  # With a node, the API server keeps waiting after SIGTERM (with pods' watches open) until
  # it is killed; its state is thrown away, so it gets a short grace.
  local STOP_TIMEOUT="$STOP_TIMEOUT"
  if [ "$(mode_of_state)" = real ] && [ "$STOP_TIMEOUT" -gt 3 ]; then STOP_TIMEOUT=3; fi
  pid="$(pid_of watchdog)"
  # The watchdog runs `down` itself when its owner exits: it must not signal itself.
  if [ "$pid" != "$$" ] && ours "$pid"; then first+=("$pid"); fi
  for c in kube-controller-manager kube-apiserver; do
    pid="$(pid_of "$c")"
    if ours "$pid"; then first+=("$pid"); fi
  done
  stop_wave "${first[@]}"
  pid="$(pid_of etcd)"
  if ours "$pid"; then stop_wave "$pid"; fi
}

remove_state_dir() {
  [ -e "$STATE_DIR" ] || return 0
  if [ ! -f "$STATE_DIR/$MARKER" ] && [ -n "$(ls -A "$STATE_DIR" 2>/dev/null)" ]; then
    die "$STATE_DIR is not empty and has no $MARKER marker; it does not look like a cluster state dir, so it is left alone"
  fi
  # rm -rf would follow a bind mount into whatever it shows.
  if awk -v p="$STATE_DIR/" 'index($5, p) == 1 {found=1} END {exit !found}' /proc/self/mountinfo; then
    die "something is still mounted under $STATE_DIR (see /proc/self/mountinfo); unmount it, then run cluster.sh down again"
  fi
  rm -rf -- "$STATE_DIR"
}

cmd_down() {
  with_lock
  node_down
  stop_processes
  remove_state_dir
  rm -f -- "$LOCK_FILE"
}

# ---------------------------------------------------------------------------------------
# Starting

# Prints N free TCP ports on 127.0.0.1. They are free when printed; the start-up retries with
# new ports if another process grabs one before our server binds it.
free_ports() {
  local n="$1"
  if command -v python3 >/dev/null; then
    python3 - "$n" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
  else
    # No python: random high ports that nothing answers on.
    local ports=() p
    while [ ${#ports[@]} -lt "$n" ]; do
      p=$((20000 + RANDOM % 40000))
      if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then ports+=("$p"); fi
    done
    echo "${ports[*]}"
  fi
}

gen_certs() {
  local d="$STATE_DIR/pki"
  mkdir -p "$d"
  local ec=(-algorithm EC -pkeyopt ec_paramgen_curve:P-256)
  {
    openssl genpkey "${ec[@]}" -out "$d/ca.key" &&
      openssl req -x509 -new -key "$d/ca.key" -subj "/CN=parapet-test-ca" -days 365 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$d/ca.crt" &&
      # Serving certificate for the API server.
      openssl genpkey "${ec[@]}" -out "$d/apiserver.key" &&
      openssl req -new -key "$d/apiserver.key" -subj "/CN=kube-apiserver" -out "$d/apiserver.csr" &&
      printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=serverAuth" \
        "subjectAltName=IP:127.0.0.1,DNS:localhost,IP:$NODE_IP,IP:$KUBERNETES_SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc" \
        >"$d/apiserver.ext" &&
      openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 365 -extfile "$d/apiserver.ext" -out "$d/apiserver.crt" &&
      # Admin client certificate: O=system:masters is cluster-admin under RBAC.
      openssl genpkey "${ec[@]}" -out "$d/admin.key" &&
      openssl req -new -key "$d/admin.key" -subj "/O=system:masters/CN=parapet-admin" -out "$d/admin.csr" &&
      printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=clientAuth" >"$d/admin.ext" &&
      openssl x509 -req -in "$d/admin.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 365 -extfile "$d/admin.ext" -out "$d/admin.crt" &&
      # Service-account token signing key pair.
      openssl genpkey "${ec[@]}" -out "$d/sa.key" &&
      openssl pkey -in "$d/sa.key" -pubout -out "$d/sa.pub"
  } >"$LOG_DIR/openssl.log" 2>&1 || fail "generating certificates with openssl failed" "$LOG_DIR/openssl.log"
}

b64() { base64 -w0 <"$1"; }

write_kubeconfig() {
  local port="$1" d="$STATE_DIR/pki" host=127.0.0.1
  if [ "$NODE_MODE" = real ]; then host="$NODE_IP"; fi
  umask 077
  cat >"$KUBECONFIG_PATH.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: parapet-test
  cluster:
    server: https://$host:$port
    certificate-authority-data: $(b64 "$d/ca.crt")
users:
- name: parapet-admin
  user:
    client-certificate-data: $(b64 "$d/admin.crt")
    client-key-data: $(b64 "$d/admin.key")
contexts:
- name: parapet-test
  context:
    cluster: parapet-test
    user: parapet-admin
current-context: parapet-test
EOF
  mv "$KUBECONFIG_PATH.tmp" "$KUBECONFIG_PATH"
  umask 022
}

# Starts a component in its own session (so a Ctrl-C aimed at the caller does not half-kill
# the cluster; `down` and the watchdog stop it) with all output in its log.
spawn() {
  local name="$1"
  shift
  # 9>&- : the up/down lock must not be inherited, or it would be held as long as the
  # cluster runs.
  setsid "$@" >"$(log_of "$name")" 2>&1 </dev/null 9>&- &
  echo $! >"$STATE_DIR/$name.pid"
}

# Failure during `up`: say which step failed, show the end of its log, stop whatever was
# started and remove the state, keeping only the logs for diagnosis.
fail() {
  local msg="$1" logfile="${2:-}"
  trap - EXIT INT TERM
  if [ -n "$logfile" ] && [ -s "$logfile" ]; then
    printf '%s\n' "--- last lines of $logfile ---" >&2
    tail -n 25 "$logfile" >&2
    printf '%s\n' "---" >&2
  fi
  node_down || true
  stop_processes || true
  if [ -f "$STATE_DIR/$MARKER" ]; then
    find "$STATE_DIR" -mindepth 1 -maxdepth 1 ! -name logs ! -name "$MARKER" -exec rm -rf -- {} +
  fi
  if [ -n "$logfile" ]; then die "$msg; see $logfile"; else die "$msg"; fi
}

# wait_for WHAT COMPONENT DEADLINE CHECK...: waits until CHECK succeeds, failing if the component's process dies or the deadline passes.
wait_for() {
  local what="$1" component="$2" deadline="$3"
  shift 3
  # No redirection here: a trap firing inside CHECK would inherit it and lose its message.
  # The checks are quiet themselves.
  while ! "$@"; do
    if ! kill -0 "$(pid_of "$component")" 2>/dev/null; then
      if grep -q "address already in use" "$(log_of "$component")" 2>/dev/null; then return 3; fi
      fail "$component exited before it could $what" "$(log_of "$component")"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      fail "$component did not $what within ${READY_TIMEOUT}s" "$(log_of "$component")"
    fi
    sleep 0.2
  done
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
apiserver_ready() { [ "$(kubectl_admin get --raw /readyz 2>/dev/null)" = "ok" ]; }

start_etcd() {
  local client_port="$1" peer_port="$2"
  mkdir -p "$STATE_DIR/etcd"
  spawn etcd "$TOOLS_BIN/etcd" \
    --name=parapet-test \
    --data-dir="$STATE_DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$client_port" \
    --advertise-client-urls="http://127.0.0.1:$client_port" \
    --listen-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls="http://127.0.0.1:$peer_port" \
    --initial-cluster="parapet-test=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync \
    --log-level=warn
}

start_apiserver() {
  local port="$1" etcd_port="$2" d="$STATE_DIR/pki"
  local mode_flags=(--bind-address=127.0.0.1 --advertise-address=127.0.0.1 --endpoint-reconciler-type=none
    --authorization-mode=RBAC --disable-admission-plugins=ServiceAccount)
  if [ "$NODE_MODE" = real ]; then mapfile -t mode_flags < <(node_apiserver_flags); fi
  spawn kube-apiserver "$TOOLS_BIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    "${mode_flags[@]}" \
    --secure-port="$port" \
    --tls-cert-file="$d/apiserver.crt" \
    --tls-private-key-file="$d/apiserver.key" \
    --client-ca-file="$d/ca.crt" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-issuer=https://kubernetes.default.svc \
    --service-account-key-file="$d/sa.pub" \
    --service-account-signing-key-file="$d/sa.key" \
    --allow-privileged=true
}

start_controller_manager() {
  local d="$STATE_DIR/pki" extra=()
  # With a node: every controller (deployments, endpoint slices, the HPA, ...), the HPA on a
  # short period so tests see it act in seconds.
  if [ "$NODE_MODE" = real ]; then
    extra=(--horizontal-pod-autoscaler-sync-period=5s --node-monitor-grace-period=20s)
  fi
  spawn kube-controller-manager "$TOOLS_BIN/kube-controller-manager" \
    --kubeconfig="$KUBECONFIG_PATH" \
    --leader-elect=false \
    --controllers="$CONTROLLERS" \
    "${extra[@]}" \
    --service-account-private-key-file="$d/sa.key" \
    --root-ca-file="$d/ca.crt" \
    --bind-address=127.0.0.1 \
    --secure-port=0
}

# Exits non-zero if a port was taken before the server bound it (the caller retries).
start_once() {
  local etcd_port api_port peer_port
  read -r etcd_port api_port peer_port <<<"$(free_ports 3)"
  step "starting etcd on 127.0.0.1:$etcd_port"
  start_etcd "$etcd_port" "$peer_port"
  wait_for "accept connections" etcd "$((SECONDS + READY_TIMEOUT))" tcp_open "$etcd_port" || return $?
  step "starting kube-apiserver on https://$([ "$NODE_MODE" = real ] && echo "$NODE_IP" || echo 127.0.0.1):$api_port"
  write_kubeconfig "$api_port"
  start_apiserver "$api_port" "$etcd_port"
  wait_for "become ready (GET /readyz)" kube-apiserver "$((SECONDS + READY_TIMEOUT))" apiserver_ready || return $?
  if [ "$CONTROLLERS" != "none" ]; then
    step "starting kube-controller-manager ($CONTROLLERS)"
    start_controller_manager
  fi
}

start_watchdog() {
  local owner="$1"
  kill -0 "$owner" 2>/dev/null || fail "the owner process $owner exited while the cluster was starting"
  # The start time tells a recycled pid from the owner.
  local started
  started="$(awk '{print $22}' "/proc/$owner/stat" 2>/dev/null || echo unknown)"
  setsid bash "$SCRIPTS_DIR/cluster.sh" __watchdog "$owner" "$started" "$STATE_DIR" \
    >>"$(log_of watchdog)" 2>&1 </dev/null 9>&- &
  echo $! >"$STATE_DIR/watchdog.pid"
}

cmd_watchdog() {
  local owner="$1" started="$2"
  owner_alive() {
    kill -0 "$owner" 2>/dev/null || return 1
    [ "$started" = unknown ] || [ "$(awk '{print $22}' "/proc/$owner/stat" 2>/dev/null)" = "$started" ]
  }
  while owner_alive && [ -f "$STATE_DIR/$MARKER" ]; do sleep 0.5; done
  if [ -f "$STATE_DIR/$MARKER" ]; then
    echo "$(date -u +%FT%TZ) owner $owner exited; bringing the cluster down"
    cmd_down
  fi
}

cmd_up() {
  local owner=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --owner-pid) [ $# -ge 2 ] || die "--owner-pid needs a process id"; owner="$2"; shift 2 ;;
      --owner-pid=*) owner="${1#*=}"; shift ;;
      --node) [ $# -ge 2 ] || die "--node needs a value: real"; NODE_MODE="$2"; shift 2 ;;
      --node=*) NODE_MODE="${1#*=}"; shift ;;
      *) die "unknown option for up: $1 (see cluster.sh --help)" ;;
    esac
  done
  [ -z "$owner" ] || [[ "$owner" =~ ^[0-9]+$ ]] || die "--owner-pid takes a process id, not '$owner'"
  [ -z "$owner" ] || kill -0 "$owner" 2>/dev/null || die "--owner-pid $owner is not a running process"
  case "$NODE_MODE" in
    "" | none) NODE_MODE="" ;;
    real) CONTROLLERS="*" ;;
    *) die "--node takes 'real' (a kubelet node with containerd) or 'none', not '$NODE_MODE'" ;;
  esac

  with_lock
  if healthy; then
    step "reusing the running cluster in $STATE_DIR"
    if [ -n "$owner" ]; then step "note: the cluster was not started by this call, so --owner-pid is ignored"; fi
    echo "KUBECONFIG=$KUBECONFIG_PATH"
    return 0
  fi
  if [ -e "$STATE_DIR" ]; then
    step "removing the stale state in $STATE_DIR"
    node_down
    stop_processes
    remove_state_dir
  fi
  if [ "$NODE_MODE" = real ]; then node_claim; fi

  "$SCRIPTS_DIR/build-tools.sh" || die "the control plane tools are missing and building them failed (step: build-tools.sh)"
  command -v openssl >/dev/null || die "openssl is needed to make the test cluster's certificates; install it (Debian/Ubuntu: apt-get install openssl)"
  if [ "$NODE_MODE" = real ]; then
    [ "$(id -u)" = 0 ] || die "a real node needs root (a bridge, mounts, cgroups); run cluster.sh up --node real as root"
    node_deps
    "$SCRIPTS_DIR/build-node.sh" || die "the node's tools are missing and building them failed (step: build-node.sh)"
  fi

  local t0=$SECONDS
  mkdir -p "$LOG_DIR"
  touch "$STATE_DIR/$MARKER"
  echo "$NODE_MODE" >"$STATE_DIR/mode"
  trap 'fail "interrupted while starting the cluster"' INT TERM
  trap 'fail "cluster.sh up stopped unexpectedly (line $LINENO)"' EXIT
  gen_certs
  if [ "$NODE_MODE" = real ]; then
    node_certs
    node_record
    node_net_up
  fi
  local attempt rc
  for attempt in 1 2 3; do
    rc=0
    start_once || rc=$?
    [ "$rc" -eq 0 ] && break
    [ "$rc" -eq 3 ] || fail "starting the cluster failed"
    step "a port was taken before the server bound it; retrying with new ports ($attempt/3)"
    stop_processes
    rm -rf -- "$STATE_DIR/etcd"
  done
  [ "$rc" -eq 0 ] || fail "could not find free ports for etcd and kube-apiserver after 3 attempts"
  if [ "$NODE_MODE" = real ]; then node_up; fi
  if [ -n "$owner" ]; then start_watchdog "$owner"; fi
  trap - EXIT INT TERM
  step "cluster ready in $((SECONDS - t0))s; state in $STATE_DIR"
  echo "KUBECONFIG=$KUBECONFIG_PATH"
}

cmd_env() {
  local prefix=""
  case "${1:-}" in
    "") ;;
    --export) prefix="export " ;;
    *) die "unknown option for env: $1 (try --export)" ;;
  esac
  echo "${prefix}KUBECONFIG=$KUBECONFIG_PATH"
  [ -f "$KUBECONFIG_PATH" ] || { printf 'warning: no cluster in %s; run cluster.sh up\n' "$STATE_DIR" >&2; return 1; }
}

cmd_status() {
  NODE_MODE="$(mode_of_state)"
  if healthy; then
    local server
    server="$(grep -m1 'server:' "$KUBECONFIG_PATH" | awk '{print $2}')"
    echo "running: $server (state in $STATE_DIR)"
    local c pid
    for c in "${COMPONENTS[@]}" "${NODE_COMPONENTS[@]}" watchdog; do
      pid="$(pid_of "$c")"
      if [ -z "$pid" ]; then continue; fi
      if ours "$pid"; then echo "  $c: pid $pid"; else echo "  $c: not running (see $(log_of "$c"))"; fi
    done
    echo "KUBECONFIG=$KUBECONFIG_PATH"
  elif [ -e "$STATE_DIR" ]; then
    echo "not running (stale state in $STATE_DIR; cluster.sh down removes it)"
    return 1
  else
    echo "not running"
    return 1
  fi
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  down) shift; [ $# -eq 0 ] || die "down takes no arguments"; cmd_down ;;
  env) shift; cmd_env "$@" ;;
  status) shift; cmd_status ;;
  tools-dir) echo "$TOOLS_BIN" ;;
  import)
    shift
    [ "$(mode_of_state)" = real ] || die "the cluster in $STATE_DIR has no real node to import images into (cluster.sh up --node real)"
    node_import "$@" || die "importing $* into the node's containerd failed" ;;
  __watchdog) shift; [ $# -eq 3 ] || die "internal: __watchdog OWNER START STATE_DIR"; STATE_DIR="$3"; KUBECONFIG_PATH="$STATE_DIR/kubeconfig"; LOCK_FILE="$STATE_DIR.lock"; LOG_DIR="$STATE_DIR/logs"; cmd_watchdog "$1" "$2" ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
