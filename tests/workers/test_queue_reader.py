"""The queue reader against a real Redis, with messages published by a real Celery app.

Messages are reserved without ack either by kombu's own channel (``basic_get(no_ack=False)``
moves them into ``unacked`` exactly as a worker's consumer does) or, once, by a real
``celery worker`` with acks_late and prefetch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from kombu import Connection

from stalk_workers.queue_reader import QueueReader, QueueStats
from stalk_workers.sent_at import SENT_AT_HEADER
from stalk_workers.settings import Settings
from tests.fixtures.servers import wait_until
from tests.workers.celery_app import create_app

REPO = Path(__file__).resolve().parents[2]


class Clock:
    """A clock the test moves by hand, so ages are exact."""

    def __init__(self, now: float | None = None):
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


class CountingConnection(redis.Connection):
    """A real Redis connection that counts the times it sends: one send is one round trip."""

    sends = 0

    def send_packed_command(self, command, check_health=True):
        type(self).sends += 1
        return super().send_packed_command(command, check_health)


def counting_client(url: str) -> tuple[redis.Redis, type[CountingConnection]]:
    counter = type("Counter", (CountingConnection,), {"sends": 0})
    return redis.Redis(connection_pool=redis.ConnectionPool.from_url(url, connection_class=counter)), counter


@pytest.fixture
def broker(redis_urls) -> str:
    return redis_urls[0]


def celery_app(broker: str, prefix: str = ""):
    return create_app(Settings(broker_url=broker, broker_key_prefix=prefix))


def publish(app, queue: str, n: int = 1, **options) -> None:
    for _ in range(n):
        app.send_task("tests.sleep", queue=queue, **options)


def counts(stats: QueueStats) -> tuple[int, int, int]:
    return stats.waiting, stats.in_flight, stats.scheduled


@pytest.fixture
def reserve(broker):
    """Take n messages off a queue without acking them, as a worker's consumer does."""
    connections = []

    def take(queue: str, n: int, prefix: str = "") -> tuple[Connection, list]:
        conn = Connection(broker, transport_options={"global_keyprefix": prefix} if prefix else {})
        connections.append(conn)
        channel = conn.default_channel
        messages = [channel.basic_get(queue, no_ack=False) for _ in range(n)]
        assert all(messages), "the queue ran out of messages"
        return conn, messages

    yield take
    for conn in connections:  # before the server stops: kombu restores unacked messages on release
        conn.release()


@pytest.mark.parametrize("decode_responses", [False, True], ids=["bytes client", "str client"])
def test_counts_every_priority_step(broker, decode_responses, reserve):
    app = celery_app(broker)
    for priority in range(10):
        publish(app, "q", priority=priority)
    client = redis.Redis.from_url(broker, decode_responses=decode_responses)
    # Priorities 0-2 share the bare list; LLEN of the queue name alone would say 3.
    assert client.llen("q") == 3
    reserve("q", 1)
    assert QueueReader(client).read(["q"])["q"] == QueueStats(
        waiting=9, in_flight=1, scheduled=0, oldest_wait_seconds=0.0)


def test_honours_global_keyprefix(broker, reserve):
    publish(celery_app(broker, prefix="team-a:"), "q", 4, priority=9)
    reserve("q", 1, prefix="team-a:")
    client = redis.Redis.from_url(broker)
    assert counts(QueueReader(client, key_prefix="team-a:").read(["q"])["q"]) == (3, 1, 0)
    assert counts(QueueReader(client).read(["q"])["q"]) == (0, 0, 0)


def test_oldest_wait_comes_from_the_sent_at_header_of_any_priority_step(broker):
    app, clock = celery_app(broker), Clock()
    publish(app, "q", priority=0, headers={SENT_AT_HEADER: clock.now - 5})
    publish(app, "q", priority=9, headers={SENT_AT_HEADER: clock.now - 42})
    publish(app, "q", priority=9, headers={SENT_AT_HEADER: clock.now - 1})
    reader = QueueReader(redis.Redis.from_url(broker), clock=clock)
    assert reader.read(["q"])["q"].oldest_wait_seconds == pytest.approx(42)
    clock.now += 10
    assert reader.read(["q"])["q"].oldest_wait_seconds == pytest.approx(52)


