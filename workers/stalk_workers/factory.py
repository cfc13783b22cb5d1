"""``create_app``: the Celery application from ``Settings`` (``celery -A stalk_workers.app`` loads it).

Every default below is a production choice, and every one can be changed through ``Settings``.
Creating the app opens no connection; importing this module creates nothing. Everything an app
needs is its own (retry policy in ``app.conf.stalk_settings``, the record writer on the app), so
two apps in one process do not share whichever was built last.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
import sysconfig

from celery import Celery
from kombu import Exchange, Queue

from stalk_workers import redis_tls
from stalk_workers.brokers import is_sentinel_url, sentinel_kwargs
from stalk_workers.queues import DEFAULT_QUEUE, celery_routes, load_queue_table
from stalk_workers.settings import Settings

BUILTIN_TASK_MODULES = ("stalk_workers.builtin_tasks",)


class TaskModuleError(ImportError):
    """A module of STALK_TASK_MODULES cannot be imported; the message names it and where Python looked."""


def import_task_module(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as exc:
        missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
        if missing and (module == missing or module.startswith(f"{missing}.")):
            # The standard library's folders are left out: nobody's tasks live there.
            stdlib = sysconfig.get_paths()["stdlib"]
            searched = [os.path.abspath(p) for p in sys.path
                        if not (p.startswith(stdlib) and "site-packages" not in p) and not p.endswith(".zip")]
            raise TaskModuleError(f"cannot import task module {module!r} (STALK_TASK_MODULES): no module "
                                  f"{missing!r} in {', '.join(searched)} (nor the standard library)") from exc
        raise TaskModuleError(f"task module {module!r} (STALK_TASK_MODULES) failed to import: "
                              f"{type(exc).__name__}: {exc}") from exc


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    queues = load_queue_table(settings.queues_file)
    transport_options = {
        "visibility_timeout": settings.visibility_timeout_seconds,
        # Fail fast when Redis is unreachable instead of hanging a request.
        "socket_connect_timeout": 5,
        # kombu 5.7 sweeps for abandoned unacked tasks every interval x throttle seconds
        # (10 x 10 by default): a dead worker's task would wait 100 s past its visibility
        # timeout. Throttle 1 makes the interval the whole story.
        "unacked_restore_interval": settings.unacked_restore_interval_seconds,
        "unacked_restore_throttle": 1,
    }
    if settings.broker_key_prefix:
        transport_options["global_keyprefix"] = settings.broker_key_prefix
    backend_options = dict(transport_options)
    transport_options.update(_sentinel_options(settings, settings.broker_url, settings.broker_master_name))
    backend_options.update(_sentinel_options(settings, settings.result_backend, settings.result_master_name))
    # Not the backend's: a key of the broker's pools only (redis_tls.pool_options says why).
    transport_options.update(redis_tls.pool_options(settings.broker_url))

    app = Celery("stalk", set_as_current=True)
    app.conf.update(
        broker_url=settings.broker_url,
        # kombu's Redis transport without a new client object per command (see transport.py).
        broker_transport=_broker_transport(settings),
        result_backend=_result_backend(settings),
        broker_transport_options=transport_options,
        # The result backend has its own visibility timeout for Redis pub/sub; keep it in step.
        result_backend_transport_options=backend_options,
        redis_socket_connect_timeout=5,
        broker_connection_retry_on_startup=True,
        # JSON only: pickle would let anyone who can write to Redis run code in the workers.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A task is acked after it ran, and redelivered if its worker process dies mid-run.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One reserved task per process: long tasks do not sit behind another's prefetch.
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.soft_time_limit_seconds,
        task_time_limit=settings.hard_time_limit_seconds,
        worker_max_tasks_per_child=settings.worker_max_tasks_per_child,
        worker_send_task_events=True,
        task_track_started=True,
        # Sends the task events in batches (see consumer.py): same events, a fraction of the publishes.
        worker_consumer="stalk_workers.consumer:Consumer",
        # The API records submissions itself; a "sent" event per task would double publish cost.
        task_send_sent_event=False,
        result_expires=settings.result_expires_seconds,
        task_default_queue=DEFAULT_QUEUE,
        task_queues=[Queue(q.name, Exchange(q.name, type="direct"), routing_key=q.name) for q in queues],
        task_routes=celery_routes(queues),
        task_create_missing_queues=False,
        timezone="UTC",
        enable_utc=True,
        beat_schedule={
            name: {"task": entry["task"], "schedule": float(entry.get("seconds", 60)),
                   "args": entry.get("args", []), "kwargs": entry.get("kwargs", {})}
            for name, entry in settings.beat_schedule.items()
        },
        worker_hijack_root_logger=False,
    )
    app.conf.stalk_settings = settings
    app.conf.stalk_queues = queues

    # The tasks' retry policy (StalkTask) is read from stalk_settings when the app builds them.
    for module in (*BUILTIN_TASK_MODULES, *settings.task_module_list):
        import_task_module(module)

    if settings.record_tasks:
        from stalk_workers import recording

        recording.connect(app)
    from stalk_workers import metrics, revoking

    metrics.connect(app)
    if settings.shortcut("revoke-release"):
        revoking.connect()
    return app


def _sentinel_options(settings: Settings, url: str, master_name: str) -> dict:
    """kombu's and Celery's transport options for a sentinel:// URL (none for any other)."""
    if not is_sentinel_url(url):
        return {}
    options = {"master_name": master_name}
    # Bounded like the Redis connections: a Sentinel that does not answer fails the connect, not hangs it.
    kwargs = sentinel_kwargs(settings.sentinel_password, socket_timeout=5, socket_connect_timeout=5)
    if kwargs is not None:
        options["sentinel_kwargs"] = kwargs
    return options


