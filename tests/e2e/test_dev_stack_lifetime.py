"""Nothing `make run` starts outlives it, whatever ends it; a port in use is one line before anything starts.

Each case runs the real `make run 2>&1 | tee log` in a session of its own, as a terminal would
(make, stalk dev and tee in one process group), waits until a worker with its prefork pool is
online, ends it the way people and supervisors do, and then looks for every process that had
been started under it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.dev import command_line, descendants, still_running
from tests.fixtures.servers import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
# One queue, one worker with two pool processes: every kind of child (Redis, the API, a worker and
# its grandchildren) with as little start-up work as the 2-core test machine allows.
QUEUES = "default:\n  routes: ['stalk.*']\n  concurrency: 2\n  minReplicas: 1\n  maxReplicas: 1\n"


class MakeRun:
    """`make run 2>&1 | tee log` in its own session: its pid is the process group a terminal signals."""

    def __init__(self, tmp_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "make-run.log"
        self.run_dir = tmp_path / "run"
        queues = tmp_path / "queues.yaml"
        queues.write_text(QUEUES)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STALK_") and k != "MAKEFLAGS"}
        env |= {"STALK_API_PORT": str(self.port), "STALK_RUN_DIR": str(self.run_dir),
                "STALK_QUEUES_FILE": str(queues)}
        self.shell = subprocess.Popen(["bash", "-c", f"make -s -C {REPO} run 2>&1 | tee {self.log}"], env=env,
                                      start_new_session=True, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_until_running(self) -> dict[int, str]:
        wait_until(lambda: self.log.exists() and "stalk is running" in self.log.read_text(), timeout=120,
                   interval=0.2, what=f"make run to start (log: {self.log})")
        wait_until(lambda: httpx.get(f"{self.url}/v1/workers", timeout=5).json()["workers"], timeout=60,
                   what="a worker to come online")
        processes = descendants(self.shell.pid)
        commands = [command_line(pid) for pid in processes]
        assert any("redis-server" in c for c in commands), commands
        assert sum("celery" in c for c in commands) >= 3, f"a worker and its two pool processes: {commands}"
        return processes

    @property
    def stalk_dev(self) -> int:
        return next(pid for pid in descendants(self.shell.pid) if "bin/stalk dev" in command_line(pid))

    def kill_group(self, sig: signal.Signals) -> None:
        os.killpg(self.shell.pid, sig)

    def cleanup(self, processes: dict[int, str]) -> None:
        for pid, _ in processes.items():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.shell.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.shell.wait(10)


def ctrl_c_with_tee(run: MakeRun) -> None:
    run.kill_group(signal.SIGINT)  # tee dies with it: stalk dev's output pipe is closed as it stops


def closed_terminal(run: MakeRun) -> None:
    run.kill_group(signal.SIGHUP)


def supervisor_term_then_kill(run: MakeRun) -> None:
    run.kill_group(signal.SIGTERM)
    time.sleep(2)
    run.kill_group(signal.SIGKILL)


def kill_of_the_group(run: MakeRun) -> None:
    run.kill_group(signal.SIGKILL)


def kill_of_stalk_dev(run: MakeRun) -> None:
    os.kill(run.stalk_dev, signal.SIGKILL)


def term_of_stalk_dev(run: MakeRun) -> None:
    os.kill(run.stalk_dev, signal.SIGTERM)


# Whether stalk dev can still stop its children in order (then Redis is stopped last, by SIGTERM).
CASES = [
    (ctrl_c_with_tee, True),
    (closed_terminal, True),
    (term_of_stalk_dev, True),
    (supervisor_term_then_kill, False),
    (kill_of_the_group, False),
    (kill_of_stalk_dev, False),
]


@pytest.mark.parametrize(("end", "orderly"), CASES, ids=[end.__name__ for end, _ in CASES])
def test_no_process_outlives_make_run(tmp_path, end, orderly):
    run = MakeRun(tmp_path)
    processes = {}
    try:
        processes = run.wait_until_running()
        end(run)
        wait_until(lambda: not still_running(processes), timeout=60, interval=0.2,
                   what=f"every process make run started to end; still running: {still_running(processes)}")
        if orderly:
            redis_log = (run.run_dir / "redis.log").read_text()
            assert "Received SIGTERM scheduling shutdown" in redis_log, redis_log[-2000:]
    finally:
        run.cleanup(processes)


def test_a_port_in_use_is_one_line_before_anything_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STALK_")}
        done = subprocess.run([sys.executable, "-m", "stalk_workers", "dev", "--api-port", str(port),
                               "--run-dir", str(tmp_path / "run")], env=env, capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"error: port {port} on 127.0.0.1 is already in use (another stalk dev, or an "
                                   f"API left running?); stop it, or choose another port with --api-port or "
                                   f"STALK_API_PORT")
    assert "running" not in done.stdout and "redis" not in done.stdout
    assert not (tmp_path / "run").exists(), "nothing was started"
