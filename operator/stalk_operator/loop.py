"""The tick loop: one asyncio task per Redis broker, whatever the number of TaskQueues.

Each tick reads every queue of that broker in one pipelined round trip, asks the policy for each
TaskQueue, and writes to the API server only what changed: a scale patch (after marking busy
pods when scaling down), an Event, and the status when a shown value moved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import redis
from kubernetes.client.exceptions import ApiException

from stalk_operator import status as st
from stalk_operator.busy import CeleryInspector, active_tasks_by_pod, deletion_costs
from stalk_operator.config import OperatorSettings
from stalk_operator.kube import KubeApi
from stalk_operator.metrics import OperatorMetrics
from stalk_operator.policy import Decision, History, Observation, decide
from stalk_operator.state import Registry, Target, TargetCache, TaskQueueState
from stalk_operator.writer import StatusWriter
from stalk_workers.queue_reader import QueueReader, QueueStats

log = logging.getLogger(__name__)

# How often to look again for a Secret holding a broker URL, or for a missing scale target.
RESOLVE_INTERVAL_SECONDS = 10.0
# The supervisor starts and stops broker loops as TaskQueues come and go.
SUPERVISE_INTERVAL_SECONDS = 1.0
# A Redis read that takes longer than this counts as a failed read, not a stalled tick.
REDIS_TIMEOUT_SECONDS = 2.0

# While a scale-down waits for busy workers, ask them again at most this often (each ask waits
# for replies); just before the scale itself, ask afresh unless the answer is this recent.
BUSY_RECHECK_SECONDS = 5.0
BUSY_FRESH_SECONDS = 1.0

BrokerKey = tuple[str, str]  # (url, key prefix)


@dataclass(frozen=True)
class BusyPods:
    """A target's pods: their deletion-cost annotations, and tasks running on each (None: no answer)."""

    costs: dict[str, str | None]
    running: dict[str, int | None]


def broker_label(url: str) -> str:
    """The broker as shown in metrics and messages: host, port and db, never the password."""
    parts = urlsplit(url)
    if not parts.hostname:  # unix:///run/redis.sock
        return f"{parts.scheme}://{parts.path}"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


class BrokerLoop:
    """Reads and decides for every TaskQueue on one Redis (one URL and key prefix)."""

    def __init__(self, key: BrokerKey, ticker: Ticker) -> None:
        self.key = key
        self.url, self.key_prefix = key
        self.label = broker_label(self.url)
        self._ticker = ticker
        # Built once per broker, never per poll.
        self.client = redis.Redis.from_url(
            self.url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        )
        self.reader = QueueReader(self.client, key_prefix=self.key_prefix)
        self._inspector: CeleryInspector | None = None
        self._failing_since: float | None = None

    def inspector(self, timeout: float) -> CeleryInspector:
        if self._inspector is None:  # only needed on scale-down, so built on the first one
            self._inspector = CeleryInspector(self.url, key_prefix=self.key_prefix, timeout=timeout)
        return self._inspector

    async def run(self) -> None:
        try:
            while True:
                started = time.monotonic()
                members = self._ticker.members(self.key)
                if members and self._ticker.leading():
                    with self._ticker.metrics.tick_duration.time():
                        await self.tick(members)
                # The broker ticks as often as its most eager TaskQueue asks.
                interval = min((m.config.poll_seconds for m in members), default=1.0)
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
        finally:
            self.client.close()
            if self._inspector is not None:
                self._inspector.close()

    async def tick(self, members: list[TaskQueueState]) -> None:
        queues = sorted({m.config.queue for m in members})
        now = self._ticker.clock()
        try:
            stats = await asyncio.to_thread(self.reader.read, queues)
        except Exception as exc:  # noqa: BLE001 - any failure to read means: keep replicas, report
            self._ticker.metrics.broker_errors.labels(self.label).inc()
            if self._failing_since is None:  # once per outage; the error counter counts every tick
                self._failing_since = now
                log.warning("cannot read %d queues from %s, keeping replicas: %s", len(queues), self.label, exc)
            await self._ticker.for_each(members, lambda m: self._ticker.metrics_unavailable(m, exc, self.label, now))
            return
        if self._failing_since is not None:
            log.info("reading %s again after %.0fs", self.label, now - self._failing_since)
            self._failing_since = None
        await self._ticker.for_each(members, lambda m: self._ticker.reconcile(m, stats[m.config.queue], now, self))


