"""Settings and the queue table refuse what would hurt in production, with a message that says why."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stalk_workers.app import create_app
from stalk_workers.queues import BUILTIN_QUEUES, QueueTableError, celery_routes, load_queue_table
from stalk_workers.settings import Settings


def test_production_defaults():
    app = create_app(Settings(broker_url="redis://127.0.0.1:1/0"))
    conf = app.conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (270, 300)
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.worker_send_task_events and conf.task_track_started
    assert conf.worker_max_tasks_per_child == 1000


@pytest.mark.parametrize(("overrides", "message"), [
    ({"visibility_timeout_seconds": 300}, "must be larger than STALK_HARD_TIME_LIMIT_SECONDS"),
    ({"soft_time_limit_seconds": 300}, "must be below STALK_HARD_TIME_LIMIT_SECONDS"),
    ({"retry_max": -1}, "greater than or equal to 0"),
], ids=["visibility timeout not above hard limit", "soft limit not below hard limit", "negative retries"])
def test_settings_refuse_unsafe_values(overrides, message):
    with pytest.raises(ValidationError, match=message):
        Settings(**overrides)


def test_countdown_limit_leaves_room_for_the_run():
    settings = Settings(visibility_timeout_seconds=3600, hard_time_limit_seconds=300)
    assert settings.max_countdown_seconds == 3600 - 300 - 60


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("STALK_BROKER_URL", "redis://redis.example:6379/3")
    monkeypatch.setenv("STALK_TASK_MODULES", "a.tasks, b.tasks")
    settings = Settings()
    assert settings.broker_url == "redis://redis.example:6379/3"
    assert settings.task_module_list == ["a.tasks", "b.tasks"]


def test_routes_follow_the_queue_table():
    app = create_app(Settings(broker_url="redis://127.0.0.1:1/0"))
    route = app.amqp.router.route
    assert route({}, "stalk.echo")["queue"].name == "default"
    assert route({}, "myapp.classify_ticket")["queue"].name == "classification"
    assert route({}, "myapp.summarize_call")["queue"].name == "summarization"
    assert route({}, "myapp.send_email")["queue"].name == "notifications"
    assert route({}, "myapp.something_else")["queue"].name == "default"
    assert celery_routes(BUILTIN_QUEUES)["stalk.*"] == {"queue": "default"}


def test_queue_table_file_in_the_charts_shape(tmp_path):
    path = tmp_path / "queues.yaml"
    path.write_text(
        "default: {minReplicas: 1}\n"
        "embeddings:\n  routes: ['*.embed*']\n  concurrency: 4\n  maxReplicas: 20\n  tasksPerReplica: 50\n"
        "  resources: {requests: {cpu: 100m}}\n"
    )
    table = {q.name: q for q in load_queue_table(path)}
    assert table["embeddings"].routes == ("*.embed*",) and table["embeddings"].max_replicas == 20
    assert table["default"].min_replicas == 1


@pytest.mark.parametrize(("text", "message"), [
    ("[1, 2]", "non-empty map"),
    ("default: {maxReplica: 3}", "max_replica"),
    ("default: {minReplicas: 5, maxReplicas: 2}", "must be >= min_replicas"),
    ("other: {}", "must define the 'default' queue"),
    ("default: {pool: gevent}", "pool"),
    ("Bad_Name!: {}\ndefault: {}", "Bad_Name!"),
    ("default: [", "not valid YAML"),
], ids=["not a map", "typo in a key", "min above max", "no default queue", "unknown pool", "bad name", "bad yaml"])
def test_queue_table_file_errors_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "queues.yaml"
    path.write_text(text)
    with pytest.raises(QueueTableError, match=message.replace("[", r"\[")):
        load_queue_table(path)


def test_missing_queue_table_file(tmp_path):
    with pytest.raises(QueueTableError, match="cannot read queue table"):
        load_queue_table(tmp_path / "absent.yaml")
