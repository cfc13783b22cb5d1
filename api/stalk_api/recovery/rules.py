"""Whether a task the API accepted has lost its message and must be published again. No I/O.

The caller gathers the evidence: the task's record, read again after the second Redis read (so a
task that finished during the check is seen finished), whether its message was in Redis at each of
two reads taken at least ``min_read_gap`` apart (any priority list of its queue, kombu's
``unacked`` hash, which also holds the eta/countdown tasks workers keep), and whether any worker
reports it reserved or active (Celery's inspect). Only a task absent from all of them, twice, and
whose record has not changed for ``recover_after`` seconds is recovered: publishing a task whose
message still exists would run it twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from stalk_workers.records.models import PENDING, RETRY, STARTED

# States in which a record says a message should exist: waiting or scheduled (PENDING), running
# (STARTED; acks-late keeps the message in ``unacked`` until it ends) or waiting for a retry (RETRY).
UNFINISHED = frozenset({PENDING, STARTED, RETRY})

# STALK_RECOVER_AFTER_SECONDS' default. A record looks orphaned, with nothing lost, only briefly:
# the API commits a record before it publishes (up to STALK_BROKER_TIMEOUT_SECONDS, 5 s); a worker
# pops a message before kombu writes it to ``unacked`` (milliseconds), and writes records up to a
# flush (0.05 s) after a task ends and is acked; a retry is published by the worker just before it
# writes RETRY. A dead worker's messages stay in ``unacked`` until the visibility timeout restores
# them to their list in one transaction, so that timeout never makes a message absent. Two minutes
# is far beyond each of these gaps and still brings a lost task back within minutes.
RECOVER_AFTER_SECONDS = 120.0
# The least time between the two reads: longer than the fetch-to-``unacked`` gap of kombu's
# Redis transport, so one message cannot be in that gap at both reads.
MIN_READ_GAP_SECONDS = 1.0


class Action(Enum):
    LEAVE = "leave"
    RECOVER = "recover"


@dataclass(frozen=True)
class Evidence:
    """What is known of one task at the end of a check."""

    status: str  # the record's status, read after the second Redis read
    published: bool  # False: the API has not seen the message reach Redis (its sweep settles it)
    updated_at: datetime  # the record's last change
    in_redis_first: bool  # in a list, ``unacked`` or scheduled at the first read
    in_redis_second: bool  # the same, at the second read
    held_by_worker: bool  # reserved, active or scheduled on a worker that answered the inspection
    first_read_at: datetime
    second_read_at: datetime


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str  # which rule decided, written for people


def decide(evidence: Evidence, *, now: datetime, recover_after: float = RECOVER_AFTER_SECONDS,
           min_read_gap: float = MIN_READ_GAP_SECONDS) -> Decision:
    """Leave the task, or recover it; the first rule that applies decides."""
    e = evidence
    # Finished (or revoked): nothing should be in Redis.
    if e.status not in UNFINISHED:
        return Decision(Action.LEAVE, f"the record is {e.status}: the task ended")
    # Not known to be published: the API's sweep of unpublished records settles it, not a recovery.
    if not e.published:
        return Decision(Action.LEAVE, "the record is not marked published yet")
    # Present at either read: the message exists (or existed after the check began).
    if e.in_redis_first or e.in_redis_second:
        return Decision(Action.LEAVE, "its message is in Redis")
    # A worker holds it (prefetched, running, or kept until its eta).
    if e.held_by_worker:
        return Decision(Action.LEAVE, "a worker holds it")
    # Two reads too close together could both fall in one fetch-to-unacked gap.
    gap = (e.second_read_at - e.first_read_at).total_seconds()
    if gap < min_read_gap:
        return Decision(Action.LEAVE, f"the reads were {gap:.3f} s apart, less than {min_read_gap} s")
    # A record that changed recently may be in one of the short gaps where nothing is lost.
    quiet = now - e.updated_at
    if quiet < timedelta(seconds=recover_after):
        return Decision(Action.LEAVE, f"the record changed {quiet.total_seconds():.0f} s ago, "
                                      f"less than {recover_after:.0f} s")
    return Decision(Action.RECOVER, f"absent from Redis at two reads {gap:.1f} s apart, held by no worker, "
                                    f"and its record unchanged for {quiet.total_seconds():.0f} s")
