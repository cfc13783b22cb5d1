"""Settings shared by every stalk process, read once from ``STALK_*`` variables and ``.env``.

This is the only place that reads the environment: the Celery app, the API, the CLI and the
operator take a ``Settings`` (or a subclass) instead of calling ``os.environ`` themselves.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Celery redelivers an unacked Redis message after the visibility timeout. It must outlast the
# hard time limit (and any countdown), or a slow task runs twice while the first run is alive.
VISIBILITY_MARGIN_SECONDS = 60


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STALK_", env_file=".env", extra="ignore")

    broker_url: str = "redis://localhost:6379/0"
    result_backend: str = "redis://localhost:6379/1"
    # kombu's ``global_keyprefix`` transport option, for teams that share one Redis.
    broker_key_prefix: str = ""
    database_url: str = "sqlite:///stalk.db"

    # Extra task modules to import, comma separated: ``STALK_TASK_MODULES=myapp.tasks,myapp.more``.
    task_modules: str = ""
    # YAML file with the queue table (same shape as the Helm chart's ``queues:`` map).
    queues_file: Path | None = None

    soft_time_limit_seconds: int = Field(270, ge=1)
    hard_time_limit_seconds: int = Field(300, ge=1)
    visibility_timeout_seconds: int = Field(3600, ge=1)
    # How often each worker looks for unacked tasks of dead workers to put back (kombu's sweep).
    unacked_restore_interval_seconds: int = Field(10, ge=1)
    worker_max_tasks_per_child: int = Field(1000, ge=1)
    result_expires_seconds: int = Field(86_400, ge=60)

    # Default retry policy of ``StalkTask``: 3 retries, 60 s, 120 s, 240 s ... capped at 10 min.
    retry_max: int = Field(3, ge=0)
    retry_backoff_seconds: int = Field(60, ge=1)
    retry_backoff_max_seconds: int = Field(600, ge=1)
    retry_jitter: bool = True

    # Celery beat: a JSON object {"name": {"task": "stalk.health_check", "seconds": 60}}.
    beat_schedule: dict[str, dict] = Field(default_factory=dict)

    # Whether workers record task state in the database (the API always records submissions).
    record_tasks: bool = True

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.soft_time_limit_seconds >= self.hard_time_limit_seconds:
            raise ValueError(
                f"STALK_SOFT_TIME_LIMIT_SECONDS ({self.soft_time_limit_seconds}) must be below "
                f"STALK_HARD_TIME_LIMIT_SECONDS ({self.hard_time_limit_seconds})"
            )
        if self.visibility_timeout_seconds <= self.hard_time_limit_seconds:
            raise ValueError(
                f"STALK_VISIBILITY_TIMEOUT_SECONDS ({self.visibility_timeout_seconds}) must be larger "
                f"than STALK_HARD_TIME_LIMIT_SECONDS ({self.hard_time_limit_seconds}), or Redis "
                "redelivers tasks that are still running"
            )
        return self

    @property
    def task_module_list(self) -> list[str]:
        return [m.strip() for m in self.task_modules.split(",") if m.strip()]

    @property
    def max_countdown_seconds(self) -> int:
        """The furthest a task may be scheduled ahead before Redis would deliver it twice.

        A countdown task is reserved at once and acked only after it ran, so countdown plus the
        hard time limit has to fit inside the visibility timeout.
        """
        return max(
            0,
            self.visibility_timeout_seconds - self.hard_time_limit_seconds - VISIBILITY_MARGIN_SECONDS,
        )
