"""The queue reader against a team's own Celery app (tests/fixtures/foreign_app.py): ten priority
lists per queue, a topic exchange whose routing keys are task names, a key prefix, its own worker
processes. The truth is what kombu and Celery themselves say: kombu's ``_size`` through the app's
own channel (it knows the app's priority steps), and Celery's standard ``inspect().active()``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from stalk_workers.queue_reader import QueueReader
from stalk_workers.sent_at import SENT_AT_HEADER
from tests.fixtures import foreign_app
from tests.fixtures.foreign_workers import errors_in, start_foreign_worker, stop_workers
from tests.fixtures.wait import wait_until


@pytest.fixture
def tracker(redis_urls):
    app = foreign_app.make_app(redis_urls[0])
    foreign_app.declare_queues(app)
    yield app
    app.close()


@pytest.fixture
def reader(redis_urls) -> Iterator[QueueReader]:
    client = redis.Redis.from_url(redis_urls[0])
    yield QueueReader(client, key_prefix=foreign_app.KEY_PREFIX)
    client.close()


def kombu_size(app, queue: str) -> int:
    """What waits in ``queue`` by kombu's own count, with the app's own priority steps."""
    with app.connection_for_read() as conn:
        return conn.default_channel._size(queue)  # noqa: SLF001 - kombu's own answer is the truth here


def test_waiting_counts_every_priority_list_of_an_app_with_ten_steps(tracker, reader):
    enrich = tracker.tasks["tracker.issues.enrich_issue"]
    for i in range(38):
        enrich.apply_async(args=[0], priority=i % 10)
    for i in range(5):
        tracker.tasks["tracker.reports.build_report"].apply_async(args=[0], priority=9 - i)

    stats = reader.read(["issues", "reports"])

    assert kombu_size(tracker, "issues") == 38 and kombu_size(tracker, "reports") == 5
    assert (stats["issues"].waiting, stats["reports"].waiting) == (38, 5)


def test_in_flight_is_attributed_by_the_queue_a_message_came_from(tracker, reader, redis_urls, tmp_path):
    """Routing keys like tracker.issues.enrich_issue, resolved through kombu's _kombu.binding.* sets."""
    for _ in range(3):
        tracker.tasks["tracker.issues.enrich_issue"].apply_async(args=[60])
    tracker.tasks["tracker.reports.build_report"].apply_async(args=[60])
    logs = [tmp_path / "issues.log", tmp_path / "reports.log"]
    workers = []
    try:
        workers.append(start_foreign_worker(redis_urls[0], "issues", "issues", logs[0], concurrency=2))
        workers.append(start_foreign_worker(redis_urls[0], "reports", "reports", logs[1], concurrency=1))

        def active() -> dict[str, int]:
            replies = tracker.control.inspect(timeout=1).active() or {}
            out = {"issues": 0, "reports": 0}
            for tasks in replies.values():
                for task in tasks:
                    out[task["name"].split(".")[1]] += 1
            return out

        truth = wait_until(lambda: (a := active()) == {"issues": 2, "reports": 1} and a, timeout=30,
                           what="two issues tasks and one report running (Celery's inspect().active())")
        stats = reader.read(["issues", "reports"])
        assert {q: s.in_flight for q, s in stats.items()} == truth
        assert stats["issues"].waiting == 1 and stats["reports"].waiting == 0
    finally:
        stop_workers(workers)
    for log in logs:
        assert errors_in(log) == [], log.read_text()[-3000:]


def test_listing_workers_counts_foreign_workers_and_never_makes_them_log_an_error(tracker, redis_urls, tmp_path):
    """What GET /v1/queues and /v1/workers call: Celery's standard inspection, which every worker answers."""
    from celery import Celery

    from stalk_workers.inspection import online_workers

    log = tmp_path / "issues.log"
    workers = [start_foreign_worker(redis_urls[0], "issues,reports", "tracker", log, concurrency=3)]
    client = Celery("client", broker=redis_urls[0], set_as_current=False)
    client.conf.broker_transport_options = {"global_keyprefix": foreign_app.KEY_PREFIX}
    try:
        tracker.tasks["tracker.issues.enrich_issue"].apply_async(args=[60])
        wait_until(lambda: tracker.control.inspect(timeout=1).active(), timeout=30, what="the task running")
        started = time.monotonic()
        found = online_workers(client, timeout=1.0, max_age=0)
        took = time.monotonic() - started
        again = online_workers(client, timeout=1.0)  # within the cache's age: no broadcast
    finally:
        stop_workers(workers)
        client.close()
    assert [(w.queues, w.active_tasks, w.pool, w.concurrency) for w in found] == [
        (["issues", "reports"], 1, "thread", 3)]
    assert found[0].name.startswith("tracker@")
    assert took < 2.0, "three inspections at once: about one timeout, not three"
    assert again is found
    assert errors_in(log) == [], log.read_text()[-3000:]