# The scheme -> (stalk's transport, the same with ``channel-client`` off).
_TRANSPORTS = {
    "redis": ("stalk_workers.transport:Transport", "stalk_workers.transport:CapturingTransport"),
    "rediss": ("stalk_workers.transport:Transport", "stalk_workers.transport:CapturingTransport"),
    "sentinel": ("stalk_workers.transport:SentinelTransport", "stalk_workers.transport:SentinelCapturingTransport"),
}


def _broker_transport(settings: Settings) -> str | None:
    """``redis://``, ``rediss://`` and ``sentinel://`` brokers through stalk's Transport (or, with its
    shortcuts off, the part of it still on); any other URL, or both off, picks kombu's own by the
    URL's scheme.

    Over TLS too: kombu takes TLS from the URL's ``ssl_*`` query (settings.py makes sure a
    ``rediss://`` URL has one), not from the transport's name, and hands it to the channel's
    Redis pool, which stalk's Transport shares (tests/workers/test_tls.py runs both)."""
    transports = _TRANSPORTS.get(settings.broker_url.split("://", 1)[0])
    if transports is None:
        return None
    if settings.shortcut("channel-client"):
        return transports[0]
    if settings.shortcut("message-templates"):
        return transports[1]
    return None


# The scheme -> the backend class that writes each state in one round trip (result_backend.py).
_BACKENDS = {"redis": "StalkRedisBackend", "rediss": "StalkRedisBackend", "sentinel": "StalkSentinelBackend"}


def _result_backend(settings: Settings) -> str:
    """Redis results through ``StalkRedisBackend`` (one round trip per state write), Sentinel ones
    through ``StalkSentinelBackend``; others, or with ``result-store`` off, as given (Celery's own
    backend for the URL)."""
    url = settings.result_backend
    backend = _BACKENDS.get(url.split("://", 1)[0])
    if backend is not None and settings.shortcut("result-store"):
        # Celery's "<backend class>+<url>" form: the class, with the URL it would have had anyway.
        return f"stalk_workers.result_backend:{backend}+{url}"
    return url


def default_node_name(queue_names: list[str]) -> str:
    """``queue@host``: the part after ``@`` is the pod name in Kubernetes, which the operator needs."""
    return f"{'+'.join(queue_names) or 'all'}@{socket.gethostname()}"
