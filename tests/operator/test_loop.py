"""One tick of the operator against a real Redis and real Celery publishing (no cluster needed).

The API server is replaced by ``RecordingKube``, an in-memory stand-in that records every write:
the tick's decisions are what is under test here; the real API server is in the cluster tests.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

import pytest
from celery import Celery

from stalk_operator import status as st
from stalk_operator.config import OperatorSettings
from stalk_operator.kube import Scale
from stalk_operator.loop import BrokerSupervisor
from stalk_operator.membership import BrokerKey
from stalk_operator.metrics import OperatorMetrics
from stalk_operator.spec import parse_taskqueue
from stalk_operator.state import Registry, TargetCache
from stalk_operator.writer import StatusWriter
from tests.fixtures.wait import free_port, wait_for_async
from tests.operator.conftest import drain_writer, tick

NOW = 1_700_000_000.0


@dataclass
class RecordingKube:
    replicas: dict[str, int] = field(default_factory=dict)  # target name -> replicas
    scales: list[tuple[str, int]] = field(default_factory=list)
    statuses: list[dict] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)

    def read_scale(self, namespace, kind, name):
        return Scale(self.replicas[name], f"app={name}") if name in self.replicas else None

    def patch_scale(self, namespace, kind, name, replicas):
        self.replicas[name] = replicas
        self.scales.append((name, replicas))
        return str(len(self.scales))

    def pod_costs(self, namespace, selector):
        return {}

    def patch_status(self, namespace, name, status):
        self.statuses.append(status)
        return True

    def event(self, tq, type_, reason, message):
        self.events.append((type_, reason, message))


def body(name: str, url: str, target: str = "workers", **spec) -> dict:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": name, "generation": 1},
        "spec": {"queue": name, "broker": {"url": url}, "maxReplicas": 5, "tasksPerReplica": 5,
                 "scaleTargetRef": {"kind": "Deployment", "name": target}, **spec},
    }


def make_supervisor(kube: RecordingKube, clock=lambda: NOW) -> tuple[BrokerSupervisor, Registry]:
    registry = Registry()
    supervisor = BrokerSupervisor(registry=registry, targets=TargetCache(), kube=kube, metrics=OperatorMetrics(),
                    settings=OperatorSettings(status_interval_seconds=5), is_leader=lambda: True, clock=clock)
    return supervisor, registry


@pytest.fixture
def producer(redis_urls):
    app = Celery("producer", broker=redis_urls[0], set_as_current=False)
    yield app
    app.close()


def test_backlog_scales_up_with_an_event_and_status(redis_urls, producer):
    kube = RecordingKube(replicas={"workers": 0})
    supervisor, registry = make_supervisor(kube)
    registry.upsert(parse_taskqueue(body("emails", redis_urls[0])), None)
    for _ in range(11):
        producer.send_task("demo.send", queue="emails")

    tick(supervisor)

    assert kube.scales == [("workers", 3)]
    assert kube.events[0][:2] == ("Normal", "ScaledUp") and "0 -> 3 replicas" in kube.events[0][2]
    written = kube.statuses[-1]
    assert written["waiting"] == 11 and written["replicas"] == 3 and written["desiredReplicas"] == 3
    assert st.condition_status(written["conditions"], st.READY) == "True"
    assert "policyHistory" in written and written["lastScaleTime"] == st.utc_iso(NOW)
    samples = {(m.name, s.labels.get("taskqueue")): s.value
               for m in supervisor.metrics.registry.collect() for s in m.samples}
    assert samples[("stalk_taskqueue_waiting", "emails")] == 11
    # The names waiting had before, kept for one release with the same value.
    assert written["depth"] == 11 and samples[("stalk_taskqueue_depth", "emails")] == 11
    assert samples[("stalk_taskqueue_desired_replicas", "emails")] == 3
    assert samples[("stalk_taskqueue_max_replicas", "emails")] == 5


def test_status_is_written_only_when_a_shown_value_changes(redis_urls, producer):
    now = [NOW]
    kube = RecordingKube(replicas={"workers": 1})
    supervisor, registry = make_supervisor(kube, clock=lambda: now[0])
    registry.upsert(parse_taskqueue(body("emails", redis_urls[0])), None)
    producer.send_task("demo.send", queue="emails")
    tick(supervisor)
    assert len(kube.statuses) == 1
    now[0] += 1
    tick(supervisor)  # nothing changed: nothing to write
    assert len(kube.statuses) == 1
    producer.send_task("demo.send", queue="emails")
    now[0] += 1
    tick(supervisor)  # only the waiting count moved, and the status interval has not passed
    assert len(kube.statuses) == 1
    now[0] += 5
    tick(supervisor)  # now it has: the waiting count is written, with the history riding along
    assert len(kube.statuses) == 2 and kube.statuses[1]["waiting"] == 2
    assert set(kube.statuses[1]) <= {"waiting", "depth", "oldestWaitSeconds", "policyHistory", "lastDecision"}


def test_taskqueues_on_one_redis_share_one_broker_loop(redis_urls):
    kube = RecordingKube(replicas={"a": 0, "b": 0})
    supervisor, registry = make_supervisor(kube)
    registry.upsert(parse_taskqueue(body("q-a", redis_urls[0], target="a")), None)
    registry.upsert(parse_taskqueue(body("q-b", redis_urls[0], target="b")), None)
    registry.upsert(parse_taskqueue(body("q-c", redis_urls[1], target="a")), None)

    async def run():
        await supervisor.supervise()
        keys = supervisor.running_brokers()
        await supervisor.stop_brokers()
        return keys

    assert asyncio.run(run()) == {BrokerKey(redis_urls[0], ""), BrokerKey(redis_urls[1], "")}


def test_unreadable_redis_keeps_replicas_and_warns_once():
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    kube = RecordingKube(replicas={"workers": 2})
    supervisor, registry = make_supervisor(kube)
    registry.upsert(parse_taskqueue(body("emails", url)), None)

    tick(supervisor)
    tick(supervisor)

    assert kube.scales == []
    assert [e[:2] for e in kube.events] == [("Warning", "MetricsUnavailable")]
    conditions = kube.statuses[-1]["conditions"]
    assert st.condition_status(conditions, st.METRICS_AVAILABLE) == "False"
    assert supervisor.metrics.broker_errors.labels(f"redis://127.0.0.1:{url.split(':')[2]}").\
        _value.get() == 2  # noqa: SLF001 - reading the counter back


def test_missing_target_is_reported(redis_urls):
    kube = RecordingKube()
    supervisor, registry = make_supervisor(kube)
    registry.upsert(parse_taskqueue(body("emails", redis_urls[0], target="nowhere")), None)
    tick(supervisor)
    cond = next(c for c in kube.statuses[-1]["conditions"] if c["type"] == st.READY)
    assert (cond["status"], cond["reason"]) == ("False", "TargetNotFound") and "nowhere" in cond["message"]


def test_two_taskqueues_on_one_workload_both_refuse_to_scale(redis_urls, producer):
    kube = RecordingKube(replicas={"workers": 0})
    supervisor, registry = make_supervisor(kube)
    registry.upsert(parse_taskqueue(body("q-a", redis_urls[0])), None)
    registry.upsert(parse_taskqueue(body("q-b", redis_urls[0])), None)
    for _ in range(20):
        producer.send_task("demo.send", queue="q-a")
    tick(supervisor)
    assert kube.scales == []
    for name, other in (("q-a", "q-b"), ("q-b", "q-a")):
        cond = next(c for c in registry.get(("ns", name)).status["conditions"] if c["type"] == st.READY)
        assert (cond["status"], cond["reason"]) == ("False", "TargetConflict") and other in cond["message"]


class BlockedStatusKube(RecordingKube):
    """Status PATCHes hang until released, as on a slow API server."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.release = threading.Event()

    def patch_status(self, namespace, name, status):
        self.release.wait(30)
        return super().patch_status(namespace, name, status)


