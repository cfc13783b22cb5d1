"""Redis state -> per-queue stats: the one reader the API, the operator and the CLI all call.

What it relies on, from kombu 5.x's Redis transport (``kombu/transport/redis.py``, 5.7.0 here):

- A queue ``Q`` is one list per priority step: ``Q`` for step 0, ``Q<sep>3``, ``Q<sep>6``,
  ``Q<sep>9`` (``PRIORITY_STEPS`` and ``Channel.sep``, imported below, not copied).
- Publishers ``LPUSH``; consumers ``BRPOP``/``RPOP``; so the oldest message of each list is at
  index -1. (kombu puts a restored message back with ``RPUSH``, so it is the next one out: also -1.)
- A delivered message leaves its list for one hash per database, ``unacked`` (delivery tag ->
  JSON ``[message, exchange, routing_key]``), indexed by the sorted set ``unacked_index``
  (delivery tag -> delivery time). The ack deletes both. Celery's eta/countdown tasks are
  delivered at once and held by the worker until their time, so they sit in ``unacked`` too.
- ``global_keyprefix`` is prepended to every one of these keys.

In-flight messages are attributed to queues by routing key: Celery routes ``{"queue": name}`` to
a queue declared as ``Queue(name, Exchange(name), routing_key=name)``, so the routing key is the
queue name. The reader keeps what it parsed from ``unacked`` between reads (delivery tag ->
queue and eta), so each read fetches only the entries delivered since the last one.

A reader keeps state between reads and is not thread-safe: use one per thread, or a lock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel
from kombu.utils.encoding import bytes_to_str

# The header the API stamps on every task it publishes: epoch seconds (float) of the send.
SENT_AT_HEADER = "stalk_sent_at"
# Where an ``unacked`` entry that cannot be parsed is attributed: no queue, and not fetched again.
NOT_A_QUEUE = ""
# Fetch new unacked entries in chunks (pipelined: still one round trip), so thousands of newly
# reserved tasks are not one giant command and reply.
HMGET_CHUNK = 1000


@dataclass(frozen=True)
class QueueStats:
    waiting: int  # ready messages across all priority steps
    in_flight: int  # delivered to a worker, not yet acked, and not held back by eta/countdown
    scheduled: int  # eta/countdown messages held by workers (they sit in kombu's ``unacked`` too)
    oldest_wait_seconds: float | None  # age of the oldest waiting message; None when nothing waits


@dataclass(frozen=True)
class _Tail:
    """The message at the oldest end of one list, as last read."""

    raw: bytes | str  # compared first, so an unchanged tail is not parsed again
    tag: str  # kombu's delivery tag
    sent_at: float | None  # the API's header, when present
    first_seen: float


@dataclass(frozen=True)
class _Delivered:
    """What the reader keeps about one ``unacked`` entry."""

    score: float  # delivery time in ``unacked_index``; a redelivery of the same tag changes it
    queue: str | None  # the routing key; None when the hash entry was missing (fetched again next read)
    eta: float | None  # epoch seconds the worker holds it until; None for a plain task


class QueueReader:
    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str = "",
        clock: Callable[[], float] = time.time,
        priority_steps: Sequence[int] = PRIORITY_STEPS,
    ):
        self._client = client
        self._prefix = key_prefix
        self._clock = clock
        # kombu's transport option ``priority_steps`` defaults to PRIORITY_STEPS; pass the same
        # value here if the app changes it.
        self._steps = tuple(priority_steps)
        self._delivered: dict[str, _Delivered] = {}
        self._tails: dict[str, _Tail] = {}  # per list key

    def read(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        """Stats for each queue: one pipelined round trip, plus one for newly delivered tags (if any)."""
        lists = {queue: [self._list_key(queue, step) for step in self._steps] for queue in queues}
        with self._client.pipeline(transaction=False) as pipe:
            for keys in lists.values():
                for key in keys:
                    pipe.llen(key)
                    pipe.lindex(key, -1)
            pipe.zrange(self._prefix + Channel.unacked_index_key, 0, -1, withscores=True)
            replies = pipe.execute()
        now = self._clock()
        self._sync_delivered(replies[-1])

        in_flight = dict.fromkeys(queues, 0)
        scheduled = dict.fromkeys(queues, 0)
        for entry in self._delivered.values():
            if entry.queue in in_flight:
                if entry.eta is not None and entry.eta > now:
                    scheduled[entry.queue] += 1
                else:
                    in_flight[entry.queue] += 1

        stats = {}
        position = 0
        for queue, keys in lists.items():
            waiting, oldest = 0, None
            for key in keys:
                length, tail = replies[position], replies[position + 1]
                position += 2
                waiting += length
                if tail is not None:
                    age = self._age(key, tail, now)
                    oldest = age if oldest is None else max(oldest, age)
                else:
                    self._tails.pop(key, None)
            stats[queue] = QueueStats(waiting=waiting, in_flight=in_flight[queue], scheduled=scheduled[queue],
                                      oldest_wait_seconds=oldest if waiting else None)
        return stats

    def _list_key(self, queue: str, step: int) -> str:
        # kombu's Channel._q_for_pri: step 0 is the bare queue name.
        return f"{self._prefix}{queue}{Channel.sep}{step}" if step else f"{self._prefix}{queue}"

    def _sync_delivered(self, index: list[tuple[bytes | str, float]]) -> None:
        """Bring the delivered-tag cache in line with ``unacked_index``; HMGET only what is new."""
        current = {bytes_to_str(tag): score for tag, score in index}
        for tag in self._delivered.keys() - current.keys():
            del self._delivered[tag]  # acked, or restored to its list
        new = [tag for tag, score in current.items()
               if (known := self._delivered.get(tag)) is None or known.score != score or known.queue is None]
        if not new:
            return
        with self._client.pipeline(transaction=False) as pipe:
            for start in range(0, len(new), HMGET_CHUNK):
                pipe.hmget(self._prefix + Channel.unacked_key, new[start:start + HMGET_CHUNK])
            values = [value for chunk in pipe.execute() for value in chunk]
        for tag, raw in zip(new, values, strict=True):
            queue, eta = _parse_unacked(raw) if raw is not None else (None, None)
            self._delivered[tag] = _Delivered(score=current[tag], queue=queue, eta=eta)

    def _age(self, key: str, raw: bytes | str, now: float) -> float:
        """Age of the message at the oldest end of one list: its sent-at header, or first sight."""
        tail = self._tails.get(key)
        if tail is None or tail.raw != raw:
            tag, sent_at = _tag_and_sent_at(raw)
            # The same delivery tag may come back changed (kombu marks a restored message redelivered).
            first_seen = tail.first_seen if tail is not None and tail.tag == tag else now
            tail = self._tails[key] = _Tail(raw=raw, tag=tag, sent_at=sent_at, first_seen=first_seen)
        if tail.sent_at is not None:
            return max(0.0, now - tail.sent_at)
        return now - tail.first_seen


def _tag_and_sent_at(raw: bytes | str) -> tuple[str, float | None]:
    """kombu's delivery tag and the API's sent-at header of one waiting message."""
    try:
        message = json.loads(raw)
        tag = (message.get("properties") or {}).get("delivery_tag")
        sent_at = (message.get("headers") or {}).get(SENT_AT_HEADER)
    except (ValueError, AttributeError):
        tag, sent_at = None, None
    return str(tag or hash(raw)), float(sent_at) if isinstance(sent_at, int | float) else None


def _parse_unacked(raw: bytes | str) -> tuple[str | None, float | None]:
    """(routing key, eta as epoch seconds) of one ``unacked`` hash value."""
    try:
        message, _exchange, routing_key = json.loads(raw)
        headers = message.get("headers") or {}
    except (ValueError, TypeError, AttributeError):
        return NOT_A_QUEUE, None
    return routing_key, _epoch(headers.get("eta"))


def _epoch(eta: str | None) -> float | None:
    # Celery's message protocol 2 carries eta as an ISO 8601 string in the headers; with
    # enable_utc (the default) it has an offset; a naive one is UTC.
    if not eta:
        return None
    try:
        when = datetime.fromisoformat(eta)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
