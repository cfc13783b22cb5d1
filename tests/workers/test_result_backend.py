"""StalkRedisBackend against real Redis and a real prefork worker: Celery's result semantics stay.

The backend writes each state in one Lua script instead of Celery's GET then SET+PUBLISH. What a
Celery user relies on is checked from the outside: ``AsyncResult.state``/``get`` from a plain
Celery client (Celery's own backend class), STARTED while a task runs, chords, the stored meta
and its expiry, and the rule that a SUCCESS is never overwritten by a redelivered run. STARTED is
written only for a task still running after ``STARTED_DELAY_SECONDS``, never after a later state.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
from celery import Celery, chord, states
from celery.backends.redis import RedisBackend

from stalk_workers.app import create_app
from stalk_workers.result_backend import STARTED_DELAY_SECONDS, StalkRedisBackend, _DeferredStarts
from stalk_workers.settings import Settings
from tests.fixtures.servers import wait_until


def plain_client(broker: str, backend: str) -> Celery:
    """What a team's own code would use: stock Celery, its own RedisBackend, JSON."""
    app = Celery("plain-client", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], result_accept_content=["json"],
                    broker_connection_retry_on_startup=True)
    return app


@pytest.fixture
def backend(redis_urls):
    broker, results = redis_urls
    app = create_app(Settings(broker_url=broker, result_backend=results, record_tasks=False))
    yield app.backend
    app.backend.client.connection_pool.disconnect()


def test_the_app_uses_it_for_redis_urls_only(redis_urls):
    broker, results = redis_urls
    app = create_app(Settings(broker_url=broker, result_backend=results, record_tasks=False))
    assert isinstance(app.backend, StalkRedisBackend)
    assert app.backend.as_uri() == results  # the URL as configured: same server, same database
    other = create_app(Settings(broker_url=broker, result_backend="disabled", record_tasks=False))
    assert not isinstance(other.backend, StalkRedisBackend)
    off = create_app(Settings(broker_url=broker, result_backend=results, record_tasks=False,
                              library_shortcuts_off="result-store"))
    assert type(off.backend) is RedisBackend and off.backend.as_uri() == results


def test_stored_meta_channel_message_and_expiry_match_celerys_backend(backend, redis_urls):
    client = redis.Redis.from_url(redis_urls[1])
    pubsub = client.pubsub()
    key = backend.get_key_for_task("t-1")
    pubsub.subscribe(key)
    wait_until(lambda: pubsub.get_message(timeout=1), timeout=5, what="the subscription")

    backend.store_result("t-1", {"answer": 42}, states.SUCCESS)

    stored = json.loads(client.get(key))
    assert stored["status"] == "SUCCESS" and stored["result"] == {"answer": 42} and stored["task_id"] == "t-1"
    assert set(stored) >= {"traceback", "children", "date_done"}
    assert 0 < client.ttl(key) <= backend.expires
    message = wait_until(lambda: pubsub.get_message(timeout=1), timeout=5, what="the PUBLISH of the result")
    assert json.loads(message["data"]) == stored
    assert backend.get_task_meta("t-1")["result"] == {"answer": 42}


def test_a_success_is_never_overwritten(backend, redis_urls):
    client = redis.Redis.from_url(redis_urls[1])
    backend.store_result("t-2", "first", states.SUCCESS)
    before = client.get(backend.get_key_for_task("t-2"))
    # A redelivered run (acks late) starts and fails again after the first run succeeded.
    backend.store_result("t-2", {"pid": 1}, states.STARTED)
    backend.store_result("t-2", RuntimeError("late"), states.FAILURE)
    assert client.get(backend.get_key_for_task("t-2")) == before
    # Anything but SUCCESS is overwritten, as in Celery.
    backend.store_result("t-3", {"pid": 1}, states.STARTED)
    backend.store_result("t-3", RuntimeError("boom"), states.FAILURE)
    meta = backend.get_task_meta("t-3")
    assert meta["status"] == "FAILURE" and repr(meta["result"]) == repr(RuntimeError("boom"))


def _published_states(pubsub) -> list[str]:
    states_seen = []
    while (message := pubsub.get_message(timeout=0.2)) is not None:
        if message["type"] == "message":
            states_seen.append(json.loads(message["data"])["status"])
    return states_seen


def test_started_is_written_only_for_a_task_still_running_after_the_delay(backend, redis_urls):
    client = redis.Redis.from_url(redis_urls[1])
    pubsub = client.pubsub()
    pubsub.subscribe(backend.get_key_for_task("quick"), backend.get_key_for_task("slow"),
                     backend.get_key_for_task("failing"))

    backend.store_result("slow", {"pid": 1}, states.STARTED)
    assert client.get(backend.get_key_for_task("slow")) is None  # not yet: it may end first
    wait_until(lambda: backend.get_task_meta("slow")["status"] == states.STARTED, timeout=5,
               what="the STARTED state of a task still running after the delay")
    backend.store_result("slow", "done", states.SUCCESS)

    backend.store_result("quick", {"pid": 1}, states.STARTED)
    backend.store_result("quick", "done", states.SUCCESS)
    backend.store_result("failing", {"pid": 1}, states.STARTED)
    backend.store_result("failing", RuntimeError("boom"), states.FAILURE)
    time.sleep(3 * STARTED_DELAY_SECONDS)

    assert backend.get_task_meta("quick")["status"] == states.SUCCESS
    assert backend.get_task_meta("failing")["status"] == states.FAILURE  # never STARTED again after it
    published = _published_states(pubsub)
    assert published.count("STARTED") == 1 and published.count("SUCCESS") == 2 and published.count("FAILURE") == 1


