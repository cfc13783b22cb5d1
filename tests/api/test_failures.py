"""What happens when things go wrong: failing tasks, dying workers, Redis or the database away."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from datetime import datetime

import redis

from tests.fixtures.servers import RedisServer, free_port, wait_until

FAST_RETRIES = {"STALK_RETRY_BACKOFF_SECONDS": "1", "STALK_RETRY_MAX": "2", "STALK_RETRY_JITTER": "false"}


def test_retries_back_off_then_dead_letter_and_the_api_reruns_it(stack_factory):
    with stack_factory() as stack:
        stack.start_worker("default", env=FAST_RETRIES)
        task_id = stack.submit("stalk.fail", kwargs={"message": "model timed out"})
        task = stack.wait_for(task_id, timeout=60)
        assert task["status"] == "FAILURE" and task["dead_lettered"] is True
        assert task["retries"] == 2
        assert task["error"]["type"] == "IntentionalFailure" and task["error"]["message"] == "model timed out"
        assert "IntentionalFailure" in task["error"]["traceback"]
        # Backoff without jitter: 1 s then 2 s between the three runs.
        elapsed = datetime.fromisoformat(task["finished_at"]) - datetime.fromisoformat(task["created_at"])
        assert elapsed.total_seconds() >= 3

        listed = stack.client.get("/v1/tasks", params={"dead_lettered": "true"}).json()["tasks"]
        assert [t["task_id"] for t in listed] == [task_id]

        rerun = stack.client.post(f"/v1/tasks/{task_id}/retry")
        assert rerun.status_code == 202
        assert rerun.json()["retry_of"] == task_id and rerun.json()["task_id"] != task_id
        again = stack.wait_for(rerun.json()["task_id"], timeout=60)
        assert again["retry_of"] == task_id and again["started_at"] is not None


def test_a_task_that_recovers_on_retry_succeeds(stack_factory):
    with stack_factory() as stack:
        stack.start_worker("default", env=FAST_RETRIES)
        task = stack.wait_for(stack.submit("stalk.fail", kwargs={"succeed_after": 1}), timeout=60)
        assert task["status"] == "SUCCESS" and task["retries"] == 1 and task["dead_lettered"] is False
        # started_at is the first attempt's start: the 1 s backoff lies between it and the end.
        created, started, finished = (datetime.fromisoformat(task[k]) for k in ("created_at", "started_at", "finished_at"))
        assert created <= started and (finished - started).total_seconds() >= 0.9, task
        assert task["runtime_seconds"] == (finished - started).total_seconds()
        described = stack.client.get("/openapi.json").json()["components"]["schemas"]["TaskPublic"]["properties"]
        assert "first attempt" in described["started_at"]["description"]
        assert "retries" in described["runtime_seconds"]["description"]
        assert stack.client.post(f"/v1/tasks/{task['task_id']}/retry").status_code == 409


def test_idempotency_key_returns_the_same_task(stack):
    headers = {"Idempotency-Key": "order-1234"}
    first = stack.client.post("/v1/tasks", json={"task": "stalk.echo", "args": [1]}, headers=headers)
    second = stack.client.post("/v1/tasks", json={"task": "stalk.echo", "args": [1]}, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["task_id"] == second.json()["task_id"]
    assert second.headers["idempotent-replayed"] == "true"
    conflict = stack.client.post("/v1/tasks", json={"task": "stalk.echo", "args": [2]}, headers=headers)
    assert conflict.status_code == 409 and "different task" in conflict.json()["detail"]


def test_concurrent_requests_with_one_idempotency_key_make_one_task(stack):
    def post(_):
        return stack.client.post("/v1/tasks", json={"task": "stalk.echo", "args": ["race"]},
                                 headers={"Idempotency-Key": "race-key"})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["task_id"] for r in responses}) == 1
    records = stack.client.get("/v1/tasks", params={"task": "stalk.echo", "limit": 500}).json()["tasks"]
    assert sum(1 for t in records if t["args"] == ["race"]) == 1


def test_worker_killed_mid_task_the_task_is_delivered_again_and_finishes(stack_factory):
    # A short visibility timeout, so Redis hands the unacked task to another worker quickly.
    limits = {"soft_time_limit_seconds": 4, "hard_time_limit_seconds": 5, "visibility_timeout_seconds": 8,
              "unacked_restore_interval_seconds": 1}
    with stack_factory(**limits) as stack:
        first = stack.start_worker("default", concurrency=1, name="doomed")
        task_id = stack.submit("stalk.sleep", args=[2.5])
        stack.wait_for(task_id, statuses={"STARTED"}, timeout=30)
        stack.kill_worker(first, signal.SIGKILL)  # the whole worker, as when a node dies

        stack.start_worker("default", concurrency=1, name="survivor")
        task = stack.wait_for(task_id, timeout=90)
        assert task["status"] == "SUCCESS" and task["result"] == 2.5
        assert task["worker"].startswith("survivor@")


def test_redis_down_means_503_and_nothing_recorded(stack_factory, tmp_path):
    broker = RedisServer(port=free_port(), process=None, workdir=tmp_path)
    broker.start()
    with stack_factory(broker_url=broker.url(0), result_backend=broker.url(1)) as stack:
        assert stack.client.post("/v1/tasks", json={"task": "stalk.echo"}).status_code == 202
        before = stack.client.get("/v1/tasks").json()["tasks"]
        broker.stop()

        response = stack.client.post("/v1/tasks", json={"task": "stalk.echo", "args": ["lost?"]})
        assert response.status_code == 503 and "broker" in response.json()["detail"]
        batch = stack.client.post("/v1/tasks/batch", json={"tasks": [{"task": "stalk.echo"}] * 3})
        assert batch.status_code == 503
        assert stack.client.get("/v1/tasks").json()["tasks"] == before, "no record may be left behind"
        ready = stack.client.get("/readyz")
        assert ready.status_code == 503 and "broker" in ready.json()["detail"]

        broker.start()  # same port: the API recovers by itself
        wait_until(lambda: stack.client.post("/v1/tasks", json={"task": "stalk.echo"}).status_code == 202,
                   timeout=20, what="the API to publish again")
        assert stack.client.get("/readyz").status_code == 200
    broker.stop()


def test_redis_that_stops_answering_means_503_within_the_timeout_and_nothing_left(stack_factory, tmp_path):
    # A Redis that accepts the connection but does not answer (here a real one, paused for writes)
    # must not hold submissions, which are committed on the API's event loop, until it comes back.
    broker = RedisServer(port=free_port(), process=None, workdir=tmp_path)
    broker.start()
    admin = redis.Redis.from_url(broker.url(0))
    try:
        with stack_factory(broker_url=broker.url(0), result_backend=broker.url(1), broker_timeout_seconds=1) as stack:
            assert stack.client.post("/v1/tasks", json={"task": "stalk.echo"}).status_code == 202
            before = stack.client.get("/v1/tasks").json()["tasks"]
            admin.execute_command("CLIENT", "PAUSE", 8000, "WRITE")
            started = time.monotonic()
            response = stack.client.post("/v1/tasks", json={"task": "stalk.echo", "args": ["stuck?"]})
            waited = time.monotonic() - started
            admin.execute_command("CLIENT", "UNPAUSE")

            assert response.status_code == 503 and "broker" in response.json()["detail"]
            assert waited < 6, f"the API waited {waited:.1f} s for a Redis that did not answer"
            time.sleep(0.5)  # anything Redis still held from the abandoned publish would run now
            assert admin.llen("default") == 1, "the abandoned publish reached the queue after all"
            assert stack.client.get("/v1/tasks").json()["tasks"] == before, "no record may be left behind"
            assert stack.client.post("/v1/tasks", json={"task": "stalk.echo"}).status_code == 202
    finally:
        broker.stop()


def test_database_down_means_503_and_nothing_published(stack_factory):
    unreachable = f"postgresql+psycopg://stalk@127.0.0.1:{free_port()}/stalk?connect_timeout=2"
    with stack_factory(database_url=unreachable, migrate_on_start=False) as stack:
        response = stack.client.post("/v1/tasks", json={"task": "stalk.echo"})
        assert response.status_code == 503 and "database" in response.json()["detail"]
        client = redis.Redis.from_url(stack.settings.broker_url)
        assert client.llen("default") == 0, "a task was published without a record"
        assert stack.client.get("/readyz").status_code == 503
        assert stack.client.get("/healthz").status_code == 200


def test_cancel_never_answers_revoked_for_a_task_that_will_finish(stack_factory):
    # The built-in notifications queue runs the threads pool: Celery cannot stop a running task
    # there (the worker logs NotImplementedError: kill_job and the task runs to SUCCESS).
    with stack_factory() as stack:
        stack.start_worker("notifications", pool="threads", concurrency=2)
        task_id = stack.submit("stalk.sleep", args=[2], queue="notifications")
        stack.wait_for(task_id, statuses={"STARTED"}, timeout=30)

        terminate = stack.client.post(f"/v1/tasks/{task_id}/cancel", params={"terminate": "true"})
        assert terminate.status_code == 409 and "cannot stop a running task" in terminate.json()["detail"]
        revoke = stack.client.post(f"/v1/tasks/{task_id}/cancel")
        assert revoke.status_code == 409 and "is running" in revoke.json()["detail"]
        assert stack.wait_for(task_id, timeout=30)["status"] == "SUCCESS"

        types = {t["name"]: t for t in stack.client.get("/v1/task-types").json()["task_types"]}
        assert types["stalk.sleep"]["can_terminate"] is True  # routed to default, a prefork queue
