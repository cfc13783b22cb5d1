"""Which workers are online, what they consume and how busy they are: Celery's standard inspection.

Every Celery worker answers ``inspect().active_queues()``, ``stats()`` and ``active()``, whatever
app it runs; a command of stalk's own would make every other app's worker on the broker log an
ERROR (``KeyError``) for each broadcast and count as no consumer. The three broadcasts run at
once, so a call waits one ``timeout`` however many workers there are, and an answer is reused for
``max_age`` seconds, so a busy ``GET /v1/queues`` does not broadcast for every request.
"""

from __future__ import annotations

import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from celery import Celery

# How long one answer serves later calls (GET /v1/queues and /v1/workers under load).
CACHE_SECONDS = 2.0
_INSPECTIONS = ("active_queues", "stats", "active")


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    queues: list[str]
    active_tasks: int
    pool: str | None
    concurrency: int | None


_cache: weakref.WeakKeyDictionary[Celery, tuple[float, list[WorkerInfo]]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_pool = ThreadPoolExecutor(len(_INSPECTIONS), thread_name_prefix="inspect")


def online_workers(app: Celery, *, timeout: float, max_age: float = CACHE_SECONDS) -> list[WorkerInfo]:
    """Workers that answer within ``timeout`` seconds; a worker that does not answer is not listed."""
    with _lock:  # one broadcast at a time per process; callers meanwhile get its answer
        cached = _cache.get(app)
        if cached is not None and time.monotonic() - cached[0] < max_age:
            return cached[1]
        workers = _ask(app, timeout)
        _cache[app] = (time.monotonic(), workers)
        return workers


def _ask(app: Celery, timeout: float) -> list[WorkerInfo]:
    inspect = app.control.inspect(timeout=timeout)
    queues, stats, active = (f.result() or {} for f in
                             [_pool.submit(getattr(inspect, name)) for name in _INSPECTIONS])
    workers = []
    for name, consumed in queues.items():
        pool = (stats.get(name) or {}).get("pool") or {}
        implementation = str(pool.get("implementation") or "")
        workers.append(WorkerInfo(
            name=name,
            queues=sorted(q["name"] for q in consumed if isinstance(q, dict) and "name" in q),
            active_tasks=len(active.get(name) or []),
            # "celery.concurrency.prefork:TaskPool" -> "prefork"
            pool=implementation.split(":", 1)[0].rsplit(".", 1)[-1] or None,
            concurrency=pool.get("max-concurrency"),
        ))
    return sorted(workers, key=lambda w: w.name)
