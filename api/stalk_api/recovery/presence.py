"""Which task ids have a message in Redis: the evidence ``rules.decide`` takes for each read.

A message is present when it waits in any priority list of its queue or sits in kombu's
``unacked`` hash (delivered, running, or an eta/countdown task a worker keeps). The key names, the
separator and the priority lists are the queue reader's and kombu's (``queue_reader.PRIORITY_LISTS``,
``Channel.sep``, ``Channel.unacked_key``), not copies. One pipelined round trip per read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import redis
from kombu.transport.redis import Channel

from stalk_workers.queue_reader import PRIORITY_LISTS


def list_keys(queues: Sequence[str], *, key_prefix: str = "") -> list[str]:
    """Every list a message of these queues can wait in: one per priority step kombu may use."""
    return [key_prefix + queue + (f"{Channel.sep}{step}" if step else "")
            for queue in queues for step in PRIORITY_LISTS]


def present_task_ids(client: redis.Redis, queues: Sequence[str], *, key_prefix: str = "") -> set[str]:
    """The ids of every task whose message waits in these queues' lists or is in ``unacked``."""
    pipe = client.pipeline(transaction=False)
    for key in list_keys(queues, key_prefix=key_prefix):
        pipe.lrange(key, 0, -1)
    pipe.hvals(key_prefix + Channel.unacked_key)
    *lists, unacked = pipe.execute()
    ids = {task_id for payloads in lists for raw in payloads if (task_id := _waiting_id(raw))}
    ids |= {task_id for raw in unacked if (task_id := _unacked_id(raw))}
    return ids


def _waiting_id(raw: bytes | str) -> str | None:
    # A waiting message is kombu's JSON; Celery's protocol 2 carries the task id in its headers.
    try:
        return _task_id(json.loads(raw))
    except ValueError:
        return None


def _unacked_id(raw: bytes | str) -> str | None:
    # An ``unacked`` value is JSON [message, exchange, routing key].
    try:
        message, _exchange, _routing_key = json.loads(raw)
    except (ValueError, TypeError):
        return None
    return _task_id(message)


def _task_id(message) -> str | None:
    if not isinstance(message, dict):
        return None
    task_id = (message.get("headers") or {}).get("id") or (message.get("properties") or {}).get("correlation_id")
    return str(task_id) if task_id else None
