"""Settings and the queue table refuse what would hurt in production, with a message that says why."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from stalk_workers.app import create_app
from stalk_workers.queues import BUILTIN_QUEUES, QueueTableError, celery_routes, load_queue_table
from stalk_workers.settings import LIBRARY_SHORTCUTS, Settings

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize(("off", "expected_off"), [
    ("", set()),
    ("channel-client, flat-saferepr", {"channel-client", "flat-saferepr"}),
    ("all", set(LIBRARY_SHORTCUTS)),
], ids=["every one on by default", "the names listed are off", "all turns every one off"])
def test_library_shortcuts_are_on_unless_turned_off(monkeypatch, off, expected_off):
    monkeypatch.setenv("STALK_LIBRARY_SHORTCUTS_OFF", off)
    settings = Settings()
    assert {name for name in LIBRARY_SHORTCUTS if not settings.shortcut(name)} == expected_off


def test_an_unknown_library_shortcut_is_refused_with_the_known_names():
    with pytest.raises(ValidationError, match=r"no library shortcut 'chanel-client' \(known: channel-client, "):
        Settings(library_shortcuts_off="channel-client,chanel-client")
    with pytest.raises(KeyError):  # a typo in stalk's own code fails loudly too
        Settings().shortcut("chanel-client")


def test_each_library_shortcut_has_its_row_in_the_architecture_doc():
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("## Library internals relied on", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    switches = [line.split(" | ")[4] for line in rows]  # where | what | why | bound | switch | proved by
    assert sorted(s.strip("`") for s in switches if s.startswith("`")) == sorted(LIBRARY_SHORTCUTS)
    # Correctness, not speed, and each row says why it has no switch.
    unswitched = sorted(line.split(" | ")[0].split("`")[3] for line, s in zip(rows, switches, strict=True)
                        if not s.startswith("`"))
    assert unswitched == ["ReadDeadline", "pool_options"], unswitched


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


QUEUES_AS_LIST = """\
- name: default
  minReplicas: 1
- name: embeddings
  routes: ['*.embed*']
  concurrency: 4
"""


@pytest.mark.parametrize("text", [
    QUEUES_AS_LIST,
    "queues:\n" + "".join(f"  {line}\n" for line in QUEUES_AS_LIST.splitlines()),
    "image: {tag: '1.0'}\nqueues:\n  default: {minReplicas: 1}\n  embeddings: {routes: ['*.embed*'], concurrency: 4}\n",
], ids=["a list of queues", "a list under queues:", "a Helm values file"])
def test_queue_table_file_in_the_other_shapes(tmp_path, text):
    path = tmp_path / "queues.yaml"
    path.write_text(text)
    table = {q.name: q for q in load_queue_table(path)}
    assert table["embeddings"].routes == ("*.embed*",) and table["embeddings"].concurrency == 4
    assert table["default"].min_replicas == 1 and list(table) == ["default", "embeddings"]


def test_the_charts_values_file_is_a_queue_table(tmp_path):
    values = Path(__file__).resolve().parents[2] / "charts" / "stalk" / "values.yaml"
    assert sorted(load_queue_table(values), key=lambda q: q.name) == sorted(BUILTIN_QUEUES, key=lambda q: q.name)


def test_the_example_queue_table_routes_the_example_tasks():
    from stalk_workers.factory import create_app

    example = Path(__file__).resolve().parents[2] / "workers" / "stalk_workers" / "examples" / "queues.yaml"
    app = create_app(Settings(queues_file=example, task_modules="stalk_workers.examples.documents"))
    expected = {"stalk.health_check": "default", "stalk.echo": "default", "stalk.sleep": "default",
                "stalk.fail": "default", "documents.summarize": "documents",
                "documents.classify_ticket": "documents", "documents.notify_owner": "notifications"}
    # Only these names: shared tasks other tests registered in this process are in app.tasks too.
    assert {name: app.amqp.router.route({}, name)["queue"].name for name in expected} == expected
    assert set(expected) <= set(app.tasks)


def test_a_queue_named_queues_is_a_queue(tmp_path):
    path = tmp_path / "queues.yaml"
    path.write_text("default: {}\nqueues: {routes: ['*.queue*']}\n")
    assert [q.name for q in load_queue_table(path)] == ["default", "queues"]


@pytest.mark.parametrize(("text", "message"), [
    ("[1, 2]", "item 1 of the list must be a map with a name: (- name: default), not 1"),
    ("3", "is a int (3); it must be a map of queue name to settings"),
    ("", "is empty; it must be a map"),
    ("default: 3", "queue 'default' in .*: its settings must be a map"),
    ("- name: default\n- name: default\n", "names 'default' more than once"),
    ("default: {maxReplica: 3}", "unknown setting 'max_replica'; a queue's settings are: name, routes"),
    ("default: {minReplicas: 5, maxReplicas: 2}", "must be >= min_replicas"),
    ("other: {}", "must define the 'default' queue"),
    ("default: {pool: gevent}", "pool"),
    ("Bad_Name!: {}\ndefault: {}", "Bad_Name!"),
    ("default: [", "not valid YAML"),
], ids=["a list of numbers", "a number", "empty", "settings not a map", "twice", "typo in a key", "min above max", "no default queue", "unknown pool", "bad name", "bad yaml"])
def test_queue_table_file_errors_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "queues.yaml"
    path.write_text(text)
    with pytest.raises(QueueTableError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")) as err:
        load_queue_table(path)
    assert "\n" not in str(err.value)


def test_missing_queue_table_file(tmp_path):
    with pytest.raises(QueueTableError, match="cannot read queue table"):
        load_queue_table(tmp_path / "absent.yaml")
