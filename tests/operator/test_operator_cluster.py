"""The operator end to end: real API server (kwok nodes), real Redis, real Celery clients and workers.

Each test runs ``python -m stalk_operator`` as a subprocess watching only its own namespace.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from kubernetes import client

from tests.fixtures.kube import poll
from tests.fixtures.servers import RedisServer, free_port
from tests.operator.conftest import GROUP, PLURAL, QUEUE, VERSION, start_worker, stop_workers, taskqueue, worker_deployment

pytestmark = pytest.mark.cluster

@pytest.fixture
def celery_client(redis_urls) -> Iterator[Celery]:
    """A plain Celery client, as any team's producer would be (nothing of stalk's)."""
    app = Celery("producer", broker=redis_urls[0], set_as_current=False)
    yield app
    app.close()


class Cluster:
    """What the tests read and write in their namespace."""

    def __init__(self, api_client: client.ApiClient, namespace: str) -> None:
        self.ns = namespace
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def create(self, deployment: dict | None = None, tq: dict | None = None) -> None:
        if deployment:
            self.apps.create_namespaced_deployment(self.ns, deployment)
        if tq:
            self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, tq)

    def deployment(self, name: str) -> client.V1Deployment:
        return self.apps.read_namespaced_deployment(name, self.ns)

    def replicas(self, name: str) -> int:
        return self.deployment(name).spec.replicas

    def ready(self, name: str) -> int:
        return self.deployment(name).status.ready_replicas or 0

    def tq_status(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL, name).get("status") or {}

    def condition(self, name: str, type_: str) -> dict:
        return next((c for c in self.tq_status(name).get("conditions", []) if c["type"] == type_), {})

    def events(self, name: str, reason: str | None = None) -> list[client.CoreV1Event]:
        items = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}").items
        return [e for e in items if reason is None or e.reason == reason]

    def pods(self, app: str) -> list[client.V1Pod]:
        return [p for p in self.core.list_namespaced_pod(self.ns, label_selector=f"app={app}").items
                if p.metadata.deletion_timestamp is None]


@pytest.fixture
def cluster(kube_api, kube_namespace) -> Cluster:
    return Cluster(kube_api, kube_namespace)


def push(app: Celery, count: int, *, priority: int | None = None, seconds: float = 0) -> None:
    for _ in range(count):
        app.send_task("stalk.sleep", args=[seconds], queue=QUEUE, priority=priority)


def test_scales_up_with_the_queue_and_down_to_zero(cluster, start_operator, celery_client, redis_urls):
    """Priority sub-queues count; pods become Ready on kwok nodes; an idle queue goes back to zero."""
    cluster.create(worker_deployment("workers"), taskqueue(
        "work", queue=QUEUE, broker_url=redis_urls[0], target="workers", maxReplicas=4, tasksPerReplica=5,
        scaleDown={"stabilizationSeconds": 2}, idleSecondsBeforeZero=3,
    ))
    op = start_operator()
    push(celery_client, 6)
    push(celery_client, 6, priority=9)  # kombu puts these in the queue's priority list "default\x06\x169"

    poll(lambda: cluster.replicas("workers") == 3, timeout=30, what="workers scaled to ceil(12 / 5) = 3")
    poll(lambda: cluster.ready("workers") == 3, timeout=60, what="3 worker pods Ready on kwok nodes")
    status = poll(lambda: (s := cluster.tq_status("work")).get("readyReplicas") == 3 and s, timeout=30,
                  what="status showing 3 ready replicas")
    assert status["waiting"] == 12 and status["desiredReplicas"] == 3 and status["replicas"] == 3
    assert cluster.condition("work", "Ready")["status"] == "True"
    assert cluster.condition("work", "MetricsAvailable")["status"] == "True"
    scaled_up = poll(lambda: cluster.events("work", "ScaledUp"), timeout=10, what="a ScaledUp event")
    assert "0 -> 3 replicas" in scaled_up[0].message
    assert op.metric("stalk_taskqueue_waiting", namespace=cluster.ns, taskqueue="work", queue=QUEUE) == 12
    # The names waiting had before, kept for one release with the same value.
    assert status["depth"] == 12
    assert op.metric("stalk_taskqueue_depth", namespace=cluster.ns, taskqueue="work", queue=QUEUE) == 12
    assert op.metric("stalk_operator_scale_events_total", direction="up") == 1
    assert op.http_status("/healthz") == 200 and op.http_status("/readyz") == 200

    # The queue drains (nothing runs on kwok pods, so the test empties it as workers would).
    redis.Redis.from_url(redis_urls[0]).flushdb()
    poll(lambda: cluster.replicas("workers") == 0, timeout=30, what="workers scaled down to zero after the windows")
    assert cluster.events("work", "ScaledDown")
    poll(lambda: not cluster.pods("workers"), timeout=30, what="worker pods gone")
    assert cluster.tq_status("work")["waiting"] == 0


def test_target_missing_is_reported(cluster, start_operator, redis_urls):
    cluster.create(tq=taskqueue("orphan", queue=QUEUE, broker_url=redis_urls[0], target="nowhere", maxReplicas=2))
    start_operator()
    cond = poll(lambda: (c := cluster.condition("orphan", "Ready")).get("reason") == "TargetNotFound" and c,
                timeout=30, what="Ready=False TargetNotFound")
    assert cond["status"] == "False" and "nowhere" in cond["message"]


def test_paused_taskqueue_measures_but_does_not_scale(cluster, start_operator, celery_client, redis_urls):
    cluster.create(worker_deployment("workers", replicas=1), taskqueue(
        "work", queue=QUEUE, broker_url=redis_urls[0], target="workers", maxReplicas=4, paused=True))
    op = start_operator()
    push(celery_client, 30)
    cond = poll(lambda: (c := cluster.condition("work", "ScalingLimited")).get("reason") == "Paused" and c,
                timeout=30, what="ScalingLimited=True, reason Paused")
    assert cond["status"] == "True" and cluster.tq_status("work")["waiting"] == 30
    ticks = op.ticks()
    poll(lambda: op.ticks() >= ticks + 3, timeout=30, what="three more ticks")
    assert cluster.replicas("workers") == 1 and not cluster.events("work", "ScaledUp")


def test_statefulset_with_the_broker_url_in_a_secret(cluster, start_operator, celery_client, redis_urls):
    cluster.core.create_namespaced_secret(cluster.ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name="redis"), string_data={"url": redis_urls[0]}))
    sts = worker_deployment("workers")
    sts["kind"] = "StatefulSet"
    sts["spec"].update(serviceName="workers", podManagementPolicy="Parallel")
    cluster.apps.create_namespaced_stateful_set(cluster.ns, sts)
    tq = taskqueue("work", queue=QUEUE, broker_url="", target="workers", maxReplicas=4, tasksPerReplica=5)
    tq["spec"]["broker"] = {"secretKeyRef": {"name": "redis", "key": "url"}}
    tq["spec"]["scaleTargetRef"]["kind"] = "StatefulSet"
    cluster.create(tq=tq)
    start_operator()
    push(celery_client, 8)
    poll(lambda: cluster.apps.read_namespaced_stateful_set("workers", cluster.ns).spec.replicas == 2, timeout=30,
         what="the StatefulSet scaled to 2 through its scale subresource")
    poll(lambda: cluster.tq_status("work").get("readyReplicas") == 2, timeout=60, what="2 ready replicas in status")


def test_redis_down_keeps_replicas_and_recovers(cluster, start_operator, tmp_path):
    """A broker that cannot be read never scales anything; the operator recovers on its own."""
    server = RedisServer(port=free_port(), process=None, workdir=tmp_path)
    server.start()
    try:
        producer = Celery("producer", broker=server.url(0), set_as_current=False)
        cluster.create(worker_deployment("workers"), taskqueue(
            "work", queue=QUEUE, broker_url=server.url(0), target="workers", maxReplicas=4, tasksPerReplica=5,
            scaleDown={"stabilizationSeconds": 3}, idleSecondsBeforeZero=2,
        ))
        op = start_operator()
        push(producer, 10)
        producer.close()
        poll(lambda: cluster.replicas("workers") == 2, timeout=30, what="workers scaled to 2")

        server.stop()
        cond = poll(lambda: (c := cluster.condition("work", "MetricsAvailable")).get("status") == "False" and c,
                    timeout=30, what="MetricsAvailable=False")
        assert cond["reason"] == "RedisUnavailable"
        assert poll(lambda: cluster.events("work", "MetricsUnavailable"), timeout=10, what="a Warning event")[0].type == "Warning"
        errors = op.metric("stalk_operator_broker_errors_total", broker=f"redis://127.0.0.1:{server.port}/0")
        # More failed ticks, far past both windows: replicas stay where they were.
        poll(lambda: (op.metric("stalk_operator_broker_errors_total", broker=f"redis://127.0.0.1:{server.port}/0")
                      or 0) >= (errors or 0) + 3, timeout=30, what="three more failed reads")
        assert cluster.replicas("workers") == 2

        server.start()  # same port, empty: the operator must find it again by itself
        poll(lambda: cluster.condition("work", "MetricsAvailable").get("status") == "True", timeout=30,
             what="MetricsAvailable=True again")
        poll(lambda: cluster.replicas("workers") == 0, timeout=30, what="the now empty queue scaled to zero")
    finally:
        server.stop()


def test_restart_mid_run_loses_nothing_and_does_not_flap(cluster, start_operator, celery_client, redis_urls):
    cluster.create(worker_deployment("workers"), taskqueue(
        "work", queue=QUEUE, broker_url=redis_urls[0], target="workers", maxReplicas=6, tasksPerReplica=5,
        scaleDown={"stabilizationSeconds": 60},
    ))
    # One operator at a time here: without election a restarted one acts at once (no lease to expire).
    first = start_operator(STALK_LEADER_ELECTION="false")
    push(celery_client, 10)
    poll(lambda: cluster.replicas("workers") == 2, timeout=30, what="workers scaled to 2")
    poll(lambda: cluster.tq_status("work").get("policyHistory"), timeout=10, what="history kept in status")
    first.stop(signal.SIGKILL)

    # While no operator runs, the queue grows and then part of it drains.
    push(celery_client, 15)
    second = start_operator(STALK_LEADER_ELECTION="false")
    poll(lambda: cluster.replicas("workers") == 5, timeout=30, what="the new operator scaled to ceil(25 / 5) = 5")

    # Fewer tasks now, but the 60 s scale-down window survives the restart: no scale-down.
    redis.Redis.from_url(redis_urls[0]).flushdb()
    push(celery_client, 5)
    second.stop(signal.SIGKILL)
    third = start_operator(STALK_LEADER_ELECTION="false")
    ticks = third.ticks()
    poll(lambda: third.ticks() >= ticks + 5, timeout=30, what="five ticks of the restarted operator")
    assert cluster.replicas("workers") == 5
    assert not cluster.events("work", "ScaledDown")
    assert "StabilizingScaleDown" in cluster.tq_status("work")["lastDecision"]


def test_leader_election_one_acts_and_a_standby_takes_over(cluster, start_operator, celery_client, redis_urls):
    cluster.create(worker_deployment("workers"), taskqueue(
        "work", queue=QUEUE, broker_url=redis_urls[0], target="workers", maxReplicas=6, tasksPerReplica=5,
    ))
    ops = [start_operator(), start_operator()]
    leader = poll(lambda: next((o for o in ops if o.is_leader()), None), timeout=30, what="one leader")
    standby = next(o for o in ops if o is not leader)
    assert not standby.is_leader()

    push(celery_client, 10)
    poll(lambda: cluster.replicas("workers") == 2, timeout=30, what="workers scaled to 2")
    poll(lambda: cluster.events("work", "ScaledUp"), timeout=10, what="a ScaledUp event")
    assert standby.ticks() == 0 and len(cluster.events("work", "ScaledUp")) == 1

    leader.stop(signal.SIGKILL)  # no release: the standby must notice the lease expire
    poll(standby.is_leader, timeout=15, interval=0.2, what="the standby leading within 15 s")
    push(celery_client, 10)
    poll(lambda: cluster.replicas("workers") == 4, timeout=30, what="the new leader scaling to 4")

    # A leader stopped the ordinary way gives the lease up: the next standby need not wait it out.
    third = start_operator()
    assert not third.is_leader()
    standby.stop(signal.SIGTERM)
    poll(third.is_leader, timeout=5, interval=0.2, what="the third operator leading at once after a release")


def test_scale_down_removes_idle_pods_and_keeps_busy_ones(cluster, start_operator, celery_client, redis_urls, tmp_path):
    """Real Celery workers named after the kwok pods; the ones running long tasks must survive."""
    cluster.create(worker_deployment("workers"), taskqueue(
        "work", queue=QUEUE, broker_url=redis_urls[0], target="workers", maxReplicas=3, tasksPerReplica=1,
        scaleDown={"stabilizationSeconds": 3},
    ))
    start_operator()
    push(celery_client, 3, seconds=120)
    poll(lambda: cluster.ready("workers") == 3, timeout=60, what="3 worker pods Ready")
    pods = sorted(p.metadata.name for p in cluster.pods("workers"))

    workers = []
    try:
        # Two busy workers: each reserves one 120 s task (prefetch 1, one process). The third
        # task is removed below, so the third worker is idle.
        for pod in pods[:2]:
            workers.append(start_worker(pod, redis_urls, tmp_path))
            poll(lambda: redis.Redis.from_url(redis_urls[0]).llen(QUEUE) <= 3 - len(workers), timeout=60,
                 what=f"worker {pod} taking a task")
        redis.Redis.from_url(redis_urls[0]).delete(QUEUE)
        workers.append(start_worker(pods[2], redis_urls, tmp_path))

        poll(lambda: cluster.tq_status("work").get("inFlight") == 2, timeout=30,
             what="the two reserved tasks counted in flight (kombu's unacked hash)")
        poll(lambda: cluster.replicas("workers") == 2, timeout=60, what="scaled down to the 2 busy workers")
        poll(lambda: len(cluster.pods("workers")) == 2, timeout=30, what="one pod removed")
        remaining = sorted(p.metadata.name for p in cluster.pods("workers"))
        assert remaining == pods[:2], f"busy pods {pods[:2]} must survive, left {remaining}"
        costs = {p.metadata.name: p.metadata.annotations.get("controller.kubernetes.io/pod-deletion-cost")
                 for p in cluster.pods("workers")}
        assert all(int(c) > 0 for c in costs.values()), costs
        assert all(w.poll() is None for w in workers[:2]), "a busy worker was stopped"
    finally:
        stop_workers(workers)



def test_busy_workers_hold_a_scale_down_even_when_their_load_asks_for_fewer(
        cluster, start_operator, celery_client, redis_urls, tmp_path):
    """Two long tasks at 10 tasks per replica ask for one replica; both busy pods must stay."""
    cluster.create(worker_deployment("busy", replicas=3), taskqueue(
        "busy", queue=QUEUE, broker_url=redis_urls[0], target="busy", maxReplicas=3, tasksPerReplica=10,
        # No early release of idle replicas (idleReplicaSeconds, 10 s by default): the window's
        # decision is the one under test, and busy workers must hold it.
        scaleDown={"stabilizationSeconds": 15, "idleReplicaSeconds": 3600},
    ))
    poll(lambda: cluster.ready("busy") == 3, timeout=60, what="3 worker pods Ready")
    pods = sorted(p.metadata.name for p in cluster.pods("busy"))
    workers = []
    try:
        push(celery_client, 2, seconds=120)
        for pod in pods[:2]:
            workers.append(start_worker(pod, redis_urls, tmp_path))
            poll(lambda: redis.Redis.from_url(redis_urls[0]).llen(QUEUE) <= 2 - len(workers), timeout=60,
                 what=f"worker {pod} taking a task")
        workers.append(start_worker(pods[2], redis_urls, tmp_path))
        start_operator()

        poll(lambda: cluster.replicas("busy") == 2, timeout=90, what="scaled down to the 2 busy workers")
        poll(lambda: len(cluster.pods("busy")) == 2, timeout=30, what="the idle pod removed")
        assert sorted(p.metadata.name for p in cluster.pods("busy")) == pods[:2]
        assert "KeepingBusyWorkers" in cluster.tq_status("busy")["lastDecision"]
        assert all(w.poll() is None for w in workers[:2]), "a busy worker was stopped"
    finally:
        stop_workers(workers)
