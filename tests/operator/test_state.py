"""The operator's in-memory view: TaskQueues and the targets' replicas (no cluster needed)."""

from __future__ import annotations

import copy

from stalk_operator.policy import History
from stalk_operator.spec import parse_taskqueue
from stalk_operator.state import Registry, TargetCache
from tests.operator.test_spec import MINIMAL

SAVED = {"policyHistory": History(recommendations=[(100.0, 3)], idle_since=None).to_dict(),
         "lastScaleTime": "2026-01-01T00:00:00Z", "replicas": 3}


def deployment(replicas: int, ready: int, version: str) -> dict:
    return {"metadata": {"namespace": "ns", "name": "w", "resourceVersion": version},
            "spec": {"replicas": replicas}, "status": {"readyReplicas": ready}}


def test_a_new_taskqueue_resumes_history_from_its_status():
    state = Registry().upsert(parse_taskqueue(MINIMAL), SAVED)
    assert state.history.recommendations == [(100.0, 3)]
    assert state.last_scale_time == "2026-01-01T00:00:00Z"


def test_watch_events_keep_runtime_state_but_a_recreated_object_starts_over():
    registry = Registry()
    state = registry.upsert(parse_taskqueue(MINIMAL), None)
    state.history.recommendations.append((5.0, 2))
    changed = copy.deepcopy(MINIMAL)
    changed["spec"]["maxReplicas"] = 9
    assert registry.upsert(parse_taskqueue(changed), {"replicas": 2}) is state
    assert state.config.scaling.max_replicas == 9 and state.history.recommendations == [(5.0, 2)]
    assert state.seen_status == {"replicas": 2}

    recreated = copy.deepcopy(MINIMAL)
    recreated["metadata"]["uid"] = "u-2"
    fresh = registry.upsert(parse_taskqueue(recreated), None)
    assert fresh is not state and fresh.history.recommendations == []


def test_a_new_leader_resumes_from_what_the_watch_last_delivered():
    registry = Registry()
    state = registry.upsert(parse_taskqueue(MINIMAL), None)
    registry.upsert(parse_taskqueue(MINIMAL), SAVED)  # the old leader wrote its status meanwhile
    state.resume_from_seen()
    assert state.history.recommendations == [(100.0, 3)] and state.status["replicas"] == 3


def test_target_cache_ignores_events_older_than_our_own_scale():
    targets = TargetCache()
    targets.observe("Deployment", "ADDED", deployment(1, 1, "10"))
    targets.expect("ns", "Deployment", "w", 4, "12")  # our scale patch returned resourceVersion 12
    targets.observe("Deployment", "MODIFIED", deployment(1, 1, "11"))  # delivered late
    assert targets.get("ns", "Deployment", "w").replicas == 4
    targets.observe("Deployment", "MODIFIED", deployment(4, 2, "13"))
    assert targets.get("ns", "Deployment", "w").ready_replicas == 2
    targets.observe("Deployment", "DELETED", deployment(4, 2, "14"))
    assert targets.get("ns", "Deployment", "w") is None
