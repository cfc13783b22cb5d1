"""A task module for tests: a task that ignores its soft time limit, so only the hard one ends it."""

from __future__ import annotations

import time

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded

from stalk_workers.base import CriticalTask


@shared_task(name="tests.stubborn_sleep", base=CriticalTask)
def stubborn_sleep(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.1)
        except SoftTimeLimitExceeded:
            pass
