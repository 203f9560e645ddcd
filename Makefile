# Parapet — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build test unit lint fmt crds run bench deps help

all: build

help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

# The API server refuses loopback IPs in EndpointSlices, so e2e tests list their local
# processes in FQDN slices under this name, which must resolve to 127.0.0.1.
E2E_HOST ?= parapet-e2e.localhost

deps: ## Install what tests need: openssl/curl (apt-get) and a hosts entry for $(E2E_HOST)
	@if ! getent hosts $(E2E_HOST) | grep -q '^127\.0\.0\.1'; then \
	  if [ -w /etc/hosts ]; then echo "127.0.0.1 $(E2E_HOST)" >> /etc/hosts && echo "==> added $(E2E_HOST) to /etc/hosts"; \
	  else echo "warning: $(E2E_HOST) must resolve to 127.0.0.1 for the operator e2e tests: echo '127.0.0.1 $(E2E_HOST)' | sudo tee -a /etc/hosts" >&2; fi; \
	fi
	@missing=""; for p in openssl curl; do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "==> installing$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $$missing; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq $$missing; fi; \
	fi

build: ## Build every crate and binary
	$(CARGO) build --workspace --all-targets

crds: ## Regenerate the CRD YAML (and the chart's copy) from the Rust types
	$(CARGO) run -q -p parapet-crds --bin crdgen -- --out crds $(wildcard charts/parapet/crds)

lint: ## rustfmt and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

unit: ## Unit and integration tests (no Kubernetes)
	$(CARGO) test --workspace --exclude parapet-e2e

test: deps lint build unit e2e ## Everything CI runs: lint, unit, integration and e2e tiers
	@echo "make test: all tiers passed"

run: ## The demo: the data plane in standalone mode in front of sample backends
	$(CARGO) build -q -p parapet-dataplane -p parapet-tests --bins
	./scripts/demo.sh

bench: ## Benchmarks against nginx and HAProxy
	./bench/run.sh

-include e2e/cluster.mk
-include charts/chart.mk
