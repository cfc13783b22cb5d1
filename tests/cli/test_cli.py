"""The ``stalk`` command against a real API server process: output people read, errors in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager

import httpx
import pytest

from tests.fixtures.servers import free_port, wait_until
from tests.fixtures.stack import running_stack


@contextmanager
def serving(redis_server, postgres_server, folder, database: str = "sqlite"):
    """A stack with one worker, plus the API served by ``stalk api`` on a free port."""
    with running_stack(redis_server, postgres_server, folder, database) as stack:
        stack.start_worker("default")
        port = free_port()
        env = {**stack.env, "STALK_API_TOKENS": "cli-token"}
        api = subprocess.Popen([sys.executable, "-m", "stalk_workers", "api", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout=30, what="stalk api")
        stack.env = {**env, "STALK_API_URL": url, "STALK_API_TOKEN": "cli-token", "COLUMNS": "200"}
        yield stack
        api.terminate()
        api.wait(10)


@pytest.fixture(scope="module")
def served(redis_server, postgres_server, tmp_path_factory):
    with serving(redis_server, postgres_server, tmp_path_factory.mktemp("cli")) as stack:
        yield stack


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def served_on(request, redis_server, postgres_server, tmp_path_factory):
    """``served`` on each record database, for what SQL does differently on them (LIKE and case)."""
    with serving(redis_server, postgres_server, tmp_path_factory.mktemp("cli"), request.param) as stack:
        yield stack


def stalk(env: dict, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stalk_workers", *args], env=env, capture_output=True, text=True,
                          input=input, timeout=120)


def test_submit_wait_prints_the_result(served):
    done = stalk(served.env, "submit", "stalk.echo", "--arg", "42", "--kwarg", "name=ada", "--wait")
    assert done.returncode == 0, done.stderr
    assert "SUCCESS" in done.stdout and '"name": "ada"' in done.stdout and "42" in done.stdout


def test_submit_then_status_and_tasks(served):
    submitted = stalk(served.env, "submit", "stalk.health_check")
    assert submitted.returncode == 0, submitted.stderr
    task_id = submitted.stdout.strip()
    served.wait_for(task_id)
    status = stalk(served.env, "status", task_id)
    assert status.returncode == 0 and "SUCCESS" in status.stdout and "stalk.health_check" in status.stdout
    listing = stalk(served.env, "tasks", "--status", "SUCCESS")
    assert task_id in listing.stdout


def test_a_failing_task_with_wait_exits_non_zero(served):
    done = stalk({**served.env}, "submit", "stalk.sleep", "--arg", '"not a number"', "--wait", "--timeout", "60")
    assert done.returncode == 3
    assert "FAILURE" in done.stderr and "ValueError" in done.stderr


def test_output_off_a_terminal_is_never_hard_wrapped(served):
    # No COLUMNS, output to a pipe: what `stalk tasks | grep` or a CI log sees.
    env = {k: v for k, v in served.env.items() if k != "COLUMNS"}
    task_id = stalk(env, "submit", "stalk.health_check").stdout.strip()
    served.wait_for(task_id)
    listing = stalk(env, "tasks", "--limit", "5")
    assert task_id in listing.stdout, listing.stdout
    status = stalk(env, "status", task_id)
    assert status.returncode == 0, status.stderr
    long_name = "x" * 120
    error = stalk(env, "status", long_name)
    assert error.returncode == 1 and len(error.stderr.strip().splitlines()) == 1, error.stderr
    assert long_name in error.stderr


def test_queues_and_workers_tables(served):
    queues = stalk(served.env, "queues")
    assert queues.returncode == 0 and "classification" in queues.stdout and "WAITING" in queues.stdout
    workers = stalk(served.env, "workers")
    assert workers.returncode == 0 and "default-0@test" in workers.stdout


def test_errors_are_one_readable_line(served):
    cases = [
        (("status", "no-such-id"), "404: no task"),
        (("submit", "no.such.task"), "not registered"),
        (("submit", "stalk.echo", "--kwarg", "novalue"), "must look like key=value"),
        (("retry", "no-such-id"), "404"),
    ]
    for args, words in cases:
        done = stalk(served.env, *args)
        assert done.returncode != 0, args
        assert words in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_wrong_token_and_unreachable_api(served):
    wrong = stalk({**served.env, "STALK_API_TOKEN": "bad"}, "tasks")
    assert wrong.returncode == 1 and "401: invalid bearer token" in wrong.stderr
    gone = stalk({**served.env, "STALK_API_URL": f"http://127.0.0.1:{free_port()}"}, "queues")
    assert gone.returncode == 1 and "cannot reach the API" in gone.stderr and "Traceback" not in gone.stderr


def test_purge_asks_first_and_empties_every_priority_level(served):
    for priority in (0, 5, 9):
        served.submit("stalk.echo", queue="classification", priority=priority)
    refused = stalk(served.env, "purge", "classification", input="n\n")
    assert refused.returncode == 1 and "nothing purged" in refused.stderr
    purged = stalk(served.env, "purge", "classification", "--yes")
    assert purged.returncode == 0 and "purged 3 task(s)" in purged.stdout


def test_invalid_settings_are_one_line(served):
    env = {**served.env, "STALK_VISIBILITY_TIMEOUT_SECONDS": "10"}
    done = stalk(env, "db", "upgrade")
    assert done.returncode == 1 and "must be larger than STALK_HARD_TIME_LIMIT_SECONDS" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_api_refuses_an_open_bind_without_tokens(served):
    env = {k: v for k, v in served.env.items() if k != "STALK_API_TOKENS"}
    done = stalk(env, "api", "--host", "0.0.0.0", "--port", str(free_port()))
    assert done.returncode == 1 and "refusing to listen on 0.0.0.0 without tokens" in done.stderr


def test_db_upgrade_on_postgres(postgres_url):
    env = {**os.environ, "STALK_DATABASE_URL": postgres_url}
    done = stalk(env, "db", "upgrade")
    assert done.returncode == 0 and "database at head" in done.stdout


def test_status_retry_and_cancel_take_the_start_of_an_id(served_on):
    served = served_on
    url = served.env["STALK_API_URL"]
    headers = {"Authorization": "Bearer cli-token"}
    # One batch: ids of one millisecond, alike up to their random part (UUIDv7); more than the error names.
    batch = httpx.post(f"{url}/v1/tasks/batch", headers=headers,
                       json={"tasks": [{"task": "stalk.echo", "countdown": 600} for _ in range(7)]})
    assert batch.status_code == 202, batch.text
    ids = [t["task_id"] for t in batch.json()["tasks"]]
    shared = os.path.commonprefix(ids)
    assert len(shared) >= 8, ids

    # In upper case, as a user may paste it: ids are lowercase.
    cancelled = stalk(served.env, "cancel", ids[0][:-6].upper())
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.split() == [ids[0], "REVOKED"]
    status = stalk(served.env, "status", ids[0].upper())
    assert status.returncode == 0 and ids[0] in status.stdout and "REVOKED" in status.stdout, status.stderr
    retried = stalk(served.env, "retry", ids[0][:-6])
    assert retried.returncode == 0, retried.stderr
    assert httpx.get(f"{url}/v1/tasks/{retried.stdout.strip()}", headers=headers).json()["retry_of"] == ids[0]

    for command in ("status", "retry", "cancel"):
        several = stalk(served.env, command, shared)
        assert several.returncode == 1, several.stdout
        assert len(several.stderr.strip().splitlines()) == 1 and "Traceback" not in several.stderr
        assert f"{shared!r} matches 7 tasks: " in several.stderr, several.stderr
        assert sum(i in several.stderr for i in ids) == 5 and "…; give more of the id" in several.stderr
        none = stalk(served.env, command, "zz" + shared)
        assert none.returncode == 1 and len(none.stderr.strip().splitlines()) == 1
        assert "no task with id" in none.stderr and "none whose id starts with it" in none.stderr
    for task_id in ids[1:]:
        httpx.post(f"{url}/v1/tasks/{task_id}/cancel", headers=headers)
