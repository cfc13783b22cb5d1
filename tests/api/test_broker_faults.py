"""Redis away while the real API process takes submissions: every request is answered (a 503,
soon), /healthz keeps answering, and a submission the client saw fail leaves nothing behind."""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import redis

from stalk_api.config import ApiSettings
from tests.api.live import live_api, queued_task_ids
from tests.fixtures.servers import RedisServer, free_port, wait_until
from tests.fixtures.stack import settings_env

# Far beyond STALK_BROKER_TIMEOUT_SECONDS (1 s here): an answer later than this is a hang.
HANG = 10.0


def test_redis_down_every_submit_is_answered_503_and_healthz_stays_up(tmp_path):
    broker = RedisServer(port=free_port(), process=None, workdir=tmp_path)
    broker.start()
    env = settings_env(ApiSettings(broker_url=broker.url(0), result_backend=broker.url(1),
                                   database_url=f"sqlite:///{tmp_path / 'records.db'}"))
    env["STALK_BROKER_TIMEOUT_SECONDS"] = "1"
    try:
        with live_api(env, tmp_path) as api, httpx.Client(base_url=api.url, timeout=HANG) as client:
            accepted = {client.post("/v1/tasks", json={"task": "stalk.echo"}).json()["task_id"] for _ in range(3)}
            broker.stop()
            answers: Counter = Counter()
            health: Counter = Counter()
            done = threading.Event()

            def probe() -> None:
                with httpx.Client(base_url=api.url, timeout=HANG) as own:
                    while not done.is_set():
                        try:
                            health[own.get("/healthz").status_code] += 1
                        except httpx.TimeoutException:
                            health["timeout"] += 1

            def submit(n: int) -> None:
                with httpx.Client(base_url=api.url, timeout=HANG) as own:
                    for i in range(3):
                        try:
                            body = {"task": "stalk.echo", "args": [n, i]}
                            response = (own.post("/v1/tasks/batch", json={"tasks": [body] * 3}) if i == 2
                                        else own.post("/v1/tasks", json=body))
                            answers[response.status_code] += 1
                            if response.status_code == 202:
                                accepted.update(t["task_id"] for t in response.json().get("tasks", [response.json()]))
                        except httpx.TimeoutException:
                            answers["timeout"] += 1

            prober = threading.Thread(target=probe)
            prober.start()
            submitters = [threading.Thread(target=submit, args=(n,)) for n in range(8)]
            for thread in submitters:
                thread.start()
            for thread in submitters:
                thread.join()
            done.set()
            prober.join()
            assert answers == Counter({503: 24}), answers
            assert set(health) == {200}, f"/healthz while Redis was away: {health}"
            assert client.get("/readyz").status_code == 503

            broker.start()  # same port, empty (no persistence): the API publishes again by itself
            again = wait_until(lambda: client.post("/v1/tasks", json={"task": "stalk.echo"}).json().get("task_id"),
                               timeout=30, what="the API to publish again")
            assert client.get("/readyz").status_code == 200
            # Nothing of the submissions answered 503 reached Redis later (issue 12: 7 of them did).
            assert queued_task_ids(redis.Redis.from_url(broker.url(0))) == [again]
            with httpx.Client(base_url=api.url) as reader:
                listed = reader.get("/v1/tasks", params={"limit": 500}).json()["tasks"]
            assert {t["task_id"] for t in listed} == accepted | {again}, "records of refused submissions"
    finally:
        broker.stop()
