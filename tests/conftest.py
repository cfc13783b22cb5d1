"""Fixtures for the whole suite: real servers, started once per session."""

from tests.fixtures.servers import (  # noqa: F401 - fixtures are found by name
    postgres_server,
    postgres_url,
    redis_server,
    redis_urls,
)
from tests.fixtures.stack import stack, stack_factory  # noqa: F401
from tests.fixtures.tls import mtls_redis, tls_certs, tls_redis  # noqa: F401
# Kubernetes test cluster: fixtures, the `cluster` marker, binaries built before cluster tests.
# Tests that need the Go binaries or images run last, after `make test`'s background build.
pytest_plugins = ["tests.fixtures.kube", "tests.fixtures.binaries"]
