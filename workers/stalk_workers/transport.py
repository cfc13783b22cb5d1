"""kombu's Redis transport, with one Redis client object per channel instead of one per command.

kombu 5.7's ``Channel.conn_or_acquire`` builds a new ``redis.Redis`` for every ack, every
"unacked" bookkeeping write and every event publish; redis-py 6's constructor fills a
case-insensitive table of ~200 response callbacks each time. In a worker's main process (the
one that receives, acks and sends events for every task) that was about a tenth of its time
in a drain of no-op tasks (py-spy). A ``redis.Redis`` holds no per-command state (connections
come from its pool), so one per channel and pool does the same work. Celery uses this class
through its ``broker_transport`` setting; the URL, options and keys are kombu's own.
"""

from __future__ import annotations

from contextlib import contextmanager

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
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
