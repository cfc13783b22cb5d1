"""Faults stay with the TaskQueue that has them.

The operator's tick runs in this process against the real API server of the test control plane
(kwok nodes), real Redis, and a team's own Celery app publishing (``Celery("team", ...)``, nothing
of stalk's). Each kind of fault a user can make (a Secret value that is not a Redis URL, a missing
Secret or key, a Redis that does not answer or refuses the password, a target of the wrong kind or
none) must show on that TaskQueue (a Ready or MetricsAvailable condition with a reason, and one
Warning event) and change nothing for the others: they scale exactly as they would alone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from celery import Celery
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from kubernetes import client

from stalk_operator.config import OperatorSettings
from stalk_operator.kube import KubeApi
from stalk_operator.loop import BrokerSupervisor
from stalk_operator.metrics import OperatorMetrics
from stalk_operator.spec import parse_taskqueue
from stalk_operator.state import Registry, TargetCache
from tests.fixtures.kube import poll
from tests.fixtures.wait import free_port
from tests.operator.conftest import GROUP, PLURAL, VERSION, drain_writer, taskqueue, worker_deployment

pytestmark = pytest.mark.cluster

TASKS_PER_REPLICA = 5
ACL_USER = "team"


@dataclass(frozen=True)
class Fault:
    """One way a TaskQueue can be broken, and what it must then say: (condition type, reason)."""

    name: str
    condition: str
    reason: str


FAULTS = [
    Fault("secret-not-a-url", "Ready", "BrokerInvalid"),  # e.g. secretKeyRef pointing at API tokens
    Fault("secret-url-bad-port", "Ready", "BrokerInvalid"),
    Fault("spec-url-bad-port", "Ready", "BrokerInvalid"),  # passes the CRD's prefix rule
    Fault("secret-missing", "Ready", "BrokerSecretNotFound"),
    Fault("secret-key-missing", "Ready", "BrokerSecretNotFound"),
    Fault("redis-unreachable", "MetricsAvailable", "RedisUnavailable"),
    Fault("redis-wrong-password", "MetricsAvailable", "BrokerAuthFailed"),
    Fault("target-wrong-kind", "Ready", "TargetNotFound"),
    Fault("target-missing", "Ready", "TargetNotFound"),
]
API_TOKENS = "tok_3f9a1c,tok_77b2e0"  # what a Secret of API tokens holds: never to be shown


class Namespace:
    """The test's namespace on the real API server."""

    def __init__(self, api_client: client.ApiClient, name: str) -> None:
        self.ns = name
        self.api = KubeApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def deployment(self, name: str) -> None:
        self.apps.create_namespaced_deployment(self.ns, worker_deployment(name))

    def secret(self, name: str, **data: str) -> None:
        self.core.create_namespaced_secret(self.ns, client.V1Secret(
            metadata=client.V1ObjectMeta(name=name), string_data=data))

    def taskqueue(self, body: dict) -> dict:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, body)

    def replicas(self, name: str) -> int:
        return self.apps.read_namespaced_deployment(name, self.ns).spec.replicas

    def condition(self, tq: str, type_: str) -> dict:
        status = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, tq).get("status") or {}
        return next((c for c in status.get("conditions", []) if c["type"] == type_), {})

    def warnings(self, tq: str) -> list[client.CoreV1Event]:
        items = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={tq}").items
        return [e for e in items if e.type == "Warning"]


@pytest.fixture
def namespace(kube_api, kube_namespace, taskqueue_crd) -> Namespace:
    return Namespace(kube_api, kube_namespace)


@pytest.fixture
def team(redis_urls) -> Iterator[Celery]:
    """The team's own producer: a plain Celery app."""
    app = Celery("team", broker=redis_urls[0], set_as_current=False)
    yield app
    app.close()


