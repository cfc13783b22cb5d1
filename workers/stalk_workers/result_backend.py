"""Celery's Redis result backend, with each state write in one round trip instead of two.

Celery 5.x's key-value backends read the stored meta before every write (``_store_result``:
``GET``, then ``SET``+``PUBLISH`` unless the stored state is already SUCCESS, so a redelivered
task never overwrites a result). With ``task_track_started`` a task is written twice, so a worker
spent four round trips per task on the result backend where plain Celery spends two. Here the
check and the write run as one Lua script inside Redis: the same keys, values, expiry, channel
message and "never overwrite SUCCESS" rule, in one ``EVALSHA``. Everything else (reads,
``AsyncResult.get`` over pub/sub, chords, groups) is Celery's own code, unchanged.

The script decodes the stored meta with Redis's cjson, so it is used only when results are plain
JSON (stalk's default); with another serializer or compression, Celery's own path runs.

STARTED (``task_track_started``) is written ``STARTED_DELAY_SECONDS`` after the task starts, and
not at all if the task has ended by then: a state nobody could have seen costs a round trip, a
script and an encoded meta, about 200 µs of CPU per task over the worker and Redis (measured on
a drain of no-op tasks: 15% of a stalk worker's CPU). A task that runs longer shows STARTED as
before, that much later. The task events and the task record say STARTED at once either way.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from celery import states
from celery.backends.base import BackendStoreError
from celery.backends.redis import RedisBackend, SentinelBackend
from kombu.utils.encoding import bytes_to_str

log = logging.getLogger(__name__)

STARTED_DELAY_SECONDS = 0.1

# KEYS[1]: the task's meta key. ARGV[1]: the encoded meta. ARGV[2]: expiry in seconds (0: none).
# Returns 0 when the stored meta already says SUCCESS (nothing written), 1 when written.
STORE_UNLESS_SUCCEEDED = """
local current = redis.call('GET', KEYS[1])
if current then
    local ok, meta = pcall(cjson.decode, current)
    if ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
        return 0
    end
end
local expires = tonumber(ARGV[2])
if expires > 0 then
    redis.call('SETEX', KEYS[1], expires, ARGV[1])
else
    redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class StalkRedisBackend(RedisBackend):
    """``RedisBackend`` whose ``_store_result`` is one server-side check-and-write."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # cjson reads JSON only; anything else takes Celery's GET-then-SET path.
        self._one_round_trip = self.serializer == "json" and not self.compression
        self._script = None
        self._starts: _DeferredStarts | None = None

    def _store_result(self, task_id, result, state, traceback=None, request=None, **kwargs):
        if not self._one_round_trip:
            return super()._store_result(task_id, result, state, traceback=traceback, request=request, **kwargs)
        starts = self._deferred_starts()
        if state == states.STARTED:
            # Encoded only if it is written: most tasks end before it is due.
            starts.defer(task_id, (task_id, result, state, traceback, request))
        else:
            starts.cancel(task_id)  # returns once a STARTED write already under way is done
            self._write(task_id, result, state, traceback, request)
        return result

    def _write(self, task_id, result, state, traceback, request) -> None:
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
        expires = self.failure_expires if state == "FAILURE" else self.expires
        self.ensure(self._run_script, (self.get_key_for_task(task_id), value, int(expires or 0)))

    def _deferred_starts(self) -> _DeferredStarts:
        if self._starts is None or not self._starts.owned():  # first use, or a fresh fork
            self._starts = _DeferredStarts(lambda args: self._write(*args))
        return self._starts

    def _run_script(self, key, value, expires: int) -> int:
        if self._script is None:
            # redis-py's Script runs EVALSHA and loads the script again after a NOSCRIPT reply.
            self._script = self.client.register_script(STORE_UNLESS_SUCCEEDED)
        return self._script(keys=[key], args=[value, expires])


class StalkSentinelBackend(StalkRedisBackend, SentinelBackend):
    """The same one-round-trip writes on Celery's ``SentinelBackend``: its client is on the current
    primary (found through Sentinel, followed across a failover), and the script runs there."""


class _DeferredStarts:
    """STARTED writes held back for ``STARTED_DELAY_SECONDS``; a task's later write cancels its own.

    One thread per process writes them when due, checking every ``STARTED_DELAY_SECONDS`` while
    there is work (a wake-up per task cost as much as the write it saves) and sleeping until the
    next one after that. It writes while holding the lock, so a final state (SUCCESS, FAILURE,
    RETRY) for the same task, which cancels first, is always written after a STARTED already on
    its way: Redis never ends up saying STARTED for a finished task.
    """

    def __init__(self, write) -> None:
        self._write = write
        self._pid = os.getpid()
        self._due: dict[str, tuple[float, tuple]] = {}  # in order of deadline (one fixed delay)
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._asleep = False

    def owned(self) -> bool:
        return self._pid == os.getpid()

    def defer(self, task_id: str, args: tuple) -> None:
        with self._changed:
            self._due.pop(task_id, None)
            self._due[task_id] = (time.monotonic() + STARTED_DELAY_SECONDS, args)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="stalk-started", daemon=True)
                self._thread.start()
            elif self._asleep:
                self._asleep = False
                self._changed.notify()

    def cancel(self, task_id: str) -> None:
        with self._changed:
            self._due.pop(task_id, None)

    def _run(self) -> None:
        idle_ticks = 0
        with self._changed:
            while True:
                if self._asleep:
                    self._changed.wait()
                    continue
                self._changed.wait(STARTED_DELAY_SECONDS)
                idle_ticks = 0 if self._due else idle_ticks + 1
                if idle_ticks >= 10:  # a second without STARTED: sleep until the next one
                    self._asleep = True
                now = time.monotonic()
                while self._due:
                    task_id, (due, args) = next(iter(self._due.items()))
                    if due > now:
                        break
                    del self._due[task_id]
                    try:
                        self._write(args)
                    except Exception:  # noqa: BLE001 - a lost STARTED must not stop the later ones
                        log.exception("stalk: could not store the STARTED state of %s", task_id)
