"""The send time on every task a process publishes: the one line a team adds to its own app.

stalk's API stamps each task it publishes with the epoch seconds of the send, in the message
header ``stalk_sent_at``; the queue reader takes the oldest waiting task's age from it, exactly.
A task a team's own code sends (``delay``, ``apply_async``, ``send_task``) has no such header,
and its age can only be estimated from when the reader saw it arrive (``arrivals.py``). In the
team's app module::

    from stalk_workers.sent_at import stamp_send_times; stamp_send_times()

Nothing but Celery is imported here, so the module can also be copied into an app as it is.
"""

from __future__ import annotations

import time

from celery import signals

# Epoch seconds (float) of the send; read by stalk_workers.queue_reader.
SENT_AT_HEADER = "stalk_sent_at"


def _stamp(headers=None, **_) -> None:
    # Protocol 2 passes the message's own headers dict: what is set here is sent. A header set
    # already (the API's, or a re-publish keeping the first send's) is kept.
    if headers is not None and SENT_AT_HEADER not in headers:
        headers[SENT_AT_HEADER] = time.time()


def stamp_send_times() -> None:
    """Stamp every task this process publishes from now on (idempotent)."""
    signals.before_task_publish.connect(_stamp, weak=False, dispatch_uid=__name__)


def is_stamp(receiver_key) -> bool:
    """Whether a ``before_task_publish`` receiver (its lookup key) is this module's stamp."""
    return receiver_key[0] == __name__
