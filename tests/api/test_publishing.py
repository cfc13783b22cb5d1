"""The API's publish path writes to Redis what ``celery.send_task`` writes, apart from the ids.

Most messages are rendered from a template (the first task of each kind goes through Celery), so
the comparisons below always publish a first task of the kind and then the one compared, for fixed
and for generated arguments. Workers run what it sends: every API submission in
test_round_trip.py (plain, batch, priority with countdown) goes through it to a real worker.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
import redis
from celery.utils.saferepr import saferepr
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stalk_api import publishing
from stalk_api.config import ApiSettings
from stalk_workers.app import create_app
from stalk_workers.sent_at import SENT_AT_HEADER

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
    # The first of a kind is Celery's own message; the second is rendered from it.
    publishing.publish(celery, [_row("first-id", **{**overrides, "args": [0]}), fast], sent_at=SENT_AT)
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


def _count_celery_builds(celery) -> list:
    """Every message Celery builds itself (the rest are rendered from templates) is listed here."""
    built, build = [], celery.amqp.create_task_message
    celery.amqp.create_task_message = lambda task_id, *a, **kw: built.append(task_id) or build(task_id, *a, **kw)
    return built


def test_many_rows_keep_their_order_in_each_list(celery, redis_urls):
    client = redis.Redis.from_url(redis_urls[0])
    rows = [_row(f"id-{i}", args=[i]) for i in range(50)]
    built = _count_celery_builds(celery)
    publishing.publish(celery, rows, sent_at=SENT_AT)
    assert built == ["id-0"]  # one kind: the other 49 from its template
    # LPUSH puts each at the head and workers BRPOP from the tail: the oldest is taken first.
    taken = [json.loads(raw)["headers"]["id"] for raw in reversed(client.lrange("default", 0, -1))]
    assert taken == [r["task_id"] for r in rows]


_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
_json_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=st.lists(_json_values, max_size=5), kwargs=st.dictionaries(st.text(max_size=8), _json_values, max_size=4))
@example(args=["x" * 2000], kwargs={"long": "y" * 2000})  # argsrepr truncated by saferepr
@example(args=["it's", "two\nlines", "é ☃ \x00"], kwargs={"quote'key": "\"", "n": -0.0})
@example(args=[[[["deep"]]]], kwargs={"a": {"b": {"c": {"d": 1}}}})  # beyond saferepr's maxlevels
def test_generated_arguments_give_send_tasks_message(celery, redis_urls, args, kwargs):
    client = redis.Redis.from_url(redis_urls[0])
    client.flushdb()
    rows = [_row("first-id", args=[0], kwargs={}), _row("fast-id", args=args, kwargs=kwargs)]
    built = _count_celery_builds(celery)
    publishing.publish(celery, rows, sent_at=SENT_AT)
    assert built == ["first-id"]  # "fast-id" was rendered from the template
    _sent_by_send_task(celery, _row("slow-id", args=args, kwargs=kwargs))

    messages = _messages(client)
    (fast_key, fast_message), (slow_key, slow_message) = messages["fast-id"], messages["slow-id"]
    assert fast_key == slow_key
    assert _without_ids(fast_message, "fast-id") == _without_ids(slow_message, "slow-id")


_flat = st.lists(_scalars | st.text(min_size=500, max_size=1100), max_size=6) | st.dictionaries(
    st.text(max_size=8), _scalars, max_size=6)


@given(value=_flat)
@example(value=[])
@example(value={})
@example(value=["a" * 1019])  # 1,023 characters: one short of the limit
@example(value=["a" * 1020])
def test_flat_saferepr_is_celerys_saferepr_or_declines(value):
    fast = publishing.flat_saferepr(value, 1024)
    exact = saferepr(value, 1024, maxlevels=3)
    if fast is None:  # declined only because saferepr would cut it
        assert len(publishing.flat_saferepr(value, 10**9)) >= 1024
    else:
        assert fast == exact
    assert publishing.flat_saferepr(tuple(value) if isinstance(value, list) else value, 1024) in (
        None, saferepr(tuple(value) if isinstance(value, list) else value, 1024, maxlevels=3))


def test_publish_signal_receivers_see_and_shape_every_message(celery, redis_urls):
    from celery import signals

    def add_trace_header(headers=None, **_):
        headers["trace"] = f"trace-{headers['id']}"

    signals.before_task_publish.connect(add_trace_header, weak=False)
    try:
        rows = [_row(f"id-{i}", args=[i]) for i in range(3)]
        built = _count_celery_builds(celery)
        publishing.publish(celery, rows, sent_at=SENT_AT)
    finally:
        signals.before_task_publish.disconnect(add_trace_header)
    assert built == ["id-0", "id-1", "id-2"]  # no template while someone listens
    messages = _messages(redis.Redis.from_url(redis_urls[0]))
    assert {m["headers"]["trace"] for _, m in messages.values()} == {"trace-id-0", "trace-id-1", "trace-id-2"}


def test_the_send_time_hook_of_a_teams_app_keeps_the_rendered_path_and_the_apis_send_time(celery, redis_urls):
    """A team's app module that installs stalk's send-time stamp (sent_at.py) is imported by the
    API too: the stamp sets only the header the API sets itself, so messages stay rendered."""
    from celery import signals

    from stalk_workers import sent_at

    sent_at.stamp_send_times()
    try:
        rows = [_row(f"id-{i}", args=[i]) for i in range(3)]
        built = _count_celery_builds(celery)
        publishing.publish(celery, rows, sent_at=SENT_AT)
    finally:
        signals.before_task_publish.disconnect(dispatch_uid=sent_at.__name__)
    assert built == ["id-0"]  # the first of the kind makes the template; the rest are rendered
    messages = _messages(redis.Redis.from_url(redis_urls[0]))
    assert {m["headers"][SENT_AT_HEADER] for _, m in messages.values()} == {SENT_AT}


def test_global_key_prefix_applies_to_rendered_messages(redis_urls):
    settings = ApiSettings(broker_url=redis_urls[0], result_backend="disabled", record_tasks=False,
                           broker_key_prefix="team-a:")
    celery = create_app(settings)
    publishing.publish(celery, [_row(f"id-{i}", args=[i], priority=[None, 6][i % 2]) for i in range(4)],
                       sent_at=SENT_AT)
    client = redis.Redis.from_url(redis_urls[0])
    assert client.llen("team-a:default") == 2 and client.llen("team-a:default\x06\x166") == 2
    assert client.llen("default") == 0


def _celery_with_shortcuts_off(redis_urls, off: str):
    return create_app(ApiSettings(broker_url=redis_urls[0], result_backend="disabled", record_tasks=False,
                                  library_shortcuts_off=off))


_KINDS = [
    {},
    {"priority": 3},
    {"eta": datetime.now(UTC) + timedelta(seconds=30)},
    {"task_name": "stalk.health_check", "args": [], "kwargs": {}, "priority": 9},
    {"args": ["it's", "two\nlines", -0.0, None], "kwargs": {"quote'key": "\""}, "priority": 5},  # flat reprs
]


@pytest.mark.parametrize(("off", "celery_builds"), [
    ("message-templates", "every one"),
    ("channel-client,message-templates", "every one"),  # kombu's own transport: nothing to capture
    ("flat-saferepr", "the first of each kind"),
], ids=["message-templates off", "kombu's transport", "flat-saferepr off"])
def test_with_a_shortcut_off_the_messages_are_still_send_tasks(redis_urls, monkeypatch, off, celery_builds):
    celery = _celery_with_shortcuts_off(redis_urls, off)
    flat_calls = []
    flat = publishing.flat_saferepr
    monkeypatch.setattr(publishing, "flat_saferepr", lambda *a: flat_calls.append(a) or flat(*a))
    client = redis.Redis.from_url(redis_urls[0])
    rows = [_row(f"{name}-{i}", **kind) for i, kind in enumerate(_KINDS) for name in ("first", "fast")]
    built = _count_celery_builds(celery)
    publishing.publish(celery, rows, sent_at=SENT_AT)
    built_by_publish = list(built)
    for i, kind in enumerate(_KINDS):
        _sent_by_send_task(celery, _row(f"slow-{i}", **kind))

    if celery_builds == "every one":
        assert built_by_publish == [r["task_id"] for r in rows]
    else:  # the eta kind is Celery's every time; the others' second task is rendered
        assert built_by_publish == ["first-0", "first-1", "first-2", "fast-2", "first-3", "first-4"]
    assert flat_calls == [], "no repr of stalk's own: saferepr writes every one"
    messages = _messages(client)
    for i in range(len(_KINDS)):
        (fast_key, fast_message), (slow_key, slow_message) = messages[f"fast-{i}"], messages[f"slow-{i}"]
        assert fast_key == slow_key
        assert _without_ids(fast_message, f"fast-{i}") == _without_ids(slow_message, f"slow-{i}")


def test_with_the_shortcuts_on_flat_arguments_take_flat_saferepr(celery, monkeypatch):
    """The other side of the test above: without this, "no repr of stalk's own" could never fail."""
    flat_calls = []
    flat = publishing.flat_saferepr
    monkeypatch.setattr(publishing, "flat_saferepr", lambda *a: flat_calls.append(a) or flat(*a))
    publishing.publish(celery, [_row("first-id", args=[0]), _row("fast-id", args=["it's", 1])], sent_at=SENT_AT)
    assert (["it's", 1], celery.amqp.argsrepr_maxsize) in flat_calls