def test_a_final_state_waits_for_a_started_write_under_way():
    order, writing, release = [], threading.Event(), threading.Event()

    def slow_write(args):
        writing.set()
        release.wait(5)
        order.append(args)

    starts = _DeferredStarts(slow_write)
    starts.defer("t", "STARTED")
    assert writing.wait(5)
    canceller = threading.Thread(target=lambda: (starts.cancel("t"), order.append("FINAL")))
    canceller.start()
    time.sleep(0.1)
    assert order == []  # the final write waits for the STARTED write it could not cancel
    release.set()
    canceller.join(5)
    assert order == ["STARTED", "FINAL"]


def test_failures_keep_their_own_expiry(redis_urls):
    broker, results = redis_urls
    app = create_app(Settings(broker_url=broker, result_backend=results, record_tasks=False))
    app.conf.result_failure_expires = 7200
    backend = StalkRedisBackend(app=app, url=results)
    backend.store_result("t-4", RuntimeError("boom"), states.FAILURE)
    backend.store_result("t-5", "ok", states.SUCCESS)
    client = redis.Redis.from_url(results)
    assert 3600 < client.ttl(backend.get_key_for_task("t-4")) <= 7200
    assert client.ttl(backend.get_key_for_task("t-5")) > 7200  # result_expires: a day


def test_compressed_results_take_celerys_own_path(redis_urls):
    broker, results = redis_urls
    app = create_app(Settings(broker_url=broker, result_backend=results, record_tasks=False))
    app.conf.result_compression = "zlib"
    backend = StalkRedisBackend(app=app, url=results)
    backend.store_result("t-6", {"big": "x" * 1000}, states.SUCCESS)
    backend.store_result("t-6", {"pid": 1}, states.STARTED)
    assert backend.get_task_meta("t-6")["result"] == {"big": "x" * 1000}


@pytest.mark.parametrize("off", ["", "result-store"], ids=["stalk's backend", "result-store off: Celery's own"])
def test_a_real_worker_shows_started_results_and_chords_to_a_plain_client(stack_factory, off):
    with stack_factory(library_shortcuts_off=off) as stack:
        stack.start_worker("default", concurrency=2)
        client = plain_client(stack.settings.broker_url, stack.settings.result_backend)
        try:
            running = client.send_task("stalk.sleep", args=[1.5], queue="default")
            info = wait_until(lambda: running.state == states.STARTED and running.info, timeout=20,
                              what="the STARTED state of a running task")
            assert {"pid", "hostname"} <= set(info)
            assert running.get(timeout=20) == 1.5 and running.state == states.SUCCESS

            pubsub = redis.Redis.from_url(stack.settings.result_backend).pubsub()
            pubsub.subscribe("celery-task-meta-echo-1")
            echoed = client.send_task("stalk.echo", args=[1, "two"], kwargs={"k": 3}, queue="default",
                                      task_id="echo-1")
            assert echoed.get(timeout=20) == {"args": [1, "two"], "kwargs": {"k": 3}}
            if off:  # Celery's own backend writes STARTED at once
                assert _published_states(pubsub) == ["STARTED", "SUCCESS"]
            else:
                assert _published_states(pubsub) == ["SUCCESS"]  # over before its STARTED was due

            failed = client.send_task("stalk.sleep", args=[-1], queue="default")  # CriticalTask: no retry
            with pytest.raises(Exception, match="non-negative"):
                failed.get(timeout=20)
            assert failed.state == states.FAILURE

            header = [client.signature("stalk.echo", args=[i], queue="default") for i in range(3)]
            body = client.signature("stalk.echo", queue="default")
            result = chord(header)(body)
            assert result.get(timeout=30) == {"args": [[{"args": [i], "kwargs": {}} for i in range(3)]],
                                              "kwargs": {}}
        finally:
            # app.close(), not client.pool.force_close_all(): kombu shares that pool with every
            # later client of the same Redis database (tests reuse database numbers). Closed for
            # good it raises "Acquire on closed pool"; closed with close_pool=False it is left
            # empty, and the next send_task on that database waits for a connection forever.
            client.close()


def test_stored_success_survives_a_second_delivery_through_a_worker(stack_factory):
    """A task delivered again after it succeeded (acks late) keeps its first result in the backend."""
    with stack_factory() as stack:
        stack.start_worker("default", concurrency=1)
        client = plain_client(stack.settings.broker_url, stack.settings.result_backend)
        try:
            first = client.send_task("stalk.echo", args=["first"], queue="default")
            assert first.get(timeout=20) == {"args": ["first"], "kwargs": {}}
            client.send_task("stalk.echo", args=["second"], queue="default", task_id=first.id)

            # The worker's record takes the second run's result once it finished (after its backend writes).
            def second_run_recorded():
                task = stack.client.get(f"/v1/tasks/{first.id}").json()
                return task.get("result") == {"args": ["second"], "kwargs": {}}

            wait_until(second_run_recorded, timeout=20, what="the second run to finish")
            assert client.AsyncResult(first.id).get(timeout=5) == {"args": ["first"], "kwargs": {}}
            assert client.backend.get_task_meta(first.id, cache=False)["result"] == {"args": ["first"], "kwargs": {}}
        finally:
            # app.close(), not client.pool.force_close_all(): kombu shares that pool with every
            # later client of the same Redis database (tests reuse database numbers). Closed for
            # good it raises "Acquire on closed pool"; closed with close_pool=False it is left
            # empty, and the next send_task on that database waits for a connection forever.
            client.close()
