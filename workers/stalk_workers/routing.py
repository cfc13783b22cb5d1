"""Which queue a message published as (exchange, routing key) was delivered from: kombu's bindings.

kombu's Redis transport keeps, per exchange, the set ``_kombu.binding.<exchange>`` (plus the app's
``global_keyprefix``), written when a queue is declared (``Channel._queue_bind``). Each member is
``routing key<sep>pattern<sep>queue``; ``pattern`` is empty for a direct exchange and, for a topic
exchange, the regular expression kombu compiled from the binding key (``#``, ``*``). Routing a
message is ``TopicExchange.lookup``/``DirectExchange.lookup`` over those members; ``route`` does the
same without kombu's in-memory exchange state, which only the declaring process has.

An ``unacked`` entry keeps only the exchange and routing key, so this is how in-flight messages are
attributed to queues when an app routes with its own keys (``tracker.issues.enrich_issue``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection, Iterable
from functools import lru_cache

import redis
from kombu.transport.redis import Channel
from kombu.utils.encoding import bytes_to_str

# Bindings change only when an app declares a new queue: read them again this often.
BINDINGS_REFRESH_SECONDS = 30.0

Binding = tuple[str, str, str]  # routing key, pattern, queue
Route = tuple[str, str]  # exchange, routing key


def route(routing_key: str, bindings: Iterable[Binding]) -> str | None:
    """The queue a message with ``routing_key`` reached through ``bindings``, or None.

    A binding with the same key (a direct exchange, or a literal topic key) first; then topic
    patterns. Where several queues match, the first by name: kombu then pushes one copy to each
    under the same delivery tag, so ``unacked`` holds only one of them anyway.
    """
    bindings = list(bindings)
    direct = sorted(queue for key, _pattern, queue in bindings if key == routing_key)
    if direct:
        return direct[0]
    matched = sorted(queue for _key, pattern, queue in bindings if pattern and _compiled(pattern).match(routing_key))
    return matched[0] if matched else None


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def parse_binding(member: bytes | str) -> Binding | None:
    parts = bytes_to_str(member).split(Channel.sep)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else None


class Bindings:
    """kombu's bindings of the exchanges in use, read now and then; not thread-safe (one per reader)."""

    def __init__(self, client: redis.Redis, *, key_prefix: str = "", clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._prefix = key_prefix
        self._clock = clock
        self._tables: dict[str, tuple[Binding, ...]] = {}
        self._read_at = float("-inf")
        self._queues: dict[Route, str] = {}

    def resolver(self, routes: Collection[Route]) -> Callable[[Route], str]:
        """A function from (exchange, routing key) to queue, for ``routes``: the bindings of their
        exchanges are read first if new or stale. Without a binding that matches, the routing key
        is the queue (Celery's default routing, and the default exchange)."""
        exchanges = {exchange for exchange, key in routes if exchange and exchange != key}
        if exchanges - self._tables.keys() or (exchanges and self._clock() - self._read_at >= BINDINGS_REFRESH_SECONDS):
            self._load(exchanges)
        return self._queue

    def _queue(self, key: Route) -> str:
        exchange, routing_key = key
        if exchange == routing_key:  # Celery's default: Queue(name, Exchange(name), routing_key=name)
            return routing_key
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = route(routing_key, self._tables.get(exchange, ())) or routing_key
        return queue

    def _load(self, exchanges: set[str]) -> None:
        names = sorted(exchanges)
        with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.smembers(self._prefix + Channel.keyprefix_queue % name)
            members = pipe.execute()
        self._tables = {name: tuple(b for m in found if (b := parse_binding(m))) for name, found in zip(names, members)}
        self._queues.clear()
        self._read_at = self._clock()
