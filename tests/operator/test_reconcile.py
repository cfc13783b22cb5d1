"""The reconcile's rules, one table, run against both actuators: Kubernetes and local processes.

``reconcile.plan`` then ``reconcile.apply`` is the one path from a queue's numbers to its replicas,
in the operator and in ``stalk dev``. Each row is a rule; each rule must come out the same
through ``KubeActuator`` (the scale subresource, against the in-memory ``RecordingKube`` from
test_loop.py) and through ``LocalActuator`` (real worker processes on this machine). Which
workers are busy is what the workers would answer to Celery's ``inspect().active()``.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field

import pytest

from stalk_operator import policy
from stalk_operator.kube import Scale
from stalk_operator.kube_actuator import KubeActuator
from stalk_operator.local_mode import LocalActuator
from stalk_operator.metrics import OperatorMetrics
from stalk_operator.policy import Behavior, History, ScalingSpec
from stalk_operator.reconcile import apply, plan
from stalk_operator.spec import parse_taskqueue
from stalk_operator.state import Registry, TargetCache
from stalk_workers.queue_reader import QueueStats
from stalk_workers.queues import QueueSpec
from tests.fixtures.wait import wait_until
from tests.operator.test_loop import RecordingKube, body

NOW = 1_700_000_000.0
# Windows of zero: a row is one tick, and what it shows is the rule, not the stabilization.
SPEC = ScalingSpec(max_replicas=5, tasks_per_replica=5, scale_down=Behavior(stabilization_seconds=0),
                   idle_seconds_before_zero=120)


@dataclass(frozen=True)
class Row:
    current: int
    waiting: int
    in_flight: int = 0
    busy: frozenset[int] = frozenset()  # which workers (by age, 0 the oldest) run a task
    spec: ScalingSpec = SPEC
    # Expected: replicas afterwards, the decision's reason, and which workers are left.
    replicas: int = 0
    reason: str = ""
    survivors: frozenset[int] | None = None


ROWS = {
    "a backlog scales up": Row(current=1, waiting=11, replicas=3, reason=policy.SCALE_UP_FOR_BACKLOG),
    "a load within tolerance keeps the replicas": Row(current=2, waiting=10, replicas=2, reason=policy.STEADY),
    "never above maxReplicas": Row(current=1, waiting=100, replicas=5, reason=policy.AT_MAX_REPLICAS),
    "paused leaves the replicas to people": Row(current=2, waiting=50, spec=ScalingSpec(paused=True), replicas=2,
                                                reason=policy.PAUSED),
    "an idle queue keeps one worker until idleSecondsBeforeZero": Row(current=1, waiting=0, replicas=1,
                                                                      reason=policy.WAITING_FOR_IDLE),
    "busy workers are not scaled away (decided again once they are known)": Row(
        current=3, waiting=0, in_flight=2, busy=frozenset({0, 1}), replicas=2, reason=policy.KEEPING_BUSY_WORKERS,
        survivors=frozenset({0, 1})),
    "a scale-down stops idle workers first": Row(
        current=3, waiting=0, in_flight=1, busy=frozenset({0}), replicas=1, reason=policy.SCALE_DOWN_FOR_LOAD,
        survivors=frozenset({0})),
    # A 45 s window holds all 4; idle spare replicas go at once (idleReplicaSeconds 0), once the
    # workers said which are busy: the two busy ones stay.
    "idle spare replicas are released before the window, busy ones kept": Row(
        current=4, waiting=0, in_flight=2, busy=frozenset({0, 1}),
        spec=ScalingSpec(max_replicas=5, tasks_per_replica=5, idle_replica_seconds=0), replicas=2,
        reason=policy.RELEASING_IDLE_REPLICAS, survivors=frozenset({0, 1})),
}


@dataclass
class CostKube(RecordingKube):
    """RecordingKube with pods: ``pod-<i>`` for the i-th replica, and their deletion costs."""

    costs: dict[str, str | None] = field(default_factory=dict)

    def read_scale(self, namespace, kind, name):
        return Scale(self.replicas[name], "app=workers")

    def pod_costs(self, namespace, selector):
        return dict(self.costs)

    def set_pod_cost(self, namespace, pod, cost):
        self.costs[pod] = cost


async def through_kube(row: Row) -> tuple[int, str, frozenset[int]]:
    kube = CostKube(replicas={"workers": row.current}, costs={f"pod-{i}": None for i in range(row.current)})
    state = Registry().upsert(parse_taskqueue(body("emails", "redis://unused")), None)
    targets = TargetCache()
    targets.expect("ns", "Deployment", "workers", row.current, "1")
    actuator = KubeActuator(state, targets.get("ns", "Deployment", "workers"), kube=kube, targets=targets,
                            metrics=OperatorMetrics(), api_slots=asyncio.Semaphore(1), clock=lambda: NOW,
                            active_tasks=lambda: {f"celery@pod-{i}": [{}] * (i in row.busy) for i in range(row.current)})
    history = History()
    planned = plan(QueueStats(row.waiting, row.in_flight, 0, None), row.spec, history, actuator.replicas, NOW)
    applied = await apply(planned, actuator, row.spec, history, NOW)
    assert kube.replicas["workers"] == applied.replicas
    # The ReplicaSet controller removes the lowest deletion costs first: those are the ones that go.
    by_cost = sorted(range(row.current), key=lambda i: (int(kube.costs[f"pod-{i}"] or 0), -i))
    removed = by_cost[:row.current - applied.replicas] if applied.replicas < row.current else []
    return applied.replicas, applied.decision.reason, frozenset(range(row.current)) - set(removed)


async def through_processes(row: Row) -> tuple[int, str, frozenset[int]]:
    names: list[str] = []
    actuator = LocalActuator(
        QueueSpec(name="q", max_replicas=5), log_dir=None,
        # A real process per worker that SIGTERM stops; what it "runs" is what the row says.
        command=lambda pattern: [sys.executable, "-c", "import time; time.sleep(600)"],
        active_tasks=lambda asked: {n: int(names.index(n) in row.busy) for n in asked},
    )
    try:
        actuator.scale(row.current)
        names[:] = actuator.worker_names
        history = History()
        planned = plan(QueueStats(row.waiting, row.in_flight, 0, None), row.spec, history, actuator.replicas, NOW)
        applied = await apply(planned, actuator, row.spec, history, NOW)
        assert actuator.replicas == applied.replicas
        return applied.replicas, applied.decision.reason, frozenset(names.index(n) for n in actuator.worker_names if n in names)
    finally:
        actuator.stop(timeout=10)
        wait_until(lambda: actuator.alive == 0, timeout=10, what="the workers to exit")


@pytest.mark.parametrize("through", [through_kube, through_processes], ids=["kubernetes", "local-processes"])
@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_rule(row: Row, through):
    replicas, reason, survivors = asyncio.run(through(row))
    assert (replicas, reason) == (row.replicas, row.reason)
    if row.survivors is not None:
        assert survivors == row.survivors


def test_a_release_nobody_can_confirm_changes_nothing():
    # The workers do not answer (busy count unknown): no idle replica is released and nothing is
    # scaled, not even to the same count (which would send a ScaledDown event for no change).
    spec = ScalingSpec(max_replicas=5, tasks_per_replica=5, idle_replica_seconds=0)
    kube = CostKube(replicas={"workers": 4}, costs={f"pod-{i}": None for i in range(4)})
    state = Registry().upsert(parse_taskqueue(body("emails", "redis://unused")), None)
    targets = TargetCache()
    targets.expect("ns", "Deployment", "workers", 4, "1")

    def no_answer():
        raise TimeoutError("no worker answered")

    actuator = KubeActuator(state, targets.get("ns", "Deployment", "workers"), kube=kube, targets=targets,
                            metrics=OperatorMetrics(), api_slots=asyncio.Semaphore(1), clock=lambda: NOW,
                            active_tasks=no_answer)
    history = History()
    planned = plan(QueueStats(0, 2, 0, None), spec, history, 4, NOW)
    assert planned.decision.wants_busy_replicas and planned.scales
    applied = asyncio.run(apply(planned, actuator, spec, history, NOW))
    assert (applied.replicas, applied.decision.reason) == (4, policy.STABILIZING_SCALE_DOWN)
    assert kube.replicas["workers"] == 4 and not kube.events