def test_unconsumed_lists_are_found_by_exact_name_and_claimed_ones_are_not(tracker, redis_urls):
    from stalk_workers.unconsumed import unconsumed_lists

    tracker.tasks["tracker.issues.enrich_issue"].apply_async(args=[0], priority=7)
    tracker.tasks["tracker.reports.build_report"].apply_async(args=[0])
    for _ in range(3):
        tracker.send_task("team.forgotten")  # Celery's default list
    client = redis.Redis.from_url(redis_urls[0])
    client.lpush("tracker:not-celery", "a job of another program")  # not a kombu message: not ours to report
    found = unconsumed_lists(client, key_prefix=foreign_app.KEY_PREFIX, claimed={"issues"})
    assert found == {"tracker:reports\x06\x165": 1, "tracker:celery": 3}
    assert unconsumed_lists(client, key_prefix=foreign_app.KEY_PREFIX, claimed={"issues", "reports", "celery"}) == {}


def test_a_remote_control_reply_nobody_waits_for_is_not_reported(tracker, redis_urls):
    """A worker's reply that comes after the inspector stopped listening stays in the inspector's
    reply list (``<oid>.reply.celery.pidbox``): Celery's plumbing, not a queue to warn about."""
    from stalk_workers.unconsumed import unconsumed_lists

    with tracker.connection_for_write() as conn:
        mailbox = tracker.control.mailbox(conn)
        reply_queue = mailbox.reply_queue
        reply_queue(conn.default_channel).declare()
        mailbox._publish_reply({"worker1": {"ok": "pong"}}, mailbox.reply_exchange.name, mailbox.oid, "ticket")
    client = redis.Redis.from_url(redis_urls[0])
    try:
        assert client.llen(foreign_app.KEY_PREFIX + reply_queue.name) == 1  # the late reply, as kombu left it
        found = unconsumed_lists(client, key_prefix=foreign_app.KEY_PREFIX, claimed=set())
        assert not [name for name in found if "pidbox" in name], found
    finally:
        client.delete(foreign_app.KEY_PREFIX + reply_queue.name)


# --- Oldest wait of a backlog the team's own code sent --------------------------------------------

ISSUES_LIST = f"{foreign_app.KEY_PREFIX}issues\x06\x165"  # priority 5, the app's default, of ten steps


@pytest.fixture
def stamped():
    """The team's one-line hook, installed in this (the producing) process for one test."""
    from celery import signals

    from stalk_workers import sent_at

    sent_at.stamp_send_times()
    yield
    signals.before_task_publish.disconnect(dispatch_uid=sent_at.__name__)


@pytest.mark.parametrize("hook", [True, False], ids=["with the send-time hook", "without it"])
def test_oldest_wait_of_a_backlog_drained_steadily_stays_within_10_percent_of_the_truth(
        hook, request, tracker, reader, redis_urls, tmp_path):
    """The backlog builds for 8 s while nothing consumes, then one worker drains it at a steady
    rate while the reader polls, as the operator does. Before arrivals were tracked, a message
    without a send time aged from when it reached the tail: ~0 s all through the drain."""
    if hook:
        request.getfixturevalue("stamped")
    client = redis.Redis.from_url(redis_urls[0])
    enrich = tracker.tasks["tracker.issues.enrich_issue"]
    sent: dict[str, float] = {}
    reader.read(["issues"])  # the reader runs before the backlog starts, as the operator would
    enrich.apply_async(args=[0.05])
    sent_stamp = json.loads(client.lindex(ISSUES_LIST, 0))["headers"].get(SENT_AT_HEADER)
    assert (sent_stamp is not None) == hook, "the hook stamps the send time, and only the hook does"
    sent[json.loads(client.lindex(ISSUES_LIST, 0))["headers"]["id"]] = sent_stamp or time.time()

    def poll_and_compare(compared: list) -> None:
        before = client.lindex(ISSUES_LIST, -1)
        stats = reader.read(["issues"])["issues"]
        now = time.time()
        if before is not None and client.lindex(ISSUES_LIST, -1) == before:  # the same tail throughout
            truth = now - sent[_task_id(before)]
            compared.append((truth, stats.oldest_wait_seconds))

    compared: list[tuple[float, float]] = []
    next_read = time.monotonic()
    for i in range(160):  # 20 a second for 8 s
        sent[enrich.apply_async(args=[0.05]).id] = time.time()
        if time.monotonic() >= next_read:
            poll_and_compare(compared)
            next_read += 1.0
        time.sleep(0.05)
    # Started on a thread: the reads go on every 0.5 s while the worker starts (the accuracy is
    # one read interval, and the operator reads every second).
    workers: list = []
    starting = threading.Thread(target=lambda: workers.append(
        start_foreign_worker(redis_urls[0], "issues", "drain", tmp_path / "drain.log", concurrency=1)))
    starting.start()
    try:
        while starting.is_alive() or client.llen(ISSUES_LIST):
            poll_and_compare(compared)
            time.sleep(0.5)
    finally:
        starting.join()
        stop_workers(workers)

    draining = [(truth, est) for truth, est in compared if truth > 8]
    assert len(draining) >= 5, f"the backlog drained too fast to compare: {compared}"
    misses = [(round(truth, 1), round(est, 1)) for truth, est in compared if abs(est - truth) > max(2.0, 0.1 * truth)]
    assert not misses, f"(truth, reported) beyond 10 % or 2 s: {misses} of {len(compared)} reads"


def _task_id(raw: bytes) -> str:
    return json.loads(raw)["headers"]["id"]
