"""When the oldest message of a list arrived, for messages that do not say so themselves.

A task stalk's API published carries its send time (``sent_at.py``); one a team's own code
sent carries nothing of the kind. Taking the age of the oldest waiting message from when the
reader first saw it at the tail restarts at 0 each time a worker takes the tail: a queue draining
a large backlog would report ~0 s for ever, and ``maxWaitSeconds`` would never fire.

Instead the reader keeps, per Redis list, when its messages arrived. A list is a FIFO: publishers
LPUSH at the head, workers pop at the tail. So between two reads, what arrived is what stands in
front of the previous read's head message (its index, by LPOS), and what left is the rest of the
change in length. Each read adds a *cohort* (the interval since the previous read, and how many
arrived in it) and takes what left from the oldest cohorts. The message at the tail is in the
oldest cohort still holding any; within a cohort, arrivals are taken as evenly spread.

Accuracy: within one read interval of the truth for what arrived while the reader ran (exact
when arrivals are steady; see docs/benchmarks.md). Messages already waiting at the reader's
first read arrived at some unknown time before it: their age is a lower bound that grows, and
never restarts while they drain. kombu puts a message a lost worker held back at the tail
(RPUSH): it counts with the oldest cohort.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Cohort:
    start: float | None  # the read before they arrived; None: before the reader's first read
    end: float  # the read that first saw them
    count: int  # how many arrived between the two reads
    left: int  # how many of them still wait

    def arrival_of_oldest(self) -> float:
        """When the oldest of those still waiting arrived: the (count - left + 1)-th of ``count``
        arrivals spread evenly over (start, end]; ``end`` when nothing says how long before."""
        if self.start is None or self.count == 0:
            return self.end
        return self.start + (self.end - self.start) * (self.count - self.left + 0.5) / self.count


class Arrivals:
    """The arrival cohorts of one list, oldest first, as its reads have seen them."""

    # A list that grows for hours gets one cohort per read; past this many, neighbours merge (the
    # older half first), so the estimate there spans two intervals instead of one.
    MAX_COHORTS = 256

    def __init__(self, *, now: float, length: int, since: float | None, head: bytes | str):
        """``since``: a read that saw the list empty before this one, if any."""
        self.cohorts = [Cohort(start=since, end=now, count=length, left=length)]
        self.length = length
        self.last_read = now
        self.head = head

    def observe(self, *, now: float, length: int, arrived: int | None, head: bytes | str | None) -> None:
        """A read: ``length`` messages wait, ``arrived`` in front of the previous head (None when
        the previous head is gone, so everything that waited then has left), and the head now
        (None when unchanged)."""
        if arrived is None:
            # What waits arrived since the last read; how many of those left already is unknown.
            self.cohorts = [Cohort(start=self.last_read, end=now, count=length, left=length)]
        else:
            if arrived:
                self.cohorts.append(Cohort(start=self.last_read, end=now, count=arrived, left=arrived))
            # Departures take the oldest first, the ones that just arrived last.
            self._take(self.length + arrived - length)
            self._match(length)
        self.length, self.last_read = length, now
        if head is not None:
            self.head = head
        if len(self.cohorts) > self.MAX_COHORTS:
            self._merge_older_half()

    def oldest_arrival(self) -> float:
        return self.cohorts[0].arrival_of_oldest()

    def _take(self, departed: int) -> None:
        while departed > 0:
            oldest = self.cohorts[0]
            taken = min(departed, oldest.left)
            oldest.left -= taken
            departed -= taken
            if oldest.left > 0 or len(self.cohorts) == 1:
                return
            self.cohorts.pop(0)

    def _match(self, length: int) -> None:
        """Counts that disagree with the list's length (a message put back at the tail, a list
        changed by hand) are settled at the oldest end, where such messages are."""
        surplus = length - sum(c.left for c in self.cohorts)
        if surplus > 0:
            self.cohorts[0].count += surplus
            self.cohorts[0].left += surplus
        elif surplus < 0:
            self._take(-surplus)

    def _merge_older_half(self) -> None:
        # What waited before the first read stays apart: its time is a bound, not an interval.
        kept = 1 if self.cohorts[0].start is None else 0
        half = len(self.cohorts) // 2
        older, newer = self.cohorts[kept:half], self.cohorts[half:]
        merged = [Cohort(start=a.start, end=b.end, count=a.count + b.count, left=a.left + b.left)
                  for a, b in zip(older[0::2], older[1::2], strict=False)]
        if len(older) % 2:
            merged.append(older[-1])
        self.cohorts = self.cohorts[:kept] + merged + newer
