"""The tick loop: one asyncio task per Redis broker, whatever the number of TaskQueues.

Each tick reads every queue of that broker in one pipelined round trip, then in two passes:

1. ``BrokerLoop.prepare``, for every TaskQueue, without awaiting: the metrics, ``reconcile.plan``
   from the cached target replicas, and the desired status. It returns a ``Step``.
2. ``BrokerLoop.actuate``, only for the steps that need the API server (a scale, a target not yet
   seen by the watch, an Event), together: ``reconcile.apply`` through a ``KubeActuator``.

Most TaskQueues, most ticks, need no API call and so cost no asyncio task of their own.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis
from kubernetes.client.exceptions import ApiException

from stalk_operator import status as st
from stalk_operator.busy import CeleryInspector
from stalk_operator.config import OperatorSettings
from stalk_operator.kube import KubeApi
from stalk_operator.kube_actuator import KubeActuator, send_event
from stalk_operator.membership import RESOLVE_INTERVAL_SECONDS, BrokerKey, Leadership, Membership, broker_label
from stalk_operator.metrics import OperatorMetrics
from stalk_operator.reconcile import Outage, Plan, apply, plan
from stalk_operator.reporting import Measured, Reporter
from stalk_operator.state import Registry, Target, TargetCache, TaskQueueState
from stalk_operator.writer import StatusWriter
from stalk_workers import redis_tls
from stalk_workers.brokers import close_client, redis_client
from stalk_workers.queue_reader import QueueReader, QueueStats
from stalk_workers.unconsumed import unconsumed_lists

log = logging.getLogger(__name__)

# The supervisor starts and stops broker loops as TaskQueues come and go.
SUPERVISE_INTERVAL_SECONDS = 1.0
# A Redis read that takes longer than this counts as a failed read, not a stalled tick.
REDIS_TIMEOUT_SECONDS = 2.0
# Looking for lists nobody consumes walks the keyspace and asks the workers: once a minute.
UNCONSUMED_INTERVAL_SECONDS = 60.0
# The reason of a TaskQueue whose broker's TLS handshake fails (wrong CA, no client certificate).
BROKER_TLS_FAILED = "BrokerTLSFailed"


@dataclass(slots=True)
class Step:
    """One TaskQueue's tick after the pass that does not wait: what is left for the API server
    (an Event to send, a target to look up, a plan that scales)."""

    state: TaskQueueState
    measured: Measured | None = None  # None: the queue could not be read
    event: tuple[str, str, str] | None = None  # type, reason, message
    target: Target | None = None  # None with a plan: look the target up first
    plan: Plan | None = None
    find_target: bool = False


class BrokerLoop:
    """Reads and decides for every TaskQueue on one Redis (one URL and key prefix)."""

    def __init__(self, key: BrokerKey, supervisor: BrokerSupervisor) -> None:
        self.key = key
        self.url, self.key_prefix = key.url, key.key_prefix
        self.label = broker_label(self.url)
        self._supervisor = supervisor
        # Built once per broker, never per poll. On Sentinel it is the current primary's, and
        # follows a failover (it asks the Sentinels again when its connection fails).
        self.client = redis_client(
            self.url, master_name=key.master_name or None, sentinel_password=key.sentinel_password or None,
            socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        )
        self.reader = QueueReader(self.client, key_prefix=self.key_prefix)
        # Reads run on this broker's own thread: a Redis that does not answer holds it for the
        # timeout, and would otherwise hold threads of the pool every other broker reads through.
        self._reads = ThreadPoolExecutor(1, thread_name_prefix=f"read {self.label}")
        self._inspector: CeleryInspector | None = None
        self._outage = Outage()
        self._unconsumed: dict[str, int] = {}
        self._unconsumed_at = float("-inf")
        self._unconsumed_task: asyncio.Task[None] | None = None

    @property
    def inspector(self) -> CeleryInspector:
        if self._inspector is None:  # only needed now and then, so built on first use
            timeout = self._supervisor.settings.inspect_timeout_seconds
            self._inspector = CeleryInspector(self.url, key_prefix=self.key_prefix, timeout=timeout,
                                              master_name=self.key.master_name,
                                              sentinel_password=self.key.sentinel_password)
        return self._inspector

    def active_tasks(self) -> dict:
        """What every worker on this broker runs (blocking: Celery's remote control waits for replies)."""
        return self.inspector.active()

    def look_for_unconsumed(self, queues: list[str]) -> None:
        """Report lists holding messages that no TaskQueue names and no worker consumes (blocking)."""
        claimed = set(queues) | self.inspector.consumed_queues()
        found = unconsumed_lists(self.client, key_prefix=self.key_prefix, claimed=claimed)
        gauge = self._supervisor.metrics.unconsumed
        for name in self._unconsumed.keys() - found.keys():
            gauge.remove(self.label, name)
        for name, count in found.items():
            if name not in self._unconsumed:
                log.warning("%d messages in list %r on %s: no TaskQueue names its queue and no worker "
                            "consumes it (a send_task without a queue lands in Celery's default list 'celery')",
                            count, name, self.label)
            gauge.labels(self.label, name).set(count)
        self._unconsumed = found

    async def run(self) -> None:
        try:
            while True:
                started = time.monotonic()
                members = self._supervisor.membership.members(self.key)
                self._supervisor.leadership.update()
                if members and self._supervisor.leadership.leading:
                    with self._supervisor.metrics.tick_duration.time():
                        await self.tick(members)
                    self._supervisor.freeze_heap()
                # The broker ticks as often as its most eager TaskQueue asks.
                interval = min((m.config.poll_seconds for m in members), default=1.0)
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        finally:
            self.close()

    def close(self) -> None:
        if self._unconsumed_task is not None:
            self._unconsumed_task.cancel()
        for name in self._unconsumed:
            self._supervisor.metrics.unconsumed.remove(self.label, name)
        self._reads.shutdown(wait=False, cancel_futures=True)
        close_client(self.client)
        if self._inspector is not None:
            self._inspector.close()

    async def tick(self, members: list[TaskQueueState]) -> None:
        started = time.perf_counter()
        queues = sorted({m.config.queue for m in members})
        now = self._supervisor.clock()
        try:
            stats: dict[str, QueueStats] | None = await asyncio.get_running_loop().run_in_executor(
                self._reads, self.reader.read, queues)
        except Exception as exc:  # noqa: BLE001 - any failure to read means: keep replicas, report
            self._supervisor.metrics.broker_errors.labels(self.label).inc()
            if self._outage.failed(now):  # once per outage; the error counter counts every tick
                log.warning("cannot read %d queues from %s, keeping replicas: %s", len(queues), self.label, exc)
            steps = self._each(members, lambda m, exc=exc: self._unreadable(m, exc, now))
        else:
            lasted = self._outage.recovered(now)
            if lasted is not None:
                log.info("reading %s again after %.0fs", self.label, lasted)
            steps = self._each(members, lambda m: self.prepare(m, stats[m.config.queue], now))
            if now - self._unconsumed_at >= UNCONSUMED_INTERVAL_SECONDS and (
                    self._unconsumed_task is None or self._unconsumed_task.done()):
                self._unconsumed_at = now
                self._unconsumed_task = asyncio.create_task(self._unconsumed_look(queues))
        self._supervisor.metrics.tick_plan_duration.observe(time.perf_counter() - started)
        if steps:
            await asyncio.gather(*(self.actuate(step) for step in steps))

    async def _unconsumed_look(self, queues: list[str]) -> None:
        try:
            await asyncio.to_thread(self.look_for_unconsumed, queues)
        except Exception as exc:  # noqa: BLE001 - a courtesy: never a reason to stop ticking
            log.warning("cannot look for unconsumed lists on %s: %s", self.label, exc)

    @staticmethod
    def _each(members: list[TaskQueueState], prepare: Callable[[TaskQueueState], Step | None]) -> list[Step]:
        """The steps that need the API server. The other TaskQueues are done once prepared and leave
        nothing behind: at 1,000 TaskQueues, objects kept per tick cost garbage-collector time."""
        steps = []
        for member in members:
            try:
                step = prepare(member)
            except Exception:  # noqa: BLE001 - one TaskQueue's failure must not stop the others
                log.exception("TaskQueue %s/%s: tick failed", *member.config.key)
                continue
            if step is not None:
                steps.append(step)
        return steps

    # ---- pass 1: no waiting ---------------------------------------------------------------
    def prepare(self, state: TaskQueueState, stats: QueueStats, now: float) -> Step | None:
        """Measure, plan and report; a ``Step`` only when the API server is still needed (else None)."""
        cfg = state.config
        report = self._supervisor.reporter
        measured = Measured(stats=stats, now=now, metrics=st.Condition(
            st.METRICS_AVAILABLE, True, "QueueRead", f"queue {cfg.queue} read from {self.label}"))
        report.measured(state, measured)
        event = None
        if state.metrics_down:
            state.metrics_down = False
            event = ("Normal", "MetricsAvailable", f"reading queue {cfg.queue} from {self.label} again")

        if state.target_conflict:
            report.problem(state, measured, "TargetConflict", state.target_conflict,
                           f"TargetConflict: {state.target_conflict}")
            return Step(state, measured, event=event) if event else None
        target = self._supervisor.targets.get(cfg.namespace, cfg.target.kind, cfg.target.name)
        if target is None:
            return Step(state, measured, event=event, find_target=True)
        state.target_problem = None
        planned = self._plan(state, measured, target)
        if event is None and not planned.scales:
            return None
        return Step(state, measured, event=event, target=target, plan=planned)

    def _plan(self, state: TaskQueueState, measured: Measured, target: Target) -> Plan:
        cfg = state.config
        planned = plan(measured.stats, cfg.scaling, state.history, target.replicas, measured.now, drain=cfg.drain)
        if not planned.scales:
            self._supervisor.reporter.decision(state, target, measured, planned.decision, target.replicas)
        return planned

    def _unreadable(self, state: TaskQueueState, exc: Exception, now: float) -> Step | None:
        """Redis could not be read: keep the replicas as they are and say so (an Event once)."""
        cfg = state.config
        reason = unreadable_reason(exc)
        hint = redis_tls.handshake_hint(exc, self.url)
        if hint:
            hint = f"{hint[:-1]}; set broker.tls.clientCertSecretRef)"
        message = f"cannot read queue {cfg.queue} from {self.label}: {exc}{hint}"[:512]
        # Ready too: it does not scale, and `kubectl get tq` shows Ready's reason.
        self._supervisor.reporter.conditions(state, now, st.Condition(st.METRICS_AVAILABLE, False, reason, message),
                                         st.Condition(st.READY, False, reason, message))
        if state.metrics_down:
            return None
        state.metrics_down = True
        return Step(state, event=("Warning", "MetricsUnavailable", f"{message}; replicas are left as they are"))

    # ---- pass 2: only the TaskQueues that need the API server -----------------------------
    async def actuate(self, step: Step) -> None:
        state, supervisor = step.state, self._supervisor
        try:
            if step.event is not None:
                await send_event(supervisor.kube, state, *step.event)
            if step.find_target:
                step.target = await self._find_target(state, step.measured.now)
                if step.target is None:
                    await self._problem(state, step.measured, *state.target_problem)
                    return
                step.plan = self._plan(state, step.measured, step.target)
            if step.plan is None or not step.plan.scales:
                return
            actuator = KubeActuator(state, step.target, kube=supervisor.kube, targets=supervisor.targets,
                                    metrics=supervisor.metrics, active_tasks=self.active_tasks,
                                    api_slots=supervisor.api_slots, clock=supervisor.clock)
            applied = await apply(step.plan, actuator, state.config.scaling, state.history, step.measured.now)
            if actuator.failure is not None:
                await self._problem(state, step.measured, "ScaleFailed", actuator.failure)
                return
            supervisor.reporter.decision(state, step.target, step.measured, applied.decision, applied.replicas)
        except Exception:  # noqa: BLE001 - one TaskQueue's failure must not stop the others
            log.exception("TaskQueue %s/%s: tick failed", *state.config.key)

    async def _problem(self, state: TaskQueueState, measured: Measured, reason: str, message: str) -> None:
        """Measured, but this TaskQueue cannot scale: Ready is False, and a Warning event once."""
        self._supervisor.reporter.problem(state, measured, reason, message, f"{reason}: {message}")
        if state.announce(reason):
            log.warning("TaskQueue %s/%s: %s: %s", *state.config.key, reason, message)
            await send_event(self._supervisor.kube, state, "Warning", reason, message)

    async def _find_target(self, state: TaskQueueState, now: float) -> Target | None:
        """A target not (yet) seen by the watch: ask the API server, for a missing one only now and then.
        None leaves why in ``state.target_problem``."""
        cfg, supervisor = state.config, self._supervisor
        ref = (cfg.namespace, cfg.target.kind, cfg.target.name)
        target = supervisor.targets.get(*ref)
        if target is not None:
            state.target_problem = None
            return target
        if state.target_problem is not None and now - state.target_checked_at < RESOLVE_INTERVAL_SECONDS:
            return None
        state.target_checked_at = now
        try:
            async with supervisor.api_slots:
                scale = await asyncio.to_thread(supervisor.kube.read_scale, *ref)
                other = None
                if scale is None:  # the most common mistake: the right name, the other kind
                    other = await asyncio.to_thread(supervisor.kube.read_scale, cfg.namespace,
                                                    OTHER_KIND[cfg.target.kind], cfg.target.name)
        except ApiException as exc:
            supervisor.metrics.api_errors.labels("read_scale").inc()
            state.target_problem = ("TargetUnreadable", f"cannot read the scale of {cfg.target.kind} "
                                                        f"{cfg.target.name}: {exc.status} {exc.reason}")
            return None
        if scale is None:
            message = f"{cfg.target.kind} {cfg.target.name} not found in namespace {cfg.namespace}"
            if other is not None:
                message += (f"; a {OTHER_KIND[cfg.target.kind]} of that name exists "
                            f"(set scaleTargetRef.kind to {OTHER_KIND[cfg.target.kind]})")
            state.target_problem = ("TargetNotFound", message)
            return None
        state.target_problem = None
        supervisor.targets.expect(*ref, scale.replicas, None)  # until the watch reports it
        return supervisor.targets.get(*ref)


# The kinds a TaskQueue may scale (the CRD's enum), each with the one a user may have meant.
OTHER_KIND = {"Deployment": "StatefulSet", "StatefulSet": "Deployment"}


def unreadable_reason(exc: Exception) -> str:
    """The MetricsAvailable reason for a failed read: a wrong password is the user's to fix, not an outage."""
    if isinstance(exc, redis.AuthenticationError) or (
            isinstance(exc, redis.ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS", "NOPERM"))):
        return "BrokerAuthFailed"
    # redis-py raises ConnectionError from the ssl module's error: a CA, certificate or server
    # that does not match is the user's to fix, and waiting will not fix it.
    if isinstance(exc, redis.ConnectionError) and redis_tls.ssl_cause(exc) is not None:
        return BROKER_TLS_FAILED
    return "RedisUnavailable"


class BrokerSupervisor:
    """Keeps one ``BrokerLoop`` per broker in use (restarted if it dies) and the status writer running."""

    def __init__(
        self,
        *,
        registry: Registry,
        targets: TargetCache,
        kube: KubeApi,
        metrics: OperatorMetrics,
        settings: OperatorSettings,
        is_leader: Callable[[], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.targets = targets
        self.kube = kube
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        # Scale patches and the reads before them; status writes have the writer's own slots.
        self.api_slots = asyncio.Semaphore(settings.api_concurrency)
        self.writer = StatusWriter(kube, metrics, slots=settings.api_concurrency,
                                   per_second=settings.status_writes_per_second, may_write=is_leader)
        self.reporter = Reporter(self.writer, metrics, status_interval_seconds=settings.status_interval_seconds)
        self.leadership = Leadership(registry, metrics, is_leader)
        self.membership = Membership(registry, kube, metrics, self.leadership, self.reporter)
        self._loops: dict[BrokerKey, asyncio.Task[None]] = {}
        self.heartbeat = time.monotonic()
        self._heap_frozen = False

    def freeze_heap(self) -> None:
        """Once, after the first tick: what start-up built (modules, kopf, the API client, every
        TaskQueue's state) moves out of the garbage collector's sight. A full collection then scans
        only what came since: at 1,000 TaskQueues it took 60-166 ms, the slowest tick of a minute
        (bench/operator_scale.py, docs/benchmarks.md). The collection first frees what is already
        garbage; a cycle among frozen objects is never freed, a cost of a few states at most."""
        if not self._heap_frozen:
            self._heap_frozen = True
            gc.collect()
            gc.freeze()

    async def run(self) -> None:
        writer = asyncio.create_task(self.writer.run(), name="status writer")
        try:
            while True:
                try:
                    await self.supervise()
                except Exception:  # noqa: BLE001 - the supervisor must outlive any one failure, loudly
                    log.exception("supervising the broker loops failed; trying again")
                await asyncio.sleep(SUPERVISE_INTERVAL_SECONDS)
        finally:
            writer.cancel()
            await self.stop_brokers()
            await asyncio.gather(writer, return_exceptions=True)

    async def stop_brokers(self) -> None:
        """Cancel every broker loop and wait for them to close their clients."""
        loops, self._loops = list(self._loops.values()), {}
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)

    async def supervise(self) -> None:
        """Start a loop for each broker in use, stop those no TaskQueue uses, restart dead ones."""
        self.heartbeat = time.monotonic()
        self.leadership.update()
        self.metrics.taskqueues.set(len(self.registry))
        groups = await self.membership.refresh(self.clock())
        for key in groups.keys() - self._loops.keys():
            self._loops[key] = asyncio.create_task(BrokerLoop(key, self).run(), name=f"broker {broker_label(key[0])}")
        for key in self._loops.keys() - groups.keys():
            self._loops.pop(key).cancel()
        for key, task in list(self._loops.items()):
            if task.done():  # a loop that died is restarted on the next supervision
                if not task.cancelled() and task.exception():
                    log.error("broker loop %s stopped: %r", broker_label(key[0]), task.exception())
                del self._loops[key]

    def running_brokers(self) -> set[BrokerKey]:
        """The brokers that have a loop running now."""
        return {key for key, task in self._loops.items() if not task.done()}

    async def tick_once(self) -> None:
        """Group the TaskQueues and tick every broker once, here (no loops; tests and benchmarks)."""
        self.leadership.update()
        for key, members in (await self.membership.refresh(self.clock())).items():
            broker = BrokerLoop(key, self)
            try:
                if self.leadership.leading:
                    await broker.tick(members)
            finally:
                broker.close()