class Ticker:
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
        self.is_leader = is_leader
        self.clock = clock
        self._loops: dict[BrokerKey, asyncio.Task[None]] = {}
        self._members: dict[BrokerKey, list[TaskQueueState]] = {}
        # Scale patches and the reads before them; status writes have the writer's own slots.
        self._api_slots = asyncio.Semaphore(settings.api_concurrency)
        self.writer = StatusWriter(kube, metrics, slots=settings.api_concurrency,
                                   per_second=settings.status_writes_per_second, may_write=is_leader)
        self._was_leader = False
        self.heartbeat = time.monotonic()

    # ---- supervision ---------------------------------------------------------------------
    async def run(self) -> None:
        writer = asyncio.create_task(self.writer.run(), name="status writer")
        try:
            while True:
                await self.supervise()
                await asyncio.sleep(SUPERVISE_INTERVAL_SECONDS)
        finally:
            for task in (*self._loops.values(), writer):
                task.cancel()
            await asyncio.gather(*self._loops.values(), writer, return_exceptions=True)

    def leading(self) -> bool:
        """Whether this operator may act now; on becoming the leader, resume from the objects."""
        leader = self.is_leader()
        if leader and not self._was_leader:
            # Resume from what the previous leader wrote (status, history), so a hand-over does not flap.
            for state in self.registry:
                state.resume_from_seen()
        self._was_leader = leader
        self.metrics.is_leader.set(1 if leader else 0)
        return leader

    async def supervise(self) -> None:
        self.heartbeat = time.monotonic()
        self.leading()
        self.metrics.taskqueues.set(len(self.registry))

        now = self.clock()
        # Two TaskQueues scaling one workload would fight over its replicas: neither may act.
        by_target: dict[tuple[str, str, str], list[TaskQueueState]] = {}
        for state in self.registry:
            cfg = state.config
            by_target.setdefault((cfg.namespace, cfg.target.kind, cfg.target.name), []).append(state)
        for sharing in by_target.values():
            for state in sharing:
                others = sorted(s.config.name for s in sharing if s is not state)
                state.target_conflict = (
                    f"{state.config.target.kind} {state.config.target.name} is also scaled by TaskQueue "
                    f"{', '.join(others)}; only one TaskQueue may scale a workload" if others else None
                )

        groups: dict[BrokerKey, list[TaskQueueState]] = {}
        for state in self.registry:
            url = await self.resolve_broker(state, now)
            if url is not None:
                groups.setdefault((url, state.config.broker.key_prefix), []).append(state)
        self._members = groups
        for key in groups.keys() - self._loops.keys():
            self._loops[key] = asyncio.create_task(BrokerLoop(key, self).run(), name=f"broker {broker_label(key[0])}")
        for key in self._loops.keys() - groups.keys():
            self._loops.pop(key).cancel()
        for key, task in list(self._loops.items()):
            if task.done():  # a loop that died is restarted on the next supervision
                if not task.cancelled() and task.exception():
                    log.error("broker loop %s stopped: %r", broker_label(key[0]), task.exception())
                del self._loops[key]

    def members(self, key: BrokerKey) -> list[TaskQueueState]:
        return self._members.get(key, [])

    async def resolve_broker(self, state: TaskQueueState, now: float) -> str | None:
        broker = state.config.broker
        if broker.url:
            state.broker_url, state.broker_problem = broker.url, None
            return broker.url
        if now - state.broker_checked_at < RESOLVE_INTERVAL_SECONDS:
            return state.broker_url
        state.broker_checked_at = now
        cfg = state.config
        try:
            url = await asyncio.to_thread(self.kube.read_secret_key, cfg.namespace, broker.secret_name, broker.secret_key)
        except ApiException as exc:
            self.metrics.api_errors.labels("read_secret").inc()
            log.warning("cannot read Secret %s/%s: %s", cfg.namespace, broker.secret_name, exc.reason)
            return state.broker_url
        if url is None:
            state.broker_url = None
            state.broker_problem = f"Secret {broker.secret_name} has no key {broker.secret_key!r} (or does not exist)"
            if self.leading():
                self.show(state, st.View(cfg.generation, (
                    st.Condition(st.READY, False, "BrokerSecretNotFound", state.broker_problem),)), now)
            return None
        state.broker_url, state.broker_problem = url, None
        return url

    async def for_each(self, members: list[TaskQueueState],
                       work: Callable[[TaskQueueState], Awaitable[None] | None]) -> None:
        """Run ``work`` for each TaskQueue; the few that must wait for the API server are awaited together.

        ``work`` decides without awaiting and returns an awaitable only when it needs the API now (a
        scale, an unknown target, an Event): most TaskQueues, most ticks, cost no task of their own.
        """
        async def one(member: TaskQueueState, awaitable: Awaitable[None]) -> None:
            try:
                await awaitable
            except Exception:  # noqa: BLE001 - one TaskQueue's failure must not stop the others
                log.exception("TaskQueue %s/%s: tick failed", *member.config.key)

        waiting = []
        for member in members:
            try:
                awaitable = work(member)
            except Exception:  # noqa: BLE001 - one TaskQueue's failure must not stop the others
                log.exception("TaskQueue %s/%s: tick failed", *member.config.key)
                continue
            if awaitable is not None:
                waiting.append(one(member, awaitable))
        if waiting:
            await asyncio.gather(*waiting)

    # ---- one TaskQueue -------------------------------------------------------------------
    def reconcile(self, state: TaskQueueState, stats: QueueStats, now: float,
                  broker: BrokerLoop) -> Awaitable[None] | None:
        cfg = state.config
        series = state.series
        if series is None or series.labels != (cfg.namespace, cfg.name, cfg.queue):
            if series is not None:  # the queue name changed: drop the old series
                self.metrics.forget(*series.labels)
            series = state.series = self.metrics.for_taskqueue(cfg.namespace, cfg.name, cfg.queue)
        series.set_measured(stats.waiting, stats.in_flight, stats.scheduled, stats.oldest_wait_seconds or 0,
                            cfg.scaling.min_replicas, cfg.scaling.max_replicas)
        read = Read(stats=stats, now=now, metrics=st.Condition(
            st.METRICS_AVAILABLE, True, "QueueRead", f"queue {cfg.queue} read from {broker.label}"))

        event = None
        if state.metrics_down:
            state.metrics_down = False
            event = self._event(state, "Normal", "MetricsAvailable", f"reading queue {cfg.queue} from {broker.label} again")

        if state.target_conflict:
            self._show_problem(state, read, "TargetConflict", state.target_conflict,
                               f"TargetConflict: {state.target_conflict}")
            return event
        target = self.targets.get(cfg.namespace, cfg.target.kind, cfg.target.name)
        if target is None:
            return _chain(event, self._reconcile_unknown_target(state, read, broker))
        state.target_missing = False
        return _chain(event, self._decide(state, target, read, broker))

    async def _reconcile_unknown_target(self, state: TaskQueueState, read: Read, broker: BrokerLoop) -> None:
        cfg = state.config
        target = await self._target(state, read.now)
        if target is None:
            message = f"{cfg.target.kind} {cfg.target.name} not found in namespace {cfg.namespace}"
            self._show_problem(state, read, "TargetNotFound", message, message)
            return
        work = self._decide(state, target, read, broker)
        if work is not None:
            await work

    def _decide(self, state: TaskQueueState, target: Target, read: Read, broker: BrokerLoop) -> Awaitable[None] | None:
        """Decide; scale (an awaitable) only when the decision moves the replicas, else just show it."""
        cfg = state.config
        stats = read.stats
        observation = Observation(
            waiting=stats.waiting, in_flight=stats.in_flight,
            oldest_wait_seconds=stats.oldest_wait_seconds, current_replicas=target.replicas,
        )
        # A scale-down may have to be decided again once the busy pods are known, from the history
        # as it was: keep a copy, but only where a scale-down is possible at all.
        may_drain = target.replicas > 0 and cfg.drain and not cfg.scaling.paused
        history_before = History.from_dict(state.history.to_dict()) if may_drain else None
        decision = decide(observation, cfg.scaling, state.history, read.now)
        if decision.replicas != target.replicas and not cfg.scaling.paused:
            return self._act(state, target, read, broker, observation, decision, history_before)
        self._show_decision(state, target, read, decision, target.replicas)
        return None

    async def _act(self, state: TaskQueueState, target: Target, read: Read, broker: BrokerLoop,
                   observation: Observation, decision: Decision, history_before: History | None) -> None:
        cfg = state.config
        now = read.now
        if decision.replicas < target.replicas and history_before is not None:
            busy = await self._busy_pods(state, broker, now, max_age=BUSY_RECHECK_SECONDS)
            busy_replicas = sum(1 for running in busy.running.values() if running) if busy else 0
            if busy_replicas > decision.replicas:
                # Busy workers are not scaled away: decide this tick again, knowing how many are busy.
                state.history = history_before
                decision = decide(replace(observation, busy_replicas=busy_replicas), cfg.scaling, state.history, now)
        replicas = target.replicas
        if decision.replicas != target.replicas:
            if await self._scale(state, target, decision, broker, now):
                replicas = decision.replicas
        self._show_decision(state, target, read, decision, replicas)

    def _show_decision(self, state: TaskQueueState, target: Target, read: Read, decision: Decision,
                       replicas: int) -> None:
        cfg = state.config
        state.series.set_replicas(decision.replicas, replicas)
        limited, reason, message = st.scaling_limited(decision)
        self.show(state, st.View(
            generation=cfg.generation,
            conditions=(read.metrics,
                        st.Condition(st.READY, True, "Scaling", f"scaling {cfg.target.kind} {cfg.target.name}"),
                        st.Condition(st.SCALING_LIMITED, limited, reason, message)),
            measured=read.measured,
            last_decision=f"{decision.reason}: {decision.message}",
            replicas=(replicas, target.ready_replicas, decision.replicas),
            last_scale_time=state.last_scale_time,
            history=True,
        ), read.now)

    def _show_problem(self, state: TaskQueueState, read: Read, reason: str, message: str, last_decision: str) -> None:
        """Measured, but not scaling: Ready is False for ``reason``."""
        self.show(state, st.View(
            generation=state.config.generation,
            conditions=(read.metrics, st.Condition(st.READY, False, reason, message)),
            measured=read.measured, last_decision=last_decision,
        ), read.now)

    def metrics_unavailable(self, state: TaskQueueState, exc: Exception, label: str, now: float) -> Awaitable[None] | None:
        """Redis could not be read: keep the replicas as they are and say so."""
        cfg = state.config
        message = f"cannot read queue {cfg.queue} from {label}: {exc}"[:512]
        event = None
        if not state.metrics_down:
            state.metrics_down = True
            event = self._event(state, "Warning", "MetricsUnavailable", f"{message}; replicas are left as they are")
        self.show(state, st.View(cfg.generation, (
            st.Condition(st.METRICS_AVAILABLE, False, "RedisUnavailable", message),)), now)
        return event

    def show(self, state: TaskQueueState, view: st.View, now: float) -> None:
        """Hand ``view`` to the status writer if the status needs it (the tick never waits for the write)."""
        if state.pending is not None and state.pending[0] == view:
            return
        due = now - state.status_written_at >= self.settings.status_interval_seconds
        if st.write_due(state.view_written, view, measurements_due=due):
            self.writer.submit(state, view, now, urgent=st.is_urgent(state.view_written, view))

    async def _target(self, state: TaskQueueState, now: float) -> Target | None:
        cfg = state.config
        ref = (cfg.namespace, cfg.target.kind, cfg.target.name)
        target = self.targets.get(*ref)
        if target is not None:
            state.target_missing = False
            return target
        # Not (yet) seen by the watch: ask the API server, and for a missing target only now and then.
        if state.target_missing and now - state.target_checked_at < RESOLVE_INTERVAL_SECONDS:
            return None
        state.target_checked_at = now
        async with self._api_slots:
            scale = await asyncio.to_thread(self.kube.read_scale, *ref)
        state.target_missing = scale is None
        if scale is None:
            return None
        self.targets.expect(*ref, scale.replicas, None)  # until the watch reports it
        return self.targets.get(*ref)

    async def _scale(self, state: TaskQueueState, target: Target, decision: Decision,
                     broker: BrokerLoop, now: float) -> bool:
        cfg = state.config
        ref = (cfg.namespace, cfg.target.kind, cfg.target.name)
        up = decision.replicas > target.replicas
        try:
            async with self._api_slots:
                if not up and cfg.drain:
                    await self._protect_busy_pods(state, broker)
                version = await asyncio.to_thread(self.kube.patch_scale, *ref, decision.replicas)
        except ApiException as exc:
            self.metrics.api_errors.labels("patch_scale").inc()
            log.warning("cannot scale %s %s/%s to %d: %s", cfg.target.kind, cfg.namespace, cfg.target.name,
                        decision.replicas, exc.reason)
            return False
        self.targets.expect(*ref, decision.replicas, version)
        state.last_scale_time = st.utc_iso(now)
        self.metrics.scale_events.labels("up" if up else "down").inc()
        log.info("TaskQueue %s/%s: %s %s %d -> %d (%s)", cfg.namespace, cfg.name, cfg.target.kind,
                 cfg.target.name, target.replicas, decision.replicas, decision.reason)
        await self._event(
            state, "Normal", "ScaledUp" if up else "ScaledDown",
            f"{cfg.target.kind} {cfg.target.name}: {target.replicas} -> {decision.replicas} replicas. "
            f"{decision.reason}: {decision.message}",
        )
        return True

    async def _busy_pods(self, state: TaskQueueState, broker: BrokerLoop, now: float,
                         max_age: float) -> BusyPods | None:
        """The target's pods and how many tasks each runs, asked of the workers at most every ``max_age`` s."""
        if state.busy is not None and now - state.busy_checked_at <= max_age:
            return state.busy
        cfg = state.config
        scale = await asyncio.to_thread(self.kube.read_scale, cfg.namespace, cfg.target.kind, cfg.target.name)
        if scale is None or not scale.selector:
            return None
        pods = await asyncio.to_thread(self.kube.pod_costs, cfg.namespace, scale.selector)
        if not pods:
            return None
        try:
            active = await asyncio.to_thread(broker.inspector(self.settings.inspect_timeout_seconds).active)
        except Exception as exc:  # noqa: BLE001 - without an answer, scale down as Kubernetes would
            log.warning("TaskQueue %s/%s: cannot ask workers what they run: %s", cfg.namespace, cfg.name, exc)
            return None
        state.busy, state.busy_checked_at = BusyPods(costs=pods, running=active_tasks_by_pod(active, pods)), now
        return state.busy

    async def _protect_busy_pods(self, state: TaskQueueState, broker: BrokerLoop) -> None:
        """Give busy worker pods a high deletion cost and idle ones a low one, just before a scale-down."""
        cfg = state.config
        # Fresh within this tick: a task may have started on an "idle" pod since the last look.
        busy = await self._busy_pods(state, broker, time.time(), max_age=BUSY_FRESH_SECONDS)
        if busy is None:
            return
        for pod, cost in deletion_costs(busy.running, busy.costs).items():
            await asyncio.to_thread(self.kube.set_pod_cost, cfg.namespace, pod, cost)

    async def _event(self, state: TaskQueueState, type_: str, reason: str, message: str) -> None:
        await asyncio.to_thread(self.kube.event, state.config, type_, reason, message)


@dataclass(frozen=True)
class Read:
    """One TaskQueue's share of a tick's read."""

    stats: QueueStats
    now: float
    metrics: st.Condition  # MetricsAvailable, as read

    @property
    def measured(self) -> tuple[int, int, int, int]:
        return (self.stats.waiting, self.stats.in_flight, self.stats.scheduled,
                int(self.stats.oldest_wait_seconds or 0))


def _chain(first: Awaitable[None] | None, second: Awaitable[None] | None) -> Awaitable[None] | None:
    """One awaitable for two that must run in order (either may be None)."""
    if first is None or second is None:
        return first if second is None else second

    async def both() -> None:
        await first
        await second

    return both()
