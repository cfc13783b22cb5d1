"""Operator tests. Cluster tests (marked ``cluster``) use the control plane from tests/fixtures/kube.py."""

from __future__ import annotations


def pytest_configure(config):
    # Also registered by tests/cluster/conftest.py; repeated so tests/operator runs on its own.
    config.addinivalue_line("markers", "cluster: needs the Kubernetes test control plane (make cluster-bins)")
