"""Which pods are busy, and the deletion costs that protect them (no cluster needed)."""

from __future__ import annotations

import pytest

from stalk_operator.busy import BUSY_COST, IDLE_COST, active_tasks_by_pod, deletion_costs, node_pod_name

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


def test_no_replies_means_every_pod_idle():
    assert active_tasks_by_pod(None, PODS) == dict.fromkeys(PODS, 0)


def test_deletion_costs_rank_busy_pods_high_and_change_only_what_differs():
    busy = {"w-6d4f-abcde": 2, "w-6d4f-fghij": 0, "w-6d4f-klmno": 1}
    current = {"w-6d4f-abcde": None, "w-6d4f-fghij": str(IDLE_COST), "w-6d4f-klmno": str(IDLE_COST)}
    assert deletion_costs(busy, current) == {
        "w-6d4f-abcde": str(BUSY_COST + 2),
        "w-6d4f-klmno": str(BUSY_COST + 1),
    }
