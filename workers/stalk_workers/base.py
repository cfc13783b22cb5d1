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
    """The default: retry on any exception, exponential backoff with jitter, capped.

    The retry policy is the app's (``app.conf.stalk_settings``, set by ``create_app``), read when
    Celery builds the app's task from the class, so two apps in one process keep their own.
    """

    abstract = True
    autoretry_for = (Exception,)
    # Tasks may be delivered twice (acks late); subclasses should say whether that is safe.
    idempotent = False
    # How many times the app's retry_max this class retries (see IdempotentTask).
    retry_factor = 1

    def _policy(self) -> Settings:
        settings = self.app.conf.get("stalk_settings")
        # An app not made by create_app (a test's or a client's) gets the Settings defaults.
        return settings if settings is not None else _DEFAULT_POLICY

    @property
    def max_retries(self) -> int:
        return self._policy().retry_max * self.retry_factor

    @property
    def retry_backoff(self) -> int:
        return self._policy().retry_backoff_seconds

    @property
    def retry_backoff_max(self) -> int:
        return self._policy().retry_backoff_max_seconds

    @property
    def retry_jitter(self) -> bool:
        return self._policy().retry_jitter


# The retry fields' defaults, without reading the environment (Settings() would).
_DEFAULT_POLICY = Settings.model_construct()

# Running an idempotent task again is harmless, so it can afford to keep trying for longer.
IDEMPOTENT_RETRY_FACTOR = 3


class IdempotentTask(StalkTask):
    """Safe to run more than once: retries more (3x the default number of retries)."""

    abstract = True
    idempotent = True
    retry_factor = IDEMPOTENT_RETRY_FACTOR


class CriticalTask(StalkTask):
    """Never retried automatically (e.g. charging a card): a failure is dead-lettered at once."""

    abstract = True
    autoretry_for = ()
    max_retries = 0
