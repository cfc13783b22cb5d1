"""`stalk dev` restarts its workers when a task module changes (warm shutdown, Redis and the API
stay), so a task submitted after the reload line runs the new code; with --no-reload it does not."""

from __future__ import annotations

import time

import httpx

from tests.fixtures.dev import DevRun, stalk_dev
from tests.fixtures.servers import wait_until

# One worker of one process: the least start-up work on a small machine, and one name to follow.
QUEUES = "default:\n  routes: ['stalk.*', 'mine.*']\n  concurrency: 1\n  minReplicas: 1\n  maxReplicas: 1\n"
TASKS = 'from celery import shared_task\n\n\n@shared_task(name="mine.answer")\ndef answer():\n    return "{}"\n'


def user_folder(tmp_path):
    (tmp_path / "queues.yaml").write_text(QUEUES)
    (tmp_path / "mytasks.py").write_text(TASKS.format("A"))
    return {"STALK_TASK_MODULES": "mytasks", "STALK_QUEUES_FILE": "queues.yaml"}


def answer(run: DevRun) -> str:
    submitted = httpx.post(f"{run.url}/v1/tasks", json={"task": "mine.answer"}, timeout=10)
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["task_id"]
    done = wait_until(lambda: (t := httpx.get(f"{run.url}/v1/tasks/{task_id}").json())["status"] == "SUCCESS" and t,
                      timeout=60, what="mine.answer to succeed")
    return done["result"]


def worker_names(run: DevRun) -> set[str]:
    return {w["name"] for w in httpx.get(f"{run.url}/v1/workers", timeout=10).json()["workers"]}


def test_a_changed_task_module_restarts_the_workers(tmp_path):
    with stalk_dev(tmp_path, env=user_folder(tmp_path)) as run:
        assert "reload: on" in run.output()
        assert answer(run) == "A"
        before = worker_names(run)
        (tmp_path / "mytasks.py").write_text(TASKS.format("B"))
        line = wait_until(lambda: next((l for l in run.output().splitlines() if "changed; restarted" in l), None),
                          timeout=30, what="the reload line")
        assert "mytasks.py changed; restarted 1 worker" in line, line
        # The old worker has stopped (warm shutdown) and a new one is online: it runs the new code.
        wait_until(lambda: (names := worker_names(run)) and not names & before, timeout=60,
                   what=f"a new worker in place of {before}")
        assert answer(run) == "B"


def test_no_reload_keeps_the_workers_code(tmp_path):
    with stalk_dev(tmp_path, "--no-reload", env=user_folder(tmp_path)) as run:
        assert "reload: off" in run.output()
        before = worker_names(run)
        (tmp_path / "mytasks.py").write_text(TASKS.format("B"))
        time.sleep(2)  # a negative check: well past the reloader's 0.4 s debounce, had it been on
        assert answer(run) == "A"
        assert worker_names(run) == before
        assert "mytasks.py changed" not in run.output()
