"""A revoked eta/countdown task is let go at once, not at its ETA.

A worker holds an eta/countdown task from its delivery until its time, its message in kombu's
``unacked`` (where the queue reader counts it as scheduled). Celery (5.7) only adds a revoked id to
the worker's revoked set and discards the task when its timer fires, so until the ETA a revoked
task still counted as scheduled (GET /v1/queues, the operator's scaling, ``stalk queues``) and kept
its record's end unknown. Here the worker's ``revoke`` command also discards, right away, the
scheduled tasks it holds with those ids, the way Celery does at the ETA (``Request.revoked``:
``task_revoked``, which records REVOKED, then the ack): the message leaves ``unacked``, and every
reader of the queue sees it gone, whoever sent the revoke (the API, ``celery control revoke``).

It reads Celery's worker state (``scheduled_requests``, ``Request._eta_timer_entry``), so it can be
turned off (``revoke-release`` in ``STALK_LIBRARY_SHORTCUTS_OFF``): Celery's revoke alone, the task
let go at its ETA.
"""

from __future__ import annotations

import functools

from celery.utils.functional import maybe_list
from celery.worker import control
from celery.worker import state as worker_state


def connect() -> None:
    """Wrap this process's ``revoke`` control command (once: a second app connects nothing)."""
    celery_revoke = control.Panel.data["revoke"]
    if getattr(celery_revoke, "stalk_releases_scheduled", False):
        return

    @functools.wraps(celery_revoke)
    def revoke(state, task_id, terminate=False, signal=None, **kwargs):
        answer = celery_revoke(state, task_id, terminate=terminate, signal=signal, **kwargs)
        if _releases(state.app):
            release_scheduled(state.consumer, set(maybe_list(task_id) or []))
        return answer

    revoke.stalk_releases_scheduled = True
    # The worker's pidbox dispatches through this dict, so the wrapper replaces Celery's command.
    control.Panel.data["revoke"] = revoke


def _releases(app) -> bool:
    """The wrapper is process-wide; whether it releases is the worker's own app's setting."""
    settings = getattr(app.conf, "stalk_settings", None)
    return settings is None or settings.shortcut("revoke-release")


def release_scheduled(consumer, task_ids: set[str]) -> None:
    """Discard the eta/countdown tasks this worker holds among ``task_ids`` (already revoked)."""
    # The control command runs on the loop that fires the timer: a request still in
    # scheduled_requests has not fired (firing moves it to reserved_requests).
    for request in [r for r in tuple(worker_state.scheduled_requests) if r.id in task_ids]:
        if request.revoked():  # announces it as at its ETA: task-revoked event, task_revoked, ack
            if request._eta_timer_entry is not None:  # Celery 5.7's handle on the timer entry
                consumer.timer.cancel(request._eta_timer_entry)
            # The prefetch slot Celery added for the held task (it frees it when the timer fires).
            consumer.qos.decrement_eventually()
