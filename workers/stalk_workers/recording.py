"""Keep task records current from Celery's own signals, in the worker processes.

Each worker process (prefork child included) opens its own engine lazily: a connection pool
inherited across ``fork`` would be shared by two processes. A failure to record is logged and
never fails the task itself: the work matters more than its bookkeeping.
"""

from __future__ import annotations

import logging
import os
import traceback as tb

from celery import Celery, signals

from stalk_workers.records import db, store

log = logging.getLogger(__name__)

_engine = None
_engine_pid = None
_database_url = None


def connect(app: Celery) -> None:
    global _database_url
    _database_url = app.conf.stalk_settings.database_url
    # weak=False: the handlers are module functions, but Celery's default weak refs are fragile.
    signals.task_prerun.connect(_on_prerun, weak=False)
    signals.task_retry.connect(_on_retry, weak=False)
    signals.task_success.connect(_on_success, weak=False)
    signals.task_failure.connect(_on_failure, weak=False)
    signals.task_revoked.connect(_on_revoked, weak=False)


def _get_engine():
    global _engine, _engine_pid
    if _engine is None or _engine_pid != os.getpid():
        _engine = db.create_engine(_database_url, pool_size=1, max_overflow=2) if not _database_url.startswith(
            "sqlite") else db.create_engine(_database_url)
        _engine_pid = os.getpid()
    return _engine


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


def _guarded(action, *args, **kwargs) -> None:
    try:
        action(_get_engine(), *args, **kwargs)
    except Exception:  # noqa: BLE001 - recording must never fail the task
        log.exception("stalk: could not record task state (%s)", action.__name__)


def _on_prerun(sender=None, task=None, **_):
    _guarded(store.record_started, seen=_seen(task))


def _on_retry(sender=None, request=None, reason=None, einfo=None, **_):
    error = reason if isinstance(reason, BaseException) else RuntimeError(str(reason))
    _guarded(store.record_retry, seen=_seen(sender, request), error=error,
             traceback=einfo.traceback if einfo else None)


def _on_success(sender=None, result=None, **_):
    _guarded(store.record_success, seen=_seen(sender), result=result)


def _on_failure(sender=None, exception=None, traceback=None, einfo=None, **_):
    # task_failure fires only when Celery gives up: a retry raises Retry instead. So every
    # failure recorded here is final, and the task is dead-lettered for a person to look at.
    text = einfo.traceback if einfo else "".join(tb.format_tb(traceback)) if traceback else None
    _guarded(store.record_failure, seen=_seen(sender), error=exception, traceback=text, dead_lettered=True)


def _on_revoked(sender=None, request=None, **_):
    if request is not None:
        _guarded(store.record_revoked, task_id=request.id)
