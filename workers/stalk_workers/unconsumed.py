"""Lists that hold Celery messages nobody will take: no queue of ours names them, no worker consumes them.

The usual cause: a plain ``send_task("name")`` without a queue lands in Celery's default list
``celery``, which no configured queue or worker reads, and nothing else would show it. Finding them
means walking the keyspace (``SCAN ... TYPE list``, bounded), so callers do it now and then, not
every tick. A list counts only if its oldest entry is a kombu message, so another program's lists
on the same Redis are not reported.
"""

from __future__ import annotations

import json
from collections.abc import Collection

import redis
from kombu.transport.redis import Channel
from kombu.utils.encoding import bytes_to_str

# SCAN at most this many keys per look (a bounded cost on a big keyspace; beyond it, lists are missed).
MAX_KEYS_SCANNED = 100_000
SCAN_COUNT = 1000
_PIDBOX_SUFFIX = ".pidbox"  # kombu.pidbox.Mailbox.reply_exchange_fmt: "reply.%s.pidbox"


def queue_of_list(name: str) -> str:
    """The queue a kombu list belongs to: ``Q`` or ``Q<sep>n`` (priority step n) -> ``Q``."""
    queue, sep, step = name.rpartition(Channel.sep)
    return queue if sep and step.isdigit() else name


def unconsumed_lists(client: redis.Redis, *, key_prefix: str, claimed: Collection[str],
                     max_keys: int = MAX_KEYS_SCANNED) -> dict[str, int]:
    """Exact list name (prefix included) -> messages, for kombu lists of queues not in ``claimed``
    (the queues we know of, and those some worker answered it consumes) that hold messages."""
    candidates, scanned = [], 0
    for key in client.scan_iter(match=_escape(key_prefix) + "*", count=SCAN_COUNT, _type="list"):
        scanned += 1
        name = bytes_to_str(key)
        if name.endswith(_PIDBOX_SUFFIX):
            # Remote-control replies that came after the inspector stopped listening (kombu's
            # "<oid>.reply.celery.pidbox"): Celery's plumbing, which no worker is meant to consume.
            continue
        if queue_of_list(name[len(key_prefix):]) not in claimed:
            candidates.append(name)
        if scanned >= max_keys:
            break
    if not candidates:
        return {}
    with client.pipeline(transaction=False) as pipe:
        for name in candidates:
            pipe.llen(name)
            pipe.lindex(name, -1)
        replies = pipe.execute()
    return {name: int(count) for name, count, oldest in zip(candidates, replies[::2], replies[1::2], strict=True)
            if count and _is_kombu_message(oldest)}


def _is_kombu_message(raw: bytes | str | None) -> bool:
    try:
        message = json.loads(raw) if raw is not None else None
    except ValueError:
        return False
    return isinstance(message, dict) and "properties" in message and "body" in message


def _escape(text: str) -> str:
    # SCAN's MATCH is a glob: a prefix with *, ?, [ or \ must match only itself.
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