@pytest.fixture
def wrong_password_url(redis_server, redis_urls) -> Iterator[str]:
    """A Redis user that exists, with the wrong password in the URL."""
    admin = redis.Redis(port=redis_server.port)
    admin.acl_setuser(ACL_USER, enabled=True, passwords=["+right"], keys=["*"], commands=["+@all"])
    db = redis_urls[0].rsplit("/", 1)[1]
    yield f"redis://{ACL_USER}:wrong@127.0.0.1:{redis_server.port}/{db}"
    admin.acl_deluser(ACL_USER)


def broken_taskqueue(ns: Namespace, fault: Fault, name: str, queue: str, broker_url: str, wrong_password: str) -> dict:
    """A TaskQueue (and what it points at) broken in the way ``fault`` says; everything else is right."""
    target = f"{name}-workers"
    ns.deployment(target)
    body = taskqueue(name, queue=queue, broker_url=broker_url, target=target, maxReplicas=5,
                     tasksPerReplica=TASKS_PER_REPLICA)
    spec = body["spec"]
    match fault.name:
        case "secret-not-a-url":
            ns.secret(name, tokens=API_TOKENS)
            spec["broker"] = {"secretKeyRef": {"name": name, "key": "tokens"}}
        case "secret-url-bad-port":
            ns.secret(name, url="redis://redis:63x79/0")
            spec["broker"] = {"secretKeyRef": {"name": name, "key": "url"}}
        case "spec-url-bad-port":
            spec["broker"] = {"url": "redis://redis:63x79/0"}
        case "secret-missing":
            spec["broker"] = {"secretKeyRef": {"name": f"{name}-nowhere", "key": "url"}}
        case "secret-key-missing":
            ns.secret(name, other=broker_url)
            spec["broker"] = {"secretKeyRef": {"name": name, "key": "url"}}
        case "redis-unreachable":
            spec["broker"] = {"url": f"redis://127.0.0.1:{free_port()}/0"}  # nothing listens there
        case "redis-wrong-password":
            spec["broker"] = {"url": wrong_password}
        case "target-wrong-kind":
            spec["scaleTargetRef"]["kind"] = "StatefulSet"  # it is a Deployment
        case "target-missing":
            spec["scaleTargetRef"]["name"] = f"{name}-nowhere"
    return ns.taskqueue(body)


def run_ticks(ns: Namespace, bodies: list[dict], ticks: int = 2) -> BrokerSupervisor:
    """Tick the operator ``ticks`` times over these TaskQueues (as the leader), status written each time."""
    registry = Registry()
    for body in bodies:
        registry.upsert(parse_taskqueue(body), None)
    supervisor = BrokerSupervisor(registry=registry, targets=TargetCache(), kube=ns.api, metrics=OperatorMetrics(),
                    settings=OperatorSettings(status_interval_seconds=0), is_leader=lambda: True)

    async def run():
        for _ in range(ticks):
            await supervisor.tick_once()
            await drain_writer(supervisor.writer)

    asyncio.run(run())
    return supervisor


_example = itertools.count()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(backlogs=hs.lists(hs.integers(0, 23), min_size=1, max_size=3),
       faults=hs.lists(hs.sampled_from(FAULTS), min_size=1, max_size=4))
