"""The scaling policy, rule by rule (one row per rule), then its promises as hypothesis properties."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import random
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stalk_operator import policy
from stalk_operator.policy import (
    AT_MAX_REPLICAS,
    AT_MIN_REPLICAS,
    KEEPING_BUSY_WORKERS,
    PAUSED,
    RELEASING_IDLE_REPLICAS,
    SCALE_DOWN_FOR_LOAD,
    SCALE_DOWN_IDLE,
    SCALE_STEP_LIMITED,
    SCALE_UP_FOR_BACKLOG,
    SCALE_UP_FOR_WAIT,
    STABILIZING_SCALE_DOWN,
    STABILIZING_SCALE_UP,
    STAY_AT_ZERO,
    STEADY,
    TOLERANCE,
    WAITING_FOR_IDLE,
    Behavior,
    History,
    Observation,
    ScalingSpec,
    decide,
)

NOW = 1_000_000.0
SPEC = ScalingSpec()  # 0..10 replicas, 10 tasks each, 45 s scale-down window, 120 s idle before zero
EAGER = replace(SPEC, idle_replica_seconds=5)  # releases spare replicas after 5 s, not the default 10


def obs(waiting=0, in_flight=0, current=1, oldest=None, busy=None):
    return Observation(waiting=waiting, in_flight=in_flight, oldest_wait_seconds=oldest, current_replicas=current,
                       busy_replicas=busy)


def past(*pairs, idle_for=None, spare_for=None):
    """A history with recommendations (seconds ago, replicas), optionally idle for some seconds and
    with replicas above the recommendation for some seconds."""
    return History(recommendations=[(NOW - ago, r) for ago, r in pairs],
                   idle_since=None if idle_for is None else NOW - idle_for,
                   spare_since=None if spare_for is None else NOW - spare_for)


RULES = [
    # id, spec, history, observation, expected replicas, expected reason
    ("scale up at once for the backlog", SPEC, past(), obs(waiting=35, current=1), 4, SCALE_UP_FOR_BACKLOG),
    ("in-flight tasks count as load", SPEC, past(), obs(in_flight=25, current=2), 3, SCALE_UP_FOR_BACKLOG),
    ("load within tolerance keeps the replicas", SPEC, past(), obs(waiting=31, current=3), 3, STEADY),
    ("a fresh history holds replicas for one window", SPEC, past(), obs(waiting=10, current=5), 5,
     STABILIZING_SCALE_DOWN),
    ("a history older than the window counts as fresh", SPEC, past((600, 1)), obs(waiting=10, current=5), 5,
     STABILIZING_SCALE_DOWN),
    ("scale down held inside the window", SPEC, past((30, 5)), obs(waiting=10, current=5), 5,
     STABILIZING_SCALE_DOWN),
    ("scale down once the window passed", SPEC, past((61, 5), (1, 1)), obs(waiting=10, current=5), 1, SCALE_DOWN_FOR_LOAD),
    ("scale down only to the highest recommendation in the window", SPEC, past((70, 8), (30, 3)),
     obs(waiting=10, current=8), 3, STABILIZING_SCALE_DOWN),
    ("scale down stops at what in-flight work needs", SPEC, past((61, 5), (1, 4)), obs(in_flight=40, current=5), 4,
     SCALE_DOWN_FOR_LOAD),
    ("scale down stops at the busy replicas when they are known", SPEC, past((61, 5), (1, 1)),
     obs(in_flight=4, current=5, busy=4), 4, KEEPING_BUSY_WORKERS),
    ("busy replicas never hold a scale-up back", SPEC, past(), obs(waiting=50, current=2, busy=2), 5,
     SCALE_UP_FOR_BACKLOG),
    ("extra replicas when the oldest task waited too long", replace(SPEC, max_wait_seconds=30), past(),
     obs(waiting=20, current=2, oldest=60), 4, SCALE_UP_FOR_WAIT),
    ("the wait overrun factor is capped", replace(SPEC, max_wait_seconds=30), past(),
     obs(waiting=20, current=2, oldest=600), 4, SCALE_UP_FOR_WAIT),
    ("a wait under the limit adds nothing", replace(SPEC, max_wait_seconds=30), past(),
     obs(waiting=20, current=2, oldest=10), 2, STEADY),
    ("at zero, work up to activationTasks stays at zero", replace(SPEC, activation_tasks=5), past(),
     obs(waiting=5, current=0), 0, STAY_AT_ZERO),
    ("at zero, work above activationTasks starts a worker", replace(SPEC, activation_tasks=5), past(),
     obs(waiting=6, current=0), 1, SCALE_UP_FOR_BACKLOG),
    ("at zero, one task starts a worker by default", SPEC, past(), obs(waiting=1, current=0), 1,
     SCALE_UP_FOR_BACKLOG),
    ("at zero with nothing to do stays at zero", SPEC, past(), obs(current=0), 0, STAY_AT_ZERO),
    ("idle keeps one worker until idleSecondsBeforeZero", SPEC, past((61, 3), (1, 0), idle_for=60), obs(current=3), 1,
     WAITING_FOR_IDLE),
    ("to zero after idleSecondsBeforeZero without work", SPEC, past((121, 1), (1, 0), idle_for=121), obs(current=1), 0,
     SCALE_DOWN_IDLE),
    ("never to zero when minReplicas is above zero", replace(SPEC, min_replicas=1), past((121, 1), (1, 0), idle_for=121),
     obs(current=1), 1, AT_MIN_REPLICAS),
    ("raised to minReplicas", replace(SPEC, min_replicas=2), past(), obs(current=0), 2, AT_MIN_REPLICAS),
    ("limited to maxReplicas", SPEC, past(), obs(waiting=500, current=2), 10, AT_MAX_REPLICAS),
    ("brought down to maxReplicas when set above it", SPEC, past(), obs(waiting=500, current=15), 10,
     AT_MAX_REPLICAS),
    ("scale up by at most the scale-up max step", replace(SPEC, scale_up=Behavior(0, max_step=2)), past(),
     obs(waiting=100, current=1), 3, SCALE_STEP_LIMITED),
    ("scale down by at most the scale-down max step", replace(SPEC, scale_down=Behavior(0, max_step=1)), past(),
     obs(waiting=10, current=5), 4, SCALE_STEP_LIMITED),
    ("scale up held by a scale-up window", replace(SPEC, scale_up=Behavior(30)), past((10, 1)),
     obs(waiting=50, current=1), 1, STABILIZING_SCALE_UP),
    # Pairs out of time order: restored from a status another operator wrote with its clock ahead.
    ("pairs recorded out of time order still hold the window",
     replace(SPEC, scale_up=Behavior(3), scale_down=Behavior(6)), past((1, 4), (5, 2), (4, 9)),
     obs(waiting=100, current=2), 4, STABILIZING_SCALE_UP),
    ("idle spare replicas go once idleReplicaSeconds held, busy ones kept", EAGER, past((30, 5), spare_for=5),
     obs(in_flight=10, current=5, busy=2), 2, RELEASING_IDLE_REPLICAS),
    ("spare replicas wait for idleReplicaSeconds", EAGER, past((30, 5), spare_for=2),
     obs(in_flight=10, current=5, busy=2), 5, STABILIZING_SCALE_DOWN),
    ("no release while the busy replicas are unknown", EAGER, past((30, 5), spare_for=60),
     obs(in_flight=10, current=5), 5, STABILIZING_SCALE_DOWN),
    ("a release stops at the load plus its noise, 3 sqrt(load): (20 + 14) / 10", EAGER, past((30, 5), spare_for=5),
     obs(waiting=5, in_flight=15, current=5, busy=1), 4, RELEASING_IDLE_REPLICAS),
    ("replicas within the load's noise are left to the window: (30 + 17) / 10", EAGER, past((30, 5), spare_for=60),
     obs(in_flight=30, current=5, busy=3), 5, STABILIZING_SCALE_DOWN),
    ("a release keeps one worker: zero is idleSecondsBeforeZero's", EAGER, past((30, 5), idle_for=10, spare_for=10),
     obs(current=5, busy=0), 1, RELEASING_IDLE_REPLICAS),
    ("a release is held at minReplicas", replace(EAGER, min_replicas=3), past((30, 5), spare_for=5),
     obs(in_flight=10, current=5, busy=1), 3, AT_MIN_REPLICAS),
    ("paused keeps the replicas whatever the load", replace(SPEC, paused=True), past(),
     obs(waiting=100, current=3), 3, PAUSED),
]


@pytest.mark.parametrize(("spec", "history", "observation", "replicas", "reason"),
                         [row[1:] for row in RULES], ids=[row[0] for row in RULES])
def test_rule(spec, history, observation, replicas, reason):
    decision = decide(observation, spec, history, NOW)
    assert (decision.replicas, decision.reason) == (replicas, reason), decision.message
    assert decision.message and "\n" not in decision.message
    assert decision.limited == (reason in (AT_MAX_REPLICAS, AT_MIN_REPLICAS, SCALE_STEP_LIMITED))


def test_a_release_asks_for_the_busy_replicas_only_when_it_would_release():
    spare = past((30, 5), spare_for=60)
    assert decide(obs(in_flight=10, current=5), SPEC, spare, NOW).wants_busy_replicas
    assert not decide(obs(in_flight=10, current=5), SPEC, past((30, 5), spare_for=1), NOW).wants_busy_replicas
    assert not decide(obs(in_flight=50, current=5), SPEC, past((30, 5), spare_for=60), NOW).wants_busy_replicas


def test_spare_time_restarts_when_the_load_needs_every_replica():
    history = past((30, 5), spare_for=60)
    decide(obs(waiting=50, current=5, busy=5), EAGER, history, NOW)
    assert history.spare_since is None
    assert decide(obs(in_flight=10, current=5, busy=1), EAGER, history, NOW + 1).replicas == 5  # spare for 0 s
    assert decide(obs(in_flight=10, current=5, busy=1), EAGER, history, NOW + 6).reason == RELEASING_IDLE_REPLICAS


def test_without_the_noise_band_a_release_goes_down_to_the_recommendation(monkeypatch):
    # LOAD_NOISE_SIGMAS 0 is the release as it was before the band: every spare idle replica goes.
    history = past((30, 5), spare_for=60)
    assert decide(obs(in_flight=30, current=5, busy=3), EAGER, history, NOW).replicas == 5
    monkeypatch.setattr(policy, "LOAD_NOISE_SIGMAS", 0.0)
    decision = decide(obs(in_flight=30, current=5, busy=3), EAGER, past((30, 5), spare_for=60), NOW)
    assert (decision.replicas, decision.reason) == (3, RELEASING_IDLE_REPLICAS), decision.message


def test_the_release_message_names_the_band_and_the_setting():
    decision = decide(obs(waiting=5, in_flight=15, current=5, busy=1), EAGER, past((30, 5), spare_for=5), NOW)
    assert decision.message == ("5 waiting, 15 in flight, 1 replicas busy needs 2 replicas, 4 with its noise; idle "
                                "replicas beyond that for 5s (idleReplicaSeconds 5s): releasing to 4")


def test_a_window_shorter_than_the_poll_interval_still_scales_down():
    # Regression: every tick used to find its history expired and held the current replicas anew.
    spec, history = replace(SPEC, scale_down=Behavior(1)), History()
    replicas = decide(obs(waiting=50, current=1), spec, history, NOW).replicas
    assert replicas == 5
    for tick in range(1, 5):
        replicas = decide(obs(waiting=0, in_flight=10, current=replicas), spec, history, NOW + tick).replicas
    assert replicas == 1


def test_after_a_long_gap_the_current_replicas_are_held_for_one_window():
    spec, history = SPEC, History()
    decide(obs(waiting=50, current=1), spec, history, NOW)
    # The decider was away for ten minutes (an outage): one quiet tick must not scale down.
    assert decide(obs(waiting=0, in_flight=10, current=5), spec, history, NOW + 600).replicas == 5
    assert decide(obs(waiting=0, in_flight=10, current=5), spec, history, NOW + 630).replicas == 5
    assert decide(obs(waiting=0, in_flight=10, current=5), spec, history, NOW + 661).replicas == 1


def test_message_says_why_with_numbers():
    decision = decide(obs(waiting=37, current=1), replace(SPEC, tasks_per_replica=4), History(), NOW)
    assert decision.message == "37 waiting, 0 in flight at 4 per replica needs 10 replicas"


def test_a_spec_without_tasks_per_replica_is_refused():
    with pytest.raises(ValueError, match="tasks_per_replica must be at least 1"):
        ScalingSpec(tasks_per_replica=0)


def test_history_survives_a_restart_through_json():
    spec, history = SPEC, History()
    decide(obs(waiting=80, current=2), spec, history, NOW)
    decide(obs(waiting=0, current=8), spec, history, NOW + 5)
    restored = History.from_dict(json.loads(json.dumps(history.to_dict())))
    assert restored == history
    # The restored history still holds the scale-down: the window has not passed.
    assert decide(obs(waiting=0, current=8), spec, restored, NOW + 30).replicas == 8
    assert History.from_dict(None) == History()


def test_the_saved_history_has_named_fields_and_rfc3339_times():
    # kubectl describe prints status.policyHistory as it is: times people can read, not Unix seconds.
    history = History(recommendations=[(1_796_195_910.5484, 2)], idle_since=1_796_195_900.0,
                      last_decision_at=1_796_195_913.0)
    assert history.to_dict() == {
        "recommendations": [{"time": "2026-12-02T07:18:30.548Z", "replicas": 2}],
        "idleSince": "2026-12-02T07:18:20.000Z", "lastDecisionAt": "2026-12-02T07:18:33.000Z"}
    assert History().to_dict() == {"recommendations": []}
    # Read back, a time is within half a millisecond of what was saved, and then stays put.
    restored = History.from_dict(json.loads(json.dumps(history.to_dict())))
    assert restored.recommendations[0][0] == pytest.approx(1_796_195_910.5484, abs=0.0005)
    assert History.from_dict(restored.to_dict()) == restored


@settings(max_examples=500, deadline=None)
@given(st.floats(-1e9, 4e9))
def test_rfc3339_writes_what_datetime_would_and_reads_back_to_the_millisecond(timestamp):
    millis = round(timestamp * 1000)
    expected = (datetime.fromtimestamp(millis // 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
                + f".{millis % 1000:03d}Z")
    assert policy.rfc3339(timestamp) == expected
    assert History.from_dict({"idleSince": expected}).idle_since == millis / 1000


def test_the_saved_history_of_the_release_before_still_reads():
    old = {"recommendations": [[NOW - 5, 2], [NOW - 1, 3]], "idleSince": NOW - 30.25, "lastDecisionAt": NOW - 1}
    history = History.from_dict(old)
    assert history == History(recommendations=[(NOW - 5, 2), (NOW - 1, 3)], idle_since=NOW - 30.25,
                              last_decision_at=NOW - 1)
    with pytest.raises(ValueError, match="unreadable policy history"):
        History.from_dict({"recommendations": [[NOW]]})


# --- properties ---------------------------------------------------------------------------------

# Enough examples to catch the mutations tried while writing these (dropping the scale-down
# window, the busy floor or the clamp), few enough for a small CI machine.
PROPERTY = settings(max_examples=200, deadline=None)

specs = st.builds(
    lambda lo, span, per, activation, max_wait, up, down, up_step, down_step, idle: ScalingSpec(
        min_replicas=lo, max_replicas=max(lo + span, 1), tasks_per_replica=per, activation_tasks=activation,
        max_wait_seconds=max_wait, scale_up=Behavior(up, up_step), scale_down=Behavior(down, down_step),
        idle_seconds_before_zero=idle),
    st.integers(0, 4), st.integers(0, 12), st.integers(1, 30), st.integers(0, 10),
    st.none() | st.floats(1, 120), st.sampled_from([0, 0, 5, 30]), st.sampled_from([0, 10, 60, 300]),
    st.none() | st.integers(1, 4), st.none() | st.integers(1, 4), st.sampled_from([0, 30, 120]),
)
ticks = st.lists(
    st.tuples(st.floats(0.5, 40), st.integers(0, 300), st.integers(0, 100), st.none() | st.floats(0, 300)),
    min_size=1, max_size=40,
)


def run(spec, start_replicas, tick_list, *, busy_share=None):
    """Feed the ticks through decide, with each decision becoming the next current replicas; with
    ``busy_share``, that share of the current replicas (rounded up) is busy, as the workers say."""
    history, now, current, trace = History(), NOW, start_replicas, []
    for dt, waiting, in_flight, oldest in tick_list:
        now += dt
        busy = None if busy_share is None else min(current, math.ceil(current * busy_share))
        o = obs(waiting=waiting, in_flight=in_flight, current=current, oldest=oldest, busy=busy)
        decision = decide(o, spec, history, now)
        trace.append((now, o, decision))
        current = decision.replicas
    return trace


@PROPERTY
@given(specs, st.integers(0, 20), ticks)
def test_never_outside_min_and_max(spec, start, tick_list):
    for _, _, decision in run(spec, start, tick_list):
        assert spec.min_replicas <= decision.replicas <= spec.max_replicas


@PROPERTY
@given(specs, st.integers(0, 20), ticks)
def test_never_scales_below_what_in_flight_work_needs(spec, start, tick_list):
    for _, o, decision in run(spec, start, tick_list):
        if decision.replicas < o.current_replicas:
            needed = math.ceil(o.in_flight / spec.tasks_per_replica)
            assert decision.replicas >= min(needed, spec.max_replicas), decision.message


@PROPERTY
@given(specs, st.integers(0, 20), ticks)
def test_no_scale_down_before_the_window_passed(spec, start, tick_list):
    trace = run(spec, start, tick_list)
    # What each tick's load asked for, plus the replicas a fresh history starts from.
    asked = [(trace[0][0], start * spec.tasks_per_replica)]
    asked += [(t, o.waiting + o.in_flight) for t, o, _ in trace]
    for t, o, decision in trace:
        if decision.replicas < o.current_replicas and decision.reason != AT_MAX_REPLICAS:
            for t_asked, load in asked:
                if t - spec.scale_down.stabilization_seconds < t_asked <= t:
                    capacity = decision.replicas * spec.tasks_per_replica * (1 + TOLERANCE)
                    assert load <= capacity + 1e-6, (t - t_asked, decision.message)


busy_shares = st.none() | st.sampled_from([0.0, 0.5, 1.0])
idle_replica_seconds = st.sampled_from([0, 5, 30])


@PROPERTY
@given(specs, idle_replica_seconds, st.integers(0, 20), ticks, st.sampled_from([0.0, 0.3, 0.7, 1.0]))
def test_a_release_keeps_the_limits_the_in_flight_need_and_the_busy_replicas(spec, idle, start, tick_list, share):
    spec = replace(spec, idle_replica_seconds=idle)
    for _, o, decision in run(spec, start, tick_list, busy_share=share):
        assert spec.min_replicas <= decision.replicas <= spec.max_replicas
        if decision.replicas < o.current_replicas:
            needed = max(math.ceil(o.in_flight / spec.tasks_per_replica), o.busy_replicas)
            assert decision.replicas >= min(needed, spec.max_replicas), decision.message
        if decision.reason == RELEASING_IDLE_REPLICAS:  # never below what the load and its noise need
            assert decision.replicas >= policy.noise_band(o.waiting + o.in_flight, spec), decision.message


@PROPERTY
@given(specs, idle_replica_seconds, st.integers(0, 20), ticks, st.sampled_from([0.0, 0.5, 1.0]))
def test_before_the_window_only_idle_spare_replicas_go(spec, idle, start, tick_list, share):
    # A scale-down inside the window is a release: spare for idle_replica_seconds, to at least this
    # tick's load (within the tolerance) and no busy replica stopped.
    spec = replace(spec, idle_replica_seconds=idle)
    trace = run(spec, start, tick_list, busy_share=share)
    asked = [(trace[0][0], start * spec.tasks_per_replica)] + [(t, o.waiting + o.in_flight) for t, o, _ in trace]
    for t, o, decision in trace:
        if decision.replicas >= o.current_replicas or decision.reason == AT_MAX_REPLICAS:
            continue
        early = [load for t_asked, load in asked if t - spec.scale_down.stabilization_seconds < t_asked <= t
                 and load > decision.replicas * spec.tasks_per_replica * (1 + TOLERANCE) + 1e-6]
        if early:
            assert decision.reason in (RELEASING_IDLE_REPLICAS, AT_MIN_REPLICAS, SCALE_STEP_LIMITED), decision.message
            assert o.waiting + o.in_flight <= decision.replicas * spec.tasks_per_replica * (1 + TOLERANCE) + 1e-6
            assert decision.replicas >= min(o.busy_replicas, spec.max_replicas)


@PROPERTY
@given(specs, idle_replica_seconds, st.integers(0, 20), st.integers(0, 300), st.integers(0, 100),
       st.none() | st.floats(0, 300), st.floats(0.5, 20), st.integers(5, 60), busy_shares)
def test_no_flapping_under_a_steady_load(spec, idle, start, waiting, in_flight, oldest, dt, n, share):
    spec = replace(spec, idle_replica_seconds=idle)
    trace = run(spec, start, [(dt, waiting, in_flight, oldest)] * n, busy_share=share)
    steps = [d.replicas - o.current_replicas for _, o, d in trace]
    assert not (any(s > 0 for s in steps) and any(s < 0 for s in steps)), [d.replicas for _, _, d in trace]


@PROPERTY
@given(specs, st.integers(0, 20), st.integers(1, 300), st.integers(0, 100))
def test_scales_up_at_once_without_a_window_or_step(spec, current, waiting, in_flight):
    spec = replace(spec, scale_up=Behavior(0), activation_tasks=0)
    needed = math.ceil((waiting + in_flight) / spec.tasks_per_replica)
    decision = decide(obs(waiting=waiting, in_flight=in_flight, current=current), spec, History(), NOW)
    if waiting + in_flight > current * spec.tasks_per_replica * (1 + TOLERANCE):  # beyond the tolerance
        assert decision.replicas >= min(needed, spec.max_replicas), decision.message


@PROPERTY
@given(specs, st.integers(0, 20), st.integers(0, 300), st.integers(0, 100), st.integers(0, 20),
       st.lists(st.tuples(st.floats(0, 400), st.integers(0, 30)), max_size=5), st.none() | st.floats(0, 400))
def test_never_stops_a_busy_replica_when_the_busy_ones_are_known(spec, current, waiting, in_flight, busy, earlier,
                                                                  idle_for):
    busy = min(busy, current)
    o = obs(waiting=waiting, in_flight=in_flight, current=current, busy=busy)
    decision = decide(o, spec, past(*earlier, idle_for=idle_for if waiting + in_flight == 0 else None), NOW)
    if decision.replicas < current:
        assert decision.replicas >= min(busy, spec.max_replicas), decision.message


# The history keeps only the recommendations that can still be a window's highest or lowest. The
# reference below is the same decide() keeping every recommendation (the history before compaction).

def _decide_all(spec_list, start, tick_list, *, compact: bool):
    """Decisions and persisted histories for ticks that may change the spec, restart or turn the clock back."""
    every = mock.patch.object(policy, "_compact", lambda recommendations: list(recommendations))
    history, now, current, out = History(), NOW, start, []
    with contextlib.nullcontext() if compact else every:
        for dt, waiting, in_flight, oldest, busy, spec_index, restart in tick_list:
            now += dt
            if restart:  # the operator persisted the history in status and read it back
                history = History.from_dict(json.loads(json.dumps(history.to_dict())))
            o = obs(waiting=waiting, in_flight=in_flight, current=current, oldest=oldest,
                    busy=None if busy is None else min(busy, current))
            decision = decide(o, spec_list[spec_index % len(spec_list)], history, now)
            out.append((decision, len(history.recommendations)))
            current = decision.replicas
    return out


history_ticks = st.lists(
    st.tuples(st.one_of(st.floats(0.5, 40), st.sampled_from([0.0, 1.0, 1.0, 1.0, -3.0])), st.integers(0, 120),
              st.integers(0, 60), st.none() | st.floats(0, 300), st.none() | st.integers(0, 12), st.integers(0, 2),
              st.booleans()),
    min_size=1, max_size=120,
)


@PROPERTY
@given(st.lists(specs, min_size=1, max_size=3), st.integers(0, 20), history_ticks)
def test_the_compact_history_decides_exactly_as_the_full_one(spec_list, start, tick_list):
    compact = _decide_all(spec_list, start, tick_list, compact=True)
    full = _decide_all(spec_list, start, tick_list, compact=False)
    assert [d for d, _ in compact] == [d for d, _ in full]
    assert all(kept <= every for (_, kept), (_, every) in zip(compact, full))


@PROPERTY
@given(specs, st.lists(st.integers(0, 40), min_size=60, max_size=300))
def test_the_history_holds_a_few_recommendations_not_one_per_tick(spec, loads):
    # One decision a second under a noisy load: what is kept is bounded by the distinct counts the
    # window can hold (one staircase down for the max, one up for the min), not by the ticks.
    spec = replace(spec, scale_down=Behavior(60), paused=False)
    history, current = History(), 1
    for tick, load in enumerate(loads):
        current = decide(obs(waiting=load, current=current), spec, history, NOW + tick).replicas
        distinct = len({r for _, r in history.recommendations})
        assert len(history.recommendations) <= 2 * distinct + 1
    steady = History()
    for tick in range(120):
        decide(obs(waiting=25, current=3), SPEC, steady, NOW + tick)
    assert len(steady.recommendations) <= 2


def test_a_full_history_in_status_is_read_and_compacted():
    # The format written before compaction (one pair per tick) still reads, and decides the same.
    window = int(SPEC.scale_down.stabilization_seconds)
    peak_at = NOW - window + 5  # 8 replicas recommended 5 s after the window's start
    saved = {"recommendations": [[NOW - window + s, 8 if NOW - window + s == peak_at else 3] for s in range(window)],
             "idleSince": None, "lastDecisionAt": NOW - 1}
    history = History.from_dict(saved)
    assert decide(obs(waiting=15, current=8), SPEC, history, NOW).replicas == 8  # 8 is still in the window
    assert len(history.recommendations) <= 3
    assert decide(obs(waiting=15, current=8), SPEC, history, NOW + 6).replicas == 3


@pytest.fixture
def sim(monkeypatch):
    """bench/policy_sim.py, which runs decide() against a simulated Deployment."""
    path = Path(__file__).resolve().parents[2] / "bench" / "policy_sim.py"
    loaded = importlib.util.spec_from_file_location("policy_sim", path)
    module = importlib.util.module_from_spec(loaded)
    monkeypatch.setitem(sys.modules, "policy_sim", module)  # dataclasses look their module up there
    loaded.loader.exec_module(module)
    return module


def test_in_the_simulator_no_busy_worker_is_stopped_and_no_task_killed(sim):
    # A short bursty trace keeps the simulator working and checks the drain-safe promise end to end.
    tasks = sim.poisson_trace(lambda t: 0.5, 600, random.Random(5), bursts={s: 40 for s in range(100, 110)})
    spec = ScalingSpec(max_replicas=sim.MAX_REPLICAS, tasks_per_replica=sim.TARGET_PER_REPLICA)
    result = sim.simulate(tasks, lambda: sim.StalkController(spec), grace=sim.KUBERNETES_GRACE_SECONDS,
                          idle_first=True, seed=5)
    assert (result.busy_stops, result.killed_tasks) == (0, 0)
    assert max(replicas for _, replicas, _, _ in result.series) > 1  # it did scale up and down
    assert result.series[-1][1] == 0


def test_in_the_simulator_the_noise_band_keeps_a_steady_load_and_releases_a_burst(sim, monkeypatch):
    # The band's reason to be (docs/benchmarks.md, "The release's frontier"): on a steady Poisson
    # load it releases about nothing the window would keep (no more scale events than with no early
    # release at all), and a burst's replicas go within seconds, not after the window.
    spec = ScalingSpec(min_replicas=0, max_replicas=sim.MAX_REPLICAS, tasks_per_replica=sim.TARGET_PER_REPLICA)
    steady = sim.poisson_trace(lambda t: 2.0, 900, random.Random(4))
    burst = sim.poisson_trace(lambda t: 0.2, 900, random.Random(4), bursts={s: 30 for s in range(300, 310)})

    def run(tasks, idle_replica_seconds):
        return sim.simulate(sim._fresh(tasks), lambda: sim.StalkController(replace(spec, idle_replica_seconds=
                                                                                   idle_replica_seconds)),
                            grace=math.inf, idle_first=True, seed=4)

    banded, windowed = run(steady, 5), run(steady, 3600)
    assert banded.scale_events <= windowed.scale_events * 1.2 and banded.p95_wait <= windowed.p95_wait + 1
    assert run(burst, 5).worker_seconds < 0.9 * run(burst, 3600).worker_seconds
    monkeypatch.setattr(policy, "LOAD_NOISE_SIGMAS", 0.0)  # without the band: a steady load churns
    assert run(steady, 5).scale_events > 1.5 * windowed.scale_events


def test_the_simulators_baselines_on_long_tasks(sim):
    # Issue 16's measurements rest on these: the reactive baseline is drain-safe like stalk, keeps
    # the highest need of the last 30 s, and no model spends less than the floor.
    tasks = sim.poisson_trace(lambda t: 0.4 if t % 600 < 60 else 0.0, 1200, random.Random(3),
                              duration=sim.long_task_seconds)
    spec = ScalingSpec(min_replicas=0, max_replicas=sim.MAX_REPLICAS, tasks_per_replica=sim.TARGET_PER_REPLICA)
    c = sim.compare("waves", tasks, spec, seed=3)
    assert all(60 <= t.duration <= 300 for t in tasks)
    assert c.floor == pytest.approx(sum(t.duration for t in tasks) / sim.CONCURRENCY)
    assert min(r.worker_seconds for r in (c.stalk, c.reactive, c.keda)) > c.floor
    assert (c.reactive.busy_stops, c.reactive.killed_tasks) == (0, 0)
    assert c.keda.killed_tasks > 0  # HPA+KEDA stops busy pods with a 30 s grace period: long tasks die
    series = c.reactive.series
    last_work = max(second for second, _, waiting, in_flight in series if waiting + in_flight)
    first_zero = min(second for second, replicas, _, _ in series if second > last_work and replicas == 0)
    assert first_zero - last_work == 30
    assert c.reactive.scale_events >= 4 and c.reactive.mean_wait <= c.reactive.p95_wait


def test_a_resumed_history_keeps_the_replicas_it_finds_for_one_window():
    # The decider before scaled 2 -> 5 and was killed before its status (and history) was written:
    # the history read back says 2, the Deployment says 5. No scale-down until a window has passed.
    window = SPEC.scale_down.stabilization_seconds
    saved = History(recommendations=[(NOW - 5, 2)], last_decision_at=NOW - 1).to_dict()
    resumed = History.resume(saved)
    assert decide(obs(waiting=5, current=5), SPEC, resumed, NOW).replicas == 5
    assert decide(obs(waiting=5, current=5), SPEC, resumed, NOW + window - 1).replicas == 5
    assert decide(obs(waiting=5, current=5), SPEC, resumed, NOW + window + 1).replicas == 1
    # A copy of the decider's own history (from_dict) is not a resumption: it scales down at once.
    copied = History.from_dict(saved)
    assert decide(obs(waiting=5, current=5), SPEC, copied, NOW).replicas == 2
