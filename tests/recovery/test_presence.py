"""The Redis-presence read against a real stack: a task's id is found while its message waits (at
any priority), while a worker holds it (running, or kept until its countdown), and not after a
FLUSHDB or once it ended."""

from __future__ import annotations

import redis

from stalk_api.recovery.presence import present_task_ids
from tests.fixtures.servers import wait_until


def test_present_while_waiting_or_held_and_absent_once_lost_or_done(stack_factory):
    with stack_factory() as stack:
        client = redis.Redis.from_url(stack.settings.broker_url)
        queues = [q.name for q in stack.client.app.state.gateway.celery.conf.stalk_queues]
        waiting = [stack.submit("stalk.echo", args=[i], priority=p) for i, p in enumerate((None, 0, 5, 9))]
        assert set(waiting) <= present_task_ids(client, queues)

        client.flushdb()  # Redis lost the messages; the records remain
        assert not set(waiting) & present_task_ids(client, queues)

        running = stack.submit("stalk.sleep", kwargs={"seconds": 3})
        scheduled = stack.submit("stalk.echo", countdown=30)
        stack.start_worker("default", concurrency=2)
        wait_until(lambda: stack.client.get(f"/v1/tasks/{running}").json()["status"] == "STARTED", timeout=20,
                   what="the sleep task to start")
        # Delivered: both sit in kombu's unacked hash, not in a list.
        assert {running, scheduled} <= present_task_ids(client, queues)
        assert not client.llen("default")
        stack.wait_for(running)
        assert running not in present_task_ids(client, queues)
        assert scheduled in present_task_ids(client, queues)
