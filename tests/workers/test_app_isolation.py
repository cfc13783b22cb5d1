"""Importing the Celery app module builds nothing, and two apps in one process keep their own
retry policy and record writer (the API builds one, a test or a client another)."""

from __future__ import annotations

import subprocess
import sys
import threading

import redis
from celery import Celery

from stalk_workers.factory import create_app
from stalk_workers.settings import Settings

BROKER = "redis://127.0.0.1:1/0"  # never contacted: building an app opens no connection


def test_importing_the_app_module_builds_no_app():
    # In a fresh interpreter: with an invalid setting, building the app from the environment fails.
    code = ("import stalk_api.main, stalk_workers.app as m; assert 'app' not in vars(m); "
            "from stalk_workers.app import create_app")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={"STALK_VISIBILITY_TIMEOUT_SECONDS": "10", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr


def test_two_apps_keep_their_own_retry_policy(tmp_path):
    patient = create_app(Settings(broker_url=BROKER, retry_max=5, retry_backoff_seconds=7, record_tasks=False))
    hasty = create_app(Settings(broker_url=BROKER, retry_max=1, retry_backoff_seconds=2, record_tasks=False))
    # Built after both apps exist: each reads its own app's settings, not the last app's.
    assert (patient.tasks["stalk.fail"].max_retries, patient.tasks["stalk.fail"].retry_backoff) == (5, 7)
    assert (hasty.tasks["stalk.fail"].max_retries, hasty.tasks["stalk.fail"].retry_backoff) == (1, 2)
    assert patient.tasks["stalk.echo"].max_retries == 15  # IdempotentTask: 3x
    assert hasty.tasks["stalk.sleep"].max_retries == 0  # CriticalTask: never


def test_two_apps_keep_their_own_record_writer(tmp_path):
    recording = create_app(Settings(broker_url=BROKER, database_url=f"sqlite:///{tmp_path}/a.db"))
    silent = create_app(Settings(broker_url=BROKER, record_tasks=False))
    writer = recording.conf.stalk_record_writer
    assert writer is not None and silent.conf.get("stalk_record_writer") is None
    other = create_app(Settings(broker_url=BROKER, database_url=f"sqlite:///{tmp_path}/b.db"))
    assert recording.conf.stalk_record_writer is writer and other.conf.stalk_record_writer is not writer


def test_a_closed_client_leaves_the_shared_pool_to_the_next_one(redis_urls):
    """kombu keeps one connection pool per broker URL for the whole process: a client closed the
    way stalk's tests and API close theirs must not leave the next client on that URL waiting."""
    first = Celery("first", broker=redis_urls[0], set_as_current=False)
    first.send_task("stalk.echo", queue="isolation")
    first.close()
    second = Celery("second", broker=redis_urls[0], set_as_current=False)
    try:
        sent = threading.Thread(target=lambda: second.send_task("stalk.echo", queue="isolation"), daemon=True)
        sent.start()
        sent.join(timeout=10)
        assert not sent.is_alive(), "send_task waited for a connection the first client's close took away"
        assert redis.Redis.from_url(redis_urls[0]).llen("isolation") == 2
    finally:
        second.close()
        redis.Redis.from_url(redis_urls[0]).delete("isolation")
