"""The arrival cohorts of one list (arrivals.py), as pure logic: what the reader's reads report."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stalk_workers.arrivals import Arrivals


def test_a_list_that_grows_for_hours_keeps_its_oldest_arrival_with_bounded_cohorts():
    arrivals = Arrivals(now=0.0, length=1, since=None, head="m0")
    for t in range(1, 10_000):
        arrivals.observe(now=float(t), length=t + 1, arrived=1, head=f"m{t}")
    assert len(arrivals.cohorts) <= Arrivals.MAX_COHORTS
    assert arrivals.oldest_arrival() == 0.0  # waiting since before the first read: that read
    arrivals.observe(now=10_000.0, length=5_000, arrived=0, head=None)  # half of them left
    # The oldest now arrived at ~5,000 s; merged cohorts blur it by their width, not more.
    assert abs(arrivals.oldest_arrival() - 5_000) <= 10_000 / Arrivals.MAX_COHORTS * 2


def test_a_previous_head_that_left_means_everything_waiting_arrived_since():
    arrivals = Arrivals(now=0.0, length=3, since=-5.0, head="a")
    arrivals.observe(now=2.0, length=4, arrived=None, head="z")
    assert 0.0 <= arrivals.oldest_arrival() <= 2.0


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=60))
def test_counts_always_match_the_lists_length_and_the_oldest_never_gets_younger_than_a_newer_one(steps):
    """Whatever arrives and leaves, the cohorts hold exactly what waits, and arrival times only
    grow from the oldest cohort to the newest."""
    length, arrivals = 1, Arrivals(now=0.0, length=1, since=None, head="h")
    for t, (arrived, departed) in enumerate(steps, start=1):
        length = max(1, length + arrived - departed)
        arrivals.observe(now=float(t), length=length, arrived=arrived, head=None)
        assert sum(c.left for c in arrivals.cohorts) == length
        ends = [c.end for c in arrivals.cohorts]
        assert ends == sorted(ends)
