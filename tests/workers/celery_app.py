"""A tiny Celery app for tests that run real workers: ``celery -A tests.workers.celery_app worker``.

Configured like stalk's own app where it matters to measuring queues (acks_late, one exchange and
routing key per queue, ``global_keyprefix`` from ``STALK_BROKER_KEY_PREFIX``), with only a
sleeping task, so worker start-up stays fast on a small machine.
"""

from __future__ import annotations

import time

from celery import Celery

from stalk_workers.settings import Settings


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    transport_options = {"visibility_timeout": settings.visibility_timeout_seconds}
    if settings.broker_key_prefix:
        transport_options["global_keyprefix"] = settings.broker_key_prefix
    app = Celery("stalk-tests", set_as_current=False)
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue="default",
        # Unknown queues get Queue(name, Exchange(name), routing_key=name), as in stalk's table.
        task_create_missing_queues=True,
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=1,
    )

    @app.task(name="tests.sleep")
    def sleep(seconds: float = 0) -> None:
        time.sleep(seconds)

    return app


app = create_app()
