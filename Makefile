# Parapet — the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build test unit lint audit fmt crds run bench pgo deps help h2spec fuzz fuzz-smoke fuzz-tools

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

# Every crate and target, as one selection: the tiers that need debug binaries build with
# exactly this (h2spec through `build`, e2e in its recipe), because any other selection of
# packages or targets resolves other features for the crates they share and rebuilds them.
WORKSPACE_BUILD = $(CARGO) build --workspace --all-targets

build: ## Build every crate and binary
	$(WORKSPACE_BUILD)

crds: ## Regenerate the CRD YAML (and the chart's copy) from the Rust types
	$(CARGO) run -q -p parapet-crds --features kube --bin crdgen -- --out crds $(wildcard charts/parapet/crds)

# The last clippy line checks parapet-crds as the data plane builds it: without `kube`.
lint: ## rustfmt and clippy, warnings are errors; then the advisory check
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p parapet-e2e --all-targets --features node -- -D warnings
	$(CARGO) clippy -p parapet-crds --lib --bins -- -D warnings
	@$(MAKE) --no-print-directory audit

# Advisories need the RustSec database from GitHub. Where cargo-deny cannot be installed or
# the database cannot be fetched, this says so and passes: it must not break offline CI.
# The database is probed first (15 s), so an offline machine does not compile cargo-deny
# (3-4 minutes) for a check that cannot run.
ADVISORY_DB ?= https://github.com/rustsec/advisory-db
audit: ## Dependency advisories (cargo deny check advisories), degrading when offline
	@if ! timeout 15 git ls-remote --heads $(ADVISORY_DB) >/dev/null 2>&1; then \
	  echo "warning: audit skipped: could not reach the RustSec advisory database at $(ADVISORY_DB)" >&2; exit 0; \
	fi; \
	if ! $(CARGO) deny --version >/dev/null 2>&1; then \
	  echo "==> audit: installing cargo-deny from crates.io"; \
	  timeout 600 $(CARGO) install cargo-deny --locked -q >/dev/null 2>&1 \
	    || { echo "warning: audit skipped: cargo-deny is not installed and could not be installed" >&2; exit 0; }; \
	fi; \
	rc=0; out=$$(timeout 300 $(CARGO) deny check advisories 2>&1) || rc=$$?; \
	if [ $$rc -eq 0 ]; then echo "==> audit: no advisories"; \
	elif [ $$rc -eq 124 ] || echo "$$out" | grep -qiE 'fetch|clone|network|resolve|connect|advisory database|timed out'; then \
	  echo "warning: audit skipped: could not fetch the RustSec advisory database (GitHub unreachable)" >&2; \
	else echo "$$out" >&2; exit $$rc; fi

fmt:
	$(CARGO) fmt --all

unit: ## Unit and integration tests (no Kubernetes)
	$(CARGO) test --workspace --exclude parapet-e2e

# The data plane as the workspace builds it (WORKSPACE_BUILD).
h2spec: build ## HTTP/2 conformance (h2spec from the Go module proxy) against the data plane
	./scripts/h2spec.sh

test: deps lint build unit h2spec fuzz-smoke e2e e2e-node conformance ## Everything CI runs: lint, unit, integration, HTTP/2 conformance, fuzz smoke, e2e, real-node and Gateway API conformance tiers
	@echo "make test: all tiers passed"

# Fuzzing: cargo-fuzz (libFuzzer) on nightly; the targets are in fuzz/fuzz_targets, the
# handcrafted seeds in fuzz/seeds/<target>, what the fuzzer finds in fuzz/corpus/<target>
# (not checked in). Debug assertions on, so an overflow is a crash too. No leak detection:
# the upstream client keeps finished connections in its thread's idle pool, which
# LeakSanitizer would take for a leak and scan the heap for after every run (100x slower).
# `make fuzz` builds optimised (-a: release with debug assertions), for executions per
# second; the smoke tier builds unoptimised (--dev), in 5 minutes instead of 12 on 2 cores:
# it runs every seed and a few hundred mutations of them, which need no speed.
FUZZ_TARGETS := downstream_serve downstream_differential downstream_parse upstream_response upstream_chunked snapshot_decode cache_headers
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 5
FUZZ_RUN = cd fuzz && for t in $(FUZZ_TARGETS); do \
	  echo "==> fuzz $$t ($(1) s)"; mkdir -p corpus/$$t; \
	  $(CARGO) +nightly fuzz run $(2) $$t corpus/$$t seeds/$$t -- \
	    -max_total_time=$(1) -timeout=10 -detect_leaks=0 -print_final_stats=1 || exit 1; \
	done

fuzz-tools: ## Install what fuzzing needs: the nightly toolchain and cargo-fuzz
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@$(CARGO) fuzz --version >/dev/null 2>&1 || { echo "==> installing cargo-fuzz from crates.io"; $(CARGO) install cargo-fuzz --locked; }

fuzz: fuzz-tools ## Run each fuzz target for $(FUZZ_SECONDS) s (FUZZ_SECONDS=...)
	$(call FUZZ_RUN,$(FUZZ_SECONDS),-a)

fuzz-smoke: fuzz-tools ## Build the fuzz targets (unoptimised) and run each for $(FUZZ_SMOKE_SECONDS) s
	$(call FUZZ_RUN,$(FUZZ_SMOKE_SECONDS),--dev)

run: ## The demo: the data plane in standalone mode in front of sample backends
	$(CARGO) build -q -p parapet-dataplane -p parapet-tests --bins
	./scripts/demo.sh

pgo: ## Remake pgo/dataplane.profdata, the profile release builds of the data plane are optimised with (instrumented build, every benchmark shape briefly)
	./scripts/pgo-profile.sh

bench: ## Benchmarks against nginx, HAProxy and Caddy: proxying, cache hits and coalesced misses, then every path (TLS, HTTP/2, bodies, connections, route tables) with CPU and instructions per request, and what tracing costs at each sampling ratio, and what a JWT check costs
	./bench/run.sh
	./bench/cache.sh
	BENCH_SKIP_BUILD=1 ./bench/paths.sh
	BENCH_SKIP_BUILD=1 ./bench/tracing.sh
	BENCH_SKIP_BUILD=1 ./bench/jwt.sh

-include e2e/cluster.mk
-include charts/chart.mk
