"""Task base classes that users' tasks inherit.

They lean on Celery's own retry machinery (``autoretry_for``, ``retry_backoff``,
``retry_backoff_max``, ``retry_jitter``); nothing here loops or sleeps by itself. A task that
fails for good (retries exhausted, or no retries at all) is recorded as dead-lettered and can be
re-run from the API.
"""

from __future__ import annotations

from celery import Task

from stalk_workers.settings import Settings


class StalkTask(Task):
    """The default: retry on any exception, exponential backoff with jitter, capped."""

    abstract = True
    autoretry_for = (Exception,)
    max_retries = 3
    retry_backoff = 60
    retry_backoff_max = 600
    retry_jitter = True
    # Tasks may be delivered twice (acks late); subclasses should say whether that is safe.
    idempotent = False

    @classmethod
    def configure(cls, settings: Settings) -> None:
        """Apply the retry policy from settings; called by ``create_app`` before tasks are made.

        Celery reads these attributes when it wraps a task for auto-retry, so they must be set
        before the task modules are imported.
        """
        StalkTask.max_retries = settings.retry_max
        StalkTask.retry_backoff = settings.retry_backoff_seconds
        StalkTask.retry_backoff_max = settings.retry_backoff_max_seconds
        StalkTask.retry_jitter = settings.retry_jitter
        IdempotentTask.max_retries = settings.retry_max * IDEMPOTENT_RETRY_FACTOR


# Running an idempotent task again is harmless, so it can afford to keep trying for longer.
IDEMPOTENT_RETRY_FACTOR = 3


class IdempotentTask(StalkTask):
    """Safe to run more than once: retries more (3x the default number of retries)."""

    abstract = True
    idempotent = True
    max_retries = 9


class CriticalTask(StalkTask):
    """Never retried automatically (e.g. charging a card): a failure is dead-lettered at once."""

    abstract = True
    autoretry_for = ()
    max_retries = 0
