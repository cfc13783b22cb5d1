"""Many concurrent connections against the real API process: every request is answered, none
waits for ever, and /healthz answers while the load runs."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from tests.api.live import live_api
from tests.fixtures.servers import fresh_postgres_db, fresh_redis_pair
from tests.fixtures.stack import settings_env
from stalk_api.config import ApiSettings

CONNECTIONS = 120
REQUESTS_PER_CONNECTION = 8
# A request that gets no answer in this long counts as hung (the wedge lasted the pool's 30 s).
CLIENT_TIMEOUT = 25.0


@pytest.fixture(params=["sqlite", "postgres"])
def api_env(request, redis_server, postgres_server, tmp_path):
    broker, backend = fresh_redis_pair(redis_server)
    url = f"sqlite:///{tmp_path / 'records.db'}" if request.param == "sqlite" else fresh_postgres_db(postgres_server)
    return settings_env(ApiSettings(broker_url=broker, result_backend=backend, database_url=url))


async def _load(url: str, task_ids: list[str], *, submits: bool) -> tuple[Counter, list[str], Counter]:
    """CONNECTIONS clients each send REQUESTS_PER_CONNECTION requests; /healthz is polled meanwhile."""
    statuses: Counter = Counter()
    problems: list[str] = []
    health: Counter = Counter()
    limits = httpx.Limits(max_connections=CONNECTIONS + 8, max_keepalive_connections=CONNECTIONS + 8)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=CLIENT_TIMEOUT) as client:
        async def connection(n: int) -> None:
            for i in range(REQUESTS_PER_CONNECTION):
                try:
                    if submits and (n + i) % 3 == 0:
                        response = await client.post("/v1/tasks", json={"task": "stalk.echo", "args": [n, i]})
                    else:
                        response = await client.get(f"/v1/tasks/{task_ids[(n + i) % len(task_ids)]}")
                except httpx.TimeoutException:
                    statuses["timeout"] += 1
                    continue
                statuses[response.status_code] += 1
                if response.status_code == 503 and "retry-after" not in response.headers:
                    problems.append(f"503 without Retry-After: {response.text}")
                elif response.status_code >= 500 and response.status_code != 503:
                    problems.append(f"{response.status_code}: {response.text[:200]}")

        async def probe(done: asyncio.Event) -> None:
            async with httpx.AsyncClient(base_url=url, timeout=CLIENT_TIMEOUT) as own:
                while not done.is_set():
                    try:
                        health[(await own.get("/healthz", timeout=5)).status_code] += 1
                    except httpx.TimeoutException:
                        health["timeout"] += 1
                    await asyncio.sleep(0.05)

        done = asyncio.Event()
        prober = asyncio.create_task(probe(done))
        await asyncio.gather(*(connection(n) for n in range(CONNECTIONS)))
        done.set()
        await prober
    return statuses, problems, health


@pytest.mark.parametrize("submits", [False, True], ids=["reads", "reads-and-submits"])
def test_many_concurrent_connections_are_all_answered_and_healthz_stays_up(api_env, tmp_path, submits):
    with live_api(api_env, tmp_path) as api:
        with httpx.Client(base_url=api.url) as client:
            task_ids = [client.post("/v1/tasks", json={"task": "stalk.echo", "args": [i]}).json()["task_id"]
                        for i in range(20)]
        statuses, problems, health = asyncio.run(_load(api.url, task_ids, submits=submits))
        assert problems == [], f"{statuses}; first problems: {problems[:3]}"
        assert "timeout" not in statuses, f"requests went unanswered: {statuses}\n{api.log_tail()}"
        assert sum(statuses.values()) == CONNECTIONS * REQUESTS_PER_CONNECTION
        assert set(statuses) <= {200, 202, 503}, statuses
        assert statuses[200] > 0, statuses
        assert set(health) == {200}, f"/healthz while the load ran: {health}"
        # Once the load is gone, the API serves normally again.
        assert httpx.get(f"{api.url}/v1/tasks/{task_ids[0]}", timeout=5).status_code == 200
