"""The Lease take-over rule (no cluster needed; the election itself runs in the cluster tests)."""

from __future__ import annotations

import pytest

from stalk_operator.leader import LeaseRecord, may_acquire

OTHER = LeaseRecord(holder="other", renew_time="t", transitions=1, resource_version="7")


@pytest.mark.parametrize(
    ("record", "observed_at", "now", "expected"),
    [
        (None, None, 100.0, True),
        (LeaseRecord(None, None, 1, "7"), 100.0, 100.0, True),
        (LeaseRecord("me", "t", 1, "7"), 90.0, 100.0, True),
        (OTHER, 95.0, 100.0, False),
        (OTHER, 90.0, 100.0, True),
        (OTHER, None, 100.0, False),
    ],
    ids=["no-lease", "released", "ours", "other-fresh", "other-silent-for-a-duration", "other-never-observed"],
)
def test_may_acquire(record, observed_at, now, expected):
    assert may_acquire(record, identity="me", observed_at=observed_at, now=now, duration=10.0) is expected
