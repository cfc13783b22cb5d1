"""Status conditions and the decision of what to write (no cluster needed)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_

from stalk_operator import status as st
from stalk_operator.policy import Decision

NOW = 1_700_000_000.0


def test_condition_transition_time_moves_only_with_its_status():
    first = st.set_condition([], st.READY, True, "Scaling", "ok", now=NOW, generation=1)
    same = st.set_condition(first, st.READY, True, "Scaling", "still ok", now=NOW + 60, generation=2)
    flipped = st.set_condition(same, st.READY, False, "TargetNotFound", "gone", now=NOW + 120, generation=2)
    assert first[0]["lastTransitionTime"] == same[0]["lastTransitionTime"] == st.utc_iso(NOW)
    assert same[0]["message"] == "still ok" and same[0]["observedGeneration"] == 2
    assert flipped[0]["status"] == "False" and flipped[0]["lastTransitionTime"] == st.utc_iso(NOW + 120)


def test_other_conditions_are_kept():
    conditions = st.set_condition([], st.READY, True, "Scaling", "ok", now=NOW, generation=1)
    conditions = st.set_condition(conditions, st.METRICS_AVAILABLE, False, "RedisUnavailable", "down",
                                  now=NOW, generation=1)
    assert [c["type"] for c in conditions] == [st.READY, st.METRICS_AVAILABLE]
    assert st.condition_status(conditions, st.METRICS_AVAILABLE) == "False"
    assert st.condition_status(conditions, st.SCALING_LIMITED) is None


LIMITED = {"type": "ScalingLimited", "status": "True", "reason": "AtMaxReplicas", "message": "30 waiting needs 6"}
BASE = {"waiting": 3, "depth": 3, "inFlight": 1, "replicas": 2, "desiredReplicas": 2, "policyHistory": {"idleSince": None},
        "lastDecision": "Steady: 3 waiting", "conditions": [LIMITED]}


@pytest.mark.parametrize(
    ("desired", "expected"),
    [
        (dict(BASE), None),
        ({**BASE, "waiting": 4, "depth": 4}, {"waiting": 4, "depth": 4}),
        ({**BASE, "policyHistory": {"idleSince": 5.0}}, None),
        ({**BASE, "replicas": 3, "policyHistory": {"idleSince": 5.0}}, {"replicas": 3, "policyHistory": {"idleSince": 5.0}}),
    ],
    ids=["nothing-changed", "only-what-changed", "hidden-alone-never", "hidden-rides-along"],
)
def test_status_patch_writes_only_shown_changes(desired, expected):
    assert st.status_patch(BASE, desired) == expected


def test_render_writes_waiting_and_the_deprecated_depth_with_the_same_value():
    view = st.DesiredStatus(1, (), measured=(7, 2, 1, 30))
    rendered = st.render(view, {}, NOW, None)
    assert {k: rendered[k] for k in ("waiting", "inFlight", "scheduled", "oldestWaitSeconds")} == {
        "waiting": 7, "inFlight": 2, "scheduled": 1, "oldestWaitSeconds": 30}
    assert rendered["depth"] == 7  # until it is dropped, one release after waiting came


def test_removed_keys_are_sent_as_null_and_patch_applies():
    previous = {"policyHistory": {"recommendations": [[1, 2]], "idleSince": 3.0, "old": 1}, "replicas": 1}
    desired = {"policyHistory": {"recommendations": [[1, 2]], "idleSince": None}, "replicas": 2}
    patch = st.status_patch(previous, desired)
    assert patch == {"policyHistory": {"old": None, "idleSince": None}, "replicas": 2}
    assert st.apply_patch(previous, patch) == {"policyHistory": {"recommendations": [[1, 2]]}, "replicas": 2}


LIMITED_VIEW = st.Condition(st.SCALING_LIMITED, True, "AtMaxReplicas", "30 waiting needs 6")
WRITTEN = st.DesiredStatus(1, (LIMITED_VIEW,), measured=(3, 1, 0, 0), last_decision="Steady: 3 waiting",
                  replicas=(2, 2, 2), history=True)
URGENT, ROUTINE, NOT = st.Due.URGENT, st.Due.ROUTINE, st.Due.NOT


@pytest.mark.parametrize(
    ("written", "view", "measurements_due", "expected"),
    [
        (None, WRITTEN, False, URGENT),
        (WRITTEN, WRITTEN, True, NOT),
        (WRITTEN, replace(WRITTEN, measured=(4, 1, 0, 0)), False, NOT),
        (WRITTEN, replace(WRITTEN, measured=(4, 1, 0, 0)), True, ROUTINE),
        (WRITTEN, replace(WRITTEN, replicas=(2, 2, 3)), False, URGENT),
        (WRITTEN, replace(WRITTEN, last_decision="Steady: 4 waiting"), False, NOT),
        (WRITTEN, replace(WRITTEN, last_decision="StabilizingScaleDown: 0 waiting"), False, URGENT),
        (WRITTEN, replace(WRITTEN, conditions=(replace(LIMITED_VIEW, message="40 waiting needs 8"),)), False, NOT),
        (WRITTEN, replace(WRITTEN, conditions=(replace(LIMITED_VIEW, status=False, reason="DesiredWithinRange"),)),
         False, URGENT),
        (WRITTEN, replace(WRITTEN, generation=2), False, URGENT),
        (WRITTEN, replace(WRITTEN, measured=None), False, URGENT),
    ],
    ids=["first-write-at-once", "nothing-changed", "measurement-not-due", "measurement-due", "replicas-at-once",
         "same-reason-new-numbers-waits", "new-reason-at-once", "condition-message-only-waits",
         "condition-status-at-once", "new-generation-at-once", "measurements-gone-at-once"],
)
def test_write_due(written, view, measurements_due, expected):
    assert st.write_due(written, view, measurements_due=measurements_due) is expected


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (Decision(3, "ScaleUpForBacklog", "m"), (False, "DesiredWithinRange")),
        (Decision(10, "AtMaxReplicas", "m", limited=True), (True, "AtMaxReplicas")),
        (Decision(4, "ScaleStepLimited", "m", limited=True), (True, "ScaleStepLimited")),
        (Decision(2, "Paused", "m"), (True, "Paused")),
    ],
    ids=["within-range", "at-max", "step-limited", "paused"],
)
def test_scaling_limited_follows_the_decision(decision, expected):
    assert st.scaling_limited(decision)[:2] == expected


conditions = st_.tuples(
    st_.sampled_from([None, True, False]), st_.sampled_from(["A", "B"]), st_.sampled_from(["m1", "m2"]))
views = st_.builds(
    lambda gen, metrics, ready, measured, decision, replicas, scaled, history: st.DesiredStatus(
        generation=gen,
        conditions=(st.Condition(st.METRICS_AVAILABLE, *metrics),) + ((st.Condition(st.READY, *ready),) if ready else ()),
        measured=measured, last_decision=decision, replicas=replicas, last_scale_time=scaled, history=history),
    st_.integers(1, 2), conditions, st_.none() | conditions,
    st_.none() | st_.tuples(*[st_.integers(0, 2)] * 4),
    st_.none() | st_.sampled_from(["Steady: 1 waiting", "Steady: 2 waiting", "ScaleUp: 2 waiting"]),
    st_.none() | st_.tuples(*[st_.integers(0, 2)] * 3),
    st_.none() | st_.sampled_from(["2026-01-01T00:00:00Z"]), st_.booleans(),
)


@settings(max_examples=500, deadline=None)
@given(written=views, view=views, history=st_.sampled_from([{"idleSince": None}, {"idleSince": 1.0}]))
def test_the_tick_hands_over_every_view_that_changes_the_status(written, view, history):
    # The tick compares cheap views; the writer renders and patches what changed. Once
    # measurements are due, every view whose status differs must be handed over; between
    # views of the same fields, exactly those.
    previous = st.render(written, {}, NOW, {"idleSince": None})
    desired = st.render(view, previous, NOW + 1, history)
    patch = st.status_patch(previous, desired)
    handed_over = bool(st.write_due(written, view, measurements_due=True))
    assert handed_over or patch is None
    if shape(written) == shape(view):
        assert handed_over == (patch is not None)


def shape(view: st.DesiredStatus) -> tuple:
    fields = (view.measured, view.last_decision, view.replicas, view.last_scale_time)
    return tuple(f is None for f in fields) + (view.history, tuple(c.type for c in view.conditions))
