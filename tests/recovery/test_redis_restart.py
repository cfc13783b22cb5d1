"""Issue 17's first loss test: a Redis without persistence restarts while tasks wait and run.

Its own redis-server, so the restart empties only this test's broker. 500 waiting tasks' messages
are gone with it; the 20 running ones are held by their worker, which reconnects and finishes them.
The recoverer's passes must bring back every lost task exactly once and leave the held ones alone."""

from __future__ import annotations

from tests.fixtures.servers import RedisServer, free_port, wait_until
from tests.fixtures.stack import running_stack
from tests.recovery.test_recoverer import recoverer, wait_published

RUNNING, WAITING = 20, 500
# Long enough to be still running after the batch is in, Redis restarted and the worker back.
RUN_SECONDS = 20


def test_a_redis_restart_without_persistence_loses_no_accepted_task(postgres_server, tmp_path):
    (tmp_path / "redis").mkdir()
    broker = RedisServer(port=free_port(), process=None, workdir=tmp_path / "redis")
    broker.start()
    try:
        with running_stack(broker, postgres_server, tmp_path) as stack:
            stack.start_worker("default", concurrency=RUNNING)
            running = [stack.submit("stalk.sleep", kwargs={"seconds": RUN_SECONDS}) for _ in range(RUNNING)]

            def started():
                return all(stack.client.get(f"/v1/tasks/{i}").json()["status"] == "STARTED" for i in running)

            wait_until(started, timeout=60, what=f"{RUNNING} tasks running")
            # Every pool process busy and prefetch 1: the worker takes none of these until one is free.
            response = stack.client.post("/v1/tasks/batch", json={
                "tasks": [{"task": "stalk.echo", "args": [n], "priority": n % 10} for n in range(WAITING)]})
            assert response.status_code == 202, response.text
            waiting = [t["task_id"] for t in response.json()["tasks"]]
            wait_published(stack)
            assert stack.client.get("/v1/queues").json()["queues"][0]["waiting"] == WAITING

            broker.stop()
            broker.start()  # empty: --save "" --appendonly no
            celery = stack.client.app.state.gateway.celery
            # The worker back on the new Redis, so the inspection can see what it holds.
            wait_until(lambda: celery.control.inspect(timeout=1).ping(), timeout=30,
                       what="the worker to reconnect")
            one = recoverer(stack)
            passes = []
            while not passes or passes[-1]:  # a pass takes at most recoverer.BATCH tasks
                passes.append(one.run_once())
            tasks = {i: stack.wait_for(i, timeout=120) for i in running + waiting}
    finally:
        broker.stop()
    assert all(t["status"] == "SUCCESS" for t in tasks.values()), [t for t in tasks.values() if t["status"] != "SUCCESS"][:3]
    assert [i for i in running if tasks[i]["recovered"]] == [], "a task its worker still ran was published again"
    assert all(tasks[i]["recovered"] == 1 for i in waiting), "a lost task not recovered exactly once"
    assert sum(passes) == WAITING, passes
    assert [tasks[i]["result"]["args"] for i in waiting] == [[n] for n in range(WAITING)]  # same arguments
