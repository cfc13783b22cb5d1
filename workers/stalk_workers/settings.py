"""Settings shared by every stalk process, read once from ``STALK_*`` variables and ``.env``.

This is the only place that reads the environment: the Celery app, the API, the CLI and the
operator take a ``Settings`` (or a subclass) instead of calling ``os.environ`` themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stalk_workers import redis_tls
from stalk_workers.brokers import is_sentinel_url, parse_sentinel_url, redis_client

if TYPE_CHECKING:
    import redis

# Celery redelivers an unacked Redis message after the visibility timeout. It must outlast the
# hard time limit (and any countdown), or a slow task runs twice while the first run is alive.
VISIBILITY_MARGIN_SECONDS = 60

# Where stalk reaches past a library's public interface for a measured gain (docs/architecture.md,
# "Library internals relied on"). Each name can be turned off (``STALK_LIBRARY_SHORTCUTS_OFF``);
# that code then takes the library's own public path, so a library release that breaks one can be
# run around at once, and the gain re-measured.
LIBRARY_SHORTCUTS = (
    "channel-client",  # transport.py: one redis.Redis per kombu channel, not one per command
    "message-templates",  # api publishing.py + transport.py capturing(): batch messages from templates
    "flat-saferepr",  # api publishing.py: argsrepr/kwargsrepr of flat arguments without saferepr
    "sqlite-executemany",  # records/store.py: SQLite executemany bound by stalk
    "result-store",  # result_backend.py: one-script state writes, STARTED deferred
    "revoke-release",  # revoking.py: a revoked countdown task let go at once, not at its ETA
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STALK_", env_file=".env", extra="ignore")

    broker_url: str = "redis://localhost:6379/0"
    result_backend: str = "redis://localhost:6379/1"
    # kombu's ``global_keyprefix`` transport option, for teams that share one Redis.
    broker_key_prefix: str = ""
    # Redis Sentinel (docs/sentinel.md): with STALK_BROKER_URL="sentinel://h1:26379;sentinel://h2:26379",
    # the name the Sentinels monitor the primary under (kombu's ``master_name`` transport option), and
    # the Sentinels' own password when they require one (not the primary's: that is in the URL).
    broker_master_name: str = ""
    broker_sentinel_password: SecretStr | None = None
    # A sentinel:// result backend's master name; empty: STALK_BROKER_MASTER_NAME.
    result_backend_master_name: str = ""
    database_url: str = "sqlite:///stalk.db"
    # TLS to Redis: for ``rediss://`` URLs, the files (a mounted CA, a client certificate and key)
    # and certificate check added to the URLs' query, the way Celery users write it there
    # (``?ssl_cert_reqs=required&ssl_ca_certs=...``; redis_tls.py). What a URL says itself wins.
    redis_tls_ca_file: Path | None = None
    redis_tls_cert_file: Path | None = None
    redis_tls_key_file: Path | None = None
    redis_tls_cert_reqs: Literal["required", "optional", "none"] = "required"

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

    # Library shortcuts to turn off, comma separated names of LIBRARY_SHORTCUTS, or ``all``.
    library_shortcuts_off: str = ""

    @field_validator("library_shortcuts_off")
    @classmethod
    def _known_shortcuts(cls, value: str) -> str:
        unknown = [name for name in _names(value) if name not in (*LIBRARY_SHORTCUTS, "all")]
        if unknown:
            raise ValueError(f"no library shortcut {', '.join(map(repr, unknown))} (known: "
                             f"{', '.join(LIBRARY_SHORTCUTS)}, or all)")
        return value

    @model_validator(mode="after")
    def _fold_tls(self) -> Settings:
        """Every client takes ``broker_url`` and ``result_backend`` as they are, so the TLS files
        are made part of them here, once (redis_tls.with_tls)."""
        files = {"ca": self.redis_tls_ca_file, "cert": self.redis_tls_cert_file, "key": self.redis_tls_key_file}
        given = {role: str(path) for role, path in files.items() if path is not None}
        urls = {"STALK_BROKER_URL": self.broker_url, "STALK_RESULT_BACKEND": self.result_backend}
        if given and not any(redis_tls.is_tls(url) for url in urls.values()):
            raise ValueError("STALK_REDIS_TLS_* files are given, but neither STALK_BROKER_URL nor "
                             "STALK_RESULT_BACKEND is a rediss:// URL")
        for variable, path in files.items():
            if path is not None and not path.is_file():
                raise ValueError(f"STALK_REDIS_TLS_{variable.upper()}_FILE {path}: no such file")
        folded = {}
        for variable, url in urls.items():
            try:
                folded[variable] = redis_tls.with_tls(url, cert_reqs=self.redis_tls_cert_reqs, **given)
            except redis_tls.TlsUrlError as exc:
                raise ValueError(f"{variable}: {exc}") from None
        self.broker_url, self.result_backend = folded["STALK_BROKER_URL"], folded["STALK_RESULT_BACKEND"]
        return self

    @model_validator(mode="after")
    def _check_sentinel(self) -> Settings:
        for name, url, master in (("STALK_BROKER_URL", self.broker_url, self.broker_master_name),
                                  ("STALK_RESULT_BACKEND", self.result_backend, self.result_master_name)):
            if not is_sentinel_url(url):
                continue
            try:
                parse_sentinel_url(url)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
            if not master:
                raise ValueError(f"{name} is a sentinel:// URL: set STALK_BROKER_MASTER_NAME to the name the "
                                 "Sentinels monitor the primary under (sentinel monitor <name> ...)")
        if self.broker_master_name and not is_sentinel_url(self.broker_url):
            raise ValueError("STALK_BROKER_MASTER_NAME is set but STALK_BROKER_URL is not a sentinel:// URL "
                             "(sentinel://host:26379;sentinel://host2:26379)")
        return self

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
    def result_master_name(self) -> str:
        """The Sentinel master name of a sentinel:// result backend."""
        return self.result_backend_master_name or self.broker_master_name

    @property
    def sentinel_password(self) -> str | None:
        return self.broker_sentinel_password.get_secret_value() if self.broker_sentinel_password else None

    def broker_client(self, *, timeout: float | None = 5.0) -> redis.Redis:
        """A redis-py client on the broker (its current primary, for Sentinel), built once by each caller."""
        return redis_client(self.broker_url, master_name=self.broker_master_name or None,
                            sentinel_password=self.sentinel_password, socket_timeout=timeout,
                            socket_connect_timeout=timeout)

    @property
    def task_module_list(self) -> list[str]:
        return _names(self.task_modules)

    def shortcut(self, name: str) -> bool:
        """Whether the library shortcut ``name`` (one of LIBRARY_SHORTCUTS) is on."""
        if name not in LIBRARY_SHORTCUTS:
            raise KeyError(f"no library shortcut {name!r}")  # a typo in stalk's own code
        off = _names(self.library_shortcuts_off)
        return name not in off and "all" not in off

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


def _names(text: str) -> list[str]:
    """A comma-separated setting's names, blanks dropped."""
    return [name.strip() for name in text.split(",") if name.strip()]
