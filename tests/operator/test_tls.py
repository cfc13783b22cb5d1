"""The operator on Redis over TLS only: TaskQueues whose broker.tls names a CA Secret and a client
certificate Secret are read (the Lua read over TLS) and scale; a wrong CA, a missing client
certificate or a missing Secret is that TaskQueue's condition with a reason, never a hang.

The tick runs in this process against the real API server of the test control plane (as in
test_faults.py); the team's producer is a plain Celery app writing the URL as Celery users do.
"""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from celery import Celery
from kubernetes.client.exceptions import ApiException

from stalk_operator.config import OperatorSettings
from stalk_operator.loop import BrokerSupervisor
from stalk_operator.membership import RESOLVE_INTERVAL_SECONDS, Membership
from stalk_operator.metrics import OperatorMetrics
from stalk_operator.spec import parse_taskqueue
from stalk_operator.state import Registry, TargetCache
from tests.operator.conftest import drain_writer, taskqueue
from tests.operator.test_faults import Namespace, run_ticks

pytestmark = pytest.mark.cluster

TASKS_PER_REPLICA = 5


@pytest.fixture
def namespace(kube_api, kube_namespace, taskqueue_crd) -> Namespace:
    return Namespace(kube_api, kube_namespace)


def tls_secrets(ns: Namespace, certs, *, ca=None) -> None:
    """The CA and a client certificate, as cert-manager would write them."""
    ns.secret("redis-ca", **{"ca.crt": (ca or certs.ca).read_text()})
    ns.core.create_namespaced_secret(ns.ns, {
        "metadata": {"name": "redis-client"}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": certs.client_cert.read_text(), "tls.key": certs.client_key.read_text()}})


def publish(server, db: int, queue: str, n: int) -> None:
    app = Celery("team", broker=server.url(db), set_as_current=False)
    try:
        for _ in range(n):
            app.send_task("team.work", queue=queue)
    finally:
        app.close()


def tls_taskqueue(ns: Namespace, name: str, server, db: int, tls: dict) -> dict:
    ns.deployment(f"{name}-workers")
    body = taskqueue(name, queue=name, broker_url=f"rediss://127.0.0.1:{server.port}/{db}", target=f"{name}-workers",
                     maxReplicas=5, tasksPerReplica=TASKS_PER_REPLICA)
    body["spec"]["broker"]["tls"] = tls
    return ns.taskqueue(body)


CLIENT = {"caSecretRef": {"name": "redis-ca"}, "clientCertSecretRef": {"name": "redis-client"}}


@pytest.mark.parametrize(("server_name", "tls"), [
    ("tls_redis", {"caSecretRef": {"name": "redis-ca"}}),
    ("mtls_redis", CLIENT),
], ids=["CA only", "CA and client certificate"])
def test_taskqueues_on_tls_brokers_are_read_and_scale(request, namespace, tls_certs, server_name, tls):
    server = request.getfixturevalue(server_name)
    tls_secrets(namespace, tls_certs)
    server.client(20).flushdb()
    publish(server, 20, "emails", 12)
    body = tls_taskqueue(namespace, "emails", server, 20, tls)
    supervisor = run_ticks(namespace, [body])
    assert namespace.replicas("emails-workers") == math.ceil(12 / TASKS_PER_REPLICA)
    assert namespace.condition("emails", "MetricsAvailable")["status"] == "True"
    assert namespace.condition("emails", "Ready")["status"] == "True"
    assert namespace.warnings("emails") == []
    # The files the Secrets were written to are the operator's alone.
    state = next(iter(supervisor.registry))
    assert state.broker_url.startswith(f"rediss://127.0.0.1:{server.port}/20?")
    directory = supervisor.membership._tls_files.directory
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in directory.iterdir())


@pytest.mark.parametrize(("case", "condition", "reason", "says"), [
    ("wrong CA", "MetricsAvailable", "BrokerTLSFailed", "certificate verify failed"),
    ("no client certificate", "MetricsAvailable", "BrokerTLSFailed", "set broker.tls.clientCertSecretRef"),
    ("CA Secret missing", "Ready", "BrokerSecretNotFound", "Secret redis-ca-nowhere has no key 'ca.crt'"),
], ids=["wrong CA", "no client certificate", "CA Secret missing"])
def test_a_tls_fault_is_the_taskqueues_condition_with_the_reason(namespace, tls_certs, mtls_redis, case, condition,
                                                                 reason, says):
    tls_secrets(namespace, tls_certs, ca=tls_certs.wrong_ca if case == "wrong CA" else None)
    tls = {"wrong CA": CLIENT, "no client certificate": {"caSecretRef": {"name": "redis-ca"}},
           "CA Secret missing": {**CLIENT, "caSecretRef": {"name": "redis-ca-nowhere"}}}[case]
    body = tls_taskqueue(namespace, "broken", mtls_redis, 21, tls)
    started = time.monotonic()
    run_ticks(namespace, [body])
    assert time.monotonic() - started < 30, "a TLS failure is not a hang"
    found = namespace.condition("broken", condition)
    assert (found.get("status"), found.get("reason")) == ("False", reason), found
    assert says in found["message"] and "\n" not in found["message"], found["message"]
    assert "BEGIN" not in found["message"]  # never a Secret's content
    assert [e.reason for e in namespace.warnings("broken")] in (["MetricsUnavailable"], [reason])
    assert namespace.replicas("broken-workers") == 0


def test_the_crd_refuses_tls_on_a_plain_url(namespace):
    body = taskqueue("plain", queue="plain", broker_url="redis://127.0.0.1:6379/0", target="plain-workers",
                     maxReplicas=1)
    body["spec"]["broker"]["tls"] = {"caSecretRef": {"name": "redis-ca"}}
    with pytest.raises(ApiException) as refused:
        namespace.taskqueue(body)
    assert refused.value.status == 422 and "broker.tls needs a rediss:// URL" in refused.value.body


def test_tls_from_a_secret_url_is_written_once_per_content(namespace, tls_certs, mtls_redis):
    """Two TaskQueues on one broker share its Secrets: same files, same URL, so one broker loop."""
    tls_secrets(namespace, tls_certs)
    namespace.secret("redis-url", url=f"rediss://127.0.0.1:{mtls_redis.port}/22\n")
    bodies = []
    for name in ("first", "second"):
        namespace.deployment(f"{name}-workers")
        body = taskqueue(name, queue=name, broker_url="unused", target=f"{name}-workers", maxReplicas=2)
        body["spec"]["broker"] = {"secretKeyRef": {"name": "redis-url", "key": "url"}, "tls": CLIENT}
        bodies.append(namespace.taskqueue(body))
    supervisor = run_ticks(namespace, bodies, ticks=1)
    membership: Membership = supervisor.membership
    assert len(membership.brokers()) == 1
    assert len(list(membership._tls_files.directory.iterdir())) == 3  # CA, certificate, key
    for name in ("first", "second"):
        assert namespace.condition(name, "MetricsAvailable")["status"] == "True"


def test_a_rotated_ca_is_picked_up_by_the_running_operator(namespace, tls_certs, mtls_redis):
    """The Secrets are read again every RESOLVE_INTERVAL_SECONDS: a CA replaced by a wrong one fails
    the next read after that, and the right one put back makes it read again (new files, new URL)."""
    tls_secrets(namespace, tls_certs)
    body = tls_taskqueue(namespace, "rotated", mtls_redis, 23, CLIENT)
    now = [1_000_000.0]
    registry = Registry()
    registry.upsert(parse_taskqueue(body), None)
    supervisor = BrokerSupervisor(registry=registry, targets=TargetCache(), kube=namespace.api,
                                  metrics=OperatorMetrics(), settings=OperatorSettings(status_interval_seconds=0),
                                  is_leader=lambda: True, clock=lambda: now[0])

    def tick_after(seconds: float) -> dict:
        now[0] += seconds

        async def run():
            await supervisor.tick_once()
            await drain_writer(supervisor.writer)

        asyncio.run(run())
        return namespace.condition("rotated", "MetricsAvailable")

    assert tick_after(0)["status"] == "True"
    namespace.core.patch_namespaced_secret("redis-ca", namespace.ns,
                                           {"stringData": {"ca.crt": tls_certs.wrong_ca.read_text()}})
    assert tick_after(1)["status"] == "True"  # not yet looked at again
    assert tick_after(RESOLVE_INTERVAL_SECONDS)["reason"] == "BrokerTLSFailed"
    namespace.core.patch_namespaced_secret("redis-ca", namespace.ns,
                                           {"stringData": {"ca.crt": tls_certs.ca.read_text()}})
    assert tick_after(RESOLVE_INTERVAL_SECONDS)["status"] == "True"
