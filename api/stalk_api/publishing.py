"""Publishing recorded tasks to Redis: the same messages ``send_task`` sends, for less CPU per task.

``celery.send_task`` routes every task again, copies and declares its queue again (kombu's
``maybe_declare``) and merges its options again: about 0.12 ms of CPU per task, most of what a
submission costs beyond HTTP. The API publishes many tasks of a few kinds at once, so here the
route and the declaration are done once per (task, queue, priority) in a group, and each task
goes through Celery's own message builder and sender (``amqp.create_task_message`` and
``amqp.send_task_message``), which write the message ``send_task`` would, byte for byte apart from
the ids (tests/api/test_publishing.py checks it against ``send_task``, and that a worker runs it).
"""

from __future__ import annotations

from collections.abc import Iterable
from celery import Celery

from stalk_workers.queue_reader import SENT_AT_HEADER


def publish(celery: Celery, rows: Iterable[dict], *, sent_at: float) -> None:
    """Send every row (``task_id``, ``task_name``, ``queue``, ``args``, ``kwargs``, ``eta``, ``priority``)
    in one Redis pipeline. Raises if Redis cannot take them; nothing is retried."""
    amqp = celery.amqp
    reply_to = celery.thread_oid  # what send_task sets; per thread, like send_task's
    routes: dict[tuple, dict] = {}
    with celery.producer_or_acquire() as producer, producer.batch():
        # kombu >= 5.7 buffers every publish inside batch() and sends them in one pipeline.
        for row in rows:
            key = (row["task_name"], row["queue"], row["priority"])
            options = routes.get(key)
            if options is None:
                options = _route(celery, producer, row)
                routes[key] = options
            message = amqp.create_task_message(
                row["task_id"], row["task_name"], row["args"], row["kwargs"], eta=row["eta"],
                reply_to=reply_to, ignore_result=None,
            )
            amqp.send_task_message(producer, row["task_name"], message, headers={SENT_AT_HEADER: sent_at},
                                   **options)


def _route(celery: Celery, producer, row: dict) -> dict:
    """send_task's options for this kind of task: routed, its queue declared once, no retry."""
    options = celery.amqp.router.route({"queue": row["queue"], "priority": row["priority"]}, row["task_name"],
                                       row["args"], row["kwargs"])
    producer.maybe_declare(options["queue"])
    # declare=[]: declared just above, instead of kombu copying the queue to check it every task.
    return {**options, "retry": False, "declare": []}

