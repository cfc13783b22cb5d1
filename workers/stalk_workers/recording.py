"""Keep task records current from Celery's own signals, in the worker processes.

Writing every STARTED and SUCCESS as its own transaction halved a worker's throughput on SQLite
(each of the pool's processes waits for the file's write lock, see docs/benchmarks.md). So each
process buffers them and writes them together every ``FLUSH_SECONDS``: a fast task is written
once, already finished. What a person acts on — RETRY, FAILURE, REVOKED — is written at once,
with whatever is buffered. The price is up to ``FLUSH_SECONDS`` of lag; a process killed with
SIGKILL loses what it had not written (the task itself is safe: it is acked late and redelivered).

Each worker process (prefork child included) opens its own engine and flusher lazily: a
connection pool or thread inherited across ``fork`` would be shared by two processes. A failure
to record is logged and never fails the task: the work matters more than its bookkeeping.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import traceback as tb
import weakref

from celery import Celery, signals
from celery.exceptions import Reject, Retry

from stalk_workers.records import db, store

log = logging.getLogger(__name__)

# Lag of a STARTED/SUCCESS record; short enough that people never notice, long enough to batch.
FLUSH_SECONDS = 0.05


class RecordWriter:
    """One per process: buffers changes and writes them in one transaction at a time."""

    def __init__(self, database_url: str, *, sqlite_executemany: bool = True) -> None:
        self._url = database_url
        self._sqlite_executemany = sqlite_executemany
        self._pid: int | None = None
        self._engine = None
        self._lock = threading.Lock()
        self._pending: list[store.Change] = []
        self._wake = threading.Event()

    def add(self, change: store.Change, *, now: bool = False) -> None:
        self._ensure_started()
        with self._lock:
            self._pending.append(change)
        if now:
            self.flush()
        else:
            self._wake.set()

    def revoked(self, task_id: str) -> None:
        self.flush()
        self._guard(store.record_revoked, self._ensure_started(), task_id=task_id)

    def flush(self) -> None:
        engine = self._ensure_started()
        with self._lock:
            changes, self._pending = self._pending, []
        if changes:
            self._guard(store.write, engine, changes)

    def _ensure_started(self):
        if self._pid != os.getpid():  # first use in this process, or a fresh fork
            self._pid = os.getpid()
            self._pending = []
            self._lock = threading.Lock()
            self._wake = threading.Event()
            self._engine = db.create_engine(self._url, sqlite_executemany=self._sqlite_executemany)
            threading.Thread(target=self._run, name="stalk-records", daemon=True).start()
        return self._engine

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            # Let the rest of a burst (the SUCCESS after a STARTED) join the same transaction.
            time.sleep(FLUSH_SECONDS)
            self.flush()

    def flush_if_started(self) -> None:
        """Write what is buffered, if this process ever recorded anything."""
        if self._pid == os.getpid():
            self.flush()

    @staticmethod
    def _guard(action, *args, **kwargs) -> None:
        try:
            action(*args, **kwargs)
        except Exception:  # noqa: BLE001 - recording must never fail the task
            log.exception("stalk: could not record task state (%s)", action.__name__)


# Every writer made in this process, to flush at shutdown; each app keeps its own (``_writer``).
_writers: weakref.WeakSet[RecordWriter] = weakref.WeakSet()


def connect(app: Celery) -> None:
    """Record ``app``'s tasks in its database: a writer of its own, and the signal receivers."""
    settings = app.conf.stalk_settings
    writer = RecordWriter(settings.database_url, sqlite_executemany=settings.shortcut("sqlite-executemany"))
    app.conf.stalk_record_writer = writer
    _writers.add(writer)
    # weak=False: Celery's default weak references would let these module functions be dropped.
    # Connecting again (a second app) is a no-op: a receiver is connected once per process.
    signals.task_prerun.connect(_on_prerun, weak=False)
    signals.task_retry.connect(_on_retry, weak=False)
    signals.task_success.connect(_on_success, weak=False)
    signals.task_failure.connect(_on_failure, weak=False)
    signals.task_revoked.connect(_on_revoked, weak=False)
    signals.worker_process_shutdown.connect(_flush, weak=False)
    signals.worker_shutdown.connect(_flush, weak=False)
    atexit.register(_flush)


def _writer(task) -> RecordWriter | None:
    """The writer of the task's app; None for an app that does not record (record_tasks off)."""
    return task.app.conf.get("stalk_record_writer") if task is not None else None


def _seen(task, request=None) -> store.SeenTask:
    request = request or task.request
    delivery = getattr(request, "delivery_info", None) or {}
    return store.SeenTask(
        task_id=request.id,
        task_name=task.name,
        queue=delivery.get("routing_key") or task.app.conf.task_default_queue,
        args=list(request.args or []),
        kwargs=dict(request.kwargs or {}),
        retries=request.retries or 0,
        worker=request.hostname,
        priority=delivery.get("priority"),
    )


def _on_prerun(sender=None, task=None, **_):
    if (writer := _writer(task)) is not None:
        writer.add(store.started(_seen(task)))


def _on_success(sender=None, result=None, **_):
    if (writer := _writer(sender)) is not None:
        writer.add(store.succeeded(_seen(sender), result=result))


def _on_retry(sender=None, request=None, reason=None, einfo=None, **_):
    if (writer := _writer(sender)) is None:
        return
    # Celery (5.x) passes its Retry exception; the error that caused the retry is what people need.
    if isinstance(reason, Retry) and isinstance(reason.exc, BaseException):
        reason = reason.exc
    error = reason if isinstance(reason, BaseException) else RuntimeError(str(reason))
    writer.add(store.retried(_seen(sender, request), error=error, traceback=einfo.traceback if einfo else None),
               now=True)


def _on_failure(sender=None, task_id=None, exception=None, args=None, kwargs=None, traceback=None, einfo=None, **_):
    # task_failure fires only when Celery gives up: a retry raises Retry instead. So every
    # failure recorded here is final, and the task is dead-lettered for a person to look at.
    if (writer := _writer(sender)) is None or task_id is None:
        return
    in_task = sender.request.id == task_id
    # Otherwise sent by the worker's main process, where the task's request is not current
    # (Celery 5.7: a Reject(requeue=False), e.g. a retry whose arguments cannot bind; a hard
    # time limit): what the signal carries, and the record keeps its queue and retry count.
    seen = _seen(sender) if in_task else store.SeenTask(
        task_id=task_id, task_name=sender.name, queue=sender.app.conf.task_default_queue,
        args=list(args or []), kwargs=dict(kwargs or {}))
    if isinstance(exception, Reject) and isinstance(exception.reason, BaseException):
        exception = exception.reason  # the TypeError people need, not Celery's wrapper of it
    text = einfo.traceback if einfo else "".join(tb.format_tb(traceback)) if traceback else None
    writer.add(store.failed(seen, error=exception, traceback=text, dead_lettered=True, keep_retries=not in_task),
               now=True)


def _on_revoked(sender=None, request=None, **_):
    if request is not None and (writer := _writer(sender)) is not None:
        writer.revoked(request.id)


def _flush(**_):
    for writer in list(_writers):
        writer.flush_if_started()
