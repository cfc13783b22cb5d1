"""The API as users run it: ``stalk api`` (uvicorn) in its own process, on a free loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.fixtures.servers import free_port, wait_until


@dataclass
class LiveApi:
    url: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def live_api(env: dict[str, str], workdir: Path, name: str = "api") -> Iterator[LiveApi]:
    """Start the API with ``env`` (``STALK_*``), wait until it is ready, stop it on exit."""
    port = free_port()
    log = workdir / f"{name}.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "stalk_workers", "api", "--host", "127.0.0.1", "--port", str(port)],
            env={**env, "PYTHONUNBUFFERED": "1"}, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api = LiveApi(url=f"http://127.0.0.1:{port}", process=process, log=log)
    try:
        def ready() -> bool:
            assert process.poll() is None, f"the API exited:\n{api.log_tail()}"
            return httpx.get(f"{api.url}/readyz", timeout=2).status_code == 200

        wait_until(ready, timeout=60, interval=0.1, what=f"the API's /readyz (log: {log})")
        yield api
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
