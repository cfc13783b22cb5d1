"""What `stalk dev` chooses for a user who sets nothing: a Redis port that stays from run to run,
workers sized for the machine, and retries that show and take seconds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.fixtures.servers import free_port, wait_until

# One queue with one small worker: the least start-up work on the 2-core test machine.
QUEUES = "default:\n  routes: ['stalk.*']\n  concurrency: 1\n  minReplicas: 1\n  maxReplicas: 1\n"


def dev_env(tmp_path: Path, **stalk: str) -> dict[str, str]:
    """The environment of a user who set nothing but ``stalk`` (``STALK_*`` names without the prefix)."""
    queues = tmp_path / "queues.yaml"
    if not queues.exists():
        queues.write_text(QUEUES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALK_")}
    return env | {"STALK_QUEUES_FILE": str(queues), "STALK_RUN_DIR": str(tmp_path / "run"), "COLUMNS": "200"} \
        | {f"STALK_{k.upper()}": v for k, v in stalk.items()}


def start_dev(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``stalk dev`` expected to refuse to start: its exit and output."""
    return subprocess.run([sys.executable, "-m", "stalk_workers", "dev", "--api-port", str(free_port()), *args],
                          env=env, capture_output=True, text=True, timeout=90, cwd=cwd)


@contextmanager
def running_dev(env: dict[str, str], cwd: Path, *args: str) -> Iterator[tuple[str, Path]]:
    """``stalk dev`` until it says it is running: (the API's URL, its output file); Ctrl-C on exit."""
    port = free_port()
    output = cwd / f"dev-{port}.out"
    with output.open("wb") as out:
        dev = subprocess.Popen([sys.executable, "-m", "stalk_workers", "dev", "--api-port", str(port), *args],
                               env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        wait_until(lambda: "stalk is running" in output.read_text() or dev.poll() is not None, timeout=90,
                   interval=0.2, what=f"stalk dev to start (output: {output})")
        assert dev.poll() is None, output.read_text()
        yield f"http://127.0.0.1:{port}", output
    finally:
        dev.send_signal(signal.SIGINT)
        dev.wait(90)
    assert dev.returncode == 0, output.read_text()


def test_redis_keeps_its_port_from_run_to_run(tmp_path):
    port = free_port()
    with running_dev(dev_env(tmp_path), tmp_path, "--redis-port", str(port)) as (_, output):
        assert f"redis: redis://127.0.0.1:{port}/0" in output.read_text()
    # The next run, told nothing, is where the last one was.
    with running_dev(dev_env(tmp_path), tmp_path) as (_, output):
        said = output.read_text()
        assert f"redis: redis://127.0.0.1:{port}/0" in said and "the next run takes this port too" in said


def test_a_redis_port_in_use_is_one_line_before_anything_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        given = start_dev(dev_env(tmp_path, redis_port=str(port)), tmp_path)
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "redis.port").write_text(f"{port}\n")
        remembered = start_dev(dev_env(tmp_path), tmp_path)
    for done, source in ((given, "--redis-port or STALK_REDIS_PORT"), (remembered, f"remembered in {tmp_path}/run")):
        assert done.returncode == 1
        assert done.stderr.startswith(f"error: Redis port {port} ({source}") and "already in use" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "running" not in done.stdout and "redis" not in done.stdout
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["redis.port"], "nothing was started"


def test_workers_are_sized_for_the_cpus_and_say_so(tmp_path):
    # The table sizes a pod for a cluster; with one CPU, stalk dev runs one process per worker and queue.
    (tmp_path / "queues.yaml").write_text(
        "default:\n  routes: ['stalk.*']\n  concurrency: 4\n  minReplicas: 1\n  maxReplicas: 10\n")
    with running_dev(dev_env(tmp_path, dev_cpus="1", retry_backoff_seconds="7"), tmp_path) as (url, output):
        said = output.read_text()
        assert "workers: sized for 1 CPU and " in said and "(--cpus or STALK_DEV_CPUS to change)" in said, said
        assert "default 1..1 workers x 1 prefork; at most 2 worker processes" in said, said
        workers = wait_until(lambda: httpx.get(f"{url}/v1/workers", timeout=5).json()["workers"], timeout=60,
                             what="the worker to come online")
        assert [w["concurrency"] for w in workers] == [1]
        # The user's own backoff wins over stalk dev's short one.
        assert ("retries: StalkTask's up to 3, after 7 s, doubling up to 600 s (with jitter); "
                "from STALK_RETRY_BACKOFF_*") in said


def test_the_failure_demo_shows_each_retry_and_ends_in_seconds(tmp_path):
    with running_dev(dev_env(tmp_path), tmp_path) as (url, output):
        assert "retries: StalkTask's up to 3, after 1 s, doubling up to 10 s (with jitter); stalk dev's short backoff" \
            in output.read_text()
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "stalk_workers", "submit", "stalk.fail", "--wait"],
                              env={**dev_env(tmp_path), "STALK_API_URL": url}, capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
        took = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    assert took < 30, f"{took:.0f}s"
    # Off a terminal there is no live line: each change is a line of its own. (A retry that starts
    # at once, as jitter allows, can fall between two looks.)
    lines = done.stdout.splitlines()
    retries = [int(line.split(", retry ")[1].split()[0]) for line in lines if ", retry " in line]
    assert retries == sorted(retries) and retries[-1] == 3, done.stdout
    # Which retries show as RETRY lines depends on the polls' timing (a loaded machine can miss the
    # last one, which turns FAILURE at once); each one shown names its reason.
    shown = [line for line in lines if "RETRY, retry " in line]
    assert shown and all(line.endswith(" of 3 after IntentionalFailure: failed on purpose") for line in shown), done.stdout
    assert "FAILURE, retry 3 of 3" in done.stdout
    assert "ended FAILURE: IntentionalFailure: failed on purpose" in done.stderr


def test_a_task_module_that_cannot_be_imported_is_one_line_naming_it_and_the_path(tmp_path):
    # As users run it: the console script, whose own folder (not the current one) Python searches first.
    stalk = str(Path(sys.executable).parent / "stalk")
    done = subprocess.run([stalk, "dev", "--api-port", str(free_port())], capture_output=True, text=True, timeout=90,
                          env=dev_env(tmp_path, task_modules="tracker.tasks"), cwd=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: cannot import task module 'tracker.tasks' (STALK_TASK_MODULES): "
                                  f"no module 'tracker' in {tmp_path}, "), done.stderr
    assert not (tmp_path / "run").exists(), "nothing was started"
    # A queue file in the wrong shape: the same, one line.
    (tmp_path / "queues.yaml").write_text("queues: 3\n")
    done = subprocess.run([stalk, "dev", "--api-port", str(free_port())], capture_output=True, text=True, timeout=90,
                          env=dev_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "queue 'queues' in" in done.stderr and "its settings must be a map" in done.stderr
