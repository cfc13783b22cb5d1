"""Submitting tasks: validate, record as PENDING and publish, as one unit.

Order matters (``record_and_publish``): the record is committed first, marked unpublished, then
the message is published, then the record is marked published. A database that fails fails
before anything is published; a broker that fails gets the record removed again. So a 202 always
means both happened, a 503 leaves nothing behind, and no message exists without a record.
(The earlier order, publish then commit, left 6,139 messages without a record or a 202 when the
SQLite file turned read-only: the revoke meant to undo them reaches nobody while no worker runs.)
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property

import redis

from celery import Celery
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import sessionmaker

from stalk_api import publishing
from stalk_api.config import ApiSettings
from stalk_api.database import Database
from stalk_api.ids import new_task_ids
from stalk_api.schemas import TaskCreate
from stalk_api.writer import Writer
from stalk_workers import redis_tls
from stalk_workers.queue_reader import QueueReader
from stalk_workers.records import store
from stalk_workers.records.models import TaskRecord
from stalk_workers.unconsumed import unconsumed_lists

log = logging.getLogger(__name__)


_reader_lock = threading.Lock()


class SubmissionError(Exception):
    status_code = 400

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class UnknownTask(SubmissionError):
    status_code = 404


class Conflict(SubmissionError):
    status_code = 409


class Unavailable(SubmissionError):
    status_code = 503


@dataclass(frozen=True)
class Gateway:
    """What submitting needs: the Celery app (to route and publish) and the record store."""

    celery: Celery
    database: Database
    settings: ApiSettings

    @property
    def sessions(self) -> sessionmaker:
        return self.database.sessions

    @cached_property
    def leftovers(self) -> Leftovers:
        return Leftovers()

    @cached_property
    def writer(self) -> Writer:
        return Writer(inline=self.database.engine.dialect.name == "sqlite")

    def submittable(self, name: str) -> bool:
        # Celery's own tasks (celery.chord_unlock, celery.backend_cleanup, ...) are internal.
        return name in self.celery.tasks and not name.startswith("celery.")

    def signature(self, name: str) -> inspect.Signature | None:
        """The parameters a registered task takes (``self`` of a bound task left out); None if unknown."""
        if name not in self._signatures:
            try:
                # A task with autoretry_for runs through Celery's wrapper, which keeps the function's
                # own signature in __wrapped__ (vine's wraps); inspect follows it.
                self._signatures[name] = inspect.signature(self.celery.tasks[name].run)
            except (KeyError, TypeError, ValueError):
                self._signatures[name] = None
        return self._signatures[name]

    @cached_property
    def _signatures(self) -> dict[str, inspect.Signature | None]:
        return {}

    def queue_names(self) -> list[str]:
        return [q.name for q in self.celery.conf.stalk_queues]

    def routed_queue(self, name: str) -> str:
        """The queue a task goes to when the submission names none (the app's routes, fixed at start)."""
        queue = self._routed.get(name)
        if queue is None:
            queue = self._routed[name] = self.celery.amqp.router.route({}, name)["queue"].name
        return queue

    @cached_property
    def _routed(self) -> dict[str, str]:
        return {}

    def can_terminate(self, queue: str) -> bool:
        """Whether the queue's pool can stop a running task: only prefork's processes can be killed
        (Celery's threads and solo pools raise NotImplementedError in the worker, and the task runs on)."""
        spec = next((q for q in self.celery.conf.stalk_queues if q.name == queue), None)
        return spec is None or spec.pool == "prefork"

    def has_queue(self, name: str) -> bool:
        return name in self._queue_set

    @cached_property
    def _queue_set(self) -> frozenset[str]:
        return frozenset(self.queue_names())

    @cached_property
    def committer(self) -> GroupCommitter:
        return GroupCommitter(self)

    @cached_property
    def _broker(self) -> redis.Redis:
        return self.settings.broker_client(timeout=5)

    @cached_property
    def _reader(self) -> QueueReader:
        return QueueReader(self._broker, key_prefix=self.settings.broker_key_prefix)

    def read_queues(self, names: list[str]) -> dict:
        """Queue stats from the shared reader; it keeps state between reads, so one at a time."""
        with _reader_lock:
            return self._reader.read(names)

    @cached_property
    def _unconsumed(self) -> _Unconsumed:
        return _Unconsumed()

    def unconsumed(self, claimed: set[str]) -> dict[str, int]:
        """Lists holding messages of queues not in ``claimed`` (stalk_workers.unconsumed): exact list
        name -> messages. A keyspace walk, so one answer serves ``unconsumed_scan_seconds``."""
        look = self._unconsumed
        with look.lock:  # one walk at a time; callers meanwhile get its answer
            if time.monotonic() - look.at >= self.settings.unconsumed_scan_seconds:
                look.found = unconsumed_lists(self._broker, key_prefix=self.settings.broker_key_prefix,
                                              claimed=claimed)
                look.at = time.monotonic()
            return look.found


@dataclass
class _Unconsumed:
    found: dict[str, int] = field(default_factory=dict)
    at: float = float("-inf")
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class Prepared:
    body: TaskCreate
    queue: str
    eta: datetime | None


def prepare(gateway: Gateway, body: TaskCreate, *, where: str = "") -> Prepared:
    """Check a submission against the registry and the limits; raise a SubmissionError if it is wrong."""
    if not gateway.submittable(body.task):
        raise UnknownTask(f"{where}task {body.task!r} is not registered; GET /v1/task-types lists what can be submitted")
    _check_arguments(gateway, body, where)
    queue = body.queue or gateway.routed_queue(body.task)
    if not gateway.has_queue(queue):
        raise SubmissionError(f"{where}queue {queue!r} does not exist; queues: {', '.join(gateway.queue_names())}")
    limit = gateway.settings.max_countdown_seconds
    # A countdown is compared by its value, before a datetime is made of it (1e12 s overflows one).
    if body.countdown and body.countdown > limit:
        raise _beyond_limit(gateway, body.countdown, where)
    eta = _eta(body, where)
    if eta is not None and (eta - datetime.now(UTC)).total_seconds() > limit:
        raise _beyond_limit(gateway, (eta - datetime.now(UTC)).total_seconds(), where)
    return Prepared(body=body, queue=queue, eta=eta)


def _check_arguments(gateway: Gateway, body: TaskCreate, where: str) -> None:
    # Arguments the task cannot take would fail on every run, and its retries with them.
    signature = gateway.signature(body.task)
    if signature is None:
        return
    try:
        signature.bind(*body.args, **body.kwargs)
    except TypeError as exc:
        plain = signature.replace(parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
                                  return_annotation=signature.empty)
        raise SubmissionError(f"{where}arguments do not fit {body.task}{plain}: {exc}") from None


def _beyond_limit(gateway: Gateway, ahead: float, where: str) -> SubmissionError:
    return SubmissionError(
        f"{where}the task is scheduled {ahead:.0f}s ahead, beyond the limit "
        f"of {gateway.settings.max_countdown_seconds}s: Redis would deliver it again after its visibility timeout "
        f"({gateway.settings.visibility_timeout_seconds}s) while it still waits. Schedule it closer, "
        "or raise STALK_VISIBILITY_TIMEOUT_SECONDS"
    )


def _eta(body: TaskCreate, where: str) -> datetime | None:
    try:
        if body.countdown:
            return datetime.now(UTC) + timedelta(seconds=body.countdown)
        if body.eta is not None:
            return body.eta.astimezone(UTC)
    except OverflowError:  # times near year 1 or 9999 do not survive the move to UTC
        raise SubmissionError(f"{where}the schedule is out of range: {body.eta or body.countdown}") from None
    return None


def submit(
    gateway: Gateway, body: TaskCreate, *, idempotency_key: str | None = None, retry_of: str | None = None
) -> tuple[TaskRecord | Submitted, bool]:
    """Record and publish one task, on a worker thread. Returns (task, replayed): replayed when the
    Idempotency-Key was seen before."""
    prepared = prepare(gateway, body)
    if idempotency_key is not None:
        existing = _replay(gateway, idempotency_key, body)
        if existing is not None:
            return existing, True
    try:
        return record_and_publish(gateway, [(prepared, retry_of, idempotency_key)])[0], False
    except IntegrityError:
        # Another request with the same Idempotency-Key committed first: answer with its task.
        existing = _replay(gateway, idempotency_key, body) if idempotency_key else None
        if existing is None:
            raise Unavailable("the task database refused the record; nothing was submitted") from None
        return existing, True


@dataclass(frozen=True)
class Submitted:
    """A task recorded and published: what the 202 answer says about it."""

    task_id: str
    task_name: str
    queue: str
    created_at: datetime
    retry_of: str | None = None
    status: str = "PENDING"


def submit_batch(gateway: Gateway, bodies: list[TaskCreate]) -> list[Submitted]:
    """Record and publish many tasks, by the writer: one transaction and one pipelined
    Redis round trip."""
    prepared = [prepare(gateway, body, where=f"tasks[{i}]: ") for i, body in enumerate(bodies)]
    return record_and_publish(gateway, [(p, None, None) for p in prepared], defer_mark=True)


Item = tuple[Prepared, str | None, str | None]  # a validated submission, the task it re-runs, its Idempotency-Key


def record_and_publish(gateway: Gateway, items: list[Item], *, defer_mark: bool = False) -> list[Submitted]:
    """Validated submissions recorded and published as one unit: the one sequence behind single
    submissions (grouped, or alone with an Idempotency-Key) and batches.

    1. The records are committed, marked unpublished. If that fails, nothing was published: 503.
    2. The messages are published. If that fails, the records are removed again: 503.
    3. The records are marked published. If that fails, both exist all the same: 202, and the
       mark is retried later.
    A record whose removal or mark failed, or whose commit ended with the connection cut (its
    outcome unknown), is settled by a later submission or, after a crash, by
    ``store.sweep_unpublished``; a message never exists without a committed record.

    ``defer_mark`` (group commits and batches, by the writer): the mark rides on the next
    group's transaction, or a flush 50 ms later when none comes, instead of a commit of its own
    (a second commit per group cost single submissions about a third of their API CPU).
    """
    leftovers = gateway.leftovers
    leftovers.settle(gateway)
    now = store.utcnow()
    rows = [
        store.pending_row(task_id=task_id, task_name=p.body.task, queue=p.queue, args=p.body.args,
                          kwargs=p.body.kwargs, priority=p.body.priority, eta=p.eta, retry_of=retry_of,
                          idempotency_key=key, now=now)
        for (p, retry_of, key), task_id in zip(items, new_task_ids(len(items)), strict=True)
    ]
    task_ids = [row["task_id"] for row in rows]
    problem = gateway.database.writable_problem()
    if problem:
        raise Unavailable(f"the task database is unavailable, nothing was submitted: {problem}")
    marks = leftovers.take_marks()
    try:
        # The session's close is inside the try too: on a connection cut mid-commit, closing
        # (or rolling back) can raise as well, and that 503 must disown the rows like any other.
        with gateway.sessions() as session:
            if marks:
                store.mark_published(session, task_ids=marks)
            store.insert_pending(session, rows)
            session.commit()
    except SQLAlchemyError as exc:
        leftovers.mark_later(marks)
        if isinstance(exc, IntegrityError):
            raise
        # A connection cut during COMMIT leaves its outcome unknown: the server may have
        # committed rows this 503 disowns. They are unpublished, so removing them with the
        # next submission is safe either way (seen in CI: PostgreSQL stopped mid-commit).
        leftovers.discard_later(task_ids)
        raise Unavailable(f"the task database is unavailable, nothing was submitted: {short_error(exc)}") from exc
    try:
        _publish(gateway.celery, rows)
    except Exception as exc:
        leftovers.discard(gateway, task_ids)
        raise Unavailable(f"the broker is unavailable, nothing was submitted: {short_error(exc)}"
                          f"{redis_tls.handshake_hint(exc, gateway.settings.broker_url)}") from exc
    if defer_mark:
        leftovers.mark_later(task_ids)
        leftovers.flush_soon(gateway)
    else:
        leftovers.mark(gateway, task_ids)
    return [Submitted(task_id=r["task_id"], task_name=r["task_name"], queue=r["queue"], created_at=now,
                      retry_of=r["retry_of"]) for r in rows]


class Leftovers:
    """Records not settled yet: marks that wait for the next transaction, and what the database
    refused right after a commit, settled with a later submission; now and then, the sweep of what
    any API process left unpublished when it crashed."""

    # Far beyond the longest a submission can take (database and broker timeouts, ~1 min), so the
    # sweep never touches a record another API process is still publishing.
    SWEEP_AGE = timedelta(minutes=10)
    SWEEP_EVERY_SECONDS = 60.0
    FLUSH_SECONDS = 0.05
    CHUNK = 500

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._discard: list[str] = []
        self._mark: list[str] = []
        self._next_sweep = 0.0
        self._flush_due = False

    def discard(self, gateway: Gateway, task_ids: list[str]) -> None:
        self._apply(gateway, store.discard_unpublished, task_ids, self._discard)

    def mark(self, gateway: Gateway, task_ids: list[str]) -> None:
        self._apply(gateway, store.mark_published, task_ids, self._mark)

    def discard_later(self, task_ids: list[str]) -> None:
        with self._lock:
            self._discard.extend(task_ids)

    def mark_later(self, task_ids: list[str]) -> None:
        with self._lock:
            self._mark.extend(task_ids)

    def take_marks(self) -> list[str]:
        with self._lock:
            marks, self._mark = self._mark, []
        return marks

    def flush_soon(self, gateway: Gateway) -> None:
        """Mark what is waiting shortly, by the writer, if no transaction takes it first."""
        with self._lock:
            due, self._flush_due = self._flush_due, True
        if not due:
            gateway.writer.later(self.FLUSH_SECONDS, self.flush, gateway)

    def flush(self, gateway: Gateway) -> None:
        """Mark what is waiting now (also when the API stops: unmarked records would be swept)."""
        with self._lock:
            self._flush_due = False
        marks = self.take_marks()
        if marks:
            self.mark(gateway, marks)

    def close(self, gateway: Gateway) -> None:
        """When the API stops: mark what waits, and remove the records of refused submissions now
        rather than leave them to another process's sweep ten minutes later."""
        self.flush(gateway)
        with self._lock:
            discard, self._discard = self._discard, []
        if discard:
            self.discard(gateway, discard)

    def _apply(self, gateway: Gateway, change, task_ids: list[str], pending: list[str]) -> None:
        with gateway.sessions() as session:
            try:
                # In chunks: an outage leaves one id per refused submission here, and SQLite
                # limits the parameters of one statement.
                for start in range(0, len(task_ids), self.CHUNK):
                    change(session, task_ids=task_ids[start:start + self.CHUNK])
                session.commit()
                return
            except SQLAlchemyError as exc:
                session.rollback()
                log.warning("%s of %d records failed, retried later: %s", change.__name__, len(task_ids),
                            short_error(exc))
        with self._lock:
            pending.extend(task_ids)

    def settle(self, gateway: Gateway) -> None:
        """Retry removals that failed before, and sweep when it is due; cheap when there is nothing to do."""
        now = time.monotonic()
        if not self._discard and now < self._next_sweep:
            return
        with self._lock:
            discard, self._discard = self._discard, []
            sweep, self._next_sweep = now >= self._next_sweep, now + self.SWEEP_EVERY_SECONDS
        if discard:
            self.discard(gateway, discard)
        if sweep:
            self.sweep(gateway)

    def sweep(self, gateway: Gateway) -> int:
        with gateway.sessions() as session:
            try:
                removed = store.sweep_unpublished(session, older_than=store.utcnow() - self.SWEEP_AGE)
                session.commit()
            except SQLAlchemyError as exc:
                session.rollback()
                log.warning("the sweep of unpublished records failed: %s", short_error(exc))
                return 0
        if removed:
            log.warning("removed %d records of tasks an API process left unpublished", removed)
        return removed


class GroupCommitter:
    """Concurrent single submissions share one transaction and one Redis pipeline (group commit).

    Every request that reaches the committer while the writer is busy (or within the same
    turn of the event loop) joins the next group: a lone request goes alone at once, and under load
    one commit serves many requests instead of each holding the database's write lock in turn
    (SQLite makes waiters sleep 1, 2, 5 ... ms).

    Groups are written by the ``Writer``: on PostgreSQL on a thread of its own, so that requests
    do not wait for each commit's round trip; on SQLite on the loop.
    """

    MAX_GROUP = 500

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._waiting: list[tuple[Prepared, str | None, asyncio.Future]] = []
        self._draining = False
        self._drain_task: asyncio.Task | None = None

    async def submit(self, prepared: Prepared, retry_of: str | None = None) -> Submitted:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((prepared, retry_of, future))
        if not self._draining:
            self._draining = True
            # A task, started after the requests already in this turn of the loop.
            self._drain_task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting[: self.MAX_GROUP], self._waiting[self.MAX_GROUP:]
                await self._commit(group)
        finally:
            self._draining = False

    async def _commit(self, group: list[tuple[Prepared, str | None, asyncio.Future]]) -> None:
        items = [(p, retry_of, None) for p, retry_of, _ in group]
        try:
            submitted = await self._gateway.writer.run(
                functools.partial(record_and_publish, self._gateway, items, defer_mark=True))
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
            for _, _, future in group:
                if not future.done():  # a client that went away cancelled its future
                    future.set_exception(exc)
            return
        for (_, _, future), result in zip(group, submitted, strict=True):
            if not future.done():
                future.set_result(result)


def _replay(gateway: Gateway, key: str, body: TaskCreate) -> TaskRecord | None:
    """The task an earlier request with this Idempotency-Key made, once it is published."""
    deadline = time.monotonic() + gateway.settings.broker_timeout_seconds + 1
    while True:
        with gateway.sessions() as session:
            existing = store.get_by_idempotency_key(session, key)
        if existing is not None and (existing.task_name, existing.args, existing.kwargs) != (body.task, body.args,
                                                                                         body.kwargs):
            raise Conflict(f"Idempotency-Key {key!r} was already used for a different task ({existing.task_id})")
        if existing is None or existing.published:
            return existing
        # The other request is between its commit and its publish: its answer is not known yet.
        if time.monotonic() > deadline:
            raise Unavailable(f"a request with Idempotency-Key {key!r} is still being submitted; try again")
        time.sleep(0.01)


def _publish(celery: Celery, rows: list[dict]) -> None:
    publishing.publish(celery, rows, sent_at=time.time())


def short_error(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
