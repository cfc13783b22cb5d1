"""Task events from a real stalk worker, read as Flower reads them (Celery's EventReceiver).

stalk's consumer publishes the buffered task events in batches (one ``task.multi`` message for
many events): every event must still arrive, in order, with Celery's fields.
"""

from __future__ import annotations

import threading
from collections import defaultdict

import redis
from celery import Celery

from tests.fixtures.servers import wait_until

TASK_EVENTS = ["task-received", "task-started", "task-succeeded"]


def test_every_task_event_arrives_in_order_and_in_fewer_messages(stack_factory):
    with stack_factory() as stack:
        broker = stack.settings.broker_url
        app = Celery("events-reader", broker=broker, set_as_current=False)
        app.conf.broker_connection_retry_on_startup = True
        events: dict[str, list[dict]] = defaultdict(list)
        worker_seen = threading.Event()
        messages = []

        def on_event(event):
            if event["type"].startswith("task-"):
                events[event["uuid"]].append(event)
            else:
                worker_seen.set()  # worker-online or a heartbeat: the receiver's queue is bound

        conn = app.connection_for_read()
        receiver = app.events.Receiver(conn, handlers={"*": on_event})
        reader = threading.Thread(target=receiver.capture, kwargs={"limit": None, "wakeup": False}, daemon=True)

        # The raw channel messages, to count how many carried the events.
        pubsub = redis.Redis.from_url(broker).pubsub()
        pubsub.psubscribe("*celeryev/task.*")
        reader.start()
        try:
            stack.start_worker("default", concurrency=2)
            assert worker_seen.wait(20), "no worker event reached the receiver"
            # One batch: the tasks reach the worker together, as under load.
            response = stack.client.post("/v1/tasks/batch", json={
                "tasks": [{"task": "stalk.echo", "args": [i]} for i in range(20)]})
            assert response.status_code == 202, response.text
            ids = [t["task_id"] for t in response.json()["tasks"]]
            for task_id in ids:
                stack.wait_for(task_id)

            def all_events():
                return all([e["type"] for e in events[i]] == TASK_EVENTS for i in ids)

            wait_until(all_events, timeout=20, what="received, started and succeeded events of every task")
            for i, task_id in enumerate(ids):
                received, started, succeeded = events[task_id]
                assert received["name"] == "stalk.echo" and received["args"] == f"[{i}]"
                assert started["pid"] > 0 and started["hostname"].startswith("default-")
                assert succeeded["result"] == repr({"args": [i], "kwargs": {}}) and succeeded["runtime"] >= 0

            while (message := pubsub.get_message(timeout=0.2)) is not None:
                if message["type"] == "pmessage":
                    messages.append(message)
            # 60 events; one message per event is what the batching avoids.
            assert 0 < len(messages) < len(ids) * len(TASK_EVENTS) / 2
        finally:
            receiver.should_stop = True
            reader.join(5)
            conn.release()
            pubsub.close()
