"""The external-services scenario on the real node: Redis and PostgreSQL are the suite's own servers.

`charts/stalk/ci/03-external-services-values.yaml` turns the built-in Redis and PostgreSQL off and
takes their URLs from a Secret the user creates. Here those URLs point at the Redis and
PostgreSQL the rest of the suite runs on 127.0.0.1, reached by the pods through socat forwarders
on the node link's machine-side address (the only address of the machine a pod can reach).
The migrations run as a Job; a task submitted through the API runs on a worker pod, and its
record is read back from that PostgreSQL directly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import sqlalchemy as sa

from tests.chart.conftest import CHART, restrict_pod_security
from tests.fixtures.kube import poll
from tests.fixtures.servers import fresh_postgres_db, fresh_redis_pair, free_port, unavailable
from tests.node.conftest import real_node
from tests.node.test_chart_on_real_node import VALUES, _image_values

pytestmark = pytest.mark.cluster

NAMESPACE = "stalk-external"
TOKEN = "external-scenario-token"


@contextmanager
def forward_to_loopback(port: int) -> Iterator[int]:
    """socat on the node link: HOST_IP:<new port> -> 127.0.0.1:port. Yields the new port."""
    if shutil.which("socat") is None:
        unavailable("socat is missing (Debian's socat; make system-deps installs it)")
    outer = free_port()
    proc = subprocess.Popen(["socat", f"TCP-LISTEN:{outer},bind={real_node.HOST_IP},reuseaddr,fork",
                             f"TCP:127.0.0.1:{port}"], stderr=subprocess.PIPE, text=True)
    try:
        import socket

        def listening():
            with socket.create_connection((real_node.HOST_IP, outer), timeout=1):
                return True

        poll(listening, timeout=10, what=f"socat on {real_node.HOST_IP}:{outer}")
        yield outer
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_chart_with_external_redis_and_postgresql_runs_tasks_recorded_in_that_database(
        real_cluster, node_helm, redis_server, postgres_server):
    broker, backend = fresh_redis_pair(redis_server)
    database = fresh_postgres_db(postgres_server)
    with forward_to_loopback(redis_server.port) as redis_port, forward_to_loopback(postgres_server.port) as pg_port:
        # The same servers and databases, by the address the pods reach.
        here, there = f"127.0.0.1:{redis_server.port}", f"{real_node.HOST_IP}:{redis_port}"
        secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "stalk-external"}, "stringData": {
            "broker-url": broker.replace(here, there), "result-backend-url": backend.replace(here, there),
            "database-url": sa.make_url(database).set(host=real_node.HOST_IP, port=pg_port).render_as_string(
                hide_password=False),
            "api-tokens": TOKEN + "\n"}}
        real_cluster.kubectl("create", "namespace", NAMESPACE)
        restrict_pod_security(real_cluster, NAMESPACE)
        real_cluster.kubectl("apply", "-f", "-", namespace=NAMESPACE, input=json.dumps(secret))
        started = time.monotonic()
        node_helm.run("install", "stalk", str(CHART), "--namespace", NAMESPACE, "-f", str(VALUES),
                      "-f", str(CHART / "ci" / "03-external-services-values.yaml"), *_image_values(real_cluster),
                      "--wait", "--wait-for-jobs", "--timeout", "300s", timeout=330)
        print(f"helm install (external services) on the real node: {time.monotonic() - started:.1f}s")
        try:
            pods = json.loads(real_cluster.kubectl("get", "pods", "-o", "json", namespace=NAMESPACE).stdout)["items"]
            components = {p["metadata"]["labels"].get("app.kubernetes.io/component") for p in pods}
            assert "redis" not in components and "postgresql" not in components, components

            with real_cluster.port_forward("svc/stalk-api", 8000, NAMESPACE) as port, httpx.Client(
                    base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"},
                    timeout=30) as api:
                answer = api.post("/v1/tasks", json={"task": "stalk.echo", "args": ["outside"]})
                assert answer.status_code == 202, answer.text
                task_id = answer.json()["task_id"]
                done = poll(lambda: (t := api.get(f"/v1/tasks/{task_id}").json())["status"] == "SUCCESS" and t,
                            timeout=90, what="the task to run on a worker pod")
            assert done["result"] == {"args": ["outside"], "kwargs": {}}
            # The record is in the suite's own PostgreSQL, which the migrations Job created the tables in.
            engine = sa.create_engine(database)
            with engine.connect() as conn:
                tables = set(sa.inspect(conn).get_table_names())
                row = conn.execute(sa.text("SELECT status FROM task_records WHERE task_id = :id"),
                                   {"id": task_id}).one_or_none() if "task_records" in tables else None
            engine.dispose()
            assert row is not None and row[0] == "SUCCESS", tables
        finally:
            node_helm.run("uninstall", "stalk", "--namespace", NAMESPACE, "--wait", "--timeout", "120s")
            real_cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false")
