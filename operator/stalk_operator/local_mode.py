"""Local mode: the operator's policy, applied to Celery worker processes on this machine.

``stalk dev`` (and so ``make run``) uses it to show autoscaling without Kubernetes: every
``poll_seconds`` one ``QueueReader.read()`` measures all queues, and the operator's own reconcile
(``reconcile.plan`` then ``reconcile.apply``) runs per queue with a ``LocalActuator``, which
starts or stops ``celery worker`` processes instead of patching a Deployment.

Stopping relies on Celery's warm shutdown: on SIGTERM a worker stops consuming, finishes the tasks
it is running, and (acks_late) gives its prefetched, unstarted tasks back to Redis (kombu restores
unacked messages when the channel closes). The actuator stops idle workers before busy ones.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import redis
from celery import Celery
from celery.utils.nodenames import host_format

from stalk_operator import tethered
from stalk_operator.policy import Decision, History, ScalingSpec
from stalk_operator.reconcile import BUSY_FRESH_SECONDS, BUSY_RECHECK_SECONDS, Outage, apply, plan
from stalk_workers.queue_reader import QueueReader
from stalk_workers.queues import QueueSpec

log = logging.getLogger("stalk.local")

DEFAULT_APP_MODULE = "stalk_workers.app"
# How long the actuator waits for workers' replies when it asks which ones are running a task.
INSPECT_TIMEOUT_SECONDS = 1.0
# How long ``stop()`` lets workers finish their running tasks before killing them.
STOP_TIMEOUT_SECONDS = 60.0

# Given worker node names: the number of running tasks of each worker that answered.
ActiveTasks = Callable[[list[str]], dict[str, int]]
# Given a node name pattern (``queue-0@%h``): the command that runs one worker.
WorkerCommand = Callable[[str], list[str]]


def celery_active_tasks(app: Celery, *, timeout: float = INSPECT_TIMEOUT_SECONDS) -> ActiveTasks:
    """Ask workers what they run with Celery's remote control (``inspect().active()``)."""

    def active(names: list[str]) -> dict[str, int]:
        try:
            replies = app.control.inspect(destination=names, timeout=timeout).active() or {}
        except Exception as exc:  # noqa: BLE001 - the broker may be down; then nobody is known idle
            log.warning("cannot ask workers what they run: %s", exc)
            return {}
        return {name: len(tasks) for name, tasks in replies.items() if name in names}

    return active


@dataclass
class _Worker:
    name: str  # the node name, host expanded, as remote-control replies spell it
    index: int
    process: subprocess.Popen