def test_oldest_wait_without_header_never_restarts_while_a_backlog_drains(broker, reserve):
    """Messages a plain client sent carry no send time: the reader counts their arrivals between
    its reads (arrivals.py). What waited before its first read ages from that read, at least."""
    app, clock = celery_app(broker), Clock()
    publish(app, "q", 2)
    reader = QueueReader(redis.Redis.from_url(broker), clock=clock)
    assert reader.read(["q"])["q"].oldest_wait_seconds == 0
    clock.now += 7
    assert reader.read(["q"])["q"].oldest_wait_seconds == 7
    reserve("q", 1)  # the oldest leaves; the next one waited as long, not 0 s
    clock.now += 1
    assert reader.read(["q"])["q"].oldest_wait_seconds == 8
    reserve("q", 1)
    assert reader.read(["q"])["q"].oldest_wait_seconds is None


def test_oldest_wait_without_header_comes_from_the_reads_that_saw_the_arrivals(broker, reserve):
    app, clock = celery_app(broker), Clock()
    reader = QueueReader(redis.Redis.from_url(broker), clock=clock)
    assert reader.read(["q"])["q"].oldest_wait_seconds is None
    publish(app, "q", 4)  # between the read at 0 s and the one at 10 s: taken as evenly spread
    clock.now += 10
    assert reader.read(["q"])["q"].oldest_wait_seconds == pytest.approx(10 - 10 * 0.5 / 4)
    publish(app, "q", 2)  # between 10 s and 20 s
    clock.now += 10
    reader.read(["q"])
    reserve("q", 5)  # all four of the first interval and one of the second leave
    clock.now += 1
    # The last of the second interval's two: arrived at 10 + 10 * 1.5 / 2 = 17.5 s; now is 21 s.
    assert reader.read(["q"])["q"].oldest_wait_seconds == pytest.approx(3.5)


def test_reserved_messages_are_in_flight_and_countdowns_are_scheduled(broker, reserve):
    app, clock = celery_app(broker), Clock()
    publish(app, "q", 2, countdown=600)
    publish(app, "q", 5)
    publish(app, "other", 3)
    reserve("q", 6)
    reserve("other", 1)
    reader = QueueReader(redis.Redis.from_url(broker), clock=clock)
    stats = reader.read(["q", "other", "empty"])
    assert stats["q"] == QueueStats(waiting=1, in_flight=4, scheduled=2, oldest_wait_seconds=0.0)
    assert stats["other"] == QueueStats(waiting=2, in_flight=1, scheduled=0, oldest_wait_seconds=0.0)
    assert stats["empty"] == QueueStats(waiting=0, in_flight=0, scheduled=0, oldest_wait_seconds=None)
    # Once its eta has passed the worker runs it: a countdown task becomes in flight.
    clock.now += 601
    assert counts(reader.read(["q"])["q"]) == (1, 6, 0)


def test_acked_and_released_messages_leave_in_flight(broker, reserve):
    publish(celery_app(broker), "q", 6)
    reader = QueueReader(redis.Redis.from_url(broker))
    conn, messages = reserve("q", 4)
    assert counts(reader.read(["q"])["q"])[:2] == (2, 4)
    messages[0].ack()
    assert counts(reader.read(["q"])["q"])[:2] == (2, 3)
    conn.release()  # kombu restores unacked messages when the channel closes, as a worker's warm stop does
    assert counts(reader.read(["q"])["q"])[:2] == (5, 0)


