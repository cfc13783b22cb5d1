"""`stalk dev` on a Redis that speaks only TLS and asks for a client certificate, configured as the
chart does it (plain ``rediss://`` URLs, the files in ``STALK_REDIS_TLS_*``): the API, the autoscaled
workers and beat all reach it, a submitted task and a periodic one both end SUCCESS; a wrong CA is
one line at start, not a hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from tests.fixtures.dev import stalk_dev
from tests.fixtures.servers import wait_until


def tls_env(server, certs, ca=None) -> dict[str, str]:
    server.fresh_pair(db=30)
    return {"STALK_BROKER_URL": f"rediss://127.0.0.1:{server.port}/30",
            "STALK_RESULT_BACKEND": f"rediss://127.0.0.1:{server.port}/31",
            "STALK_REDIS_TLS_CA_FILE": str(ca or certs.ca), "STALK_REDIS_TLS_CERT_FILE": str(certs.client_cert),
            "STALK_REDIS_TLS_KEY_FILE": str(certs.client_key)}


def test_stalk_dev_api_workers_and_beat_over_tls(tmp_path, mtls_redis, tls_certs):
    env = {**tls_env(mtls_redis, tls_certs),
           "STALK_BEAT_SCHEDULE": json.dumps({"tick": {"task": "stalk.health_check", "seconds": 1}})}
    with stalk_dev(tmp_path, env=env) as run:
        assert f"redis: rediss://127.0.0.1:{mtls_redis.port}/30 (from STALK_BROKER_URL)" in run.output()
        with httpx.Client(base_url=run.url, timeout=10) as api:
            submitted = api.post("/v1/tasks", json={"task": "stalk.echo", "args": ["tls"]})
            assert submitted.status_code == 202, submitted.text
            task_id = submitted.json()["task_id"]
            wait_until(lambda: api.get(f"/v1/tasks/{task_id}").json()["status"] == "SUCCESS", timeout=60,
                       what="the submitted task to succeed over TLS")
            # Beat's periodic task, sent over TLS and run by a worker (recorded on first sight).
            wait_until(lambda: api.get("/v1/tasks", params={"task": "stalk.health_check", "status": "SUCCESS"})
                       .json()["tasks"], timeout=60, what="beat's task to run over TLS")


def test_stalk_dev_with_a_wrong_ca_says_so_in_one_line(tmp_path, mtls_redis, tls_certs):
    env = {k: v for k, v in os.environ.items() if not k.startswith("STALK_")}
    env.update(tls_env(mtls_redis, tls_certs, ca=tls_certs.wrong_ca))
    result = subprocess.run([sys.executable, "-m", "stalk_workers", "dev", "--run-dir", str(tmp_path / "run")],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
    assert f"rediss://127.0.0.1:{mtls_redis.port}/30" in errors[0] and "certificate verify failed" in errors[0]
    assert "wrong-ca.crt" not in errors[0]
