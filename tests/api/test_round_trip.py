"""The path users rely on, end to end: API → Redis → a real worker → the record → the API."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from stalk_workers.records.models import FAILURE, SUCCESS
from tests.fixtures.servers import wait_until


def test_health_check_reaches_success_with_its_record(stack):
    response = stack.client.post("/v1/tasks", json={"task": "stalk.health_check"})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "PENDING" and body["queue"] == "default"
    assert response.headers["location"] == f"/v1/tasks/{body['task_id']}"

    task = stack.wait_for(body["task_id"])
    assert task["status"] == SUCCESS
    assert task["result"]["status"] == "ok"
    assert task["worker"].startswith("default-0@")
    assert task["source"] == "api"
    assert task["started_at"] and task["finished_at"] and task["runtime_seconds"] >= 0
    assert task["created_at"] <= task["started_at"] <= task["finished_at"]


def test_arguments_and_result_round_trip(stack):
    task_id = stack.submit("stalk.echo", args=[1, "two", {"three": 3}], kwargs={"four": [4]})
    task = stack.wait_for(task_id)
    assert task["result"] == {"args": [1, "two", {"three": 3}], "kwargs": {"four": [4]}}
    assert task["args"] == [1, "two", {"three": 3}] and task["kwargs"] == {"four": [4]}


def test_unknown_task_id_is_404_not_a_fake_pending(stack):
    response = stack.client.get("/v1/tasks/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    assert "no task" in response.json()["detail"]


def test_batch_submits_every_task_and_all_run(stack):
    response = stack.client.post("/v1/tasks/batch", json={"tasks": [
        {"task": "stalk.echo", "args": [i]} for i in range(40)
    ]})
    assert response.status_code == 202, response.text
    ids = [t["task_id"] for t in response.json()["tasks"]]
    assert len(set(ids)) == 40
    results = sorted(stack.wait_for(i)["result"]["args"][0] for i in ids)
    assert results == list(range(40))


def test_priority_and_countdown_are_honoured(stack):
    start = time.time()
    task_id = stack.submit("stalk.echo", countdown=2, priority=3)
    task = stack.wait_for(task_id, timeout=30)
    assert task["status"] == SUCCESS and task["priority"] == 3
    assert datetime.fromisoformat(task["started_at"]).timestamp() >= start + 1.9


def test_plain_celery_client_tasks_are_recorded_on_first_sight(stack):
    celery = stack.client.app.state.gateway.celery
    result = celery.send_task("stalk.echo", args=["plain"])
    task = stack.wait_for(result.id)
    assert task["status"] == SUCCESS and task["source"] == "worker"
    assert task["args"] == ["plain"] and task["queue"] == "default"
    # The worker creates the record when the task starts: it is never created after it started.
    created, started, finished = (datetime.fromisoformat(task[k]) for k in ("created_at", "started_at", "finished_at"))
    assert created <= started <= finished, task


def test_list_filters_and_cursor_pagination(stack):
    ids = [stack.submit("stalk.echo", args=[i], kwargs={"page": True}) for i in range(7)]
    for task_id in ids:
        stack.wait_for(task_id)
    seen, cursor = [], None
    while True:
        params = {"task": "stalk.echo", "limit": 3, "status": SUCCESS}
        if cursor:
            params["cursor"] = cursor
        page = stack.client.get("/v1/tasks", params=params).json()
        seen += [t["task_id"] for t in page["tasks"] if t["kwargs"].get("page")]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert set(ids) <= set(seen) and len(seen) == len(set(seen)), "pages must not repeat or skip tasks"
    assert stack.client.get("/v1/tasks", params={"status": FAILURE, "task": "stalk.echo"}).json()["tasks"] == []


def test_list_by_the_start_of_an_id_takes_it_literally(stack):
    # Plain clients choose their own ids: LIKE's wildcards in them are plain characters here.
    celery = stack.client.app.state.gateway.celery
    run = time.time_ns()
    ids = [f"p{run}%-a", f"p{run}_b", f"p{run}xc"]
    for task_id in ids:
        celery.send_task("stalk.echo", task_id=task_id)
        stack.wait_for(task_id)

    def matching(prefix: str) -> list[str]:
        response = stack.client.get("/v1/tasks", params={"id_prefix": prefix})
        assert response.status_code == 200, response.text
        return sorted(t["task_id"] for t in response.json()["tasks"])

    assert matching(f"p{run}") == sorted(ids)
    assert matching(f"p{run}%") == [ids[0]]
    assert matching(f"p{run}_") == [ids[1]]
    assert matching(ids[2]) == [ids[2]]
    assert matching(f"q{run}") == []
    assert stack.client.get("/v1/tasks", params={"id_prefix": ""}).status_code == 422


def test_cancel_revokes_a_waiting_task_and_it_never_runs(stack):
    task_id = stack.submit("stalk.echo", countdown=3)
    response = stack.client.post(f"/v1/tasks/{task_id}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "REVOKED"
    time.sleep(0)  # the countdown below is what the worker must outlast
    marker = stack.submit("stalk.echo", countdown=4)
    stack.wait_for(marker, timeout=30)  # the worker has passed the revoked task's ETA by now
    task = stack.client.get(f"/v1/tasks/{task_id}").json()
    assert task["status"] == "REVOKED" and task["started_at"] is None and task["result"] is None
    assert stack.client.post(f"/v1/tasks/{task_id}/cancel").status_code == 409


def test_a_revoked_countdown_task_stops_counting_as_scheduled_at_once(stack):
    def default_queue() -> dict:
        return {q["name"]: q for q in stack.client.get("/v1/queues").json()["queues"]}["default"]

    before = default_queue()["scheduled"]
    task_id = stack.submit("stalk.echo", countdown=60)
    wait_until(lambda: default_queue()["scheduled"] == before + 1, timeout=15,
               what="the worker to hold the countdown task")
    assert stack.client.post(f"/v1/tasks/{task_id}/cancel").json()["status"] == "REVOKED"
    # Long before its ETA: the worker lets the message go, so no reader counts it any more.
    wait_until(lambda: default_queue()["scheduled"] == before, timeout=15,
               what="the revoked task to stop counting as scheduled")
    task = stack.client.get(f"/v1/tasks/{task_id}").json()
    assert task["status"] == "REVOKED" and task["started_at"] is None and task["result"] is None
    # The worker still runs what comes next (the held task's prefetch slot was given back).
    assert stack.wait_for(stack.submit("stalk.echo", args=["after"]))["status"] == SUCCESS


def test_workers_and_queues_show_what_runs(stack):
    started = time.monotonic()
    workers = stack.client.get("/v1/workers").json()["workers"]
    assert time.monotonic() - started < 1.5, "answered within about a second"
    assert any(w["queues"] == ["default"] and w["concurrency"] == 2 and w["pool"] == "prefork" for w in workers)

    # Nothing consumes "classification" in this stack: what is submitted there waits.
    for _ in range(3):
        stack.submit("stalk.echo", queue="classification", priority=9)
    stack.submit("stalk.echo", queue="classification")
    queues = {q["name"]: q for q in stack.client.get("/v1/queues").json()["queues"]}
    assert queues["classification"]["waiting"] == 4, "all priority levels are counted"
    assert queues["classification"]["workers"] == 0 and queues["default"]["workers"] == 1
    assert queues["classification"]["oldest_wait_seconds"] is not None


def test_task_types_list_only_what_may_be_submitted(stack):
    names = {t["name"] for t in stack.client.get("/v1/task-types").json()["task_types"]}
    assert {"stalk.health_check", "stalk.echo", "stalk.sleep", "stalk.fail"} <= names
    assert not any(n.startswith("celery.") for n in names)
    response = stack.client.post("/v1/tasks", json={"task": "celery.backend_cleanup"})
    assert response.status_code == 404


def test_metrics_count_requests_by_route_template_and_submissions(stack):
    task_id = stack.submit("stalk.echo", args=["metrics"])
    stack.client.get(f"/v1/tasks/{task_id}")
    text = stack.client.get("/metrics").text
    assert 'stalk_api_requests_total{method="GET",route="/v1/tasks/{task_id}",status="200"}' in text
    assert task_id not in text, "ids must not become label values"
    assert 'stalk_api_tasks_submitted_total{queue="default",task="stalk.echo"}' in text
    assert "stalk_api_request_duration_seconds_bucket" in text


@pytest.mark.parametrize("offset", ["+05:00", "-05:00", "+00:00"], ids=["east", "west", "utc"])
def test_time_filters_honour_the_utc_offset(stack, offset):
    from datetime import datetime, timedelta, timezone

    task_id = stack.submit("stalk.echo", args=["filtered"])
    created = datetime.fromisoformat(stack.client.get(f"/v1/tasks/{task_id}").json()["created_at"])
    hours, minutes = int(offset[1:3]), int(offset[4:])
    zone = timezone((1 if offset[0] == "+" else -1) * timedelta(hours=hours, minutes=minutes))

    def found(**window) -> bool:
        params = {k: (created + delta).astimezone(zone).isoformat() for k, delta in window.items()}
        tasks = stack.client.get("/v1/tasks", params={**params, "limit": 500}).json()["tasks"]
        return task_id in {t["task_id"] for t in tasks}

    assert found(created_after=timedelta(seconds=-1), created_before=timedelta(seconds=1))
    assert not found(created_after=timedelta(seconds=1))
    assert not found(created_before=timedelta(seconds=-1))


def test_with_every_library_shortcut_off_the_path_users_rely_on_is_the_same(stack_factory):
    """STALK_LIBRARY_SHORTCUTS_OFF=all, in the API and the worker: each reach into a library's
    internals (docs/architecture.md, "Library internals relied on") takes the library's own path.
    Users see the same, except that a revoked countdown task counts as scheduled until its ETA."""
    with stack_factory(library_shortcuts_off="all") as stack:
        stack.start_worker("default", concurrency=2)
        response = stack.client.post("/v1/tasks/batch", json={"tasks": [
            {"task": "stalk.echo", "args": [i, "it's"], "kwargs": {"k": None}, "priority": i % 2 * 5}
            for i in range(20)
        ]})
        assert response.status_code == 202, response.text
        for i, task_id in enumerate(t["task_id"] for t in response.json()["tasks"]):
            task = stack.wait_for(task_id)
            assert (task["status"], task["priority"]) == (SUCCESS, i % 2 * 5)
            assert task["result"] == {"args": [i, "it's"], "kwargs": {"k": None}}
            assert task["created_at"] <= task["started_at"] <= task["finished_at"]

        def scheduled() -> int:
            return {q["name"]: q for q in stack.client.get("/v1/queues").json()["queues"]}["default"]["scheduled"]

        countdown = 8
        task_id = stack.submit("stalk.echo", countdown=countdown)
        submitted = time.monotonic()
        wait_until(lambda: scheduled() == 1, timeout=15, what="the worker to hold the countdown task")
        assert stack.client.post(f"/v1/tasks/{task_id}/cancel").json()["status"] == "REVOKED"
        time.sleep(1)
        if time.monotonic() - submitted < countdown - 1:  # Celery's own revoke: held until its ETA
            assert scheduled() == 1
        wait_until(lambda: scheduled() == 0, timeout=countdown + 15, what="the revoked task to be let go at its ETA")
        task = stack.client.get(f"/v1/tasks/{task_id}").json()
        assert task["status"] == "REVOKED" and task["started_at"] is None and task["result"] is None
        assert stack.wait_for(stack.submit("stalk.echo", args=["after"]))["status"] == SUCCESS


def test_the_start_of_an_id_matches_in_any_case(stack):
    # Ids are lowercase UUIDs; a user may paste one in upper case, whole or in part.
    task_id = stack.submit("stalk.echo")
    stack.wait_for(task_id)
    for prefix in (task_id[:23].upper(), task_id.upper(), task_id[:23].swapcase()):
        response = stack.client.get("/v1/tasks", params={"id_prefix": prefix})
        assert response.status_code == 200, response.text
        assert [t["task_id"] for t in response.json()["tasks"]] == [task_id], prefix
