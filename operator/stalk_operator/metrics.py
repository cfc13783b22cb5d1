"""The operator's Prometheus metrics and its /metrics, /healthz and /readyz endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_TQ_LABELS = ("namespace", "taskqueue", "queue")
# Old metric names still exported for one release, each with the name that replaces it; the chart's
# dashboards and alerts use only the new ones (tests/observability).
DEPRECATED_METRICS = {"stalk_taskqueue_depth": "stalk_taskqueue_waiting"}


@dataclass(eq=False)
class TaskQueueSeries:
    labels: tuple[str, str, str]
    waiting: Gauge
    depth: Gauge  # deprecated: the same value as waiting, for one release
    in_flight: Gauge
    scheduled: Gauge
    oldest_wait: Gauge
    desired: Gauge
    current: Gauge
    min_replicas: Gauge
    max_replicas: Gauge
    # The values last set: at 1,000 TaskQueues most do not change from tick to tick, and a set is a lock.
    _measured: tuple[float, ...] = ()
    _replicas: tuple[float, ...] = ()

    def set_measured(self, waiting: float, in_flight: float, scheduled: float, oldest_wait: float,
                     min_replicas: float, max_replicas: float) -> None:
        values = (waiting, waiting, in_flight, scheduled, oldest_wait, min_replicas, max_replicas)
        if values != self._measured:
            _set_changed((self.waiting, self.depth, self.in_flight, self.scheduled, self.oldest_wait,
                          self.min_replicas, self.max_replicas), self._measured, values)
            self._measured = values

    def set_replicas(self, desired: float, current: float) -> None:
        values = (desired, current)
        if values != self._replicas:
            _set_changed((self.desired, self.current), self._replicas, values)
            self._replicas = values


def _set_changed(gauges: tuple[Gauge, ...], old: tuple[float, ...], new: tuple[float, ...]) -> None:
    for i, (gauge, value) in enumerate(zip(gauges, new, strict=True)):
        if i >= len(old) or old[i] != value:
            gauge.set(value)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.waiting = Gauge("stalk_taskqueue_waiting", "Tasks waiting in Redis, all priority levels.", _TQ_LABELS,
                             registry=r)
        # The name waiting had before (DEPRECATED_METRICS): the same value for one release, then dropped.
        self.depth = Gauge("stalk_taskqueue_depth",
                           "Deprecated: the same as stalk_taskqueue_waiting, which replaces it.", _TQ_LABELS, registry=r)
        self.in_flight = Gauge("stalk_taskqueue_in_flight", "Tasks delivered to workers and not yet acknowledged.",
                               _TQ_LABELS, registry=r)
        self.scheduled = Gauge("stalk_taskqueue_scheduled", "ETA/countdown tasks held by workers.", _TQ_LABELS,
                               registry=r)
        self.oldest_wait = Gauge("stalk_taskqueue_oldest_wait_seconds", "Seconds the oldest waiting task has waited.",
                                 _TQ_LABELS, registry=r)
        self.desired = Gauge("stalk_taskqueue_desired_replicas", "Replicas the last decision asked for.", _TQ_LABELS,
                             registry=r)
        self.current = Gauge("stalk_taskqueue_current_replicas", "Replicas the scale target has.", _TQ_LABELS,
                             registry=r)
        # The limits, so that alerts can tell "at the maximum" from "scaling".
        self.min_replicas = Gauge("stalk_taskqueue_min_replicas", "spec.minReplicas of the TaskQueue.", _TQ_LABELS,
                                  registry=r)
        self.max_replicas = Gauge("stalk_taskqueue_max_replicas", "spec.maxReplicas of the TaskQueue.", _TQ_LABELS,
                                  registry=r)
        self.scale_events = Counter("stalk_operator_scale_events_total", "Scale patches applied, by direction.",
                                    ("direction",), registry=r)
        self.tick_duration = Histogram(
            "stalk_operator_tick_duration_seconds", "Time of one tick for one broker: read, decide, act.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r,
        )
        # The part of a tick that grows with the TaskQueues and no API call or worker inspection
        # slows: a scale down waits for the busy-worker inspection (inspectTimeoutSeconds), which the
        # whole tick's histogram shows and this one does not.
        self.tick_plan_duration = Histogram(
            "stalk_operator_tick_plan_duration_seconds",
            "Time of one tick for one broker up to its API calls: read and decide for every TaskQueue.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r,
        )
        self.broker_errors = Counter("stalk_operator_broker_errors_total", "Failed reads of a Redis broker.",
                                     ("broker",), registry=r)
        self.api_errors = Counter("stalk_operator_api_errors_total", "Failed calls to the Kubernetes API server.",
                                  ("operation",), registry=r)
        self.is_leader = Gauge("stalk_operator_is_leader", "1 while this operator holds the leader lease.",
                               registry=r)
        self.taskqueues = Gauge("stalk_operator_taskqueues", "TaskQueues this operator knows.", registry=r)
        self.unconsumed = Gauge(
            "stalk_operator_unconsumed_messages",
            "Messages in a Redis list that no TaskQueue names and no worker consumes (e.g. Celery's default "
            "list 'celery' after a send_task without a queue), by exact list name.", ("broker", "list"), registry=r)

    def for_taskqueue(self, namespace: str, name: str, queue: str) -> TaskQueueSeries:
        """The series of one TaskQueue; looked up once and kept, since labels() is not free at 1,000 a tick."""
        labels = (namespace, name, queue)
        return TaskQueueSeries(
            labels=labels,
            waiting=self.waiting.labels(*labels), depth=self.depth.labels(*labels),
            in_flight=self.in_flight.labels(*labels), scheduled=self.scheduled.labels(*labels),
            oldest_wait=self.oldest_wait.labels(*labels),
            desired=self.desired.labels(*labels), current=self.current.labels(*labels),
            min_replicas=self.min_replicas.labels(*labels), max_replicas=self.max_replicas.labels(*labels),
        )

    def forget(self, namespace: str, name: str, queue: str) -> None:
        """Drop the series of a TaskQueue that was deleted."""
        for gauge in (self.waiting, self.depth, self.in_flight, self.scheduled, self.oldest_wait, self.desired,
                      self.current, self.min_replicas, self.max_replicas):
            try:
                gauge.remove(namespace, name, queue)
            except KeyError:
                pass


def health_app(metrics: OperatorMetrics, *, alive: Callable[[], bool], ready: Callable[[], bool]) -> web.Application:
    async def metrics_view(_: web.Request) -> web.Response:
        # At 1,000 TaskQueues a scrape is ~58 ms of Python: in a thread, ticks interleave with it.
        body = await asyncio.to_thread(generate_latest, metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n") if alive() else web.Response(status=503, text="tick loop stopped\n")

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n") if ready() else web.Response(status=503, text="not watching yet\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
