"""The recovery rules as rows, one per rule, and their properties (stalk_api/recovery/rules.py)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stalk_api.recovery.rules import (
    MIN_READ_GAP_SECONDS,
    RECOVER_AFTER_SECONDS,
    UNFINISHED,
    Action,
    Evidence,
    decide,
)
from stalk_workers.records.models import STATES

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
LOST = Evidence(status="PENDING", published=True, updated_at=NOW - timedelta(seconds=600),
                in_redis_first=False, in_redis_second=False, held_by_worker=False,
                first_read_at=NOW - timedelta(seconds=5), second_read_at=NOW)


def lost(**changes) -> Evidence:
    return dataclasses.replace(LOST, **changes)


ROWS = [
    ("waiting, absent twice, old: recovered", lost(), Action.RECOVER),
    ("started, absent twice, old: recovered", lost(status="STARTED"), Action.RECOVER),
    ("retrying, absent twice, old: recovered", lost(status="RETRY"), Action.RECOVER),
    ("finished: left", lost(status="SUCCESS"), Action.LEAVE),
    ("failed: left", lost(status="FAILURE"), Action.LEAVE),
    ("revoked: left", lost(status="REVOKED"), Action.LEAVE),
    ("not marked published: left to the sweep", lost(published=False), Action.LEAVE),
    ("in Redis at the first read only (fetched between the reads): left", lost(in_redis_first=True), Action.LEAVE),
    ("in Redis at the second read only: left", lost(in_redis_second=True), Action.LEAVE),
    ("held by a worker: left", lost(held_by_worker=True), Action.LEAVE),
    ("reads closer than the gap: left",
     lost(first_read_at=NOW - timedelta(seconds=MIN_READ_GAP_SECONDS / 2)), Action.LEAVE),
    ("record changed just under the grace ago: left",
     lost(updated_at=NOW - timedelta(seconds=RECOVER_AFTER_SECONDS - 1)), Action.LEAVE),
    ("record changed exactly the grace ago: recovered",
     lost(updated_at=NOW - timedelta(seconds=RECOVER_AFTER_SECONDS)), Action.RECOVER),
]


@pytest.mark.parametrize(("evidence", "expected"), [(e, a) for _, e, a in ROWS], ids=[name for name, _, _ in ROWS])
def test_rule(evidence, expected):
    decision = decide(evidence, now=NOW)
    assert decision.action is expected, decision.reason
    assert decision.reason


def test_the_grace_is_the_setting():
    young = lost(updated_at=NOW - timedelta(seconds=30))
    assert decide(young, now=NOW).action is Action.LEAVE
    assert decide(young, now=NOW, recover_after=20).action is Action.RECOVER


evidence = st.builds(
    Evidence,
    status=st.sampled_from(STATES),
    published=st.booleans(),
    updated_at=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)),
    in_redis_first=st.booleans(),
    in_redis_second=st.booleans(),
    held_by_worker=st.booleans(),
    first_read_at=st.datetimes(min_value=datetime(2026, 12, 1), max_value=datetime(2026, 12, 2),
                               timezones=st.just(UTC)),
    second_read_at=st.datetimes(min_value=datetime(2026, 12, 1), max_value=datetime(2026, 12, 2),
                                timezones=st.just(UTC)),
)


@given(evidence, st.floats(min_value=10, max_value=3600))
def test_recovered_only_when_absent_everywhere_unfinished_and_quiet(e, recover_after):
    decision = decide(e, now=NOW, recover_after=recover_after)
    if decision.action is Action.RECOVER:
        assert e.status in UNFINISHED and e.published
        assert not (e.in_redis_first or e.in_redis_second or e.held_by_worker)
        assert (e.second_read_at - e.first_read_at).total_seconds() >= MIN_READ_GAP_SECONDS
        assert (NOW - e.updated_at).total_seconds() >= recover_after


@given(evidence, st.floats(min_value=10, max_value=3600), st.floats(min_value=0, max_value=86_400))
def test_a_longer_wait_never_undoes_a_recovery(e, recover_after, later):
    # Monotone in time: once lost, a task stays lost while nothing else changes (no flapping).
    if decide(e, now=NOW, recover_after=recover_after).action is Action.RECOVER:
        assert decide(e, now=NOW + timedelta(seconds=later), recover_after=recover_after).action is Action.RECOVER


@given(evidence)
def test_any_sighting_leaves_the_task(e):
    seen = dataclasses.replace(e, in_redis_first=True)
    assert decide(seen, now=NOW, recover_after=10).action is Action.LEAVE
