"""`make run` is `stalk dev`: from nothing to a health check that reaches SUCCESS, then a clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.fixtures.servers import free_port, wait_until


def children_of(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_stalk_dev_runs_a_health_check_and_stops_cleanly(tmp_path):
    port = free_port()
    # No STALK_* settings: the embedded defaults, exactly what `make run` gets on a fresh machine.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALK_")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if Path(p).resolve() != Path(sys.executable).parent.resolve())
    output = tmp_path / "dev.out"
    with output.open("wb") as out:
        dev = subprocess.Popen([sys.executable, "-m", "stalk_workers", "dev", "--api-port", str(port),
                                "--run-dir", str(tmp_path / "run")], env={**env, "COLUMNS": "200"},
                               stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_until(lambda: "stalk is running" in output.read_text(), timeout=90, interval=0.2,
                   what=f"stalk dev to start (output: {output})")
        banner = output.read_text()
        assert f"http://127.0.0.1:{port}" in banner and "curl -s -X POST" in banner
        # The test's PATH does not hold the venv (as after `make run`): the banner names a path that works.
        command = banner.split("(or: ", 1)[1].split(" submit", 1)[0]
        assert command == str(Path(sys.executable).parent / "stalk") and Path(command).exists(), banner

        url = f"http://127.0.0.1:{port}"
        submitted = httpx.post(f"{url}/v1/tasks", json={"task": "stalk.health_check"})
        assert submitted.status_code == 202
        task_id = submitted.json()["task_id"]
        done = wait_until(lambda: (t := httpx.get(f"{url}/v1/tasks/{task_id}").json())["status"] == "SUCCESS" and t,
                          timeout=60, what="the health check to succeed")
        assert done["result"]["status"] == "ok"
        queues = {q["name"] for q in httpx.get(f"{url}/v1/queues").json()["queues"]}
        assert {"default", "classification", "summarization", "notifications"} <= queues

        spawned = children_of(dev.pid)
        assert len(spawned) >= 4, "redis, the API, the recoverer and at least one worker"
        recoverer = [p for p in spawned if b"recover" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert recoverer, "stalk dev runs `stalk recover`"
    finally:
        dev.send_signal(signal.SIGINT)
        dev.wait(90)
    assert dev.returncode == 0, output.read_text()
    wait_until(lambda: not any(alive(p) for p in spawned), timeout=10,
               what="Ctrl-C to stop every process stalk dev started")
    assert "stopped." in output.read_text()
