"""`stalk beat` runs the periodic tasks from settings; `stalk worker` names itself after its host."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

from tests.fixtures.servers import wait_until


def beat_runs_twice(stack, tmp_path) -> list[dict]:
    """Run `stalk beat` with a 1 s schedule until two of its tasks succeeded on the stack's worker."""
    stack.start_worker("default")
    schedule = {"heartbeat": {"task": "stalk.echo", "seconds": 1, "args": ["from beat"]}}
    env = {**stack.env, "STALK_BEAT_SCHEDULE": json.dumps(schedule)}
    beat = subprocess.Popen([sys.executable, "-m", "stalk_workers", "beat", "--schedule-file",
                             str(tmp_path / "beat-schedule")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def beat_tasks():
            tasks = stack.client.get("/v1/tasks", params={"task": "stalk.echo", "status": "SUCCESS"}).json()
            return [t for t in tasks["tasks"] if t["args"] == ["from beat"]]

        return wait_until(lambda: len(beat_tasks()) >= 2 and beat_tasks(), timeout=60,
                          what="two scheduled runs to succeed")
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(20)


def test_beat_schedules_tasks_that_workers_run_and_record(stack_factory, tmp_path):
    with stack_factory() as stack:
        ran = beat_runs_twice(stack, tmp_path)
        assert all(t["source"] == "worker" for t in ran), "beat's tasks are recorded on first sight"


def test_stalk_worker_uses_the_queue_table_and_the_host_name(stack_factory):
    with stack_factory() as stack:
        worker = subprocess.Popen([sys.executable, "-m", "stalk_workers", "worker", "--queues", "classification"],
                                  env=stack.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        stack.workers.append(worker)
        expected = f"classification@{socket.gethostname()}"
        workers = wait_until(lambda: stack.client.get("/v1/workers").json()["workers"], timeout=30,
                             what="stalk worker to come online")
        assert [(w["name"], w["queues"], w["concurrency"]) for w in workers] == [(expected, ["classification"], 2)]


def test_stalk_worker_refuses_an_unknown_queue(stack_factory):
    with stack_factory() as stack:
        done = subprocess.run([sys.executable, "-m", "stalk_workers", "worker", "--queues", "nope"], env=stack.env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and "unknown queue(s): nope" in done.stderr
