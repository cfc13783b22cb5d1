"""One recovery pass: the I/O around ``rules.decide``. Candidates from the records, two Redis reads
a gap apart, the workers' inspection, then a republish through the API's publish path.

Only one recoverer acts at a time: a Redis lock with an expiry (``LOCK_KEY``), renewed while the
pass runs and checked before each publish (``lock.PassLock``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

import redis
import sqlalchemy as sa
from celery import Celery
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.orm import sessionmaker

from stalk_api import publishing
from stalk_api.recovery.lock import PassLock
from stalk_api.recovery.presence import present_task_ids
from stalk_api.recovery.rules import MIN_READ_GAP_SECONDS, UNFINISHED, Action, Evidence, decide
from stalk_workers.records import store
from stalk_workers.records.models import TaskRecord

log = logging.getLogger(__name__)

LOCK_KEY = "stalk:recover:lock"
# The lock's expiry: how soon it frees itself after a recoverer dies. A pass that runs longer keeps
# it by renewing it (lock.PassLock).
LOCK_SECONDS = 60.0
# Records read at a time; a pass reads them all, page after page, so a long healthy backlog of
# old, present tasks cannot hide newer lost ones behind it (a failover loses the newest writes).
BATCH = 500


def create_counter(registry: CollectorRegistry) -> Counter:
    """stalk_recover_tasks_recovered_total{queue}: the recoverer's one metric."""
    return Counter("stalk_recover_tasks_recovered", "Tasks whose lost message was published again.",
                   ["queue"], registry=registry)


class Recoverer:
    def __init__(self, *, celery: Celery, sessions: sessionmaker, client: redis.Redis, queues: list[str],
                 recover_after: float, key_prefix: str = "", inspect_timeout: float = 1.0,
                 read_gap: float = MIN_READ_GAP_SECONDS, sleep: Callable[[float], None] = time.sleep,
                 lock_seconds: float = LOCK_SECONDS) -> None:
        self.celery, self.sessions, self.client, self.queues = celery, sessions, client, queues
        self.recover_after, self.key_prefix, self.inspect_timeout = recover_after, key_prefix, inspect_timeout
        self.read_gap, self.sleep, self.lock_seconds = read_gap, sleep, lock_seconds
        self.registry = CollectorRegistry()
        self.recovered = create_counter(self.registry)
        for queue in queues:  # exported at 0 from the start: an alert on increase() sees the first recovery
            self.recovered.labels(queue)

    def run_once(self) -> int | None:
        """One pass; how many tasks it recovered, or None when another recoverer holds the lock."""
        lock = PassLock(self.client, self.key_prefix + LOCK_KEY, seconds=self.lock_seconds)
        if not lock.acquire():
            return None
        with lock:
            return self._pass(lock)

    def _candidates(self, *, older_than, after: tuple | None = None) -> list[TaskRecord]:
        """One page of unfinished, published records unchanged since ``older_than``, oldest first,
        after the (updated_at, task_id) ``after`` (keyset paging: stable while records change)."""
        query = (sa.select(TaskRecord)
                 .where(TaskRecord.status.in_(sorted(UNFINISHED)), TaskRecord.published,
                        TaskRecord.updated_at < older_than)
                 .order_by(TaskRecord.updated_at, TaskRecord.task_id).limit(BATCH))
        if after is not None:
            query = query.where(sa.tuple_(TaskRecord.updated_at, TaskRecord.task_id) > after)
        with self.sessions() as session:
            return list(session.scalars(query))

    def _held_by_workers(self) -> set[str]:
        inspect = self.celery.control.inspect(timeout=self.inspect_timeout)
        held: set[str] = set()
        for answer in (inspect.active() or {}, inspect.reserved() or {}, inspect.scheduled() or {}):
            for tasks in answer.values():
                for task in tasks or []:
                    task_id = (task.get("request") or task).get("id") if isinstance(task, dict) else None
                    if task_id:
                        held.add(task_id)
        return held

    def _pass(self, lock: PassLock) -> int:
        older_than = store.utcnow() - timedelta(seconds=self.recover_after)
        candidates = self._candidates(older_than=older_than)
        if not candidates:
            return 0
        first_at, first = store.utcnow(), present_task_ids(self.client, self.queues, key_prefix=self.key_prefix)
        self.sleep(self.read_gap)
        held = self._held_by_workers()
        second_at, second = store.utcnow(), present_task_ids(self.client, self.queues, key_prefix=self.key_prefix)
        recovered, page = 0, candidates
        with self.sessions() as session:
            while page:
                for candidate in page:
                    record = store.get(session, candidate.task_id)
                    session.refresh(record)  # read again: a task that finished during the check is left
                    decision = decide(Evidence(
                        status=record.status, published=record.published, updated_at=store.as_utc(record.updated_at),
                        in_redis_first=record.task_id in first, in_redis_second=record.task_id in second,
                        held_by_worker=record.task_id in held, first_read_at=first_at, second_read_at=second_at,
                    ), now=store.utcnow(), recover_after=self.recover_after)
                    if decision.action is not Action.RECOVER:
                        continue
                    if not lock.held():  # another recoverer may be acting now: publishing could send a task twice
                        log.warning("lost the recoverer's lock during a pass: stopped after %d recoveries", recovered)
                        return recovered
                    # Counted before the publish, committed after it: the row stays locked meanwhile, so a
                    # worker that runs the new message at once records SUCCESS after the count (counted
                    # after, an instant task was published and never counted); a task that finished since
                    # the refresh is not published again at all.
                    if not store.mark_recovered(session, task_id=record.task_id):
                        session.rollback()
                        continue
                    try:
                        publishing.publish(self.celery, [{
                            "task_id": record.task_id, "task_name": record.task_name, "queue": record.queue,
                            "args": record.args or [], "kwargs": record.kwargs or {}, "eta": store.as_utc(record.eta),
                            "priority": record.priority,
                        }], sent_at=time.time())
                    except BaseException:
                        session.rollback()
                        raise
                    session.commit()
                    self.recovered.labels(record.queue).inc()
                    recovered += 1
                    log.warning("recovered task %s (%s on %s): %s", record.task_id, record.task_name, record.queue,
                                decision.reason)
                # The next page of the same cutoff: what this pass recovered is newer than it, so not read again.
                last = page[-1]
                page = (self._candidates(older_than=older_than, after=(last.updated_at, last.task_id))
                        if len(page) == BATCH else [])
        return recovered
