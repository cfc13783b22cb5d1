"""The API and real workers on Redis over TLS only (``rediss://``, a private CA, with and without a
client certificate): submissions published, run, their results read; a wrong CA answered at once.

Each runs with stalk's shortcuts on (the API's template publish, one client per channel, the result
backend's one-script writes) and with all of them off (Celery's and kombu's own paths).
"""

from __future__ import annotations

import time

import pytest

from stalk_workers.transport import CapturingChannel

SHORTCUTS = pytest.mark.parametrize("off", ["", "all"], ids=["stalk's paths", "library paths"])
SERVERS = pytest.mark.parametrize("server", ["tls_redis", "mtls_redis"],
                                  ids=["server CA only", "client certificate required"])


@SERVERS
@SHORTCUTS
def test_submitted_run_and_read_over_tls(request, server, off, stack_factory):
    tls = request.getfixturevalue(server)
    broker, backend = tls.fresh_pair(db=2 if not off else 4)
    with stack_factory(broker_url=broker, result_backend=backend, library_shortcuts_off=off) as stack:
        assert stack.settings.broker_url.startswith("rediss://")
        celery = stack.client.app.state.gateway.celery
        with celery.producer_or_acquire() as producer:
            # The fast publish path is taken over TLS too (its channel captures), unless turned off.
            assert isinstance(producer.channel, CapturingChannel) == (not off)
        stack.start_worker("default", concurrency=1)
        ids = [stack.submit("stalk.echo", args=[n]) for n in range(3)]
        batch = stack.client.post("/v1/tasks/batch", json={"tasks": [{"task": "stalk.echo", "args": [9]}] * 2})
        assert batch.status_code == 202, batch.text
        ids += [t["task_id"] for t in batch.json()["tasks"]]
        for task_id in ids:
            assert stack.wait_for(task_id)["status"] == "SUCCESS"
        # The result backend (written by the worker over TLS) read back the way a Celery client does.
        from stalk_workers.factory import create_app

        reader = create_app(stack.settings.model_copy(update={"record_tasks": False}))
        assert reader.AsyncResult(ids[0]).get(timeout=10) == {"args": [0], "kwargs": {}}
        queues = stack.client.get("/v1/queues")
        assert queues.status_code == 200, queues.text
        default = next(q for q in queues.json()["queues"] if q["name"] == "default")
        assert default["waiting"] == 0 and default["workers"] >= 1
        assert stack.client.get("/readyz").status_code == 200


@SERVERS
def test_a_wrong_ca_is_a_503_with_the_reason_at_once(request, server, stack_factory, tls_certs):
    tls = request.getfixturevalue(server)
    broker, backend = tls.url(2, ca=tls_certs.wrong_ca), tls.url(3, ca=tls_certs.wrong_ca)
    with stack_factory(broker_url=broker, result_backend=backend, broker_timeout_seconds=2) as stack:
        started = time.monotonic()
        response = stack.client.post("/v1/tasks", json={"task": "stalk.echo"})
        assert time.monotonic() - started < 10, "a TLS failure is not a hang"
        assert response.status_code == 503, response.text
        detail = response.json()["detail"]
        assert "certificate verify failed" in detail and "\n" not in detail, detail
        ready = stack.client.get("/readyz")
        assert ready.status_code == 503 and "certificate verify failed" in ready.json()["detail"], ready.text
        # Nothing accepted: the record of the refused submission is gone again.
        assert stack.client.get("/v1/tasks").json()["tasks"] == []


def test_without_the_client_certificate_the_server_refuses_with_a_reason(mtls_redis, stack_factory):
    broker, backend = mtls_redis.url(2, client_cert=False), mtls_redis.url(3, client_cert=False)
    with stack_factory(broker_url=broker, result_backend=backend, broker_timeout_seconds=2) as stack:
        response = stack.client.post("/v1/tasks", json={"task": "stalk.echo"})
        assert response.status_code == 503, response.text
        detail = response.json()["detail"]
        assert detail.startswith("the broker is unavailable, nothing was submitted: ") and "\n" not in detail
        # The server's refusal names no cause ("EOF occurred in violation of protocol"): the API's does.
        assert "client certificate? none is given" in detail, detail
        assert "client certificate? none is given" in stack.client.get("/readyz").json()["detail"]
