"""Every way a task ends leaves a final record with the error; arguments that cannot bind are a 400.

Tasks with wrong arguments are sent the way a plain Celery client sends them (``send_task``, no
check on the way in): a retry of such a call fails to publish, Celery rejects the message, and the
worker's main process reports the failure without the task's request (Celery 5.7).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.test_failures import FAST_RETRIES

REPO = Path(__file__).resolve().parents[2]

WRONG_ARGUMENTS = [
    ("stalk.health_check", [1, 2, 3], {}, "too many positional arguments"),
    ("stalk.fail", [], {"bogus": 1}, "unexpected keyword argument 'bogus'"),
]


@pytest.mark.parametrize(("task", "args", "kwargs", "message"), WRONG_ARGUMENTS,
                         ids=["positional-to-a-task-without-parameters", "unknown-keyword"])
def test_wrong_arguments_from_a_plain_client_end_in_failure_with_the_type_error(stack_factory, task, args, kwargs,
                                                                                message):
    with stack_factory() as stack:
        stack.start_worker("default", env=FAST_RETRIES)
        celery = stack.client.app.state.gateway.celery
        task_id = celery.send_task(task, args=args, kwargs=kwargs, queue="default").id
        record = stack.wait_for(task_id, timeout=60)
        assert record["status"] == "FAILURE" and record["dead_lettered"] is True, record
        assert record["error"]["type"] == "TypeError"
        assert record["finished_at"] is not None and record["queue"] == "default"


@pytest.mark.parametrize(("task", "args", "kwargs", "message"), WRONG_ARGUMENTS,
                         ids=["positional-to-a-task-without-parameters", "unknown-keyword"])
def test_the_api_refuses_arguments_that_cannot_bind_naming_the_problem(stack, task, args, kwargs, message):
    response = stack.client.post("/v1/tasks", json={"task": task, "args": args, "kwargs": kwargs})
    assert response.status_code == 400, response.text
    assert message in response.json()["detail"] and task in response.json()["detail"]
    batch = stack.client.post("/v1/tasks/batch", json={"tasks": [{"task": "stalk.echo"},
                                                                  {"task": task, "args": args, "kwargs": kwargs}]})
    assert batch.status_code == 400 and message in batch.json()["detail"]
    assert stack.client.post("/v1/tasks", json={"task": "stalk.fail", "kwargs": {"succeed_after": 0}}).status_code == 202


def test_the_hard_time_limit_ends_in_failure(stack_factory):
    with stack_factory(soft_time_limit_seconds=1, hard_time_limit_seconds=2) as stack:
        stack.start_worker("default", env={"STALK_TASK_MODULES": "tests.api.stubborn_tasks",
                                           "PYTHONPATH": str(REPO)})
        celery = stack.client.app.state.gateway.celery
        task_id = celery.send_task("tests.stubborn_sleep", args=[30], queue="default").id
        record = stack.wait_for(task_id, timeout=60)
        assert record["status"] == "FAILURE" and record["error"]["type"] == "TimeLimitExceeded", record
        assert record["started_at"] is not None and record["finished_at"] is not None
