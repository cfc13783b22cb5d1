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
"""

from __future__ import annotations

from celery.backends.base import BackendStoreError
from celery.backends.redis import RedisBackend
from kombu.utils.encoding import bytes_to_str

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

    def _store_result(self, task_id, result, state, traceback=None, request=None, **kwargs):
        if not self._one_round_trip:
            return super()._store_result(task_id, result, state, traceback=traceback, request=request, **kwargs)
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
        expires = self.failure_expires if state == "FAILURE" else self.expires
        self.ensure(self._run_script, (self.get_key_for_task(task_id), value, int(expires or 0)))
        return result

    def _run_script(self, key, value, expires: int) -> int:
        if self._script is None:
            # redis-py's Script runs EVALSHA and loads the script again after a NOSCRIPT reply.
            self._script = self.client.register_script(STORE_UNLESS_SUCCEEDED)
        return self._script(keys=[key], args=[value, expires])
