"""The recoverer against a real stack: FLUSHDB while tasks wait, then one pass republishes every
one (same ids) and they end SUCCESS; two recoverers at once: only one recovers; a normal day: nothing recovered."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import redis
import sqlalchemy as sa

from stalk_api.recovery.recoverer import Recoverer
from stalk_workers.records import store
from stalk_workers.records.models import TaskRecord
from tests.fixtures.servers import free_port, wait_until


def wait_published(stack) -> None:
    """Until every record is marked published (the API marks them up to a flush later)."""
    sessions = stack.client.app.state.gateway.sessions

    def all_published():
        with sessions() as session:
            return not session.scalar(sa.select(sa.func.count()).where(~TaskRecord.published))

    wait_until(all_published, timeout=10, what="the records to be marked published")


def lose_messages(stack) -> None:
    """FLUSHDB on the broker: the records remain, the messages are gone."""
    wait_published(stack)
    redis.Redis.from_url(stack.settings.broker_url).flushdb()


def recoverer(stack, **kw) -> Recoverer:
    gateway = stack.client.app.state.gateway
    return Recoverer(celery=gateway.celery, sessions=gateway.sessions,
                     client=stack.settings.broker_client(),
                     queues=gateway.queue_names(), recover_after=0, inspect_timeout=0.5, **kw)


def test_a_flushdb_while_tasks_wait_loses_none(stack_factory):
    with stack_factory() as stack:
        ids = [stack.submit("stalk.echo", args=[i], priority=i % 10) for i in range(30)]
        lose_messages(stack)
        one = recoverer(stack)
        assert one.run_once() == 30
        assert one.registry.get_sample_value("stalk_recover_tasks_recovered_total", {"queue": "default"}) == 30
        assert one.run_once() == 0  # present again: nothing more
        stack.start_worker("default", concurrency=2)
        for task_id in ids:
            task = stack.wait_for(task_id)
            assert (task["status"], task["recovered"]) == ("SUCCESS", 1), task


def test_lost_tasks_behind_a_long_healthy_backlog_are_recovered(stack_factory):
    # A failover loses the newest writes; more than a page (BATCH) of older tasks still wait.
    from stalk_api.recovery.recoverer import BATCH

    with stack_factory() as stack:
        for start in range(0, BATCH + 100, 200):
            answer = stack.client.post("/v1/tasks/batch", json={"tasks": [
                {"task": "stalk.echo", "args": [i]} for i in range(start, min(start + 200, BATCH + 100))]})
            assert answer.status_code == 202, answer.text
        lost = [stack.submit("stalk.echo", args=[-i]) for i in range(1, 6)]
        wait_published(stack)
        client = redis.Redis.from_url(stack.settings.broker_url)
        for raw in client.lrange("default", 0, -1):  # only the newest five go
            if json.loads(raw)["headers"]["id"] in lost:
                client.lrem("default", 1, raw)
        assert client.llen("default") == BATCH + 100
        assert recoverer(stack).run_once() == 5
        with stack.client.app.state.gateway.sessions() as session:
            assert [store.get(session, task_id).recovered for task_id in lost] == [1] * 5


def test_two_recoverers_at_once_only_one_recovers(stack_factory):
    with stack_factory() as stack:
        ids = [stack.submit("stalk.echo", args=[i]) for i in range(10)]
        lose_messages(stack)
        results = []
        first, second = recoverer(stack), recoverer(stack)
        threads = [threading.Thread(target=lambda r=r: results.append(r.run_once())) for r in (first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results, key=str) == [10, None]
        with stack.client.app.state.gateway.sessions() as session:
            assert all(store.get(session, task_id).recovered == 1 for task_id in ids)


def test_a_task_fetched_by_a_worker_between_the_reads_is_not_republished(stack_factory):
    with stack_factory() as stack:
        task_id = stack.submit("stalk.sleep", kwargs={"seconds": 6})  # still running at the second read
        wait_published(stack)
        fetched = []

        def worker_fetches_it(_gap: float) -> None:
            stack.start_worker("default", concurrency=1)
            wait_until(lambda: stack.client.get(f"/v1/tasks/{task_id}").json()["status"] == "STARTED",
                       timeout=20, what="the worker to start the task")
            fetched.append(True)

        assert recoverer(stack, sleep=worker_fetches_it).run_once() == 0
        assert fetched  # the pass did read twice, with the fetch between
        task = stack.wait_for(task_id)
        assert (task["status"], task["recovered"]) == ("SUCCESS", 0)


def test_stalk_recover_once_recovers_what_a_flushdb_lost(stack_factory):
    with stack_factory() as stack:
        ids = [stack.submit("stalk.echo", args=[i]) for i in range(5)]
        lose_messages(stack)
        env = {**stack.env, "STALK_RECOVER_AFTER_SECONDS": "10"}
        time.sleep(10)  # not a wait for a condition: the records must be 10 s old (the setting's least)
        done = subprocess.run([sys.executable, "-m", "stalk_workers", "recover", "--once"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "recovered 5 task(s)"
        stack.start_worker("default", concurrency=2)
        assert all(stack.wait_for(task_id)["status"] == "SUCCESS" for task_id in ids)


def test_stalk_recover_looping_recovers_and_counts_it_on_its_metrics_port(stack_factory):
    with stack_factory() as stack:
        ids = [stack.submit("stalk.echo", args=[i]) for i in range(5)]
        lose_messages(stack)
        port = free_port()
        env = {**stack.env, "STALK_RECOVER_AFTER_SECONDS": "10", "STALK_RECOVER_METRICS_PORT": str(port),
               "STALK_RECOVER_METRICS_HOST": "127.0.0.1"}
        process = subprocess.Popen([sys.executable, "-m", "stalk_workers", "recover", "--every", "1"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sample = 'stalk_recover_tasks_recovered_total{queue="default"} 5.0'

        def counted() -> bool:
            try:
                return sample in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return False

        try:
            # The records become 10 s old (the setting's least) during the loop's passes.
            wait_until(counted, timeout=45, what="the 5 recoveries counted on /metrics")
        finally:
            process.terminate()
            out, err = process.communicate(timeout=20)
        assert "recovered 5 task(s)" in out and "Traceback" not in err, (out, err)
        stack.start_worker("default", concurrency=2)
        assert all(stack.wait_for(task_id)["status"] == "SUCCESS" for task_id in ids)


def test_stalk_recover_with_no_broker_is_one_line(stack_factory):
    with stack_factory() as stack:
        env = {**stack.env, "STALK_BROKER_URL": "redis://127.0.0.1:1/0"}
        done = subprocess.run([sys.executable, "-m", "stalk_workers", "recover", "--once"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert "cannot reach the broker" in done.stderr and "Traceback" not in done.stderr


def test_stalk_recover_before_the_migrations_ran_is_a_line_not_a_crash(stack_factory, tmp_path):
    # In a cluster the recoverer may start before the API's migrations created the tables.
    with stack_factory() as stack:
        env = {**stack.env, "STALK_DATABASE_URL": f"sqlite:///{tmp_path / 'not-migrated.db'}"}
        done = subprocess.run([sys.executable, "-m", "stalk_workers", "recover", "--once"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert "cannot read the task records" in done.stderr and "Traceback" not in done.stderr, done.stderr
        looping = subprocess.Popen([sys.executable, "-m", "stalk_workers", "recover", "--every", "1"],
                                   env={**env, "STALK_RECOVER_METRICS_PORT": "0"},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(looping.stderr.readline, "")), daemon=True)
        reader.start()
        try:
            # Pass after pass, each a warning line, and the process goes on.
            wait_until(lambda: sum("warning: cannot read the task records" in line for line in lines) >= 2,
                       timeout=45, what="two failed passes, each one warning line")
            assert looping.poll() is None
        finally:
            looping.terminate()
            looping.wait(20)
            reader.join(5)
        assert not any("Traceback" in line for line in lines), lines


def test_a_normal_day_recovers_nothing(stack_factory):
    # STALK_TEST_NORMAL_DAY_TASKS=10000 for the full count (minutes); a few hundred by default.
    count = int(os.environ.get("STALK_TEST_NORMAL_DAY_TASKS", "300"))
    with stack_factory() as stack:
        stack.start_worker("default", concurrency=1)  # slow enough that tasks wait for seconds
        # A 1 s grace, far below the default: only the two reads and the inspection protect.
        watcher = recoverer(stack, read_gap=1.0)
        watcher.recover_after = 1.0
        stop, passes = threading.Event(), []

        def loop():
            while not stop.is_set():
                passes.append(watcher.run_once())

        thread = threading.Thread(target=loop)
        thread.start()
        try:
            ids = []
            for start in range(0, count, 100):
                answer = stack.client.post("/v1/tasks/batch", json={"tasks": [
                    {"task": "stalk.sleep", "kwargs": {"seconds": 0.02}} for _ in range(min(100, count - start))]})
                assert answer.status_code == 202, answer.text
                ids += [t["task_id"] for t in answer.json()["tasks"]]
            for task_id in ids:
                stack.wait_for(task_id, timeout=120)
        finally:
            stop.set()
            thread.join(60)
        assert len(passes) >= 2
        assert watcher.registry.get_sample_value("stalk_recover_tasks_recovered_total", {"queue": "default"}) == 0
