"""The operator process on a Sentinel-managed Redis, end to end: real API server, real Sentinels.

A TaskQueue with ``broker.url: sentinel://...`` and ``broker.sentinel.masterName`` scales its
Deployment from the primary's figures, and after the primary is killed and a replica promoted, from
the new primary's (the operator is not restarted)."""

from __future__ import annotations

import pytest
from celery import Celery

from tests.fixtures.kube import poll
from tests.fixtures.sentinel import sentinel_cluster  # noqa: F401 - a fixture, found by name
from tests.operator.conftest import QUEUE, taskqueue, worker_deployment
from tests.operator.test_operator_cluster import cluster, push  # noqa: F401 - cluster is a fixture

pytestmark = pytest.mark.cluster


def test_the_operator_scales_from_the_primary_sentinel_names_across_a_failover(
        cluster, start_operator, sentinel_cluster):  # noqa: F811
    redis = sentinel_cluster
    tq = taskqueue("work", queue=QUEUE, broker_url=redis.url(0), target="workers", maxReplicas=6, tasksPerReplica=5)
    tq["spec"]["broker"]["sentinel"] = {"masterName": redis.master_name}
    cluster.create(worker_deployment("workers"), tq)
    producer = Celery("producer", broker=redis.url(0), set_as_current=False)
    producer.conf.broker_transport_options = {"master_name": redis.master_name}
    try:
        start_operator()
        push(producer, 12)
        poll(lambda: cluster.replicas("workers") == 3, timeout=30, what="workers scaled to ceil(12 / 5) = 3")
        poll(lambda: cluster.tq_status("work").get("waiting") == 12, timeout=30, what="the status to show 12 waiting")

        redis.wait_synced()
        redis.wait_promoted(redis.kill_primary())
        push(producer, 13)  # on the new primary
        poll(lambda: cluster.tq_status("work").get("waiting") == 25, timeout=60,
             what="the status to show the new primary's 25 waiting tasks")
        poll(lambda: cluster.replicas("workers") == 5, timeout=30, what="workers scaled to ceil(25 / 5) = 5")
        poll(lambda: cluster.condition("work", "MetricsAvailable").get("status") == "True", timeout=30,
             what="MetricsAvailable again")
    finally:
        producer.close()