def test_valid_taskqueues_scale_as_if_alone_whatever_the_broken_ones_next_to_them(
        namespace, team, redis_urls, wrong_password_url, caplog, backlogs, faults):
    n = next(_example)
    ns = namespace
    valid, alone, expected = [], [], {}
    for i, backlog in enumerate(backlogs):
        queue = f"e{n}-q{i}"
        for _ in range(backlog):
            team.send_task("team.work", queue=queue)
        for group, bodies in (("mix", valid), ("alone", alone)):
            target = f"e{n}-{group}-{i}"
            ns.deployment(target)
            bodies.append(ns.taskqueue(taskqueue(f"e{n}-{group}-{i}", queue=queue, broker_url=redis_urls[0],
                                                 target=target, maxReplicas=5, tasksPerReplica=TASKS_PER_REPLICA)))
        expected[i] = min(5, math.ceil(backlog / TASKS_PER_REPLICA))
    broken = [(fault, broken_taskqueue(ns, fault, f"e{n}-bad-{j}", f"e{n}-bad-{j}", redis_urls[0], wrong_password_url))
              for j, fault in enumerate(faults)]

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_ticks(ns, valid + [body for _, body in broken])
    run_ticks(ns, alone)

    for i in range(len(backlogs)):
        mixed, by_itself = ns.replicas(f"e{n}-mix-{i}"), ns.replicas(f"e{n}-alone-{i}")
        assert mixed == by_itself == expected[i], (i, mixed, by_itself, expected[i])
        assert ns.condition(f"e{n}-mix-{i}", "Ready")["status"] == "True"
    for fault, body in broken:
        name = body["metadata"]["name"]
        cond = ns.condition(name, fault.condition)
        assert (cond.get("status"), cond.get("reason")) == ("False", fault.reason), (fault.name, cond)
        assert API_TOKENS not in cond["message"] and "tok_" not in cond["message"]
        warnings = ns.warnings(name)
        # Two ticks, one fault: announced once.
        assert len(warnings) == 1, (fault.name, [(e.reason, e.message) for e in warnings])
        assert ns.replicas(f"{name}-workers") == 0
    # A fault is the TaskQueue's, not the operator's: nothing logged as an error, no traceback.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text


def test_a_target_of_the_wrong_kind_says_which_kind_exists(namespace, redis_urls, wrong_password_url):
    fault = next(f for f in FAULTS if f.name == "target-wrong-kind")
    body = broken_taskqueue(namespace, fault, "sts", "sts", redis_urls[0], wrong_password_url)
    run_ticks(namespace, [body], ticks=1)
    message = namespace.condition("sts", "Ready")["message"]
    assert "StatefulSet sts-workers not found" in message and "set scaleTargetRef.kind to Deployment" in message


def test_a_secret_that_is_fixed_is_picked_up_and_the_queue_scales(namespace, team, redis_urls, wrong_password_url):
    fault = next(f for f in FAULTS if f.name == "secret-not-a-url")
    body = broken_taskqueue(namespace, fault, "fixme", "fixme", redis_urls[0], wrong_password_url)
    for _ in range(7):
        team.send_task("team.work", queue="fixme")
    registry_body = [body]
    run_ticks(namespace, registry_body, ticks=1)
    assert namespace.condition("fixme", "Ready")["reason"] == "BrokerInvalid"
    namespace.core.patch_namespaced_secret("fixme", namespace.ns, {"stringData": {"tokens": redis_urls[0]}})
    run_ticks(namespace, registry_body, ticks=1)  # a new operator, as after a restart: the Secret is read again
    assert namespace.replicas("fixme-workers") == 2
    assert namespace.condition("fixme", "Ready")["status"] == "True"


def test_the_operator_goes_on_scaling_next_to_a_broken_taskqueue(namespace, start_operator, team, redis_urls,
                                                                 wrong_password_url):
    """The operator as deployed (a subprocess): a Secret of API tokens as broker once stopped every tick."""
    ns = namespace
    broken_taskqueue(ns, FAULTS[0], "tokens", "tokens", redis_urls[0], wrong_password_url)
    ns.deployment("workers")
    ns.taskqueue(taskqueue("work", queue="work", broker_url=redis_urls[0], target="workers", maxReplicas=5,
                           tasksPerReplica=TASKS_PER_REPLICA))
    op = start_operator()
    for _ in range(11):
        team.send_task("team.work", queue="work")
    poll(lambda: ns.replicas("workers") == 3, timeout=30, what="the valid TaskQueue scaled to ceil(11 / 5) = 3")
    poll(lambda: ns.condition("tokens", "Ready").get("reason") == "BrokerInvalid", timeout=30,
         what="Ready=False BrokerInvalid on the broken one")
    assert [e.reason for e in ns.warnings("tokens")] == ["BrokerInvalid"]
    for _ in range(10):
        team.send_task("team.work", queue="work")
    poll(lambda: ns.replicas("workers") == 5, timeout=30, what="still scaling: ceil(21 / 5) = 5")
    assert op.http_status("/healthz") == 200
    log = op.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    assert API_TOKENS not in log