def test_one_round_trip_for_all_queues_and_only_new_tags_fetched(broker, reserve):
    app = celery_app(broker)
    queues = [f"q{i}" for i in range(20)]
    for queue in queues:
        publish(app, queue, 3, priority=6)
    client, counter = counting_client(broker)
    reader = QueueReader(client)
    client.ping()

    def round_trips_of_read():
        before = counter.sends
        stats = reader.read(queues)
        return counter.sends - before, stats

    trips, stats = round_trips_of_read()
    assert trips == 1 and sum(s.waiting for s in stats.values()) == 60

    _, messages = reserve("q0", 3)
    reserve("q1", 2)
    trips, stats = round_trips_of_read()  # new deliveries: still one round trip
    assert trips == 1 and (stats["q0"].in_flight, stats["q1"].in_flight) == (3, 2)

    # Entries already parsed are not fetched again: rewritten in place, they keep their queue.
    for tag, raw in client.hgetall("unacked").items():
        message, exchange, _routing_key = json.loads(raw)
        client.hset("unacked", tag, json.dumps([message, exchange, "q19"]))
    trips, stats = round_trips_of_read()
    assert trips == 1 and (stats["q0"].in_flight, stats["q1"].in_flight, stats["q19"].in_flight) == (3, 2, 0)

    messages[0].ack()
    reserve("q2", 1)
    trips, stats = round_trips_of_read()
    assert trips == 1 and (stats["q0"].in_flight, stats["q2"].in_flight) == (2, 1)


def test_thousands_of_new_deliveries_in_one_read(broker):
    client, counter = counting_client(broker)
    now = time.time()
    for start in range(0, 2500, 500):  # as kombu files them: index score = delivery time, value = [msg, exch, rk]
        tags = [f"tag-{i}" for i in range(start, start + 500)]
        client.zadd("unacked_index", {tag: now for tag in tags})
        client.hset("unacked", mapping={tag: json.dumps([{"headers": {}}, "q", "q"]) for tag in tags})
    before = counter.sends
    assert QueueReader(client).read(["q"])["q"].in_flight == 2500
    assert counter.sends - before == 1


def test_a_delivery_stamped_by_a_clock_behind_is_counted_by_the_next_read(broker, reserve):
    publish(celery_app(broker), "q", 2)
    reader = QueueReader(redis.Redis.from_url(broker))
    reserve("q", 1)
    assert reader.read(["q"])["q"].in_flight == 1
    client = redis.Redis.from_url(broker)
    # Another worker's clock is a minute behind: its delivery sorts below what was already read.
    client.zadd("unacked_index", {"late-tag": time.time() - 60})
    client.hset("unacked", "late-tag", json.dumps([{"headers": {}}, "q", "q"]))
    reader.read(["q"])
    assert reader.read(["q"])["q"].in_flight == 2


@pytest.fixture
def celery_worker(broker):
    """Start a real ``celery worker`` on queue q (1 thread, prefetch 4); yield it; kill it after."""
    processes = []

    def start(queue: str = "q", prefetch: int = 4):
        env = {**os.environ, "STALK_BROKER_URL": broker, "PYTHONPATH": str(REPO)}
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.workers.celery_app", "worker", "-Q", queue,
             "--pool", "threads", "--concurrency", "1", "--prefetch-multiplier", str(prefetch),
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", f"{queue}@%h",
             "--loglevel", "WARNING"],
            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        process.kill()  # cold: the sleeping tasks stay in unacked, which this database no longer needs
        process.wait(10)


def test_tasks_held_by_a_real_worker_with_acks_late(broker, celery_worker):
    app = celery_app(broker)
    # The countdown tasks go first: the worker reserves them on top of its prefetch (Celery 5
    # raises the prefetch count for each eta task it holds).
    publish(app, "q", 2, countdown=600)
    publish(app, "q", 8, args=[60])
    reader = QueueReader(redis.Redis.from_url(broker))
    celery_worker("q", prefetch=4)
    # One task running and three prefetched: all four unacked, as are the two countdown tasks.
    stats = wait_until(lambda: (s := reader.read(["q"])["q"]).in_flight == 4 and s.scheduled == 2 and s,
                       timeout=30, what="the worker to reserve 4 tasks and 2 countdown tasks")
    assert stats.waiting == 4


def test_a_restarted_redis_without_the_script_is_read_with_one_more_round_trip(broker):
    publish(celery_app(broker), "q", 2)
    client, counter = counting_client(broker)
    reader = QueueReader(client)
    assert reader.read(["q"])["q"].waiting == 2
    client.script_flush()  # as after a restart: the script cache is empty
    before = counter.sends
    assert reader.read(["q"])["q"].waiting == 2
    assert counter.sends - before == 2  # EVALSHA refused, then EVAL (which caches it again)
    before = counter.sends
    reader.read(["q"])
    assert counter.sends - before == 1
