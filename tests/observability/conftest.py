def pytest_configure(config):
    # Also registered by tests/cluster/conftest.py; repeated so tests/observability runs on its own.
    config.addinivalue_line("markers", "cluster: needs the Kubernetes test control plane (make cluster-bins)")
