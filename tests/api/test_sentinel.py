"""The API and a real worker on a Sentinel-managed Redis (``sentinel://`` + STALK_BROKER_MASTER_NAME).

With the library shortcuts on, the API publishes through stalk's transport on kombu's Sentinel
channel (the message templates, one pipeline) and the worker stores results through
``StalkSentinelBackend``; with them all off, kombu's and Celery's own Sentinel classes do. Either way
the messages land on the current primary and a plain Celery client reads the results."""

from __future__ import annotations

import pytest
from celery import Celery

from stalk_workers.factory import create_app
from stalk_workers.result_backend import StalkSentinelBackend
from stalk_workers.settings import Settings
from tests.fixtures.sentinel import sentinel_cluster, start_sentinel_cluster  # noqa: F401 - a fixture, by name
from tests.fixtures.stack import running_stack


def sentinel_settings(cluster) -> dict:
    return {"broker_url": cluster.url(0), "result_backend": cluster.url(1), "broker_master_name": cluster.master_name}


@pytest.mark.parametrize("shortcuts_off", ["", "all"], ids=["stalk-paths", "library-paths"])
def test_a_submitted_batch_runs_on_a_worker_through_sentinel(sentinel_cluster, tmp_path, shortcuts_off):  # noqa: F811
    cluster = sentinel_cluster
    with running_stack(cluster.primary, None, tmp_path, library_shortcuts_off=shortcuts_off,
                       **sentinel_settings(cluster)) as stack:
        celery = stack.client.app.state.gateway.celery
        with celery.producer_or_acquire() as producer:
            # The fast publish path (templates captured off kombu's Sentinel channel), or kombu's own.
            assert hasattr(producer.channel, "capturing") is (not shortcuts_off)
        response = stack.client.post("/v1/tasks/batch", json={"tasks": [
            {"task": "stalk.echo", "args": [i]} for i in range(20)]})
        assert response.status_code == 202, response.text
        ids = [t["task_id"] for t in response.json()["tasks"]]
        ids.append(stack.submit("stalk.echo", args=["one"]))
        # The messages are on the primary Sentinel names, nowhere else.
        primary = cluster.client(cluster.current_primary_port())
        assert primary.llen("default") == 21
        # GET /v1/queues: the queue reader's Lua read through Sentinel.
        queues = {q["name"]: q for q in stack.client.get("/v1/queues").json()["queues"]}
        assert queues["default"]["waiting"] == 21
        stack.start_worker("default", concurrency=2)
        tasks = [stack.wait_for(task_id, timeout=60) for task_id in ids]
        assert [t["status"] for t in tasks] == ["SUCCESS"] * 21
        assert [t["result"]["args"] for t in tasks] == [*([i] for i in range(20)), ["one"]]

        # The worker's result backend, read by a plain Celery client on the same Sentinels.
        plain = Celery("plain", broker=cluster.url(0), backend=cluster.url(1), set_as_current=False)
        plain.conf.broker_transport_options = plain.conf.result_backend_transport_options = {
            "master_name": cluster.master_name}
        try:
            assert plain.AsyncResult(ids[-1]).get(timeout=10) == {"args": ["one"], "kwargs": {}}
        finally:
            plain.close()


def test_sentinels_with_a_password_of_their_own(tmp_path):
    cluster = start_sentinel_cluster(tmp_path / "sentinel", sentinel_password="s3ntinel")
    try:
        with running_stack(cluster.primary, None, tmp_path, broker_sentinel_password="s3ntinel",
                           **sentinel_settings(cluster)) as stack:
            task_id = stack.submit("stalk.echo", args=["guarded"])
            queues = {q["name"]: q for q in stack.client.get("/v1/queues").json()["queues"]}
            assert queues["default"]["waiting"] == 1
            stack.start_worker("default", concurrency=1)
            assert stack.wait_for(task_id, timeout=60)["status"] == "SUCCESS"
        # Without their password the Sentinels do not answer: a 503 that says why, nothing kept.
        (tmp_path / "without").mkdir()
        with running_stack(cluster.primary, None, tmp_path / "without", **sentinel_settings(cluster)) as stack:
            response = stack.client.post("/v1/tasks", json={"task": "stalk.echo"})
            assert response.status_code == 503, response.text
            assert "the broker is unavailable, nothing was submitted" in response.json()["detail"]
            assert stack.client.get("/v1/tasks").json()["tasks"] == []
    finally:
        cluster.stop()


@pytest.mark.parametrize(("shortcuts_off", "backend"), [("", StalkSentinelBackend), ("all", None)],
                         ids=["one-round-trip", "celery-sentinel-backend"])
def test_a_sentinel_result_backend_is_stalks_or_celerys(shortcuts_off, backend):
    urls = "sentinel://127.0.0.1:26379/1;sentinel://127.0.0.1:26380"
    app = create_app(Settings(broker_url=urls, result_backend=urls, broker_master_name="m",
                              library_shortcuts_off=shortcuts_off))
    from celery.backends.redis import SentinelBackend

    assert isinstance(app.backend, SentinelBackend)
    assert (type(app.backend) is StalkSentinelBackend) is (backend is not None)
    assert app.conf.broker_transport_options["master_name"] == "m"
    assert app.conf.result_backend_transport_options["master_name"] == "m"
