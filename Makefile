# stalk — the two commands users run are `make run` and `make test`; everything else serves them.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help run test test-bins venv system-deps image bench lint clean

help: ## Show the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

run: venv ## Run everything locally: Redis, the API on :8000, autoscaled workers (Ctrl-C stops)
	$(VENV)/bin/stalk dev

# The Go binaries and images build in the background while the tests that need neither run (hack/test.sh).
test: ## Run the whole suite against real Redis, PostgreSQL, Celery and Kubernetes
	@hack/test.sh $(PYTEST_ARGS)

# The Kubernetes control plane, helm (+ helm-unittest) and skaffold, built from pinned Go modules.
# Cached outside the repository: only the first run on a machine builds (about 40 min on 2 cores).
test-bins:
	@if command -v go >/dev/null; then $(MAKE) --no-print-directory cluster-bins chart-bins tools-bins; \
	  else echo "make test: no Go toolchain; the Kubernetes, chart and skaffold tests need binaries built from Go modules"; fi

venv: $(VENV)/.synced ## Create .venv from the lock file (uv.lock)

$(UV):
	@echo "bootstrapping uv $(UV_VERSION) into $(TOOLS)/"
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --python python3
	@touch $@

system-deps: ## Install the Debian packages the tests need (redis-server, postgresql, prometheus), if missing
	@hack/system-deps.sh

# Local images for the real node, no registry: base (mmdebstrap), stalk (the Dockerfile), Redis, PostgreSQL.
# Cached by content hash in ~/.cache/stalk/images; see docs/images.md.
# When a real node runs in CLUSTER_DIR (make cluster-up NODE=real), the images are loaded into it;
# CLUSTER_DIR/images-values.yaml selects them for helm (`helm install ... -f .cluster/images-values.yaml`).
#   make image DEV=1                     also the DEV_RELOAD image skaffold dev runs
#   make image CONTAINERD=/path/to/sock  also import them into that containerd (namespace k8s.io)
image: ## Build (or reuse cached) the stalk, Redis and PostgreSQL images with buildah; load them into a running real node
	@hack/system-deps.sh --images
	@python3 hack/images.py $(if $(filter 1 true yes,$(DEV)),--dev) $(if $(CONTAINERD),--containerd $(CONTAINERD)) \
	  --output $(CLUSTER_DIR)/images.json
	@cp $${STALK_CACHE_DIR:-$$HOME/.cache/stalk}/images/helm-values.yaml $(CLUSTER_DIR)/images-values.yaml
	@if [ -S $(CLUSTER_DIR)/node/containerd/containerd.sock ]; then \
	  python3 hack/cluster.py load --state-dir $(CLUSTER_DIR) --images $(CLUSTER_DIR)/images.json; fi

bench: venv system-deps ## Run the benchmarks (prints ratios against baselines measured in the same run)
	$(PY) bench/core_throughput.py
	$(PY) bench/core_throughput.py --tls

lint: venv ## Check the lock file is current
	$(UV) lock --check

clean: ## Remove the virtualenv, local state and caches (not the cached Kubernetes binaries)
	rm -rf $(VENV) $(TOOLS) .run .pytest_cache .hypothesis

-include hack/cluster.mk
-include charts/stalk.mk
