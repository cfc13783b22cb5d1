"""kombu's Redis transport, with one Redis client object per channel instead of one per command.

kombu 5.7's ``Channel.conn_or_acquire`` builds a new ``redis.Redis`` for every ack, every
"unacked" bookkeeping write and every event publish; redis-py 6's constructor fills a
case-insensitive table of ~200 response callbacks each time. In a worker's main process (the
one that receives, acks and sends events for every task) that was about a tenth of its time
in a drain of no-op tasks (py-spy). A ``redis.Redis`` holds no per-command state (connections
come from its pool), so one per channel and pool does the same work. Celery uses this class
through its ``broker_transport`` setting; the URL, options and keys are kombu's own.

``Channel.capturing()`` lets the API see the exact message kombu would push for a task without
pushing it: the API builds one message per kind of task through Celery and kombu, then renders
the rest of a batch from it (api/stalk_api/publishing.py).

The same two pieces sit on kombu's Sentinel channel for ``sentinel://`` brokers (``SentinelTransport``,
``SentinelCapturingTransport``): its client is on the current primary's pool, so the reused client and
a captured publish follow a failover as kombu's own do. kombu switches a connection that failed to the
next ``;`` address by its URL scheme, which picks kombu's own Sentinel transport: after that the
connection takes the library's path (no ``capturing``), and the API publishes through Celery.

Both lean on kombu's private names (``_create_client``, ``_put``, ``_q_for_pri``), so each can be
turned off (``STALK_LIBRARY_SHORTCUTS_OFF``): ``channel-client`` off takes ``CapturingTransport``
(kombu's own client per command), both off take kombu's own transport (``create_app`` chooses).
"""

from __future__ import annotations

from contextlib import contextmanager

import redis
from kombu.transport import redis as kombu_redis


class NotCapturable(Exception):
    """The publish needs more than one LPUSH (the queue has an expiry), so it cannot be captured."""


class CapturingChannel(kombu_redis.Channel):
    """kombu's Redis channel that can capture a publish instead of pushing it."""

    _captured: list | None = None

    def _connection_closed(self) -> bool:
        transport = self.connection  # None once the channel is closed
        return transport is None or getattr(transport, "client", None) is None

    @property
    def do_restore(self):
        """Whether closing this channel pushes its delivered, unacked messages back (kombu's
        ``QoS.restore_unacked_once`` asks). Not once the connection is closed: skipping loses
        nothing, the messages stay in Redis's ``unacked`` hash (the visibility-timeout restore
        brings them back) or went with Redis's data (stalk's recoverer republishes those)."""
        return not self._connection_closed()

    def _connparams(self, asynchronous=False):
        # After Redis died the consumer closes the connection, and a late ack (a task that ended
        # since) or restore on the old channel builds a pool from it: kombu reads
        # ``transport.client`` (None) and the AttributeError ended the worker ("Unrecoverable
        # error", bench/soak.py). A ConnectionError is one of the transport's connection errors:
        # Celery logs "Couldn't ack" and the worker goes on.
        if self._connection_closed():
            raise redis.ConnectionError("the broker connection of this channel is closed")
        return super()._connparams(asynchronous=asynchronous)

    @contextmanager
    def capturing(self):
        """Inside, a publish appends ``(list key, message dict)`` to the yielded list instead of
        pushing it: the key and message are the ones kombu's ``_put`` would LPUSH (priority
        sub-list chosen, body encoded, delivery tag set). The key is without ``global_keyprefix``,
        which this channel's client adds."""
        self._captured = captured = []
        try:
            yield captured
        finally:
            self._captured = None

    def _put(self, queue, message, **kwargs):
        if self._captured is None:
            return super()._put(queue, message, **kwargs)
        if self._expires and queue in self._expires:  # kombu would PEXPIRE every priority list too
            raise NotCapturable(f"queue {queue!r} has an expiry")
        priority = self._get_message_priority(message, reverse=False)
        self._captured.append((self._q_for_pri(queue, priority), message))


class Channel(CapturingChannel):
    """A capturing channel that builds one Redis client object and uses it for every command."""

    _reused_client = None

    @contextmanager
    def conn_or_acquire(self, client=None):
        if client:
            yield client
            return
        reused = self._reused_client
        # A new pool (after a reconnect or a fork) gets a new client.
        if reused is None or reused.connection_pool is not self.pool:
            reused = self._reused_client = self._create_client()
        yield reused


class Transport(kombu_redis.Transport):
    Channel = Channel


class CapturingTransport(kombu_redis.Transport):
    """With ``channel-client`` off: kombu's client per command, publishes still capturable."""

    Channel = CapturingChannel


class SentinelCapturingChannel(CapturingChannel, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel (the primary found through Sentinel) that can capture a publish."""


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel with one client object per channel and capturable publishes."""


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


class SentinelCapturingTransport(kombu_redis.SentinelTransport):
    """``sentinel://`` with ``channel-client`` off."""

    Channel = SentinelCapturingChannel
