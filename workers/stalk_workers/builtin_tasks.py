"""Diagnostic tasks every stalk deployment has: prove the path from API to worker works."""

from __future__ import annotations

import socket
import time

from celery import shared_task

from stalk_workers.base import CriticalTask, IdempotentTask, StalkTask


class IntentionalFailure(RuntimeError):
    """Raised by ``stalk.fail``: a failure asked for, to test retries and dead-lettering."""


@shared_task(name="stalk.health_check", base=IdempotentTask, bind=True)
def health_check(self) -> dict:
    """Answer with the worker's name: proves a worker consumes the queue."""
    return {"status": "ok", "worker": self.request.hostname or socket.gethostname(), "time": time.time()}


@shared_task(name="stalk.echo", base=IdempotentTask)
def echo(*args, **kwargs) -> dict:
    """Return the arguments it was given."""
    return {"args": list(args), "kwargs": kwargs}


@shared_task(name="stalk.sleep", base=CriticalTask)
def sleep(seconds: float = 1.0) -> float:
    """Sleep ``seconds`` (bounded by the task time limits): a stand-in for slow work."""
    if not isinstance(seconds, int | float) or seconds < 0:
        raise ValueError("seconds must be a non-negative number")
    time.sleep(seconds)
    return seconds


@shared_task(name="stalk.fail", base=StalkTask, bind=True)
def fail(self, message: str = "failed on purpose", succeed_after: int | None = None) -> str:
    """Fail on purpose; with ``succeed_after=N`` succeed from the N-th retry on."""
    if succeed_after is not None and self.request.retries >= succeed_after:
        return f"succeeded after {self.request.retries} retries"
    raise IntentionalFailure(message)
