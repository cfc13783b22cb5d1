"""Cluster tests: they run against the real control plane from tests/fixtures/kube.py,
which also registers the ``cluster`` marker and builds missing binaries before the tests."""
