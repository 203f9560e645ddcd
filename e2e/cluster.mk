# Test control plane targets; the root Makefile includes this file.
#
#   make cluster-up      start a local etcd + kube-apiserver (reused if already healthy)
#   make cluster-up NODE=real
#                        the same plus one real node: containerd, kubelet, kube-proxy, the
#                        scheduler, every controller and metrics-server (root; see node.sh)
#   make cluster-down    stop it, undo the node's changes to the machine, remove its state
#   make cluster-demo    cluster with the node, the chart from the built images, the banking
#                        example, and how to send requests
#   make cluster-env     print `export KUBECONFIG=...`: eval "$(make -s cluster-env)"
#   make cluster-status  say whether it runs
#   make e2e             fresh cluster, `cargo test -p parapet-e2e` against it, cluster down
#                        (always, even when the tests fail; make's exit code is the tests')
#   make e2e-node        the same with a real node: the images are built and imported, and
#                        the `node` tests install the chart on it (cargo feature `node`)
#   make conformance     the upstream Gateway API conformance suite on a fresh cluster with a
#                        real node; writes target/conformance/report.yaml (CONFORMANCE_ARGS=...
#                        passes suite flags, e.g. --run-test=NAME)
#
# cluster-up/down/env/status share one long-lived dev cluster (PARAPET_CLUSTER_DIR); `e2e`
# uses its own state dir (PARAPET_E2E_CLUSTER_DIR), so it never touches the dev cluster.

# Directory of this file, whatever directory make runs in (must precede other includes).
PARAPET_E2E_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
CLUSTER_SH ?= $(PARAPET_E2E_DIR)/scripts/cluster.sh
CLUSTER_TMP ?= $(or $(TMPDIR),/tmp)
PARAPET_CLUSTER_DIR ?= $(CLUSTER_TMP)/parapet-cluster
PARAPET_E2E_CLUSTER_DIR ?= $(CLUSTER_TMP)/parapet-e2e-cluster
PARAPET_E2E_NODE_CLUSTER_DIR ?= $(CLUSTER_TMP)/parapet-e2e-node-cluster
# `make cluster-up NODE=real` adds a real node.
NODE ?=
CARGO ?= cargo
# Extra arguments: `make e2e E2E_CARGO_FLAGS=--release E2E_TEST_ARGS='status --nocapture'`.
E2E_CARGO_FLAGS ?=
E2E_TEST_ARGS ?=

.PHONY: cluster-up cluster-down cluster-env cluster-status cluster-demo e2e e2e-node conformance

cluster-up: ## Start the local test control plane (etcd + kube-apiserver on 127.0.0.1); NODE=real adds a real node
	PARAPET_CLUSTER_DIR='$(PARAPET_CLUSTER_DIR)' $(CLUSTER_SH) up $(if $(NODE),--node $(NODE))

cluster-down: ## Stop the local test control plane and remove its state
	PARAPET_CLUSTER_DIR='$(PARAPET_CLUSTER_DIR)' $(CLUSTER_SH) down

cluster-env: ## Print `export KUBECONFIG=...` for the local test control plane
	@PARAPET_CLUSTER_DIR='$(PARAPET_CLUSTER_DIR)' $(CLUSTER_SH) env --export

cluster-status: ## Say whether the local test control plane runs
	@PARAPET_CLUSTER_DIR='$(PARAPET_CLUSTER_DIR)' $(CLUSTER_SH) status

# The tests start the operator and data-plane binaries, which `cargo test -p parapet-e2e`
# does not build: they are built first, as `make build` builds them (WORKSPACE_BUILD, in
# the root Makefile), so that both commands reuse its artifacts. One shell for the whole
# recipe. The cluster goes
# down on every way out: normal exit, test failure, Ctrl-C (the INT/TERM trap), and, should
# make itself be killed, the --owner-pid watchdog, which notices that this shell is gone. A
# failed `up` has cleaned up already and kept its logs for the error message, so it is not
# followed by `down`.
e2e: ## Tests against a fresh real control plane (always torn down)
	@export PARAPET_CLUSTER_DIR='$(PARAPET_E2E_CLUSTER_DIR)'; \
	down() { $(CLUSTER_SH) down || echo "warning: $(CLUSTER_SH) down failed; run it again to clean up $$PARAPET_CLUSTER_DIR" >&2; }; \
	trap 'down; exit 130' INT TERM; \
	$(CLUSTER_SH) up --owner-pid $$$$ >/dev/null || exit $$?; \
	status=0; \
	$(WORKSPACE_BUILD) $(filter --release,$(E2E_CARGO_FLAGS)) || status=$$?; \
	[ $$status -ne 0 ] || KUBECONFIG="$$PARAPET_CLUSTER_DIR/kubeconfig" $(CARGO) test -p parapet-e2e $(E2E_CARGO_FLAGS) -- $(E2E_TEST_ARGS) || status=$$?; \
	trap - INT TERM; \
	down; \
	exit $$status

# Like e2e, with a real node: the images are built first (release binaries) and imported into
# the node's containerd; the tests behind the `node` feature install the chart from them.
e2e-node: images-node ## Tests on a real node: the chart's pods, autoscaling and chaos (always torn down)
	@export PARAPET_CLUSTER_DIR='$(PARAPET_E2E_NODE_CLUSTER_DIR)'; \
	down() { $(CLUSTER_SH) down || echo "warning: $(CLUSTER_SH) down failed; run it again to clean up $$PARAPET_CLUSTER_DIR" >&2; }; \
	trap 'down; exit 130' INT TERM; \
	$(CLUSTER_SH) up --node real --owner-pid $$$$ >/dev/null || exit $$?; \
	status=0; \
	$(CLUSTER_SH) import $(IMAGE_ARCHIVES) || status=$$?; \
	[ $$status -ne 0 ] || PARAPET_IMAGE_TAG='$(IMAGE_TAG)' PARAPET_IMAGE_PREFIX='$(IMAGE_PREFIX)' \
	  KUBECONFIG="$$PARAPET_CLUSTER_DIR/kubeconfig" $(CARGO) test -p parapet-e2e --features node --test node $(E2E_CARGO_FLAGS) -- --test-threads=1 $(E2E_TEST_ARGS) || status=$$?; \
	trap - INT TERM; \
	down; \
	exit $$status

conformance: images-node ## The Gateway API conformance suite on a real node (report: target/conformance/report.yaml)
	IMAGE_TAG='$(IMAGE_TAG)' IMAGE_PREFIX='$(IMAGE_PREFIX)' $(PARAPET_E2E_DIR)/scripts/conformance.sh run $(IMAGE_ARCHIVES)

cluster-demo: images ## The cluster with a real node, the chart and the banking example (stays up)
	PARAPET_CLUSTER_DIR='$(PARAPET_CLUSTER_DIR)' IMAGE_TAG='$(IMAGE_TAG)' IMAGE_PREFIX='$(IMAGE_PREFIX)' \
	  ./scripts/cluster-demo.sh $(IMAGE_ARCHIVES)
