"""Issue 17's first loss test: a Redis without persistence restarts while tasks wait and run.

Its own redis-server, so the restart empties only this test's broker. The waiting tasks' messages
are gone with it; the running ones are held by their worker, which reconnects and finishes them.
One recoverer pass must bring back every lost task once and leave the held ones alone."""

from __future__ import annotations

from tests.fixtures.servers import RedisServer, free_port, wait_until
from tests.fixtures.stack import running_stack
from tests.recovery.test_recoverer import recoverer, wait_published


def test_a_redis_restart_without_persistence_loses_no_accepted_task(postgres_server, tmp_path):
    (tmp_path / "redis").mkdir()
    broker = RedisServer(port=free_port(), process=None, workdir=tmp_path / "redis")
    broker.start()
    try:
        with running_stack(broker, postgres_server, tmp_path) as stack:
            stack.start_worker("default", concurrency=2)
            ids = [stack.submit("stalk.sleep", kwargs={"seconds": 3}) for _ in range(12)]
            wait_published(stack)
            running = wait_until(lambda: [i for i in ids if stack.client.get(f"/v1/tasks/{i}").json()["status"]
                                          == "STARTED"] or None, timeout=20, what="tasks running")
            broker.stop()
            broker.start()  # empty: --save "" --appendonly no
            celery = stack.client.app.state.gateway.celery
            # The worker back on the new Redis, so the inspection can see what it holds.
            wait_until(lambda: celery.control.inspect(timeout=1).ping(), timeout=30,
                       what="the worker to reconnect")
            recovered = recoverer(stack).run_once()
            tasks = {i: stack.wait_for(i, timeout=60) for i in ids}
    finally:
        broker.stop()
    assert all(t["status"] == "SUCCESS" for t in tasks.values()), tasks
    assert all(tasks[i]["recovered"] == 0 for i in running), "a task its worker still ran was published again"
    assert recovered == sum(t["recovered"] for t in tasks.values()) > 0
    assert all(t["recovered"] <= 1 for t in tasks.values())
