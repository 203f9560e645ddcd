# Test control plane targets; the root Makefile includes this file.
#
#   make cluster-up      start a local etcd + kube-apiserver (reused if already healthy)
#   make cluster-down    stop it and remove its state
#   make cluster-env     print `export KUBECONFIG=...`: eval "$(make -s cluster-env)"
#   make cluster-status  say whether it runs
#   make e2e             fresh cluster, `cargo test -p parapet-e2e` against it, cluster down
#                        (always, even when the tests fail; make's exit code is the tests')
#
# cluster-up/down/env/status share one long-lived dev cluster (PARAPET_CLUSTER_DIR); `e2e`
# uses its own state dir (PARAPET_E2E_CLUSTER_DIR), so it never touches the dev cluster.

# Directory of this file, whatever directory make runs in (must precede other includes).
PARAPET_E2E_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
CLUSTER_SH ?= $(PARAPET_E2E_DIR)/scripts/cluster.sh
CLUSTER_TMP ?= $(or $(TMPDIR),/tmp)
PARAPET_CLUSTER_DIR ?= $(CLUSTER_TMP)/parapet-cluster
PARAPET_E2E_CLUSTER_DIR ?= $(CLUSTER_TMP)/parapet-e2e-cluster
CARGO ?= cargo
# Extra arguments: `make e2e E2E_CARGO_FLAGS=--release E2E_TEST_ARGS='status --nocapture'`.
E2E_CARGO_FLAGS ?=
E2E_TEST_ARGS ?=

.PHONY: cluster-up cluster-down cluster-env cluster-status e2e

cluster-up: ## Start the local test control plane (etcd + kube-apiserver on 127.0.0.1)
	PARAPET_CLUSTER_DIR='$(PARAPET_CLUSTER_DIR)' $(CLUSTER_SH) up

cluster-down: ## Stop the local test control plane and remove its state
	PARAPET_CLUSTER_DIR='$(PARAPET_CLUSTER_DIR)' $(CLUSTER_SH) down

cluster-env: ## Print `export KUBECONFIG=...` for the local test control plane
	@PARAPET_CLUSTER_DIR='$(PARAPET_CLUSTER_DIR)' $(CLUSTER_SH) env --export

cluster-status: ## Say whether the local test control plane runs
	@PARAPET_CLUSTER_DIR='$(PARAPET_CLUSTER_DIR)' $(CLUSTER_SH) status

# One shell for the whole recipe. The cluster goes down on every way out: normal exit, test
# failure, Ctrl-C (the INT/TERM trap), and, should make itself be killed, the --owner-pid
# watchdog, which notices that this shell is gone. A failed `up` has cleaned up already and
# kept its logs for the error message, so it is not followed by `down`.
e2e: ## Tests against a fresh real control plane (always torn down)
	@export PARAPET_CLUSTER_DIR='$(PARAPET_E2E_CLUSTER_DIR)'; \
	down() { $(CLUSTER_SH) down || echo "warning: $(CLUSTER_SH) down failed; run it again to clean up $$PARAPET_CLUSTER_DIR" >&2; }; \
	trap 'down; exit 130' INT TERM; \
	$(CLUSTER_SH) up --owner-pid $$$$ >/dev/null || exit $$?; \
	status=0; \
	KUBECONFIG="$$PARAPET_CLUSTER_DIR/kubeconfig" $(CARGO) test -p parapet-e2e $(E2E_CARGO_FLAGS) -- $(E2E_TEST_ARGS) || status=$$?; \
	trap - INT TERM; \
	down; \
	exit $$status
