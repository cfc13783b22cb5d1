"""Redis state -> per-queue stats: the one reader the API, the operator and the CLI all call.

What it relies on, from kombu 5.x's Redis transport (``kombu/transport/redis.py``, 5.7.0 here):

- A queue ``Q`` is one list per priority step: ``Q`` for step 0, ``Q<sep>n`` for step n. The
  steps are the sending app's transport option ``priority_steps`` (default ``[0, 3, 6, 9]``), which
  no reader can know; but kombu clamps every priority into ``[min_priority, max_priority]`` (0-9)
  first, so a step in use is one of those ten numbers: the reader looks at all ten lists of every
  queue, whatever the app's steps (``Channel.sep`` and the bounds are kombu's, not copies).
- Publishers ``LPUSH``; consumers ``BRPOP``/``RPOP``; so the oldest message of each list is at
  index -1. (kombu puts a restored message back with ``RPUSH``, so it is the next one out: also -1.)
- A delivered message leaves its list for one hash per database, ``unacked`` (delivery tag ->
  JSON ``[message, exchange, routing_key]``), indexed by the sorted set ``unacked_index``
  (delivery tag -> delivery time). The ack deletes both. Celery's eta/countdown tasks are
  delivered at once and held by the worker until their time, so they sit in ``unacked`` too.
- ``global_keyprefix`` is prepended to every one of these keys.

In-flight messages are attributed to the queue they were delivered from. An ``unacked`` entry
keeps only the exchange and routing key it was published with; which queue that reached is what
kombu's ``_kombu.binding.<exchange>`` sets say (members ``routing key<sep>pattern<sep>queue``, the
pattern a regular expression for a topic exchange), written when a queue is declared. For Celery's
default routing the routing key is the queue name; an app's topic exchange or own routing keys
(``tracker.issues.enrich_issue``) are resolved through the bindings (``routing.py``). The reader
keeps what it parsed from ``unacked`` between reads (delivery tag -> exchange, routing key and
eta), so each read fetches only the entries delivered since the last one.

A read is one Lua script (EVALSHA), so it is one round trip and Redis, not the client, does the
per-list work: at 1,000 queues the pipeline of 8,000 LLEN/LINDEX commands it replaced cost the
client ~37 ms of CPU to pack and parse, the script ~2 ms. Redis runs nothing else while the
script runs: ~2-3 ms per read at 1,000 queues (docs/benchmarks.md, "Operator: 1,000 TaskQueues").

A reader keeps state between reads and is not thread-safe: use one per thread, or a lock.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from kombu.transport.redis import Channel
from kombu.utils.encoding import bytes_to_str
from redis.exceptions import NoScriptError, ResponseError

from stalk_workers.arrivals import Arrivals
from stalk_workers.routing import Bindings
from stalk_workers.sent_at import SENT_AT_HEADER

# Where an ``unacked`` entry that cannot be parsed is attributed: no queue, and not fetched again.
NOT_A_QUEUE = ""
# Fetch new unacked entries in chunks inside the read script (Lua's unpack has a stack limit).
HMGET_CHUNK = 1000
# Every priority step a message can be in, whatever steps the sending app set (see above).
PRIORITY_LISTS = tuple(range(Channel.min_priority, Channel.max_priority + 1))


@dataclass(frozen=True)
class QueueStats:
    waiting: int  # ready messages across all priority steps
    in_flight: int  # delivered to a worker, not yet acked, and not held back by eta/countdown
    scheduled: int  # eta/countdown messages held by workers (they sit in kombu's ``unacked`` too)
    oldest_wait_seconds: float | None  # age of the oldest waiting message; None when nothing waits


@dataclass(frozen=True)
class _Tail:
    """The message at the oldest end of one list, as last read."""

    raw: bytes | str  # compared first, so an unchanged tail is not parsed again
    tag: str  # kombu's delivery tag
    sent_at: float | None  # the send time stamped in its header (sent_at.py), when present
    first_seen: float


@dataclass(frozen=True)
class _Delivered:
    """What the reader keeps about one ``unacked`` entry."""

    score: float  # delivery time in ``unacked_index``; a redelivery of the same tag changes it
    route: tuple[str, str] | None  # (exchange, routing key); None when the hash entry was missing
    eta: float | None  # epoch seconds the worker holds it until; None for a plain task


class QueueReader:
    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str = "",
        clock: Callable[[], float] = time.time,
    ):
        self._client = client
        self._prefix = key_prefix
        self._clock = clock
        self._read_only_scripts = True  # EVALSHA_RO until Redis says it does not know it
        self._steps = PRIORITY_LISTS
        self._bindings = Bindings(client, key_prefix=key_prefix, clock=clock)
        self._delivered: dict[str, _Delivered] = {}
        self._tails: dict[tuple[str, int], _Tail] = {}  # per (queue, priority step)
        # Per list whose oldest message has no send time: when its messages arrived (arrivals.py).
        self._arrivals: dict[tuple[str, int], Arrivals] = {}
        self._last_read: float | None = None
        self._last_queues: set[str] = set()
        # Index entries at or below the newest score fetched so far are not fetched by score again;
        # one that was missed that way (a worker's clock behind) is asked for by tag on the next read.
        self._newest_score = float("-inf")
        self._refetch: list[str] = []

    def read(self, queues: Sequence[str]) -> dict[str, QueueStats]:
        """Stats for each queue, in one round trip (one script) whatever the number of queues."""
        queues = list(queues)
        steps = self._steps
        waiting, tails, heads, index, fetched = self._run_script(queues)
        now = self._clock()
        self._sync_delivered(index, fetched)

        in_flight = dict.fromkeys(queues, 0)
        scheduled = dict.fromkeys(queues, 0)
        queue_of = self._bindings.resolver({entry.route for entry in self._delivered.values() if entry.route})
        for entry in self._delivered.values():
            queue = queue_of(entry.route) if entry.route else None
            if queue in in_flight:
                if entry.eta is not None and entry.eta > now:
                    scheduled[queue] += 1
                else:
                    in_flight[queue] += 1

        # Only non-empty lists come back: their tails are all the ages there are. Rebuilding the
        # caches from them forgets the lists that emptied.
        oldest: dict[str, float] = {}
        known, self._tails = self._tails, {}
        self._track_arrivals(queues, heads, was_waiting=known, now=now)
        for i in range(0, len(tails), 2):
            where = self._list_of(queues, tails[i])
            age = self._age(known.get(where), where, tails[i + 1], now)
            if where[0] not in oldest or age > oldest[where[0]]:
                oldest[where[0]] = age
        self._last_read, self._last_queues = now, set(queues)
        return {
            queue: QueueStats(waiting=int(count), in_flight=in_flight[queue], scheduled=scheduled[queue],
                              oldest_wait_seconds=oldest.get(queue) if count else None)
            for queue, count in zip(queues, waiting, strict=True)
        }

    def _list_of(self, queues: list[str], ordinal) -> tuple[str, int]:
        """(queue, priority step) of the script's 1-based list ordinal."""
        ordinal = int(ordinal) - 1
        return queues[ordinal // len(self._steps)], self._steps[ordinal % len(self._steps)]

    def _track_arrivals(self, queues: list[str], heads: list, *, was_waiting: dict, now: float) -> None:
        """Update the arrivals of every list whose oldest message has no send time, from what the
        script saw at its head; forget them for the lists of these queues that no longer qualify."""
        read = set(queues)
        tracked = self._arrivals
        self._arrivals = {where: a for where, a in tracked.items() if where[0] not in read}
        for i in range(0, len(heads), 4):
            where = self._list_of(queues, heads[i])
            length, index, head = int(heads[i + 1]), int(heads[i + 2]), heads[i + 3]
            arrivals = tracked.get(where)
            if arrivals is None:
                # Empty at the last read: everything waiting arrived since.
                seen_empty = where[0] in self._last_queues and where not in was_waiting
                since = self._last_read if seen_empty else None
                arrivals = Arrivals(now=now, length=length, since=since, head=head)
            else:
                arrivals.observe(now=now, length=length, arrived=index if index >= 0 else None, head=head)
            self._arrivals[where] = arrivals

    def _list_key(self, where: tuple[str, int]) -> str:
        queue, step = where
        return self._prefix + queue + (f"{Channel.sep}{step}" if step else "")

    def _run_script(self, queues: list[str]) -> list:
        heads = [x for where, arrivals in self._arrivals.items() for x in (self._list_key(where), arrivals.head)]
        args = [self._prefix, Channel.sep, len(self._steps), *self._steps, repr(self._newest_score),
                len(queues), *queues, SENT_AT_HEADER, len(heads) // 2, *heads, *self._refetch]
        keys = (self._prefix + Channel.unacked_index_key, self._prefix + Channel.unacked_key)
        # The read-only variants (Redis 7+) let a user whose keys are read-only (``%R~``, the
        # operator's ACL in docs/redis.md) run the script: plain EVAL counts every key as written.
        evalsha, eval_ = ((self._client.evalsha_ro, self._client.eval_ro) if self._read_only_scripts
                          else (self._client.evalsha, self._client.eval))
        try:
            return evalsha(_READ_SHA, len(keys), *keys, *args)
        except NoScriptError:  # a restarted or flushed Redis: EVAL runs it and caches it again
            return eval_(_READ_SCRIPT, len(keys), *keys, *args)
        except ResponseError as exc:
            if not (self._read_only_scripts and "unknown command" in str(exc).lower()):
                raise
            self._read_only_scripts = False  # Redis 6: EVALSHA_RO is new in 7.0
            return self._run_script(queues)

    def _sync_delivered(self, index: list, fetched: list) -> None:
        """Bring the delivered-tag cache in line with ``unacked_index``, from what the script fetched."""
        current = {bytes_to_str(index[i]): float(index[i + 1]) for i in range(0, len(index), 2)}
        for tag in self._delivered.keys() - current.keys():
            del self._delivered[tag]  # acked, or restored to its list
        for i in range(0, len(fetched), 2):
            tag, raw = bytes_to_str(fetched[i]), fetched[i + 1]
            if tag in current:
                route, eta = _parse_unacked(raw) if raw is not None else (None, None)
                self._delivered[tag] = _Delivered(score=current[tag], route=route, eta=eta)
        # New or redelivered under a score the script did not fetch by (see __init__): next read, by
        # tag. Until then a redelivered tag keeps what it was attributed to (the same message).
        self._refetch = [tag for tag, score in current.items()
                         if (known := self._delivered.get(tag)) is None or known.score != score or known.route is None]
        if current:
            self._newest_score = max(self._newest_score, max(current.values()))

    def _age(self, tail: _Tail | None, where: tuple[str, int], raw: bytes | str, now: float) -> float:
        """Age of the message at the oldest end of one list: its send time, else when it arrived
        as the list's reads saw it (arrivals.py), else first sight."""
        if tail is None or tail.raw != raw:
            tag, sent_at = _tag_and_sent_at(raw)
            # The same delivery tag may come back changed (kombu marks a restored message redelivered).
            first_seen = tail.first_seen if tail is not None and tail.tag == tag else now
            tail = _Tail(raw=raw, tag=tag, sent_at=sent_at, first_seen=first_seen)
        self._tails[where] = tail
        if tail.sent_at is not None:
            return max(0.0, now - tail.sent_at)
        arrivals = self._arrivals.get(where)
        if arrivals is not None:
            return max(0.0, now - arrivals.oldest_arrival())
        return now - tail.first_seen


# One read, run by Redis: every list's LLEN, LINDEX -1 of the lists that are not empty, kombu's
# whole ``unacked_index`` (to notice acks), and the ``unacked`` values of the entries delivered
# since the last read (score above ARGV's newest score) or asked for by tag. For a list whose
# tail has no send-time header: where the previous read's head is now (LPOS: how many arrived in
# front of it; -1 when gone or not known) and, when it changed, the head. Read-only.
# KEYS: unacked_index, unacked. ARGV: prefix, sep, number of steps, the steps, newest score,
# number of queues, the queues, the header's name, number of previous heads, (list key, head)
# pairs, tags to fetch.
# Returns {waiting per queue, {list ordinal, tail, ...}, {list ordinal, length, index of the
# previous head, head or nil, ...}, {tag, score, ...}, {tag, value, ...}}.
_READ_SCRIPT = """
local prefix, sep, nsteps = ARGV[1], ARGV[2], tonumber(ARGV[3])
local steps = {}
for s = 1, nsteps do steps[s] = ARGV[3 + s] end
local newest = tonumber(ARGV[4 + nsteps]) or -math.huge
local nqueues = tonumber(ARGV[5 + nsteps])
local first = 5 + nsteps
local header = '"' .. ARGV[first + nqueues + 1] .. '"'
local nheads = tonumber(ARGV[first + nqueues + 2])
local previous = {}
for h = 1, nheads do previous[ARGV[first + nqueues + 1 + 2 * h]] = ARGV[first + nqueues + 2 + 2 * h] end
local tags_from = first + nqueues + 3 + 2 * nheads
local waiting, tails, heads = {}, {}, {}
for q = 1, nqueues do
  local base = prefix .. ARGV[first + q]
  local total = 0
  for s = 1, nsteps do
    local key = base
    if steps[s] ~= '0' then key = base .. sep .. steps[s] end
    local n = redis.call('LLEN', key)
    if n > 0 then
      total = total + n
      local ordinal = (q - 1) * nsteps + s
      local tail = redis.call('LINDEX', key, -1)
      tails[#tails + 1] = ordinal
      tails[#tails + 1] = tail
      if not string.find(tail, header, 1, true) then
        local index = -1
        if previous[key] then index = redis.call('LPOS', key, previous[key]) or -1 end
        heads[#heads + 1] = ordinal
        heads[#heads + 1] = n
        heads[#heads + 1] = index
        if index == 0 then heads[#heads + 1] = false else heads[#heads + 1] = redis.call('LINDEX', key, 0) end
      end
    end
  end
  waiting[q] = total
end
local index = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local wanted = {}
for i = 2, #index, 2 do
  if tonumber(index[i]) > newest then wanted[#wanted + 1] = index[i - 1] end
end
for i = tags_from, #ARGV do wanted[#wanted + 1] = ARGV[i] end
local fetched = {}
for start = 1, #wanted, HMGET_CHUNK do
  local chunk = {}
  for i = start, math.min(start + HMGET_CHUNK - 1, #wanted) do chunk[#chunk + 1] = wanted[i] end
  local values = redis.call('HMGET', KEYS[2], unpack(chunk))
  for i = 1, #chunk do
    fetched[#fetched + 1] = chunk[i]
    fetched[#fetched + 1] = values[i]
  end
end
return {waiting, tails, heads, index, fetched}
""".replace("HMGET_CHUNK", str(HMGET_CHUNK))
_READ_SHA = hashlib.sha1(_READ_SCRIPT.encode()).hexdigest()


def _tag_and_sent_at(raw: bytes | str) -> tuple[str, float | None]:
    """kombu's delivery tag and the API's sent-at header of one waiting message."""
    try:
        message = json.loads(raw)
        tag = (message.get("properties") or {}).get("delivery_tag")
        sent_at = (message.get("headers") or {}).get(SENT_AT_HEADER)
    except (ValueError, AttributeError):
        tag, sent_at = None, None
    return str(tag or hash(raw)), float(sent_at) if isinstance(sent_at, int | float) else None


def _parse_unacked(raw: bytes | str) -> tuple[tuple[str, str], float | None]:
    """((exchange, routing key), eta as epoch seconds) of one ``unacked`` hash value."""
    try:
        message, exchange, routing_key = json.loads(raw)
        headers = message.get("headers") or {}
    except (ValueError, TypeError, AttributeError):
        return (NOT_A_QUEUE, NOT_A_QUEUE), None
    return (exchange or "", routing_key or ""), _epoch(headers.get("eta"))


def _epoch(eta: str | None) -> float | None:
    # Celery's message protocol 2 carries eta as an ISO 8601 string in the headers; with
    # enable_utc (the default) it has an offset; a naive one is UTC.
    if not eta:
        return None
    try:
        when = datetime.fromisoformat(eta)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()
