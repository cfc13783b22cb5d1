"""Tasks nobody consumes are seen: GET /v1/queues and `stalk queues` name the list they wait in.

The sender is a plain Celery client that knows nothing of stalk; its ``send_task`` without a queue
lands in Celery's default list ``celery``, which no queue of stalk's names and no worker consumes.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis
from celery import Celery

from tests.api.live import live_api
from tests.fixtures import foreign_app
from tests.fixtures.foreign_workers import start_foreign_worker, stop_workers
from tests.fixtures.servers import wait_until
from tests.fixtures.stack import settings_env


def plain_client(broker_url: str, key_prefix: str = "") -> Celery:
    app = Celery("team", broker=broker_url, set_as_current=False)
    if key_prefix:
        app.conf.broker_transport_options = {"global_keyprefix": key_prefix}
    return app


@pytest.mark.parametrize("key_prefix", ["", "team:"], ids=["no key prefix", "a global key prefix"])
def test_a_send_task_without_a_queue_is_reported_by_its_exact_list(stack_factory, key_prefix):
    with stack_factory(broker_key_prefix=key_prefix, unconsumed_scan_seconds=0) as stack:
        assert stack.client.get("/v1/queues").json()["unconsumed"] == []
        team = plain_client(stack.settings.broker_url, key_prefix)
        try:
            for _ in range(3):
                team.send_task("team.forgotten")
            team.send_task("team.routed", queue="default")  # a queue of ours: shown in its row, not here
            # High priority on a queue nobody knows: its own priority list (kombu's suffix), named exactly.
            team.send_task("team.urgent", queue="elsewhere", priority=9)
        finally:
            team.close()
        # Another program's list on the same Redis is not a Celery message: not reported.
        redis.Redis.from_url(stack.settings.broker_url).lpush(f"{key_prefix}jobs", "not a kombu message")

        answer = stack.client.get("/v1/queues")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["unconsumed"] == [
            {"list": f"{key_prefix}celery", "queue": "celery", "messages": 3},
            {"list": f"{key_prefix}elsewhere\x06\x169", "queue": "elsewhere", "messages": 1},
        ]
        assert next(q for q in body["queues"] if q["name"] == "default")["waiting"] == 1


def test_a_list_a_worker_consumes_is_not_reported(stack_factory, tmp_path):
    # `celery` is claimed as soon as a worker answers that it consumes it, even while messages wait
    # there: here a worker of the team's own app (tests/fixtures/foreign_app.py), which knows no stalk.
    with stack_factory(broker_key_prefix=foreign_app.KEY_PREFIX, unconsumed_scan_seconds=0) as stack:
        url = stack.settings.broker_url
        worker = start_foreign_worker(url, "celery", "default-list", tmp_path / "worker.log", concurrency=1)
        team = foreign_app.make_app(url)
        try:
            for _ in range(4):  # one runs, one may be prefetched, the rest wait in the list
                team.send_task("tracker.issues.enrich_issue", args=[10], queue="celery")
            waiting = redis.Redis.from_url(url)
            wait_until(lambda: 0 < waiting.llen(f"{foreign_app.KEY_PREFIX}celery") < 4, timeout=20,
                       what="the worker to take from 'celery'")
            assert stack.client.get("/v1/queues").json()["unconsumed"] == []
        finally:
            team.close()
            stop_workers([worker])


def test_stalk_queues_prints_one_warning_line_per_unconsumed_list(redis_server, postgres_server, stack_factory,
                                                                  tmp_path):
    with stack_factory() as stack:
        team = plain_client(stack.settings.broker_url)
        try:
            for _ in range(2):
                team.send_task("team.forgotten")
        finally:
            team.close()
        env = settings_env(stack.settings)
        with live_api(env, tmp_path) as api:
            done = subprocess.run([sys.executable, "-m", "stalk_workers", "queues", "--api-url", api.url],
                                  env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "WAITING" in done.stdout and "warning" not in done.stdout
    assert done.stderr.splitlines() == [
        "warning: 2 messages in Redis list 'celery' that no queue names and no worker consumes; start a worker "
        "on it (celery -A <app> worker -Q celery) or send those tasks with a queue"]
