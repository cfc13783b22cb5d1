"""Cluster tests: they run against the real control plane from tests/fixtures/kube.py."""

from __future__ import annotations

import os

import pytest

from tests.fixtures.kube import ensure_cluster_binaries


def pytest_configure(config):
    config.addinivalue_line("markers", "cluster: needs the Kubernetes test control plane (make cluster-bins)")


def pytest_collection_modifyitems(session, config, items):
    # A cold build of the binaries takes far longer than a test's timeout, so it
    # runs here, before any test starts, and only if a cluster test was selected.
    if os.environ.get("STALK_TEST_KUBECONFIG"):
        return
    if not any(item.get_closest_marker("cluster") for item in items):
        return
    writer = config.get_terminal_writer()
    ensure_cluster_binaries(say=lambda line: writer.line(f"[cluster binaries] {line}"))
