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

from stalk_api.config import ApiSettings
from tests.fixtures.servers import free_port, fresh_redis_pair, wait_until
from tests.fixtures.stack import settings_env


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


def sqlite_env(redis_server, workdir: Path, **extra: str) -> dict[str, str]:
    """The environment of an API on fresh Redis databases and an SQLite file in ``workdir``."""
    broker, backend = fresh_redis_pair(redis_server)
    env = settings_env(ApiSettings(broker_url=broker, result_backend=backend,
                                   database_url=f"sqlite:///{workdir / 'records.db'}"))
    return {**env, **extra}


@dataclass
class Submissions:
    """What clients were told: the task ids answered 202, and every status seen."""

    accepted: set[str]
    statuses: dict

    def count(self, status) -> int:
        return self.statuses.get(status, 0)


def submit_while(url: str, keep_going, *, connections: int = 16, batch_every: int = 5,
                 statuses: dict | None = None) -> Submissions:
    """Submit from ``connections`` clients (single tasks, and a batch of 10 every ``batch_every``-th
    request) until ``keep_going()`` is false; runs in the calling thread. ``statuses``, if given,
    is counted into as answers arrive (another thread may watch it)."""
    import asyncio
    from collections import Counter

    accepted: set[str] = set()
    statuses = statuses if statuses is not None else Counter()

    async def run() -> None:
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            async def connection(n: int) -> None:
                i = 0
                while keep_going():
                    i += 1
                    try:
                        if i % batch_every == 0:
                            response = await client.post("/v1/tasks/batch", json={"tasks": [
                                {"task": "stalk.echo", "args": [n, i, k]} for k in range(10)]})
                            ids = [t["task_id"] for t in response.json()["tasks"]] if response.status_code == 202 else []
                        else:
                            response = await client.post("/v1/tasks", json={"task": "stalk.echo", "args": [n, i]})
                            ids = [response.json()["task_id"]] if response.status_code == 202 else []
                    except httpx.TimeoutException:
                        statuses["timeout"] += 1
                        continue
                    statuses[response.status_code] += 1
                    accepted.update(ids)
                    if response.status_code == 503:
                        await asyncio.sleep(0.02)  # as a client honouring Retry-After would, briefly

            await asyncio.gather(*(connection(n) for n in range(connections)))

    asyncio.run(run())
    return Submissions(accepted=accepted, statuses=dict(statuses))


def queued_task_ids(client, queue: str = "default") -> list[str]:
    """The task id of every message waiting in a queue's Redis list."""
    import json

    return [json.loads(raw)["headers"]["id"] for raw in client.lrange(queue, 0, -1)]
