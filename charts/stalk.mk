# The Helm chart charts/stalk. Included from the top-level Makefile.
#
#   make chart-crds       copy the CRD (single source: k8s/crd/) into charts/stalk/crds/
#   make chart-readme     regenerate charts/stalk/README.md from values.yaml's `# --` comments
#   make chart-bins       build (or reuse cached) helm and the helm-unittest plugin into .cluster/
#   make chart-lint       helm lint --strict with the defaults and every ci/*-values.yaml scenario
#   make chart-unittest   helm-unittest suites in charts/stalk/tests/
#   make chart-test       all chart tests (tests/chart: lint, render, server dry-run, install/upgrade/uninstall)

CHART_DIR := charts/stalk
CHART_BIN ?= .cluster/bin
CHART_HELM := $(CHART_BIN)/helm
# helm finds plugins in $HELM_PLUGINS; ours lives with the other test binaries (cluster-down keeps bin/), not in ~/.local.
CHART_PLUGINS ?= $(CHART_BIN)/helm-plugins
CHART_PYTHON ?= .venv/bin/python
CHART_SCENARIOS := $(wildcard $(CHART_DIR)/ci/*-values.yaml)

.PHONY: chart-crds chart-readme chart-bins chart-lint chart-unittest chart-test

chart-crds: ## Copy the TaskQueue CRD from k8s/crd/ into charts/stalk/crds/
	cp k8s/crd/taskqueues.stalk.dev.yaml $(CHART_DIR)/crds/taskqueues.stalk.dev.yaml

chart-readme: ## Regenerate charts/stalk/README.md from values.yaml comments
	$(CHART_PYTHON) hack/chart_readme.py

chart-bins: ## Build (or reuse cached) helm and the helm-unittest plugin
	@command -v go >/dev/null || { echo "chart: Go is required to build helm and helm-unittest" >&2; exit 1; }
	@hack/tools/build.sh helm $(CHART_BIN)
	@hack/tools/helm-unittest/build.sh $(CHART_PLUGINS)/unittest

chart-lint: chart-bins ## helm lint --strict the chart with defaults and every ci scenario
	$(CHART_HELM) lint --strict $(CHART_DIR)
	@for f in $(CHART_SCENARIOS); do echo "== $$f"; $(CHART_HELM) lint --strict $(CHART_DIR) -f $$f || exit 1; done

chart-unittest: chart-bins ## Run the chart's helm-unittest suites
	HELM_PLUGINS=$(abspath $(CHART_PLUGINS)) $(CHART_HELM) unittest --strict $(CHART_DIR)

chart-test: chart-bins ## Run tests/chart (render, server dry-run, install/upgrade/uninstall)
	$(CHART_PYTHON) -m pytest tests/chart $(PYTEST_ARGS)
