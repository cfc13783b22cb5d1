"""stalk's kombu Redis transport against real Redis: kombu's keys and ack bookkeeping, one client.

The broker side of a worker (the unacked hash that redelivery relies on, key prefixes) must be
exactly kombu's; the transport only stops building a new client object per command.
"""

from __future__ import annotations

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.transport import redis as kombu_redis

from stalk_workers.app import create_app
from stalk_workers.settings import Settings
from stalk_workers.transport import CapturingTransport, SentinelCapturingTransport, SentinelTransport, Transport


@pytest.mark.parametrize("transport", [Transport, CapturingTransport, kombu_redis.Transport],
                         ids=["stalk's", "channel-client off", "kombu's own"])
@pytest.mark.parametrize("prefix", ["", "team-a:"], ids=["no prefix", "global_keyprefix"])
def test_acks_late_bookkeeping_is_kombus(redis_urls, prefix, transport):
    broker = redis_urls[0]
    options = {"global_keyprefix": prefix} if prefix else {}
    queue = Queue("work", Exchange("work", type="direct"), routing_key="work")
    raw = redis.Redis.from_url(broker)
    with Connection(broker, transport=transport, transport_options=options) as conn:
        channel = conn.channel()
        producer = conn.Producer(channel)
        for i in range(3):
            producer.publish({"n": i}, exchange=queue.exchange, routing_key="work", declare=[queue],
                             serializer="json")
        assert raw.llen(f"{prefix}work") == 3

        received = []
        consumer = conn.Consumer(queue, channel=channel, callbacks=[lambda body, m: received.append(m)],
                                 accept=["json"])
        with consumer:
            while len(received) < 3:
                conn.drain_events(timeout=5)
        # Delivered, not acked: kombu keeps them in its unacked hash for redelivery.
        assert raw.hlen(f"{prefix}unacked") == 3 and raw.zcard(f"{prefix}unacked_index") == 3
        clients = []  # kept alive, so that no two of them can share an id()
        for message in received:
            message.ack()
            with channel.conn_or_acquire() as client:
                clients.append(client)
        assert raw.hlen(f"{prefix}unacked") == 0 and raw.zcard(f"{prefix}unacked_index") == 0
        assert [m.decode() for m in received] == [{"n": 0}, {"n": 1}, {"n": 2}]
        distinct = len({id(client) for client in clients})
        if transport is Transport:
            assert distinct == 1, "one client object for every command of the channel"
        else:
            assert distinct == 3, "kombu's own: a client object per command"


@pytest.mark.parametrize(("off", "transport"), [
    ("", Transport),
    ("channel-client", CapturingTransport),
    ("message-templates", Transport),
    ("channel-client,message-templates", kombu_redis.Transport),
    ("all", kombu_redis.Transport),
], ids=["all on", "channel-client off", "message-templates off (its _put passes through uncaptured)",
        "both off: kombu's own", "all off: kombu's own"])
def test_the_app_uses_it_for_redis_and_sentinel_brokers(off, transport):
    redis_app = create_app(Settings(broker_url="redis://127.0.0.1:1/0", library_shortcuts_off=off))
    assert redis_app.connection_for_write().get_transport_cls() is transport
    # sentinel://: the same channel classes on kombu's Sentinel channel (docs/sentinel.md).
    sentinel = create_app(Settings(broker_url="sentinel://127.0.0.1:1/0", broker_master_name="m",
                                   library_shortcuts_off=off)).connection_for_write().get_transport_cls()
    assert sentinel is {Transport: SentinelTransport, CapturingTransport: SentinelCapturingTransport,
                        kombu_redis.Transport: kombu_redis.SentinelTransport}[transport]


def test_redis_py_packs_and_parses_with_hiredis_on_the_apps_clients(redis_urls):
    """docs/benchmarks.md counts on hiredis (a dependency): a redis-py release that stopped taking
    this hiredis would quietly cost every Redis command its Python parser and packer."""
    from redis._parsers import _HiredisParser
    from redis.connection import HiredisRespSerializer

    broker, results = redis_urls
    app = create_app(Settings(broker_url=broker, result_backend=results, record_tasks=False))
    with app.producer_or_acquire() as producer, producer.channel.conn_or_acquire() as client:
        clients = {"broker channel": client, "result backend": app.backend.client}
        for name, redis_client in clients.items():
            redis_client.ping()
            connection = redis_client.connection_pool.get_connection()
            try:
                assert isinstance(connection._parser, _HiredisParser), name
                assert isinstance(connection._command_packer, HiredisRespSerializer), name
            finally:
                redis_client.connection_pool.release(connection)
