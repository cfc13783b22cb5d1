"""The recoverer's lock on a real Redis: a pass longer than the lock's expiry keeps it (a second
recoverer stays out), and a pass whose lock was taken from it publishes nothing more."""

from __future__ import annotations

import time

import redis

from stalk_api.recovery.lock import PassLock
from stalk_api.recovery.recoverer import LOCK_KEY
from stalk_workers.records import store
from tests.recovery.test_recoverer import lose_messages, recoverer

# Far below the recoverer's 60 s, so a pass of a few seconds outlives it several times.
SHORT_LOCK_SECONDS = 1.0


def test_a_pass_longer_than_the_lock_expiry_keeps_the_lock(stack_factory):
    with stack_factory() as stack:
        ids = [stack.submit("stalk.echo", args=[i]) for i in range(10)]
        lose_messages(stack)
        client = redis.Redis.from_url(stack.settings.broker_url)
        second = recoverer(stack, lock_seconds=SHORT_LOCK_SECONDS)
        tried = []

        def long_gap(_gap: float) -> None:
            # The pass's read gap lasts 4 expiries; a second recoverer keeps trying meanwhile.
            deadline = time.monotonic() + 4 * SHORT_LOCK_SECONDS
            while time.monotonic() < deadline:
                tried.append(second.run_once())
                assert client.pttl(LOCK_KEY) > 0  # never let go, not even for a moment
                time.sleep(0.1)

        first = recoverer(stack, lock_seconds=SHORT_LOCK_SECONDS, sleep=long_gap)
        assert first.run_once() == 10
        assert len(tried) > 10 and set(tried) == {None}
        assert not client.exists(LOCK_KEY)  # released at the end of the pass
        with stack.client.app.state.gateway.sessions() as session:
            assert [store.get(session, task_id).recovered for task_id in ids] == [1] * 10


def test_a_pass_that_lost_its_lock_publishes_nothing(stack_factory):
    with stack_factory() as stack:
        ids = [stack.submit("stalk.echo", args=[i]) for i in range(10)]
        lose_messages(stack)
        client = redis.Redis.from_url(stack.settings.broker_url)

        def lock_taken(_gap: float) -> None:
            # Redis loses the lock key (a restart, a FLUSHDB) and another recoverer takes it.
            client.delete(LOCK_KEY)
            assert PassLock(client, LOCK_KEY, seconds=30).acquire()
            time.sleep(SHORT_LOCK_SECONDS)  # a renewal of the first pass runs into the other's lock

        assert recoverer(stack, lock_seconds=SHORT_LOCK_SECONDS, sleep=lock_taken).run_once() == 0
        assert client.pttl(LOCK_KEY) > 20_000  # the other's lock, left alone
        with stack.client.app.state.gateway.sessions() as session:
            assert [store.get(session, task_id).recovered for task_id in ids] == [0] * 10


def test_unconfirmed_for_two_thirds_of_the_expiry_is_not_held(redis_server):
    # Redis unreachable: no renewal confirms the lock, so the pass stops before it could have expired.
    client = redis.Redis.from_url(redis_server.url(0))
    now = [100.0]
    lock = PassLock(client, "stalk:test:lock", seconds=60, clock=lambda: now[0])
    assert lock.acquire()
    try:
        now[0] += 39
        assert lock.held()
        now[0] += 2
        assert not lock.held()
    finally:
        client.delete("stalk:test:lock")
