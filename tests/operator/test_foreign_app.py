"""The operator for a team that keeps its own Celery app (tests/fixtures/foreign_app.py: ten priority
steps, a topic exchange routing by task name, a key prefix, its own worker processes), with the broker
URL in the team's own Secret: exact figures in the TaskQueue's status, lists nobody consumes
reported by name, and nothing in the team's worker logs."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.fixtures import foreign_app
from tests.fixtures.foreign_workers import errors_in, start_foreign_worker, stop_workers
from tests.fixtures.kube import poll
from tests.operator.conftest import GROUP, PLURAL, VERSION, taskqueue, worker_deployment

pytestmark = pytest.mark.cluster


def test_exact_figures_for_a_foreign_app_and_its_unconsumed_list(kube_api, kube_namespace, start_operator,
                                                                 redis_urls, tmp_path):
    ns = kube_namespace
    core, apps, custom = client.CoreV1Api(kube_api), client.AppsV1Api(kube_api), client.CustomObjectsApi(kube_api)
    core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="tracker-redis"),
                                                      string_data={"url": redis_urls[0]}))
    apps.create_namespaced_deployment(ns, worker_deployment("tracker-issues", replicas=1))
    tq = taskqueue("issues", queue="issues", broker_url="", target="tracker-issues", maxReplicas=10,
                   tasksPerReplica=5, minReplicas=1)
    tq["spec"]["broker"] = {"secretKeyRef": {"name": "tracker-redis", "key": "url"},
                            "keyPrefix": foreign_app.KEY_PREFIX}
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, tq)

    tracker = foreign_app.make_app(redis_urls[0])
    logs = [tmp_path / "issues.log", tmp_path / "reports.log"]
    workers = []
    try:
        workers.append(start_foreign_worker(redis_urls[0], "issues", "issues", logs[0], concurrency=2))
        # A worker for "reports", which has no TaskQueue: its list is consumed, so never reported.
        workers.append(start_foreign_worker(redis_urls[0], "reports", "reports", logs[1], concurrency=1))
        enrich = tracker.tasks["tracker.issues.enrich_issue"]
        for _ in range(2):
            enrich.apply_async(args=[120], priority=0)
        poll(lambda: sum(map(len, (tracker.control.inspect(timeout=1).active() or {}).values())) == 2,
             timeout=30, what="two tasks running (Celery's inspect().active())")
        for i in range(23):
            enrich.apply_async(args=[0], priority=i % 10)  # behind the running ones: they wait
        for _ in range(4):
            tracker.send_task("team.forgotten")  # no route, no queue: Celery's default list "celery"
        op = start_operator()

        status = poll(lambda: (s := custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "issues")
                               .get("status") or {}).get("waiting") == 23 and s.get("inFlight") == 2 and s,
                      timeout=60, what="23 waiting over ten priority lists and 2 in flight by the binding")
        assert status["desiredReplicas"] == 5  # ceil((23 + 2) / 5)
        metric = poll(lambda: op.metric("stalk_operator_unconsumed_messages", broker=redis_urls[0],
                                        list="tracker:celery"), timeout=30, what="the unconsumed list as a metric")
        assert metric == 4
        assert "4 messages in list 'tracker:celery'" in op.log()
        assert "tracker:reports" not in op.log()
    finally:
        stop_workers(workers)
        tracker.close()
    for log in logs:
        assert errors_in(log) == [], log.read_text()[-3000:]
