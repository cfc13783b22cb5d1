"""TaskQueue status writes, off the tick's path.

The tick decides what each TaskQueue's status should say (a ``status.DesiredStatus``) and hands it
over; a writer task renders and PATCHes it later. Per TaskQueue only the latest is kept (a newer one
replaces one not yet written), and at most one write per TaskQueue is in flight, so writes never
overtake each other. Urgent changes (replicas, conditions, decisions: what ``write_due`` calls
urgent) are written first and as fast as the API slots allow; measurement refreshes wait behind
them, at most ``per_second`` a second, so 1,000 busy queues cost the API server and the operator a
fixed budget instead of 200 PATCHes a second.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from kubernetes.client.exceptions import ApiException

from stalk_operator import status as st
from stalk_operator.kube import KubeApi
from stalk_operator.metrics import OperatorMetrics
from stalk_operator.state import TaskQueueState

log = logging.getLogger(__name__)


class StatusWriter:
    def __init__(self, kube: KubeApi, metrics: OperatorMetrics, *, slots: int, per_second: float,
                 may_write: Callable[[], bool]) -> None:
        self.kube = kube
        self.metrics = metrics
        self._slot_count = slots
        self._slots = asyncio.Semaphore(slots)
        self._interval = 1.0 / per_second
        self._may_write = may_write
        # Insertion-ordered: the oldest waiting write first.
        self._urgent: dict[TaskQueueState, None] = {}
        self._routine: dict[TaskQueueState, None] = {}
        self._writing: set[TaskQueueState] = set()
        self._wake = asyncio.Event()
        self._next_routine = 0.0

    def submit(self, state: TaskQueueState, desired: st.DesiredStatus, now: float, *, urgent: bool) -> None:
        """Have ``desired`` written, replacing any desired status of the same TaskQueue not yet written."""
        state.pending = (desired, now)
        state.pending_urgent = state.pending_urgent or urgent
        if state not in self._writing:
            self._enqueue(state)

    def pending(self) -> int:
        return len(self._urgent) + len(self._routine) + len(self._writing)

    def clear(self) -> None:
        """Drop what waits (the leadership is gone: the next leader writes its own)."""
        for state in (*self._urgent, *self._routine):
            state.pending, state.pending_urgent = None, False
        self._urgent.clear()
        self._routine.clear()

    def _enqueue(self, state: TaskQueueState) -> None:
        if state.pending_urgent:
            self._routine.pop(state, None)
            self._urgent.setdefault(state)
        elif state not in self._urgent:
            self._routine.setdefault(state)
        self._wake.set()

    async def run(self) -> None:
        # Made here, in the loop that runs the writer (asyncio primitives bind to one event loop).
        self._slots = asyncio.Semaphore(self._slot_count)
        self._wake = asyncio.Event()
        # Threads of its own: writes stuck on a slow API server must not take the default
        # executor's few threads (min(32, CPUs + 4)) from the Redis read and the scale patches.
        self._threads = ThreadPoolExecutor(self._slot_count, thread_name_prefix="status-writer")
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                state = await self._next()
                if not self._may_write():
                    state.pending, state.pending_urgent = None, False
                    self.clear()
                    continue
                await self._slots.acquire()
                self._writing.add(state)
                task = asyncio.create_task(self._write(state))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._threads.shutdown(wait=False, cancel_futures=True)

    async def _next(self) -> TaskQueueState:
        while True:
            if self._urgent:
                state = next(iter(self._urgent))
                del self._urgent[state]
                return state
            if self._routine:
                delay = self._next_routine - time.monotonic()
                if delay <= 0:
                    self._next_routine = time.monotonic() + self._interval
                    state = next(iter(self._routine))
                    del self._routine[state]
                    return state
            else:
                delay = None
            self._wake.clear()
            try:  # an urgent write may arrive while a routine one waits for its turn
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    async def _write(self, state: TaskQueueState) -> None:
        try:
            if state.pending is None:
                return
            desired, now = state.pending
            state.pending, state.pending_urgent = None, False
            history = state.history.to_dict() if desired.history else None
            rendered = st.render(desired, state.status, now, history)
            # The tick found the write due; status_patch leaves out what the object already says.
            patch = st.status_patch(state.status, rendered)
            if patch is None:
                state.desired_written = desired
                return
            try:
                written = await asyncio.get_running_loop().run_in_executor(
                    self._threads, functools.partial(self.kube.patch_status, *state.config.key, patch))
            except ApiException as exc:
                self.metrics.api_errors.labels("patch_status").inc()
                log.warning("TaskQueue %s/%s: status not written: %s", *state.config.key, exc.reason)
                return  # desired_written stays: the next tick hands the desired status over again
            if written:
                state.status = st.apply_patch(state.status, patch)
                state.status_written_at = now
                state.desired_written = desired
        except Exception:  # noqa: BLE001 - one TaskQueue's failure must not stop the writer
            log.exception("TaskQueue %s/%s: status write failed", *state.config.key)
        finally:
            self._writing.discard(state)
            self._slots.release()
            if state.pending is not None:  # handed over again while this write was in flight
                self._enqueue(state)
