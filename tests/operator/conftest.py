"""Operator tests. Cluster tests (marked ``cluster``) use the control plane from tests/fixtures/kube.py,
a real Redis from tests/fixtures/servers.py, and the operator itself as a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.foreign_workers import stop_workers  # noqa: F401 - tests import it from here
from tests.fixtures.kube import poll
from tests.fixtures.wait import wait_for_async
from tests.fixtures.servers import free_port

if TYPE_CHECKING:
    from stalk_operator.loop import BrokerSupervisor
    from stalk_operator.writer import StatusWriter

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "k8s" / "crd" / "taskqueues.stalk.dev.yaml"
GROUP, VERSION, PLURAL = "stalk.dev", "v1alpha1", "taskqueues"
QUEUE = "default"  # the queue stalk's built-in stalk.sleep task runs on


def pytest_configure(config):
    # Also registered by tests/cluster/conftest.py; repeated so tests/operator runs on its own.
    config.addinivalue_line("markers", "cluster: needs the Kubernetes test control plane (make cluster-bins)")


@pytest.fixture(scope="session")
def taskqueue_crd(kube_cluster):
    """The CRD from k8s/, applied and established."""
    kube_cluster.kubectl("apply", "-f", str(CRD))
    kube_cluster.kubectl("wait", "--for=condition=Established", "crd/taskqueues.stalk.dev", "--timeout=60s")
    return CRD


@dataclass
class OperatorProcess:
    proc: subprocess.Popen
    metrics_port: int
    log_path: Path
    identity: str

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics().get((name, tuple(sorted(labels.items()))))

    def is_leader(self) -> bool:
        try:
            return self.metric("stalk_operator_is_leader") == 1
        except OSError:
            return False

    def ticks(self) -> int:
        try:
            return int(self.metric("stalk_operator_tick_duration_seconds_count") or 0)
        except OSError:
            return 0

    def http_status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_operator(kube_cluster, taskqueue_crd, kube_namespace, tmp_path, request) -> Iterator[Callable[..., OperatorProcess]]:
    """Start ``python -m stalk_operator`` watching only this test's namespace (its Lease lives there too)."""
    started: list[OperatorProcess] = []

    def start(**env: str) -> OperatorProcess:
        port = free_port()
        identity = f"op-{len(started)}"
        log_path = tmp_path / f"operator-{len(started)}.log"
        environment = {
            **os.environ,
            "KUBECONFIG": str(kube_cluster.kubeconfig),
            "STALK_OPERATOR_NAMESPACE": kube_namespace,
            "STALK_WATCH_NAMESPACES": kube_namespace,
            "STALK_METRICS_HOST": "127.0.0.1",
            "STALK_METRICS_PORT": str(port),
            "STALK_IDENTITY": identity,
            "STALK_STATUS_INTERVAL_SECONDS": "0",
            **env,
        }
        with log_path.open("w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "stalk_operator"], env=environment, cwd=tmp_path,
                                    stdout=log, stderr=subprocess.STDOUT)
        op = OperatorProcess(proc=proc, metrics_port=port, log_path=log_path, identity=identity)
        started.append(op)
        poll(lambda: op.proc.poll() is None and op.http_status("/readyz") == 200, timeout=60,
             what=f"operator {identity} ready (log: {log_path})")
        return op

    yield start
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for op in started:
        op.stop()
        if failed:
            sys.stderr.write(f"\n---- {op.identity} log ----\n{op.log()[-6000:]}\n")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    # Lets fixtures know whether the test failed (to print the operator's log).
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def worker_deployment(name: str, replicas: int = 0) -> dict[str, Any]:
    """A worker Deployment as kwok runs it: pods get scheduled and become Ready, nothing executes."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "containers": [{"name": "worker", "image": "stalk-worker:test"}],
                },
            },
        },
    }


def taskqueue(name: str, *, queue: str, broker_url: str, target: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TaskQueue",
        "metadata": {"name": name},
        "spec": {
            "queue": queue,
            "broker": {"url": broker_url},
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            **spec,
        },
    }


def start_worker(pod: str, redis_urls: tuple[str, str], tmp_path: Path) -> subprocess.Popen:
    """A real stalk Celery worker whose node name carries ``pod``, as it would inside that pod."""
    env = {
        "STALK_BROKER_URL": redis_urls[0], "STALK_RESULT_BACKEND": redis_urls[1], "STALK_RECORD_TASKS": "false",
        "STALK_DATABASE_URL": f"sqlite:///{tmp_path}/records.db", "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    with (tmp_path / f"worker-{pod}.log").open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "stalk_workers.app", "worker", "-Q", QUEUE, "-n", f"celery@{pod}",
             # Threads, not solo: a solo worker cannot answer inspection while it runs a task.
             "-P", "threads", "-c", "1", "--without-mingle", "--without-gossip", "-l", "INFO"],
            env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        )


def tick(supervisor: BrokerSupervisor) -> None:
    async def run():
        await supervisor.tick_once()
        # Status is written off the tick by the writer: let it write what the tick handed over.
        await drain_writer(supervisor.writer)

    asyncio.run(run())


async def drain_writer(writer: StatusWriter) -> None:
    task = asyncio.create_task(writer.run())
    await wait_for_async(lambda: not writer.pending() or task.done(), timeout=30, what="the status writes")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
