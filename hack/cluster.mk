# Test control plane: real etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler and kwok fake nodes, built from pinned Go modules.
# Included from the top-level Makefile; see docs/control-plane.md.
#
#   make cluster-up        build (or reuse cached) binaries, start a cluster in $(CLUSTER_DIR)
#   make cluster-up NODE=real   the same control plane with one real node (containerd, kubelet) instead of kwok's
#   make cluster-down      stop it and remove its state
#   make cluster-status    show its processes
#   make cluster-bins      only build/link etcd, kube-*, kubectl, kwok into $(CLUSTER_BIN)
#   make tools-bins        build/link helm and skaffold into $(CLUSTER_BIN) (slow; not needed by cluster-up)
#   make tools-modules     regenerate hack/tools/*/go.mod from hack/tools/versions.env

CLUSTER_HACK := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
CLUSTER_DIR ?= .cluster
CLUSTER_BIN ?= .cluster/bin
CLUSTER_NODES ?= 3
# kwok: fake nodes where pods only appear to run (fast, for scale tests); real: one node where they run.
NODE ?= kwok
CLUSTER_PYTHON ?= python3

.PHONY: cluster-up cluster-down cluster-status cluster-bins tools-bins tools-modules cluster-build-deps

# /usr/bin/time -v records each cold build's wall time and peak memory next to
# the binaries; it comes from Debian's `time` package. The build still works
# without it when it cannot be installed.
cluster-build-deps:
	@command -v go >/dev/null || { echo "cluster: Go is required to build the control plane (none on PATH)" >&2; exit 1; }
	@[ -x /usr/bin/time ] || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		echo "cluster: installing Debian's time package for build measurements" && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; } || true

cluster-bins: cluster-build-deps ## Build (or reuse cached) etcd, kube-*, kubelet, kubectl, kwok, CoreDNS into .cluster/bin
	@$(CLUSTER_HACK)/tools/build.sh kube $(CLUSTER_BIN)
	@$(CLUSTER_HACK)/tools/build.sh etcd $(CLUSTER_BIN)
	@$(CLUSTER_HACK)/tools/build.sh kwok $(CLUSTER_BIN)
	@$(CLUSTER_HACK)/tools/build.sh coredns $(CLUSTER_BIN)
	@$(CLUSTER_HACK)/tools/build.sh pause $(CLUSTER_BIN)
	@$(CLUSTER_HACK)/tools/build.sh registry $(CLUSTER_BIN)

tools-bins: cluster-build-deps ## Build (or reuse cached) helm and skaffold into .cluster/bin
	@$(CLUSTER_HACK)/tools/build.sh helm $(CLUSTER_BIN)
	@$(CLUSTER_HACK)/tools/build.sh skaffold $(CLUSTER_BIN)

tools-modules: ## Regenerate hack/tools/*/go.mod from hack/tools/versions.env
	GOTOOLCHAIN=local $(CLUSTER_PYTHON) $(CLUSTER_HACK)/tools/gen-modules.py

cluster-up: cluster-bins ## Start a Kubernetes test control plane in CLUSTER_DIR (default .cluster)
	@$(if $(filter real,$(NODE)),$(CLUSTER_HACK)/system-deps.sh --node)
	@$(CLUSTER_PYTHON) $(CLUSTER_HACK)/cluster.py up --state-dir $(CLUSTER_DIR) --bin-dir $(CLUSTER_BIN) --nodes $(CLUSTER_NODES) --node $(NODE)

cluster-down: ## Stop the cluster in CLUSTER_DIR and remove its state
	@$(CLUSTER_PYTHON) $(CLUSTER_HACK)/cluster.py down --state-dir $(CLUSTER_DIR)

cluster-status: ## Show the processes of the cluster in CLUSTER_DIR
	@$(CLUSTER_PYTHON) $(CLUSTER_HACK)/cluster.py status --state-dir $(CLUSTER_DIR)