def test_scale_patches_do_not_wait_for_status_writes(redis_urls, producer):
    # More TaskQueues than API slots, every status write stuck: the tick still scales them all.
    names = [f"q{i}" for i in range(3 * OperatorSettings().api_concurrency)]
    kube = BlockedStatusKube(replicas=dict.fromkeys(names, 0))
    supervisor, registry = make_supervisor(kube)
    for name in names:
        registry.upsert(parse_taskqueue(body(name, redis_urls[0], target=name)), None)
        for _ in range(6):
            producer.send_task("demo.send", queue=name)

    async def run():
        writer = asyncio.create_task(supervisor.writer.run())
        await asyncio.wait_for(supervisor.tick_once(), 10)
        scaled, written = sorted(kube.scales), len(kube.statuses)
        kube.release.set()
        await wait_for_async(lambda: not supervisor.writer.pending() or writer.done(), timeout=30,
                             what="the status writes")
        writer.cancel()
        return scaled, written

    scaled, written_during_tick = asyncio.run(run())
    assert scaled == sorted((name, 2) for name in names) and written_during_tick == 0
    assert len(kube.statuses) == len(names)


def test_status_writer_writes_urgent_first_and_only_the_latest_view():
    kube = RecordingKube()
    writer = StatusWriter(kube, OperatorMetrics(), slots=1, per_second=1000, may_write=lambda: True)
    registry = Registry()
    a, b = (registry.upsert(parse_taskqueue(body(name, "redis://unused")), None) for name in ("a", "b"))

    def view(waiting: int, ready: bool = True) -> st.DesiredStatus:
        return st.DesiredStatus(1, (st.Condition(st.READY, ready, "Scaling" if ready else "TargetNotFound", "m"),),
                       measured=(waiting, 0, 0, 0))

    writer.submit(a, view(1), NOW, urgent=False)
    writer.submit(a, view(2), NOW, urgent=False)  # replaces the one not yet written
    writer.submit(b, view(5, ready=False), NOW, urgent=True)

    asyncio.run(drain_writer(writer))
    assert [s.get("waiting") for s in kube.statuses] == [5, 2]
    assert a.desired_written == view(2) and a.status["waiting"] == 2