class LocalActuator:
    """The worker processes of one queue: start more, or stop the newest idle ones."""

    def __init__(
        self,
        queue: QueueSpec,
        *,
        app_module: str = DEFAULT_APP_MODULE,
        env: Mapping[str, str] | None = None,
        active_tasks: ActiveTasks | None = None,
        log_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        command: WorkerCommand | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.queue = queue
        self._app_module = app_module
        self._env = dict(env) if env is not None else None  # None: the workers inherit ours
        self._active_tasks = active_tasks
        self._log_dir = log_dir
        self._extra_args = tuple(extra_args)
        self._command = command or self._celery_worker
        self._clock = clock
        self._running: list[_Worker] = []  # oldest first
        self._stopping: list[_Worker] = []
        # The workers' last answer to "what do you run" and when it came (see reconcile's BUSY_*).
        self._active: dict[str, int] | None = None
        self._active_at = float("-inf")
        self._marked: dict[str, int] | None = None

    @property
    def replicas(self) -> int:
        """Workers running and not asked to stop."""
        self._reap()
        return len(self._running)

    @property
    def worker_names(self) -> list[str]:
        """Node names of the running workers, oldest first."""
        return [w.name for w in self._running]

    @property
    def alive(self) -> int:
        """Worker processes not yet exited, including those finishing their tasks after SIGTERM."""
        self._reap()
        return len(self._running) + len(self._stopping)

    # ---- the reconcile's actuator (reconcile.Actuator) ------------------------------------------
    async def busy_workers(self) -> int | None:
        active = self._ask(max_age=BUSY_RECHECK_SECONDS)
        return None if active is None else sum(1 for running in active.values() if running)

    async def mark_idle(self) -> None:
        # Fresh within this tick: a task may have started on an "idle" worker since the last look.
        self._marked = self._ask(max_age=BUSY_FRESH_SECONDS)

    async def scale_to(self, replicas: int, decision: Decision) -> bool:
        log.info("%s: %d -> %d workers (%s: %s)", self.queue.name, self.replicas, replicas, decision.reason,
                 decision.message)
        self.scale(replicas)
        return True

    def _ask(self, max_age: float) -> dict[str, int] | None:
        """Running tasks per worker that answered, asked at most every ``max_age`` seconds."""
        if self._active_tasks is None or not self._running:
            return None
        now = self._clock()
        if self._active is None or now - self._active_at > max_age:
            self._active, self._active_at = self._active_tasks(self.worker_names), now
        return self._active

    # ---- processes --------------------------------------------------------------------------------
    def scale(self, replicas: int) -> None:
        """Start workers, or stop the newest idle ones (those ``mark_idle`` found idle, else asked now)."""
        self._reap()
        while len(self._running) < replicas:
            self._start()
        surplus = len(self._running) - replicas
        if surplus > 0:
            for worker in self._pick_to_stop(surplus):
                self._terminate(worker)

    def restart(self) -> int:
        """Replace every running worker by a new one (new code), the old ones stopping with a warm
        shutdown as on a scale-down: their running tasks finish, prefetched ones go back to Redis."""
        self._reap()
        count = len(self._running)
        self.terminate()
        self.scale(count)
        return count

    def terminate(self) -> None:
        """Ask every worker to stop (warm shutdown), without waiting."""
        for worker in list(self._running):
            self._terminate(worker)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Warm-stop every worker, wait for running tasks to finish, kill what outlives ``timeout``."""
        self.terminate()
        deadline = time.monotonic() + timeout
        for worker in self._stopping:
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s: worker %s still running after %.0fs; killing it", self.queue.name, worker.name,
                            timeout)
                worker.process.kill()
                worker.process.wait()
            tethered.kill_group(worker.process)  # pool processes a killed worker left
        self._stopping.clear()

    def kill(self) -> None:
        """SIGKILL every worker and what it started, now (a second Ctrl-C while stopping)."""
        for worker in self._running + self._stopping:
            tethered.kill_group(worker.process)

    def _start(self) -> None:
        used = {w.index for w in self._running + self._stopping}
        index = next(i for i in range(len(used) + 1) if i not in used)
        pattern = f"{self.queue.name}-{index}@%h"
        command = self._command(pattern)
        output = None
        if self._log_dir is not None:
            output = open(self._log_dir / f"{self.queue.name}-{index}.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            # Tethered: dies with this process; out of the terminal's group, so a Ctrl-C reaches only
            # the parent, whose stop() then gives every worker one SIGTERM (warm shutdown).
            process = tethered.start(command, env=self._env, output=output)
        finally:
            if output is not None:
                output.close()
        self._running.append(_Worker(name=host_format(pattern), index=index, process=process))

    def _pick_to_stop(self, count: int) -> list[_Worker]:
        # Idle workers first, then those that did not answer (most likely still starting; a solo
        # pool only answers between tasks), busy ones last; newest first within each, as the
        # ReplicaSet controller does. A busy one stopped anyway finishes its task (warm shutdown).
        active, self._marked = self._marked, None
        if active is None:
            active = self._active_tasks(self.worker_names) if self._active_tasks else {}

        def rank(worker: _Worker) -> int:
            running = active.get(worker.name)
            return 1 if running is None else (0 if running == 0 else 2)

        return sorted(reversed(self._running), key=rank)[:count]

    def _terminate(self, worker: _Worker) -> None:
        # SIGTERM is Celery's warm shutdown: the running task finishes, nothing is lost.
        self._running.remove(worker)
        self._stopping.append(worker)
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)

    def _celery_worker(self, pattern: str) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", self._app_module, "worker", "-Q", self.queue.name,
            "-n", pattern, "--concurrency", str(self.queue.concurrency), "--pool", self.queue.pool,
            *self._extra_args,
        ]

    def _reap(self) -> None:
        for worker in [w for w in self._running if w.process.poll() is not None]:
            log.warning("%s: worker %s exited on its own (code %s)", self.queue.name, worker.name,
                        worker.process.returncode)
            self._running.remove(worker)
        self._stopping = [w for w in self._stopping if w.process.poll() is None]


def scaling_spec(queue: QueueSpec, template: ScalingSpec = ScalingSpec()) -> ScalingSpec:
    """The policy's spec for one queue: the queue table's limits over the template's behaviour."""
    return replace(template, min_replicas=queue.min_replicas, max_replicas=queue.max_replicas,
                   tasks_per_replica=queue.tasks_per_replica,
                   max_wait_seconds=queue.max_wait_seconds if queue.max_wait_seconds is not None
                   else template.max_wait_seconds)


class LocalAutoscaler:
    """Every ``poll_seconds``: read all queues once, decide per queue, start/stop workers."""

    def __init__(
        self,
        queues: Sequence[QueueSpec],
        client: redis.Redis,
        *,
        key_prefix: str = "",
        app_module: str = DEFAULT_APP_MODULE,
        control_app: Celery | None = None,
        template: ScalingSpec = ScalingSpec(),
        poll_seconds: float = 1.0,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        worker_args: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ):
        self.poll_seconds = poll_seconds
        self._reader = QueueReader(client, key_prefix=key_prefix, clock=clock)
        self._clock = clock
        active = celery_active_tasks(control_app) if control_app is not None else None
        self.specs = {q.name: scaling_spec(q, template) for q in queues}
        self.actuators = {
            q.name: LocalActuator(q, app_module=app_module, env=env, active_tasks=active, log_dir=log_dir,
                                  extra_args=worker_args)
            for q in queues
        }
        self._histories = {q.name: History() for q in queues}
        self._outage = Outage()
        # A tick and a restart (stalk dev's reloader thread) never change the same workers at once.
        self._lock = threading.Lock()

    def tick(self) -> dict[str, Decision]:
        """One measurement and one decision per queue; replicas stay as they are if Redis is down."""
        now = self._clock()
        try:
            stats = self._reader.read(list(self.actuators))
        except redis.RedisError as exc:
            if self._outage.failed(now):
                log.warning("cannot read queues from Redis, keeping workers as they are: %s", exc)
            return {}
        if self._outage.recovered(now) is not None:
            log.info("reading queues from Redis again")
        # The reconcile's actuator calls are coroutines: each tick runs them on an event loop of its own,
        # so stop() from another thread (stalk dev's Ctrl-C) never meets a loop in use.
        with self._lock:
            return asyncio.run(self._reconcile(stats, now))

    def restart_workers(self) -> int:
        """Restart every running worker of every queue (warm shutdown); returns how many."""
        with self._lock:
            return sum(actuator.restart() for actuator in self.actuators.values())

    async def _reconcile(self, stats, now: float) -> dict[str, Decision]:
        decisions = {}
        for name, actuator in self.actuators.items():
            spec, history = self.specs[name], self._histories[name]
            planned = plan(stats[name], spec, history, actuator.replicas, now)
            decisions[name] = (await apply(planned, actuator, spec, history, now)).decision
        return decisions

    def run(self, stop_event: threading.Event) -> None:
        """Tick until ``stop_event`` is set, then stop every worker."""
        try:
            while not stop_event.is_set():
                started = time.monotonic()
                self.tick()
                stop_event.wait(max(0.0, self.poll_seconds - (time.monotonic() - started)))
        finally:
            self.stop()

    def kill(self) -> None:
        """SIGKILL all workers of all queues now."""
        for actuator in self.actuators.values():
            actuator.kill()

    def stop(self) -> None:
        """Warm-stop all workers of all queues (running tasks finish first)."""
        for actuator in self.actuators.values():
            actuator.terminate()  # all at once, so their running tasks finish in parallel
        for actuator in self.actuators.values():
            actuator.stop()
