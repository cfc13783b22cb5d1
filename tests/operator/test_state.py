"""The operator's in-memory view: TaskQueues and the targets' replicas (no cluster needed)."""

from __future__ import annotations

import copy

import pytest

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


# policyHistory exactly as the release before RFC 3339 times wrote it (Unix seconds, bare pairs).
OLD_FORMAT = {"recommendations": [[100.0, 3], [130.5, 2]], "idleSince": None, "lastDecisionAt": 131.0}


def test_a_history_in_the_format_before_rfc3339_times_resumes_as_the_same_history():
    state = Registry().upsert(parse_taskqueue(MINIMAL), {"policyHistory": OLD_FORMAT, "replicas": 3})
    assert state.history.recommendations == [(100.0, 3), (130.5, 2)]
    assert state.history.last_decision_at == 131.0 and state.history.idle_since is None
    assert state.history.resumed
    # Written back in the new format, it reads back the same.
    assert History.from_dict(state.history.to_dict()) == state.history


@pytest.mark.parametrize("saved", [
    {"recommendations": [["soon", 3]]},
    {"recommendations": [{"time": "2026-12-02T07:09:25Z"}]},
    {"recommendations": [{"time": "2026-12-02T07:09:25", "replicas": 3}]},  # no zone
    {"recommendations": [{"time": "2026-12-02T07:09:25Z", "replicas": "3"}]},
    {"recommendations": 7},
    {"idleSince": "yesterday"},
    ["not", "a", "mapping"],
], ids=["time-not-a-time", "no-replicas", "time-without-zone", "replicas-a-string", "not-a-list",
        "idle-since-not-a-time", "not-a-mapping"])
def test_an_unreadable_history_is_ignored_and_keeps_the_replicas_it_finds(saved, caplog):
    state = Registry().upsert(parse_taskqueue(MINIMAL), {"policyHistory": saved, "replicas": 4})
    assert state.history == History() and state.history.resumed  # resumed: no scale-down for a window
    assert "status.policyHistory ignored" in caplog.text
    state.seen_status = {"policyHistory": saved}
    state.resume_from_seen()  # a new leader reading it again does not fail either
    assert state.history == History() and state.history.resumed


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
