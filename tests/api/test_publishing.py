"""The API's publish path writes to Redis what ``celery.send_task`` writes, apart from the ids.

Workers run what it sends: every API submission in test_round_trip.py (plain, batch, priority with
countdown) goes through it to a real worker.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
import redis

from stalk_api import publishing
from stalk_api.config import ApiSettings
from stalk_workers.app import create_app
from stalk_workers.queue_reader import SENT_AT_HEADER

SENT_AT = 1_700_000_000.25


@pytest.fixture
def celery(redis_urls):
    # As the API builds its app: no result backend.
    settings = ApiSettings(broker_url=redis_urls[0], result_backend="disabled", record_tasks=False)
    return create_app(settings)


def _row(task_id: str, **overrides) -> dict:
    return {"task_id": task_id, "task_name": "stalk.echo", "queue": "default", "args": [1, "two", {"3": [4.5]}],
            "kwargs": {"k": None}, "eta": None, "priority": None, **overrides}


def _sent_by_send_task(celery, row: dict) -> None:
    with celery.producer_or_acquire() as producer:
        celery.send_task(row["task_name"], args=row["args"], kwargs=row["kwargs"], task_id=row["task_id"],
                         queue=row["queue"], eta=row["eta"], priority=row["priority"], producer=producer,
                         headers={SENT_AT_HEADER: SENT_AT}, retry=False)


def _messages(client: redis.Redis) -> dict[str, tuple[bytes, dict]]:
    """Every message in Redis by task id, with the list it is in."""
    found = {}
    for key in client.keys("*"):
        if client.type(key) == b"list":
            for raw in client.lrange(key, 0, -1):
                message = json.loads(raw)
                found[message["headers"]["id"]] = (key, message)
    return found


def _without_ids(message: dict, task_id: str) -> dict:
    message = json.loads(json.dumps(message))
    assert message["headers"].pop("id") == task_id and message["headers"].pop("root_id") == task_id
    assert message["properties"].pop("correlation_id") == task_id
    assert message["properties"].pop("delivery_tag")  # random per message, as kombu makes it
    return message


@pytest.mark.parametrize("overrides", [
    {},
    {"priority": 3},
    {"priority": 0, "kwargs": {}},
    {"eta": datetime.now(UTC) + timedelta(seconds=30)},
    {"task_name": "stalk.health_check", "args": [], "kwargs": {}, "priority": 9},
], ids=["plain", "priority-3", "priority-0", "eta", "other-task"])
def test_same_message_as_send_task(celery, redis_urls, overrides):
    client = redis.Redis.from_url(redis_urls[0])
    fast, slow = _row("fast-id", **overrides), _row("slow-id", **overrides)
    publishing.publish(celery, [fast], sent_at=SENT_AT)
    _sent_by_send_task(celery, slow)

    messages = _messages(client)
    (fast_key, fast_message), (slow_key, slow_message) = messages["fast-id"], messages["slow-id"]
    assert fast_key == slow_key  # the same list: queue and priority level
    assert _without_ids(fast_message, "fast-id") == _without_ids(slow_message, "slow-id")
    args, kwargs, _ = json.loads(base64.b64decode(fast_message["body"]))
    assert (args, kwargs) == (fast["args"], fast["kwargs"])
    assert fast_message["headers"][SENT_AT_HEADER] == SENT_AT


def test_many_rows_of_several_kinds_in_one_call(celery, redis_urls):
    client = redis.Redis.from_url(redis_urls[0])
    rows = [_row(f"id-{i}", args=[i], priority=[None, 3, 6][i % 3]) for i in range(30)]
    rows.append(_row("hc", task_name="stalk.health_check", args=[], kwargs={}))
    publishing.publish(celery, rows, sent_at=SENT_AT)

    messages = _messages(client)
    assert set(messages) == {r["task_id"] for r in rows}
    for row in rows:
        key, message = messages[row["task_id"]]
        assert message["headers"]["task"] == row["task_name"]
        assert json.loads(base64.b64decode(message["body"]))[0] == row["args"]
        assert message["properties"]["priority"] == (row["priority"] or 0)
    # One list per priority level the tasks asked for (kombu's priority sub-queues).
    assert {key for key, _ in messages.values()} == {b"default", b"default\x06\x163", b"default\x06\x166"}
