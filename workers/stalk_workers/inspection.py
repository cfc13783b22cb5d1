"""Which workers are online, what they consume and how busy they are: one broadcast, one timeout.

Celery's ``inspect().stats()``, ``active_queues()`` and ``active()`` each broadcast and wait the
whole timeout for replies. One custom remote-control command answers all three at once, so
``GET /v1/workers`` costs a single ``timeout`` however many workers there are.
"""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from celery.worker import state as worker_state
from celery.worker.control import inspect_command

STATUS_COMMAND = "stalk_status"


@inspect_command(name=STATUS_COMMAND)
def stalk_status(state, **_) -> dict:
    controller = state.consumer.controller
    return {
        "queues": sorted(q.name for q in state.consumer.task_consumer.queues),
        "active": len(worker_state.active_requests),
        "pool": getattr(controller.pool_cls, "__module__", "").rsplit(".", 1)[-1] or None,
        "concurrency": controller.concurrency,
    }


@dataclass(frozen=True)
class WorkerInfo:
    name: str
    queues: list[str]
    active_tasks: int
    pool: str | None
    concurrency: int | None


def online_workers(app: Celery, *, timeout: float) -> list[WorkerInfo]:
    """Workers that answer within ``timeout`` seconds; a worker that does not answer is not listed."""
    replies = app.control.broadcast(STATUS_COMMAND, reply=True, timeout=timeout) or []
    workers = []
    for reply in replies:
        for name, status in reply.items():
            if not isinstance(status, dict) or "queues" not in status:
                continue  # a worker of another app, or an error reply
            workers.append(WorkerInfo(name=name, queues=status["queues"], active_tasks=status["active"],
                                      pool=status.get("pool"), concurrency=status.get("concurrency")))
    return sorted(workers, key=lambda w: w.name)
