"""Which pods are busy, and the deletion costs that protect them (no cluster needed)."""

from __future__ import annotations

import pytest

from stalk_operator.busy import BUSY_COST, IDLE_COST, UNKNOWN_COST, active_tasks_by_pod, deletion_costs, node_pod_name

PODS = ["w-6d4f-abcde", "w-6d4f-fghij", "w-6d4f-klmno"]


@pytest.mark.parametrize(
    ("node", "pod"),
    [("celery@w-1", "w-1"), ("worker@w-1", "w-1"), ("w-1", "w-1"), ("a@b@c", "b@c")],
    ids=["default-name", "custom-name", "bare-hostname", "only-first-at-splits"],
)
def test_node_pod_name(node, pod):
    assert node_pod_name(node) == pod


def test_active_tasks_are_counted_per_pod():
    active = {
        "celery@w-6d4f-abcde": [{"id": "1"}, {"id": "2"}],
        "other@w-6d4f-klmno.workers.team-a.svc.cluster.local": [{"id": "3"}],
        "celery@w-6d4f-fghij": [],
        "celery@some-other-deployment-pod": [{"id": "4"}],
    }
    assert active_tasks_by_pod(active, PODS) == {"w-6d4f-abcde": 2, "w-6d4f-fghij": 0, "w-6d4f-klmno": 1}


def test_a_pod_without_a_reply_is_unknown_not_idle():
    assert active_tasks_by_pod({"celery@w-6d4f-abcde": []}, PODS) == {
        "w-6d4f-abcde": 0, "w-6d4f-fghij": None, "w-6d4f-klmno": None}


def test_deletion_costs_rank_busy_pods_high_and_change_only_what_differs():
    busy = {"w-6d4f-abcde": 2, "w-6d4f-fghij": 0, "w-6d4f-klmno": 1, "w-6d4f-silent": None}
    current = {"w-6d4f-abcde": None, "w-6d4f-fghij": str(IDLE_COST), "w-6d4f-klmno": str(IDLE_COST),
               "w-6d4f-silent": None}
    assert deletion_costs(busy, current) == {
        "w-6d4f-abcde": str(BUSY_COST + 2),
        "w-6d4f-klmno": str(BUSY_COST + 1),
        "w-6d4f-silent": str(UNKNOWN_COST),
    }
    assert IDLE_COST < UNKNOWN_COST < BUSY_COST


def test_inspector_finds_the_busy_worker_among_pods(redis_urls, tmp_path):
    """A real worker named after a pod runs a long task; inspection maps it onto that pod."""
    from celery import Celery

    from stalk_operator.busy import CeleryInspector
    from tests.fixtures.kube import poll
    from tests.operator.conftest import QUEUE, start_worker, stop_workers

    producer = Celery("producer", broker=redis_urls[0], set_as_current=False)
    workers = [start_worker("pod-busy", redis_urls, tmp_path), start_worker("pod-idle", redis_urls, tmp_path)]
    inspector = CeleryInspector(redis_urls[0], timeout=0.5)
    try:
        # Each worker replies once it is up; then one long task goes to whichever takes it.
        poll(lambda: len(inspector.active()) == 2, timeout=60, what="both workers answering")
        producer.send_task("stalk.sleep", args=[60], queue=QUEUE)
        busy = poll(lambda: (b := active_tasks_by_pod(inspector.active(), ["pod-busy", "pod-idle", "pod-gone"]))
                    and sum(v or 0 for v in b.values()) == 1 and b, timeout=30, what="one pod running the task")
        assert busy["pod-gone"] is None and sorted(busy[p] for p in ("pod-busy", "pod-idle")) == [0, 1]
    finally:
        stop_workers(workers)
        inspector.close()
        producer.close()
