"""The operator's actuator: a TaskQueue's workload through the Kubernetes scale subresource.

Busy workers are found by asking Celery what each worker runs (``busy.py`` maps node names onto
pods); before a scale-down, idle pods get a low ``pod-deletion-cost`` so the ReplicaSet controller
removes them first. A scale that went through is remembered in ``TargetCache`` before its watch
event arrives, counted, logged and sent as an Event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from stalk_operator import status as st
from stalk_operator.busy import active_tasks_by_pod, deletion_costs
from stalk_operator.kube import KubeApi
from stalk_operator.metrics import OperatorMetrics
from stalk_operator.policy import Decision
from stalk_operator.reconcile import BUSY_FRESH_SECONDS, BUSY_RECHECK_SECONDS
from stalk_operator.state import Target, TargetCache, TaskQueueState

log = logging.getLogger(__name__)

# Celery's remote-control ``inspect().active()``: node name -> the tasks it runs.
ActiveTasks = Callable[[], dict[str, list[Any]]]


@dataclass(frozen=True)
class BusyPods:
    """A target's pods: their deletion-cost annotations, and tasks running on each (None: no answer)."""

    costs: dict[str, str | None]
    running: dict[str, int | None]


class KubeActuator:
    """One TaskQueue's scale target, for one tick (built only for the TaskQueues that need the API)."""

    def __init__(self, state: TaskQueueState, target: Target, *, kube: KubeApi, targets: TargetCache,
                 metrics: OperatorMetrics, active_tasks: ActiveTasks, api_slots: asyncio.Semaphore,
                 clock: Callable[[], float]) -> None:
        self.state = state
        self.target = target
        self._kube = kube
        self._targets = targets
        self._metrics = metrics
        self._active_tasks = active_tasks
        self._slots = api_slots
        self._clock = clock
        cfg = state.config
        self._ref = (cfg.namespace, cfg.target.kind, cfg.target.name)
        # Why the scale was refused, when it was (the TaskQueue shows it, with a Warning event).
        self.failure: str | None = None

    @property
    def replicas(self) -> int:
        return self.target.replicas

    async def busy_workers(self) -> int | None:
        busy = await self._busy_pods(max_age=BUSY_RECHECK_SECONDS)
        return sum(1 for running in busy.running.values() if running) if busy else None

    async def mark_idle(self) -> None:
        """Give busy worker pods a high deletion cost and idle ones a low one, just before a scale-down."""
        async with self._slots:
            # Fresh within this tick: a task may have started on an "idle" pod since the last look.
            busy = await self._busy_pods(max_age=BUSY_FRESH_SECONDS)
            if busy is None:
                return
            for pod, cost in deletion_costs(busy.running, busy.costs).items():
                await asyncio.to_thread(self._kube.set_pod_cost, self.state.config.namespace, pod, cost)

    async def scale_to(self, replicas: int, decision: Decision) -> bool:
        cfg, before = self.state.config, self.target.replicas
        up = replicas > before
        try:
            async with self._slots:
                version = await asyncio.to_thread(self._kube.patch_scale, *self._ref, replicas)
        except ApiException as exc:
            self._metrics.api_errors.labels("patch_scale").inc()
            log.warning("cannot scale %s %s/%s to %d: %s", cfg.target.kind, cfg.namespace, cfg.target.name,
                        replicas, exc.reason)
            self.failure = f"cannot scale {cfg.target.kind} {cfg.target.name} to {replicas}: {exc.status} {exc.reason}"
            return False
        self._targets.expect(*self._ref, replicas, version)
        self.state.last_scale_time = st.utc_iso(self._clock())
        self._metrics.scale_events.labels("up" if up else "down").inc()
        log.info("TaskQueue %s/%s: %s %s %d -> %d (%s)", cfg.namespace, cfg.name, cfg.target.kind,
                 cfg.target.name, before, replicas, decision.reason)
        await send_event(self._kube, self.state, "Normal", "ScaledUp" if up else "ScaledDown",
                         f"{cfg.target.kind} {cfg.target.name}: {before} -> {replicas} replicas. "
                         f"{decision.reason}: {decision.message}")
        return True

    async def _busy_pods(self, max_age: float) -> BusyPods | None:
        """The target's pods and how many tasks each runs, asked of the workers at most every ``max_age`` s."""
        state, now = self.state, self._clock()
        if state.busy is not None and now - state.busy_checked_at <= max_age:
            return state.busy
        cfg = state.config
        scale = await asyncio.to_thread(self._kube.read_scale, *self._ref)
        if scale is None or not scale.selector:
            return None
        pods = await asyncio.to_thread(self._kube.pod_costs, cfg.namespace, scale.selector)
        if not pods:
            return None
        try:
            active = await asyncio.to_thread(self._active_tasks)
        except Exception as exc:  # noqa: BLE001 - without an answer, scale down as Kubernetes would
            log.warning("TaskQueue %s/%s: cannot ask workers what they run: %s", cfg.namespace, cfg.name, exc)
            return None
        state.busy, state.busy_checked_at = BusyPods(costs=pods, running=active_tasks_by_pod(active, pods)), now
        return state.busy


async def send_event(kube: KubeApi, state: TaskQueueState, type_: str, reason: str, message: str) -> None:
    await asyncio.to_thread(kube.event, state.config, type_, reason, message)
