"""The queue reader's Lua read through Sentinel: the figures of the primary Sentinel names, before and
after a failover, from one client built once (it follows the new primary by itself)."""

from __future__ import annotations

import pytest
from kombu import Connection

from stalk_workers.brokers import close_client, redis_client
from stalk_workers.factory import create_app
from stalk_workers.queue_reader import QueueReader
from stalk_workers.settings import Settings
from tests.fixtures.sentinel import sentinel_cluster  # noqa: F401 - a fixture, found by name


def counts(reader: QueueReader, queue: str = "default") -> tuple[int, int]:
    stats = reader.read([queue])[queue]
    return stats.waiting, stats.in_flight


@pytest.mark.parametrize("how", ["sentinel-failover", "primary-killed"])
def test_the_reader_follows_a_failover(sentinel_cluster, how):  # noqa: F811
    cluster = sentinel_cluster
    settings = Settings(broker_url=cluster.url(0), result_backend=cluster.url(1),
                        broker_master_name=cluster.master_name)
    app = create_app(settings)
    for i in range(7):
        app.send_task("stalk.echo", args=[i], queue="default", priority=i)
    # Two delivered, not acked, as a worker's consumer holds them.
    conn = Connection(cluster.url(0), transport_options={"master_name": cluster.master_name})
    channel = conn.default_channel
    assert all(channel.basic_get("default", no_ack=False) for _ in range(2))
    client = redis_client(cluster.url(0), master_name=cluster.master_name, socket_timeout=2,
                          socket_connect_timeout=2)
    reader = QueueReader(client)
    try:
        assert counts(reader) == (5, 2)
        cluster.wait_synced()
        old = cluster.current_primary_port()
        if how == "sentinel-failover":
            new = cluster.failover()
        else:
            new = cluster.wait_promoted(cluster.kill_primary())
        assert new != old
        # The same reader and client, now on the new primary: its first read may meet the old
        # connection's error; the next is right.
        try:
            reader.read(["default"])
        except Exception:  # noqa: BLE001 - redis-py drops the dead connection and asks Sentinel again
            pass
        assert counts(reader) == (5, 2)
        assert client.connection_pool.get_master_address()[1] == new
        app.send_task("stalk.echo", args=["after"], queue="default")
        assert counts(reader) == (6, 2)
    finally:
        conn.release()
        close_client(client)
        app.close()
